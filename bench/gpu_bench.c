/* bench/gpu_bench.c — vmla-bench-gpu: chunk latency of the real-size models on the CUDA backend.
 *
 *   vmla-bench-gpu [--chunks N] [--warmup W] [--preset P]... [--attn V,V..] [--no-gemm | --micro]
 *   (--no-gemm: the presets only; --micro: the GEMM and attention rates only)
 *
 * For each preset (default wan-1.3b and wan-1.3b-mla): latent 60x104 (480x832 video), window 6,
 * sink 1, seeded random weights, bf16 weights/activations/KV on the CUDA backend. One stream; W
 * warm-up chunks (default 1); then, on the same engine, for each attention variant of --attn
 * (default cudnn,cudnn-paged,tc: cuDNN's fused attention over gathered KV, over the pages as a page
 * table, our tensor-core kernel) one untimed chunk (new cuDNN plans) and N timed chunks (default 6),
 * each timed on the host clock around eng_generate_chunk (which ends by downloading the decoded
 * frames, so the GPU is idle at both ends). Prints each chunk's latency, the median and p99,
 * frames/s (frames a chunk / median); then two more chunks with the first variant and every op
 * event-timed: the split GEMM / attention / other / copies, and the GPU's idle share (1 - sum of
 * op times / wall time). Then KV bytes per stream (the pool's own accounting), device memory in
 * use (cudaMemGetInfo: every allocation is made at init, so this is the peak) and the MLA/MHA
 * ratios.
 *
 * Then the GEMM rate at the chunk's shapes, 4680x1536x1536, 4680x8960x1536 and 4680x1536x8960
 * (M x N x K, bf16 in and out, fp32 accumulation): plain cublasGemmEx timed with CUDA events, and
 * the backend's kn_linear (bias included) at the same shapes, for the ">= 90% of plain cuBLAS" check;
 * and the attention alone at the chunk's shapes (per-head, MLA absorbed, MLA rebuilt per head;
 * window 6 and 21) for every attention variant, in TFLOP/s, and the two MLA chains (absorb vs
 * rebuild) per layer call.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "bench/bench_util.h" /* now_s, cmpd, the profiler's entry points (VMLA_HAVE_CUDA) */
#include "engine/engine.h"
#include "kernels/backend.h"

/* kernels/cuda helpers for tests and benchmarks */
const char *kn_cuda_attention_variant(const kn_backend_t *be);
const char *kn_cuda_attention_last(const kn_backend_t *be);
int kn_cuda_attention_select(kn_backend_t *be, const char *name);
void kn_cuda_cudnn_info(const kn_backend_t *be, char *buf, size_t n);

/* Percentile p (0..100) of n sorted values, nearest rank. */
static double pct(const double *v, int n, double p)
{
    int k = (int)ceil(p / 100.0 * n) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return v[k];
}

static size_t dev_used(void)
{
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess)
        return 0;
    return tot - fr;
}

typedef struct {
    double median, p99, fps;
    size_t kv_stream, mem;
    int ok;
} result;


/* The chunk again with the profiler's other two modes, n chunks each: host-timed (no events: the
 * host time inside the ops against the wall — the enqueue cost, and the wait for the GPU in
 * download and sync) and drained (the stream emptied before each op: each op's own GPU time,
 * launch included, nothing queued before it). Returns 0 when a chunk failed. */
static int profile_host_and_drained(eng_engine_t *e, eng_stream_t **s, kn_backend_t *be, const char *preset, int n)
{
    for (int mode = 2; mode <= 3; mode++) {
        if (!kn_cuda_profile_on(be, mode))
            return 1;
        double wall = 0;
        for (int i = 0; i < n; i++) {
            double a = now_s();
            if (eng_generate_chunk(e, s, 1) != ENG_OK) {
                kn_cuda_profile_on(be, 0);
                return 0;
            }
            wall += now_s() - a;
            eng_stream_take_frames(*s);
        }
        double ms[4], enq = 0, wait = 0, gpu = 0;
        long cnt[4], oc;
        kn_cuda_profile_read(be, ms, cnt);
        const char *on;
        double oms, h[2];
        for (int i = 0; kn_cuda_profile_op(be, i, &on, &oms, &oc, h); i++) {
            *(prof_waits(on) ? &wait : &enq) += h[0];
            gpu += oms;
        }
        if (mode == 2)
            printf("%s [host-timed, no events, mean of %d chunks]: wall %.1f ms; host inside ops %.1f ms (enqueue), "
                   "waiting for the GPU %.1f ms, elsewhere %.1f ms\n  host us a call:",
                   preset, n, wall * 1e3 / n, enq / n, wait / n, wall * 1e3 / n - (enq + wait) / n);
        else
            printf("%s [stream drained before each op, mean of %d chunks]: wall %.1f ms; ops sum %.1f ms\n"
                   "  per op (ms a chunk, calls):",
                   preset, n, wall * 1e3 / n, gpu / n);
        for (int i = 0; kn_cuda_profile_op(be, i, &on, &oms, &oc, h); i++)
            if (h[1] > 0) {
                if (mode == 2)
                    printf(" %s %.1f (%.0f)", on, h[0] * 1e3 / h[1], h[1] / n);
                else if (oc)
                    printf(" %s %.1f (%ld)", on, oms / n, oc / n);
            }
        printf("\n");
        kn_cuda_profile_on(be, 0);
    }
    return 1;
}

