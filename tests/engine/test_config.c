/* tests/engine/test_config.c — the sampler as a property of the model file: the strict parser of
 * "vmla.sampler.steps" / "vmla.sampler.shift" (eng_config_set_sampler) on good and bad text,
 * eng_config_apply_file on files with and without the keys, eng_weights_load refusing a file whose
 * keys are malformed, and the engine running the schedule it was given (a different schedule gives
 * a different chunk; the same one the same chunk). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/safetensors.h"
#include "engine/weights.h"
#include "tests/check.h"
#include "tests/tmpdir.h"

static char tmpdir[256], gdir[512];

static void test_parser_good(void)
{
    char err[256];
    eng_config c;
    eng_config_preset(&c, "tiny", err, sizeof err);
    CHECK(c.n_steps == 6 && c.steps[0] == 1000.0f && c.steps[5] == 167.0f && c.shift == 1.0f, "tiny preset sampler");
    static const char *const others[] = {"tiny-test", "tiny-test-mla", "wan-1.3b", "wan-1.3b-mla"};
    for (int i = 0; i < 4; i++) { /* every other preset keeps the 4 steps 1000..250, shift 5 */
        eng_config d;
        eng_config_preset(&d, others[i], err, sizeof err);
        CHECK(d.n_steps == 4 && d.steps[0] == 1000.0f && d.steps[3] == 250.0f && d.shift == 5.0f,
              "%s keeps the default sampler", others[i]);
    }
    CHECK(eng_config_set_sampler(&c, "1000,875,750,625,500,375,250,125", "1", "t", err, sizeof err) == 0, "8 steps: %s", err);
    CHECK(c.n_steps == 8 && c.steps[7] == 125.0f && c.shift == 1.0f, "8 steps applied");
    CHECK(eng_config_set_sampler(&c, "1000,812.5,1e2", NULL, "t", err, sizeof err) == 0, "decimals: %s", err);
    CHECK(c.n_steps == 3 && c.steps[1] == 812.5f && c.steps[2] == 100.0f && c.steps[3] == 0.0f && c.shift == 1.0f,
          "decimals applied, shift kept, unused steps cleared");
    CHECK(eng_config_set_sampler(&c, NULL, "2.5", "t", err, sizeof err) == 0 && c.n_steps == 3 && c.shift == 2.5f,
          "shift alone: %s", err);
    CHECK(eng_config_set_sampler(&c, "1000", "100", "t", err, sizeof err) == 0 && c.n_steps == 1, "one step: %s", err);
    CHECK(eng_config_set_sampler(&c, "0.5", "0.01", "t", err, sizeof err) == 0 && c.steps[0] == 0.5f, "small: %s", err);
    char st[16 * ENG_MAX_STEPS], sh[32];
    eng_config_set_sampler(&c, "1000,833.25,500,166.5", "3", "t", err, sizeof err);
    eng_config_sampler_text(&c, st, sizeof st, sh, sizeof sh);
    CHECK(!strcmp(st, "1000,833.25,500,166.5") && !strcmp(sh, "3"), "text: '%s' '%s'", st, sh);
    eng_config d;
    eng_config_preset(&d, "tiny", err, sizeof err);
    CHECK(eng_config_set_sampler(&d, st, sh, "t", err, sizeof err) == 0 && d.n_steps == c.n_steps &&
              !memcmp(d.steps, c.steps, sizeof d.steps) && d.shift == c.shift,
          "text reads back: %s", err);
}

