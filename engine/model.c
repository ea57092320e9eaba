/* engine/model.c — the DiT forward, the text path and the decoder, as sequences of backend ops.
 *
 * Shapes in comments: B streams in the batch, N tokens a chunk, Nt = B*N, D = dim, H heads,
 * dh head dim, dc/dr the MLA latent and RoPE widths. Equations are those of docs/MODEL.md.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"

#define TRY(expr)                                                                                 \
    do {                                                                                          \
        kn_status st_ = (expr);                                                                   \
        if (st_ != KN_OK)                                                                         \
            return st_;                                                                           \
    } while (0)

int eng_model_out_h(const eng_model *m) { return m->h << m->c->dec_up; }
int eng_model_out_w(const eng_model *m) { return m->wd << m->c->dec_up; }

/* Every activation, in one list: sized once, carved once. */
typedef struct {
    kn_tensor *t;
    int64_t rows, cols;
    int f32; /* kept in f32 whatever the compute dtype (the RoPE table) */
} act;

static int acts(eng_model *m, act *a)
{
    const eng_config *c = m->c;
    int64_t B = m->max_batch, Nt = B * m->N, D = c->dim, H = c->heads, dh = c->head_dim;
    int64_t hw_out = (int64_t)eng_model_out_h(m) * eng_model_out_w(m), hw = (int64_t)m->h * m->wd;
    int n = 0;
#define A(field, r, cc) a[n++] = (act){&m->field, (r), (cc), 0}
    A(sin, B, c->freq_dim);
    A(e_h, B, D);
    A(e, B, D);
    A(es, B, D);
    A(e0, B, 6 * D);
    A(mod, B * 6, D);
    A(hmod, B * 2, D);
    A(tok, Nt, 4 * c->in_ch);
    A(x, Nt, D);
    A(xn, Nt, D);
    A(q, Nt, (H * dh > D ? H * dh : D));
    A(att, Nt, (H * dh > D ? H * dh : D));
    A(y, Nt, D);
    /* ff also holds the fused self-attention projections (proj) when it is as wide: the two are
     * never live at once */
    int64_t pw = c->layout == ENG_LAYOUT_MHA ? 3 * D : H * (dh + c->d_r) + c->d_c + c->d_r;
    A(ff, Nt, c->ffn_dim >= pw ? c->ffn_dim : pw);
    A(hout, Nt, 4 * c->in_ch);
    a[n++] = (act){&m->rope, Nt, c->layout == ENG_LAYOUT_MHA ? dh : c->d_r, 1};
    if (c->layout == ENG_LAYOUT_MHA) {
        A(k, Nt, D);
    } else {
        A(ckr, Nt, c->d_c + c->d_r);
        A(qt, Nt, H * c->d_c);
        A(qa, Nt, H * ((c->d_c > dh ? c->d_c : dh) + c->d_r));
        A(olat, Nt, H * c->d_c);
        if (m->mla_rebuild) {
            /* room for rebuild_streams windows at once: one GEMM and one batched attention for
             * them (model.h) */
            int64_t tmax = (int64_t)(c->sink + c->window) * (m->h / 2) * (m->wd / 2);
            int64_t wl = c->d_c + c->d_r, wk = H * (dh + c->d_r) + H * dh;
            size_t per = (size_t)tmax * (size_t)(wl + wk) * kn_dtype_size(kn_backend_compute_dtype(m->be));
            int64_t r = per > 0 ? (int64_t)(m->rebuild_bytes / per) : 1;
            m->rebuild_streams = (int)(r < 1 ? 1 : r > B ? B : r);
            A(lat_tmp, m->rebuild_streams * tmax, wl);
            A(kvr, m->rebuild_streams * tmax, wk);
        }
    }
    A(ctx_in, c->text_len, c->text_dim);
    A(ctx_h, c->text_len, D);
    A(ctx, c->text_len, D);
    A(zero_row, 1, c->text_dim);
    A(d_cat, 2 * c->in_ch, hw);
    A(d_a, c->dec_ch, hw_out);
    A(d_b, c->dec_ch, hw_out);
    A(d_o, 3 * c->dec_t_up, hw_out);
    A(d_half, 1, 3 * c->dec_t_up);
#undef A
    return n;
}

/* The rebuild weights of every layer: kw = [per head [k_up_h 0; 0 I_dr]; v_up 0], so that one GEMM
 * of the latent rows [c | k_r] gives each head's key [k_c,h | k_r] side by side, then every head's
 * value (the zeros and ones are exact in every dtype, so the result is that of the separate
 * products). */
