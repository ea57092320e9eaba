/* tests/fuzz/fuzz_proto_media.c — libFuzzer harness for binary media messages (proto/media.c).
 *
 * Each input is read as a stream of media messages, the way a client reads a WebSocket's binary
 * frames concatenated. For every message the harness checks what the parser promised: a prefix of
 * a message is NEED_MORE with a `need` that stays consistent, an accepted header re-encodes to the
 * same 28 bytes, the payload lies inside the input, and an Annex-B payload iterates to a clean end
 * or a framing error without leaving its bounds, and rebuilds byte for byte with
 * proto_annexb_append. The raw input is also iterated as an Annex-B payload. A broken promise
 * calls abort(), which libFuzzer reports as a crash.
 *
 * Build and run (copy the corpus first so new inputs do not land in the repository):
 *   clang -fsanitize=fuzzer,address,undefined -I. proto/media.c proto/json.c \
 *       tests/fuzz/fuzz_proto_media.c -ljansson -o /tmp/fuzz_proto_media
 *   cp -r tests/fuzz/corpus/proto_media /tmp/pm_corpus && /tmp/fuzz_proto_media -max_total_time=60 /tmp/pm_corpus
 *
 * Built with -DPROTO_FUZZ_MAIN (any compiler, no libFuzzer) it replays the files named on the
 * command line through the same checks. The seeds come from `test_proto --seeds DIR`.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "proto/proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/fuzz/fuzz.h"

/* Iterate p[0..len) as Annex-B records; when rebuild, the records must re-encode to p exactly
 * (on a clean end). */
static void check_annexb(const uint8_t *p, size_t len, int rebuild)
{
    proto_buf b = {0};
    size_t off = 0, prev = 0, au_len;
    const uint8_t *au;
    proto_status s;
    while ((s = proto_annexb_next(p, len, &off, &au, &au_len)) == PROTO_OK) {
        REQUIRE(au_len > 0 && au == p + prev + 4 && off == prev + 4 + au_len && off <= len);
        if (rebuild)
            REQUIRE(proto_annexb_append(&b, au, au_len) == PROTO_OK);
        prev = off;
    }
    REQUIRE(off == prev); /* a failed step does not move */
    REQUIRE(au == NULL && au_len == 0);
    if (s == PROTO_NEED_MORE) {
        REQUIRE(off == len);
        if (rebuild)
            REQUIRE(b.len == len && (len == 0 || memcmp(b.data, p, len) == 0));
    } else {
        REQUIRE(s == PROTO_ERR_FORMAT && off < len);
    }
    proto_buf_free(&b);
}

static void check_message(const uint8_t *buf, size_t len, size_t *used)
{
    proto_media_hdr h;
    const uint8_t *pl = NULL;
    size_t need = 12345;
    proto_status s = proto_media_parse(buf, len, &h, &pl, &need);
    *used = 0;
    if (s == PROTO_NEED_MORE) {
        REQUIRE(need > len && need >= PROTO_MEDIA_HEADER && need <= PROTO_MEDIA_HEADER + (size_t)PROTO_MAX_PAYLOAD);
        return;
    }
    if (s != PROTO_OK) {
        REQUIRE((s == PROTO_ERR_FORMAT || s == PROTO_ERR_RANGE) && need == 0);
        /* a rejection at full length is never NEED_MORE-then-OK: longer input fails the same way */
        return;
    }
    REQUIRE(need == PROTO_MEDIA_HEADER + (size_t)h.payload_len && need <= len);
    REQUIRE(pl == buf + PROTO_MEDIA_HEADER);
    REQUIRE(h.payload_len <= PROTO_MAX_PAYLOAD);
    REQUIRE(h.type == PROTO_MSG_INIT || h.type == PROTO_MSG_MEDIA);
    REQUIRE(h.format == PROTO_FMT_ANNEXB || h.format == PROTO_FMT_FMP4);
    REQUIRE((h.flags & ~PROTO_FLAGS_ALL) == 0);

    uint8_t hb[PROTO_MEDIA_HEADER];
    REQUIRE(proto_media_encode_header(hb, &h) == PROTO_MEDIA_HEADER);
    REQUIRE(memcmp(hb, buf, PROTO_MEDIA_HEADER) == 0);

    /* every proper prefix is NEED_MORE: 28 until the header is whole, then the full size */
    for (size_t k = 0; k < need; k = k < PROTO_MEDIA_HEADER ? k + 1 : need - 1 > k ? need - 1 : need) {
        size_t n2 = 0;
        proto_media_hdr h2;
        REQUIRE(proto_media_parse(buf, k, &h2, NULL, &n2) == PROTO_NEED_MORE);
        REQUIRE(n2 == (k < PROTO_MEDIA_HEADER ? PROTO_MEDIA_HEADER : need));
    }

    if (h.type == PROTO_MSG_MEDIA && h.format == PROTO_FMT_ANNEXB)
        check_annexb(pl, h.payload_len, 1);
    *used = need;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0, used;
    while (off < size) {
        check_message(data + off, size - off, &used);
        if (!used)
            break;
        off += used;
    }
    check_annexb(data, size, 1);
    return 0;
}

#ifdef PROTO_FUZZ_MAIN
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 1;
        }
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0, n;
        uint8_t chunk[4096];
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
            if (len + n > cap) {
                cap = (len + n) * 2;
                uint8_t *nb = realloc(buf, cap);
                REQUIRE(nb);
                buf = nb;
            }
            memcpy(buf + len, chunk, n);
            len += n;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        printf("ok %s\n", argv[i]);
    }
    return 0;
}
#endif
