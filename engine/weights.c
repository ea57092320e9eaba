/* engine/weights.c — see weights.h.
 *
 * One table of (name, file shape, view) is built from the config; the same table sizes the single
 * buffer, slices it, loads or draws each tensor, and lists the manifest. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/rng.h"
#include "engine/safetensors.h"
#include "engine/weights.h"

typedef enum { INIT_LINEAR, INIT_BIAS, INIT_NORM, INIT_SMALL, INIT_EMBED, INIT_CONV, INIT_STD } init_kind;

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[5];
    int64_t rows, cols; /* engine view */
    kn_tensor *dst;
    init_kind init;
    int64_t fan_in;
    /* fused (fuse()): dst is rows (a weight) or columns (a bias) from r0 / c0 of a parent tensor,
     * not an arena slot of its own */
    kn_tensor *parent;
    int64_t r0, c0;
    int in_bias; /* the parent is a bias [1, n]: dst is columns c0.. of it */
} wspec;

/* A tensor several specs live in (fuse()): placed in the arena first; neither read from the file
 * nor drawn itself (its parts are, under their own names and draw indices). */
typedef struct {
    kn_tensor *dst;
    int64_t rows, cols;
} wparent;

typedef struct {
    wspec *v;
    int n, cap;
    wparent *p;
    int np, pcap;
    int oom;
} wlist;

/* The array v of n elements (capacity *cap, doubling from `first`) with room for one more: v itself
 * or its larger copy, or NULL with l->oom set (v is then left as it was). */
static void *room(wlist *l, void *v, int n, int *cap, size_t size, int first)
{
    if (n < *cap)
        return v;
    int c = *cap ? 2 * *cap : first;
    void *p = realloc(v, size * (size_t)c);
    if (!p) {
        l->oom = 1;
        return NULL;
    }
    *cap = c;
    return p;
}

static void add(wlist *l, kn_tensor *dst, init_kind init, int64_t fan_in, int ndim, const int64_t *shape,
                const char *fmt, ...) __attribute__((format(printf, 7, 8)));

#include <stdarg.h>
static void add(wlist *l, kn_tensor *dst, init_kind init, int64_t fan_in, int ndim, const int64_t *shape,
                const char *fmt, ...)
{
    wspec *grown = room(l, l->v, l->n, &l->cap, sizeof *l->v, 256);
    if (!grown)
        return;
    l->v = grown;
    wspec *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = ndim;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        s->shape[i] = shape[i];
        n *= shape[i];
    }
    s->cols = shape[ndim - 1];
    s->rows = n / s->cols;
    if (init == INIT_CONV) { /* [out, in, 3, 3] -> [out, in*9] */
        s->rows = shape[0];
        s->cols = n / shape[0];
    }
    if (ndim == 5) { /* patch embedding [D, C, 1, 2, 2] -> [D, 4C] */
        s->rows = shape[0];
        s->cols = n / shape[0];
    }
    s->dst = dst;
    s->init = init;
    s->fan_in = fan_in;
}

/* The linears parts[0..n) (same input width, all with biases or none) as row ranges of one weight
 * [sum of outputs, in] and column ranges of one bias [1, sum]: F, so one GEMM computes all of them.
 * Their specs keep their names and draw indices (the seeded weights do not change). */
static void fuse(wlist *l, eng_linear *F, eng_linear *const *parts, int n)
{
    int64_t rows = 0, in = -1;
    int bias = 0;
    for (int k = 0; k < n; k++) {
        int64_t start = rows;
        for (int i = 0; i < l->n; i++) {
            wspec *s = &l->v[i];
            if (s->dst == &parts[k]->w) {
                s->parent = &F->w;
                s->r0 = start;
                rows = start + s->rows;
                in = s->cols;
            } else if (s->dst == &parts[k]->b) {
                s->parent = &F->b;
                s->c0 = start;
                s->in_bias = 1;
                bias = 1;
            }
        }
    }
    for (int k = 0; k < 1 + bias; k++) {
        wparent *grown = room(l, l->p, l->np, &l->pcap, sizeof *l->p, 64);
        if (!grown)
            return;
        l->p = grown;
        l->p[l->np++] = k == 0 ? (wparent){&F->w, rows, in} : (wparent){&F->b, 1, rows};
    }
}

