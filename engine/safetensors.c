/* engine/safetensors.c — safetensors reader (mmap + validated header) and writer.
 *
 * The reader trusts nothing in the file: the 8-byte header length is checked against the limit
 * and the file size before the JSON is parsed, every field of every entry is type-checked, sizes
 * are multiplied with overflow checks, and every byte range is checked against the data section
 * before a pointer is formed from it. After that the tensor table is immutable and lookups are
 * plain reads. See safetensors.h for the format and the rules.
 *
 * Layout of a handle: one allocation holds the tensor table (sorted by data offset), an index of
 * pointers into it sorted by name (for st_find), the metadata pairs sorted by key, and the bytes
 * of every name, key and value. The JSON tree is freed before st_open returns.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__GNUC__)
#define ST_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ST_PRINTF(a, b)
#endif

#define ST_META_KEY "__metadata__"

typedef struct {
    const char *key;
    const char *value;
} st_meta;

struct st_file {
    const unsigned char *bytes; /* the whole file: mapping or caller's buffer */
    size_t len;
    void *map;                  /* non-NULL when we own an mmap of map_len bytes */
    size_t map_len;
    int ntensors;
    st_tensor *tensors;         /* (ntensors) sorted by data offset, then size, then name */
    const st_tensor **by_name;  /* (ntensors) sorted by name */
    int nmeta;
    st_meta *meta;              /* (nmeta) sorted by key */
    void *block;                /* the one allocation behind tensors, by_name, meta and strings */
    char err[ST_ERR_LEN];
};

/* ---- small helpers ------------------------------------------------------------------------------ */

static ST_PRINTF(4, 5) st_status st_fail(char *buf, size_t buflen, st_status s, const char *fmt, ...)
{
    if (buf && buflen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, buflen, fmt, ap);
        va_end(ap);
    }
    return s;
}

static void st_copy_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

/* Overflow-checked size arithmetic: return 0 on overflow, else store the result and return 1. */
static int st_add(size_t a, size_t b, size_t *r)
{
    if (a > SIZE_MAX - b)
        return 0;
    *r = a + b;
    return 1;
}

static int st_mul(size_t a, size_t b, size_t *r)
{
    if (b != 0 && a > SIZE_MAX / b)
        return 0;
    *r = a * b;
    return 1;
}

static uint16_t st_ld16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t st_ld32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t st_ld64(const unsigned char *p) { return st_ld32(p) | ((uint64_t)st_ld32(p + 4) << 32); }

static void st_st64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* "[128, 32]" into buf (which holds at least 2 + 8 * 22 bytes for any shape). */
static const char *st_fmt_shape(char *buf, size_t buflen, int ndim, const int64_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(buf, buflen, "[");
    for (int i = 0; i < ndim && used < buflen; i++)
        used += (size_t)snprintf(buf + used, buflen - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < buflen)
        snprintf(buf + used, buflen - used, "]");
    return buf;
}

#define ST_SHAPE_BUF 200

/* ---- dtypes ------------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_F32] = {"F32", 4},     [ST_F16] = {"F16", 2},         [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8},     [ST_I32] = {"I32", 4},         [ST_I64] = {"I64", 8},
    [ST_U8] = {"U8", 1},       [ST_I8] = {"I8", 1},           [ST_I16] = {"I16", 2},
    [ST_U16] = {"U16", 2},     [ST_U32] = {"U32", 4},         [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

size_t st_dtype_size(st_dtype t)
{
    return ((unsigned)t < ST_DTYPE_COUNT) ? st_dtypes[t].size : 0;
}

const char *st_dtype_name(st_dtype t)
{
    return ((unsigned)t < ST_DTYPE_COUNT) ? st_dtypes[t].name : "?";
}

static int st_dtype_parse(const char *s, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(s, st_dtypes[i].name) == 0) {
            *out = (st_dtype)i;
            return 1;
        }
    }
    return 0;
}

const char *st_strerror(st_status s)
{
    switch (s) {
    case ST_OK: return "ok";
    case ST_ERR_IO: return "I/O error";
    case ST_ERR_FORMAT: return "malformed file";
    case ST_ERR_MISSING: return "tensor missing";
    case ST_ERR_SHAPE: return "bad shape";
    case ST_ERR_DTYPE: return "bad dtype";
    case ST_ERR_NOMEM: return "out of memory";
    case ST_ERR_LIMIT: return "limit exceeded";
    }
    return "unknown status";
}

/* ---- header parsing ----------------------------------------------------------------------------- */

/* Element count and byte size of a shape, overflow-checked. The count is 0 when any dim is 0,
 * whatever the other dims are (so the result does not depend on the order of the dims). */
