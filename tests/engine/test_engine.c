/* tests/engine/test_engine.c — the engine API: sampler determinism, batching (a stream's output
 * is the same alone or batched, at different steps), prompt switch at chunk boundaries, limits
 * (slots, pool, frames), KV accounting of both layouts, weight loading (good and bad files, bf16),
 * bf16 KV storage, injectable noise, frames that are not blank. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/rng.h"
#include "engine/kvpool.h"
#include "engine/safetensors.h"
#include "kernels/backend_impl.h" /* kn_f32_to_bf16 for the bf16 weight file */
#include "tests/check.h"
#include "tests/tmpdir.h"

static kn_backend_t *be;
static char gdir[512], tmpdir[256];

static eng_engine_t *open_engine_mla(const char *preset, const char *weights, int batch, int streams, int kv_pages,
                                     int mla_attention)
{
    eng_config c;
    char err[512];
    eng_config_preset(&c, preset, err, sizeof err);
    eng_options o;
    eng_options_default(&o);
    o.weights = weights;
    o.weight_seed = 5;
    o.max_batch = batch;
    o.max_streams = streams;
    o.kv_pages = kv_pages;
    o.mla_attention = mla_attention;
    eng_engine_t *e = NULL;
    eng_status st = eng_open(&e, be, &c, &o, err, sizeof err);
    CHECK(st == ENG_OK, "eng_open %s: %s", preset, err);
    return e;
}

static eng_engine_t *open_engine(const char *preset, const char *weights, int batch, int streams, int kv_pages)
{
    return open_engine_mla(preset, weights, batch, streams, kv_pages, ENG_MLA_AUTO);
}

enum { NLAT = 4 * 3 * 4 * 6, NCH = 3 };

/* Generate NCH chunks for one stream alone; latents into out[NCH][NLAT]. */
static void alone(eng_engine_t *e, uint64_t seed, const char *prompt, float out[][NLAT])
{
    eng_stream_t *s = NULL;
    CHECK(eng_stream_open(e, seed, prompt, &s) == ENG_OK, "open");
    for (int c = 0; c < NCH && s; c++) {
        CHECK(eng_generate_chunk(e, &s, 1) == ENG_OK, "chunk: %s", eng_error(e));
        eng_stream_last_latent(s, out[c], NLAT);
    }
    eng_stream_close(s);
}

static double maxdiff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* Step streams s[0..n) in one batch, each leaving it once it has NCH chunks, until all have them;
 * chunk c of stream i's latent into out[i][c]. */
static void step_together(eng_engine_t *e, eng_stream_t **s, int n, float (*out)[NCH][NLAT])
{
    int got[8] = {0}, left = n;
    for (int guard = 0; guard < 200 && left > 0; guard++) {
        eng_stream_t *run[8];
        int nr = 0;
        for (int i = 0; i < n; i++)
            if (got[i] < NCH)
                run[nr++] = s[i];
        CHECK(eng_step(e, run, nr) == ENG_OK, "batched step: %s", eng_error(e));
        for (int i = 0; i < n; i++)
            if (got[i] < NCH && eng_stream_take_frames(s[i])) {
                eng_stream_last_latent(s[i], out[i][got[i]++], NLAT);
                left -= got[i] == NCH;
            }
    }
    CHECK(left == 0, "every stream made its %d chunks", NCH);
}

