/* kernels/backend.h — the compute backend interface.
 *
 * A backend (CPU reference, CUDA) is an opaque handle over a small op table, in the manner of
 * ggml-backend. Tensors live in buffers the backend owns: host memory for the CPU backend, device
 * memory for CUDA. The engine never dereferences tensor memory: it allocates buffers at init,
 * slices them into views (kn_tensor) with an arena, uploads weights once, and enqueues ops. Ops may
 * run asynchronously on the backend's stream; only kn_sync() and kn_download() wait.
 *
 * Every op returns a kn_status; on error the backend keeps a message (kn_backend_error()).
 * All math is defined by the CPU backend (kernels/cpu_ops.c), which is the fp32 reference every
 * other backend is tested against op by op. Shapes are written as [rows, cols]; a view may have a
 * row stride `ld` larger than `cols` (a column slice of a wider matrix).
 */
#ifndef VMLA_KERNELS_BACKEND_H
#define VMLA_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef enum { KN_F32 = 0, KN_BF16 = 1, KN_F16 = 2 } kn_dtype;

typedef enum {
    KN_OK = 0,
    KN_ERR_ARG,         /* shapes or arguments do not fit the op */
    KN_ERR_NOMEM,       /* allocation failed */
    KN_ERR_DEVICE,      /* the device reported an error (message on the backend) */
    KN_ERR_UNSUPPORTED, /* this backend does not implement the op for these types */
} kn_status;

typedef struct kn_backend kn_backend_t;
typedef struct kn_buffer kn_buffer_t;

/* A 2-D row-major view into a backend buffer: element (r, c) is at off + (r*ld + c)*size(dtype). */
typedef struct {
    kn_buffer_t *buf;
    size_t off; /* bytes */
    kn_dtype dtype;
    int64_t rows, cols, ld;
} kn_tensor;

/* A source of keys and values for attention: token rows, either contiguous (pages == NULL) or
 * scattered over fixed-size pages of a pool (paged attention). Token t lives in page
 * pages[t / page_tokens] at row t % page_tokens. Within a token row, key head g starts at
 * element k_off + g*dk and value head g at v_off + g*dv. kv_heads == 1 is multi-query attention
 * (every query head reads the same key/value), which is how the MLA layout attends in its latent. */
typedef struct {
    kn_buffer_t *buf;
    kn_dtype dtype;
    size_t off;            /* bytes to token row 0 of page 0 (or of the contiguous block) */
    int64_t row_stride;    /* elements between consecutive token rows inside a page */
    int64_t page_stride;   /* elements between pages */
    int32_t page_tokens;   /* tokens per page (ignored when pages == NULL) */
    const int32_t *pages;  /* host array, one page index per page_tokens tokens, or NULL */
    int64_t n_tokens;
    int32_t kv_heads;
    int64_t k_off, v_off;
    int32_t dk, dv;
} kn_kv;

const char *kn_dtype_name(kn_dtype t);
size_t kn_dtype_size(kn_dtype t);
const char *kn_strerror(kn_status s);

/* ---- backends -------------------------------------------------------------------------------- */

/* Create the CPU backend (fp32 compute; buffers in host memory; GEMM through OpenBLAS). The
 * caller frees it with kn_backend_free. Returns NULL only if memory is exhausted. */
kn_backend_t *kn_cpu_backend_new(void);
/* Create the CUDA backend on `device`, or NULL with a message in err when CUDA is not built in or
 * no device is usable. */
kn_backend_t *kn_cuda_backend_new(int device, char *err, size_t errlen);
void kn_backend_free(kn_backend_t *be);
const char *kn_backend_name(const kn_backend_t *be);
/* Tests: the op after `after_ops` more ops fails with KN_ERR_DEVICE ("injected fault"); sticky:
 * every op after it fails too (a broken device). after_ops < 0 turns it off. */
void kn_backend_inject_fault(kn_backend_t *be, int64_t after_ops, int sticky);
/* The message of the last failed op on this backend ("" if none). */
const char *kn_backend_error(const kn_backend_t *be);
/* The compute dtype this backend prefers for weights and activations (F32 on CPU). */
kn_dtype kn_backend_compute_dtype(const kn_backend_t *be);

