/* engine/kvpool.c — see kvpool.h. */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kvpool.h"

struct kv_pool {
    kn_backend_t *be;
    kv_pool_config cfg;
    kn_buffer_t *buf;
    size_t page_bytes;
    int32_t *free_stack; /* n_free entries valid */
    int32_t n_free;
    uint8_t *used;       /* per page, for the invariant check */
};

kv_pool_t *kv_pool_new(kn_backend_t *be, const kv_pool_config *cfg, char *err, size_t errlen)
{
    if (cfg->page_tokens <= 0 || cfg->layers <= 0 || cfg->width <= 0 || cfg->n_pages <= 0) {
        snprintf(err, errlen, "kv pool: page_tokens, layers, width and n_pages must be positive");
        return NULL;
    }
    uint64_t page_elems = (uint64_t)cfg->page_tokens * (uint64_t)cfg->layers * (uint64_t)cfg->width;
    uint64_t page_bytes = page_elems * kn_dtype_size(cfg->dtype);
    if (page_bytes / kn_dtype_size(cfg->dtype) != page_elems ||
        page_bytes > SIZE_MAX / (uint64_t)cfg->n_pages) {
        snprintf(err, errlen, "kv pool: size overflows");
        return NULL;
    }
    kv_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        goto nomem;
    p->be = be;
    p->cfg = *cfg;
    p->page_bytes = (size_t)page_bytes;
    p->free_stack = malloc(sizeof(int32_t) * (size_t)cfg->n_pages);
    p->used = calloc((size_t)cfg->n_pages, 1);
    if (!p->free_stack || !p->used)
        goto nomem;
    p->buf = kn_buffer_alloc(be, p->page_bytes * (size_t)cfg->n_pages);
    if (!p->buf) {
        snprintf(err, errlen, "kv pool: cannot allocate %zu bytes (%d pages of %zu): %s",
                 p->page_bytes * (size_t)cfg->n_pages, cfg->n_pages, p->page_bytes,
                 kn_backend_error(be));
        kv_pool_free(p);
        return NULL;
    }
    /* lowest page index on top, so a fresh pool hands out 0, 1, 2, ... */
    for (int32_t i = 0; i < cfg->n_pages; i++)
        p->free_stack[i] = cfg->n_pages - 1 - i;
    p->n_free = cfg->n_pages;
    return p;
nomem:
    snprintf(err, errlen, "kv pool: out of host memory");
    kv_pool_free(p);
    return NULL;
}

void kv_pool_free(kv_pool_t *p)
{
    if (!p)
        return;
    kn_buffer_free(p->be, p->buf);
    free(p->free_stack);
    free(p->used);
    free(p);
}

int32_t kv_pool_alloc(kv_pool_t *p)
{
    if (p->n_free == 0)
        return -1;
    int32_t pg = p->free_stack[--p->n_free];
    assert(!p->used[pg]);
    p->used[pg] = 1;
    return pg;
}

void kv_pool_release(kv_pool_t *p, int32_t page)
{
    assert(page >= 0 && page < p->cfg.n_pages && p->used[page]);
    p->used[page] = 0;
    p->free_stack[p->n_free++] = page;
}

int32_t kv_pool_n_pages(const kv_pool_t *p) { return p->cfg.n_pages; }
int32_t kv_pool_n_free(const kv_pool_t *p) { return p->n_free; }
const kv_pool_config *kv_pool_cfg(const kv_pool_t *p) { return &p->cfg; }
size_t kv_pool_page_bytes(const kv_pool_t *p) { return p->page_bytes; }

double kv_pool_bytes_per_token_layer(const kv_pool_t *p)
{
    return (double)p->page_bytes / ((double)p->cfg.page_tokens * p->cfg.layers);
}

kn_kv kv_pool_layer(const kv_pool_t *p, int layer, const int32_t *pages, int64_t n_tokens)
{
    kn_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.buf = p->buf;
    kv.dtype = p->cfg.dtype;
    kv.off = (size_t)layer * (size_t)p->cfg.page_tokens * (size_t)p->cfg.width * kn_dtype_size(p->cfg.dtype);
    kv.row_stride = p->cfg.width;
    kv.page_stride = (int64_t)p->cfg.page_tokens * p->cfg.layers * p->cfg.width;
    kv.page_tokens = p->cfg.page_tokens;
    kv.pages = pages;
    kv.n_tokens = n_tokens;
    return kv;
}

