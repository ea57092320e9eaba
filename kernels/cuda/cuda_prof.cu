/* kernels/cuda/cuda_prof.cu — per-op GPU time of the CUDA backend, for the benchmark's time split.
 *
 * cu_prof_install wraps every op of a backend's table: while profiling is on (kn_cuda_profile_on),
 * each op is bracketed by two CUDA events on the backend's stream and classed as GEMM (linear,
 * matmul_heads), attention, copy (upload, download, buffer copies) or other (norms, elementwise,
 * RoPE, the KV store, layout, convolution). Pairs are read back when the stream is idle anyway
 * (kn_sync, kn_download) or when the event pool is full. The sum of the op times against the
 * wall time of the same work gives the GPU's idle share (launch gaps, host work, syncs).
 * Off (the default), a wrapper costs one branch. The events perturb what they measure a little
 * (~1-2 us of host time per record): the benchmark times its chunks with profiling off and
 * profiles extra chunks for the split.
 *
 * Three modes (kn_cuda_profile_on's argument): KN_PROF_EVENTS as above; KN_PROF_HOST, no events,
 * only the host time spent inside each op (the enqueue cost; in download and sync, the wait for
 * the GPU) — if the ops' host time outside the waits is close to the wall time, the host, not the
 * GPU, sets the pace; KN_PROF_SYNC, the stream drained before each op, so an op's events hold its
 * own launch and GPU time and nothing queued before it (a chunk runs slower, but per op the figure
 * is what that op costs alone). Every mode also sums the host time per op.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda_internal.cuh"

#define PROF_PAIRS 16384

enum { KN_PROF_EVENTS = 1, KN_PROF_HOST = 2, KN_PROF_SYNC = 3 };

enum { PC_GEMM = 0, PC_ATTN, PC_OTHER, PC_COPY, PC_N };

/* ops by id: the class of each and its name (for the per-op table) */
#define OPS(X)                                                                                          \
    X(upload, PC_COPY, 0) X(download, PC_COPY, 1) X(buffer_copy, PC_COPY, 0) X(linear, PC_GEMM, 0)      \
    X(linear_gelu, PC_GEMM, 0) X(matmul_heads, PC_GEMM, 0) X(layernorm, PC_OTHER, 0)                    \
    X(rmsnorm, PC_OTHER, 0) X(modulate, PC_OTHER, 0) X(layernorm_modulate, PC_OTHER, 0)                 \
    X(gate_add, PC_OTHER, 0) X(axpby, PC_OTHER, 0) X(gelu_tanh, PC_OTHER, 0) X(silu, PC_OTHER, 0)       \
    X(clamp, PC_OTHER, 0) X(row_affine, PC_OTHER, 0) X(copy, PC_OTHER, 0) X(rope3d, PC_OTHER, 0)        \
    X(rope3d_table, PC_OTHER, 0) X(rmsnorm_rope, PC_OTHER, 0) X(timestep_embed, PC_OTHER, 0)            \
    X(attention, PC_ATTN, 0) X(attention_batch, PC_ATTN, 0) X(kv_store, PC_OTHER, 0) X(kv_load, PC_OTHER, 0) X(patchify, PC_OTHER, 0)  \
    X(unpatchify, PC_OTHER, 0) X(conv2d3x3, PC_OTHER, 0) X(upsample2x, PC_OTHER, 0) X(sync, PC_COPY, 0) X(kv_store_batch, PC_OTHER, 0)            \
    X(download_rgb8, PC_COPY, 1)
#define OP_ID(f, c, h) OP_##f,
enum { OPS(OP_ID) OP_N };
#define OP_CLS(f, c, h) c,
static const int op_cls[OP_N] = {OPS(OP_CLS)};
#define OP_NAME(f, c, h) #f,
static const char *const op_name[OP_N] = {OPS(OP_NAME)};

struct cu_prof {
    kn_backend_ops orig; /* the table before wrapping */
    int on;           /* 0, or the mode */
    cudaEvent_t ev[2 * PROF_PAIRS];
    unsigned char cls[PROF_PAIRS]; /* the op id of each pair */
    int n;          /* pairs recorded, not yet read */
    double ms[OP_N];
    long count[OP_N];
    double host_ms[OP_N]; /* host time inside each op, every mode */
    long host_count[OP_N];
};

