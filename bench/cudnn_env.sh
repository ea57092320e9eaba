# bench/cudnn_env.sh — sourced by bench/gpu.sh and bench/serve_gpu.sh on the GPU machine (ROOT = the
# repository). cuDNN is optional: the header for the build, the library for the run (dlopen).
# Sets CUDNN_ARGS (CMake arguments) and CUDNN_LIB; exports LD_LIBRARY_PATH, VMLA_CUDNN_LIB.
CUDNN_ARGS=()
if [ ! -f /usr/local/cuda/include/cudnn_graph.h ]; then
    for d in "$ROOT/.gpudeps/cudnn/include" $(python3 -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__) + "/include")' 2>/dev/null); do
        if [ -f "$d/cudnn_graph.h" ]; then CUDNN_ARGS=(-DVMLA_CUDNN_INCLUDE_DIR="$d"); break; fi
    done
fi
CUDNN_LIB=$(ldconfig -p 2>/dev/null | awk '/libcudnn\.so\.9 /{print $NF; exit}')
if [ -z "$CUDNN_LIB" ]; then
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib $(python3 -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__) + "/lib")' 2>/dev/null); do
        if [ -f "$d/libcudnn.so.9" ]; then CUDNN_LIB=$d/libcudnn.so.9; break; fi
    done
fi
if [ -n "$CUDNN_LIB" ]; then
    export LD_LIBRARY_PATH=$(dirname "$CUDNN_LIB")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export VMLA_CUDNN_LIB=${VMLA_CUDNN_LIB:-$CUDNN_LIB}
fi
echo "cudnn: header args '${CUDNN_ARGS[*]:-/usr/local/cuda/include}', library '${CUDNN_LIB:-none}'"
export VMLA_CUDNN_VERBOSE=${VMLA_CUDNN_VERBOSE:-1}

