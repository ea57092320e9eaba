/* proto/json.c — the JSON half of the protocol: REST request bodies and WebSocket client messages
 * in, server events and error bodies out.
 *
 * Parsing is jansson's (json_loadb with the caller's length, so nothing needs a NUL terminator;
 * it rejects invalid UTF-8, \u0000 and, with JSON_REJECT_DUPLICATES, repeated keys); this file adds
 * the size limits and the per-field type and range rules of proto/PROTOCOL.md, and turns each
 * failure into a status and a message naming the field. Those messages go back to clients, so
 * they are reduced to printable ASCII: jansson quotes the offending input in its own messages.
 *
 * Building goes through jansson too (json_pack, json_dumps with JSON_COMPACT), so strings are
 * escaped correctly whatever a prompt holds.
 */
#include "proto/proto.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* ---- errors ------------------------------------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static proto_status fail(char *err, size_t errlen, proto_status s, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        for (char *c = err; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
                *c = '?';
    }
    return s;
}

static void ok_err(char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
}

/* ---- shared parsing ----------------------------------------------------------------------------- */

/* Parse text[0..len) (at most max bytes) into an object; what names the input in messages
 * ("body", "message"). On success *root owns a reference. */
static proto_status load_object(const char *text, size_t len, size_t max, const char *what, json_t **root,
                                char *err, size_t errlen)
{
    *root = NULL;
    if (len > max)
        return fail(err, errlen, PROTO_ERR_RANGE, "%s is %zu bytes; at most %zu are allowed", what, len, max);
    if (!text || len == 0) /* NULL with len > 0 breaks the contract: read nothing */
        return fail(err, errlen, PROTO_ERR_FORMAT, "%s is empty; expected a JSON object", what);
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        switch (json_error_code(&je)) {
        case json_error_out_of_memory:
            return fail(err, errlen, PROTO_ERR_NOMEM, "out of memory parsing the %s", what);
        case json_error_null_character:
            return fail(err, errlen, PROTO_ERR_FORMAT, "%s: JSON strings must not contain \\u0000 (byte %d)", what,
                        je.position);
        case json_error_invalid_utf8:
            return fail(err, errlen, PROTO_ERR_FORMAT, "%s is not valid UTF-8 (byte %d)", what, je.position);
        case json_error_duplicate_key:
            return fail(err, errlen, PROTO_ERR_FORMAT, "%s must not repeat a key: %s (byte %d)", what, je.text,
                        je.position);
        default:
            return fail(err, errlen, PROTO_ERR_FORMAT, "%s is not valid JSON: %s (byte %d)", what, je.text,
                        je.position);
        }
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return fail(err, errlen, PROTO_ERR_TYPE, "%s must be a JSON object", what);
    }
    *root = j;
    return PROTO_OK;
}

/* The required field "prompt" of obj into out (NUL-terminated). */
static proto_status get_prompt(json_t *obj, char out[PROTO_MAX_PROMPT + 1], char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, "prompt");
    if (!v)
        return fail(err, errlen, PROTO_ERR_FORMAT, "field 'prompt' is required");
    if (!json_is_string(v))
        return fail(err, errlen, PROTO_ERR_TYPE, "field 'prompt' must be a string");
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n < 1 || n > PROTO_MAX_PROMPT)
        return fail(err, errlen, PROTO_ERR_RANGE, "field 'prompt' must be 1 to %d bytes of UTF-8 (got %zu)",
                    PROTO_MAX_PROMPT, n);
    /* jansson decoded it, so it is valid UTF-8 without NUL; checked again in case the load flags
     * ever change, as the server hands the prompt to C string functions */
    if (memchr(s, 0, n) || !proto_utf8_valid(s, n))
        return fail(err, errlen, PROTO_ERR_FORMAT, "field 'prompt' must be valid UTF-8 without NUL");
    memcpy(out, s, n);
    out[n] = '\0';
    return PROTO_OK;
}

/* ---- REST bodies -------------------------------------------------------------------------------- */

