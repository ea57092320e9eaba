/* server/vmla-gen.c — generate a video from a prompt on the command line.
 *
 *   vmla-gen --preset P [--model FILE] --prompt TEXT [--seed N] [--seconds S] --out FILE
 *            [--window W] [--sink S] [--latent-h H --latent-w W] [--device cpu|cuda]
 *            [--sampler-steps 1000,750,500,250] [--sampler-shift 5]
 *
 * Writes FILE (.mp4 through FFmpeg when built with it, else .y4m) and prints frames/s and the KV
 * cache size. Without --model the weights are seeded random: the video is noise, as expected.
 * Any error: a message on stderr, exit status 1 (2 for usage), and no output file left behind.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/cli.h"
#include "engine/engine.h"
#include "engine/weights.h"
#include "server/encode/video_writer.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vmla-gen --preset P [--model FILE] --prompt TEXT [--seed N] [--seconds S]\n"
            "                --out FILE.{mp4,y4m} [--window W] [--sink S] [--latent-h H]\n"
            "                [--latent-w W] [--device cpu|cuda]\n"
            "                [--sampler-steps T1,T2,.. --sampler-shift S] (default: the model\n"
            "                file's vmla.sampler.* metadata, else the preset's)\n"
            "presets: %s\n",
            eng_config_presets());
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    const char *preset = NULL, *model = NULL, *prompt = NULL, *outp = NULL, *device = "cpu";
    const char *sampler_steps = NULL, *sampler_shift = NULL;
    uint64_t seed = 0;
    double seconds = 2.0;
    long window = -1, sink = -1, lh = 0, lw = 0;
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "vmla-gen: %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "--preset")) preset = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--out")) outp = v;
        else if (!strcmp(a, "--device")) device = v;
        else if (!strcmp(a, "--sampler-steps")) sampler_steps = v;
        else if (!strcmp(a, "--sampler-shift")) sampler_shift = v;
        else if (!strcmp(a, "--seed")) bad = cli_u64(v, &seed);
        else if (!strcmp(a, "--seconds")) bad = cli_double(v, 0.01, 3600.0, &seconds);
        else if (!strcmp(a, "--window")) bad = cli_int(v, 1, 1024, &window);
        else if (!strcmp(a, "--sink")) bad = cli_int(v, 0, 1024, &sink);
        else if (!strcmp(a, "--latent-h")) bad = cli_int(v, 2, 4096, &lh);
        else if (!strcmp(a, "--latent-w")) bad = cli_int(v, 2, 4096, &lw);
        else {
            fprintf(stderr, "vmla-gen: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "vmla-gen: bad value for %s: '%s'\n", a, v);
            return 2;
        }
    }
    if (!preset || !prompt || !outp) {
        fprintf(stderr, "vmla-gen: --preset, --prompt and --out are required\n");
        usage(stderr);
        return 2;
    }
    char err[512];
    eng_config cfg;
    if (eng_config_preset(&cfg, preset, err, sizeof err)) {
        fprintf(stderr, "vmla-gen: %s\n", err);
        return 2;
    }
    if (model && eng_config_apply_file(&cfg, model, err, sizeof err)) {
        fprintf(stderr, "vmla-gen: %s\n", err);
        return 1;
    }
    if ((sampler_steps || sampler_shift) &&
        eng_config_set_sampler(&cfg, sampler_steps, sampler_shift, "--sampler-steps/--sampler-shift", err, sizeof err)) {
        fprintf(stderr, "vmla-gen: %s\n", err);
        return 2;
    }
    kn_backend_t *be = NULL;
    if (!strcmp(device, "cpu"))
        be = kn_cpu_backend_new();
    else if (!strcmp(device, "cuda"))
        be = kn_cuda_backend_new(0, err, sizeof err);
    else {
        fprintf(stderr, "vmla-gen: unknown device '%s' (cpu or cuda)\n", device);
        return 2;
    }
    if (!be) {
        fprintf(stderr, "vmla-gen: %s\n", !strcmp(device, "cpu") ? "out of memory" : err);
        return 1;
    }
    int rc = 1;
    eng_engine_t *e = NULL;
    eng_stream_t *s = NULL;
    vw_writer_t *vw = NULL;
    eng_options o;
    eng_options_default(&o);
    o.weights = model;
    o.weight_seed = 1;
    o.window = (int)window;
    o.sink = (int)sink;
    o.latent_h = (int)lh;
    o.latent_w = (int)lw;
    if (eng_open(&e, be, &cfg, &o, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "vmla-gen: %s\n", err);
        goto out;
    }
    const eng_config *c = eng_get_config(e);
    if (eng_stream_open(e, seed, prompt, &s) != ENG_OK) {
        fprintf(stderr, "vmla-gen: %s\n", eng_error(e));
        goto out;
    }
    int W = eng_video_width(e), H = eng_video_height(e), fpc = eng_frames_per_chunk(e);
    if (vw_open(&vw, outp, VW_FORMAT_AUTO, W, H, c->fps, 1, err, sizeof err) != VW_OK) {
        fprintf(stderr, "vmla-gen: %s\n", err);
        goto out;
    }
    long want = (long)(seconds * c->fps + 0.5);
    if (want < 1)
        want = 1;
    long written = 0;
    double t0 = now(), gen = 0;
    while (written < want) {
        double ts = now();
        if (eng_generate_chunk(e, &s, 1) != ENG_OK) {
            fprintf(stderr, "vmla-gen: %s\n", eng_error(e));
            goto out;
        }
        gen += now() - ts;
        const eng_frames *fr = eng_stream_take_frames(s);
        if (!fr) {
            fprintf(stderr, "vmla-gen: internal: no frames after a chunk\n");
            goto out;
        }
        int n = fr->n_frames < want - written ? fr->n_frames : (int)(want - written);
        if (vw_write_rgb(vw, fr->rgb, n) != VW_OK) {
            fprintf(stderr, "vmla-gen: %s\n", vw_error(vw));
            goto out;
        }
        written += n;
    }
    if (vw_finish(vw) != VW_OK) {
        fprintf(stderr, "vmla-gen: writing %s failed: %s\n", outp, vw_error(vw));
        goto out; /* vw_abort below removes the partial file */
    }
    vw_close(vw);
    vw = NULL;
    double total = now() - t0;
    printf("wrote %s: %ld frames %dx%d at %d fps (%.2f s of video), %lld chunks of %d frames\n", outp,
           written, W, H, c->fps, (double)written / c->fps, (long long)eng_stream_chunks_done(s), fpc);
    printf("preset %s (%s layout), %lld parameters, %s weights, backend %s\n", c->preset,
           eng_layout_name(c->layout), (long long)eng_weight_params(e), model ? model : "random",
           kn_backend_name(be));
    printf("speed: %.1f frames/s generated (%.3f s a chunk), %.1f frames/s with encoding\n",
           (double)eng_stream_chunks_done(s) * fpc / gen, gen / (double)eng_stream_chunks_done(s),
           (double)written / total);
    printf("kv cache: %.1f bytes a token a layer; this stream holds %zu bytes (max %zu for %d sink + %d "
           "window frames)\n",
           eng_kv_bytes_per_token_layer(e), eng_stream_kv_bytes(s), eng_stream_kv_bytes_max(s), c->sink,
           c->window);
    rc = 0;
out:
    if (vw)
        vw_abort(vw);
    eng_stream_close(s);
    eng_close(e);
    kn_backend_free(be);
    return rc;
}
