/* kernels/cpu_ops.c — the fp32 reference implementation of every op.
 *
 * This file defines the math of the backend interface: every other backend is tested against it
 * op by op (tests/kernels/). It favours clarity, with OpenBLAS for the matrix products and a few
 * loop orders chosen so the bundled model runs in real time on a small CPU. Accumulations that
 * decide accuracy (norm statistics, softmax sums) are done in double.
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu_internal.h"

#define F32_ONLY(t, name)                                                                         \
    do {                                                                                          \
        if ((t).dtype != KN_F32)                                                                  \
            return kn_fail(be, KN_ERR_UNSUPPORTED, "cpu %s: %s tensors are not supported", name,   \
                           kn_dtype_name((t).dtype));                                             \
    } while (0)

static inline float *rowp(kn_tensor t, int64_t r)
{
    return (float *)((char *)t.buf->ptr + t.off) + r * t.ld;
}
static inline float *vecp(kn_tensor t) { return (float *)((char *)t.buf->ptr + t.off); }

/* ---- matrix products -------------------------------------------------------------------------- */

kn_status cpu_linear(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b)
{
    F32_ONLY(y, "linear");
    F32_ONLY(x, "linear");
    F32_ONLY(w, "linear");
    if (b)
        F32_ONLY(*b, "linear");
    if (y.rows == 0 || y.cols == 0)
        return KN_OK;
    float beta = 0.0f;
    if (b) {
        const float *bv = vecp(*b);
        for (int64_t r = 0; r < y.rows; r++)
            memcpy(rowp(y, r), bv, (size_t)y.cols * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)x.rows, (int)w.rows, (int)x.cols, 1.0f,
                rowp(x, 0), (int)x.ld, rowp(w, 0), (int)w.ld, beta, rowp(y, 0), (int)y.ld);
    return KN_OK;
}

kn_status cpu_matmul_heads(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, int heads,
                           kn_heads_mode mode)
{
    F32_ONLY(y, "matmul_heads");
    F32_ONLY(x, "matmul_heads");
    F32_ONLY(w, "matmul_heads");
    int64_t a = x.cols / heads, bb = y.cols / heads;
    if (y.rows == 0)
        return KN_OK;
    for (int h = 0; h < heads; h++) {
        const float *xh = rowp(x, 0) + h * a;
        float *yh = rowp(y, 0) + h * bb;
        if (mode == KN_HEADS_XW) /* y_h [N, b] = x_h [N, a] @ w[h*a .. +a, :] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)x.rows, (int)bb, (int)a, 1.0f,
                        xh, (int)x.ld, rowp(w, h * a), (int)w.ld, 0.0f, yh, (int)y.ld);
        else /* y_h [N, b] = x_h [N, a] @ w[h*b .. +b, :]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)x.rows, (int)bb, (int)a, 1.0f,
                        xh, (int)x.ld, rowp(w, h * bb), (int)w.ld, 0.0f, yh, (int)y.ld);
    }
    return KN_OK;
}

/* ---- norms and elementwise -------------------------------------------------------------------- */

kn_status cpu_layernorm(kn_backend_t *be, kn_tensor y, kn_tensor x, const kn_tensor *w,
                        const kn_tensor *b, float eps)
{
    F32_ONLY(y, "layernorm");
    F32_ONLY(x, "layernorm");
    const float *wv = w ? vecp(*w) : NULL, *bv = b ? vecp(*b) : NULL;
    int64_t n = x.cols;
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        float *yr = rowp(y, r);
        double s = 0, ss = 0;
        for (int64_t c = 0; c < n; c++)
            s += xr[c];
        double mean = s / (double)n;
        for (int64_t c = 0; c < n; c++) {
            double d = xr[c] - mean;
            ss += d * d;
        }
        double inv = 1.0 / sqrt(ss / (double)n + eps);
        for (int64_t c = 0; c < n; c++) {
            float v = (float)((xr[c] - mean) * inv);
            if (wv)
                v *= wv[c];
            if (bv)
                v += bv[c];
            yr[c] = v;
        }
    }
    return KN_OK;
}

kn_status cpu_rmsnorm(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps)
{
    F32_ONLY(y, "rmsnorm");
    F32_ONLY(x, "rmsnorm");
    const float *wv = vecp(w);
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        float *yr = rowp(y, r);
        double ss = 0;
        for (int64_t c = 0; c < x.cols; c++)
            ss += (double)xr[c] * xr[c];
        float inv = (float)(1.0 / sqrt(ss / (double)x.cols + eps));
        for (int64_t c = 0; c < x.cols; c++)
            yr[c] = xr[c] * inv * wv[c];
    }
    return KN_OK;
}

