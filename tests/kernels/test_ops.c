/* tests/kernels/test_ops.c — unit tests of every op of the backend interface (kernels/backend.h)
 * on the CPU backend, the fp32 reference.
 *
 * Expected values are either worked out by hand (the constants below) or computed by a naive loop
 * in double precision written here, independently of kernels/cpu_ops.c, from the formulas of
 * backend.h and docs/MODEL.md. Every buffer is filled with a NaN pattern before use; outputs carry
 * a guard zone after their last element which must still hold NaN after each op (nothing written
 * past the end), and a NaN left inside an output means the op did not write it. Inputs are
 * followed by NaN too, so an op reading past an input shows up as a NaN in its output.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend.h"
#include "tests/check.h"

#define PI_ 3.14159265358979323846
#define GUARD 64 /* floats of NaN after every tensor's arena block */
#define MAXBUF 4096

static kn_backend_t *be;
static kn_buffer_t *bufs[MAXBUF];
static int nbufs;

/* ---- helpers ---------------------------------------------------------------------------------- */

/* A NaN whose two 16-bit halves are also NaN in bf16 (0x7fc0) and f16 (0x7fc0: exp 31, man != 0),
 * so the fill reads as NaN whatever the dtype of a view over it. */
static float nan_pattern(void)
{
    uint32_t u = 0x7fc07fc0u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t rng_state = 12345u;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) * (1.0 / 8388608.0)) - 1.0f;
}
static void fill_rand(float *a, size_t n, float amp)
{
    for (size_t i = 0; i < n; i++)
        a[i] = amp * frand();
}

/* A buffer of `bytes` (a multiple of 4) filled with the NaN pattern. */
static kn_buffer_t *newbuf(size_t bytes)
{
    kn_buffer_t *b = kn_buffer_alloc(be, bytes);
    if (!b || nbufs == MAXBUF) {
        fprintf(stderr, "test_ops: cannot allocate %zu bytes\n", bytes);
        exit(2);
    }
    bufs[nbufs++] = b;
    size_t n = bytes / 4;
    float *fill = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        fill[i] = nan_pattern();
    kn_tensor all = {b, 0, KN_F32, 1, (int64_t)n, (int64_t)n};
    if (kn_upload(be, all, fill, KN_F32) != KN_OK) {
        fprintf(stderr, "test_ops: cannot fill a buffer: %s\n", kn_backend_error(be));
        exit(2);
    }
    free(fill);
    return b;
}

/* A contiguous [rows, cols] tensor carved by an arena from its own buffer, followed by a guard. */
static kn_tensor newt(kn_dtype dt, int64_t rows, int64_t cols)
{
    size_t bytes = kn_arena_bytes(dt, rows, cols) + GUARD * sizeof(float);
    kn_buffer_t *b = newbuf(bytes);
    kn_arena a;
    kn_arena_init(&a, b);
    kn_tensor t;
    if (kn_arena_tensor(&a, &t, dt, rows, cols) != 0) {
        fprintf(stderr, "test_ops: arena refused [%lld,%lld]\n", (long long)rows, (long long)cols);
        exit(2);
    }
    return t;
}

#define OK(expr)                                                                                  \
    do {                                                                                          \
        kn_status st_ = (expr);                                                                   \
        CHECK(st_ == KN_OK, "%s -> %s (%s)", #expr, kn_strerror(st_), kn_backend_error(be));     \
    } while (0)

/* The op fails with `want` and leaves a message mentioning `sub`. */
#define FAILS(expr, want, sub)                                                                    \
    do {                                                                                          \
        kn_status st_ = (expr);                                                                   \
        CHECK(st_ == (want), "%s -> %s, want %s", #expr, kn_strerror(st_), kn_strerror(want));   \
        CHECK(strstr(kn_backend_error(be), (sub)) != NULL, "%s: message '%s' lacks '%s'", #expr,  \
              kn_backend_error(be), (sub));                                                       \
    } while (0)

/* An fp32 tensor holding `data` (rows*cols floats), or NaN where data is NULL. */
static kn_tensor mkf(int64_t rows, int64_t cols, const float *data)
{
    kn_tensor t = newt(KN_F32, rows, cols);
    if (data)
        OK(kn_upload(be, t, data, KN_F32));
    return t;
}

static void dl(kn_tensor t, float *dst) { OK(kn_download(be, t, dst)); }

/* Elements after the last element of view t up to the end of its buffer that are no longer NaN. */
static int guard_broken(kn_tensor t)
{
    size_t es = kn_dtype_size(t.dtype);
    size_t end = t.off;
    if (t.rows > 0 && t.cols > 0)
        end += (size_t)((t.rows - 1) * t.ld + t.cols) * es;
    size_t n = (kn_buffer_size(t.buf) - end) / es;
    if (n == 0)
        return 0;
    float *g = malloc(n * sizeof(float));
    kn_tensor v = {t.buf, end, t.dtype, 1, (int64_t)n, (int64_t)n};
    int bad = 0;
    if (kn_download(be, v, g) != KN_OK)
        bad = 1;
    else
        for (size_t i = 0; i < n; i++)
            bad += !isnan(g[i]);
    free(g);
    return bad;
}
#define GUARD_OK(t) CHECK(guard_broken(t) == 0, "guard after %s overwritten", #t)

static void expect_close(int line, const char *what, const float *got, const float *ref, size_t n,
                         double atol, double rtol)
{
    size_t wi = 0;
    double r = check_close(got, ref, n, atol, rtol, &wi);
    CHECK(r <= 1.0, "(line %d) %s: worst at %zu: got %.9g want %.9g (%.3g x tolerance)", line, what,
          wi, (double)got[wi], (double)ref[wi], r);
}
#define CLOSE(what, got, ref, n, atol, rtol) expect_close(__LINE__, what, got, ref, n, atol, rtol)

static void expect_exact(int line, const char *what, const float *got, const float *ref, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == ref[i] || (isnan(got[i]) && isnan(ref[i])))) {
            CHECK(0, "(line %d) %s: [%zu] got %.9g want %.9g", line, what, i, (double)got[i],
                  (double)ref[i]);
            return;
        }
    CHECK(1, "%s", what);
}
#define EXACT(what, got, ref, n) expect_exact(__LINE__, what, got, ref, n)

/* ---- arena and views -------------------------------------------------------------------------- */

static void test_arena(void)
{
    CHECK(kn_dtype_size(KN_F32) == 4 && kn_dtype_size(KN_BF16) == 2 && kn_dtype_size(KN_F16) == 2,
          "dtype sizes");
    CHECK(kn_arena_bytes(KN_F32, 1, 1) == 256 && kn_arena_bytes(KN_F32, 8, 8) == 256 &&
              kn_arena_bytes(KN_F32, 8, 9) == 512 && kn_arena_bytes(KN_BF16, 1, 128) == 256 &&
              kn_arena_bytes(KN_F32, 0, 5) == 0,
          "arena sizes are rounded up to 256 bytes");
    CHECK(kn_arena_bytes(KN_F32, INT64_MAX / 2, 4) == SIZE_MAX, "arena size overflow");
    kn_buffer_t *b = newbuf(1024);
    kn_arena a;
    kn_arena_init(&a, b);
    kn_tensor t1, t2, t3, t4;
    CHECK(kn_arena_tensor(&a, &t1, KN_F32, 3, 5) == 0 && t1.off == 0 && t1.ld == 5 &&
              t1.rows == 3 && t1.cols == 5 && t1.dtype == KN_F32 && t1.buf == b,
          "first arena tensor");
    CHECK(kn_arena_tensor(&a, &t2, KN_BF16, 2, 2) == 0 && t2.off == 256, "second tensor aligned");
    CHECK(kn_arena_tensor(&a, &t3, KN_F32, 8, 16) == 0 && t3.off == 512, "third tensor aligned");
    CHECK(kn_arena_tensor(&a, &t4, KN_F32, 1, 1) == -1, "full arena refuses");
    CHECK(kn_arena_tensor(&a, &t4, KN_F32, -1, 1) == -1, "negative rows refused");
    kn_tensor r = kn_rows(t1, 1, 2);
    CHECK(r.off == 20 && r.rows == 2 && r.cols == 5 && r.ld == 5, "kn_rows view");
    kn_tensor c = kn_cols(t1, 2, 3);
    CHECK(c.off == 8 && c.rows == 3 && c.cols == 3 && c.ld == 5, "kn_cols view");
    kn_tensor s = kn_reshape(t1, 5, 3);
    CHECK(s.rows == 5 && s.cols == 3 && s.ld == 3 && kn_nelem(s) == 15, "kn_reshape");
    CHECK(kn_buffer_size(b) == 1024, "buffer size");
    CHECK(kn_backend_compute_dtype(be) == KN_F32 && strcmp(kn_backend_name(be), "cpu") == 0,
          "cpu backend name and compute dtype");

    /* data goes through a view to the right places */
    float v[15], got[15];
    for (int i = 0; i < 15; i++)
        v[i] = (float)i;
    OK(kn_upload(be, t1, v, KN_F32));
    float cv[6] = {-1, -2, -3, -4, -5, -6};
    OK(kn_upload(be, kn_rows(kn_cols(t1, 1, 3), 1, 2), cv, KN_F32));
    dl(t1, got);
    float want[15] = {0, 1, 2, 3, 4, 5, -1, -2, -3, 9, 10, -4, -5, -6, 14};
    EXACT("upload through a row+column view", got, want, 15);
    float sub[4];
    dl(kn_rows(kn_cols(t1, 3, 2), 1, 2), sub);
    float wsub[4] = {-3, 9, -6, 14};
    EXACT("download through a view", sub, wsub, 4);
}

/* ---- matrix products -------------------------------------------------------------------------- */

static void naive_linear(float *y, const float *x, const float *w, const float *b, int n, int in,
                         int out)
{
    for (int r = 0; r < n; r++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0.0;
            for (int i = 0; i < in; i++)
                s += (double)x[r * in + i] * w[o * in + i];
            y[r * out + o] = (float)s;
        }
}

static void test_linear(void)
{
    /* worked example: x [2,3] @ w^T, w [2,3] */
    float xv[6] = {1, 2, 3, 4, 5, 6};
    float wv[6] = {1, 0, -1, 2, 1, 0};
    float bv[2] = {10, 20};
    kn_tensor x = mkf(2, 3, xv), w = mkf(2, 3, wv), b = mkf(1, 2, bv), y = mkf(2, 2, NULL);
    float got[4];
    OK(kn_linear(be, y, x, w, NULL));
    dl(y, got);
    float want[4] = {-2, 4, -2, 13};
    EXACT("linear 2x3 @ 3x2", got, want, 4);
    GUARD_OK(y);
    OK(kn_linear(be, y, x, w, &b));
    dl(y, got);
    float wantb[4] = {8, 24, 8, 33};
    EXACT("linear 2x3 @ 3x2 + bias", got, wantb, 4);
    GUARD_OK(y);
    /* the bias may also be a [out, 1] column */
    kn_tensor bc = mkf(2, 1, bv);
    OK(kn_linear(be, y, x, w, &bc));
    dl(y, got);
    EXACT("linear with a [out,1] bias", got, wantb, 4);

    /* strided views: x is columns 2..4 of a [2,8] matrix, w columns 1..3 of a [2,5], y columns
     * 1..2 of a [2,7]; the other columns must be left alone */
    float xp[16], wp[10], yp[14];
    for (int i = 0; i < 16; i++)
        xp[i] = nan_pattern(); /* any read outside the view poisons the result */
    for (int i = 0; i < 10; i++)
        wp[i] = nan_pattern();
    for (int i = 0; i < 14; i++)
        yp[i] = -7.0f - (float)i;
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 3; c++) {
            xp[r * 8 + 2 + c] = xv[r * 3 + c];
            wp[r * 5 + 1 + c] = wv[r * 3 + c];
        }
    kn_tensor X = mkf(2, 8, xp), W = mkf(2, 5, wp), Y = mkf(2, 7, yp);
    kn_tensor xs = kn_cols(X, 2, 3), ws = kn_cols(W, 1, 3), ys = kn_cols(Y, 1, 2);
    OK(kn_linear(be, ys, xs, ws, &b));
    float gy[14], wy[14];
    dl(Y, gy);
    memcpy(wy, yp, sizeof wy);
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++)
            wy[r * 7 + 1 + c] = wantb[r * 2 + c];
    EXACT("linear on strided views (ld > cols)", gy, wy, 14);
    GUARD_OK(Y);
    float gs[4];
    dl(ys, gs);
    EXACT("download of the strided output", gs, wantb, 4);

    /* random case against a naive double loop */
    enum { N = 5, IN = 37, OUT = 13 };
    float rx[N * IN], rw[OUT * IN], rb[OUT], ry[N * OUT], ref[N * OUT];
    fill_rand(rx, N * IN, 1.0f);
    fill_rand(rw, OUT * IN, 1.0f);
    fill_rand(rb, OUT, 1.0f);
    kn_tensor RX = mkf(N, IN, rx), RW = mkf(OUT, IN, rw), RB = mkf(1, OUT, rb), RY = mkf(N, OUT, NULL);
    OK(kn_linear(be, RY, RX, RW, &RB));
    dl(RY, ry);
    naive_linear(ref, rx, rw, rb, N, IN, OUT);
    CLOSE("linear random + bias", ry, ref, N * OUT, 1e-5, 1e-5);
    GUARD_OK(RY);
    OK(kn_linear(be, RY, RX, RW, NULL));
    dl(RY, ry);
    naive_linear(ref, rx, rw, NULL, N, IN, OUT);
    CLOSE("linear random", ry, ref, N * OUT, 1e-5, 1e-5);

    /* a single row (a GEMV shape) and zero rows */
    OK(kn_linear(be, kn_rows(RY, 2, 1), kn_rows(RX, 4, 1), RW, &RB));
    float one[OUT], ref1[OUT];
    dl(kn_rows(RY, 2, 1), one);
    naive_linear(ref1, rx + 4 * IN, rw, rb, 1, IN, OUT);
    CLOSE("linear one row", one, ref1, OUT, 1e-5, 1e-5);
    float rest[N * OUT];
    dl(RY, rest);
    CLOSE("linear one row leaves the other rows", rest, ref, 2 * OUT, 1e-5, 1e-5);
    OK(kn_linear(be, kn_rows(RY, 0, 0), kn_rows(RX, 0, 0), RW, &RB));
    dl(RY, rest);
    CLOSE("linear of zero rows writes nothing", rest, ref, 2 * OUT, 1e-5, 1e-5);
}

/* linear_gelu == linear then gelu_tanh (the CPU runs the two ops) */
static void test_linear_gelu(void)
{
    enum { N = 5, IN = 7, OUT = 9 };
    float x[N * IN], w[OUT * IN], b[OUT], got[N * OUT], want[N * OUT];
    fill_rand(x, N * IN, 1.0f);
    fill_rand(w, OUT * IN, 1.0f);
    fill_rand(b, OUT, 1.0f);
    kn_tensor X = mkf(N, IN, x), W = mkf(OUT, IN, w), B = mkf(1, OUT, b), Y = mkf(N, OUT, NULL), R = mkf(N, OUT, NULL);
    OK(kn_linear_gelu(be, Y, X, W, &B));
    dl(Y, got);
    GUARD_OK(Y);
    OK(kn_linear(be, R, X, W, &B));
    OK(kn_gelu_tanh(be, R, R));
    dl(R, want);
    EXACT("linear_gelu == linear + gelu", got, want, N * OUT);
    /* by hand: element (2, 3) */
    double u = b[3];
    for (int i = 0; i < IN; i++)
        u += (double)x[2 * IN + i] * w[3 * IN + i];
    double g = 0.5 * u * (1 + tanh(0.7978845608028654 * (u + 0.044715 * u * u * u)));
    CHECK(fabs(got[2 * OUT + 3] - g) < 1e-5, "linear_gelu by hand: %g vs %g", (double)got[2 * OUT + 3], g);
    FAILS(kn_linear_gelu(be, Y, X, R, &B), KN_ERR_ARG, "linear");
}

