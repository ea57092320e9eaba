/* tests/engine/test_golden.c — the C engine against the PyTorch reference's goldens.
 *
 * tests/golden/tiny-{mha,mla}.safetensors hold seeded random weights and *-golden.safetensors the
 * tensors tools/reference/make_goldens.py computed from them in float64 (docs/MODEL.md): one traced
 * forward (timestep embedding, text context, patch embedding, each block, the head), the noise of
 * the RNG, and three chunks generated through the KV cache with eviction, latents and frames.
 * Tolerance: |c - ref| <= 1e-4 + 1e-4 |ref| (the engine computes in fp32).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/rng.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "tests/check.h"

#define ATOL 1e-4
#define RTOL 1e-4

static char gdir[512];

typedef struct {
    char name[32];
    float *data;
    int64_t n;
} traced;

typedef struct {
    traced t[32];
    int n;
} trace_set;

static void on_trace(void *user, const char *name, const float *data, int64_t rows, int64_t cols)
{
    trace_set *ts = user;
    if (ts->n == 32)
        return;
    traced *t = &ts->t[ts->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n = rows * cols;
    t->data = malloc(sizeof(float) * (size_t)t->n);
    memcpy(t->data, data, sizeof(float) * (size_t)t->n);
}

static const traced *find_trace(const trace_set *ts, const char *name)
{
    for (int i = ts->n - 1; i >= 0; i--) /* the newest */
        if (!strcmp(ts->t[i].name, name))
            return &ts->t[i];
    return NULL;
}

/* The golden tensor as floats (caller frees), or NULL. */
static float *golden(st_file_t *g, const char *name, int64_t *n)
{
    const st_tensor *t = st_find(g, name);
    if (!t)
        return NULL;
    float *v = malloc(sizeof(float) * (size_t)(t->nelem ? t->nelem : 1));
    if (st_to_f32(t, v, (size_t)t->nelem) != ST_OK) {
        free(v);
        return NULL;
    }
    *n = t->nelem;
    return v;
}

static void compare(const char *what, const float *got, int64_t ngot, st_file_t *g, const char *name)
{
    int64_t n = 0;
    float *ref = golden(g, name, &n);
    CHECK(ref != NULL, "%s: golden '%s' missing", what, name);
    if (!ref)
        return;
    CHECK(got && n == ngot, "%s: %lld values, golden has %lld", what, (long long)ngot, (long long)n);
    if (got && n == ngot) {
        size_t wi = 0;
        double r = check_close(got, ref, (size_t)n, ATOL, RTOL, &wi);
        CHECK(r <= 1.0, "%s vs %s: worst element %zu: %.7g vs %.7g (%.2f x tolerance)", what, name, wi,
              got[wi], ref[wi], r);
        printf("  %-5s %-16s %6lld values, worst %.3f x tolerance\n", what, name, (long long)n, r);
    }
    free(ref);
}

/* Noise hook for the forward test: draw 0 of chunk 0 is fwd.x. */
static const float *fwd_x;
static void fwd_noise(void *user, uint64_t seed, uint32_t chunk, uint32_t draw, float *out, size_t n)
{
    memcpy(out, fwd_x, n * sizeof(float));
}

