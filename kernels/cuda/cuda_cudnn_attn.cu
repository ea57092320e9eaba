/* kernels/cuda/cuda_cudnn_attn.cu — attention through cuDNN's fused flash attention (SDPA).
 *
 * The same op as cu_attention (out[i, h*dv + c] = softmax_t(q_h(i) . k_g(t) * scale) v_g(t)[c]), run
 * by cuDNN's fused attention engines through its C backend API (cudnn_graph.h): no frontend, no
 * C++ library, only descriptors. Why: our own kernel (cuda_attention.cu, wmma) reaches ~66 TF/s at
 * the chunk's shapes where cuDNN's Hopper kernels reach ~500 (docs: bench/RESULTS.md).
 *
 * Loading. libcudnn is opened with dlopen at backend start (libcudnn.so.9, then $VMLA_CUDNN_LIB,
 * then the CUDA toolkit's and PyTorch's usual folders), so a program built with cuDNN's headers
 * still runs where the library is missing: the backend then keeps our kernel. Nothing here links
 * against cuDNN; CMake compiles this file's cuDNN part only when cudnn_graph.h is found
 * (VMLA_HAVE_CUDNN), else every entry point says "built without cuDNN".
 *
 * The graph, two forms (VMLA_CUDNN_SDPA=unified|composite picks one; default: unified first,
 * composite when the library or the engines refuse it):
 *  - unified: one CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR node (cuDNN >= 9.13.1) over Q, K, V,
 *    O and the scale. With a page table (>= 9.15) K and V are "containers" [pages, heads,
 *    page_tokens, d] read through a device page table and sequence lengths: our KV pool as is.
 *    (The GPU machine's cuDNN 9.14 refuses the page-table attributes, BAD_PARAM; the paged mode
 *    then takes the composite form below, and failing that gathers.)
 *  - composite: the pattern cuDNN's flash engines match, spelled out as ops:
 *        S = Q K^T (fp32) ; S *= scale ; m = max_t S ; E = exp(S - m) ; l = sum_t E ;
 *        stats = m + log l (virtual) ; P = E / l (bf16) ; O = P V
 *    (cuDNN fuses it into one flash kernel; nothing is materialised). With a page table (>= 9.5)
 *    K^T and V come from two paged-cache-load ops over the containers, with the sequence lengths
 *    as matmul overrides and a padding mask (row < seq_q && col < seq_kv, else -inf) on S. cuDNN
 *    takes power-of-2 page sizes only ("block size needs to be ... a power of 2"): the engine's
 *    pages (one latent frame, 1560 tokens) are refused and gathered (bench/RESULTS.md).
 *
 * Tensors are 4-D [batch 1, heads, tokens, d] views with strides, so Q, O and a contiguous KV
 * source are described in place (row stride = ld / row_stride, head stride = d). A paged source
 * either goes to cuDNN as containers + page table (mode PAGED, VMLA_CUDA_ATTN=cudnn-paged) or is first gathered into a
 * contiguous scratch, one pass over the window's bytes (mode GATHER: ~67 MB a call for the
 * per-head layout at 10920 keys, ~40 us at 3.5 TB/s against ~0.6 ms of attention).
 *
 * A batch (kn_attention_batch, cu_dnn_attention_batch): up to 8 streams whose sources have the same
 * length and layout are one call with a batch dimension: their windows gathered by one launch into
 * one scratch [B, n, w], Q and O described in place (stream b's queries are rows b*nq..). One
 * stream's chunk at a preview size fills less than one wave of the GPU's SMs and costs a host round
 * of gather + execute; eight of them at once cost one (bench/RESULTS.md, fourth session). Windows
 * that already lie at a fixed distance in one buffer (the MLA rebuild's keys and values, one
 * after the other or in its cache's slots) are described in place instead ("batch-direct").
 *
 * Plans: an execution plan is built per shape (the key: every dim and stride, the form, the
 * mode) on first use, then cached (CACHE_N entries, oldest evicted): the hot path only fills a
 * variant pack (pointers) and calls cudnnBackendExecute. Building a plan takes tens to hundreds
 * of milliseconds (some engines compile at run time), so the first chunk of each new window
 * length pays it once; cu_dnn_plans() reports how many were built and how long it took. A shape
 * that no engine supports is remembered as unsupported and goes to our kernel.
 * Workspace and the gather scratch grow to the largest size needed, then stay.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda_internal.cuh"

#if VMLA_HAVE_CUDNN
#include <cudnn_graph.h>
#include <dlfcn.h>

/* ---- the library, by dlopen ------------------------------------------------------------------- */

typedef struct {
    void *lib;
    decltype(&cudnnGetVersion) getVersion;
    decltype(&cudnnGetErrorString) getErrorString;
    decltype(&cudnnGetLastErrorString) getLastErrorString;
    decltype(&cudnnCreate) create;
    decltype(&cudnnDestroy) destroy;
    decltype(&cudnnSetStream) setStream;
    decltype(&cudnnBackendCreateDescriptor) bCreate;
    decltype(&cudnnBackendDestroyDescriptor) bDestroy;
    decltype(&cudnnBackendFinalize) bFinalize;
    decltype(&cudnnBackendSetAttribute) bSet;
    decltype(&cudnnBackendGetAttribute) bGet;
    decltype(&cudnnBackendExecute) bExecute;
} dnn_api;

enum { FORM_UNIFIED = 1, FORM_COMPOSITE = 2 };
enum { MODE_GATHER = 1, MODE_PAGED = 2 };

#define CACHE_N 128
#define MAXDESC 96
#define PACKS 32 /* variant packs kept per plan (one per set of pointers: layers, streams) */

/* The shape of one call: everything a plan depends on (pointers and the scale are not). */
typedef struct {
    int64_t form, paged, dt;
    int64_t hq, nq, dk, ldq;  /* Q [1, hq, nq, dk], row stride ldq */
    int64_t dv, ldo;          /* O [1, hq, nq, dv], row stride ldo */
    int64_t hk, n, rs;        /* K/V: hk heads, n tokens, row stride rs */
    int64_t pt, np, nblk, ps; /* paged: page tokens, pages listed, pages in the container, page stride */
    int64_t nb;               /* streams in the call (the batch dimension); 0 for a one-stream call */
    int64_t bs;               /* batch-direct: rows from one stream's window to the next (0: n) */
} dnn_key;

typedef struct {
    dnn_key key;
    int used;        /* 0 empty, 1 plan, -1 unsupported */
    uint64_t stamp;  /* last use, for eviction */
    cudnnBackendDescriptor_t plan;
    cudnnBackendDescriptor_t desc[MAXDESC]; /* everything the plan was built from */
    int ndesc;
    int64_t ws;
    float sc, neginf; /* the scale and -inf (the paged mask), read by value from here */
    struct {
        void *ptrs[11]; /* the 10 data pointers and the workspace */
        cudnnBackendDescriptor_t vp;
    } pack[PACKS];
    int npack, next_pack;
} dnn_entry;