static void test_matmul_heads(void)
{
    enum { N = 6, H = 3, A = 4, B = 5 };
    float x[N * H * A], wxw[H * A * B], wxwt[H * B * A], y[N * H * B], ref[N * H * B];
    fill_rand(x, N * H * A, 1.0f);
    fill_rand(wxw, H * A * B, 1.0f);
    fill_rand(wxwt, H * B * A, 1.0f);
    kn_tensor X = mkf(N, H * A, x), W1 = mkf(H * A, B, wxw), W2 = mkf(H * B, A, wxwt);
    kn_tensor Y = mkf(N, H * B, NULL);

    OK(kn_matmul_heads(be, Y, X, W1, H, KN_HEADS_XW));
    dl(Y, y);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < B; j++) {
                double s = 0;
                for (int i = 0; i < A; i++)
                    s += (double)x[n * H * A + h * A + i] * wxw[(h * A + i) * B + j];
                ref[n * H * B + h * B + j] = (float)s;
            }
    CLOSE("matmul_heads XW", y, ref, N * H * B, 1e-5, 1e-5);
    GUARD_OK(Y);

    OK(kn_matmul_heads(be, Y, X, W2, H, KN_HEADS_XWT));
    dl(Y, y);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < B; j++) {
                double s = 0;
                for (int i = 0; i < A; i++)
                    s += (double)x[n * H * A + h * A + i] * wxwt[(h * B + j) * A + i];
                ref[n * H * B + h * B + j] = (float)s;
            }
    CLOSE("matmul_heads XWT", y, ref, N * H * B, 1e-5, 1e-5);
    GUARD_OK(Y);

    /* a hand example: 2 heads, a = b = 1: y[n, h] = x[n, h] * w[h] */
    float hx[4] = {1, 2, 3, 4}, hw[2] = {10, -1}, hy[4];
    kn_tensor HX = mkf(2, 2, hx), HW = mkf(2, 1, hw), HY = mkf(2, 2, NULL);
    OK(kn_matmul_heads(be, HY, HX, HW, 2, KN_HEADS_XW));
    dl(HY, hy);
    float hwant[4] = {10, -2, 30, -4};
    EXACT("matmul_heads per-head scalar", hy, hwant, 4);
    OK(kn_matmul_heads(be, HY, HX, HW, 2, KN_HEADS_XWT));
    dl(HY, hy);
    EXACT("matmul_heads per-head scalar (xwt)", hy, hwant, 4);

    /* strided x and y (columns of wider matrices) */
    float xp[N * 20], yp[N * 17], ys[N * H * B];
    for (int i = 0; i < N * 20; i++)
        xp[i] = nan_pattern();
    for (int i = 0; i < N * 17; i++)
        yp[i] = 3.5f;
    for (int n = 0; n < N; n++)
        memcpy(xp + n * 20 + 5, x + n * H * A, H * A * sizeof(float));
    kn_tensor XP = mkf(N, 20, xp), YP = mkf(N, 17, yp);
    OK(kn_matmul_heads(be, kn_cols(YP, 1, H * B), kn_cols(XP, 5, H * A), W2, H, KN_HEADS_XWT));
    dl(kn_cols(YP, 1, H * B), ys);
    CLOSE("matmul_heads on strided views", ys, ref, N * H * B, 1e-5, 1e-5);
    float yall[N * 17];
    dl(YP, yall);
    int untouched = 1;
    for (int n = 0; n < N; n++)
        untouched &= yall[n * 17] == 3.5f && yall[n * 17 + 16] == 3.5f;
    CHECK(untouched, "matmul_heads: columns outside the output view were written");
}

/* ---- norms and elementwise -------------------------------------------------------------------- */

static void test_layernorm(void)
{
    float x[8] = {1, 2, 3, 4, 5, 5, 5, 5};
    kn_tensor X = mkf(2, 4, x), Y = mkf(2, 4, NULL);
    OK(kn_layernorm(be, Y, X, NULL, NULL, 1e-6f));
    float y[8];
    dl(Y, y);
    /* mean 2.5, variance 1.25: (x - 2.5) / sqrt(1.25) = +-1.3416408, +-0.4472136; a constant row
     * has zero variance and normalises to 0 */
    float want[8] = {-1.3416408f, -0.4472136f, 0.4472136f, 1.3416408f, 0, 0, 0, 0};
    CLOSE("layernorm [1,2,3,4]", y, want, 8, 1e-6, 1e-6);
    GUARD_OK(Y);

    float w[4] = {1, 2, 3, 4}, b[4] = {0.5f, 0, 0, -1};
    kn_tensor Wt = mkf(1, 4, w), Bt = mkf(1, 4, b);
    OK(kn_layernorm(be, Y, X, &Wt, &Bt, 1e-6f));
    dl(Y, y);
    float wantab[8] = {-1.3416408f + 0.5f, -0.8944272f, 1.3416408f, 4 * 1.3416408f - 1, 0.5f, 0, 0, -1};
    CLOSE("layernorm affine", y, wantab, 8, 1e-6, 1e-6);
    OK(kn_layernorm(be, Y, X, &Wt, NULL, 1e-6f));
    dl(Y, y);
    float wantw[8] = {-1.3416408f, -0.8944272f, 1.3416408f, 4 * 1.3416408f, 0, 0, 0, 0};
    CLOSE("layernorm weight only", y, wantw, 8, 1e-6, 1e-6);
    OK(kn_layernorm(be, Y, X, NULL, &Bt, 1e-6f));
    dl(Y, y);
    float wantb[8] = {-1.3416408f + 0.5f, -0.4472136f, 0.4472136f, 1.3416408f - 1, 0.5f, 0, 0, -1};
    CLOSE("layernorm bias only", y, wantb, 8, 1e-6, 1e-6);

    /* eps matters: with eps = 1 the variance 1.25 becomes 2.25 -> (x - 2.5) / 1.5 */
    OK(kn_layernorm(be, Y, X, NULL, NULL, 1.0f));
    dl(Y, y);
    float weps[8] = {-1, -1 / 3.0f, 1 / 3.0f, 1, 0, 0, 0, 0};
    CLOSE("layernorm eps", y, weps, 8, 1e-6, 1e-6);

    /* in place (y aliases x) */
    OK(kn_layernorm(be, X, X, NULL, NULL, 1e-6f));
    dl(X, y);
    CLOSE("layernorm in place", y, want, 8, 1e-6, 1e-6);

    /* random rows with a large offset (mean subtracted before the variance) vs double */
    enum { R = 7, C = 50 };
    float rx[R * C], ry[R * C], ref[R * C], rw[C], rb[C];
    fill_rand(rx, R * C, 3.0f);
    for (int i = 0; i < R * C; i++)
        rx[i] += 1000.0f;
    fill_rand(rw, C, 1.0f);
    fill_rand(rb, C, 1.0f);
    for (int r = 0; r < R; r++) {
        double s = 0, ss = 0;
        for (int c = 0; c < C; c++)
            s += rx[r * C + c];
        double m = s / C;
        for (int c = 0; c < C; c++)
            ss += (rx[r * C + c] - m) * (rx[r * C + c] - m);
        double inv = 1 / sqrt(ss / C + 1e-6);
        for (int c = 0; c < C; c++)
            ref[r * C + c] = (float)((rx[r * C + c] - m) * inv * rw[c] + rb[c]);
    }
    kn_tensor RX = mkf(R, C, rx), RY = mkf(R, C, NULL), RW = mkf(1, C, rw), RB = mkf(1, C, rb);
    OK(kn_layernorm(be, RY, RX, &RW, &RB, 1e-6f));
    dl(RY, ry);
    CLOSE("layernorm random rows", ry, ref, R * C, 1e-5, 1e-4);
    GUARD_OK(RY);

    /* strided rows: columns 1..4 of a [2,6] */
    float xp[12] = {9, 1, 2, 3, 4, 9, 9, 5, 5, 5, 5, 9}, yp[12];
    kn_tensor XP = mkf(2, 6, xp);
    OK(kn_layernorm(be, kn_cols(XP, 1, 4), kn_cols(XP, 1, 4), NULL, NULL, 1e-6f));
    dl(XP, yp);
    float wp[12] = {9, want[0], want[1], want[2], want[3], 9, 9, 0, 0, 0, 0, 9};
    CLOSE("layernorm on a strided view", yp, wp, 12, 1e-6, 1e-6);
}

static void test_rmsnorm(void)
{
    float x[2] = {3, 4}, w[2] = {1, 2}, y[2];
    kn_tensor X = mkf(1, 2, x), W = mkf(1, 2, w), Y = mkf(1, 2, NULL);
    OK(kn_rmsnorm(be, Y, X, W, 0.0f));
    dl(Y, y);
    /* mean square (9 + 16) / 2 = 12.5 */
    float want[2] = {(float)(3 / sqrt(12.5)), (float)(8 / sqrt(12.5))};
    CLOSE("rmsnorm [3,4] w [1,2]", y, want, 2, 1e-6, 1e-6);
    CHECK(fabsf(y[0] - 0.8485281f) < 1e-6f && fabsf(y[1] - 2.2627417f) < 1e-6f,
          "rmsnorm hand values: %g %g", (double)y[0], (double)y[1]);
    GUARD_OK(Y);
    /* eps: 12.5 + 3.5 = 16 -> [3/4, 8/4] */
    OK(kn_rmsnorm(be, Y, X, W, 3.5f));
    dl(Y, y);
    float weps[2] = {0.75f, 2.0f};
    CLOSE("rmsnorm eps", y, weps, 2, 1e-6, 1e-6);
    OK(kn_rmsnorm(be, X, X, W, 0.0f));
    dl(X, y);
    CLOSE("rmsnorm in place", y, want, 2, 1e-6, 1e-6);

    enum { R = 5, C = 33 };
    float rx[R * C], rw[C], ry[R * C], ref[R * C];
    fill_rand(rx, R * C, 4.0f);
    fill_rand(rw, C, 2.0f);
    for (int r = 0; r < R; r++) {
        double ss = 0;
        for (int c = 0; c < C; c++)
            ss += (double)rx[r * C + c] * rx[r * C + c];
        double inv = 1 / sqrt(ss / C + 1e-6);
        for (int c = 0; c < C; c++)
            ref[r * C + c] = (float)(rx[r * C + c] * inv * rw[c]);
    }
    kn_tensor RX = mkf(R, C, rx), RW = mkf(1, C, rw), RY = mkf(R, C, NULL);
    OK(kn_rmsnorm(be, RY, RX, RW, 1e-6f));
    dl(RY, ry);
    CLOSE("rmsnorm random rows", ry, ref, R * C, 1e-6, 1e-5);
    GUARD_OK(RY);
}

static void test_modulate_gate(void)
{
    float x[6] = {1, 2, 3, -1, -2, -3}, sh[3] = {0.5f, -1, 0}, sc[3] = {0, 1, -0.5f}, y[6];
    kn_tensor X = mkf(2, 3, x), SH = mkf(1, 3, sh), SC = mkf(1, 3, sc), Y = mkf(2, 3, NULL);
    OK(kn_modulate(be, Y, X, SH, SC));
    dl(Y, y);
    /* x * (1 + scale) + shift */
    float want[6] = {1.5f, 3, 1.5f, -0.5f, -5, -1.5f};
    EXACT("modulate", y, want, 6);
    GUARD_OK(Y);
    OK(kn_modulate(be, X, X, SH, SC));
    dl(X, y);
    EXACT("modulate in place", y, want, 6);

    /* gate_add: x += y * gate */
    float a[6] = {1, 1, 1, 2, 2, 2}, b[6] = {1, 2, 3, 4, 5, 6}, g[3] = {0, 1, -2}, r[6];
    kn_tensor A = mkf(2, 3, a), B = mkf(2, 3, b), G = mkf(1, 3, g);
    OK(kn_gate_add(be, A, B, &G));
    dl(A, r);
    float wg[6] = {1, 3, -5, 2, 7, -10};
    EXACT("gate_add with gate", r, wg, 6);
    GUARD_OK(A);
    OK(kn_gate_add(be, A, B, NULL));
    dl(A, r);
    float wn[6] = {2, 5, -2, 6, 12, -4};
    EXACT("gate_add without gate", r, wn, 6);
    float bb[6];
    dl(B, bb);
    EXACT("gate_add leaves y alone", bb, b, 6);
    /* x += x (alias) doubles */
    OK(kn_gate_add(be, A, A, NULL));
    dl(A, r);
    for (int i = 0; i < 6; i++)
        wn[i] *= 2;
    EXACT("gate_add x += x", r, wn, 6);
}

static void test_axpby(void)
{
    float x[6] = {1, 2, 3, 4, 5, 6}, z[6] = {-1, 0, 1, 0.5f, 0.25f, 2}, y[6];
    kn_tensor X = mkf(2, 3, x), Z = mkf(2, 3, z), Y = mkf(2, 3, NULL);
    OK(kn_axpby(be, Y, 2.0f, X, 0.0f, NULL));
    dl(Y, y);
    float w1[6] = {2, 4, 6, 8, 10, 12};
    EXACT("axpby z NULL", y, w1, 6);
    GUARD_OK(Y);
    OK(kn_axpby(be, Y, 2.0f, X, -4.0f, &Z));
    dl(Y, y);
    float w2[6] = {6, 4, 2, 6, 9, 4};
    EXACT("axpby", y, w2, 6);
    GUARD_OK(Y);
    /* b is ignored without z (in particular NaN does not leak in) */
    OK(kn_axpby(be, Y, -1.0f, X, 5.0f, NULL));
    dl(Y, y);
    float w3[6] = {-1, -2, -3, -4, -5, -6};
    EXACT("axpby z NULL ignores b", y, w3, 6);
    /* y aliases x, then y aliases z */
    OK(kn_axpby(be, X, 0.5f, X, 1.0f, &Z));
    dl(X, y);
    float w4[6] = {-0.5f, 1, 2.5f, 2.5f, 2.75f, 5};
    EXACT("axpby y == x", y, w4, 6);
    OK(kn_axpby(be, Z, 1.0f, X, 2.0f, &Z));
    dl(Z, y);
    float w5[6] = {-2.5f, 1, 4.5f, 3.5f, 3.25f, 9};
    EXACT("axpby y == z", y, w5, 6);
    OK(kn_axpby(be, X, 3.0f, X, 0.0f, NULL));
    dl(X, y);
    float w6[6] = {-1.5f, 3, 7.5f, 7.5f, 8.25f, 15};
    EXACT("axpby y == x, z NULL", y, w6, 6);

    /* strided: column 1 of a [3,3] */
    float p[9] = {0, 1, 0, 0, 2, 0, 0, 3, 0}, q[9];
    kn_tensor P = mkf(3, 3, p);
    OK(kn_axpby(be, kn_cols(P, 1, 1), 10.0f, kn_cols(P, 1, 1), 0.0f, NULL));
    dl(P, q);
    float wp[9] = {0, 10, 0, 0, 20, 0, 0, 30, 0};
    EXACT("axpby on a strided column", q, wp, 9);
}

static double gelu_ref(double u)
{
    return 0.5 * u * (1 + tanh(sqrt(2 / PI_) * (u + 0.044715 * u * u * u)));
}

