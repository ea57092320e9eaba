/* kernels/cuda/cuda_backend.cu — the CUDA backend: device buffers, data movement, the op table,
 * cuBLAS matrix products and the plain kernels (elementwise, norms, RoPE, layout, convolution).
 * Attention and the KV store are in cuda_attention.cu.
 *
 * Modes. kn_cuda_backend_new(device, err, errlen) makes a backend whose compute dtype is bf16:
 * the engine then keeps weights and activations in bf16, and every op computes in fp32 (fp32
 * accumulation in cuBLAS: CUBLAS_COMPUTE_32F; fp32/fp64 statistics in the norms; RoPE and the
 * timestep sinusoid in fp64 as the reference). Set the environment variable
 *     VMLA_CUDA_DTYPE=f32
 * before creating the backend to get an fp32-mode backend (compute dtype f32, plain SGEMM without
 * TF32), which matches the CPU reference to ~1e-6 and is what the parity tests use.
 *     VMLA_CUDA_ATTN=cudnn | cudnn-paged | tc | tc-sync | simple
 * picks the attention: by default (or cudnn) cuDNN's fused flash attention when libcudnn loads
 * (bf16 mode; KV pages gathered into a contiguous scratch, or with cudnn-paged handed to cuDNN as a
 * page table; cuda_cudnn_attn.cu), with our tensor-core kernel for what cuDNN does not take; tc:
 * our tensor-core kernel alone; tc-sync: its first version (synchronous tile loads); simple: the
 * reference kernel. VMLA_CUDNN_SDPA=unified|composite picks cuDNN's graph form.
 *     VMLA_CUDA_PROFILE=1
 * wraps every op for event timing (cuda_prof.cu; off until kn_cuda_profile_on).
 *     VMLA_CUDA_NO_LT=1
 * makes kn_linear add its bias by a broadcast and beta = 1 instead of cublasLt's bias epilogue.
 *     VMLA_CUDA_ATTN_BATCH=0, VMLA_CUDA_NORM_WARP=0
 * turn off the batched cuDNN attention (one call a stream) and the warp-a-row norms (a block a
 * row): the paths they replaced, for comparisons in one run.
 *
 * Every op accepts any mix of f32/bf16/f16 views (loads and stores convert); matrix products
 * convert mismatched operands into scratch first. All ops are asynchronous on the backend's one
 * stream; kn_sync and kn_download wait. Device memory: kn_buffer_alloc (cudaMalloc) at engine
 * init; the backend's own scratch grows to the largest size an op needed and stays; page tables
 * travel through a pinned ring (cuda_attention.cu). Every CUDA and cuBLAS call is checked; a
 * failure becomes KN_ERR_DEVICE with the CUDA message on the backend (kn_backend_error).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.cuh"

/* ---- errors and scratch ----------------------------------------------------------------------- */

kn_status cu_fail(kn_backend_t *be, kn_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err, sizeof be->err, fmt, ap);
    va_end(ap);
    return st;
}

kn_status cu_check(kn_backend_t *be, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return KN_OK;
    return cu_fail(be, KN_ERR_DEVICE, "cuda: %s: %s", what, cudaGetErrorString(e));
}

kn_status cu_launched(kn_backend_t *be, const char *what) { return cu_check(be, cudaGetLastError(), what); }

static kn_status blas_check(kn_backend_t *be, cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return KN_OK;
    return cu_fail(be, KN_ERR_DEVICE, "cublas: %s: %s", what, cublasGetStatusString(s));
}

void *cu_scratch(kn_backend_t *be, size_t bytes, kn_status *st)
{
    cu_impl *c = cu_of(be);
    *st = KN_OK;
    if (bytes <= c->scratch_bytes)
        return c->scratch;
    /* grow: wait until nothing enqueued still reads the old one */
    size_t n = bytes + bytes / 4;
    n = (n + 4095) / 4096 * 4096;
    if ((*st = cu_check(be, cudaStreamSynchronize(c->stream), "scratch: sync")) != KN_OK)
        return NULL;
    if (c->scratch)
        cudaFree(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
    if ((*st = cu_check(be, cudaMalloc(&c->scratch, n), "scratch: cudaMalloc")) != KN_OK) {
        c->scratch = NULL;
        *st = KN_ERR_NOMEM;
        return NULL;
    }
    c->scratch_bytes = n;
    return c->scratch;
}

static size_t align256(size_t b) { return (b + 255) / 256 * 256; }

/* ---- elementwise ------------------------------------------------------------------------------
 * One kernel for every row/column-wise elementwise op: a 2-D grid, threads along the columns,
 * uniform switch on the op. Vectors (shift, scale, gate; z of axpby) are per-group views
 * (backend.h): row r reads the vector's row r / rpg (rpg = rows per group; z of a same-shape axpby
 * has rpg 1). */
enum {
    EW_COPY,       /* y = x */
    EW_BCAST,      /* y[r][c] = v1[c] */
    EW_MODULATE,   /* y = x * (1 + v2[c]) + v1[c]       (v1 shift, v2 scale) */
    EW_GATE,       /* y += x * v1[c]                    (y is the residual) */
    EW_ADD,        /* y += x */
    EW_AXPBY,      /* y = a*x + b*z */
    EW_AX,         /* y = a*x */
    EW_GELU,       /* y = gelu_tanh(x) */
    EW_SILU,       /* y = x / (1 + exp(-x)) */
    EW_CLAMP,      /* y = clamp(x, a, b) */
    EW_ROW_AFFINE, /* y = x * v1[r] + v2[r]             (v1 scale, v2 shift) */
};

__global__ void k_ew(int op, dview y, dview x, dview z, dview v1, dview v2, float a, float b, int64_t rows,
                     int64_t cols, int64_t rpg)
{
    for (int64_t r = (int64_t)blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += (int64_t)gridDim.y * blockDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols;
             c += (int64_t)gridDim.x * blockDim.x) {
            int64_t g = r / rpg;
            float v;
            switch (op) {
            case EW_COPY: v = dv_get(x, r, c); break;
            case EW_BCAST: v = ld_el(v1.p, v1.dt, c); break;
            case EW_MODULATE: v = dv_get(x, r, c) * (1.0f + dv_get(v2, g, c)) + dv_get(v1, g, c); break;
            case EW_GATE: v = dv_get(y, r, c) + dv_get(x, r, c) * dv_get(v1, g, c); break;
            case EW_ADD: v = dv_get(y, r, c) + dv_get(x, r, c); break;
            case EW_AXPBY: v = a * dv_get(x, r, c) + b * dv_get(z, g, c); break;
            case EW_AX: v = a * dv_get(x, r, c); break;
            case EW_GELU: {
                float u = dv_get(x, r, c);
                v = 0.5f * u * (1.0f + tanhf(0.7978845608028654f * (u + 0.044715f * u * u * u)));
                break;
            }
            case EW_SILU: {
                float u = dv_get(x, r, c);
                v = u / (1.0f + expf(-u));
                break;
            }
            case EW_CLAMP: {
                float u = dv_get(x, r, c);
                v = u < a ? a : u > b ? b : u;
                break;
            }
            case EW_ROW_AFFINE: v = dv_get(x, r, c) * ld_el(v1.p, v1.dt, r) + ld_el(v2.p, v2.dt, r); break;
            default: v = 0.0f;
            }
            dv_set(y, r, c, v);
        }
}

static dview no_view(void)
{
    dview v;
    v.p = NULL;
    v.dt = KN_F32;
    v.ld = 0;
    return v;
}

/* The same ops on bf16 views, 8 elements (16 bytes) a thread: what the chunk's activations take
 * (rows of 1536 or 8960 bf16 values). The scalar kernel above spends most of its time on index
 * arithmetic and dtype switches (GELU over [4680, 8960] took 0.2 ms, 4x its memory time); this one
 * moves the same bytes with 16-byte loads. Same fp32 math, same rounding. */
__device__ __forceinline__ void ld8(const char *p, float *f)
{
    uint4 u = *(const uint4 *)p;
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}

__device__ __forceinline__ void st8(char *p, const float *f)
{
    uint4 u;
    __nv_bfloat162 *h = (__nv_bfloat162 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++)
        h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *(uint4 *)p = u;
}

template <int OP>
__global__ void k_ew8(dview y, dview x, dview z, dview v1, dview v2, float a, float b, int64_t rows, int64_t cols8,
                      int64_t rpg)
{
    const int64_t n = rows * cols8;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols8, c = (i - r * cols8) * 8;
        int64_t g = (OP == EW_MODULATE || OP == EW_GATE || OP == EW_AXPBY) ? r / rpg : 0;
        float u[8], o[8], w[8], t[8];
        ld8(x.p + (r * x.ld + c) * 2, u);
        if (OP == EW_MODULATE) {
            ld8(v1.p + (g * v1.ld + c) * 2, w);
            ld8(v2.p + (g * v2.ld + c) * 2, t);
        }
        if (OP == EW_GATE)
            ld8(v1.p + (g * v1.ld + c) * 2, w);
        if (OP == EW_GATE || OP == EW_ADD)
            ld8(y.p + (r * y.ld + c) * 2, t);
        if (OP == EW_AXPBY)
            ld8(z.p + (g * z.ld + c) * 2, t);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float v = u[k];
            switch (OP) {
            case EW_COPY: o[k] = v; break;
            case EW_MODULATE: o[k] = v * (1.0f + t[k]) + w[k]; break;
            case EW_GATE: o[k] = t[k] + v * w[k]; break;
            case EW_ADD: o[k] = t[k] + v; break;
            case EW_AXPBY: o[k] = a * v + b * t[k]; break;
            case EW_AX: o[k] = a * v; break;
            case EW_GELU: o[k] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v))); break;
            case EW_SILU: o[k] = v / (1.0f + expf(-v)); break;
            default: o[k] = 0.0f;
            }
        }
        st8(y.p + (r * y.ld + c) * 2, o);
    }
}

