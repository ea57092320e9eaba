/* tests/proto/test_proto.c — unit tests for the wire protocol (proto/media.c, proto/json.c).
 *
 * Media messages: header round trips (every field, 64-bit pts), each rejection, the NEED_MORE
 * contract for truncated headers and payloads, Annex-B framing both ways. JSON: every rule of the
 * REST bodies and client messages, each checked for its status and for an error message that names
 * the field; the builders' output parsed back with jansson, with quotes, newlines, non-ASCII and
 * invalid bytes in the strings. Session ids, format names, UTF-8 validation.
 *
 * `test_proto --seeds DIR` writes the fuzzers' seed corpora into DIR/proto_media and DIR/proto_json
 * (both must exist) instead of testing.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "proto/proto.h"
#include "tests/check.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------------------------ */

/* A heap copy of s without its NUL, so ASan catches a parser that reads past len. */
static char *exact(const char *s, size_t len)
{
    char *p = malloc(len ? len : 1);
    if (p && len)
        memcpy(p, s, len);
    return p;
}

static proto_status create(const char *body, proto_create_req *r, char *err, size_t errlen)
{
    char *b = exact(body, strlen(body));
    proto_status s = proto_parse_create(b, strlen(body), r, err, errlen);
    free(b);
    return s;
}

static proto_status cmsg(const char *text, proto_client_msg *m, char *err, size_t errlen)
{
    char *b = exact(text, strlen(text));
    proto_status s = proto_parse_client_msg(b, strlen(text), m, err, errlen);
    free(b);
    return s;
}

/* a string for printf, NULL included */
#define NN(x) ((x) ? (x) : "(null)")

/* err holds only printable ASCII */
static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

/* A create body that must fail with want, with a message that contains needle. */
static void create_fails(const char *body, proto_status want, const char *needle)
{
    proto_create_req r;
    char err[256];
    memset(&r, 0x55, sizeof r);
    proto_status s = create(body, &r, err, sizeof err);
    CHECK(s == want, "create %.60s: got %s, want %s (%s)", body, proto_strerror(s), proto_strerror(want), err);
    CHECK(strstr(err, needle) != NULL, "create %.60s: message '%s' lacks '%s'", body, err, needle);
    CHECK(printable(err), "create %.60s: message not printable ASCII", body);
    CHECK(r.prompt[0] == 0 && r.has_seed == 0 && r.format == 0, "create %.60s: out not zeroed on error", body);
}

static void cmsg_fails(const char *text, proto_status want, const char *needle)
{
    proto_client_msg m;
    char err[256];
    proto_status s = cmsg(text, &m, err, sizeof err);
    CHECK(s == want, "cmsg %.60s: got %s, want %s (%s)", text, proto_strerror(s), proto_strerror(want), err);
    CHECK(strstr(err, needle) != NULL, "cmsg %.60s: message '%s' lacks '%s'", text, err, needle);
}

static json_t *parse_back(const char *s)
{
    json_error_t je;
    json_t *j = s ? json_loads(s, JSON_REJECT_DUPLICATES, &je) : NULL;
    CHECK(j != NULL, "builder output does not parse: %s", s ? s : "(null)");
    return j;
}

static int str_is(json_t *o, const char *key, const char *want)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) && strcmp(json_string_value(v), want) == 0;
}

static int int_is(json_t *o, const char *key, json_int_t want)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) == want;
}

/* ---- media messages ----------------------------------------------------------------------------- */

static proto_media_hdr sample_hdr(void)
{
    proto_media_hdr h = {.type = PROTO_MSG_MEDIA,
                         .flags = PROTO_FLAG_KEY | PROTO_FLAG_DISCONT,
                         .format = PROTO_FMT_ANNEXB,
                         .seq = 0xdeadbeefu,
                         .chunk = 0x01020304u,
                         .pts_us = UINT64_C(0x8877665544332211),
                         .n_frames = 0xfedc,
                         .payload_len = 5};
    return h;
}

