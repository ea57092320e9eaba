/* proto/proto.h — the vmla wire protocol, version 1 (proto/PROTOCOL.md): binary media messages,
 * REST request bodies, WebSocket text messages and the JSON the server sends.
 *
 * Everything that crosses a socket goes through this module, so the server never parses bytes by
 * hand. It depends on libc and jansson only, keeps no global state, and allocates only where a
 * function says so. Every parser takes (pointer, length), never relies on a NUL terminator, and
 * treats its input as hostile: lengths are checked against the bytes present, with overflow-safe
 * arithmetic, before anything is read.
 *
 * Binary media message (server -> client; all integers big-endian):
 *
 *   offset size field
 *   0      1    magic 0x56 ('V')                      PROTO_MAGIC
 *   1      1    version = 1                           PROTO_VERSION
 *   2      1    type: 1 = init segment (fmp4 only), 2 = media
 *   3      1    flags: bit 0 keyframe first, bit 1 discontinuity; other bits must be 0
 *   4      4    sequence (per viewer, from 0)
 *   8      4    chunk index
 *   12     8    pts of the first frame, microseconds
 *   20     2    number of frames in the payload
 *   22     1    format: 1 = annexb, 2 = fmp4
 *   23     1    reserved, must be 0
 *   24     4    payload length L, at most PROTO_MAX_PAYLOAD
 *   28     L    payload
 *
 *   Annex-B payload: for each frame, [u32 length > 0][access unit]; nothing after the last one.
 *   fMP4 payload: one moof+mdat fragment (type 2) or the ftyp+moov init segment (type 1).
 *
 * Status codes, by problem:
 *   PROTO_NEED_MORE   binary: the buffer holds a valid prefix of a message, not all of it (*need
 *                     says how many bytes the whole message takes); proto_annexb_next: clean end
 *   PROTO_ERR_FORMAT  bad magic/version/type/format/flags/reserved byte, broken Annex-B framing;
 *                     JSON that does not parse (invalid UTF-8, \u0000, duplicate keys included);
 *                     a required field that is missing
 *   PROTO_ERR_TYPE    top level not an object; a field of the wrong JSON type (seed 1.5, seed true,
 *                     seconds "5", prompt 7, ...)
 *   PROTO_ERR_RANGE   a value of the right type outside its range (empty or too long prompt, seed
 *                     -1, seconds 0, format "mkv", unknown message type); a body or message over its
 *                     size limit; a payload length over PROTO_MAX_PAYLOAD; size arithmetic overflow
 *   PROTO_ERR_NOMEM   an allocation failed
 * The JSON parsers write a one-line message naming the field into err (printable ASCII only, so it
 * can go back to the client as is), e.g. "field 'seconds' must be a number in (0, 3600]".
 */
#ifndef VMLA_PROTO_PROTO_H
#define VMLA_PROTO_PROTO_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    PROTO_OK = 0,
    PROTO_NEED_MORE,
    PROTO_ERR_FORMAT,
    PROTO_ERR_RANGE,
    PROTO_ERR_TYPE,
    PROTO_ERR_NOMEM,
} proto_status;

/* A short fixed description of a status ("malformed message", ...); never NULL. */
const char *proto_strerror(proto_status s);

/* ---- binary media messages (proto/media.c) ------------------------------------------------------ */

#define PROTO_MAGIC        0x56
#define PROTO_VERSION      1
#define PROTO_MEDIA_HEADER 28                   /* bytes before the payload */
#define PROTO_MAX_PAYLOAD  (64u * 1024u * 1024u) /* largest payload a reader accepts (64 MiB) */

enum { PROTO_MSG_INIT = 1, PROTO_MSG_MEDIA = 2 };
enum { PROTO_FLAG_KEY = 1, PROTO_FLAG_DISCONT = 2 };
#define PROTO_FLAGS_ALL (PROTO_FLAG_KEY | PROTO_FLAG_DISCONT)
enum { PROTO_FMT_ANNEXB = 1, PROTO_FMT_FMP4 = 2 };

typedef struct {
    uint8_t type, flags, format; /* PROTO_MSG_*, PROTO_FLAG_* bits, PROTO_FMT_* */
    uint32_t seq, chunk;
    uint64_t pts_us;
    uint16_t n_frames;
    uint32_t payload_len;
} proto_media_hdr;

