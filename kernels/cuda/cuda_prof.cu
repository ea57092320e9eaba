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
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.cuh"

#define PROF_PAIRS 16384

enum { PC_GEMM = 0, PC_ATTN, PC_OTHER, PC_COPY, PC_N };

struct cu_prof {
    kn_backend_ops orig; /* the table before wrapping */
    int on;
    cudaEvent_t ev[2 * PROF_PAIRS];
    unsigned char cls[PROF_PAIRS];
    int n;          /* pairs recorded, not yet read */
    double ms[PC_N];
    long count[PC_N];
};

/* Read the recorded pairs (they must be complete: the stream was synchronised). */
static void harvest(struct cu_prof *p)
{
    for (int i = 0; i < p->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->ev[2 * i], p->ev[2 * i + 1]) == cudaSuccess) {
            p->ms[p->cls[i]] += ms;
            p->count[p->cls[i]]++;
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

/* A wrapper per op: F is the op's field in kn_backend_ops, CLS its class. pw_sig deduces the op's
 * argument list from the field's type. */
template <typename T> struct pw_sig;
template <typename... A> struct pw_sig<kn_status (*kn_backend_ops::*)(kn_backend_t *, A...)> {
    template <kn_status (*kn_backend_ops::*F)(kn_backend_t *, A...), int CLS, int HARVEST>
    static kn_status call(kn_backend_t *be, A... a)
    {
        struct cu_prof *p = cu_of(be)->prof;
        if (!p->on)
            return (p->orig.*F)(be, a...);
        begin(be, p);
        kn_status s = (p->orig.*F)(be, a...);
        end(be, p, CLS);
        if (HARVEST && s == KN_OK)
            harvest(p); /* the op waited for the stream: every pair is complete */
        return s;
    }
};
#define PW(field, cls, harvest_after) \
    pw_sig<decltype(&kn_backend_ops::field)>::template call<&kn_backend_ops::field, cls, harvest_after>

static kn_status prof_sync(kn_backend_t *be)
{
    struct cu_prof *p = cu_of(be)->prof;
    kn_status s = p->orig.sync(be);
    if (p->on && s == KN_OK)
        harvest(p);
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
    o->upload = PW(upload, PC_COPY, 0);
    o->download = PW(download, PC_COPY, 1);
    o->sync = prof_sync;
    o->linear = PW(linear, PC_GEMM, 0);
    o->matmul_heads = PW(matmul_heads, PC_GEMM, 0);
    o->layernorm = PW(layernorm, PC_OTHER, 0);
    o->rmsnorm = PW(rmsnorm, PC_OTHER, 0);
    o->modulate = PW(modulate, PC_OTHER, 0);
    o->gate_add = PW(gate_add, PC_OTHER, 0);
    o->axpby = PW(axpby, PC_OTHER, 0);
    o->gelu_tanh = PW(gelu_tanh, PC_OTHER, 0);
    o->silu = PW(silu, PC_OTHER, 0);
    o->clamp = PW(clamp, PC_OTHER, 0);
    o->row_affine = PW(row_affine, PC_OTHER, 0);
    o->copy = PW(copy, PC_OTHER, 0);
    o->rope3d = PW(rope3d, PC_OTHER, 0);
    o->timestep_embed = PW(timestep_embed, PC_OTHER, 0);
    o->attention = PW(attention, PC_ATTN, 0);
    o->kv_store = PW(kv_store, PC_OTHER, 0);
    o->patchify = PW(patchify, PC_OTHER, 0);
    o->unpatchify = PW(unpatchify, PC_OTHER, 0);
    o->conv2d3x3 = PW(conv2d3x3, PC_OTHER, 0);
    o->upsample2x = PW(upsample2x, PC_OTHER, 0);
    if (o->buffer_copy)
        o->buffer_copy = PW(buffer_copy, PC_COPY, 0);
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

/* Turn profiling on or off; on clears the sums. Returns 0 when the backend has no profiler. */
extern "C" int kn_cuda_profile_on(kn_backend_t *be, int on)
{
    if (!be || strcmp(be->ops->name, "cuda"))
        return 0;
    struct cu_prof *p = cu_of(be)->prof;
    if (!p)
        return 0;
    if (on) {
        cudaStreamSynchronize(cu_of(be)->stream);
        p->n = 0;
        memset(p->ms, 0, sizeof p->ms);
        memset(p->count, 0, sizeof p->count);
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
        ms[i] = p->ms[i];
        count[i] = p->count[i];
    }
    return 1;
}