struct cu_dnn {
    dnn_api api;
    cudnnHandle_t h;
    size_t version;
    int mode;       /* MODE_GATHER or MODE_PAGED */
    int form_want;  /* 0: unified then composite; else that form only */
    int pack_cache; /* reuse variant packs (VMLA_CUDNN_PACK_CACHE=0: a new one every call) */
    dnn_entry cache[CACHE_N];
    uint64_t clock;
    void *ws;
    size_t ws_bytes;
    void *gather;
    size_t gather_bytes;
    int plans_built, plans_failed;
    double build_s;
    char last[48];
    char why[256]; /* why the last plan could not be built */
};

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *dnn_dlopen(char *why, size_t n)
{
    const char *env = getenv("VMLA_CUDNN_LIB");
    const char *tries[] = {
        env && *env ? env : NULL,
        "libcudnn.so.9",
        "/usr/local/cuda/lib64/libcudnn.so.9",
        "/usr/local/cuda/lib/libcudnn.so.9",
        "/usr/lib/x86_64-linux-gnu/libcudnn.so.9",
        "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9",
        "/usr/local/lib/python3.12/dist-packages/nvidia/cudnn/lib/libcudnn.so.9",
    };
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        if (!tries[i])
            continue;
        void *l = dlopen(tries[i], RTLD_NOW | RTLD_LOCAL);
        if (l)
            return l;
    }
    snprintf(why, n, "libcudnn.so.9 not found (set VMLA_CUDNN_LIB or LD_LIBRARY_PATH): %s", dlerror());
    return NULL;
}

/* ---- descriptor helpers -------------------------------------------------------------------------
 * A builder collects every descriptor it makes (so they can be freed together) and remembers the
 * first failure with the step that failed and cuDNN's own message. */
typedef struct {
    struct cu_dnn *d;
    cudnnBackendDescriptor_t *desc;
    int *ndesc;
    cudnnStatus_t st;
    char what[200];
} bld;

static void b_fail(bld *b, cudnnStatus_t s, const char *what)
{
    if (b->st != CUDNN_STATUS_SUCCESS)
        return;
    b->st = s;
    char msg[160] = "";
    if (b->d->api.getLastErrorString)
        b->d->api.getLastErrorString(msg, sizeof msg);
    snprintf(b->what, sizeof b->what, "%.40s: %.40s%s%.110s", what, b->d->api.getErrorString(s), msg[0] ? " / " : "", msg);
}

static cudnnBackendDescriptor_t b_new(bld *b, cudnnBackendDescriptorType_t t, const char *what)
{
    cudnnBackendDescriptor_t x = NULL;
    if (b->st != CUDNN_STATUS_SUCCESS)
        return NULL;
    if (*b->ndesc >= MAXDESC) {
        b_fail(b, CUDNN_STATUS_INTERNAL_ERROR, "too many descriptors");
        return NULL;
    }
    cudnnStatus_t s = b->d->api.bCreate(t, &x);
    if (s != CUDNN_STATUS_SUCCESS) {
        b_fail(b, s, what);
        return NULL;
    }
    b->desc[(*b->ndesc)++] = x;
    return x;
}

static void b_set(bld *b, cudnnBackendDescriptor_t x, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t,
                  int64_t n, const void *v, const char *what)
{
    if (b->st != CUDNN_STATUS_SUCCESS)
        return;
    cudnnStatus_t s = b->d->api.bSet(x, a, t, n, v);
    if (s != CUDNN_STATUS_SUCCESS)
        b_fail(b, s, what);
}

static void b_fin(bld *b, cudnnBackendDescriptor_t x, const char *what)
{
    if (b->st != CUDNN_STATUS_SUCCESS)
        return;
    cudnnStatus_t s = b->d->api.bFinalize(x);
    if (s != CUDNN_STATUS_SUCCESS)
        b_fail(b, s, what);
}

/* A 4-D tensor: dims and strides (elements), unique id, dtype; virtual (never in memory) or passed
 * by value (a host scalar in the variant pack). */
static cudnnBackendDescriptor_t b_tensor(bld *b, int64_t uid, cudnnDataType_t dt, const int64_t *dim,
                                         const int64_t *str, bool virt, bool byval, int64_t align)
{
    cudnnBackendDescriptor_t t = b_new(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor");
    b_set(b, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "tensor dtype");
    b_set(b, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim, "tensor dims");
    b_set(b, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, str, "tensor strides");
    b_set(b, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor uid");
    b_set(b, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "tensor alignment");
    if (virt)
        b_set(b, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, "tensor virtual");
    if (byval)
        b_set(b, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &byval, "tensor by value");
    b_fin(b, t, "tensor finalize");
    return t;
}

static cudnnBackendDescriptor_t b_matmul(bld *b, cudnnBackendDescriptor_t A, cudnnBackendDescriptor_t B,
                                         cudnnBackendDescriptor_t C, cudnnBackendDescriptor_t m_ovr = NULL,
                                         cudnnBackendDescriptor_t n_ovr = NULL, cudnnBackendDescriptor_t k_ovr = NULL)
{
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t m = b_new(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR, "matmul");
    b_set(b, m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f, "matmul comp type");
    b_fin(b, m, "matmul finalize");
    cudnnBackendDescriptor_t op = b_new(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, "matmul op");
    b_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &A, "matmul A");
    b_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &B, "matmul B");
    b_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &C, "matmul C");
    b_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m, "matmul desc");
    if (m_ovr)
        b_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_ovr, "m ovr");
    if (n_ovr)
        b_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_ovr, "n ovr");
    if (k_ovr)
        b_set(b, op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_ovr, "k ovr");
    b_fin(b, op, "matmul op finalize");
    return op;
}

/* y = mode(x[, bb]) elementwise with broadcasting, fp32 math. */
static cudnnBackendDescriptor_t b_pw(bld *b, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                                     cudnnBackendDescriptor_t bb, cudnnBackendDescriptor_t y)
{
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t p = b_new(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
    b_set(b, p, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    b_set(b, p, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &f, "pointwise precision");
    b_fin(b, p, "pointwise finalize");
    cudnnBackendDescriptor_t op = b_new(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p, "pointwise desc");
    b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pointwise x");
    if (bb)
        b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bb, "pointwise b");
    b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pointwise y");
    b_fin(b, op, "pointwise op finalize");
    return op;
}

/* The general form: math precision, an axis (GEN_INDEX) and a third input t (BINARY_SELECT). */
static cudnnBackendDescriptor_t b_pwx(bld *b, cudnnPointwiseMode_t mode, cudnnDataType_t prec, int64_t axis,
                                      cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t bb,
                                      cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y)
{
    cudnnBackendDescriptor_t p = b_new(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, "pointwise");
    b_set(b, p, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "pointwise mode");
    b_set(b, p, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "pointwise precision");
    if (axis >= 0)
        b_set(b, p, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "pointwise axis");
    b_fin(b, p, "pointwise finalize");
    cudnnBackendDescriptor_t op = b_new(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, "pointwise op");
    b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p, "pointwise desc");
    b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "pointwise x");
    if (bb)
        b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bb, "pointwise b");
    if (t)
        b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, "pointwise t");
    b_set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "pointwise y");
    b_fin(b, op, "pointwise op finalize");
    return op;
}