static st_status st_shape_size(int ndim, const int64_t *shape, st_dtype dtype, int64_t *nelem,
                               size_t *nbytes, const char *name, char *err, size_t errlen)
{
    char sb[ST_SHAPE_BUF];
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0)
            n = 0;
    for (int i = 0; i < ndim && n != 0; i++) {
        if (shape[i] > INT64_MAX / n)
            return st_fail(err, errlen, ST_ERR_SHAPE, "tensor '%.200s': element count of shape %s overflows",
                           name, st_fmt_shape(sb, sizeof sb, ndim, shape));
        n *= shape[i];
    }
    size_t es = st_dtype_size(dtype);
    if ((uint64_t)n > SIZE_MAX / es || n > INT64_MAX / (int64_t)es)
        return st_fail(err, errlen, ST_ERR_SHAPE, "tensor '%.200s': byte size of shape %s of %s overflows",
                       name, st_fmt_shape(sb, sizeof sb, ndim, shape), st_dtype_name(dtype));
    *nelem = n;
    *nbytes = (size_t)n * es;
    return ST_OK;
}

/* Fill t from one header entry; data/data_size is the data section. */
static st_status st_parse_entry(st_file_t *f, const char *name, json_t *v, st_tensor *t,
                                const unsigned char *data, size_t data_size)
{
    char sb[ST_SHAPE_BUF];
    char *e = f->err;
    size_t el = sizeof f->err;

    if (!json_is_object(v))
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': entry is not a JSON object", name);

    /* dtype */
    json_t *jd = json_object_get(v, "dtype");
    if (!jd)
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': missing \"dtype\"", name);
    if (!json_is_string(jd))
        return st_fail(e, el, ST_ERR_DTYPE, "tensor '%.200s': \"dtype\" is not a string", name);
    if (!st_dtype_parse(json_string_value(jd), &t->dtype))
        return st_fail(e, el, ST_ERR_DTYPE, "tensor '%.200s': unknown dtype '%.40s'", name,
                       json_string_value(jd));

    /* shape */
    json_t *js = json_object_get(v, "shape");
    if (!js)
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': missing \"shape\"", name);
    if (!json_is_array(js))
        return st_fail(e, el, ST_ERR_SHAPE, "tensor '%.200s': \"shape\" is not an array", name);
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return st_fail(e, el, ST_ERR_LIMIT, "tensor '%.200s': shape has %zu dims; the limit is %d", name,
                       nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return st_fail(e, el, ST_ERR_SHAPE, "tensor '%.200s': shape[%zu] is not an integer", name, i);
        json_int_t dv = json_integer_value(d);
        if (dv < 0)
            return st_fail(e, el, ST_ERR_SHAPE, "tensor '%.200s': shape[%zu] is negative (%lld)", name, i,
                           (long long)dv);
        t->shape[i] = (int64_t)dv;
    }
    size_t nbytes;
    st_status s = st_shape_size(t->ndim, t->shape, t->dtype, &t->nelem, &nbytes, name, e, el);
    if (s != ST_OK)
        return s;

    /* data_offsets */
    json_t *jo = json_object_get(v, "data_offsets");
    if (!jo)
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': missing \"data_offsets\"", name);
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': \"data_offsets\" is not an array of two integers",
                       name);
    long long b = (long long)json_integer_value(json_array_get(jo, 0));
    long long en = (long long)json_integer_value(json_array_get(jo, 1));
    if (b < 0 || en < 0)
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': data_offsets [%lld, %lld] has a negative value",
                       name, b, en);
    if (b > en)
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': data_offsets begin %lld is after end %lld", name,
                       b, en);
    if ((unsigned long long)en > (unsigned long long)data_size)
        return st_fail(e, el, ST_ERR_FORMAT,
                       "tensor '%.200s': data_offsets end %lld is past the end of the data section (%zu bytes)",
                       name, en, data_size);
    if ((unsigned long long)(en - b) != (unsigned long long)nbytes)
        return st_fail(e, el, ST_ERR_SHAPE,
                       "tensor '%.200s': shape %s of %s needs %zu bytes but data_offsets [%lld, %lld] span %lld",
                       name, st_fmt_shape(sb, sizeof sb, t->ndim, t->shape), st_dtype_name(t->dtype), nbytes,
                       b, en, en - b);
    t->data = data + b;
    t->nbytes = nbytes;
    return ST_OK;
}

static int st_cmp_offset(const void *pa, const void *pb)
{
    const st_tensor *a = pa, *b = pb;
    const unsigned char *da = a->data, *db = b->data; /* both point into the same buffer */
    if (da != db)
        return da < db ? -1 : 1;
    if (a->nbytes != b->nbytes)
        return a->nbytes < b->nbytes ? -1 : 1;
    return strcmp(a->name, b->name);
}

