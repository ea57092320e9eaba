/* engine/config.c — presets (docs/MODEL.md §1) and their consistency checks. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config.h"

static void sampler_defaults(eng_config *c)
{
    c->chunk_frames = 3;
    c->n_steps = 4;
    c->steps[0] = 1000.0f;
    c->steps[1] = 750.0f;
    c->steps[2] = 500.0f;
    c->steps[3] = 250.0f;
    c->shift = 5.0f;
    c->eps = 1e-6f;
    c->rope_theta = 10000.0;
    c->max_frames = 1024;
    c->fps = 16;
}

static void tiny_test(eng_config *c)
{
    c->dim = 64;
    c->heads = 4;
    c->head_dim = 16;
    c->layers = 2;
    c->ffn_dim = 128;
    c->freq_dim = 32;
    c->in_ch = 4;
    c->text_dim = 32;
    c->text_len = 8;
    c->d_c = 24;
    c->d_r = 8;
    c->vocab = 64;
    c->dec_ch = 8;
    c->dec_up = 3;
    c->dec_t_up = 4;
    c->window = 4;
    c->sink = 1;
    c->latent_h = 4;
    c->latent_w = 6;
}

static void wan13(eng_config *c)
{
    c->dim = 1536;
    c->heads = 12;
    c->head_dim = 128;
    c->layers = 30;
    c->ffn_dim = 8960;
    c->freq_dim = 256;
    c->in_ch = 16;
    c->text_dim = 4096;
    c->text_len = 512;
    c->d_c = 160;
    c->d_r = 64;
    c->vocab = 256; /* stand-in embedding table until umT5 is wired in */
    c->dec_ch = 16;
    c->dec_up = 3;
    c->dec_t_up = 4;
    c->window = 6;
    c->sink = 1;
    c->latent_h = 60;
    c->latent_w = 104;
}

/* The bundled model (models/README.md): 96x96 video, small enough for real time on a CPU. */
static void tiny(eng_config *c)
{
    c->dim = 256;
    c->heads = 4;
    c->head_dim = 64;
    c->layers = 6;
    c->ffn_dim = 768;
    c->freq_dim = 128;
    c->in_ch = 8;
    c->text_dim = 128;
    c->text_len = 12;
    /* latent 32 + RoPE key 64 = 96 cached values a token a layer (per-head: 2 x 4 x 64 = 512).
     * Until the fourth training round d_c 64 / d_r 32: a 32-wide RoPE key (5 spatial frequencies
     * an axis) left the model unable to place objects (models/README.md) */
    c->d_c = 32;
    c->d_r = 64;
    c->vocab = 64;
    c->text_pos = 1;
    c->dec_ch = 32;
    c->dec_up = 3;
    c->dec_t_up = 4;
    c->window = 6;
    c->sink = 1;
    c->latent_h = 12;
    c->latent_w = 12;
    /* the sampler the bundled models were trained for (models/README.md), also in their files'
     * vmla.sampler.* metadata: 6 steps ending at sigma' 0.167, not the 4 distilled-model steps
     * ending at 0.625, after which these MSE-trained models' objects are still blurred */
    static const float steps[] = {1000.0f, 833.0f, 667.0f, 500.0f, 333.0f, 167.0f};
    c->n_steps = 6;
    memcpy(c->steps, steps, sizeof steps);
    c->shift = 1.0f;
}

const char *eng_config_presets(void) { return "tiny tiny-mha tiny-test tiny-test-mla wan-1.3b wan-1.3b-mla"; }

int eng_config_preset(eng_config *c, const char *name, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    sampler_defaults(c);
    if (!strcmp(name, "tiny") || !strcmp(name, "tiny-mha")) {
        tiny(c);
        c->layout = strcmp(name, "tiny") ? ENG_LAYOUT_MHA : ENG_LAYOUT_MLA;
    } else if (!strcmp(name, "tiny-test") || !strcmp(name, "tiny-test-mla")) {
        tiny_test(c);
        c->layout = strcmp(name, "tiny-test") ? ENG_LAYOUT_MLA : ENG_LAYOUT_MHA;
    } else if (!strcmp(name, "wan-1.3b") || !strcmp(name, "wan-1.3b-mla")) {
        wan13(c);
        c->layout = strcmp(name, "wan-1.3b") ? ENG_LAYOUT_MLA : ENG_LAYOUT_MHA;
    } else {
        snprintf(err, errlen, "unknown preset '%s' (known: %s)", name, eng_config_presets());
        return -1;
    }
    snprintf(c->preset, sizeof c->preset, "%s", name);
    return 0;
}

const char *eng_layout_name(eng_layout l) { return l == ENG_LAYOUT_MLA ? "mla" : "mha"; }

int eng_config_kv_width(const eng_config *c)
{
    return c->layout == ENG_LAYOUT_MLA ? c->d_c + c->d_r : 2 * c->heads * c->head_dim;
}

