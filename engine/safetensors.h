/* engine/safetensors.h — reading and writing safetensors weight files.
 *
 * The engine loads its weights from safetensors files. This module maps a file read-only, checks
 * its header against the file before anything else looks at it, and exposes each tensor as a
 * pointer into the mapping (no copy). A small writer produces valid files for tests and tools.
 *
 * The format, byte by byte (all integers little-endian):
 *
 *   offset 0       u64 N          length of the header in bytes
 *   offset 8       N bytes        UTF-8 JSON object (may be padded with trailing spaces)
 *   offset 8 + N   data section   the tensors' bytes, row-major, little-endian elements
 *
 *   header = { "<tensor name>": { "dtype": "F32", "shape": [d0, d1, ...],
 *                                 "data_offsets": [begin, end] },   // relative to offset 8 + N
 *              ...,
 *              "__metadata__": { "<key>": "<string value>", ... } }  // optional
 *
 * What the reader accepts (every violation is an error whose message names the tensor, when the
 * problem belongs to one):
 *   - the file holds at least the 8-byte prefix, N <= ST_MAX_HEADER (checked first) and
 *     N <= file size - 8. Parsing a header near the limit can take several times N of memory;
 *   - the header is valid UTF-8 JSON, an object, with no duplicate keys (jansson's
 *     JSON_REJECT_DUPLICATES; names are checked again after sorting), at most ST_MAX_TENSORS tensors;
 *   - each entry is an object with "dtype" (a name from st_dtype_name), "shape" (at most
 *     ST_MAX_DIMS non-negative integers; [] is a scalar with one element) and "data_offsets"
 *     (two non-negative integers, begin <= end <= data section size). Other keys are ignored;
 *   - (product of shape) * element size, computed with overflow checks, equals end - begin;
 *   - tensors do not overlap: the byte ranges [begin, end) of non-empty tensors are disjoint.
 *     Gaps between tensors and bytes after the last one are allowed (and ignored);
 *   - "__metadata__", when present, is an object whose values are all strings.
 *
 * Which status for which problem (a missing field is a format error; a field that is present but
 * wrong reports as that field: dtype -> ST_ERR_DTYPE, shape -> ST_ERR_SHAPE, offsets -> FORMAT):
 *   ST_ERR_IO       open/stat/mmap/write/rename failed (message carries strerror)
 *   ST_ERR_FORMAT   file too short, header length past EOF, bad JSON (invalid UTF-8 included),
 *                   header not an object, duplicate key, entry not an object, missing field, bad
 *                   data_offsets, overlapping tensors, bad "__metadata__"
 *   ST_ERR_SHAPE    shape not an array of non-negative integers, element/byte count overflow, shape
 *                   does not match data_offsets; st_expect shape mismatch; st_to_f32 count mismatch
 *   ST_ERR_DTYPE    dtype not a string or unknown; st_to_f32 on a dtype it cannot convert
 *   ST_ERR_MISSING  st_expect: the tensor is absent; NULL tensor/data arguments (st_to_f32, writer)
 *   ST_ERR_LIMIT    header larger than ST_MAX_HEADER, more than ST_MAX_TENSORS tensors, more than
 *                   ST_MAX_DIMS dimensions
 *   ST_ERR_NOMEM    an allocation failed (jansson reports most of its failed allocations as parse
 *                   errors, so running out of memory while parsing the header may say ST_ERR_FORMAT)
 *
 * Ownership: a st_file_t owns its tensor table, names and metadata strings; every pointer it hands
 * out (st_tensor, names, data, metadata, error text) is valid until st_close. st_open maps the file
 * and unmaps it in st_close; st_open_mem borrows the caller's buffer, which must outlive the handle.
 * Tensor data is exactly the file's bytes: little-endian and possibly unaligned, so load elements
 * with memcpy (or use st_to_f32). A file truncated by someone else while mapped makes later reads
 * of its data fault (SIGBUS); the loader cannot guard against that.
 *
 * A handle is not thread-safe for st_expect (which writes the error text); the other readers are
 * safe to call concurrently.
 */
#ifndef VMLA_ENGINE_SAFETENSORS_H
#define VMLA_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* Limits on untrusted files. */
#define ST_MAX_HEADER  (100u * 1024u * 1024u) /* bytes of JSON header */
#define ST_MAX_TENSORS (1 << 20)              /* tensors in one file */
#define ST_MAX_DIMS    8                      /* dimensions of one tensor */
#define ST_ERR_LEN     512                    /* size of a handle's error buffer, NUL included */

typedef enum {
    ST_OK = 0,
    ST_ERR_IO,
    ST_ERR_FORMAT,
    ST_ERR_MISSING,
    ST_ERR_SHAPE,
    ST_ERR_DTYPE,
    ST_ERR_NOMEM,
    ST_ERR_LIMIT,
} st_status;

/* A short fixed description of a status ("format error", ...); never NULL. */
const char *st_strerror(st_status s);