static void test_determinism_and_batching(const char *preset)
{
    printf("%s: determinism and batching\n", preset);
    static float a[NCH][NLAT], b[NCH][NLAT], c[NCH][NLAT], d[NCH][NLAT], bat[3][NCH][NLAT];
    eng_engine_t *e = open_engine(preset, NULL, 3, 3, 0);
    if (!e)
        return;
    alone(e, 11, "a blue circle", a);
    alone(e, 11, "a blue circle", b);
    CHECK(!memcmp(a, b, sizeof a), "same seed and prompt: bitwise the same latents");
    alone(e, 12, "a blue circle", c);
    CHECK(maxdiff(a[0], c[0], NLAT) > 0.1, "another seed: another video");
    alone(e, 11, "a green star", d);
    CHECK(maxdiff(a[0], d[0], NLAT) > 1e-3, "another prompt: another video");

    /* batched: three streams, the second joining two passes late (different steps in a batch) */
    eng_stream_t *s[3] = {0};
    uint64_t seeds[3] = {11, 12, 11};
    const char *prompts[3] = {"a blue circle", "a blue circle", "a green star"};
    for (int i = 0; i < 3; i++)
        CHECK(eng_stream_open(e, seeds[i], prompts[i], &s[i]) == ENG_OK, "open %d", i);
    eng_stream_t *first[2] = {s[0], s[2]};
    CHECK(eng_step(e, first, 2) == ENG_OK && eng_step(e, first, 2) == ENG_OK, "two passes without stream 1");
    step_together(e, s, 3, bat);
    double d0 = 0, d1 = 0, d2 = 0;
    for (int ch = 0; ch < NCH; ch++) {
        d0 = fmax(d0, maxdiff(bat[0][ch], a[ch], NLAT));
        d1 = fmax(d1, maxdiff(bat[1][ch], c[ch], NLAT));
        d2 = fmax(d2, maxdiff(bat[2][ch], d[ch], NLAT));
    }
    printf("  batched vs alone, max |diff| over %d chunks: %.3g %.3g %.3g\n", NCH, d0, d1, d2);
    CHECK(d0 < 1e-5 && d1 < 1e-5 && d2 < 1e-5, "batched (at different steps) equals alone");
    CHECK(eng_step(e, (eng_stream_t *[]){s[0], s[0]}, 2) == ENG_ERR_ARG, "a stream listed twice is refused");
    CHECK(eng_step(e, s, 0) == ENG_ERR_ARG, "an empty batch is refused");
    eng_stream_t *extra = NULL;
    CHECK(eng_stream_open(e, 1, "x", &extra) == ENG_ERR_LIMIT && !extra, "a fourth stream exceeds the slots");
    for (int i = 0; i < 3; i++)
        eng_stream_close(s[i]);
    CHECK(eng_kv_pool_free_bytes(e) == eng_kv_pool_bytes(e), "closing streams returns every page");
    eng_close(e);
}

/* The MLA layout's two attention forms (absorbing the up-projections into the query and output, or
 * rebuilding per-head keys and values from the latent) are the same function: the same latents on
 * the CPU in f32 over several chunks (the window fills and wraps), batched or alone. */
