/* tests/kernels/test_backend.c — vmla-test-backend: the CUDA backend against the CPU reference.
 *
 * Every op of kernels/backend.h runs on both backends over the same fresh random inputs, at several
 * shapes (odd sizes, strided views, aliasing where the op allows it), in the CUDA backend's fp32
 * mode (VMLA_CUDA_DTYPE=f32) and its bf16 mode (the default). Inputs given to the CPU are first
 * rounded to the GPU tensor's dtype, so both see the same numbers; the error measured is the
 * normalised error ||gpu - cpu|| / ||cpu|| over the output:
 *     fp32 mode  < 1e-5   (same math; only the order of fp32 sums differs)
 *     bf16 mode  < 2e-2   (bf16 storage of the output alone costs ~2^-9 relative; the tensor-core
 *                          attention also rounds the probabilities to bf16)
 * Any NaN or Inf fails. Each GPU output lives in its own buffer with 256 bytes before and after
 * it (and the padding of strided rows) filled with a sentinel; the sentinel must be intact after
 * the op. Inputs are followed by the sentinel too, a NaN in bf16/f16/f32, so reading past an
 * input shows up as a NaN in the output.
 *
 * Attention runs paged (pages out of order, partial last page), contiguous, MHA (kv_heads = q
 * heads), MLA (kv_heads 1, dk = d_c + d_r != dv), GQA, with bf16 and f32 KV storage and up to 5000
 * keys, on cuDNN's fused attention (the default where libcudnn loads: KV gathered; then with the
 * pages handed to cuDNN, VMLA_CUDA_ATTN=cudnn-paged; then cuDNN's composite graph form), on our
 * tensor-core kernel, its first (synchronous-load) version and the simple one (VMLA_CUDA_ATTN=tc /
 * tc-sync / simple); kn_linear also without cublasLt (bias by broadcast). Statistics are kept per
 * path taken (attention:<path>/<mode>), and on a cuDNN backend the chunk's own shapes must have run
 * on cuDNN, not fallen back.
 *
 * Finally whole generations: the tiny-test presets with the golden weights and the bundled models
 * (models/: 6 layers, 6-step sampler), 3 chunks through engine/engine.h, GPU vs CPU: fp32 mode
 * within 1e-4 relative (latents; measured 2.6e-7 on tiny-test), bf16 mode within ENGINE_BF16_TOL =
 * 5e-2 (measured 5.3e-3 .. 7.0e-3 on tiny-test: bf16 weights, activations and KV through 2 layers
 * x 5 passes x 3 chunks, each rounding ~2^-9; the bound leaves ~8x margin for other GPUs and
 * cuBLAS algorithm choices while still catching a wrong op, which gives O(1)).
 *
 * Without a CUDA device (or in a build without CUDA) it prints "skip: no CUDA device" and exits 0.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/sched_exec.h"
#include "kernels/backend.h"
#include "tests/check.h"

/* from kernels/cuda/cuda_backend.cu */
const char *kn_cuda_attention_variant(const kn_backend_t *be);
const char *kn_cuda_attention_last(const kn_backend_t *be);
void kn_cuda_cudnn_info(const kn_backend_t *be, char *buf, size_t n);

#define SENT 0x7fc07fc0u /* NaN as f32, and both halves NaN as bf16 and f16 */
#define PAD 256          /* bytes of sentinel before and after every tensor */
#define TOL_F32 1e-5
#define TOL_BF16 2e-2
#define ENGINE_F32_TOL 1e-4
#define ENGINE_BF16_TOL 0.05 /* measured 0.0053-0.0070 on an H200 (bench/RESULTS.md): ~8x margin */

static kn_backend_t *cpu, *gpu;
static kn_dtype gdt; /* the GPU backend's compute dtype in this pass */
static const char *mode;

/* ---- statistics ---------------------------------------------------------------------------------- */

typedef struct {
    char name[64];
    double worst;
    int cases;
} opstat;
static opstat stats[256];
static int nstats;

static void record(const char *op, double err)
{
    char name[64];
    snprintf(name, sizeof name, "%s/%s", op, mode);
    for (int i = 0; i < nstats; i++)
        if (!strcmp(stats[i].name, name)) {
            stats[i].cases++;
            if (!(err <= stats[i].worst))
                stats[i].worst = err;
            return;
        }
    if (nstats < 256) {
        snprintf(stats[nstats].name, sizeof stats[nstats].name, "%s", name);
        stats[nstats].worst = err;
        stats[nstats].cases = 1;
        nstats++;
    }
}

/* ---- random numbers and rounding ----------------------------------------------------------------- */

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((rs >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static float round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u)
        return f;
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static float round_to(kn_dtype t, float f) { return t == KN_BF16 ? round_bf16(f) : f; }

static float *rnd(size_t n, float amp)
{
    float *a = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        a[i] = amp * frand();
    return a;
}

/* ---- tensor pairs: the same tensor on both backends ------------------------------------------- */

typedef struct {
    kn_buffer_t *gb, *cb;
    kn_tensor g, c;
    size_t gbytes;
} tp;

static size_t dsz(kn_dtype t) { return kn_dtype_size(t); }

static kn_buffer_t *sentinel_buf(kn_backend_t *be, size_t bytes)
{
    kn_buffer_t *b = kn_buffer_alloc(be, bytes);
    if (!b) {
        fprintf(stderr, "test_backend: cannot allocate %zu bytes on %s: %s\n", bytes, kn_backend_name(be),
                kn_backend_error(be));
        exit(2);
    }
    size_t n = bytes / 4;
    uint32_t *s = malloc(4 * n);
    for (size_t i = 0; i < n; i++)
        s[i] = SENT;
    kn_tensor t = {b, 0, KN_F32, 1, (int64_t)n, (int64_t)n};
    if (kn_upload(be, t, s, KN_F32) != KN_OK) {
        fprintf(stderr, "test_backend: sentinel upload: %s\n", kn_backend_error(be));
        exit(2);
    }
    free(s);
    return b;
}

/* A [rows, cols] tensor with row stride ld: dtype gt on the GPU, ct on the CPU. */
static tp mk2(kn_dtype gt, kn_dtype ct, int64_t rows, int64_t cols, int64_t ld)
{
    tp p;
    int64_t span = rows > 0 ? (rows - 1) * ld + cols : 0;
    p.gbytes = (PAD + (size_t)span * dsz(gt) + PAD + 3) / 4 * 4;
    size_t cbytes = (PAD + (size_t)span * dsz(ct) + PAD + 3) / 4 * 4;
    p.gb = sentinel_buf(gpu, p.gbytes);
    p.cb = sentinel_buf(cpu, cbytes);
    p.g = (kn_tensor){p.gb, PAD, gt, rows, cols, ld};
    p.c = (kn_tensor){p.cb, PAD, ct, rows, cols, ld};
    return p;
}
static tp mk(int64_t rows, int64_t cols, int64_t ld) { return mk2(gdt, KN_F32, rows, cols, ld); }

static void drop(tp *p)
{
    kn_buffer_free(gpu, p->gb);
    kn_buffer_free(cpu, p->cb);
}

/* Upload host values (rows*cols) to both; the CPU gets them rounded to the GPU dtype. */
static void put(tp *p, const float *h)
{
    size_t n = (size_t)(p->g.rows * p->g.cols);
    float *r = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        r[i] = round_to(p->g.dtype, h[i]);
    CHECK(kn_upload(gpu, p->g, h, KN_F32) == KN_OK, "upload gpu: %s", kn_backend_error(gpu));
    CHECK(kn_upload(cpu, p->c, r, KN_F32) == KN_OK, "upload cpu: %s", kn_backend_error(cpu));
    free(r);
}
static void put_rnd(tp *p, float amp)
{
    float *h = rnd((size_t)(p->g.rows * p->g.cols), amp);
    put(p, h);
    free(h);
}

/* The GPU buffer's bytes outside the view still hold the sentinel. */
static int guard_ok(const tp *p)
{
    size_t n = p->gbytes / 4;
    float *raw = malloc(4 * n);
    kn_tensor t = {p->gb, 0, KN_F32, 1, (int64_t)n, (int64_t)n};
    if (kn_download(gpu, t, raw) != KN_OK) {
        free(raw);
        return 0;
    }
    const unsigned char *b = (const unsigned char *)raw;
    size_t es = dsz(p->g.dtype);
    int ok = 1;
    for (size_t off = 0; off + es <= p->gbytes && ok; off += es) {
        int inside = 0;
        if (off >= PAD && p->g.rows > 0 && p->g.cols > 0) {
            size_t e = (off - PAD) / es;
            int64_t r = (int64_t)(e / (size_t)p->g.ld), c = (int64_t)(e % (size_t)p->g.ld);
            inside = (off - PAD) % es == 0 && r < p->g.rows && c < p->g.cols;
        }
        if (inside)
            continue;
        uint32_t s = SENT;
        const unsigned char *sb = (const unsigned char *)&s;
        for (size_t k = 0; k < es; k++)
            if (b[off + k] != sb[(off + k) % 4])
                ok = 0;
    }
    free(raw);
    return ok;
}

/* Compare the output pair; tol by mode unless given (> 0). */
static void cmp(const char *op, const char *what, tp *p, double tol)
{
    if (tol <= 0)
        tol = gdt == KN_F32 ? TOL_F32 : TOL_BF16;
    size_t n = (size_t)(p->g.rows * p->g.cols);
    float *a = malloc(sizeof(float) * (n ? n : 1)), *r = malloc(sizeof(float) * (n ? n : 1));
    kn_status sg = kn_download(gpu, p->g, a), sc = kn_download(cpu, p->c, r);
    CHECK(sg == KN_OK && sc == KN_OK, "%s %s: download: %s / %s", op, what, kn_backend_error(gpu), kn_backend_error(cpu));
    double num = 0, den = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(r[i]))
            bad = 1;
        double d = (double)a[i] - r[i];
        num += d * d;
        den += (double)r[i] * r[i];
    }
    double err = bad ? INFINITY : den > 0 ? sqrt(num / den) : sqrt(num);
    record(op, err);
    CHECK(err < tol, "%s/%s %s: normalised error %.3g (tol %.1g)%s", op, mode, what, err, tol, bad ? " NaN/Inf" : "");
    CHECK(guard_ok(p), "%s/%s %s: wrote outside its view", op, mode, what);
    free(a);
    free(r);
}