/* Whether a bf16 view of `cols` (multiple of 8) columns is 16-byte aligned in every row. */
static int bf16_vec_ok(dview v) { return v.dt == KN_BF16 && v.ld % 8 == 0 && ((uintptr_t)v.p & 15u) == 0; }

static kn_status ew_g(kn_backend_t *be, int op, dview y, dview x, dview z, dview v1, dview v2, float a, float b,
                      int64_t rows, int64_t cols, int64_t rpg, const char *name)
{
    if (rows <= 0 || cols <= 0)
        return KN_OK;
    if (rpg <= 0)
        rpg = 1;
    int uses_z = op == EW_AXPBY, uses_v1 = op == EW_MODULATE || op == EW_GATE, uses_v2 = op == EW_MODULATE;
    if (cols % 8 == 0 && op <= EW_SILU && op != EW_BCAST && bf16_vec_ok(y) && bf16_vec_ok(x) &&
        (!uses_z || bf16_vec_ok(z)) && (!uses_v1 || bf16_vec_ok(v1)) && (!uses_v2 || bf16_vec_ok(v2))) {
        int64_t cols8 = cols / 8, n = rows * cols8, blocks = (n + 255) / 256;
        if (blocks > 132 * 32)
            blocks = 132 * 32;
        cudaStream_t st = cu_of(be)->stream;
        dim3 g((unsigned)blocks), t(256);
        switch (op) {
        case EW_COPY: k_ew8<EW_COPY><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        case EW_MODULATE: k_ew8<EW_MODULATE><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        case EW_GATE: k_ew8<EW_GATE><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        case EW_ADD: k_ew8<EW_ADD><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        case EW_AXPBY: k_ew8<EW_AXPBY><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        case EW_AX: k_ew8<EW_AX><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        case EW_GELU: k_ew8<EW_GELU><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        default: k_ew8<EW_SILU><<<g, t, 0, st>>>(y, x, z, v1, v2, a, b, rows, cols8, rpg); break;
        }
        return cu_launched(be, name);
    }
    int bx = cols >= 256 ? 256 : (int)((cols + 31) / 32 * 32);
    int by = 256 / bx;
    int64_t gx = (cols + bx - 1) / bx, gy = (rows + by - 1) / by;
    if (gx > 4096)
        gx = 4096;
    if (gy > 65535)
        gy = 65535;
    k_ew<<<dim3((unsigned)gx, (unsigned)gy), dim3(bx, by), 0, cu_of(be)->stream>>>(op, y, x, z, v1, v2, a, b, rows, cols,
                                                                                  rpg);
    return cu_launched(be, name);
}

/* the ops without per-group vectors; a same-shape z */
static kn_status ew(kn_backend_t *be, int op, dview y, dview x, dview z, dview v1, dview v2, float a, float b,
                    int64_t rows, int64_t cols, const char *name)
{
    return ew_g(be, op, y, x, z, v1, v2, a, b, rows, cols, 1, name);
}

/* y = x with conversion, strided both sides (also used to stage operands). */
static kn_status copy_view(kn_backend_t *be, dview y, dview x, int64_t rows, int64_t cols)
{
    return ew(be, EW_COPY, y, x, no_view(), no_view(), no_view(), 0, 0, rows, cols, "copy");
}

/* ---- matrix products (cuBLAS, column-major view of row-major data) -----------------------------
 * Row-major y[N, out] = x[N, in] @ w[out, in]^T is, column-major, y^T = w^T-op(w) * x^T:
 *   gemm(opA = T, opB = N, m = out, n = N, k = in, A = w (ld w.ld), B = x (ld x.ld), C = y (ld y.ld)).
 * Operands of a type cuBLAS cannot pair are converted into scratch; an output type it cannot write
 * for those inputs goes through an fp32 scratch and a copy. */
static cudaDataType cu_dtype(int t)
{
    return t == KN_BF16 ? CUDA_R_16BF : t == KN_F16 ? CUDA_R_16F : CUDA_R_32F;
}

typedef struct {
    dview a, b, c;   /* operands after staging */
    dview y;         /* the real output */
    int via_tmp;     /* c is an fp32 temporary to copy into y */
} gemm_plan;

/* Stage x, w (rows/cols given) and the output y for a product; the scratch holds what needs
 * converting. ab: the common input type. */
static kn_status gemm_stage(kn_backend_t *be, gemm_plan *p, kn_tensor x, kn_tensor w, kn_tensor y)
{
    int ab = x.dtype == w.dtype ? (int)x.dtype : KN_F32;
    int conv_x = (int)x.dtype != ab, conv_w = (int)w.dtype != ab;
    int via_tmp = !((int)y.dtype == ab || y.dtype == KN_F32);
    size_t bx = conv_x ? align256((size_t)(x.rows * x.cols) * esz(ab)) : 0;
    size_t bw = conv_w ? align256((size_t)(w.rows * w.cols) * esz(ab)) : 0;
    size_t by = via_tmp ? align256((size_t)(y.rows * y.cols) * 4) : 0;
    char *s = NULL;
    kn_status st = KN_OK;
    if (bx + bw + by) {
        s = (char *)cu_scratch(be, bx + bw + by, &st);
        if (!s)
            return st;
    }
    p->a = cu_view(x);
    p->b = cu_view(w);
    p->y = cu_view(y);
    p->c = p->y;
    p->via_tmp = via_tmp;
    if (conv_x) {
        dview d = {s, ab, x.cols};
        if ((st = copy_view(be, d, p->a, x.rows, x.cols)) != KN_OK)
            return st;
        p->a = d;
    }
    if (conv_w) {
        dview d = {s + bx, ab, w.cols};
        if ((st = copy_view(be, d, p->b, w.rows, w.cols)) != KN_OK)
            return st;
        p->b = d;
    }
    if (via_tmp) {
        dview d = {s + bx + bw, KN_F32, y.cols};
        p->c = d;
    }
    return KN_OK;
}

static kn_status gemm(kn_backend_t *be, cublasOperation_t opa, int m, int n, int k, dview A, long long sa, dview B,
                      long long sb, float beta, dview C, long long sc, int batch)
{
    cu_impl *c = cu_of(be);
    const float one = 1.0f;
    int lda = (int)(A.ld > 0 ? A.ld : 1), ldb = (int)(B.ld > 0 ? B.ld : 1), ldc = (int)(C.ld > 0 ? C.ld : 1);
    cublasStatus_t s;
    if (batch == 1)
        s = cublasGemmEx(c->blas, opa, CUBLAS_OP_N, m, n, k, &one, A.p, cu_dtype(A.dt), lda, B.p, cu_dtype(B.dt), ldb,
                         &beta, C.p, cu_dtype(C.dt), ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    else
        s = cublasGemmStridedBatchedEx(c->blas, opa, CUBLAS_OP_N, m, n, k, &one, A.p, cu_dtype(A.dt), lda, sa, B.p,
                                       cu_dtype(B.dt), ldb, sb, &beta, C.p, cu_dtype(C.dt), ldc, sc, batch,
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return blas_check(be, s, "gemm");
}

/* ---- cublasLt plans ---------------------------------------------------------------------------
 * y = x w^T + b (optionally GELU(tanh) of it) through cublasLt with the BIAS or GELU_BIAS epilogue
 * (the bias added, and GELU applied, in fp32 before the output is rounded). A plan — the operation
 * descriptor, the three layouts and the heuristic's algorithm — is built once per shape and kept:
 * building one costs ~20-40 us of host time (descriptor creation and the heuristic query), more
 * than the GPU time of a small product, and the engine runs the same few shapes every pass. */
typedef struct {
    int m, n, k, dta, dtb, dtc, epi;
    int64_t lda, ldb, ldc;
} lt_key;

typedef struct {
    lt_key key;
    int used, ok; /* ok = 0: no algorithm for this shape (the caller falls back) */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

#define LT_PLANS 256
struct lt_cache {
    lt_plan p[LT_PLANS];
    int next; /* the slot replaced next when all are used */
    long built, hits;
};

static void lt_plan_clear(lt_plan *e)
{
    if (e->lc)
        cublasLtMatrixLayoutDestroy(e->lc);
    if (e->lb)
        cublasLtMatrixLayoutDestroy(e->lb);
    if (e->la)
        cublasLtMatrixLayoutDestroy(e->la);
    if (e->op)
        cublasLtMatmulDescDestroy(e->op);
    memset(e, 0, sizeof *e);
}

static void lt_cache_free(cu_impl *c)
{
    if (!c->ltc)
        return;
    for (int i = 0; i < LT_PLANS; i++)
        lt_plan_clear(&c->ltc->p[i]);
    free(c->ltc);
    c->ltc = NULL;
}

/* The plan for this key, built on first use; NULL if none can be built (out of host memory). */
static lt_plan *lt_plan_get(cu_impl *c, const lt_key *k)
{
    if (!c->ltc && !(c->ltc = (struct lt_cache *)calloc(1, sizeof *c->ltc)))
        return NULL;
    struct lt_cache *lc = c->ltc;
    for (int i = 0; i < LT_PLANS && lc->p[i].used; i++)
        if (!memcmp(&lc->p[i].key, k, sizeof *k)) {
            lc->hits++;
            return &lc->p[i];
        }
    int slot = -1;
    for (int i = 0; i < LT_PLANS && slot < 0; i++)
        if (!lc->p[i].used)
            slot = i;
    if (slot < 0) { /* full: replace round-robin (the engine's shapes are far fewer than the slots) */
        slot = lc->next;
        lc->next = (lc->next + 1) % LT_PLANS;
        lt_plan_clear(&lc->p[slot]);
    }
    lt_plan *e = &lc->p[slot];
    memset(e, 0, sizeof *e);
    e->key = *k;
    e->used = 1;
    lc->built++;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)k->epi;
    uint64_t wsb = c->blas_ws_bytes;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int nres = 0;
    cublasStatus_t s = cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    if (s == CUBLAS_STATUS_SUCCESS) /* A = w: stored k x m column-major (w row-major [m, k]) */
        s = cublasLtMatrixLayoutCreate(&e->la, cu_dtype(k->dtb), (uint64_t)k->k, (uint64_t)k->m, k->ldb);
    if (s == CUBLAS_STATUS_SUCCESS) /* B = x: k x n */
        s = cublasLtMatrixLayoutCreate(&e->lb, cu_dtype(k->dta), (uint64_t)k->k, (uint64_t)k->n, k->lda);
    if (s == CUBLAS_STATUS_SUCCESS) /* C = D = y: m x n */
        s = cublasLtMatrixLayoutCreate(&e->lc, cu_dtype(k->dtc), (uint64_t)k->m, (uint64_t)k->n, k->ldc);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceCreate(&pref);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
    if (s == CUBLAS_STATUS_SUCCESS) {
        /* the bias pointer's alignment is part of what the heuristic assumes: plans are for
         * 16-byte aligned biases (the caller checks) */
        const void *dummy = c->blas_ws;
        s = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &dummy, sizeof dummy);
    }
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(c->lt, e->op, e->la, e->lb, e->lc, e->lc, pref, 1, &res, &nres);
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_SUCCESS && nres > 0) {
        e->algo = res.algo;
        e->ok = 1;
    }
    return e;
}