static void test_mla_forms(void)
{
    printf("tiny-test-mla: absorb vs rebuild\n");
    static float lat[2][NCH][NLAT], bat[NCH][NLAT];
    eng_engine_t *e[2] = {0};
    for (int f = 0; f < 2; f++) {
        e[f] = open_engine_mla("tiny-test-mla", NULL, 2, 2, 0, f ? ENG_MLA_REBUILD : ENG_MLA_ABSORB);
        if (!e[f])
            return;
        alone(e[f], 21, "a red square moving left", lat[f]);
    }
    double d = 0;
    for (int ch = 0; ch < NCH; ch++)
        d = fmax(d, maxdiff(lat[0][ch], lat[1][ch], NLAT));
    printf("  absorb vs rebuild, max |diff| over %d chunks: %.3g\n", NCH, d);
    CHECK(d < 1e-4, "absorbing and rebuilding give the same latents (max |diff| %.3g)", d);
    CHECK(maxdiff(lat[0][0], lat[0][NCH - 1], NLAT) > 1e-2, "the chunks differ (the test is not vacuous)");
    /* rebuilding, two streams batched at different passes */
    eng_stream_t *s[2] = {0};
    CHECK(eng_stream_open(e[1], 21, "a red square moving left", &s[0]) == ENG_OK &&
              eng_stream_open(e[1], 22, "a green cross moving up", &s[1]) == ENG_OK,
          "open two");
    CHECK(eng_step(e[1], &s[1], 1) == ENG_OK, "one pass of the second stream alone");
    int got = 0;
    for (int guard = 0; guard < 100 && got < NCH; guard++) {
        CHECK(eng_step(e[1], s, 2) == ENG_OK, "batched rebuild step: %s", eng_error(e[1]));
        if (eng_stream_take_frames(s[0]))
            eng_stream_last_latent(s[0], bat[got++], NLAT);
    }
    d = 0;
    for (int ch = 0; ch < NCH; ch++)
        d = fmax(d, maxdiff(bat[ch], lat[1][ch], NLAT));
    CHECK(d < 1e-5, "rebuild batched at different passes equals alone (max |diff| %.3g)", d);
    for (int i = 0; i < 2; i++)
        eng_stream_close(s[i]);
    /* the same with room for one window at a time (each stream its own rebuild GEMM), and with
     * both streams at the same pass (their windows one block: one batched attention) */
    setenv("VMLA_MLA_REBUILD_BYTES", "1", 1);
    eng_engine_t *e1 = open_engine_mla("tiny-test-mla", NULL, 2, 2, 0, ENG_MLA_REBUILD);
    unsetenv("VMLA_MLA_REBUILD_BYTES");
    eng_engine_t *es[2] = {e1, e[1]};
    for (int k = 0; k < 2 && e1; k++) {
        CHECK(eng_stream_open(es[k], 21, "a red square moving left", &s[0]) == ENG_OK &&
                  eng_stream_open(es[k], 21, "a red square moving left", &s[1]) == ENG_OK,
              "open two");
        if (k == 0)
            CHECK(eng_step(es[k], &s[1], 1) == ENG_OK, "one pass of the second stream alone");
        got = 0;
        for (int guard = 0; guard < 100 && got < NCH; guard++) {
            CHECK(eng_step(es[k], s, 2) == ENG_OK, "batched rebuild step: %s", eng_error(es[k]));
            if (eng_stream_take_frames(s[0]))
                eng_stream_last_latent(s[0], bat[got++], NLAT);
        }
        d = 0;
        for (int ch = 0; ch < NCH; ch++)
            d = fmax(d, maxdiff(bat[ch], lat[1][ch], NLAT));
        CHECK(d < 1e-5, "rebuild batched (%s) equals alone (max |diff| %.3g)",
              k == 0 ? "one window at a time" : "same pass", d);
        for (int i = 0; i < 2; i++)
            eng_stream_close(s[i]);
    }
    eng_close(e1);
    eng_close(e[0]);
    eng_close(e[1]);
}

/* The MLA rebuild cache: a chunk's context rebuilt at its first pass and kept for the others gives
 * the latents of rebuilding it every pass — alone, with a cache of one slot for two streams batched
 * at different passes (slots taken, freed at a chunk's last pass, evicted), and off. */
