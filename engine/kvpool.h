/* engine/kvpool.h — the shared paged pool of self-attention KV, and a stream's cache over it.
 *
 * The pool is one backend allocation made at start, cut into fixed pages. A page holds
 * `page_tokens` tokens for every layer: layout [layer][token][width] with `width` values a token a
 * layer (2*H*dh for the per-head layout, d_c + d_r for the latent one). Pages are handed out from a
 * free stack: O(1) alloc and free, no fragmentation, nothing allocated after start.
 *
 * An optional host tier (host_pages > 0) is a second allocation of page-locked host memory cut
 * into pages of the same size, with its own free stack: a paused stream's pages move there and
 * back (kv_stream_offload / kv_stream_restore) as copies enqueued on the backend's stream, so the
 * host never waits for them; ordering on that one stream keeps every read after its write.
 *
 * A page spans all layers of `page_tokens` tokens (measured against one layer a page in
 * bench/RESULTS.md, "page span"): a frame is one allocation and one copy instead of `layers`, and
 * the page table is per stream, not per layer.
 *
 * A stream's cache (kv_stream) is a page table over whole latent frames: S sink frames kept for
 * ever, the newest window frames, and the frames of the chunk being generated. A frame that leaves
 * the window gives its pages back; nothing is ever copied. The table lists pages in attention
 * order (sinks, window oldest first, current chunk), so token t of the context lives in page
 * table[t / page_tokens]. See docs/MODEL.md §6 for the window rule.
 */
#ifndef VMLA_ENGINE_KVPOOL_H
#define VMLA_ENGINE_KVPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

typedef struct kv_pool kv_pool_t;

typedef struct {
    int32_t page_tokens; /* tokens a page */
    int32_t layers;
    int32_t width;       /* values a token a layer */
    kn_dtype dtype;
    int32_t n_pages;
    int32_t host_pages; /* pages of the host tier (0: none) */
} kv_pool_config;

/* One allocation of n_pages pages on `be`. NULL with a message in err on failure. The caller frees
 * with kv_pool_free. */
kv_pool_t *kv_pool_new(kn_backend_t *be, const kv_pool_config *cfg, char *err, size_t errlen);
void kv_pool_free(kv_pool_t *p);
/* A free page index, or -1 when the pool is exhausted. */
int32_t kv_pool_alloc(kv_pool_t *p);
/* Return a page; returning a page that is not allocated is an invariant violation (asserted). */
void kv_pool_release(kv_pool_t *p, int32_t page);
int32_t kv_pool_n_pages(const kv_pool_t *p);
int32_t kv_pool_n_free(const kv_pool_t *p);
/* The host tier: pages, free pages. */
int32_t kv_pool_n_host_pages(const kv_pool_t *p);
int32_t kv_pool_n_host_free(const kv_pool_t *p);
const kv_pool_config *kv_pool_cfg(const kv_pool_t *p);
/* Bytes of one page, from the allocation's own arithmetic. */
size_t kv_pool_page_bytes(const kv_pool_t *p);
/* Bytes a token a layer: page bytes / (page_tokens * layers). */
double kv_pool_bytes_per_token_layer(const kv_pool_t *p);
/* A kv source over `layer` of the listed pages (kn_kv.pages = pages, n_tokens = n_tokens); the
 * caller fills kv_heads, k_off, v_off, dk, dv. */
kn_kv kv_pool_layer(const kv_pool_t *p, int layer, const int32_t *pages, int64_t n_tokens);

/* ---- a stream's cache ------------------------------------------------------------------------- */

typedef struct {
    kv_pool_t *pool;
    int tokens_per_frame, pages_per_frame;
    int sink, window, chunk_frames;
    int max_frames;  /* sink + window */
    /* frames in attention order: frame[i] is an absolute latent frame index; its pages are
     * table[i*pages_per_frame .. +pages_per_frame] */
    int n_frames, n_sink_held, n_chunk; /* n_chunk: frames of the chunk in progress (at the end) */
    int32_t *frame;
    int32_t *table;  /* device pages; host-tier pages while offloaded */
    int offloaded;   /* the table's pages are in the host tier */
    int64_t frames_evicted;
} kv_stream;

/* Prepare a stream cache (allocates its small host table; no pages yet). tokens_per_frame must be
 * a multiple of the pool's page_tokens. Returns 0, or -1 with a message. */
int kv_stream_init(kv_stream *s, kv_pool_t *pool, int tokens_per_frame, int sink, int window,
                   int chunk_frames, char *err, size_t errlen);
/* Give back every page and the table. */
void kv_stream_free(kv_stream *s);
/* Start a chunk whose first absolute frame is f0: evict the oldest non-sink frames so that at most
 * window - chunk_frames remain, then take pages for chunk_frames new frames. Returns 0, or -1 when
 * the pool has too few free pages (nothing is taken then; evictions stay done). */
int kv_stream_begin_chunk(kv_stream *s, int f0);
/* The chunk's frames become context (sinks while fewer than `sink` are held). */
void kv_stream_end_chunk(kv_stream *s);
/* Drop the chunk in progress (its pages go back), e.g. after a failure. */
void kv_stream_abort_chunk(kv_stream *s);
/* Tokens in the table (context + chunk in progress) and before the chunk in progress. */
int64_t kv_stream_tokens(const kv_stream *s);
int64_t kv_stream_context_tokens(const kv_stream *s);
/* Pages the stream holds (device pages, or host pages while offloaded). */
int kv_stream_pages(const kv_stream *s);
/* Move the stream's pages to the host tier: each page is copied (enqueued on the backend's
 * stream) and its device page freed at once. Only between chunks. Returns 0; -1 when the host tier
 * has too few free pages (nothing done); -2 when a copy could not be enqueued (the stream's cache
 * is then lost: its pages are freed, the table empty). */
int kv_stream_offload(kv_stream *s);
/* Move them back into fresh device pages. Returns 0; -1 when the pool has too few free pages
 * (nothing done); -2 as above. */
int kv_stream_restore(kv_stream *s);

#endif
