/* bench/vmla-bench.c — benchmarks that print figures.
 *
 *   vmla-bench kv --preset P [--window W] [--sink S] [--latent-h H --latent-w W] [--dtype bf16|f16|f32] [--json]
 *       KV bytes a token a layer for the per-head and latent layouts of P's model family, the
 *       per-stream cache for that window at that size (default 480x832 -> latent 60x104), and
 *       their ratio. The figures come from real KV pools made by engine/kvpool for each layout
 *       (one allocation of sink + window frames each), not from a formula.
 *   vmla-bench gen --preset P [--device cpu|cuda] [--chunks N] [--height H --width W] [--compare] [--json]
 *       Chunk latency, frames/s, FLOP against the backend's GEMM floor, KV and device memory, the
 *       time split on CUDA; --compare: per-head against MLA in one process (gen.c).
 *   vmla-bench serve --preset P ...
 *       Many streams on one device through the scheduler, per-head against MLA: resident sessions
 *       in a pool, throughput batched and one at a time, real-time admission, offload (serve.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/cli.h"
#include "engine/engine.h"
#include "engine/kvpool.h"

typedef struct {
    const char *preset;
    long window, sink, lh, lw, chunks;
    kn_dtype dtype;
    int json;
} args;

int vmla_bench_serve(int argc, char **argv); /* serve.c */
int vmla_bench_gen(int argc, char **argv);   /* gen.c */

static int parse(int argc, char **argv, args *a)
{
    for (int i = 2; i < argc;) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--json")) {
            a->json = 1;
            i++;
            continue;
        }
        int bad = 0;
        if (!v) {
            fprintf(stderr, "vmla-bench: %s needs a value (or is unknown)\n", k);
            return -1;
        }
        if (!strcmp(k, "--preset")) a->preset = v;
        else if (!strcmp(k, "--window")) bad = cli_int(v, 1, 1024, &a->window);
        else if (!strcmp(k, "--sink")) bad = cli_int(v, 0, 1024, &a->sink);
        else if (!strcmp(k, "--latent-h")) bad = cli_int(v, 2, 4096, &a->lh);
        else if (!strcmp(k, "--latent-w")) bad = cli_int(v, 2, 4096, &a->lw);
        else if (!strcmp(k, "--chunks")) bad = cli_int(v, 1, 100000, &a->chunks);
        else if (!strcmp(k, "--dtype")) {
            if (!strcmp(v, "bf16")) a->dtype = KN_BF16;
            else if (!strcmp(v, "f16")) a->dtype = KN_F16;
            else if (!strcmp(v, "f32")) a->dtype = KN_F32;
            else bad = 1;
        } else {
            fprintf(stderr, "vmla-bench: unknown option %s\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "vmla-bench: bad value for %s: '%s'\n", k, v);
            return -1;
        }
        i += 2;
    }
    if (!a->preset) {
        fprintf(stderr, "vmla-bench: --preset is required (%s)\n", eng_config_presets());
        return -1;
    }
    return 0;
}

/* The per-head and latent presets of the family of `preset`. */
static int family(const char *preset, eng_config *mha, eng_config *mla, char *err, size_t errlen)
{
    char base[40];
    snprintf(base, sizeof base, "%s", preset);
    size_t n = strlen(base);
    if (n > 4 && !strcmp(base + n - 4, "-mla"))
        base[n - 4] = 0;
    char m2[48];
    snprintf(m2, sizeof m2, "%s-mla", base);
    if (eng_config_preset(mha, base, err, errlen) || eng_config_preset(mla, m2, err, errlen))
        return -1;
    return 0;
}

typedef struct {
    double bytes_tok_layer;
    size_t page_bytes, stream_bytes;
    int frames, tokens_per_frame;
} kv_fig;

static int measure(const eng_config *c, kn_backend_t *be, kn_dtype dt, int window, int sink, int lh, int lw,
                   kv_fig *f, char *err, size_t errlen)
{
    int tpf = (lh / 2) * (lw / 2);
    kv_pool_config pc = {.page_tokens = tpf, .layers = c->layers, .width = eng_config_kv_width(c),
                         .dtype = dt, .n_pages = sink + window};
    kv_pool_t *p = kv_pool_new(be, &pc, err, errlen);
    if (!p)
        return -1;
    kv_stream s;
    if (kv_stream_init(&s, p, tpf, sink, window, c->chunk_frames, err, errlen)) {
        kv_pool_free(p);
        return -1;
    }
    /* fill the stream to its steady state: chunks until the window is full */
    for (int ch = 0; ch < 1 + (sink + window) / c->chunk_frames + 1; ch++) {
        if (kv_stream_begin_chunk(&s, ch * c->chunk_frames)) {
            snprintf(err, errlen, "kv pool too small (internal)");
            kv_stream_free(&s);
            kv_pool_free(p);
            return -1;
        }
        kv_stream_end_chunk(&s);
    }
    /* the peak: a chunk in progress on top of the context */
    kv_stream_begin_chunk(&s, 1000 * c->chunk_frames);
    f->bytes_tok_layer = kv_pool_bytes_per_token_layer(p);
    f->page_bytes = kv_pool_page_bytes(p);
    f->stream_bytes = (size_t)kv_stream_pages(&s) * kv_pool_page_bytes(p);
    f->frames = s.n_frames;
    f->tokens_per_frame = tpf;
    kv_stream_free(&s);
    kv_pool_free(p);
    return 0;
}