static void test_rebuild_cache(void)
{
    printf("tiny-test-mla: rebuild cache\n");
    static float off[2][NCH][NLAT], on[NCH][NLAT], bat[2][NCH][NLAT];
    const char *prompt[2] = {"a red square moving left", "a green cross moving up"};
    setenv("VMLA_MLA_REBUILD_CACHE_BYTES", "0", 1);
    eng_engine_t *e0 = open_engine_mla("tiny-test-mla", NULL, 2, 2, 0, ENG_MLA_REBUILD);
    unsetenv("VMLA_MLA_REBUILD_CACHE_BYTES");
    eng_engine_t *e1 = open_engine_mla("tiny-test-mla", NULL, 2, 2, 0, ENG_MLA_REBUILD);
    if (!e0 || !e1)
        goto out;
    /* a budget that is not a byte count is refused at open, with the variable named */
    const char *bad[3] = {"6G", "-1", "12x"};
    for (int k = 0; k < 3; k++) {
        eng_config c;
        char err[256] = "";
        eng_config_preset(&c, "tiny-test-mla", err, sizeof err);
        eng_options o;
        eng_options_default(&o);
        o.mla_attention = ENG_MLA_REBUILD;
        eng_engine_t *eb = NULL;
        setenv("VMLA_MLA_REBUILD_CACHE_BYTES", bad[k], 1);
        eng_status st = eng_open(&eb, be, &c, &o, err, sizeof err);
        unsetenv("VMLA_MLA_REBUILD_CACHE_BYTES");
        CHECK(st == ENG_ERR_ARG && !eb && strstr(err, "VMLA_MLA_REBUILD_CACHE_BYTES"),
              "VMLA_MLA_REBUILD_CACHE_BYTES=%s refused: %d '%s'", bad[k], (int)st, err);
        eng_close(eb);
    }
    int slots;
    size_t slot_bytes;
    int64_t reuses;
    eng_rebuild_cache_stats(e0, &slots, &slot_bytes, &reuses);
    CHECK(slots == 0 && slot_bytes == 0, "a budget of 0 bytes: no cache (%d slots)", slots);
    for (int k = 0; k < 2; k++)
        alone(e0, 21 + k, prompt[k], off[k]);
    eng_rebuild_cache_stats(e1, &slots, &slot_bytes, &reuses);
    CHECK(slots == 2 && slot_bytes > 0, "the default budget holds a slot for each of max_batch 2 (%d)", slots);
    alone(e1, 21, prompt[0], on);
    double d = 0;
    for (int ch = 0; ch < NCH; ch++)
        d = fmax(d, maxdiff(on[ch], off[0][ch], NLAT));
    int64_t r1;
    eng_rebuild_cache_stats(e1, &slots, &slot_bytes, &r1);
    printf("  cached vs rebuilt every pass, max |diff| over %d chunks: %.3g (%lld passes reused a context)\n", NCH,
           d, (long long)r1);
    CHECK(d < 1e-5, "the cache gives the latents of rebuilding every pass (max |diff| %.3g)", d);
    CHECK(r1 >= 4 * (NCH - 1), "later passes reused the chunk's context (%lld)", (long long)r1);
    eng_close(e1);
    /* one slot for two streams: batched (at different passes) a forward has more streams than
     * slots, so none uses the cache and nothing is reused; one chunk at a time, alternating
     * streams, every chunk takes the slot (freed at the previous chunk's end) and its four later
     * passes reuse it. Both ways, each stream's latents are those of rebuilding every pass. */
    char b[32];
    snprintf(b, sizeof b, "%zu", slot_bytes);
    setenv("VMLA_MLA_REBUILD_CACHE_BYTES", b, 1);
    e1 = open_engine_mla("tiny-test-mla", NULL, 2, 2, 0, ENG_MLA_REBUILD);
    unsetenv("VMLA_MLA_REBUILD_CACHE_BYTES");
    if (!e1)
        goto out;
    eng_rebuild_cache_stats(e1, &slots, &slot_bytes, &reuses);
    CHECK(slots == 1, "a budget of one slot: one slot (%d)", slots);
    for (int way = 0; way < 2; way++) {
        eng_stream_t *s[2] = {0};
        CHECK(eng_stream_open(e1, 21, prompt[0], &s[0]) == ENG_OK &&
                  eng_stream_open(e1, 22, prompt[1], &s[1]) == ENG_OK,
              "open two");
        if (!s[0] || !s[1])
            break;
        int64_t r0;
        eng_rebuild_cache_stats(e1, &slots, &slot_bytes, &r0);
        if (way == 0) {
            CHECK(eng_step(e1, &s[1], 1) == ENG_OK, "one pass of the second stream alone");
            step_together(e1, s, 2, bat);
        } else {
            for (int ch = 0; ch < NCH; ch++)
                for (int k = 0; k < 2; k++) {
                    CHECK(eng_generate_chunk(e1, &s[k], 1) == ENG_OK, "chunk: %s", eng_error(e1));
                    eng_stream_last_latent(s[k], bat[k][ch], NLAT);
                }
        }
        d = 0;
        for (int k = 0; k < 2; k++)
            for (int ch = 0; ch < NCH; ch++)
                d = fmax(d, maxdiff(bat[k][ch], off[k][ch], NLAT));
        eng_rebuild_cache_stats(e1, &slots, &slot_bytes, &reuses);
        printf("  two streams, one slot, %s vs alone: max |diff| %.3g (%lld reuses)\n",
               way ? "a chunk at a time" : "batched", d, (long long)(reuses - r0));
        CHECK(d < 1e-5, "one slot for two streams (%s): each equals alone (max |diff| %.3g)",
              way ? "a chunk at a time" : "batched", d);
        if (way == 0)
            CHECK(reuses == r0, "a batch with more streams than slots uses no slot (%lld reuses)",
                  (long long)(reuses - r0));
        else
            CHECK(reuses - r0 == 8 * NCH, "each chunk's four later passes reused its context (%lld of %d)",
                  (long long)(reuses - r0), 8 * NCH);
        for (int k = 0; k < 2; k++)
            eng_stream_close(s[k]);
    }
out:
    eng_close(e0);
    eng_close(e1);
}