/* ---- buffers --------------------------------------------------------------------------------- */

/* Allocate `bytes` of backend memory (uninitialised). NULL on failure. Freed by kn_buffer_free. */
kn_buffer_t *kn_buffer_alloc(kn_backend_t *be, size_t bytes);
void kn_buffer_free(kn_backend_t *be, kn_buffer_t *buf);
size_t kn_buffer_size(const kn_buffer_t *buf);
/* Allocate `bytes` of page-locked host memory for staging device data (the KV pool's host tier):
 * device <-> host copies from and to it run asynchronously on the backend's stream. On the CPU
 * backend it is plain host memory. Freed by kn_buffer_free. NULL on failure. */
kn_buffer_t *kn_host_buffer_alloc(kn_backend_t *be, size_t bytes);
/* The host address of a buffer made by kn_host_buffer_alloc (NULL for device buffers). Copies
 * between it and the device (kn_upload, kn_download) run at the bus's full rate. */
void *kn_host_buffer_data(kn_buffer_t *buf);
/* Copy `bytes` from src at src_off to dst at dst_off (device or host buffers of this backend).
 * Enqueued on the backend's stream in order with the ops: work enqueued before it sees the old
 * contents, work after it the new ones; the host does not wait. */
kn_status kn_buffer_copy(kn_backend_t *be, kn_buffer_t *dst, size_t dst_off, const kn_buffer_t *src,
                         size_t src_off, size_t bytes);
/* Free and total bytes of the memory kn_buffer_alloc draws from (device memory for CUDA; for the
 * CPU backend the host's available and total memory). */
kn_status kn_mem_info(kn_backend_t *be, size_t *free_bytes, size_t *total_bytes);

/* A bump allocator over one buffer: views are carved at init, nothing is allocated per step. */
typedef struct {
    kn_buffer_t *buf;
    size_t size, used;
} kn_arena;
void kn_arena_init(kn_arena *a, kn_buffer_t *buf);
/* A new contiguous [rows, cols] tensor from the arena; returns 0 and sets *t, or -1 if the arena is
 * full or the size overflows. Alignment is 256 bytes. */
int kn_arena_tensor(kn_arena *a, kn_tensor *t, kn_dtype dt, int64_t rows, int64_t cols);
/* Bytes a tensor of that shape takes in an arena (including alignment). */
size_t kn_arena_bytes(kn_dtype dt, int64_t rows, int64_t cols);

/* Views. */
kn_tensor kn_rows(kn_tensor t, int64_t r0, int64_t n);       /* rows r0 .. r0+n-1 */
kn_tensor kn_cols(kn_tensor t, int64_t c0, int64_t n);       /* columns c0 .. c0+n-1 */
kn_tensor kn_reshape(kn_tensor t, int64_t rows, int64_t cols); /* contiguous tensors only */
int64_t kn_nelem(kn_tensor t);

/* ---- data movement --------------------------------------------------------------------------- */

/* Copy host data (rows*cols elements of src_dtype, contiguous) into t, converting to t's dtype. */
kn_status kn_upload(kn_backend_t *be, kn_tensor t, const void *src, kn_dtype src_dtype);
/* Copy t into host fp32 memory (rows*cols, contiguous); waits for pending work. */
kn_status kn_download(kn_backend_t *be, kn_tensor t, float *dst);
/* Download a decoded chunk as video bytes: t [frames*3, hw] holds frame f's R, G, B planes at rows
 * 3f, 3f+1, 3f+2 with values in [0, 1]; dst gets frames*hw*3 bytes, pixel-interleaved RGB24, each
 * (int)(v*255 + 0.5) with v*255 + 0.5 clamped to [0, 255] (NaN gives 0). Waits like kn_download.
 * The CUDA backend converts on the device and moves a quarter of the bytes. */
kn_status kn_download_rgb8(kn_backend_t *be, kn_tensor t, int frames, uint8_t *dst);
kn_status kn_sync(kn_backend_t *be);

/* ---- ops ------------------------------------------------------------------------------------- */