static int st_cmp_name(const void *pa, const void *pb)
{
    const st_tensor *const *a = pa, *const *b = pb;
    return strcmp((*a)->name, (*b)->name);
}

static int st_cmp_name_key(const void *key, const void *elem)
{
    const st_tensor *const *t = elem;
    return strcmp((const char *)key, (*t)->name);
}

static int st_cmp_meta(const void *pa, const void *pb)
{
    const st_meta *a = pa, *b = pb;
    return strcmp(a->key, b->key);
}

static int st_cmp_meta_key(const void *key, const void *elem)
{
    const st_meta *m = elem;
    return strcmp((const char *)key, m->key);
}

/* Copy s into the string arena at *cur and return the copy. */
static const char *st_intern(char **cur, const char *s)
{
    size_t n = strlen(s) + 1;
    char *dst = *cur;
    memcpy(dst, s, n);
    *cur += n;
    return dst;
}

/* Allocate f's block for ntens tensors, nmeta metadata pairs and strbytes of strings, and slice it.
 * Each part's size is a multiple of the next part's alignment (st_tensor holds int64_t, the others
 * are pointers), so every slice is aligned. Returns the start of the string arena, or NULL. */
static char *st_alloc_tables(st_file_t *f, size_t ntens, size_t nmeta, size_t strbytes)
{
    size_t sz_t, sz_i, sz_m, total;
    if (!st_mul(ntens, sizeof(st_tensor), &sz_t) || !st_mul(ntens, sizeof(st_tensor *), &sz_i) ||
        !st_mul(nmeta, sizeof(st_meta), &sz_m) || !st_add(sz_t, sz_i, &total) || !st_add(total, sz_m, &total) ||
        !st_add(total, strbytes, &total))
        return NULL;
    unsigned char *blk = calloc(1, total ? total : 1);
    if (!blk)
        return NULL;
    f->block = blk;
    f->tensors = (st_tensor *)(void *)blk;
    f->by_name = (const st_tensor **)(void *)(blk + sz_t);
    f->meta = (st_meta *)(void *)(blk + sz_t + sz_i);
    return (char *)(blk + sz_t + sz_i + sz_m);
}

/* Build f's tables from the parsed header. Everything allocated here hangs off f, so a failure
 * simply returns and st_close frees it. */
static st_status st_build_tables(st_file_t *f, json_t *root, const unsigned char *data, size_t data_size)
{
    char *e = f->err;
    size_t el = sizeof f->err;
    json_t *meta = json_object_get(root, ST_META_KEY);
    size_t ntens = json_object_size(root) - (meta ? 1 : 0), nmeta = 0, strbytes = 0, i;
    const st_tensor *reach = NULL; /* the non-empty tensor seen so far that ends furthest */
    const char *key;
    json_t *val;
    char *cur;
    st_status s;

    if (ntens > ST_MAX_TENSORS)
        return st_fail(e, el, ST_ERR_LIMIT, "header has %zu tensors; the limit is %d (ST_MAX_TENSORS)", ntens,
                       ST_MAX_TENSORS);

    /* Check the metadata and count string bytes before allocating. */
    if (meta && !json_is_object(meta))
        return st_fail(e, el, ST_ERR_FORMAT, "\"" ST_META_KEY "\" is not a JSON object");
    if (meta) {
        json_object_foreach(meta, key, val) {
            if (!json_is_string(val))
                return st_fail(e, el, ST_ERR_FORMAT, "\"" ST_META_KEY "\": value of key '%.200s' is not a string",
                               key);
            if (!st_add(strbytes, strlen(key) + 1, &strbytes) ||
                !st_add(strbytes, strlen(json_string_value(val)) + 1, &strbytes))
                return st_fail(e, el, ST_ERR_LIMIT, "header strings overflow size_t");
            nmeta++;
        }
    }
    json_object_foreach(root, key, val) {
        if (!st_add(strbytes, strlen(key) + 1, &strbytes))
            return st_fail(e, el, ST_ERR_LIMIT, "header strings overflow size_t");
    }
    cur = st_alloc_tables(f, ntens, nmeta, strbytes);
    if (!cur)
        return st_fail(e, el, ST_ERR_NOMEM, "out of memory allocating a table of %zu tensors", ntens);

    if (meta) {
        i = 0;
        json_object_foreach(meta, key, val) {
            f->meta[i].key = st_intern(&cur, key);
            f->meta[i].value = st_intern(&cur, json_string_value(val));
            i++;
        }
        f->nmeta = (int)nmeta;
        qsort(f->meta, nmeta, sizeof *f->meta, st_cmp_meta);
    }

    i = 0;
    json_object_foreach(root, key, val) {
        if (strcmp(key, ST_META_KEY) == 0)
            continue;
        st_tensor *t = &f->tensors[i++];
        t->name = st_intern(&cur, key);
        s = st_parse_entry(f, t->name, val, t, data, data_size);
        if (s != ST_OK)
            return s;
    }
    f->ntensors = (int)ntens;

    /* Sort by data offset and reject overlapping byte ranges. Empty tensors overlap nothing. */
    qsort(f->tensors, ntens, sizeof *f->tensors, st_cmp_offset);
    for (i = 0; i < ntens; i++) {
        const st_tensor *t = &f->tensors[i];
        const unsigned char *tb = t->data, *rb = reach ? reach->data : NULL;
        if (t->nbytes == 0)
            continue;
        if (reach && tb < rb + reach->nbytes)
            return st_fail(e, el, ST_ERR_FORMAT,
                           "tensor '%.200s' (data bytes %zu..%zu) overlaps tensor '%.200s' (data bytes %zu..%zu)",
                           t->name, (size_t)(tb - data), (size_t)(tb - data) + t->nbytes, reach->name,
                           (size_t)(rb - data), (size_t)(rb - data) + reach->nbytes);
        if (!reach || tb + t->nbytes > rb + reach->nbytes)
            reach = t;
    }

    /* Name index. jansson already rejected duplicate keys; check again so st_find stays exact. */
    for (i = 0; i < ntens; i++)
        f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, ntens, sizeof *f->by_name, st_cmp_name);
    for (i = 1; i < ntens; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s' appears twice in the header", f->by_name[i]->name);
    return ST_OK;
}