/* Y = the listed pages of a container, as one sequence (cuDNN >= 9.5). */
static cudnnBackendDescriptor_t b_pageload(bld *b, cudnnBackendDescriptor_t container, cudnnBackendDescriptor_t table,
                                           cudnnBackendDescriptor_t seqlen, cudnnBackendDescriptor_t y)
{
    cudnnBackendDescriptor_t op = b_new(b, CUDNN_BACKEND_OPERATION_PAGED_CACHE_LOAD_DESCRIPTOR, "paged load op");
    b_set(b, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_CONTAINER_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &container,
          "paged load container");
    b_set(b, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_PAGE_TABLE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &table,
          "paged load table");
    b_set(b, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_SEQUENCE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &seqlen,
          "paged load seq len");
    b_set(b, op, CUDNN_ATTR_OPERATION_PAGED_CACHE_LOAD_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "paged load y");
    b_fin(b, op, "paged load op finalize");
    return op;
}

static cudnnBackendDescriptor_t b_reduce(bld *b, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                                         cudnnBackendDescriptor_t y)
{
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t r = b_new(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, "reduction");
    b_set(b, r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, "reduction mode");
    b_set(b, r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f, "reduction comp type");
    b_fin(b, r, "reduction finalize");
    cudnnBackendDescriptor_t op = b_new(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, "reduction op");
    b_set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, "reduction x");
    b_set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, "reduction y");
    b_set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &r, "reduction desc");
    b_fin(b, op, "reduction op finalize");
    return op;
}

/* Unique ids of the tensors the variant pack names. */
enum { UID_Q = 1, UID_K, UID_V, UID_O, UID_SCALE, UID_PTK, UID_PTV, UID_SEQQ, UID_SEQKV, UID_NEGINF };

/* ---- building a plan ------------------------------------------------------------------------------ */

static int build_plan(struct cu_dnn *d, dnn_entry *e)
{
    const dnn_key *k = &e->key;
    bld b;
    memset(&b, 0, sizeof b);
    b.d = d;
    b.desc = e->desc;
    b.ndesc = &e->ndesc;
    b.st = CUDNN_STATUS_SUCCESS;
    cudnnDataType_t io = k->dt == KN_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
    const int64_t hq = k->hq, nq = k->nq, hk = k->hk, n = k->n, B = k->nb > 1 ? k->nb : 1;
    const int64_t kvb = (k->bs ? k->bs : n) * k->rs; /* elements from one stream's K/V to the next */
    /* [batch, heads, tokens, d]: stream b's queries are rows b*nq.. of Q, its keys the b-th block of
     * n rows of the gathered K and V */
    int64_t qd[4] = {B, hq, nq, k->dk}, qs[4] = {nq * k->ldq, k->dk, k->ldq, 1};
    int64_t od[4] = {B, hq, nq, k->dv}, os[4] = {nq * k->ldo, k->dv, k->ldo, 1};
    int64_t one[4] = {1, 1, 1, 1};
    cudnnBackendDescriptor_t Q = b_tensor(&b, UID_Q, io, qd, qs, false, false, 16);
    cudnnBackendDescriptor_t O = b_tensor(&b, UID_O, io, od, os, false, false, 16);
    cudnnBackendDescriptor_t SC = b_tensor(&b, UID_SCALE, f32, one, one, false, true, 16);
    cudnnBackendDescriptor_t ops[24];
    int nops = 0;
    if (k->form == FORM_UNIFIED) {
        cudnnBackendDescriptor_t K, V, PTK = NULL, PTV = NULL, SQ = NULL, SKV = NULL;
        if (k->paged) { /* containers [pages, heads, page_tokens, d] */
            int64_t kd[4] = {k->nblk, hk, k->pt, k->dk}, ks[4] = {k->ps, k->dk, k->rs, 1};
            int64_t vd[4] = {k->nblk, hk, k->pt, k->dv}, vs[4] = {k->ps, k->dv, k->rs, 1};
            int64_t td[4] = {1, 1, k->np, 1}, ts[4] = {k->np, k->np, 1, 1};
            cudnnDataType_t i32 = CUDNN_DATA_INT32;
            K = b_tensor(&b, UID_K, io, kd, ks, false, false, 16);
            V = b_tensor(&b, UID_V, io, vd, vs, false, false, 16);
            PTK = b_tensor(&b, UID_PTK, i32, td, ts, false, false, 16);
            PTV = b_tensor(&b, UID_PTV, i32, td, ts, false, false, 16);
            SQ = b_tensor(&b, UID_SEQQ, i32, one, one, false, false, 16);
            SKV = b_tensor(&b, UID_SEQKV, i32, one, one, false, false, 16);
        } else {
            int64_t kd[4] = {B, hk, n, k->dk}, ks[4] = {kvb, k->dk, k->rs, 1};
            int64_t vd[4] = {B, hk, n, k->dv}, vs[4] = {kvb, k->dv, k->rs, 1};
            K = b_tensor(&b, UID_K, io, kd, ks, false, false, 16);
            V = b_tensor(&b, UID_V, io, vd, vs, false, false, 16);
        }
#if CUDNN_VERSION >= 91301
        cudnnBackendDescriptor_t op = b_new(&b, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "sdpa op");
        b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &Q, "sdpa q");
        b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &K, "sdpa k");
        b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &V, "sdpa v");
        b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &O, "sdpa o");
        b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &SC, "sdpa scale");
#if CUDNN_VERSION >= 91500
        if (k->paged) {
            b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_PAGE_TABLE_KDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &PTK,
                  "sdpa page table k");
            b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_PAGE_TABLE_VDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &PTV,
                  "sdpa page table v");
            b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_QDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &SQ,
                  "sdpa seq len q");
            b_set(&b, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_KVDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &SKV,
                  "sdpa seq len kv");
        }
#else
        if (k->paged)
            b_fail(&b, CUDNN_STATUS_NOT_SUPPORTED, "paged SDPA needs cuDNN headers >= 9.15");
#endif
        b_fin(&b, op, "sdpa op finalize");
        ops[nops++] = op;
#else
        (void)K, (void)V, (void)PTK, (void)PTV, (void)SQ, (void)SKV;
        b_fail(&b, CUDNN_STATUS_NOT_SUPPORTED, "unified SDPA needs cuDNN headers >= 9.13.1");
