/* kernels/cuda/cuda_attention.cu — attention over paged keys/values, and the KV store.
 *
 * out[i, h*dv + c] = sum_t softmax_t(q_h(i) . k_g(t) * scale) v_g(t)[c],  g = h / (Hq / kv_heads),
 * over kv->n_tokens token rows that may be scattered over pages (token t in page
 * pages[t / page_tokens], row t % page_tokens). The page list is a host array: it travels to the
 * device through a pinned staging ring (cu_pages) on the backend's stream, never a cudaMalloc.
 *
 * Two kernels, both with online softmax (a running max m and sum l per query row; the output is
 * rescaled by exp(m_old - m_new) whenever the max grows), neither materialising the score matrix:
 *
 *  - k_attn_simple, the reference variant: one block per (16 queries, head); K/V tiles of `bk`
 *    tokens converted to fp32 in shared memory; scores, softmax and the output accumulator in fp32.
 *    Any dtype, any dk/dv. Used in fp32 mode, for odd shapes, and when VMLA_CUDA_ATTN=simple.
 *
 *  - k_attn_tcp (default) and k_attn_tc (its first version, VMLA_CUDA_ATTN=tc-sync), tensor
 *    cores (wmma bf16 16x16x16, fp32 accumulation): one block of 4 warps per (64 queries, head),
 *    each warp owning 16 query rows; K/V tiles of 64 tokens in shared memory as bf16; S = Q K^T and O += P V on the tensor cores; the softmax runs on the accumulator
 *    registers. That needs the accumulator layout (which lane holds which (row, col)); wmma does not
 *    document it, so cu_attention_probe checks the assumed layout on the device at backend start
 *    and the backend falls back to the simple kernel if it does not hold. Used when q and the KV
 *    are bf16, dk and dv are multiples of 16 up to 256, and rows are 16-byte aligned. k_attn_tcp
 *    loads its tiles with cp.async (all copies of a tile in flight at once; the next tile's keys
 *    load during this tile's softmax and P V); k_attn_tc loads them with plain loads, one global
 *    latency per loop step. Measured on an H200 at the chunk's shapes (4680 queries x 10920 keys):
 *    k_attn_tcp 66 TFLOP/s, k_attn_tc 44-48, k_attn_simple 2.4 (bench/RESULTS.md).
 *
 * When the backend has cuDNN (cuda_cudnn_attn.cu), cu_attention hands the call to cuDNN's fused
 * attention first and runs these kernels only for what cuDNN does not take (f32, odd strides).
 */
#include <mma.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.cuh"

using namespace nvcuda;

/* ---- the page ring ------------------------------------------------------------------------------
 * pin_pages (host, pinned) and dev_pages (device) of ring_cap entries. Each call takes the next n
 * entries: memcpy into the pinned slot, cudaMemcpyAsync to the device slot on the stream (so it is
 * ordered before the kernel that reads it). When the ring wraps, the stream is synchronised first
 * so no copy or kernel still uses the slots being reused (once every few thousand calls). */
const int32_t *cu_pages(kn_backend_t *be, const int32_t *host, int64_t n, kn_status *st)
{
    cu_impl *c = cu_of(be);
    *st = KN_OK;
    if (n <= 0)
        n = 1;
    if ((size_t)n > c->ring_cap) { /* grow (rare): twice what is asked */
        if ((*st = cu_check(be, cudaStreamSynchronize(c->stream), "page ring: sync")) != KN_OK)
            return NULL;
        cudaFreeHost(c->pin_pages);
        cudaFree(c->dev_pages);
        c->pin_pages = NULL;
        c->dev_pages = NULL;
        c->ring_cap = 0;
        size_t cap = (size_t)n * 2;
        if ((*st = cu_check(be, cudaMallocHost(&c->pin_pages, cap * sizeof(int32_t)), "page ring: cudaMallocHost")) != KN_OK ||
            (*st = cu_check(be, cudaMalloc(&c->dev_pages, cap * sizeof(int32_t)), "page ring: cudaMalloc")) != KN_OK) {
            *st = KN_ERR_NOMEM;
            return NULL;
        }
        c->ring_cap = cap;
        c->ring_pos = 0;
    }
    if (c->ring_pos + (size_t)n > c->ring_cap) {
        if ((*st = cu_check(be, cudaStreamSynchronize(c->stream), "page ring: sync")) != KN_OK)
            return NULL;
        c->ring_pos = 0;
    }
    int32_t *hp = c->pin_pages + c->ring_pos, *dp = c->dev_pages + c->ring_pos;
    if (host)
        memcpy(hp, host, (size_t)n * sizeof(int32_t));
    else
        memset(hp, 0, (size_t)n * sizeof(int32_t));
    c->ring_pos += (size_t)n;
    if ((*st = cu_check(be, cudaMemcpyAsync(dp, hp, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream),
                        "page ring: copy")) != KN_OK)
        return NULL;
    return dp;
}

/* ---- a kv source on the device ------------------------------------------------------------------ */
typedef struct {
    const char *base;       /* token row 0 of page 0 */
    int dt;                 /* kn_dtype */
    int64_t row_stride, page_stride;
    int page_tokens;
    const int32_t *pages;   /* device copy, or NULL (contiguous) */
    int64_t n_tokens;
    int64_t k_off, v_off;
    int dk, dv;
} kvdev;