static void ok_both(kn_status sg, kn_status sc, const char *op, const char *what)
{
    CHECK(sg == KN_OK, "%s %s: gpu: %s (%s)", op, what, kn_strerror(sg), kn_backend_error(gpu));
    CHECK(sc == KN_OK, "%s %s: cpu: %s (%s)", op, what, kn_strerror(sc), kn_backend_error(cpu));
}

/* ---- the ops ------------------------------------------------------------------------------------- */

static const int64_t ROWS[] = {1, 7, 33, 257};
static const int64_t COLS[] = {6, 18, 130};

/* y = x w^T (+ b), then gelu_tanh when gelu is set (the GPU fuses it into the GEMM's epilogue, the
 * CPU runs the two ops) */
static void t_linear_g(int64_t N, int64_t in, int64_t out, int bias, int strided, int gelu)
{
    char what[96];
    const char *op = gelu ? "linear_gelu" : "linear";
    snprintf(what, sizeof what, "N%lld in%lld out%lld%s%s", (long long)N, (long long)in, (long long)out,
             bias ? " bias" : "", strided ? " strided" : "");
    int s = strided ? 5 : 0;
    tp x = mk(N, in, in + s), w = mk(out, in, in), y = mk(N, out, out + s), b = mk(1, out, out);
    put_rnd(&x, 1);
    put_rnd(&w, 0.3f);
    put_rnd(&b, 1);
    kn_status (*f)(kn_backend_t *, kn_tensor, kn_tensor, kn_tensor, const kn_tensor *) =
        gelu ? kn_linear_gelu : kn_linear;
    ok_both(f(gpu, y.g, x.g, w.g, bias ? &b.g : NULL), f(cpu, y.c, x.c, w.c, bias ? &b.c : NULL), op, what);
    cmp(op, what, &y, 0);
    drop(&x), drop(&w), drop(&y), drop(&b);
}
static void t_linear(int64_t N, int64_t in, int64_t out, int bias, int strided)
{
    t_linear_g(N, in, out, bias, strided, 0);
}
static void t_linear_gelu(int64_t N, int64_t in, int64_t out, int bias) { t_linear_g(N, in, out, bias, 0, 1); }

static void t_heads(int64_t N, int H, int64_t a, int64_t bb, kn_heads_mode md)
{
    char what[96];
    snprintf(what, sizeof what, "N%lld H%d a%lld b%lld %s", (long long)N, H, (long long)a, (long long)bb,
             md == KN_HEADS_XW ? "xw" : "xwt");
    tp x = mk(N, H * a, H * a + 3), y = mk(N, H * bb, H * bb + 2);
    tp w = md == KN_HEADS_XW ? mk(H * a, bb, bb) : mk(H * bb, a, a);
    put_rnd(&x, 1);
    put_rnd(&w, 0.3f);
    ok_both(kn_matmul_heads(gpu, y.g, x.g, w.g, H, md), kn_matmul_heads(cpu, y.c, x.c, w.c, H, md), "matmul_heads",
            what);
    cmp("matmul_heads", what, &y, 0);
    drop(&x), drop(&w), drop(&y);
}

/* Row-wise and elementwise ops over [rows, cols] (strided when s > 0); alias: y is x. */
enum {
    E_LN, E_LN_AFF, E_RMS, E_MOD, E_GATE, E_GATE1, E_AXPBY, E_AX, E_GELU, E_SILU, E_CLAMP, E_ROWAFF,
    E_MODG, E_GATEG, E_AXPBY1, E_AXPBYG, E_LNMOD, E_N
};
static const char *ENAME[E_N] = {"layernorm", "layernorm_affine", "rmsnorm", "modulate", "gate_add", "gate_add_nogate",
                                 "axpby", "axpby_noz", "gelu_tanh", "silu", "clamp", "row_affine",
                                 "modulate_groups", "gate_add_groups", "axpby_z1", "axpby_zgroups",
                                 "layernorm_modulate"};
#define NO_ALIAS(op) ((op) == E_GATE || (op) == E_GATE1 || (op) == E_GATEG)

static void t_elem(int op, int64_t rows, int64_t cols, int s, int alias)
{
    char what[96];
    snprintf(what, sizeof what, "%lldx%lld%s%s", (long long)rows, (long long)cols, s ? " strided" : "",
             alias ? " in-place" : "");
    tp x = mk(rows, cols, cols + s), z = mk(rows, cols, cols), v1 = mk(1, cols, cols), v2 = mk(1, cols, cols);
    tp r1 = mk(1, rows, rows), r2 = mk(rows, 1, 1);
    /* per-group vectors (one group a stream): 3 groups, or a group a row; strided rows */
    int64_t G = rows % 3 == 0 ? 3 : rows;
    tp g1 = mk(G, cols, 2 * cols), g2 = mk(G, cols, 2 * cols);
    tp y = alias ? x : mk(rows, cols, cols + 2 * s);
    put_rnd(&x, op == E_CLAMP ? 2.0f : 3.0f);
    put_rnd(&z, 1);
    put_rnd(&v1, 1);
    put_rnd(&v2, 1);
    put_rnd(&r1, 1);
    put_rnd(&r2, 1);
    put_rnd(&g1, 1);
    put_rnd(&g2, 1);
    if (NO_ALIAS(op)) /* x is the residual (in/out), y the addend */
        put_rnd(&y, 1);
    kn_status sg = KN_OK, sc = KN_OK;
    switch (op) {
    case E_LN:
        sg = kn_layernorm(gpu, y.g, x.g, NULL, NULL, 1e-6f), sc = kn_layernorm(cpu, y.c, x.c, NULL, NULL, 1e-6f);
        break;
    case E_LN_AFF:
        sg = kn_layernorm(gpu, y.g, x.g, &v1.g, &v2.g, 1e-6f), sc = kn_layernorm(cpu, y.c, x.c, &v1.c, &v2.c, 1e-6f);
        break;
    case E_RMS: sg = kn_rmsnorm(gpu, y.g, x.g, v1.g, 1e-6f), sc = kn_rmsnorm(cpu, y.c, x.c, v1.c, 1e-6f); break;
    case E_MOD: sg = kn_modulate(gpu, y.g, x.g, v1.g, v2.g), sc = kn_modulate(cpu, y.c, x.c, v1.c, v2.c); break;
    case E_GATE: sg = kn_gate_add(gpu, y.g, z.g, &v1.g), sc = kn_gate_add(cpu, y.c, z.c, &v1.c); break;
    case E_GATE1: sg = kn_gate_add(gpu, y.g, z.g, NULL), sc = kn_gate_add(cpu, y.c, z.c, NULL); break;
    case E_AXPBY: sg = kn_axpby(gpu, y.g, 0.7f, x.g, -1.3f, &z.g), sc = kn_axpby(cpu, y.c, 0.7f, x.c, -1.3f, &z.c); break;
    case E_AX: sg = kn_axpby(gpu, y.g, -2.5f, x.g, 0, NULL), sc = kn_axpby(cpu, y.c, -2.5f, x.c, 0, NULL); break;
    case E_GELU: sg = kn_gelu_tanh(gpu, y.g, x.g), sc = kn_gelu_tanh(cpu, y.c, x.c); break;
    case E_SILU: sg = kn_silu(gpu, y.g, x.g), sc = kn_silu(cpu, y.c, x.c); break;
    case E_CLAMP: sg = kn_clamp(gpu, y.g, x.g, -0.5f, 1.0f), sc = kn_clamp(cpu, y.c, x.c, -0.5f, 1.0f); break;
    case E_ROWAFF:
        /* scale as [1, rows], shift as [rows, 1]: both vector shapes */
        sg = kn_row_affine(gpu, y.g, x.g, r1.g, r2.g), sc = kn_row_affine(cpu, y.c, x.c, r1.c, r2.c);
        break;
    case E_MODG: sg = kn_modulate(gpu, y.g, x.g, g1.g, g2.g), sc = kn_modulate(cpu, y.c, x.c, g1.c, g2.c); break;
    case E_GATEG: sg = kn_gate_add(gpu, y.g, z.g, &g1.g), sc = kn_gate_add(cpu, y.c, z.c, &g1.c); break;
    case E_AXPBY1:
        sg = kn_axpby(gpu, y.g, 0.7f, x.g, -1.3f, &v1.g), sc = kn_axpby(cpu, y.c, 0.7f, x.c, -1.3f, &v1.c);
        break;
    case E_AXPBYG:
        sg = kn_axpby(gpu, y.g, 1.0f, x.g, 1.0f, &g1.g), sc = kn_axpby(cpu, y.c, 1.0f, x.c, 1.0f, &g1.c);
        break;
    case E_LNMOD:
        sg = kn_layernorm_modulate(gpu, y.g, x.g, g1.g, g2.g, 1e-6f);
        sc = kn_layernorm_modulate(cpu, y.c, x.c, g1.c, g2.c, 1e-6f);
        break;
    }
    ok_both(sg, sc, ENAME[op], what);
    cmp(ENAME[op], what, &y, 0);
    if (!alias)
        drop(&y);
    drop(&x), drop(&z), drop(&v1), drop(&v2), drop(&r1), drop(&r2), drop(&g1), drop(&g2);
}

