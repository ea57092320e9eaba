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
    /* host tier */
    kn_buffer_t *hbuf;
    int32_t *hfree_stack;
    int32_t n_hfree;
    uint8_t *hused;
};

kv_pool_t *kv_pool_new(kn_backend_t *be, const kv_pool_config *cfg, char *err, size_t errlen)
{
    if (cfg->page_tokens <= 0 || cfg->layers <= 0 || cfg->width <= 0 || cfg->n_pages <= 0 ||
        cfg->host_pages < 0) {
        snprintf(err, errlen, "kv pool: page_tokens, layers, width and n_pages must be positive");
        return NULL;
    }
    uint64_t page_elems = (uint64_t)cfg->page_tokens * (uint64_t)cfg->layers * (uint64_t)cfg->width;
    uint64_t page_bytes = page_elems * kn_dtype_size(cfg->dtype);
    if (page_bytes / kn_dtype_size(cfg->dtype) != page_elems ||
        page_bytes > SIZE_MAX / (uint64_t)cfg->n_pages ||
        (cfg->host_pages && page_bytes > SIZE_MAX / (uint64_t)cfg->host_pages)) {
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
    if (cfg->host_pages) {
        p->hfree_stack = malloc(sizeof(int32_t) * (size_t)cfg->host_pages);
        p->hused = calloc((size_t)cfg->host_pages, 1);
        if (!p->hfree_stack || !p->hused)
            goto nomem;
        p->hbuf = kn_host_buffer_alloc(be, p->page_bytes * (size_t)cfg->host_pages);
        if (!p->hbuf) {
            snprintf(err, errlen, "kv pool: cannot allocate a host tier of %zu bytes (%d pages): %s",
                     p->page_bytes * (size_t)cfg->host_pages, cfg->host_pages, kn_backend_error(be));
            kv_pool_free(p);
            return NULL;
        }
        for (int32_t i = 0; i < cfg->host_pages; i++)
            p->hfree_stack[i] = cfg->host_pages - 1 - i;
        p->n_hfree = cfg->host_pages;
    }
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
    kn_buffer_free(p->be, p->hbuf);
    free(p->free_stack);
    free(p->used);
    free(p->hfree_stack);
    free(p->hused);
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
int32_t kv_pool_n_host_pages(const kv_pool_t *p) { return p->cfg.host_pages; }
int32_t kv_pool_n_host_free(const kv_pool_t *p) { return p->n_hfree; }

static int32_t host_alloc(kv_pool_t *p)
{
    if (p->n_hfree == 0)
        return -1;
    int32_t pg = p->hfree_stack[--p->n_hfree];
    assert(!p->hused[pg]);
    p->hused[pg] = 1;
    return pg;
}

static void host_release(kv_pool_t *p, int32_t page)
{
    assert(page >= 0 && page < p->cfg.host_pages && p->hused[page]);
    p->hused[page] = 0;
    p->hfree_stack[p->n_hfree++] = page;
}
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
    for (int k = 0; k < s->pages_per_frame; k++) {
        int32_t pg = s->table[i * s->pages_per_frame + k];
        if (s->offloaded)
            host_release(s->pool, pg);
        else
            kv_pool_release(s->pool, pg);
    }
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
    assert(s->n_chunk == 0 && !s->offloaded);
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

/* Move every page of the table between tiers: to_host 1 = device -> host. */
static int move_pages(kv_stream *s, int to_host)
{
    kv_pool_t *p = s->pool;
    int n = kv_stream_pages(s);
    if ((to_host ? p->n_hfree : p->n_free) < n)
        return -1;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int32_t from = s->table[i];
        int32_t to = to_host ? host_alloc(p) : kv_pool_alloc(p);
        kn_buffer_t *dbuf = to_host ? p->hbuf : p->buf;
        kn_buffer_t *sbuf = to_host ? p->buf : p->hbuf;
        if (!bad && kn_buffer_copy(p->be, dbuf, (size_t)to * p->page_bytes, sbuf, (size_t)from * p->page_bytes,
                                   p->page_bytes) != KN_OK)
            bad = 1;
        /* the source page is free at once: later work on the backend's stream runs after the copy */
        if (to_host)
            kv_pool_release(p, from);
        else
            host_release(p, from);
        s->table[i] = to;
    }
    s->offloaded = to_host;
    if (bad) { /* the contents are lost: give the pages back, keep the stream consistent */
        for (int i = 0; i < s->n_frames; i++)
            release_frame_pages(s, i);
        s->n_frames = s->n_sink_held = 0;
        s->offloaded = 0;
        return -2;
    }
    return 0;
}

int kv_stream_offload(kv_stream *s)
{
    assert(s->n_chunk == 0);
    if (s->offloaded)
        return 0;
    if (!s->pool->hbuf)
        return -1;
    return move_pages(s, 1);
}

int kv_stream_restore(kv_stream *s)
{
    if (!s->offloaded)
        return 0;
    return move_pages(s, 0);
}
