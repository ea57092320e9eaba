/* bench/bench_util.h — small helpers the vmla-bench subcommands share (header-only). */
#ifndef VMLA_BENCH_UTIL_H
#define VMLA_BENCH_UTIL_H

#include <string.h>
#include <time.h>

#include "kernels/backend.h"

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* qsort comparison of doubles */
static inline int cmpd(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* The CUDA backend's per-op profiler (kernels/cuda/cuda_prof.cu; VMLA_CUDA_PROFILE=1 installs it;
 * kn_cuda_profile_on's modes: 1 events, 2 host time only, 3 events with the stream drained before
 * each op); without CUDA, stand-ins that report no profiler. */
#ifdef VMLA_HAVE_CUDA
int kn_cuda_profile_on(kn_backend_t *be, int on);
int kn_cuda_profile_read(kn_backend_t *be, double ms[4], long count[4]);
int kn_cuda_profile_op(kn_backend_t *be, int i, const char **name, double *ms, long *count, double host[2]);
#else
static inline int kn_cuda_profile_on(kn_backend_t *be, int on) { return 0; }
static inline int kn_cuda_profile_read(kn_backend_t *be, double ms[4], long count[4]) { return 0; }
static inline int kn_cuda_profile_op(kn_backend_t *be, int i, const char **name, double *ms, long *count,
                                     double host[2])
{
    return 0;
}
#endif

/* Ops in which the host waits for the GPU (host-timed profile): the downloads and sync. */
static inline int prof_waits(const char *op)
{
    return !strcmp(op, "download") || !strcmp(op, "download_rgb8") || !strcmp(op, "sync");
}

#endif
