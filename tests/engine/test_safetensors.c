/* tests/engine/test_safetensors.c — tests for the safetensors reader and writer (engine/safetensors.c).
 *
 * A standalone program: prints one line per check ("ok   ..." or "FAIL ...") and a final line
 * "N passed, M failed"; exits 0 only when nothing failed. It covers the writer round trip (F32,
 * F16 including subnormals and infinities, BF16, F64, I32, scalars, empty tensors, metadata), the
 * fp16 conversion against an independent power-of-two reference for all 65536 inputs, st_expect, the
 * writer's own argument checks and atomicity, and one malformed file per rule the reader enforces,
 * checking the status and that the message names the offending tensor.
 *
 * Files go to a mkdtemp directory under /tmp that is removed at the end.
 *
 * `test_safetensors --seeds DIR` instead writes the libFuzzer seed corpus (small valid files from
 * the writer and a few broken ones) into DIR; tests/fuzz/corpus/safetensors was made that way.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "engine/safetensors.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int g_pass, g_fail;

static void check(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(ok ? "ok   " : "FAIL ", stdout);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
    if (ok)
        g_pass++;
    else
        g_fail++;
}

/* ---- temp files --------------------------------------------------------------------------------- */

static char g_dir[64];
#define MAX_TMP 64
static char g_made[MAX_TMP][128]; /* every path we may have created, unlinked at exit */
static int g_nmade;

static const char *tmp_path(const char *name)
{
    if (g_nmade == MAX_TMP) {
        fprintf(stderr, "too many temp files\n");
        exit(2);
    }
    char *p = g_made[g_nmade++];
    snprintf(p, sizeof g_made[0], "%s/%s", g_dir, name);
    return p;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return 0;
    int ok = fwrite(buf, 1, len, fp) == len;
    return fclose(fp) == 0 && ok;
}

static unsigned char *read_bytes(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    unsigned char *buf = NULL;
    long n;
    if (!fp)
        return NULL;
    if (fseek(fp, 0, SEEK_END) == 0 && (n = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)n;
    }
    fclose(fp);
    return buf;
}

/* A raw file: u64 header length, the JSON as given, then datalen bytes of 0x11. */
static unsigned char *raw_file(const char *json, size_t jlen, size_t datalen, size_t *len)
{
    *len = 8 + jlen + datalen;
    unsigned char *b = malloc(*len);
    if (!b) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)jlen >> (8 * i));
    memcpy(b + 8, json, jlen);
    memset(b + 8 + jlen, 0x11, datalen);
    return b;
}

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* 2^e by repeated doubling or halving: exact for every e in float's range, and needs no libm. */
static float pow2f(int e)
{
    float x = 1.0f;
    for (; e > 0; e--)
        x *= 2.0f;
    for (; e < 0; e++)
        x *= 0.5f;
    return x;
}

/* ---- tests -------------------------------------------------------------------------------------- */

static void test_dtypes(void)
{
    check(st_dtype_size(ST_F32) == 4 && st_dtype_size(ST_F16) == 2 && st_dtype_size(ST_BF16) == 2 &&
              st_dtype_size(ST_F64) == 8 && st_dtype_size(ST_I64) == 8 && st_dtype_size(ST_BOOL) == 1 &&
              st_dtype_size(ST_F8_E4M3) == 1 && st_dtype_size((st_dtype)99) == 0,
          "dtype sizes");
    check(strcmp(st_dtype_name(ST_BF16), "BF16") == 0 && strcmp(st_dtype_name(ST_U16), "U16") == 0 &&
              strcmp(st_dtype_name((st_dtype)-1), "?") == 0,
          "dtype names");
    int distinct = 1;
    for (int s = ST_OK; s <= ST_ERR_LIMIT; s++)
        for (int u = s + 1; u <= ST_ERR_LIMIT; u++)
            distinct &= strcmp(st_strerror((st_status)s), st_strerror((st_status)u)) != 0;
    check(distinct && st_strerror((st_status)42) != NULL, "st_strerror: distinct texts, unknown value handled");
}

/* Every binary16 value against value = (-1)^s * (1024 + m) * 2^(e-25) (normal) or m * 2^-24
 * (subnormal); NaNs must keep sign and payload (f32 bits = sign | 0x7f800000 | m << 13). */
static void test_f16_exhaustive(void)
{
    static uint16_t h[65536];
    static float out[65536];
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    st_tensor t = {.name = "all", .dtype = ST_F16, .ndim = 1, .shape = {65536}, .nelem = 65536,
                   .data = h, .nbytes = sizeof h};
    st_status s = st_to_f32(&t, out, 65536);
    int bad = 0, first_bad = -1;
    for (int i = 0; i < 65536 && s == ST_OK; i++) {
        int sign = i >> 15, e = (i >> 10) & 31, m = i & 1023;
        int ok;
        if (e == 31 && m != 0) {
            ok = isnan(out[i]) && f32_bits(out[i]) == (((uint32_t)sign << 31) | 0x7f800000u | ((uint32_t)m << 13));
        } else {
            float ref = e == 31 ? INFINITY : e == 0 ? (float)m * pow2f(-24) : (float)(1024 + m) * pow2f(e - 25);
            if (sign)
                ref = -ref;
            ok = f32_bits(ref) == f32_bits(out[i]);
        }
        if (!ok && bad++ == 0)
            first_bad = i;
    }
    check(s == ST_OK && bad == 0, "f16 -> f32 exact for all 65536 inputs, NaN payloads kept (%d wrong, first 0x%04x)", bad,
          first_bad < 0 ? 0 : first_bad);
}