static void test_media_roundtrip(void)
{
    proto_media_hdr h = sample_hdr(), g;
    uint8_t msg[PROTO_MEDIA_HEADER + 5];
    CHECK(proto_media_encode_header(msg, &h) == PROTO_MEDIA_HEADER, "encode");
    memcpy(msg + PROTO_MEDIA_HEADER, "hello", 5);
    /* the bytes, as PROTOCOL.md lays them out (big-endian) */
    static const uint8_t want[PROTO_MEDIA_HEADER] = {0x56, 1, 2, 3, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4,
                                                     0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
                                                     0xfe, 0xdc, 1, 0, 0, 0, 0, 5};
    CHECK(memcmp(msg, want, PROTO_MEDIA_HEADER) == 0, "header bytes differ from the spec layout");

    const uint8_t *pl = NULL;
    size_t need = 99;
    proto_status s = proto_media_parse(msg, sizeof msg, &g, &pl, &need);
    CHECK(s == PROTO_OK, "parse: %s", proto_strerror(s));
    CHECK(g.type == h.type && g.flags == h.flags && g.format == h.format && g.seq == h.seq && g.chunk == h.chunk &&
              g.pts_us == h.pts_us && g.n_frames == h.n_frames && g.payload_len == h.payload_len,
          "round trip differs");
    CHECK(pl == msg + PROTO_MEDIA_HEADER && need == sizeof msg, "payload pointer / need");

    /* trailing bytes belong to the next message and are ignored */
    uint8_t two[2 * sizeof msg];
    memcpy(two, msg, sizeof msg);
    memcpy(two + sizeof msg, msg, sizeof msg);
    CHECK(proto_media_parse(two, sizeof two, &g, &pl, &need) == PROTO_OK && need == sizeof msg, "trailing bytes");

    /* init segment, fmp4, empty payload, NULL out-pointers */
    proto_media_hdr i = {.type = PROTO_MSG_INIT, .format = PROTO_FMT_FMP4, .pts_us = UINT64_MAX};
    uint8_t ib[PROTO_MEDIA_HEADER];
    CHECK(proto_media_encode_header(ib, &i) == PROTO_MEDIA_HEADER, "encode init");
    CHECK(proto_media_parse(ib, sizeof ib, &g, NULL, NULL) == PROTO_OK && g.type == PROTO_MSG_INIT &&
              g.payload_len == 0 && g.pts_us == UINT64_MAX,
          "init round trip");

    /* payload exactly at the cap is accepted; the parser only needs the header to say so */
    h.payload_len = PROTO_MAX_PAYLOAD;
    CHECK(proto_media_encode_header(msg, &h) == PROTO_MEDIA_HEADER, "encode at cap");
    s = proto_media_parse(msg, PROTO_MEDIA_HEADER, &g, &pl, &need);
    CHECK(s == PROTO_NEED_MORE && need == PROTO_MEDIA_HEADER + (size_t)PROTO_MAX_PAYLOAD, "at cap: %s need %zu",
          proto_strerror(s), need);

    /* the encoder refuses what the parser would reject */
    proto_media_hdr bad = sample_hdr();
    bad.type = 3;
    CHECK(proto_media_encode_header(msg, &bad) == 0, "encode type 3");
    bad = sample_hdr();
    bad.format = 0;
    CHECK(proto_media_encode_header(msg, &bad) == 0, "encode format 0");
    bad = sample_hdr();
    bad.flags = 4;
    CHECK(proto_media_encode_header(msg, &bad) == 0, "encode flag 4");
    bad = sample_hdr();
    bad.type = PROTO_MSG_INIT; /* with annexb */
    CHECK(proto_media_encode_header(msg, &bad) == 0, "encode init+annexb");
    bad = sample_hdr();
    bad.payload_len = PROTO_MAX_PAYLOAD + 1;
    CHECK(proto_media_encode_header(msg, &bad) == 0, "encode over cap");
    CHECK(msg[0] == 0 && msg[27] == 0 && proto_media_parse(msg, sizeof msg, NULL, NULL, NULL) == PROTO_ERR_FORMAT,
          "a refused header is zero-filled, which readers reject");
}

/* msg with byte i set to v must be rejected with want, at full length and (when prefix > 0) as its
 * first prefix bytes: the parser need not wait for the whole header to see it. */
static void media_rejects(size_t i, uint8_t v, size_t prefix, proto_status want, const char *what)
{
    proto_media_hdr h = sample_hdr();
    uint8_t msg[PROTO_MEDIA_HEADER + 5] = {0};
    proto_media_encode_header(msg, &h);
    msg[i] = v;
    size_t need = 7;
    proto_status s = proto_media_parse(msg, sizeof msg, NULL, NULL, &need);
    CHECK(s == want && need == 0, "%s: got %s, want %s", what, proto_strerror(s), proto_strerror(want));
    if (prefix) {
        s = proto_media_parse(msg, prefix, NULL, NULL, &need);
        CHECK(s == want, "%s as a %zu-byte prefix: got %s", what, prefix, proto_strerror(s));
    }
}

static void test_media_reject(void)
{
    media_rejects(0, 0x57, 1, PROTO_ERR_FORMAT, "bad magic");
    media_rejects(1, 0, 2, PROTO_ERR_FORMAT, "version 0");
    media_rejects(1, 2, 2, PROTO_ERR_FORMAT, "version 2");
    media_rejects(2, 0, 3, PROTO_ERR_FORMAT, "type 0");
    media_rejects(2, 3, 3, PROTO_ERR_FORMAT, "type 3");
    media_rejects(3, 4, 4, PROTO_ERR_FORMAT, "flag bit 2");
    media_rejects(22, 0, 23, PROTO_ERR_FORMAT, "format 0");
    media_rejects(22, 3, 23, PROTO_ERR_FORMAT, "format 3");
    media_rejects(23, 1, 24, PROTO_ERR_FORMAT, "reserved non-zero");
    media_rejects(2, PROTO_MSG_INIT, 23, PROTO_ERR_FORMAT, "init with annexb");
    /* payload length over the cap: 64 MiB + 5, and about 4 GiB */
    media_rejects(24, 0x04, PROTO_MEDIA_HEADER, PROTO_ERR_RANGE, "payload 64 MiB + 5");
    media_rejects(24, 0xff, PROTO_MEDIA_HEADER, PROTO_ERR_RANGE, "payload ~4 GiB");

    /* truncated header: NEED_MORE, need = header size, at every length */
    proto_media_hdr h = sample_hdr(), g = {0};
    uint8_t msg[PROTO_MEDIA_HEADER + 5];
    proto_media_encode_header(msg, &h);
    memcpy(msg + PROTO_MEDIA_HEADER, "hello", 5);
    int all = 1;
    for (size_t n = 0; n < PROTO_MEDIA_HEADER; n++) {
        size_t need = 0;
        const uint8_t *pl = NULL;
        if (proto_media_parse(msg, n, &g, &pl, &need) != PROTO_NEED_MORE || need != PROTO_MEDIA_HEADER || pl)
            all = 0;
    }
    CHECK(all, "truncated header should be NEED_MORE with need %d", PROTO_MEDIA_HEADER);
    size_t need = 0;
    CHECK(proto_media_parse(NULL, 0, NULL, NULL, &need) == PROTO_NEED_MORE && need == PROTO_MEDIA_HEADER,
          "NULL, 0");
    /* truncated payload: NEED_MORE, need = whole message */
    for (size_t n = PROTO_MEDIA_HEADER; n < sizeof msg; n++) {
        need = 0;
        proto_status s = proto_media_parse(msg, n, &g, NULL, &need);
        CHECK(s == PROTO_NEED_MORE && need == sizeof msg, "truncated payload at %zu: %s need %zu", n,
              proto_strerror(s), need);
    }
}