static result run_preset(kn_backend_t *be, const char *preset, int window, int warmup, int chunks,
                         const char *const *variants, int n_variants)
{
    result r;
    memset(&r, 0, sizeof r);
    char err[512];
    eng_config c;
    if (eng_config_preset(&c, preset, err, sizeof err)) {
        fprintf(stderr, "vmla-bench-gpu: %s\n", err);
        return r;
    }
    eng_options o;
    eng_options_default(&o);
    o.weights = NULL;
    o.weight_seed = 1;
    o.latent_h = 60;
    o.latent_w = 104;
    o.window = window;
    o.sink = 1;
    o.kv_dtype = KN_BF16;
    size_t base = dev_used();
    double t0 = now_s();
    eng_engine_t *e = NULL;
    if (eng_open(&e, be, &c, &o, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "vmla-bench-gpu: %s: %s\n", preset, err);
        return r;
    }
    eng_stream_t *s = NULL;
    if (eng_stream_open(e, 1, "a red fox runs through the snow", &s) != ENG_OK) {
        fprintf(stderr, "vmla-bench-gpu: stream: %s\n", eng_error(e));
        eng_close(e);
        return r;
    }
    printf("%s: window %d + sink 1, opened in %.1f s (%lld params, %dx%d video, %d frames a chunk, attention %s)\n",
           preset, window, now_s() - t0, (long long)eng_weight_params(e), eng_video_width(e), eng_video_height(e),
           eng_frames_per_chunk(e), kn_cuda_attention_variant(be));
    double *lat = calloc((size_t)chunks, sizeof(double));
    int ok = 1;
    /* warm-up until the window is full (sink + window frames of context, 3 frames a chunk) */
    int fill = (window + 1 + 2) / 3;
    if (warmup < fill)
        warmup = fill;
    for (int i = 0; i < warmup && ok; i++) {
        double a = now_s();
        if (eng_generate_chunk(e, &s, 1) != ENG_OK) {
            fprintf(stderr, "vmla-bench-gpu: %s chunk %d: %s / %s\n", preset, i, eng_error(e), eng_stream_error(s));
            ok = 0;
            break;
        }
        eng_stream_take_frames(s);
        printf("  %s chunk %d: %.1f ms (warm-up)\n", preset, i, (now_s() - a) * 1e3);
    }
    /* the same engine, the same window: each attention variant in turn (plans built in one
     * untimed chunk first), then the first (default) variant again with profiling on */
    for (int v = 0; v < n_variants && ok; v++) {
        if (!kn_cuda_attention_select(be, variants[v])) {
            printf("  %s: attention %s not available here\n", preset, variants[v]);
            continue;
        }
        for (int i = 0; i < 1 + chunks && ok; i++) {
            double a = now_s();
            if (eng_generate_chunk(e, &s, 1) != ENG_OK) {
                fprintf(stderr, "vmla-bench-gpu: %s %s chunk: %s / %s\n", preset, variants[v], eng_error(e),
                        eng_stream_error(s));
                ok = 0;
                break;
            }
            double dt = now_s() - a;
            eng_stream_take_frames(s);
            printf("  %s [%s] chunk: %.1f ms%s\n", preset, variants[v], dt * 1e3, i == 0 ? " (untimed: new plans)" : "");
            if (i > 0)
                lat[i - 1] = dt;
        }
        if (!ok)
            break;
        qsort(lat, (size_t)chunks, sizeof(double), cmpd);
        double med = pct(lat, chunks, 50), p99 = pct(lat, chunks, 99);
        printf("%s [attention %s]: chunk latency median %.1f ms, p99 %.1f ms, %.2f frames/s (last path %s)\n", preset,
               variants[v], med * 1e3, p99 * 1e3, eng_frames_per_chunk(e) / med, kn_cuda_attention_last(be));
        if (v == 0) {
            r.median = med;
            r.p99 = p99;
            r.fps = eng_frames_per_chunk(e) / med;
        }
    }
    char info[512];
    kn_cuda_cudnn_info(be, info, sizeof info);
    printf("%s: %s\n", preset, info);
    int rslots;
    size_t rbytes;
    int64_t reuses;
    eng_rebuild_cache_stats(e, &rslots, &rbytes, &reuses);
    if (eng_mla_rebuild(e))
        printf("%s: MLA rebuild cache %d slots of %.1f MiB, %lld passes reused a chunk's context\n", preset, rslots,
               rbytes / 1048576.0, (long long)reuses);
    if (ok && n_variants > 0 && kn_cuda_attention_select(be, variants[0]) && kn_cuda_profile_on(be, 1)) {
        /* the time split: event-timed ops, summed per class, against the chunks' wall time */
        const int np_ = 2;
        double wall = 0;
        for (int i = 0; i < np_ && ok; i++) {
            double a = now_s();
            ok = eng_generate_chunk(e, &s, 1) == ENG_OK;
            wall += now_s() - a;
            eng_stream_take_frames(s);
        }
        double ms[4];
        long cnt[4];
        if (ok && kn_cuda_profile_read(be, ms, cnt)) {
            double busy = ms[0] + ms[1] + ms[2] + ms[3], w = wall * 1e3 / np_;
            printf("%s [attention %s, profiled, mean of %d chunks]: wall %.1f ms; GEMM %.1f ms (%ld ops), attention "
                   "%.1f ms (%ld), other %.1f ms (%ld), copies %.1f ms (%ld); ops sum %.1f ms = %.1f%% of wall, GPU "
                   "idle %.1f%%\n",
                   preset, variants[0], np_, w, ms[0] / np_, cnt[0] / np_, ms[1] / np_, cnt[1] / np_, ms[2] / np_,
                   cnt[2] / np_, ms[3] / np_, cnt[3] / np_, busy / np_, 100.0 * busy / np_ / w,
                   100.0 * (1.0 - busy / np_ / w));
            const char *on;
            double oms;
            long oc;
            printf("  per op (ms a chunk, calls):");
            for (int i = 0; kn_cuda_profile_op(be, i, &on, &oms, &oc, NULL); i++)
                if (oc)
                    printf(" %s %.1f (%ld)", on, oms / np_, oc / np_);
            printf("\n");
        }
        kn_cuda_profile_on(be, 0);
        if (ok)
            ok = profile_host_and_drained(e, &s, be, preset, np_);
    }
    if (ok) {
        r.kv_stream = eng_stream_kv_bytes_max(s);
        r.mem = dev_used() - base;
        r.ok = 1;
        printf("%s: chunk latency median %.1f ms, p99 %.1f ms, %.2f frames/s, KV %.1f MiB a stream "
               "(%.0f bytes a token a layer), device memory %.2f GiB\n",
               preset, r.median * 1e3, r.p99 * 1e3, r.fps, r.kv_stream / 1048576.0, eng_kv_bytes_per_token_layer(e),
               r.mem / 1073741824.0);
    }
    free(lat);
    eng_stream_close(s);
    eng_close(e);
    return r;
}