static void test_activations(void)
{
    enum { N = 12 };
    float x[N] = {0, 1, -1, 2, -2, 0.5f, -3, 10, -10, 100, -100, 1e30f}, y[N], ref[N];
    kn_tensor X = mkf(1, N, x), Y = mkf(1, N, NULL);

    OK(kn_gelu_tanh(be, Y, X));
    dl(Y, y);
    CHECK(y[0] == 0.0f, "gelu(0) = %g", (double)y[0]);
    CHECK(fabsf(y[1] - 0.841192f) < 2e-6f, "gelu(1) = %.7f, want 0.841192", (double)y[1]);
    CHECK(fabsf(y[2] + 0.158808f) < 2e-6f, "gelu(-1) = %.7f, want -0.158808", (double)y[2]);
    CHECK(fabsf(y[7] - 10.0f) < 1e-5f && fabsf(y[8]) < 1e-5f, "gelu(+-10) = %g %g", (double)y[7],
          (double)y[8]);
    CHECK(y[9] == 100.0f && fabsf(y[10]) < 1e-30f, "gelu(+-100) = %g %g", (double)y[9],
          (double)y[10]);
    CHECK(y[11] == 1e30f, "gelu(1e30) = %g (the cube overflows; the result must not)", (double)y[11]);
    for (int i = 0; i < N; i++)
        ref[i] = (float)gelu_ref(x[i]);
    ref[11] = 1e30f;
    CLOSE("gelu vs double formula", y, ref, N, 2e-6, 2e-6);
    GUARD_OK(Y);

    /* a sweep vs the double formula */
    enum { M = 401 };
    float sx[M], sy[M], sr[M];
    for (int i = 0; i < M; i++) {
        sx[i] = -8.0f + 0.04f * (float)i;
        sr[i] = (float)gelu_ref(sx[i]);
    }
    kn_tensor SX = mkf(1, M, sx), SY = mkf(1, M, NULL);
    OK(kn_gelu_tanh(be, SY, SX));
    dl(SY, sy);
    CLOSE("gelu sweep [-8, 8]", sy, sr, M, 2e-6, 2e-6);
    OK(kn_gelu_tanh(be, SX, SX));
    dl(SX, sy);
    CLOSE("gelu in place", sy, sr, M, 2e-6, 2e-6);

    float s[6] = {0, 1, -1, 20, -20, -1000}, sv[6];
    kn_tensor S = mkf(1, 6, s), SV = mkf(1, 6, NULL);
    OK(kn_silu(be, SV, S));
    dl(SV, sv);
    CHECK(sv[0] == 0.0f, "silu(0) = %g", (double)sv[0]);
    CHECK(fabsf(sv[1] - 0.7310586f) < 1e-6f, "silu(1) = %.7f", (double)sv[1]);
    CHECK(fabsf(sv[2] + 0.2689414f) < 1e-6f, "silu(-1) = %.7f", (double)sv[2]);
    CHECK(fabsf(sv[3] - 20.0f) < 1e-5f, "silu(20) = %g", (double)sv[3]);
    CHECK(fabsf(sv[4] + 4.1223072e-8f) < 1e-12f, "silu(-20) = %g, want -4.1223e-8", (double)sv[4]);
    CHECK(sv[5] == 0.0f && !isnan(sv[5]), "silu(-1000) = %g (exp overflows; the result must not)",
          (double)sv[5]);
    GUARD_OK(SV);
    for (int i = 0; i < M; i++)
        sr[i] = (float)(sx[i] / (1 + exp(-(double)sx[i])));
    kn_tensor TX = mkf(1, M, sx);
    OK(kn_silu(be, TX, TX));
    dl(TX, sy);
    CLOSE("silu sweep in place", sy, sr, M, 1e-6, 2e-6);

    float c[8] = {-5, -1, 0, 0.5f, 1, 5, INFINITY, -INFINITY}, cv[8];
    kn_tensor Cx = mkf(2, 4, c), Cy = mkf(2, 4, NULL);
    OK(kn_clamp(be, Cy, Cx, -1.0f, 1.0f));
    dl(Cy, cv);
    float cw[8] = {-1, -1, 0, 0.5f, 1, 1, 1, -1};
    EXACT("clamp [-1, 1]", cv, cw, 8);
    GUARD_OK(Cy);
    OK(kn_clamp(be, Cx, Cx, 0.0f, 0.0f));
    dl(Cx, cv);
    float cz[8] = {0};
    EXACT("clamp [0, 0] in place", cv, cz, 8);

    float rx[6] = {1, 2, 3, 4, 5, 6}, rs[3] = {2, -1, 0}, rh[3] = {0.5f, 1, 7}, rv[6];
    kn_tensor RX = mkf(3, 2, rx), RS = mkf(1, 3, rs), RH = mkf(1, 3, rh), RY = mkf(3, 2, NULL);
    OK(kn_row_affine(be, RY, RX, RS, RH));
    dl(RY, rv);
    float rw[6] = {2.5f, 4.5f, -2, -3, 7, 7};
    EXACT("row_affine", rv, rw, 6);
    GUARD_OK(RY);
    kn_tensor RS2 = mkf(3, 1, rs), RH2 = mkf(3, 1, rh);
    OK(kn_row_affine(be, RX, RX, RS2, RH2));
    dl(RX, rv);
    EXACT("row_affine with [rows,1] vectors, in place", rv, rw, 6);
}

/* ---- copies and storage dtypes ---------------------------------------------------------------- */

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_copy_dtypes(void)
{
    const float e8 = 1.0f / 256.0f;
    enum { N = 10 };
    float x[N] = {1.0f, 1 + e8, 1 + 3 * e8, -2.5f, 0, 3.0e38f, 65504, 1 + e8 + 1.0f / 65536, -INFINITY, 1e-40f};
    /* bf16 keeps 8 significant bits: 1 + 2^-8 is the midpoint of 1 and 1 + 2^-7 and rounds to
     * even (1); 1 + 3*2^-8 rounds to even (1 + 2^-6); above a midpoint rounds up;
     * 3e38 (0x7f61b1e6) rounds up to 0x7f62; 65504 rounds up to 65536 */
    /* 1e-40 is an fp32 subnormal 0x000116c2: bf16 0x0001 (rounding the low half 0x16c2 down) */
    float want_bf[N] = {1.0f, 1.0f, 1 + 4 * e8, -2.5f, 0, bits_f32(0x7f62u << 16), 65536, 1 + 2 * e8,
                        -INFINITY, bits_f32(0x0001u << 16)};
    kn_tensor X = mkf(1, N, x), B = newt(KN_BF16, 1, N), Y = mkf(1, N, NULL);
    float got[N];
    OK(kn_copy(be, B, X));
    GUARD_OK(B);
    dl(B, got);
    EXACT("copy f32 -> bf16 (download)", got, want_bf, N);
    OK(kn_copy(be, Y, B));
    dl(Y, got);
    EXACT("copy bf16 -> f32", got, want_bf, N);
    GUARD_OK(Y);

    /* fp16: subnormals down to 2^-24, max 65504, overflow to inf from 65520 */
    enum { M = 12 };
    float h[M] = {1.0f, 0x1p-24f, 0x1p-25f, 0x3p-25f, 65504, 65519, 65520, 1e5f, -INFINITY, 0x1p-14f,
                  1 + 0x1p-11f, 1 + 0x3p-11f};
    float want_h[M] = {1.0f, 0x1p-24f, 0, 0x1p-23f, 65504, 65504, INFINITY, INFINITY, -INFINITY,
                       0x1p-14f, 1.0f, 1 + 0x1p-9f};
    kn_tensor H = mkf(1, M, h), F = newt(KN_F16, 1, M), HY = mkf(1, M, NULL);
    OK(kn_copy(be, F, H));
    GUARD_OK(F);
    float gh[M];
    OK(kn_copy(be, HY, F));
    dl(HY, gh);
    EXACT("copy f32 -> f16 -> f32", gh, want_h, M);
    /* f16 -> bf16: 65504 becomes 65536, 2^-24 is exact in bf16 */
    kn_tensor FB = newt(KN_BF16, 1, M);
    OK(kn_copy(be, FB, F));
    dl(FB, gh);
    CHECK(gh[0] == 1.0f && gh[1] == 0x1p-24f && gh[4] == 65536.0f && isinf(gh[6]),
          "copy f16 -> bf16: %g %g %g %g", (double)gh[0], (double)gh[1], (double)gh[4], (double)gh[6]);

    /* same-dtype copies on strided views */
    float p[12], q[12];
    for (int i = 0; i < 12; i++)
        p[i] = (float)i;
    kn_tensor P = mkf(3, 4, p), Q = mkf(3, 4, NULL);
    OK(kn_copy(be, kn_cols(Q, 0, 2), kn_cols(P, 2, 2)));
    dl(Q, q);
    int ok = 1;
    for (int r = 0; r < 3; r++)
        ok &= q[r * 4] == p[r * 4 + 2] && q[r * 4 + 1] == p[r * 4 + 3] && isnan(q[r * 4 + 2]) &&
              isnan(q[r * 4 + 3]);
    CHECK(ok, "copy on strided views");
    kn_tensor PB = newt(KN_BF16, 3, 4), QB = newt(KN_BF16, 3, 2);
    OK(kn_copy(be, PB, P));
    OK(kn_copy(be, QB, kn_cols(PB, 1, 2)));
    float qb[6];
    dl(QB, qb);
    float wqb[6] = {1, 2, 5, 6, 9, 10};
    EXACT("copy bf16 -> bf16 strided", qb, wqb, 6);
    GUARD_OK(QB);
}

/* kn_download_rgb8: planar frames to interleaved bytes, rounded, clamped, by hand */
static void test_download_rgb8(void)
{
    /* 2 frames of 3 samples: frame f plane c sample p at row 3f + c */
    float x[2 * 3 * 3] = {0.0f, 1.0f, 0.5f,  /* f0 R */
                          2.0f, -1.0f, NAN,  /* f0 G */
                          0.25f, 0.75f, 1.0f / 255.0f, /* f0 B */
                          0.1f, 0.2f, 0.3f, 0.4f, 0.6f, 0.7f, 0.8f, 0.9f, 0.999f};
    uint8_t want[2 * 3 * 3], got[2 * 3 * 3];
    for (int f = 0; f < 2; f++)
        for (int p = 0; p < 3; p++)
            for (int c = 0; c < 3; c++) {
                float v = x[(f * 3 + c) * 3 + p], q = v * 255.0f + 0.5f;
                want[(f * 3 + p) * 3 + c] = isnan(v) || q < 0 ? 0 : q > 255 ? 255 : (uint8_t)(int)q;
            }
    CHECK(want[0] == 0 && want[3] == 255 && want[6] == 128 && want[1] == 255 && want[4] == 0 && want[7] == 0 &&
              want[2] == 64 && want[5] == 191 && want[8] == 1,
          "download_rgb8: the expected bytes by hand");
    kn_tensor T = mkf(6, 3, x), B = newt(KN_BF16, 6, 3);
    OK(kn_download_rgb8(be, T, 2, got));
    CHECK(!memcmp(got, want, sizeof want), "download_rgb8: f32 planes to RGB24");
    OK(kn_upload(be, B, x, KN_F32));
    OK(kn_download_rgb8(be, B, 2, got));
    CHECK(got[0] == 0 && got[3] == 255 && got[4] == 0 && got[7] == 0, "download_rgb8: bf16 planes");
    CHECK(kn_download_rgb8(be, kn_rows(T, 0, 5), 2, got) == KN_ERR_ARG, "download_rgb8: 5 rows for 2 frames");
    CHECK(kn_download_rgb8(be, T, 0, got) == KN_ERR_ARG, "download_rgb8: 0 frames");
    CHECK(kn_download_rgb8(be, T, 2, NULL) == KN_ERR_ARG, "download_rgb8: no destination");
    kn_backend_inject_fault(be, 0, 0);
    CHECK(kn_download_rgb8(be, T, 2, got) == KN_ERR_DEVICE, "download_rgb8: injected fault");
    kn_backend_inject_fault(be, -1, 0);
}

static void test_upload_download(void)
{
    /* f32 host into bf16 / f16 storage */
    float x[5] = {1.0f, 1 + 1.0f / 256, 0x1p-24f, 65504, -INFINITY};
    kn_tensor B = newt(KN_BF16, 1, 5), H = newt(KN_F16, 1, 5);
    float gb[5], gh[5];
    OK(kn_upload(be, B, x, KN_F32));
    OK(kn_upload(be, H, x, KN_F32));
    dl(B, gb);
    dl(H, gh);
    float wb[5] = {1.0f, 1.0f, 0x1p-24f, 65536, -INFINITY};
    float wh[5] = {1.0f, 1.0f, 0x1p-24f, 65504, -INFINITY}; /* fp16 keeps 11 bits: 1+2^-8 is exact */
    wh[1] = 1 + 1.0f / 256;
    EXACT("upload f32 -> bf16 storage", gb, wb, 5);
    EXACT("upload f32 -> f16 storage", gh, wh, 5);
    GUARD_OK(B);
    GUARD_OK(H);

    /* bf16 and f16 host data into f32 and into their own dtype */
    uint16_t hb[6] = {0x3f80, 0xc000, 0x7f80, 0x0001, 0x4049, 0x7fc1};
    float wbh[6] = {1.0f, -2.0f, INFINITY, bits_f32(0x00010000u), bits_f32(0x40490000u), NAN};
    kn_tensor F = mkf(2, 3, NULL), B2 = newt(KN_BF16, 2, 3);
    float g[6];
    OK(kn_upload(be, F, hb, KN_BF16));
    dl(F, g);
    EXACT("upload bf16 host -> f32", g, wbh, 6);
    OK(kn_upload(be, B2, hb, KN_BF16));
    dl(B2, g);
    EXACT("upload bf16 host -> bf16", g, wbh, 6);

    uint16_t hh[8] = {0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x3c00, 0xc100};
    float whh[8] = {0x1p-24f, 1023 * 0x1p-24f, 0x1p-14f, 65504, INFINITY, -INFINITY, 1.0f, -2.5f};
    kn_tensor F2 = mkf(2, 4, NULL), H2 = newt(KN_F16, 2, 4), BB = newt(KN_BF16, 2, 4);
    float g8[8];
    OK(kn_upload(be, F2, hh, KN_F16));
    dl(F2, g8);
    EXACT("upload f16 host -> f32 (subnormal 2^-24, 65504, inf)", g8, whh, 8);
    OK(kn_upload(be, H2, hh, KN_F16));
    dl(H2, g8);
    EXACT("upload f16 host -> f16", g8, whh, 8);
    uint16_t nanh = 0x7e00;
    kn_tensor F1 = mkf(1, 1, NULL);
    float one = 0;
    OK(kn_upload(be, F1, &nanh, KN_F16));
    dl(F1, &one);
    CHECK(isnan(one), "f16 NaN uploads as NaN: %g", (double)one);
    /* f16 -> bf16 storage: 2^-24 exact, 1023*2^-24 needs 10 bits and rounds */
    OK(kn_upload(be, BB, hh, KN_F16));
    dl(BB, g8);
    CHECK(g8[0] == 0x1p-24f && g8[1] == 1024 * 0x1p-24f && g8[3] == 65536.0f && g8[6] == 1.0f,
          "upload f16 host -> bf16: %g %g %g", (double)g8[0], (double)g8[1], (double)g8[3]);

    /* a strided destination */
    float p[8] = {0};
    kn_tensor P = mkf(2, 4, p);
    float v[4] = {1, 2, 3, 4};
    OK(kn_upload(be, kn_cols(P, 1, 2), v, KN_F32));
    dl(P, p);
    float wp[8] = {0, 1, 2, 0, 0, 3, 4, 0};
    EXACT("upload into a strided view", p, wp, 8);
    GUARD_OK(P);
    /* zero-element upload with a NULL source is fine */
    OK(kn_upload(be, kn_rows(P, 0, 0), NULL, KN_F32));
}

/* ---- RoPE and the timestep sinusoid ----------------------------------------------------------- */

/* Expected rotation angle of pair j for a head of width d at grid position (f, y, x), from the
 * words of MODEL.md §4: dt = d - 4*(d//6), ds = 2*(d//6); dt/2 frame pairs, ds/2 row, ds/2 col. */
static double rope_angle(int d, int j, int f, int y, int x)
{
    int dt = d - 4 * (d / 6), ds = 2 * (d / 6);
    if (j < dt / 2)
        return f * pow(10000.0, -2.0 * j / dt);
    j -= dt / 2;
    if (j < ds / 2)
        return y * pow(10000.0, -2.0 * j / ds);
    j -= ds / 2;
    return x * pow(10000.0, -2.0 * j / ds);
}