/* Element offset of token t's row. */
__device__ __forceinline__ int64_t kv_row(const kvdev &kv, int64_t t)
{
    if (kv.pages)
        return (int64_t)kv.pages[t / kv.page_tokens] * kv.page_stride + (t % kv.page_tokens) * kv.row_stride;
    return t * kv.row_stride;
}

/* ---- the KV store and load: token rows tok0.. of kv at column col, to or from t [n, w] ------------
 * One kernel for both directions (LOAD: t = kv rows, else kv rows = t), converting dtypes; and a
 * 16-byte move a thread for bf16 on both sides with everything a multiple of 8 elements and 16-byte
 * aligned. */
template <int LOAD>
__global__ void k_kv_move(kvdev kv, int64_t t0, int64_t col, dview t, int64_t rows, int64_t cols)
{
    for (int64_t r = (int64_t)blockIdx.y * blockDim.y + threadIdx.y; r < rows; r += (int64_t)gridDim.y * blockDim.y) {
        int64_t e = kv_row(kv, t0 + r) + col;
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (int64_t)gridDim.x * blockDim.x)
            if (LOAD)
                dv_set(t, r, c, ld_el(kv.base, kv.dt, e + c));
            else
                st_el((char *)kv.base, kv.dt, e + c, dv_get(t, r, c));
    }
}

template <int LOAD>
__global__ void k_kv_move_v8(kvdev kv, int64_t t0, int64_t col, dview t, int64_t rows, int64_t cols8)
{
    const int64_t n = rows * cols8;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols8, c = (i - r * cols8) * 8;
        uint4 *pk = (uint4 *)(kv.base + (kv_row(kv, t0 + r) + col + c) * 2), *pt = (uint4 *)(t.p + (r * t.ld + c) * 2);
        if (LOAD)
            *pt = *pk;
        else
            *pk = *pt;
    }
}

static kvdev kv_dev(const kn_kv *kv)
{
    kvdev d;
    memset(&d, 0, sizeof d);
    d.base = (const char *)kv->buf->ptr + kv->off;
    d.dt = (int)kv->dtype;
    d.row_stride = kv->row_stride;
    d.page_stride = kv->page_stride;
    d.page_tokens = kv->page_tokens > 0 ? kv->page_tokens : 1;
    d.n_tokens = kv->n_tokens;
    d.k_off = kv->k_off;
    d.v_off = kv->v_off;
    d.dk = kv->dk;
    d.dv = kv->dv;
    return d;
}

static kn_status kv_move(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor t, int load)
{
    const char *name = load ? "kv_load" : "kv_store";
    if (t.rows == 0 || t.cols == 0)
        return KN_OK;
    kvdev d = kv_dev(kv);
    int64_t t0 = tok0;
    kn_status st;
    if (kv->pages) { /* only the pages these rows span travel */
        int64_t p0 = tok0 / kv->page_tokens, p1 = (tok0 + t.rows - 1) / kv->page_tokens;
        d.pages = cu_pages(be, kv->pages + p0, p1 - p0 + 1, &st);
        if (!d.pages)
            return st;
        t0 = tok0 - p0 * kv->page_tokens;
    }
    dview tv = cu_view(t);
    cudaStream_t s = cu_of(be)->stream;
    if (kv->dtype == KN_BF16 && t.dtype == KN_BF16 && t.cols % 8 == 0 && col % 8 == 0 && kv->row_stride % 8 == 0 &&
        (!kv->pages || kv->page_stride % 8 == 0) && ((uintptr_t)d.base & 15u) == 0 && tv.ld % 8 == 0 &&
        ((uintptr_t)tv.p & 15u) == 0) {
        int64_t cols8 = t.cols / 8, n = t.rows * cols8, blocks = (n + 255) / 256;
        if (blocks > 132 * 32)
            blocks = 132 * 32;
        if (load)
            k_kv_move_v8<1><<<(unsigned)blocks, 256, 0, s>>>(d, t0, col, tv, t.rows, cols8);
        else
            k_kv_move_v8<0><<<(unsigned)blocks, 256, 0, s>>>(d, t0, col, tv, t.rows, cols8);
        return cu_launched(be, name);
    }
    int bx = t.cols >= 256 ? 256 : (int)((t.cols + 31) / 32 * 32), by = 256 / bx;
    int64_t gx = (t.cols + bx - 1) / bx, gy = (t.rows + by - 1) / by;
    if (gx > 4096)
        gx = 4096;
    if (gy > 65535)
        gy = 65535;
    dim3 g((unsigned)gx, (unsigned)gy), th(bx, by);
    if (load)
        k_kv_move<1><<<g, th, 0, s>>>(d, t0, col, tv, t.rows, t.cols);
    else
        k_kv_move<0><<<g, th, 0, s>>>(d, t0, col, tv, t.rows, t.cols);
    return cu_launched(be, name);
}

kn_status cu_kv_store(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor src)
{
    return kv_move(be, kv, tok0, col, src, 0);
}

