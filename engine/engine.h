/* engine/engine.h — the engine's public API: streams of chunk-wise autoregressive video.
 *
 * Batch-first: eng_step() advances a set of streams by one forward pass each (a denoising step or
 * the cache pass of their current chunk); each stream has its own prompt, seed, timestep and KV
 * page table, and streams at different steps share a batch. A single stream is a batch of one.
 * Finished chunks leave as RGB frames in host memory tagged with stream id, chunk index and
 * timestamps; the engine knows nothing of encoders or sockets.
 *
 * Threads: an engine and its streams belong to one thread at a time (the caller serialises).
 *
 * Sampler (docs/MODEL.md §6): per chunk, K steps over the warped timesteps
 *   sigma'_k = s*sigma_k / (1 + (s-1)*sigma_k),  x0 = x - sigma'_k * v,
 *   x <- (1 - sigma'_{k+1}) * x0 + sigma'_{k+1} * eps_{k+1}   (fresh noise each step)
 * then one pass at t = 0 over the clean chunk whose keys/values stay in the cache. The frames of a
 * chunk are decoded as soon as its last denoising step is done (before the cache pass), so they
 * are ready one pass earlier.
 */
#ifndef VMLA_ENGINE_ENGINE_H
#define VMLA_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/config.h"
#include "kernels/backend.h"

typedef enum {
    ENG_OK = 0,
    ENG_ERR_ARG,     /* a bad argument or option */
    ENG_ERR_LOAD,    /* the weight file is missing, corrupt or does not fit the preset */
    ENG_ERR_NOMEM,   /* host or device memory */
    ENG_ERR_BACKEND, /* an op failed on the backend */
    ENG_ERR_POOL,    /* the KV pool has no free pages for this stream's next chunk */
    ENG_ERR_LIMIT,   /* a limit was reached (streams, frames) */
    ENG_ERR_STATE,   /* the stream failed earlier and can only be closed */
} eng_status;

const char *eng_strerror(eng_status s);

typedef struct eng_engine eng_engine_t;
typedef struct eng_stream eng_stream_t;

typedef struct {
    const char *weights;   /* safetensors path, or NULL for seeded random weights */
    uint64_t weight_seed;  /* for random weights */
    int latent_h, latent_w; /* 0: the preset's (video size = latent * 2^dec_up) */
    int window, sink;      /* -1: the preset's */
    int max_batch;         /* streams one eng_step may advance (default 1, at most 64) */
    int max_streams;       /* streams open at once (default 1) */
    int kv_pages;          /* pool pages (0: from kv_pool_bytes, kv_pool_fraction, or enough for
                              max_streams full windows, in that order) */
    size_t kv_pool_bytes;  /* pool size in bytes (rounded down to whole pages) */
    double kv_pool_fraction; /* (0, 1): that share of the backend memory still free once the
                                weights and activations are allocated */
    size_t host_kv_bytes;  /* page-locked host tier for offloaded streams' pages (0: none) */
    int page_tokens;       /* tokens a page (0: one latent frame); must divide a frame's tokens */
    int mla_attention;     /* MLA layout: ENG_MLA_AUTO (env VMLA_MLA=absorb|rebuild, else the
                              faster for the backend, docs/MODEL.md §5b), ENG_MLA_ABSORB, ENG_MLA_REBUILD */
    kn_dtype kv_dtype;     /* storage of the KV pool (default F32 on CPU: 0) */
} eng_options;

enum { ENG_MLA_AUTO = 0, ENG_MLA_ABSORB = 1, ENG_MLA_REBUILD = 2 };

void eng_options_default(eng_options *o);
/* Whether this engine's MLA attention rebuilds per-head keys/values (1) or absorbs (0). */
int eng_mla_rebuild(const eng_engine_t *e);
/* The MLA rebuild cache (a chunk's context rebuilt once, at its first pass, and kept for the others;
 * engine/model.h): slots, bytes a slot, and the stream-passes that found their context rebuilt.
 * All 0 without the cache (absorb, per-head, or $VMLA_MLA_REBUILD_CACHE_BYTES too small). */
void eng_rebuild_cache_stats(const eng_engine_t *e, int *slots, size_t *slot_bytes, int64_t *reuses);

/* Open an engine on backend `be` (borrowed; must outlive the engine). Loads or draws the
 * weights, allocates the KV pool and every activation. On failure *out = NULL and err holds the
 * reason. */
eng_status eng_open(eng_engine_t **out, kn_backend_t *be, const eng_config *cfg, const eng_options *o,
                    char *err, size_t errlen);
/* Close the engine; open streams must be closed first (they are freed here otherwise). */
void eng_close(eng_engine_t *e);
const eng_config *eng_get_config(const eng_engine_t *e); /* the effective config (window, sink) */
kn_backend_t *eng_backend(const eng_engine_t *e);
const char *eng_error(const eng_engine_t *e);

int eng_video_width(const eng_engine_t *e);
int eng_video_height(const eng_engine_t *e);
int eng_frames_per_chunk(const eng_engine_t *e);
/* KV cache accounting from the pool's real allocation. */
double eng_kv_bytes_per_token_layer(const eng_engine_t *e);
size_t eng_kv_bytes_per_frame(const eng_engine_t *e);
size_t eng_kv_pool_bytes(const eng_engine_t *e);
size_t eng_kv_pool_free_bytes(const eng_engine_t *e);