/* x [n, heads*d] rotated on the grid (f0 + f, y, x) in double. */
static void rope_ref(float *out, const float *in, int heads, int d, int f0, int nf, int gh, int gw)
{
    int n = 0;
    for (int f = 0; f < nf; f++)
        for (int y = 0; y < gh; y++)
            for (int x = 0; x < gw; x++, n++)
                for (int h = 0; h < heads; h++)
                    for (int j = 0; j < d / 2; j++) {
                        size_t i = (size_t)n * heads * d + (size_t)h * d + 2 * j;
                        double a = rope_angle(d, j, f0 + f, y, x), u = in[i], v = in[i + 1];
                        out[i] = (float)(u * cos(a) - v * sin(a));
                        out[i + 1] = (float)(u * sin(a) + v * cos(a));
                    }
}

static void test_rope(void)
{
    enum { D = 16 };
    float x[D], y[D], ref[D];
    fill_rand(x, D, 1.0f);

    /* 1x1x1 grid at frame 0: every angle is 0 */
    kn_tensor X = mkf(1, D, x);
    OK(kn_rope3d(be, X, 1, 0, 1, 1, 1, 10000.0));
    dl(X, y);
    EXACT("rope at (0,0,0) is the identity", y, x, D);
    GUARD_OK(X);

    /* d = 16: dt = 8 -> 4 frame pairs with freq 1, 0.1, 0.01, 0.001; ds = 4 -> 2 row pairs and 2
     * column pairs with freq 1, 0.01. At frame f on a 1x1 grid only the frame pairs turn. */
    const double fr16[8] = {1, 0.1, 0.01, 0.001, 1, 0.01, 1, 0.01};
    for (int f = 1; f <= 7; f += 3) {
        kn_tensor Xf = mkf(1, D, x);
        OK(kn_rope3d(be, Xf, 1, f, 1, 1, 1, 10000.0));
        dl(Xf, y);
        for (int j = 0; j < D / 2; j++) {
            double a = j < 4 ? f * fr16[j] : 0.0;
            ref[2 * j] = (float)(x[2 * j] * cos(a) - x[2 * j + 1] * sin(a));
            ref[2 * j + 1] = (float)(x[2 * j] * sin(a) + x[2 * j + 1] * cos(a));
        }
        CLOSE("rope d=16 at frame f", y, ref, D, 1e-6, 1e-6);
        /* pair 0 turns by exactly f radians */
        double ang = atan2(y[1], y[0]) - atan2(x[1], x[0]);
        ang = remainder(ang - f, 2 * PI_);
        CHECK(fabs(ang) < 1e-5, "rope pair 0 at frame %d off by %g rad", f, ang);
        /* pair 1 by f * 10000^(-2/8) = 0.1 f */
        ang = remainder(atan2(y[3], y[2]) - atan2(x[3], x[2]) - 0.1 * f, 2 * PI_);
        CHECK(fabs(ang) < 1e-5, "rope pair 1 at frame %d off by %g rad", f, ang);
        /* norms of every pair are kept */
        for (int j = 0; j < D / 2; j++) {
            double n0 = hypot(x[2 * j], x[2 * j + 1]), n1 = hypot(y[2 * j], y[2 * j + 1]);
            CHECK(fabs(n0 - n1) < 1e-6, "rope pair %d norm %g -> %g", j, n0, n1);
        }
    }

    /* a 2x3x4 grid starting at frame 5: token (f, y, x) is row (f*3 + y)*4 + x */
    enum { NF = 2, GH = 3, GW = 4, NT = NF * GH * GW };
    float gx[NT * D], gy[NT * D], gr[NT * D];
    fill_rand(gx, NT * D, 2.0f);
    kn_tensor G = mkf(NT, D, gx);
    OK(kn_rope3d(be, G, 1, 5, NF, GH, GW, 10000.0));
    dl(G, gy);
    GUARD_OK(G);
    for (int f = 0; f < NF; f++)
        for (int yy = 0; yy < GH; yy++)
            for (int xx = 0; xx < GW; xx++) {
                int n = (f * GH + yy) * GW + xx;
                for (int j = 0; j < D / 2; j++) {
                    double pos = j < 4 ? 5 + f : j < 6 ? yy : xx;
                    double a = pos * fr16[j];
                    const float *u = gx + n * D + 2 * j;
                    gr[n * D + 2 * j] = (float)(u[0] * cos(a) - u[1] * sin(a));
                    gr[n * D + 2 * j + 1] = (float)(u[0] * sin(a) + u[1] * cos(a));
                }
            }
    CLOSE("rope d=16 on a 2x3x4 grid from frame 5", gy, gr, NT * D, 1e-6, 1e-6);
    /* the formula of MODEL.md gives the same frequencies */
    for (int j = 0; j < D / 2; j++)
        CHECK(fabs(rope_angle(D, j, 1, 1, 1) - fr16[j]) < 1e-12, "rope freq table %d", j);

    /* two heads: both rotate the same way */
    enum { H2 = 2 };
    float hx[NT * H2 * D], hy[NT * H2 * D], hr[NT * H2 * D];
    for (int n = 0; n < NT; n++)
        for (int h = 0; h < H2; h++)
            memcpy(hx + (n * H2 + h) * D, gx + n * D, D * sizeof(float));
    kn_tensor HX = mkf(NT, H2 * D, hx);
    OK(kn_rope3d(be, HX, H2, 5, NF, GH, GW, 10000.0));
    dl(HX, hy);
    int same = 1;
    for (int n = 0; n < NT; n++)
        same &= memcmp(hy + n * H2 * D, hy + n * H2 * D + D, D * sizeof(float)) == 0 &&
                memcmp(hy + n * H2 * D, gy + n * D, D * sizeof(float)) == 0;
    CHECK(same, "rope: both heads rotate like the single-head case");
    rope_ref(hr, hx, H2, D, 5, NF, GH, GW);
    CLOSE("rope 2 heads vs reference", hy, hr, NT * H2 * D, 1e-6, 1e-6);

    /* other widths: d = 8 (2/1/1 pairs), 12 (2/2/2), 128 (22/21/21), 3 heads of 8, on a strided
     * view (the columns next to it stay as they were) */
    const int ds_[4] = {8, 12, 128, 6};
    for (int k = 0; k < 4; k++) {
        int d = ds_[k], heads = d == 8 ? 3 : 1, w = heads * d, nt = 2 * 2 * 3;
        float *a = malloc(sizeof(float) * nt * (w + 3)), *b = malloc(sizeof(float) * nt * (w + 3));
        float *in = malloc(sizeof(float) * nt * w), *r = malloc(sizeof(float) * nt * w);
        fill_rand(a, (size_t)nt * (w + 3), 1.0f);
        for (int n = 0; n < nt; n++)
            memcpy(in + n * w, a + n * (w + 3) + 1, sizeof(float) * w);
        kn_tensor A = mkf(nt, w + 3, a);
        OK(kn_rope3d(be, kn_cols(A, 1, w), heads, 3, 2, 2, 3, 10000.0));
        dl(A, b);
        float *got = malloc(sizeof(float) * nt * w);
        int outside = 1;
        for (int n = 0; n < nt; n++) {
            memcpy(got + n * w, b + n * (w + 3) + 1, sizeof(float) * w);
            outside &= b[n * (w + 3)] == a[n * (w + 3)] && b[n * (w + 3) + w + 1] == a[n * (w + 3) + w + 1] &&
                       b[n * (w + 3) + w + 2] == a[n * (w + 3) + w + 2];
        }
        rope_ref(r, in, heads, d, 3, 2, 2, 3);
        char what[64];
        snprintf(what, sizeof what, "rope d=%d heads=%d strided", d, heads);
        CLOSE(what, got, r, (size_t)nt * w, 1e-6, 1e-6);
        CHECK(outside, "rope d=%d wrote outside its view", d);
        free(a);
        free(b);
        free(in);
        free(r);
        free(got);
    }
    /* d = 128: the split is 22/21/21 pairs: pair 21 is the last frame pair, 22 the first row pair */
    CHECK(fabs(rope_angle(128, 21, 1, 0, 0) - pow(10000.0, -42.0 / 44)) < 1e-15 &&
              rope_angle(128, 22, 1, 0, 0) == 0 && rope_angle(128, 22, 0, 1, 0) == 1 &&
              fabs(rope_angle(128, 42, 0, 1, 0) - pow(10000.0, -40.0 / 42)) < 1e-15 &&
              rope_angle(128, 43, 0, 1, 0) == 0 && rope_angle(128, 43, 0, 0, 1) == 1,
          "rope d=128 split");
    /* theta is honoured: theta = 100 on d = 16 gives frame pair 1 freq 100^(-1/4) */
    kn_tensor T = mkf(1, D, x);
    OK(kn_rope3d(be, T, 1, 1, 1, 1, 1, 100.0));
    dl(T, y);
    double a1 = pow(100.0, -0.25);
    float r2 = (float)(x[2] * cos(a1) - x[3] * sin(a1)), r3 = (float)(x[2] * sin(a1) + x[3] * cos(a1));
    CHECK(fabsf(y[2] - r2) < 1e-6f && fabsf(y[3] - r3) < 1e-6f, "rope theta = 100");
}

/* ---- per-group vectors and the fused ops (a batch of streams in one call) --------------------- */

/* Grouped modulate / gate_add / axpby equal the same op run group by group with one vector. */
static void test_groups(void)
{
    enum { G = 3, R = 4, C = 10, N = G * R };
    float x[N * C], y0[N * C], sh[G * 2 * C], sc[G * C], gt[G * C], z1[C], got[N * C], want[N * C];
    fill_rand(x, N * C, 2.0f);
    fill_rand(y0, N * C, 1.0f);
    fill_rand(sh, G * 2 * C, 1.0f);
    fill_rand(sc, G * C, 1.0f);
    fill_rand(gt, G * C, 1.0f);
    fill_rand(z1, C, 1.0f);
    /* shift as a strided [G, C] view (ld 2C) of a wider tensor */
    kn_tensor X = mkf(N, C, x), Y = mkf(N, C, NULL), SHW = mkf(G, 2 * C, sh), SC = mkf(G, C, sc);
    kn_tensor SH = kn_cols(SHW, C, C), GT = mkf(G, C, gt), Z1 = mkf(1, C, z1), W = mkf(N, C, NULL);
    OK(kn_modulate(be, Y, X, SH, SC));
    dl(Y, got);
    for (int g = 0; g < G; g++)
        OK(kn_modulate(be, kn_rows(W, g * R, R), kn_rows(X, g * R, R), kn_rows(SH, g, 1), kn_rows(SC, g, 1)));
    dl(W, want);
    EXACT("modulate, 3 groups == group by group", got, want, N * C);
    GUARD_OK(Y);
    /* hand value: row 5 is group 1 */
    CHECK(fabsf(got[5 * C + 2] - (x[5 * C + 2] * (1.0f + sc[C + 2]) + sh[2 * C + C + 2])) < 1e-6f,
          "modulate group 1 by hand");

    kn_tensor A = mkf(N, C, y0), B = mkf(N, C, y0);
    OK(kn_gate_add(be, A, X, &GT));
    for (int g = 0; g < G; g++) {
        kn_tensor gv = kn_rows(GT, g, 1);
        OK(kn_gate_add(be, kn_rows(B, g * R, R), kn_rows(X, g * R, R), &gv));
    }
    dl(A, got);
    dl(B, want);
    EXACT("gate_add, 3 groups == group by group", got, want, N * C);

    /* axpby with one row for all rows, and with 3 groups */
    OK(kn_axpby(be, Y, 0.5f, X, -2.0f, &Z1));
    dl(Y, got);
    for (int r = 0; r < N; r++)
        for (int c = 0; c < C; c++)
            want[r * C + c] = 0.5f * x[r * C + c] + -2.0f * z1[c];
    EXACT("axpby, z one row for all", got, want, N * C);
    OK(kn_axpby(be, Y, 1.0f, X, 1.0f, &GT));
    dl(Y, got);
    for (int r = 0; r < N; r++)
        for (int c = 0; c < C; c++)
            want[r * C + c] = x[r * C + c] + gt[(r / R) * C + c];
    EXACT("axpby, z per group", got, want, N * C);

    /* groups that do not divide the rows, or the wrong width */
    kn_tensor G5 = mkf(5, C, NULL), Gw = mkf(3, C + 1, NULL);
    FAILS(kn_modulate(be, Y, X, G5, G5), KN_ERR_ARG, "dividing");
    FAILS(kn_modulate(be, Y, X, SH, kn_rows(SC, 0, 1)), KN_ERR_ARG, "scale rows");
    FAILS(kn_gate_add(be, Y, X, &Gw), KN_ERR_ARG, "gate_add gate");
    FAILS(kn_axpby(be, Y, 1, X, 1, &G5), KN_ERR_ARG, "axpby z");
    FAILS(kn_layernorm_modulate(be, Y, X, G5, G5, 1e-6f), KN_ERR_ARG, "dividing");
}

/* layernorm_modulate == layernorm (no affine) then modulate, bit for bit, per group. */
static void test_layernorm_modulate(void)
{
    enum { G = 2, R = 3, C = 37, N = G * R };
    float x[N * C], sh[G * C], sc[G * C], got[N * C], want[N * C];
    fill_rand(x, N * C, 3.0f);
    for (int i = 0; i < N * C; i++)
        x[i] += 1.5f; /* a mean away from 0 */
    fill_rand(sh, G * C, 1.0f);
    fill_rand(sc, G * C, 1.0f);
    kn_tensor X = mkf(N, C, x), Y = mkf(N, C, NULL), SH = mkf(G, C, sh), SC = mkf(G, C, sc), W = mkf(N, C, NULL);
    OK(kn_layernorm_modulate(be, Y, X, SH, SC, 1e-6f));
    dl(Y, got);
    GUARD_OK(Y);
    OK(kn_layernorm(be, W, X, NULL, NULL, 1e-6f));
    OK(kn_modulate(be, W, W, SH, SC));
    dl(W, want);
    EXACT("layernorm_modulate == layernorm + modulate", got, want, N * C);
    /* by hand for one row: mean and variance in double */
    double m = 0, v = 0;
    for (int c = 0; c < C; c++)
        m += x[4 * C + c];
    m /= C;
    for (int c = 0; c < C; c++)
        v += (x[4 * C + c] - m) * (x[4 * C + c] - m);
    v /= C;
    float hand = (float)((x[4 * C + 7] - m) / sqrt(v + 1e-6)) * (1.0f + sc[C + 7]) + sh[C + 7];
    CHECK(fabsf(got[4 * C + 7] - hand) < 1e-5f, "layernorm_modulate by hand: %g vs %g", (double)got[4 * C + 7],
          (double)hand);
    OK(kn_layernorm_modulate(be, X, X, SH, SC, 1e-6f));
    dl(X, got);
    EXACT("layernorm_modulate in place", got, want, N * C);
}

/* The table RoPE: kn_rope3d_table + kn_rmsnorm_rope over 3 streams at different frame offsets ==
 * rmsnorm then the double-precision reference rotation, stream by stream. */