/* row g of a per-group vector (backend.h) for row r of x */
static inline const float *grp(kn_tensor v, int64_t r, int64_t rows)
{
    return rowp(v, r / (rows / v.rows));
}

kn_status cpu_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift, kn_tensor scale)
{
    F32_ONLY(y, "modulate");
    F32_ONLY(x, "modulate");
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r), *sh = grp(shift, r, x.rows), *sc = grp(scale, r, x.rows);
        float *yr = rowp(y, r);
        for (int64_t c = 0; c < x.cols; c++)
            yr[c] = xr[c] * (1.0f + sc[c]) + sh[c];
    }
    return KN_OK;
}

kn_status cpu_layernorm_modulate(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor shift,
                                 kn_tensor scale, float eps)
{
    /* the same values as kn_layernorm then kn_modulate: the normalised value is rounded to f32
     * before the modulation in both */
    kn_status st = cpu_layernorm(be, y, x, NULL, NULL, eps);
    return st == KN_OK ? cpu_modulate(be, y, y, shift, scale) : st;
}

kn_status cpu_gate_add(kn_backend_t *be, kn_tensor x, kn_tensor y, const kn_tensor *gate)
{
    F32_ONLY(y, "gate_add");
    F32_ONLY(x, "gate_add");
    for (int64_t r = 0; r < x.rows; r++) {
        float *xr = rowp(x, r);
        const float *yr = rowp(y, r), *g = gate ? grp(*gate, r, x.rows) : NULL;
        for (int64_t c = 0; c < x.cols; c++)
            xr[c] += g ? yr[c] * g[c] : yr[c];
    }
    return KN_OK;
}

kn_status cpu_axpby(kn_backend_t *be, kn_tensor y, float a, kn_tensor x, float b, const kn_tensor *z)
{
    F32_ONLY(y, "axpby");
    F32_ONLY(x, "axpby");
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        const float *zr = z ? (z->rows == x.rows ? rowp(*z, r) : grp(*z, r, x.rows)) : NULL;
        float *yr = rowp(y, r);
        for (int64_t c = 0; c < x.cols; c++)
            yr[c] = zr ? a * xr[c] + b * zr[c] : a * xr[c];
    }
    return KN_OK;
}

kn_status cpu_gelu_tanh(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    F32_ONLY(y, "gelu");
    F32_ONLY(x, "gelu");
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        float *yr = rowp(y, r);
        for (int64_t c = 0; c < x.cols; c++) {
            float u = xr[c];
            yr[c] = 0.5f * u * (1.0f + tanhf(k * (u + 0.044715f * u * u * u)));
        }
    }
    return KN_OK;
}

kn_status cpu_silu(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    F32_ONLY(y, "silu");
    F32_ONLY(x, "silu");
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        float *yr = rowp(y, r);
        for (int64_t c = 0; c < x.cols; c++)
            yr[c] = xr[c] / (1.0f + expf(-xr[c]));
    }
    return KN_OK;
}

kn_status cpu_clamp(kn_backend_t *be, kn_tensor y, kn_tensor x, float lo, float hi)
{
    F32_ONLY(y, "clamp");
    F32_ONLY(x, "clamp");
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        float *yr = rowp(y, r);
        for (int64_t c = 0; c < x.cols; c++)
            yr[c] = xr[c] < lo ? lo : xr[c] > hi ? hi : xr[c];
    }
    return KN_OK;
}

kn_status cpu_row_affine(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor scale, kn_tensor shift)
{
    F32_ONLY(y, "row_affine");
    F32_ONLY(x, "row_affine");
    const float *sc = vecp(scale), *sh = vecp(shift);
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        float *yr = rowp(y, r);
        for (int64_t c = 0; c < x.cols; c++)
            yr[c] = xr[c] * sc[r] + sh[r];
    }
    return KN_OK;
}