/* ---- GEMM rates ------------------------------------------------------------------------------------ */

static uint16_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "vmla-bench-gpu: %s: %s\n", #x, cudaGetErrorString(e_));              \
            return;                                                                               \
        }                                                                                         \
    } while (0)

static double linear_rate(kn_backend_t *be, int M, int N, int K);

/* Median seconds of kn_linear (bf16, with bias) at M x N x K on backend be; +inf on failure. */
static double linear_rate(kn_backend_t *be, int M, int N, int K)
{
    kn_buffer_t *bx = kn_buffer_alloc(be, 2 * (size_t)M * K), *bw = kn_buffer_alloc(be, 2 * (size_t)N * K),
                *by = kn_buffer_alloc(be, 2 * (size_t)M * N), *bb = kn_buffer_alloc(be, 2 * (size_t)N);
    double med = INFINITY;
    if (bx && bw && by && bb) {
        kn_tensor x = {bx, 0, KN_BF16, M, K, K}, w = {bw, 0, KN_BF16, N, K, K}, y = {by, 0, KN_BF16, M, N, N},
                  b = {bb, 0, KN_BF16, 1, N, N};
        size_t nh = (size_t)(M > N ? M : N) * K;
        float *hx = malloc(sizeof(float) * nh);
        for (size_t i = 0; i < nh; i++)
            hx[i] = (float)((int)(i * 2654435761u % 2001u) - 1000) * 1e-3f;
        kn_upload(be, x, hx, KN_F32);
        kn_upload(be, w, hx, KN_F32);
        kn_upload(be, b, hx, KN_F32);
        free(hx);
        double tk[20];
        int ok = 1;
        for (int it = 0; it < 23 && ok; it++) {
            kn_sync(be);
            double a = now_s();
            if (kn_linear(be, y, x, w, &b) != KN_OK || kn_sync(be) != KN_OK) {
                fprintf(stderr, "vmla-bench-gpu: kn_linear: %s\n", kn_backend_error(be));
                ok = 0;
            }
            if (it >= 3)
                tk[it - 3] = now_s() - a;
        }
        if (ok) {
            qsort(tk, 20, sizeof(double), cmpd);
            med = tk[10];
        }
    }
    kn_buffer_free(be, bx);
    kn_buffer_free(be, bw);
    kn_buffer_free(be, by);
    kn_buffer_free(be, bb);
    return med;
}