#define S1(a) ((const int64_t[]){a})
#define S2(a, b) ((const int64_t[]){a, b})
#define S3(a, b, c) ((const int64_t[]){a, b, c})
#define S4(a, b, c, d) ((const int64_t[]){a, b, c, d})

static void lin(wlist *l, eng_linear *L, int64_t out, int64_t in, int bias, const char *name)
{
    add(l, &L->w, INIT_LINEAR, in, 2, S2(out, in), "%s.weight", name);
    if (bias)
        add(l, &L->b, INIT_BIAS, in, 1, S1(out), "%s.bias", name);
}

static void build(const eng_config *c, eng_weights *w, wlist *l)
{
    int64_t D = c->dim, C = c->in_ch, H = c->heads, dh = c->head_dim;
    char p[64];
    add(l, &w->patch.w, INIT_LINEAR, 4 * C, 5, (const int64_t[]){D, C, 1, 2, 2}, "patch_embedding.weight");
    add(l, &w->patch.b, INIT_BIAS, 0, 1, S1(D), "patch_embedding.bias");
    lin(l, &w->text0, D, c->text_dim, 1, "text_embedding.0");
    lin(l, &w->text2, D, D, 1, "text_embedding.2");
    lin(l, &w->time0, D, c->freq_dim, 1, "time_embedding.0");
    lin(l, &w->time2, D, D, 1, "time_embedding.2");
    lin(l, &w->time_proj, 6 * D, D, 1, "time_projection.1");
    for (int i = 0; i < c->layers; i++) {
        eng_block_weights *b = &w->blocks[i];
        add(l, &b->modulation, INIT_SMALL, 0, 3, S3(1, 6, D), "blocks.%d.modulation", i);
        snprintf(p, sizeof p, "blocks.%d.self_attn", i);
        char n[96];
#define N(suffix) (snprintf(n, sizeof n, "%s.%s", p, suffix), n)
        if (c->layout == ENG_LAYOUT_MHA) {
            lin(l, &b->q, D, D, 1, N("q"));
            lin(l, &b->k, D, D, 1, N("k"));
            lin(l, &b->v, D, D, 1, N("v"));
            lin(l, &b->o, D, D, 1, N("o"));
            add(l, &b->norm_q, INIT_NORM, 0, 1, S1(D), "%s.norm_q.weight", p);
            add(l, &b->norm_k, INIT_NORM, 0, 1, S1(D), "%s.norm_k.weight", p);
            eng_linear *parts[3] = {&b->q, &b->k, &b->v};
            fuse(l, &b->qkv, parts, 3);
        } else {
            int64_t dc = c->d_c, dr = c->d_r;
            lin(l, &b->q, H * dh, D, 1, N("q"));
            add(l, &b->norm_q, INIT_NORM, 0, 1, S1(H * dh), "%s.norm_q.weight", p);
            lin(l, &b->q_rope, H * dr, D, 1, N("q_rope"));
            add(l, &b->norm_q_rope, INIT_NORM, 0, 1, S1(H * dr), "%s.norm_q_rope.weight", p);
            lin(l, &b->kv_down, dc, D, 1, N("kv_down"));
            add(l, &b->norm_kv, INIT_NORM, 0, 1, S1(dc), "%s.norm_kv.weight", p);
            lin(l, &b->k_rope, dr, D, 1, N("k_rope"));
            add(l, &b->norm_k_rope, INIT_NORM, 0, 1, S1(dr), "%s.norm_k_rope.weight", p);
            add(l, &b->k_up, INIT_LINEAR, dc, 2, S2(H * dh, dc), "%s.k_up.weight", p);
            add(l, &b->v_up, INIT_LINEAR, dc, 2, S2(H * dh, dc), "%s.v_up.weight", p);
            lin(l, &b->o, D, H * dh, 1, N("o"));
            eng_linear *parts[4] = {&b->q, &b->q_rope, &b->kv_down, &b->k_rope};
            fuse(l, &b->qkv, parts, 4);
        }
        snprintf(p, sizeof p, "blocks.%d.cross_attn", i);
        lin(l, &b->cq, D, D, 1, N("q"));
        lin(l, &b->ck, D, D, 1, N("k"));
        lin(l, &b->cv, D, D, 1, N("v"));
        lin(l, &b->co, D, D, 1, N("o"));
#undef N
        add(l, &b->cnorm_q, INIT_NORM, 0, 1, S1(D), "%s.norm_q.weight", p);
        add(l, &b->cnorm_k, INIT_NORM, 0, 1, S1(D), "%s.norm_k.weight", p);
        add(l, &b->norm3_w, INIT_NORM, 0, 1, S1(D), "blocks.%d.norm3.weight", i);
        add(l, &b->norm3_b, INIT_BIAS, 0, 1, S1(D), "blocks.%d.norm3.bias", i);
        snprintf(p, sizeof p, "blocks.%d.ffn.0", i);
        lin(l, &b->ffn0, c->ffn_dim, D, 1, p);
        snprintf(p, sizeof p, "blocks.%d.ffn.2", i);
        lin(l, &b->ffn2, D, c->ffn_dim, 1, p);
    }
    lin(l, &w->head, 4 * C, D, 1, "head.head");
    add(l, &w->head_mod, INIT_SMALL, 0, 3, S3(1, 2, D), "head.modulation");
    add(l, &w->embed, INIT_EMBED, 0, 2, S2(c->vocab, c->text_dim), "text_encoder.embed.weight");
    if (c->text_pos)
        add(l, &w->text_pos, INIT_SMALL, 0, 2, S2(c->text_len, c->text_dim), "text_encoder.pos.weight");
    add(l, &w->lat_mean, INIT_SMALL, 0, 1, S1(C), "decoder.latent_mean");
    add(l, &w->lat_std, INIT_STD, 0, 1, S1(C), "decoder.latent_std");
    int64_t ch = c->dec_ch;
    add(l, &w->dec_in.w, INIT_CONV, 2 * C * 9, 4, S4(ch, 2 * C, 3, 3), "decoder.conv_in.weight");
    add(l, &w->dec_in.b, INIT_BIAS, 0, 1, S1(ch), "decoder.conv_in.bias");
    add(l, &w->dec_mid.w, INIT_CONV, ch * 9, 4, S4(ch, ch, 3, 3), "decoder.conv_mid.weight");
    add(l, &w->dec_mid.b, INIT_BIAS, 0, 1, S1(ch), "decoder.conv_mid.bias");
    for (int i = 0; i < c->dec_up; i++) {
        add(l, &w->dec_up[i].w, INIT_CONV, ch * 9, 4, S4(ch, ch, 3, 3), "decoder.up.%d.weight", i);
        add(l, &w->dec_up[i].b, INIT_BIAS, 0, 1, S1(ch), "decoder.up.%d.bias", i);
    }
    add(l, &w->dec_out.w, INIT_CONV, ch * 9, 4, S4(3 * c->dec_t_up, ch, 3, 3), "decoder.conv_out.weight");
    add(l, &w->dec_out.b, INIT_BIAS, 0, 1, S1(3 * c->dec_t_up), "decoder.conv_out.bias");
}

