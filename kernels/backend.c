/* kernels/backend.c — the backend front: argument checks shared by every backend, views, arenas.
 *
 * Each kn_* op checks shapes and dtypes here, once, then calls the backend's table entry. The
 * checks are the contract of backend.h; a backend never sees a view that reaches outside its
 * buffer.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend_impl.h"

const char *kn_dtype_name(kn_dtype t)
{
    switch (t) {
    case KN_F32: return "f32";
    case KN_BF16: return "bf16";
    case KN_F16: return "f16";
    }
    return "?";
}

size_t kn_dtype_size(kn_dtype t) { return t == KN_F32 ? 4 : 2; }

const char *kn_strerror(kn_status s)
{
    switch (s) {
    case KN_OK: return "ok";
    case KN_ERR_ARG: return "invalid arguments";
    case KN_ERR_NOMEM: return "out of memory";
    case KN_ERR_DEVICE: return "device error";
    case KN_ERR_UNSUPPORTED: return "unsupported by this backend";
    }
    return "unknown error";
}

kn_status kn_fail(kn_backend_t *be, kn_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err, sizeof be->err, fmt, ap);
    va_end(ap);
    return st;
}

void kn_backend_free(kn_backend_t *be)
{
    if (be)
        be->ops->destroy(be);
}
const char *kn_backend_name(const kn_backend_t *be) { return be->ops->name; }

void kn_backend_inject_fault(kn_backend_t *be, int64_t after_ops, int sticky)
{
    be->fault_countdown = after_ops < 0 ? 0 : after_ops + 1;
    be->fault_sticky = sticky != 0;
}
const char *kn_backend_error(const kn_backend_t *be) { return be->err; }
kn_dtype kn_backend_compute_dtype(const kn_backend_t *be) { return be->ops->compute_dtype; }

/* ---- buffers and views ------------------------------------------------------------------------ */

kn_buffer_t *kn_buffer_alloc(kn_backend_t *be, size_t bytes)
{
    kn_buffer_t *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->size = bytes;
    b->ptr = be->ops->mem_alloc(be, bytes ? bytes : 1);
    if (!b->ptr) {
        free(b);
        kn_fail(be, KN_ERR_NOMEM, "cannot allocate %zu bytes of %s memory", bytes, be->ops->name);
        return NULL;
    }
    return b;
}

void kn_buffer_free(kn_backend_t *be, kn_buffer_t *buf)
{
    if (!buf)
        return;
    if (buf->host)
        be->ops->host_free(be, buf->ptr);
    else
        be->ops->mem_free(be, buf->ptr);
    free(buf);
}

kn_buffer_t *kn_host_buffer_alloc(kn_backend_t *be, size_t bytes)
{
    if (!be->ops->host_alloc) {
        kn_fail(be, KN_ERR_UNSUPPORTED, "%s backend has no host buffers", be->ops->name);
        return NULL;
    }
    kn_buffer_t *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->size = bytes;
    b->host = 1;
    b->ptr = be->ops->host_alloc(be, bytes ? bytes : 1);
    if (!b->ptr) {
        free(b);
        kn_fail(be, KN_ERR_NOMEM, "cannot allocate %zu bytes of page-locked host memory", bytes);
        return NULL;
    }
    return b;
}

void *kn_host_buffer_data(kn_buffer_t *buf) { return buf && buf->host ? buf->ptr : NULL; }

kn_status kn_buffer_copy(kn_backend_t *be, kn_buffer_t *dst, size_t dst_off, const kn_buffer_t *src,
                         size_t src_off, size_t bytes)
{
    if (!dst || !src)
        return kn_fail(be, KN_ERR_ARG, "buffer copy: NULL buffer");
    if (dst_off > dst->size || bytes > dst->size - dst_off || src_off > src->size ||
        bytes > src->size - src_off)
        return kn_fail(be, KN_ERR_ARG, "buffer copy: %zu bytes at %zu / %zu do not fit (%zu / %zu)",
                       bytes, src_off, dst_off, src->size, dst->size);
    if (!be->ops->buffer_copy)
        return kn_fail(be, KN_ERR_UNSUPPORTED, "%s backend cannot copy buffers", be->ops->name);
    if (bytes == 0)
        return KN_OK;
    return be->ops->buffer_copy(be, (char *)dst->ptr + dst_off, (const char *)src->ptr + src_off, bytes);
}