kn_status cu_kv_load(kn_backend_t *be, kn_tensor dst, const kn_kv *kv, int64_t tok0, int64_t col)
{
    return kv_move(be, kv, tok0, col, dst, 1);
}

/* kn_kv_store_batch's kernel: stream b's rows of src to its pages, 16 bytes a thread. tab holds per
 * stream `per` int32: its first token counted from its first listed page, then those pages. */
__global__ void k_kv_store_b(char *base, const int32_t *tab, int64_t per, int pt, int64_t page_stride_b,
                             int64_t row_stride_b, int64_t col_b, const char *src, int64_t src_ld_b, int64_t rows,
                             int64_t cols8, int nb)
{
    const int64_t each = rows * cols8, total = each * nb;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t b = i / each, rem = i - b * each, r = rem / cols8, c = rem - r * cols8;
        const int32_t *tb = tab + b * per;
        int64_t t = tb[0] + r;
        const uint4 *ps = (const uint4 *)(src + (b * rows + r) * src_ld_b + c * 16);
        uint4 *pd = (uint4 *)(base + (int64_t)tb[1 + t / pt] * page_stride_b + (t % pt) * row_stride_b + col_b + c * 16);
        *pd = *ps;
    }
}

/* Every stream's rows in one launch when both sides are bf16, 16-byte aligned and the destinations
 * paged in one place of one pool (every layer's streams are); otherwise stream by stream. */
kn_status cu_kv_store_batch(kn_backend_t *be, const kn_kv *kv, const int64_t *tok0, int n, int64_t col, kn_tensor src)
{
    int64_t r = src.rows / n;
    if (r == 0 || src.cols == 0)
        return KN_OK;
    dview sv = cu_view(src);
    const char *base = (const char *)kv->buf->ptr + kv->off;
    int fast = n > 1 && kv->pages && kv->dtype == KN_BF16 && src.dtype == KN_BF16 && src.cols % 8 == 0 &&
               col % 8 == 0 && kv->row_stride % 8 == 0 && kv->page_stride % 8 == 0 && ((uintptr_t)base & 15u) == 0 &&
               sv.ld % 8 == 0 && ((uintptr_t)sv.p & 15u) == 0;
    int64_t per = 0;
    for (int b = 0; b < n && fast; b++) {
        fast = kv[b].off == kv->off;
        int64_t np = (tok0[b] + r - 1) / kv->page_tokens - tok0[b] / kv->page_tokens + 1;
        per = np + 1 > per ? np + 1 : per;
    }
    if (!fast) {
        for (int b = 0; b < n; b++) {
            kn_status st = kv_move(be, &kv[b], tok0[b], col, cu_rows(src, b * r, r), 0);
            if (st != KN_OK)
                return st;
        }
        return KN_OK;
    }
    int32_t *h = (int32_t *)calloc((size_t)(n * per), sizeof(int32_t));
    if (!h)
        return cu_fail(be, KN_ERR_NOMEM, "kv_store_batch: out of host memory");
    for (int b = 0; b < n; b++) {
        int64_t p0 = tok0[b] / kv->page_tokens, p1 = (tok0[b] + r - 1) / kv->page_tokens;
        h[b * per] = (int32_t)(tok0[b] - p0 * kv->page_tokens);
        memcpy(h + b * per + 1, kv[b].pages + p0, (size_t)(p1 - p0 + 1) * sizeof(int32_t));
    }
    kn_status st;
    const int32_t *dev = cu_pages(be, h, n * per, &st);
    free(h);
    if (!dev)
        return st;
    int64_t cols8 = src.cols / 8, total = (int64_t)n * r * cols8, blocks = (total + 255) / 256;
    if (blocks > 132 * 32)
        blocks = 132 * 32;
    k_kv_store_b<<<(unsigned)blocks, 256, 0, cu_of(be)->stream>>>(
        (char *)base, dev, per, kv->page_tokens, kv->page_stride * 2, kv->row_stride * 2, col * 2, sv.p, sv.ld * 2, r,
        cols8, n);
    return cu_launched(be, "kv_store_batch");
}

/* ---- the simple kernel --------------------------------------------------------------------------
 * Shared memory (floats): Q [SQ][dk], K [bk][dk+1] (padded: the score loop reads down a column),
 * V [bk][dv], S [SQ][bk] (scores, then probabilities), O [SQ][dv], m, l, corr [SQ]. */
#define SQ 16
#define SIMPLE_THREADS 128

static size_t simple_smem(int dk, int dv, int bk)
{
    return sizeof(float) * ((size_t)SQ * dk + (size_t)bk * (dk + 1) + (size_t)bk * dv + (size_t)SQ * bk +
                            (size_t)SQ * dv + 3 * SQ);
}