static void test_annexb(void)
{
    proto_buf b = {0};
    static const uint8_t a1[] = {0, 0, 0, 1, 0x67, 0x42}, a2[] = {0, 0, 1, 0x65}, a3[] = {0, 0, 1, 0x41, 9, 9, 9};
    const uint8_t *aus[] = {a1, a2, a3};
    size_t lens[] = {sizeof a1, sizeof a2, sizeof a3};
    for (int i = 0; i < 3; i++)
        CHECK(proto_annexb_append(&b, aus[i], lens[i]) == PROTO_OK, "append %d", i);
    CHECK(b.len == 3 * 4 + sizeof a1 + sizeof a2 + sizeof a3, "buffer length %zu", b.len);
    CHECK(b.data[0] == 0 && b.data[1] == 0 && b.data[2] == 0 && b.data[3] == sizeof a1, "big-endian length prefix");

    /* iterate over an exact-size heap copy so reading past the end trips ASan */
    uint8_t *p = malloc(b.len);
    memcpy(p, b.data, b.len);
    size_t off = 0, n = 0, au_len;
    const uint8_t *au;
    proto_status s;
    int same = 1;
    while ((s = proto_annexb_next(p, b.len, &off, &au, &au_len)) == PROTO_OK) {
        if (n >= 3 || au_len != lens[n] || memcmp(au, aus[n], au_len) != 0)
            same = 0;
        n++;
    }
    CHECK(s == PROTO_NEED_MORE && n == 3 && same && off == b.len, "iterate 3 records: %s n=%zu", proto_strerror(s), n);
    /* calling again at the end stays at the end */
    CHECK(proto_annexb_next(p, b.len, &off, &au, &au_len) == PROTO_NEED_MORE, "end is sticky");
    /* an empty payload has no records */
    off = 0;
    CHECK(proto_annexb_next(NULL, 0, &off, &au, &au_len) == PROTO_NEED_MORE, "empty payload");

    /* truncated: the last record's unit cut by one byte; then a cut inside a length prefix */
    off = 0;
    n = 0;
    while ((s = proto_annexb_next(p, b.len - 1, &off, &au, &au_len)) == PROTO_OK)
        n++;
    CHECK(s == PROTO_ERR_FORMAT && n == 2 && au == NULL, "truncated record: %s after %zu", proto_strerror(s), n);
    CHECK(off == 4 + sizeof a1 + 4 + sizeof a2, "off stays at the bad record");
    off = 0;
    n = 0;
    size_t cut = 4 + sizeof a1 + 2; /* two bytes of the second length */
    while ((s = proto_annexb_next(p, cut, &off, &au, &au_len)) == PROTO_OK)
        n++;
    CHECK(s == PROTO_ERR_FORMAT && n == 1, "partial length prefix: %s after %zu", proto_strerror(s), n);

    /* zero-length record */
    static const uint8_t zero[] = {0, 0, 0, 0, 0, 0, 0, 1, 7};
    off = 0;
    CHECK(proto_annexb_next(zero, sizeof zero, &off, &au, &au_len) == PROTO_ERR_FORMAT && off == 0,
          "zero-length record");
    /* length past the end, including one that would overflow an unchecked off + 4 + n */
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, 1};
    off = 0;
    CHECK(proto_annexb_next(huge, sizeof huge, &off, &au, &au_len) == PROTO_ERR_FORMAT, "length past the end");
    off = 99;
    CHECK(proto_annexb_next(huge, sizeof huge, &off, &au, &au_len) == PROTO_ERR_FORMAT, "off > len");

    /* writer limits, and a failed append leaves the buffer alone */
    size_t len0 = b.len;
    CHECK(proto_annexb_append(&b, a1, 0) == PROTO_ERR_RANGE && b.len == len0, "append empty unit");
    CHECK(proto_buf_append(&b, NULL, 0) == PROTO_OK && b.len == len0, "append nothing");
    CHECK(proto_buf_reserve(&b, SIZE_MAX) == PROTO_ERR_RANGE && b.len == len0, "reserve overflow");
    CHECK(proto_buf_append(&b, "xy", 2) == PROTO_OK && b.len == len0 + 2, "append bytes");

    /* a whole message: header + payload in one buffer, read back */
    proto_buf m = {0};
    uint8_t hb[PROTO_MEDIA_HEADER];
    proto_media_hdr h = {.type = PROTO_MSG_MEDIA, .format = PROTO_FMT_ANNEXB, .n_frames = 3,
                         .payload_len = (uint32_t)len0};
    CHECK(proto_media_encode_header(hb, &h) == PROTO_MEDIA_HEADER, "encode");
    CHECK(proto_buf_append(&m, hb, sizeof hb) == PROTO_OK && proto_buf_append(&m, p, len0) == PROTO_OK, "build");
    proto_media_hdr g;
    const uint8_t *pl;
    CHECK(proto_media_parse(m.data, m.len, &g, &pl, NULL) == PROTO_OK && g.payload_len == len0 &&
              memcmp(pl, p, len0) == 0,
          "message with Annex-B payload");

    proto_buf_free(&m);
    proto_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0, "free zeroes");
    proto_buf_free(&b); /* twice is fine */
    free(p);
}

