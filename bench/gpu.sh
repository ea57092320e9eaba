#!/usr/bin/env bash
# bench/gpu.sh — build, check and benchmark the CUDA backend on the GPU machine, in one command.
#
#   bench/gpu.sh --pack-deps     (here, on a Debian/Ubuntu machine with libjansson-dev and
#                                 libopenblas-dev) packs the host libraries the build needs into
#                                 .gpudeps/deps.tar.xz, for a GPU machine that has no package
#                                 manager access. Keep .gpudeps out of git:
#                                     echo /.gpudeps/ >> .git/info/exclude
#   bash bench/gpu.sh            (on the GPU machine, repository root; with the device tool:
#                                 carry [".gpudeps"]) configures, builds, measures the GEMM and
#                                 attention rates (vmla-bench-gpu --micro), runs vmla-test-backend
#                                 and the chunk benchmark (vmla-bench-gpu --no-gemm), and writes logs
#                                 under $OUT (default ./out-gpu): gpu.log, micro.log,
#                                 test_backend.log, bench.log, configure.log, build.log.
#                                 Exit status: the parity test's. Results go to bench/RESULTS.md.
#
# Dependencies: the build needs pkg-config, jansson and OpenBLAS (the CPU reference backend). When
# `pkg-config --exists jansson openblas` fails, the script unpacks .gpudeps/deps.tar.xz into
# /tmp/vmla-deps (headers, shared libraries, .pc files with relocatable prefixes, and pkgconf
# itself) and points PKG_CONFIG_PATH / LD_LIBRARY_PATH / PATH there. The libraries are Debian 12's
# (glibc 2.36), which run on any newer glibc.
#
# Environment:
#   VMLA_GPU_SRC     source tree to build (default: the current directory)
#   VMLA_COMMIT      commit id to print in the logs (default: git rev-parse if .git is present)
#   VMLA_BENCH_ARGS  arguments for vmla-bench-gpu (default: --chunks 6)
#   VMLA_CUDNN_LIB   libcudnn.so.9 to open (default: found through ldconfig, /usr/local/cuda, or
#                    PyTorch's nvidia.cudnn package; its folder also goes on LD_LIBRARY_PATH). The
#                    header comes from /usr/local/cuda/include, else .gpudeps/cudnn/include, else
#                    the nvidia.cudnn package; without one the build has no cuDNN attention.
#   VMLA_CUDA_ARCHS  CUDA architectures (default 90a-real: the H200 only, the fastest build)
#   VMLA_TEST_TIMEOUT, VMLA_BENCH_TIMEOUT  seconds (default 300, 400)
#
# The benchmark starts first, in the background: its first ~minute draws 2.8 G random weights on
# one CPU core, while the parity test runs in the foreground; the test is done long before the
# benchmark's timed chunks begin (both logs carry timestamps to show it).
set -uo pipefail

ROOT=$(pwd)
if [ "${1:-}" = "--pack-deps" ]; then
    set -e
    D=$(mktemp -d)
    mkdir -p "$D/include" "$D/lib/pkgconfig" "$D/bin"
    ML=/usr/lib/x86_64-linux-gnu
    OB=$(dirname "$(readlink -f $ML/libopenblas.so.0)")
    cp /usr/include/jansson.h /usr/include/jansson_config.h "$D/include/"
    cp "$(pkg-config --variable=includedir openblas 2>/dev/null || echo /usr/include/x86_64-linux-gnu/openblas-pthread)"/{cblas.h,openblas_config.h} "$D/include/" 2>/dev/null ||
        cp /usr/include/x86_64-linux-gnu/openblas-pthread/{cblas.h,openblas_config.h} "$D/include/"
    cp -L $ML/libjansson.so.4 "$D/lib/libjansson.so.4"
    cp -L "$OB/libopenblas.so.0" "$D/lib/libopenblas.so.0"
    cp -L $ML/libgfortran.so.5 $ML/libquadmath.so.0 "$D/lib/"
    ln -s libjansson.so.4 "$D/lib/libjansson.so"
    ln -s libopenblas.so.0 "$D/lib/libopenblas.so"
    cp -L "$(command -v pkgconf || command -v pkg-config)" "$D/bin/pkg-config"
    cp -L $ML/libpkgconf.so.3 "$D/lib/" 2>/dev/null || true
    for n in jansson openblas; do
        cat > "$D/lib/pkgconfig/$n.pc" <<EOF
prefix=\${pcfiledir}/../..
libdir=\${prefix}/lib
includedir=\${prefix}/include
Name: $n
Description: carried by bench/gpu.sh --pack-deps
Version: 0
Libs: -L\${libdir} -l$n
Cflags: -I\${includedir}
EOF
    done
    mkdir -p "$ROOT/.gpudeps"
    tar -C "$D" -cJf "$ROOT/.gpudeps/deps.tar.xz" .
    rm -rf "$D"
    ls -la "$ROOT/.gpudeps"
    exit 0