/* *done = 0 (and KN_OK) when this path does not apply (types, alignment) or cublasLt has no
 * algorithm for the shape: the caller falls back to broadcast + GEMM with beta = 1 (and a separate
 * GELU). */
static kn_status lt_linear(kn_backend_t *be, const gemm_plan *p, int m, int n, int k, kn_tensor bias, int gelu,
                           int *done)
{
    cu_impl *c = cu_of(be);
    *done = 0;
    dview bv = cu_view(bias);
    if (!c->lt || p->a.dt != p->b.dt || bias.dtype != (kn_dtype)p->c.dt || ((uintptr_t)bv.p & 15u))
        return KN_OK;
    lt_key key;
    memset(&key, 0, sizeof key); /* compared with memcmp: no stray padding bytes */
    key.m = m;
    key.n = n;
    key.k = k;
    key.dta = p->a.dt;
    key.dtb = p->b.dt;
    key.dtc = p->c.dt;
    key.epi = gelu ? (int)CUBLASLT_EPILOGUE_GELU_BIAS : (int)CUBLASLT_EPILOGUE_BIAS;
    key.lda = p->a.ld;
    key.ldb = p->b.ld;
    key.ldc = p->c.ld;
    lt_plan *e = lt_plan_get(c, &key);
    if (!e || !e->ok)
        return KN_OK;
    const void *bp = bv.p;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmul(c->lt, e->op, &one, p->b.p, e->la, p->a.p, e->lb, &zero, p->c.p, e->lc, p->c.p, e->lc,
                           &e->algo, c->blas_ws, c->blas_ws_bytes, c->stream);
    if (s != CUBLAS_STATUS_SUCCESS)
        return blas_check(be, s, "cublasLtMatmul");
    *done = 1;
    return KN_OK;
}

/* y = x w^T + b, then GELU(tanh) when gelu is set: fused into the product's epilogue when cublasLt
 * takes it, else the product and a separate pass. */
static kn_status linear_impl(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b, int gelu)
{
    if (y.rows == 0 || y.cols == 0)
        return KN_OK;
    kn_status st;
    if (x.cols == 0) { /* an empty sum: y = b or 0 */
        if (b)
            st = ew(be, EW_BCAST, cu_view(y), no_view(), no_view(), cu_view(*b), no_view(), 0, 0, y.rows, y.cols, "linear");
        else
            st = ew(be, EW_AX, cu_view(y), cu_view(y), no_view(), no_view(), no_view(), 0, 0, y.rows, y.cols, "linear");
        if (st == KN_OK && gelu)
            st = ew(be, EW_GELU, cu_view(y), cu_view(y), no_view(), no_view(), no_view(), 0, 0, y.rows, y.cols, "gelu");
        return st;
    }
    gemm_plan p = {};
    if ((st = gemm_stage(be, &p, x, w, y)) != KN_OK)
        return st;
    if (b) { /* the usual case: the bias (and GELU) fused into the product's epilogue (cublasLt) */
        int done = 0;
        if ((st = lt_linear(be, &p, (int)w.rows, (int)x.rows, (int)x.cols, *b, gelu, &done)) != KN_OK)
            return st;
        if (done)
            return p.via_tmp ? copy_view(be, p.y, p.c, y.rows, y.cols) : KN_OK;
    }
    float beta = 0.0f;
    if (b) { /* else: broadcast the bias into the output, then accumulate the product onto it (beta = 1) */
        if ((st = ew(be, EW_BCAST, p.c, no_view(), no_view(), cu_view(*b), no_view(), 0, 0, y.rows, y.cols, "linear bias")) != KN_OK)
            return st;
        beta = 1.0f;
    }
    if ((st = gemm(be, CUBLAS_OP_T, (int)w.rows, (int)x.rows, (int)x.cols, p.b, 0, p.a, 0, beta, p.c, 0, 1)) != KN_OK)
        return st;
    if (p.via_tmp && (st = copy_view(be, p.y, p.c, y.rows, y.cols)) != KN_OK)
        return st;
    if (gelu)
        return ew(be, EW_GELU, cu_view(y), cu_view(y), no_view(), no_view(), no_view(), 0, 0, y.rows, y.cols, "gelu");
    return KN_OK;
}

static kn_status cu_linear(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b)
{
    return linear_impl(be, y, x, w, b, 0);
}

static kn_status cu_linear_gelu(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b)
{
    return linear_impl(be, y, x, w, b, 1);
}

/* Per head h (batch of `heads`), with a = x.cols/H, b = y.cols/H:
 *   XW : y_h [N, b] = x_h [N, a] @ w[h*a .. +a, :]   -> gemm(N, N, m=b, n=N, k=a, A = w + h*a*ldw)
 *   XWT: y_h [N, b] = x_h [N, a] @ w[h*b .. +b, :]^T -> gemm(T, N, m=b, n=N, k=a, A = w + h*b*ldw)
 * with B = x + h*a and C = y + h*b: a strided batch. */
static kn_status cu_matmul_heads(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, int heads,
                                 kn_heads_mode mode)
{
    int64_t a = x.cols / heads, bb = y.cols / heads;
    if (y.rows == 0 || bb == 0)
        return KN_OK;
    if (a == 0)
        return ew(be, EW_AX, cu_view(y), cu_view(y), no_view(), no_view(), no_view(), 0, 0, y.rows, y.cols, "matmul_heads");
    gemm_plan p = {};
    kn_status st;
    if ((st = gemm_stage(be, &p, x, w, y)) != KN_OK)
        return st;
    long long sa = mode == KN_HEADS_XW ? (long long)(a * p.b.ld) : (long long)(bb * p.b.ld);
    st = gemm(be, mode == KN_HEADS_XW ? CUBLAS_OP_N : CUBLAS_OP_T, (int)bb, (int)x.rows, (int)a, p.b, sa, p.a,
              (long long)a, 0.0f, p.c, (long long)bb, heads);
    if (st != KN_OK)
        return st;
    if (p.via_tmp)
        return copy_view(be, p.y, p.c, y.rows, y.cols);
    return KN_OK;
}

/* ---- norms --------------------------------------------------------------------------------------
 * One block per row; statistics accumulated in double (as the reference), applied in fp32. */
#define NORM_THREADS 256

__device__ double block_sum(double v, double *sh)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads(); /* sh may still be read from a previous call */
    if (l == 0)
        sh[w] = v;
    __syncthreads();
    double t = 0;
    for (int i = 0; i < (int)(blockDim.x / 32); i++)
        t += sh[i];
    return t;
}

__global__ void k_layernorm(dview y, dview x, dview w, dview b, int has_w, int has_b, float eps, int64_t cols)
{
    __shared__ double sh[32];
    int64_t r = blockIdx.x;
    double s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        s += dv_get(x, r, c);
    double mean = block_sum(s, sh) / (double)cols;
    double ss = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        double d = dv_get(x, r, c) - mean;
        ss += d * d;
    }
    double inv = 1.0 / sqrt(block_sum(ss, sh) / (double)cols + eps);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (float)((dv_get(x, r, c) - mean) * inv);
        if (has_w)
            v *= ld_el(w.p, w.dt, c);
        if (has_b)
            v += ld_el(b.p, b.dt, c);
        dv_set(y, r, c, v);
    }
}

__global__ void k_rmsnorm(dview y, dview x, dview w, float eps, int64_t cols)
{
    __shared__ double sh[32];
    int64_t r = blockIdx.x;
    double ss = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        double v = dv_get(x, r, c);
        ss += v * v;
    }
    float inv = (float)(1.0 / sqrt(block_sum(ss, sh) / (double)cols + eps));
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        dv_set(y, r, c, dv_get(x, r, c) * inv * ld_el(w.p, w.dt, c));
}

