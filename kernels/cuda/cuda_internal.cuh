/* kernels/cuda/cuda_internal.cuh — what the CUDA backend's .cu files share (C++; never included
 * from C). The public entry point is kn_cuda_backend_new (kernels/backend.h); everything here is
 * private to kernels/cuda/.
 *
 * Device views: a kernel sees a tensor as a `dview` — a pointer to element (0, 0), its dtype and its
 * row stride in elements — and loads/stores floats through it, converting on the fly; every op
 * therefore accepts f32, bf16 and f16 tensors in any mix, and computes in fp32.
 */
#ifndef VMLA_KERNELS_CUDA_INTERNAL_CUH
#define VMLA_KERNELS_CUDA_INTERNAL_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "kernels/backend_impl.h"
}

/* ---- the backend's state ----------------------------------------------------------------------- */

typedef struct {
    kn_backend_ops ops; /* a copy of the table: compute_dtype depends on the mode */
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt; /* for kn_linear with a bias: the bias add fused as a GEMM epilogue */
    void *blas_ws; /* cuBLAS workspace, fixed size, set once */
    size_t blas_ws_bytes;
    void *scratch; /* grows to the largest size an op has needed, then stays */
    size_t scratch_bytes;
    int32_t *pin_pages; /* pinned staging ring for page tables (host) ... */
    int32_t *dev_pages; /* ... and its device twin */
    size_t ring_cap, ring_pos;
    int attn_tc;        /* attention kernel: 0 simple, 1 tensor cores (pipelined), 2 tensor cores
                           with synchronous tile loads (the first version, kept for comparison) */
    int smem_optin;     /* bytes of dynamic shared memory a block may opt in to */
    int attn_tc_ok;     /* the probe's answer: the tensor-core kernels may be used */
    int attn_batch;     /* kn_attention_batch may batch streams into one cuDNN call (default 1;
                           VMLA_CUDA_ATTN_BATCH=0: one call a stream, for comparison) */
    int norm_warp;      /* norms of rows up to 2048 wide take a warp a row (default 1;
                           VMLA_CUDA_NORM_WARP=0: a block a row, for comparison) */
    struct cu_dnn *dnn; /* cuDNN's fused attention (cuda_cudnn_attn.cu), or NULL: our kernels */
    const char *attn_last; /* which path the last kn_attention took (for tests and benchmarks) */
    struct cu_prof *prof;  /* per-op event timing (VMLA_CUDA_PROFILE=1), or NULL */
    struct lt_cache *ltc;  /* cublasLt descriptors and algorithms by shape (cuda_backend.cu) */
    /* page-locked staging for kn_upload (cuda_backend.cu, cu_stage): a copy from pageable memory
     * would make the driver wait for everything on the stream first */
    char *stage;
    size_t stage_cap, stage_pos;
    cudaEvent_t stage_ev[2];
    int stage_ev_set[2];
} cu_impl;

/* Bytes of an element (kernels/backend.c has kn_dtype_size; kept local so vmla_cuda links alone). */
static inline size_t esz(int t) { return t == KN_F32 ? 4 : 2; }

static inline cu_impl *cu_of(kn_backend_t *be) { return (cu_impl *)be->impl; }

/* Rows r0 .. r0+n-1 of a view (kn_rows, likewise local). */
static inline kn_tensor cu_rows(kn_tensor t, int64_t r0, int64_t n)
{
    t.off += (size_t)(r0 * t.ld) * esz(t.dtype);
    t.rows = n;
    return t;
}

/* Record a message on the backend (kernels/backend.c's kn_fail has C linkage we avoid depending on,
 * so that vmla_cuda needs nothing from vmla_kernels). Returns st. */
