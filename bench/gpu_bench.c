/* bench/gpu_bench.c — vmla-bench-gpu: chunk latency of the real-size models on the CUDA backend.
 *
 *   vmla-bench-gpu [--chunks N] [--warmup W] [--preset P]... [--no-gemm | --micro]
 *   (--no-gemm: the presets only; --micro: the GEMM and attention rates only)
 *
 * For each preset (default wan-1.3b and wan-1.3b-mla): latent 60x104 (480x832 video), window 6,
 * sink 1, seeded random weights, bf16 weights/activations/KV on the CUDA backend. One stream; W
 * warm-up chunks (default 1), then N timed chunks (default 6), each timed on the host clock around
 * eng_generate_chunk (which ends by downloading the decoded frames, so the GPU is idle at both
 * ends). Prints each chunk's latency, the median and p99, frames/s (frames a chunk / median), KV
 * bytes per stream (the pool's own accounting), device memory in use (cudaMemGetInfo: every
 * allocation is made at init, so this is the peak) and the MLA/MHA ratios.
 *
 * Then the GEMM rate at the chunk's shapes, 4680x1536x1536, 4680x8960x1536 and 4680x1536x8960
 * (M x N x K, bf16 in and out, fp32 accumulation): plain cublasGemmEx timed with CUDA events, and
 * the backend's kn_linear (bias included) at the same shapes, for the ">= 90% of plain cuBLAS" check;
 * and the attention kernel alone at the chunk's shapes (both layouts), in TFLOP/s.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "engine/engine.h"
#include "kernels/backend.h"

const char *kn_cuda_attention_variant(const kn_backend_t *be);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

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

static result run_preset(kn_backend_t *be, const char *preset, int warmup, int chunks)
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
    o.window = 6;
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
    printf("%s: opened in %.1f s (%lld params, %dx%d video, %d frames a chunk, attention %s)\n", preset,
           now_s() - t0, (long long)eng_weight_params(e), eng_video_width(e), eng_video_height(e),
           eng_frames_per_chunk(e), kn_cuda_attention_variant(be));
    double *lat = calloc((size_t)chunks, sizeof(double));
    int ok = 1;
    for (int i = 0; i < warmup + chunks && ok; i++) {
        double a = now_s();
        if (eng_generate_chunk(e, &s, 1) != ENG_OK) {
            fprintf(stderr, "vmla-bench-gpu: %s chunk %d: %s / %s\n", preset, i, eng_error(e), eng_stream_error(s));
            ok = 0;
            break;
        }
        double dt = now_s() - a;
        eng_stream_take_frames(s);
        printf("  %s chunk %d: %.1f ms%s\n", preset, i, dt * 1e3, i < warmup ? " (warm-up)" : "");
        fflush(stdout);
        if (i >= warmup)
            lat[i - warmup] = dt;
    }
    if (ok) {
        qsort(lat, (size_t)chunks, sizeof(double), cmpd);
        r.median = pct(lat, chunks, 50);
        r.p99 = pct(lat, chunks, 99);
        r.fps = eng_frames_per_chunk(e) / r.median;
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

/* ---- attention rate at the chunk's shapes ------------------------------------------------------------
 * 4680 queries over 10920 keys (sink 1 + 6 window frames of 1560 tokens, paged by frame, pages out
 * of order), bf16: the per-head layout (12 heads, dk = dv = 128, kv_heads 12) and the latent one
 * (12 query heads over one shared key of d_c + d_r = 224 and value of d_c = 160). */
