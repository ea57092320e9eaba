/* engine/engine.c — streams, the sampler, and the batch step (see engine.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/kvpool.h"
#include "engine/model.h"
#include "engine/rng.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

#define ENG_MAX_BATCH ENG_FWD_MAX

struct eng_stream {
    eng_engine_t *e;
    eng_stream_t *next, *prev_s; /* every open stream, resident or not */
    int slot;      /* -1 while offloaded */
    int host_slot; /* while offloaded: its decoder state in the host tier */
    uint64_t id, seed;
    eng_status status;
    char err[256];
    /* prompt */
    int32_t *ids, *pending_ids;
    int prompt_pending;
    /* sampler state */
    int64_t chunk; /* chunk in progress */
    int step;      /* 0..K-1 denoising, K = cache pass */
    int in_chunk;
    int noise0_ready; /* the next chunk's first noise draw is in eps already (drawn while the cache
                         pass ran); cleared when the slot or the noise function changes */
    uint64_t ctx_id; /* this chunk, unique in the engine (keys the model's MLA rebuild cache) */
    int64_t chunks_done;
    int64_t passes; /* forward passes this stream took part in */
    eng_noise_fn noise;
    void *noise_user;
    /* device state */
    kn_tensor x, x0, v, eps, ctx_kv, prev, rgb;
    kv_stream kv;
    /* output */
    uint8_t *frames_rgb; /* a chunk's frames, RGB24 (in frames_buf: page-locked where the backend has it) */
    kn_buffer_t *frames_buf;
    eng_frames frames;
    int frames_ready;
};

struct eng_engine {
    eng_config c;
    eng_options o;
    kn_backend_t *be;
    eng_weights w;
    kv_pool_t *pool;
    eng_model m;
    kn_buffer_t *slot_buf;
    eng_stream_t **slots;
    eng_stream_t *streams; /* list of every open stream */
    /* host tier: decoder state of offloaded streams (the pool holds their pages) */
    kn_buffer_t *host_state;
    uint8_t *host_used;
    int host_slots;
    size_t prev_bytes;
    int tokens_per_frame;
    float sigma[ENG_MAX_STEPS];
    float *hostf; /* host staging: a chunk's latent noise, as floats (page-locked) */
    size_t hostf_n;
    kn_buffer_t *hostf_buf;
    uint64_t next_id;
    int64_t drains; /* times the host waited for the backend to finish everything (eng_drains) */
    uint64_t chunk_serial; /* stream-chunks begun (eng_fwd_item.ctx_id) */
    eng_vocab vocab; /* vocabulary mode when vocab.n > 0 (from the weight file) */
    eng_trace_cb trace;
    void *trace_user;
    char err[512];
};

const char *eng_strerror(eng_status s)
{
    switch (s) {
    case ENG_OK: return "ok";
    case ENG_ERR_ARG: return "invalid argument";
    case ENG_ERR_LOAD: return "cannot load the model";
    case ENG_ERR_NOMEM: return "out of memory";
    case ENG_ERR_BACKEND: return "backend failure";
    case ENG_ERR_POOL: return "KV pool exhausted";
    case ENG_ERR_LIMIT: return "limit reached";
    case ENG_ERR_STATE: return "stream failed earlier";
    }
    return "unknown error";
}

void eng_options_default(eng_options *o)
{
    memset(o, 0, sizeof *o);
    o->window = -1;
    o->sink = -1;
    o->max_batch = 1;
    o->max_streams = 1;
    o->kv_dtype = KN_F32;
}