/* The tensors of the round-trip file. */
static float rt_f32[6] = {0.0f, 1.0f, -1.5f, 3.25f, 1e-30f, -7.0f};
static const uint16_t rt_f16[11] = {0x0000, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x0001,
                                    0x03ff, 0x0400, 0x7c00, 0xfc00, 0x7e00};
static const uint16_t rt_bf16[4] = {0x3f80, 0xc020, 0x7f80, 0x0001};
static const double rt_f64[3] = {0.5, -1e300, 1.0 / 3.0};
static const int32_t rt_i32[3] = {-5, 0, 16777217};
static const uint8_t rt_u8[4] = {1, 2, 3, 255};
static const float rt_scalar = 42.0f;
static uint16_t rt_big[128 * 32];

static int make_roundtrip(st_write_tensor *w)
{
    int n = 0;
    for (size_t i = 0; i < 128 * 32; i++)
        rt_big[i] = (uint16_t)(0x3f80 + (i & 0x7f));
    w[n++] = (st_write_tensor){"a.f32", ST_F32, 2, {2, 3}, rt_f32};
    w[n++] = (st_write_tensor){"b.f16", ST_F16, 1, {11}, rt_f16};
    w[n++] = (st_write_tensor){"c.bf16", ST_BF16, 2, {2, 2}, rt_bf16};
    w[n++] = (st_write_tensor){"d.f64", ST_F64, 1, {3}, rt_f64};
    w[n++] = (st_write_tensor){"e.i32", ST_I32, 1, {3}, rt_i32};
    w[n++] = (st_write_tensor){"f.u8", ST_U8, 2, {2, 2}, rt_u8};
    w[n++] = (st_write_tensor){"g.scalar", ST_F32, 0, {0}, &rt_scalar};
    w[n++] = (st_write_tensor){"h.empty", ST_F16, 2, {0, 5}, NULL};
    w[n++] = (st_write_tensor){"blocks.0.ffn.0.weight", ST_BF16, 2, {128, 32}, rt_big};
    return n;
}

static const char *const rt_meta[] = {"format", "pt", "vmla.preset", "tiny-test", NULL};