static int init_rebuild(eng_model *m, char *err, size_t errlen)
{
    const eng_config *c = m->c;
    int H = c->heads, dh = c->head_dim, dc = c->d_c, dr = c->d_r, L = c->layers;
    int64_t krows = (int64_t)H * (dh + dr), rows = krows + (int64_t)H * dh, cols = dc + dr;
    kn_dtype dt = kn_backend_compute_dtype(m->be);
    size_t per = kn_arena_bytes(dt, rows, cols);
    m->kw = calloc((size_t)L, sizeof *m->kw);
    float *host = calloc((size_t)(rows * cols), sizeof(float));
    m->kw_buf = m->kw && host ? kn_buffer_alloc(m->be, per * (size_t)L) : NULL;
    if (!m->kw_buf) {
        free(host);
        snprintf(err, errlen, "MLA rebuild weights: cannot allocate %zu bytes", per * (size_t)L);
        return -1;
    }
    for (int h = 0; h < H; h++) /* the identity blocks */
        for (int r = 0; r < dr; r++)
            host[((int64_t)h * (dh + dr) + dh + r) * cols + dc + r] = 1.0f;
    kn_arena a;
    kn_arena_init(&a, m->kw_buf);
    kn_status st = KN_OK;
    for (int l = 0; l < L && st == KN_OK; l++) {
        kn_arena_tensor(&a, &m->kw[l], dt, rows, cols); /* sized above */
        st = kn_upload(m->be, m->kw[l], host, KN_F32);
        for (int h = 0; h < H && st == KN_OK; h++)
            st = kn_copy(m->be, kn_cols(kn_rows(m->kw[l], (int64_t)h * (dh + dr), dh), 0, dc),
                         kn_rows(m->w->blocks[l].k_up, (int64_t)h * dh, dh));
        if (st == KN_OK)
            st = kn_copy(m->be, kn_cols(kn_rows(m->kw[l], krows, (int64_t)H * dh), 0, dc), m->w->blocks[l].v_up);
    }
    free(host);
    if (st != KN_OK) {
        snprintf(err, errlen, "MLA rebuild weights: %s", kn_backend_error(m->be));
        return -1;
    }
    return 0;
}

/* The rebuild cache (model.h): as many slots as its budget holds, at most max_batch; none when not
 * even one fits. */
static int init_rebuild_cache(eng_model *m, char *err, size_t errlen)
{
    const eng_config *c = m->c;
    int64_t tmax = (int64_t)(c->sink + c->window) * (m->h / 2) * (m->wd / 2);
    int64_t wk = (int64_t)c->heads * (2 * c->head_dim + c->d_r);
    kn_dtype dt = kn_backend_compute_dtype(m->be);
    size_t slot = (size_t)c->layers * (size_t)tmax * (size_t)wk * kn_dtype_size(dt);
    int64_t ns = slot ? (int64_t)(m->rbc_budget / slot) : 0;
    if (ns > m->max_batch)
        ns = m->max_batch;
    if (ns < 1)
        return 0;
    int64_t rows = (int64_t)c->layers * ns * tmax;
    size_t bytes = kn_arena_bytes(dt, rows, wk);
    m->rbc_id = calloc((size_t)ns, sizeof *m->rbc_id);
    m->rbc_used = calloc((size_t)ns, sizeof *m->rbc_used);
    m->rbc_ready = calloc((size_t)ns, 1);
    m->rbc_buf = m->rbc_id && m->rbc_used && m->rbc_ready ? kn_buffer_alloc(m->be, bytes) : NULL;
    if (!m->rbc_buf) {
        snprintf(err, errlen, "MLA rebuild cache: cannot allocate %zu bytes (%lld slots; "
                 "VMLA_MLA_REBUILD_CACHE_BYTES sets its budget)", bytes, (long long)ns);
        return -1;
    }
    kn_arena a;
    kn_arena_init(&a, m->rbc_buf);
    kn_arena_tensor(&a, &m->rbc, dt, rows, wk); /* sized above */
    m->rbc_slots = (int)ns;
    m->rbc_tmax = tmax;
    m->rbc_slot_bytes = slot;
    return 0;
}

/* A byte count from the environment: unset or empty gives def; otherwise plain decimal digits.
 * Returns 0, or -1 with a message. */
static int env_bytes(const char *name, size_t def, size_t *out, char *err, size_t errlen)
{
    const char *v = getenv(name);
    *out = def;
    if (!v || !*v)
        return 0;
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v < '0' || *v > '9' || *end || errno || x > SIZE_MAX) {
        snprintf(err, errlen, "%s='%.40s': expected a byte count (decimal digits)", name, v);
        return -1;
    }
    *out = (size_t)x;
    return 0;
}