/* ---- REST bodies -------------------------------------------------------------------------------- */

static void test_create(void)
{
    proto_create_req r;
    char err[256] = "x";
    proto_status s = create("{\"prompt\":\"a cat\"}", &r, err, sizeof err);
    CHECK(s == PROTO_OK && strcmp(r.prompt, "a cat") == 0 && !r.has_seed && !r.has_seconds &&
              r.format == PROTO_FMT_ANNEXB && err[0] == 0,
          "minimal body: %s %s", proto_strerror(s), err);

    s = create(" {\"prompt\":\"caf\\u00e9 \\\"x\\\"\\n\",\"seed\":9007199254740991,\"seconds\":2.5,"
               "\"format\":\"fmp4\",\"extra\":[1,{\"a\":null}]} \n",
               &r, err, sizeof err);
    CHECK(s == PROTO_OK, "full body: %s %s", proto_strerror(s), err);
    CHECK(strcmp(r.prompt, "caf\xc3\xa9 \"x\"\n") == 0, "prompt decoded: %s", r.prompt);
    CHECK(r.has_seed && r.seed == PROTO_MAX_SEED, "seed 2^53-1");
    CHECK(r.has_seconds && r.seconds == 2.5, "seconds 2.5");
    CHECK(r.format == PROTO_FMT_FMP4, "format fmp4");

    CHECK(create("{\"prompt\":\"x\",\"seed\":0,\"seconds\":3600,\"format\":\"annexb\"}", &r, err, sizeof err) ==
                  PROTO_OK &&
              r.has_seed && r.seed == 0 && r.seconds == 3600.0 && r.format == PROTO_FMT_ANNEXB,
          "edges: seed 0, integer seconds 3600: %s", err);
    CHECK(create("{\"prompt\":\"x\",\"seconds\":1e-9}", &r, err, sizeof err) == PROTO_OK, "tiny seconds: %s", err);

    /* prompt of exactly 2000 bytes (multi-byte characters included) */
    char body[PROTO_MAX_PROMPT + 64];
    strcpy(body, "{\"prompt\":\"");
    size_t n = strlen(body);
    for (int i = 0; i < 666; i++, n += 3)
        memcpy(body + n, "\xe2\x82\xac", 3); /* the euro sign, 3 bytes */
    memcpy(body + n, "ab", 2);
    n += 2;
    strcpy(body + n, "\"}");
    CHECK(create(body, &r, err, sizeof err) == PROTO_OK && strlen(r.prompt) == PROTO_MAX_PROMPT,
          "2000-byte prompt: %s", err);
    /* 2001 bytes */
    memcpy(body + n, "c\"}", 4);
    create_fails(body, PROTO_ERR_RANGE, "'prompt'");

    create_fails("{}", PROTO_ERR_FORMAT, "'prompt'");
    create_fails("{\"seed\":1}", PROTO_ERR_FORMAT, "'prompt'");
    create_fails("{\"prompt\":\"\"}", PROTO_ERR_RANGE, "'prompt'");
    create_fails("{\"prompt\":7}", PROTO_ERR_TYPE, "'prompt'");
    create_fails("{\"prompt\":null}", PROTO_ERR_TYPE, "'prompt'");
    create_fails("{\"prompt\":[\"a\"]}", PROTO_ERR_TYPE, "'prompt'");
    create_fails("{\"prompt\":\"x\",\"seed\":-1}", PROTO_ERR_RANGE, "'seed'");
    create_fails("{\"prompt\":\"x\",\"seed\":1.5}", PROTO_ERR_TYPE, "'seed'");
    create_fails("{\"prompt\":\"x\",\"seed\":1.0}", PROTO_ERR_TYPE, "'seed'");
    create_fails("{\"prompt\":\"x\",\"seed\":9007199254740992}", PROTO_ERR_RANGE, "'seed'");
    create_fails("{\"prompt\":\"x\",\"seed\":true}", PROTO_ERR_TYPE, "'seed'");
    create_fails("{\"prompt\":\"x\",\"seed\":\"5\"}", PROTO_ERR_TYPE, "'seed'");
    create_fails("{\"prompt\":\"x\",\"seed\":null}", PROTO_ERR_TYPE, "'seed'");
    create_fails("{\"prompt\":\"x\",\"seconds\":0}", PROTO_ERR_RANGE, "'seconds' must be a number in (0, 3600]");
    create_fails("{\"prompt\":\"x\",\"seconds\":-0.0}", PROTO_ERR_RANGE, "'seconds'");
    create_fails("{\"prompt\":\"x\",\"seconds\":-5}", PROTO_ERR_RANGE, "'seconds'");
    create_fails("{\"prompt\":\"x\",\"seconds\":3601}", PROTO_ERR_RANGE, "'seconds'");
    create_fails("{\"prompt\":\"x\",\"seconds\":3600.0001}", PROTO_ERR_RANGE, "'seconds'");
    create_fails("{\"prompt\":\"x\",\"seconds\":\"5\"}", PROTO_ERR_TYPE, "'seconds'");
    create_fails("{\"prompt\":\"x\",\"seconds\":false}", PROTO_ERR_TYPE, "'seconds'");
    create_fails("{\"prompt\":\"x\",\"format\":\"mkv\"}", PROTO_ERR_RANGE, "'format'");
    create_fails("{\"prompt\":\"x\",\"format\":\"FMP4\"}", PROTO_ERR_RANGE, "'format'");
    create_fails("{\"prompt\":\"x\",\"format\":\"fmp\"}", PROTO_ERR_RANGE, "'format'");
    create_fails("{\"prompt\":\"x\",\"format\":2}", PROTO_ERR_TYPE, "'format'");
    create_fails("[{\"prompt\":\"x\"}]", PROTO_ERR_TYPE, "object");
    create_fails("\"prompt\"", PROTO_ERR_TYPE, "object");
    create_fails("42", PROTO_ERR_TYPE, "object");
    create_fails("null", PROTO_ERR_TYPE, "object");
    create_fails("{prompt: \"x\"}", PROTO_ERR_FORMAT, "JSON");
    create_fails("{\"prompt\":\"x\"", PROTO_ERR_FORMAT, "JSON");           /* truncated */
    create_fails("{\"prompt\":\"x", PROTO_ERR_FORMAT, "JSON");             /* truncated in a string */
    create_fails("{\"prompt\":\"x\"} {}", PROTO_ERR_FORMAT, "JSON");       /* trailing value */
    create_fails("{\"prompt\":\"x\",\"prompt\":\"y\"}", PROTO_ERR_FORMAT, "duplicate");
    create_fails("{\"prompt\":\"\\u0000\"}", PROTO_ERR_FORMAT, "\\u0000");
    create_fails("{\"prompt\":\"\\ud800\"}", PROTO_ERR_FORMAT, "JSON"); /* lone surrogate */
    create_fails("{\"prompt\":\"\xff\xfe\"}", PROTO_ERR_FORMAT, "UTF-8");
    create_fails("{\"prompt\":\"\xc0\xaf\"}", PROTO_ERR_FORMAT, "UTF-8"); /* overlong '/' */
    create_fails("", PROTO_ERR_FORMAT, "empty");
    create_fails("{\"prompt\":\"x\",\"seed\":99999999999999999999}", PROTO_ERR_FORMAT, "JSON");

    /* raw NUL bytes: inside a string, and after a valid object (strlen-based helpers cannot) */
    static const char nul1[] = "{\"prompt\":\"a\0b\"}", nul2[] = "{\"prompt\":\"ab\"}\0";
    memset(&r, 0, sizeof r);
    s = proto_parse_create(nul1, sizeof nul1 - 1, &r, err, sizeof err);
    CHECK(s == PROTO_ERR_FORMAT && printable(err), "NUL in a string: %s %s", proto_strerror(s), err);
    s = proto_parse_create(nul2, sizeof nul2 - 1, &r, err, sizeof err);
    CHECK(s == PROTO_ERR_FORMAT, "NUL after the object: %s %s", proto_strerror(s), err);
    /* the length is honoured: bytes past len are not read */
    s = proto_parse_create("{\"prompt\":\"ab\"}garbage", 15, &r, err, sizeof err);
    CHECK(s == PROTO_OK && strcmp(r.prompt, "ab") == 0, "len honoured: %s %s", proto_strerror(s), err);
    s = proto_parse_create(NULL, 0, &r, err, sizeof err);
    CHECK(s == PROTO_ERR_FORMAT, "NULL body");

    /* size limit: exactly 16 KiB of valid JSON passes, one byte more does not (before parsing) */
    char *big = malloc(PROTO_MAX_BODY + 2);
    memset(big, ' ', PROTO_MAX_BODY + 1);
    memcpy(big, "{\"prompt\":\"x\"}", 14);
    s = proto_parse_create(big, PROTO_MAX_BODY, &r, err, sizeof err);
    CHECK(s == PROTO_OK, "16 KiB body: %s %s", proto_strerror(s), err);
    s = proto_parse_create(big, PROTO_MAX_BODY + 1, &r, err, sizeof err);
    CHECK(s == PROTO_ERR_RANGE && strstr(err, "16384"), "huge body: %s %s", proto_strerror(s), err);
    free(big);

    /* err may be NULL or tiny; a tiny one is truncated, NUL-terminated */
    CHECK(create("{}", &r, NULL, 0) == PROTO_ERR_FORMAT, "NULL err");
    char tiny[8];
    CHECK(create("{}", &r, tiny, sizeof tiny) == PROTO_ERR_FORMAT && strlen(tiny) == sizeof tiny - 1, "tiny err");
    /* jansson quotes the input in its messages; ours stay printable */
    create_fails("{\"prompt\": \xe2\x82\xac}", PROTO_ERR_FORMAT, "JSON");
}