static void test_prompt_switch(void)
{
    printf("prompt switch\n");
    static float base[NCH][NLAT], other[NCH][NLAT], sw[NCH][NLAT];
    eng_engine_t *e = open_engine("tiny-test-mla", NULL, 1, 1, 0);
    if (!e)
        return;
    alone(e, 3, "a red square", base);
    alone(e, 3, "a yellow triangle", other);
    eng_stream_t *s = NULL;
    eng_stream_open(e, 3, "a red square", &s);
    eng_generate_chunk(e, &s, 1);
    eng_stream_last_latent(s, sw[0], NLAT);
    eng_step(e, &s, 1); /* chunk 1 has started with the old prompt */
    eng_stream_set_prompt(s, "a yellow triangle");
    eng_generate_chunk(e, &s, 1);
    eng_stream_last_latent(s, sw[1], NLAT);
    eng_generate_chunk(e, &s, 1);
    eng_stream_last_latent(s, sw[2], NLAT);
    CHECK(maxdiff(sw[1], base[1], NLAT) == 0, "the chunk in progress finishes with the old prompt");
    CHECK(maxdiff(sw[2], base[2], NLAT) > 1e-3, "the next chunk uses the new prompt");
    CHECK(maxdiff(sw[2], other[2], NLAT) > 1e-4, "with the old prompt's frames still in the cache");
    eng_stream_close(s);
    eng_close(e);
}

static void test_limits_and_accounting(void)
{
    printf("limits and accounting\n");
    /* a pool for exactly one stream (sink 1 + window 4 frames, one page a frame) */
    eng_engine_t *e = open_engine("tiny-test", NULL, 2, 2, 5);
    if (!e)
        return;
    eng_stream_t *a = NULL, *b = NULL;
    eng_stream_open(e, 1, "a", &a);
    eng_stream_open(e, 2, "b", &b);
    CHECK(eng_generate_chunk(e, &a, 1) == ENG_OK && eng_generate_chunk(e, &a, 1) == ENG_OK, "stream a runs");
    CHECK(eng_generate_chunk(e, &b, 1) == ENG_ERR_POOL, "stream b: pool exhausted");
    CHECK(strstr(eng_error(e), "pages") != NULL, "message: %s", eng_error(e));
    CHECK(eng_generate_chunk(e, &a, 1) == ENG_OK, "stream a keeps running");
    eng_stream_close(a);
    CHECK(eng_generate_chunk(e, &b, 1) == ENG_OK, "stream b runs once a has closed");
    eng_stream_close(b);
    CHECK(eng_kv_bytes_per_token_layer(e) == 2 * 64 * 4, "mha f32: %.1f bytes a token a layer",
          eng_kv_bytes_per_token_layer(e));
    eng_close(e);
    e = open_engine("tiny-test-mla", NULL, 1, 1, 0);
    CHECK(e && eng_kv_bytes_per_token_layer(e) == (24 + 8) * 4, "mla f32: %.1f bytes", eng_kv_bytes_per_token_layer(e));
    eng_close(e);

    /* frame limit */
    eng_config c;
    char err[256];
    eng_config_preset(&c, "tiny-test", err, sizeof err);
    c.max_frames = 6;
    eng_options o;
    eng_options_default(&o);
    e = NULL;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_OK, "open");
    eng_stream_t *s = NULL;
    eng_stream_open(e, 1, "a", &s);
    CHECK(eng_generate_chunk(e, &s, 1) == ENG_OK && eng_generate_chunk(e, &s, 1) == ENG_OK, "two chunks fit");
    CHECK(eng_generate_chunk(e, &s, 1) == ENG_ERR_LIMIT && eng_stream_status(s) == ENG_ERR_LIMIT,
          "the third passes max_frames: %s", eng_stream_error(s));
    CHECK(eng_step(e, &s, 1) == ENG_OK && eng_stream_status(s) == ENG_ERR_LIMIT, "a failed stream stays failed");
    eng_stream_close(s);
    eng_close(e);

    /* bad options */
    o.max_batch = 0;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_ERR_ARG && !e, "max_batch 0 refused: %s", err);
    eng_options_default(&o);
    o.page_tokens = 5;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_ERR_ARG, "page not dividing a frame: %s", err);
    eng_options_default(&o);
    o.latent_h = 3;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_ERR_ARG, "odd latent size: %s", err);
}