int eng_model_init(eng_model *m, const eng_config *c, kn_backend_t *be, const eng_weights *w,
                   kv_pool_t *pool, int max_batch, int F, int h, int wd, int mla_rebuild, char *err,
                   size_t errlen)
{
    memset(m, 0, sizeof *m);
    /* the MLA rebuild's budgets (model.h): environment overrides, checked */
    if (env_bytes("VMLA_MLA_REBUILD_BYTES", ENG_REBUILD_BYTES, &m->rebuild_bytes, err, errlen) ||
        env_bytes("VMLA_MLA_REBUILD_CACHE_BYTES", ENG_REBUILD_CACHE_BYTES, &m->rbc_budget, err, errlen))
        return -2;
    m->mla_rebuild = c->layout == ENG_LAYOUT_MLA && mla_rebuild;
    for (int i = 0; i < ENG_FWD_MAX; i++)
        m->fwd_slot[i] = -1; /* no rebuild cache slot until rbc_assign gives one */
    m->c = c;
    m->be = be;
    m->w = w;
    m->pool = pool;
    m->max_batch = max_batch;
    m->F = F;
    m->h = h;
    m->wd = wd;
    m->N = F * (h / 2) * (wd / 2);
    act a[64];
    int n = acts(m, a);
    kn_dtype dt = kn_backend_compute_dtype(be);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        size_t b = kn_arena_bytes(a[i].f32 ? KN_F32 : dt, a[i].rows, a[i].cols);
        if (b == SIZE_MAX || total > SIZE_MAX - b) {
            snprintf(err, errlen, "activations: size overflows");
            return -1;
        }
        total += b;
    }
    m->buf = kn_buffer_alloc(be, total);
    if (!m->buf) {
        snprintf(err, errlen, "activations: cannot allocate %zu bytes on %s: %s", total,
                 kn_backend_name(be), kn_backend_error(be));
        return -1;
    }
    kn_arena ar;
    kn_arena_init(&ar, m->buf);
    for (int i = 0; i < n; i++)
        if (kn_arena_tensor(&ar, a[i].t, a[i].f32 ? KN_F32 : dt, a[i].rows, a[i].cols)) {
            snprintf(err, errlen, "activations: arena overflow (internal)");
            eng_model_free(m);
            return -1;
        }
    m->proj = m->ff; /* acts(): ff is wide enough for both */
    if (c->layout == ENG_LAYOUT_MLA) { /* c | k_r side by side: one KV store, one rebuild input */
        m->ckv = kn_cols(m->ckr, 0, c->d_c);
        m->kr = kn_cols(m->ckr, c->d_c, c->d_r);
    }
    /* constants */
    float zeros[4096] = {0}, half[64];
    if (c->text_dim > 4096 || 3 * c->dec_t_up > 64) {
        snprintf(err, errlen, "activations: text_dim or decoder outputs too wide");
        eng_model_free(m);
        return -1;
    }
    for (int i = 0; i < 64; i++)
        half[i] = 0.5f;
    if (kn_upload(be, m->zero_row, zeros, KN_F32) || kn_upload(be, m->d_half, half, KN_F32)) {
        snprintf(err, errlen, "activations: upload: %s", kn_backend_error(be));
        eng_model_free(m);
        return -1;
    }
    if (m->mla_rebuild && (init_rebuild(m, err, errlen) || init_rebuild_cache(m, err, errlen))) {
        eng_model_free(m);
        return -1;
    }
    return 0;
}

void eng_model_free(eng_model *m)
{
    if (m->buf)
        kn_buffer_free(m->be, m->buf);
    m->buf = NULL;
    if (m->kw_buf)
        kn_buffer_free(m->be, m->kw_buf);
    m->kw_buf = NULL;
    free(m->kw);
    m->kw = NULL;
    if (m->rbc_buf)
        kn_buffer_free(m->be, m->rbc_buf);
    m->rbc_buf = NULL;
    free(m->rbc_id);
    free(m->rbc_used);
    free(m->rbc_ready);
    m->rbc_id = m->rbc_used = NULL;
    m->rbc_ready = NULL;
    m->rbc_slots = 0;
}

static const kn_tensor *bias(const eng_linear *l) { return l->b.buf ? &l->b : NULL; }

static kn_status linear(eng_model *m, kn_tensor y, kn_tensor x, const eng_linear *l)
{
    return kn_linear(m->be, y, x, l->w, bias(l));
}

static void trace(eng_model *m, const char *name, kn_tensor t)
{
    if (m->trace)
        m->trace(m->trace_user, name, m->be, t);
}

/* A contiguous [R, H*d] tensor seen as [R*H, d]: one row a head (the shape kn_rmsnorm_rope writes,
 * and views of it with a wider row stride place each head inside a per-head layout). */
static kn_tensor by_heads(kn_tensor t, int H)
{
    return kn_reshape(t, t.rows * H, t.cols / H);
}

/* A contiguous key/value source over the rows of t: per token row, `heads` keys of dk from column 0,
 * then `heads` values of dv from column v_off. */
static kn_kv rows_kv(kn_tensor t, int heads, int dk, int dv, int64_t v_off)
{
    kn_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.buf = t.buf;
    kv.dtype = t.dtype;
    kv.off = t.off;
    kv.row_stride = t.ld;
    kv.n_tokens = t.rows;
    kv.kv_heads = heads;
    kv.dk = dk;
    kv.dv = dv;
    kv.k_off = 0;
    kv.v_off = v_off;
    return kv;
}

/* MLA rebuild, streams b0..b1 without a cache slot: for as many as lat_tmp holds, gather each
 * window's latent rows (one kn_kv_load over its pages) one after the other, make every head's key
 * [k_c,h | k_r] and value for all of them with one GEMM, and attend as per-head attention, one
 * batched call (consecutive windows of one length are one uniform block for the backend). */