static void test_rope_table(void)
{
    enum { S = 3, NF = 2, GH = 3, GW = 4, T = NF * GH * GW, H = 2, D = 12, C = H * D };
    int f0[S] = {0, 5, 250};
    float x[S * T * C], w[C], normed[S * T * C], got[S * T * C], want[S * T * C], tab[S * T * D];
    fill_rand(x, S * T * C, 2.0f);
    fill_rand(w, C, 1.0f);
    kn_tensor X = mkf(S * T, C, x), W = mkf(1, C, w), TAB = mkf(S * T, D, NULL), Nrm = mkf(S * T, C, NULL);
    OK(kn_rope3d_table(be, TAB, f0, S, NF, GH, GW, 10000.0));
    GUARD_OK(TAB);
    dl(TAB, tab);
    /* entries are cos, sin of the reference angle */
    double a = rope_angle(D, 1, 250 + 1, 2, 3);
    int row = 2 * T + 1 * GH * GW + 2 * GW + 3;
    CHECK(fabs(tab[row * D + 2] - cos(a)) < 1e-7 && fabs(tab[row * D + 3] - sin(a)) < 1e-7,
          "rope table entry: %g %g vs %g %g", (double)tab[row * D + 2], (double)tab[row * D + 3], cos(a), sin(a));
    OK(kn_rmsnorm(be, Nrm, X, W, 1e-6f));
    dl(Nrm, normed);
    for (int s = 0; s < S; s++)
        rope_ref(want + s * T * C, normed + s * T * C, H, D, f0[s], NF, GH, GW);
    /* written by heads into the second column range of a [rows*H, 5 + D] layout (as the MLA query's
     * [q_c,h | q_r,h]), then in place */
    kn_tensor WIDE = mkf(S * T * H, 5 + D, NULL);
    float wide[S * T * H * (5 + D)];
    OK(kn_rmsnorm_rope(be, kn_cols(WIDE, 5, D), X, W, 1e-6f, H, &TAB));
    dl(WIDE, wide);
    int bad = 0;
    for (int r = 0; r < S * T * H; r++)
        for (int c = 0; c < 5 + D; c++) {
            float v = wide[r * (5 + D) + c];
            bad += c < 5 ? !isnan(v) : fabs(v - want[r * D + c - 5]) > 1e-6 + 1e-6 * fabs(want[r * D + c - 5]);
        }
    CHECK(bad == 0, "rmsnorm_rope into a per-head layout: %d elements wrong or written outside", bad);
    GUARD_OK(WIDE);
    OK(kn_rmsnorm_rope(be, kn_reshape(X, S * T * H, D), X, W, 1e-6f, H, &TAB));
    dl(X, got);
    GUARD_OK(X);
    CLOSE("rmsnorm_rope == rmsnorm + rope, 3 streams, in place", got, want, S * T * C, 1e-6, 1e-6);
    /* no table: the normalisation alone, by heads */
    kn_tensor X2 = mkf(S * T, C, x), Y2 = mkf(S * T * H, D, NULL);
    OK(kn_rmsnorm_rope(be, Y2, X2, W, 1e-6f, H, NULL));
    dl(Y2, got);
    EXACT("rmsnorm_rope without a table == rmsnorm", got, normed, S * T * C);

    /* bad arguments */
    kn_tensor TB = newt(KN_BF16, S * T, D), T1 = mkf(S * T - 1, D, NULL), T7 = mkf(S * T, 7, NULL);
    int neg[S] = {0, -1, 2}, many[KN_ROPE_MAX_STREAMS + 1] = {0};
    FAILS(kn_rope3d_table(be, TB, f0, S, NF, GH, GW, 10000.0), KN_ERR_ARG, "f32");
    FAILS(kn_rope3d_table(be, T1, f0, S, NF, GH, GW, 10000.0), KN_ERR_ARG, "rows");
    FAILS(kn_rope3d_table(be, T7, f0, S, NF, GH, GW, 10000.0), KN_ERR_ARG, "even");
    FAILS(kn_rope3d_table(be, TAB, neg, S, NF, GH, GW, 10000.0), KN_ERR_ARG, "frame index");
    FAILS(kn_rope3d_table(be, TAB, many, KN_ROPE_MAX_STREAMS + 1, NF, GH, GW, 10000.0), KN_ERR_ARG, "streams");
    FAILS(kn_rope3d_table(be, TAB, NULL, S, NF, GH, GW, 10000.0), KN_ERR_ARG, "streams");
    kn_tensor XH = kn_reshape(X, S * T * H, D);
    FAILS(kn_rmsnorm_rope(be, XH, X, W, 1e-6f, 3, &TAB), KN_ERR_ARG, "heads");
    FAILS(kn_rmsnorm_rope(be, X, X, W, 1e-6f, H, &TAB), KN_ERR_ARG, "heads");
    FAILS(kn_rmsnorm_rope(be, XH, X, W, 1e-6f, H, &T1), KN_ERR_ARG, "table");
    FAILS(kn_rmsnorm_rope(be, XH, X, W, 1e-6f, H, &TB), KN_ERR_ARG, "f32");
}

static void test_timestep(void)
{
    float t[3] = {0, 1, 500};
    kn_tensor Y = mkf(3, 4, NULL);
    OK(kn_timestep_embed(be, Y, t, 3));
    float y[12];
    dl(Y, y);
    /* half = 2: freq = [1, 10000^(-1/2) = 0.01] */
    float want[12] = {1, 1, 0, 0,
                      (float)cos(1.0), (float)cos(0.01), (float)sin(1.0), (float)sin(0.01),
                      (float)cos(500.0), (float)cos(5.0), (float)sin(500.0), (float)sin(5.0)};
    CLOSE("timestep embed dim 4", y, want, 12, 1e-7, 1e-6);
    CHECK(y[0] == 1 && y[1] == 1 && y[2] == 0 && y[3] == 0, "timestep t=0 -> [1,1,0,0]");
    CHECK(fabsf(y[4] - 0.5403023f) < 1e-7f && fabsf(y[5] - 0.99995f) < 1e-6f &&
              fabsf(y[6] - 0.84147098f) < 1e-7f && fabsf(y[7] - 0.0099998333f) < 1e-9f,
          "timestep t=1 hand values");
    GUARD_OK(Y);

    /* dim 32 (the tiny-test freq dim) with a large t, vs double */
    enum { DIM = 32, HALF = DIM / 2 };
    float tt[2] = {937.5f, 0.25f}, yy[2 * DIM], rr[2 * DIM];
    kn_tensor Y2 = mkf(2, DIM, NULL);
    OK(kn_timestep_embed(be, Y2, tt, 2));
    dl(Y2, yy);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < HALF; k++) {
            double a = tt[i] * pow(10000.0, -(double)k / HALF);
            rr[i * DIM + k] = (float)cos(a);
            rr[i * DIM + HALF + k] = (float)sin(a);
        }
    CLOSE("timestep embed dim 32", yy, rr, 2 * DIM, 1e-7, 1e-6);
    GUARD_OK(Y2);
    /* into a strided view */
    kn_tensor W = mkf(1, 6, NULL);
    OK(kn_timestep_embed(be, kn_cols(W, 1, 4), t + 1, 1));
    float w6[6];
    dl(W, w6);
    CHECK(isnan(w6[0]) && isnan(w6[5]) && w6[1] == want[4] && w6[4] == want[7],
          "timestep embed into a strided view");
}

/* ---- attention -------------------------------------------------------------------------------- */

/* Host K [nt, G*dk] and V [nt, G*dv]; packed into a pool per kv's layout. */
static size_t kv_elem(const kn_kv *kv, int64_t t)
{
    int64_t page = kv->pages ? kv->pages[t / kv->page_tokens] : 0;
    int64_t r = kv->pages ? t % kv->page_tokens : t;
    return kv->off / kn_dtype_size(kv->dtype) + (size_t)(page * kv->page_stride + r * kv->row_stride);
}

/* A pool of `elems` elements (NaN-filled), with K and V written at kv's positions. */
static kn_tensor kv_pool(kn_kv *kv, size_t elems, const float *K, const float *V)
{
    kn_tensor pool = newt(kv->dtype, 1, (int64_t)elems);
    float *host = malloc(elems * sizeof(float));
    for (size_t i = 0; i < elems; i++)
        host[i] = nan_pattern();
    int G = kv->kv_heads;
    for (int64_t t = 0; t < kv->n_tokens; t++) {
        size_t e = kv_elem(kv, t);
        for (int c = 0; c < G * kv->dk; c++)
            host[e + kv->k_off + c] = K[t * G * kv->dk + c];
        for (int c = 0; c < G * kv->dv; c++)
            host[e + kv->v_off + c] = V[t * G * kv->dv + c];
    }
    OK(kn_upload(be, pool, host, KN_F32));
    free(host);
    kv->buf = pool.buf;
    return pool;
}

/* softmax(q k^T * scale) v per head in double, max subtracted. */
static void attention_ref(float *out, const float *q, int nq, int qh, const float *K, const float *V,
                          int nt, int G, int dk, int dv, double scale)
{
    double *s = malloc(sizeof(double) * nt);
    int group = qh / G;
    for (int i = 0; i < nq; i++)
        for (int h = 0; h < qh; h++) {
            int g = h / group;
            double m = -INFINITY;
            for (int t = 0; t < nt; t++) {
                double a = 0;
                for (int c = 0; c < dk; c++)
                    a += (double)q[(i * qh + h) * dk + c] * K[(t * G + g) * dk + c];
                s[t] = a * scale;
                if (s[t] > m)
                    m = s[t];
            }
            double l = 0;
            for (int t = 0; t < nt; t++)
                l += s[t] = exp(s[t] - m);
            for (int c = 0; c < dv; c++) {
                double o = 0;
                for (int t = 0; t < nt; t++)
                    o += s[t] * V[(t * G + g) * dv + c];
                out[(i * qh + h) * dv + c] = (float)(o / l);
            }
        }
    free(s);
}

static kn_kv kv_contig(kn_dtype dt, int64_t nt, int G, int dk, int dv, int64_t k_off, int64_t v_off,
                       int64_t row_stride)
{
    kn_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.dtype = dt;
    kv.row_stride = row_stride;
    kv.n_tokens = nt;
    kv.kv_heads = G;
    kv.k_off = k_off;
    kv.v_off = v_off;
    kv.dk = dk;
    kv.dv = dv;
    return kv;
}

static void test_attention_small(void)
{
    float out[8];
    /* one key: the output is its value whatever the query */
    {
        float K[2] = {0.3f, -2}, V[3] = {1.5f, -4, 7};
        kn_kv kv = kv_contig(KN_F32, 1, 1, 2, 3, 0, 2, 5);
        kv_pool(&kv, 5, K, V);
        float q[2] = {100, -50};
        kn_tensor Q = mkf(1, 2, q), O = mkf(1, 3, NULL);
        OK(kn_attention(be, O, Q, &kv, 1, 0.7f));
        dl(O, out);
        EXACT("attention over one key returns its value", out, V, 3);
        GUARD_OK(O);
    }
    /* two keys with equal scores: the mean of the values */
    {
        float K[4] = {1, 2, 1, 2}, V[4] = {1, 10, 3, -20};
        kn_kv kv = kv_contig(KN_F32, 2, 1, 2, 2, 0, 2, 4);
        kv_pool(&kv, 8, K, V);
        float q[2] = {0.5f, -1};
        kn_tensor Q = mkf(1, 2, q), O = mkf(1, 2, NULL);
        OK(kn_attention(be, O, Q, &kv, 1, 1.0f));
        dl(O, out);
        float want[2] = {2, -5};
        CLOSE("attention equal scores -> mean", out, want, 2, 1e-6, 1e-6);
    }
    /* q [1,0], keys [1,0] and [0,1]: scores (s, 0); p0 = e^s / (e^s + 1) */
    {
        float K[4] = {1, 0, 0, 1}, V[4] = {1, 0, 0, 1};
        kn_kv kv = kv_contig(KN_F32, 2, 1, 2, 2, 0, 2, 4);
        kv_pool(&kv, 8, K, V);
        float q[4] = {1, 0, 0, 3};
        kn_tensor Q = mkf(2, 2, q), O = mkf(2, 2, NULL);
        OK(kn_attention(be, O, Q, &kv, 1, 1.0f));
        dl(O, out);
        float want[4] = {0.7310586f, 0.2689414f, 0.0474259f, 0.9525741f};
        CLOSE("attention 2 keys, scale 1", out, want, 4, 1e-6, 1e-6);
        OK(kn_attention(be, O, Q, &kv, 1, 2.0f));
        dl(O, out);
        float want2[4] = {0.8807971f, 0.1192029f, 0.0024726f, 0.9975274f};
        CLOSE("attention 2 keys, scale 2", out, want2, 4, 1e-6, 1e-6);
        GUARD_OK(O);
    }
}

/* Random attention on a contiguous kv with gaps (k_off, v_off, padding), vs the double reference. */
static void attention_case(const char *what, int nq, int qh, int G, int dk, int dv, int nt,
                           float amp, float scale, double atol, double rtol)
{
    int64_t k_off = 1, v_off = 1 + G * dk + 2, rs = v_off + G * dv + 3;
    float *K = malloc(sizeof(float) * nt * G * dk), *V = malloc(sizeof(float) * nt * G * dv);
    float *q = malloc(sizeof(float) * nq * qh * dk), *o = malloc(sizeof(float) * nq * qh * dv);
    float *r = malloc(sizeof(float) * nq * qh * dv);
    fill_rand(K, (size_t)nt * G * dk, amp);
    fill_rand(V, (size_t)nt * G * dv, 1.0f);
    fill_rand(q, (size_t)nq * qh * dk, amp);
    kn_kv kv = kv_contig(KN_F32, nt, G, dk, dv, k_off, v_off, rs);
    kv_pool(&kv, (size_t)nt * rs, K, V);
    kn_tensor Q = mkf(nq, qh * dk, q), O = mkf(nq, qh * dv, NULL);
    OK(kn_attention(be, O, Q, &kv, qh, scale));
    dl(O, o);
    attention_ref(r, q, nq, qh, K, V, nt, G, dk, dv, scale);
    CLOSE(what, o, r, (size_t)nq * qh * dv, atol, rtol);
    GUARD_OK(O);
    free(K);
    free(V);
    free(q);
    free(o);
    free(r);
}

static void test_attention_heads(void)
{
    /* multi-query: every query head reads the single kv head; heads differ only by their query */
    enum { NQ = 3, QH = 4, DK = 8, DV = 6, NT = 5 };
    float K[NT * DK], V[NT * DV], q[NQ * QH * DK], o[NQ * QH * DV], r[NQ * QH * DV];
    fill_rand(K, NT * DK, 1.0f);
    fill_rand(V, NT * DV, 1.0f);
    fill_rand(q, NQ * QH * DK, 1.0f);
    kn_kv kv = kv_contig(KN_F32, NT, 1, DK, DV, 0, DK, DK + DV);
    kv_pool(&kv, NT * (DK + DV), K, V);
    kn_tensor Q = mkf(NQ, QH * DK, q), O = mkf(NQ, QH * DV, NULL);
    OK(kn_attention(be, O, Q, &kv, QH, 0.35f));
    dl(O, o);
    attention_ref(r, q, NQ, QH, K, V, NT, 1, DK, DV, 0.35);
    CLOSE("attention multi-query (1 kv head, 4 query heads)", o, r, NQ * QH * DV, 1e-6, 1e-5);
    /* the same query in every head gives the same output in every head */
    float q1[QH * DK], o1[QH * DV];
    for (int h = 0; h < QH; h++)
        memcpy(q1 + h * DK, q, DK * sizeof(float));
    kn_tensor Q1 = mkf(1, QH * DK, q1), O1 = mkf(1, QH * DV, NULL);
    OK(kn_attention(be, O1, Q1, &kv, QH, 0.35f));
    dl(O1, o1);
    int same = 1;
    for (int h = 1; h < QH; h++)
        same &= memcmp(o1, o1 + h * DV, DV * sizeof(float)) == 0;
    CHECK(same, "attention multi-query: equal queries give equal heads");
    CLOSE("attention multi-query head 0", o1, r, DV, 1e-6, 1e-5);

    attention_case("attention grouped (2 kv heads, 4 query heads)", 3, 4, 2, 8, 5, 7, 1.0f, 0.3f,
                   1e-6, 1e-5);
    attention_case("attention MHA (3 heads)", 2, 3, 3, 4, 4, 9, 1.0f, 0.5f, 1e-6, 1e-5);
    /* many tokens: 300 is more than the block of 64 the CPU backend converts at a time */
    attention_case("attention 300 tokens", 4, 4, 2, 16, 8, 300, 2.0f, 0.25f, 2e-6, 2e-5);
    attention_case("attention 65 tokens", 2, 2, 1, 8, 8, 65, 2.0f, 0.35f, 2e-6, 2e-5);
    attention_case("attention 64 tokens", 2, 2, 1, 8, 8, 64, 2.0f, 0.35f, 2e-6, 2e-5);
    attention_case("attention 1000 tokens, peaked", 2, 2, 2, 8, 4, 1000, 3.0f, 1.0f, 1e-5, 1e-4);
}