/* ---- weight files ------------------------------------------------------------------------------ */

/* Rewrite the golden weight file with a change: drop `drop`, reshape `reshape`, or store in bf16. */
static int rewrite(const char *src, const char *dst, const char *drop, const char *reshape, int bf16, int i32)
{
    char err[256];
    st_file_t *f = NULL;
    if (st_open(&f, src, err, sizeof err) != ST_OK)
        return -1;
    int n = st_count(f), k = 0;
    st_write_tensor *t = calloc((size_t)n, sizeof *t);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    for (int i = 0; i < n; i++) {
        const st_tensor *s = st_at(f, i);
        if (drop && !strcmp(s->name, drop))
            continue;
        st_write_tensor *w = &t[k++];
        w->name = s->name;
        w->dtype = s->dtype;
        w->ndim = s->ndim;
        memcpy(w->shape, s->shape, sizeof w->shape);
        w->data = s->data;
        if (reshape && !strcmp(s->name, reshape))
            w->shape[0] -= 1; /* fewer rows, fewer bytes: a consistent but wrong file */
        if (reshape && !strcmp(s->name, reshape)) {
            w->ndim = s->ndim;
        }
        if ((bf16 || (i32 && !strcmp(s->name, i32 == 1 ? "head.head.bias" : ""))) && s->dtype == ST_F32) {
            float *v = malloc(sizeof(float) * (size_t)s->nelem);
            st_to_f32(s, v, (size_t)s->nelem);
            if (bf16) {
                uint16_t *h = malloc(2 * (size_t)s->nelem);
                for (int64_t j = 0; j < s->nelem; j++)
                    h[j] = kn_f32_to_bf16(v[j]);
                free(v);
                bufs[i] = h;
                w->dtype = ST_BF16;
            } else {
                bufs[i] = v;
                w->dtype = ST_I32;
            }
            w->data = bufs[i];
        }
    }
    st_status st = st_write(dst, t, k, NULL, err, sizeof err);
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(t);
    st_close(f);
    return st == ST_OK ? 0 : -1;
}

static void expect_load_error(const char *path, const char *preset, const char *needle)
{
    eng_config c;
    char err[512] = "";
    eng_config_preset(&c, preset, err, sizeof err);
    eng_options o;
    eng_options_default(&o);
    o.weights = path;
    eng_engine_t *e = NULL;
    eng_status st = eng_open(&e, be, &c, &o, err, sizeof err);
    CHECK(st == ENG_ERR_LOAD && !e && strstr(err, needle), "load %s: status %d, message '%s' (want '%s')", path,
          st, err, needle);
    printf("  refused as expected: %s\n", err);
}