__global__ void k_attn_simple(dview out, dview q, kvdev kv, int64_t nq, int group, float scale, int bk)
{
    extern __shared__ float sm[];
    const int dk = kv.dk, dv = kv.dv, ldk = dk + 1;
    float *Qs = sm, *Ks = Qs + SQ * dk, *Vs = Ks + bk * ldk, *S = Vs + bk * dv, *Os = S + SQ * bk;
    float *M = Os + SQ * dv, *L = M + SQ, *CR = L + SQ;
    const int h = blockIdx.y, g = h / group, tid = threadIdx.x, nt = blockDim.x;
    const int64_t q0 = (int64_t)blockIdx.x * SQ, n = kv.n_tokens;
    for (int i = tid; i < SQ * dk; i += nt) {
        int r = i / dk, c = i % dk;
        Qs[i] = q0 + r < nq ? dv_get(q, q0 + r, (int64_t)h * dk + c) : 0.0f;
    }
    for (int i = tid; i < SQ * dv; i += nt)
        Os[i] = 0.0f;
    if (tid < SQ) {
        M[tid] = -INFINITY;
        L[tid] = 0.0f;
    }
    for (int64_t t0 = 0; t0 < n; t0 += bk) {
        __syncthreads(); /* the previous tile is consumed */
        for (int i = tid; i < bk * dk; i += nt) {
            int j = i / dk, c = i % dk;
            int64_t t = t0 + j;
            Ks[j * ldk + c] = t < n ? ld_el(kv.base, kv.dt, kv_row(kv, t) + kv.k_off + (int64_t)g * dk + c) : 0.0f;
        }
        for (int i = tid; i < bk * dv; i += nt) {
            int j = i / dv, c = i % dv;
            int64_t t = t0 + j;
            Vs[i] = t < n ? ld_el(kv.base, kv.dt, kv_row(kv, t) + kv.v_off + (int64_t)g * dv + c) : 0.0f;
        }
        __syncthreads();
        for (int i = tid; i < SQ * bk; i += nt) {
            int r = i / bk, j = i % bk;
            float acc = 0.0f;
            for (int c = 0; c < dk; c++)
                acc += Qs[r * dk + c] * Ks[j * ldk + c];
            S[i] = t0 + j < n ? acc * scale : -INFINITY;
        }
        __syncthreads();
        if (tid < SQ) { /* online softmax, one thread a row */
            float *s = S + tid * bk, bmax = -INFINITY;
            for (int j = 0; j < bk; j++)
                bmax = fmaxf(bmax, s[j]);
            float m = M[tid], mn = fmaxf(m, bmax);
            float corr = mn == -INFINITY ? 1.0f : expf(m - mn);
            float sum = 0.0f;
            for (int j = 0; j < bk; j++) {
                float p = s[j] == -INFINITY ? 0.0f : expf(s[j] - mn);
                s[j] = p;
                sum += p;
            }
            L[tid] = L[tid] * corr + sum;
            M[tid] = mn;
            CR[tid] = corr;
        }
        __syncthreads();
        for (int i = tid; i < SQ * dv; i += nt) {
            int r = i / dv, c = i % dv;
            float o = Os[i] * CR[r];
            const float *p = S + r * bk;
            for (int j = 0; j < bk; j++)
                o += p[j] * Vs[j * dv + c];
            Os[i] = o;
        }
    }
    __syncthreads();
    for (int i = tid; i < SQ * dv; i += nt) {
        int r = i / dv, c = i % dv;
        if (q0 + r < nq)
            dv_set(out, q0 + r, (int64_t)h * dv + c, Os[i] / L[r]);
    }
}

/* ---- the tensor-core kernel -----------------------------------------------------------------------
 * Accumulator layout assumed (checked by k_probe): for a 16x16 float accumulator, lane = 4*gq + tq
 * holds x[i] at row gq + 8*((i>>1)&1), column 2*tq + (i&1) + 8*(i>>2). So each lane holds parts of
 * two rows (gq and gq+8), and the four lanes of a quad together hold whole rows: row statistics
 * reduce over a lane's elements, then over the quad (shuffles by 1 and 2).
 *
 * Shared memory (bf16): Q [64][dk+8], K [64][dk+8], V [64][dv+8], P [4 warps][16][64+8] (the
 * probabilities as the A operand of P V), then 64 row offsets (int64) of the tile's tokens. The +8
 * pads keep the 16-byte row segments of consecutive rows on different banks. */
#define TQ 64
#define TK 64
#define TPAD 8

static size_t tc_smem(int dk, int dv)
{
    return 2 * ((size_t)TQ * (dk + TPAD) + (size_t)TK * (dk + TPAD) + (size_t)TK * (dv + TPAD) + 4 * 16 * (TK + TPAD)) +
           8 * TK;
}

__device__ __forceinline__ int acc_row(int lane, int i) { return (lane >> 2) + 8 * ((i >> 1) & 1); }
__device__ __forceinline__ int acc_col(int lane, int i) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 2); }

__global__ void k_probe(int *ok)
{
#if __CUDA_ARCH__ >= 800
    __shared__ __align__(128) float M[256];
    int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32)
        M[i] = (float)i;
    __syncwarp();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> f;
    wmma::load_matrix_sync(f, M, 16, wmma::mem_row_major);
    int good = f.num_elements == 8;
    for (int i = 0; i < f.num_elements && i < 8; i++)
        if (f.x[i] != (float)(acc_row(lane, i) * 16 + acc_col(lane, i)))
            good = 0;
    good = __all_sync(0xffffffffu, good);
    if (lane == 0)
        *ok = good;
#else
    if (threadIdx.x == 0)
        *ok = 0;