#endif
    } else {
        /* composite: K enters transposed, KT [1, hk, dk, n]. Paged: KT and V are what two paged
         * loads make of the containers (virtual, packed), and a padding mask built from the
         * sequence lengths hides nothing but is what cuDNN's paged flash engines expect. */
        int64_t kd[4] = {B, hk, k->dk, n}, ks[4] = {kvb, k->dk, 1, k->rs};
        int64_t vd[4] = {B, hk, n, k->dv}, vs[4] = {kvb, k->dv, k->rs, 1};
        int64_t sd[4] = {B, hq, nq, n}, ss[4] = {hq * nq * n, nq * n, n, 1};
        int64_t rd[4] = {B, hq, nq, 1}, rss[4] = {hq * nq, nq, 1, 1};
        cudnnBackendDescriptor_t KT, V, SQ = NULL, SKV = NULL;
        if (k->paged) {
            int64_t cd[4] = {k->nblk, hk, k->pt, k->dk}, cs[4] = {k->ps, k->dk, k->rs, 1};
            int64_t cvd[4] = {k->nblk, hk, k->pt, k->dv}, cvs[4] = {k->ps, k->dv, k->rs, 1};
            int64_t td[4] = {1, 1, k->np, 1}, ts[4] = {k->np, k->np, 1, 1};
            int64_t pks[4] = {k->dk * n * hk, k->dk * n, 1, k->dk}, pvs[4] = {k->dv * n * hk, k->dv * n, k->dv, 1};
            cudnnDataType_t i32 = CUDNN_DATA_INT32;
            cudnnBackendDescriptor_t CK = b_tensor(&b, UID_K, io, cd, cs, false, false, 16);
            cudnnBackendDescriptor_t CV = b_tensor(&b, UID_V, io, cvd, cvs, false, false, 16);
            cudnnBackendDescriptor_t PTK = b_tensor(&b, UID_PTK, i32, td, ts, false, false, 16);
            cudnnBackendDescriptor_t PTV = b_tensor(&b, UID_PTV, i32, td, ts, false, false, 16);
            SQ = b_tensor(&b, UID_SEQQ, i32, one, one, false, false, 16);
            SKV = b_tensor(&b, UID_SEQKV, i32, one, one, false, false, 16);
            KT = b_tensor(&b, 120, io, kd, pks, true, false, 16);
            V = b_tensor(&b, 121, io, vd, pvs, true, false, 16);
            ops[nops++] = b_pageload(&b, CK, PTK, SKV, KT);
            ops[nops++] = b_pageload(&b, CV, PTV, SKV, V);
        } else {
            KT = b_tensor(&b, UID_K, io, kd, ks, false, false, 16);
            V = b_tensor(&b, UID_V, io, vd, vs, false, false, 16);
        }
        cudnnBackendDescriptor_t S = b_tensor(&b, 101, f32, sd, ss, true, false, 16);
        cudnnBackendDescriptor_t S2 = b_tensor(&b, 102, f32, sd, ss, true, false, 16);
        cudnnBackendDescriptor_t MX = b_tensor(&b, 103, f32, rd, rss, true, false, 16);
        cudnnBackendDescriptor_t SUB = b_tensor(&b, 104, f32, sd, ss, true, false, 16);
        cudnnBackendDescriptor_t EX = b_tensor(&b, 105, f32, sd, ss, true, false, 16);
        cudnnBackendDescriptor_t SUM = b_tensor(&b, 106, f32, rd, rss, true, false, 16);
        cudnnBackendDescriptor_t LG = b_tensor(&b, 107, f32, rd, rss, true, false, 16);
        cudnnBackendDescriptor_t ST = b_tensor(&b, 108, f32, rd, rss, true, false, 16);
        cudnnBackendDescriptor_t P = b_tensor(&b, 109, io, sd, ss, true, false, 16);
        ops[nops++] = b_matmul(&b, Q, KT, S, SQ, SKV, NULL);
        ops[nops++] = b_pw(&b, CUDNN_POINTWISE_MUL, S, SC, S2);
        if (k->paged) { /* S2 = (row < seq_q && col < seq_kv) ? S2 : -inf */
            cudnnDataType_t i32 = CUDNN_DATA_INT32, bo = CUDNN_DATA_BOOLEAN;
            cudnnBackendDescriptor_t NI = b_tensor(&b, UID_NEGINF, f32, one, one, false, true, 16);
            cudnnBackendDescriptor_t RI = b_tensor(&b, 110, i32, sd, ss, true, false, 16);
            cudnnBackendDescriptor_t CI = b_tensor(&b, 111, i32, sd, ss, true, false, 16);
            cudnnBackendDescriptor_t RM = b_tensor(&b, 112, bo, sd, ss, true, false, 16);
            cudnnBackendDescriptor_t CM = b_tensor(&b, 113, bo, sd, ss, true, false, 16);
            cudnnBackendDescriptor_t M = b_tensor(&b, 114, bo, sd, ss, true, false, 16);
            cudnnBackendDescriptor_t S3 = b_tensor(&b, 115, f32, sd, ss, true, false, 16);
            ops[nops++] = b_pwx(&b, CUDNN_POINTWISE_GEN_INDEX, i32, 2, S2, NULL, NULL, RI);
            ops[nops++] = b_pwx(&b, CUDNN_POINTWISE_GEN_INDEX, i32, 3, S2, NULL, NULL, CI);
            ops[nops++] = b_pwx(&b, CUDNN_POINTWISE_CMP_LT, bo, -1, RI, SQ, NULL, RM);
            ops[nops++] = b_pwx(&b, CUDNN_POINTWISE_CMP_LT, bo, -1, CI, SKV, NULL, CM);
            ops[nops++] = b_pwx(&b, CUDNN_POINTWISE_LOGICAL_AND, bo, -1, RM, CM, NULL, M);
            ops[nops++] = b_pwx(&b, CUDNN_POINTWISE_BINARY_SELECT, f32, -1, S2, NI, M, S3);
            S2 = S3;
        }
        ops[nops++] = b_reduce(&b, CUDNN_REDUCE_TENSOR_MAX, S2, MX);
        ops[nops++] = b_pw(&b, CUDNN_POINTWISE_SUB, S2, MX, SUB);
        ops[nops++] = b_pw(&b, CUDNN_POINTWISE_EXP, SUB, NULL, EX);
        ops[nops++] = b_reduce(&b, CUDNN_REDUCE_TENSOR_ADD, EX, SUM);
        ops[nops++] = b_pw(&b, CUDNN_POINTWISE_LOG, SUM, NULL, LG);
        ops[nops++] = b_pw(&b, CUDNN_POINTWISE_ADD, MX, LG, ST);
        ops[nops++] = b_pw(&b, CUDNN_POINTWISE_DIV, EX, SUM, P);
        ops[nops++] = b_matmul(&b, P, V, O, SQ, NULL, SKV);
    }
    /* operation graph -> heuristics -> the first engine config that makes a plan */
    cudnnBackendDescriptor_t g = b_new(&b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "graph");
    b_set(&b, g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, nops, ops, "graph ops");
    b_set(&b, g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &d->h, "graph handle");
    b_fin(&b, g, "graph finalize");
    cudnnBackendHeurMode_t hm = CUDNN_HEUR_MODE_A;
    cudnnBackendDescriptor_t hr = b_new(&b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    b_set(&b, hr, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g, "heuristics graph");
    b_set(&b, hr, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &hm, "heuristics mode");
    b_fin(&b, hr, "heuristics finalize");
    if (b.st != CUDNN_STATUS_SUCCESS) {
        snprintf(d->why, sizeof d->why, "%s", b.what);
        return 0;
    }
    int64_t ncfg = 0;
    cudnnStatus_t s = d->api.bGet(hr, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &ncfg, NULL);
    if (s != CUDNN_STATUS_SUCCESS || ncfg <= 0) {
        b_fail(&b, s != CUDNN_STATUS_SUCCESS ? s : CUDNN_STATUS_NOT_SUPPORTED, "heuristics: no engine config");
        snprintf(d->why, sizeof d->why, "%s", b.what);
        return 0;
    }
    if (ncfg > 8)
        ncfg = 8;
    cudnnBackendDescriptor_t cfg[8];
    for (int64_t i = 0; i < ncfg; i++)
        cfg[i] = b_new(&b, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    int64_t got = 0;
    if (b.st == CUDNN_STATUS_SUCCESS &&
        (s = d->api.bGet(hr, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, ncfg, &got, cfg)) !=
            CUDNN_STATUS_SUCCESS)
        b_fail(&b, s, "heuristics results");
    if (b.st != CUDNN_STATUS_SUCCESS) {
        snprintf(d->why, sizeof d->why, "%s", b.what);
        return 0;
    }
    char first_err[200] = "";
    for (int64_t i = 0; i < got; i++) {
        cudnnBackendDescriptor_t p = NULL;
        if (d->api.bCreate(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &p) != CUDNN_STATUS_SUCCESS)
            continue;
        bld t = b; /* a failed config must not poison the builder */
        t.st = CUDNN_STATUS_SUCCESS;
        b_set(&t, p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &d->h, "plan handle");
        b_set(&t, p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg[i], "plan config");
        b_fin(&t, p, "plan finalize");
        int64_t ws = 0, cnt = 0;
        if (t.st == CUDNN_STATUS_SUCCESS &&
            (s = d->api.bGet(p, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt, &ws)) !=
                CUDNN_STATUS_SUCCESS)
            b_fail(&t, s, "plan workspace size");
        if (t.st != CUDNN_STATUS_SUCCESS) {
            if (!first_err[0])
                snprintf(first_err, sizeof first_err, "config %lld: %.160s", (long long)i, t.what);
            d->api.bDestroy(p);
            continue;
        }
        e->plan = p;
        e->ws = ws;
        return 1;
    }
    snprintf(d->why, sizeof d->why, "no engine config made a plan (%lld tried; %.200s)", (long long)got, first_err);
    return 0;
}

static void entry_free(struct cu_dnn *d, dnn_entry *e)
{
    for (int i = 0; i < e->npack; i++)
        d->api.bDestroy(e->pack[i].vp);
    if (e->plan)
        d->api.bDestroy(e->plan);
    for (int i = e->ndesc - 1; i >= 0; i--)
        d->api.bDestroy(e->desc[i]);
    memset(e, 0, sizeof *e);
}

/* The cached plan for key (built now if new); NULL when no engine supports that shape. */
static dnn_entry *plan_for(struct cu_dnn *d, const dnn_key *key)
{
    dnn_entry *free_e = NULL, *old = NULL;
    d->clock++;
    for (int i = 0; i < CACHE_N; i++) {
        dnn_entry *e = &d->cache[i];
        if (e->used && !memcmp(&e->key, key, sizeof *key)) {
            e->stamp = d->clock;
            return e->used > 0 ? e : NULL;
        }
        if (!e->used && !free_e)
            free_e = e;
        if (e->used && (!old || e->stamp < old->stamp))
            old = e;
    }
    dnn_entry *e = free_e ? free_e : old;
    if (!free_e)
        entry_free(d, e);
    e->key = *key;
    e->stamp = d->clock;
    double t0 = wall_s();
    int ok = build_plan(d, e);
    d->build_s += wall_s() - t0;
    if (!ok) {
        for (int i = e->ndesc - 1; i >= 0; i--)
            d->api.bDestroy(e->desc[i]);
        e->ndesc = 0;
        e->plan = NULL;
        e->used = -1;
        d->plans_failed++;
        if (getenv("VMLA_CUDNN_VERBOSE"))
            fprintf(stderr, "cudnn: %s plan for hq %lld nq %lld dk %lld dv %lld hk %lld n %lld%s: %s\n",
                    key->form == FORM_UNIFIED ? "unified" : "composite", (long long)key->hq, (long long)key->nq,
                    (long long)key->dk, (long long)key->dv, (long long)key->hk, (long long)key->n,
                    key->paged ? " paged" : "", d->why);
        return NULL;
    }
    e->used = 1;
    d->plans_built++;
    return e;
}

/* ---- the gather: a paged window into contiguous rows ---------------------------------------------- */
/* dst row t = bytes [lo, lo + w) of token t's row; 16-byte vectors. */
__global__ void k_kv_gather(uint4 *dst, const char *base, const int32_t *pages, int64_t page_stride_b,
                            int64_t row_stride_b, int pt, int64_t n, int vec)
{
    int64_t total = n * vec;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / vec;
        int c = (int)(i - t * vec);
        const char *src = base + (int64_t)pages[t / pt] * page_stride_b + (t % pt) * row_stride_b + (int64_t)c * 16;
        dst[i] = *(const uint4 *)src;
    }
}