static void test_weight_files(void)
{
    printf("weight files\n");
    char good[600], p[600];
    snprintf(good, sizeof good, "%s/tiny-mha.safetensors", gdir);
    snprintf(p, sizeof p, "%s/missing.safetensors", tmpdir);
    CHECK(rewrite(good, p, "blocks.1.ffn.0.bias", NULL, 0, 0) == 0, "write");
    expect_load_error(p, "tiny-test", "blocks.1.ffn.0.bias");
    snprintf(p, sizeof p, "%s/shape.safetensors", tmpdir);
    CHECK(rewrite(good, p, NULL, "blocks.0.self_attn.q.weight", 0, 0) == 0, "write");
    expect_load_error(p, "tiny-test", "blocks.0.self_attn.q.weight");
    snprintf(p, sizeof p, "%s/dtype.safetensors", tmpdir);
    CHECK(rewrite(good, p, NULL, NULL, 0, 1) == 0, "write");
    expect_load_error(p, "tiny-test", "head.head.bias");
    expect_load_error(good, "tiny-test-mla", "blocks.0.self_attn.q_rope.weight"); /* the MHA file as MLA */
    snprintf(p, sizeof p, "%s/none.safetensors", tmpdir);
    expect_load_error(p, "tiny-test", "none.safetensors");
    /* truncated */
    snprintf(p, sizeof p, "%s/trunc.safetensors", tmpdir);
    FILE *in = fopen(good, "rb"), *out = fopen(p, "wb");
    char buf[4096];
    size_t total = 0, n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0 && total < 300000) {
        fwrite(buf, 1, n, out);
        total += n;
    }
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    expect_load_error(p, "tiny-test", "trunc.safetensors");

    /* bf16 weights load and give nearly the f32 result */
    snprintf(p, sizeof p, "%s/bf16.safetensors", tmpdir);
    CHECK(rewrite(good, p, NULL, NULL, 1, 0) == 0, "write bf16");
    static float a[NCH][NLAT], b[NCH][NLAT];
    eng_engine_t *e = open_engine("tiny-test", good, 1, 1, 0);
    if (e)
        alone(e, 9, "a red square", a);
    eng_close(e);
    e = open_engine("tiny-test", p, 1, 1, 0);
    if (e)
        alone(e, 9, "a red square", b);
    eng_close(e);
    double d = maxdiff(a[0], b[0], NLAT), ref = 0;
    for (int i = 0; i < NLAT; i++)
        ref = fmax(ref, fabs(a[0][i]));
    printf("  bf16 weights vs f32: max |diff| %.3g (max |x| %.3g)\n", d, ref);
    CHECK(d > 0 && d < 0.05 * ref, "bf16 weights: close to f32, not identical");
}

static float cnoise_val;
static void const_noise(void *user, uint64_t seed, uint32_t chunk, uint32_t draw, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = cnoise_val * (float)((i % 7) - 3);
}

/* Philox noise for chunk 0, const_noise after */
static void philox_then_const(void *user, uint64_t seed, uint32_t chunk, uint32_t draw, float *out, size_t n)
{
    if (chunk == 0)
        eng_noise(seed, chunk, draw, out, n);
    else
        const_noise(user, seed, chunk, draw, out, n);
}