static double host_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void host_add(struct cu_prof *p, int op, double t0)
{
    p->host_ms[op] += host_now_ms() - t0;
    p->host_count[op]++;
}

/* Read the recorded pairs (they must be complete: the stream was synchronised). */
static void harvest(struct cu_prof *p)
{
    for (int i = 0; i < p->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->ev[2 * i], p->ev[2 * i + 1]) == cudaSuccess) {
            p->ms[p->cls[i]] += ms;
            p->count[p->cls[i]]++; /* cls holds the op id */
        }
    }
    cudaGetLastError();
    p->n = 0;
}

static void begin(kn_backend_t *be, struct cu_prof *p)
{
    if (p->n >= PROF_PAIRS) {
        cudaEventSynchronize(p->ev[2 * PROF_PAIRS - 1]);
        harvest(p);
    }
    cudaEventRecord(p->ev[2 * p->n], cu_of(be)->stream);
}

static void end(kn_backend_t *be, struct cu_prof *p, int cls)
{
    cudaEventRecord(p->ev[2 * p->n + 1], cu_of(be)->stream);
    p->cls[p->n++] = (unsigned char)cls;
}

/* A wrapper per op: F is the op's field in kn_backend_ops, OP its id. pw_sig deduces the op's
 * argument list from the field's type. */
template <typename T> struct pw_sig;
template <typename... A> struct pw_sig<kn_status (*kn_backend_ops::*)(kn_backend_t *, A...)> {
    template <kn_status (*kn_backend_ops::*F)(kn_backend_t *, A...), int OP, int HARVEST>
    static kn_status call(kn_backend_t *be, A... a)
    {
        struct cu_prof *p = cu_of(be)->prof;
        if (!p->on)
            return (p->orig.*F)(be, a...);
        if (p->on == KN_PROF_SYNC)
            cudaStreamSynchronize(cu_of(be)->stream);
        double t0 = host_now_ms();
        if (p->on == KN_PROF_HOST) {
            kn_status s = (p->orig.*F)(be, a...);
            host_add(p, OP, t0);
            return s;
        }
        begin(be, p);
        kn_status s = (p->orig.*F)(be, a...);
        end(be, p, OP);
        host_add(p, OP, t0);
        if (HARVEST && s == KN_OK)
            harvest(p); /* the op waited for the stream: every pair is complete */
        return s;
    }
};
#define PW(field, harvest_after) \
    pw_sig<decltype(&kn_backend_ops::field)>::template call<&kn_backend_ops::field, OP_##field, harvest_after>

static kn_status prof_sync(kn_backend_t *be)
{
    struct cu_prof *p = cu_of(be)->prof;
    double t0 = host_now_ms();
    kn_status s = p->orig.sync(be);
    if (p->on) {
        host_add(p, OP_sync, t0);
        if (s == KN_OK)
            harvest(p);
    }
    return s;
}