static void t_copy(kn_dtype from, kn_dtype to, int64_t rows, int64_t cols)
{
    char what[96];
    snprintf(what, sizeof what, "%s->%s %lldx%lld", kn_dtype_name(from), kn_dtype_name(to), (long long)rows,
             (long long)cols);
    /* the CPU holds the same dtypes: its copy converts too */
    tp x = mk2(from, from, rows, cols, cols + 1), y = mk2(to, to, rows, cols, cols + 4);
    float *h = rnd((size_t)(rows * cols), 5);
    CHECK(kn_upload(gpu, x.g, h, KN_F32) == KN_OK && kn_upload(cpu, x.c, h, KN_F32) == KN_OK, "copy upload");
    free(h);
    ok_both(kn_copy(gpu, y.g, x.g), kn_copy(cpu, y.c, x.c), "copy", what);
    cmp("copy", what, &y, to == KN_F32 && from == KN_F32 ? 1e-7 : 0);
    drop(&x), drop(&y);
}

static void t_rope(int heads, int d, int f0, int nf, int gh, int gw)
{
    char what[96];
    snprintf(what, sizeof what, "H%d d%d f0 %d grid %dx%dx%d", heads, d, f0, nf, gh, gw);
    int64_t rows = (int64_t)nf * gh * gw;
    tp x = mk(rows, (int64_t)heads * d, (int64_t)heads * d + 4);
    put_rnd(&x, 1);
    ok_both(kn_rope3d(gpu, x.g, heads, f0, nf, gh, gw, 10000.0), kn_rope3d(cpu, x.c, heads, f0, nf, gh, gw, 10000.0),
            "rope3d", what);
    cmp("rope3d", what, &x, 0);
    drop(&x);
}

/* kn_rope3d_table for S streams (frame offsets f0 + 7s), then kn_rmsnorm_rope with it: in place, and
 * by heads into the second column range of a [rows*heads, k + d] layout (the MLA query's), and
 * without a table (the normalisation alone, of the first k columns of every head) into the first. */
static void t_rope_table(int heads, int d, int S, int f0, int nf, int gh, int gw, int s)
{
    char what[96];
    snprintf(what, sizeof what, "H%d d%d S%d f0 %d grid %dx%dx%d%s", heads, d, S, f0, nf, gh, gw, s ? " strided" : "");
    int64_t rows = (int64_t)S * nf * gh * gw, cols = (int64_t)heads * d;
    int f0s[KN_ROPE_MAX_STREAMS];
    for (int i = 0; i < S; i++)
        f0s[i] = f0 + 7 * i;
    tp tab = mk2(KN_F32, KN_F32, rows, d, d + 2 * s), x = mk(rows, cols, cols), w = mk(1, cols, cols);
    int k = d < 8 ? d : 8;
    tp wide = mk(rows * heads, k + d, k + d);
    put_rnd(&x, 2);
    put_rnd(&w, 1);
    ok_both(kn_rope3d_table(gpu, tab.g, f0s, S, nf, gh, gw, 10000.0),
            kn_rope3d_table(cpu, tab.c, f0s, S, nf, gh, gw, 10000.0), "rope3d_table", what);
    cmp("rope3d_table", what, &tab, 1e-7);
    ok_both(kn_rmsnorm_rope(gpu, kn_cols(wide.g, k, d), x.g, w.g, 1e-6f, heads, &tab.g),
            kn_rmsnorm_rope(cpu, kn_cols(wide.c, k, d), x.c, w.c, 1e-6f, heads, &tab.c), "rmsnorm_rope", what);
    ok_both(kn_rmsnorm_rope(gpu, kn_cols(wide.g, 0, k), kn_cols(x.g, 0, k * heads), kn_cols(w.g, 0, k * heads), 1e-6f,
                            heads, NULL),
            kn_rmsnorm_rope(cpu, kn_cols(wide.c, 0, k), kn_cols(x.c, 0, k * heads), kn_cols(w.c, 0, k * heads), 1e-6f,
                            heads, NULL),
            "rmsnorm_rope", what);
    cmp("rmsnorm_rope by heads", what, &wide, 0);
    ok_both(kn_rmsnorm_rope(gpu, kn_reshape(x.g, rows * heads, d), x.g, w.g, 1e-6f, heads, &tab.g),
            kn_rmsnorm_rope(cpu, kn_reshape(x.c, rows * heads, d), x.c, w.c, 1e-6f, heads, &tab.c), "rmsnorm_rope",
            what);
    cmp("rmsnorm_rope in place", what, &x, 0);
    drop(&tab), drop(&x), drop(&w), drop(&wide);
}

static void t_timestep(int n, int64_t dim)
{
    char what[64];
    snprintf(what, sizeof what, "n%d dim%lld", n, (long long)dim);
    float *t = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++)
        t[i] = 500.0f + 500.0f * frand();
    tp y = mk(n, dim, dim + 2);
    ok_both(kn_timestep_embed(gpu, y.g, t, n), kn_timestep_embed(cpu, y.c, t, n), "timestep_embed", what);
    cmp("timestep_embed", what, &y, 0);
    drop(&y);
    free(t);
}

static void t_patch(int C, int nf, int h, int w)
{
    char what[64];
    snprintf(what, sizeof what, "C%d %dx%dx%d", C, nf, h, w);
    int64_t ntok = (int64_t)nf * (h / 2) * (w / 2);
    tp lat = mk(C, (int64_t)nf * h * w, (int64_t)nf * h * w + 3), tok = mk(ntok, 4 * C, 4 * C + 1);
    put_rnd(&lat, 1);
    ok_both(kn_patchify(gpu, tok.g, lat.g, C, nf, h, w), kn_patchify(cpu, tok.c, lat.c, C, nf, h, w), "patchify", what);
    cmp("patchify", what, &tok, 1e-7);
    tp tok2 = mk(ntok, 4 * C, 4 * C), lat2 = mk(C, (int64_t)nf * h * w, (int64_t)nf * h * w + 1);
    put_rnd(&tok2, 1);
    ok_both(kn_unpatchify(gpu, lat2.g, tok2.g, C, nf, h, w), kn_unpatchify(cpu, lat2.c, tok2.c, C, nf, h, w),
            "unpatchify", what);
    cmp("unpatchify", what, &lat2, 1e-7);
    drop(&lat), drop(&tok), drop(&tok2), drop(&lat2);
}

static void t_conv(int64_t cin, int64_t cout, int H, int W, int bias)
{
    char what[64];
    snprintf(what, sizeof what, "%lld->%lld %dx%d%s", (long long)cin, (long long)cout, H, W, bias ? " bias" : "");
    int64_t hw = (int64_t)H * W;
    tp x = mk(cin, hw, hw + 2), w = mk(cout, cin * 9, cin * 9), b = mk(1, cout, cout), y = mk(cout, hw, hw + 5);
    put_rnd(&x, 1);
    put_rnd(&w, 0.3f);
    put_rnd(&b, 1);
    ok_both(kn_conv2d3x3(gpu, y.g, x.g, w.g, bias ? &b.g : NULL, H, W),
            kn_conv2d3x3(cpu, y.c, x.c, w.c, bias ? &b.c : NULL, H, W), "conv2d3x3", what);
    cmp("conv2d3x3", what, &y, 0);
    drop(&x), drop(&w), drop(&b), drop(&y);
}