static void *grow(kn_backend_t *be, void **p, size_t *have, size_t need, const char *what, kn_status *st)
{
    *st = KN_OK;
    if (need <= *have)
        return *p;
    cu_impl *c = cu_of(be);
    size_t n = (need + need / 8 + 4095) / 4096 * 4096;
    if ((*st = cu_check(be, cudaStreamSynchronize(c->stream), what)) != KN_OK)
        return NULL;
    cudaFree(*p);
    *p = NULL;
    *have = 0;
    if ((*st = cu_check(be, cudaMalloc(p, n), what)) != KN_OK) {
        *p = NULL;
        *st = KN_ERR_NOMEM;
        return NULL;
    }
    *have = n;
    return *p;
}

static int al16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* The gather of a batch: stream b's window to rows b*n .. of dst. bases[b] is the address of its
 * token row 0, page 0, at the first gathered column; pages[b*np + p] its page p (a contiguous
 * source: one page of n tokens, index 0). */
__global__ void k_kv_gather_b(uint4 *dst, const unsigned long long *bases, const int32_t *pages, int64_t np,
                              int64_t page_stride_b, int64_t row_stride_b, int pt, int64_t n, int vec, int nb)
{
    int64_t per = n * vec, total = per * nb;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = i / per, rem = i - b * per, t = rem / vec;
        int c = (int)(rem - t * vec);
        const char *src = (const char *)bases[b] + (int64_t)pages[b * np + t / pt] * page_stride_b +
                          (t % pt) * row_stride_b + (int64_t)c * 16;
        dst[i] = *(const uint4 *)src;
    }
}