static eng_status fail(char *err, size_t errlen, eng_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#include <stdarg.h>
static eng_status fail(char *err, size_t errlen, eng_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return st;
}

/* The model's trace hook: download and pass on as host floats. */
static void trace_adaptor(void *user, const char *name, kn_backend_t *be, kn_tensor t)
{
    eng_engine_t *e = user;
    if (!e->trace)
        return;
    float *buf = malloc(sizeof(float) * (size_t)kn_nelem(t));
    if (buf && kn_download(be, t, buf) == KN_OK)
        e->trace(e->trace_user, name, buf, t.rows, t.cols);
    free(buf);
}

void eng_set_trace(eng_engine_t *e, eng_trace_cb fn, void *user)
{
    e->trace = fn;
    e->trace_user = user;
    e->m.trace = fn ? trace_adaptor : NULL;
    e->m.trace_user = e;
}

/* Per-stream device tensors, one slot each, carved from one buffer. */
typedef struct {
    int64_t rows, cols;
} shp;

static void slot_shapes(const eng_engine_t *e, shp s[7])
{
    const eng_config *c = &e->c;
    int64_t lat = (int64_t)c->chunk_frames * c->latent_h * c->latent_w;
    int64_t hw_out = (int64_t)eng_model_out_h(&e->m) * eng_model_out_w(&e->m);
    s[0] = (shp){c->in_ch, lat};                                  /* x */
    s[1] = (shp){c->in_ch, lat};                                  /* x0 */
    s[2] = (shp){c->in_ch, lat};                                  /* v */
    s[3] = (shp){c->in_ch, lat};                                  /* eps */
    s[4] = (shp){(int64_t)c->layers * c->text_len, 2 * (int64_t)c->dim}; /* ctx_kv */
    s[5] = (shp){c->in_ch, (int64_t)c->latent_h * c->latent_w};   /* prev */
    s[6] = (shp){(int64_t)c->chunk_frames * c->dec_t_up * 3, hw_out}; /* rgb */
}

/* The KV pool (after the weights and activations, so a fraction of free memory means what is
 * left) and its host tier with the offloaded streams' decoder state. */
static eng_status open_pool(eng_engine_t *e, int pt, char *err, size_t errlen)
{
    const eng_config *c = &e->c;
    const eng_options *o = &e->o;
    int pages_per_stream = (c->sink + c->window) * (e->tokens_per_frame / pt);
    kv_pool_config pc = {
        .page_tokens = pt,
        .layers = c->layers,
        .width = eng_config_kv_width(c),
        .dtype = o->kv_dtype,
    };
    size_t page_bytes = (size_t)pt * (size_t)c->layers * (size_t)pc.width * kn_dtype_size(o->kv_dtype);
    size_t pool_bytes = 0;
    if (o->kv_pages) {
        pc.n_pages = o->kv_pages;
    } else if (o->kv_pool_bytes) {
        pool_bytes = o->kv_pool_bytes;
    } else if (o->kv_pool_fraction > 0) {
        size_t fr = 0, tot = 0;
        if (o->kv_pool_fraction >= 1.0 || kn_mem_info(e->be, &fr, &tot) != KN_OK)
            return fail(err, errlen, ENG_ERR_ARG, "engine: KV pool fraction %.3f: %s", o->kv_pool_fraction,
                        o->kv_pool_fraction >= 1.0 ? "must be below 1" : kn_backend_error(e->be));
        pool_bytes = (size_t)((double)fr * o->kv_pool_fraction);
    } else {
        pc.n_pages = pages_per_stream * o->max_streams;
    }
    if (pool_bytes) {
        size_t n = pool_bytes / page_bytes;
        if (n < (size_t)pages_per_stream)
            return fail(err, errlen, ENG_ERR_ARG,
                        "engine: a KV pool of %zu bytes holds %zu pages of %zu bytes, fewer than one stream's %d",
                        pool_bytes, n, page_bytes, pages_per_stream);
        pc.n_pages = n > INT32_MAX ? INT32_MAX : (int32_t)n;
    }
    if (o->host_kv_bytes) {
        size_t hs = o->host_kv_bytes / ((size_t)pages_per_stream * page_bytes);
        if (hs == 0)
            return fail(err, errlen, ENG_ERR_ARG,
                        "engine: a host tier of %zu bytes holds less than one stream (%zu bytes)",
                        o->host_kv_bytes, (size_t)pages_per_stream * page_bytes);
        e->host_slots = hs > 4096 ? 4096 : (int)hs;
        pc.host_pages = e->host_slots * pages_per_stream;
    }
    e->pool = kv_pool_new(e->be, &pc, err, errlen);
    if (!e->pool)
        return ENG_ERR_NOMEM;
    e->prev_bytes = (size_t)c->in_ch * (size_t)c->latent_h * (size_t)c->latent_w *
                    kn_dtype_size(kn_backend_compute_dtype(e->be));
    if (e->host_slots) {
        e->host_state = kn_host_buffer_alloc(e->be, e->prev_bytes * (size_t)e->host_slots);
        e->host_used = calloc((size_t)e->host_slots, 1);
        if (!e->host_state || !e->host_used)
            return fail(err, errlen, ENG_ERR_NOMEM, "engine: cannot allocate the host tier's stream state: %s",
                        kn_backend_error(e->be));
    }
    return ENG_OK;
}

eng_status eng_open(eng_engine_t **out, kn_backend_t *be, const eng_config *cfg, const eng_options *opt,
                    char *err, size_t errlen)
{
    *out = NULL;
    eng_options o;
    if (opt)
        o = *opt;
    else
        eng_options_default(&o);
    eng_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return fail(err, errlen, ENG_ERR_NOMEM, "engine: out of host memory");
    eng_status st = ENG_ERR_ARG;
    e->be = be;
    e->c = *cfg;
    if (o.latent_h)
        e->c.latent_h = o.latent_h;
    if (o.latent_w)
        e->c.latent_w = o.latent_w;
    if (o.window >= 0)
        e->c.window = o.window;
    if (o.sink >= 0)
        e->c.sink = o.sink;
    if (o.max_batch <= 0 || o.max_batch > ENG_MAX_BATCH || o.max_streams <= 0 || o.max_streams > 4096) {
        fail(err, errlen, ENG_ERR_ARG, "engine: max_batch must be 1..%d and max_streams 1..4096", ENG_MAX_BATCH);
        goto bad;
    }
    e->o = o;
    if (eng_config_validate(&e->c, err, errlen))
        goto bad;
    const eng_config *c = &e->c;
    e->tokens_per_frame = (c->latent_h / 2) * (c->latent_w / 2);
    int pt = o.page_tokens ? o.page_tokens : e->tokens_per_frame;
    if (pt <= 0 || e->tokens_per_frame % pt) {
        fail(err, errlen, ENG_ERR_ARG, "engine: page of %d tokens does not divide a frame of %d tokens",
             pt, e->tokens_per_frame);
        goto bad;
    }
    for (int k = 0; k < c->n_steps; k++) {
        double sg = c->steps[k] / 1000.0;
        e->sigma[k] = (float)(c->shift * sg / (1.0 + (c->shift - 1.0) * sg));
    }
    if (eng_weights_load(&e->w, be, c, o.weights, o.weight_seed, err, errlen)) {
        st = ENG_ERR_LOAD;
        goto bad;
    }
    if (e->w.vocab_words &&
        eng_vocab_parse(&e->vocab, e->w.vocab_words, c->vocab - 2, err, errlen)) {
        st = ENG_ERR_LOAD;
        goto bad;
    }
    int rebuild = o.mla_attention == ENG_MLA_REBUILD;
    if (o.mla_attention == ENG_MLA_AUTO) {
        const char *env = getenv("VMLA_MLA");
        if (env && *env && strcmp(env, "absorb") && strcmp(env, "rebuild")) {
            fail(err, errlen, ENG_ERR_ARG, "engine: VMLA_MLA='%s': expected absorb or rebuild", env);
            goto bad;
        }
        /* by the compute dtype: bf16 (the GPU) rebuilds, measured faster there (bench/RESULTS.md:
         * cuDNN runs the per-head shape faster than the latent one); f32 (the CPU, and the GPU's
         * f32 parity mode) absorbs, measured faster on the CPU (docs/MODEL.md) */
        rebuild = env && *env ? !strcmp(env, "rebuild") : kn_backend_compute_dtype(be) != KN_F32;
    }
    int mr = eng_model_init(&e->m, c, be, &e->w, NULL, o.max_batch, c->chunk_frames, c->latent_h, c->latent_w,
                            rebuild, err, errlen);
    if (mr) {
        st = mr == -2 ? ENG_ERR_ARG : ENG_ERR_NOMEM;
        goto bad;
    }
    shp s[7];
    slot_shapes(e, s);
    size_t per = 0;
    for (int i = 0; i < 7; i++)
        per += kn_arena_bytes(kn_backend_compute_dtype(be), s[i].rows, s[i].cols);
    e->slot_buf = kn_buffer_alloc(be, per * (size_t)o.max_streams);
    e->slots = calloc((size_t)o.max_streams, sizeof *e->slots);
    e->hostf_n = (size_t)(s[0].rows * s[0].cols); /* a latent (noise); frames come as bytes */
    e->hostf_buf = kn_host_buffer_alloc(be, sizeof(float) * e->hostf_n);
    e->hostf = kn_host_buffer_data(e->hostf_buf);
    if (!e->slot_buf || !e->slots || !e->hostf) {
        fail(err, errlen, ENG_ERR_NOMEM, "engine: cannot allocate %d stream slots (%zu bytes each): %s",
             o.max_streams, per, kn_backend_error(be));
        st = ENG_ERR_NOMEM;
        goto bad;
    }
    if ((st = open_pool(e, pt, err, errlen)) != ENG_OK)
        goto bad;
    e->m.pool = e->pool;
    *out = e;
    return ENG_OK;
bad:
    eng_close(e);
    return st;
}

void eng_close(eng_engine_t *e)
{
    if (!e)
        return;
    while (e->streams)
        eng_stream_close(e->streams);
    free(e->slots);
    kn_buffer_free(e->be, e->host_state);
    free(e->host_used);
    kn_buffer_free(e->be, e->hostf_buf);
    kn_buffer_free(e->be, e->slot_buf);
    eng_model_free(&e->m);
    kv_pool_free(e->pool);
    eng_weights_free(&e->w, e->be);
    eng_vocab_free(&e->vocab);
    free(e);
}

const eng_config *eng_get_config(const eng_engine_t *e) { return &e->c; }
int eng_mla_rebuild(const eng_engine_t *e) { return e->m.mla_rebuild; }

void eng_rebuild_cache_stats(const eng_engine_t *e, int *slots, size_t *slot_bytes, int64_t *reuses)
{
    *slots = e->m.rbc_slots;
    *slot_bytes = e->m.rbc_slot_bytes; /* set only when there are slots */
    *reuses = e->m.rbc_reuses;
}
kn_backend_t *eng_backend(const eng_engine_t *e) { return e->be; }
const char *eng_error(const eng_engine_t *e) { return e->err; }
int eng_video_width(const eng_engine_t *e) { return eng_model_out_w(&e->m); }
int eng_video_height(const eng_engine_t *e) { return eng_model_out_h(&e->m); }
int eng_frames_per_chunk(const eng_engine_t *e) { return e->c.chunk_frames * e->c.dec_t_up; }
double eng_kv_bytes_per_token_layer(const eng_engine_t *e) { return kv_pool_bytes_per_token_layer(e->pool); }
size_t eng_kv_bytes_per_frame(const eng_engine_t *e)
{
    return kv_pool_page_bytes(e->pool) * (size_t)(e->tokens_per_frame / kv_pool_cfg(e->pool)->page_tokens);
}
size_t eng_kv_pool_bytes(const eng_engine_t *e)
{
    return kv_pool_page_bytes(e->pool) * (size_t)kv_pool_n_pages(e->pool);
}
size_t eng_kv_pool_free_bytes(const eng_engine_t *e)
{
    return kv_pool_page_bytes(e->pool) * (size_t)kv_pool_n_free(e->pool);
}
int64_t eng_weight_params(const eng_engine_t *e) { return e->w.n_params; }

/* ---- streams ----------------------------------------------------------------------------------- */

static void stream_fail(eng_stream_t *s, eng_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void stream_fail(eng_stream_t *s, eng_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    s->status = st;
    if (s->in_chunk)
        kv_stream_abort_chunk(&s->kv);
    s->in_chunk = 0;
}

/* Give the stream slot `slot` and carve its tensors. */
static void take_slot(eng_stream_t *s, int slot)
{
    eng_engine_t *e = s->e;
    shp sh[7];
    slot_shapes(e, sh);
    size_t per = kn_buffer_size(e->slot_buf) / (size_t)e->o.max_streams;
    kn_arena a = {.buf = e->slot_buf, .size = per * (size_t)(slot + 1), .used = per * (size_t)slot};
    kn_tensor *dst[7] = {&s->x, &s->x0, &s->v, &s->eps, &s->ctx_kv, &s->prev, &s->rgb};
    kn_dtype dt = kn_backend_compute_dtype(e->be);
    for (int i = 0; i < 7; i++)
        kn_arena_tensor(&a, dst[i], dt, sh[i].rows, sh[i].cols); /* sized at open: cannot fail */
    s->slot = slot;
    e->slots[slot] = s;
}

static int free_slot(const eng_engine_t *e)
{
    for (int i = 0; i < e->o.max_streams; i++)
        if (!e->slots[i])
            return i;
    return -1;
}

static void default_noise(void *user, uint64_t seed, uint32_t chunk, uint32_t draw, float *out, size_t n)
{
    eng_noise(seed, chunk, draw, out, n);
}

eng_status eng_stream_open(eng_engine_t *e, uint64_t seed, const char *prompt, eng_stream_t **out)
{
    *out = NULL;
    int slot = -1;
    for (int i = 0; i < e->o.max_streams && slot < 0; i++)
        if (!e->slots[i])
            slot = i;
    if (slot < 0)
        return fail(e->err, sizeof e->err, ENG_ERR_LIMIT, "engine: all %d stream slots are in use",
                    e->o.max_streams);
    const eng_config *c = &e->c;
    eng_stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return fail(e->err, sizeof e->err, ENG_ERR_NOMEM, "engine: out of host memory");
    s->e = e;
    s->slot = slot;
    s->id = ++e->next_id;
    s->seed = seed;
    s->noise = default_noise;
    s->ids = calloc((size_t)c->text_len, sizeof(int32_t));
    s->pending_ids = calloc((size_t)c->text_len, sizeof(int32_t));
    size_t nrgb = (size_t)eng_frames_per_chunk(e) * (size_t)eng_video_width(e) * (size_t)eng_video_height(e) * 3;
    s->frames_buf = kn_host_buffer_alloc(e->be, nrgb);
    s->frames_rgb = s->frames_buf ? kn_host_buffer_data(s->frames_buf) : NULL;
    char kerr[256];
    if (!s->ids || !s->pending_ids || !s->frames_rgb ||
        kv_stream_init(&s->kv, e->pool, e->tokens_per_frame, c->sink, c->window, c->chunk_frames, kerr,
                       sizeof kerr)) {
        free(s->ids);
        free(s->pending_ids);
        kn_buffer_free(e->be, s->frames_buf);
        free(s);
        return fail(e->err, sizeof e->err, ENG_ERR_NOMEM, "engine: cannot open a stream");
    }
    s->host_slot = -1;
    take_slot(s, slot);
    s->next = e->streams;
    if (e->streams)
        e->streams->prev_s = s;
    e->streams = s;
    float *z = calloc((size_t)(s->prev.rows * s->prev.cols), sizeof(float));
    kn_status ks = z ? kn_upload(e->be, s->prev, z, KN_F32) : KN_ERR_NOMEM;
    free(z);
    *out = s;
    if (ks != KN_OK) {
        eng_stream_close(s);
        *out = NULL;
        return fail(e->err, sizeof e->err, ENG_ERR_BACKEND, "engine: stream init: %s", kn_backend_error(e->be));
    }
    return eng_stream_set_prompt(s, prompt ? prompt : "");
}

void eng_stream_close(eng_stream_t *s)
{
    if (!s)
        return;
    eng_engine_t *e = s->e;
    kv_stream_free(&s->kv);
    if (s->slot >= 0)
        e->slots[s->slot] = NULL;
    if (s->host_slot >= 0)
        e->host_used[s->host_slot] = 0;
    if (s->prev_s)
        s->prev_s->next = s->next;
    else
        e->streams = s->next;
    if (s->next)
        s->next->prev_s = s->prev_s;
    free(s->ids);
    free(s->pending_ids);
    kn_buffer_free(e->be, s->frames_buf);
    free(s);
}

uint64_t eng_stream_id(const eng_stream_t *s) { return s->id; }
eng_status eng_stream_status(const eng_stream_t *s) { return s->status; }
const char *eng_stream_error(const eng_stream_t *s) { return s->err; }
int64_t eng_stream_chunks_done(const eng_stream_t *s) { return s->chunks_done; }

eng_status eng_stream_offload(eng_stream_t *s)
{
    eng_engine_t *e = s->e;
    if (s->status != ENG_OK)
        return ENG_ERR_STATE;
    if (s->slot < 0)
        return ENG_OK;
    if (s->in_chunk) {
        snprintf(s->err, sizeof s->err, "offload: a chunk is in progress");
        return ENG_ERR_ARG;
    }
    s->noise0_ready = 0; /* eps is in the slot, which goes */
    int hs = -1;
    for (int i = 0; i < e->host_slots && hs < 0; i++)
        if (!e->host_used[i])
            hs = i;
    if (hs < 0) {
        snprintf(s->err, sizeof s->err, "offload: the host tier is full (%d streams)", e->host_slots);
        return ENG_ERR_POOL;
    }
    int r = kv_stream_offload(&s->kv);
    if (r == -1) {
        snprintf(s->err, sizeof s->err, "offload: the host tier has too few free pages");
        return ENG_ERR_POOL;
    }
    if (r != 0 || kn_buffer_copy(e->be, e->host_state, (size_t)hs * e->prev_bytes, s->prev.buf, s->prev.off,
                                 e->prev_bytes) != KN_OK) {
        stream_fail(s, ENG_ERR_BACKEND, "offload: %s", kn_backend_error(e->be));
        return s->status;
    }
    e->host_used[hs] = 1;
    s->host_slot = hs;
    e->slots[s->slot] = NULL;
    s->slot = -1;
    return ENG_OK;
}

eng_status eng_stream_restore(eng_stream_t *s)
{
    eng_engine_t *e = s->e;
    if (s->status != ENG_OK)
        return ENG_ERR_STATE;
    if (s->slot >= 0)
        return ENG_OK;
    int slot = free_slot(e);
    if (slot < 0) {
        snprintf(s->err, sizeof s->err, "restore: all %d stream slots are in use", e->o.max_streams);
        return ENG_ERR_LIMIT;
    }
    int r = kv_stream_restore(&s->kv);
    if (r == -1) {
        snprintf(s->err, sizeof s->err, "restore: KV pool exhausted (%d of %d pages free)",
                 kv_pool_n_free(e->pool), kv_pool_n_pages(e->pool));
        return ENG_ERR_POOL;
    }
    take_slot(s, slot);
    if (r != 0 || kn_buffer_copy(e->be, s->prev.buf, s->prev.off, e->host_state, (size_t)s->host_slot * e->prev_bytes,
                                 e->prev_bytes) != KN_OK) {
        stream_fail(s, ENG_ERR_BACKEND, "restore: %s", kn_backend_error(e->be));
        return s->status;
    }
    e->host_used[s->host_slot] = 0;
    s->host_slot = -1;
    /* the text context lived in the slot: compute it again before the next chunk */
    if (!s->prompt_pending) {
        memcpy(s->pending_ids, s->ids, sizeof(int32_t) * (size_t)e->c.text_len);
        s->prompt_pending = 1;
    }
    return ENG_OK;
}

int eng_stream_resident(const eng_stream_t *s) { return s->slot >= 0; }
int64_t eng_stream_passes(const eng_stream_t *s) { return s->passes; }
int eng_stream_pass(const eng_stream_t *s) { return s->in_chunk ? s->step : 0; }
int eng_passes_per_chunk(const eng_engine_t *e) { return e->c.n_steps + 1; }

void eng_pool_get_stats(const eng_engine_t *e, eng_pool_stats *st)
{
    memset(st, 0, sizeof *st);
    st->page_bytes = kv_pool_page_bytes(e->pool);
    st->pages = kv_pool_n_pages(e->pool);
    st->free_pages = kv_pool_n_free(e->pool);
    st->host_pages = kv_pool_n_host_pages(e->pool);
    st->free_host_pages = kv_pool_n_host_free(e->pool);
    st->pages_per_stream = (e->c.sink + e->c.window) * (e->tokens_per_frame / kv_pool_cfg(e->pool)->page_tokens);
    st->slots = e->o.max_streams;
    for (int i = 0; i < e->o.max_streams; i++)
        st->free_slots += !e->slots[i];
    st->host_slots = e->host_slots;
    for (int i = 0; i < e->host_slots; i++)
        st->free_host_slots += !e->host_used[i];
}

eng_status eng_stream_set_prompt(eng_stream_t *s, const char *prompt)
{
    const eng_config *c = &s->e->c;
    size_t len = prompt ? strlen(prompt) : 0;
    if (s->e->vocab.n)
        eng_tokenize_vocab(&s->e->vocab, prompt, len, s->pending_ids, c->text_len);
    else
        eng_tokenize(prompt, len, c->vocab, s->pending_ids, c->text_len);
    s->prompt_pending = 1;
    return ENG_OK;
}

eng_status eng_stream_set_prompt_tokens(eng_stream_t *s, const int32_t *ids, int n)
{
    const eng_config *c = &s->e->c;
    if (n < 0 || n > c->text_len)
        return ENG_ERR_ARG;
    for (int i = 0; i < c->text_len; i++) {
        int32_t id = i < n ? ids[i] : 0;
        if (id < 0 || id >= c->vocab)
            return ENG_ERR_ARG;
        s->pending_ids[i] = id;
    }
    s->prompt_pending = 1;
    return ENG_OK;
}

void eng_stream_set_noise(eng_stream_t *s, eng_noise_fn fn, void *user)
{
    s->noise = fn ? fn : default_noise;
    s->noise_user = user;
    s->noise0_ready = 0;
}

size_t eng_stream_kv_bytes(const eng_stream_t *s)
{
    return (size_t)kv_stream_pages(&s->kv) * kv_pool_page_bytes(s->e->pool);
}

size_t eng_stream_kv_bytes_max(const eng_stream_t *s)
{
    return (size_t)(s->kv.sink + s->kv.window) * eng_kv_bytes_per_frame(s->e);
}

static size_t latent_n(const eng_engine_t *e)
{
    return (size_t)e->c.in_ch * (size_t)e->c.chunk_frames * (size_t)e->c.latent_h * (size_t)e->c.latent_w;
}

/* Draw noise (chunk, draw) into s->eps. */
static kn_status load_noise(eng_stream_t *s, uint32_t draw)
{
    eng_engine_t *e = s->e;
    size_t n = latent_n(e);
    s->noise(s->noise_user, s->seed, (uint32_t)s->chunk, draw, e->hostf, n);
    return kn_upload(e->be, s->eps, e->hostf, KN_F32);
}

/* Start the stream's next chunk: prompt switch, frame limit, pages, initial noise. */
static eng_status begin_chunk(eng_stream_t *s)
{
    eng_engine_t *e = s->e;
    const eng_config *c = &e->c;
    if (s->prompt_pending) {
        if (eng_model_context(&e->m, s->pending_ids, s->ctx_kv) != KN_OK) {
            stream_fail(s, ENG_ERR_BACKEND, "prompt: %s", kn_backend_error(e->be));
            return s->status;
        }
        memcpy(s->ids, s->pending_ids, sizeof(int32_t) * (size_t)c->text_len);
        s->prompt_pending = 0;
    }
    int64_t f0 = s->chunk * c->chunk_frames;
    if (f0 + c->chunk_frames > c->max_frames) {
        stream_fail(s, ENG_ERR_LIMIT, "stream reached the model's %d latent frames", c->max_frames);
        return s->status;
    }
    if (kv_stream_begin_chunk(&s->kv, (int)f0)) {
        snprintf(s->err, sizeof s->err, "KV pool exhausted (%d of %d pages free)",
                 kv_pool_n_free(e->pool), kv_pool_n_pages(e->pool));
        return ENG_ERR_POOL; /* not sticky: the stream may run once pages are free */
    }
    s->in_chunk = 1;
    s->ctx_id = ++e->chunk_serial;
    int drawn = s->noise0_ready;
    s->noise0_ready = 0;
    if ((!drawn && load_noise(s, 0) != KN_OK) || kn_copy(e->be, s->x, s->eps) != KN_OK) {
        stream_fail(s, ENG_ERR_BACKEND, "noise: %s", kn_backend_error(e->be));
        return s->status;
    }
    return ENG_OK;
}

/* Decode x0 into the stream's frame buffer. */
static kn_status decode_chunk(eng_stream_t *s)
{
    eng_engine_t *e = s->e;
    const eng_config *c = &e->c;
    int W = eng_video_width(e), H = eng_video_height(e), nf = eng_frames_per_chunk(e);
    kn_status ks = eng_model_decode(&e->m, s->x0, s->prev, s->rgb);
    /* planar [f][c][hw] in [0, 1] (clamped by the decoder) -> interleaved RGB24, rounded to
     * nearest (ties up), by the backend (on the GPU: a quarter of the bytes cross the bus) */
    if (ks == KN_OK)
        ks = kn_download_rgb8(e->be, s->rgb, nf, s->frames_rgb);
    if (ks == KN_OK)
        e->drains++; /* the download waited for every pass enqueued before it */
    if (ks != KN_OK)
        return ks;
    s->frames = (eng_frames){
        .stream_id = s->id,
        .chunk = s->chunk,
        .frame0 = s->chunk * nf,
        .n_frames = nf,
        .width = W,
        .height = H,
        .fps = c->fps,
        .rgb = s->frames_rgb,
    };
    s->frames_ready = 1;
    s->chunks_done++;
    return KN_OK;
}

eng_status eng_step(eng_engine_t *e, eng_stream_t *const *streams, int n)
{
    const eng_config *c = &e->c;
    if (n <= 0 || n > e->o.max_batch)
        return fail(e->err, sizeof e->err, ENG_ERR_ARG, "step: %d streams (max_batch %d)", n, e->o.max_batch);
    for (int i = 0; i < n; i++) {
        if (!streams[i] || streams[i]->e != e)
            return fail(e->err, sizeof e->err, ENG_ERR_ARG, "step: stream %d is not of this engine", i);
        for (int j = 0; j < i; j++)
            if (streams[j] == streams[i])
                return fail(e->err, sizeof e->err, ENG_ERR_ARG, "step: stream listed twice");
    }
    eng_fwd_item it[ENG_MAX_BATCH];
    eng_stream_t *run[ENG_MAX_BATCH];
    int nr = 0, cache_only = 1;
    for (int i = 0; i < n; i++) {
        eng_stream_t *s = streams[i];
        if (s->status != ENG_OK)
            continue;
        if (s->slot < 0) {
            snprintf(s->err, sizeof s->err, "the stream is offloaded: restore it first");
            continue;
        }
        if (!s->in_chunk && begin_chunk(s) != ENG_OK)
            continue;
        int denoise = s->step < c->n_steps;
        it[nr] = (eng_fwd_item){
            .lat = denoise ? s->x : s->x0,
            .out = s->v,
            .t = denoise ? e->sigma[s->step] * 1000.0f : 0.0f,
            .f0 = (int)(s->chunk * c->chunk_frames),
            .cache = &s->kv,
            .ctx_kv = s->ctx_kv,
            .ctx_id = s->ctx_id,
            .last_pass = !denoise,
        };
        cache_only &= !denoise;
        run[nr++] = s;
    }
    if (nr == 0)
        return ENG_OK;
    int failed[ENG_MAX_BATCH] = {0}, n_failed = 0;
    if (eng_model_forward(&e->m, it, nr, cache_only) != KN_OK) {
        /* a failure in a batch is retried stream by stream (the pass only rewrites the chunk's own
         * KV rows and scratch, so running it again is safe): only a stream that fails alone fails */
        char first[256];
        snprintf(first, sizeof first, "%s", kn_backend_error(e->be));
        for (int i = 0; i < nr; i++) {
            if (nr > 1 && eng_model_forward(&e->m, &it[i], 1, run[i]->step >= c->n_steps) == KN_OK)
                continue;
            stream_fail(run[i], ENG_ERR_BACKEND, "forward: %s", nr > 1 ? kn_backend_error(e->be) : first);
            failed[i] = 1;
            n_failed++;
        }
        if (n_failed == nr)
            return fail(e->err, sizeof e->err, ENG_ERR_BACKEND, "forward: %s", first);
    }
    for (int i = 0; i < nr; i++) {
        eng_stream_t *s = run[i];
        if (failed[i])
            continue;
        kn_status ks = KN_OK;
        s->passes++;
        if (s->step < c->n_steps) {
            float sg = e->sigma[s->step];
            ks = kn_axpby(e->be, s->x0, 1.0f, s->x, -sg, &s->v); /* x0 = x - sigma * v */
            if (ks == KN_OK && s->step + 1 < c->n_steps) {
                float sn = e->sigma[s->step + 1];
                ks = load_noise(s, (uint32_t)(s->step + 1));
                if (ks == KN_OK) /* x = (1 - sigma_next) * x0 + sigma_next * eps */
                    ks = kn_axpby(e->be, s->x, 1.0f - sn, s->x0, sn, &s->eps);
            } else if (ks == KN_OK) {
                ks = decode_chunk(s);
            }
            s->step++;
        } else {
            kv_stream_end_chunk(&s->kv);
            s->in_chunk = 0;
            s->chunk++;
            s->step = 0;
            /* the next chunk's first noise, drawn on the host now, while the GPU runs this cache
             * pass (drawn at the chunk's start, the GPU would wait for it) */
            if ((s->chunk + 1) * c->chunk_frames <= c->max_frames) {
                ks = load_noise(s, 0);
                s->noise0_ready = ks == KN_OK;
            }
        }
        if (ks != KN_OK)
            stream_fail(s, ENG_ERR_BACKEND, "sampler: %s", kn_backend_error(e->be));
    }
    return ENG_OK;
}

eng_status eng_sync(eng_engine_t *e)
{
    if (kn_sync(e->be) != KN_OK)
        return fail(e->err, sizeof e->err, ENG_ERR_BACKEND, "sync: %s", kn_backend_error(e->be));
    e->drains++;
    return ENG_OK;
}

int64_t eng_drains(const eng_engine_t *e) { return e->drains; }

eng_status eng_generate_chunk(eng_engine_t *e, eng_stream_t *const *streams, int n)
{
    if (n <= 0 || n > e->o.max_batch)
        return fail(e->err, sizeof e->err, ENG_ERR_ARG, "generate: %d streams (max_batch %d)", n, e->o.max_batch);
    int64_t target[ENG_MAX_BATCH];
    for (int i = 0; i < n; i++)
        target[i] = streams[i]->chunk + 1;
    for (;;) {
        eng_stream_t *due[ENG_MAX_BATCH];
        int nt = 0;
        for (int i = 0; i < n; i++)
            if (streams[i]->status == ENG_OK && streams[i]->chunk < target[i])
                due[nt++] = streams[i];
        if (nt == 0)
            break;
        int64_t before = 0;
        for (int i = 0; i < nt; i++)
            before += due[i]->passes;
        eng_status st = eng_step(e, due, nt);
        if (st != ENG_OK)
            return st;
        int64_t after = 0;
        for (int i = 0; i < nt; i++)
            after += due[i]->passes;
        for (int i = 0; i < nt; i++)
            if (due[i]->status != ENG_OK)
                return fail(e->err, sizeof e->err, due[i]->status, "%s", due[i]->err);
        if (after == before) { /* nothing could run: the pool is exhausted */
            for (int i = 0; i < nt; i++)
                if (due[i]->err[0])
                    return fail(e->err, sizeof e->err, ENG_ERR_POOL, "%s", due[i]->err);
            return fail(e->err, sizeof e->err, ENG_ERR_POOL, "generate: no progress");
        }
    }
    for (int i = 0; i < n; i++)
        if (streams[i]->status != ENG_OK)
            return fail(e->err, sizeof e->err, streams[i]->status, "%s", streams[i]->err);
    return ENG_OK;
}

const eng_frames *eng_stream_take_frames(eng_stream_t *s)
{
    if (!s->frames_ready)
        return NULL;
    s->frames_ready = 0;
    return &s->frames;
}

eng_status eng_stream_last_latent(eng_stream_t *s, float *dst, size_t n)
{
    if (n != latent_n(s->e))
        return ENG_ERR_ARG;
    return kn_download(s->e->be, s->x0, dst) == KN_OK ? ENG_OK : ENG_ERR_BACKEND;
}
