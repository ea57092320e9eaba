/* engine/model.h — the DiT forward over a batch of streams, and the text and decoder paths.
 *
 * Private to engine/: the public API is engine/engine.h. The math is docs/MODEL.md; this file
 * only orders backend ops. Linear layers see the concatenated tokens of every stream in the batch;
 * modulation, RoPE, the KV store and attention run per stream over that stream's rows and pages.
 */
#ifndef VMLA_ENGINE_MODEL_H
#define VMLA_ENGINE_MODEL_H

#include <stdint.h>

#include "engine/config.h"
#include "engine/kvpool.h"
#include "engine/weights.h"

/* Called with intermediate tensors of stream 0 of a forward, for tests and debugging:
 * "sin", "e", "e0", "patch", "block.<i>", "head", and "ctx" from eng_model_context. */
typedef void (*eng_trace_fn)(void *user, const char *name, kn_backend_t *be, kn_tensor t);

typedef struct {
    kn_tensor lat;       /* [C, F*h*w] input latent */
    kn_tensor out;       /* [C, F*h*w] predicted flow (not written when the batch is cache-only) */
    float t;             /* timestep (warped sigma * 1000; 0 for the cache pass) */
    int f0;              /* absolute index of the chunk's first latent frame */
    const kv_stream *cache; /* page table: context frames then the chunk's frames */
    kn_tensor ctx_kv;    /* [layers * text_len, 2*dim]: cross-attention keys | values */
    uint64_t ctx_id;     /* this stream-chunk, unique in the engine (0: none); keys the MLA rebuild
                            cache */
    int last_pass;       /* the chunk's last pass: its rebuild cache slot is freed after it */
} eng_fwd_item;

/* The most streams one forward takes (engine.h: max_batch is at most this). */
#define ENG_FWD_MAX 64

typedef struct {
    const eng_config *c;
    kn_backend_t *be;
    const eng_weights *w;
    kv_pool_t *pool;
    int max_batch, F, h, wd, N; /* N = tokens a chunk */
    kn_buffer_t *buf;
    /* activations, [max_batch * N, ...] unless noted */
    kn_tensor sin, e_h, e, es, e0, mod, hmod; /* per stream: [B, .] ; mod [B*6, D]; hmod [B*2, D] */
    kn_tensor tok, x, xn, q, k, att, y, ff, hout;
    kn_tensor proj; /* the fused self-attention projections [B*N, q|k|v or q_c|q_r|c|k_r]: ff's memory */
    kn_tensor rope; /* [B*N, d] f32: (cos, sin) of every token's RoPE pairs, for the pass's streams */
    kn_tensor ckr, ckv, kr, qt, qa, olat; /* MLA; ckv | kr are the two column ranges of ckr */
    int mla_rebuild;   /* MLA attention: 1 rebuild per-head K/V from the latent window, 0 absorb */
    int rebuild_streams; /* rebuild: windows rebuilt at once (as many as rebuild_bytes hold, at
                            most max_batch) */
    size_t rebuild_bytes; /* ENG_REBUILD_BYTES or $VMLA_MLA_REBUILD_BYTES */
    size_t rbc_budget;    /* ENG_REBUILD_CACHE_BYTES or $VMLA_MLA_REBUILD_CACHE_BYTES */
    kn_tensor lat_tmp; /* rebuild: [rebuild_streams*T_max, dc+dr] windows' latent rows, gathered */
    kn_tensor kvr;     /* rebuild: [rebuild_streams*T_max, H*(dh+dr) + H*dh] per-head keys | values */
    /* rebuild cache: a stream-chunk's context (sink + window frames before the chunk) has the same
     * latent at every pass of the chunk, so its rebuilt keys | values are made at the chunk's first
     * pass and kept. Per slot and layer a region of T_max rows: [0, N) the chunk's own tokens
     * (rebuilt every pass), [N, N + context) the context. Layer-major, so one layer's slots lie
     * T_max rows apart (a batch in consecutive slots is one strided block for the backend). */
    kn_buffer_t *rbc_buf;
    kn_tensor rbc;             /* [layers * rbc_slots * T_max, H*(dh+dr) + H*dh] */
    int rbc_slots;             /* 0: no cache */
    int64_t rbc_tmax;
    uint64_t *rbc_id;          /* per slot: the stream-chunk it holds, 0 free */
    uint64_t *rbc_used;        /* per slot: the forward that last used it (eviction) */
    unsigned char *rbc_ready;  /* per slot: its context rows are built for every layer */
    uint64_t fwd_serial;
    int64_t rbc_reuses;        /* item-passes that found their context rows built */
    size_t rbc_slot_bytes;
    int fwd_slot[ENG_FWD_MAX]; /* this forward: each item's slot, or -1 (rebuilt every pass) */
    unsigned char fwd_fill[ENG_FWD_MAX]; /* this forward builds the item's context rows */
    kn_buffer_t *kw_buf;
    kn_tensor *kw;     /* rebuild, per layer: [H*(dh+dr) + H*dh, dc+dr] = [per head [k_up_h 0; 0 I_dr];
                          v_up 0]: one GEMM gives every head's key and value */
    kn_tensor ctx_in, ctx_h, ctx;        /* [text_len, .] */
    kn_tensor zero_row;                  /* [1, text_dim] of zeros */
    /* decoder */
    kn_tensor d_cat, d_a, d_b, d_o, d_half;
    eng_trace_fn trace;
    void *trace_user;
} eng_model;

/* Carve the activations for batches of up to max_batch chunks of F frames of h x w latents.
 * Returns 0, -1 with a message (out of memory), or -2 with a message (a bad environment override). */
int eng_model_init(eng_model *m, const eng_config *c, kn_backend_t *be, const eng_weights *w,
                   kv_pool_t *pool, int max_batch, int F, int h, int wd, int mla_rebuild, char *err,
                   size_t errlen);
void eng_model_free(eng_model *m);

/* The MLA rebuild's scratch (latent rows + rebuilt keys and values of several windows at once) is
 * at most this, or one window when one window is more ($VMLA_MLA_REBUILD_BYTES overrides it: tests). */
#define ENG_REBUILD_BYTES ((size_t)1 << 30)

/* The MLA rebuild cache holds at most this ($VMLA_MLA_REBUILD_CACHE_BYTES overrides it; 0 turns the
 * cache off), in slots of one stream-chunk's rebuilt context for every layer, at most max_batch. */
#define ENG_REBUILD_CACHE_BYTES ((size_t)6 << 30)

/* One forward for n streams. Writes each chunk's keys/values (or latents) into its pages.
 * cache_only: every item is a cache pass, so the head is skipped. */
kn_status eng_model_forward(eng_model *m, const eng_fwd_item *it, int n, int cache_only);

/* Cross-attention keys and values of a prompt (token ids, text_len of them, 0 = padding). */
kn_status eng_model_context(eng_model *m, const int32_t *ids, kn_tensor ctx_kv);

/* Decode a chunk [C, F*h*w] into rgb [F*t_up*3, H*W] (planar, [0,1]); prev [C, h*w] is the
 * previous latent frame of the stream (zeros at the start) and is updated. */
kn_status eng_model_decode(eng_model *m, kn_tensor lat, kn_tensor prev, kn_tensor rgb);

/* Output video size. */
int eng_model_out_h(const eng_model *m);
int eng_model_out_w(const eng_model *m);

#endif