/* Write the 28-byte header of h into out. Returns PROTO_MEDIA_HEADER, or 0 when h would not pass
 * proto_media_parse (unknown type, format or flag bits, an init message whose format is not fmp4,
 * payload_len over PROTO_MAX_PAYLOAD); out is then zero-filled, which every reader rejects. */
size_t proto_media_encode_header(uint8_t out[PROTO_MEDIA_HEADER], const proto_media_hdr *h);

/* Parse the message at the start of buf[0..len) (bytes after it are left alone).
 *   PROTO_OK         *h filled, *payload points at the payload inside buf (borrowed, valid while
 *                    buf is), *need = PROTO_MEDIA_HEADER + payload_len: the bytes the message used.
 *   PROTO_NEED_MORE  buf is a valid prefix; *need = bytes the message needs in all (28 while the
 *                    header is incomplete, then 28 + payload_len). The header bytes present are
 *                    checked first, so garbage is rejected without waiting for 28 bytes.
 *   PROTO_ERR_FORMAT bad magic, version, type, flags, format, reserved byte, or init + annexb.
 *   PROTO_ERR_RANGE  payload length over PROTO_MAX_PAYLOAD (reported as soon as the header is
 *                    complete, so a reader never waits for it).
 * h, payload and need may each be NULL; *h and *payload are written only on PROTO_OK, *need always
 * (0 on error). buf may be NULL when len is 0. */
proto_status proto_media_parse(const uint8_t *buf, size_t len, proto_media_hdr *h, const uint8_t **payload,
                               size_t *need);

/* Iterate the records of an Annex-B payload p[0..len). Start with *off = 0 and call until it stops
 * returning PROTO_OK:
 *   PROTO_OK         *au, *au_len give the next access unit (borrowed from p), *off moved past it;
 *   PROTO_NEED_MORE  the clean end: *off == len, there are no more records (not an error);
 *   PROTO_ERR_FORMAT a partial length prefix, a length of 0, a length running past len, or
 *                    *off > len; *off is left where the bad record starts.
 * Only the framing is checked, not the access unit's start codes or NAL units. */
proto_status proto_annexb_next(const uint8_t *p, size_t len, size_t *off, const uint8_t **au, size_t *au_len);

/* A growable byte buffer for building messages. Zero-initialise it ({0}); data is malloc'd and
 * owned by the buffer; proto_buf_free releases it and zeroes the struct. A failed call leaves the
 * buffer as it was. Errors: PROTO_ERR_RANGE when len + n overflows size_t, PROTO_ERR_NOMEM. */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} proto_buf;

/* Make room for n more bytes without changing len. */
proto_status proto_buf_reserve(proto_buf *b, size_t n);
/* Append n bytes (data may be NULL when n is 0). */
proto_status proto_buf_append(proto_buf *b, const void *data, size_t n);
/* Append one Annex-B record: u32 big-endian au_len, then the access unit. au_len must be in
 * 1..UINT32_MAX (else PROTO_ERR_RANGE), as proto_annexb_next rejects empty records. */
proto_status proto_annexb_append(proto_buf *b, const uint8_t *au, size_t au_len);
void proto_buf_free(proto_buf *b);

/* ---- JSON: REST bodies, WebSocket text messages, server events (proto/json.c) ------------------- */

#define PROTO_MAX_PROMPT     2000                     /* bytes of UTF-8 */
#define PROTO_MAX_BODY       16384                    /* bytes of a REST request body */
#define PROTO_MAX_CLIENT_MSG 8192                     /* bytes of a WebSocket text message */
#define PROTO_MAX_SEED       ((UINT64_C(1) << 53) - 1) /* largest seed (exact in a JSON double) */
#define PROTO_MAX_SECONDS    3600.0                   /* longest "seconds" of a session */
#define PROTO_SESSION_ID_LEN 32                       /* lowercase hex characters */

/* POST /v1/sessions. Absent optional fields: has_seed = 0 (seed 0), has_seconds = 0 (seconds 0),
 * format = PROTO_FMT_ANNEXB. */
typedef struct {
    char prompt[PROTO_MAX_PROMPT + 1]; /* NUL-terminated, 1..PROTO_MAX_PROMPT bytes, valid UTF-8 */
    int has_seed;
    uint64_t seed; /* 0..PROTO_MAX_SEED */
    int has_seconds;
    double seconds; /* (0, PROTO_MAX_SECONDS], finite */
    int format;     /* PROTO_FMT_* */
} proto_create_req;