static void test_prompt_body(void)
{
    char p[PROTO_MAX_PROMPT + 1], err[256];
    const char *ok = "{\"prompt\":\"a dog \\ud83d\\udc36\",\"x\":1}";
    CHECK(proto_parse_prompt(ok, strlen(ok), p, err, sizeof err) == PROTO_OK &&
              strcmp(p, "a dog \xf0\x9f\x90\xb6") == 0,
          "prompt body: %s", err);
    static const char *bad[] = {"{}", "{\"prompt\":\"\"}", "{\"prompt\":1}", "[]", "{\"prompt\":"};
    static const proto_status want[] = {PROTO_ERR_FORMAT, PROTO_ERR_RANGE, PROTO_ERR_TYPE, PROTO_ERR_TYPE,
                                        PROTO_ERR_FORMAT};
    for (int i = 0; i < 5; i++) {
        proto_status s = proto_parse_prompt(bad[i], strlen(bad[i]), p, err, sizeof err);
        CHECK(s == want[i] && p[0] == 0, "prompt body %s: %s (%s)", bad[i], proto_strerror(s), err);
    }
    CHECK(strstr(err, "JSON") != NULL, "message: %s", err);
    proto_parse_prompt("{\"prompt\":1}", 12, p, err, sizeof err);
    CHECK(strstr(err, "'prompt'") != NULL, "names the field: %s", err);
    char *big = malloc(PROTO_MAX_BODY + 1);
    memset(big, ' ', PROTO_MAX_BODY + 1);
    CHECK(proto_parse_prompt(big, PROTO_MAX_BODY + 1, p, err, sizeof err) == PROTO_ERR_RANGE, "huge prompt body");
    free(big);
}