static void t_upsample(int64_t C, int H, int W)
{
    char what[64];
    snprintf(what, sizeof what, "C%lld %dx%d", (long long)C, H, W);
    int64_t hw = (int64_t)H * W;
    tp x = mk(C, hw, hw + 1), y = mk(C, 4 * hw, 4 * hw + 3);
    put_rnd(&x, 1);
    ok_both(kn_upsample2x(gpu, y.g, x.g, H, W), kn_upsample2x(cpu, y.c, x.c, H, W), "upsample2x", what);
    cmp("upsample2x", what, &y, 1e-7);
    drop(&x), drop(&y);
}

/* ---- KV pool and attention --------------------------------------------------------------------- */

typedef struct {
    int64_t nq;
    int hq, kvh, dk, dv;
    int64_t ntok;
    int pt; /* page tokens; 0: contiguous */
    kn_dtype kvdt;
    int need_dnn; /* on a cuDNN backend this case must run on cuDNN (the chunk's own shapes) */
} attn_case;

/* A pool of n_pages pages, each page_tokens rows of `width` (+ a pad) values, random contents. */
typedef struct {
    tp pool;
    int32_t *pages;
    int64_t row_stride, page_stride, np;
} kvsrc;

static kvsrc make_kv(kn_dtype kvdt, int64_t ntok, int pt, int64_t width)
{
    kvsrc s;
    s.row_stride = width + (width % 8 ? 8 - width % 8 : 0) + 8; /* a gap between rows */
    if (pt > 0) {
        s.np = (ntok + pt - 1) / pt;
        int64_t total = s.np + 3; /* spare pages nobody lists */
        s.page_stride = pt * s.row_stride + 16;
        s.pages = malloc(sizeof(int32_t) * (size_t)total);
        for (int64_t i = 0; i < total; i++)
            s.pages[i] = (int32_t)i;
        for (int64_t i = total - 1; i > 0; i--) { /* shuffle: pages out of order */
            int64_t j = (int64_t)((frand() + 1.0f) * 0.5f * (float)(i + 1));
            if (j > i)
                j = i;
            int32_t t = s.pages[i];
            s.pages[i] = s.pages[j];
            s.pages[j] = t;
        }
        s.pool = mk2(kvdt, kvdt, 1, total * s.page_stride, total * s.page_stride);
    } else {
        s.np = 0;
        s.page_stride = 0;
        s.pages = NULL;
        s.pool = mk2(kvdt, kvdt, 1, ntok * s.row_stride, ntok * s.row_stride);
    }
    float *h = rnd((size_t)s.pool.g.cols, 1);
    CHECK(kn_upload(gpu, s.pool.g, h, KN_F32) == KN_OK && kn_upload(cpu, s.pool.c, h, KN_F32) == KN_OK, "kv upload");
    free(h);
    return s;
}

static kn_kv kv_of(const kvsrc *s, const tp *p, int gpu_side, int64_t ntok, int pt)
{
    kn_kv kv;
    memset(&kv, 0, sizeof kv);
    kn_tensor t = gpu_side ? p->g : p->c;
    kv.buf = t.buf;
    kv.dtype = t.dtype;
    kv.off = t.off;
    kv.row_stride = s->row_stride;
    kv.page_stride = s->page_stride;
    kv.page_tokens = pt;
    kv.pages = pt > 0 ? s->pages : NULL;
    kv.n_tokens = ntok;
    return kv;
}

/* The heads and widths of a case on a kv source (the latent layout: the value is the key's first
 * dv columns). */
static void kv_heads_of(kn_kv *kv, attn_case a)
{
    int mla = a.kvh == 1 && a.dk > a.dv;
    kv->kv_heads = a.kvh;
    kv->dk = a.dk;
    kv->dv = a.dv;
    kv->k_off = 0;
    kv->v_off = mla ? 0 : (int64_t)a.kvh * a.dk;
}

static void t_attention(attn_case a)
{
    char what[128];
    snprintf(what, sizeof what, "nq%lld Hq%d kvh%d dk%d dv%d tok%lld %s%d kv-%s [%s]", (long long)a.nq, a.hq, a.kvh,
             a.dk, a.dv, (long long)a.ntok, a.pt ? "pages of " : "contiguous", a.pt, kn_dtype_name(a.kvdt),
             kn_cuda_attention_variant(gpu));
    int mla = a.kvh == 1 && a.dk > a.dv; /* latent layout: the value is the key's first dv columns */
    int64_t width = mla ? a.dk : (int64_t)a.kvh * (a.dk + a.dv);
    kvsrc s = make_kv(a.kvdt, a.ntok, a.pt, width);
    kn_kv kg = kv_of(&s, &s.pool, 1, a.ntok, a.pt), kc = kv_of(&s, &s.pool, 0, a.ntok, a.pt);
    kv_heads_of(&kg, a);
    kv_heads_of(&kc, a);
    tp q = mk(a.nq, (int64_t)a.hq * a.dk, (int64_t)a.hq * a.dk), out = mk(a.nq, (int64_t)a.hq * a.dv, (int64_t)a.hq * a.dv + 8);
    put_rnd(&q, 3.0f); /* peaky softmax: the running max moves */
    float scale = 1.0f / sqrtf((float)a.dk);
    ok_both(kn_attention(gpu, out.g, q.g, &kg, a.hq, scale), kn_attention(cpu, out.c, q.c, &kc, a.hq, scale),
            "attention", what);
    /* which path ran: the statistics are kept per path, and on a cuDNN backend the chunk's shapes
     * must not have fallen back to our kernel */
    const char *path = kn_cuda_attention_last(gpu);
    char op[64];
    snprintf(op, sizeof op, "attention:%s", path);
    if (a.need_dnn && a.kvdt == KN_BF16 && gdt == KN_BF16 && !strncmp(kn_cuda_attention_variant(gpu), "cudnn", 5)) {
        char info[512];
        kn_cuda_cudnn_info(gpu, info, sizeof info);
        CHECK(!strncmp(path, "cudnn", 5), "attention %s: ran on %s, not cuDNN (%s)", what, path, info);
    }
    cmp(op, what, &out, 0);
    drop(&q), drop(&out), drop(&s.pool);
    free(s.pages);
}

/* kn_attention_batch over nb sources (kg on the GPU, kc the same on the CPU): the GPU's batched call
 * against the CPU reference (one call a stream); on a cuDNN backend in bf16, the last run's path
 * must contain `want` (NULL: any path). */
static void run_attention_batch(attn_case a, const kn_kv *kg, const kn_kv *kc, int nb, const char *what,
                                const char *want)
{
    int64_t rows = (int64_t)nb * a.nq;
    tp q = mk(rows, (int64_t)a.hq * a.dk, (int64_t)a.hq * a.dk + 8), out = mk(rows, (int64_t)a.hq * a.dv, (int64_t)a.hq * a.dv);
    put_rnd(&q, 3.0f);
    float scale = 1.0f / sqrtf((float)a.dk);
    ok_both(kn_attention_batch(gpu, out.g, q.g, kg, nb, a.hq, scale),
            kn_attention_batch(cpu, out.c, q.c, kc, nb, a.hq, scale), "attention_batch", what);
    const char *path = kn_cuda_attention_last(gpu);
    char op[64];
    snprintf(op, sizeof op, "attention_batch:%s", path);
    if (want && a.kvdt == KN_BF16 && gdt == KN_BF16 && !strncmp(kn_cuda_attention_variant(gpu), "cudnn", 5)) {
        char info[512];
        kn_cuda_cudnn_info(gpu, info, sizeof info);
        CHECK(strstr(path, want) != NULL, "attention_batch %s: last run on %s, not '%s' (%s)", what, path, want, info);
    }
    cmp(op, what, &out, 0);
    drop(&q), drop(&out);
}

/* nb streams, each with its own pool (pages shuffled) and length lens[b]. want_batch: the last run
 * must have been one batched cuDNN call. */
static void t_attention_batch(attn_case a, int nb, const int64_t *lens, int want_batch)
{
    char what[160];
    snprintf(what, sizeof what, "%d streams, nq%lld Hq%d kvh%d dk%d dv%d tok%lld.. %s%d [%s]", nb, (long long)a.nq,
             a.hq, a.kvh, a.dk, a.dv, (long long)lens[0], a.pt ? "pages of " : "contiguous", a.pt,
             kn_cuda_attention_variant(gpu));
    int64_t width = a.kvh == 1 && a.dk > a.dv ? a.dk : (int64_t)a.kvh * (a.dk + a.dv);
    kvsrc s[8];
    kn_kv kg[8], kc[8];
    for (int b = 0; b < nb; b++) {
        s[b] = make_kv(a.kvdt, lens[b], a.pt, width);
        kg[b] = kv_of(&s[b], &s[b].pool, 1, lens[b], a.pt);
        kc[b] = kv_of(&s[b], &s[b].pool, 0, lens[b], a.pt);
        kv_heads_of(&kg[b], a);
        kv_heads_of(&kc[b], a);
    }
    run_attention_batch(a, kg, kc, nb, what, want_batch ? "batch" : NULL);
    for (int b = 0; b < nb; b++) {
        drop(&s[b].pool);
        free(s[b].pages);
    }
}