kn_status kn_mem_info(kn_backend_t *be, size_t *free_bytes, size_t *total_bytes)
{
    if (!be->ops->mem_info)
        return kn_fail(be, KN_ERR_UNSUPPORTED, "%s backend reports no memory figures", be->ops->name);
    return be->ops->mem_info(be, free_bytes, total_bytes);
}

size_t kn_buffer_size(const kn_buffer_t *buf) { return buf->size; }

void kn_arena_init(kn_arena *a, kn_buffer_t *buf)
{
    a->buf = buf;
    a->size = buf ? buf->size : 0;
    a->used = 0;
}

#define KN_ALIGN 256u

size_t kn_arena_bytes(kn_dtype dt, int64_t rows, int64_t cols)
{
    if (rows < 0 || cols < 0 || (cols && rows > INT64_MAX / cols))
        return SIZE_MAX;
    uint64_t n = (uint64_t)rows * (uint64_t)cols;
    if (n > (SIZE_MAX - KN_ALIGN) / kn_dtype_size(dt))
        return SIZE_MAX;
    size_t b = (size_t)n * kn_dtype_size(dt);
    return (b + KN_ALIGN - 1) / KN_ALIGN * KN_ALIGN;
}

int kn_arena_tensor(kn_arena *a, kn_tensor *t, kn_dtype dt, int64_t rows, int64_t cols)
{
    size_t b = kn_arena_bytes(dt, rows, cols);
    if (b == SIZE_MAX || b > a->size - a->used)
        return -1;
    t->buf = a->buf;
    t->off = a->used;
    t->dtype = dt;
    t->rows = rows;
    t->cols = cols;
    t->ld = cols;
    a->used += b;
    return 0;
}

kn_tensor kn_rows(kn_tensor t, int64_t r0, int64_t n)
{
    t.off += (size_t)(r0 * t.ld) * kn_dtype_size(t.dtype);
    t.rows = n;
    return t;
}

kn_tensor kn_cols(kn_tensor t, int64_t c0, int64_t n)
{
    t.off += (size_t)c0 * kn_dtype_size(t.dtype);
    t.cols = n;
    return t;
}

kn_tensor kn_reshape(kn_tensor t, int64_t rows, int64_t cols)
{
    /* only meaningful for contiguous tensors; callers assert that */
    t.rows = rows;
    t.cols = cols;
    t.ld = cols;
    return t;
}

int64_t kn_nelem(kn_tensor t) { return t.rows * t.cols; }

/* ---- checks ----------------------------------------------------------------------------------- */

/* The view lies inside its buffer and its shape is sane. */
static int view_ok(kn_tensor t)
{
    if (!t.buf || t.rows < 0 || t.cols < 0 || t.ld < t.cols)
        return 0;
    if (t.rows == 0 || t.cols == 0)
        return 1;
    uint64_t last = (uint64_t)(t.rows - 1) * (uint64_t)t.ld + (uint64_t)t.cols; /* elements */
    uint64_t bytes = last * kn_dtype_size(t.dtype);
    return t.off <= t.buf->size && bytes <= t.buf->size - t.off;
}

static int contiguous(kn_tensor t) { return t.ld == t.cols || t.rows <= 1; }

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond))                                                                              \
            return kn_fail(be, KN_ERR_ARG, __VA_ARGS__);                                          \
    } while (0)