void eng_weights_manifest(const eng_config *c, eng_weight_visit fn, void *user)
{
    eng_weights w;
    memset(&w, 0, sizeof w);
    w.blocks = calloc((size_t)c->layers, sizeof *w.blocks);
    wlist l = {0};
    if (w.blocks) {
        build(c, &w, &l);
        for (int i = 0; i < l.n && !l.oom; i++)
            fn(user, l.v[i].name, l.v[i].ndim, l.v[i].shape);
    }
    free(l.v);
    free(w.blocks);
}

typedef struct {
    const wspec *s;
    uint64_t seed;
    uint32_t idx;
    float *v;
    size_t i0, n;
} draw_part;

static void draw_range(const wspec *s, uint64_t seed, uint32_t idx, float *v, size_t i0, size_t n);

static void *draw_thread(void *arg)
{
    draw_part *p = arg;
    draw_range(p->s, p->seed, p->idx, p->v + p->i0, p->i0, p->n);
    return NULL;
}

/* Seeded random values for one tensor (not meant to match any other implementation); large
 * tensors are drawn by several threads in slices (the values do not depend on the split). */
static void draw(const wspec *s, uint64_t seed, uint32_t idx, float *v, size_t n)
{
    enum { MAXT = 16 };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = n >= (1u << 20) && ncpu > 1 ? (int)(ncpu < MAXT ? ncpu : MAXT) : 1;
    pthread_t th[MAXT];
    draw_part parts[MAXT];
    size_t per = (n / (size_t)nt + 3) / 4 * 4;
    int started = 0;
    for (int t = 1; t < nt; t++) {
        size_t i0 = per * (size_t)t;
        if (i0 >= n)
            break;
        parts[t] = (draw_part){s, seed, idx, v, i0, n - i0 < per ? n - i0 : per};
        if (pthread_create(&th[t], NULL, draw_thread, &parts[t]))
            break;
        started = t;
    }
    size_t own = started ? per : n; /* threads that did not start: this one draws the rest */
    if (started && per * (size_t)(started + 1) < n)
        draw_range(s, seed, idx, v + per * (size_t)(started + 1), per * (size_t)(started + 1),
                   n - per * (size_t)(started + 1));
    draw_range(s, seed, idx, v, 0, own < n ? own : n);
    for (int t = 1; t <= started; t++)
        pthread_join(th[t], NULL);
}