/* Validate bytes[0..len) and build f's tables; on failure f->err says why. */
static st_status st_parse(st_file_t *f, const unsigned char *bytes, size_t len)
{
    char *e = f->err;
    size_t el = sizeof f->err;
    json_error_t jerr;
    json_t *root;
    uint64_t hlen;
    st_status s;

    f->bytes = bytes;
    f->len = len;
    if (len < 8)
        return st_fail(e, el, ST_ERR_FORMAT, "file is %zu bytes; a safetensors file starts with an 8-byte header length",
                       len);
    hlen = st_ld64(bytes);
    if (hlen > ST_MAX_HEADER)
        return st_fail(e, el, ST_ERR_LIMIT, "header length %llu exceeds the limit of %u bytes (ST_MAX_HEADER)",
                       (unsigned long long)hlen, (unsigned)ST_MAX_HEADER);
    if (hlen > len - 8)
        return st_fail(e, el, ST_ERR_FORMAT,
                       "header length %llu exceeds the %zu bytes after the length prefix (truncated file?)",
                       (unsigned long long)hlen, len - 8);

    memset(&jerr, 0, sizeof jerr); /* jansson may fail before it fills jerr (allocation failure) */
    root = json_loadb((const char *)bytes + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        enum json_error_code code = json_error_code(&jerr);
        if (code == json_error_out_of_memory)
            return st_fail(e, el, ST_ERR_NOMEM, "out of memory parsing the header");
        if (code == json_error_duplicate_key)
            return st_fail(e, el, ST_ERR_FORMAT, "header has a duplicate key (line %d, column %d): %s", jerr.line,
                           jerr.column, jerr.text);
        if (jerr.text[0] == '\0') /* jansson leaves the text empty when an allocation fails */
            return st_fail(e, el, ST_ERR_FORMAT, "header could not be parsed (invalid JSON or out of memory)");
        return st_fail(e, el, ST_ERR_FORMAT, "header is not valid JSON (line %d, column %d): %s", jerr.line,
                       jerr.column, jerr.text);
    }
    if (json_is_object(root))
        s = st_build_tables(f, root, bytes + 8 + hlen, len - 8 - (size_t)hlen);
    else
        s = st_fail(e, el, ST_ERR_FORMAT, "header is not a JSON object");
    json_decref(root);
    return s;
}

/* ---- open / close ------------------------------------------------------------------------------- */

static st_file_t *st_new(void)
{
    st_file_t *f = calloc(1, sizeof *f);
    return f;
}

st_status st_open_mem(st_file_t **out, const void *buf, size_t len, char *err, size_t errlen)
{
    st_file_t *f = NULL;
    st_status s;

    if (out)
        *out = NULL;
    st_copy_err(err, errlen, "");
    if (!out || (!buf && len)) {
        s = st_fail(err, errlen, ST_ERR_IO, "st_open_mem: NULL argument");
        goto cleanup;
    }
    f = st_new();
    if (!f) {
        s = st_fail(err, errlen, ST_ERR_NOMEM, "out of memory allocating a handle");
        goto cleanup;
    }
    s = st_parse(f, buf, len);
    if (s != ST_OK) {
        st_copy_err(err, errlen, f->err);
        goto cleanup;
    }
    f->err[0] = '\0';
    *out = f;
    f = NULL;
cleanup:
    st_close(f);
    return s;
}