/* kn_backend_inject_fault: this op is the one that fails */
#define INJECT(op)                                                                                \
    do {                                                                                          \
        if (be->fault_countdown > 0 && --be->fault_countdown == 0) {                              \
            be->fault_countdown = be->fault_sticky ? 1 : 0;                                       \
            return kn_fail(be, KN_ERR_DEVICE, "%s: " #op ": injected fault", be->ops->name);      \
        }                                                                                         \
    } while (0)
#define CALL(op, ...)                                                                             \
    do {                                                                                          \
        INJECT(op);                                                                               \
        if (!be->ops->op)                                                                         \
            return kn_fail(be, KN_ERR_UNSUPPORTED, "%s: op " #op " not supported", be->ops->name); \
        return be->ops->op(be, __VA_ARGS__);                                                      \
    } while (0)
#define VIEW(t, name) CHECK(view_ok(t), "%s: view outside its buffer or bad shape", name)
#define SAME(a, b, name)                                                                          \
    CHECK((a).rows == (b).rows && (a).cols == (b).cols, "%s: shape [%lld,%lld] vs [%lld,%lld]",   \
          name, (long long)(a).rows, (long long)(a).cols, (long long)(b).rows, (long long)(b).cols)
/* a per-group vector of x (backend.h): [G, x.cols], G >= 1 dividing x.rows */
#define GROUPS(v, x, name)                                                                        \
    CHECK(view_ok(v) && (v).cols == (x).cols && (v).rows >= 1 && (x).rows % (v).rows == 0,        \
          "%s: expected [G, %lld] with G dividing %lld rows, got [%lld, %lld]", name,             \
          (long long)(x).cols, (long long)(x).rows, (long long)(v).rows, (long long)(v).cols)
#define VEC(v, n, name)                                                                           \
    CHECK(view_ok(v) && kn_nelem(v) == (n) && contiguous(v), "%s: expected a vector of %lld",     \
          name, (long long)(n))

kn_status kn_upload(kn_backend_t *be, kn_tensor t, const void *src, kn_dtype src_dtype)
{
    VIEW(t, "upload");
    CHECK(src || kn_nelem(t) == 0, "upload: NULL source");
    CALL(upload, t, src, src_dtype);
}

kn_status kn_download(kn_backend_t *be, kn_tensor t, float *dst)
{
    VIEW(t, "download");
    CALL(download, t, dst);
}

kn_status kn_download_rgb8(kn_backend_t *be, kn_tensor t, int frames, uint8_t *dst)
{
    VIEW(t, "download_rgb8");
    CHECK(dst && frames > 0 && t.rows == 3 * (int64_t)frames,
          "download_rgb8: %lld rows for %d frames (3 planes a frame)", (long long)t.rows, frames);
    CALL(download_rgb8, t, frames, dst);
}

kn_status kn_sync(kn_backend_t *be)
{
    if (!be->ops->sync)
        return KN_OK;
    return be->ops->sync(be);
}

static kn_status linear_args(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b)
{
    VIEW(y, "linear y");
    VIEW(x, "linear x");
    VIEW(w, "linear w");
    CHECK(x.cols == w.cols && y.rows == x.rows && y.cols == w.rows,
          "linear: x [%lld,%lld] w [%lld,%lld] y [%lld,%lld]", (long long)x.rows,
          (long long)x.cols, (long long)w.rows, (long long)w.cols, (long long)y.rows,
          (long long)y.cols);
    if (b)
        VEC(*b, w.rows, "linear bias");
    return KN_OK;
}

kn_status kn_linear(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b)
{
    kn_status st = linear_args(be, y, x, w, b);
    if (st != KN_OK)
        return st;
    CALL(linear, y, x, w, b);
}

kn_status kn_linear_gelu(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b)
{
    kn_status st = linear_args(be, y, x, w, b);
    if (st != KN_OK)
        return st;
    if (!be->ops->linear_gelu) { /* the backend has no fused form: the two ops */
        st = kn_linear(be, y, x, w, b);
        return st != KN_OK ? st : kn_gelu_tanh(be, y, y);
    }
    CALL(linear_gelu, y, x, w, b);
}

kn_status kn_matmul_heads(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, int heads,
                          kn_heads_mode mode)
{
    VIEW(y, "matmul_heads y");
    VIEW(x, "matmul_heads x");
    VIEW(w, "matmul_heads w");
    CHECK(heads > 0 && x.cols % heads == 0 && y.cols % heads == 0 && x.rows == y.rows,
          "matmul_heads: bad heads or shapes");
    int64_t a = x.cols / heads, bb = y.cols / heads;
    if (mode == KN_HEADS_XW)
        CHECK(w.rows == heads * a && w.cols == bb, "matmul_heads(xw): w must be [H*a, b]");
    else
        CHECK(w.rows == heads * bb && w.cols == a, "matmul_heads(xwt): w must be [H*b, a]");
    CALL(matmul_heads, y, x, w, heads, mode);
}

kn_status kn_layernorm(kn_backend_t *be, kn_tensor y, kn_tensor x, const kn_tensor *w,
                       const kn_tensor *b, float eps)
{
    VIEW(y, "layernorm y");
    VIEW(x, "layernorm x");
    SAME(y, x, "layernorm");
    if (w)
        VEC(*w, x.cols, "layernorm weight");
    if (b)
        VEC(*b, x.cols, "layernorm bias");
    CALL(layernorm, y, x, w, b, eps);
}

kn_status kn_rmsnorm(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps)
{
    VIEW(y, "rmsnorm y");
    VIEW(x, "rmsnorm x");
    SAME(y, x, "rmsnorm");
    VEC(w, x.cols, "rmsnorm weight");
    CALL(rmsnorm, y, x, w, eps);
}

kn_status kn_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale)
{
    VIEW(y, "modulate y");
    VIEW(x, "modulate x");
    SAME(y, x, "modulate");
    GROUPS(shift, x, "modulate shift");
    GROUPS(scale, x, "modulate scale");
    CHECK(shift.rows == scale.rows, "modulate: %lld shift rows, %lld scale rows", (long long)shift.rows,
          (long long)scale.rows);
    CALL(modulate, y, x, shift, scale);
}

kn_status kn_layernorm_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift,
                                kn_tensor scale, float eps)
{
    VIEW(y, "layernorm_modulate y");
    VIEW(x, "layernorm_modulate x");
    SAME(y, x, "layernorm_modulate");
    GROUPS(shift, x, "layernorm_modulate shift");
    GROUPS(scale, x, "layernorm_modulate scale");
    CHECK(shift.rows == scale.rows, "layernorm_modulate: %lld shift rows, %lld scale rows",
          (long long)shift.rows, (long long)scale.rows);
    CALL(layernorm_modulate, y, x, shift, scale, eps);
}