kn_status cpu_copy(kn_backend_t *be, kn_tensor y, kn_tensor x)
{
    size_t ey = kn_dtype_size(y.dtype), ex = kn_dtype_size(x.dtype);
    for (int64_t r = 0; r < x.rows; r++) {
        const char *xr = (const char *)x.buf->ptr + x.off + (size_t)(r * x.ld) * ex;
        char *yr = (char *)y.buf->ptr + y.off + (size_t)(r * y.ld) * ey;
        if (x.dtype == y.dtype)
            memmove(yr, xr, (size_t)x.cols * ex);
        else
            for (int64_t c = 0; c < x.cols; c++)
                kn_store(yr, y.dtype, (size_t)c, kn_load(xr, x.dtype, (size_t)c));
    }
    return KN_OK;
}

/* ---- 3D RoPE ----------------------------------------------------------------------------------
 * A head of width d holds d/2 complex numbers (x[2j], x[2j+1]). With dt = d - 4*(d/6) and
 * ds = 2*(d/6): pairs [0, dt/2) rotate by the frame index with freq theta^(-2k/dt), the next ds/2
 * by the row, the last ds/2 by the column, with freq theta^(-2k/ds). Angles and the product in
 * float64, as Wan does. */
/* The angle frequency of each of the d/2 pairs (docs/MODEL.md §4) into freq[512]: the first dt/2
 * pairs turn with the frame index, the next ds/2 with the row, the last ds/2 with the column.
 * KN_ERR_UNSUPPORTED (named after op) for heads over 1024 wide. */
static kn_status rope_freqs(kn_backend_t *be, const char *op, double *freq, int d, double theta, int *pt, int *ps)
{
    int half = d / 2, dt = d - 4 * (d / 6), ds = 2 * (d / 6);
    if (half > 512)
        return kn_fail(be, KN_ERR_UNSUPPORTED, "%s: head width %d over 1024", op, d);
    *pt = dt / 2;
    *ps = ds / 2;
    for (int j = 0; j < half; j++) {
        if (j < *pt)
            freq[j] = pow(theta, -2.0 * j / dt);
        else if (j < *pt + *ps)
            freq[j] = pow(theta, -2.0 * (j - *pt) / ds);
        else
            freq[j] = pow(theta, -2.0 * (j - *pt - *ps) / ds);
    }
    return KN_OK;
}

/* The position pair j turns with: the frame, the row or the column. */
static inline double rope_pos(int j, int pt, int ps, int f, int yy, int xx)
{
    return j < pt ? (double)f : j < pt + ps ? (double)yy : (double)xx;
}

kn_status cpu_rope3d(kn_backend_t *be, kn_tensor x, int heads, int f0, int nf, int gh, int gw,
                     double theta)
{
    F32_ONLY(x, "rope3d");
    int d = (int)(x.cols / heads), half = d / 2, pt, ps;
    double freq[512];
    kn_status st = rope_freqs(be, "rope3d", freq, d, theta, &pt, &ps);
    if (st != KN_OK)
        return st;
    int64_t n = 0;
    for (int f = 0; f < nf; f++)
        for (int yy = 0; yy < gh; yy++)
            for (int xx = 0; xx < gw; xx++, n++) {
                double cs[512], sn[512];
                for (int j = 0; j < half; j++) {
                    double ang = rope_pos(j, pt, ps, f0 + f, yy, xx) * freq[j];
                    cs[j] = cos(ang);
                    sn[j] = sin(ang);
                }
                float *row = rowp(x, n);
                for (int h = 0; h < heads; h++) {
                    float *v = row + (int64_t)h * d;
                    for (int j = 0; j < half; j++) {
                        double a = v[2 * j], b = v[2 * j + 1];
                        v[2 * j] = (float)(a * cs[j] - b * sn[j]);
                        v[2 * j + 1] = (float)(a * sn[j] + b * cs[j]);
                    }
                }
            }
    return KN_OK;
}

kn_status cpu_rope3d_table(kn_backend_t *be, kn_tensor table, const int *f0, int n, int nf, int gh,
                           int gw, double theta)
{
    int d = (int)table.cols, half = d / 2, pt, ps;
    double freq[512];
    kn_status st = rope_freqs(be, "rope3d_table", freq, d, theta, &pt, &ps);
    if (st != KN_OK)
        return st;
    int64_t r = 0;
    for (int s = 0; s < n; s++)
        for (int f = 0; f < nf; f++)
            for (int yy = 0; yy < gh; yy++)
                for (int xx = 0; xx < gw; xx++, r++) {
                    float *row = rowp(table, r);
                    for (int j = 0; j < half; j++) {
                        double ang = rope_pos(j, pt, ps, f0[s] + f, yy, xx) * freq[j];
                        row[2 * j] = (float)cos(ang);
                        row[2 * j + 1] = (float)sin(ang);
                    }
                }
    return KN_OK;
}