static void attention_rates(kn_backend_t *be, int iters)
{
    const int64_t nq = 4680, nk = 10920, pt = 1560;
    const int H = 12;
    int32_t pages[7] = {3, 0, 6, 1, 5, 2, 4};
    printf("\nattention, bf16, %lld queries x %lld keys, paged (median of %d after 1 warm-up; kernel: %s)\n",
           (long long)nq, (long long)nk, iters, kn_cuda_attention_variant(be));
    for (int mla = 0; mla < 2; mla++) {
        int kvh = mla ? 1 : H, dk = mla ? 224 : 128, dv = mla ? 160 : 128;
        int64_t width = mla ? dk : (int64_t)kvh * (dk + dv);
        kn_buffer_t *bq = kn_buffer_alloc(be, 2 * (size_t)nq * H * dk), *bo = kn_buffer_alloc(be, 2 * (size_t)nq * H * dv),
                    *bk = kn_buffer_alloc(be, 2 * (size_t)nk * width);
        if (!bq || !bo || !bk) {
            fprintf(stderr, "vmla-bench-gpu: attention buffers: %s\n", kn_backend_error(be));
            return;
        }
        size_t nmax = (size_t)(nk * width > nq * H * dk ? nk * width : nq * H * dk);
        float *h = malloc(sizeof(float) * nmax);
        for (size_t i = 0; i < nmax; i++)
            h[i] = (float)((int)(i * 2654435761u % 2001u) - 1000) * 1e-3f;
        kn_tensor q = {bq, 0, KN_BF16, nq, (int64_t)H * dk, (int64_t)H * dk}, o = {bo, 0, KN_BF16, nq, (int64_t)H * dv, (int64_t)H * dv};
        kn_tensor kt = {bk, 0, KN_BF16, 1, nk * width, nk * width};
        kn_upload(be, q, h, KN_F32);
        kn_upload(be, kt, h, KN_F32);
        free(h);
        kn_kv kv;
        memset(&kv, 0, sizeof kv);
        kv.buf = bk;
        kv.dtype = KN_BF16;
        kv.row_stride = width;
        kv.page_stride = pt * width;
        kv.page_tokens = (int32_t)pt;
        kv.pages = pages;
        kv.n_tokens = nk;
        kv.kv_heads = kvh;
        kv.k_off = 0;
        kv.v_off = mla ? 0 : (int64_t)kvh * dk;
        kv.dk = dk;
        kv.dv = dv;
        double t[16];
        int ok = 1;
        if (iters > 15)
            iters = 15;
        for (int it = 0; it < iters + 1 && ok; it++) {
            kn_sync(be);
            double a = now_s();
            if (kn_attention(be, o, q, &kv, H, 1.0f / sqrtf((float)dk)) != KN_OK || kn_sync(be) != KN_OK) {
                fprintf(stderr, "vmla-bench-gpu: attention: %s\n", kn_backend_error(be));
                ok = 0;
            }
            if (it >= 1)
                t[it - 1] = now_s() - a;
        }
        if (ok) {
            qsort(t, (size_t)iters, sizeof(double), cmpd);
            double flop = 2.0 * nq * nk * H * (dk + dv);
            printf("  %-4s dk %3d dv %3d kv_heads %2d: %.2f ms, %.1f TF/s (x30 layers x5 passes = %.0f ms a chunk)\n",
                   mla ? "MLA" : "MHA", dk, dv, kvh, t[iters / 2] * 1e3, flop / t[iters / 2] / 1e12, t[iters / 2] * 150e3);
        }
        kn_buffer_free(be, bq);
        kn_buffer_free(be, bo);
        kn_buffer_free(be, bk);
    }
}

int main(int argc, char **argv)
{
    int chunks = 6, warmup = 1, gemm = 1, micro_only = 0, np = 0;
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
        else {
            fprintf(stderr, "usage: vmla-bench-gpu [--chunks N] [--warmup W] [--preset P]... [--no-gemm | --micro]\n");
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
    kn_backend_t *be = kn_cuda_backend_new(0, err, sizeof err);
    if (!be) {
        printf("skip: no CUDA device (%s)\n", err);
        return 0;
    }
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
        printf("device: %s, %d SMs, %.0f GiB; backend %s, compute %s\n", prop.name, prop.multiProcessorCount,
               prop.totalGlobalMem / 1073741824.0, kn_backend_name(be), kn_dtype_name(kn_backend_compute_dtype(be)));
    if (micro_only)
        np = 0;
    result r[8];
    for (int i = 0; i < np; i++)
        r[i] = run_preset(be, presets[i], warmup, chunks);
    if (np == 2 && r[0].ok && r[1].ok)
        printf("\nratio %s / %s: latency %.3f, KV a stream %.3f, device memory %.3f\n", presets[1], presets[0],
               r[1].median / r[0].median, (double)r[1].kv_stream / (double)r[0].kv_stream,
               (double)r[1].mem / (double)r[0].mem);
    if (gemm) {
        /* variants for comparison: bias by broadcast; the first tensor-core attention; the simple one */
        kn_backend_t *nolt = NULL, *tsync = NULL, *simple = NULL;
        setenv("VMLA_CUDA_NO_LT", "1", 1);
        nolt = kn_cuda_backend_new(0, err, sizeof err);
        unsetenv("VMLA_CUDA_NO_LT");
        gemm_rates(be, nolt);
        attention_rates(be, 10);
        setenv("VMLA_CUDA_ATTN", "tc-sync", 1);
        if ((tsync = kn_cuda_backend_new(0, err, sizeof err)))
            attention_rates(tsync, 4);
        setenv("VMLA_CUDA_ATTN", "simple", 1);
        if ((simple = kn_cuda_backend_new(0, err, sizeof err)))
            attention_rates(simple, 2);
        unsetenv("VMLA_CUDA_ATTN");
        kn_backend_free(nolt);
        kn_backend_free(tsync);
        kn_backend_free(simple);
    }
    kn_backend_free(be);
    return 0;
}