fi

OUT=${OUT:-$ROOT/out-gpu}
mkdir -p "$OUT"
SRC=${VMLA_GPU_SRC:-$ROOT}
BUILD=/tmp/vmla-build-gpu
LOG=$OUT/gpu.log
exec > >(tee -a "$LOG") 2>&1
ts() { date -u +%H:%M:%S; }

echo "== $(ts) bench/gpu.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
COMMIT=${VMLA_COMMIT:-$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "commit: $COMMIT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
nvcc --version 2>/dev/null | tail -1 || true
cmake --version | head -1
echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

# ---- dependencies -------------------------------------------------------------------------------
if ! (command -v pkg-config >/dev/null && pkg-config --exists jansson openblas); then
    if [ -f "$ROOT/.gpudeps/deps.tar.xz" ]; then
        echo "== $(ts) jansson/openblas/pkg-config missing here: using the carried .gpudeps"
        rm -rf /tmp/vmla-deps && mkdir -p /tmp/vmla-deps && tar -C /tmp/vmla-deps -xJf "$ROOT/.gpudeps/deps.tar.xz"
        export PKG_CONFIG_PATH=/tmp/vmla-deps/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
        export LD_LIBRARY_PATH=/tmp/vmla-deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        command -v pkg-config >/dev/null || export PATH=/tmp/vmla-deps/bin:$PATH
    else
        echo "error: jansson/openblas not found and no .gpudeps/deps.tar.xz (run bench/gpu.sh --pack-deps here)"
        exit 1
    fi
fi

# ---- cuDNN (optional) ----------------------------------------------------------------------------
. "$ROOT/bench/cudnn_env.sh"

# ---- configure and build ------------------------------------------------------------------------
# The fragment kernels/cuda/CMakeLists.txt must be included by the top-level CMakeLists.txt; if it
# is not (yet), build a copy of the tree that includes it.
if ! grep -q 'kernels/cuda/CMakeLists.txt' "$SRC/CMakeLists.txt"; then
    echo "== $(ts) top-level CMakeLists.txt does not include the CUDA fragment: building a patched copy"
    rm -rf /tmp/vmla-src && mkdir -p /tmp/vmla-src
    (cd "$SRC" && tar --exclude=./build* --exclude=./.gpudeps --exclude=./.git -cf - .) | tar -C /tmp/vmla-src -xf -
    printf '\nif(VMLA_HAVE_CUDA)\n  include(kernels/cuda/CMakeLists.txt)\nendif()\n' >> /tmp/vmla-src/CMakeLists.txt
    SRC=/tmp/vmla-src
fi
echo "== $(ts) configure"
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVMLA_CUDA=ON -DVMLA_FFMPEG=OFF \
    -DVMLA_CUDA_ARCHS="${VMLA_CUDA_ARCHS:-90a-real}" "${CUDNN_ARGS[@]}" > "$OUT/configure.log" 2>&1 ||
    { tail -40 "$OUT/configure.log"; exit 1; }
echo "== $(ts) build"
ninja -C "$BUILD" vmla-test-backend vmla-bench-gpu > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
grep -iE 'warning|spill' "$OUT/build.log" | head -20
grep -E 'vmla: cuDNN' "$OUT/configure.log"

# ---- kernel rates, then the benchmark (background) and the parity test (foreground) -------------
echo "== $(ts) GEMM and attention rates: vmla-bench-gpu --micro"
timeout ${VMLA_MICRO_TIMEOUT:-240} "$BUILD/vmla-bench-gpu" --micro 2>&1 | tee "$OUT/micro.log"
echo "== $(ts) benchmark starts (background): vmla-bench-gpu --no-gemm ${VMLA_BENCH_ARGS:---chunks 6}"
( timeout ${VMLA_BENCH_TIMEOUT:-400} "$BUILD/vmla-bench-gpu" --no-gemm ${VMLA_BENCH_ARGS:---chunks 6} 2>&1 | while IFS= read -r l; do echo "$(ts) $l"; done \
    > "$OUT/bench.log" ) &
BENCH=$!
echo "== $(ts) parity test: vmla-test-backend"
VMLA_SOURCE_DIR=$SRC timeout ${VMLA_TEST_TIMEOUT:-300} "$BUILD/vmla-test-backend" > "$OUT/test_backend.log" 2>&1
TRC=$?
grep -E '^FAIL' "$OUT/test_backend.log" | head -40
sed -n '/^op\/mode/,$p' "$OUT/test_backend.log"
grep -E '^  engine' "$OUT/test_backend.log"
echo "== $(ts) parity test exit $TRC"
wait $BENCH
echo "== $(ts) benchmark done"
cat "$OUT/bench.log"
nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv 2>&1 | tail -1 || true
exit $TRC