kn_status cpu_rmsnorm_rope(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, float eps, int heads,
                           const kn_tensor *table)
{
    F32_ONLY(x, "rmsnorm_rope");
    F32_ONLY(y, "rmsnorm_rope");
    int64_t d = y.cols;
    float *row = cpu_scratch(be, (size_t)x.cols);
    if (!row)
        return kn_fail(be, KN_ERR_NOMEM, "rmsnorm_rope: scratch");
    const float *wv = vecp(w);
    for (int64_t r = 0; r < x.rows; r++) {
        const float *xr = rowp(x, r);
        double ss = 0; /* as cpu_rmsnorm */
        for (int64_t c = 0; c < x.cols; c++)
            ss += (double)xr[c] * xr[c];
        float inv = (float)(1.0 / sqrt(ss / (double)x.cols + eps));
        for (int64_t c = 0; c < x.cols; c++) /* the whole row first: y may be x */
            row[c] = xr[c] * inv * wv[c];
        const float *t = table ? rowp(*table, r) : NULL;
        for (int h = 0; h < heads; h++) {
            const float *v = row + (int64_t)h * d;
            float *o = rowp(y, r * heads + h);
            if (!t) {
                memcpy(o, v, (size_t)d * sizeof(float));
                continue;
            }
            for (int64_t j = 0; j < d / 2; j++) {
                double a = v[2 * j], b = v[2 * j + 1], cs = t[2 * j], sn = t[2 * j + 1];
                o[2 * j] = (float)(a * cs - b * sn);
                o[2 * j + 1] = (float)(a * sn + b * cs);
            }
        }
    }
    return KN_OK;
}

kn_status cpu_timestep_embed(kn_backend_t *be, kn_tensor y, const float *t, int n)
{
    F32_ONLY(y, "timestep_embed");
    int64_t half = y.cols / 2;
    for (int i = 0; i < n; i++) {
        float *yr = rowp(y, i);
        for (int64_t k = 0; k < half; k++) {
            double a = (double)t[i] * pow(10000.0, -(double)k / (double)half);
            yr[k] = (float)cos(a);
            yr[half + k] = (float)sin(a);
        }
    }
    return KN_OK;
}

/* ---- attention ---------------------------------------------------------------------------------
 * out = softmax(q k^T * scale) v per query head, over kv->n_tokens key rows which may be scattered
 * over pages. Keys and values are gathered (and converted to fp32) a block of ATT_TB tokens at a
 * time; for each query head, S = Q_h K_b^T is one GEMM, then each query row keeps a running max m,
 * a running sum l and its output accumulator O_h (online softmax: O_h is rescaled when m grows),
 * and O_h += P V_b is another GEMM. Nothing of size queries x keys is materialised. */
#define ATT_TB 256

static const char *kv_row(const kn_kv *kv, int64_t t)
{
    int64_t page, r;
    if (kv->pages) {
        page = kv->pages[t / kv->page_tokens];
        r = t % kv->page_tokens;
    } else {
        page = 0;
        r = t;
    }
    int64_t e = page * kv->page_stride + r * kv->row_stride;
    return (const char *)kv->buf->ptr + kv->off + (size_t)e * kn_dtype_size(kv->dtype);
}