int cu_prof_install(kn_backend_t *be)
{
    cu_impl *c = cu_of(be);
    struct cu_prof *p = (struct cu_prof *)calloc(1, sizeof *p);
    if (!p)
        return 0;
    for (int i = 0; i < 2 * PROF_PAIRS; i++)
        if (cudaEventCreate(&p->ev[i]) != cudaSuccess) {
            for (int j = 0; j < i; j++)
                cudaEventDestroy(p->ev[j]);
            cudaGetLastError();
            free(p);
            return 0;
        }
    p->orig = c->ops;
    c->prof = p;
    kn_backend_ops *o = &c->ops;
    o->upload = PW(upload, 0);
    o->download = PW(download, 1);
    o->sync = prof_sync;
    o->linear = PW(linear, 0);
    if (o->linear_gelu)
        o->linear_gelu = PW(linear_gelu, 0);
    o->matmul_heads = PW(matmul_heads, 0);
    o->layernorm = PW(layernorm, 0);
    o->rmsnorm = PW(rmsnorm, 0);
    o->modulate = PW(modulate, 0);
    o->layernorm_modulate = PW(layernorm_modulate, 0);
    o->gate_add = PW(gate_add, 0);
    o->axpby = PW(axpby, 0);
    o->gelu_tanh = PW(gelu_tanh, 0);
    o->silu = PW(silu, 0);
    o->clamp = PW(clamp, 0);
    o->row_affine = PW(row_affine, 0);
    o->copy = PW(copy, 0);
    o->rope3d = PW(rope3d, 0);
    o->rope3d_table = PW(rope3d_table, 0);
    o->rmsnorm_rope = PW(rmsnorm_rope, 0);
    o->timestep_embed = PW(timestep_embed, 0);
    o->attention = PW(attention, 0);
    if (o->attention_batch)
        o->attention_batch = PW(attention_batch, 0);
    o->kv_store = PW(kv_store, 0);
    o->kv_load = PW(kv_load, 0);
    o->patchify = PW(patchify, 0);
    o->unpatchify = PW(unpatchify, 0);
    o->conv2d3x3 = PW(conv2d3x3, 0);
    o->upsample2x = PW(upsample2x, 0);
    if (o->buffer_copy)
        o->buffer_copy = PW(buffer_copy, 0);
    if (o->kv_store_batch)
        o->kv_store_batch = PW(kv_store_batch, 0);
    if (o->download_rgb8)
        o->download_rgb8 = PW(download_rgb8, 1);
    return 1;
}

void cu_prof_free(kn_backend_t *be)
{
    cu_impl *c = cu_of(be);
    struct cu_prof *p = c->prof;
    if (!p)
        return;
    for (int i = 0; i < 2 * PROF_PAIRS; i++)
        cudaEventDestroy(p->ev[i]);
    free(p);
    c->prof = NULL;
}

/* ---- for benchmarks (declared where used) ------------------------------------------------------- */

/* Turn profiling on (1 events, 2 host time only, 3 events with the stream drained before each op)
 * or off (0); on clears the sums. Returns 0 when the backend has no profiler or the mode is unknown. */
extern "C" int kn_cuda_profile_on(kn_backend_t *be, int on)
{
    if (!be || strcmp(be->ops->name, "cuda") || on < 0 || on > KN_PROF_SYNC)
        return 0;
    struct cu_prof *p = cu_of(be)->prof;
    if (!p)
        return 0;
    if (on) {
        cudaStreamSynchronize(cu_of(be)->stream);
        p->n = 0;
        memset(p->ms, 0, sizeof p->ms);
        memset(p->count, 0, sizeof p->count);
        memset(p->host_ms, 0, sizeof p->host_ms);
        memset(p->host_count, 0, sizeof p->host_count);
    }
    p->on = on;
    return 1;
}

/* Milliseconds and op counts since profiling went on, per class: GEMM, attention, other, copy.
 * Waits for the stream. Returns 0 when the backend has no profiler. */
extern "C" int kn_cuda_profile_read(kn_backend_t *be, double ms[4], long count[4])
{
    if (!be || strcmp(be->ops->name, "cuda"))
        return 0;
    struct cu_prof *p = cu_of(be)->prof;
    if (!p)
        return 0;
    cudaStreamSynchronize(cu_of(be)->stream);
    harvest(p);
    for (int i = 0; i < PC_N; i++) {
        ms[i] = 0;
        count[i] = 0;
    }
    for (int i = 0; i < OP_N; i++) {
        ms[op_cls[i]] += p->ms[i];
        count[op_cls[i]] += p->count[i];
    }
    return 1;
}

/* The same per op: name, GPU milliseconds and count of op i (0 ..), host milliseconds inside it
 * and its host-timed calls (host may be NULL), or 0 past the last op. */
extern "C" int kn_cuda_profile_op(kn_backend_t *be, int i, const char **name, double *ms, long *count, double host[2])
{
    if (!be || strcmp(be->ops->name, "cuda") || !cu_of(be)->prof || i < 0 || i >= OP_N)
        return 0;
    struct cu_prof *p = cu_of(be)->prof;
    *name = op_name[i];
    *ms = p->ms[i];
    *count = p->count[i];
    if (host) {
        host[0] = p->host_ms[i];
        host[1] = (double)p->host_count[i];
    }
    return 1;
}
