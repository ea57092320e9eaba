/* tests/fuzz/fuzz_safetensors.c — libFuzzer harness for the safetensors reader (engine/safetensors.c).
 *
 * Each input is a whole file, opened with st_open_mem (no temp files). A rejected input must come
 * back with a NULL handle and a non-empty message. An accepted one is read completely, and the
 * harness checks what the header promised: every tensor lies inside the input, st_find finds each
 * name, st_expect accepts the tensor's own shape and rejects a different one, st_to_f32 converts
 * (or refuses with ST_ERR_DTYPE), F32/BF16 conversions match the raw bits. Finally the handle is
 * written back with st_write_mem and reopened: the copy must hold the same tensors and metadata.
 * A broken promise calls abort(), which libFuzzer reports as a crash.
 *
 * Build and run (copy the corpus first so new inputs do not land in the repository):
 *   clang -fsanitize=fuzzer,address,undefined -I. engine/safetensors.c tests/fuzz/fuzz_safetensors.c \
 *       -ljansson -o /tmp/fuzz_st
 *   cp -r tests/fuzz/corpus/safetensors /tmp/st_corpus && /tmp/fuzz_st -max_total_time=60 /tmp/st_corpus
 *
 * Built with -DST_FUZZ_MAIN (any compiler, no libFuzzer) it is a replay tool: it runs each file
 * named on the command line through the same checks, e.g. the seed corpus as a regression test.
 * The seeds come from `test_safetensors --seeds DIR`.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "engine/safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tests/fuzz/fuzz.h"

static uint32_t bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* Reopen what st_write_mem makes of f and compare. */
static void roundtrip(const st_file_t *f)
{
    int n = st_count(f), nm = st_metadata_count(f);
    st_write_tensor *w = calloc((size_t)n + 1, sizeof *w);
    const char **kv = calloc(2 * (size_t)nm + 1, sizeof *kv);
    REQUIRE(w && kv);
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_at(f, i);
        w[i].name = t->name;
        w[i].dtype = t->dtype;
        w[i].ndim = t->ndim;
        memcpy(w[i].shape, t->shape, sizeof t->shape);
        w[i].data = t->data;
    }
    for (int i = 0; i < nm; i++) {
        kv[2 * i] = st_metadata_key(f, i);
        kv[2 * i + 1] = st_metadata_value(f, i);
    }

    void *buf = NULL;
    size_t len = 0;
    char err[ST_ERR_LEN];
    st_status s = st_write_mem(&buf, &len, w, n, kv, err, sizeof err);
    if (s != ST_OK)
        fprintf(stderr, "st_write_mem: %s\n", err);
    REQUIRE(s == ST_OK);

    st_file_t *g = NULL;
    s = st_open_mem(&g, buf, len, err, sizeof err);
    if (s != ST_OK)
        fprintf(stderr, "reopen: %s\n", err);
    REQUIRE(s == ST_OK);
    REQUIRE(st_count(g) == n && st_metadata_count(g) == nm);
    for (int i = 0; i < n; i++) {
        const st_tensor *a = st_at(f, i), *b = st_find(g, a->name);
        REQUIRE(b && b->dtype == a->dtype && b->ndim == a->ndim && b->nelem == a->nelem && b->nbytes == a->nbytes);
        REQUIRE(memcmp(a->shape, b->shape, sizeof a->shape) == 0);
        REQUIRE(a->nbytes == 0 || memcmp(a->data, b->data, a->nbytes) == 0);
    }
    for (int i = 0; i < nm; i++) {
        const char *v = st_metadata(g, st_metadata_key(f, i));
        REQUIRE(v && strcmp(v, st_metadata_value(f, i)) == 0);
    }
    st_close(g);
    free(buf);
    free(kv);
    free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ST_ERR_LEN];
    st_file_t *f = (st_file_t *)&err; /* must be reset to NULL on failure */
    st_status s = st_open_mem(&f, data, size, err, sizeof err);
    if (s != ST_OK) {
        REQUIRE(f == NULL && err[0] != '\0' && s <= ST_ERR_LIMIT);
        return 0;
    }
    REQUIRE(f != NULL && strcmp(st_error(f), "") == 0);

    const unsigned char *lo = data, *hi = data + size;
    int n = st_count(f);
    REQUIRE(n >= 0 && n <= ST_MAX_TENSORS && st_at(f, n) == NULL && st_at(f, -1) == NULL);
    const unsigned char *prev_end = lo;
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_at(f, i);
        REQUIRE(t && t->name && st_find(f, t->name) == t);
        REQUIRE(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS && t->nelem >= 0);
        REQUIRE(t->nbytes == (size_t)t->nelem * st_dtype_size(t->dtype));
        const unsigned char *p = t->data;
        REQUIRE(p >= lo && p <= hi && t->nbytes <= (size_t)(hi - p));
        if (t->nbytes) { /* sorted by offset and non-overlapping */
            REQUIRE(p >= prev_end);
            prev_end = p + t->nbytes;
        }

        /* Touch every byte (ASan would flag a range outside the input). */
        unsigned sum = 0;
        for (size_t k = 0; k < t->nbytes; k++)
            sum += p[k];
        (void)sum;

        REQUIRE(st_expect(f, t->name, t->ndim, t->shape, NULL) == ST_OK);
        if (t->ndim > 0) {
            int64_t other[ST_MAX_DIMS];
            memcpy(other, t->shape, sizeof other);
            other[0] = other[0] == 0 ? 1 : other[0] - 1;
            char head[128]; /* messages quote at most 200 bytes of a name: compare a prefix */
            snprintf(head, sizeof head, "tensor '%.100s", t->name);
            REQUIRE(st_expect(f, t->name, t->ndim, other, NULL) == ST_ERR_SHAPE && strstr(st_error(f), head));
        }

        /* nbytes <= size, so nelem <= size and the buffer stays small. */
        size_t ne = (size_t)t->nelem;
        float *out = malloc(ne ? ne * sizeof *out : 1);
        REQUIRE(out);
        s = st_to_f32(t, out, ne);
        int convertible = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 ||
                          t->dtype == ST_F64 || t->dtype == ST_I32;
        REQUIRE(s == (convertible ? ST_OK : ST_ERR_DTYPE));
        for (size_t k = 0; s == ST_OK && k < ne; k++) {
            if (t->dtype == ST_F32) {
                REQUIRE(memcmp(&out[k], p + 4 * k, 4) == 0);
            } else if (t->dtype == ST_BF16) {
                uint32_t want = ((uint32_t)p[2 * k] << 16) | ((uint32_t)p[2 * k + 1] << 24);
                REQUIRE(bits(out[k]) == want);
            }
        }
        if (ne)
            REQUIRE(st_to_f32(t, out, ne - 1) == ST_ERR_SHAPE);
        free(out);
    }
    REQUIRE(st_expect(f, "\x01not a tensor", 0, NULL, NULL) == ST_ERR_MISSING || st_find(f, "\x01not a tensor"));

    for (int i = 0; i < st_metadata_count(f); i++) {
        const char *k = st_metadata_key(f, i), *v = st_metadata_value(f, i);
        REQUIRE(k && v && st_metadata(f, k) == v);
    }

    roundtrip(f);
    st_close(f);
    return 0;
}

#ifdef ST_FUZZ_MAIN
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *fp = fopen(argv[i], "rb");
        if (!fp) {
            perror(argv[i]);
            return 1;
        }
        size_t cap = 1 << 16, len = 0, got;
        unsigned char *buf = malloc(cap);
        while (buf && (got = fread(buf + len, 1, cap - len, fp)) > 0) {
            len += got;
            if (len == cap) {
                unsigned char *nb = realloc(buf, cap *= 2);
                if (!nb)
                    free(buf);
                buf = nb;
            }
        }
        fclose(fp);
        if (!buf) {
            fprintf(stderr, "%s: out of memory\n", argv[i]);
            return 1;
        }
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        printf("ok   %s\n", argv[i]);
    }
    return 0;
}
#endif