/* ---- client messages ---------------------------------------------------------------------------- */

static void test_client_msg(void)
{
    proto_client_msg m;
    char err[256];
    CHECK(cmsg("{\"type\":\"prompt\",\"prompt\":\"a fox\"}", &m, err, sizeof err) == PROTO_OK &&
              m.type == PROTO_CMSG_PROMPT && strcmp(m.prompt, "a fox") == 0,
          "prompt: %s", err);
    CHECK(cmsg("{\"type\":\"pause\"}", &m, err, sizeof err) == PROTO_OK && m.type == PROTO_CMSG_PAUSE &&
              m.prompt[0] == 0,
          "pause");
    CHECK(cmsg("{\"type\":\"resume\",\"extra\":true}", &m, err, sizeof err) == PROTO_OK && m.type == PROTO_CMSG_RESUME,
          "resume");
    CHECK(cmsg("{\"prompt\":\"ignored\",\"type\":\"stop\"}", &m, err, sizeof err) == PROTO_OK &&
              m.type == PROTO_CMSG_STOP && m.prompt[0] == 0,
          "stop");

    cmsg_fails("{\"type\":\"rewind\"}", PROTO_ERR_RANGE, "'type'");
    cmsg_fails("{\"type\":\"Pause\"}", PROTO_ERR_RANGE, "'type'");
    cmsg_fails("{\"type\":\"pause \"}", PROTO_ERR_RANGE, "'type'");
    cmsg_fails("{\"type\":\"\"}", PROTO_ERR_RANGE, "'type'");
    cmsg_fails("{\"type\":1}", PROTO_ERR_TYPE, "'type'");
    cmsg_fails("{\"prompt\":\"x\"}", PROTO_ERR_FORMAT, "'type'");
    cmsg_fails("{}", PROTO_ERR_FORMAT, "'type'");
    cmsg_fails("{\"type\":\"prompt\"}", PROTO_ERR_FORMAT, "'prompt'");
    cmsg_fails("{\"type\":\"prompt\",\"prompt\":\"\"}", PROTO_ERR_RANGE, "'prompt'");
    cmsg_fails("{\"type\":\"prompt\",\"prompt\":{}}", PROTO_ERR_TYPE, "'prompt'");
    cmsg_fails("[\"pause\"]", PROTO_ERR_TYPE, "object");
    cmsg_fails("pause", PROTO_ERR_FORMAT, "JSON");
    cmsg_fails("", PROTO_ERR_FORMAT, "empty");

    /* prompt too long: 2001 bytes in a message under the size limit */
    char text[PROTO_MAX_CLIENT_MSG + 64];
    int n = snprintf(text, sizeof text, "{\"type\":\"prompt\",\"prompt\":\"");
    memset(text + n, 'z', PROTO_MAX_PROMPT + 1);
    strcpy(text + n + PROTO_MAX_PROMPT + 1, "\"}");
    cmsg_fails(text, PROTO_ERR_RANGE, "'prompt'");
    /* message over 8 KiB, even though its JSON is fine */
    memset(text, ' ', sizeof text);
    memcpy(text, "{\"type\":\"stop\"}", 15);
    proto_status s = proto_parse_client_msg(text, PROTO_MAX_CLIENT_MSG, &m, err, sizeof err);
    CHECK(s == PROTO_OK, "8 KiB message: %s %s", proto_strerror(s), err);
    s = proto_parse_client_msg(text, PROTO_MAX_CLIENT_MSG + 1, &m, err, sizeof err);
    CHECK(s == PROTO_ERR_RANGE && strstr(err, "8192"), "oversized message: %s %s", proto_strerror(s), err);
    static const char nul[] = "{\"type\":\"stop\0\"}";
    CHECK(proto_parse_client_msg(nul, sizeof nul - 1, &m, err, sizeof err) == PROTO_ERR_FORMAT, "NUL in message");
}

/* ---- builders ----------------------------------------------------------------------------------- */