st_status st_open(st_file_t **out, const char *path, char *err, size_t errlen)
{
    st_file_t *f = NULL;
    void *map = MAP_FAILED;
    size_t map_len = 0;
    int fd = -1;
    st_status s;

    if (out)
        *out = NULL;
    st_copy_err(err, errlen, "");
    if (!out || !path) {
        s = st_fail(err, errlen, ST_ERR_IO, "st_open: NULL argument");
        goto cleanup;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: cannot open: %s", path, strerror(errno));
        goto cleanup;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: cannot stat: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(sb.st_mode)) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: not a regular file", path);
        goto cleanup;
    }
    if (sb.st_size < 8) {
        s = st_fail(err, errlen, ST_ERR_FORMAT,
                    "%.300s: file is %lld bytes; a safetensors file starts with an 8-byte header length", path,
                    (long long)sb.st_size);
        goto cleanup;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        s = st_fail(err, errlen, ST_ERR_LIMIT, "%.300s: file too large to map", path);
        goto cleanup;
    }
    map_len = (size_t)sb.st_size;
    map = mmap(NULL, map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: cannot mmap %zu bytes: %s", path, map_len, strerror(errno));
        goto cleanup;
    }
    f = st_new();
    if (!f) {
        s = st_fail(err, errlen, ST_ERR_NOMEM, "%.300s: out of memory allocating a handle", path);
        goto cleanup;
    }
    f->map = map;
    f->map_len = map_len;
    map = MAP_FAILED; /* owned by f now */
    s = st_parse(f, f->map, f->map_len);
    if (s != ST_OK) {
        st_fail(err, errlen, s, "%.300s: %s", path, f->err);
        goto cleanup;
    }
    f->err[0] = '\0';
    *out = f;
    f = NULL;
cleanup:
    if (map != MAP_FAILED)
        munmap(map, map_len);
    if (fd >= 0)
        close(fd);
    st_close(f);
    return s;
}

void st_close(st_file_t *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->block);
    free(f);
}

/* ---- queries ------------------------------------------------------------------------------------ */

const char *st_error(const st_file_t *f) { return f ? f->err : "no handle"; }

int st_count(const st_file_t *f) { return f ? f->ntensors : 0; }

const st_tensor *st_at(const st_file_t *f, int i)
{
    return (f && i >= 0 && i < f->ntensors) ? &f->tensors[i] : NULL;
}

const st_tensor *st_find(const st_file_t *f, const char *name)
{
    if (!f || !name || f->ntensors == 0)
        return NULL;
    const st_tensor *const *hit =
        bsearch(name, f->by_name, (size_t)f->ntensors, sizeof *f->by_name, st_cmp_name_key);
    return hit ? *hit : NULL;
}

const char *st_metadata(const st_file_t *f, const char *key)
{
    if (!f || !key || f->nmeta == 0)
        return NULL;
    const st_meta *m = bsearch(key, f->meta, (size_t)f->nmeta, sizeof *f->meta, st_cmp_meta_key);
    return m ? m->value : NULL;
}

int st_metadata_count(const st_file_t *f) { return f ? f->nmeta : 0; }

const char *st_metadata_key(const st_file_t *f, int i)
{
    return (f && i >= 0 && i < f->nmeta) ? f->meta[i].key : NULL;
}

const char *st_metadata_value(const st_file_t *f, int i)
{
    return (f && i >= 0 && i < f->nmeta) ? f->meta[i].value : NULL;
}

st_status st_expect(st_file_t *f, const char *name, int ndim, const int64_t *shape, const st_tensor **out)
{
    char want[ST_SHAPE_BUF], have[ST_SHAPE_BUF];

    if (out)
        *out = NULL;
    if (!f)
        return ST_ERR_MISSING;
    if (!name)
        return st_fail(f->err, sizeof f->err, ST_ERR_MISSING, "st_expect: tensor name is NULL");
    const st_tensor *t = st_find(f, name);
    if (!t)
        return st_fail(f->err, sizeof f->err, ST_ERR_MISSING, "tensor '%.200s' is missing", name);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape))
        return st_fail(f->err, sizeof f->err, ST_ERR_SHAPE, "tensor '%.200s': expected shape has %d dims (0..%d)",
                       name, ndim, ST_MAX_DIMS);
    int same = (t->ndim == ndim);
    for (int i = 0; same && i < ndim; i++)
        same = (t->shape[i] == shape[i]);
    if (!same)
        return st_fail(f->err, sizeof f->err, ST_ERR_SHAPE, "tensor '%.200s': expected shape %s, file has %s", name,
                       st_fmt_shape(want, sizeof want, ndim, shape),
                       st_fmt_shape(have, sizeof have, t->ndim, t->shape));
    if (out)
        *out = t;
    return ST_OK;
}