kn_status cpu_attention(kn_backend_t *be, kn_tensor out, kn_tensor q, const kn_kv *kv, int q_heads,
                        float scale)
{
    F32_ONLY(out, "attention");
    F32_ONLY(q, "attention");
    int G = kv->kv_heads, dk = kv->dk, dv = kv->dv, group = q_heads / G;
    int64_t nq = q.rows, nt = kv->n_tokens;
    /* scratch: K block [TB][G*dk], V block [TB][G*dv], m and l per (query, head), S [nq][TB] */
    size_t need = (size_t)ATT_TB * G * (dk + dv) + 2 * (size_t)nq * q_heads + (size_t)nq * ATT_TB;
    float *s = cpu_scratch(be, need);
    if (!s)
        return kn_fail(be, KN_ERR_NOMEM, "attention: no memory for scratch");
    float *kb = s, *vb = kb + (size_t)ATT_TB * G * dk, *mm = vb + (size_t)ATT_TB * G * dv;
    float *ll = mm + (size_t)nq * q_heads, *sc = ll + (size_t)nq * q_heads;
    for (int64_t i = 0; i < nq * q_heads; i++) {
        mm[i] = -INFINITY;
        ll[i] = 0.0f;
    }
    for (int64_t i = 0; i < nq; i++)
        memset(rowp(out, i), 0, (size_t)out.cols * sizeof(float));

    for (int64_t t0 = 0; t0 < nt; t0 += ATT_TB) {
        int tb = (int)(nt - t0 < ATT_TB ? nt - t0 : ATT_TB);
        for (int j = 0; j < tb; j++) {
            const char *row = kv_row(kv, t0 + j);
            float *kr = kb + (size_t)j * G * dk, *vr = vb + (size_t)j * G * dv;
            if (kv->dtype == KN_F32) {
                memcpy(kr, (const float *)row + kv->k_off, sizeof(float) * (size_t)G * dk);
                memcpy(vr, (const float *)row + kv->v_off, sizeof(float) * (size_t)G * dv);
            } else {
                for (int c = 0; c < G * dk; c++)
                    kr[c] = kn_load(row, kv->dtype, (size_t)(kv->k_off + c));
                for (int c = 0; c < G * dv; c++)
                    vr[c] = kn_load(row, kv->dtype, (size_t)(kv->v_off + c));
            }
        }
        for (int h = 0; h < q_heads; h++) {
            int g = h / group;
            /* S [nq, tb] = Q_h [nq, dk] K_g^T, K_g [tb, dk] with row stride G*dk */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, tb, dk, scale,
                        rowp(q, 0) + (int64_t)h * dk, (int)q.ld, kb + (size_t)g * dk, G * dk, 0.0f, sc, ATT_TB);
            float *oh = rowp(out, 0) + (int64_t)h * dv;
            for (int64_t i = 0; i < nq; i++) {
                float *si = sc + i * ATT_TB, *m = &mm[i * q_heads + h], *l = &ll[i * q_heads + h];
                float bmax = -INFINITY;
                for (int j = 0; j < tb; j++)
                    bmax = si[j] > bmax ? si[j] : bmax;
                if (bmax > *m) {
                    float corr = expf(*m - bmax); /* 0 on the first block (m = -inf) */
                    *l *= corr;
                    float *o = oh + i * out.ld;
                    for (int c = 0; c < dv; c++)
                        o[c] *= corr;
                    *m = bmax;
                }
                double lsum = 0.0;
                for (int j = 0; j < tb; j++) {
                    si[j] = expf(si[j] - *m);
                    lsum += si[j];
                }
                *l += (float)lsum;
            }
            /* O_h [nq, dv] += P [nq, tb] V_g [tb, dv] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, dv, tb, 1.0f, sc, ATT_TB,
                        vb + (size_t)g * dv, G * dv, 1.0f, oh, (int)out.ld);
        }
    }
    for (int64_t i = 0; i < nq; i++) {
        float *oi = rowp(out, i);
        for (int h = 0; h < q_heads; h++) {
            float inv = 1.0f / ll[i * q_heads + h];
            for (int c = 0; c < dv; c++)
                oi[(int64_t)h * dv + c] *= inv;
        }
    }
    return KN_OK;
}

kn_status cpu_kv_store(kn_backend_t *be, const kn_kv *kv, int64_t tok0, int64_t col, kn_tensor src)
{
    F32_ONLY(src, "kv_store");
    for (int64_t r = 0; r < src.rows; r++) {
        char *dst = (char *)kv_row(kv, tok0 + r);
        const float *sr = rowp(src, r);
        for (int64_t c = 0; c < src.cols; c++)
            kn_store(dst, kv->dtype, (size_t)(col + c), sr[c]);
    }
    return KN_OK;
}

kn_status cpu_kv_load(kn_backend_t *be, kn_tensor dst, const kn_kv *kv, int64_t tok0, int64_t col)
{
    F32_ONLY(dst, "kv_load");
    for (int64_t r = 0; r < dst.rows; r++) {
        const char *src = kv_row(kv, tok0 + r);
        float *dr = rowp(dst, r);
        for (int64_t c = 0; c < dst.cols; c++)
            dr[c] = kn_load(src, kv->dtype, (size_t)(col + c));
    }
    return KN_OK;
}

/* ---- layout ----------------------------------------------------------------------------------- */

kn_status cpu_patchify(kn_backend_t *be, kn_tensor tok, kn_tensor lat, int C, int nf, int h, int w)
{
    F32_ONLY(tok, "patchify");
    F32_ONLY(lat, "patchify");
    int gh = h / 2, gw = w / 2;
    for (int c = 0; c < C; c++) {
        const float *lc = rowp(lat, c);
        for (int f = 0; f < nf; f++)
            for (int y = 0; y < gh; y++)
                for (int x = 0; x < gw; x++) {
                    float *t = rowp(tok, ((int64_t)f * gh + y) * gw + x) + c * 4;
                    for (int q = 0; q < 2; q++)
                        for (int r = 0; r < 2; r++)
                            t[q * 2 + r] = lc[((int64_t)f * h + 2 * y + q) * w + 2 * x + r];
                }
    }
    return KN_OK;
}

kn_status cpu_unpatchify(kn_backend_t *be, kn_tensor lat, kn_tensor tok, int C, int nf, int h, int w)
{
    F32_ONLY(tok, "unpatchify");
    F32_ONLY(lat, "unpatchify");
    int gh = h / 2, gw = w / 2;
    for (int c = 0; c < C; c++) {
        float *lc = rowp(lat, c);
        for (int f = 0; f < nf; f++)
            for (int y = 0; y < gh; y++)
                for (int x = 0; x < gw; x++) {
                    const float *t = rowp(tok, ((int64_t)f * gh + y) * gw + x);
                    for (int q = 0; q < 2; q++)
                        for (int r = 0; r < 2; r++)
                            lc[((int64_t)f * h + 2 * y + q) * w + 2 * x + r] = t[q * 2 * C + r * C + c];
                }
    }
    return KN_OK;
}

/* ---- convolution ------------------------------------------------------------------------------
 * im2col into the backend scratch ([Cin*9, H*W], row ci*9 + ky*3 + kx), then one GEMM with the
 * [Cout, Cin*9] weight. */
kn_status cpu_conv2d3x3(kn_backend_t *be, kn_tensor y, kn_tensor x, kn_tensor w, const kn_tensor *b,
                        int H, int W)
{
    F32_ONLY(y, "conv2d3x3");
    F32_ONLY(x, "conv2d3x3");
    F32_ONLY(w, "conv2d3x3");
    int64_t cin = x.rows, hw = (int64_t)H * W;
    float *col = cpu_scratch(be, (size_t)(cin * 9 * hw));
    if (!col)
        return kn_fail(be, KN_ERR_NOMEM, "conv2d3x3: no memory for im2col");
    for (int64_t ci = 0; ci < cin; ci++) {
        const float *xc = rowp(x, ci);
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                float *cr = col + ((ci * 9) + ky * 3 + kx) * hw;
                for (int py = 0; py < H; py++) {
                    int sy = py + ky - 1;
                    for (int px = 0; px < W; px++) {
                        int sx = px + kx - 1;
                        cr[py * W + px] = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? xc[sy * W + sx] : 0.0f;
                    }
                }
            }
    }
    float beta = 0.0f;
    if (b) {
        const float *bv = vecp(*b);
        for (int64_t r = 0; r < y.rows; r++) {
            float *yr = rowp(y, r);
            for (int64_t p = 0; p < hw; p++)
                yr[p] = bv[r];
        }
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)y.rows, (int)hw, (int)(cin * 9), 1.0f,
                rowp(w, 0), (int)w.ld, col, (int)hw, beta, rowp(y, 0), (int)y.ld);
    return KN_OK;
}

kn_status cpu_upsample2x(kn_backend_t *be, kn_tensor y, kn_tensor x, int H, int W)
{
    F32_ONLY(y, "upsample2x");
    F32_ONLY(x, "upsample2x");
    for (int64_t c = 0; c < x.rows; c++) {
        const float *xc = rowp(x, c);
        float *yc = rowp(y, c);
        for (int py = 0; py < 2 * H; py++)
            for (int px = 0; px < 2 * W; px++)
                yc[py * 2 * W + px] = xc[(py / 2) * W + px / 2];
    }
    return KN_OK;
}