static void test_builders(void)
{
    /* quotes, backslash, newline, tab, control, non-ASCII, astral, a slash, HTML */
    const char *prompt = "say \"hi\"\\\n\t\x01 caf\xc3\xa9 \xf0\x9f\x90\xb6 a/b </script>";
    char *s = proto_json_prompt_switched(prompt, 8);
    json_t *j = parse_back(s);
    CHECK(j && str_is(j, "type", "prompt_switched") && str_is(j, "prompt", prompt) && int_is(j, "chunk", 8),
          "prompt_switched: %s", NN(s));
    CHECK(s && !strchr(s, '\n') && !strstr(s, "\": ") && !strstr(s, ", \""), "compact, one line: %s", NN(s));
    json_decref(j);
    free(s);

    s = proto_json_prompt_switched("a\xff" "b\xc3", 1); /* invalid bytes become '?' */
    j = parse_back(s);
    CHECK(j && str_is(j, "prompt", "a?b?"), "invalid UTF-8 replaced: %s", NN(s));
    json_decref(j);
    free(s);

    s = proto_json_error("bad_request", "field 'seconds' must be a number in (0, 3600]");
    CHECK(s && strcmp(s, "{\"error\":{\"code\":\"bad_request\",\"message\":\"field 'seconds' must be a number in "
                         "(0, 3600]\"}}") == 0,
          "error body: %s", NN(s));
    free(s);
    s = proto_json_error("bad_request", "quote \" newline \n");
    j = parse_back(s);
    CHECK(j && str_is(json_object_get(j, "error"), "message", "quote \" newline \n"), "error escapes: %s", NN(s));
    json_decref(j);
    free(s);
    s = proto_json_ws_error("bad_message", "unknown type");
    CHECK(s && strcmp(s, "{\"type\":\"error\",\"code\":\"bad_message\",\"message\":\"unknown type\"}") == 0,
          "ws error: %s", NN(s));
    free(s);

    s = proto_json_init("0123456789abcdef0123456789abcdef", PROTO_FMT_FMP4, "avc1.42c00b", 48, 32, 16);
    CHECK(s && strcmp(s, "{\"type\":\"init\",\"session\":\"0123456789abcdef0123456789abcdef\",\"format\":\"fmp4\","
                         "\"codec\":\"avc1.42c00b\",\"width\":48,\"height\":32,\"fps\":16,"
                         "\"mime\":\"video/mp4; codecs=\\\"avc1.42c00b\\\"\"}") == 0,
          "init: %s", NN(s));
    j = parse_back(s);
    CHECK(j && str_is(j, "mime", "video/mp4; codecs=\"avc1.42c00b\""), "mime parses back");
    json_decref(j);
    free(s);
    s = proto_json_init("x", PROTO_FMT_ANNEXB, "avc1", 1, 2, 3);
    j = parse_back(s);
    CHECK(j && str_is(j, "format", "annexb"), "init annexb: %s", NN(s));
    json_decref(j);
    free(s);
    CHECK(proto_json_init("x", 3, "avc1", 1, 2, 3) == NULL, "init with unknown format");

    s = proto_json_chunk(3, 12, 2250000, 4.1, 9.8, 31.5, 30720, 0);
    CHECK(s && strcmp(s, "{\"type\":\"chunk\",\"chunk\":3,\"frames\":12,\"pts_us\":2250000,\"gen_ms\":4.1,"
                         "\"latency_ms\":9.8,\"ttff_ms\":31.5,\"kv_bytes\":30720,\"dropped\":0}") == 0,
          "chunk: %s", NN(s));
    free(s);
    s = proto_json_chunk(INT64_MAX, 0, UINT64_MAX, 1.0 / 3.0, NAN, -1, UINT64_MAX, 5);
    j = parse_back(s);
    CHECK(j && int_is(j, "chunk", INT64_MAX) && int_is(j, "pts_us", INT64_MAX) &&
              json_is_null(json_object_get(j, "ttff_ms")) && json_is_null(json_object_get(j, "latency_ms")) &&
              fabs(json_real_value(json_object_get(j, "gen_ms")) - 0.333) < 1e-12 && int_is(j, "dropped", 5),
          "chunk edges: %s", NN(s));
    json_decref(j);
    free(s);

    s = proto_json_simple("paused");
    CHECK(s && strcmp(s, "{\"type\":\"paused\"}") == 0, "simple: %s", NN(s));
    free(s);
    s = proto_json_ended("stopped");
    CHECK(s && strcmp(s, "{\"type\":\"ended\",\"reason\":\"stopped\"}") == 0, "ended: %s", NN(s));
    free(s);
}

/* ---- names, ids, UTF-8 -------------------------------------------------------------------------- */

static void test_misc(void)
{
    CHECK(proto_format_from_name("annexb") == PROTO_FMT_ANNEXB && proto_format_from_name("fmp4") == PROTO_FMT_FMP4,
          "format names");
    CHECK(!proto_format_from_name("mkv") && !proto_format_from_name("") && !proto_format_from_name(NULL) &&
              !proto_format_from_name("annexb ") && !proto_format_from_name("ANNEXB"),
          "unknown format names");
    CHECK(proto_format_from_name_n("fmp4&key=1", 4) == PROTO_FMT_FMP4, "format by length");
    CHECK(strcmp(proto_format_name(PROTO_FMT_ANNEXB), "annexb") == 0 &&
              strcmp(proto_format_name(PROTO_FMT_FMP4), "fmp4") == 0 && proto_format_name(0) == NULL &&
              proto_format_name(3) == NULL,
          "format_name");

    const char *id = "9f0c1d2e3b4a59687766554433221100";
    CHECK(proto_valid_session_id(id, 32), "valid id");
    CHECK(!proto_valid_session_id(id, 31) && !proto_valid_session_id(NULL, 32), "short id / NULL");
    CHECK(!proto_valid_session_id("9F0C1D2E3B4A59687766554433221100", 32), "uppercase id");
    CHECK(!proto_valid_session_id("9f0c1d2e3b4a5968776655443322110g", 32), "non-hex id");
    CHECK(!proto_valid_session_id("9f0c1d2e3b4a59687766554433221100a", 33), "long id");
    CHECK(!proto_valid_session_id("9f0c1d2e3b4a596877665544332211\0" "0", 32), "NUL in id");
    CHECK(!proto_valid_session_id("../../etc/passwd/aaaaaaaaaaaaaaa", 32), "path in id");

    CHECK(proto_utf8_valid("", 0) && proto_utf8_valid("a\0b", 3) && proto_utf8_valid("\xc3\xa9", 2) &&
              proto_utf8_valid("\xf4\x8f\xbf\xbf", 4) && proto_utf8_valid("\xed\x9f\xbf", 3),
          "valid UTF-8");
    CHECK(!proto_utf8_valid("\xc3", 1) && !proto_utf8_valid("\xc0\x80", 2) && !proto_utf8_valid("\xed\xa0\x80", 3) &&
              !proto_utf8_valid("\xf4\x90\x80\x80", 4) && !proto_utf8_valid("\xe0\x80\x80", 3) &&
              !proto_utf8_valid("\x80", 1) && !proto_utf8_valid("\xf8\x88\x80\x80\x80", 5) &&
              !proto_utf8_valid("\xe2\x82", 2),
          "invalid UTF-8");

    for (int s = PROTO_OK; s <= PROTO_ERR_NOMEM; s++)
        CHECK(proto_strerror((proto_status)s) && *proto_strerror((proto_status)s), "strerror %d", s);
    CHECK(strcmp(proto_strerror((proto_status)99), "unknown status") == 0, "strerror out of range");
}