/* nb windows of T tokens that lie one after the other in one contiguous buffer (the MLA rebuild's
 * keys and values): on a cuDNN backend one call, described in place. */
/* nb windows of T rows in one buffer, gap rows between one and the next (the MLA rebuild's windows
 * one after the other: 0; its cache's slots: more) */
static void t_attention_batch_block(attn_case a, int nb, int64_t T, int64_t gap)
{
    char what[160];
    snprintf(what, sizeof what, "%d windows of %lld in one block (gap %lld), nq%lld Hq%d dk%d dv%d [%s]", nb,
             (long long)T, (long long)gap, (long long)a.nq, a.hq, a.dk, a.dv, kn_cuda_attention_variant(gpu));
    kvsrc s = make_kv(a.kvdt, nb * (T + gap), 0, (int64_t)a.kvh * (a.dk + a.dv));
    kn_kv kg[8], kc[8];
    for (int b = 0; b < nb; b++) {
        size_t at = (size_t)(b * (T + gap) * s.row_stride) * kn_dtype_size(a.kvdt);
        kg[b] = kv_of(&s, &s.pool, 1, T, 0);
        kc[b] = kv_of(&s, &s.pool, 0, T, 0);
        kg[b].off += at;
        kc[b].off += at;
        kv_heads_of(&kg[b], a);
        kv_heads_of(&kc[b], a);
    }
    run_attention_batch(a, kg, kc, nb, what, "batch-direct");
    drop(&s.pool);
}

static void attention_batch_suite(void)
{
    const attn_case mha = {65, 4, 4, 64, 64, 0, 16, KN_BF16, 1}, mqa = {33, 4, 1, 128, 128, 0, 32, KN_BF16, 1};
    const attn_case ctx = {40, 2, 2, 128, 128, 0, 0, KN_BF16, 1}, odd = {7, 3, 3, 12, 6, 0, 5, KN_BF16, 0};
    int64_t eq8[8] = {300, 300, 300, 300, 300, 300, 300, 300};
    int64_t mixed[5] = {200, 200, 200, 130, 130}; /* runs: 2 + 1 of 200, then 2 of 130 */
    int64_t eq3[3] = {257, 257, 257};
    t_attention_batch(mha, 8, eq8, 1);
    t_attention_batch(mha, 5, mixed, 1);
    t_attention_batch(mqa, 3, eq3, 0);
    t_attention_batch(ctx, 4, eq8, 1); /* contiguous sources in different buffers: cross-attention */
    t_attention_batch(odd, 2, eq3, 0); /* widths cuDNN does not take: one call a stream */
    const attn_case reb = {50, 3, 3, 192, 128, 0, 0, KN_BF16, 1}; /* rebuilt MLA: dh 128 + d_r 64 */
    t_attention_batch_block(reb, 4, 390, 0);
    t_attention_batch_block(reb, 2, 1000, 0);
    t_attention_batch_block(reb, 4, 300, 37); /* a power of two: one run (3 would be cut into 2 + 1) */
    attn_case f = mha;
    f.kvdt = KN_F32;
    t_attention_batch(f, 3, mixed, 0);
    /* bad arguments: refused, nothing run */
    int64_t one[1] = {10};
    kvsrc s = make_kv(KN_BF16, 10, 0, 64);
    kn_kv k2[2];
    k2[0] = k2[1] = kv_of(&s, &s.pool, 1, one[0], 0);
    for (int b = 0; b < 2; b++) {
        k2[b].kv_heads = 2;
        k2[b].dk = k2[b].dv = 16;
        k2[b].v_off = 32;
    }
    tp q = mk(6, 32, 32), o = mk(6, 32, 32);
    CHECK(kn_attention_batch(gpu, o.g, q.g, k2, 0, 2, 1.0f) == KN_ERR_ARG, "attention_batch: 0 sources accepted");
    CHECK(kn_attention_batch(gpu, kn_rows(o.g, 0, 5), kn_rows(q.g, 0, 5), k2, 2, 2, 1.0f) == KN_ERR_ARG,
          "attention_batch: 5 rows over 2 sources accepted");
    k2[1].dk = 8;
    CHECK(kn_attention_batch(gpu, o.g, q.g, k2, 2, 2, 1.0f) == KN_ERR_ARG, "attention_batch: mixed widths accepted");
    drop(&q), drop(&o), drop(&s.pool);
}

/* A paged (or contiguous) pool on both sides for the KV store / load tests, and the case's name. */
typedef struct {
    kvsrc s;
    kn_kv g, c;
    char what[128];
} kv_case;

static kv_case kv_case_new(kn_dtype kvdt, int64_t ntok, int pt, int64_t width, int64_t tok0, int64_t col, int64_t n,
                           int64_t w)
{
    kv_case k;
    snprintf(k.what, sizeof k.what, "kv-%s tok%lld pt%d width%lld rows %lld..%lld cols %lld..%lld",
             kn_dtype_name(kvdt), (long long)ntok, pt, (long long)width, (long long)tok0, (long long)(tok0 + n),
             (long long)col, (long long)(col + w));
    k.s = make_kv(kvdt, ntok, pt, width);
    k.g = kv_of(&k.s, &k.s.pool, 1, ntok, pt);
    k.c = kv_of(&k.s, &k.s.pool, 0, ntok, pt);
    k.g.kv_heads = k.c.kv_heads = 1;
    k.g.dk = k.c.dk = k.g.dv = k.c.dv = 1;
    return k;
}

static void kv_case_drop(kv_case *k)
{
    drop(&k->s.pool);
    free(k->s.pages);
}

static void t_kv_store(kn_dtype kvdt, int64_t ntok, int pt, int64_t width, int64_t tok0, int64_t col, int64_t n,
                       int64_t w)
{
    kv_case k = kv_case_new(kvdt, ntok, pt, width, tok0, col, n, w);
    tp src = mk(n, w, w + 3);
    put_rnd(&src, 2);
    ok_both(kn_kv_store(gpu, &k.g, tok0, col, src.g), kn_kv_store(cpu, &k.c, tok0, col, src.c), "kv_store", k.what);
    /* the whole pool: nothing else moved */
    cmp("kv_store", k.what, &k.s.pool, kvdt == KN_F32 && gdt == KN_F32 ? 1e-7 : 0);
    drop(&src);
    kv_case_drop(&k);
}

/* kn_kv_store_batch: nb streams of T tokens each, every one its own run of the pool's (shuffled)
 * pages, R rows a stream stored at different tokens; the whole pool compared */
static void t_kv_store_batch(kn_dtype kvdt, int nb, int64_t T, int pt, int64_t width, int64_t col, int64_t R, int64_t w)
{
    char what[128];
    snprintf(what, sizeof what, "%d streams of %lld tokens, pt%d width%lld, %lld rows at cols %lld..%lld [%s]", nb,
             (long long)T, pt, (long long)width, (long long)R, (long long)col, (long long)(col + w),
             kn_dtype_name(kvdt));
    kvsrc s = make_kv(kvdt, nb * T, pt, width);
    kn_kv kg[8], kc[8];
    int64_t tok0[8];
    for (int b = 0; b < nb; b++) {
        kg[b] = kv_of(&s, &s.pool, 1, T, pt);
        kc[b] = kv_of(&s, &s.pool, 0, T, pt);
        kg[b].pages = kc[b].pages = s.pages + (int64_t)b * (T / pt);
        kg[b].kv_heads = kc[b].kv_heads = 1;
        kg[b].dk = kc[b].dk = kg[b].dv = kc[b].dv = 1;
        tok0[b] = (int64_t)(b * 7) % (T - R + 1);
    }
    tp src = mk(nb * R, w, w + 3);
    put_rnd(&src, 2);
    ok_both(kn_kv_store_batch(gpu, kg, tok0, nb, col, src.g), kn_kv_store_batch(cpu, kc, tok0, nb, col, src.c),
            "kv_store_batch", what);
    cmp("kv_store_batch", what, &s.pool, kvdt == KN_F32 && gdt == KN_F32 ? 1e-7 : 0);
    drop(&src);
    drop(&s.pool);
    free(s.pages);
}

/* kn_kv_load: rows of a paged (or contiguous) pool back into a tensor */
static void t_kv_load(kn_dtype kvdt, int64_t ntok, int pt, int64_t width, int64_t tok0, int64_t col, int64_t n, int64_t w)
{
    kv_case k = kv_case_new(kvdt, ntok, pt, width, tok0, col, n, w);
    tp dst = mk(n, w, w + 8);
    ok_both(kn_kv_load(gpu, dst.g, &k.g, tok0, col), kn_kv_load(cpu, dst.c, &k.c, tok0, col), "kv_load", k.what);
    cmp("kv_load", k.what, &dst, kvdt == KN_F32 && gdt == KN_F32 ? 1e-7 : 0);
    drop(&dst);
    kv_case_drop(&k);
}