static kn_status rebuild_each_pass(eng_model *m, int layer, const kn_kv *kvs, int b0, int b1, kn_tensor att,
                                   kn_tensor qa, float scale)
{
    const eng_config *c = m->c;
    kn_backend_t *be = m->be;
    int H = c->heads, dh = c->head_dim, dr = c->d_r, N = m->N;
    int64_t cap = m->lat_tmp.rows, kw_cols = (int64_t)H * (dh + dr);
    for (int e0 = b0, e1; e0 < b1; e0 = e1) {
        int64_t rows = 0, off[ENG_FWD_MAX];
        for (e1 = e0; e1 < b1 && (e1 == e0 || rows + kvs[e1].n_tokens <= cap); e1++) {
            off[e1] = rows;
            TRY(kn_kv_load(be, kn_rows(m->lat_tmp, rows, kvs[e1].n_tokens), &kvs[e1], 0, 0));
            rows += kvs[e1].n_tokens;
        }
        kn_tensor kvr = kn_rows(m->kvr, 0, rows);
        TRY(kn_linear(be, kvr, kn_rows(m->lat_tmp, 0, rows), m->kw[layer], NULL)); /* [rows, keys | values] */
        kn_kv rk[ENG_FWD_MAX];
        for (int b = e0; b < e1; b++)
            rk[b - e0] = rows_kv(kn_rows(kvr, off[b], kvs[b].n_tokens), H, dh + dr, dh, kw_cols);
        TRY(kn_attention_batch(be, kn_rows(att, (int64_t)e0 * N, (int64_t)(e1 - e0) * N),
                               kn_rows(qa, (int64_t)e0 * N, (int64_t)(e1 - e0) * N), rk, e1 - e0, H, scale));
    }
    return KN_OK;
}

/* MLA rebuild, streams b0..b1 with a cache slot (model.h): the chunk's own rows are rebuilt from
 * the latent just computed (ckr, the values just stored) into rows [0, N) of the slot's region; at
 * the chunk's first pass the context's latent rows are gathered from the pages and rebuilt into
 * rows [N, N + context); then one batched attention over the regions (keys in that order: the
 * order of keys does not change attention). */
static kn_status rebuild_cached(eng_model *m, int layer, const eng_fwd_item *it, const kn_kv *kvs, int b0, int b1,
                                kn_tensor att, kn_tensor qa, kn_tensor ckr, float scale)
{
    const eng_config *c = m->c;
    kn_backend_t *be = m->be;
    int H = c->heads, dh = c->head_dim, dr = c->d_r, N = m->N;
    int64_t kw_cols = (int64_t)H * (dh + dr);
    kn_kv rk[ENG_FWD_MAX];
    for (int b = b0; b < b1; b++) {
        kn_tensor reg = kn_rows(m->rbc, ((int64_t)layer * m->rbc_slots + m->fwd_slot[b]) * m->rbc_tmax, m->rbc_tmax);
        int64_t ctx = kv_stream_context_tokens(it[b].cache);
        TRY(kn_linear(be, kn_rows(reg, 0, N), kn_rows(ckr, (int64_t)b * N, N), m->kw[layer], NULL));
        if (m->fwd_fill[b] && ctx > 0) {
            TRY(kn_kv_load(be, kn_rows(m->lat_tmp, 0, ctx), &kvs[b], 0, 0));
            TRY(kn_linear(be, kn_rows(reg, N, ctx), kn_rows(m->lat_tmp, 0, ctx), m->kw[layer], NULL));
        }
        rk[b - b0] = rows_kv(kn_rows(reg, 0, N + ctx), H, dh + dr, dh, kw_cols);
    }
    return kn_attention_batch(be, kn_rows(att, (int64_t)b0 * N, (int64_t)(b1 - b0) * N),
                              kn_rows(qa, (int64_t)b0 * N, (int64_t)(b1 - b0) * N), rk, b1 - b0, H, scale);
}

/* Before a forward: each item's rebuild cache slot. An item keeps the slot of its stream-chunk;
 * one without takes the lowest free slot, else the least recently used one no item of this
 * forward holds. A new slot's context rows are built this pass. When not every item gets a slot,
 * none uses one this pass (the new ones are given back; ready ones stay for later passes): a
 * batch split into cached and rebuilt runs was measured slower than rebuilding all of it
 * (bench/RESULTS.md, run 8: 311.9 vs 323.3 frames/s, 16 streams, 10 slots). */
static void rbc_assign(eng_model *m, const eng_fwd_item *it, int n)
{
    m->fwd_serial++;
    for (int b = 0; b < n; b++) {
        m->fwd_slot[b] = -1;
        m->fwd_fill[b] = 0;
        for (int s = 0; s < m->rbc_slots && it[b].ctx_id; s++)
            if (m->rbc_id[s] == it[b].ctx_id) {
                m->fwd_slot[b] = s;
                m->fwd_fill[b] = !m->rbc_ready[s];
                m->rbc_used[s] = m->fwd_serial;
            }
    }
    for (int b = 0; b < n; b++) {
        if (m->fwd_slot[b] >= 0 || !it[b].ctx_id)
            continue;
        int best = -1;
        for (int s = 0; s < m->rbc_slots; s++) {
            if (m->rbc_used[s] == m->fwd_serial)
                continue; /* held by an item of this forward */
            if (!m->rbc_id[s]) {
                best = s;
                break;
            }
            if (best < 0 || m->rbc_used[s] < m->rbc_used[best])
                best = s;
        }
        if (best < 0)
            continue;
        m->rbc_id[best] = it[b].ctx_id;
        m->rbc_ready[best] = 0;
        m->rbc_used[best] = m->fwd_serial;
        m->fwd_slot[b] = best;
        m->fwd_fill[b] = 1;
    }
    int all = 1;
    for (int b = 0; b < n; b++)
        all &= m->fwd_slot[b] >= 0 || !it[b].ctx_id;
    for (int b = 0; b < n; b++) {
        int s = m->fwd_slot[b];
        if (s < 0)
            continue;
        if (all) {
            m->rbc_reuses += !m->fwd_fill[b];
            continue;
        }
        if (m->fwd_fill[b]) /* taken for this pass: give it back */
            m->rbc_id[s] = 0;
        m->fwd_slot[b] = -1;
        m->fwd_fill[b] = 0;
    }
}

