/* engine/weights.h — the model's weights as backend tensors, loaded or drawn at random.
 *
 * All weights of a model live in one backend buffer, sliced into views. Names and shapes are
 * those of docs/MODEL.md §9 (Wan2.1's checkpoint names for the DiT). A weight file is a
 * safetensors file (F32, BF16 or F16 per tensor); every tensor the config needs must be present
 * with exactly its shape, and extra tensors are ignored.
 */
#ifndef VMLA_ENGINE_WEIGHTS_H
#define VMLA_ENGINE_WEIGHTS_H

#include <stdint.h>

#include "engine/config.h"
#include "kernels/backend.h"

typedef struct {
    kn_tensor w, b; /* b.buf == NULL when the layer has no bias */
} eng_linear;

typedef struct {
    kn_tensor modulation; /* [6, D] */
    /* self-attention, per-head layout */
    eng_linear q, k, v, o;
    kn_tensor norm_q, norm_k;
    /* self-attention, latent layout (q, norm_q and o are shared with the above) */
    eng_linear q_rope, kv_down, k_rope;
    kn_tensor norm_q_rope, norm_kv, norm_k_rope;
    kn_tensor k_up, v_up; /* [H*dh, d_c] */
    /* the self-attention input projections as one linear: per-head [q; k; v] [3D, D], latent
     * [q; q_rope; kv_down; k_rope] [H*dh + H*d_r + d_c + d_r, D]; the linears above are its row
     * ranges (biases: column ranges), so one GEMM computes them all */
    eng_linear qkv;
    /* cross-attention */
    eng_linear cq, ck, cv, co;
    kn_tensor cnorm_q, cnorm_k;
    kn_tensor norm3_w, norm3_b;
    eng_linear ffn0, ffn2;
} eng_block_weights;

typedef struct {
    eng_linear patch; /* [D, 4C] */
    eng_linear text0, text2, time0, time2, time_proj;
    eng_block_weights *blocks;
    eng_linear head;     /* [4C, D] */
    kn_tensor head_mod;  /* [2, D] */
    kn_tensor embed;     /* [vocab, text_dim] */
    kn_tensor text_pos;  /* [text_len, text_dim] (config text_pos) */
    char *vocab_words;   /* the file's "vmla.vocab" metadata (malloc'd), or NULL */
    kn_tensor lat_mean, lat_std; /* [1, C] */
    eng_linear dec_in, dec_mid, dec_out;
    eng_linear dec_up[4];
    kn_buffer_t *buf;
    int64_t n_params;
} eng_weights;

/* Load from a safetensors file (path != NULL) or draw seeded random weights (path == NULL).
 * Returns 0, or -1 with a message naming the file and tensor. Free with eng_weights_free. */
int eng_weights_load(eng_weights *w, kn_backend_t *be, const eng_config *c, const char *path,
                     uint64_t seed, char *err, size_t errlen);
void eng_weights_free(eng_weights *w, kn_backend_t *be);

/* Metadata keys of a weight file that set the sampler the model was trained for (docs/MODEL.md §6):
 * "vmla.sampler.steps" ("1000,750,500,250") and "vmla.sampler.shift" ("5"), read with
 * eng_config_set_sampler's strict rules. */
#define ENG_META_SAMPLER_STEPS "vmla.sampler.steps"
#define ENG_META_SAMPLER_SHIFT "vmla.sampler.shift"

/* Apply the sampler a weight file names in its metadata to c (the keys above; a file without them
 * leaves c as it is). Call it between eng_config_preset and eng_open, so the engine runs the schedule
 * the model was trained for. Returns 0, or -1 with a message naming the file (unreadable file,
 * malformed or out-of-range value). eng_weights_load also rejects a file with malformed values. */
int eng_config_apply_file(eng_config *c, const char *path, char *err, size_t errlen);

/* Write the tensor manifest (name and shape a line) the config expects, to a caller buffer-less
 * callback, for docs and for tools that make weight files. */
typedef void (*eng_weight_visit)(void *user, const char *name, int ndim, const int64_t *shape);
void eng_weights_manifest(const eng_config *c, eng_weight_visit fn, void *user);

#endif