static void gemm_rates(kn_backend_t *be, kn_backend_t *be_nolt)
{
    const int M = 4680, shapes[3][2] = {{1536, 1536}, {8960, 1536}, {1536, 8960}}; /* N, K */
    size_t maxe = (size_t)8960 * 8960;
    uint16_t *h = malloc(2 * (size_t)M * 8960);
    for (size_t i = 0; i < (size_t)M * 8960; i++)
        h[i] = bf16_bits((float)((int)(i * 2654435761u % 2001u) - 1000) * 1e-3f);
    void *A = NULL, *B = NULL, *C = NULL;
    CK(cudaMalloc(&A, 2 * (size_t)M * 8960));
    CK(cudaMalloc(&B, 2 * maxe));
    CK(cudaMalloc(&C, 2 * (size_t)M * 8960));
    CK(cudaMemcpy(A, h, 2 * (size_t)M * 8960, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(B, h, 2 * (size_t)M * 8960, cudaMemcpyHostToDevice));
    cublasHandle_t hb;
    if (cublasCreate(&hb) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "vmla-bench-gpu: cublasCreate failed\n");
        return;
    }
    cudaEvent_t ev0, ev1;
    CK(cudaEventCreate(&ev0));
    CK(cudaEventCreate(&ev1));
    printf("\nGEMM, bf16 in/out, fp32 accumulation, M x N x K (median of 20 after 3 warm-ups)\n");
    printf("%-22s %14s %16s %8s %22s\n", "shape", "cuBLAS TF/s", "kn_linear TF/s", "ratio",
           "bias by broadcast TF/s");
    for (int s = 0; s < 3; s++) {
        int N = shapes[s][0], K = shapes[s][1];
        const float one = 1.0f, zero = 0.0f;
        double t[20];
        for (int it = 0; it < 23; it++) {
            cudaEventRecord(ev0, 0);
            /* row-major C[M,N] = A[M,K] B[N,K]^T  ==  column-major C^T = B^T-op * A^T */
            cublasStatus_t st = cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, B, CUDA_R_16BF, K, A,
                                             CUDA_R_16BF, K, &zero, C, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT);
            cudaEventRecord(ev1, 0);
            cudaEventSynchronize(ev1);
            float ms = 0;
            cudaEventElapsedTime(&ms, ev0, ev1);
            if (st != CUBLAS_STATUS_SUCCESS) {
                fprintf(stderr, "vmla-bench-gpu: cublasGemmEx failed\n");
                return;
            }
            if (it >= 3)
                t[it - 3] = ms * 1e-3;
        }
        qsort(t, 20, sizeof(double), cmpd);
        double flop = 2.0 * M * N * K, tf_blas = flop / t[10] / 1e12;
        double tf_kn = flop / linear_rate(be, M, N, K) / 1e12;
        double tf_nolt = be_nolt ? flop / linear_rate(be_nolt, M, N, K) / 1e12 : 0;
        char name[64];
        snprintf(name, sizeof name, "%dx%dx%d", M, N, K);
        printf("%-22s %14.1f %16.1f %7.1f%% %22.1f\n", name, tf_blas, tf_kn, 100.0 * tf_kn / tf_blas, tf_nolt);
    }
    cublasDestroy(hb);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    free(h);
}