#endif
}

template <int NDV>
__global__ void __launch_bounds__(128) k_attn_tc(dview out, dview q, kvdev kv, int64_t nq, int group, float scale)
{
#if __CUDA_ARCH__ >= 800
    extern __shared__ __align__(128) unsigned char smraw[];
    const int dk = kv.dk, dv = kv.dv, ldq = dk + TPAD, ldv = dv + TPAD, ldp = TK + TPAD;
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)smraw;
    __nv_bfloat16 *Ks = Qs + TQ * ldq;
    __nv_bfloat16 *Vs = Ks + TK * ldq;
    __nv_bfloat16 *Ps = Vs + TK * ldv;
    int64_t *rowoff = (int64_t *)(Ps + 4 * 16 * ldp);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, g = h / group;
    const int64_t q0 = (int64_t)blockIdx.x * TQ, n = kv.n_tokens;
    const int vk = dk / 8, vv = dv / 8, ndv = dv / 16, nks = dk / 16;
    const uint4 zero = make_uint4(0, 0, 0, 0);

    for (int i = tid; i < TQ * vk; i += 128) { /* Q tile, 16 bytes at a time */
        int r = i / vk, c8 = i % vk;
        uint4 v = zero;
        if (q0 + r < nq)
            v = *(const uint4 *)(q.p + ((q0 + r) * q.ld + (int64_t)h * dk + c8 * 8) * 2);
        *(uint4 *)(Qs + r * ldq + c8 * 8) = v;
    }

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[NDV];
#pragma unroll
    for (int j = 0; j < NDV; j++)
        wmma::fill_fragment(o[j], 0.0f);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows gq and gq + 8 */
    __nv_bfloat16 *P = Ps + warp * 16 * ldp;

    for (int64_t t0 = 0; t0 < n; t0 += TK) {
        __syncthreads(); /* the previous K/V tile is consumed */
        if (tid < TK)
            rowoff[tid] = t0 + tid < n ? kv_row(kv, t0 + tid) : -1;
        __syncthreads();
        for (int i = tid; i < TK * vk; i += 128) {
            int j = i / vk, c8 = i % vk;
            int64_t ro = rowoff[j];
            uint4 v = zero;
            if (ro >= 0)
                v = *(const uint4 *)(kv.base + (ro + kv.k_off + (int64_t)g * dk + c8 * 8) * 2);
            *(uint4 *)(Ks + j * ldq + c8 * 8) = v;
        }
        for (int i = tid; i < TK * vv; i += 128) {
            int j = i / vv, c8 = i % vv;
            int64_t ro = rowoff[j];
            uint4 v = zero;
            if (ro >= 0)
                v = *(const uint4 *)(kv.base + (ro + kv.v_off + (int64_t)g * dv + c8 * 8) * 2);
            *(uint4 *)(Vs + j * ldv + c8 * 8) = v;
        }
        __syncthreads();

        /* S [16, 64] = Q_w K^T */
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> s[4];
#pragma unroll
        for (int nn = 0; nn < 4; nn++)
            wmma::fill_fragment(s[nn], 0.0f);
        for (int kk = 0; kk < nks; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, Qs + (warp * 16) * ldq + kk * 16, ldq);
#pragma unroll
            for (int nn = 0; nn < 4; nn++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(b, Ks + (nn * 16) * ldq + kk * 16, ldq);
                wmma::mma_sync(s[nn], a, b, s[nn]);
            }
        }

        /* online softmax on the accumulator registers */
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nn = 0; nn < 4; nn++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int col = nn * 16 + acc_col(lane, i);
                float v = t0 + col < n ? s[nn].x[i] * scale : -INFINITY;
                s[nn].x[i] = v;
                if ((i >> 1) & 1)
                    mx1 = fmaxf(mx1, v);
                else
                    mx0 = fmaxf(mx0, v);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        float c0 = mn0 == -INFINITY ? 1.0f : expf(m0 - mn0), c1 = mn1 == -INFINITY ? 1.0f : expf(m1 - mn1);
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nn = 0; nn < 4; nn++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int hi = (i >> 1) & 1;
                float v = s[nn].x[i], p = v == -INFINITY ? 0.0f : expf(v - (hi ? mn1 : mn0));
                if (hi)
                    sum1 += p;
                else
                    sum0 += p;
                P[acc_row(lane, i) * ldp + nn * 16 + acc_col(lane, i)] = __float2bfloat16_rn(p);
            }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        l0 = l0 * c0 + sum0;
        l1 = l1 * c1 + sum1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int j = 0; j < NDV; j++)
            if (j < ndv)
#pragma unroll
                for (int i = 0; i < 8; i++)
                    o[j].x[i] *= ((i >> 1) & 1) ? c1 : c0;
        __syncwarp();

        /* O [16, dv] += P [16, 64] V [64, dv] */
#pragma unroll
        for (int kk = 0; kk < TK / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, P + kk * 16, ldp);