/* kn_download_rgb8: the device's bytes equal the host's, every one (values around and outside
 * [0, 1], the rounding ties, a NaN; a strided view) */
static void t_download_rgb8(int frames, int64_t hw, int64_t ld)
{
    char what[96];
    snprintf(what, sizeof what, "%d frames of %lld samples (ld %lld)", frames, (long long)hw, (long long)ld);
    tp t = mk(3 * (int64_t)frames, hw, ld);
    size_t n = (size_t)(3 * frames * hw);
    float *h = rnd(n, 0.6f);
    for (size_t i = 0; i < n; i++)
        h[i] += 0.5f; /* -0.1 .. 1.1 */
    const float edge[] = {0.0f, 1.0f, 0.5f / 255.0f, 1.5f / 255.0f, 127.5f / 255.0f, -0.0f, 2.0f, -1.0f, NAN};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0] && i < n; i++)
        h[i * 7 % n] = edge[i];
    put(&t, h);
    uint8_t *a = malloc(n), *r = malloc(n);
    ok_both(kn_download_rgb8(gpu, t.g, frames, a), kn_download_rgb8(cpu, t.c, frames, r), "download_rgb8", what);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff += a[i] != r[i];
    CHECK(diff == 0, "download_rgb8 %s: %zu of %zu bytes differ from the CPU's", what, diff, n);
    if (hw > 56) /* the edges sit in frame 0's R plane at samples 7i: 0, 1, ..., 2 (42), -1 (49), NaN (56) */
        CHECK(r[0] == 0 && r[3 * 7] == 255 && r[3 * 42] == 255 && r[3 * 49] == 0 && r[3 * 56] == 0,
              "download_rgb8 %s: by hand: 0 -> %d, 1 -> %d, 2 -> %d, -1 -> %d, NaN -> %d", what, r[0], r[21],
              r[126], r[147], r[168]);
    free(h), free(a), free(r);
    drop(&t);
}

static void attention_suite(void)
{
    const attn_case cs[] = {
        {7, 4, 4, 16, 16, 37, 8, KN_BF16, 0},         /* tiny MHA */
        {33, 4, 1, 32, 24, 100, 6, KN_BF16, 0},       /* tiny MLA: dk = 24 + 8, dv = 24 */
        {257, 2, 2, 128, 128, 1000, 64, KN_BF16, 1},  /* wan MHA head */
        {130, 3, 1, 224, 160, 700, 50, KN_BF16, 0},   /* wan MLA: d_c 160 + d_r 64 */
        {65, 4, 4, 64, 64, 512, 0, KN_BF16, 1},       /* cross-attention: contiguous */
        {1, 1, 1, 256, 256, 1, 4, KN_BF16, 0},        /* one query, one key */
        {64, 2, 1, 128, 128, 5000, 128, KN_BF16, 1},  /* many tokens, MQA */
        {19, 6, 2, 64, 32, 300, 16, KN_BF16, 0},      /* GQA */
        {100, 3, 3, 192, 128, 390, 130, KN_BF16, 0},  /* MLA rebuilt per head: dh 128 + d_r 64 */
        {33, 4, 4, 16, 16, 37, 8, KN_F32, 0},
        {130, 3, 1, 224, 160, 700, 50, KN_F32, 0},
        {65, 4, 4, 64, 64, 512, 0, KN_F32, 0},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        t_attention(cs[i]);
    attention_batch_suite();
}

static void linear_suite(void)
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 3; k++)
                if ((i + j + k) % 2 == 0 || ROWS[i] == 257)
                    t_linear(ROWS[i], COLS[j], COLS[k], (i + k) % 2, (i + j) % 2);
    t_linear(64, 1536, 130, 1, 0);
    t_linear(300, 130, 1536, 1, 1);
    t_linear(7, 18, 6, 1, 0);
    t_linear_gelu(4680, 1536, 8960, 1); /* wan's FFN */
    t_linear_gelu(1170, 1536, 8960, 1);
    t_linear_gelu(33, 64, 130, 1);
    t_linear_gelu(7, 18, 6, 1); /* odd sizes: the unfused path */
    t_linear_gelu(33, 64, 128, 0);
}

static void op_suite(void)
{
    linear_suite();
    for (int md = 0; md < 2; md++) {
        t_heads(7, 3, 6, 18, (kn_heads_mode)md);
        t_heads(257, 12, 128, 160, (kn_heads_mode)md);
        t_heads(1, 1, 130, 6, (kn_heads_mode)md);
        t_heads(33, 4, 16, 24, (kn_heads_mode)md);
    }
    for (int op = 0; op < E_N; op++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 3; j++)
                t_elem(op, ROWS[i], COLS[j], (i + j) % 2 ? 3 : 0, (i + j + op) % 3 == 0 && !NO_ALIAS(op));
    t_elem(E_LN, 64, 1536, 0, 1);
    t_elem(E_RMS, 64, 1536, 0, 0);
    /* columns a multiple of 8 with 16-byte aligned rows: the vectorised bf16 path (8 values a
     * thread), in place and strided */
    for (int op = 0; op < E_N; op++) {
        t_elem(op, 33, 64, 0, !NO_ALIAS(op));
        t_elem(op, 257, 1536, 8, 0);
    }
    /* the norms' one-pass kernels: a warp a row with lanes left idle (200 = 25 vectors), every
     * lane full (2048), and a block a row past 2048 columns */
    int norms[4] = {E_LN, E_LN_AFF, E_RMS, E_LNMOD};
    for (int i = 0; i < 4; i++) {
        t_elem(norms[i], 45, 200, 0, i % 2);
        t_elem(norms[i], 19, 2048, 16, 0);
        t_elem(norms[i], 21, 4096, 0, i % 2);
    }
    kn_dtype dts[3] = {KN_F32, KN_BF16, KN_F16};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            t_copy(dts[a], dts[b], a == b ? 33 : 7, 130);
    t_rope(1, 6, 0, 1, 1, 1);
    t_rope(4, 16, 3, 3, 2, 3);
    t_rope(2, 128, 7, 2, 5, 7);
    t_rope(12, 64, 1000, 1, 3, 4); /* MLA d_r 64 over many heads, a far frame */
    t_rope(3, 18, 2, 2, 3, 5);
    t_rope_table(1, 6, 1, 0, 1, 1, 1, 0);
    t_rope_table(3, 18, 2, 2, 2, 3, 5, 1);  /* not a multiple of 8: the two-pass path */
    t_rope_table(12, 128, 8, 5, 3, 15, 26, 0); /* per-head wan shape, a batch of 8 previews */
    t_rope_table(12, 64, 3, 1000, 3, 4, 6, 1); /* MLA q_r: d_r 64, far frames, strided */
    t_rope_table(1, 64, 4, 20, 3, 3, 4, 0);    /* MLA k_r: one head */
    t_rope_table(24, 128, 2, 3, 3, 2, 3, 0);   /* 3072 columns: the block-a-row kernel */
    t_timestep(1, 32);
    t_timestep(7, 256);
    t_timestep(70, 18); /* more than 64 values: two launches */
    t_patch(4, 3, 4, 6);
    t_patch(3, 2, 6, 10);
    t_patch(16, 1, 2, 2);
    t_conv(3, 5, 7, 9, 1);
    t_conv(16, 16, 12, 10, 0);
    t_conv(1, 1, 1, 1, 1);
    t_conv(32, 12, 9, 33, 1);
    t_upsample(3, 5, 7);
    t_upsample(1, 1, 1);
    t_upsample(16, 12, 10);
    t_kv_store(KN_BF16, 100, 6, 32, 40, 0, 24, 24);  /* MLA: c at column 0 */
    t_kv_store(KN_BF16, 100, 6, 32, 40, 24, 24, 8);  /* MLA: k_r at column d_c */
    t_kv_store(KN_F32, 1000, 64, 256, 1, 128, 777, 128);
    t_kv_store(KN_BF16, 50, 0, 64, 3, 5, 30, 18); /* contiguous */
    t_kv_store_batch(KN_BF16, 8, 120, 6, 64, 0, 30, 32);  /* per-head k: one launch for 8 streams */
    t_download_rgb8(12, 2501, 2501);
    t_download_rgb8(3, 64, 70);
    t_kv_store_batch(KN_BF16, 3, 100, 10, 232, 0, 45, 224); /* MLA [c | k_r] */
    t_kv_store_batch(KN_BF16, 2, 60, 6, 64, 5, 20, 18);  /* odd column: stream by stream */
    t_kv_store_batch(KN_F32, 4, 60, 6, 64, 8, 20, 16);   /* f32 pool: stream by stream */
    t_kv_load(KN_BF16, 100, 6, 32, 0, 0, 100, 32);   /* MLA: a whole window of latent rows */
    t_kv_load(KN_BF16, 2730, 390, 224, 0, 0, 2730, 224); /* wan MLA at 240x416: 7 pages of a frame */
    t_kv_load(KN_BF16, 100, 6, 32, 40, 24, 24, 8);
    t_kv_load(KN_F32, 1000, 64, 256, 1, 128, 777, 128);
    t_kv_load(KN_BF16, 50, 0, 64, 3, 5, 30, 18); /* contiguous, odd columns */
    attention_suite();
}

