/* proto/media.c — binary media messages: the 28-byte header, Annex-B framing, a growable buffer.
 *
 * The server writes one media message per chunk per viewer; the web client and the tests read
 * them. The reader is the security-relevant half: it sees bytes from the network, so every field
 * is checked before it is trusted, the payload length is capped before anyone waits for (or
 * allocates) that many bytes, and offsets are compared by subtraction so nothing can overflow.
 * The byte layout is spelled out in proto/proto.h.
 */
#include "proto/proto.h"

#include <stdlib.h>
#include <string.h>

const char *proto_strerror(proto_status s)
{
    switch (s) {
    case PROTO_OK: return "ok";
    case PROTO_NEED_MORE: return "need more data";
    case PROTO_ERR_FORMAT: return "malformed message";
    case PROTO_ERR_RANGE: return "value out of range";
    case PROTO_ERR_TYPE: return "wrong type";
    case PROTO_ERR_NOMEM: return "out of memory";
    }
    return "unknown status";
}

/* ---- big-endian fields -------------------------------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
}

/* ---- header ------------------------------------------------------------------------------------- */

/* Byte offsets of the header fields. */
enum {
    OFF_MAGIC = 0,
    OFF_VERSION = 1,
    OFF_TYPE = 2,
    OFF_FLAGS = 3,
    OFF_SEQ = 4,
    OFF_CHUNK = 8,
    OFF_PTS = 12,
    OFF_FRAMES = 20,
    OFF_FORMAT = 22,
    OFF_RESERVED = 23,
    OFF_LEN = 24,
};

static int valid_type(unsigned t)
{
    return t == PROTO_MSG_INIT || t == PROTO_MSG_MEDIA;
}

static int valid_format(unsigned f)
{
    return f == PROTO_FMT_ANNEXB || f == PROTO_FMT_FMP4;
}

size_t proto_media_encode_header(uint8_t out[PROTO_MEDIA_HEADER], const proto_media_hdr *h)
{
    if (!valid_type(h->type) || !valid_format(h->format) || (h->flags & ~PROTO_FLAGS_ALL) ||
        (h->type == PROTO_MSG_INIT && h->format != PROTO_FMT_FMP4) || h->payload_len > PROTO_MAX_PAYLOAD) {
        memset(out, 0, PROTO_MEDIA_HEADER); /* a caller that ignores the 0 sends bad magic, not junk */
        return 0;
    }
    out[OFF_MAGIC] = PROTO_MAGIC;
    out[OFF_VERSION] = PROTO_VERSION;
    out[OFF_TYPE] = h->type;
    out[OFF_FLAGS] = h->flags;
    put_u32(out + OFF_SEQ, h->seq);
    put_u32(out + OFF_CHUNK, h->chunk);
    put_u64(out + OFF_PTS, h->pts_us);
    put_u16(out + OFF_FRAMES, h->n_frames);
    out[OFF_FORMAT] = h->format;
    out[OFF_RESERVED] = 0;
    put_u32(out + OFF_LEN, h->payload_len);
    return PROTO_MEDIA_HEADER;
}