/* ---- conversion --------------------------------------------------------------------------------- */

static float st_bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* IEEE binary16 -> binary32, exact. h = sign(1) | exp(5, bias 15) | man(10).
 *   exp 31:     inf (man 0) or NaN (payload moved to the top of the f32 mantissa)
 *   exp 1..30:  1.man * 2^(exp-15)  -> f32 exponent field exp - 15 + 127 = exp + 112
 *   exp 0:      man * 2^-24 (subnormal); normalise: shift man left s times until bit 10 (the
 *               implicit 1) is set, then the value is 1.man' * 2^(-14-s), field 113 - s. */
static float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        uint32_t field = 113;
        while (!(man & 0x400u)) {
            man <<= 1;
            field--;
        }
        bits = sign | (field << 23) | ((man & 0x3ffu) << 13);
    }
    return st_bits_f32(bits);
}

st_status st_to_f32(const st_tensor *t, float *dst, size_t n)
{
    if (!t || (!dst && n))
        return ST_ERR_MISSING;
    size_t es = st_dtype_size(t->dtype), need;
    if (es == 0)
        return ST_ERR_DTYPE;
    /* Also guard against a hand-made st_tensor whose nbytes is smaller than nelem says. */
    if (t->nelem < 0 || (uint64_t)t->nelem != (uint64_t)n || !st_mul(n, es, &need) || need > t->nbytes)
        return ST_ERR_SHAPE;
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (n)
            memcpy(dst, p, n * 4);
#else
        for (size_t i = 0; i < n; i++)
            dst[i] = st_bits_f32(st_ld32(p + 4 * i));
#endif
        return ST_OK;
    case ST_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = st_f16_to_f32(st_ld16(p + 2 * i));
        return ST_OK;
    case ST_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = st_bits_f32((uint32_t)st_ld16(p + 2 * i) << 16);
        return ST_OK;
    case ST_F64:
        /* IEEE (Annex F) conversion: rounds to nearest, out of range gives inf, NaN stays NaN. */
        for (size_t i = 0; i < n; i++) {
            uint64_t u = st_ld64(p + 8 * i);
            double d;
            memcpy(&d, &u, sizeof d);
            dst[i] = (float)d;
        }
        return ST_OK;
    case ST_I32:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)(int32_t)st_ld32(p + 4 * i);
        return ST_OK;
    default:
        return ST_ERR_DTYPE;
    }
}

/* ---- writer ------------------------------------------------------------------------------------- */

/* Byte size of a tensor that st_build_header has already validated. */
static size_t st_write_nbytes(const st_write_tensor *w)
{
    int64_t nelem;
    size_t nbytes = 0;
    st_shape_size(w->ndim, w->shape, w->dtype, &nelem, &nbytes, "", NULL, 0);
    return nbytes;
}

/* Check tensor i of a write (root holds the entries so far) and give its byte size. */
static st_status st_check_write(const st_write_tensor *w, int i, json_t *root, size_t *nbytes, char *e,
                                size_t el)
{
    int64_t nelem;
    if (!w->name || strcmp(w->name, ST_META_KEY) == 0)
        return st_fail(e, el, ST_ERR_FORMAT, "tensor %d: name '%s' is not allowed", i,
                       w->name ? w->name : "(null)");
    if (json_object_get(root, w->name))
        return st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s' appears twice", w->name);
    if ((unsigned)w->dtype >= ST_DTYPE_COUNT)
        return st_fail(e, el, ST_ERR_DTYPE, "tensor '%.200s': dtype %d is not a st_dtype", w->name, (int)w->dtype);
    if (w->ndim < 0 || w->ndim > ST_MAX_DIMS)
        return st_fail(e, el, ST_ERR_LIMIT, "tensor '%.200s': ndim %d is outside 0..%d", w->name, w->ndim,
                       ST_MAX_DIMS);
    for (int d = 0; d < w->ndim; d++)
        if (w->shape[d] < 0)
            return st_fail(e, el, ST_ERR_SHAPE, "tensor '%.200s': shape[%d] is negative (%lld)", w->name, d,
                           (long long)w->shape[d]);
    st_status s = st_shape_size(w->ndim, w->shape, w->dtype, &nelem, nbytes, w->name, e, el);
    if (s != ST_OK)
        return s;
    if (*nbytes && !w->data)
        return st_fail(e, el, ST_ERR_MISSING, "tensor '%.200s': data is NULL", w->name);
    return ST_OK;
}

