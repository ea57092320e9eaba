/* tests/fuzz/fuzz_proto_json.c — libFuzzer harness for the JSON half of the protocol (proto/json.c).
 *
 * Each input goes through every parser: proto_parse_create, proto_parse_prompt and
 * proto_parse_client_msg. The harness checks their promises: a status from the documented set;
 * on error a non-empty printable-ASCII message and a zeroed output; on success an empty message
 * and values inside their ranges, a prompt of 1..PROTO_MAX_PROMPT bytes of valid UTF-8 (checked
 * with jansson as well) without NUL; the parsers agree with each other on the prompt. What was
 * parsed, and the error texts, go through the builders and must parse back with jansson to the
 * same strings. The input is also checked as raw bytes: proto_utf8_valid must agree with
 * jansson's UTF-8 check, the builders must turn any bytes into valid JSON, and the name and
 * session-id helpers must agree with their definitions. A broken promise calls abort().
 *
 * Build and run (copy the corpus first so new inputs do not land in the repository):
 *   clang -fsanitize=fuzzer,address,undefined -I. proto/media.c proto/json.c \
 *       tests/fuzz/fuzz_proto_json.c -ljansson -o /tmp/fuzz_proto_json
 *   cp -r tests/fuzz/corpus/proto_json /tmp/pj_corpus && /tmp/fuzz_proto_json -max_total_time=60 /tmp/pj_corpus
 *
 * Built with -DPROTO_FUZZ_MAIN (any compiler, no libFuzzer) it replays the files named on the
 * command line through the same checks. The seeds come from `test_proto --seeds DIR`.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "proto/proto.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/fuzz/fuzz.h"

static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

static int all_zero(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i])
            return 0;
    return 1;
}

static void check_err(proto_status s, const char *err)
{
    REQUIRE(s == PROTO_OK || s == PROTO_ERR_FORMAT || s == PROTO_ERR_RANGE || s == PROTO_ERR_TYPE ||
            s == PROTO_ERR_NOMEM);
    REQUIRE(printable(err));
    REQUIRE(s == PROTO_OK ? err[0] == 0 : err[0] != 0);
}

static void check_prompt(const char *p)
{
    size_t n = strnlen(p, PROTO_MAX_PROMPT + 1);
    REQUIRE(n >= 1 && n <= PROTO_MAX_PROMPT);
    REQUIRE(proto_utf8_valid(p, n));
    json_t *j = json_stringn(p, n); /* jansson's own UTF-8 check */
    REQUIRE(j);
    json_decref(j);
}

/* JSON text s (from a builder) parses to an object whose key at path has string value want. */
static void check_built(char *s, const char *outer, const char *key, const char *want)
{
    REQUIRE(s);
    json_error_t je;
    json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, &je);
    REQUIRE(j && json_is_object(j));
    json_t *o = outer ? json_object_get(j, outer) : j;
    json_t *v = json_object_get(o, key);
    REQUIRE(json_is_string(v));
    if (want)
        REQUIRE(strcmp(json_string_value(v), want) == 0);
    json_decref(j);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    char err[512], err2[512];

    proto_create_req r;
    proto_status sc = proto_parse_create(text, size, &r, err, sizeof err);
    check_err(sc, err);
    if (size > PROTO_MAX_BODY)
        REQUIRE(sc == PROTO_ERR_RANGE);
    if (sc == PROTO_OK) {
        check_prompt(r.prompt);
        REQUIRE(r.has_seed == 0 || r.has_seed == 1);
        REQUIRE(r.seed <= PROTO_MAX_SEED && (r.has_seed || r.seed == 0));
        REQUIRE(r.has_seconds ? (r.seconds > 0 && r.seconds <= PROTO_MAX_SECONDS) : r.seconds == 0);
        REQUIRE(r.format == PROTO_FMT_ANNEXB || r.format == PROTO_FMT_FMP4);
        check_built(proto_json_prompt_switched(r.prompt, 1), NULL, "prompt", r.prompt);
    } else {
        REQUIRE(all_zero(&r, sizeof r));
        check_built(proto_json_error("bad_request", err), "error", "message", err);
        check_built(proto_json_ws_error("bad_message", err), NULL, "message", err);
    }

    /* the prompt body shares the create body's prompt rule, checked first */
    char p[PROTO_MAX_PROMPT + 1];
    proto_status sp = proto_parse_prompt(text, size, p, err2, sizeof err2);
    check_err(sp, err2);
    if (sc == PROTO_OK)
        REQUIRE(sp == PROTO_OK && strcmp(p, r.prompt) == 0);
    if (sp != PROTO_OK) {
        REQUIRE(sc == sp && strcmp(err, err2) == 0);
        REQUIRE(all_zero(p, sizeof p));
    } else {
        check_prompt(p);
    }

    proto_client_msg m;
    proto_status sm = proto_parse_client_msg(text, size, &m, err, sizeof err);
    check_err(sm, err);
    if (size > PROTO_MAX_CLIENT_MSG)
        REQUIRE(sm == PROTO_ERR_RANGE);
    if (sm == PROTO_OK) {
        REQUIRE(m.type >= PROTO_CMSG_PROMPT && m.type <= PROTO_CMSG_STOP);
        if (m.type == PROTO_CMSG_PROMPT) {
            check_prompt(m.prompt);
            REQUIRE(sp == PROTO_OK && strcmp(m.prompt, p) == 0);
        } else {
            REQUIRE(m.prompt[0] == 0);
        }
    } else {
        REQUIRE(all_zero(&m, sizeof m));
    }

    /* raw bytes: UTF-8 agrees with jansson; builders take anything */
    json_t *js = json_stringn(text, size);
    REQUIRE(!!js == proto_utf8_valid(text, size));
    json_decref(js);
    char *z = malloc(size + 1);
    REQUIRE(z);
    if (size)
        memcpy(z, data, size);
    z[size] = 0;
    size_t zlen = strlen(z);
    int zvalid = proto_utf8_valid(z, zlen);
    check_built(proto_json_prompt_switched(z, -1), NULL, "prompt", zvalid ? z : NULL);
    check_built(proto_json_error(z, z), "error", "code", zvalid ? z : NULL);
    check_built(proto_json_simple(z), NULL, "type", zvalid ? z : NULL);
    check_built(proto_json_ended(z), NULL, "reason", zvalid ? z : NULL);
    check_built(proto_json_init(z, PROTO_FMT_FMP4, z, 1, 2, 3), NULL, "mime", NULL);

    int f = proto_format_from_name_n(text, size);
    REQUIRE(f == 0 || strlen(proto_format_name(f)) == size);
    if (f)
        REQUIRE(memcmp(proto_format_name(f), text, size) == 0);
    if (proto_valid_session_id(text, size)) {
        REQUIRE(size == PROTO_SESSION_ID_LEN);
        for (size_t i = 0; i < size; i++)
            REQUIRE(strchr("0123456789abcdef", text[i]) && text[i]);
    }
    free(z);
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
