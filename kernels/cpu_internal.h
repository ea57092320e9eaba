/* kernels/cpu_internal.h — the CPU backend's ops (kernels/cpu_ops.c), private to kernels/. */
#ifndef VMLA_KERNELS_CPU_INTERNAL_H
#define VMLA_KERNELS_CPU_INTERNAL_H

#include "kernels/backend_impl.h"

typedef struct {
    float *scratch; /* grows to the largest size an op has needed, then stays */
    size_t scratch_n;
} cpu_impl;

/* A scratch area of at least n floats owned by the backend (valid until the next call), or NULL. */
float *cpu_scratch(kn_backend_t *be, size_t nfloats);

kn_status cpu_linear(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b);
kn_status cpu_matmul_heads(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, int heads,
                           kn_heads_mode mode);
kn_status cpu_layernorm(kn_backend_t *be, kn_tensor y, kn_tensor x, const kn_tensor *w,
                        const kn_tensor *b, float eps);
kn_status cpu_rmsnorm(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps);
kn_status cpu_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale);
kn_status cpu_layernorm_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift,
                                 kn_tensor scale, float eps);
kn_status cpu_gate_add(kn_backend_t *be, kn_tensor x, kn_tensor y, const kn_tensor *gate);
kn_status cpu_axpby(kn_backend_t *be, kn_tensor y, float a, kn_tensor x, float b, const kn_tensor *z);
kn_status cpu_gelu_tanh(kn_backend_t *be, kn_tensor y, kn_tensor x);
kn_status cpu_silu(kn_backend_t *be, kn_tensor y, kn_tensor x);
kn_status cpu_clamp(kn_backend_t *be, kn_tensor y, kn_tensor x, float lo, float hi);
kn_status cpu_row_affine(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor scale, kn_tensor shift);
kn_status cpu_copy(kn_backend_t *be, kn_tensor y, kn_tensor x);
kn_status cpu_rope3d(kn_backend_t *be, kn_tensor x, int heads, int f0, int nf, int gh, int gw,
                     double theta);
kn_status cpu_rope3d_table(kn_backend_t *be, kn_tensor table, const int *f0, int n, int nf, int gh,
                           int gw, double theta);
kn_status cpu_rmsnorm_rope(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps, int heads,
                           const kn_tensor *table);
kn_status cpu_timestep_embed(kn_backend_t *be, kn_tensor y, const float *t, int n);
kn_status cpu_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads,
                        float scale);
kn_status cpu_kv_store(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor src);
kn_status cpu_kv_load(kn_backend_t *be, kn_tensor dst, const kn_kv *kv, int64_t tok0, int64_t col);
kn_status cpu_patchify(kn_backend_t *be, kn_tensor tok, kn_tensor lat, int C, int nf, int h, int w);
kn_status cpu_unpatchify(kn_backend_t *be, kn_tensor lat, kn_tensor tok, int C, int nf, int h, int w);
kn_status cpu_conv2d3x3(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b,
                        int H, int W);
kn_status cpu_upsample2x(kn_backend_t *be, kn_tensor y, kn_tensor x, int H, int W);

#endif