#define SEED_RULE    "field 'seed' must be an integer in [0, 9007199254740991]"
#define SECONDS_RULE "field 'seconds' must be a number in (0, 3600]"
#define FORMAT_RULE  "field 'format' must be \"annexb\" or \"fmp4\""

proto_status proto_parse_create(const char *body, size_t len, proto_create_req *out, char *err, size_t errlen)
{
    json_t *root = NULL;
    memset(out, 0, sizeof *out);
    proto_status s = load_object(body, len, PROTO_MAX_BODY, "body", &root, err, errlen);
    if (s != PROTO_OK)
        goto cleanup;
    s = get_prompt(root, out->prompt, err, errlen);
    if (s != PROTO_OK)
        goto cleanup;

    json_t *v = json_object_get(root, "seed");
    if (v) {
        /* json_is_integer is false for reals (1.0 included) and booleans */
        if (!json_is_integer(v)) {
            s = fail(err, errlen, PROTO_ERR_TYPE, SEED_RULE);
            goto cleanup;
        }
        json_int_t x = json_integer_value(v);
        if (x < 0 || (uint64_t)x > PROTO_MAX_SEED) {
            s = fail(err, errlen, PROTO_ERR_RANGE, SEED_RULE);
            goto cleanup;
        }
        out->has_seed = 1;
        out->seed = (uint64_t)x;
    }

    v = json_object_get(root, "seconds");
    if (v) {
        if (!json_is_number(v)) {
            s = fail(err, errlen, PROTO_ERR_TYPE, SECONDS_RULE);
            goto cleanup;
        }
        double d = json_number_value(v);
        if (!isfinite(d) || !(d > 0.0) || d > PROTO_MAX_SECONDS) {
            s = fail(err, errlen, PROTO_ERR_RANGE, SECONDS_RULE);
            goto cleanup;
        }
        out->has_seconds = 1;
        out->seconds = d;
    }

    out->format = PROTO_FMT_ANNEXB;
    v = json_object_get(root, "format");
    if (v) {
        if (!json_is_string(v)) {
            s = fail(err, errlen, PROTO_ERR_TYPE, FORMAT_RULE);
            goto cleanup;
        }
        out->format = proto_format_from_name_n(json_string_value(v), json_string_length(v));
        if (!out->format) {
            s = fail(err, errlen, PROTO_ERR_RANGE, FORMAT_RULE);
            goto cleanup;
        }
    }
    ok_err(err, errlen);
    s = PROTO_OK;

cleanup:
    json_decref(root);
    if (s != PROTO_OK)
        memset(out, 0, sizeof *out);
    return s;
}

proto_status proto_parse_prompt(const char *body, size_t len, char prompt[PROTO_MAX_PROMPT + 1], char *err,
                                size_t errlen)
{
    json_t *root = NULL;
    memset(prompt, 0, PROTO_MAX_PROMPT + 1);
    proto_status s = load_object(body, len, PROTO_MAX_BODY, "body", &root, err, errlen);
    if (s != PROTO_OK)
        goto cleanup;
    s = get_prompt(root, prompt, err, errlen);
    if (s != PROTO_OK)
        goto cleanup;
    ok_err(err, errlen);

cleanup:
    json_decref(root);
    if (s != PROTO_OK)
        memset(prompt, 0, PROTO_MAX_PROMPT + 1);
    return s;
}

/* ---- WebSocket client messages ------------------------------------------------------------------ */

#define TYPE_RULE "field 'type' must be one of \"prompt\", \"pause\", \"resume\", \"stop\""

