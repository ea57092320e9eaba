#!/bin/bash
# Device run 4 (recipe v3, 2026-11-28): continues both DiT layouts from the shipped models
# (models/*.safetensors, tracked files) for the sampler given as SAMPLER_STEPS / SAMPLER_SHIFT (the
# engine runs it from the files' vmla.sampler.* metadata), on data recipe v2, half of the sequences on
# self-reconstructed context (as run 3), an object-weighted loss (--obj-weight), and in arm "ro" half
# of the sequences on the sampler's own inputs (train_dit.rollout_inputs: each step's input made
# by the model's earlier steps from pure noise, target the ground truth); arm "obj" is the same
# without rollout inputs (the ablation). Four processes at once on one GPU for $DIT_SECONDS each,
# run 1's VAE carried as out/vae/vae.pt. Exports the EMA weights (bf16) every 60 s and at the end to
# $OUT/<layout>-<arm>.safetensors (four files of ~12 MiB: the device tool returns at most 8 files of
# 16 MiB each), and the logs as one $OUT/run4-logs.tar.gz. Run from the repository root.
set -o pipefail
export PYTHONUNBUFFERED=1
W=/tmp/vmla-train; mkdir -p $W
R=$W/ret; mkdir -p $R
VAE=${VAE:-out/vae/vae.pt}
ST=${SAMPLER_STEPS:?}; SH=${SAMPLER_SHIFT:?}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee $R/gpu.txt
for V in ro obj; do
  for L in mla mha; do
    if [ $L = mla ]; then INIT=models/vmla-tiny.safetensors; else INIT=models/vmla-tiny-mha.safetensors; fi
    if [ $V = ro ]; then RO=${ROLLOUT:-0.5}; else RO=0; fi
    python3 tools/train/train_dit.py --layout $L --vae $VAE --out $W/$L-$V --init $INIT --data v2 \
        --self-ctx 0.5 --rollout $RO --obj-weight ${OBJ_WEIGHT:-4} --sampler-steps $ST --sampler-shift $SH \
        --uniform-shift $SH --p-first 0.5 --lr ${LR:-2e-4} --warmup 30 --ema 0.99 --seed 4 \
        --seconds ${DIT_SECONDS:-240} --batch ${BATCH:-64} --log-every 50 --save-every 60 \
        --export $OUT/$L-$V.safetensors > $R/train-$L-$V.log 2>&1 &
  done
done
wait
nvidia-smi --query-gpu=memory.used --format=csv,noheader >> $R/gpu.txt
tail -n 2 $R/train-*.log
tar czf $OUT/run4-logs.tar.gz -C $R .
ls -la $OUT