/* After a forward: the filled slots are ready (or, when it failed, free again); the slot of a
 * chunk's last pass is free for the next chunk. */
static void rbc_finish(eng_model *m, const eng_fwd_item *it, int n, kn_status st)
{
    for (int b = 0; b < n; b++) {
        int s = m->fwd_slot[b];
        if (s < 0)
            continue;
        if (st == KN_OK)
            m->rbc_ready[s] = 1;
        if ((st != KN_OK && m->fwd_fill[b]) || (st == KN_OK && it[b].last_pass)) {
            m->rbc_id[s] = 0;
            m->rbc_ready[s] = 0;
        }
        m->fwd_slot[b] = -1;
    }
}

/* ---- self-attention ----------------------------------------------------------------------------
 * Per-head: q, k after RMSNorm over the full width then RoPE; k, v stored in the chunk's pages;
 * attention over the context + chunk pages.
 * Latent: the cache holds c (dc) and k_r (dr) per token. The query absorbs k_up:
 *   q~_h = q_c,h @ k_up[h rows]   (so q~_h . c = q_c,h . (k_up[h rows] @ c) = q_c,h . k_c,h)
 * and each head's query [q~_h | q_r,h] meets the one shared key [c | k_r] (multi-query attention,
 * scale 1/sqrt(dh + dr)); the latent output o_h = sum p c is mapped by v_up[h rows]. */