static unsigned grid_rows(int64_t rows) { return (unsigned)rows; } /* rows < 2^31 by construction */

/* bf16 rows of at most 8192 columns (a multiple of 8), 16-byte aligned: one pass over memory. Each
 * thread holds one 8-value vector of the row in registers through both reductions (statistics in
 * double, as the reference), so the row is read once and written once. Four forms: RMSNorm,
 * LayerNorm, LayerNorm + the grouped adaLN modulation (kn_layernorm_modulate), and RMSNorm + the
 * table RoPE, written by heads (kn_rmsnorm_rope: a thread's 8 values are 4 whole pairs of one head,
 * as heads are multiples of 8 wide on this path; y is the [rows*heads, d] view). */
enum { NM_RMS = 0, NM_LN = 1, NM_LN_MOD = 2, NM_RMS_ROPE = 3 };
typedef struct {
    dview sh, sc; /* NM_LN_MOD: shift and scale, [G, cols] */
    int64_t rpg;  /* rows per group */
    dview tab;    /* NM_RMS_ROPE: the f32 (cos, sin) table, [rows, d], or p NULL: no rotation */
    int d;        /* NM_RMS_ROPE: head width (y is [rows*heads, d]) */
} norm_extra;

template <int MODE>
__global__ void k_norm_v8(dview y, dview x, dview w, dview b, int has_w, int has_b, float eps, int64_t cols,
                          norm_extra e)
{
    const int LN = MODE == NM_LN || MODE == NM_LN_MOD;
    __shared__ double sh[32];
    int64_t r = blockIdx.x, c = (int64_t)threadIdx.x * 8;
    int live = c < cols;
    float v[8];
    double s = 0;
    if (live) {
        ld8(x.p + (r * x.ld + c) * 2, v);
#pragma unroll
        for (int k = 0; k < 8; k++)
            s += LN ? (double)v[k] : (double)v[k] * v[k];
    }
    double mean = 0, inv;
    if (LN) {
        mean = block_sum(s, sh) / (double)cols;
        double ss = 0;
        if (live)
#pragma unroll
            for (int k = 0; k < 8; k++) {
                double d = v[k] - mean;
                ss += d * d;
            }
        inv = 1.0 / sqrt(block_sum(ss, sh) / (double)cols + eps);
    } else {
        inv = 1.0 / sqrt(block_sum(s, sh) / (double)cols + eps);
    }
    if (!live)
        return;
    float o[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {
        float t;
        if (LN) {
            t = (float)((v[k] - mean) * inv);
            if (has_w)
                t *= ld_el(w.p, w.dt, c + k);
            if (has_b)
                t += ld_el(b.p, b.dt, c + k);
        } else {
            t = v[k] * (float)inv * ld_el(w.p, w.dt, c + k);
        }
        o[k] = t;
    }
    if (MODE == NM_LN_MOD) {
        int64_t g = r / e.rpg;
#pragma unroll
        for (int k = 0; k < 8; k++)
            o[k] = o[k] * (1.0f + dv_get(e.sc, g, c + k)) + dv_get(e.sh, g, c + k);
    }
    if (MODE == NM_RMS_ROPE) {
        int64_t hd = c / e.d, cc = c - hd * e.d;
        if (e.tab.p) {
            const float2 *cs = (const float2 *)(e.tab.p + (r * e.tab.ld + cc) * 4);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float2 t = cs[k];
                float a = o[2 * k], bb = o[2 * k + 1];
                o[2 * k] = a * t.x - bb * t.y;
                o[2 * k + 1] = a * t.y + bb * t.x;
            }
        }
        st8(y.p + ((r * (cols / e.d) + hd) * y.ld + cc) * 2, o);
        return;
    }
    st8(y.p + (r * y.ld + c) * 2, o);
}

/* Eight values at element i of a vector or matrix of any dtype: one or two 16-byte loads where the
 * address allows (bf16, f32), else one at a time. */
__device__ __forceinline__ void ld8_any(const char *p, int dt, int64_t i, float *f)
{
    if (dt == KN_BF16 && ((uintptr_t)(p + i * 2) & 15u) == 0) {
        ld8(p + i * 2, f);
        return;
    }
    if (dt == KN_F32 && ((uintptr_t)(p + i * 4) & 15u) == 0) {
        float4 a = *(const float4 *)(p + i * 4), b = *(const float4 *)(p + i * 4 + 16);
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
        return;
    }
#pragma unroll
    for (int k = 0; k < 8; k++)
        f[k] = ld_el(p, dt, i + k);
}

__device__ __forceinline__ float warp_sumf(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The same four norms with one warp a row (rows of at most 32*NV vectors of 8): no shared memory and
 * no block barrier, NV independent 16-byte loads in flight a lane, 8 rows a block. The block-per-row
 * kernel above keeps its statistics in double (as the reference), and at [4680, 1536] the fp64
 * arithmetic and conversions, not the bytes, set its time: 26 us for LayerNorm + modulate where the
 * bytes take ~9 (measured: a warp a row with double statistics ran no faster). Here the statistics
 * are fp32 (the row's sum, then the centred squares from registers: no cancellation), which for
 * bf16 rows of a few thousand values is far inside the bf16 rounding of the output. */
template <int MODE, int NV>
__global__ void k_norm_w(dview y, dview x, dview w, dview b, int has_w, int has_b, float eps, int64_t rows,
                         int64_t cols, norm_extra e)
{
    const int LN = MODE == NM_LN || MODE == NM_LN_MOD;
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, c8 = cols / 8;
    if (r >= rows)
        return; /* the whole warp */
    float v[NV][8];
    float s = 0;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int64_t q = (int64_t)j * 32 + lane;
        if (q < c8) {
            ld8(x.p + (r * x.ld + q * 8) * 2, v[j]);
#pragma unroll
            for (int k = 0; k < 8; k++)
                s += LN ? v[j][k] : v[j][k] * v[j][k];
        }
    }
    s = warp_sumf(s);
    float mean = 0, inv;
    if (LN) { /* two passes over the registers: the variance of centred values, no cancellation */
        mean = s / (float)cols;
        float ss = 0;
#pragma unroll
        for (int j = 0; j < NV; j++)
            if ((int64_t)j * 32 + lane < c8)
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    float d = v[j][k] - mean;
                    ss += d * d;
                }
        inv = rsqrtf(warp_sumf(ss) / (float)cols + eps);
    } else {
        inv = rsqrtf(s / (float)cols + eps);
    }
    const int64_t g = MODE == NM_LN_MOD ? r / e.rpg : 0;
#pragma unroll
    for (int j = 0; j < NV; j++) {
        int64_t q = (int64_t)j * 32 + lane, c = q * 8;
        if (q >= c8)
            continue;
        float o[8], wv[8], bv[8];
        if (has_w)
            ld8_any(w.p, w.dt, c, wv);
        if (has_b)
            ld8_any(b.p, b.dt, c, bv);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float t;
            if (LN) {
                t = (v[j][k] - mean) * inv;
                if (has_w)
                    t *= wv[k];
                if (has_b)
                    t += bv[k];
            } else {
                t = v[j][k] * inv * wv[k];
            }
            o[k] = t;
        }
        if (MODE == NM_LN_MOD) {
            float sc[8], sh[8];
            ld8_any(e.sc.p, e.sc.dt, g * e.sc.ld + c, sc);
            ld8_any(e.sh.p, e.sh.dt, g * e.sh.ld + c, sh);
#pragma unroll
            for (int k = 0; k < 8; k++)
                o[k] = o[k] * (1.0f + sc[k]) + sh[k];
        }
        if (MODE == NM_RMS_ROPE) {
            int64_t hd = c / e.d, cc = c - hd * e.d;
            if (e.tab.p) {
                const float4 *cs = (const float4 *)(e.tab.p + (r * e.tab.ld + cc) * 4);
                float4 t01 = cs[0], t23 = cs[1];
                float2 t[4] = {make_float2(t01.x, t01.y), make_float2(t01.z, t01.w), make_float2(t23.x, t23.y),
                               make_float2(t23.z, t23.w)};
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float a = o[2 * k], bb = o[2 * k + 1];
                    o[2 * k] = a * t[k].x - bb * t[k].y;
                    o[2 * k + 1] = a * t[k].y + bb * t[k].x;
                }
            }
            st8(y.p + ((r * (cols / e.d) + hd) * y.ld + cc) * 2, o);
        } else {
            st8(y.p + (r * y.ld + c) * 2, o);
        }
    }
}

/* Whether a norm over these views can take a one-pass kernel (bf16, 16-byte aligned rows, a
 * multiple of 8 columns, at most 8192). */
static int norm_v8_ok(dview y, dview x, int64_t cols)
{
    return cols % 8 == 0 && cols / 8 <= 1024 && bf16_vec_ok(y) && bf16_vec_ok(x);
}

/* Launch the one-pass norm: a warp a row up to 2048 columns (unless VMLA_CUDA_NORM_WARP=0), else a
 * block a row. */
template <int MODE>
static kn_status norm_v8_launch(kn_backend_t *be, dview y, dview x, dview w, dview b, int has_w, int has_b,
                                float eps, int64_t rows, int64_t cols, norm_extra e, const char *name)
{
    cudaStream_t st = cu_of(be)->stream;
    int64_t c8 = cols / 8;
    unsigned g = (unsigned)((rows + 7) / 8); /* rows < 2^31 by construction */
    if (!cu_of(be)->norm_warp || c8 > 256)
        k_norm_v8<MODE><<<grid_rows(rows), (unsigned)((c8 + 31) / 32 * 32), 0, st>>>(y, x, w, b, has_w, has_b, eps,
                                                                                      cols, e);
    else if (c8 <= 64)
        k_norm_w<MODE, 2><<<g, 256, 0, st>>>(y, x, w, b, has_w, has_b, eps, rows, cols, e);
    else if (c8 <= 128)
        k_norm_w<MODE, 4><<<g, 256, 0, st>>>(y, x, w, b, has_w, has_b, eps, rows, cols, e);
    else if (c8 <= 192)
        k_norm_w<MODE, 6><<<g, 256, 0, st>>>(y, x, w, b, has_w, has_b, eps, rows, cols, e);
    else
        k_norm_w<MODE, 8><<<g, 256, 0, st>>>(y, x, w, b, has_w, has_b, eps, rows, cols, e);
    return cu_launched(be, name);
}