/* ---- attention rates at the chunk's shapes ----------------------------------------------------------
 * 4680 queries (a chunk of 3 latent frames of 1560 tokens) over the keys of sink 1 + window W
 * frames, paged one frame a page, pages out of order, bf16, for each attention variant of the
 * backend in the same run:
 *   MHA       12 heads, dk = dv = 128 (token row [k | v], 3072 wide)
 *   MLA-abs   the latent, absorbed: 12 query heads over one key [c | k_r] (224) and value c (160)
 *   MLA-reb   rebuilt per head from the latent: 12 heads, dk = 128 + 64 = 192, dv = 128, over a
 *             contiguous [n, 12*192 | 12*128] buffer (what the rebuild writes)
 * Then the MLA chains as the engine would run them, per layer call:
 *   absorb:  q~ = q_c k_up (kn_matmul_heads) ; attention over the latent ; o = o_lat v_up^T
 *   rebuild: [K | V] = latent @ W_up (one GEMM per page: W_up [12*(192+128), 224] holds k_up, v_up
 *            and an identity block that copies k_r into every head) ; attention over [K | V]
 * Times: each call enqueued `reps` times back to back (no host sync between), median of 3 such
 * runs, per call; plans are built in an untimed first call. FLOP = 2*Nq*Nk*H*(dk+dv). */

static const int64_t NQ = 4680, PT = 1560;

typedef struct {
    kn_buffer_t *bq, *bo, *bk;
    kn_tensor q, o;
    kn_kv kv;
    int32_t pages[32];
} attn_bufs;

/* A KV source of nk tokens: paged (pages out of order, one spare) or contiguous. */
static int attn_make(kn_backend_t *be, attn_bufs *a, int64_t nk, int H, int kvh, int dk, int dv, int latent, int paged)
{
    memset(a, 0, sizeof *a);
    int64_t width = latent ? dk : (int64_t)kvh * (dk + dv);
    int64_t np = (nk + PT - 1) / PT, total = paged ? np + 1 : 1;
    int64_t kvelems = paged ? total * PT * width : nk * width;
    a->bq = kn_buffer_alloc(be, 2 * (size_t)NQ * H * dk);
    a->bo = kn_buffer_alloc(be, 2 * (size_t)NQ * H * dv);
    a->bk = kn_buffer_alloc(be, 2 * (size_t)kvelems);
    if (!a->bq || !a->bo || !a->bk)
        return -1;
    size_t nmax = (size_t)(kvelems > NQ * H * dk ? kvelems : NQ * H * dk);
    float *h = malloc(sizeof(float) * nmax);
    for (size_t i = 0; i < nmax; i++)
        h[i] = (float)((int)(i * 2654435761u % 2001u) - 1000) * 1e-3f;
    a->q = (kn_tensor){a->bq, 0, KN_BF16, NQ, (int64_t)H * dk, (int64_t)H * dk};
    a->o = (kn_tensor){a->bo, 0, KN_BF16, NQ, (int64_t)H * dv, (int64_t)H * dv};
    kn_tensor kt = {a->bk, 0, KN_BF16, 1, kvelems, kvelems};
    kn_upload(be, a->q, h, KN_F32);
    kn_upload(be, kt, h, KN_F32);
    free(h);
    for (int64_t i = 0; i < np; i++) /* a fixed shuffle: page i of the window lives in slot (7i+3) mod total */
        a->pages[i] = (int32_t)((7 * i + 3) % total);
    a->kv.buf = a->bk;
    a->kv.dtype = KN_BF16;
    a->kv.row_stride = width;
    a->kv.page_stride = PT * width;
    a->kv.page_tokens = (int32_t)PT;
    a->kv.pages = paged ? a->pages : NULL;
    a->kv.n_tokens = nk;
    a->kv.kv_heads = kvh;
    a->kv.k_off = 0;
    a->kv.v_off = latent ? 0 : (int64_t)kvh * dk;
    a->kv.dk = dk;
    a->kv.dv = dv;
    return 0;
}

static void attn_drop(kn_backend_t *be, attn_bufs *a)
{
    kn_buffer_free(be, a->bq);
    kn_buffer_free(be, a->bo);
    kn_buffer_free(be, a->bk);
}

/* Seconds a call of attention: first call untimed (plans), then median of 3 x reps calls. */
static double last_enqueue; /* host seconds a call took to enqueue, in the last time_attention */

static double time_attention(kn_backend_t *be, attn_bufs *a, int H, int reps)
{
    float scale = 1.0f / sqrtf((float)a->kv.dk);
    if (kn_attention(be, a->o, a->q, &a->kv, H, scale) != KN_OK || kn_sync(be) != KN_OK) {
        fprintf(stderr, "vmla-bench-gpu: attention: %s\n", kn_backend_error(be));
        return INFINITY;
    }
    double t[3], q[3];
    for (int r = 0; r < 3; r++) {
        double t0 = now_s();
        for (int i = 0; i < reps; i++)
            if (kn_attention(be, a->o, a->q, &a->kv, H, scale) != KN_OK) {
                fprintf(stderr, "vmla-bench-gpu: attention: %s\n", kn_backend_error(be));
                return INFINITY;
            }
        q[r] = (now_s() - t0) / reps;
        if (kn_sync(be) != KN_OK)
            return INFINITY;
        t[r] = (now_s() - t0) / reps;
    }
    qsort(t, 3, sizeof(double), cmpd);
    qsort(q, 3, sizeof(double), cmpd);
    last_enqueue = q[1];
    return t[1];
}