int eng_config_validate(const eng_config *c, char *err, size_t errlen)
{
#define BAD(...)                                                                                  \
    do {                                                                                          \
        snprintf(err, errlen, __VA_ARGS__);                                                       \
        return -1;                                                                                \
    } while (0)
    if (c->dim <= 0 || c->heads <= 0 || c->head_dim <= 0 || c->layers <= 0 || c->ffn_dim <= 0)
        BAD("config: dim, heads, head_dim, layers, ffn_dim must be positive");
    if (c->layout == ENG_LAYOUT_MHA && c->heads * c->head_dim != c->dim)
        BAD("config: heads x head_dim (%d) must equal dim (%d) for the per-head layout",
            c->heads * c->head_dim, c->dim);
    if (c->head_dim % 2 || c->head_dim < 6 || c->head_dim > 1024)
        BAD("config: head_dim must be even, 6..1024");
    if (c->layout == ENG_LAYOUT_MLA && (c->d_c <= 0 || c->d_r < 6 || c->d_r % 2 || c->d_r > 1024))
        BAD("config: MLA needs d_c > 0 and an even d_r in 6..1024");
    if (c->dim % c->heads)
        BAD("config: dim must be a multiple of heads (cross-attention)");
    if (c->freq_dim <= 0 || c->freq_dim % 2 || c->in_ch <= 0 || c->text_dim <= 0 || c->text_len <= 0)
        BAD("config: freq_dim (even), in_ch, text_dim, text_len must be positive");
    if (c->vocab < 2)
        BAD("config: vocab must be at least 2");
    if (c->dec_ch <= 0 || c->dec_up < 0 || c->dec_up > 4 || c->dec_t_up <= 0)
        BAD("config: decoder channels, upsamplings (0..4), frames per latent frame");
    if (c->chunk_frames <= 0 || c->n_steps <= 0 || c->n_steps > ENG_MAX_STEPS)
        BAD("config: chunk_frames > 0 and 1..%d steps", ENG_MAX_STEPS);
    for (int i = 0; i < c->n_steps; i++)
        if (!(c->steps[i] > 0.0f && c->steps[i] <= 1000.0f) || (i && c->steps[i] >= c->steps[i - 1]))
            BAD("config: steps must decrease within (0, 1000]");
    if (!(c->shift > 0.0f))
        BAD("config: shift must be positive");
    if (c->sink < 0 || c->window < c->chunk_frames)
        BAD("config: window (%d) must hold at least a chunk (%d frames); sink >= 0", c->window,
            c->chunk_frames);
    if (c->latent_h <= 0 || c->latent_w <= 0 || c->latent_h % 2 || c->latent_w % 2)
        BAD("config: latent size must be positive and even");
    if (c->max_frames <= 0 || c->fps <= 0)
        BAD("config: max_frames and fps must be positive");
    return 0;
#undef BAD
}

/* One decimal number filling [s, e) exactly: digits with an optional fraction and exponent, no
 * sign, no spaces, no hex, inf or nan. */
static int parse_number(const char *s, const char *e, double *out)
{
    char buf[64];
    size_t n = (size_t)(e - s);
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789.eE+-", buf[i]) || ((buf[i] == '+' || buf[i] == '-') && (i == 0 || (buf[i - 1] != 'e' && buf[i - 1] != 'E'))))
            return -1;
    if (buf[0] < '0' || buf[0] > '9')
        return -1;
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int eng_config_set_sampler(eng_config *c, const char *steps, const char *shift, const char *what,
                           char *err, size_t errlen)
{
    const char *w = what && *what ? what : "sampler";
    eng_config t = *c;
    if (steps) {
        int n = 0;
        const char *p = steps;
        for (;;) {
            const char *e = strchr(p, ',');
            if (!e)
                e = p + strlen(p);
            double v;
            if (n == ENG_MAX_STEPS) {
                snprintf(err, errlen, "%s: steps '%.80s': more than %d steps", w, steps, ENG_MAX_STEPS);
                return -1;
            }
            if (parse_number(p, e, &v)) {
                snprintf(err, errlen, "%s: steps '%.80s': item %d is not a number (expected e.g. 1000,750,500,250)",
                         w, steps, n + 1);
                return -1;
            }
            if (!(v > 0.0 && v <= 1000.0)) {
                snprintf(err, errlen, "%s: steps '%.80s': item %d (%g) is outside (0, 1000]", w, steps, n + 1, v);
                return -1;
            }
            if (n && !(v < t.steps[n - 1])) {
                snprintf(err, errlen, "%s: steps '%.80s': item %d (%g) does not decrease", w, steps, n + 1, v);
                return -1;
            }
            t.steps[n++] = (float)v;
            if (!*e)
                break;
            p = e + 1;
        }
        for (int i = n; i < ENG_MAX_STEPS; i++)
            t.steps[i] = 0.0f;
        t.n_steps = n;
    }
    if (shift) {
        double v;
        if (parse_number(shift, shift + strlen(shift), &v) || !(v > 0.0 && v <= 100.0)) {
            snprintf(err, errlen, "%s: shift '%.40s': expected one number in (0, 100]", w, shift);
            return -1;
        }
        t.shift = (float)v;
    }
    /* the float rounding of two close items could make them equal: the common check decides */
    char e2[256];
    if (eng_config_validate(&t, e2, sizeof e2)) {
        snprintf(err, errlen, "%s: %s", w, e2);
        return -1;
    }
    *c = t;
    return 0;
}

void eng_config_sampler_text(const eng_config *c, char *steps, size_t steps_len, char *shift,
                             size_t shift_len)
{
    size_t o = 0;
    if (steps_len)
        steps[0] = 0;
    for (int i = 0; i < c->n_steps && o < steps_len; i++) {
        int k = snprintf(steps + o, steps_len - o, "%s%g", i ? "," : "", (double)c->steps[i]);
        if (k < 0)
            break;
        o += (size_t)k;
    }
    snprintf(shift, shift_len, "%g", (double)c->shift);
}