static void test_parser_bad(void)
{
    static const struct {
        const char *steps, *shift, *why;
    } bad[] = {
        {"", NULL, "not a number"},          {",", NULL, "not a number"},
        {"1000,", NULL, "not a number"},     {",1000", NULL, "not a number"},
        {"1000,,500", NULL, "not a number"}, {"1000 ,500", NULL, "not a number"},
        {" 1000", NULL, "not a number"},     {"+1000", NULL, "not a number"},
        {"-5", NULL, "not a number"},        {".5", NULL, "not a number"},
        {"1000;750", NULL, "not a number"},  {"0x3e8", NULL, "not a number"},
        {"nan", NULL, "not a number"},       {"inf", NULL, "not a number"},
        {"1e", NULL, "not a number"},        {"1.2.3", NULL, "not a number"},
        {"1000,7e", NULL, "not a number"},   {"1e999", NULL, "not a number"},
        {"1000\n", NULL, "not a number"},    {"0", NULL, "outside"},
        {"1000.5", NULL, "outside"},         {"1001,500", NULL, "outside"},
        {"0.0", NULL, "outside"},            {"1000,1000", NULL, "does not decrease"},
        {"500,750", NULL, "does not decrease"},
        {"1000,900,800,700,600,500,400,300,200", NULL, "more than 8"},
        {"1000,999.99999999", NULL, "steps must decrease"}, /* equal once rounded to float */
        {"1000000000000000000000000000000000000000000000000000000000000000000", NULL, "not a number"},
        {NULL, "", "shift"},                 {NULL, "0", "shift"},
        {NULL, "-1", "shift"},               {NULL, "100.5", "shift"},
        {NULL, "nan", "shift"},              {NULL, "5x", "shift"},
        {NULL, "5 ", "shift"},               {NULL, "5,1", "shift"},
        {"1000,750", "0", "shift"},          /* a good steps list does not survive a bad shift */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        eng_config c, before;
        eng_config_preset(&c, "tiny", err, sizeof err);
        before = c;
        int rc = eng_config_set_sampler(&c, bad[i].steps, bad[i].shift, "FILE", err, sizeof err);
        CHECK(rc == -1 && strstr(err, bad[i].why) && !strncmp(err, "FILE: ", 6),
              "bad sampler steps '%s' shift '%s': rc %d, err '%s' (want '%s')", bad[i].steps ? bad[i].steps : "-",
              bad[i].shift ? bad[i].shift : "-", rc, err, bad[i].why);
        CHECK(!memcmp(&c, &before, sizeof c), "config untouched after a bad sampler (case %zu)", i);
    }
}

/* A copy of tests/golden/tiny-mha.safetensors (complete tiny-test weights) with extra metadata. */
static int copy_with_meta(const char *dst, const char *const *meta)
{
    char src[600], err[256];
    snprintf(src, sizeof src, "%s/tiny-mha.safetensors", gdir);
    st_file_t *f = NULL;
    if (st_open(&f, src, err, sizeof err) != ST_OK) {
        CHECK(0, "open %s: %s", src, err);
        return -1;
    }
    int n = st_count(f);
    st_write_tensor *t = calloc((size_t)n, sizeof *t);
    for (int i = 0; i < n; i++) {
        const st_tensor *s = st_at(f, i);
        t[i].name = s->name;
        t[i].dtype = s->dtype;
        t[i].ndim = s->ndim;
        memcpy(t[i].shape, s->shape, sizeof t[i].shape);
        t[i].data = s->data;
    }
    st_status ss = st_write(dst, t, n, meta, err, sizeof err);
    CHECK(ss == ST_OK, "write %s: %s", dst, err);
    free(t);
    st_close(f);
    return ss == ST_OK ? 0 : -1;
}

static void first_chunk(const eng_config *c, const char *weights, float *lat, size_t n, int *ok, char *err, size_t errlen)
{
    kn_backend_t *be = kn_cpu_backend_new();
    eng_options o;
    eng_options_default(&o);
    o.weights = weights;
    eng_engine_t *e = NULL;
    eng_stream_t *s = NULL;
    *ok = 0;
    if (eng_open(&e, be, c, &o, err, errlen) == ENG_OK && eng_stream_open(e, 77, "a red square", &s) == ENG_OK &&
        eng_generate_chunk(e, &s, 1) == ENG_OK) {
        eng_stream_last_latent(s, lat, n);
        *ok = 1;
    }
    eng_stream_close(s);
    eng_close(e);
    kn_backend_free(be);
}