proto_status proto_parse_client_msg(const char *text, size_t len, proto_client_msg *out, char *err,
                                    size_t errlen)
{
    static const struct {
        const char *name;
        proto_cmsg_type type;
    } types[] = {
        {"prompt", PROTO_CMSG_PROMPT},
        {"pause", PROTO_CMSG_PAUSE},
        {"resume", PROTO_CMSG_RESUME},
        {"stop", PROTO_CMSG_STOP},
    };
    json_t *root = NULL;
    memset(out, 0, sizeof *out);
    proto_status s = load_object(text, len, PROTO_MAX_CLIENT_MSG, "message", &root, err, errlen);
    if (s != PROTO_OK)
        goto cleanup;
    json_t *v = json_object_get(root, "type");
    if (!v) {
        s = fail(err, errlen, PROTO_ERR_FORMAT, "field 'type' is required");
        goto cleanup;
    }
    if (!json_is_string(v)) {
        s = fail(err, errlen, PROTO_ERR_TYPE, TYPE_RULE);
        goto cleanup;
    }
    const char *name = json_string_value(v);
    size_t n = json_string_length(v);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (n == strlen(types[i].name) && memcmp(name, types[i].name, n) == 0)
            out->type = types[i].type;
    if (!out->type) {
        s = fail(err, errlen, PROTO_ERR_RANGE, TYPE_RULE);
        goto cleanup;
    }
    if (out->type == PROTO_CMSG_PROMPT) {
        s = get_prompt(root, out->prompt, err, errlen);
        if (s != PROTO_OK)
            goto cleanup;
    }
    ok_err(err, errlen);
    s = PROTO_OK;

cleanup:
    json_decref(root);
    if (s != PROTO_OK)
        memset(out, 0, sizeof *out);
    return s;
}

/* ---- names, ids, UTF-8 -------------------------------------------------------------------------- */

int proto_format_from_name_n(const char *name, size_t len)
{
    if (!name)
        return 0;
    if (len == 6 && memcmp(name, "annexb", 6) == 0)
        return PROTO_FMT_ANNEXB;
    if (len == 4 && memcmp(name, "fmp4", 4) == 0)
        return PROTO_FMT_FMP4;
    return 0;
}

int proto_format_from_name(const char *name)
{
    return name ? proto_format_from_name_n(name, strlen(name)) : 0;
}

const char *proto_format_name(int fmt)
{
    switch (fmt) {
    case PROTO_FMT_ANNEXB: return "annexb";
    case PROTO_FMT_FMP4: return "fmp4";
    }
    return NULL;
}

int proto_valid_session_id(const char *s, size_t len)
{
    if (!s || len != PROTO_SESSION_ID_LEN)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* Length of the valid UTF-8 sequence at s[0..len), or 0 if the bytes there are not one
 * (RFC 3629: shortest form only, no surrogates D800..DFFF, nothing above U+10FFFF). */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else
        return 0;
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

int proto_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        if (!n)
            return 0;
        i += n;
    }
    return 1;
}

/* ---- builders ----------------------------------------------------------------------------------- */

/* s when it is valid UTF-8 ("" for NULL); otherwise a malloc'd copy in *tmp with each byte that
 * does not belong to a valid sequence replaced by '?'. NULL only when that copy cannot be made. */
static const char *utf8_safe(const char *s, char **tmp)
{
    *tmp = NULL;
    if (!s)
        return "";
    size_t len = strlen(s);
    if (proto_utf8_valid(s, len))
        return s;
    char *t = malloc(len + 1);
    if (!t)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        if (n) {
            memcpy(t + i, s + i, n);
            i += n;
        } else
            t[i++] = '?';
    }
    t[len] = '\0';
    *tmp = t;
    return t;
}

/* Serialise o and drop it; NULL in, NULL out. */
static char *dump(json_t *o)
{
    if (!o)
        return NULL;
    char *s = json_dumps(o, DUMP_FLAGS);
    json_decref(o);
    return s;
}

/* A time in ms: rounded to 0.001 ms, or null when not finite. */
static json_t *json_ms(double ms)
{
    if (!isfinite(ms))
        return json_null();
    if (ms > -1e12 && ms < 1e12) { /* |ms * 1000| < 2^63: round half away from zero, without libm */
        double k = ms * 1000.0;
        ms = (double)(long long)(k + (k < 0 ? -0.5 : 0.5)) / 1000.0;
    }
    return json_real(ms);
}

static json_int_t sat_u64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? (json_int_t)INT64_MAX : (json_int_t)v;
}