static kn_status self_attention(eng_model *m, const eng_block_weights *B, int layer,
                                const eng_fwd_item *it, int n, kn_tensor xn, kn_tensor out, int store_only)
{
    const eng_config *c = m->c;
    kn_backend_t *be = m->be;
    int H = c->heads, dh = c->head_dim, N = m->N;
    int64_t Nt = (int64_t)n * N, D = c->dim;
    if (c->layout == ENG_LAYOUT_MHA) {
        /* q | k | v by one GEMM into proj; the normalised, rotated q and k go to their own
         * buffers, v is stored from proj */
        kn_tensor q = kn_rows(m->q, 0, Nt), k = kn_rows(m->k, 0, Nt), p = kn_rows(m->proj, 0, Nt);
        kn_tensor rope = kn_rows(m->rope, 0, Nt);
        TRY(linear(m, kn_cols(p, 0, 3 * D), xn, &B->qkv));
        TRY(kn_rmsnorm_rope(be, by_heads(q, H), kn_cols(p, 0, D), B->norm_q, c->eps, H, &rope));
        TRY(kn_rmsnorm_rope(be, by_heads(k, H), kn_cols(p, D, D), B->norm_k, c->eps, H, &rope));
        kn_tensor v = kn_cols(p, 2 * D, D);
        kn_tensor att = kn_rows(m->att, 0, Nt);
        kn_kv kvs[ENG_FWD_MAX];
        int64_t t0[ENG_FWD_MAX];
        for (int b = 0; b < n; b++) {
            kvs[b] = kv_pool_layer(m->pool, layer, it[b].cache->table, kv_stream_tokens(it[b].cache));
            kvs[b].kv_heads = H;
            kvs[b].dk = kvs[b].dv = dh;
            kvs[b].k_off = 0;
            kvs[b].v_off = D;
            t0[b] = kv_stream_context_tokens(it[b].cache);
        }
        /* the chunk's keys and values into every stream's pages (one call each for the batch) */
        TRY(kn_kv_store_batch(be, kvs, t0, n, 0, k));
        TRY(kn_kv_store_batch(be, kvs, t0, n, D, v));
        if (store_only)
            return KN_OK;
        /* every stream over its own pages, one call (a backend batches what it can) */
        TRY(kn_attention_batch(be, att, q, kvs, n, H, 1.0f / sqrtf((float)dh)));
        return linear(m, out, att, &B->o);
    }
    int dc = c->d_c, dr = c->d_r;
    kn_tensor qc = kn_cols(kn_rows(m->q, 0, Nt), 0, (int64_t)H * dh);
    kn_tensor ckr = kn_rows(m->ckr, 0, Nt), ckv = kn_rows(m->ckv, 0, Nt), kr = kn_rows(m->kr, 0, Nt);
    kn_tensor qt = kn_rows(m->qt, 0, Nt), qa, olat = kn_rows(m->olat, 0, Nt);
    kn_tensor rope = kn_rows(m->rope, 0, Nt);
    /* the query, per head [q_lat,h | q_r,h]: q_lat,h = q_c,h @ k_up[h rows] (absorb, dc wide) or
     * q_c,h itself (rebuild, dh wide); qa is a contiguous [Nt, H*(dq+dr)] (its allocation fits the
     * wider of the two), written as [Nt*H, dq+dr]: the normalisations write their heads straight
     * into its two column ranges */
    int dq = m->mla_rebuild ? dh : dc;
    qa = (kn_tensor){.buf = m->qa.buf, .off = m->qa.off, .dtype = m->qa.dtype, .rows = Nt,
                     .cols = (int64_t)H * (dq + dr), .ld = (int64_t)H * (dq + dr)};
    kn_tensor qa_h = by_heads(qa, H);
    /* q_c | q_r | c | k_r by one GEMM into proj, each normalised from there into its place */
    int64_t wq = (int64_t)H * dh, wr = (int64_t)H * dr;
    kn_tensor p = kn_rows(m->proj, 0, Nt);
    TRY(linear(m, kn_cols(p, 0, wq + wr + dc + dr), xn, &B->qkv));
    if (m->mla_rebuild) {
        TRY(kn_rmsnorm_rope(be, kn_cols(qa_h, 0, dh), kn_cols(p, 0, wq), B->norm_q, c->eps, H, NULL));
    } else {
        TRY(kn_rmsnorm(be, qc, kn_cols(p, 0, wq), B->norm_q, c->eps));
        TRY(kn_matmul_heads(be, qt, qc, B->k_up, H, KN_HEADS_XW)); /* [Nt, H*dc] */
        TRY(kn_copy(be, kn_cols(qa_h, 0, dc), by_heads(qt, H)));
    }
    TRY(kn_rmsnorm_rope(be, kn_cols(qa_h, dq, dr), kn_cols(p, wq, wr), B->norm_q_rope, c->eps, H, &rope));
    TRY(kn_rmsnorm(be, ckv, kn_cols(p, wq + wr, dc), B->norm_kv, c->eps));
    TRY(kn_rmsnorm_rope(be, kr, kn_cols(p, wq + wr + dc, dr), B->norm_k_rope, c->eps, 1, &rope));
    kn_tensor att = kn_cols(kn_rows(m->att, 0, Nt), 0, (int64_t)H * dh);
    kn_kv kvs[ENG_FWD_MAX];
    int64_t t0[ENG_FWD_MAX];
    float scale = 1.0f / sqrtf((float)(dh + dr));
    for (int b = 0; b < n; b++) {
        kvs[b] = kv_pool_layer(m->pool, layer, it[b].cache->table, kv_stream_tokens(it[b].cache));
        kvs[b].kv_heads = 1;
        kvs[b].dk = dc + dr;
        kvs[b].dv = dc;
        kvs[b].k_off = 0;
        kvs[b].v_off = 0;
        t0[b] = kv_stream_context_tokens(it[b].cache);
    }
    TRY(kn_kv_store_batch(be, kvs, t0, n, 0, ckr)); /* [c | k_r], every stream in one call */
    if (store_only)
        return KN_OK;
    for (int b0 = 0, b1; m->mla_rebuild && b0 < n; b0 = b1) {
        /* runs of streams with a cache slot and without */
        int cached = m->fwd_slot[b0] >= 0;
        for (b1 = b0 + 1; b1 < n && (m->fwd_slot[b1] >= 0) == cached;)
            b1++;
        TRY(cached ? rebuild_cached(m, layer, it, kvs, b0, b1, att, qa, ckr, scale)
                   : rebuild_each_pass(m, layer, kvs, b0, b1, att, qa, scale));
    }
    if (!m->mla_rebuild) {
        TRY(kn_attention_batch(be, olat, qa, kvs, n, H, scale));
        TRY(kn_matmul_heads(be, att, olat, B->v_up, H, KN_HEADS_XWT)); /* [Nt, H*dh] */
    }
    return linear(m, out, att, &B->o);
}

/* The keys and values of a stream's prompt for one layer: [text_len, 2D] = [k | v]. */
static kn_kv ctx_kv_source(const eng_model *m, kn_tensor ctx_kv, int layer)
{
    const eng_config *c = m->c;
    kn_tensor lk = kn_rows(ctx_kv, (int64_t)layer * c->text_len, c->text_len);
    return rows_kv(lk, c->heads, c->dim / c->heads, c->dim / c->heads, c->dim);
}