static void run_layout(const char *layout)
{
    char wpath[600], gpath[600], err[512];
    snprintf(wpath, sizeof wpath, "%s/tiny-%s.safetensors", gdir, layout);
    snprintf(gpath, sizeof gpath, "%s/tiny-%s-golden.safetensors", gdir, layout);
    printf("layout %s\n", layout);
    st_file_t *g = NULL;
    CHECK(st_open(&g, gpath, err, sizeof err) == ST_OK, "open %s: %s", gpath, err);
    if (!g)
        return;
    const char *prompt = st_metadata(g, "prompt"), *seed_s = st_metadata(g, "seed");
    CHECK(prompt && seed_s, "golden metadata lacks prompt/seed");
    if (!prompt || !seed_s) {
        st_close(g);
        return;
    }
    uint64_t seed = strtoull(seed_s, NULL, 10);
    eng_config cfg;
    eng_config_preset(&cfg, strcmp(layout, "mla") ? "tiny-test" : "tiny-test-mla", err, sizeof err);

    /* tokenizer */
    int32_t ids[64];
    eng_tokenize(prompt, strlen(prompt), cfg.vocab, ids, cfg.text_len);
    float fids[64];
    for (int i = 0; i < cfg.text_len; i++)
        fids[i] = (float)ids[i];
    compare("text", fids, cfg.text_len, g, "tokens");

    /* noise */
    int64_t nlat = (int64_t)cfg.in_ch * cfg.chunk_frames * cfg.latent_h * cfg.latent_w;
    float *noise = malloc(sizeof(float) * (size_t)nlat);
    eng_noise(seed, 0, 0, noise, (size_t)nlat);
    compare("rng", noise, nlat, g, "gen.noise.0.0");
    eng_noise(seed, 1, 2, noise, (size_t)nlat);
    compare("rng", noise, nlat, g, "gen.noise.1.2");
    free(noise);

    kn_backend_t *be = kn_cpu_backend_new();
    eng_options o;
    eng_options_default(&o);
    o.weights = wpath;

    /* one forward at t = 937.5 (a one-step schedule 750 -> sigma' = 0.9375) on fwd.x */
    {
        eng_config c1 = cfg;
        c1.n_steps = 1;
        c1.steps[0] = 750.0f;
        eng_engine_t *e = NULL;
        eng_stream_t *s = NULL;
        trace_set ts = {0};
        int64_t nx = 0;
        float *x = golden(g, "fwd.x", &nx);
        CHECK(x && nx == nlat, "fwd.x");
        CHECK(eng_open(&e, be, &c1, &o, err, sizeof err) == ENG_OK, "eng_open: %s", err);
        if (e && x) {
            fwd_x = x;
            eng_set_trace(e, on_trace, &ts);
            CHECK(eng_stream_open(e, seed, prompt, &s) == ENG_OK, "stream open");
            eng_stream_set_noise(s, fwd_noise, NULL);
            CHECK(eng_step(e, &s, 1) == ENG_OK && eng_stream_status(s) == ENG_OK, "step: %s",
                  eng_stream_error(s));
            const char *names[][2] = {{"sin", "fwd.sin"}, {"e", "fwd.e"},         {"e0", "fwd.e0"},
                                      {"ctx", "fwd.ctx"}, {"patch", "fwd.patch"}, {"block.0", "fwd.block.0"},
                                      {"block.1", "fwd.block.1"}, {"head", "fwd.head"}};
            for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
                const traced *t = find_trace(&ts, names[i][0]);
                CHECK(t != NULL, "no trace '%s'", names[i][0]);
                if (t)
                    compare("fwd", t->data, t->n, g, names[i][1]);
            }
            /* x0 = x - 0.9375 v: checks unpatchify and the sampler update */
            int64_t nv = 0;
            float *v = golden(g, "fwd.v", &nv);
            float *x0 = malloc(sizeof(float) * (size_t)nlat), *ref = malloc(sizeof(float) * (size_t)nlat);
            CHECK(v && nv == nlat, "fwd.v");
            if (v && nv == nlat && eng_stream_last_latent(s, x0, (size_t)nlat) == ENG_OK) {
                for (int64_t i = 0; i < nlat; i++)
                    ref[i] = (float)((double)x[i] - 0.9375 * (double)v[i]);
                size_t wi;
                double r = check_close(x0, ref, (size_t)nlat, ATOL, RTOL, &wi);
                CHECK(r <= 1.0, "x0 = x - sigma v: element %zu %.7g vs %.7g", wi, x0[wi], ref[wi]);
                printf("  fwd   x0 = x - s*v        %6lld values, worst %.3f x tolerance\n", (long long)nlat, r);
            }
            free(v);
            free(x0);
            free(ref);
        }
        for (int i = 0; i < ts.n; i++)
            free(ts.t[i].data);
        eng_stream_close(s);
        eng_close(e);
        free(x);
    }

    /* three chunks through the cache: window 4, sink 1 (evictions after chunks 0 and 1) */
    {
        eng_engine_t *e = NULL;
        eng_stream_t *s = NULL;
        o.window = atoi(st_metadata(g, "window") ? st_metadata(g, "window") : "4");
        o.sink = atoi(st_metadata(g, "sink") ? st_metadata(g, "sink") : "1");
        CHECK(eng_open(&e, be, &cfg, &o, err, sizeof err) == ENG_OK, "eng_open: %s", err);
        if (e && eng_stream_open(e, seed, prompt, &s) == ENG_OK) {
            float *lat = malloc(sizeof(float) * (size_t)nlat);
            for (int ch = 0; ch < 3; ch++) {
                char name[32];
                CHECK(eng_generate_chunk(e, &s, 1) == ENG_OK, "chunk %d: %s", ch, eng_error(e));
                CHECK(eng_stream_last_latent(s, lat, (size_t)nlat) == ENG_OK, "latent");
                snprintf(name, sizeof name, "gen.chunk.%d", ch);
                compare("gen", lat, nlat, g, name);
                const eng_frames *fr = eng_stream_take_frames(s);
                CHECK(fr && fr->chunk == ch && fr->frame0 == (int64_t)ch * fr->n_frames, "frames of chunk %d", ch);
                snprintf(name, sizeof name, "gen.rgb.%d", ch);
                int64_t nr = 0;
                float *rgb = golden(g, name, &nr);
                if (fr && rgb) {
                    int64_t n = (int64_t)fr->n_frames * fr->width * fr->height * 3, bad = 0, maxd = 0;
                    CHECK(n == nr, "rgb size %lld vs golden %lld", (long long)n, (long long)nr);
                    for (int64_t i = 0; i < n && n == nr; i++) {
                        int64_t want = (int64_t)(rgb[i] * 255.0f + 0.5f), d = llabs(want - fr->rgb[i]);
                        maxd = d > maxd ? d : maxd;
                        bad += d > 1;
                    }
                    CHECK(bad == 0, "%s: %lld bytes differ by more than 1 (max %lld)", name, (long long)bad,
                          (long long)maxd);
                    printf("  gen   %-16s %6lld bytes, max |diff| %lld/255\n", name, (long long)n, (long long)maxd);
                }
                free(rgb);
            }
            free(lat);
            CHECK(eng_stream_kv_bytes(s) == eng_stream_kv_bytes_max(s),
                  "after 3 chunks the stream holds sink + window frames: %zu vs %zu", eng_stream_kv_bytes(s),
                  eng_stream_kv_bytes_max(s));
        }
        eng_stream_close(s);
        eng_close(e);
    }
    kn_backend_free(be);
    st_close(g);
}