/* ---- whole generations ------------------------------------------------------------------------------- */

/* prompts: any text for the tiny-test weights; for the bundled models one they were trained on */
static const char FOX[] = "a red fox runs through the snow";
static const char DEMO[] = "a red square moving left on a white background";

/* wfile: the weights, relative to the source tree (the tiny-test goldens' weights, or a bundled
 * model under models/) */
static void engine_parity(const char *preset, const char *wfile, const char *prompt, double tol)
{
    char path[1024], err[512];
    const char *src = getenv("VMLA_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/%s", src ? src : ".", wfile);
    eng_config c;
    if (eng_config_preset(&c, preset, err, sizeof err)) {
        CHECK(0, "preset %s: %s", preset, err);
        return;
    }
    eng_engine_t *e[2] = {NULL, NULL};
    eng_stream_t *s[2] = {NULL, NULL};
    kn_backend_t *bes[2] = {gpu, cpu};
    for (int i = 0; i < 2; i++) {
        eng_options o;
        eng_options_default(&o);
        o.weights = path;
        o.kv_dtype = i == 0 ? gdt : KN_F32;
        CHECK(eng_open(&e[i], bes[i], &c, &o, err, sizeof err) == ENG_OK, "engine %s on %s: %s", preset,
              kn_backend_name(bes[i]), err);
        if (e[i])
            CHECK(eng_stream_open(e[i], 7, prompt, &s[i]) == ENG_OK, "stream open");
    }
    if (!s[0] || !s[1])
        goto done;
    size_t nlat = (size_t)c.in_ch * c.chunk_frames * c.latent_h * c.latent_w;
    float *lat[2] = {malloc(sizeof(float) * nlat), malloc(sizeof(float) * nlat)};
    double worst = 0;
    int worst_px = 0;
    for (int ch = 0; ch < 3; ch++) {
        const eng_frames *f[2];
        for (int i = 0; i < 2; i++) {
            CHECK(eng_generate_chunk(e[i], &s[i], 1) == ENG_OK, "%s chunk %d on %s: %s", preset, ch,
                  kn_backend_name(bes[i]), eng_error(e[i]));
            eng_stream_last_latent(s[i], lat[i], nlat);
            f[i] = eng_stream_take_frames(s[i]);
        }
        double num = 0, den = 0;
        int bad = 0;
        for (size_t k = 0; k < nlat; k++) {
            if (!isfinite(lat[0][k]))
                bad = 1;
            double d = (double)lat[0][k] - lat[1][k];
            num += d * d;
            den += (double)lat[1][k] * lat[1][k];
        }
        double err_l = bad ? INFINITY : sqrt(num / (den > 0 ? den : 1));
        int px = 0;
        if (f[0] && f[1] && f[0]->n_frames == f[1]->n_frames && f[0]->width == f[1]->width) {
            size_t nb = (size_t)f[0]->n_frames * f[0]->width * f[0]->height * 3;
            for (size_t k = 0; k < nb; k++) {
                int d = abs((int)f[0]->rgb[k] - (int)f[1]->rgb[k]);
                if (d > px)
                    px = d;
            }
        } else {
            CHECK(0, "%s chunk %d: frames missing or of different sizes", preset, ch);
        }
        printf("  engine %-14s %s chunk %d: latent rel err %.3g, max pixel diff %d/255\n", preset, mode, ch, err_l, px);
        if (!(err_l <= worst))
            worst = err_l;
        if (px > worst_px)
            worst_px = px;
    }
    char name[64];
    snprintf(name, sizeof name, "engine:%s", preset);
    record(name, worst);
    CHECK(worst < tol, "engine %s/%s: latent relative error %.3g over 3 chunks (tol %.2g)", preset, mode, worst, tol);
    free(lat[0]);
    free(lat[1]);
done:
    for (int i = 0; i < 2; i++) {
        if (s[i])
            eng_stream_close(s[i]);
        eng_close(e[i]);
    }
}

/* ---- the scheduler on the GPU: batched, joining, leaving, offloaded and restored = alone ---------------- */

enum { SP_NS = 3, SP_NCH = 4 };

typedef struct {
    sch_job job;
    int idx, chunks;
    float *lat[SP_NCH];
} sp_job;

static const uint64_t sp_seed[SP_NS] = {11, 12, 13};
static const char *const sp_prompt[SP_NS] = {"a blue circle", "a red square moving left", "a green star"};
static double sp_clock_v;
static double sp_clock(void) { return sp_clock_v; }

static eng_status sp_open(void *user, sch_job *j, eng_stream_t **out)
{
    sp_job *t = j->user;
    return eng_stream_open(user, sp_seed[t->idx], sp_prompt[t->idx], out);
}

static void scheduled_parity(const char *preset, const char *wname, double tol)
{
    char path[1024], err[512];
    const char *src = getenv("VMLA_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/golden/%s", src ? src : ".", wname);
    eng_config c;
    if (eng_config_preset(&c, preset, err, sizeof err))
        return;
    size_t nlat = (size_t)c.in_ch * c.chunk_frames * c.latent_h * c.latent_w;
    eng_options o;
    eng_options_default(&o);
    o.weights = path;
    o.kv_dtype = gdt;
    o.max_batch = 3;
    o.max_streams = 3;
    eng_engine_t *e = NULL;
    if (eng_open(&e, gpu, &c, &o, err, sizeof err) != ENG_OK) {
        CHECK(0, "scheduled %s: %s", preset, err);
        return;
    }
    float *ref = malloc(sizeof(float) * nlat * SP_NS * SP_NCH), *buf = malloc(sizeof(float) * nlat * SP_NS * SP_NCH);
    for (int k = 0; k < SP_NS; k++) { /* each alone */
        eng_stream_t *s = NULL;
        CHECK(eng_stream_open(e, sp_seed[k], sp_prompt[k], &s) == ENG_OK, "open");
        for (int ch = 0; ch < SP_NCH && s; ch++) {
            CHECK(eng_generate_chunk(e, &s, 1) == ENG_OK, "alone: %s", eng_error(e));
            eng_stream_last_latent(s, ref + ((size_t)k * SP_NCH + ch) * nlat, nlat);
        }
        eng_stream_close(s);
    }
    eng_pool_stats ps;
    eng_pool_get_stats(e, &ps);
    eng_close(e);
    o.max_streams = 2; /* two slots and a host tier for one stream: the third forces an offload */
    o.host_kv_bytes = ps.page_bytes * (size_t)ps.pages_per_stream;
    if (eng_open(&e, gpu, &c, &o, err, sizeof err) != ENG_OK) {
        CHECK(0, "scheduled %s: %s", preset, err);
        free(ref);
        free(buf);
        return;
    }
    sch_config sc;
    sch_config_default(&sc);
    sc.max_batch = 3;
    sc.offload_after = -1;
    eng_sched_config(e, &sc);
    sch_t *s = sch_new(&sc, err, sizeof err);
    sp_job t[SP_NS];
    memset(t, 0, sizeof t);
    for (int k = 0; k < SP_NS; k++) {
        t[k].idx = k;
        for (int ch = 0; ch < SP_NCH; ch++)
            t[k].lat[ch] = buf + ((size_t)k * SP_NCH + ch) * nlat;
        sch_job_init(&t[k].job, (uint64_t)k, &t[k]);
    }
    sp_clock_v = 0;
    sch_submit(s, &t[0].job, 0);
    sch_submit(s, &t[1].job, 0);
    int c_in = 0, a_back = 0, offloads = 0, restores = 0;
    for (int guard = 0; guard < 5000; guard++) {
        if (t[0].chunks == 2 && !c_in) { /* A pauses, C arrives: A's KV goes to the host tier */
            sch_pause(s, &t[0].job, sp_clock_v);
            sch_submit(s, &t[2].job, sp_clock_v);
            c_in = 1;
        }
        if (c_in && !a_back && t[0].job.state == SCH_OFFLOADED && t[2].job.state == SCH_RUNNING) {
            sch_resume(s, &t[0].job, sp_clock_v);
            a_back = 1;
        }
        for (int k = 0; k < SP_NS; k++)
            if (t[k].chunks == SP_NCH && t[k].job.state != SCH_DONE && !t[k].job.want_stop)
                sch_stop(s, &t[k].job);
        sch_work w;
        sch_next(s, sp_clock_v, &w);
        if (w.kind == SCH_IDLE) {
            if (isinf(w.wake_at))
                break;
            sp_clock_v = w.wake_at;
            continue;
        }
        sch_result res[SCH_MAX_BATCH];
        double dt;
        eng_sched_execute(e, &w, sp_open, e, sp_clock, res, &dt);
        if (w.kind == SCH_STEP)
            sp_clock_v += dt = 0.001 * w.n;
        offloads += w.kind == SCH_OFFLOAD && res[0] == SCH_OK;
        restores += w.kind == SCH_RESTORE && res[0] == SCH_OK;
        for (int i = 0; i < w.n; i++) {
            sp_job *tj = w.jobs[i]->user;
            CHECK(res[i] == SCH_OK, "scheduled %s: work %d for stream %d: %s", preset, w.kind, tj->idx,
                  w.jobs[i]->stream ? eng_stream_error(w.jobs[i]->stream) : eng_error(e));
            if (w.kind == SCH_STEP && eng_stream_take_frames(w.jobs[i]->stream) && tj->chunks < SP_NCH)
                eng_stream_last_latent(w.jobs[i]->stream, tj->lat[tj->chunks++], nlat);
        }
        sch_done(s, &w, res, sp_clock_v, dt);
    }
    double worst = 0;
    for (int k = 0; k < SP_NS; k++) {
        CHECK(t[k].chunks == SP_NCH, "scheduled %s: stream %d made %d chunks", preset, k, t[k].chunks);
        for (int ch = 0; ch < t[k].chunks; ch++) {
            const float *a = t[k].lat[ch], *b = ref + ((size_t)k * SP_NCH + ch) * nlat;
            double num = 0, den = 0;
            for (size_t i = 0; i < nlat; i++) {
                double d = (double)a[i] - b[i];
                num += isfinite(a[i]) ? d * d : INFINITY;
                den += (double)b[i] * b[i];
            }
            double r = sqrt(num / (den > 0 ? den : 1));
            if (!(r <= worst))
                worst = r;
        }
    }
    printf("  scheduled %-14s %s: %d streams x %d chunks, batched / joined / left / offloaded (%d) and restored (%d) "
           "vs alone: latent rel err %.3g\n",
           preset, mode, SP_NS, SP_NCH, offloads, restores, worst);
    char name[64];
    snprintf(name, sizeof name, "scheduled:%s", preset);
    record(name, worst);
    CHECK(offloads == 1 && restores == 1, "scheduled %s: one offload (%d) and one restore (%d) on the GPU", preset,
          offloads, restores);
    CHECK(worst < tol, "scheduled %s/%s: same output as alone (%.3g, tol %.2g)", preset, mode, worst, tol);
    eng_pool_get_stats(e, &ps);
    CHECK(ps.free_pages == ps.pages && ps.free_host_pages == ps.host_pages, "scheduled %s: every page back", preset);
    sch_free(s);
    eng_close(e);
    free(ref);
    free(buf);
}