/* Exact accounting of the pool, its host tier and the stream slots. */
typedef struct {
    size_t page_bytes;
    int64_t pages, free_pages;           /* device pool */
    int64_t host_pages, free_host_pages; /* host tier */
    int pages_per_stream;                /* pages of one stream at its full window (sink + window) */
    int slots, free_slots;               /* resident streams (max_streams) */
    int host_slots, free_host_slots;     /* offloaded streams the host tier can hold */
} eng_pool_stats;
void eng_pool_get_stats(const eng_engine_t *e, eng_pool_stats *st);
int64_t eng_weight_params(const eng_engine_t *e);

/* Intermediate tensors of stream 0 of each forward (tests). */
typedef void (*eng_trace_cb)(void *user, const char *name, const float *data, int64_t rows, int64_t cols);
void eng_set_trace(eng_engine_t *e, eng_trace_cb fn, void *user);

/* ---- streams ----------------------------------------------------------------------------------- */

/* Open a stream with a seed and a prompt (any bytes; see engine/tokenizer.h). */
eng_status eng_stream_open(eng_engine_t *e, uint64_t seed, const char *prompt, eng_stream_t **out);
/* Close a stream: its pages go back to the pool at once. */
void eng_stream_close(eng_stream_t *s);
uint64_t eng_stream_id(const eng_stream_t *s);
/* Switch the prompt. It applies at the next chunk boundary (a chunk in progress finishes with the
 * old prompt); the cache is kept, so the switch blends over the window. */
eng_status eng_stream_set_prompt(eng_stream_t *s, const char *prompt);
eng_status eng_stream_set_prompt_tokens(eng_stream_t *s, const int32_t *ids, int n);

/* Move a paused stream out of the device: its KV pages go to the host tier (copies enqueued on
 * the backend's stream; the host does not wait), its slot (activations) is freed, its decoder
 * state is kept in the host tier. Only between chunks (ENG_ERR_ARG mid-chunk). ENG_ERR_POOL when
 * the host tier is full. An offloaded stream is skipped by eng_step until restored. */
eng_status eng_stream_offload(eng_stream_t *s);
/* Bring it back: a free slot (ENG_ERR_LIMIT otherwise) and fresh device pages (ENG_ERR_POOL);
 * the prompt's text context is recomputed at the next chunk. The output is the same as if the
 * stream had never left. */
eng_status eng_stream_restore(eng_stream_t *s);
int eng_stream_resident(const eng_stream_t *s);
/* Forward passes the stream took part in, in all. */
int64_t eng_stream_passes(const eng_stream_t *s);
/* Passes done in the chunk in progress (0 between chunks). */
int eng_stream_pass(const eng_stream_t *s);
/* Forward passes a chunk takes (denoising steps + the cache pass). */
int eng_passes_per_chunk(const eng_engine_t *e);

/* Noise source: fill out[0..n) for the given chunk and draw (0 = initial). Default: Philox. */
typedef void (*eng_noise_fn)(void *user, uint64_t seed, uint32_t chunk, uint32_t draw, float *out, size_t n);
void eng_stream_set_noise(eng_stream_t *s, eng_noise_fn fn, void *user);

/* Advance each of n distinct streams by one forward pass. Returns ENG_OK when the batch ran;
 * a stream that cannot run (no pages, frame limit, failed before) is left out of the batch and
 * keeps its own error (eng_stream_status). When the batched pass fails on the backend, each
 * stream's pass is tried again alone: only the streams that fail alone fail (their error on the
 * stream); ENG_ERR_BACKEND when every stream of the batch failed. */
eng_status eng_step(eng_engine_t *e, eng_stream_t *const *streams, int n);
/* Wait for the work enqueued on the backend (for timing a step). */
eng_status eng_sync(eng_engine_t *e);
/* How many times the host has waited for all enqueued backend work: a chunk's frames downloaded
 * (once a chunk, inside eng_step) or eng_sync. Between two drains the host runs ahead of the GPU. */
int64_t eng_drains(const eng_engine_t *e);
/* Run passes until every listed stream has finished one chunk (decoded and cached). */
eng_status eng_generate_chunk(eng_engine_t *e, eng_stream_t *const *streams, int n);

eng_status eng_stream_status(const eng_stream_t *s);
const char *eng_stream_error(const eng_stream_t *s);

/* A decoded chunk: n_frames RGB24 frames of width x height, valid until the stream's next chunk
 * is decoded. Frame i of the chunk is video frame frame0 + i, shown at (frame0 + i) / fps s. */
typedef struct {
    uint64_t stream_id;
    int64_t chunk;
    int64_t frame0;
    int n_frames, width, height, fps;
    const uint8_t *rgb;
} eng_frames;

/* The newest decoded chunk not taken yet, or NULL. Taking it marks it taken. */
const eng_frames *eng_stream_take_frames(eng_stream_t *s);
/* Chunks finished (decoded) so far, and the chunk being generated. */
int64_t eng_stream_chunks_done(const eng_stream_t *s);
/* The latent of the newest decoded chunk, C * F * h * w floats (tests). */
eng_status eng_stream_last_latent(eng_stream_t *s, float *dst, size_t n);
/* Bytes of KV pages the stream holds now, and its maximum (sink + window frames). */
size_t eng_stream_kv_bytes(const eng_stream_t *s);
size_t eng_stream_kv_bytes_max(const eng_stream_t *s);

#endif