static void test_kv_dtype_noise_frames(void)
{
    printf("bf16 KV storage, injected noise, frames\n");
    eng_config c;
    char err[256];
    eng_config_preset(&c, "tiny-test-mla", err, sizeof err);
    eng_options o;
    eng_options_default(&o);
    eng_engine_t *e32 = NULL, *e16 = NULL;
    eng_open(&e32, be, &c, &o, err, sizeof err);
    o.kv_dtype = KN_BF16;
    CHECK(eng_open(&e16, be, &c, &o, err, sizeof err) == ENG_OK, "bf16 pool: %s", err);
    if (!e32 || !e16)
        return;
    CHECK(eng_kv_bytes_per_token_layer(e16) * 2 == eng_kv_bytes_per_token_layer(e32), "bf16 halves the pool");
    static float a[NCH][NLAT], b[NCH][NLAT];
    alone(e32, 4, "a red square", a);
    alone(e16, 4, "a red square", b);
    double d = maxdiff(a[2], b[2], NLAT);
    printf("  bf16 KV vs f32 KV after 3 chunks: max |diff| %.3g\n", d);
    CHECK(d > 0 && d < 0.1, "bf16 KV is close to f32 KV");
    eng_close(e16);

    eng_stream_t *s = NULL;
    eng_stream_open(e32, 4, "a red square", &s);
    cnoise_val = 0.5f;
    eng_stream_set_noise(s, const_noise, NULL);
    eng_generate_chunk(e32, &s, 1);
    eng_stream_last_latent(s, b[0], NLAT);
    eng_stream_close(s);
    eng_stream_open(e32, 999, "a red square", &s); /* the seed does not matter with injected noise */
    eng_stream_set_noise(s, const_noise, NULL);
    eng_generate_chunk(e32, &s, 1);
    eng_stream_last_latent(s, b[1], NLAT);
    CHECK(!memcmp(b[0], b[1], sizeof b[0]), "injected noise decides the output");
    CHECK(maxdiff(b[0], a[0], NLAT) > 0.1, "and differs from Philox noise");
    const eng_frames *fr = eng_stream_take_frames(s);
    CHECK(fr && fr->n_frames == 12 && fr->width == 48 && fr->height == 32 && fr->fps == 16, "12 frames of 48x32");
    if (fr) {
        double sum = 0, ss = 0;
        size_t n = (size_t)fr->n_frames * fr->width * fr->height * 3;
        for (size_t i = 0; i < n; i++) {
            sum += fr->rgb[i];
            ss += (double)fr->rgb[i] * fr->rgb[i];
        }
        double mean = sum / n, sd = sqrt(ss / n - mean * mean);
        printf("  frame bytes mean %.1f std %.1f\n", mean, sd);
        CHECK(sd > 2.0 && mean > 5 && mean < 250, "frames are not blank or saturated");
    }
    CHECK(eng_stream_take_frames(s) == NULL, "frames are taken once");
    eng_stream_close(s);
    {
        /* a noise function set between chunks decides the next chunk from its first draw (the
         * engine draws a chunk's first noise early, at the previous chunk's cache pass, and must
         * draw it again): chunk 1 as with a function that was Philox for chunk 0 and const after */
        static float sw[2][NLAT];
        for (int k = 0; k < 2; k++) {
            eng_stream_t *t = NULL;
            CHECK(eng_stream_open(e32, 7, "a red square", &t) == ENG_OK, "open: %s", eng_error(e32));
            if (!t)
                break;
            if (k == 0)
                eng_stream_set_noise(t, philox_then_const, NULL);
            CHECK(eng_generate_chunk(e32, &t, 1) == ENG_OK, "chunk 0");
            if (k == 1)
                eng_stream_set_noise(t, const_noise, NULL);
            CHECK(eng_generate_chunk(e32, &t, 1) == ENG_OK, "chunk 1");
            eng_stream_last_latent(t, sw[k], NLAT);
            eng_stream_close(t);
        }
        CHECK(!memcmp(sw[0], sw[1], sizeof sw[0]), "noise set between chunks is used from the next chunk's first draw");
    }
    eng_close(e32);
}

int main(void)
{
    const char *src = getenv("VMLA_SOURCE_DIR");
    snprintf(gdir, sizeof gdir, "%s/tests/golden", src ? src : ".");
    if (tmpdir_make(tmpdir, sizeof tmpdir, "vmla-test-engine"))
        return 1;
    be = kn_cpu_backend_new();
    test_determinism_and_batching("tiny-test");
    test_determinism_and_batching("tiny-test-mla");
    test_mla_forms();
    test_rebuild_cache();
    test_prompt_switch();
    test_limits_and_accounting();
    test_weight_files();
    test_kv_dtype_noise_frames();
    kn_backend_free(be);
    tmpdir_remove(tmpdir);
    return check_done();
}
