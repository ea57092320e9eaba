#!/bin/bash
# Device run 1 (smoke + VAE): trains the VAE (~70 s), then both DiT layouts for ~30 s at once,
# exporting each; everything wanted comes back under $OUT. Run from the repository root.
set -o pipefail
export PYTHONUNBUFFERED=1
W=/tmp/vmla-train; mkdir -p $W
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 tools/train/vae.py --out $W/vae --device cuda --seconds ${VAE_SECONDS:-70} --batch 64 \
    --log-every 250 --stat-batches 30 || exit 1
cp $W/vae/vae.pt $W/vae/vae_recon.png $W/vae/vae_log.txt $OUT/
for L in mla mha; do
  python3 tools/train/train_dit.py --layout $L --vae $W/vae/vae.pt --out $W/$L \
      --seconds ${DIT_SECONDS:-30} --batch ${BATCH:-128} --log-every 25 \
      --export $OUT/smoke-$L.safetensors > $OUT/smoke-$L.log 2>&1 &
done
wait
tail -n 4 $OUT/smoke-mla.log $OUT/smoke-mha.log
nvidia-smi --query-gpu=memory.used --format=csv,noheader