kn_status kn_gate_add(kn_backend_t *be, kn_tensor x, kn_tensor y, const kn_tensor *gate)
{
    VIEW(y, "gate_add y");
    VIEW(x, "gate_add x");
    SAME(y, x, "gate_add");
    if (gate)
        GROUPS(*gate, x, "gate_add gate");
    CALL(gate_add, x, y, gate);
}

kn_status kn_axpby(kn_backend_t *be, kn_tensor y, float a, kn_tensor x, float b, const kn_tensor *z)
{
    VIEW(y, "axpby y");
    VIEW(x, "axpby x");
    SAME(y, x, "axpby");
    if (z && z->rows != x.rows)
        GROUPS(*z, x, "axpby z");
    else if (z) {
        VIEW(*z, "axpby z");
        SAME(*z, x, "axpby");
    }
    CALL(axpby, y, a, x, b, z);
}

kn_status kn_gelu_tanh(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    VIEW(y, "gelu y");
    VIEW(x, "gelu x");
    SAME(y, x, "gelu");
    CALL(gelu_tanh, y, x);
}

kn_status kn_silu(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    VIEW(y, "silu y");
    VIEW(x, "silu x");
    SAME(y, x, "silu");
    CALL(silu, y, x);
}

kn_status kn_clamp(kn_backend_t *be, kn_tensor y, kn_tensor x, float lo, float hi)
{
    VIEW(y, "clamp y");
    VIEW(x, "clamp x");
    SAME(y, x, "clamp");
    CHECK(lo <= hi, "clamp: lo > hi");
    CALL(clamp, y, x, lo, hi);
}

kn_status kn_row_affine(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor scale, kn_tensor shift)
{
    VIEW(y, "row_affine y");
    VIEW(x, "row_affine x");
    SAME(y, x, "row_affine");
    VEC(scale, x.rows, "row_affine scale");
    VEC(shift, x.rows, "row_affine shift");
    CALL(row_affine, y, x, scale, shift);
}

kn_status kn_copy(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    VIEW(y, "copy y");
    VIEW(x, "copy x");
    SAME(y, x, "copy");
    CALL(copy, y, x);
}

kn_status kn_rope3d(kn_backend_t *be, kn_tensor x, int heads, int f0, int nf, int gh, int gw,
                    double theta)
{
    VIEW(x, "rope3d x");
    CHECK(heads > 0 && x.cols % heads == 0 && (x.cols / heads) % 2 == 0 && x.cols / heads >= 6,
          "rope3d: width %lld is not heads x an even d >= 6", (long long)x.cols);
    CHECK(f0 >= 0 && nf >= 0 && gh > 0 && gw > 0 && x.rows == (int64_t)nf * gh * gw,
          "rope3d: %lld rows for a %dx%dx%d grid", (long long)x.rows, nf, gh, gw);
    CALL(rope3d, x, heads, f0, nf, gh, gw, theta);
}