static void test_attention_large(void)
{
    /* large scores: the softmax must subtract its running maximum (no overflow, no 0/0) */
    enum { NT = 200, DV = 2 };
    float K[NT], V[NT * DV], o[2 * DV], r[2 * DV];
    const char *names[4] = {"ascending 100*t", "descending", "random +-5000", "all about -1e4"};
    for (int mode = 0; mode < 4; mode++) {
        for (int t = 0; t < NT; t++) {
            K[t] = mode == 0 ? 100.0f * t
                   : mode == 1 ? 100.0f * (NT - t)
                   : mode == 2 ? 5000.0f * frand()
                               : -10000.0f - (float)(t % 7) * 0.25f;
            V[t * DV] = (float)t;
            V[t * DV + 1] = 1.0f - 0.01f * t;
        }
        if (mode == 2) { /* a near tie across blocks: 1 apart */
            K[10] = 6000.0f;
            K[150] = 6001.0f;
        }
        kn_kv kv = kv_contig(KN_F32, NT, 1, 1, DV, 0, 1, 1 + DV);
        kv_pool(&kv, NT * (1 + DV), K, V);
        float q[2] = {1.0f, 0.5f};
        kn_tensor Q = mkf(2, 1, q), O = mkf(2, DV, NULL);
        OK(kn_attention(be, O, Q, &kv, 1, 1.0f));
        dl(O, o);
        attention_ref(r, q, 2, 1, K, V, NT, 1, 1, DV, 1.0);
        char what[80];
        snprintf(what, sizeof what, "attention large scores, %s", names[mode]);
        CLOSE(what, o, r, 2 * DV, 1e-5, 1e-5);
    }
    /* hand value: scores 10000 and 9999 -> weights 1/(1+e^-1), 1/(1+e) */
    float K2[2] = {10000, 9999}, V2[2] = {1, 0};
    kn_kv kv = kv_contig(KN_F32, 2, 1, 1, 1, 0, 1, 2);
    kv_pool(&kv, 4, K2, V2);
    float q = 1.0f, out = 0;
    kn_tensor Q = mkf(1, 1, &q), O = mkf(1, 1, NULL);
    OK(kn_attention(be, O, Q, &kv, 1, 1.0f));
    dl(O, &out);
    CHECK(fabsf(out - 0.7310586f) < 1e-6f, "attention scores 1e4 and 1e4-1: %.7f", (double)out);
}

static void test_attention_paged(void)
{
    /* 5 tokens over 3 pages of 2 tokens, listed out of order, in a pool of 4 pages whose pages
     * are further apart than page_tokens rows; must equal the same data stored contiguously */
    enum { NT = 5, G = 2, DK = 4, DV = 3, QH = 4, NQ = 3 };
    float K[NT * G * DK], V[NT * G * DV], q[NQ * QH * DK], oc[NQ * QH * DV], op[NQ * QH * DV],
        r[NQ * QH * DV];
    fill_rand(K, NT * G * DK, 1.0f);
    fill_rand(V, NT * G * DV, 1.0f);
    fill_rand(q, NQ * QH * DK, 1.0f);
    int64_t rs = G * DK + G * DV + 1;
    kn_kv c = kv_contig(KN_F32, NT, G, DK, DV, 0, G * DK, rs);
    kv_pool(&c, NT * rs, K, V);
    static const int32_t pages[3] = {3, 0, 2};
    kn_kv p = c;
    p.pages = pages;
    p.page_tokens = 2;
    p.page_stride = 2 * rs + 5;
    p.off = 8; /* 2 floats in */
    kn_tensor pool = kv_pool(&p, 2 + 4 * (size_t)p.page_stride, K, V);
    kn_tensor Q = mkf(NQ, QH * DK, q), O = mkf(NQ, QH * DV, NULL);
    OK(kn_attention(be, O, Q, &c, QH, 0.5f));
    dl(O, oc);
    OK(kn_attention(be, O, Q, &p, QH, 0.5f));
    dl(O, op);
    EXACT("paged attention equals contiguous", op, oc, NQ * QH * DV);
    attention_ref(r, q, NQ, QH, K, V, NT, G, DK, DV, 0.5);
    CLOSE("paged attention vs reference", op, r, NQ * QH * DV, 1e-6, 1e-5);
    GUARD_OK(O);
    GUARD_OK(pool);

    /* paged, many tokens: 300 tokens over pages of 16 in reverse order */
    enum { MT = 300, PT = 16, NP = (MT + PT - 1) / PT };
    int32_t mp[NP];
    for (int i = 0; i < NP; i++)
        mp[i] = NP - 1 - i;
    float *mk = malloc(sizeof(float) * MT * DK), *mv = malloc(sizeof(float) * MT * DV);
    fill_rand(mk, MT * DK, 2.0f);
    fill_rand(mv, MT * DV, 1.0f);
    kn_kv m = kv_contig(KN_F32, MT, 1, DK, DV, DV, 0, DK + DV);
    m.pages = mp;
    m.page_tokens = PT;
    m.page_stride = PT * (DK + DV);
    kv_pool(&m, (size_t)NP * m.page_stride, mk, mv);
    float mo[NQ * 2 * DV], mr[NQ * 2 * DV];
    kn_tensor MQ = mkf(NQ, 2 * DK, q), MO = mkf(NQ, 2 * DV, NULL);
    OK(kn_attention(be, MO, MQ, &m, 2, 0.5f));
    dl(MO, mo);
    attention_ref(mr, q, NQ, 2, mk, mv, MT, 1, DK, DV, 0.5);
    CLOSE("paged attention 300 tokens, pages reversed, v before k", mo, mr, NQ * 2 * DV, 2e-6, 2e-5);
    free(mk);
    free(mv);
}

/* kn_attention_batch: three streams, each over its own source (contiguous, paged with pages out of
 * order, a different length), rows [b*NQ, (b+1)*NQ) of one query tensor; each stream's rows equal
 * the reference over its own keys alone. Then the argument checks and the injected fault. */
static void test_attention_batch(void)
{
    enum { NB = 3, G = 2, DK = 4, DV = 3, QH = 4, NQ = 3 };
    const int nt[NB] = {5, 9, 5};
    static const int32_t pages1[5] = {4, 1, 3, 0, 2};
    int64_t rs = G * DK + G * DV + 2;
    float *K[NB], *V[NB];
    kn_kv kv[NB];
    kn_tensor pools[NB];
    for (int b = 0; b < NB; b++) {
        K[b] = malloc(sizeof(float) * nt[b] * G * DK);
        V[b] = malloc(sizeof(float) * nt[b] * G * DV);
        fill_rand(K[b], (size_t)nt[b] * G * DK, 2.0f);
        fill_rand(V[b], (size_t)nt[b] * G * DV, 1.0f);
        kv[b] = kv_contig(KN_F32, nt[b], G, DK, DV, 1, 1 + G * DK, rs);
        size_t elems = (size_t)nt[b] * rs;
        if (b == 1) { /* paged: pages of 2 tokens, out of order, spaced */
            kv[b].pages = pages1;
            kv[b].page_tokens = 2;
            kv[b].page_stride = 2 * rs + 3;
            elems = 5 * (size_t)kv[b].page_stride;
        }
        pools[b] = kv_pool(&kv[b], elems, K[b], V[b]);
    }
    float q[NB * NQ * QH * DK], o[NB * NQ * QH * DV], r[NQ * QH * DV];
    fill_rand(q, NB * NQ * QH * DK, 2.0f);
    kn_tensor Q = mkf(NB * NQ, QH * DK, q), O = mkf(NB * NQ, QH * DV, NULL);
    OK(kn_attention_batch(be, O, Q, kv, NB, QH, 0.4f));
    dl(O, o);
    for (int b = 0; b < NB; b++) {
        char what[64];
        snprintf(what, sizeof what, "attention batch: stream %d over its own %d keys", b, nt[b]);
        attention_ref(r, q + b * NQ * QH * DK, NQ, QH, K[b], V[b], nt[b], G, DK, DV, 0.4);
        CLOSE(what, o + b * NQ * QH * DV, r, NQ * QH * DV, 1e-6, 1e-5);
    }
    GUARD_OK(O);
    /* the same as one kn_attention a stream, exactly */
    float o1[NQ * QH * DV];
    kn_tensor O1 = mkf(NQ, QH * DV, NULL);
    OK(kn_attention(be, O1, kn_rows(Q, NQ, NQ), &kv[1], QH, 0.4f));
    dl(O1, o1);
    EXACT("attention batch equals a call for the stream alone", o + NQ * QH * DV, o1, NQ * QH * DV);

    /* refused: no sources, rows not a multiple of the sources, a source of other widths, a source
     * outside its buffer; the output is left as it was */
    CHECK(kn_attention_batch(be, O, Q, kv, 0, QH, 0.4f) == KN_ERR_ARG, "attention batch: 0 sources");
    CHECK(kn_attention_batch(be, kn_rows(O, 0, 8), kn_rows(Q, 0, 8), kv, NB, QH, 0.4f) == KN_ERR_ARG,
          "attention batch: 8 rows over 3 sources");
    CHECK(kn_attention_batch(be, O, kn_rows(Q, 0, 6), kv, NB, QH, 0.4f) == KN_ERR_ARG,
          "attention batch: q and out rows differ");
    kn_kv bad[NB] = {kv[0], kv[1], kv[2]};
    bad[2].dk = DK - 2;
    bad[2].dv = DV;
    CHECK(kn_attention_batch(be, O, Q, bad, NB, QH, 0.4f) == KN_ERR_ARG, "attention batch: widths differ");
    bad[2] = kv[2];
    bad[2].n_tokens = 1000;
    CHECK(kn_attention_batch(be, O, Q, bad, NB, QH, 0.4f) == KN_ERR_ARG, "attention batch: source past its buffer");
    float o2[NB * NQ * QH * DV];
    dl(O, o2);
    EXACT("attention batch: a refused call leaves the output", o2, o, NB * NQ * QH * DV);
    kn_backend_inject_fault(be, 0, 0); /* the next op fails: the batch is one op */
    CHECK(kn_attention_batch(be, O, Q, kv, NB, QH, 0.4f) == KN_ERR_DEVICE, "attention batch: injected fault");
    kn_backend_inject_fault(be, -1, 0);
    OK(kn_attention_batch(be, O, Q, kv, NB, QH, 0.4f));
    for (int b = 0; b < NB; b++) {
        free(K[b]);
        free(V[b]);
        (void)pools[b];
    }
}

static void test_attention_half(void)
{
    /* bf16 and f16 kv storage: within the storage rounding of the fp32 result, and tight against
     * the reference on the rounded keys and values */
    enum { NT = 70, G = 1, DK = 8, DV = 8, QH = 2, NQ = 2 };
    float K[NT * DK], V[NT * DV], q[NQ * QH * DK], o[NQ * QH * DV], r[NQ * QH * DV],
        rr[NQ * QH * DV];
    fill_rand(K, NT * DK, 1.0f);
    fill_rand(V, NT * DV, 1.0f);
    fill_rand(q, NQ * QH * DK, 1.0f);
    attention_ref(r, q, NQ, QH, K, V, NT, G, DK, DV, 0.35);
    const kn_dtype dts[2] = {KN_BF16, KN_F16};
    for (int k = 0; k < 2; k++) {
        kn_kv kv = kv_contig(dts[k], NT, G, DK, DV, 0, DK, DK + DV + 2);
        kn_tensor pool = kv_pool(&kv, NT * (DK + DV + 2), K, V);
        kn_tensor Q = mkf(NQ, QH * DK, q), O = mkf(NQ, QH * DV, NULL);
        OK(kn_attention(be, O, Q, &kv, QH, 0.35f));
        dl(O, o);
        CLOSE(k ? "attention f16 kv vs fp32" : "attention bf16 kv vs fp32", o, r, NQ * QH * DV,
              k ? 2e-3 : 1e-2, 1e-2);
        /* the rounded K and V, read back through the backend */
        float *all = malloc(sizeof(float) * NT * (DK + DV + 2)), Kr[NT * DK], Vr[NT * DV];
        dl(pool, all);
        for (int t = 0; t < NT; t++) {
            memcpy(Kr + t * DK, all + t * (DK + DV + 2), DK * sizeof(float));
            memcpy(Vr + t * DV, all + t * (DK + DV + 2) + DK, DV * sizeof(float));
        }
        free(all);
        attention_ref(rr, q, NQ, QH, Kr, Vr, NT, G, DK, DV, 0.35);
        CLOSE(k ? "attention f16 kv vs rounded reference" : "attention bf16 kv vs rounded reference",
              o, rr, NQ * QH * DV, 1e-6, 1e-5);
        GUARD_OK(pool);
    }
}

/* kn_kv_store_batch: three streams' rows into their own pages of one pool, equal to a kv_store a
 * stream; refusals leave the pool as it was. */
static void test_kv_store_batch(void)
{
    enum { PT = 3, RS = 8, PS = 26, NP = 6, TOT = NP * PS, NB = 3, R = 2, W = 3 };
    static const int32_t p0[2] = {4, 1}, p1[3] = {0, 5, 2}, p2[1] = {3};
    const int32_t *pl[NB] = {p0, p1, p2};
    const int64_t ntok[NB] = {5, 7, 2}, tok0[NB] = {2, 4, 0};
    kn_tensor pool = newt(KN_F32, 1, TOT), ref = newt(KN_F32, 1, TOT);
    kn_kv kv[NB], kr[NB];
    for (int b = 0; b < NB; b++) {
        kv[b] = kv_contig(KN_F32, ntok[b], 1, 3, 3, 0, 3, RS);
        kv[b].pages = pl[b];
        kv[b].page_tokens = PT;
        kv[b].page_stride = PS;
        kv[b].buf = pool.buf;
        kr[b] = kv[b];
        kr[b].buf = ref.buf;
    }
    float src[NB * R * W];
    for (int i = 0; i < NB * R * W; i++)
        src[i] = 1.0f + (float)i;
    kn_tensor S = mkf(NB * R, W, src);
    OK(kn_kv_store_batch(be, kv, tok0, NB, 1, S));
    for (int b = 0; b < NB; b++)
        OK(kn_kv_store(be, &kr[b], tok0[b], 1, kn_rows(S, (int64_t)b * R, R)));
    float got[TOT], want[TOT];
    dl(pool, got);
    dl(ref, want);
    EXACT("kv_store_batch equals a kv_store a stream", got, want, TOT);
    /* stream 1's first row: token 4 = page p1[1] = 5, row 1; its column 1 holds src row 2 */
    CHECK(got[5 * PS + 1 * RS + 1] == src[2 * W] && got[3 * PS + 1 * RS + 3] == src[5 * W + 2],
          "kv_store_batch positions by hand");
    GUARD_OK(pool);
    /* refused, nothing written: no streams, rows not a multiple, another row stride, another buffer,
     * tokens past a stream's length; then an injected fault */
    kn_kv bad[NB] = {kv[0], kv[1], kv[2]};
    CHECK(kn_kv_store_batch(be, kv, tok0, 0, 1, S) == KN_ERR_ARG, "kv_store_batch: 0 streams");
    CHECK(kn_kv_store_batch(be, kv, tok0, NB, 1, kn_rows(S, 0, 5)) == KN_ERR_ARG, "kv_store_batch: 5 rows, 3 streams");
    bad[1].row_stride = RS + 1;
    CHECK(kn_kv_store_batch(be, bad, tok0, NB, 1, S) == KN_ERR_ARG, "kv_store_batch: another row stride");
    bad[1] = kv[1];
    bad[2].buf = ref.buf;
    CHECK(kn_kv_store_batch(be, bad, tok0, NB, 1, S) == KN_ERR_ARG, "kv_store_batch: another buffer");
    bad[2] = kv[2];
    const int64_t late[NB] = {2, 6, 0};
    CHECK(kn_kv_store_batch(be, kv, late, NB, 1, S) == KN_ERR_ARG, "kv_store_batch: tokens past the stream");
    float after[TOT];
    dl(pool, after);
    EXACT("kv_store_batch: refused calls leave the pool", after, got, TOT);
    kn_backend_inject_fault(be, 0, 0);
    CHECK(kn_kv_store_batch(be, kv, tok0, NB, 1, S) == KN_ERR_DEVICE, "kv_store_batch: injected fault");
    kn_backend_inject_fault(be, -1, 0);
}

