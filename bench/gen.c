/* bench/gen.c — `vmla-bench gen`: one stream's chunk latency on a backend, and the layouts compared.
 *
 *   vmla-bench gen --preset P [--device cpu|cuda] [--height H --width W | --latent-h H --latent-w W]
 *                  [--window W] [--sink S] [--chunks N] [--compare] [--json]
 *
 * Seeded random weights (the figures do not depend on them). The stream first generates chunks
 * until its window is full (so every timed chunk attends over sink + window frames, the steady
 * state), then N timed chunks (default 8), each timed on the host clock around eng_generate_chunk,
 * which ends by downloading the decoded frames (so the device is idle at both ends). Printed:
 *  - chunk latency median and p99, frames/s (frames a chunk / median);
 *  - KV bytes a stream (the pool's own accounting) and the device memory in use after the run
 *    (every allocation is made at start, so this is the peak), from kn_mem_info;
 *  - FLOP a chunk from the model's shapes (the linear layers, self- and cross-attention of every
 *    pass: docs/MODEL.md; the MLA form the engine uses), the achieved rate, and the floor: the
 *    same FLOP at the backend's own measured GEMM rate (kn_linear at the chunk's largest shape,
 *    timed in this process) — the chunk cannot be faster than that;
 *  - on CUDA with VMLA_CUDA_PROFILE=1, one more chunk event-timed: GEMM / attention / other /
 *    copies and the device's idle share.
 * --compare runs P's per-head and latent layouts in one process and prints the ratios.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "engine/cli.h"
#include "engine/engine.h"


typedef struct {
    const char *preset, *device;
    long lh, lw, height, width, window, sink, chunks;
    int compare, json;
} gargs;

static int parse(int argc, char **argv, gargs *a)
{
    for (int i = 2; i < argc;) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--json") || !strcmp(k, "--compare")) {
            if (k[2] == 'j')
                a->json = 1;
            else
                a->compare = 1;
            i++;
            continue;
        }
        if (!v) {
            fprintf(stderr, "vmla-bench gen: %s needs a value (or is unknown)\n", k);
            return -1;
        }
        int bad = 0;
        if (!strcmp(k, "--preset")) a->preset = v;
        else if (!strcmp(k, "--device")) {
            a->device = v;
            bad = strcmp(v, "cpu") && strcmp(v, "cuda");
        } else if (!strcmp(k, "--latent-h")) bad = cli_int(v, 2, 4096, &a->lh);
        else if (!strcmp(k, "--latent-w")) bad = cli_int(v, 2, 4096, &a->lw);
        else if (!strcmp(k, "--height")) bad = cli_int(v, 16, 32768, &a->height);
        else if (!strcmp(k, "--width")) bad = cli_int(v, 16, 32768, &a->width);
        else if (!strcmp(k, "--window")) bad = cli_int(v, 1, 1024, &a->window);
        else if (!strcmp(k, "--sink")) bad = cli_int(v, 0, 1024, &a->sink);
        else if (!strcmp(k, "--chunks")) bad = cli_int(v, 1, 100000, &a->chunks);
        else {
            fprintf(stderr, "vmla-bench gen: unknown option %s\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "vmla-bench gen: bad value for %s: '%s'\n", k, v);
            return -1;
        }
        i += 2;
    }
    if (!a->preset) {
        fprintf(stderr, "vmla-bench gen: --preset is required (%s)\n", eng_config_presets());
        return -1;
    }
    return 0;
}

/* FLOP of one forward pass over n tokens attending over nk self-attention keys (docs/MODEL.md). */
static double pass_flop(const eng_config *c, int rebuild, double n, double nk)
{
    double D = c->dim, H = c->heads, dh = c->head_dim, F = c->ffn_dim, dc = c->d_c, dr = c->d_r, L = c->layers;
    double lin, att;
    if (c->layout == ENG_LAYOUT_MHA) {
        lin = 2 * n * 4 * D * D;
        att = 2 * n * nk * H * (dh + dh);
    } else {
        lin = 2 * n * D * (H * dh + H * dr + dc + dr) + 2 * n * H * dh * D;
        if (rebuild) { /* the window's keys and values rebuilt from the latent */
            lin += 2 * nk * (dc + dr) * H * (dh + dr) + 2 * nk * dc * H * dh;
            att = 2 * n * nk * H * (dh + dr + dh);
        } else { /* k_up into the query, v_up after */
            lin += 2 * n * H * dh * dc * 2;
            att = 2 * n * nk * H * (dc + dr + dc);
        }
    }
    lin += 2 * n * 2 * D * D + 2 * n * 2 * D * F;  /* cross-attention q, o; the FFN */
    att += 2 * n * c->text_len * H * (dh + dh);   /* cross-attention */
    return L * (lin + att);
}

typedef struct {
    char preset[32];
    double p50, p99, fps, flop, gemm_tfs, floor_ms, split[4], wall_prof;
    size_t kv_stream, dev_used;
    int have_split, width, height, fpc;
} gres;