static void check_roundtrip(st_file_t *f, const st_write_tensor *w, int n, const char *how)
{
    check(st_count(f) == n, "%s: st_count = %d", how, st_count(f));
    int order = 1, found = 1, same = 1;
    for (int i = 0; i < n && i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        order &= strcmp(t->name, w[i].name) == 0;
        found &= st_find(f, w[i].name) == t;
        same &= t->dtype == w[i].dtype && t->ndim == w[i].ndim &&
                memcmp(t->shape, w[i].shape, sizeof(int64_t) * (size_t)w[i].ndim) == 0;
        for (int d = t->ndim; d < ST_MAX_DIMS; d++)
            same &= t->shape[d] == 0;
        same &= t->nbytes == (size_t)t->nelem * st_dtype_size(t->dtype);
        same &= t->nbytes == 0 || memcmp(t->data, w[i].data, t->nbytes) == 0;
    }
    check(order, "%s: st_at lists tensors in data order", how);
    check(found, "%s: st_find returns the same entries", how);
    check(same, "%s: dtype, shape and bytes preserved", how);
    check(st_find(f, "nope") == NULL && st_find(f, "") == NULL && st_at(f, -1) == NULL && st_at(f, n) == NULL,
          "%s: absent name and out-of-range index give NULL", how);
    const st_tensor *sc = st_find(f, "g.scalar"), *em = st_find(f, "h.empty");
    check(sc && sc->ndim == 0 && sc->nelem == 1 && sc->nbytes == 4, "%s: scalar has ndim 0, one element", how);
    check(em && em->nelem == 0 && em->nbytes == 0, "%s: [0, 5] tensor is empty", how);

    /* Conversions. */
    float out[16];
    const st_tensor *t = st_find(f, "a.f32");
    check(t && st_to_f32(t, out, 6) == ST_OK && memcmp(out, rt_f32, sizeof rt_f32) == 0, "%s: F32 values", how);

    t = st_find(f, "b.f16");
    const float want16[10] = {0.0f, -0.0f, 1.0f, -2.0f, 65504.0f, pow2f(-24), 1023.0f * pow2f(-24),
                              pow2f(-14), INFINITY, -INFINITY};
    int ok = t && st_to_f32(t, out, 11) == ST_OK;
    for (int i = 0; ok && i < 10; i++)
        ok = f32_bits(out[i]) == f32_bits(want16[i]);
    check(ok, "%s: F16 values (signed zero, max, smallest and largest subnormal, inf, -inf)", how);
    check(ok && isnan(out[10]), "%s: F16 NaN stays NaN", how);

    t = st_find(f, "c.bf16");
    ok = t && st_to_f32(t, out, 4) == ST_OK;
    check(ok && out[0] == 1.0f && out[1] == -2.5f && isinf(out[2]) && f32_bits(out[3]) == 0x00010000u,
          "%s: BF16 values (1, -2.5, inf, subnormal)", how);

    t = st_find(f, "d.f64");
    ok = t && st_to_f32(t, out, 3) == ST_OK;
    check(ok && out[0] == 0.5f && isinf(out[1]) && out[1] < 0 && out[2] == (float)(1.0 / 3.0),
          "%s: F64 values round to nearest, out of range -> -inf", how);

    t = st_find(f, "e.i32");
    ok = t && st_to_f32(t, out, 3) == ST_OK;
    check(ok && out[0] == -5.0f && out[1] == 0.0f && out[2] == 16777216.0f, "%s: I32 values", how);

    t = st_find(f, "f.u8");
    check(t && st_to_f32(t, out, 4) == ST_ERR_DTYPE, "%s: U8 -> f32 is ST_ERR_DTYPE", how);
    check(t && ((const uint8_t *)t->data)[3] == 255, "%s: U8 bytes exposed", how);

    t = st_find(f, "a.f32");
    check(t && st_to_f32(t, out, 5) == ST_ERR_SHAPE && st_to_f32(t, out, 7) == ST_ERR_SHAPE,
          "%s: st_to_f32 with n != nelem is ST_ERR_SHAPE", how);
    check(st_to_f32(st_find(f, "h.empty"), out, 0) == ST_OK, "%s: converting an empty tensor", how);

    /* Metadata. */
    check(st_metadata_count(f) == 2 && st_metadata(f, "format") && strcmp(st_metadata(f, "format"), "pt") == 0 &&
              strcmp(st_metadata(f, "vmla.preset"), "tiny-test") == 0,
          "%s: metadata values", how);
    check(st_metadata(f, "absent") == NULL && strcmp(st_metadata_key(f, 0), "format") == 0 &&
              strcmp(st_metadata_value(f, 1), "tiny-test") == 0 && st_metadata_key(f, 2) == NULL,
          "%s: metadata absent key, sorted enumeration", how);
    check(strcmp(st_error(f), "") == 0, "%s: no error text after a successful open", how);
}

static void test_roundtrip(void)
{
    st_write_tensor w[16];
    int n = make_roundtrip(w);
    const char *path = tmp_path("rt.safetensors");
    char err[ST_ERR_LEN];
    st_status s = st_write(path, w, n, rt_meta, err, sizeof err);
    check(s == ST_OK, "write round-trip file: %s", s == ST_OK ? "ok" : err);
    check(!file_exists(tmp_path("rt.safetensors.tmp")), "writer leaves no .tmp behind");

    size_t len = 0;
    unsigned char *bytes = read_bytes(path, &len);
    uint64_t hlen = 0;
    for (int i = 0; bytes && len >= 8 && i < 8; i++)
        hlen |= (uint64_t)bytes[i] << (8 * i);
    check(bytes && hlen % 8 == 0 && bytes[8] == '{', "writer pads the header so data starts 8-byte aligned");

    st_file_t *f = NULL;
    s = st_open(&f, path, err, sizeof err);
    check(s == ST_OK && f, "st_open round-trip file: %s", s == ST_OK ? "ok" : err);
    if (f)
        check_roundtrip(f, w, n, "st_open");

    /* st_expect on the same handle. */
    const st_tensor *t = (const st_tensor *)1;
    s = st_expect(f, "blocks.0.ffn.0.weight", 2, (const int64_t[]){128, 32}, &t);
    check(s == ST_OK && t == st_find(f, "blocks.0.ffn.0.weight"), "st_expect: right shape");
    t = (const st_tensor *)1;
    s = st_expect(f, "blocks.0.ffn.0.weight", 2, (const int64_t[]){128, 64}, &t);
    check(s == ST_ERR_SHAPE && t == NULL &&
              strcmp(st_error(f), "tensor 'blocks.0.ffn.0.weight': expected shape [128, 64], file has [128, 32]") == 0,
          "st_expect: wrong shape -> \"%s\"", st_error(f));
    s = st_expect(f, "blocks.0.ffn.0.weight", 1, (const int64_t[]){128}, NULL);
    check(s == ST_ERR_SHAPE && strstr(st_error(f), "expected shape [128], file has [128, 32]"),
          "st_expect: wrong rank -> \"%s\"", st_error(f));
    t = (const st_tensor *)1;
    s = st_expect(f, "x", 1, (const int64_t[]){4}, &t);
    check(s == ST_ERR_MISSING && t == NULL && strcmp(st_error(f), "tensor 'x' is missing") == 0,
          "st_expect: missing -> \"%s\"", st_error(f));
    s = st_expect(f, "g.scalar", 0, NULL, NULL);
    check(s == ST_OK, "st_expect: scalar with ndim 0");
    s = st_expect(f, "a.f32", 9, (const int64_t[9]){0}, NULL);
    check(s == ST_ERR_SHAPE, "st_expect: ndim 9 rejected -> \"%s\"", st_error(f));
    st_close(f);

    /* The same bytes through st_open_mem, at an odd address so every tensor is misaligned. */
    unsigned char *odd = bytes ? malloc(len + 1) : NULL;
    if (odd) {
        memcpy(odd + 1, bytes, len);
        f = NULL;
        s = st_open_mem(&f, odd + 1, len, err, sizeof err);
        check(s == ST_OK, "st_open_mem on a misaligned copy: %s", s == ST_OK ? "ok" : err);
        if (f)
            check_roundtrip(f, w, n, "st_open_mem");
        st_close(f);
    }
    free(odd);

    /* st_write_mem gives the same bytes as st_write. */
    void *mem = NULL;
    size_t mlen = 0;
    s = st_write_mem(&mem, &mlen, w, n, rt_meta, err, sizeof err);
    check(s == ST_OK && bytes && mlen == len && memcmp(mem, bytes, len) == 0, "st_write_mem matches st_write");
    free(mem);
    free(bytes);

    /* No tensors, no metadata. */
    path = tmp_path("empty.safetensors");
    s = st_write(path, NULL, 0, NULL, err, sizeof err);
    f = NULL;
    if (s == ST_OK)
        s = st_open(&f, path, err, sizeof err);
    check(s == ST_OK && st_count(f) == 0 && st_metadata_count(f) == 0 && st_find(f, "a") == NULL,
          "file with no tensors round-trips");
    st_close(f);
}