static kn_status forward_pass(eng_model *m, const eng_fwd_item *it, int n, int cache_only)
{
    const eng_config *c = m->c;
    const eng_weights *w = m->w;
    kn_backend_t *be = m->be;
    int N = m->N;
    int64_t Nt = (int64_t)n * N, D = c->dim;
    if (n <= 0 || n > m->max_batch)
        return KN_ERR_ARG; /* the engine checks the batch size before calling */

    /* timestep: e = time_embedding(sinusoid(t)), e0 = time_projection(silu(e)) per stream */
    float ts[ENG_FWD_MAX];
    if (n > ENG_FWD_MAX)
        return KN_ERR_ARG;
    for (int b = 0; b < n; b++)
        ts[b] = it[b].t;
    kn_tensor sin = kn_rows(m->sin, 0, n), e_h = kn_rows(m->e_h, 0, n), e = kn_rows(m->e, 0, n);
    kn_tensor es = kn_rows(m->es, 0, n), e0 = kn_rows(m->e0, 0, n);
    TRY(kn_timestep_embed(be, sin, ts, n));
    TRY(linear(m, e_h, sin, &w->time0));
    TRY(kn_silu(be, e_h, e_h));
    TRY(linear(m, e, e_h, &w->time2));
    TRY(kn_silu(be, es, e));
    TRY(linear(m, e0, es, &w->time_proj));
    trace(m, "sin", kn_rows(sin, 0, 1));
    trace(m, "e", kn_rows(e, 0, 1));
    trace(m, "e0", kn_rows(e0, 0, 1));

    /* patch embedding */
    kn_tensor tok = kn_rows(m->tok, 0, Nt), x = kn_rows(m->x, 0, Nt), xn = kn_rows(m->xn, 0, Nt);
    kn_tensor y = kn_rows(m->y, 0, Nt), ff = kn_cols(kn_rows(m->ff, 0, Nt), 0, c->ffn_dim);
    for (int b = 0; b < n; b++)
        TRY(kn_patchify(be, kn_rows(tok, (int64_t)b * N, N), it[b].lat, c->in_ch, m->F, m->h, m->wd));
    TRY(linear(m, x, tok, &w->patch));
    trace(m, "patch", kn_rows(x, 0, N));
    /* the RoPE angles of every stream's tokens, once for all layers */
    int f0[ENG_FWD_MAX];
    for (int b = 0; b < n; b++)
        f0[b] = it[b].f0;
    TRY(kn_rope3d_table(be, kn_rows(m->rope, 0, Nt), f0, n, m->F, m->h / 2, m->wd / 2, c->rope_theta));
    /* per stream: [shift1 | scale1 | gate1 | shift2 | scale2 | gate2] as [n, 6D]; column block i is
     * the per-stream vector (one group a stream) of the ops below */
    kn_tensor mod = kn_reshape(kn_rows(m->mod, 0, 6 * (int64_t)n), n, 6 * D);
#define MOD(i) kn_cols(mod, (int64_t)(i) * D, D)

    for (int l = 0; l < c->layers; l++) {
        const eng_block_weights *B = &w->blocks[l];
        /* mod_b = modulation + e0_b for every stream b */
        kn_tensor modw = kn_reshape(B->modulation, 1, 6 * D);
        TRY(kn_axpby(be, mod, 1.0f, e0, 1.0f, &modw));
        /* x += SA(LN(x) * (1 + scale1) + shift1) * gate1 */
        TRY(kn_layernorm_modulate(be, xn, x, MOD(0), MOD(1), c->eps));
        /* a cache pass needs the last layer's keys only: nothing after their store */
        TRY(self_attention(m, B, l, it, n, xn, y, cache_only && l == c->layers - 1));
        if (cache_only && l == c->layers - 1)
            break;
        kn_tensor g1 = MOD(2);
        TRY(kn_gate_add(be, x, y, &g1));
        /* x += CA(norm3(x), ctx) */
        kn_tensor q = kn_cols(kn_rows(m->q, 0, Nt), 0, D), att = kn_cols(kn_rows(m->att, 0, Nt), 0, D);
        TRY(kn_layernorm(be, xn, x, &B->norm3_w, &B->norm3_b, c->eps));
        TRY(linear(m, q, xn, &B->cq));
        TRY(kn_rmsnorm(be, q, q, B->cnorm_q, c->eps));
        kn_kv kvs[ENG_FWD_MAX];
        for (int b = 0; b < n; b++)
            kvs[b] = ctx_kv_source(m, it[b].ctx_kv, l);
        TRY(kn_attention_batch(be, att, q, kvs, n, c->heads, 1.0f / sqrtf((float)(D / c->heads))));
        TRY(linear(m, y, att, &B->co));
        TRY(kn_gate_add(be, x, y, NULL));
        /* x += FFN(LN(x) * (1 + scale2) + shift2) * gate2 */
        TRY(kn_layernorm_modulate(be, xn, x, MOD(3), MOD(4), c->eps));
        TRY(kn_linear_gelu(be, ff, xn, B->ffn0.w, bias(&B->ffn0)));
        TRY(linear(m, y, ff, &B->ffn2));
        kn_tensor g2 = MOD(5);
        TRY(kn_gate_add(be, x, y, &g2));
        if (m->trace) {
            char name[32];
            snprintf(name, sizeof name, "block.%d", l);
            trace(m, name, kn_rows(x, 0, N));
        }
    }
#undef MOD
    if (cache_only)
        return KN_OK;

    /* head: shift, scale = head.modulation + e; out = head(LN(x) * (1 + scale) + shift) */
    kn_tensor hout = kn_rows(m->hout, 0, Nt);
    kn_tensor hmod = kn_reshape(kn_rows(m->hmod, 0, 2 * (int64_t)n), n, 2 * D); /* [shift | scale] a stream */
    for (int i = 0; i < 2; i++) {
        kn_tensor hw = kn_rows(w->head_mod, i, 1);
        TRY(kn_axpby(be, kn_cols(hmod, (int64_t)i * D, D), 1.0f, e, 1.0f, &hw));
    }
    TRY(kn_layernorm_modulate(be, xn, x, kn_cols(hmod, 0, D), kn_cols(hmod, D, D), c->eps));
    TRY(linear(m, hout, xn, &w->head));
    trace(m, "head", kn_rows(hout, 0, N));
    for (int b = 0; b < n; b++)
        TRY(kn_unpatchify(be, it[b].out, kn_rows(hout, (int64_t)b * N, N), c->in_ch, m->F, m->h, m->wd));
    return KN_OK;
}