static kn_status cu_layernorm(kn_backend_t *be, kn_tensor y, kn_tensor x, const kn_tensor *w, const kn_tensor *b,
                              float eps)
{
    if (x.rows == 0 || x.cols == 0)
        return KN_OK;
    if (norm_v8_ok(cu_view(y), cu_view(x), x.cols)) {
        norm_extra ne = {};
        return norm_v8_launch<NM_LN>(be, cu_view(y), cu_view(x), w ? cu_view(*w) : no_view(),
                                     b ? cu_view(*b) : no_view(), w != NULL, b != NULL, eps, x.rows, x.cols, ne,
                                     "layernorm");
    }
    k_layernorm<<<grid_rows(x.rows), NORM_THREADS, 0, cu_of(be)->stream>>>(
        cu_view(y), cu_view(x), w ? cu_view(*w) : no_view(), b ? cu_view(*b) : no_view(), w != NULL, b != NULL, eps,
        x.cols);
    return cu_launched(be, "layernorm");
}

static kn_status cu_rmsnorm(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps)
{
    if (x.rows == 0 || x.cols == 0)
        return KN_OK;
    if (norm_v8_ok(cu_view(y), cu_view(x), x.cols)) {
        norm_extra ne = {};
        return norm_v8_launch<NM_RMS>(be, cu_view(y), cu_view(x), cu_view(w), no_view(), 1, 0, eps, x.rows, x.cols,
                                      ne, "rmsnorm");
    }
    k_rmsnorm<<<grid_rows(x.rows), NORM_THREADS, 0, cu_of(be)->stream>>>(cu_view(y), cu_view(x), cu_view(w), eps, x.cols);
    return cu_launched(be, "rmsnorm");
}

static kn_status cu_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale);

static kn_status cu_layernorm_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale,
                                       float eps)
{
    if (x.rows == 0 || x.cols == 0)
        return KN_OK;
    if (!norm_v8_ok(cu_view(y), cu_view(x), x.cols)) { /* two passes */
        kn_status st = cu_layernorm(be, y, x, NULL, NULL, eps);
        return st != KN_OK ? st : cu_modulate(be, y, y, shift, scale);
    }
    norm_extra ne = {};
    ne.sh = cu_view(shift);
    ne.sc = cu_view(scale);
    ne.rpg = x.rows / shift.rows;
    return norm_v8_launch<NM_LN_MOD>(be, cu_view(y), cu_view(x), no_view(), no_view(), 0, 0, eps, x.rows, x.cols, ne,
                                     "layernorm_modulate");
}

/* ---- 3D RoPE from a table (kn_rope3d_table, kn_rmsnorm_rope) ----------------------------------- */
typedef struct {
    int f0[KN_ROPE_MAX_STREAMS];
} rope_f0s;

/* The angle of pair j (of d/2) at frame f, row yy, column xx, in fp64 (docs/MODEL.md §4). */
__device__ double rope_angle(int d, int j, double theta, int f, int yy, int xx)
{
    int dt = d - 4 * (d / 6), ds = 2 * (d / 6), pt = dt / 2, ps = ds / 2;
    if (j < pt)
        return (double)f * pow(theta, -2.0 * j / dt);
    if (j < pt + ps)
        return (double)yy * pow(theta, -2.0 * (j - pt) / ds);
    return (double)xx * pow(theta, -2.0 * (j - pt - ps) / ds);
}

/* One thread per (table row, pair): the angle and its cos and sin in fp64, as k_rope3d. */
__global__ void k_rope_table(dview tab, rope_f0s f0, int d, int nf, int gh, int gw, double theta, int64_t rows)
{
    int half = d / 2;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * half)
        return;
    int64_t r = i / half, per = (int64_t)gh * gw, T = per * nf;
    int j = (int)(i % half), s = (int)(r / T);
    int64_t t = r % T;
    int f = (int)(t / per), rem = (int)(t % per);
    double ang = rope_angle(d, j, theta, f0.f0[s] + f, rem / gw, rem % gw);
    float2 *o = (float2 *)(tab.p + (r * tab.ld + 2 * j) * 4);
    *o = make_float2((float)cos(ang), (float)sin(ang));
}

/* kn_rmsnorm_rope for any dtype or width (the fallback of the one-pass kernel): one block per row,
 * statistics in double; element c of x goes to row r*heads + c/d, column c%d of y, rotated in pairs
 * when there is a table. */
__global__ void k_rms_heads(dview y, dview x, dview w, dview tab, int has_tab, int d, float eps, int64_t cols)
{
    __shared__ double sh[32];
    int64_t r = blockIdx.x, heads = cols / d;
    double ss = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        double v = dv_get(x, r, c);
        ss += v * v;
    }
    float inv = (float)(1.0 / sqrt(block_sum(ss, sh) / (double)cols + eps));
    if (!has_tab) {
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            dv_set(y, r * heads + c / d, c % d, dv_get(x, r, c) * inv * ld_el(w.p, w.dt, c));
        return;
    }
    for (int64_t c = 2 * (int64_t)threadIdx.x; c < cols; c += 2 * (int64_t)blockDim.x) {
        float a = dv_get(x, r, c) * inv * ld_el(w.p, w.dt, c), b = dv_get(x, r, c + 1) * inv * ld_el(w.p, w.dt, c + 1);
        int64_t j = c % d;
        float2 t = *(const float2 *)(tab.p + (r * tab.ld + j) * 4);
        dv_set(y, r * heads + c / d, j, a * t.x - b * t.y);
        dv_set(y, r * heads + c / d, j + 1, a * t.y + b * t.x);
    }
}

static kn_status cu_rope3d_table(kn_backend_t *be, kn_tensor table, const int *f0, int n, int nf, int gh, int gw,
                                 double theta)
{
    rope_f0s a;
    memset(&a, 0, sizeof a);
    for (int s = 0; s < n; s++)
        a.f0[s] = f0[s];
    int64_t total = table.rows * (table.cols / 2);
    if (total == 0)
        return KN_OK;
    k_rope_table<<<(unsigned)((total + 255) / 256), 256, 0, cu_of(be)->stream>>>(cu_view(table), a, (int)table.cols, nf,
                                                                                gh, gw, theta, table.rows);
    return cu_launched(be, "rope3d_table");
}

static kn_status cu_rmsnorm_rope(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps, int heads,
                                 const kn_tensor *table)
{
    if (x.rows == 0 || x.cols == 0)
        return KN_OK;
    int d = (int)y.cols;
    dview tv = table ? cu_view(*table) : no_view();
    if (d % 8 == 0 && (!table || (tv.ld % 4 == 0 && ((uintptr_t)tv.p & 15u) == 0)) &&
        norm_v8_ok(cu_view(y), cu_view(x), x.cols)) {
        norm_extra ne = {};
        ne.tab = tv;
        ne.d = d;
        return norm_v8_launch<NM_RMS_ROPE>(be, cu_view(y), cu_view(x), cu_view(w), no_view(), 1, 0, eps, x.rows,
                                           x.cols, ne, "rmsnorm_rope");
    }
    (void)heads;
    k_rms_heads<<<grid_rows(x.rows), NORM_THREADS, 0, cu_of(be)->stream>>>(cu_view(y), cu_view(x), cu_view(w), tv,
                                                                          table != NULL, d, eps, x.cols);
    return cu_launched(be, "rmsnorm_rope");
}

/* ---- elementwise ops of the table --------------------------------------------------------------- */

static kn_status cu_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale)
{
    return ew_g(be, EW_MODULATE, cu_view(y), cu_view(x), no_view(), cu_view(shift), cu_view(scale), 0, 0, x.rows,
                x.cols, x.rows / shift.rows, "modulate");
}

static kn_status cu_gate_add(kn_backend_t *be, kn_tensor x, kn_tensor y, const kn_tensor *gate)
{
    if (gate)
        return ew_g(be, EW_GATE, cu_view(x), cu_view(y), no_view(), cu_view(*gate), no_view(), 0, 0, x.rows, x.cols,
                    x.rows / gate->rows, "gate_add");
    return ew(be, EW_ADD, cu_view(x), cu_view(y), no_view(), no_view(), no_view(), 0, 0, x.rows, x.cols, "gate_add");
}

static kn_status cu_axpby(kn_backend_t *be, kn_tensor y, float a, kn_tensor x, float b, const kn_tensor *z)
{
    if (z)
        return ew_g(be, EW_AXPBY, cu_view(y), cu_view(x), cu_view(*z), no_view(), no_view(), a, b, x.rows, x.cols,
                    z->rows == x.rows ? 1 : x.rows / z->rows, "axpby");
    return ew(be, EW_AX, cu_view(y), cu_view(x), no_view(), no_view(), no_view(), a, 0, x.rows, x.cols, "axpby");
}

static kn_status cu_gelu_tanh(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    return ew(be, EW_GELU, cu_view(y), cu_view(x), no_view(), no_view(), no_view(), 0, 0, x.rows, x.cols, "gelu");
}