kn_status kn_rope3d_table(kn_backend_t *be, kn_tensor table, const int *f0, int n, int nf, int gh,
                          int gw, double theta)
{
    VIEW(table, "rope3d_table");
    CHECK(table.dtype == KN_F32, "rope3d_table: the table is f32, not %s", kn_dtype_name(table.dtype));
    CHECK(table.cols % 2 == 0 && table.cols >= 6, "rope3d_table: width %lld is not an even d >= 6",
          (long long)table.cols);
    CHECK(n >= 1 && n <= KN_ROPE_MAX_STREAMS && f0, "rope3d_table: 1..%d streams, not %d",
          KN_ROPE_MAX_STREAMS, n);
    CHECK(nf >= 0 && gh > 0 && gw > 0 && table.rows == (int64_t)n * nf * gh * gw,
          "rope3d_table: %lld rows for %d streams of a %dx%dx%d grid", (long long)table.rows, n, nf, gh,
          gw);
    CHECK(theta > 1.0, "rope3d_table: theta %g", theta);
    for (int s = 0; s < n; s++)
        CHECK(f0[s] >= 0, "rope3d_table: frame index %d", f0[s]);
    CALL(rope3d_table, table, f0, n, nf, gh, gw, theta);
}

kn_status kn_rmsnorm_rope(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps,
                          int heads, const kn_tensor *table)
{
    VIEW(x, "rmsnorm_rope x");
    VIEW(y, "rmsnorm_rope y");
    VEC(w, x.cols, "rmsnorm_rope weight");
    CHECK(heads > 0 && x.cols % heads == 0 && y.cols == x.cols / heads && y.rows == x.rows * heads,
          "rmsnorm_rope: y [%lld, %lld] is not the %d heads of x [%lld, %lld] as rows", (long long)y.rows,
          (long long)y.cols, heads, (long long)x.rows, (long long)x.cols);
    if (table) {
        VIEW(*table, "rmsnorm_rope table");
        CHECK(table->dtype == KN_F32, "rmsnorm_rope: the table is f32, not %s", kn_dtype_name(table->dtype));
        CHECK(table->cols == y.cols && table->cols % 2 == 0 && table->rows == x.rows,
              "rmsnorm_rope: table [%lld, %lld] for %d heads of x [%lld, %lld]", (long long)table->rows,
              (long long)table->cols, heads, (long long)x.rows, (long long)x.cols);
    }
    CALL(rmsnorm_rope, y, x, w, eps, heads, table);
}

kn_status kn_timestep_embed(kn_backend_t *be, kn_tensor y, const float *t, int n)
{
    VIEW(y, "timestep_embed y");
    CHECK(t && n >= 0 && y.rows == n && y.cols % 2 == 0 && y.cols > 0, "timestep_embed: bad shape");
    CALL(timestep_embed, y, t, n);
}

/* The last element of a kv source lies inside its buffer. */
static int kv_ok(const kn_kv *kv, int64_t extra_cols)
{
    if (!kv->buf || kv->n_tokens < 0 || kv->kv_heads <= 0 || kv->dk <= 0 || kv->dv <= 0 ||
        kv->k_off < 0 || kv->v_off < 0 || kv->row_stride <= 0)
        return 0;
    int64_t width = kv->k_off + (int64_t)kv->kv_heads * kv->dk;
    int64_t vw = kv->v_off + (int64_t)kv->kv_heads * kv->dv;
    if (vw > width)
        width = vw;
    if (extra_cols > width)
        width = extra_cols;
    if (width > kv->row_stride)
        return 0;
    uint64_t last; /* elements from off to the end of the furthest row */
    if (kv->pages) {
        if (kv->page_tokens <= 0 || kv->page_stride < (int64_t)kv->page_tokens * kv->row_stride)
            return 0;
        /* the buffer size bounds the page count: check each page index lazily in the op; here the
         * largest page index that fits */
        last = 0;
        int64_t np = (kv->n_tokens + kv->page_tokens - 1) / kv->page_tokens;
        for (int64_t p = 0; p < np; p++) {
            if (kv->pages[p] < 0)
                return 0;
            uint64_t e = (uint64_t)kv->pages[p] * (uint64_t)kv->page_stride +
                         (uint64_t)kv->page_tokens * (uint64_t)kv->row_stride;
            if (e > last)
                last = e;
        }
    } else {
        last = (uint64_t)kv->n_tokens * (uint64_t)kv->row_stride;
    }
    return kv->off <= kv->buf->size &&
           last <= (kv->buf->size - kv->off) / kn_dtype_size(kv->dtype);
}

