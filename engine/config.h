/* engine/config.h — model configuration and presets.
 *
 * One struct describes every model the engine runs; presets fill it (docs/MODEL.md §1). The
 * per-head (MHA) and latent (MLA) layouts are two values of `layout` over the same code.
 */
#ifndef VMLA_ENGINE_CONFIG_H
#define VMLA_ENGINE_CONFIG_H

#include <stddef.h>

typedef enum { ENG_LAYOUT_MHA = 0, ENG_LAYOUT_MLA = 1 } eng_layout;

#define ENG_MAX_STEPS 8

typedef struct {
    char preset[32];
    eng_layout layout;
    /* DiT */
    int dim, heads, head_dim, layers, ffn_dim, freq_dim, in_ch;
    int text_dim, text_len;
    int d_c, d_r; /* MLA only */
    float eps;
    double rope_theta;
    int max_frames; /* absolute latent frames a stream may reach (RoPE range seen in training) */
    /* text encoder: an embedding table of `vocab` rows (the tiny models), plus a learned
     * position embedding when text_pos is set (the bundled models) */
    int vocab;
    int text_pos;
    /* decoder (docs/MODEL.md §8) */
    int dec_ch, dec_up, dec_t_up;
    /* sampler defaults */
    int chunk_frames, n_steps;
    float steps[ENG_MAX_STEPS];
    float shift;
    int window, sink;
    /* default latent size (video size / 8) and frame rate */
    int latent_h, latent_w;
    int fps;
} eng_config;

/* Fill c from a preset name: tiny, tiny-mha (the bundled models), tiny-test, tiny-test-mla,
 * wan-1.3b, wan-1.3b-mla. Returns 0, or -1
 * with a message listing the known presets. */
int eng_config_preset(eng_config *c, const char *name, char *err, size_t errlen);
/* Check that the fields are consistent (divisibility, ranges). Returns 0 or -1 with a message. */
int eng_config_validate(const eng_config *c, char *err, size_t errlen);
/* Values a token and a layer occupies in the self-attention cache: 2*heads*head_dim (MHA) or
 * d_c + d_r (MLA). */
int eng_config_kv_width(const eng_config *c);
const char *eng_layout_name(eng_layout l);
/* A space-separated list of preset names. */
const char *eng_config_presets(void);

/* The sampler of a model (docs/MODEL.md §6), from text: `steps` a comma-separated list of 1 to
 * ENG_MAX_STEPS timesteps, strictly decreasing, each in (0, 1000] ("1000,750,500,250"; decimal
 * numbers, no spaces, no empty items), `shift` one number in (0, 100] ("5"). Either may be NULL
 * (that part is kept). On success writes c->n_steps, c->steps and/or c->shift and returns 0; on
 * any error c is untouched and err says which value is wrong and why. `what` prefixes the message
 * (e.g. the file or option the text came from). */
int eng_config_set_sampler(eng_config *c, const char *steps, const char *shift, const char *what,
                           char *err, size_t errlen);
/* Write the sampler as the text eng_config_set_sampler reads ("%g" numbers): steps into `steps`
 * (at least 16 * ENG_MAX_STEPS bytes), shift into `shift` (at least 32 bytes). */
void eng_config_sampler_text(const eng_config *c, char *steps, size_t steps_len, char *shift,
                             size_t shift_len);

#endif