static void test_kv_store(void)
{
    /* 5 tokens over pages {2, 0} of 3 tokens; rows of 8, pages 26 apart; pool of 3 pages */
    enum { PT = 3, RS = 8, PS = 26, NP = 3, NT = 5, TOT = NP * PS };
    static const int32_t pages[2] = {2, 0};
    kn_kv kv = kv_contig(KN_F32, NT, 1, 3, 3, 2, 5, RS);
    kv.pages = pages;
    kv.page_tokens = PT;
    kv.page_stride = PS;
    kn_tensor pool = newt(KN_F32, 1, TOT);
    kv.buf = pool.buf;
    float src[NT * 3];
    for (int t = 0; t < NT; t++)
        for (int c = 0; c < 3; c++)
            src[t * 3 + c] = 100.0f + 10.0f * t + c;
    kn_tensor S = mkf(NT, 3, src);
    OK(kn_kv_store(be, &kv, 0, 2, S));
    float got[TOT], want[TOT];
    for (int i = 0; i < TOT; i++)
        want[i] = nan_pattern();
    for (int t = 0; t < NT; t++)
        for (int c = 0; c < 3; c++)
            want[pages[t / PT] * PS + (t % PT) * RS + 2 + c] = src[t * 3 + c];
    dl(pool, got);
    EXACT("kv_store 5 tokens at column 2 into pages {2, 0}", got, want, TOT);
    /* token 0 sits at page 2 row 0, token 4 at page 0 row 1 */
    CHECK(got[2 * PS + 2] == 100 && got[0 * PS + 1 * RS + 2 + 2] == 142 && got[2 * PS + 2 * RS + 3] == 121,
          "kv_store positions by hand");
    GUARD_OK(pool);

    /* a second store of values for tokens 3..4 at column 5, from a strided source */
    float sv[2 * 5] = {-1, 1, 2, 3, -1, -1, 4, 5, 6, -1};
    kn_tensor SV = mkf(2, 5, sv);
    OK(kn_kv_store(be, &kv, 3, 5, kn_cols(SV, 1, 3)));
    for (int t = 3; t < 5; t++)
        for (int c = 0; c < 3; c++)
            want[pages[t / PT] * PS + (t % PT) * RS + 5 + c] = sv[(t - 3) * 5 + 1 + c];
    dl(pool, got);
    EXACT("kv_store tokens 3..4 at column 5", got, want, TOT);

    /* now keys at column 2 and values at column 5 for every token: attention reads them back */
    float vals[NT * 3];
    fill_rand(vals, NT * 3, 1.0f);
    kn_tensor VV = mkf(NT, 3, vals);
    OK(kn_kv_store(be, &kv, 0, 5, VV));
    float q[3] = {0.2f, -0.1f, 0.05f}, o[3], r[3];
    kn_tensor Q = mkf(1, 3, q), O = mkf(1, 3, NULL);
    OK(kn_attention(be, O, Q, &kv, 1, 0.1f));
    dl(O, o);
    attention_ref(r, q, 1, 1, src, vals, NT, 1, 3, 3, 0.1);
    CLOSE("attention over stored keys and values", o, r, 3, 1e-6, 1e-5);

    /* kv_load reads the same rows back from the pages: tokens 1..4 at columns 2..4, then at 5..7 */
    float back[4 * 3], wantb[4 * 3];
    kn_tensor BK = mkf(4, 3, NULL);
    OK(kn_kv_load(be, BK, &kv, 1, 2));
    dl(BK, back);
    EXACT("kv_load tokens 1..4 at column 2", back, src + 3, 4 * 3);
    GUARD_OK(BK);
    OK(kn_kv_load(be, BK, &kv, 1, 5));
    dl(BK, back);
    for (int i = 0; i < 4 * 3; i++)
        wantb[i] = vals[3 + i];
    EXACT("kv_load tokens 1..4 at column 5", back, wantb, 4 * 3);
    FAILS(kn_kv_load(be, BK, &kv, 2, 2), KN_ERR_ARG, "outside");
    FAILS(kn_kv_load(be, BK, &kv, 0, RS - 2), KN_ERR_ARG, "outside");

    /* bf16 pool: values round on the way in */
    kn_kv kb = kv_contig(KN_BF16, 2, 1, 2, 2, 0, 2, 4);
    kn_tensor bpool = newt(KN_BF16, 1, 8);
    kb.buf = bpool.buf;
    float bsrc[4] = {1 + 1.0f / 256, 3, 65504, -0.1f}, bgot[8];
    kn_tensor BS = mkf(2, 2, bsrc);
    OK(kn_kv_store(be, &kb, 0, 1, BS));
    dl(bpool, bgot);
    CHECK(isnan(bgot[0]) && bgot[1] == 1.0f && bgot[2] == 3.0f && isnan(bgot[3]) && isnan(bgot[4]) &&
              bgot[5] == 65536.0f && bgot[6] == bits_f32(0xbdcd0000u) && isnan(bgot[7]),
          "kv_store into bf16: %g %g %g %g", (double)bgot[1], (double)bgot[2], (double)bgot[5],
          (double)bgot[6]);
    GUARD_OK(bpool);
}

/* ---- layout ----------------------------------------------------------------------------------- */

static void test_patchify(void)
{
    enum { C = 2, NF = 2, h = 4, w = 6, GH = h / 2, GW = w / 2, NT = NF * GH * GW, L = NF * h * w };
    float lat[C * L], tok[NT * C * 4], want[NT * C * 4];
    for (int i = 0; i < C * L; i++)
        lat[i] = (float)i;
    kn_tensor LAT = mkf(C, L, lat), TOK = mkf(NT, C * 4, NULL);
    OK(kn_patchify(be, TOK, LAT, C, NF, h, w));
    dl(TOK, tok);
    /* token(f, y, x)[c*4 + q*2 + r] = latent[c, f, 2y+q, 2x+r] */
    for (int f = 0; f < NF; f++)
        for (int y = 0; y < GH; y++)
            for (int x = 0; x < GW; x++)
                for (int c = 0; c < C; c++)
                    for (int q = 0; q < 2; q++)
                        for (int r = 0; r < 2; r++)
                            want[((f * GH + y) * GW + x) * C * 4 + c * 4 + q * 2 + r] =
                                (float)(c * L + (f * h + 2 * y + q) * w + 2 * x + r);
    EXACT("patchify vs MODEL.md §3", tok, want, NT * C * 4);
    float t0[8] = {0, 1, 6, 7, 48, 49, 54, 55}, t1[8] = {2, 3, 8, 9, 50, 51, 56, 57};
    float t3[8] = {12, 13, 18, 19, 60, 61, 66, 67}, t6[8] = {24, 25, 30, 31, 72, 73, 78, 79};
    EXACT("patchify token 0 by hand", tok, t0, 8);
    EXACT("patchify token 1 (x=1) by hand", tok + 8, t1, 8);
    EXACT("patchify token 3 (y=1) by hand", tok + 3 * 8, t3, 8);
    EXACT("patchify token 6 (f=1) by hand", tok + 6 * 8, t6, 8);
    GUARD_OK(TOK);

    /* unpatchify: v[c, f, 2y+q, 2x+r] = out[token(f,y,x), q*2*C + r*C + c] */
    float tk[NT * C * 4], lv[C * L], lw[C * L];
    for (int i = 0; i < NT * C * 4; i++)
        tk[i] = (float)i;
    kn_tensor TK = mkf(NT, C * 4, tk), LV = mkf(C, L, NULL);
    OK(kn_unpatchify(be, LV, TK, C, NF, h, w));
    dl(LV, lv);
    for (int c = 0; c < C; c++)
        for (int f = 0; f < NF; f++)
            for (int y = 0; y < GH; y++)
                for (int x = 0; x < GW; x++)
                    for (int q = 0; q < 2; q++)
                        for (int r = 0; r < 2; r++)
                            lw[c * L + (f * h + 2 * y + q) * w + 2 * x + r] =
                                (float)(((f * GH + y) * GW + x) * C * 4 + q * 2 * C + r * C + c);
    EXACT("unpatchify vs MODEL.md §5", lv, lw, C * L);
    /* by hand: latent[0,0,0,0] = tok0[0], [0,0,0,1] = tok0[C], [1,0,0,0] = tok0[1], [0,0,1,0] =
     * tok0[2C], [0,0,0,2] = tok1[0] */
    CHECK(lv[0] == 0 && lv[1] == 2 && lv[L] == 1 && lv[w] == 4 && lv[2] == 8 && lv[w + 1] == 6,
          "unpatchify by hand: %g %g %g %g %g %g", (double)lv[0], (double)lv[1], (double)lv[L],
          (double)lv[w], (double)lv[2], (double)lv[w + 1]);
    GUARD_OK(LV);

    /* with one channel the two layouts coincide: unpatchify(patchify(x)) = x */
    float l1[L], b1[L];
    for (int i = 0; i < L; i++)
        l1[i] = (float)(i * 3 % 17);
    kn_tensor L1 = mkf(1, L, l1), T1 = mkf(NT, 4, NULL), B1 = mkf(1, L, NULL);
    OK(kn_patchify(be, T1, L1, 1, NF, h, w));
    OK(kn_unpatchify(be, B1, T1, 1, NF, h, w));
    dl(B1, b1);
    EXACT("unpatchify(patchify(x)) with C = 1", b1, l1, L);

    /* strided token and latent views */
    float tp[NT * 11];
    for (int i = 0; i < NT * 11; i++)
        tp[i] = -1;
    kn_tensor TP = mkf(NT, 11, tp);
    OK(kn_patchify(be, kn_cols(TP, 2, C * 4), LAT, C, NF, h, w));
    float tg[NT * 11], ts[NT * C * 4];
    dl(TP, tg);
    int side = 1;
    for (int n = 0; n < NT; n++) {
        memcpy(ts + n * C * 4, tg + n * 11 + 2, C * 4 * sizeof(float));
        side &= tg[n * 11] == -1 && tg[n * 11 + 1] == -1 && tg[n * 11 + 10] == -1;
    }
    EXACT("patchify into a strided view", ts, want, NT * C * 4);
    CHECK(side, "patchify wrote outside its view");
    kn_tensor LP = mkf(C, L + 5, NULL);
    OK(kn_unpatchify(be, kn_cols(LP, 5, L), TK, C, NF, h, w));
    float lp[C * L];
    dl(kn_cols(LP, 5, L), lp);
    EXACT("unpatchify into a strided view", lp, lw, C * L);
}

static void naive_conv(float *y, const float *x, const float *w, const float *b, int cin, int cout,
                       int H, int W)
{
    for (int co = 0; co < cout; co++)
        for (int py = 0; py < H; py++)
            for (int px = 0; px < W; px++) {
                double s = b ? b[co] : 0.0;
                for (int ci = 0; ci < cin; ci++)
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int sy = py + ky - 1, sx = px + kx - 1;
                            if (sy < 0 || sy >= H || sx < 0 || sx >= W)
                                continue;
                            s += (double)w[(co * cin + ci) * 9 + ky * 3 + kx] * x[(ci * H + sy) * W + sx];
                        }
                y[(co * H + py) * W + px] = (float)s;
            }
}