/* ---- the op ----------------------------------------------------------------------------------------- */

/* What cuDNN's flash engines take: 16-bit I/O of one type, d a multiple of 8 up to 256, every stride
 * a multiple of 8 elements (16 bytes), 16-byte aligned pointers. */
static int dnn_takes(kn_tensor out, kn_tensor q, const kn_kv *kv)
{
    const char *base = (const char *)kv->buf->ptr + kv->off;
    return q.rows > 0 && q.dtype == KN_BF16 && kv->dtype == KN_BF16 && out.dtype == KN_BF16 && kv->dk % 8 == 0 &&
           kv->dv % 8 == 0 && kv->dk <= 256 && kv->dv <= 256 && q.ld % 8 == 0 && out.ld % 8 == 0 &&
           kv->row_stride % 8 == 0 && kv->k_off % 8 == 0 && kv->v_off % 8 == 0 &&
           (!kv->pages || kv->page_stride % 8 == 0) && al16((const char *)q.buf->ptr + q.off) &&
           al16((const char *)out.buf->ptr + out.off) && al16(base) && kv->n_tokens >= 1;
}

/* The call's key without the source part (and without the form). */
static dnn_key dnn_key_of(kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads, int64_t nq)
{
    dnn_key key;
    memset(&key, 0, sizeof key);
    key.dt = KN_BF16;
    key.hq = q_heads;
    key.nq = nq;
    key.dk = kv->dk;
    key.ldq = q.ld;
    key.dv = kv->dv;
    key.ldo = out.ld;
    key.hk = kv->kv_heads;
    key.n = kv->n_tokens;
    return key;
}

/* The plan for key: unified first (one SDPA node), composite when refused, or the form asked for. */
static dnn_entry *dnn_plan(struct cu_dnn *d, dnn_key *key)
{
    int forms[2] = {FORM_UNIFIED, FORM_COMPOSITE}, nf = 2;
    if (d->form_want) {
        forms[0] = d->form_want;
        nf = 1;
    }
    dnn_entry *e = NULL;
    for (int i = 0; i < nf && !e; i++) {
        key->form = forms[i];
        e = plan_for(d, key);
    }
    return e;
}

/* The columns a gather copies: [lo, lo + w) of every token row, both the keys and the values. */
static void kv_span(const kn_kv *kv, int64_t *lo, int64_t *w)
{
    int64_t l = kv->k_off < kv->v_off ? kv->k_off : kv->v_off;
    int64_t hi1 = kv->k_off + (int64_t)kv->kv_heads * kv->dk, hi2 = kv->v_off + (int64_t)kv->kv_heads * kv->dv;
    *lo = l;
    *w = (hi1 > hi2 ? hi1 : hi2) - l;
}

/* Run plan e on these pointers: the variant pack (kept per plan and set of pointers: the same
 * scratch, q and out views recur every layer, so the hot path is usually one lookup and
 * cudnnBackendExecute; the scale lives in the entry, cuDNN reads it by value), then execute. A
 * refusal at launch that is no device fault marks the shape unsupported (KN_ERR_UNSUPPORTED, our
 * kernel runs it). */