static kn_status cu_silu(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    return ew(be, EW_SILU, cu_view(y), cu_view(x), no_view(), no_view(), no_view(), 0, 0, x.rows, x.cols, "silu");
}

static kn_status cu_clamp(kn_backend_t *be, kn_tensor y, kn_tensor x, float lo, float hi)
{
    return ew(be, EW_CLAMP, cu_view(y), cu_view(x), no_view(), no_view(), no_view(), lo, hi, x.rows, x.cols, "clamp");
}

static kn_status cu_row_affine(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor scale, kn_tensor shift)
{
    return ew(be, EW_ROW_AFFINE, cu_view(y), cu_view(x), no_view(), cu_view(scale), cu_view(shift), 0, 0, x.rows,
              x.cols, "row_affine");
}

static kn_status cu_copy(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    /* same dtype and same place: nothing to do; same dtype, contiguous: one memcpy */
    if (y.buf == x.buf && y.off == x.off && y.dtype == x.dtype && y.ld == x.ld)
        return KN_OK;
    if (y.dtype == x.dtype && x.rows > 0 && x.cols > 0) {
        size_t es = esz(x.dtype);
        return cu_check(be,
                        cudaMemcpy2DAsync(cu_view(y).p, (size_t)y.ld * es, cu_view(x).p, (size_t)x.ld * es,
                                          (size_t)x.cols * es, (size_t)x.rows, cudaMemcpyDeviceToDevice,
                                          cu_of(be)->stream),
                        "copy");
    }
    return copy_view(be, cu_view(y), cu_view(x), x.rows, x.cols);
}

/* ---- 3D RoPE --------------------------------------------------------------------------------------
 * One thread per (token n, pair j): the angle pos * freq_j, its cos and sin in fp64 (as the
 * reference: freq = theta^(-2k/dt) for the frame pairs [0, dt/2), theta^(-2k/ds) for the row and
 * column pairs), applied to pair j of every head. */
__global__ void k_rope3d(dview x, int heads, int d, int f0, int gh, int gw, double theta, int64_t ntok)
{
    int half = d / 2;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= ntok * half)
        return;
    int64_t n = i / half;
    int j = (int)(i % half);
    int64_t per = (int64_t)gh * gw;
    int f = (int)(n / per), rem = (int)(n % per);
    double ang = rope_angle(d, j, theta, f0 + f, rem / gw, rem % gw), cs = cos(ang), sn = sin(ang);
    for (int h = 0; h < heads; h++) {
        int64_t c = (int64_t)h * d + 2 * j;
        double a = dv_get(x, n, c), b = dv_get(x, n, c + 1);
        dv_set(x, n, c, (float)(a * cs - b * sn));
        dv_set(x, n, c + 1, (float)(a * sn + b * cs));
    }
}

static kn_status cu_rope3d(kn_backend_t *be, kn_tensor x, int heads, int f0, int nf, int gh, int gw, double theta)
{
    int d = (int)(x.cols / heads);
    int64_t total = x.rows * (d / 2);
    if (total == 0)
        return KN_OK;
    k_rope3d<<<(unsigned)((total + 255) / 256), 256, 0, cu_of(be)->stream>>>(cu_view(x), heads, d, f0, gh, gw, theta,
                                                                            x.rows);
    return cu_launched(be, "rope3d");
}

/* ---- timestep sinusoid: t values travel by value, up to 64 a launch --------------------------- */
typedef struct {
    float t[64];
} ts_args;

__global__ void k_timestep(dview y, ts_args a, int n, int64_t half)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * half)
        return;
    int r = (int)(i / half);
    int64_t k = i % half;
    double ang = (double)a.t[r] * pow(10000.0, -(double)k / (double)half);
    dv_set(y, r, k, (float)cos(ang));
    dv_set(y, r, half + k, (float)sin(ang));
}

static kn_status cu_timestep_embed(kn_backend_t *be, kn_tensor y, const float *t, int n)
{
    int64_t half = y.cols / 2;
    for (int r0 = 0; r0 < n; r0 += 64) {
        int m = n - r0 < 64 ? n - r0 : 64;
        ts_args a;
        memset(&a, 0, sizeof a);
        memcpy(a.t, t + r0, sizeof(float) * (size_t)m);
        int64_t total = (int64_t)m * half;
        dview yr = cu_view(y);
        yr.p += (size_t)((int64_t)r0 * y.ld) * esz(y.dtype);
        k_timestep<<<(unsigned)((total + 255) / 256), 256, 0, cu_of(be)->stream>>>(yr, a, m, half);
        kn_status st = cu_launched(be, "timestep_embed");
        if (st != KN_OK)
            return st;
    }
    return KN_OK;
}

/* ---- layout ----------------------------------------------------------------------------------------
 * patchify:   tok[(f*gh + y)*gw + x][c*4 + q*2 + r] = lat[c][(f*h + 2y + q)*w + 2x + r]
 * unpatchify: lat[c][(f*h + 2y + q)*w + 2x + r]     = tok[(f*gh + y)*gw + x][q*2*C + r*C + c] */
__global__ void k_patchify(dview tok, dview lat, int C, int h, int w, int64_t ntok)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= ntok * 4 * C)
        return;
    int64_t n = i / (4 * C);
    int col = (int)(i % (4 * C)), c = col / 4, q = (col % 4) / 2, r = col % 2;
    int gh = h / 2, gw = w / 2;
    int64_t f = n / ((int64_t)gh * gw);
    int rem = (int)(n % ((int64_t)gh * gw)), y = rem / gw, x = rem % gw;
    dv_set(tok, n, col, dv_get(lat, c, (f * h + 2 * y + q) * w + 2 * x + r));
}

__global__ void k_unpatchify(dview lat, dview tok, int C, int h, int w, int64_t nf)
{
    int64_t hw = (int64_t)h * w, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)C * nf * hw)
        return;
    int c = (int)(i / (nf * hw));
    int64_t col = i % (nf * hw), f = col / hw;
    int rem = (int)(col % hw), py = rem / w, px = rem % w;
    int y = py / 2, q = py % 2, x = px / 2, r = px % 2;
    int64_t n = (f * (h / 2) + y) * (w / 2) + x;
    dv_set(lat, c, col, dv_get(tok, n, (int64_t)q * 2 * C + (int64_t)r * C + c));
}

static kn_status cu_patchify(kn_backend_t *be, kn_tensor tok, kn_tensor lat, int C, int nf, int h, int w)
{
    int64_t total = tok.rows * tok.cols;
    if (total == 0)
        return KN_OK;
    k_patchify<<<(unsigned)((total + 255) / 256), 256, 0, cu_of(be)->stream>>>(cu_view(tok), cu_view(lat), C, h, w,
                                                                              tok.rows);
    return cu_launched(be, "patchify");
}

static kn_status cu_unpatchify(kn_backend_t *be, kn_tensor lat, kn_tensor tok, int C, int nf, int h, int w)
{
    int64_t total = lat.rows * lat.cols;
    if (total == 0)
        return KN_OK;
    k_unpatchify<<<(unsigned)((total + 255) / 256), 256, 0, cu_of(be)->stream>>>(cu_view(lat), cu_view(tok), C, h, w,
                                                                                (int64_t)nf);
    return cu_launched(be, "unpatchify");
}

/* ---- 3x3 convolution, direct ------------------------------------------------------------------------
 * y[co][p] = b[co] + sum_{ci, ky, kx} w[co][ci*9 + ky*3 + kx] * x[ci][(py+ky-1)*W + px+kx-1] (zero
 * padding). One thread an output pixel, blockIdx.y the output channel (its weights are the same
 * address across the block: broadcast loads). The decoder's channel counts are small (<= 64), so
 * this beats im2col + GEMM on memory and is simple. */
__global__ void k_conv3x3(dview y, dview x, dview w, dview b, int has_b, int64_t co0, int64_t cin, int H, int W)
{
    int64_t hw = (int64_t)H * W, p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t co = co0 + blockIdx.y;
    if (p >= hw)
        return;
    int py = (int)(p / W), px = (int)(p % W);
    float acc = 0.0f;
    for (int64_t ci = 0; ci < cin; ci++)
        for (int ky = 0; ky < 3; ky++) {
            int sy = py + ky - 1;
            if (sy < 0 || sy >= H)
                continue;
            for (int kx = 0; kx < 3; kx++) {
                int sx = px + kx - 1;
                if (sx < 0 || sx >= W)
                    continue;
                acc += dv_get(w, co, ci * 9 + ky * 3 + kx) * dv_get(x, ci, (int64_t)sy * W + sx);
            }
        }
    if (has_b)
        acc += ld_el(b.p, b.dt, co);
    dv_set(y, co, p, acc);
}

static kn_status cu_conv2d3x3(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b, int H, int W)
{
    int64_t hw = (int64_t)H * W;
    for (int64_t c0 = 0; c0 < y.rows; c0 += 65535) {
        int64_t n = y.rows - c0 < 65535 ? y.rows - c0 : 65535;
        k_conv3x3<<<dim3((unsigned)((hw + 255) / 256), (unsigned)n), 256, 0, cu_of(be)->stream>>>(
            cu_view(y), cu_view(x), cu_view(w), b ? cu_view(*b) : no_view(), b != NULL, c0, x.rows, H, W);
        kn_status st = cu_launched(be, "conv2d3x3");
        if (st != KN_OK)
            return st;
    }
    return KN_OK;
}

__global__ void k_upsample2x(dview y, dview x, int H, int W, int64_t C)
{
    int64_t n = 4 * (int64_t)H * W, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= C * n)
        return;
    int64_t c = i / n;
    int p = (int)(i % n), py = p / (2 * W), px = p % (2 * W);
    dv_set(y, c, p, dv_get(x, c, (int64_t)(py / 2) * W + px / 2));
}