static const char *const ATTN_VARIANTS[] = {"tc", "cudnn", "cudnn-paged", "cudnn+composite", "cudnn-nopackcache"};
#define N_ATTN_VARIANTS 5

static int select_variant(kn_backend_t *be, const char *v)
{
    int ok;
    if (!strcmp(v, "cudnn+composite")) {
        setenv("VMLA_CUDNN_SDPA", "composite", 1);
        ok = kn_cuda_attention_select(be, "cudnn");
        unsetenv("VMLA_CUDNN_SDPA");
    } else if (!strcmp(v, "cudnn-nopackcache")) {
        setenv("VMLA_CUDNN_PACK_CACHE", "0", 1);
        ok = kn_cuda_attention_select(be, "cudnn");
        unsetenv("VMLA_CUDNN_PACK_CACHE");
    } else {
        ok = kn_cuda_attention_select(be, v);
    }
    return ok;
}

static void attention_rates(kn_backend_t *be)
{
    const int H = 12;
    const struct {
        const char *name;
        int frames; /* sink + window */
        int kvh, dk, dv, latent, paged;
    } cs[] = {
        {"MHA 12x128", 7, 12, 128, 128, 0, 1},
        {"MHA 12x128 contig", 7, 12, 128, 128, 0, 0},
        {"MLA-abs 1x224/160", 7, 1, 224, 160, 1, 1},
        {"MLA-abs contig", 7, 1, 224, 160, 1, 0},
        {"MLA-reb 12x192/128", 7, 12, 192, 128, 0, 0},
        {"cross 12x128", 0, 12, 128, 128, 0, 0}, /* 512 text tokens */
        {"MHA 12x128", 22, 12, 128, 128, 0, 1},
        {"MLA-abs 1x224/160", 22, 1, 224, 160, 1, 1},
        {"MLA-reb 12x192/128", 22, 12, 192, 128, 0, 0},
    };
    printf("\nattention, bf16, %lld queries, keys paged by frame of %lld tokens (MLA-reb: contiguous), per call "
           "(x30 layers x5 passes = a chunk)\n",
           (long long)NQ, (long long)PT);
    printf("%-20s %6s %-18s %-24s %9s %8s %10s %11s\n", "case", "keys", "variant", "path", "ms", "TF/s", "ms/chunk",
           "enqueue us");
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        attn_bufs a;
        int64_t nk = cs[c].frames ? (int64_t)cs[c].frames * PT : 512;
        if (attn_make(be, &a, nk, H, cs[c].kvh, cs[c].dk, cs[c].dv, cs[c].latent, cs[c].paged)) {
            fprintf(stderr, "vmla-bench-gpu: attention buffers: %s\n", kn_backend_error(be));
            attn_drop(be, &a);
            continue;
        }
        double flop = 2.0 * NQ * nk * H * (cs[c].dk + cs[c].dv);
        for (int v = 0; v < N_ATTN_VARIANTS; v++) {
            if (!cs[c].paged && !strcmp(ATTN_VARIANTS[v], "cudnn-paged"))
                continue; /* no pages to hand over */
            if (!select_variant(be, ATTN_VARIANTS[v])) {
                printf("%-20s %6lld %-16s not available here\n", cs[c].name, (long long)nk, ATTN_VARIANTS[v]);
                continue;
            }
            double t = time_attention(be, &a, H, cs[c].frames ? 8 : 40);
            printf("%-20s %6lld %-18s %-24s %9.3f %8.1f %10.1f %11.1f\n", cs[c].name, (long long)nk, ATTN_VARIANTS[v],
                   kn_cuda_attention_last(be), t * 1e3, flop / t / 1e12, t * 150e3, last_enqueue * 1e6);
            if (!strcmp(ATTN_VARIANTS[v], "cudnn")) {
                char info[512];
                kn_cuda_cudnn_info(be, info, sizeof info);
                printf("%-20s %6s   %s\n", "", "", info);
            }
        }
        attn_drop(be, &a);
    }
}