/* y = x @ w^T + b.  x [N, in], w [out, in], b [1, out] or NULL, y [N, out]. */
kn_status kn_linear(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b);

/* y = gelu_tanh(x @ w^T + b): kn_linear then kn_gelu_tanh, fused where the backend can (the GPU's
 * GEMM epilogue). */
kn_status kn_linear_gelu(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b);

/* Per-head products with a weight whose rows are grouped by head (MLA absorption).
 * KN_HEADS_XW : x [N, H*a], w [H*a, b]  ->  y[n, h*b + j] = sum_i x[n, h*a + i] * w[h*a + i, j]
 * KN_HEADS_XWT: x [N, H*a], w [H*b, a]  ->  y[n, h*b + j] = sum_i x[n, h*a + i] * w[h*b + j, i] */
typedef enum { KN_HEADS_XW = 0, KN_HEADS_XWT = 1 } kn_heads_mode;
kn_status kn_matmul_heads(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, int heads,
                          kn_heads_mode mode);

/* Row-wise LayerNorm; w and b may be NULL (no affine). y may alias x. */
kn_status kn_layernorm(kn_backend_t *be, kn_tensor y, kn_tensor x, const kn_tensor *w,
                       const kn_tensor *b, float eps);
/* Row-wise RMSNorm with weight w [1, cols]. y may alias x. */
kn_status kn_rmsnorm(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps);
/* Per-group vectors. The ops below that take a "[G, cols]" vector split x's rows into G equal,
 * consecutive groups (G must divide x.rows) and give group g (rows g*R .. g*R + R - 1, R =
 * x.rows / G) row g of the vector: a batch of streams, one group a stream, in one call. G = 1 is
 * one vector for all rows. The vector's rows may be strided (ld >= cols). */

/* adaLN: y = x * (1 + scale_g) + shift_g, shift and scale [G, cols]. y may alias x. */
kn_status kn_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale);
/* LayerNorm without affine, then kn_modulate, in one pass: y = LN(x) * (1 + scale_g) + shift_g.
 * y may alias x. */
kn_status kn_layernorm_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift,
                                kn_tensor scale, float eps);
/* Gated residual: x += y * gate_g (gate [G, cols], or NULL for 1). */
kn_status kn_gate_add(kn_backend_t *be, kn_tensor x, kn_tensor y, const kn_tensor *gate);
/* Elementwise: y = a*x + b*z (z may be NULL: y = a*x). z is x's shape, or [G, cols] per group
 * (G = 1: one row added to every row). y may alias x or z. */
kn_status kn_axpby(kn_backend_t *be, kn_tensor y, float a, kn_tensor x, float b, const kn_tensor *z);
kn_status kn_gelu_tanh(kn_backend_t *be, kn_tensor y, kn_tensor x);
kn_status kn_silu(kn_backend_t *be, kn_tensor y, kn_tensor x);
kn_status kn_clamp(kn_backend_t *be, kn_tensor y, kn_tensor x, float lo, float hi);
/* Per-row affine: y[r, :] = x[r, :] * scale[r] + shift[r]; scale, shift [1, rows] (or [rows, 1]). */
kn_status kn_row_affine(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor scale, kn_tensor shift);
/* y = x (with dtype conversion); same shape. */
kn_status kn_copy(kn_backend_t *be, kn_tensor y, kn_tensor x);

/* Wan's 3D RoPE, in place, on x [nf*gh*gw, heads*d]: token (f, y, x) ordered frame, row, column;
 * frame index f0 + f. See docs/MODEL.md §4 for the split of the d/2 pairs. */
kn_status kn_rope3d(kn_backend_t *be, kn_tensor x, int heads, int f0, int nf, int gh, int gw,
                    double theta);