proto_status proto_media_parse(const uint8_t *buf, size_t len, proto_media_hdr *h, const uint8_t **payload,
                               size_t *need)
{
    if (need)
        *need = 0;
    /* Check each fixed byte as soon as it is present: a reader of a stream learns it is reading
     * garbage after one byte instead of after 28. */
    if (len > OFF_MAGIC && buf[OFF_MAGIC] != PROTO_MAGIC)
        return PROTO_ERR_FORMAT;
    if (len > OFF_VERSION && buf[OFF_VERSION] != PROTO_VERSION)
        return PROTO_ERR_FORMAT;
    if (len > OFF_TYPE && !valid_type(buf[OFF_TYPE]))
        return PROTO_ERR_FORMAT;
    if (len > OFF_FLAGS && (buf[OFF_FLAGS] & ~PROTO_FLAGS_ALL))
        return PROTO_ERR_FORMAT;
    if (len > OFF_FORMAT) {
        if (!valid_format(buf[OFF_FORMAT]))
            return PROTO_ERR_FORMAT;
        if (buf[OFF_TYPE] == PROTO_MSG_INIT && buf[OFF_FORMAT] != PROTO_FMT_FMP4)
            return PROTO_ERR_FORMAT; /* init segments exist for fMP4 only */
    }
    if (len > OFF_RESERVED && buf[OFF_RESERVED] != 0)
        return PROTO_ERR_FORMAT;
    if (len < PROTO_MEDIA_HEADER) {
        if (need)
            *need = PROTO_MEDIA_HEADER;
        return PROTO_NEED_MORE;
    }
    uint32_t plen = get_u32(buf + OFF_LEN);
    if (plen > PROTO_MAX_PAYLOAD)
        return PROTO_ERR_RANGE;
    size_t total = (size_t)PROTO_MEDIA_HEADER + plen; /* <= 28 + 64 MiB: no overflow */
    if (need)
        *need = total;
    if (len < total)
        return PROTO_NEED_MORE;
    if (h) {
        h->type = buf[OFF_TYPE];
        h->flags = buf[OFF_FLAGS];
        h->format = buf[OFF_FORMAT];
        h->seq = get_u32(buf + OFF_SEQ);
        h->chunk = get_u32(buf + OFF_CHUNK);
        h->pts_us = get_u64(buf + OFF_PTS);
        h->n_frames = get_u16(buf + OFF_FRAMES);
        h->payload_len = plen;
    }
    if (payload)
        *payload = buf + PROTO_MEDIA_HEADER;
    return PROTO_OK;
}

/* ---- Annex-B payload ---------------------------------------------------------------------------- */

proto_status proto_annexb_next(const uint8_t *p, size_t len, size_t *off, const uint8_t **au, size_t *au_len)
{
    if (au)
        *au = NULL;
    if (au_len)
        *au_len = 0;
    size_t o = *off;
    if (o > len)
        return PROTO_ERR_FORMAT;
    if (o == len)
        return PROTO_NEED_MORE; /* clean end */
    size_t left = len - o;
    if (left < 4)
        return PROTO_ERR_FORMAT; /* a partial length prefix */
    uint32_t n = get_u32(p + o);
    if (n == 0 || n > left - 4)
        return PROTO_ERR_FORMAT;
    if (au)
        *au = p + o + 4;
    if (au_len)
        *au_len = n;
    *off = o + 4 + n; /* <= len */
    return PROTO_OK;
}

/* ---- growable buffer ---------------------------------------------------------------------------- */

proto_status proto_buf_reserve(proto_buf *b, size_t n)
{
    if (n > SIZE_MAX - b->len)
        return PROTO_ERR_RANGE;
    size_t want = b->len + n;
    if (want <= b->cap)
        return PROTO_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < want)
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d)
        return PROTO_ERR_NOMEM;
    b->data = d;
    b->cap = cap;
    return PROTO_OK;
}

proto_status proto_buf_append(proto_buf *b, const void *data, size_t n)
{
    if (n == 0)
        return PROTO_OK;
    proto_status s = proto_buf_reserve(b, n);
    if (s != PROTO_OK)
        return s;
    memcpy(b->data + b->len, data, n);
    b->len += n;
    return PROTO_OK;
}

proto_status proto_annexb_append(proto_buf *b, const uint8_t *au, size_t au_len)
{
    if (au_len == 0 || (uint64_t)au_len > UINT32_MAX)
        return PROTO_ERR_RANGE;
    if (au_len > SIZE_MAX - 4)
        return PROTO_ERR_RANGE;
    /* one reservation for prefix and unit, so a failure leaves b unchanged */
    proto_status s = proto_buf_reserve(b, 4 + au_len);
    if (s != PROTO_OK)
        return s;
    put_u32(b->data + b->len, (uint32_t)au_len);
    memcpy(b->data + b->len + 4, au, au_len);
    b->len += 4 + au_len;
    return PROTO_OK;
}

void proto_buf_free(proto_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