/* The two MLA chains per layer call (see above), on the current variant of be. */
static void mla_chains(kn_backend_t *be, int frames)
{
    const int H = 12, dh = 128, dc = 160, dr = 64, reps = 8;
    const int64_t nk = (int64_t)frames * PT;
    attn_bufs lat, reb;
    if (attn_make(be, &lat, nk, H, 1, dc + dr, dc, 1, 1) || attn_make(be, &reb, nk, H, H, dh + dr, dh, 0, 0)) {
        fprintf(stderr, "vmla-bench-gpu: mla buffers: %s\n", kn_backend_error(be));
        attn_drop(be, &lat);
        attn_drop(be, &reb);
        return;
    }
    /* weights and the query-side tensors */
    kn_buffer_t *bw = kn_buffer_alloc(be, 2 * (size_t)H * (dh + dr + dh) * (dc + dr)),
                *bu = kn_buffer_alloc(be, 2 * (size_t)2 * H * dh * dc), *bqc = kn_buffer_alloc(be, 2 * (size_t)NQ * H * dh),
                *bat = kn_buffer_alloc(be, 2 * (size_t)NQ * H * dh);
    if (!bw || !bu || !bqc || !bat) {
        fprintf(stderr, "vmla-bench-gpu: mla weights: %s\n", kn_backend_error(be));
        goto out;
    }
    {
        kn_tensor wup = {bw, 0, KN_BF16, (int64_t)H * (dh + dr + dh), dc + dr, dc + dr};
        kn_tensor kup = {bu, 0, KN_BF16, (int64_t)H * dh, dc, dc};
        kn_tensor vup = {bu, 2 * (size_t)H * dh * dc, KN_BF16, (int64_t)H * dh, dc, dc};
        kn_tensor qc = {bqc, 0, KN_BF16, NQ, (int64_t)H * dh, (int64_t)H * dh};
        kn_tensor att = {bat, 0, KN_BF16, NQ, (int64_t)H * dh, (int64_t)H * dh};
        size_t nmax = (size_t)H * (dh + dr + dh) * (dc + dr);
        if (nmax < (size_t)NQ * H * dh)
            nmax = (size_t)NQ * H * dh;
        float *h = malloc(sizeof(float) * nmax);
        for (size_t i = 0; i < nmax; i++)
            h[i] = (float)((int)(i * 2246822519u % 2001u) - 1000) * 3e-5f;
        kn_upload(be, wup, h, KN_F32);
        kn_upload(be, kup, h, KN_F32);
        kn_upload(be, vup, h, KN_F32);
        kn_upload(be, qc, h, KN_F32);
        free(h);
        /* q~ = q_c k_up per head goes to its own tensor (the engine then interleaves it with q_r
         * into the latent query, 24 copies the two chains share and that are left out here) */
        kn_buffer_t *bqt = kn_buffer_alloc(be, 2 * (size_t)NQ * H * dc);
        if (!bqt)
            goto out;
        kn_tensor qt = {bqt, 0, KN_BF16, NQ, (int64_t)H * dc, (int64_t)H * dc};
        float sa = 1.0f / sqrtf((float)(dh + dr));
        double t[2][3];
        for (int chain = 0; chain < 2; chain++) {
            for (int r = -1; r < 3; r++) { /* r = -1: untimed (plans) */
                double t0 = now_s();
                for (int i = 0; i < (r < 0 ? 1 : reps); i++) {
                    kn_status st = KN_OK;
                    if (chain == 0) {
                        st = kn_matmul_heads(be, qt, qc, kup, H, KN_HEADS_XW);
                        if (st == KN_OK)
                            st = kn_attention(be, lat.o, lat.q, &lat.kv, H, sa);
                        if (st == KN_OK)
                            st = kn_matmul_heads(be, att, lat.o, vup, H, KN_HEADS_XWT);
                    } else {
                        int64_t np = (nk + PT - 1) / PT;
                        for (int64_t p = 0; p < np && st == KN_OK; p++) {
                            int64_t rows = p == np - 1 ? nk - p * PT : PT;
                            kn_tensor x = {lat.bk, (size_t)lat.pages[p] * PT * (dc + dr) * 2, KN_BF16, rows, dc + dr,
                                           dc + dr};
                            kn_tensor y = {reb.bk, (size_t)p * PT * reb.kv.row_stride * 2, KN_BF16, rows,
                                           reb.kv.row_stride, reb.kv.row_stride};
                            st = kn_linear(be, y, x, wup, NULL);
                        }
                        if (st == KN_OK)
                            st = kn_attention(be, att, reb.q, &reb.kv, H, sa);
                    }
                    if (st != KN_OK) {
                        fprintf(stderr, "vmla-bench-gpu: mla chain: %s\n", kn_backend_error(be));
                        kn_buffer_free(be, bqt);
                        goto out;
                    }
                }
                kn_sync(be);
                if (r >= 0)
                    t[chain][r] = (now_s() - t0) / reps;
            }
            qsort(t[chain], 3, sizeof(double), cmpd);
        }
        printf("  MLA chains, %d frames (%lld keys), attention %s: absorb (q~, latent attention, v_up) %.3f ms, "
               "rebuild (per-page GEMM to [K|V], attention) %.3f ms a layer call; x150 = %.0f / %.0f ms a chunk\n",
               frames, (long long)nk, kn_cuda_attention_variant(be), t[0][1] * 1e3, t[1][1] * 1e3, t[0][1] * 150e3,
               t[1][1] * 150e3);
        kn_buffer_free(be, bqt);
    }
out:
    kn_buffer_free(be, bw);
    kn_buffer_free(be, bu);
    kn_buffer_free(be, bqc);
    kn_buffer_free(be, bat);
    attn_drop(be, &lat);
    attn_drop(be, &reb);
}