/* ---- stream cache ----------------------------------------------------------------------------- */

int kv_stream_init(kv_stream *s, kv_pool_t *pool, int tokens_per_frame, int sink, int window,
                   int chunk_frames, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    int pt = kv_pool_cfg(pool)->page_tokens;
    if (tokens_per_frame <= 0 || tokens_per_frame % pt) {
        snprintf(err, errlen, "kv cache: %d tokens a frame is not a multiple of the page (%d tokens)",
                 tokens_per_frame, pt);
        return -1;
    }
    if (sink < 0 || chunk_frames <= 0 || window < chunk_frames) {
        snprintf(err, errlen, "kv cache: window %d must hold a chunk of %d frames (sink %d)", window,
                 chunk_frames, sink);
        return -1;
    }
    s->pool = pool;
    s->tokens_per_frame = tokens_per_frame;
    s->pages_per_frame = tokens_per_frame / pt;
    s->sink = sink;
    s->window = window;
    s->chunk_frames = chunk_frames;
    s->max_frames = sink + window;
    s->frame = malloc(sizeof(int32_t) * (size_t)s->max_frames);
    s->table = malloc(sizeof(int32_t) * (size_t)s->max_frames * (size_t)s->pages_per_frame);
    if (!s->frame || !s->table) {
        kv_stream_free(s);
        snprintf(err, errlen, "kv cache: out of host memory");
        return -1;
    }
    return 0;
}

static void release_frame_pages(kv_stream *s, int i)
{
    for (int k = 0; k < s->pages_per_frame; k++)
        kv_pool_release(s->pool, s->table[i * s->pages_per_frame + k]);
}

/* Remove frame i from the table, keeping the order of the others. */
static void drop_frame(kv_stream *s, int i)
{
    release_frame_pages(s, i);
    int ppf = s->pages_per_frame;
    memmove(&s->frame[i], &s->frame[i + 1], sizeof(int32_t) * (size_t)(s->n_frames - i - 1));
    memmove(&s->table[i * ppf], &s->table[(i + 1) * ppf], sizeof(int32_t) * (size_t)((s->n_frames - i - 1) * ppf));
    s->n_frames--;
}

void kv_stream_free(kv_stream *s)
{
    if (s->pool && s->table)
        for (int i = 0; i < s->n_frames; i++)
            release_frame_pages(s, i);
    free(s->frame);
    free(s->table);
    memset(s, 0, sizeof *s);
}

int kv_stream_begin_chunk(kv_stream *s, int f0)
{
    assert(s->n_chunk == 0);
    /* the window part (frames after the sinks) keeps at most window - chunk_frames frames */
    while (s->n_frames - s->n_sink_held > s->window - s->chunk_frames) {
        drop_frame(s, s->n_sink_held);
        s->frames_evicted++;
    }
    int need = s->chunk_frames * s->pages_per_frame;
    if (kv_pool_n_free(s->pool) < need)
        return -1;
    for (int f = 0; f < s->chunk_frames; f++) {
        int i = s->n_frames++;
        s->frame[i] = f0 + f;
        for (int k = 0; k < s->pages_per_frame; k++)
            s->table[i * s->pages_per_frame + k] = kv_pool_alloc(s->pool);
    }
    s->n_chunk = s->chunk_frames;
    return 0;
}

void kv_stream_end_chunk(kv_stream *s)
{
    /* frames of the chunk become sinks while fewer than `sink` are held; they sit right after the
     * held sinks only if no window frame exists yet, which is the case while sinks are missing */
    int first = s->n_frames - s->n_chunk;
    for (int i = first; i < s->n_frames && s->n_sink_held < s->sink; i++)
        if (i == s->n_sink_held)
            s->n_sink_held++;
    s->n_chunk = 0;
}

void kv_stream_abort_chunk(kv_stream *s)
{
    while (s->n_chunk > 0) {
        drop_frame(s, s->n_frames - 1);
        s->n_chunk--;
    }
}

int64_t kv_stream_tokens(const kv_stream *s) { return (int64_t)s->n_frames * s->tokens_per_frame; }

int64_t kv_stream_context_tokens(const kv_stream *s)
{
    return (int64_t)(s->n_frames - s->n_chunk) * s->tokens_per_frame;
}

int kv_stream_pages(const kv_stream *s) { return s->n_frames * s->pages_per_frame; }
