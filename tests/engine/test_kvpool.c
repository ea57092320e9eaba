/* tests/engine/test_kvpool.c — the page pool and a stream's window over it: eviction order, sinks
 * kept, bounds, page reuse, exhaustion, accounting. */
#include <string.h>

#include "engine/kvpool.h"
#include "tests/check.h"

static int frames_are(const kv_stream *s, const int *want, int n)
{
    if (s->n_frames != n)
        return 0;
    for (int i = 0; i < n; i++)
        if (s->frame[i] != want[i])
            return 0;
    return 1;
}

static void print_frames(const char *what, const kv_stream *s)
{
    printf("  %s:", what);
    for (int i = 0; i < s->n_frames; i++)
        printf(" %d", s->frame[i]);
    printf("\n");
}

int main(void)
{
    char err[256];
    kn_backend_t *be = kn_cpu_backend_new();

    /* pool basics */
    kv_pool_config pc = {.page_tokens = 6, .layers = 2, .width = 10, .dtype = KN_BF16, .n_pages = 8};
    kv_pool_t *p = kv_pool_new(be, &pc, err, sizeof err);
    CHECK(p != NULL, "pool: %s", err);
    CHECK(kv_pool_page_bytes(p) == 6 * 2 * 10 * 2, "page bytes %zu", kv_pool_page_bytes(p));
    CHECK(kv_pool_bytes_per_token_layer(p) == 20.0, "bytes/token/layer %.1f", kv_pool_bytes_per_token_layer(p));
    int32_t got[8];
    for (int i = 0; i < 8; i++)
        got[i] = kv_pool_alloc(p);
    CHECK(got[0] == 0 && got[7] == 7, "fresh pool hands out 0..7");
    CHECK(kv_pool_alloc(p) == -1 && kv_pool_n_free(p) == 0, "exhausted pool returns -1");
    kv_pool_release(p, 3);
    kv_pool_release(p, 5);
    CHECK(kv_pool_alloc(p) == 5 && kv_pool_alloc(p) == 3, "freed pages are reused, last freed first");
    for (int i = 0; i < 8; i++)
        kv_pool_release(p, got[i]);
    CHECK(kv_pool_n_free(p) == 8, "all pages back");
    kv_pool_free(p);

    /* bad configs */
    kv_pool_config bad = pc;
    bad.n_pages = 0;
    CHECK(kv_pool_new(be, &bad, err, sizeof err) == NULL && strstr(err, "positive"), "zero pages refused: %s", err);
    bad = pc;
    bad.page_tokens = 1 << 30;
    bad.layers = 1 << 30;
    bad.n_pages = 1 << 30;
    CHECK(kv_pool_new(be, &bad, err, sizeof err) == NULL, "overflowing pool refused: %s", err);

    /* window W=4, sink S=1, chunk F=3, 6 tokens a frame, 2 pages a frame (page_tokens 3) */
    pc = (kv_pool_config){.page_tokens = 3, .layers = 2, .width = 4, .dtype = KN_F32, .n_pages = 10};
    p = kv_pool_new(be, &pc, err, sizeof err);
    kv_stream s;
    CHECK(kv_stream_init(&s, p, 5, 1, 4, 3, err, sizeof err) == -1, "5 tokens a frame on 3-token pages refused");
    CHECK(kv_stream_init(&s, p, 6, 1, 2, 3, err, sizeof err) == -1, "window smaller than a chunk refused");
    CHECK(kv_stream_init(&s, p, 6, 1, 4, 3, err, sizeof err) == 0, "init: %s", err);
    CHECK(kv_stream_begin_chunk(&s, 0) == 0, "chunk 0");
    CHECK(frames_are(&s, (int[]){0, 1, 2}, 3) && kv_stream_context_tokens(&s) == 0 && kv_stream_tokens(&s) == 18,
          "chunk 0 sees only itself");
    kv_stream_end_chunk(&s);
    CHECK(s.n_sink_held == 1, "frame 0 became the sink");
    CHECK(kv_stream_begin_chunk(&s, 3) == 0, "chunk 1");
    print_frames("chunk 1 attends", &s);
    CHECK(frames_are(&s, (int[]){0, 2, 3, 4, 5}, 5), "chunk 1: sink 0, window frame 2, own 3..5 (frame 1 evicted)");
    CHECK(kv_stream_context_tokens(&s) == 12, "context tokens %lld", (long long)kv_stream_context_tokens(&s));
    /* pages of the table are distinct and in range */
    int seen[10] = {0}, dup = 0;
    for (int i = 0; i < kv_stream_pages(&s); i++)
        dup |= s.table[i] < 0 || s.table[i] >= 10 || seen[s.table[i]]++;
    CHECK(!dup && kv_stream_pages(&s) == 10 && kv_pool_n_free(p) == 0, "10 distinct pages in use");
    kv_stream_end_chunk(&s);
    CHECK(kv_stream_begin_chunk(&s, 6) == 0, "chunk 2 (reuses evicted pages)");
    print_frames("chunk 2 attends", &s);
    CHECK(frames_are(&s, (int[]){0, 5, 6, 7, 8}, 5), "chunk 2: sink 0, frame 5, own 6..8 (2, 3, 4 evicted)");
    CHECK(s.frames_evicted == 4, "4 frames evicted so far (%lld)", (long long)s.frames_evicted);
    int32_t sink_pages[2] = {s.table[0], s.table[1]};
    kv_stream_end_chunk(&s);
    for (int c = 3; c < 20; c++) {
        CHECK(kv_stream_begin_chunk(&s, 3 * c) == 0, "chunk %d", c);
        kv_stream_end_chunk(&s);
    }
    CHECK(s.frame[0] == 0 && s.table[0] == sink_pages[0] && s.table[1] == sink_pages[1],
          "the sink frame and its pages are kept for ever");
    CHECK(kv_pool_n_free(p) == 0, "steady state holds sink + window = 5 frames = 10 pages");

    /* exhaustion: a second stream cannot start; nothing is taken */
    kv_stream s2;
    CHECK(kv_stream_init(&s2, p, 6, 1, 4, 3, err, sizeof err) == 0, "second stream");
    CHECK(kv_stream_begin_chunk(&s2, 0) == -1 && kv_stream_pages(&s2) == 0, "pool exhausted: refused cleanly");
    /* abort gives the chunk's pages back */
    kv_stream_free(&s);
    CHECK(kv_pool_n_free(p) == 10, "free returns every page");
    CHECK(kv_stream_begin_chunk(&s2, 0) == 0 && kv_pool_n_free(p) == 4, "second stream runs now");
    kv_stream_abort_chunk(&s2);
    CHECK(kv_pool_n_free(p) == 10 && s2.n_frames == 0, "abort returns the chunk's pages");
    kv_stream_free(&s2);

    /* sinks larger than a chunk: chunk 0 all sinks, chunk 1's first two too */
    kv_pool_free(p);
    pc.n_pages = 16;
    p = kv_pool_new(be, &pc, err, sizeof err);
    CHECK(kv_stream_init(&s, p, 6, 5, 3, 3, err, sizeof err) == 0, "sink 5 window 3");
    for (int c = 0; c < 4; c++) {
        CHECK(kv_stream_begin_chunk(&s, 3 * c) == 0, "chunk %d", c);
        kv_stream_end_chunk(&s);
    }
    print_frames("sink 5, window 3 after 4 chunks", &s);
    CHECK(s.n_sink_held == 5 && frames_are(&s, (int[]){0, 1, 2, 3, 4, 9, 10, 11}, 8), "five sinks kept");
    kv_stream_free(&s);

    /* layer views: layer 1 of page 3 starts at 3 * page + 1 * 3 tokens * 4 values */
    int32_t pages[1] = {3};
    kn_kv kv = kv_pool_layer(p, 1, pages, 3);
    CHECK(kv.off == (size_t)(3 * 4) * 4 && kv.page_stride == 3 * 2 * 4 && kv.row_stride == 4,
          "layer view offsets");
    kv_pool_free(p);
    kn_backend_free(be);
    return check_done();
}