static kn_status cu_upsample2x(kn_backend_t *be, kn_tensor y, kn_tensor x, int H, int W)
{
    int64_t total = y.rows * y.cols;
    if (total == 0)
        return KN_OK;
    k_upsample2x<<<(unsigned)((total + 255) / 256), 256, 0, cu_of(be)->stream>>>(cu_view(y), cu_view(x), H, W, x.rows);
    return cu_launched(be, "upsample2x");
}

/* ---- buffers and data movement ------------------------------------------------------------------- */

static void *cu_mem_alloc(kn_backend_t *be, size_t bytes)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: clear it */
        return NULL;
    }
    return p;
}

static void cu_mem_free(kn_backend_t *be, void *p)
{
    if (p) {
        cudaStreamSynchronize(cu_of(be)->stream);
        cudaFree(p);
    }
}

/* Host data (rows*cols of sdt, contiguous) into t: a straight copy when the layouts agree, else
 * the raw bytes into scratch and a converting copy on the device. */
/* Copy `bytes` of host data into the page-locked staging buffer and return where it now is, for
 * an asynchronous copy on the stream. The buffer has two halves: moving into a half first waits
 * for the event recorded when it was last left (the copies from it are done by then; usually long
 * ago), so the host almost never waits. NULL with *st set on failure. */
static const void *cu_stage(kn_backend_t *be, const void *src, size_t bytes, kn_status *st)
{
    cu_impl *c = cu_of(be);
    *st = KN_OK;
    size_t need = (bytes + 255) / 256 * 256;
    if (need * 2 > c->stage_cap) { /* grow (rare): room for four such copies */
        if ((*st = cu_check(be, cudaStreamSynchronize(c->stream), "upload staging: sync")) != KN_OK)
            return NULL;
        cudaFreeHost(c->stage);
        c->stage = NULL;
        size_t cap = need * 4 > ((size_t)16 << 20) ? need * 4 : (size_t)16 << 20;
        if ((*st = cu_check(be, cudaMallocHost((void **)&c->stage, cap), "upload staging: cudaMallocHost")) != KN_OK) {
            c->stage_cap = 0;
            *st = KN_ERR_NOMEM;
            return NULL;
        }
        c->stage_cap = cap;
        c->stage_pos = 0;
        c->stage_ev_set[0] = c->stage_ev_set[1] = 0;
        for (int i = 0; i < 2; i++)
            if (!c->stage_ev[i] &&
                (*st = cu_check(be, cudaEventCreateWithFlags(&c->stage_ev[i], cudaEventDisableTiming),
                                "upload staging: event")) != KN_OK)
                return NULL;
    }
    size_t half = c->stage_cap / 2, cur = c->stage_pos / half;
    if (c->stage_pos % half + need > half || cur > 1) {
        if (cur > 1)
            cur = 1;
        if ((*st = cu_check(be, cudaEventRecord(c->stage_ev[cur], c->stream), "upload staging: record")) != KN_OK)
            return NULL;
        c->stage_ev_set[cur] = 1;
        size_t nxt = cur ^ 1;
        if (c->stage_ev_set[nxt] &&
            (*st = cu_check(be, cudaEventSynchronize(c->stage_ev[nxt]), "upload staging: wait")) != KN_OK)
            return NULL;
        c->stage_pos = nxt * half;
    }
    char *p = c->stage + c->stage_pos;
    memcpy(p, src, bytes);
    c->stage_pos += need;
    return p;
}

static kn_status cu_upload(kn_backend_t *be, kn_tensor t, const void *src, kn_dtype sdt)
{
    cu_impl *c = cu_of(be);
    int64_t n = t.rows * t.cols;
    if (n == 0)
        return KN_OK;
    size_t es = esz(sdt);
    kn_status st = KN_OK;
    /* small uploads (noise, per-step values) are staged so the host does not wait for the stream;
     * large ones (weights, at start) go straight from pageable memory */
    if ((size_t)n * es <= ((size_t)16 << 20) && !(src = cu_stage(be, src, (size_t)n * es, &st)))
        return st;
    if (sdt == t.dtype)
        return cu_check(be,
                        cudaMemcpy2DAsync(cu_view(t).p, (size_t)t.ld * es, src, (size_t)t.cols * es, (size_t)t.cols * es,
                                          (size_t)t.rows, cudaMemcpyHostToDevice, c->stream),
                        "upload");
    char *s = (char *)cu_scratch(be, (size_t)n * es, &st);
    if (!s)
        return st;
    if ((st = cu_check(be, cudaMemcpyAsync(s, src, (size_t)n * es, cudaMemcpyHostToDevice, c->stream), "upload")) != KN_OK)
        return st;
    dview d = {s, (int)sdt, t.cols};
    return copy_view(be, cu_view(t), d, t.rows, t.cols);
}

static kn_status cu_download(kn_backend_t *be, kn_tensor t, float *dst)
{
    cu_impl *c = cu_of(be);
    int64_t n = t.rows * t.cols;
    kn_status st = KN_OK;
    if (n > 0) {
        if (t.dtype == KN_F32) {
            st = cu_check(be,
                          cudaMemcpy2DAsync(dst, (size_t)t.cols * 4, cu_view(t).p, (size_t)t.ld * 4, (size_t)t.cols * 4,
                                            (size_t)t.rows, cudaMemcpyDeviceToHost, c->stream),
                          "download");
        } else {
            char *s = (char *)cu_scratch(be, (size_t)n * 4, &st);
            if (!s)
                return st;
            dview d = {s, KN_F32, t.cols};
            if ((st = copy_view(be, d, cu_view(t), t.rows, t.cols)) != KN_OK)
                return st;
            st = cu_check(be, cudaMemcpyAsync(dst, s, (size_t)n * 4, cudaMemcpyDeviceToHost, c->stream), "download");
        }
        if (st != KN_OK)
            return st;
    }
    return cu_check(be, cudaStreamSynchronize(c->stream), "download: sync");
}

/* kn_download_rgb8: the bytes made on the device (in the scratch), then a quarter of the floats'
 * bytes over the bus. The rounding is spelled out (no fused multiply-add), as the host does it. */
__global__ void k_rgb8(dview t, int64_t hw, int64_t n, unsigned char *dst)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t f = i / hw, p = i - f * hw;
        for (int c = 0; c < 3; c++) {
            float q = __fadd_rn(__fmul_rn(dv_get(t, 3 * f + c, p), 255.0f), 0.5f);
            q = q >= 0.0f ? (q > 255.0f ? 255.0f : q) : 0.0f; /* NaN: 0 */
            dst[3 * i + c] = (unsigned char)(int)q;
        }
    }
}

static kn_status cu_download_rgb8(kn_backend_t *be, kn_tensor t, int frames, uint8_t *dst)
{
    cu_impl *c = cu_of(be);
    int64_t n = (int64_t)frames * t.cols;
    kn_status st = KN_OK;
    if (n > 0) {
        unsigned char *s = (unsigned char *)cu_scratch(be, (size_t)n * 3, &st);
        if (!s)
            return st;
        int64_t blocks = (n + 255) / 256;
        if (blocks > 132 * 16)
            blocks = 132 * 16;
        k_rgb8<<<(unsigned)blocks, 256, 0, c->stream>>>(cu_view(t), t.cols, n, s);
        if ((st = cu_launched(be, "download_rgb8")) != KN_OK ||
            (st = cu_check(be, cudaMemcpyAsync(dst, s, (size_t)n * 3, cudaMemcpyDeviceToHost, c->stream),
                           "download_rgb8")) != KN_OK)
            return st;
    }
    return cu_check(be, cudaStreamSynchronize(c->stream), "download_rgb8: sync");
}

static kn_status cu_sync(kn_backend_t *be)
{
    kn_status st = cu_check(be, cudaStreamSynchronize(cu_of(be)->stream), "sync");
    if (st != KN_OK)
        return st;
    return cu_launched(be, "sync");
}

static void *cu_host_alloc(kn_backend_t *be, size_t bytes)
{
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cu_host_free(kn_backend_t *be, void *p)
{
    if (p) {
        cudaStreamSynchronize(cu_of(be)->stream); /* a copy may still read or write it */
        cudaFreeHost(p);
    }
}

/* One copy on the compute stream: ordered with the ops, asynchronous to the host (page-locked
 * host memory on the host side). */
static kn_status cu_buffer_copy(kn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    return cu_check(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cu_of(be)->stream), "buffer copy");
}

