/* kernels/cpu_backend.c — the CPU backend: host buffers, data movement, the op table.
 *
 * Compute is fp32 (kernels/cpu_ops.c); tensors may also be stored as bf16/f16 where an op
 * converts on load (the KV pool, copies, uploads). Ops run synchronously, so kn_sync is a no-op.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu_internal.h"

static void *cpu_mem_alloc(kn_backend_t *be, size_t bytes)
{
    size_t n = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, n);
}

static void cpu_mem_free(kn_backend_t *be, void *p) { free(p); }

static void cpu_destroy(kn_backend_t *be)
{
    cpu_impl *c = be->impl;
    if (c)
        free(c->scratch);
    free(c);
    free(be);
}

static kn_status cpu_upload(kn_backend_t *be, kn_tensor t, const void *src, kn_dtype sdt)
{
    size_t k = 0;
    for (int64_t r = 0; r < t.rows; r++) {
        void *row = (char *)t.buf->ptr + t.off + (size_t)(r * t.ld) * kn_dtype_size(t.dtype);
        if (sdt == t.dtype) {
            memcpy(row, (const char *)src + k * kn_dtype_size(sdt), (size_t)t.cols * kn_dtype_size(sdt));
            k += (size_t)t.cols;
        } else {
            for (int64_t c = 0; c < t.cols; c++, k++)
                kn_store(row, t.dtype, (size_t)c, kn_load(src, sdt, k));
        }
    }
    return KN_OK;
}

static kn_status cpu_download(kn_backend_t *be, kn_tensor t, float *dst)
{
    size_t k = 0;
    for (int64_t r = 0; r < t.rows; r++) {
        const void *row = (const char *)t.buf->ptr + t.off + (size_t)(r * t.ld) * kn_dtype_size(t.dtype);
        for (int64_t c = 0; c < t.cols; c++, k++)
            dst[k] = kn_load(row, t.dtype, (size_t)c);
    }
    return KN_OK;
}

/* A [0, 1] sample as a video byte (kn_download_rgb8): rounded to nearest, ties up, clamped; the
 * CUDA kernel rounds the same way. */
static uint8_t rgb8_of(float v)
{
    float q = v * 255.0f + 0.5f;
    if (!(q >= 0.0f))
        q = 0.0f; /* also NaN */
    if (q > 255.0f)
        q = 255.0f;
    return (uint8_t)(int)q;
}

/* The planes are read where they are: no float copy of the chunk. */
static kn_status cpu_download_rgb8(kn_backend_t *be, kn_tensor t, int frames, uint8_t *dst)
{
    size_t es = kn_dtype_size(t.dtype);
    for (int f = 0; f < frames; f++) {
        const char *pl[3];
        for (int c = 0; c < 3; c++)
            pl[c] = (const char *)t.buf->ptr + t.off + (size_t)((3 * (int64_t)f + c) * t.ld) * es;
        uint8_t *d = dst + (size_t)f * (size_t)t.cols * 3;
        for (int64_t p = 0; p < t.cols; p++)
            for (int c = 0; c < 3; c++)
                d[3 * p + c] = rgb8_of(kn_load(pl[c], t.dtype, (size_t)p));
    }
    return KN_OK;
}

static kn_status cpu_sync(kn_backend_t *be) { return KN_OK; }

static kn_status cpu_buffer_copy(kn_backend_t *be, void *dst, const void *src, size_t bytes)
{
    memmove(dst, src, bytes);
    return KN_OK;
}

/* MemAvailable and MemTotal from /proc/meminfo (sysconf where it is missing). */
static kn_status cpu_mem_info(kn_backend_t *be, size_t *free_bytes, size_t *total_bytes)
{
    unsigned long long avail = 0, total = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            unsigned long long v;
            if (sscanf(line, "MemAvailable: %llu kB", &v) == 1)
                avail = v * 1024ull;
            else if (sscanf(line, "MemTotal: %llu kB", &v) == 1)
                total = v * 1024ull;
        }
        fclose(f);
    }
    if (!total) {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        if (pages <= 0 || psz <= 0)
            return kn_fail(be, KN_ERR_UNSUPPORTED, "cpu: cannot read the host's memory size");
        total = (unsigned long long)pages * (unsigned long long)psz;
    }
    if (!avail)
        avail = total / 2;
    *free_bytes = (size_t)avail;
    *total_bytes = (size_t)total;
    return KN_OK;
}

float *cpu_scratch(kn_backend_t *be, size_t nfloats)
{
    cpu_impl *c = be->impl;
    if (nfloats > c->scratch_n) {
        float *p = realloc(c->scratch, nfloats * sizeof(float));
        if (!p)
            return NULL;
        c->scratch = p;
        c->scratch_n = nfloats;
    }
    return c->scratch;
}

static const kn_backend_ops cpu_ops = {
    .name = "cpu",
    .compute_dtype = KN_F32,
    .destroy = cpu_destroy,
    .mem_alloc = cpu_mem_alloc,
    .mem_free = cpu_mem_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .download_rgb8 = cpu_download_rgb8,
    .sync = cpu_sync,
    .linear = cpu_linear,
    .matmul_heads = cpu_matmul_heads,
    .layernorm = cpu_layernorm,
    .rmsnorm = cpu_rmsnorm,
    .modulate = cpu_modulate,
    .layernorm_modulate = cpu_layernorm_modulate,
    .gate_add = cpu_gate_add,
    .axpby = cpu_axpby,
    .gelu_tanh = cpu_gelu_tanh,
    .silu = cpu_silu,
    .clamp = cpu_clamp,
    .row_affine = cpu_row_affine,
    .copy = cpu_copy,
    .rope3d = cpu_rope3d,
    .rope3d_table = cpu_rope3d_table,
    .rmsnorm_rope = cpu_rmsnorm_rope,
    .timestep_embed = cpu_timestep_embed,
    .attention = cpu_attention,
    .kv_store = cpu_kv_store,
    .kv_load = cpu_kv_load,
    .patchify = cpu_patchify,
    .unpatchify = cpu_unpatchify,
    .conv2d3x3 = cpu_conv2d3x3,
    .upsample2x = cpu_upsample2x,
    .host_alloc = cpu_mem_alloc,
    .host_free = cpu_mem_free,
    .buffer_copy = cpu_buffer_copy,
    .mem_info = cpu_mem_info,
};

kn_backend_t *kn_cpu_backend_new(void)
{
    kn_backend_t *be = calloc(1, sizeof *be);
    cpu_impl *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        return NULL;
    }
    be->ops = &cpu_ops;
    be->impl = c;
    return be;
}