/* The bundled models (models/vmla-tiny*.safetensors, bf16) against the reference's generation
 * from the same weights: 3 chunks of latents and the first chunk's frames. */
static void run_bundled(const char *layout, const char *src)
{
    char gpath[600], mpath[600], err[512];
    snprintf(gpath, sizeof gpath, "%s/tests/golden/bundled-%s-golden.safetensors", src, layout);
    snprintf(mpath, sizeof mpath, "%s/models/vmla-tiny%s.safetensors", src, strcmp(layout, "mla") ? "-mha" : "");
    FILE *mf = fopen(mpath, "rb");
    if (!mf) {
        printf("bundled %s: no model file, nothing to compare\n", layout);
        return;
    }
    fclose(mf);
    printf("bundled model, layout %s\n", layout);
    st_file_t *g = NULL;
    CHECK(st_open(&g, gpath, err, sizeof err) == ST_OK, "the model ships without its golden: %s", err);
    if (!g)
        return;
    const char *prompt = st_metadata(g, "prompt"), *seed_s = st_metadata(g, "seed");
    CHECK(prompt && seed_s, "golden metadata");
    eng_config cfg;
    eng_config_preset(&cfg, strcmp(layout, "mla") ? "tiny-mha" : "tiny", err, sizeof err);
    /* the sampler is the model file's (vmla.sampler.*), and the reference must have used the same */
    CHECK(eng_config_apply_file(&cfg, mpath, err, sizeof err) == 0, "sampler of %s: %s", mpath, err);
    const char *gst = st_metadata(g, "sampler.steps"), *gsh = st_metadata(g, "sampler.shift");
    CHECK(gst && gsh, "the golden does not say which sampler the reference ran");
    if (gst && gsh) {
        eng_config ref = cfg;
        CHECK(eng_config_set_sampler(&ref, gst, gsh, gpath, err, sizeof err) == 0, "%s", err);
        CHECK(ref.n_steps == cfg.n_steps && !memcmp(ref.steps, cfg.steps, sizeof ref.steps) && ref.shift == cfg.shift,
              "the golden's sampler (%s, shift %s) is not the model file's", gst, gsh);
        printf("  sampler: steps %s, shift %s\n", gst, gsh);
    }
    kn_backend_t *be = kn_cpu_backend_new();
    eng_options o;
    eng_options_default(&o);
    o.weights = mpath;
    eng_engine_t *e = NULL;
    eng_stream_t *s = NULL;
    CHECK(eng_open(&e, be, &cfg, &o, err, sizeof err) == ENG_OK, "open %s: %s", mpath, err);
    if (e && prompt && seed_s && eng_stream_open(e, strtoull(seed_s, NULL, 10), prompt, &s) == ENG_OK) {
        int64_t nlat = (int64_t)cfg.in_ch * cfg.chunk_frames * cfg.latent_h * cfg.latent_w;
        float *lat = malloc(sizeof(float) * (size_t)nlat);
        for (int ch = 0; ch < 3; ch++) {
            char name[32];
            CHECK(eng_generate_chunk(e, &s, 1) == ENG_OK, "chunk %d: %s", ch, eng_error(e));
            eng_stream_last_latent(s, lat, (size_t)nlat);
            snprintf(name, sizeof name, "gen.chunk.%d", ch);
            compare("gen", lat, nlat, g, name);
            const eng_frames *fr = eng_stream_take_frames(s);
            int64_t nr = 0;
            float *rgb = ch == 0 ? golden(g, "gen.rgb.0", &nr) : NULL;
            if (fr && rgb) {
                int64_t n = (int64_t)fr->n_frames * fr->width * fr->height * 3, bad = 0, maxd = 0;
                CHECK(n == nr, "rgb size");
                for (int64_t i = 0; i < n && n == nr; i++) {
                    int64_t d = llabs((int64_t)(rgb[i] * 255.0f + 0.5f) - fr->rgb[i]);
                    maxd = d > maxd ? d : maxd;
                    bad += d > 1;
                }
                CHECK(bad == 0, "gen.rgb.0: %lld bytes differ by more than 1 (max %lld)", (long long)bad, (long long)maxd);
                printf("  gen   gen.rgb.0          %6lld bytes, max |diff| %lld/255\n", (long long)n, (long long)maxd);
            }
            free(rgb);
        }
        free(lat);
    }
    eng_stream_close(s);
    eng_close(e);
    kn_backend_free(be);
    st_close(g);
}

int main(void)
{
    const char *src = getenv("VMLA_SOURCE_DIR");
    snprintf(gdir, sizeof gdir, "%s/tests/golden", src ? src : ".");
    run_layout("mha");
    run_layout("mla");
    run_bundled("mla", src ? src : ".");
    run_bundled("mha", src ? src : ".");
    return check_done();
}