static int cmd_kv(const args *a)
{
    char err[512];
    eng_config mha, mla;
    if (family(a->preset, &mha, &mla, err, sizeof err)) {
        fprintf(stderr, "vmla-bench: %s\n", err);
        return 2;
    }
    int window = a->window > 0 ? (int)a->window : mha.window;
    int sink = a->sink >= 0 ? (int)a->sink : mha.sink;
    int lh = a->lh ? (int)a->lh : 60, lw = a->lw ? (int)a->lw : 104;
    if (window < mha.chunk_frames || lh % 2 || lw % 2) {
        fprintf(stderr, "vmla-bench: window must hold a chunk (%d frames); latent size even\n", mha.chunk_frames);
        return 2;
    }
    kn_backend_t *be = kn_cpu_backend_new();
    kv_fig fh, fl;
    if (!be || measure(&mha, be, a->dtype, window, sink, lh, lw, &fh, err, sizeof err) ||
        measure(&mla, be, a->dtype, window, sink, lh, lw, &fl, err, sizeof err)) {
        fprintf(stderr, "vmla-bench: %s\n", be ? err : "out of memory");
        kn_backend_free(be);
        return 1;
    }
    kn_backend_free(be);
    double ratio = fl.bytes_tok_layer / fh.bytes_tok_layer;
    int H = lh * 8, W = lw * 8;
    if (a->json) {
        printf("{\"preset_mha\": \"%s\", \"preset_mla\": \"%s\", \"dtype\": \"%s\", \"layers\": %d, "
               "\"window\": %d, \"sink\": %d, \"video_height\": %d, \"video_width\": %d, "
               "\"tokens_per_frame\": %d, \"cached_frames\": %d, "
               "\"mha_values_per_token_layer\": %d, \"mla_values_per_token_layer\": %d, "
               "\"mha_bytes_per_token_layer\": %.1f, \"mla_bytes_per_token_layer\": %.1f, "
               "\"mha_stream_bytes\": %zu, \"mla_stream_bytes\": %zu, \"ratio\": %.4f, "
               "\"saving_percent\": %.1f}\n",
               mha.preset, mla.preset, kn_dtype_name(a->dtype), mha.layers, window, sink, H, W,
               fh.tokens_per_frame, fh.frames, eng_config_kv_width(&mha), eng_config_kv_width(&mla),
               fh.bytes_tok_layer, fl.bytes_tok_layer, fh.stream_bytes, fl.stream_bytes, ratio,
               100.0 * (1.0 - ratio));
    } else {
        printf("KV cache, %s, %d layers, window %d + sink %d frames, video %dx%d (%d tokens a frame)\n",
               kn_dtype_name(a->dtype), mha.layers, window, sink, W, H, fh.tokens_per_frame);
        printf("  %-14s %6d values  %8.1f bytes a token a layer  %12zu bytes a stream (%d frames)\n",
               mha.preset, eng_config_kv_width(&mha), fh.bytes_tok_layer, fh.stream_bytes, fh.frames);
        printf("  %-14s %6d values  %8.1f bytes a token a layer  %12zu bytes a stream (%d frames)\n",
               mla.preset, eng_config_kv_width(&mla), fl.bytes_tok_layer, fl.stream_bytes, fl.frames);
        printf("  ratio %.4f (%.1f%% less KV memory; %.1fx more streams in the same pool)\n", ratio,
               100.0 * (1.0 - ratio), 1.0 / ratio);
    }
    return 0;
}

int main(int argc, char **argv)
{
    args a = {.window = -1, .sink = -1, .dtype = KN_BF16};
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout,
                "usage: vmla-bench kv  --preset P [--window W] [--sink S] [--latent-h H] [--latent-w W]"
                " [--dtype bf16|f16|f32] [--json]\n"
                "       vmla-bench gen --preset P [--device cpu|cuda] [--chunks N] [--window W] [--sink S]"
                " [--height H --width W | --latent-h H --latent-w W] [--compare] [--json] (see bench/gen.c)\n"
                "       vmla-bench serve --preset P [--device cpu|cuda] [--pool-gb G] [--streams 1,2,4]"
                " [--chunks C] [--modes batched,single] [--layouts mha,mla] [--rt-streams N,..] [--json FILE]"
                " (see bench/serve.c)\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "kv")) {
        if (parse(argc, argv, &a))
            return 2;
        return cmd_kv(&a);
    }
    if (!strcmp(argv[1], "gen"))
        return vmla_bench_gen(argc, argv);
    if (!strcmp(argv[1], "serve"))
        return vmla_bench_serve(argc, argv);
    fprintf(stderr, "vmla-bench: unknown command '%s' (kv, gen, serve)\n", argv[1]);
    return 2;
}
