#!/usr/bin/env bash
# bench/serve_gpu.sh — vmla-bench serve on the GPU machine, both sizes, in one command.
#
#   bash bench/serve_gpu.sh     (repository root, on the GPU machine; with the device tool carry
#                                [".gpudeps"], see bench/gpu.sh for why). Logs and JSON under $OUT.
# Builds vmla-bench only (CUDA on, FFmpeg and server off, sm_90a), then:
#   480x832 (latent 60x104): residency in a 40 GB pool, offload, throughput N = 1,2,4,8
#   240x416 (latent 30x52):  residency, offload, throughput N = 1..32, real-time admission
# Environment: VMLA_SERVE_FULL / VMLA_SERVE_PREVIEW override the argument lists (empty: skip);
#   VMLA_GPU_ALL=1 first also runs the parity test (vmla-test-backend), the chunk benchmark with the
#   MLA layout absorbing and rebuilding (vmla-bench-gpu, one process each) and the PyTorch peer
#   (bench/peer.py), so every figure of a session comes from one command on one machine;
#   VMLA_MLA_FORMS (default "absorb rebuild"), VMLA_CHUNK_ARGS (default "--no-gemm --chunks 5 --attn
#   cudnn") and VMLA_PEER=0 (skip the peer) narrow that part.
set -uo pipefail
OUT=${OUT:-$PWD/out-serve}
mkdir -p "$OUT"
if ! pkg-config --exists jansson openblas 2>/dev/null; then
    mkdir -p /tmp/vmla-deps && tar -xJf .gpudeps/deps.tar.xz -C /tmp/vmla-deps || exit 1
    export PKG_CONFIG_PATH=/tmp/vmla-deps/lib/pkgconfig LD_LIBRARY_PATH=/tmp/vmla-deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export PATH=/tmp/vmla-deps/bin:$PATH
fi
ROOT=$PWD
. "$ROOT/bench/cudnn_env.sh"
t0=$(date +%s)
cmake -S . -B build-serve -G "$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')" \
    -DCMAKE_BUILD_TYPE=Release -DVMLA_CUDA=ON -DVMLA_FFMPEG=OFF -DVMLA_SERVER=OFF \
    -DVMLA_CUDA_ARCHS=90a-real "${CUDNN_ARGS[@]}" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
TARGETS="vmla-bench"
[ "${VMLA_GPU_ALL:-0}" = 1 ] && TARGETS="vmla-bench vmla-bench-gpu vmla-test-backend"
cmake --build build-serve -j16 --target $TARGETS >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"; grep -E 'vmla: cuDNN' "$OUT/configure.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${VMLA_GPU_ALL:-0}" = 1 ]; then
    VMLA_SOURCE_DIR=$PWD VMLA_BUILD_DIR=$PWD/build-serve timeout 200 build-serve/vmla-test-backend >"$OUT/test_backend.log" 2>&1
    echo "parity: exit $? ($(tail -1 "$OUT/test_backend.log"))"
    for m in ${VMLA_MLA_FORMS-absorb rebuild}; do
        VMLA_MLA=$m VMLA_CUDA_PROFILE=1 timeout 240 build-serve/vmla-bench-gpu ${VMLA_CHUNK_ARGS---no-gemm --chunks 5 --attn cudnn} \
            --preset wan-1.3b --preset wan-1.3b-mla >"$OUT/chunk-$m.log" 2>&1
        echo "chunk benchmark, MLA $m: exit $?"; grep -E "median|frames/s|idle|ratio" "$OUT/chunk-$m.log" | head -12
    done
    if [ "${VMLA_PEER:-1}" = 1 ]; then
        timeout 200 python3 bench/peer.py --chunks 6 >"$OUT/peer.log" 2>&1; echo "peer: exit $?"; cat "$OUT/peer.log"
    fi
fi
FULL=${VMLA_SERVE_FULL-"--latent-h 60 --latent-w 104 --pool-gb 40 --streams 1,2,4,8 --chunks 2"}
PREV=${VMLA_SERVE_PREVIEW-"--latent-h 30 --latent-w 52 --pool-gb 40 --streams 1,2,4,8,16,32 --chunks 3 --rt-streams 8,16,32 --rt-seconds 6 --rt-gap 0.1"}
[ -n "$FULL" ] && VMLA_CUDA_PROFILE=1 timeout 300 build-serve/vmla-bench serve --preset wan-1.3b --device cuda $FULL \
    --json "$OUT/serve-480x832.json" 2>&1 | tee "$OUT/serve-480x832.log"
[ -n "$PREV" ] && VMLA_CUDA_PROFILE=1 timeout 300 build-serve/vmla-bench serve --preset wan-1.3b --device cuda $PREV \
    --json "$OUT/serve-240x416.json" 2>&1 | tee "$OUT/serve-240x416.log"
echo "total $(( $(date +%s) - t0 )) s"