#pragma unroll
            for (int j = 0; j < NDV; j++)
                if (j < ndv) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                    wmma::load_matrix_sync(b, Vs + (kk * 16) * ldv + j * 16, ldv);
                    wmma::mma_sync(o[j], a, b, o[j]);
                }
        }
        __syncwarp(); /* P is rewritten next tile */
    }

    float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int j = 0; j < NDV; j++)
        if (j < ndv)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int hi = (i >> 1) & 1;
                int64_t qr = q0 + warp * 16 + acc_row(lane, i);
                if (qr < nq)
                    dv_set(out, qr, (int64_t)h * dv + j * 16 + acc_col(lane, i), o[j].x[i] * (hi ? inv1 : inv0));
            }
#endif
}

/* ---- the tensor-core kernel, pipelined --------------------------------------------------------------
 * The same math as k_attn_tc, with the tile loads made asynchronous (cp.async, 16 bytes a copy,
 * zero-fill past the last token): every copy of a tile is in flight at once instead of one global
 * latency per loop step, and the next tile's keys load while this tile's softmax and P V run:
 *   wait(K_t, V_t); sync; S = Q K_t^T; sync; [issue K_{t+1}]; softmax; O += P V_t; sync; [issue V_{t+1}]
 * The row offsets of tile t+1 are computed right after the first sync of step t (those of tile t
 * are no longer read: its copies were issued in step t-1). Same shared memory as k_attn_tc. */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int valid)
{
#if __CUDA_ARCH__ >= 800
    unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    int sz = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(sz));
#endif
}
__device__ __forceinline__ void cp_async_commit(void)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void cp_async_wait_all(void)
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

/* Issue the copies of one K (or V) tile: rows from rowoff (-1: zero row), `vec` 16-byte vectors a
 * row, from element offset col0 of each token row, into dst with row stride ld (elements). */
__device__ __forceinline__ void tile_issue(__nv_bfloat16 *dst, int ld, const char *base, const int64_t *rowoff,
                                           int64_t col0, int vec, int tid)
{
    for (int i = tid; i < TK * vec; i += 128) {
        int j = i / vec, c8 = i % vec;
        int64_t ro = rowoff[j];
        const char *src = ro >= 0 ? base + (ro + col0 + c8 * 8) * 2 : base;
        cp_async16(dst + j * ld + c8 * 8, src, ro >= 0);
    }
}

template <int NDV>
__global__ void __launch_bounds__(128) k_attn_tcp(dview out, dview q, kvdev kv, int64_t nq, int group, float scale)
{
#if __CUDA_ARCH__ >= 800
    extern __shared__ __align__(128) unsigned char smraw[];
    const int dk = kv.dk, dv = kv.dv, ldq = dk + TPAD, ldv = dv + TPAD, ldp = TK + TPAD;
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)smraw;
    __nv_bfloat16 *Ks = Qs + TQ * ldq;
    __nv_bfloat16 *Vs = Ks + TK * ldq;
    __nv_bfloat16 *Ps = Vs + TK * ldv;
    int64_t *rowoff = (int64_t *)(Ps + 4 * 16 * ldp);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, g = h / group;
    const int64_t q0 = (int64_t)blockIdx.x * TQ, n = kv.n_tokens;
    const int vk = dk / 8, vv = dv / 8, ndv = dv / 16, nks = dk / 16;
    const int64_t koff = kv.k_off + (int64_t)g * dk, voff = kv.v_off + (int64_t)g * dv;

    /* prologue: Q, and K/V of tile 0 */
    for (int i = tid; i < TQ * vk; i += 128) {
        int r = i / vk, c8 = i % vk;
        int ok = q0 + r < nq;
        const char *src = ok ? q.p + ((q0 + r) * q.ld + (int64_t)h * dk + c8 * 8) * 2 : q.p;
        cp_async16(Qs + r * ldq + c8 * 8, src, ok);
    }
    if (tid < TK)
        rowoff[tid] = tid < n ? kv_row(kv, tid) : -1;
    __syncthreads();
    tile_issue(Ks, ldq, kv.base, rowoff, koff, vk, tid);
    tile_issue(Vs, ldv, kv.base, rowoff, voff, vv, tid);
    cp_async_commit();

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[NDV];
#pragma unroll
    for (int j = 0; j < NDV; j++)
        wmma::fill_fragment(o[j], 0.0f);
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; /* rows gq and gq + 8 */
    __nv_bfloat16 *P = Ps + warp * 16 * ldp;

    for (int64_t t0 = 0; t0 < n; t0 += TK) {
        const int more = t0 + TK < n;
        cp_async_wait_all();
        __syncthreads(); /* K_t, V_t (and Q) visible to all; rowoff free */
        if (more && tid < TK)
            rowoff[tid] = t0 + TK + tid < n ? kv_row(kv, t0 + TK + tid) : -1;

        /* S [16, 64] = Q_w K^T */
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> s[4];
#pragma unroll
        for (int nn = 0; nn < 4; nn++)
            wmma::fill_fragment(s[nn], 0.0f);
        for (int kk = 0; kk < nks; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, Qs + (warp * 16) * ldq + kk * 16, ldq);
#pragma unroll
            for (int nn = 0; nn < 4; nn++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(b, Ks + (nn * 16) * ldq + kk * 16, ldq);
                wmma::mma_sync(s[nn], a, b, s[nn]);
            }
        }
        __syncthreads(); /* K_t consumed by every warp; rowoff of t+1 visible */
        if (more) {
            tile_issue(Ks, ldq, kv.base, rowoff, koff, vk, tid);
            cp_async_commit();
        }

        /* online softmax on the accumulator registers */
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nn = 0; nn < 4; nn++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int col = nn * 16 + acc_col(lane, i);
                float v = t0 + col < n ? s[nn].x[i] * scale : -INFINITY;
                s[nn].x[i] = v;
                if ((i >> 1) & 1)
                    mx1 = fmaxf(mx1, v);
                else
                    mx0 = fmaxf(mx0, v);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        float c0 = mn0 == -INFINITY ? 1.0f : expf(m0 - mn0), c1 = mn1 == -INFINITY ? 1.0f : expf(m1 - mn1);
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nn = 0; nn < 4; nn++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int hi = (i >> 1) & 1;
                float v = s[nn].x[i], pr = v == -INFINITY ? 0.0f : expf(v - (hi ? mn1 : mn0));
                if (hi)
                    sum1 += pr;
                else
                    sum0 += pr;
                P[acc_row(lane, i) * ldp + nn * 16 + acc_col(lane, i)] = __float2bfloat16_rn(pr);
            }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        l0 = l0 * c0 + sum0;
        l1 = l1 * c1 + sum1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int j = 0; j < NDV; j++)
            if (j < ndv)