/* ---- seed corpora ------------------------------------------------------------------------------- */

static int write_file(const char *dir, const char *name, const void *data, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        if (f)
            fclose(f);
        return -1;
    }
    return fclose(f) ? -1 : 0;
}

static int write_seeds(const char *root)
{
    char media[900], json[900];
    snprintf(media, sizeof media, "%s/proto_media", root);
    snprintf(json, sizeof json, "%s/proto_json", root);
    int rc = 0;

    /* media: an Annex-B message with three frames, an fMP4 init segment, and broken ones */
    proto_buf b = {0};
    static const uint8_t a1[] = {0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x0b, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88};
    static const uint8_t a2[] = {0, 0, 0, 1, 0x41, 0x9a, 0x02}, a3[] = {0, 0, 0, 1, 0x41, 0x9a, 0x04, 0x10};
    proto_buf pl = {0};
    proto_annexb_append(&pl, a1, sizeof a1);
    proto_annexb_append(&pl, a2, sizeof a2);
    proto_annexb_append(&pl, a3, sizeof a3);
    uint8_t hb[PROTO_MEDIA_HEADER];
    proto_media_hdr h = {.type = PROTO_MSG_MEDIA, .flags = PROTO_FLAG_KEY, .format = PROTO_FMT_ANNEXB,
                         .seq = 7, .chunk = 3, .pts_us = 2250000, .n_frames = 3, .payload_len = (uint32_t)pl.len};
    proto_media_encode_header(hb, &h);
    proto_buf_append(&b, hb, sizeof hb);
    proto_buf_append(&b, pl.data, pl.len);
    rc |= write_file(media, "annexb_3frames.bin", b.data, b.len);
    rc |= write_file(media, "truncated_payload.bin", b.data, b.len - 3);
    rc |= write_file(media, "truncated_header.bin", b.data, 17);
    uint8_t *bad = malloc(b.len);
    memcpy(bad, b.data, b.len);
    bad[PROTO_MEDIA_HEADER + 3] = 0xff; /* first record's length runs past the end */
    rc |= write_file(media, "bad_record_len.bin", bad, b.len);
    memcpy(bad, b.data, b.len);
    bad[23] = 1;
    rc |= write_file(media, "bad_reserved.bin", bad, b.len);
    free(bad);
    static const uint8_t init_payload[] = "\0\0\0\x18" "ftypiso5\0\0\0\0iso5avc1\0\0\0\x08moov";
    proto_media_hdr ih = {.type = PROTO_MSG_INIT, .format = PROTO_FMT_FMP4, .payload_len = sizeof init_payload - 1};
    proto_media_encode_header(hb, &ih);
    b.len = 0;
    proto_buf_append(&b, hb, sizeof hb);
    proto_buf_append(&b, init_payload, sizeof init_payload - 1);
    rc |= write_file(media, "fmp4_init.bin", b.data, b.len);
    /* two messages back to back: a harness reads a stream of them */
    h.seq = 8;
    h.flags = PROTO_FLAG_DISCONT;
    h.format = PROTO_FMT_FMP4;
    h.payload_len = 4;
    proto_media_encode_header(hb, &h);
    proto_buf_append(&b, hb, sizeof hb);
    proto_buf_append(&b, "moof", 4);
    rc |= write_file(media, "init_then_media.bin", b.data, b.len);
    proto_buf_free(&b);
    proto_buf_free(&pl);

    /* json: the harness feeds each input to every parser */
    static const struct {
        const char *name, *text;
    } js[] = {
        {"create_min.json", "{\"prompt\":\"a cat\"}"},
        {"create_full.json",
         "{\"prompt\":\"caf\\u00e9 \\\"q\\\"\\n\",\"seed\":42,\"seconds\":5.5,\"format\":\"fmp4\"}"},
        {"client_prompt.json", "{\"type\":\"prompt\",\"prompt\":\"a red fox \xf0\x9f\xa6\x8a\"}"},
        {"client_pause.json", "{\"type\":\"pause\"}"},
        {"client_stop.json", "{\"type\":\"stop\",\"x\":[1,2,{\"y\":null}]}"},
        {"bad_seed.json", "{\"prompt\":\"x\",\"seed\":9007199254740992}"},
        {"bad_seconds.json", "{\"prompt\":\"x\",\"seconds\":\"5\"}"},
        {"bad_truncated.json", "{\"prompt\":\"x\",\"se"},
        {"bad_array.json", "[{\"type\":\"pause\"}]"},
    };
    for (size_t i = 0; i < sizeof js / sizeof js[0]; i++)
        rc |= write_file(json, js[i].name, js[i].text, strlen(js[i].text));
    static const char nul[] = "{\"prompt\":\"a\0b\"}";
    rc |= write_file(json, "bad_nul.json", nul, sizeof nul - 1);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--seeds") == 0)
        return write_seeds(argv[2]);
    test_media_roundtrip();
    test_media_reject();
    test_annexb();
    test_create();
    test_prompt_body();
    test_client_msg();
    test_builders();
    test_misc();
    return check_done();
}