static kn_status dnn_run(kn_backend_t *be, dnn_entry *e, const dnn_key *key, int paged, const char *src_kind,
                         kn_tensor out, kn_tensor q, const char *kp, const char *vp, const int32_t *dpt,
                         const int32_t *dseq, float scale)
{
    cu_impl *c = cu_of(be);
    struct cu_dnn *d = c->dnn;
    kn_status st;
    void *ws = NULL;
    if (e->ws > 0 && !(ws = grow(be, &d->ws, &d->ws_bytes, (size_t)e->ws, "cudnn: workspace", &st)))
        return st;
    e->sc = scale;
    e->neginf = -INFINITY;
    void *ptrs[11] = {(char *)q.buf->ptr + q.off, (void *)kp, (void *)vp, (char *)out.buf->ptr + out.off, &e->sc,
                      (void *)dpt, (void *)dpt, (void *)dseq, (void *)(dseq ? dseq + 4 : NULL), &e->neginf, ws};
    int64_t uids[10] = {UID_Q, UID_K, UID_V, UID_O, UID_SCALE, UID_PTK, UID_PTV, UID_SEQQ, UID_SEQKV, UID_NEGINF};
    int64_t nu = paged ? (key->form == FORM_COMPOSITE ? 10 : 9) : 5;
    cudnnBackendDescriptor_t vp_ = NULL;
    cudnnStatus_t s = CUDNN_STATUS_SUCCESS;
    int slot = -1;
    if (d->pack_cache)
        for (int i = 0; i < e->npack; i++)
            if (!memcmp(e->pack[i].ptrs, ptrs, sizeof ptrs)) {
                vp_ = e->pack[i].vp;
                slot = i;
                break;
            }
    if (!vp_) {
        s = d->api.bCreate(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp_);
        if (s == CUDNN_STATUS_SUCCESS)
            s = d->api.bSet(vp_, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, nu, uids);
        if (s == CUDNN_STATUS_SUCCESS)
            s = d->api.bSet(vp_, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, nu, ptrs);
        if (s == CUDNN_STATUS_SUCCESS)
            s = d->api.bSet(vp_, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
        if (s == CUDNN_STATUS_SUCCESS)
            s = d->api.bFinalize(vp_);
        if (s == CUDNN_STATUS_SUCCESS && d->pack_cache && !paged) { /* paged: the ring moves every call */
            slot = e->npack < PACKS ? e->npack++ : e->next_pack;
            if (slot == e->next_pack && e->npack == PACKS && e->pack[slot].vp)
                d->api.bDestroy(e->pack[slot].vp);
            e->next_pack = (slot + 1) % PACKS;
            memcpy(e->pack[slot].ptrs, ptrs, sizeof ptrs);
            e->pack[slot].vp = vp_;
        }
    }
    if (s == CUDNN_STATUS_SUCCESS)
        s = d->api.bExecute(d->h, e->plan, vp_);
    if (vp_ && slot < 0)
        d->api.bDestroy(vp_);
    if (s != CUDNN_STATUS_SUCCESS) {
        char msg[160] = "";
        if (d->api.getLastErrorString)
            d->api.getLastErrorString(msg, sizeof msg);
        cudaError_t ce = cudaGetLastError();
        if (ce != cudaSuccess)
            return cu_fail(be, KN_ERR_DEVICE, "cudnn: attention: %s %s (%s)", d->api.getErrorString(s), msg,
                           cudaGetErrorString(ce));
        /* refused at launch (not a device fault): remember the shape as unsupported, use our kernel */
        snprintf(d->why, sizeof d->why, "execute: %.60s %.160s", d->api.getErrorString(s), msg);
        if (getenv("VMLA_CUDNN_VERBOSE"))
            fprintf(stderr, "cudnn: %s\n", d->why);
        entry_free(d, e);
        e->key = *key;
        e->used = -1;
        d->plans_failed++;
        return KN_ERR_UNSUPPORTED;
    }
    snprintf(d->last, sizeof d->last, "cudnn-%s-%s", key->form == FORM_UNIFIED ? "unified" : "composite", src_kind);
    c->attn_last = d->last;
    return cu_launched(be, "cudnn: attention");
}

kn_status cu_dnn_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads, float scale)
{
    cu_impl *c = cu_of(be);
    struct cu_dnn *d = c->dnn;
    if (!d || !dnn_takes(out, q, kv))
        return KN_ERR_UNSUPPORTED;
    const char *base = (const char *)kv->buf->ptr + kv->off;
    dnn_key key = dnn_key_of(out, q, kv, q_heads, q.rows);
    kn_status st;
    dnn_entry *e = NULL;
    const char *kp = NULL, *vp = NULL;
    const int32_t *dpt = NULL, *dseq = NULL;
    int paged = kv->pages && d->mode == MODE_PAGED;
    if (paged) {
        /* K and V as containers over the pool; the container spans the buffer from this layer's
         * token row 0 of page 0 (every page that starts inside the buffer: the same count for
         * every layer, so one plan serves all of them) */
        size_t psb = (size_t)kv->page_stride * 2;
        key.paged = 1;
        key.rs = kv->row_stride;
        key.pt = kv->page_tokens;
        key.np = (kv->n_tokens + kv->page_tokens - 1) / kv->page_tokens;
        key.ps = kv->page_stride;
        key.nblk = (int64_t)((kv->buf->size - kv->off + psb - 1) / psb);
        e = dnn_plan(d, &key);
        if (e) {
            kp = base + kv->k_off * 2;
            vp = base + kv->v_off * 2;
            /* page table and the two sequence lengths, in 16-byte aligned slots of the pinned ring */
            c->ring_pos = (c->ring_pos + 3) & ~(size_t)3;
            if (!(dpt = cu_pages(be, kv->pages, key.np, &st)))
                return st;
            int32_t seq[8] = {(int32_t)q.rows, 0, 0, 0, (int32_t)kv->n_tokens, 0, 0, 0};
            c->ring_pos = (c->ring_pos + 3) & ~(size_t)3;
            if (!(dseq = cu_pages(be, seq, 8, &st)))
                return st;
        } else {
            paged = 0; /* no engine takes these pages: gather them */
            key.paged = key.pt = key.np = key.ps = key.nblk = key.form = 0;
        }
    }
    if (!paged) {
        int64_t lo = 0, w = kv->row_stride;
        if (kv->pages) /* gathered: the span of keys and values only */
            kv_span(kv, &lo, &w);
        key.rs = w;
        if (!(e = dnn_plan(d, &key)))
            return KN_ERR_UNSUPPORTED;
        if (kv->pages) {
            size_t bytes = (size_t)kv->n_tokens * (size_t)w * 2;
            char *g = (char *)grow(be, &d->gather, &d->gather_bytes, bytes, "cudnn: gather scratch", &st);
            if (!g)
                return st;
            const int32_t *pg = cu_pages(be, kv->pages, (kv->n_tokens + kv->page_tokens - 1) / kv->page_tokens, &st);
            if (!pg)
                return st;
            int vec = (int)(w / 8);
            int64_t total = kv->n_tokens * vec, blocks = (total + 255) / 256;
            if (blocks > 132 * 16)
                blocks = 132 * 16;
            k_kv_gather<<<(unsigned)blocks, 256, 0, c->stream>>>((uint4 *)g, base + lo * 2, pg, kv->page_stride * 2,
                                                                 kv->row_stride * 2, kv->page_tokens, kv->n_tokens,
                                                                 vec);
            if ((st = cu_launched(be, "cudnn: kv gather")) != KN_OK)
                return st;
            kp = g + (kv->k_off - lo) * 2;
            vp = g + (kv->v_off - lo) * 2;
        } else {
            kp = base + kv->k_off * 2;
            vp = base + kv->v_off * 2;
        }
    }
    return dnn_run(be, e, &key, paged, paged ? "paged" : kv->pages ? "gather" : "direct", out, q, kp, vp, dpt, dseq,
                   scale);
}