/* ---- main ---------------------------------------------------------------------------------------- */

static kn_backend_t *open_gpu(const char *dtype, const char *attn, int *skip)
{
    char err[512] = "";
    setenv("VMLA_CUDA_DTYPE", dtype, 1);
    if (attn)
        setenv("VMLA_CUDA_ATTN", attn, 1);
    else
        unsetenv("VMLA_CUDA_ATTN");
    kn_backend_t *b = kn_cuda_backend_new(0, err, sizeof err);
    if (!b) {
        if (!strncmp(err, "no CUDA device", 14) || strstr(err, "no CUDA backend")) {
            *skip = 1;
            printf("skip: no CUDA device (%s)\n", err);
        } else {
            CHECK(0, "kn_cuda_backend_new: %s", err);
        }
    }
    return b;
}

int main(void)
{
    int skip = 0;
    kn_backend_t *g32 = open_gpu("f32", NULL, &skip);
    if (skip)
        return 0;
    if (!g32)
        return check_done();
    cpu = kn_cpu_backend_new();
    if (!cpu) {
        fprintf(stderr, "test_backend: no CPU backend\n");
        return 2;
    }

    gpu = g32;
    gdt = KN_F32;
    mode = "f32";
    printf("cuda backend, fp32 mode (attention: %s)\n", kn_cuda_attention_variant(gpu));
    op_suite();
    engine_parity("tiny-test", "tests/golden/tiny-mha.safetensors", FOX, ENGINE_F32_TOL);
    engine_parity("tiny-test-mla", "tests/golden/tiny-mla.safetensors", FOX, ENGINE_F32_TOL);
    /* the bundled models (6 layers, 6-step sampler): what vmla-gen --device cuda runs */
    engine_parity("tiny", "models/vmla-tiny.safetensors", DEMO, ENGINE_F32_TOL);
    engine_parity("tiny-mha", "models/vmla-tiny-mha.safetensors", DEMO, ENGINE_F32_TOL);
    scheduled_parity("tiny-test", "tiny-mha.safetensors", ENGINE_F32_TOL);
    scheduled_parity("tiny-test-mla", "tiny-mla.safetensors", ENGINE_F32_TOL);
    kn_backend_free(g32);

    gpu = open_gpu("bf16", NULL, &skip);
    if (gpu) {
        gdt = KN_BF16;
        mode = "bf16";
        CHECK(kn_backend_compute_dtype(gpu) == KN_BF16, "default mode is bf16");
        printf("cuda backend, bf16 mode (attention: %s)\n", kn_cuda_attention_variant(gpu));
        op_suite();
        engine_parity("tiny-test", "tests/golden/tiny-mha.safetensors", FOX, ENGINE_BF16_TOL);
        engine_parity("tiny-test-mla", "tests/golden/tiny-mla.safetensors", FOX, ENGINE_BF16_TOL);
        /* the bundled models (6 layers, 6-step sampler): what vmla-gen --device cuda runs */
        engine_parity("tiny", "models/vmla-tiny.safetensors", DEMO, ENGINE_BF16_TOL);
        engine_parity("tiny-mha", "models/vmla-tiny-mha.safetensors", DEMO, ENGINE_BF16_TOL);
        scheduled_parity("tiny-test", "tiny-mha.safetensors", ENGINE_BF16_TOL);
        scheduled_parity("tiny-test-mla", "tiny-mla.safetensors", ENGINE_BF16_TOL);
        char info[512];
        kn_cuda_cudnn_info(gpu, info, sizeof info);
        printf("  %s\n", info);
        kn_backend_free(gpu);
    }

    /* the other variants: the simple attention kernel with the bias added by broadcast (no
     * cublasLt), then the first tensor-core attention kernel */
    setenv("VMLA_CUDA_NO_LT", "1", 1);
    gpu = open_gpu("bf16", "simple", &skip);
    unsetenv("VMLA_CUDA_NO_LT");
    if (gpu) {
        mode = "bf16-simple-nolt";
        printf("cuda backend, bf16 mode (attention: %s, bias by broadcast)\n", kn_cuda_attention_variant(gpu));
        attention_suite();
        linear_suite();
        kn_backend_free(gpu);
    }
    gpu = open_gpu("bf16", "tc-sync", &skip);
    if (gpu) {
        mode = "bf16-tc-sync";
        printf("cuda backend, bf16 mode (attention: %s)\n", kn_cuda_attention_variant(gpu));
        attention_suite();
        kn_backend_free(gpu);
    }
    /* our tensor-core kernel by name (the default is cuDNN where it loads), then cuDNN with the
     * pages handed over as a page table, then cuDNN's composite graph form */
    gpu = open_gpu("bf16", "tc", &skip);
    if (gpu) {
        mode = "bf16-tc";
        printf("cuda backend, bf16 mode (attention: %s)\n", kn_cuda_attention_variant(gpu));
        attention_suite();
        kn_backend_free(gpu);
    }
    const char *dnn_modes[][2] = {{"cudnn-paged", NULL}, {"cudnn", "composite"}};
    for (int i = 0; i < 2; i++) {
        if (dnn_modes[i][1])
            setenv("VMLA_CUDNN_SDPA", dnn_modes[i][1], 1);
        gpu = open_gpu("bf16", dnn_modes[i][0], &skip);
        unsetenv("VMLA_CUDNN_SDPA");
        if (!gpu)
            continue;
        char info[512];
        if (strncmp(kn_cuda_attention_variant(gpu), "cudnn", 5)) {
            kn_cuda_cudnn_info(gpu, info, sizeof info);
            printf("cuda backend: no cuDNN here (%s): %s pass skipped\n", info, dnn_modes[i][0]);
            kn_backend_free(gpu);
            continue;
        }
        mode = i == 0 ? "bf16-cudnn-paged" : "bf16-cudnn-composite";
        printf("cuda backend, bf16 mode (attention: %s%s%s)\n", kn_cuda_attention_variant(gpu),
               dnn_modes[i][1] ? ", form " : "", dnn_modes[i][1] ? dnn_modes[i][1] : "");
        attention_suite();
        kn_cuda_cudnn_info(gpu, info, sizeof info);
        printf("  %s\n", info);
        kn_backend_free(gpu);
    }

    printf("\n%-36s %12s %6s\n", "op/mode", "worst err", "cases");
    for (int i = 0; i < nstats; i++)
        printf("%-36s %12.3g %6d\n", stats[i].name, stats[i].worst, stats[i].cases);
    kn_backend_free(cpu);
    return check_done();
}