static kn_status attention_args(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads)
{
    VIEW(out, "attention out");
    VIEW(q, "attention q");
    CHECK(kv && kv_ok(kv, 0), "attention: kv source outside its buffer or malformed");
    CHECK(q_heads > 0 && q_heads % kv->kv_heads == 0, "attention: %d query heads over %d kv heads",
          q_heads, kv->kv_heads);
    CHECK(q.cols == (int64_t)q_heads * kv->dk && out.cols == (int64_t)q_heads * kv->dv &&
              q.rows == out.rows,
          "attention: q [%lld,%lld] out [%lld,%lld] for %d heads dk %d dv %d", (long long)q.rows,
          (long long)q.cols, (long long)out.rows, (long long)out.cols, q_heads, kv->dk, kv->dv);
    CHECK(kv->n_tokens > 0, "attention: no keys");
    return KN_OK;
}

kn_status kn_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads,
                       float scale)
{
    kn_status st = attention_args(be, out, q, kv, q_heads);
    if (st != KN_OK)
        return st;
    CALL(attention, out, q, kv, q_heads, scale);
}

kn_status kn_attention_batch(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int n, int q_heads,
                             float scale)
{
    CHECK(kv && n > 0 && q.rows % n == 0 && out.rows == q.rows,
          "attention_batch: %d sources for %lld query rows (%lld output rows)", n, (long long)q.rows,
          (long long)out.rows);
    int64_t r = q.rows / n;
    for (int b = 0; b < n; b++) {
        kn_status st = attention_args(be, kn_rows(out, b * r, r), kn_rows(q, b * r, r), &kv[b], q_heads);
        if (st != KN_OK)
            return st;
        CHECK(kv[b].dtype == kv[0].dtype && kv[b].kv_heads == kv[0].kv_heads && kv[b].dk == kv[0].dk &&
                  kv[b].dv == kv[0].dv,
              "attention_batch: source %d differs from source 0 in dtype, heads or widths", b);
    }
    if (be->ops->attention_batch)
        CALL(attention_batch, out, q, kv, n, q_heads, scale);
    INJECT(attention_batch);
    for (int b = 0; b < n; b++) {
        kn_status st = be->ops->attention(be, kn_rows(out, b * r, r), kn_rows(q, b * r, r), &kv[b], q_heads, scale);
        if (st != KN_OK)
            return st;
    }
    return KN_OK;
}

/* Token rows tok0 .. tok0+t.rows-1 at columns col .. col+t.cols-1 of kv: listed and inside the buffer. */
static kn_status kv_rows_args(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor t,
                              const char *name, const char *side)
{
    VIEW(t, name);
    CHECK(kv && tok0 >= 0 && col >= 0 && tok0 + t.rows <= kv->n_tokens, "%s: tokens %lld..%lld outside the %lld listed",
          name, (long long)tok0, (long long)(tok0 + t.rows), kv ? (long long)kv->n_tokens : 0LL);
    CHECK(kv_ok(kv, col + t.cols), "%s: %s outside its buffer or malformed", name, side);
    return KN_OK;
}

kn_status kn_kv_store(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor src)
{
    kn_status st = kv_rows_args(be, kv, tok0, col, src, "kv_store", "destination");
    if (st != KN_OK)
        return st;
    CALL(kv_store, kv, tok0, col, src);
}