/* The backend's GEMM rate at m x n x k (TFLOP/s), kn_linear timed over 10 runs after 2. */
static double gemm_rate(kn_backend_t *be, int64_t m, int64_t n, int64_t k)
{
    kn_dtype dt = kn_backend_compute_dtype(be);
    size_t bx = kn_arena_bytes(dt, m, k), bw = kn_arena_bytes(dt, n, k), by = kn_arena_bytes(dt, m, n);
    kn_buffer_t *buf = kn_buffer_alloc(be, bx + bw + by);
    if (!buf)
        return -1;
    kn_arena a;
    kn_arena_init(&a, buf);
    kn_tensor x, w, y;
    kn_arena_tensor(&a, &x, dt, m, k);
    kn_arena_tensor(&a, &w, dt, n, k);
    kn_arena_tensor(&a, &y, dt, m, n);
    /* not zeros: a few values repeated */
    float *h = malloc(sizeof(float) * (size_t)(m > n ? m : n) * (size_t)k);
    double rate = -1;
    if (h) {
        for (int64_t i = 0; i < (m > n ? m : n) * k; i++)
            h[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
        if (kn_upload(be, x, h, KN_F32) == KN_OK && kn_upload(be, w, h, KN_F32) == KN_OK) {
            int ok = 1;
            for (int i = 0; i < 2 && ok; i++)
                ok = kn_linear(be, y, x, w, NULL) == KN_OK;
            kn_sync(be);
            double t0 = now_s();
            for (int i = 0; i < 10 && ok; i++)
                ok = kn_linear(be, y, x, w, NULL) == KN_OK;
            kn_sync(be);
            double t = (now_s() - t0) / 10;
            if (ok && t > 0)
                rate = 2.0 * m * n * k / t / 1e12;
        }
        free(h);
    }
    kn_buffer_free(be, buf);
    return rate;
}

static int run_one(const gargs *a, kn_backend_t *be, const char *preset, gres *r)
{
    char err[512];
    eng_config c;
    if (eng_config_preset(&c, preset, err, sizeof err)) {
        fprintf(stderr, "vmla-bench gen: %s\n", err);
        return -1;
    }
    eng_options o;
    eng_options_default(&o);
    o.weight_seed = 7;
    o.window = (int)a->window;
    o.sink = (int)a->sink;
    o.latent_h = (int)(a->lh ? a->lh : a->height ? a->height >> c.dec_up : 0);
    o.latent_w = (int)(a->lw ? a->lw : a->width ? a->width >> c.dec_up : 0);
    o.kv_dtype = kn_backend_compute_dtype(be);
    eng_engine_t *e = NULL;
    eng_stream_t *s = NULL;
    int chunks = a->chunks ? (int)a->chunks : 8, rc = -1;
    double *lat = calloc((size_t)chunks, sizeof(double));
    if (!lat || eng_open(&e, be, &c, &o, err, sizeof err) != ENG_OK ||
        eng_stream_open(e, 1, "a red square moving left on a white background", &s) != ENG_OK) {
        fprintf(stderr, "vmla-bench gen: %s\n", e ? eng_error(e) : err);
        goto out;
    }
    const eng_config *ec = eng_get_config(e);
    int warm = ec->window / ec->chunk_frames + 1; /* chunks until the window is full */
    for (int i = 0; i < warm; i++)
        if (eng_generate_chunk(e, &s, 1) != ENG_OK) {
            fprintf(stderr, "vmla-bench gen: %s\n", eng_error(e));
            goto out;
        }
    for (int i = 0; i < chunks; i++) {
        double ts = now_s();
        if (eng_generate_chunk(e, &s, 1) != ENG_OK) {
            fprintf(stderr, "vmla-bench gen: %s\n", eng_error(e));
            goto out;
        }
        eng_stream_take_frames(s);
        lat[i] = now_s() - ts;
    }
    qsort(lat, (size_t)chunks, sizeof(double), cmpd);
    memset(r, 0, sizeof *r);
    snprintf(r->preset, sizeof r->preset, "%s", ec->preset);
    r->p50 = lat[chunks / 2];
    r->p99 = lat[(int)ceil(0.99 * chunks) - 1];
    r->fpc = eng_frames_per_chunk(e);
    r->fps = r->fpc / r->p50;
    r->width = eng_video_width(e);
    r->height = eng_video_height(e);
    r->kv_stream = eng_stream_kv_bytes(s);
    size_t fr = 0, tot = 0;
    if (kn_mem_info(be, &fr, &tot) == KN_OK)
        r->dev_used = tot - fr;
    double n = (double)ec->chunk_frames * (ec->latent_h / 2) * (ec->latent_w / 2);
    double nk = (double)(ec->sink + ec->window) * (ec->latent_h / 2) * (ec->latent_w / 2);
    r->flop = (ec->n_steps + 1) * pass_flop(ec, eng_mla_rebuild(e), n, nk);
    r->gemm_tfs = gemm_rate(be, (int64_t)n, ec->ffn_dim, ec->dim);
    r->floor_ms = r->gemm_tfs > 0 ? r->flop / (r->gemm_tfs * 1e12) * 1e3 : NAN;
    if (kn_cuda_profile_on(be, 1)) {
        double ts = now_s();
        int ok = eng_generate_chunk(e, &s, 1) == ENG_OK;
        eng_sync(e);
        r->wall_prof = (now_s() - ts) * 1e3;
        long cnt[4];
        r->have_split = ok && kn_cuda_profile_read(be, r->split, cnt);
        kn_cuda_profile_on(be, 0);
    }
    rc = 0;
out:
    free(lat);
    eng_stream_close(s);
    eng_close(e);
    return rc;
}

static void print_one(const gargs *a, kn_backend_t *be, const gres *r)
{
    double tfs = r->flop / r->p50 / 1e12;
    if (a->json) {
        printf("{\"preset\": \"%s\", \"backend\": \"%s\", \"width\": %d, \"height\": %d, \"frames_per_chunk\": %d, "
               "\"chunk_p50_s\": %.5f, \"chunk_p99_s\": %.5f, \"fps\": %.3f, \"kv_stream_bytes\": %zu, "
               "\"device_used_bytes\": %zu, \"flop_per_chunk\": %.4g, \"tflops\": %.3f, \"gemm_tflops\": %.3f, "
               "\"floor_ms\": %.3f",
               r->preset, kn_backend_name(be), r->width, r->height, r->fpc, r->p50, r->p99, r->fps, r->kv_stream,
               r->dev_used, r->flop, tfs, r->gemm_tfs, r->floor_ms);
        if (r->have_split)
            printf(", \"gemm_ms\": %.2f, \"attention_ms\": %.2f, \"other_ms\": %.2f, \"copy_ms\": %.2f, "
                   "\"profiled_wall_ms\": %.2f",
                   r->split[0], r->split[1], r->split[2], r->split[3], r->wall_prof);
        printf("}\n");
        return;
    }
    printf("%s on %s, %dx%d, chunks of %d frames: p50 %.4f s, p99 %.4f s, %.2f frames/s; KV %.2f MiB a stream; "
           "%s memory in use %.2f GiB\n",
           r->preset, kn_backend_name(be), r->width, r->height, r->fpc, r->p50, r->p99, r->fps, r->kv_stream / 1048576.0,
           strcmp(kn_backend_name(be), "cpu") ? "device" : "host (all processes)", r->dev_used / 1073741824.0);
    printf("  %.3g TFLOP a chunk: %.3g TFLOP/s achieved; this backend's GEMM %.3g TFLOP/s -> floor %.3g ms a chunk "
           "(%.0f%% of it reached)\n",
           r->flop / 1e12, tfs, r->gemm_tfs, r->floor_ms, 100.0 * r->floor_ms / (r->p50 * 1e3));
    if (r->have_split) {
        double busy = r->split[0] + r->split[1] + r->split[2] + r->split[3];
        printf("  split (one profiled chunk, wall %.1f ms): GEMM %.1f, attention %.1f, other %.1f, copies %.1f ms; "
               "device idle %.1f%%\n",
               r->wall_prof, r->split[0], r->split[1], r->split[2], r->split[3], 100.0 * (1 - busy / r->wall_prof));
    }
}

int vmla_bench_gen(int argc, char **argv)
{
    gargs a = {.device = "cpu", .window = -1, .sink = -1};
    if (parse(argc, argv, &a))
        return 2;
    char err[512];
    kn_backend_t *be = !strcmp(a.device, "cuda") ? kn_cuda_backend_new(0, err, sizeof err) : kn_cpu_backend_new();
    if (!be) {
        fprintf(stderr, "vmla-bench gen: backend: %s\n", err);
        return 1;
    }
    char base[40], mla[48];
    snprintf(base, sizeof base, "%s", a.preset);
    size_t bl = strlen(base);
    if (bl > 4 && !strcmp(base + bl - 4, "-mla"))
        base[bl - 4] = 0;
    snprintf(mla, sizeof mla, "%s-mla", base);
    gres r[2];
    int rc = run_one(&a, be, a.compare ? base : a.preset, &r[0]);
    if (!rc)
        print_one(&a, be, &r[0]);
    if (!rc && a.compare) {
        rc = run_one(&a, be, mla, &r[1]);
        if (!rc) {
            print_one(&a, be, &r[1]);
            double lr = r[1].p50 / r[0].p50, kr = (double)r[1].kv_stream / (double)r[0].kv_stream;
            if (a.json)
                printf("{\"compare\": \"%s / %s\", \"latency_ratio\": %.4f, \"fps_ratio\": %.4f, \"kv_ratio\": %.4f}\n",
                       r[1].preset, r[0].preset, lr, r[1].fps / r[0].fps, kr);
            else
                printf("%s / %s: chunk latency %.3fx, frames/s %.3fx, KV a stream %.4fx\n", r[1].preset, r[0].preset,
                       lr, r[1].fps / r[0].fps, kr);
        }
    }
    kn_backend_free(be);
    return rc ? 1 : 0;
}