static void draw_range(const wspec *s, uint64_t seed, uint32_t idx, float *v, size_t i0, size_t n)
{
    eng_normals_at(seed, idx, 0, 0x57454947u /* "WEIG" */, v, i0, n);
    for (size_t i = 0; i < n; i++) {
        switch (s->init) {
        case INIT_LINEAR:
        case INIT_CONV: v[i] *= (float)(1.0 / sqrt((double)s->fan_in)); break;
        case INIT_BIAS:
        case INIT_SMALL: v[i] *= 0.1f; break;
        case INIT_NORM: v[i] = 1.0f + 0.1f * v[i]; break;
        case INIT_EMBED: break;
        case INIT_STD: v[i] = 1.0f + 0.25f * tanhf(v[i]); break;
        }
    }
}

static int apply_meta(eng_config *c, st_file_t *f, const char *path, char *err, size_t errlen)
{
    return eng_config_set_sampler(c, st_metadata(f, ENG_META_SAMPLER_STEPS), st_metadata(f, ENG_META_SAMPLER_SHIFT),
                                  path, err, errlen);
}

int eng_config_apply_file(eng_config *c, const char *path, char *err, size_t errlen)
{
    st_file_t *f = NULL;
    char e2[256];
    if (st_open(&f, path, e2, sizeof e2) != ST_OK) {
        snprintf(err, errlen, "%s", e2);
        return -1;
    }
    int rc = apply_meta(c, f, path, err, errlen);
    st_close(f);
    return rc;
}