static void test_conv(void)
{
    /* identity kernel */
    enum { H = 3, W = 4 };
    float x[H * W], y[H * W];
    fill_rand(x, H * W, 1.0f);
    float id[9] = {0, 0, 0, 0, 1, 0, 0, 0, 0};
    kn_tensor X = mkf(1, H * W, x), ID = mkf(1, 9, id), Y = mkf(1, H * W, NULL);
    OK(kn_conv2d3x3(be, Y, X, ID, NULL, H, W));
    dl(Y, y);
    EXACT("conv identity kernel", y, x, H * W);
    GUARD_OK(Y);

    /* tap (ky=0, kx=2): y[py, px] = x[py-1, px+1] (cross-correlation, as PyTorch) */
    float sh[9] = {0, 0, 1, 0, 0, 0, 0, 0, 0}, ys[H * W];
    kn_tensor SH = mkf(1, 9, sh);
    OK(kn_conv2d3x3(be, Y, X, SH, NULL, H, W));
    dl(Y, y);
    for (int py = 0; py < H; py++)
        for (int px = 0; px < W; px++)
            ys[py * W + px] = (py - 1 >= 0 && px + 1 < W) ? x[(py - 1) * W + px + 1] : 0.0f;
    EXACT("conv single off-centre tap", y, ys, H * W);

    /* all-ones 3x3 kernel on a 3x3 of ones: counts of in-bounds neighbours */
    float ones[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, o9[9];
    kn_tensor O1 = mkf(1, 9, ones), K1 = mkf(1, 9, ones), Y9 = mkf(1, 9, NULL);
    OK(kn_conv2d3x3(be, Y9, O1, K1, NULL, 3, 3));
    dl(Y9, o9);
    float w9[9] = {4, 6, 4, 6, 9, 6, 4, 6, 4};
    EXACT("conv ones on ones (zero padding)", o9, w9, 9);
    float bias = 0.5f;
    kn_tensor B1 = mkf(1, 1, &bias);
    OK(kn_conv2d3x3(be, Y9, O1, K1, &B1, 3, 3));
    dl(Y9, o9);
    for (int i = 0; i < 9; i++)
        w9[i] += 0.5f;
    EXACT("conv ones on ones + bias 0.5", o9, w9, 9);
    GUARD_OK(Y9);

    /* 1x1 and 1xN images */
    float one = 2.0f, oo;
    kn_tensor P1 = mkf(1, 1, &one), Q1 = mkf(1, 1, NULL);
    OK(kn_conv2d3x3(be, Q1, P1, K1, &B1, 1, 1));
    dl(Q1, &oo);
    CHECK(oo == 2.5f, "conv on a 1x1 image: %g", (double)oo);

    /* several channels vs the naive loop; H != W catches a transposition */
    enum { CI = 3, CO = 2, H2 = 4, W2 = 5 };
    float mx[CI * H2 * W2], mw[CO * CI * 9], mb[CO], my[CO * H2 * W2], mr[CO * H2 * W2];
    fill_rand(mx, CI * H2 * W2, 1.0f);
    fill_rand(mw, CO * CI * 9, 1.0f);
    fill_rand(mb, CO, 1.0f);
    kn_tensor MX = mkf(CI, H2 * W2, mx), MW = mkf(CO, CI * 9, mw), MB = mkf(1, CO, mb);
    kn_tensor MY = mkf(CO, H2 * W2, NULL);
    OK(kn_conv2d3x3(be, MY, MX, MW, &MB, H2, W2));
    dl(MY, my);
    naive_conv(mr, mx, mw, mb, CI, CO, H2, W2);
    CLOSE("conv 3 -> 2 channels, 4x5, bias", my, mr, CO * H2 * W2, 1e-5, 1e-5);
    GUARD_OK(MY);
    OK(kn_conv2d3x3(be, MY, MX, MW, NULL, H2, W2));
    dl(MY, my);
    naive_conv(mr, mx, mw, NULL, CI, CO, H2, W2);
    CLOSE("conv 3 -> 2 channels, 4x5, no bias", my, mr, CO * H2 * W2, 1e-5, 1e-5);
    /* a strided output (rows of a wider matrix) */
    kn_tensor WY = mkf(CO, H2 * W2 + 4, NULL);
    OK(kn_conv2d3x3(be, kn_cols(WY, 2, H2 * W2), MX, MW, NULL, H2, W2));
    float wy[CO * (H2 * W2 + 4)];
    dl(WY, wy);
    int ok = 1;
    for (int c = 0; c < CO; c++) {
        ok &= isnan(wy[c * (H2 * W2 + 4)]) && isnan(wy[c * (H2 * W2 + 4) + 1]) &&
              isnan(wy[c * (H2 * W2 + 4) + H2 * W2 + 2]);
        for (int p = 0; p < H2 * W2; p++)
            ok &= fabsf(wy[c * (H2 * W2 + 4) + 2 + p] - mr[c * H2 * W2 + p]) < 1e-5f;
    }
    CHECK(ok, "conv into a strided output");

    /* a bigger case: 5 -> 4 channels at 9x7 */
    enum { CI3 = 5, CO3 = 4, H3 = 9, W3 = 7 };
    static float bx[CI3 * H3 * W3], bw[CO3 * CI3 * 9], bb[CO3], by[CO3 * H3 * W3], br[CO3 * H3 * W3];
    fill_rand(bx, CI3 * H3 * W3, 1.0f);
    fill_rand(bw, CO3 * CI3 * 9, 1.0f);
    fill_rand(bb, CO3, 1.0f);
    kn_tensor BX = mkf(CI3, H3 * W3, bx), BW = mkf(CO3, CI3 * 9, bw), BB = mkf(1, CO3, bb);
    kn_tensor BY = mkf(CO3, H3 * W3, NULL);
    OK(kn_conv2d3x3(be, BY, BX, BW, &BB, H3, W3));
    dl(BY, by);
    naive_conv(br, bx, bw, bb, CI3, CO3, H3, W3);
    CLOSE("conv 5 -> 4 channels, 9x7", by, br, CO3 * H3 * W3, 1e-5, 1e-5);
}

static void test_upsample(void)
{
    float x[4] = {1, 2, 3, 4}, y[16];
    kn_tensor X = mkf(1, 4, x), Y = mkf(1, 16, NULL);
    OK(kn_upsample2x(be, Y, X, 2, 2));
    dl(Y, y);
    float want[16] = {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4};
    EXACT("upsample2x 2x2", y, want, 16);
    GUARD_OK(Y);
    /* two channels, 2x3 */
    float x2[12], y2[48], w2[48];
    for (int i = 0; i < 12; i++)
        x2[i] = (float)(i + 1);
    for (int c = 0; c < 2; c++)
        for (int py = 0; py < 4; py++)
            for (int px = 0; px < 6; px++)
                w2[c * 24 + py * 6 + px] = x2[c * 6 + (py / 2) * 3 + px / 2];
    kn_tensor X2 = mkf(2, 6, x2), Y2 = mkf(2, 24, NULL);
    OK(kn_upsample2x(be, Y2, X2, 2, 3));
    dl(Y2, y2);
    EXACT("upsample2x 2 channels 2x3", y2, w2, 48);
    GUARD_OK(Y2);
}

/* ---- argument checks -------------------------------------------------------------------------- */

static void test_args(void)
{
    kn_tensor A23 = mkf(2, 3, NULL), A22 = mkf(2, 2, NULL), A32 = mkf(3, 2, NULL), V2 = mkf(1, 2, NULL);
    kn_tensor V3 = mkf(1, 3, NULL);
    float z6[6] = {0}, g6[6];
    OK(kn_upload(be, A23, z6, KN_F32));

    FAILS(kn_linear(be, A22, A23, A32, NULL), KN_ERR_ARG, "linear");   /* x.cols 3 vs w.cols 2 */
    FAILS(kn_linear(be, A23, A23, A32, NULL), KN_ERR_ARG, "linear");   /* y.cols vs w.rows */
    FAILS(kn_linear(be, A22, A23, A23, &V3), KN_ERR_ARG, "linear bias"); /* bias of 3 for 2 outputs */
    FAILS(kn_matmul_heads(be, A22, A22, A23, 2, KN_HEADS_XW), KN_ERR_ARG, "matmul_heads");
    FAILS(kn_matmul_heads(be, A22, A22, A22, 0, KN_HEADS_XW), KN_ERR_ARG, "matmul_heads");
    FAILS(kn_layernorm(be, A22, A23, NULL, NULL, 1e-6f), KN_ERR_ARG, "layernorm");
    FAILS(kn_layernorm(be, A23, A23, &V2, NULL, 1e-6f), KN_ERR_ARG, "layernorm weight");
    FAILS(kn_rmsnorm(be, A23, A23, V2, 1e-6f), KN_ERR_ARG, "rmsnorm weight");
    FAILS(kn_modulate(be, A23, A23, V3, V2), KN_ERR_ARG, "modulate scale");
    FAILS(kn_gate_add(be, A23, A32, NULL), KN_ERR_ARG, "gate_add");
    FAILS(kn_axpby(be, A23, 1, A23, 1, &A32), KN_ERR_ARG, "axpby");
    FAILS(kn_gelu_tanh(be, A23, A32), KN_ERR_ARG, "gelu");
    FAILS(kn_silu(be, A23, A32), KN_ERR_ARG, "silu");
    FAILS(kn_clamp(be, A23, A23, 1.0f, -1.0f), KN_ERR_ARG, "clamp");
    FAILS(kn_row_affine(be, A23, A23, V3, V2), KN_ERR_ARG, "row_affine scale");
    FAILS(kn_copy(be, A23, A32), KN_ERR_ARG, "copy");
    dl(A23, g6);
    EXACT("failed ops leave their output alone", g6, z6, 6);

    /* views outside their buffer: a buffer of exactly 6 floats */
    kn_buffer_t *tight = newbuf(6 * sizeof(float));
    kn_tensor T = {tight, 0, KN_F32, 2, 3, 3};
    OK(kn_silu(be, T, T));
    kn_tensor past = kn_rows(T, 1, 2); /* rows 1..2 of a 2-row tensor */
    FAILS(kn_silu(be, past, past), KN_ERR_ARG, "silu y");
    FAILS(kn_upload(be, past, z6, KN_F32), KN_ERR_ARG, "upload");
    FAILS(kn_download(be, past, g6), KN_ERR_ARG, "download");
    kn_tensor wide = kn_cols(T, 1, 3); /* ends one element past the buffer */
    FAILS(kn_copy(be, wide, wide), KN_ERR_ARG, "copy");
    FAILS(kn_linear(be, A22, wide, A23, NULL), KN_ERR_ARG, "linear x");
    kn_tensor bad_ld = {tight, 0, KN_F32, 2, 3, 2};
    FAILS(kn_silu(be, bad_ld, bad_ld), KN_ERR_ARG, "view outside");
    kn_tensor bad_off = {tight, 28, KN_F32, 1, 1, 1};
    FAILS(kn_silu(be, bad_off, bad_off), KN_ERR_ARG, "view outside");
    kn_tensor neg = {tight, 0, KN_F32, -1, 3, 3};
    FAILS(kn_silu(be, neg, neg), KN_ERR_ARG, "silu");
    kn_tensor nobuf = {NULL, 0, KN_F32, 1, 1, 1};
    FAILS(kn_silu(be, nobuf, nobuf), KN_ERR_ARG, "silu");
    /* a strided view whose last row ends exactly at the end of the buffer fits */
    kn_buffer_t *b7 = newbuf(7 * sizeof(float));
    kn_tensor S7 = {b7, 0, KN_F32, 2, 3, 4}, S7b = {b7, 0, KN_F32, 2, 3, 5};
    OK(kn_silu(be, S7, S7));
    FAILS(kn_silu(be, S7b, S7b), KN_ERR_ARG, "silu");
    kn_tensor bf = {b7, 0, KN_BF16, 2, 7, 7}; /* 14 bf16 = 28 bytes: fits */
    float g15[15];
    OK(kn_download(be, bf, g15));
    kn_tensor bf2 = {b7, 0, KN_BF16, 3, 5, 5}; /* 15 bf16 = 30 bytes: does not */
    FAILS(kn_download(be, bf2, g15), KN_ERR_ARG, "download");
    /* the CPU backend computes in fp32 only */
    kn_tensor B16 = newt(KN_BF16, 1, 4);
    FAILS(kn_silu(be, B16, B16), KN_ERR_UNSUPPORTED, "bf16");

    /* rope, timestep, patchify, conv, upsample shapes */
    kn_tensor R = mkf(6, 16, NULL);
    FAILS(kn_rope3d(be, R, 1, 0, 1, 2, 2, 10000.0), KN_ERR_ARG, "rope3d"); /* 6 rows for 4 */
    FAILS(kn_rope3d(be, R, 3, 0, 1, 2, 3, 10000.0), KN_ERR_ARG, "rope3d"); /* 16 not 3 heads */
    FAILS(kn_rope3d(be, R, 4, 0, 1, 2, 3, 10000.0), KN_ERR_ARG, "rope3d"); /* d = 4 < 6 */
    kn_tensor R14 = mkf(6, 14, NULL);
    FAILS(kn_rope3d(be, R14, 2, 0, 1, 2, 3, 10000.0), KN_ERR_ARG, "rope3d"); /* d = 7 odd */
    FAILS(kn_rope3d(be, R, 1, -1, 1, 2, 3, 10000.0), KN_ERR_ARG, "rope3d");
    float t2[2] = {0, 1};
    FAILS(kn_timestep_embed(be, A23, t2, 2), KN_ERR_ARG, "timestep_embed"); /* odd width */
    FAILS(kn_timestep_embed(be, A22, t2, 1), KN_ERR_ARG, "timestep_embed"); /* 2 rows for 1 */
    FAILS(kn_timestep_embed(be, A22, NULL, 2), KN_ERR_ARG, "timestep_embed");
    kn_tensor LAT = mkf(2, 2 * 4 * 6, NULL), TOK = mkf(12, 8, NULL);
    OK(kn_patchify(be, TOK, LAT, 2, 2, 4, 6));
    FAILS(kn_patchify(be, TOK, LAT, 2, 2, 3, 8), KN_ERR_ARG, "patchify"); /* odd h */
    FAILS(kn_patchify(be, TOK, LAT, 4, 2, 4, 6), KN_ERR_ARG, "patchify");
    FAILS(kn_unpatchify(be, LAT, TOK, 2, 1, 4, 6), KN_ERR_ARG, "unpatchify");
    kn_tensor CX = mkf(2, 12, NULL), CW = mkf(3, 18, NULL), CY = mkf(3, 12, NULL);
    FAILS(kn_conv2d3x3(be, CY, CX, CW, NULL, 3, 3), KN_ERR_ARG, "conv2d3x3"); /* 12 != 3*3 */
    FAILS(kn_conv2d3x3(be, CY, CX, A23, NULL, 3, 4), KN_ERR_ARG, "conv2d3x3");
    FAILS(kn_conv2d3x3(be, CY, CX, CW, &V2, 3, 4), KN_ERR_ARG, "conv bias");
    FAILS(kn_upsample2x(be, CY, CX, 3, 4), KN_ERR_ARG, "upsample2x");

    /* attention */
    /* a pool of exactly 16 floats (no guard zone), so "past the buffer" means past these 16 */
    float K[4 * 4] = {0};
    kn_kv kv = kv_contig(KN_F32, 4, 2, 1, 1, 0, 2, 4);
    kv.buf = newbuf(16 * sizeof(float));
    kn_tensor pool16 = {kv.buf, 0, KN_F32, 1, 16, 16};
    OK(kn_upload(be, pool16, K, KN_F32));
    kn_tensor Q3 = mkf(1, 3, NULL), O3 = mkf(1, 3, NULL), Q4 = mkf(1, 4, NULL), O4 = mkf(1, 4, NULL);
    FAILS(kn_attention(be, O3, Q3, &kv, 3, 1.0f), KN_ERR_ARG, "3 query heads over 2 kv heads");
    FAILS(kn_attention(be, O4, Q3, &kv, 4, 1.0f), KN_ERR_ARG, "attention");
    FAILS(kn_attention(be, O4, Q4, NULL, 4, 1.0f), KN_ERR_ARG, "attention");
    OK(kn_attention(be, O4, Q4, &kv, 4, 1.0f));
    kn_kv e = kv;
    e.n_tokens = 0;
    FAILS(kn_attention(be, O4, Q4, &e, 4, 1.0f), KN_ERR_ARG, "no keys");
    e = kv;
    e.n_tokens = 5; /* a contiguous source reaching past the pool */
    FAILS(kn_attention(be, O4, Q4, &e, 4, 1.0f), KN_ERR_ARG, "kv source");
    e = kv;
    e.row_stride = 3; /* narrower than the v heads it holds */
    FAILS(kn_attention(be, O4, Q4, &e, 4, 1.0f), KN_ERR_ARG, "kv source");
    e = kv;
    e.off = 4;
    FAILS(kn_attention(be, O4, Q4, &e, 4, 1.0f), KN_ERR_ARG, "kv source");
    e = kv;
    e.kv_heads = 0;
    FAILS(kn_attention(be, O4, Q4, &e, 4, 1.0f), KN_ERR_ARG, "kv source");

    /* paged: a pool of 2 pages of 2 tokens (16 floats) */
    static const int32_t ok_pages[2] = {1, 0}, bad_pages[2] = {0, 2}, neg_pages[2] = {0, -1};
    kn_kv p = kv;
    p.page_tokens = 2;
    p.page_stride = 8;
    p.pages = ok_pages;
    OK(kn_attention(be, O4, Q4, &p, 4, 1.0f));
    p.pages = bad_pages;
    FAILS(kn_attention(be, O4, Q4, &p, 4, 1.0f), KN_ERR_ARG, "kv source");
    p.pages = neg_pages;
    FAILS(kn_attention(be, O4, Q4, &p, 4, 1.0f), KN_ERR_ARG, "kv source");
    p.pages = ok_pages;
    p.page_stride = 7; /* pages overlap */
    FAILS(kn_attention(be, O4, Q4, &p, 4, 1.0f), KN_ERR_ARG, "kv source");
    p.page_stride = 8;
    p.page_tokens = 0;
    FAILS(kn_attention(be, O4, Q4, &p, 4, 1.0f), KN_ERR_ARG, "kv source");

    /* kv_store */
    float before[16], after[16];
    kn_tensor pool = {kv.buf, 0, KN_F32, 1, 16, 16};
    kn_tensor S21 = mkf(2, 1, NULL), S12 = mkf(1, 2, NULL), S13 = mkf(1, 3, NULL);
    OK(kn_upload(be, S21, z6, KN_F32));
    OK(kn_kv_store(be, &kv, 2, 0, S21));
    dl(pool, before);
    FAILS(kn_kv_store(be, &kv, 3, 0, S21), KN_ERR_ARG, "kv_store: tokens 3..5");
    FAILS(kn_kv_store(be, &kv, -1, 0, S21), KN_ERR_ARG, "kv_store");
    FAILS(kn_kv_store(be, &kv, 0, 3, S12), KN_ERR_ARG, "kv_store: destination"); /* 3 + 2 > 4 */
    FAILS(kn_kv_store(be, &kv, 0, 2, S13), KN_ERR_ARG, "kv_store: destination");
    FAILS(kn_kv_store(be, &kv, 0, -1, S12), KN_ERR_ARG, "kv_store");
    FAILS(kn_kv_store(be, NULL, 0, 0, S12), KN_ERR_ARG, "kv_store");
    p.pages = bad_pages;
    FAILS(kn_kv_store(be, &p, 0, 0, S21), KN_ERR_ARG, "kv_store: destination");
    p.pages = neg_pages;
    FAILS(kn_kv_store(be, &p, 0, 0, S21), KN_ERR_ARG, "kv_store: destination");
    dl(pool, after);
    EXACT("failed kv_store leaves the pool alone", after, before, 16);
}

int main(void)
{
    be = kn_cpu_backend_new();
    if (!be) {
        printf("cannot create the CPU backend\n");
        return 1;
    }
    test_arena();
    test_linear();
    test_linear_gelu();
    test_matmul_heads();
    test_layernorm();
    test_rmsnorm();
    test_modulate_gate();
    test_axpby();
    test_activations();
    test_copy_dtypes();
    test_upload_download();
    test_download_rgb8();
    test_rope();
    test_groups();
    test_layernorm_modulate();
    test_rope_table();
    test_timestep();
    test_attention_small();
    test_attention_heads();
    test_attention_large();
    test_attention_paged();
    test_attention_batch();
    test_attention_half();
    test_kv_store();
    test_kv_store_batch();
    test_patchify();
    test_conv();
    test_upsample();
    test_args();
    for (int i = 0; i < nbufs; i++)
        kn_buffer_free(be, bufs[i]);
    kn_backend_free(be);
    return check_done();
}