/* {"type":TYPE, KEY:VALUE}, or {KEY:VALUE} when type is NULL. */
static char *one_string(const char *type, const char *key, const char *value)
{
    char *tmp_t = NULL, *tmp_v = NULL, *out = NULL;
    const char *t = utf8_safe(type, &tmp_t), *v = utf8_safe(value, &tmp_v);
    if (!t || !v)
        goto cleanup;
    if (type)
        out = dump(json_pack("{s:s, s:s}", "type", t, key, v));
    else
        out = dump(json_pack("{s:s}", key, v));

cleanup:
    free(tmp_t);
    free(tmp_v);
    return out;
}

static char *error_body(int ws, const char *code, const char *message)
{
    char *tmp_c = NULL, *tmp_m = NULL, *out = NULL;
    const char *c = utf8_safe(code, &tmp_c), *m = utf8_safe(message, &tmp_m);
    if (!c || !m)
        goto cleanup;
    if (ws)
        out = dump(json_pack("{s:s, s:s, s:s}", "type", "error", "code", c, "message", m));
    else
        out = dump(json_pack("{s:{s:s, s:s}}", "error", "code", c, "message", m));

cleanup:
    free(tmp_c);
    free(tmp_m);
    return out;
}

char *proto_json_error(const char *code, const char *message)
{
    return error_body(0, code, message);
}

char *proto_json_ws_error(const char *code, const char *message)
{
    return error_body(1, code, message);
}

char *proto_json_init(const char *session, int format, const char *codec, int width, int height, int fps)
{
    char *tmp_s = NULL, *tmp_c = NULL, *mime = NULL, *out = NULL;
    const char *fname = proto_format_name(format);
    const char *s = utf8_safe(session, &tmp_s), *c = utf8_safe(codec, &tmp_c);
    if (!fname || !s || !c)
        goto cleanup;
    static const char pre[] = "video/mp4; codecs=\"", post[] = "\"";
    size_t n = strlen(c);
    if (n > SIZE_MAX - sizeof pre - sizeof post)
        goto cleanup;
    mime = malloc(sizeof pre + n + sizeof post); /* counts both NULs: one byte spare */
    if (!mime)
        goto cleanup;
    memcpy(mime, pre, sizeof pre - 1);
    memcpy(mime + sizeof pre - 1, c, n);
    memcpy(mime + sizeof pre - 1 + n, post, sizeof post); /* with its NUL */
    out = dump(json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:s}", "type", "init", "session", s, "format",
                         fname, "codec", c, "width", width, "height", height, "fps", fps, "mime", mime));

cleanup:
    free(tmp_s);
    free(tmp_c);
    free(mime);
    return out;
}

char *proto_json_chunk(int64_t chunk, int frames, uint64_t pts_us, double gen_ms, double latency_ms, double ttff_ms,
                       uint64_t kv_bytes, uint64_t dropped)
{
    json_t *o = json_pack("{s:s, s:I, s:i, s:I}", "type", "chunk", "chunk", (json_int_t)chunk, "frames", frames,
                          "pts_us", sat_u64(pts_us));
    if (!o)
        return NULL;
    /* json_object_set_new takes the value's reference even when it fails (and fails on NULL) */
    if (json_object_set_new(o, "gen_ms", json_ms(gen_ms)) ||
        json_object_set_new(o, "latency_ms", json_ms(latency_ms)) ||
        json_object_set_new(o, "ttff_ms", ttff_ms < 0 ? json_null() : json_ms(ttff_ms)) ||
        json_object_set_new(o, "kv_bytes", json_integer(sat_u64(kv_bytes))) ||
        json_object_set_new(o, "dropped", json_integer(sat_u64(dropped)))) {
        json_decref(o);
        return NULL;
    }
    return dump(o);
}

char *proto_json_prompt_switched(const char *prompt, int64_t chunk)
{
    char *tmp = NULL;
    const char *p = utf8_safe(prompt, &tmp);
    char *out = p ? dump(json_pack("{s:s, s:s, s:I}", "type", "prompt_switched", "prompt", p, "chunk",
                                   (json_int_t)chunk))
                  : NULL;
    free(tmp);
    return out;
}

char *proto_json_simple(const char *type)
{
    return one_string(NULL, "type", type);
}

char *proto_json_ended(const char *reason)
{
    return one_string("ended", "reason", reason);
}