/* Add {"dtype", "shape", "data_offsets": [off, end]} for w to root; nonzero on failure (a name that
 * is not valid UTF-8, or memory). json_*_set_new and _append_new take their argument even when they
 * fail (and free it then), so each container is filled completely before it is handed on. */
static int st_add_entry(json_t *root, const st_write_tensor *w, size_t off, size_t end)
{
    json_t *ent = json_object(), *shp = json_array(), *ofs = json_array();
    int bad = !ent || !shp || !ofs;
    for (int d = 0; !bad && d < w->ndim; d++)
        bad = json_array_append_new(shp, json_integer((json_int_t)w->shape[d])) != 0;
    if (!bad)
        bad = json_array_append_new(ofs, json_integer((json_int_t)off)) != 0 ||
              json_array_append_new(ofs, json_integer((json_int_t)end)) != 0 ||
              json_object_set_new(ent, "dtype", json_string(st_dtype_name(w->dtype))) != 0;
    if (bad) {
        json_decref(ent);
        json_decref(shp);
        json_decref(ofs);
        return 1;
    }
    bad = json_object_set_new(ent, "shape", shp) != 0;        /* shp is ent's now, either way */
    bad = json_object_set_new(ent, "data_offsets", ofs) != 0 || bad;
    if (bad) {
        json_decref(ent);
        return 1;
    }
    return json_object_set_new(root, w->name, ent) != 0;      /* ent is root's now, either way */
}

/* Add the "__metadata__" object built from meta_kv ("key", "value", ..., NULL) to root. */
static st_status st_add_meta(json_t *root, const char *const *meta_kv, char *e, size_t el)
{
    json_t *m = json_object();
    if (!m || json_object_set_new(root, ST_META_KEY, m) != 0)
        return st_fail(e, el, ST_ERR_NOMEM, "out of memory building the header");
    for (size_t i = 0; meta_kv[i]; i += 2) {
        const char *k = meta_kv[i], *v = meta_kv[i + 1];
        json_t *jv;
        if (!v)
            return st_fail(e, el, ST_ERR_FORMAT, "metadata key '%.200s' has no value", k);
        if (json_object_get(m, k))
            return st_fail(e, el, ST_ERR_FORMAT, "metadata key '%.200s' appears twice", k);
        jv = json_string(v); /* NULL when v is not valid UTF-8 */
        if (!jv || json_object_set_new(m, k, jv) != 0)
            return st_fail(e, el, ST_ERR_FORMAT, "metadata key '%.200s': key or value is not valid UTF-8", k);
    }
    return ST_OK;
}

/* Build the JSON header for the tensors (packed in order) and metadata, padded with spaces to a
 * multiple of 8 bytes. On success *hdr (malloc'd, the caller frees) holds *hdrlen bytes and
 * *datalen is the size of the data section. */
static st_status st_build_header(const st_write_tensor *ts, int n, const char *const *meta_kv, char **hdr,
                                 size_t *hdrlen, size_t *datalen, char *e, size_t el)
{
    json_t *root = NULL;
    char *buf = NULL;
    size_t off = 0, nbytes = 0, end = 0, jlen = 0, padded = 0;
    st_status s = ST_OK;

    *hdr = NULL;
    if (n < 0 || n > ST_MAX_TENSORS)
        return st_fail(e, el, ST_ERR_LIMIT, "%d tensors; the limit is %d (ST_MAX_TENSORS)", n, ST_MAX_TENSORS);
    if (n > 0 && !ts)
        return st_fail(e, el, ST_ERR_MISSING, "tensor array is NULL");
    root = json_object();
    if (!root)
        goto nomem;
    if (meta_kv && meta_kv[0]) {
        s = st_add_meta(root, meta_kv, e, el);
        if (s != ST_OK)
            goto cleanup;
    }
    for (int i = 0; i < n; i++) {
        s = st_check_write(&ts[i], i, root, &nbytes, e, el);
        if (s != ST_OK)
            goto cleanup;
        if (!st_add(off, nbytes, &end) || end > (size_t)INT64_MAX) {
            s = st_fail(e, el, ST_ERR_LIMIT, "tensor '%.200s': data section size overflows", ts[i].name);
            goto cleanup;
        }
        if (st_add_entry(root, &ts[i], off, end)) {
            s = st_fail(e, el, ST_ERR_FORMAT, "tensor '%.200s': cannot encode (name not valid UTF-8, or out of memory)",
                        ts[i].name);
            goto cleanup;
        }
        off = end;
    }

    /* jansson keeps insertion order, so the header lists tensors in data order. */
    jlen = json_dumpb(root, NULL, 0, JSON_COMPACT);
    if (jlen == 0 || !st_add(jlen, 7, &padded))
        goto nomem;
    padded &= ~(size_t)7;
    if (padded > ST_MAX_HEADER) {
        s = st_fail(e, el, ST_ERR_LIMIT, "header would be %zu bytes; the limit is %u (ST_MAX_HEADER)", padded,
                    (unsigned)ST_MAX_HEADER);
        goto cleanup;
    }
    buf = malloc(padded);
    if (!buf || json_dumpb(root, buf, jlen, JSON_COMPACT) != jlen)
        goto nomem;
    memset(buf + jlen, ' ', padded - jlen);
    *hdr = buf;
    *hdrlen = padded;
    *datalen = off;
    buf = NULL;
    goto cleanup;

nomem:
    s = st_fail(e, el, ST_ERR_NOMEM, "out of memory building the header");
cleanup:
    free(buf);
    json_decref(root);
    return s;
}