int main(int argc, char **argv)
{
    int chunks = 6, warmup = 1, gemm = 1, micro_only = 0, np = 0;
    const char *attn_list = "cudnn,cudnn-paged,tc";
    const char *win_list = "6";
    const char *presets[8];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--chunks") && i + 1 < argc)
            chunks = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--preset") && i + 1 < argc && np < 8)
            presets[np++] = argv[++i];
        else if (!strcmp(argv[i], "--no-gemm"))
            gemm = 0;
        else if (!strcmp(argv[i], "--micro"))
            micro_only = 1;
        else if (!strcmp(argv[i], "--attn") && i + 1 < argc)
            attn_list = argv[++i];
        else if (!strcmp(argv[i], "--windows") && i + 1 < argc)
            win_list = argv[++i];
        else {
            fprintf(stderr, "usage: vmla-bench-gpu [--chunks N] [--warmup W] [--preset P]... [--attn V,V..] [--windows W,W..] "
                            "[--no-gemm | --micro]\n");
            return 2;
        }
    }
    if (chunks < 1 || warmup < 0) {
        fprintf(stderr, "vmla-bench-gpu: --chunks must be >= 1 and --warmup >= 0\n");
        return 2;
    }
    if (!np) {
        presets[np++] = "wan-1.3b";
        presets[np++] = "wan-1.3b-mla";
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char err[512];
    setenv("VMLA_CUDA_PROFILE", "1", 1); /* op timing available (off until the time split) */
    kn_backend_t *be = kn_cuda_backend_new(0, err, sizeof err);
    if (!be) {
        printf("skip: no CUDA device (%s)\n", err);
        return 0;
    }
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
        printf("device: %s, %d SMs, %.0f GiB; backend %s, compute %s, attention %s\n", prop.name,
               prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, kn_backend_name(be),
               kn_dtype_name(kn_backend_compute_dtype(be)), kn_cuda_attention_variant(be));
    if (micro_only)
        np = 0;
    /* the chunk's attention variants, the first the default (and the one profiled) */
    const char *variants[8];
    int nv = 0;
    char vbuf[256];
    snprintf(vbuf, sizeof vbuf, "%s", attn_list);
    for (char *t = strtok(vbuf, ","); t && nv < 8; t = strtok(NULL, ","))
        variants[nv++] = t;
    char wbuf[64];
    snprintf(wbuf, sizeof wbuf, "%s", win_list);
    int first_window = 1;
    for (char *w = strtok(wbuf, ","); w && np > 0; w = strtok(NULL, ","), first_window = 0) {
        int window = atoi(w);
        result r[8];
        for (int i = 0; i < np; i++) /* the other variants at the first window only */
            r[i] = run_preset(be, presets[i], window, warmup, chunks, variants, first_window ? nv : 1);
        if (np == 2 && r[0].ok && r[1].ok)
            printf("\nwindow %d: ratio %s / %s [attention %s]: latency %.3f, KV a stream %.3f, device memory %.3f\n\n",
                   window, presets[1], presets[0], variants[0], r[1].median / r[0].median,
                   (double)r[1].kv_stream / (double)r[0].kv_stream, (double)r[1].mem / (double)r[0].mem);
    }
    if (gemm) {
        /* for comparison: the bias by broadcast (no cublasLt) */
        kn_backend_t *nolt = NULL;
        setenv("VMLA_CUDA_NO_LT", "1", 1);
        nolt = kn_cuda_backend_new(0, err, sizeof err);
        unsetenv("VMLA_CUDA_NO_LT");
        gemm_rates(be, nolt);
        kn_backend_free(nolt);
        attention_rates(be);
        const char *cv[2] = {"cudnn", "tc"};
        for (int v = 0; v < 2; v++)
            if (kn_cuda_attention_select(be, cv[v])) {
                mla_chains(be, 7);
                mla_chains(be, 22);
            }
    }
    kn_backend_free(be);
    return 0;
}