#pragma unroll
                for (int i = 0; i < 8; i++)
                    o[j].x[i] *= ((i >> 1) & 1) ? c1 : c0;
        __syncwarp();

        /* O [16, dv] += P [16, 64] V [64, dv] */
#pragma unroll
        for (int kk = 0; kk < TK / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, P + kk * 16, ldp);
#pragma unroll
            for (int j = 0; j < NDV; j++)
                if (j < ndv) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                    wmma::load_matrix_sync(b, Vs + (kk * 16) * ldv + j * 16, ldv);
                    wmma::mma_sync(o[j], a, b, o[j]);
                }
        }
        __syncthreads(); /* V_t consumed by every warp (P too) */
        if (more) {
            tile_issue(Vs, ldv, kv.base, rowoff, voff, vv, tid);
            cp_async_commit();
        }
    }

    float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int j = 0; j < NDV; j++)
        if (j < ndv)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int hi = (i >> 1) & 1;
                int64_t qr = q0 + warp * 16 + acc_row(lane, i);
                if (qr < nq)
                    dv_set(out, qr, (int64_t)h * dv + j * 16 + acc_col(lane, i), o[j].x[i] * (hi ? inv1 : inv0));
            }
#endif
}

int cu_attention_probe(kn_backend_t *be, int want_tc)
{
    cu_impl *c = cu_of(be);
    int *d = NULL, ok = 0;
    size_t lim = (size_t)c->smem_optin;
    if (cu_check(be, cudaFuncSetAttribute(k_attn_simple, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK ||
        cu_check(be, cudaFuncSetAttribute(k_attn_tc<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK ||
        cu_check(be, cudaFuncSetAttribute(k_attn_tc<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK ||
        cu_check(be, cudaFuncSetAttribute(k_attn_tc<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK ||
        cu_check(be, cudaFuncSetAttribute(k_attn_tcp<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK ||
        cu_check(be, cudaFuncSetAttribute(k_attn_tcp<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK ||
        cu_check(be, cudaFuncSetAttribute(k_attn_tcp<10>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK ||
        cu_check(be, cudaFuncSetAttribute(k_attn_tcp<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                 "attention: smem attribute") != KN_OK)
        return 0;
    if (!want_tc)
        return 0;
    int major = 0;
    if (cu_check(be, cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c->device), "probe") != KN_OK)
        return 0;
    if (major < 8)
        return 0;
    if (cu_check(be, cudaMalloc(&d, sizeof(int)), "probe: cudaMalloc") != KN_OK)
        return 0;
    k_probe<<<1, 32, 0, c->stream>>>(d);
    kn_status st = cu_launched(be, "probe");
    if (st == KN_OK)
        st = cu_check(be, cudaMemcpyAsync(&ok, d, sizeof(int), cudaMemcpyDeviceToHost, c->stream), "probe: copy");
    if (st == KN_OK)
        st = cu_check(be, cudaStreamSynchronize(c->stream), "probe: sync");
    cudaFree(d);
    return st == KN_OK && ok == 1;
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

kn_status cu_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads, float scale)
{
    cu_impl *c = cu_of(be);
    if (q.rows == 0)
        return KN_OK;
    kn_status st;
    if (c->dnn && (st = cu_dnn_attention(be, out, q, kv, q_heads, scale)) != KN_ERR_UNSUPPORTED)
        return st; /* cuDNN took it (or failed on the device) */
    kvdev d = kv_dev(kv);
    if (kv->pages) {
        int64_t np = (kv->n_tokens + kv->page_tokens - 1) / kv->page_tokens;
        d.pages = cu_pages(be, kv->pages, np, &st);
        if (!d.pages)
            return st;
    }
    int group = q_heads / kv->kv_heads, dk = kv->dk, dv = kv->dv;
    dview qv = cu_view(q), ov = cu_view(out);
    size_t tsm = tc_smem(dk, dv);
    int tc = c->attn_tc && q.dtype == KN_BF16 && kv->dtype == KN_BF16 && dk % 16 == 0 && dv % 16 == 0 && dk <= 256 &&
             dv <= 256 && q.ld % 8 == 0 && aligned16(qv.p) && aligned16(d.base) && kv->row_stride % 8 == 0 &&
             (!kv->pages || kv->page_stride % 8 == 0) && kv->k_off % 8 == 0 && kv->v_off % 8 == 0 &&
             tsm <= (size_t)c->smem_optin;
    if (tc) {
        dim3 grid((unsigned)((q.rows + TQ - 1) / TQ), (unsigned)q_heads);
        int ndv = dv / 16;
        if (c->attn_tc == 1) {
            if (ndv <= 4)
                k_attn_tcp<4><<<grid, 128, tsm, c->stream>>>(ov, qv, d, q.rows, group, scale);
            else if (ndv <= 8)
                k_attn_tcp<8><<<grid, 128, tsm, c->stream>>>(ov, qv, d, q.rows, group, scale);
            else if (ndv <= 10) /* the MLA value width, d_c = 160 */
                k_attn_tcp<10><<<grid, 128, tsm, c->stream>>>(ov, qv, d, q.rows, group, scale);
            else
                k_attn_tcp<16><<<grid, 128, tsm, c->stream>>>(ov, qv, d, q.rows, group, scale);
        } else if (ndv <= 4)
            k_attn_tc<4><<<grid, 128, tsm, c->stream>>>(ov, qv, d, q.rows, group, scale);
        else if (ndv <= 8)
            k_attn_tc<8><<<grid, 128, tsm, c->stream>>>(ov, qv, d, q.rows, group, scale);
        else
            k_attn_tc<16><<<grid, 128, tsm, c->stream>>>(ov, qv, d, q.rows, group, scale);
        c->attn_last = c->attn_tc == 1 ? "tensor-core" : "tensor-core-sync";
        return cu_launched(be, "attention (tensor cores)");
    }
    int bk = 32;
    while (bk > 1 && simple_smem(dk, dv, bk) > (size_t)c->smem_optin)
        bk /= 2;
    size_t sm = simple_smem(dk, dv, bk);
    if (sm > (size_t)c->smem_optin)
        return cu_fail(be, KN_ERR_UNSUPPORTED, "attention: head widths dk %d dv %d too wide", dk, dv);
    dim3 grid((unsigned)((q.rows + SQ - 1) / SQ), (unsigned)q_heads);
    k_attn_simple<<<grid, SIMPLE_THREADS, sm, c->stream>>>(ov, qv, d, q.rows, group, scale, bk);
    c->attn_last = "simple";
    return cu_launched(be, "attention");
}

/* ---- a batch of streams ------------------------------------------------------------------------ */

/* Whether two sources can share one batched call: the same length, widths and layout (each keeps
 * its own buffer and pages). */
static int kv_batchable(const kn_kv *a, const kn_kv *b)
{
    return a->dtype == b->dtype && a->n_tokens == b->n_tokens && a->kv_heads == b->kv_heads && a->dk == b->dk &&
           a->dv == b->dv && a->k_off == b->k_off && a->v_off == b->v_off && a->row_stride == b->row_stride &&
           !a->pages == !b->pages && (!a->pages || (a->page_tokens == b->page_tokens && a->page_stride == b->page_stride));
}

/* The gathered windows of one batched call stay under this (at 480x832, per-head layout, a full
 * window is ~230 MB a stream: batches of 4). */
#define BATCH_GATHER_MAX ((size_t)1 << 30)

kn_status cu_attention_batch(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int n, int q_heads,
                             float scale)
{
    cu_impl *c = cu_of(be);
    int64_t r = q.rows / n;
    for (int i = 0; i < n;) {
        /* the run of sources like kv[i], at most 8, cut to a power of two (few plan shapes) and to
         * the gather limit */
        int j = i + 1;
        while (j < n && j - i < 8 && kv_batchable(&kv[i], &kv[j]))
            j++;
        int nb = 1;
        while (nb * 2 <= j - i)
            nb *= 2;
        size_t row_b = (size_t)kv[i].row_stride * esz(kv[i].dtype);
        while (nb > 1 && (size_t)nb * (size_t)kv[i].n_tokens * row_b > BATCH_GATHER_MAX)
            nb /= 2;
        kn_tensor ob = cu_rows(out, i * r, nb * r), qb = cu_rows(q, i * r, nb * r);
        kn_status st = KN_ERR_UNSUPPORTED;
        if (nb > 1 && c->dnn && c->attn_batch)
            st = cu_dnn_attention_batch(be, ob, qb, kv + i, nb, q_heads, scale);
        if (st == KN_ERR_UNSUPPORTED)
            for (int b = 0; b < nb; b++)
                if ((st = cu_attention(be, cu_rows(out, (i + b) * r, r), cu_rows(q, (i + b) * r, r), &kv[i + b],
                                       q_heads, scale)) != KN_OK)
                    return st;
        if (st != KN_OK)
            return st;
        i += nb;
    }
    return KN_OK;
}