st_status st_write_mem(void **out, size_t *outlen, const st_write_tensor *tensors, int n,
                       const char *const *meta_kv, char *err, size_t errlen)
{
    char *hdr = NULL;
    unsigned char *p = NULL;
    size_t hdrlen = 0, datalen = 0, total = 0, off;
    st_status s;

    st_copy_err(err, errlen, "");
    if (!out || !outlen)
        return st_fail(err, errlen, ST_ERR_MISSING, "st_write_mem: NULL argument");
    *out = NULL;
    *outlen = 0;
    s = st_build_header(tensors, n, meta_kv, &hdr, &hdrlen, &datalen, err, errlen);
    if (s != ST_OK)
        return s;
    if (!st_add(8, hdrlen, &total) || !st_add(total, datalen, &total))
        s = st_fail(err, errlen, ST_ERR_LIMIT, "file size overflows size_t");
    else if (!(p = malloc(total)))
        s = st_fail(err, errlen, ST_ERR_NOMEM, "out of memory allocating %zu bytes", total);
    if (s == ST_OK) {
        st_st64(p, hdrlen);
        memcpy(p + 8, hdr, hdrlen);
        off = 8 + hdrlen;
        for (int i = 0; i < n; i++) {
            size_t nb = st_write_nbytes(&tensors[i]);
            if (nb)
                memcpy(p + off, tensors[i].data, nb);
            off += nb;
        }
        *out = p;
        *outlen = total;
    }
    free(hdr);
    return s;
}

st_status st_write(const char *path, const st_write_tensor *tensors, int n, const char *const *meta_kv,
                   char *err, size_t errlen)
{
    char *hdr = NULL, *tmp = NULL;
    size_t hdrlen = 0, datalen = 0, plen = 0, tlen = 0;
    unsigned char prefix[8];
    FILE *fp = NULL;
    int created = 0, ok = 0;
    st_status s;

    st_copy_err(err, errlen, "");
    if (!path)
        return st_fail(err, errlen, ST_ERR_IO, "st_write: path is NULL");
    s = st_build_header(tensors, n, meta_kv, &hdr, &hdrlen, &datalen, err, errlen);
    if (s != ST_OK)
        goto cleanup;
    plen = strlen(path);
    if (!st_add(plen, sizeof ".tmp", &tlen) || !(tmp = malloc(tlen))) {
        s = st_fail(err, errlen, ST_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", sizeof ".tmp");

    fp = fopen(tmp, "wb");
    if (!fp) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: cannot create: %s", tmp, strerror(errno));
        goto cleanup;
    }
    created = 1;
    st_st64(prefix, hdrlen);
    ok = fwrite(prefix, 1, 8, fp) == 8 && fwrite(hdr, 1, hdrlen, fp) == hdrlen;
    for (int i = 0; ok && i < n; i++) {
        size_t nb = st_write_nbytes(&tensors[i]);
        if (nb)
            ok = fwrite(tensors[i].data, 1, nb, fp) == nb;
    }
    if (!ok) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: write failed: %s", tmp, strerror(errno));
        goto cleanup;
    }
    ok = fclose(fp) == 0;
    fp = NULL;
    if (!ok) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: close failed: %s", tmp, strerror(errno));
        goto cleanup;
    }
    if (rename(tmp, path) != 0) {
        s = st_fail(err, errlen, ST_ERR_IO, "%.300s: cannot rename to %.300s: %s", tmp, path, strerror(errno));
        goto cleanup;
    }
cleanup:
    if (fp)
        fclose(fp);
    if (s != ST_OK && created)
        unlink(tmp);
    free(tmp);
    free(hdr);
    return s;
}