kn_status cu_fail(kn_backend_t *be, kn_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* KN_OK, or KN_ERR_DEVICE with "what: <CUDA message>" recorded. */
kn_status cu_check(kn_backend_t *be, cudaError_t e, const char *what);
/* The last launch's error, if any (cudaGetLastError). */
kn_status cu_launched(kn_backend_t *be, const char *what);
/* Device scratch of at least `bytes` (valid until the next call; stream-ordered reuse is safe). */
void *cu_scratch(kn_backend_t *be, size_t bytes, kn_status *st);
/* Copy n page indices from host memory to device memory through the pinned ring; returns the
 * device pointer (valid for work enqueued next on the stream), or NULL with *st set. */
const int32_t *cu_pages(kn_backend_t *be, const int32_t *host, int64_t n, kn_status *st);

/* ---- device views ------------------------------------------------------------------------------ */

typedef struct {
    char *p;    /* element (0, 0) */
    int dt;     /* kn_dtype */
    int64_t ld; /* elements between rows */
} dview;

static inline dview cu_view(kn_tensor t)
{
    dview v;
    v.p = (char *)t.buf->ptr + t.off;
    v.dt = (int)t.dtype;
    v.ld = t.ld;
    return v;
}

__device__ __forceinline__ float ld_el(const char *p, int dt, int64_t i)
{
    if (dt == KN_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == KN_F16)
        return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

__device__ __forceinline__ void st_el(char *p, int dt, int64_t i, float v)
{
    if (dt == KN_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else if (dt == KN_F16)
        ((__half *)p)[i] = __float2half_rn(v);
    else
        ((float *)p)[i] = v;
}

__device__ __forceinline__ float dv_get(dview v, int64_t r, int64_t c) { return ld_el(v.p, v.dt, r * v.ld + c); }
__device__ __forceinline__ void dv_set(dview v, int64_t r, int64_t c, float x) { st_el(v.p, v.dt, r * v.ld + c, x); }

/* ---- attention (cuda_attention.cu) ------------------------------------------------------------- */

/* Set the attention kernels' shared-memory limits; with want_tc, probe the tensor-core accumulator
 * layout the fast kernel relies on. Returns 1 when the tensor-core kernel may be used. A device
 * failure leaves a message in be->err. */
int cu_attention_probe(kn_backend_t *be, int want_tc);
kn_status cu_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads,
                       float scale);
/* kn_attention_batch: runs of streams whose sources match in length and layout go to cuDNN as one
 * batched call (in sizes of 8, 4, 2); the rest, and everything without cuDNN, one call a stream. */
kn_status cu_attention_batch(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int n, int q_heads,
                             float scale);
kn_status cu_kv_store(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor src);
kn_status cu_kv_store_batch(kn_backend_t *be, const kn_kv *kv, const int64_t *tok0, int n, int64_t col, kn_tensor src);
kn_status cu_kv_load(kn_backend_t *be, kn_tensor dst, const kn_kv *kv, int64_t tok0, int64_t col);

/* ---- cuDNN fused attention (cuda_cudnn_attn.cu) ----------------------------------------------------- */

/* Load libcudnn (dlopen) and make a handle on the backend's stream; paged: hand the KV pages to
 * cuDNN as containers + page table instead of gathering them. Returns 1, or 0 with the reason in
 * why (library missing, too old, built without cuDNN). */
int cu_dnn_open(kn_backend_t *be, int paged, char *why, size_t n);
void cu_dnn_close(kn_backend_t *be);
/* The attention through cuDNN; KN_ERR_UNSUPPORTED (no message) when cuDNN does not take this
 * shape or dtype, so the caller runs its own kernel. */
kn_status cu_dnn_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads,
                           float scale);
/* The same for nb streams at once (rows [b*r, (b+1)*r) of q and out over kv[b]): their windows
 * gathered into one scratch with one launch, then one batched cuDNN call. The sources must match in
 * length and layout (cu_attention_batch checks); KN_ERR_UNSUPPORTED (no message) when cuDNN does not
 * take it. */
kn_status cu_dnn_attention_batch(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int nb,
                                 int q_heads, float scale);
typedef struct {
    long version;                   /* cudnnGetVersion(), 0 when not loaded */
    int plans_built, plans_failed;  /* shapes with a plan / shapes no engine took */
    double build_s;                 /* seconds spent building plans */
    int paged;
    char why[256];                  /* why the last refused shape was refused */
} cu_dnn_stats;
void cu_dnn_info(const kn_backend_t *be, cu_dnn_stats *s);

/* ---- per-op event timing (cuda_prof.cu) --------------------------------------------------------------- */

/* Wrap the backend's op table (be->ops must be the impl's own copy) so that ops can be timed with
 * events once kn_cuda_profile_on(be, 1) is called. Returns 0 if the events could not be made. */
int cu_prof_install(kn_backend_t *be);
void cu_prof_free(kn_backend_t *be);

#endif