int eng_weights_load(eng_weights *w, kn_backend_t *be, const eng_config *c, const char *path,
                     uint64_t seed, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    wlist l = {0};
    st_file_t *f = NULL;
    float *tmp = NULL;
    int rc = -1;
    kn_dtype dt = kn_backend_compute_dtype(be);
    w->blocks = calloc((size_t)c->layers, sizeof *w->blocks);
    if (!w->blocks)
        goto oom;
    build(c, w, &l);
    if (l.oom)
        goto oom;
    size_t total = 0, maxn = 0;
    for (int i = 0; i < l.np; i++) {
        size_t b = kn_arena_bytes(dt, l.p[i].rows, l.p[i].cols);
        if (b == SIZE_MAX || total > SIZE_MAX - b) {
            snprintf(err, errlen, "weights: size overflows");
            goto fail;
        }
        total += b;
    }
    for (int i = 0; i < l.n; i++) {
        size_t b = l.v[i].parent ? 0 : kn_arena_bytes(dt, l.v[i].rows, l.v[i].cols);
        if (b == SIZE_MAX || total > SIZE_MAX - b) {
            snprintf(err, errlen, "weights: size overflows");
            goto fail;
        }
        total += b;
        size_t n = (size_t)(l.v[i].rows * l.v[i].cols);
        if (n > maxn)
            maxn = n;
        w->n_params += l.v[i].rows * l.v[i].cols;
    }
    if (path) {
        char e2[256];
        if (st_open(&f, path, e2, sizeof e2) != ST_OK) {
            snprintf(err, errlen, "%s", e2);
            goto fail;
        }
    }
    w->buf = kn_buffer_alloc(be, total);
    if (!w->buf) {
        snprintf(err, errlen, "weights: cannot allocate %zu bytes on %s: %s", total,
                 kn_backend_name(be), kn_backend_error(be));
        goto fail;
    }
    kn_arena a;
    kn_arena_init(&a, w->buf);
    if (!(tmp = malloc(sizeof(float) * (maxn ? maxn : 1))))
        goto oom;
    for (int i = 0; i < l.np; i++)
        if (kn_arena_tensor(&a, l.p[i].dst, dt, l.p[i].rows, l.p[i].cols)) {
            snprintf(err, errlen, "weights: arena overflow (internal)");
            goto fail;
        }
    for (int i = 0; i < l.n; i++) {
        wspec *s = &l.v[i];
        if (s->parent)
            *s->dst = s->in_bias ? kn_cols(*s->parent, s->c0, s->cols) : kn_rows(*s->parent, s->r0, s->rows);
        else if (kn_arena_tensor(&a, s->dst, dt, s->rows, s->cols)) {
            snprintf(err, errlen, "weights: arena overflow (internal)");
            goto fail;
        }
        kn_status ks;
        if (path) {
            const st_tensor *t;
            if (st_expect(f, s->name, s->ndim, s->shape, &t) != ST_OK) {
                snprintf(err, errlen, "%s: %s", path, st_error(f));
                goto fail;
            }
            /* through fp32 host memory: handles unaligned data and every stored dtype */
            if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) {
                snprintf(err, errlen, "%s: tensor '%s' has dtype %s; expected F32, BF16 or F16", path,
                         s->name, st_dtype_name(t->dtype));
                goto fail;
            }
            st_status ss = st_to_f32(t, tmp, (size_t)t->nelem);
            if (ss != ST_OK) {
                snprintf(err, errlen, "%s: tensor '%s': %s", path, s->name, st_strerror(ss));
                goto fail;
            }
            ks = kn_upload(be, *s->dst, tmp, KN_F32);
        } else {
            draw(s, seed, (uint32_t)i, tmp, (size_t)(s->rows * s->cols));
            ks = kn_upload(be, *s->dst, tmp, KN_F32);
        }
        if (ks != KN_OK) {
            snprintf(err, errlen, "weights: uploading '%s': %s", s->name, kn_backend_error(be));
            goto fail;
        }
    }
    if (f) { /* a malformed sampler fails the load even where the caller did not apply it */
        eng_config t = *c;
        if (apply_meta(&t, f, path, err, errlen))
            goto fail;
    }
    if (f && st_metadata(f, "vmla.vocab")) {
        w->vocab_words = strdup(st_metadata(f, "vmla.vocab"));
        if (!w->vocab_words)
            goto oom;
    }
    rc = 0;
    goto done;
oom:
    snprintf(err, errlen, "weights: out of host memory");
fail:
    eng_weights_free(w, be);
done:
    free(tmp);
    free(l.v);
    free(l.p);
    if (f)
        st_close(f);
    return rc;
}

void eng_weights_free(eng_weights *w, kn_backend_t *be)
{
    kn_buffer_free(be, w->buf);
    free(w->blocks);
    free(w->vocab_words);
    memset(w, 0, sizeof *w);
}