static void test_files(void)
{
    char p[600], err[512];
    eng_config c, before;
    eng_config_preset(&c, "tiny-test", err, sizeof err);
    before = c;

    /* no keys: the preset's sampler stays */
    snprintf(p, sizeof p, "%s/tiny-mha.safetensors", gdir);
    CHECK(eng_config_apply_file(&c, p, err, sizeof err) == 0 && !memcmp(&c, &before, sizeof c),
          "file without sampler keys: %s", err);

    /* good keys */
    const char *good[] = {"preset", "tiny-test", ENG_META_SAMPLER_STEPS, "1000,750,500", ENG_META_SAMPLER_SHIFT, "2", NULL};
    snprintf(p, sizeof p, "%s/good.safetensors", tmpdir);
    char good_path[600];
    snprintf(good_path, sizeof good_path, "%s", p);
    if (!copy_with_meta(p, good)) {
        CHECK(eng_config_apply_file(&c, p, err, sizeof err) == 0, "good keys: %s", err);
        CHECK(c.n_steps == 3 && c.steps[2] == 500.0f && c.shift == 2.0f, "good keys applied");
    }

    /* only one key: the other part stays */
    const char *one[] = {ENG_META_SAMPLER_SHIFT, "3", NULL};
    snprintf(p, sizeof p, "%s/one.safetensors", tmpdir);
    if (!copy_with_meta(p, one)) {
        eng_config d = before;
        CHECK(eng_config_apply_file(&d, p, err, sizeof err) == 0 && d.n_steps == 4 && d.shift == 3.0f,
              "shift key alone: %s", err);
    }

    /* malformed keys: eng_config_apply_file and eng_open both refuse, naming the file and key */
    const char *bad[][2] = {{ENG_META_SAMPLER_STEPS, "1000,750,"}, {ENG_META_SAMPLER_STEPS, "250,500"},
                            {ENG_META_SAMPLER_STEPS, "1000,900,800,700,600,500,400,300,200"},
                            {ENG_META_SAMPLER_SHIFT, "five"}, {ENG_META_SAMPLER_SHIFT, "-5"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *meta[] = {bad[i][0], bad[i][1], NULL};
        snprintf(p, sizeof p, "%s/bad%zu.safetensors", tmpdir, i);
        if (copy_with_meta(p, meta))
            continue;
        eng_config d = before;
        err[0] = 0;
        CHECK(eng_config_apply_file(&d, p, err, sizeof err) == -1 && strstr(err, p) &&
                  strstr(err, !strcmp(bad[i][0], ENG_META_SAMPLER_STEPS) ? "steps" : "shift") &&
                  !memcmp(&d, &before, sizeof d),
              "bad key %s='%s': %s", bad[i][0], bad[i][1], err);
        float lat[4];
        int ok;
        err[0] = 0;
        first_chunk(&before, p, lat, 4, &ok, err, sizeof err);
        CHECK(!ok && strstr(err, p), "eng_open with %s='%s' must fail: '%s'", bad[i][0], bad[i][1], err);
    }

    /* unreadable file */
    snprintf(p, sizeof p, "%s/absent.safetensors", tmpdir);
    eng_config d = before;
    CHECK(eng_config_apply_file(&d, p, err, sizeof err) == -1 && strstr(err, "absent") && !memcmp(&d, &before, sizeof d),
          "absent file: %s", err);

    /* the engine runs the schedule it is given: the file's keys (3 steps, shift 2) change the chunk;
     * the same schedule given as text on the preset's config gives the same chunk */
    enum { N = 4 * 3 * 4 * 6 };
    static float a[N], b[N], f[N];
    int oka, okb, okf;
    snprintf(p, sizeof p, "%s/tiny-mha.safetensors", gdir);
    first_chunk(&before, p, a, N, &oka, err, sizeof err);
    CHECK(oka, "default schedule: %s", err);
    first_chunk(&c, good_path, f, N, &okf, err, sizeof err);
    CHECK(okf, "file's schedule: %s", err);
    eng_config t = before;
    eng_config_set_sampler(&t, "1000,750,500", "2", "t", err, sizeof err);
    first_chunk(&t, p, b, N, &okb, err, sizeof err);
    CHECK(okb, "text schedule: %s", err);
    if (oka && okb && okf) {
        double dab = 0, dbf = 0;
        for (int i = 0; i < N; i++) {
            dab = fmax(dab, fabs((double)a[i] - b[i]));
            dbf = fmax(dbf, fabs((double)b[i] - f[i]));
        }
        CHECK(dab > 1e-3, "another schedule must give another chunk (max |diff| %g)", dab);
        CHECK(dbf == 0.0, "the file's schedule and the same text must agree (max |diff| %g)", dbf);
    }
}

int main(void)
{
    const char *src = getenv("VMLA_SOURCE_DIR");
    snprintf(gdir, sizeof gdir, "%s/tests/golden", src ? src : ".");
    if (tmpdir_make(tmpdir, sizeof tmpdir, "vmla-test-config"))
        return 1;
    test_parser_good();
    test_parser_bad();
    test_files();
    tmpdir_remove(tmpdir);
    return check_done();
}
