/* kernels/backend_impl.h — what a backend implements (private to kernels/).
 *
 * kernels/backend.c checks shapes and dtypes once for every backend, then calls through this
 * table; a backend's functions may assume their arguments passed those checks. A NULL entry means
 * the op is not supported by that backend (KN_ERR_UNSUPPORTED).
 */
#ifndef VMLA_KERNELS_BACKEND_IMPL_H
#define VMLA_KERNELS_BACKEND_IMPL_H

#include "kernels/backend.h"

struct kn_buffer {
    size_t size;
    void *ptr; /* host pointer (CPU) or device pointer (CUDA) */
    int host;  /* made by kn_host_buffer_alloc (page-locked host memory) */
};

typedef struct kn_backend_ops {
    const char *name;
    kn_dtype compute_dtype;
    void (*destroy)(kn_backend_t *be);
    void *(*mem_alloc)(kn_backend_t *be, size_t bytes);
    void (*mem_free)(kn_backend_t *be, void *ptr);
    kn_status (*upload)(kn_backend_t *be, kn_tensor t, const void *src, kn_dtype src_dtype);
    kn_status (*download)(kn_backend_t *be, kn_tensor t, float *dst);
    kn_status (*sync)(kn_backend_t *be);

    kn_status (*linear)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b);
    /* optional (NULL: kn_linear_gelu runs linear, then gelu_tanh) */
    kn_status (*linear_gelu)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b);
    kn_status (*matmul_heads)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, int heads,
                              kn_heads_mode mode);
    kn_status (*layernorm)(kn_backend_t *be, kn_tensor y, kn_tensor x, const kn_tensor *w,
                           const kn_tensor *b, float eps);
    kn_status (*rmsnorm)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps);
    kn_status (*modulate)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale);
    kn_status (*layernorm_modulate)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift,
                                    kn_tensor scale, float eps);
    kn_status (*gate_add)(kn_backend_t *be, kn_tensor x, kn_tensor y, const kn_tensor *gate);
    kn_status (*axpby)(kn_backend_t *be, kn_tensor y, float a, kn_tensor x, float b, const kn_tensor *z);
    kn_status (*gelu_tanh)(kn_backend_t *be, kn_tensor y, kn_tensor x);
    kn_status (*silu)(kn_backend_t *be, kn_tensor y, kn_tensor x);
    kn_status (*clamp)(kn_backend_t *be, kn_tensor y, kn_tensor x, float lo, float hi);
    kn_status (*row_affine)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor scale, kn_tensor shift);
    kn_status (*copy)(kn_backend_t *be, kn_tensor y, kn_tensor x);
    kn_status (*rope3d)(kn_backend_t *be, kn_tensor x, int heads, int f0, int nf, int gh, int gw,
                        double theta);
    kn_status (*rope3d_table)(kn_backend_t *be, kn_tensor table, const int *f0, int n, int nf, int gh,
                              int gw, double theta);
    kn_status (*rmsnorm_rope)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps, int heads,
                              const kn_tensor *table);
    kn_status (*timestep_embed)(kn_backend_t *be, kn_tensor y, const float *t, int n);
    kn_status (*attention)(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads,
                           float scale);
    /* optional (NULL: kn_attention_batch calls attention once a stream); arguments checked */
    kn_status (*attention_batch)(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int n,
                                 int q_heads, float scale);
    kn_status (*kv_store)(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor src);
    kn_status (*kv_load)(kn_backend_t *be, kn_tensor dst, const kn_kv *kv, int64_t tok0, int64_t col);
    kn_status (*patchify)(kn_backend_t *be, kn_tensor tok, kn_tensor lat, int C, int nf, int h, int w);
    kn_status (*unpatchify)(kn_backend_t *be, kn_tensor lat, kn_tensor tok, int C, int nf, int h, int w);
    kn_status (*conv2d3x3)(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b,
                           int H, int W);
    kn_status (*upsample2x)(kn_backend_t *be, kn_tensor y, kn_tensor x, int H, int W);

    /* host tier (KV offload): page-locked host memory, byte copies between any two buffers
     * enqueued on the backend's stream, and the device's memory figures */
    void *(*host_alloc)(kn_backend_t *be, size_t bytes);
    void (*host_free)(kn_backend_t *be, void *ptr);
    kn_status (*buffer_copy)(kn_backend_t *be, void *dst, const void *src, size_t bytes);
    kn_status (*mem_info)(kn_backend_t *be, size_t *free_bytes, size_t *total_bytes);

    /* arguments checked */
    kn_status (*download_rgb8)(kn_backend_t *be, kn_tensor t, int frames, uint8_t *dst);
    /* optional (NULL: kn_kv_store_batch stores stream by stream); arguments checked */
    kn_status (*kv_store_batch)(kn_backend_t *be, const kn_kv *kv, const int64_t *tok0, int n, int64_t col,
                                kn_tensor src);
} kn_backend_ops;

struct kn_backend {
    const kn_backend_ops *ops;
    void *impl;
    char err[512];
    int64_t fault_countdown; /* kn_backend_inject_fault (tests) */
    int fault_sticky;
};

/* Record an error message on the backend and return st. */
kn_status kn_fail(kn_backend_t *be, kn_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* fp16 / bf16 conversions (round to nearest even on the way down). */
float kn_bf16_to_f32(uint16_t h);
uint16_t kn_f32_to_bf16(float f);
float kn_f16_to_f32(uint16_t h);
uint16_t kn_f32_to_f16(float f);
/* Load element i of a buffer of dtype t as float; store likewise. */
float kn_load(const void *base, kn_dtype t, size_t i);
void kn_store(void *base, kn_dtype t, size_t i, float v);

#endif