static void test_writer_errors(void)
{
    char err[ST_ERR_LEN];
    float v[4] = {1, 2, 3, 4};
    const char *path = tmp_path("w.safetensors");
    const char *tmp = tmp_path("w.safetensors.tmp");
    struct {
        const char *label;
        st_write_tensor w[2];
        int n;
        const char *const *meta;
        st_status want;
        const char *needle;
    } cases[] = {
        {"duplicate name", {{"dup", ST_F32, 1, {2}, v}, {"dup", ST_F32, 1, {2}, v + 2}}, 2, NULL, ST_ERR_FORMAT,
         "'dup'"},
        {"reserved name", {{"__metadata__", ST_F32, 1, {2}, v}}, 1, NULL, ST_ERR_FORMAT, "__metadata__"},
        {"NULL name", {{NULL, ST_F32, 1, {2}, v}}, 1, NULL, ST_ERR_FORMAT, "tensor 0"},
        {"name not UTF-8", {{"bad\xff", ST_F32, 1, {2}, v}}, 1, NULL, ST_ERR_FORMAT, "UTF-8"},
        {"ndim 9", {{"nd", ST_F32, 9, {1}, v}}, 1, NULL, ST_ERR_LIMIT, "'nd'"},
        {"negative dim", {{"neg", ST_F32, 2, {2, -1}, v}}, 1, NULL, ST_ERR_SHAPE, "'neg'"},
        {"overflowing shape", {{"big", ST_F32, 2, {1LL << 62, 1LL << 62}, v}}, 1, NULL, ST_ERR_SHAPE, "'big'"},
        {"bad dtype", {{"dt", (st_dtype)77, 1, {2}, v}}, 1, NULL, ST_ERR_DTYPE, "'dt'"},
        {"NULL data", {{"nul", ST_F32, 1, {2}, NULL}}, 1, NULL, ST_ERR_MISSING, "'nul'"},
        {"metadata key without value", {{"ok", ST_F32, 1, {2}, v}}, 1, (const char *const[]){"k", NULL, NULL},
         ST_ERR_FORMAT, "'k'"},
        {"duplicate metadata key", {{"ok", ST_F32, 1, {2}, v}}, 1, (const char *const[]){"k", "1", "k", "2", NULL},
         ST_ERR_FORMAT, "'k'"},
        {"negative count", {{"ok", ST_F32, 1, {2}, v}}, -1, NULL, ST_ERR_LIMIT, "limit"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_status s = st_write(path, cases[i].w, cases[i].n, cases[i].meta, err, sizeof err);
        check(s == cases[i].want && strstr(err, cases[i].needle) && !file_exists(path) && !file_exists(tmp),
              "writer rejects %s -> %s: %s (no file left)", cases[i].label, st_strerror(s), err);
    }

    /* A failed write leaves an existing file alone. */
    st_write_tensor good = {"keep", ST_F32, 1, {4}, v};
    st_status s = st_write(path, &good, 1, NULL, err, sizeof err);
    st_write_tensor dup[2] = {{"d", ST_F32, 1, {1}, v}, {"d", ST_F32, 1, {1}, v}};
    st_status s2 = st_write(path, dup, 2, NULL, err, sizeof err);
    st_file_t *f = NULL;
    st_status s3 = st_open(&f, path, err, sizeof err);
    check(s == ST_OK && s2 == ST_ERR_FORMAT && s3 == ST_OK && st_find(f, "keep") && !file_exists(tmp),
          "failed write leaves the existing file untouched");
    st_close(f);

    /* rename() fails when the target is a directory: the .tmp file must be removed. */
    const char *dir = tmp_path("a-directory");
    const char *dirtmp = tmp_path("a-directory.tmp");
    mkdir(dir, 0700);
    s = st_write(dir, &good, 1, NULL, err, sizeof err);
    check(s == ST_ERR_IO && strstr(err, "rename") && !file_exists(dirtmp), "failed rename -> %s: %s (no .tmp left)",
          st_strerror(s), err);
    rmdir(dir);

    s = st_write(tmp_path("no/such/dir.safetensors"), &good, 1, NULL, err, sizeof err);
    check(s == ST_ERR_IO && strstr(err, "no/such/dir"), "writer into a missing directory -> %s: %s",
          st_strerror(s), err);
}

static void test_open_errors(void)
{
    char err[ST_ERR_LEN];
    st_file_t *f = (st_file_t *)1;
    st_status s = st_open(&f, tmp_path("does-not-exist"), err, sizeof err);
    check(s == ST_ERR_IO && f == NULL && strstr(err, "does-not-exist"), "open missing file -> %s: %s",
          st_strerror(s), err);

    f = (st_file_t *)1;
    s = st_open(&f, g_dir, err, sizeof err);
    check(s == ST_ERR_IO && f == NULL && strstr(err, "regular"), "open a directory -> %s: %s", st_strerror(s), err);

    const char *p = tmp_path("zero");
    write_bytes(p, "", 0);
    s = st_open(&f, p, err, sizeof err);
    check(s == ST_ERR_FORMAT && f == NULL && strstr(err, "0 bytes"), "open empty file -> %s: %s",
          st_strerror(s), err);

    p = tmp_path("seven");
    write_bytes(p, "\x10\0\0\0\0\0\0", 7);
    s = st_open(&f, p, err, sizeof err);
    check(s == ST_ERR_FORMAT && f == NULL && strstr(err, "7 bytes"), "open 7-byte file -> %s: %s",
          st_strerror(s), err);

    s = st_open_mem(&f, NULL, 0, err, sizeof err);
    check(s == ST_ERR_FORMAT && f == NULL, "st_open_mem of 0 bytes -> %s: %s", st_strerror(s), err);

    /* Truncated real files: cut inside the data, and inside the header. */
    float v[8] = {0};
    st_write_tensor w[2] = {{"first", ST_F32, 1, {8}, v}, {"second", ST_F32, 1, {8}, v}};
    void *mem = NULL;
    size_t len = 0;
    s = st_write_mem(&mem, &len, w, 2, NULL, err, sizeof err);
    p = tmp_path("truncated");
    write_bytes(p, mem, len - 4);
    s = st_open(&f, p, err, sizeof err);
    check(s == ST_ERR_FORMAT && f == NULL && strstr(err, "'second'") && strstr(err, "past the end"),
          "open file cut inside the data -> %s: %s", st_strerror(s), err);
    write_bytes(p, mem, 20);
    s = st_open(&f, p, err, sizeof err);
    check(s == ST_ERR_FORMAT && f == NULL && strstr(err, "header length"), "open file cut inside the header -> %s: %s",
          st_strerror(s), err);
    free(mem);

    /* A tiny error buffer is still NUL-terminated, and NULL is allowed. */
    char small[8];
    memset(small, 'x', sizeof small);
    s = st_open_mem(&f, "\0\0", 2, small, sizeof small);
    check(s == ST_ERR_FORMAT && strlen(small) == 7, "short error buffer truncates cleanly");
    check(st_open_mem(&f, "\0\0", 2, NULL, 0) == ST_ERR_FORMAT && f == NULL, "NULL error buffer allowed");
}

/* One malformed header per rule. The data section is datalen bytes. */
typedef struct {
    const char *label;
    const char *json; /* NULL: use the raw bytes path (see below) */
    size_t datalen;
    st_status want;
    const char *needle; /* must appear in the message */
    const char *needle2;
} bad_case;

static const bad_case bad_cases[] = {
    {"bad JSON", "{\"w\": ", 0, ST_ERR_FORMAT, "not valid JSON", NULL},
    {"empty header", "", 0, ST_ERR_FORMAT, "not valid JSON", NULL},
    {"header is an array", "[1, 2]", 0, ST_ERR_FORMAT, "not a JSON object", NULL},
    {"header not UTF-8", "{\"w\xff\": 1}", 0, ST_ERR_FORMAT, "decode byte 0xff", NULL},
    {"NUL in a name", "{\"a\\u0000b\": 1}", 0, ST_ERR_FORMAT, "NUL", NULL},
    {"entry not an object", "{\"w\": 5}", 0, ST_ERR_FORMAT, "'w'", "not a JSON object"},
    {"missing dtype", "{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, ST_ERR_FORMAT, "'w'", "dtype"},
    {"dtype not a string", "{\"w\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, ST_ERR_DTYPE,
     "'w'", "dtype"},
    {"unknown dtype", "{\"w\": {\"dtype\": \"F33\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, ST_ERR_DTYPE,
     "'w'", "'F33'"},
    {"lower-case dtype", "{\"w\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
     ST_ERR_DTYPE, "'w'", "'f32'"},
    {"missing shape", "{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, ST_ERR_FORMAT, "'w'", "shape"},
    {"shape not an array", "{\"w\": {\"dtype\": \"F32\", \"shape\": 4, \"data_offsets\": [0, 16]}}", 16,
     ST_ERR_SHAPE, "'w'", "not an array"},
    {"negative dim", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, -1], \"data_offsets\": [0, 0]}}", 0,
     ST_ERR_SHAPE, "'w'", "negative"},
    {"fractional dim", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
     ST_ERR_SHAPE, "'w'", "not an integer"},
    {"string dim", "{\"w\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", 8,
     ST_ERR_SHAPE, "'w'", "not an integer"},
    {"9 dims", "{\"w\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}", 1,
     ST_ERR_LIMIT, "'w'", "limit"},
    {"element count overflow [2^62, 2^62]",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 4611686018427387904], "
     "\"data_offsets\": [0, 0]}}",
     0, ST_ERR_SHAPE, "'w'", "overflows"},
    {"byte size overflow [2^61, 3] F32",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [2305843009213693952, 3], \"data_offsets\": [0, 0]}}", 0,
     ST_ERR_SHAPE, "'w'", "overflows"},
    {"dim past int64", "{\"w\": {\"dtype\": \"F32\", \"shape\": [18446744073709551616], \"data_offsets\": [0, 0]}}",
     0, ST_ERR_FORMAT, "too big integer", NULL},
    {"missing data_offsets", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, ST_ERR_FORMAT, "'w'",
     "data_offsets"},
    {"one offset", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, ST_ERR_FORMAT, "'w'",
     "two integers"},
    {"offsets as strings", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [\"0\", \"4\"]}}", 4,
     ST_ERR_FORMAT, "'w'", "two integers"},
    {"negative offset", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4,
     ST_ERR_FORMAT, "'w'", "negative"},
    {"begin after end", "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 8,
     ST_ERR_FORMAT, "'w'", "after end"},
    {"offsets past the data section", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4,
     ST_ERR_FORMAT, "'w'", "past the end"},
    {"huge end offset",
     "{\"w\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [9223372036854775807, 9223372036854775807]}}",
     4, ST_ERR_FORMAT, "'w'", "past the end"},
    {"size mismatch", "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 8, ST_ERR_SHAPE,
     "'w'", "needs 8 bytes"},
    {"overlapping tensors",
     "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
     " \"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
     12, ST_ERR_FORMAT, "'w'", "'a'"},
    {"tensor inside another",
     "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
     " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [16, 20]},"
     " \"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
     20, ST_ERR_FORMAT, "'w'", "'a'"},
    {"duplicate tensor name",
     "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
     " \"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
     8, ST_ERR_FORMAT, "\"w\"", "duplicate"},
    {"duplicate field", "{\"w\": {\"dtype\": \"F32\", \"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
     4, ST_ERR_FORMAT, "\"dtype\"", "duplicate"},
    {"metadata not an object", "{\"__metadata__\": 5}", 0, ST_ERR_FORMAT, "__metadata__", "not a JSON object"},
    {"metadata value not a string", "{\"__metadata__\": {\"ok\": \"x\", \"k\": 1}}", 0, ST_ERR_FORMAT, "'k'",
     "not a string"},
};

static void test_bad_headers(void)
{
    char err[ST_ERR_LEN];
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        size_t len;
        unsigned char *b = raw_file(c->json, strlen(c->json), c->datalen, &len);
        st_file_t *f = (st_file_t *)1;
        st_status s = st_open_mem(&f, b, len, err, sizeof err);
        int ok = s == c->want && f == NULL && strstr(err, c->needle) && (!c->needle2 || strstr(err, c->needle2));
        check(ok, "bad file: %s -> %s: %s", c->label, st_strerror(s), err);
        free(b);
    }

    /* Header length fields that lie. */
    size_t len;
    unsigned char *b = raw_file("{}", 2, 0, &len);
    b[0] = 100;
    st_file_t *f = (st_file_t *)1;
    st_status s = st_open_mem(&f, b, len, err, sizeof err);
    check(s == ST_ERR_FORMAT && f == NULL && strstr(err, "header length 100"), "bad file: header length past EOF -> %s: %s",
          st_strerror(s), err);
    memset(b, 0xff, 8);
    s = st_open_mem(&f, b, len, err, sizeof err);
    check(s == ST_ERR_LIMIT && f == NULL, "bad file: header length 2^64-1 -> %s: %s", st_strerror(s), err);
    uint64_t over = (uint64_t)ST_MAX_HEADER + 1;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(over >> (8 * i));
    s = st_open_mem(&f, b, len, err, sizeof err);
    check(s == ST_ERR_LIMIT && f == NULL && strstr(err, "ST_MAX_HEADER"), "bad file: header length over limit -> %s: %s",
          st_strerror(s), err);
    free(b);

    /* A NUL byte in the header (some writers pad with NULs; the format says spaces). */
    b = raw_file("{}\0\0\0\0\0\0", 8, 0, &len);
    s = st_open_mem(&f, b, len, err, sizeof err);
    check(s == ST_ERR_FORMAT && f == NULL, "bad file: NUL padding in header -> %s: %s", st_strerror(s), err);
    free(b);

    /* More tensors than ST_MAX_TENSORS (entries need not be valid: the count is checked first). */
    size_t cap = (size_t)(ST_MAX_TENSORS + 1) * 16 + 16, used = 0;
    char *json = malloc(cap);
    if (json) {
        json[used++] = '{';
        for (int i = 0; i <= ST_MAX_TENSORS; i++)
            used += (size_t)snprintf(json + used, cap - used, "%s\"t%d\":0", i ? "," : "", i);
        json[used++] = '}';
        clock_t t0 = clock();
        b = raw_file(json, used, 0, &len);
        s = st_open_mem(&f, b, len, err, sizeof err);
        double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
        check(s == ST_ERR_LIMIT && f == NULL && strstr(err, "ST_MAX_TENSORS"), "bad file: %d tensors -> %s: %s (%.2f s)",
              ST_MAX_TENSORS + 1, st_strerror(s), err, secs);
        free(b);
        free(json);
    }
}

/* Files the reader must accept although a strict writer would not produce them. */
static void test_lenient(void)
{
    char err[ST_ERR_LEN];
    struct {
        const char *label;
        const char *json;
        size_t datalen;
        int count;
    } cases[] = {
        {"empty object", "{}", 0, 0},
        {"space padding and unknown keys",
         "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"extra\": [1]}}      ", 4, 1},
        {"gaps and trailing bytes",
         "{\"a\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [3, 5]},"
         " \"b\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [9, 10]}}",
         16, 2},
        {"empty tensors inside others and at the end",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
         " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 3], \"data_offsets\": [4, 4]},"
         " \"z\": {\"dtype\": \"F64\", \"shape\": [7, 0], \"data_offsets\": [8, 8]}}",
         8, 3},
        {"zero dim next to huge dims",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904, 4611686018427387904, 0],"
         " \"data_offsets\": [0, 0]}}",
         0, 1},
        {"metadata only", "{\"__metadata__\": {}}", 0, 0},
        {"every dtype",
         "{\"a\": {\"dtype\": \"BOOL\", \"shape\": [1], \"data_offsets\": [0, 1]},"
         " \"b\": {\"dtype\": \"I8\", \"shape\": [1], \"data_offsets\": [1, 2]},"
         " \"c\": {\"dtype\": \"I16\", \"shape\": [1], \"data_offsets\": [2, 4]},"
         " \"d\": {\"dtype\": \"U16\", \"shape\": [1], \"data_offsets\": [4, 6]},"
         " \"e\": {\"dtype\": \"U32\", \"shape\": [1], \"data_offsets\": [6, 10]},"
         " \"f\": {\"dtype\": \"U64\", \"shape\": [1], \"data_offsets\": [10, 18]},"
         " \"g\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [18, 26]},"
         " \"h\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [26, 27]},"
         " \"i\": {\"dtype\": \"F8_E5M2\", \"shape\": [1], \"data_offsets\": [27, 28]}}",
         28, 9},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        unsigned char *b = raw_file(cases[i].json, strlen(cases[i].json), cases[i].datalen, &len);
        st_file_t *f = NULL;
        st_status s = st_open_mem(&f, b, len, err, sizeof err);
        check(s == ST_OK && st_count(f) == cases[i].count, "accepted: %s%s%s", cases[i].label, s ? ": " : "",
              s ? err : "");
        if (f && i == 3) {
            const st_tensor *e = st_find(f, "e");
            check(e && e->nelem == 0 && st_at(f, 1) == e, "empty tensor sorts between by offset");
        }
        st_close(f);
        free(b);
    }
}

