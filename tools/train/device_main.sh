#!/bin/bash
# Device run 2 (main): trains both DiT layouts at once on one GPU for $DIT_SECONDS with the VAE
# of run 1 (carried as out/vae/vae.pt), exports the EMA weights (bf16) every 90 s and at the end.
# Run from the repository root.
set -o pipefail
export PYTHONUNBUFFERED=1
W=/tmp/vmla-train; mkdir -p $W
VAE=${VAE:-out/vae/vae.pt}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
for L in mla mha; do
  python3 tools/train/train_dit.py --layout $L --vae $VAE --out $W/$L \
      --seconds ${DIT_SECONDS:-330} --batch ${BATCH:-128} --log-every 100 \
      --export $OUT/$L.safetensors > $OUT/train-$L.log 2>&1 &
done
wait
cp $W/mla/summary.json $OUT/summary-mla.json; cp $W/mha/summary.json $OUT/summary-mha.json
tail -n 6 $OUT/train-mla.log $OUT/train-mha.log