kn_status kn_kv_store_batch(kn_backend_t *be, const kn_kv *kv, const int64_t *tok0, int n, int64_t col,
                            kn_tensor src)
{
    CHECK(kv && tok0 && n > 0 && src.rows % n == 0, "kv_store_batch: %d destinations for %lld rows", n,
          (long long)src.rows);
    int64_t r = src.rows / n;
    for (int b = 0; b < n; b++) {
        kn_status st = kv_rows_args(be, &kv[b], tok0[b], col, kn_rows(src, b * r, r), "kv_store_batch", "destination");
        if (st != KN_OK)
            return st;
        CHECK(kv[b].buf == kv[0].buf && kv[b].dtype == kv[0].dtype && kv[b].row_stride == kv[0].row_stride &&
                  kv[b].page_tokens == kv[0].page_tokens && kv[b].page_stride == kv[0].page_stride &&
                  !kv[b].pages == !kv[0].pages,
              "kv_store_batch: destination %d is not in destination 0's pool layout", b);
    }
    if (be->ops->kv_store_batch)
        CALL(kv_store_batch, kv, tok0, n, col, src);
    INJECT(kv_store_batch);
    for (int b = 0; b < n; b++) {
        kn_status st = be->ops->kv_store(be, &kv[b], tok0[b], col, kn_rows(src, b * r, r));
        if (st != KN_OK)
            return st;
    }
    return KN_OK;
}

kn_status kn_kv_load(kn_backend_t *be, kn_tensor dst, const kn_kv *kv, int64_t tok0, int64_t col)
{
    kn_status st = kv_rows_args(be, kv, tok0, col, dst, "kv_load", "source");
    if (st != KN_OK)
        return st;
    CALL(kv_load, dst, kv, tok0, col);
}

kn_status kn_patchify(kn_backend_t *be, kn_tensor tok, kn_tensor lat, int C, int nf, int h, int w)
{
    VIEW(tok, "patchify tok");
    VIEW(lat, "patchify lat");
    CHECK(C > 0 && nf > 0 && h > 0 && w > 0 && h % 2 == 0 && w % 2 == 0, "patchify: bad grid");
    CHECK(lat.rows == C && lat.cols == (int64_t)nf * h * w && tok.rows == (int64_t)nf * (h / 2) * (w / 2) &&
              tok.cols == 4 * C,
          "patchify: shapes do not match the grid");
    CALL(patchify, tok, lat, C, nf, h, w);
}

kn_status kn_unpatchify(kn_backend_t *be, kn_tensor lat, kn_tensor tok, int C, int nf, int h, int w)
{
    VIEW(tok, "unpatchify tok");
    VIEW(lat, "unpatchify lat");
    CHECK(C > 0 && nf > 0 && h > 0 && w > 0 && h % 2 == 0 && w % 2 == 0, "unpatchify: bad grid");
    CHECK(lat.rows == C && lat.cols == (int64_t)nf * h * w && tok.rows == (int64_t)nf * (h / 2) * (w / 2) &&
              tok.cols == 4 * C,
          "unpatchify: shapes do not match the grid");
    CALL(unpatchify, lat, tok, C, nf, h, w);
}

kn_status kn_conv2d3x3(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b,
                       int H, int W)
{
    VIEW(y, "conv y");
    VIEW(x, "conv x");
    VIEW(w, "conv w");
    CHECK(H > 0 && W > 0 && x.cols == (int64_t)H * W && y.cols == x.cols && w.rows == y.rows &&
              w.cols == x.rows * 9,
          "conv2d3x3: x [%lld,%lld] w [%lld,%lld] y [%lld,%lld] at %dx%d", (long long)x.rows,
          (long long)x.cols, (long long)w.rows, (long long)w.cols, (long long)y.rows,
          (long long)y.cols, H, W);
    if (b)
        VEC(*b, y.rows, "conv bias");
    CALL(conv2d3x3, y, x, w, b, H, W);
}

kn_status kn_upsample2x(kn_backend_t *be, kn_tensor y, kn_tensor x, int H, int W)
{
    VIEW(y, "upsample y");
    VIEW(x, "upsample x");
    CHECK(H > 0 && W > 0 && x.cols == (int64_t)H * W && y.rows == x.rows && y.cols == 4 * x.cols,
          "upsample2x: bad shapes");
    CALL(upsample2x, y, x, H, W);
}

#ifndef VMLA_HAVE_CUDA
/* A build without CUDA (VMLA_CUDA=OFF or no nvcc): asking for the CUDA backend is an error the
 * caller reports (vmla-server --device cuda, the GPU tests skip on it), not a crash. */
kn_backend_t *kn_cuda_backend_new(int device, char *err, size_t errlen)
{
    if (err && errlen)
        snprintf(err, errlen, "this build has no CUDA backend (configure with VMLA_CUDA=ON)");
    return NULL;
}
#endif