/* Fault injection in the style of SQLite's tests: make jansson's N-th allocation fail, for every N
 * until a run completes, while opening and writing the round-trip file. Each run must end in
 * ST_OK or a clean failure: ST_ERR_NOMEM, or ST_ERR_FORMAT because jansson reports most failed
 * allocations as parse errors (and a failed set as a bad key). Leaks show up under ASan at exit. */
static long g_fail_at, g_allocs;

static void *failing_malloc(size_t n)
{
    return ++g_allocs == g_fail_at ? NULL : malloc(n);
}

static void test_alloc_failures(void)
{
    st_write_tensor w[16];
    int n = make_roundtrip(w);
    char err[ST_ERR_LEN];
    void *good = NULL;
    size_t glen = 0;
    if (st_write_mem(&good, &glen, w, n, rt_meta, err, sizeof err) != ST_OK) {
        check(0, "fault injection: cannot make the file: %s", err);
        return;
    }
    json_malloc_t old_malloc;
    json_free_t old_free;
    json_get_alloc_funcs(&old_malloc, &old_free);
    json_set_alloc_funcs(failing_malloc, free);

    int open_ok = 1, write_ok = 1;
    long runs = 0;
    for (int which = 0; which < 2; which++) {
        if (which == 1) {
            check(open_ok, "fault injection: st_open_mem fails cleanly at every jansson allocation (%ld runs)", runs);
            runs = 0;
        }
        for (g_fail_at = 1;; g_fail_at++) {
            st_status s;
            g_allocs = 0;
            runs++;
            if (which == 0) {
                st_file_t *f = NULL;
                s = st_open_mem(&f, good, glen, err, sizeof err);
                open_ok &= s == ST_OK ? (f && st_count(f) == n)
                                      : ((s == ST_ERR_NOMEM || s == ST_ERR_FORMAT) && f == NULL);
                st_close(f);
            } else {
                void *mem = NULL;
                size_t mlen = 0;
                s = st_write_mem(&mem, &mlen, w, n, rt_meta, err, sizeof err);
                write_ok &= s == ST_OK ? (mlen == glen && memcmp(mem, good, glen) == 0)
                                       : ((s == ST_ERR_NOMEM || s == ST_ERR_FORMAT) && mem == NULL);
                free(mem);
            }
            if (g_allocs < g_fail_at) /* no allocation failed: every failure point has been tried */
                break;
        }
    }
    json_set_alloc_funcs(old_malloc, old_free);
    free(good);
    check(write_ok, "fault injection: st_write_mem fails cleanly at every jansson allocation (%ld runs)", runs);
}