/* The same rotation from a table, for a batch of streams in one call. kn_rope3d_table fills table
 * (f32, [n*nf*gh*gw, d]) with (cos, sin) of every pair's angle (computed in float64, as kn_rope3d)
 * for n streams of nf frames each, stream s's frames starting at index f0[s] (a host array of n <=
 * KN_ROPE_MAX_STREAMS values): row s*nf*gh*gw + t is token t of stream s, entries 2j, 2j+1 the
 * cos and sin of pair j. The table serves every layer of a pass.
 * kn_rmsnorm_rope: y = rope(rmsnorm(x, w)) by heads: x [R, heads*d] is normalised over its whole row,
 * head h of row r is rotated by table row r (table [R, d], or NULL: no rotation) and written to row
 * r*heads + h of y [R*heads, d]. y may be x itself seen as [R*heads, d] (in place), or a strided
 * view elsewhere: the MLA query [q_c,h | q_r,h] is assembled by two calls writing the two column
 * ranges of one [R*heads, dh+dr] view. The query/key normalisation, the rotation and the layout in
 * one pass. */
#define KN_ROPE_MAX_STREAMS 64
kn_status kn_rope3d_table(kn_backend_t *be, kn_tensor table, const int *f0, int n, int nf, int gh,
                          int gw, double theta);
kn_status kn_rmsnorm_rope(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps,
                          int heads, const kn_tensor *table);

/* Timestep sinusoid: y [n, dim] row i = [cos(t[i]*f), sin(t[i]*f)], f = 10000^(-k/(dim/2)),
 * computed in float64. t is a host array of n values. */
kn_status kn_timestep_embed(kn_backend_t *be, kn_tensor y, const float *t, int n);

/* Attention: out [Nq, Hq*dv] = softmax(q k^T * scale) v per query head, over all kv->n_tokens
 * tokens. q [Nq, Hq*dk]; query head h reads kv head h / (Hq / kv_heads). */
kn_status kn_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads,
                       float scale);
/* Attention for a batch of streams: rows [b*r, (b+1)*r) of q and out (r = q.rows / n) attend over
 * kv[b] alone, b = 0..n-1: the same results as n kn_attention calls. The sources must agree in
 * dtype, heads and widths; each has its own buffer, pages and length. A backend may run streams
 * whose sources match in length and layout as one batched call (the CUDA backend with cuDNN). */
kn_status kn_attention_batch(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int n, int q_heads,
                             float scale);
/* Store src [n, w] into token rows tok0 .. tok0+n-1 of kv at column offset col (converting to
 * the kv dtype); the pages of those tokens must be listed in kv->pages. */
kn_status kn_kv_store(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor src);
/* The same for n streams at once: rows [b*r, (b+1)*r) of src (r = src.rows / n) go to token rows
 * tok0[b] .. of kv[b], b = 0..n-1: the result of n kn_kv_store calls. The destinations are pages of
 * one pool (same buffer, dtype, row stride, page tokens and page stride), each with its own page
 * list and length. A backend may store them all in one launch (the CUDA backend). */
kn_status kn_kv_store_batch(kn_backend_t *be, const kn_kv *kv, const int64_t *tok0, int n, int64_t col,
                            kn_tensor src);
/* The inverse: dst [n, w] = token rows tok0 .. tok0+n-1 of kv, columns col .. col+w-1 (converting
 * to dst's dtype); one call gathers a stream's window from its pages. */
kn_status kn_kv_load(kn_backend_t *be, kn_tensor dst, const kn_kv *kv, int64_t tok0, int64_t col);

/* Patchify a latent [C, nf*h*w] (channel-major, frames, rows, columns) into tokens
 * [nf*(h/2)*(w/2), C*4]; unpatchify is the inverse layout of the head's output
 * (docs/MODEL.md §3 and §5). */
kn_status kn_patchify(kn_backend_t *be, kn_tensor tok, kn_tensor lat, int C, int nf, int h, int w);
kn_status kn_unpatchify(kn_backend_t *be, kn_tensor lat, kn_tensor tok, int C, int nf, int h, int w);

/* 3x3 convolution, stride 1, zero padding 1: x [Cin, H*W], w [Cout, Cin*9], b [1, Cout] or NULL,
 * y [Cout, H*W]. */
kn_status kn_conv2d3x3(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b,
                       int H, int W);
/* Nearest-neighbour 2x upsampling: x [C, H*W] -> y [C, 4*H*W]. */
kn_status kn_upsample2x(kn_backend_t *be, kn_tensor y, kn_tensor x, int H, int W);

#endif