/* The parsers below share these rules. The input is body[0..len), not NUL-terminated; body may be
 * NULL when len is 0. It must be one JSON value (nothing but whitespace after it) of valid UTF-8,
 * without duplicate keys or \u0000 in strings, and an object; fields not named here are ignored;
 * null is not a value of any field (it is a type error, not "absent"). Strings must be exactly
 * the allowed ones (case-sensitive). On success err is set to "" and *out filled; on error *out
 * is zeroed and err holds a message (when err is non-NULL and errlen > 0; truncated to errlen). */

/* POST /v1/sessions: prompt (required), seed, seconds, format. Body over PROTO_MAX_BODY ->
 * PROTO_ERR_RANGE. */
proto_status proto_parse_create(const char *body, size_t len, proto_create_req *out, char *err, size_t errlen);

/* POST /v1/sessions/{id}/prompt: {"prompt": "..."} with the same prompt rule and body limit. */
proto_status proto_parse_prompt(const char *body, size_t len, char prompt[PROTO_MAX_PROMPT + 1], char *err,
                                size_t errlen);

/* WebSocket client text messages: {"type":"prompt","prompt":"..."}, {"type":"pause"},
 * {"type":"resume"}, {"type":"stop"}. Over PROTO_MAX_CLIENT_MSG bytes -> PROTO_ERR_RANGE.
 * out->prompt is "" for types other than prompt (a "prompt" field on them is ignored). */
typedef enum { PROTO_CMSG_PROMPT = 1, PROTO_CMSG_PAUSE, PROTO_CMSG_RESUME, PROTO_CMSG_STOP } proto_cmsg_type;

typedef struct {
    proto_cmsg_type type;
    char prompt[PROTO_MAX_PROMPT + 1];
} proto_client_msg;

proto_status proto_parse_client_msg(const char *text, size_t len, proto_client_msg *out, char *err,
                                    size_t errlen);

/* "annexb" -> PROTO_FMT_ANNEXB, "fmp4" -> PROTO_FMT_FMP4, anything else (NULL too) -> 0. The _n
 * form takes a length and does not need a NUL terminator (for query strings). */
int proto_format_from_name(const char *name);
int proto_format_from_name_n(const char *name, size_t len);
/* PROTO_FMT_* -> "annexb" | "fmp4" (static strings); NULL for any other value. */
const char *proto_format_name(int fmt);

/* 1 when s[0..len) is a session id: exactly PROTO_SESSION_ID_LEN characters of [0-9a-f]. */
int proto_valid_session_id(const char *s, size_t len);

/* 1 when s[0..len) is valid UTF-8 (no overlong forms, surrogates or code points over U+10FFFF;
 * U+0000 counts as valid). */
int proto_utf8_valid(const char *s, size_t len);

/* Builders for the JSON the server sends. Each returns a malloc'd NUL-terminated compact JSON
 * object (the caller frees it with free()), or NULL when an allocation fails or an argument is
 * invalid as noted. String arguments are escaped by jansson; bytes in them that are not valid
 * UTF-8 are replaced by '?' (a NULL string counts as ""), so a message never fails for its text.
 * Times in ms are rounded to 0.001 ms; a NaN or infinite time is written as null. Unsigned
 * counters above INT64_MAX are written as INT64_MAX. */

/* REST error body: {"error":{"code":CODE,"message":MESSAGE}}. */
char *proto_json_error(const char *code, const char *message);
/* WebSocket error event: {"type":"error","code":CODE,"message":MESSAGE}. */
char *proto_json_ws_error(const char *code, const char *message);
/* {"type":"init","session","format","codec","width","height","fps","mime"} with
 * mime = video/mp4; codecs="CODEC". NULL when format is not a PROTO_FMT_* value. */
char *proto_json_init(const char *session, int format, const char *codec, int width, int height, int fps);
/* {"type":"chunk","chunk","frames","pts_us","gen_ms","latency_ms","ttff_ms","kv_bytes","dropped"};
 * ttff_ms < 0 (not yet known) is written as null. */
char *proto_json_chunk(int64_t chunk, int frames, uint64_t pts_us, double gen_ms, double latency_ms, double ttff_ms,
                       uint64_t kv_bytes, uint64_t dropped);
/* {"type":"prompt_switched","prompt":PROMPT,"chunk":CHUNK} */
char *proto_json_prompt_switched(const char *prompt, int64_t chunk);
/* {"type":TYPE}, for "paused" and "resumed". */
char *proto_json_simple(const char *type);
/* {"type":"ended","reason":REASON} */
char *proto_json_ended(const char *reason);

#endif