/* ---- seed corpus for tests/fuzz ------------------------------------------------------------------ */

static int write_seeds(const char *dir)
{
    char path[512], err[ST_ERR_LEN];
    int fails = 0;
    st_write_tensor w[16];
    int n = make_roundtrip(w);
    w[n - 1].shape[0] = 4; /* keep the seed small: blocks.0.ffn.0.weight as [4, 32] */

    struct {
        const char *name;
        int first, count;
        const char *const *meta;
    } good[] = {
        {"valid_all.safetensors", 0, n, rt_meta},
        {"valid_f32_f16.safetensors", 0, 2, NULL},
        {"valid_scalar_empty.safetensors", 6, 2, rt_meta},
        {"valid_none.safetensors", 0, 0, NULL},
    };
    void *mem[4] = {0};
    size_t mlen[4] = {0};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, good[i].name);
        if (st_write(path, w + good[i].first, good[i].count, good[i].meta, err, sizeof err) != ST_OK ||
            st_write_mem(&mem[i], &mlen[i], w + good[i].first, good[i].count, good[i].meta, err, sizeof err) != ST_OK) {
            fprintf(stderr, "%s: %s\n", path, err);
            fails++;
        }
    }
    /* Broken ones: truncated, and a few hand-made headers. */
    if (mem[1]) {
        snprintf(path, sizeof path, "%s/bad_truncated.safetensors", dir);
        fails += !write_bytes(path, mem[1], mlen[1] - 3);
    }
    const char *picks[][2] = {{"bad JSON", "bad_json"},
                              {"element count overflow [2^62, 2^62]", "bad_overflow_shape"},
                              {"offsets past the data section", "bad_offsets_past_end"},
                              {"size mismatch", "bad_size_mismatch"},
                              {"overlapping tensors", "bad_overlap"},
                              {"duplicate tensor name", "bad_duplicate"}};
    for (size_t i = 0; i < sizeof picks / sizeof picks[0]; i++) {
        const bad_case *c = NULL;
        for (size_t k = 0; k < sizeof bad_cases / sizeof bad_cases[0]; k++)
            if (strcmp(bad_cases[k].label, picks[i][0]) == 0)
                c = &bad_cases[k];
        if (!c) {
            fprintf(stderr, "no bad case '%s'\n", picks[i][0]);
            fails++;
            continue;
        }
        size_t len;
        unsigned char *b = raw_file(c->json, strlen(c->json), c->datalen, &len);
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, picks[i][1]);
        fails += !write_bytes(path, b, len);
        free(b);
    }
    for (int i = 0; i < 4; i++)
        free(mem[i]);
    printf("%s seeds in %s\n", fails ? "FAILED writing" : "wrote", dir);
    return fails ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--seeds") == 0)
        return write_seeds(argv[2]);

    snprintf(g_dir, sizeof g_dir, "/tmp/test_safetensors.XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_dtypes();
    test_f16_exhaustive();
    test_roundtrip();
    test_writer_errors();
    test_open_errors();
    test_bad_headers();
    test_lenient();
    test_alloc_failures();

    for (int i = g_nmade - 1; i >= 0; i--)
        unlink(g_made[i]);
    int clean = rmdir(g_dir) == 0;
    check(clean, "temp directory %s removed", g_dir);

    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