kn_status cu_dnn_attention_batch(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int nb,
                                 int q_heads, float scale)
{
    cu_impl *c = cu_of(be);
    struct cu_dnn *d = c->dnn;
    if (!d || nb < 2 || q.rows % nb)
        return KN_ERR_UNSUPPORTED;
    int64_t r = q.rows / nb;
    for (int b = 0; b < nb; b++)
        if (!dnn_takes(cu_rows(out, b * r, r), cu_rows(q, b * r, r), &kv[b]))
            return KN_ERR_UNSUPPORTED;
    dnn_key key = dnn_key_of(out, q, kv, q_heads, r);
    int64_t lo, w, n = kv->n_tokens;
    key.nb = nb;
    /* contiguous windows at a fixed distance (whole rows, none overlapping) in one buffer (the
     * MLA rebuild's: one after the other, or its cache's slots): described in place, nothing
     * gathered */
    size_t row_b = (size_t)kv->row_stride * 2, step = kv[1].off > kv->off ? kv[1].off - kv->off : 0;
    int uniform = step >= (size_t)n * row_b && step % row_b == 0;
    for (int b = 0; b < nb && uniform; b++)
        uniform = !kv[b].pages && kv[b].buf == kv->buf && kv[b].off == kv->off + (size_t)b * step;
    if (uniform) {
        key.rs = kv->row_stride;
        key.bs = (int64_t)(step / row_b);
        dnn_entry *e = dnn_plan(d, &key);
        if (!e)
            return KN_ERR_UNSUPPORTED;
        const char *base = (const char *)kv->buf->ptr + kv->off;
        return dnn_run(be, e, &key, 0, "batch-direct", out, q, base + kv->k_off * 2, base + kv->v_off * 2, NULL,
                       NULL, scale);
    }
    kv_span(kv, &lo, &w);
    key.rs = w;
    dnn_entry *e = dnn_plan(d, &key);
    if (!e)
        return KN_ERR_UNSUPPORTED;
    kn_status st;
    char *g = (char *)grow(be, &d->gather, &d->gather_bytes, (size_t)nb * (size_t)n * (size_t)w * 2,
                           "cudnn: gather scratch", &st);
    if (!g)
        return st;
    /* every stream's base address (two int32 each) and page list, one trip through the ring */
    int paged = kv->pages != NULL;
    int64_t pt = paged ? kv->page_tokens : n, np = paged ? (n + pt - 1) / pt : 1;
    int64_t cnt = 2 * (int64_t)nb + (int64_t)nb * np;
    int32_t *h = (int32_t *)malloc((size_t)cnt * sizeof(int32_t));
    if (!h)
        return cu_fail(be, KN_ERR_NOMEM, "cudnn: batch of %d: out of host memory", nb);
    for (int b = 0; b < nb; b++) {
        unsigned long long a = (unsigned long long)(uintptr_t)((const char *)kv[b].buf->ptr + kv[b].off + lo * 2);
        memcpy(h + 2 * b, &a, sizeof a);
        for (int64_t p = 0; p < np; p++)
            h[2 * nb + b * np + p] = paged ? kv[b].pages[p] : 0;
    }
    c->ring_pos = (c->ring_pos + 3) & ~(size_t)3; /* 16-byte aligned: the addresses are 8-byte words */
    const int32_t *dev = cu_pages(be, h, cnt, &st);
    free(h);
    if (!dev)
        return st;
    int vec = (int)(w / 8);
    int64_t total = (int64_t)nb * n * vec, blocks = (total + 255) / 256;
    if (blocks > 132 * 16)
        blocks = 132 * 16;
    k_kv_gather_b<<<(unsigned)blocks, 256, 0, c->stream>>>((uint4 *)g, (const unsigned long long *)dev, dev + 2 * nb,
                                                           np, paged ? kv->page_stride * 2 : 0, kv->row_stride * 2,
                                                           (int)pt, n, vec, nb);
    if ((st = cu_launched(be, "cudnn: kv gather (batch)")) != KN_OK)
        return st;
    return dnn_run(be, e, &key, 0, "batch", out, q, g + (kv->k_off - lo) * 2, g + (kv->v_off - lo) * 2, NULL, NULL,
                   scale);
}

/* ---- open / close ----------------------------------------------------------------------------------- */

int cu_dnn_open(kn_backend_t *be, int paged, char *why, size_t n)
{
    cu_impl *c = cu_of(be);
    struct cu_dnn *d = (struct cu_dnn *)calloc(1, sizeof *d);
    if (!d) {
        snprintf(why, n, "out of host memory");
        return 0;
    }
    dnn_api *a = &d->api;
    if (!(a->lib = dnn_dlopen(why, n))) {
        free(d);
        return 0;
    }
#define SYM(f, name)                                                                                       \
    do {                                                                                                   \
        void *p_ = dlsym(a->lib, name);                                                                    \
        if (!p_ && strcmp(name, "cudnnGetLastErrorString")) {                                              \
            snprintf(why, n, "libcudnn: no symbol %s", name);                                             \
            dlclose(a->lib);                                                                               \
            free(d);                                                                                       \
            return 0;                                                                                      \
        }                                                                                                  \
        memcpy(&a->f, &p_, sizeof p_);                                                                     \
    } while (0);
    SYM(getVersion, "cudnnGetVersion")
    SYM(getErrorString, "cudnnGetErrorString")
    SYM(getLastErrorString, "cudnnGetLastErrorString")
    SYM(create, "cudnnCreate")
    SYM(destroy, "cudnnDestroy")
    SYM(setStream, "cudnnSetStream")
    SYM(bCreate, "cudnnBackendCreateDescriptor")
    SYM(bDestroy, "cudnnBackendDestroyDescriptor")
    SYM(bFinalize, "cudnnBackendFinalize")
    SYM(bSet, "cudnnBackendSetAttribute")
    SYM(bGet, "cudnnBackendGetAttribute")
    SYM(bExecute, "cudnnBackendExecute")
#undef SYM
    d->version = a->getVersion();
    if (d->version < 90000) {
        snprintf(why, n, "cuDNN %zu is older than 9.0", d->version);
        dlclose(a->lib);
        free(d);
        return 0;
    }
    cudnnStatus_t s = a->create(&d->h);
    if (s == CUDNN_STATUS_SUCCESS)
        s = a->setStream(d->h, c->stream);
    if (s != CUDNN_STATUS_SUCCESS) {
        snprintf(why, n, "cudnnCreate: %s", a->getErrorString(s));
        if (d->h)
            a->destroy(d->h);
        dlclose(a->lib);
        free(d);
        return 0;
    }
    d->mode = paged ? MODE_PAGED : MODE_GATHER;
    const char *f = getenv("VMLA_CUDNN_SDPA");
    d->form_want = f && !strcmp(f, "unified") ? FORM_UNIFIED : f && !strcmp(f, "composite") ? FORM_COMPOSITE : 0;
    const char *pc = getenv("VMLA_CUDNN_PACK_CACHE");
    d->pack_cache = !(pc && !strcmp(pc, "0"));
    c->dnn = d;
    return 1;
}

void cu_dnn_close(kn_backend_t *be)
{
    cu_impl *c = cu_of(be);
    struct cu_dnn *d = c->dnn;
    if (!d)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    for (int i = 0; i < CACHE_N; i++)
        if (d->cache[i].used)
            entry_free(d, &d->cache[i]);
    cudaFree(d->ws);
    cudaFree(d->gather);
    d->api.destroy(d->h);
    /* the library stays loaded: cuDNN keeps process-wide state that dlclose would pull from under it */
    free(d);
    c->dnn = NULL;
}

void cu_dnn_info(const kn_backend_t *be, cu_dnn_stats *s)
{
    const struct cu_dnn *d = ((const cu_impl *)be->impl)->dnn;
    memset(s, 0, sizeof *s);
    if (!d)
        return;
    s->version = (long)d->version;
    s->plans_built = d->plans_built;
    s->plans_failed = d->plans_failed;
    s->build_s = d->build_s;
    s->paged = d->mode == MODE_PAGED;
    snprintf(s->why, sizeof s->why, "%s", d->why);
}

#else /* built without cuDNN's headers */

kn_status cu_dnn_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads, float scale)
{
    return KN_ERR_UNSUPPORTED;
}

kn_status cu_dnn_attention_batch(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int nb,
                                 int q_heads, float scale)
{
    return KN_ERR_UNSUPPORTED;
}

int cu_dnn_open(kn_backend_t *be, int paged, char *why, size_t n)
{
    snprintf(why, n, "built without cuDNN (cudnn_graph.h not found at configure time)");
    return 0;
}

void cu_dnn_close(kn_backend_t *be) {}

void cu_dnn_info(const kn_backend_t *be, cu_dnn_stats *s) { memset(s, 0, sizeof *s); }

#endif
