#!/bin/bash
# Device runs 5 and 6 (2026-11-29): DiT layouts trained from scratch, two at once on one GPU
# for $DIT_SECONDS each, on data recipe v3 (the video is a function of the prompt: centre start,
# half-size 13, 1.5 px/frame), for the 6-step shift-1 sampler, half of the sequences on
# self-reconstructed context, an object-weighted loss; run 1's VAE carried as out/vae/vae.pt.
# Exports the EMA weights (bf16) every 60 s and at the end to $OUT/<layout>.safetensors, the logs
# as one $OUT/logs.tar.gz. INIT_MLA / INIT_MHA (exported files) continue from earlier weights
# (a second run: fresh optimiser, the files' weights): device run 7 (2026-11-29) trained both
# shipped layouts on from runs 5 and 6 this way, side by side (models/README.md, "Exact commands").
# Run from the repository root.
set -o pipefail
export PYTHONUNBUFFERED=1
W=/tmp/vmla-train; mkdir -p $W
R=$W/ret; mkdir -p $R
VAE=${VAE:-out/vae/vae.pt}
ST=1000,833,667,500,333,167; SH=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee $R/gpu.txt
(for i in $(seq 1 40); do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; sleep 15; done) > $R/util.txt 2>&1 &
UPID=$!
# ARMS: what to train, "mla", "mha" or "mla:DC,DR" (an MLA of other widths, --mla-dims); STEPS
# fixes the step count (run 5's 2736 / 2733), else it is fixed from DIT_SECONDS after 60 steps
PIDS=""
for A in ${ARMS:-mla mha}; do
  L=${A%%:*}; DIMS=; [ "$A" != "$L" ] && DIMS=${A#*:}
  N=$L${DIMS:+-${DIMS/,/-}}
  if [ $L = mla ]; then INIT=${INIT_MLA:-}; else INIT=${INIT_MHA:-}; fi
  python3 tools/train/train_dit.py --layout $L ${DIMS:+--mla-dims $DIMS} --vae $VAE --out $W/$N ${INIT:+--init $INIT} --data v3 \
      --self-ctx 0.5 --obj-weight ${OBJ_WEIGHT:-4} --sampler-steps $ST --sampler-shift $SH \
      --uniform-shift $SH --p-first ${P_FIRST:-0.4} --lr ${LR:-6e-4} --warmup ${WARMUP:-150} \
      --ema ${EMA:-0.998} --seed ${SEED:-5} --seconds ${DIT_SECONDS:-510} ${STEPS:+--steps $STEPS} --batch ${BATCH:-64} \
      --log-every 100 --save-every 60 --export $OUT/$N.safetensors > $R/train-$N.log 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS
kill $UPID 2>/dev/null
for d in $W/*/; do [ -f $d/summary.json ] && cp $d/summary.json $R/summary-$(basename $d).json; done
tail -n 3 $R/train-*.log
tar czf $OUT/logs.tar.gz -C $R .
ls -la $OUT
