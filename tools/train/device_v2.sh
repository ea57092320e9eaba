#!/bin/bash
# Device run 3 (recipe v2): continues both DiT layouts from the shipped models (models/*.safetensors,
# tracked files) on data recipe v2 (data.RECIPES: centre start, half-size 12-14, speed 1.3-1.7),
# with half of the sequences on self-reconstructed context (train_dit.self_context), and, as an
# ablation, the same without self-reconstructed context ("-noself"); four processes at once on one
# GPU for $DIT_SECONDS each, with run 1's VAE carried as out/vae/vae.pt. Exports the EMA weights
# (bf16) every 60 s and at the end. Run from the repository root.
set -o pipefail
export PYTHONUNBUFFERED=1
W=/tmp/vmla-train; mkdir -p $W
VAE=${VAE:-out/vae/vae.pt}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
for V in self noself; do
  for L in mla mha; do
    if [ $L = mla ]; then INIT=models/vmla-tiny.safetensors; else INIT=models/vmla-tiny-mha.safetensors; fi
    if [ $V = self ]; then SC=${SELF_CTX:-0.5}; N=$L; else SC=0; N=$L-noself; fi
    python3 tools/train/train_dit.py --layout $L --vae $VAE --out $W/$N --init $INIT --data v2 \
        --self-ctx $SC --p-first 0.4 --lr 3e-4 --warmup 50 --ema 0.995 --seed 3 \
        --seconds ${DIT_SECONDS:-240} --batch ${BATCH:-64} --log-every 100 --save-every 60 \
        --export $OUT/$N.safetensors > $OUT/train-$N.log 2>&1 &
  done
done
wait
nvidia-smi --query-gpu=memory.used --format=csv,noheader
tail -n 2 $OUT/train-*.log