kn_status eng_model_forward(eng_model *m, const eng_fwd_item *it, int n, int cache_only)
{
    if (n <= 0 || n > m->max_batch || n > ENG_FWD_MAX)
        return KN_ERR_ARG; /* the engine checks the batch size before calling */
    if (!m->rbc_slots)
        return forward_pass(m, it, n, cache_only);
    rbc_assign(m, it, n);
    kn_status st = forward_pass(m, it, n, cache_only);
    rbc_finish(m, it, n, st);
    return st;
}

kn_status eng_model_context(eng_model *m, const int32_t *ids, kn_tensor ctx_kv)
{
    const eng_config *c = m->c;
    const eng_weights *w = m->w;
    kn_backend_t *be = m->be;
    int64_t D = c->dim, L = c->text_len;
    for (int64_t i = 0; i < L; i++) {
        kn_tensor dst = kn_rows(m->ctx_in, i, 1);
        if (ids[i] <= 0 || ids[i] >= c->vocab) {
            TRY(kn_copy(be, dst, m->zero_row)); /* padding (and anything out of range) */
        } else if (c->text_pos) { /* embed[id] + pos[i] */
            kn_tensor pi = kn_rows(w->text_pos, i, 1);
            TRY(kn_axpby(be, dst, 1.0f, kn_rows(w->embed, ids[i], 1), 1.0f, &pi));
        } else {
            TRY(kn_copy(be, dst, kn_rows(w->embed, ids[i], 1)));
        }
    }
    TRY(linear(m, m->ctx_h, m->ctx_in, &w->text0));
    TRY(kn_gelu_tanh(be, m->ctx_h, m->ctx_h));
    TRY(linear(m, m->ctx, m->ctx_h, &w->text2));
    trace(m, "ctx", m->ctx);
    for (int l = 0; l < c->layers; l++) {
        const eng_block_weights *B = &w->blocks[l];
        kn_tensor rows = kn_rows(ctx_kv, (int64_t)l * L, L);
        kn_tensor k = kn_cols(rows, 0, D), v = kn_cols(rows, D, D);
        TRY(linear(m, k, m->ctx, &B->ck));
        TRY(kn_rmsnorm(be, k, k, B->cnorm_k, c->eps));
        TRY(linear(m, v, m->ctx, &B->cv));
    }
    return KN_OK;
}

kn_status eng_model_decode(eng_model *m, kn_tensor lat, kn_tensor prev, kn_tensor rgb)
{
    const eng_config *c = m->c;
    const eng_weights *w = m->w;
    kn_backend_t *be = m->be;
    int C = c->in_ch, h = m->h, wd = m->wd, hw = h * wd, T = c->dec_t_up;
    int64_t hw_out = (int64_t)eng_model_out_h(m) * eng_model_out_w(m);
    for (int f = 0; f < m->F; f++) {
        kn_tensor z = kn_cols(lat, (int64_t)f * hw, hw); /* [C, hw] */
        TRY(kn_row_affine(be, kn_rows(m->d_cat, 0, C), prev, w->lat_std, w->lat_mean));
        TRY(kn_row_affine(be, kn_rows(m->d_cat, C, C), z, w->lat_std, w->lat_mean));
        /* ping-pong: the current activation always ends in d_b; d_a holds the conv inputs */
        kn_tensor a = kn_cols(m->d_a, 0, hw), cur = kn_cols(m->d_b, 0, hw);
        TRY(kn_conv2d3x3(be, a, m->d_cat, w->dec_in.w, bias(&w->dec_in), h, wd));
        TRY(kn_silu(be, a, a));
        TRY(kn_conv2d3x3(be, cur, a, w->dec_mid.w, bias(&w->dec_mid), h, wd));
        TRY(kn_silu(be, cur, cur));
        int H = h, W = wd;
        for (int i = 0; i < c->dec_up; i++) {
            kn_tensor up = kn_cols(m->d_a, 0, (int64_t)4 * H * W);
            TRY(kn_upsample2x(be, up, cur, H, W));
            H *= 2;
            W *= 2;
            cur = kn_cols(m->d_b, 0, (int64_t)H * W);
            TRY(kn_conv2d3x3(be, cur, up, w->dec_up[i].w, bias(&w->dec_up[i]), H, W));
            TRY(kn_silu(be, cur, cur));
        }
        kn_tensor o = kn_cols(m->d_o, 0, hw_out);
        TRY(kn_conv2d3x3(be, o, cur, w->dec_out.w, bias(&w->dec_out), H, W));
        /* rgb = clamp((o + 1) / 2, 0, 1) */
        TRY(kn_row_affine(be, o, o, m->d_half, m->d_half));
        TRY(kn_clamp(be, kn_rows(rgb, (int64_t)f * 3 * T, 3 * T), o, 0.0f, 1.0f));
        TRY(kn_copy(be, prev, z));
    }
    return KN_OK;
}