/* Element types. The names in the file are those of st_dtype_name ("F32", "BF16", "F8_E4M3"...). */
typedef enum {
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_F64,
    ST_I32,
    ST_I64,
    ST_U8,
    ST_I8,
    ST_I16,
    ST_U16,
    ST_U32,
    ST_U64,
    ST_BOOL,
    ST_F8_E4M3, /* exposed only: st_to_f32 returns ST_ERR_DTYPE */
    ST_F8_E5M2, /* exposed only: st_to_f32 returns ST_ERR_DTYPE */
    ST_DTYPE_COUNT
} st_dtype;

/* Bytes per element; 0 for a value outside the enum. */
size_t st_dtype_size(st_dtype t);
/* The file's name for the type ("F32"); "?" for a value outside the enum. */
const char *st_dtype_name(st_dtype t);

typedef struct {
    const char *name;        /* NUL-terminated, owned by the handle */
    st_dtype dtype;
    int ndim;                /* 0..ST_MAX_DIMS; 0 is a scalar */
    int64_t shape[ST_MAX_DIMS]; /* shape[ndim..] are 0 */
    int64_t nelem;           /* product of shape (1 for a scalar) */
    const void *data;        /* points into the file's bytes; valid until st_close; may be unaligned */
    size_t nbytes;           /* nelem * st_dtype_size(dtype) */
} st_tensor;

typedef struct st_file st_file_t;

/* Map `path` read-only and validate its header. On success *out is a handle to free with st_close.
 * On failure *out = NULL, and err (when not NULL and errlen > 0) holds a NUL-terminated message. */
st_status st_open(st_file_t **out, const char *path, char *err, size_t errlen);
/* Same over a caller-owned buffer of len bytes; buf is borrowed and must outlive the handle. */
st_status st_open_mem(st_file_t **out, const void *buf, size_t len, char *err, size_t errlen);
/* Unmaps and frees everything the handle owns. NULL is allowed. */
void st_close(st_file_t *f);

/* Message of the last failed call on this handle ("" when none); owned by the handle. */
const char *st_error(const st_file_t *f);

/* Tensors are numbered 0..st_count-1 in the order of their data in the file (then by name). */
int st_count(const st_file_t *f);
/* Tensor i, or NULL when i is out of range. */
const st_tensor *st_at(const st_file_t *f, int i);
/* Tensor by name (binary search), or NULL when absent; sets no error. */
const st_tensor *st_find(const st_file_t *f, const char *name);

/* Value of a "__metadata__" key, or NULL when absent. Strings owned by the handle. */
const char *st_metadata(const st_file_t *f, const char *key);
/* Metadata entries, numbered 0..st_metadata_count-1 in key order; NULL when i is out of range. */
int st_metadata_count(const st_file_t *f);
const char *st_metadata_key(const st_file_t *f, int i);
const char *st_metadata_value(const st_file_t *f, int i);

/* Look up a tensor that must exist with exactly this shape (ndim dims, shape[0..ndim-1]). On
 * success *out (when out is not NULL) is the tensor. On failure *out = NULL and the handle's error
 * says why, e.g. "tensor 'blocks.0.ffn.0.weight': expected shape [128, 64], file has [128, 32]"
 * (ST_ERR_SHAPE) or "tensor 'x' is missing" (ST_ERR_MISSING). */
st_status st_expect(st_file_t *f, const char *name, int ndim, const int64_t *shape,
                    const st_tensor **out);

/* Convert the tensor's n elements to fp32 into dst (n must equal t->nelem, else ST_ERR_SHAPE).
 * Exact for F32, F16 (subnormals, inf and NaN included) and BF16; F64 and I32 round to nearest.
 * Any other dtype: ST_ERR_DTYPE; t NULL (or dst NULL with n > 0): ST_ERR_MISSING, so a failed
 * st_find can be passed straight in. There is no handle here: the status is the only report. */
st_status st_to_f32(const st_tensor *t, float *dst, size_t n);

/* ---- writer ------------------------------------------------------------------------------------ */

/* One tensor to write: data holds nelem * st_dtype_size(dtype) bytes, little-endian (may be NULL
 * when that is 0). */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_write_tensor;

/* Write a valid file: tensors packed in the given order, the header padded with spaces so the data
 * section starts 8-byte aligned. meta_kv is NULL or "key", "value", ..., NULL. The file is written
 * to path + ".tmp" and renamed onto path; on failure nothing new is left at path (an existing file
 * there is untouched) and err holds a message. Names must be unique and not "__metadata__". */
st_status st_write(const char *path, const st_write_tensor *tensors, int n,
                   const char *const *meta_kv, char *err, size_t errlen);

/* Same, into one malloc'd buffer: on success *out (free with free()) holds *outlen bytes.
 * On failure *out = NULL and *outlen = 0. */
st_status st_write_mem(void **out, size_t *outlen, const st_write_tensor *tensors, int n,
                       const char *const *meta_kv, char *err, size_t errlen);

#endif /* VMLA_ENGINE_SAFETENSORS_H */