static kn_status cu_mem_info(kn_backend_t *be, size_t *free_bytes, size_t *total_bytes)
{
    return cu_check(be, cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

static void cu_destroy(kn_backend_t *be)
{
    cu_impl *c = cu_of(be);
    if (c) {
        if (c->stream)
            cudaStreamSynchronize(c->stream);
        cu_dnn_close(be);
        cu_prof_free(be);
        lt_cache_free(c);
        if (c->blas)
            cublasDestroy(c->blas);
        if (c->lt)
            cublasLtDestroy(c->lt);
        cudaFree(c->blas_ws);
        cudaFree(c->scratch);
        cudaFreeHost(c->stage);
        for (int i = 0; i < 2; i++)
            if (c->stage_ev[i])
                cudaEventDestroy(c->stage_ev[i]);
        cudaFree(c->dev_pages);
        cudaFreeHost(c->pin_pages);
        if (c->stream)
            cudaStreamDestroy(c->stream);
        free(c);
    }
    free(be);
}

static const kn_backend_ops cu_ops_template = {
    /* .name */ "cuda",
    /* .compute_dtype */ KN_BF16,
    cu_destroy,
    cu_mem_alloc,
    cu_mem_free,
    cu_upload,
    cu_download,
    cu_sync,
    cu_linear,
    cu_linear_gelu,
    cu_matmul_heads,
    cu_layernorm,
    cu_rmsnorm,
    cu_modulate,
    cu_layernorm_modulate,
    cu_gate_add,
    cu_axpby,
    cu_gelu_tanh,
    cu_silu,
    cu_clamp,
    cu_row_affine,
    cu_copy,
    cu_rope3d,
    cu_rope3d_table,
    cu_rmsnorm_rope,
    cu_timestep_embed,
    cu_attention,
    cu_attention_batch,
    cu_kv_store,
    cu_kv_load,
    cu_patchify,
    cu_unpatchify,
    cu_conv2d3x3,
    cu_upsample2x,
    cu_host_alloc,
    cu_host_free,
    cu_buffer_copy,
    cu_mem_info,
    cu_download_rgb8,
    cu_kv_store_batch,
};

/* Whether an environment variable is set to "0" (a default-on path turned off). */
static int env_off(const char *name)
{
    const char *v = getenv(name);
    return v && !strcmp(v, "0");
}

#define RING0 (1u << 16) /* page indices in the staging ring at start */
#define BLAS_WS (32u << 20)

extern "C" kn_backend_t *kn_cuda_backend_new(int device, char *err, size_t errlen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        if (err && errlen)
            snprintf(err, errlen, "no CUDA device%s%s", e != cudaSuccess ? ": " : "",
                     e != cudaSuccess ? cudaGetErrorString(e) : "");
        cudaGetLastError();
        return NULL;
    }
    if (device < 0 || device >= n) {
        if (err && errlen)
            snprintf(err, errlen, "CUDA device %d does not exist (%d found)", device, n);
        return NULL;
    }
    kn_backend_t *be = (kn_backend_t *)calloc(1, sizeof *be);
    cu_impl *c = (cu_impl *)calloc(1, sizeof *c);
    const char *what = "";
    cublasStatus_t bs = CUBLAS_STATUS_SUCCESS;
    if (!be || !c) {
        free(be);
        free(c);
        if (err && errlen)
            snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    be->impl = c;
    c->ops = cu_ops_template;
    be->ops = &c->ops;
    c->device = device;
    const char *mode = getenv("VMLA_CUDA_DTYPE");
    if (mode && (!strcmp(mode, "f32") || !strcmp(mode, "fp32") || !strcmp(mode, "F32")))
        c->ops.compute_dtype = KN_F32;
    else if (mode && *mode && strcmp(mode, "bf16")) {
        if (err && errlen)
            snprintf(err, errlen, "VMLA_CUDA_DTYPE='%s': expected f32 or bf16", mode);
        free(c);
        free(be);
        return NULL;
    }
    if ((e = cudaSetDevice(device)) != cudaSuccess) {
        what = "cudaSetDevice";
        goto bad;
    }
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        what = "cudaStreamCreate";
        goto bad;
    }
    if ((bs = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
        what = "cublasCreate";
        goto bad;
    }
    if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS)
        c->lt = NULL; /* optional: kn_linear falls back to broadcast + GEMM */
    if (getenv("VMLA_CUDA_NO_LT"))
        c->lt = NULL;
    c->attn_batch = !env_off("VMLA_CUDA_ATTN_BATCH");
    c->norm_warp = !env_off("VMLA_CUDA_NORM_WARP");
    c->blas_ws_bytes = BLAS_WS;
    if ((e = cudaMalloc(&c->blas_ws, c->blas_ws_bytes)) != cudaSuccess) {
        what = "cudaMalloc (cuBLAS workspace)";
        goto bad;
    }
    if ((bs = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetWorkspace(c->blas, c->blas_ws, c->blas_ws_bytes)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        what = "cublas setup";
        goto bad;
    }
    c->ring_cap = RING0;
    if ((e = cudaMallocHost(&c->pin_pages, c->ring_cap * sizeof(int32_t))) != cudaSuccess) {
        c->pin_pages = NULL;
        what = "cudaMallocHost (page ring)";
        goto bad;
    }
    if ((e = cudaMalloc(&c->dev_pages, c->ring_cap * sizeof(int32_t))) != cudaSuccess) {
        c->dev_pages = NULL;
        what = "cudaMalloc (page ring)";
        goto bad;
    }
    if ((e = cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) != cudaSuccess) {
        what = "cudaDeviceGetAttribute";
        goto bad;
    }
    {
        const char *am = getenv("VMLA_CUDA_ATTN");
        int want_tc = !(am && !strcmp(am, "simple"));
        c->attn_tc = cu_attention_probe(be, want_tc);
        c->attn_tc_ok = c->attn_tc || cu_attention_probe(be, 1);
        if (c->attn_tc && am && !strcmp(am, "tc-sync"))
            c->attn_tc = 2;
        if (be->err[0]) { /* the probe itself failed on the device */
            if (err && errlen)
                snprintf(err, errlen, "%s", be->err);
            cu_destroy(be);
            return NULL;
        }
        /* cuDNN's fused attention first (bf16 mode), unless a kernel of ours is asked for by name;
         * when libcudnn is missing our tensor-core kernel stays the one */
        int want_dnn = !am || !*am || !strncmp(am, "cudnn", 5);
        if (want_dnn && c->ops.compute_dtype != KN_F32) {
            char why[256];
            if (!cu_dnn_open(be, am && !strcmp(am, "cudnn-paged"), why, sizeof why) && getenv("VMLA_CUDNN_VERBOSE"))
                fprintf(stderr, "cuda backend: cuDNN attention off: %s\n", why);
        }
    }
    if (getenv("VMLA_CUDA_PROFILE") && !cu_prof_install(be)) {
        what = "cudaEventCreate (profiler)";
        e = cudaErrorMemoryAllocation;
        goto bad;
    }
    return be;
bad:
    if (err && errlen) {
        if (bs != CUBLAS_STATUS_SUCCESS)
            snprintf(err, errlen, "cuda backend: %s: %s", what, cublasGetStatusString(bs));
        else
            snprintf(err, errlen, "cuda backend: %s: %s", what, cudaGetErrorString(e));
    }
    cudaGetLastError();
    cu_destroy(be);
    return NULL;
}

/* For tests and benchmarks: which attention kernel this backend uses ("tensor-core" or "simple").
 * Declared where used (tests/kernels/test_backend.c, bench/gpu_bench.c). */
extern "C" const char *kn_cuda_attention_variant(const kn_backend_t *be)
{
    if (!be || strcmp(be->ops->name, "cuda"))
        return "none";
    const cu_impl *c = (const cu_impl *)be->impl;
    if (c->dnn) {
        cu_dnn_stats s;
        cu_dnn_info(be, &s);
        return s.paged ? "cudnn-paged" : "cudnn";
    }
    int v = c->attn_tc;
    return v == 1 ? "tensor-core" : v == 2 ? "tensor-core-sync" : "simple";
}

/* Switch the attention of a live backend (benchmarks: several variants over one engine): "cudnn",
 * "cudnn-paged", "tc", "tc-sync" or "simple". Waits for the stream. Returns 0 when that variant
 * cannot run here (no cuDNN, no tensor cores), leaving the backend as it was. */
extern "C" int kn_cuda_attention_select(kn_backend_t *be, const char *name)
{
    if (!be || strcmp(be->ops->name, "cuda"))
        return 0;
    cu_impl *c = cu_of(be);
    cudaStreamSynchronize(c->stream);
    if (!strncmp(name, "cudnn", 5)) {
        if (c->ops.compute_dtype == KN_F32)
            return 0;
        struct cu_dnn *old = c->dnn;
        c->dnn = NULL;
        char why[256];
        if (!cu_dnn_open(be, !strcmp(name, "cudnn-paged"), why, sizeof why)) {
            c->dnn = old;
            return 0;
        }
        struct cu_dnn *nw = c->dnn;
        c->dnn = old;
        cu_dnn_close(be);
        c->dnn = nw;
        c->attn_tc = c->attn_tc_ok;
        return 1;
    }
    int tc = !strcmp(name, "tc") ? 1 : !strcmp(name, "tc-sync") ? 2 : !strcmp(name, "simple") ? 0 : -1;
    if (tc < 0 || (tc > 0 && !c->attn_tc_ok))
        return 0;
    cu_dnn_close(be);
    c->attn_tc = tc;
    return 1;
}

/* The path the last kn_attention call took ("cudnn-unified-gather", "tensor-core", ...). */
extern "C" const char *kn_cuda_attention_last(const kn_backend_t *be)
{
    if (!be || strcmp(be->ops->name, "cuda"))
        return "none";
    const char *l = ((const cu_impl *)be->impl)->attn_last;
    return l ? l : "none";
}

/* One line on cuDNN: version, plans built and refused, seconds spent building them. */
extern "C" void kn_cuda_cudnn_info(const kn_backend_t *be, char *buf, size_t n)
{
    cu_dnn_stats s;
    if (!be || strcmp(be->ops->name, "cuda")) {
        snprintf(buf, n, "not a CUDA backend");
        return;
    }
    cu_dnn_info(be, &s);
    if (!s.version)
        snprintf(buf, n, "cuDNN not in use");
    else
        snprintf(buf, n, "cuDNN %ld, %s, %d plans built (%.2f s), %d shapes refused%s%s", s.version,
                 s.paged ? "paged" : "gather", s.plans_built, s.build_s, s.plans_failed, s.why[0] ? ": " : "", s.why);
}
