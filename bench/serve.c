/* bench/serve.c — `vmla-bench serve`: many streams on one device, per-head against MLA.
 *
 *   vmla-bench serve --preset P [--device cpu|cuda] [--latent-h H --latent-w W] [--window W] [--sink S]
 *                    [--pool-gb G] [--streams 1,2,4,8] [--chunks C] [--modes batched,single]
 *                    [--layouts mha,mla] [--rt-streams 4,8] [--rt-gap S] [--rt-seconds S] [--rt-batch B]
 *                    [--no-offload] [--profile] [--json FILE]
 *
 * For each layout of P's family (per-head P, latent P-mla), at one video size:
 *  residency   a real KV pool of G GB with the engine's page geometry (kvpool.c, on the device):
 *              streams' caches are opened and filled to their full window (sink + window frames,
 *              through the same begin/end-chunk calls the engine makes) until the pool refuses;
 *              the count is the resident sessions. Then, for each N of --streams, the longest
 *              window N streams can hold in that pool, found the same way (filled, not computed).
 *  throughput  N streams on one engine through the scheduler (engine/scheduler.c) with no pacing
 *              (they run as fast as they can), C chunks each: "batched" = up to N streams a step,
 *              "single" = one stream a step (the same work one at a time). Aggregate frames/s, chunk
 *              latency (first pass of a chunk to its frames) p50/p99, time to first frame. First one
 *              stream through a whole window (every attention key length planned), then one
 *              warm-up step per batch shape (no tuning inside the timings).
 *  realtime    --rt-streams N sessions arriving every --rt-gap s, each --rt-seconds of video, paced
 *              at real time with the server's admission (step times calibrated at start): how many
 *              were admitted at once, time to first frame, deadline misses of admitted streams.
 *  offload     a stream with a full window: its pages moved to page-locked host memory and back
 *              (eng_stream_offload / restore + a sync), 5 times: milliseconds and bytes.
 *  --profile  after each throughput run, one more chunk (windows full) with the CUDA per-op
 *             profiler (VMLA_CUDA_PROFILE=1): GPU busy time by class and by op against the wall
 *             time; then the same host-timed (the host's time inside the ops against the wall).
 * Seeded random weights (the figures do not depend on them). --json writes every figure for
 * bench/plot_serve.py.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench_util.h"
#include "engine/cli.h"
#include "engine/engine.h"
#include "engine/kvpool.h"
#include "engine/sched_exec.h"

#define MAXN 16


typedef struct {
    const char *preset, *device, *json;
    long lh, lw, window, sink, chunks, rt_batch;
    double pool_gb, rt_gap, rt_seconds;
    int streams[MAXN], n_streams, rt[MAXN], n_rt;
    int batched, single, mha, mla, offload, profile;
} sargs;

static double pct(double *v, int n, double p)
{
    if (n <= 0)
        return NAN;
    qsort(v, (size_t)n, sizeof *v, cmpd);
    int i = (int)ceil(p * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static int parse_list(const char *v, int *out, int *n)
{
    *n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
        long x;
        if (*n >= MAXN || cli_int(t, 1, 64, &x))
            return -1;
        out[(*n)++] = (int)x;
    }
    return *n ? 0 : -1;
}

static int parse(int argc, char **argv, sargs *a)
{
    for (int i = 2; i < argc;) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--no-offload") || !strcmp(k, "--profile")) {
            if (k[2] == 'n')
                a->offload = 0;
            else
                a->profile = 1;
            i++;
            continue;
        }
        if (!v) {
            fprintf(stderr, "vmla-bench serve: %s needs a value (or is unknown)\n", k);
            return -1;
        }
        int bad = 0;
        if (!strcmp(k, "--preset")) a->preset = v;
        else if (!strcmp(k, "--device")) a->device = v;
        else if (!strcmp(k, "--json")) a->json = v;
        else if (!strcmp(k, "--latent-h")) bad = cli_int(v, 2, 4096, &a->lh);
        else if (!strcmp(k, "--latent-w")) bad = cli_int(v, 2, 4096, &a->lw);
        else if (!strcmp(k, "--window")) bad = cli_int(v, 1, 1024, &a->window);
        else if (!strcmp(k, "--sink")) bad = cli_int(v, 0, 1024, &a->sink);
        else if (!strcmp(k, "--chunks")) bad = cli_int(v, 1, 10000, &a->chunks);
        else if (!strcmp(k, "--rt-batch")) bad = cli_int(v, 1, 64, &a->rt_batch);
        else if (!strcmp(k, "--pool-gb")) bad = cli_double(v, 1e-6, 1e5, &a->pool_gb);
        else if (!strcmp(k, "--rt-gap")) bad = cli_double(v, 0, 60, &a->rt_gap);
        else if (!strcmp(k, "--rt-seconds")) bad = cli_double(v, 0.1, 3600, &a->rt_seconds);
        else if (!strcmp(k, "--streams")) bad = parse_list(v, a->streams, &a->n_streams);
        else if (!strcmp(k, "--rt-streams")) bad = parse_list(v, a->rt, &a->n_rt);
        else if (!strcmp(k, "--modes")) {
            a->batched = strstr(v, "batched") != NULL;
            a->single = strstr(v, "single") != NULL;
            bad = !a->batched && !a->single;
        } else if (!strcmp(k, "--layouts")) {
            a->mla = strstr(v, "mla") != NULL;
            a->mha = strstr(v, "mha") != NULL;
            bad = !a->mla && !a->mha;
        } else {
            fprintf(stderr, "vmla-bench serve: unknown option %s\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "vmla-bench serve: bad value for %s: '%s'\n", k, v);
            return -1;
        }
        i += 2;
    }
    if (!a->preset) {
        fprintf(stderr, "vmla-bench serve: --preset is required (%s)\n", eng_config_presets());
        return -1;
    }
    return 0;
}

static FILE *jf;
static int jfirst;
static void jsep(void)
{
    if (jf && !jfirst)
        fprintf(jf, ",\n");
    jfirst = 0;
}

/* ---- residency -------------------------------------------------------------------------------- */

/* Fill streams of `window` frames into pool p until it refuses (at most cap); returns how many
 * held a full window. */
static int fill(kv_pool_t *p, kv_stream *st, int cap, int tpf, int sink, int window, int F)
{
    char err[128];
    int full = 0, n = 0;
    for (; n < cap; n++) {
        if (kv_stream_init(&st[n], p, tpf, sink, window, F, err, sizeof err))
            break;
        int ok = 1;
        for (int ch = 0; ok && kv_stream_pages(&st[n]) < (sink + window) * st[n].pages_per_frame; ch++) {
            if (kv_stream_begin_chunk(&st[n], ch * F)) {
                ok = 0;
                break;
            }
            kv_stream_end_chunk(&st[n]);
        }
        if (!ok) {
            n++;
            break;
        }
        full++;
    }
    for (int i = 0; i < n; i++)
        kv_stream_free(&st[i]);
    return full;
}

static int residency(const sargs *a, kn_backend_t *be, const eng_config *c, const char *layout)
{
    char err[256];
    kn_dtype dt = kn_backend_compute_dtype(be);
    int tpf = (c->latent_h / 2) * (c->latent_w / 2);
    kv_pool_config pc = {.page_tokens = tpf, .layers = c->layers, .width = eng_config_kv_width(c), .dtype = dt};
    size_t page = (size_t)tpf * (size_t)c->layers * (size_t)pc.width * kn_dtype_size(dt);
    double pool_bytes = a->pool_gb * 1e9;
    pc.n_pages = (int32_t)(pool_bytes / (double)page);
    if (pc.n_pages < 1) {
        printf("  %s residency: a pool of %.3f GB holds no page of %zu bytes\n", layout, a->pool_gb, page);
        return 0;
    }
    double t0 = now_s();
    kv_pool_t *p = kv_pool_new(be, &pc, err, sizeof err);
    if (!p) {
        fprintf(stderr, "vmla-bench serve: %s\n", err);
        return -1;
    }
    int cap = pc.n_pages + 1;
    kv_stream *st = calloc((size_t)cap, sizeof *st);
    int resident = fill(p, st, cap, tpf, c->sink, c->window, c->chunk_frames);
    printf("  %s residency: pool %.2f GB = %d pages of %.2f MiB (a latent frame, all layers; allocated in %.2f s); "
           "%d sessions with sink %d + window %d frames resident\n",
           layout, a->pool_gb, pc.n_pages, page / 1048576.0, now_s() - t0, resident, c->sink, c->window);
    jsep();
    if (jf)
        fprintf(jf, "  {\"kind\": \"residency\", \"layout\": \"%s\", \"pool_gb\": %.3f, \"pages\": %d, "
                    "\"page_bytes\": %zu, \"sink\": %d, \"window\": %d, \"resident\": %d, \"windows\": [",
                layout, a->pool_gb, pc.n_pages, page, c->sink, c->window, resident);
    for (int k = 0; k < a->n_streams; k++) {
        int n = a->streams[k], lo = 0, hi = 1;
        /* the longest window (in frames, at least a chunk) n streams hold */
        while (hi < 1 << 20 && fill(p, st, n, tpf, c->sink, hi * c->chunk_frames, c->chunk_frames) == n)
            lo = hi, hi *= 2;
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (fill(p, st, n, tpf, c->sink, mid * c->chunk_frames, c->chunk_frames) == n)
                lo = mid;
            else
                hi = mid;
        }
        int w = lo * c->chunk_frames;
        printf("    %2d streams: longest window %d latent frames (%.1f s of video)\n", n, w,
               (double)w * c->dec_t_up / c->fps);
        if (jf)
            fprintf(jf, "%s{\"streams\": %d, \"window\": %d}", k ? ", " : "", n, w);
    }
    if (jf)
        fprintf(jf, "]}");
    free(st);
    kv_pool_free(p);
    return resident;
}

/* ---- throughput and real time through the scheduler ------------------------------------------- */

typedef struct {
    sch_job job;
    int idx;
    double submitted, chunk_t0, first;
    int chunks;
} bjob;

static eng_status open_b(void *user, sch_job *j, eng_stream_t **out)
{
    bjob *b = j->user;
    return eng_stream_open(user, 1000 + (uint64_t)b->idx, "a red square moving left on a white background", out);
}

typedef struct {
    double fps, lat50, lat99, ttff50, ttff_max, wall;
    int64_t misses;
    int admitted_fast, max_compute;
    double ttff_fast50, ttff_fast_max;
} brun;

/* Run the jobs through a scheduler on engine e until all are done. limit_chunks > 0: each stops
 * after that many chunks; otherwise after `seconds` of video. arrivals: submit job i at t0 + i*gap. */
static int run_sched(eng_engine_t *e, sch_t *s, bjob *jobs, int n, int limit_chunks, double gap, brun *r)
{
    int fpc = eng_frames_per_chunk(e);
    double *lat = calloc(4096, sizeof(double)), *ttff = calloc((size_t)n, sizeof(double)),
           *fast = calloc((size_t)n, sizeof(double));
    int nlat = 0, submitted = 0, done = 0, nfast = 0, bad = 0;
    memset(r, 0, sizeof *r);
    double t0 = now_s(), last_ready = t0;
    while (done < n && !bad) {
        double t = now_s();
        while (submitted < n && t >= t0 + submitted * gap) {
            bjob *b = &jobs[submitted];
            b->submitted = t;
            if (sch_submit(s, &b->job, t) < 0) {
                fprintf(stderr, "vmla-bench serve: queue full\n");
                bad = 1;
            }
            submitted++;
        }
        for (int i = 0; i < submitted; i++)
            if (jobs[i].job.state != SCH_DONE && !jobs[i].job.want_stop && jobs[i].chunks >= limit_chunks)
                sch_stop(s, &jobs[i].job);
        sch_work w;
        sch_next(s, t, &w);
        if (w.kind == SCH_IDLE) {
            double until = w.wake_at;
            if (submitted < n && t0 + submitted * gap < until)
                until = t0 + submitted * gap;
            if (!isfinite(until)) {
                if (submitted == n)
                    break;
                until = t + 0.001;
            }
            double wait = until - now_s();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - floor(wait)) * 1e9)};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        sch_stats st;
        sch_get_stats(s, &st);
        if (st.compute > r->max_compute)
            r->max_compute = st.compute;
        for (int i = 0; i < w.n; i++)
            if (w.kind == SCH_STEP && w.jobs[i]->pass == 0)
                ((bjob *)w.jobs[i]->user)->chunk_t0 = t;
        sch_result res[SCH_MAX_BATCH];
        double sec;
        eng_sched_execute(e, &w, open_b, e, now_s, res, &sec);
        double t1 = now_s();
        for (int i = 0; i < w.n; i++) {
            bjob *b = w.jobs[i]->user;
            if (res[i] == SCH_FAILED) {
                fprintf(stderr, "vmla-bench serve: stream %d failed: %s\n", b->idx,
                        b->job.stream ? eng_stream_error(b->job.stream) : eng_error(e));
                bad = 1;
            }
            if (w.kind == SCH_STEP && res[i] == SCH_OK && eng_stream_take_frames(b->job.stream)) {
                if (nlat < 4096)
                    lat[nlat++] = t1 - b->chunk_t0;
                if (b->chunks++ == 0) {
                    b->first = t1;
                    ttff[b->idx] = t1 - b->submitted;
                }
                last_ready = t1;
            }
        }
        sch_done(s, &w, res, t1, sec);
        for (int i = 0; i < w.n; i++)
            if (w.jobs[i]->state == SCH_DONE) {
                done++;
                r->misses += w.jobs[i]->misses;
                bjob *b = w.jobs[i]->user;
                if (b->job.admitted_at - b->submitted < 0.05)
                    fast[nfast++] = ttff[b->idx];
            }
    }
    int64_t frames = 0;
    for (int i = 0; i < n; i++)
        frames += (int64_t)jobs[i].chunks * fpc;
    r->wall = last_ready - t0;
    r->fps = r->wall > 0 ? frames / r->wall : 0;
    r->lat50 = pct(lat, nlat, 0.5);
    r->lat99 = pct(lat, nlat, 0.99);
    r->ttff50 = pct(ttff, n, 0.5);
    r->ttff_max = pct(ttff, n, 1.0);
    r->admitted_fast = nfast;
    r->ttff_fast50 = pct(fast, nfast, 0.5);
    r->ttff_fast_max = pct(fast, nfast, 1.0);
    free(lat);
    free(ttff);
    free(fast);
    return bad ? -1 : 0;
}

/* One stream through a whole window once: every key length the timed runs meet has its attention
 * plan before them (the backend builds one per shape on first use). */
/* n streams together through a whole window (n = 1: one stream), so the attention plans of every
 * key length (cuDNN builds one per shape and batch size on first use) exist before a timing. */
static int warm_window(eng_engine_t *e, int n)
{
    const eng_config *c = eng_get_config(e);
    eng_stream_t *st[64];
    int ok = 1, opened = 0;
    for (; opened < n && ok; opened++)
        ok = eng_stream_open(e, 4999 - (uint64_t)opened, "warm", &st[opened]) == ENG_OK;
    if (!ok)
        opened--;
    for (int i = 0; i < c->window / c->chunk_frames + 1 && ok; i++)
        ok = eng_generate_chunk(e, st, opened) == ENG_OK;
    for (int i = 0; i < opened; i++)
        eng_stream_close(st[i]);
    return ok ? 0 : -1;
}

/* One step over n fresh streams (each alone when single), so no first-use cost lands in a timing. */
static int warm(eng_engine_t *e, int n, int single)
{
    eng_stream_t *st[64];
    int ok = 1, opened = 0;
    for (; opened < n && ok; opened++)
        ok = eng_stream_open(e, 5000 + (uint64_t)opened, "warm", &st[opened]) == ENG_OK;
    if (!ok)
        opened--;
    if (ok && single)
        ok = eng_step(e, st, 1) == ENG_OK;
    else if (ok)
        ok = eng_step(e, st, n) == ENG_OK;
    ok = ok && eng_sync(e) == ENG_OK;
    for (int i = 0; i < opened; i++)
        eng_stream_close(st[i]);
    return ok ? 0 : -1;
}

/* One chunk of n streams (one at a time when single) with the per-op profiler on, in the steady
 * state (windows full: the streams' prompts and first chunks are run untimed first): where the
 * GPU's time goes and how much of the wall time it is busy. Prints and returns 0; 1 when the
 * backend has no profiler. */
static int profile_chunk(eng_engine_t *e, kn_backend_t *be, int n, int single, const char *layout, int mode)
{
    eng_stream_t *st[64];
    int opened = 0, ok = 1;
    for (; opened < n && ok; opened++)
        ok = eng_stream_open(e, 7000 + (uint64_t)opened, "profile", &st[opened]) == ENG_OK;
    if (!ok)
        opened--;
    const eng_config *cfg = eng_get_config(e);
    for (int k = 0; ok && k < (cfg->sink + cfg->window + cfg->chunk_frames - 1) / cfg->chunk_frames; k++) {
        ok = eng_generate_chunk(e, st, n) == ENG_OK; /* untimed: fill the windows */
        for (int i = 0; i < n; i++)
            eng_stream_take_frames(st[i]);
    }
    if (!ok || !kn_cuda_profile_on(be, mode)) {
        for (int i = 0; i < opened; i++)
            eng_stream_close(st[i]);
        return 1;
    }
    double t0 = now_s();
    for (int i = 0; i < (single ? n : 1) && ok; i++)
        ok = eng_generate_chunk(e, single ? &st[i] : st, single ? 1 : n) == ENG_OK;
    eng_sync(e);
    double wall = (now_s() - t0) * 1e3, ms[4];
    long cnt[4];
    kn_cuda_profile_read(be, ms, cnt);
    if (mode == 2) { /* host time only: the enqueue cost against the wall */
        double enq = 0, wait = 0, m, h[2];
        const char *name;
        long c;
        for (int i = 0; kn_cuda_profile_op(be, i, &name, &m, &c, h); i++)
            *(prof_waits(name) ? &wait : &enq) += h[0];
        kn_cuda_profile_on(be, 0);
        printf("    host-timed %s %s N=%d, one chunk each: wall %.1f ms; host inside ops %.1f ms, waiting for the GPU "
               "%.1f ms, elsewhere %.1f ms\n",
               layout, single ? "single" : "batched", n, wall, enq, wait, wall - enq - wait);
        for (int i = 0; i < opened; i++)
            eng_stream_close(st[i]);
        return ok ? 0 : -1;
    }
    kn_cuda_profile_on(be, 0);
    double busy = ms[0] + ms[1] + ms[2] + ms[3];
    printf("    profile %s %s N=%d, one chunk each: wall %.1f ms; GPU busy %.1f ms (%.0f%%): GEMM %.1f, attention %.1f, "
           "other %.1f (%ld ops), copies %.1f",
           layout, single ? "single" : "batched", n, wall, busy, 100 * busy / wall, ms[0], ms[1], ms[2], cnt[2], ms[3]);
    const char *top[3] = {0};
    double tms[3] = {0};
    char per_op[2048] = "";
    size_t used = 0;
    for (int i = 0;; i++) {
        const char *name;
        double m;
        long c;
        if (!kn_cuda_profile_op(be, i, &name, &m, &c, NULL))
            break;
        if (c && used < sizeof per_op)
            used += (size_t)snprintf(per_op + used, sizeof per_op - used, " %s %.1f (%ld)", name, m, c);
        for (int k = 0; k < 3; k++)
            if (m > tms[k]) {
                for (int q = 2; q > k; q--)
                    tms[q] = tms[q - 1], top[q] = top[q - 1];
                tms[k] = m;
                top[k] = name;
                break;
            }
    }
    printf("; top ops:");
    for (int k = 0; k < 3 && top[k]; k++)
        printf(" %s %.1f", top[k], tms[k]);
    printf("\n      per op (ms, calls):%s\n", per_op);
    jsep();
    if (jf)
        fprintf(jf, "  {\"kind\": \"profile\", \"layout\": \"%s\", \"mode\": \"%s\", \"streams\": %d, \"wall_ms\": %.2f, "
                    "\"gemm_ms\": %.2f, \"attention_ms\": %.2f, \"other_ms\": %.2f, \"copy_ms\": %.2f}",
                layout, single ? "single" : "batched", n, wall, ms[0], ms[1], ms[2], ms[3]);
    for (int i = 0; i < opened; i++)
        eng_stream_close(st[i]);
    return ok ? 0 : -1;
}

static void base_sched(eng_engine_t *e, sch_config *sc)
{
    sch_config_default(sc);
    eng_sched_config(e, sc);
    sc->offload_after = -1;
}

static int throughput(const sargs *a, kn_backend_t *be, eng_engine_t *e, const char *layout)
{
    int chunks = a->chunks ? (int)a->chunks : 3;
    if (warm_window(e, 1)) {
        fprintf(stderr, "vmla-bench serve: warm-up: %s\n", eng_error(e));
        return -1;
    }
    for (int k = 0; k < a->n_streams; k++) {
        int n = a->streams[k];
        for (int m = 0; m < 2; m++) {
            int single = m == 1;
            if ((single && !a->single) || (!single && !a->batched))
                continue;
            /* batched: the batch sizes this run meets (runs of at most 8 streams of one key
             * length, kernels/cuda) through every key length first */
            if ((!single && n > 1 && warm_window(e, n < 8 ? n : 8)) || warm(e, n, single)) {
                fprintf(stderr, "vmla-bench serve: warm-up: %s\n", eng_error(e));
                return -1;
            }
            sch_config sc;
            base_sched(e, &sc);
            sc.max_batch = single ? 1 : n;
            sc.max_queue = n;
            sc.max_resident = n;
            sc.lead_chunks = 1e9; /* no pacing: as fast as they go (first chunks still come first) */
            sc.admit_all = 1;
            char err[256];
            sch_t *s = sch_new(&sc, err, sizeof err);
            bjob *jobs = calloc((size_t)n, sizeof *jobs);
            for (int i = 0; i < n; i++) {
                jobs[i].idx = i;
                sch_job_init(&jobs[i].job, (uint64_t)i, &jobs[i]);
            }
            brun r;
            int rc = s ? run_sched(e, s, jobs, n, chunks, 0, &r) : -1;
            if (!s)
                fprintf(stderr, "vmla-bench serve: %s\n", err);
            free(jobs);
            sch_free(s);
            if (rc)
                return -1;
            printf("  %s %-7s N=%2d: %7.1f frames/s aggregate (%.1f s for %d chunks each), chunk latency p50 %.3f s "
                   "p99 %.3f s, first frame p50 %.3f s max %.3f s\n",
                   layout, single ? "single" : "batched", n, r.fps, r.wall, chunks, r.lat50, r.lat99, r.ttff50,
                   r.ttff_max);
            fflush(stdout);
            jsep();
            if (jf)
                fprintf(jf, "  {\"kind\": \"throughput\", \"layout\": \"%s\", \"mode\": \"%s\", \"streams\": %d, "
                            "\"chunks\": %d, \"fps\": %.3f, \"wall_s\": %.4f, \"chunk_p50_s\": %.5f, "
                            "\"chunk_p99_s\": %.5f, \"ttff_p50_s\": %.5f, \"ttff_max_s\": %.5f}",
                        layout, single ? "single" : "batched", n, chunks, r.fps, r.wall, r.lat50, r.lat99, r.ttff50,
                        r.ttff_max);
            if (a->profile && (profile_chunk(e, be, n, single, layout, 1) < 0 ||
                               profile_chunk(e, be, n, single, layout, 2) < 0))
                return -1;
        }
    }
    return 0;
}

static int realtime(const sargs *a, eng_engine_t *e, const char *layout, int max_batch)
{
    char err[256];
    for (int k = 0; k < a->n_rt; k++) {
        int n = a->rt[k];
        sch_config sc;
        base_sched(e, &sc);
        sc.max_batch = max_batch;
        sc.max_queue = n;
        sch_t *s = sch_new(&sc, err, sizeof err);
        if (!s || eng_sched_calibrate(e, s, max_batch, now_s, err, sizeof err)) {
            fprintf(stderr, "vmla-bench serve: %s\n", err);
            sch_free(s);
            return -1;
        }
        sch_stats st;
        sch_get_stats(s, &st);
        int chunks = (int)ceil(a->rt_seconds * eng_get_config(e)->fps / eng_frames_per_chunk(e));
        bjob *jobs = calloc((size_t)n, sizeof *jobs);
        for (int i = 0; i < n; i++) {
            jobs[i].idx = i;
            sch_job_init(&jobs[i].job, (uint64_t)i, &jobs[i]);
        }
        brun r;
        int rc = run_sched(e, s, jobs, n, chunks, a->rt_gap, &r);
        free(jobs);
        sch_free(s);
        if (rc)
            return -1;
        printf("  %s realtime: %2d sessions every %.2f s, %.0f s each: measured capacity %d; %d admitted at once "
               "(first frame p50 %.3f s, max %.3f s), all: first frame p50 %.3f s max %.3f s; at most %d computing; "
               "deadline misses %lld; %.1f frames/s\n",
               layout, n, a->rt_gap, a->rt_seconds, st.capacity, r.admitted_fast, r.ttff_fast50, r.ttff_fast_max,
               r.ttff50, r.ttff_max, r.max_compute, (long long)r.misses, r.fps);
        fflush(stdout);
        jsep();
        if (jf)
            fprintf(jf, "  {\"kind\": \"realtime\", \"layout\": \"%s\", \"streams\": %d, \"gap_s\": %.3f, "
                        "\"seconds\": %.1f, \"capacity\": %d, \"admitted_at_once\": %d, \"ttff_at_once_p50_s\": %.4f, "
                        "\"ttff_at_once_max_s\": %.4f, \"ttff_p50_s\": %.4f, \"ttff_max_s\": %.4f, \"max_computing\": %d, "
                        "\"deadline_misses\": %lld, \"fps\": %.2f}",
                    layout, n, a->rt_gap, a->rt_seconds, st.capacity, r.admitted_fast, r.ttff_fast50,
                    r.ttff_fast_max, r.ttff50, r.ttff_max, r.max_compute, (long long)r.misses, r.fps);
    }
    return 0;
}

static int offload(eng_engine_t *e, const char *layout)
{
    const eng_config *c = eng_get_config(e);
    eng_stream_t *s = NULL;
    if (eng_stream_open(e, 77, "offload", &s) != ENG_OK)
        return -1;
    int warm_chunks = c->window / c->chunk_frames + 1;
    for (int i = 0; i < warm_chunks; i++)
        if (eng_generate_chunk(e, &s, 1) != ENG_OK) {
            eng_stream_close(s);
            return -1;
        }
    size_t bytes = eng_stream_kv_bytes(s);
    double off[5], res[5];
    int rc = 0;
    for (int k = 0; k < 5 && !rc; k++) {
        eng_sync(e);
        double t0 = now_s();
        rc |= eng_stream_offload(s) != ENG_OK || eng_sync(e) != ENG_OK;
        double t1 = now_s();
        rc |= eng_stream_restore(s) != ENG_OK || eng_sync(e) != ENG_OK;
        double t2 = now_s();
        off[k] = t1 - t0;
        res[k] = t2 - t1;
    }
    if (!rc)
        rc |= eng_generate_chunk(e, &s, 1) != ENG_OK; /* and it runs on */
    if (rc) {
        fprintf(stderr, "vmla-bench serve: offload: %s\n", eng_stream_error(s));
        eng_stream_close(s);
        return -1;
    }
    double o50 = pct(off, 5, 0.5), r50 = pct(res, 5, 0.5);
    printf("  %s offload: %.1f MiB of KV (sink %d + window %d frames) to page-locked host memory %.2f ms, back %.2f ms "
           "(median of 5; %.1f GB/s)\n",
           layout, bytes / 1048576.0, c->sink, c->window, o50 * 1e3, r50 * 1e3, 2.0 * bytes / (o50 + r50) / 1e9);
    /* page span: the same bytes moved as pages of one frame over all layers (the pool's) against
     * pages of one frame of one layer (layers times as many copies, each layers times smaller) */
    eng_pool_stats ps;
    eng_pool_get_stats(e, &ps);
    double span[2] = {0, 0};
    kn_buffer_t *dev = kn_buffer_alloc(eng_backend(e), bytes), *host = kn_host_buffer_alloc(eng_backend(e), bytes);
    if (dev && host) {
        for (int mode = 0; mode < 2; mode++) {
            size_t piece = mode ? ps.page_bytes / (size_t)c->layers : ps.page_bytes;
            size_t pieces = bytes / piece;
            double t[5];
            for (int k = 0; k < 5; k++) {
                eng_sync(e);
                double t0 = now_s();
                for (size_t i = 0; i < pieces; i++)
                    kn_buffer_copy(eng_backend(e), host, i * piece, dev, i * piece, piece);
                for (size_t i = 0; i < pieces; i++)
                    kn_buffer_copy(eng_backend(e), dev, i * piece, host, i * piece, piece);
                eng_sync(e);
                t[k] = now_s() - t0;
            }
            span[mode] = pct(t, 5, 0.5) * 1e3;
        }
        printf("  %s page span: round trip to host as %d pages of one frame, all layers: %.2f ms; as %d pages of one "
               "frame, one layer: %.2f ms\n",
               layout, ps.pages_per_stream, span[0], ps.pages_per_stream * c->layers, span[1]);
    }
    kn_buffer_free(eng_backend(e), dev);
    kn_buffer_free(eng_backend(e), host);
    jsep();
    if (jf)
        fprintf(jf, "  {\"kind\": \"offload\", \"layout\": \"%s\", \"bytes\": %zu, \"offload_ms\": %.3f, "
                    "\"restore_ms\": %.3f, \"span_all_layers_ms\": %.3f, \"span_one_layer_ms\": %.3f}",
                layout, bytes, o50 * 1e3, r50 * 1e3, span[0], span[1]);
    eng_stream_close(s);
    return 0;
}

static int one_layout(const sargs *a, kn_backend_t *be, eng_config *c, const char *layout)
{
    if (a->lh)
        c->latent_h = (int)a->lh;
    if (a->lw)
        c->latent_w = (int)a->lw;
    if (a->window >= 0)
        c->window = (int)a->window;
    if (a->sink >= 0)
        c->sink = (int)a->sink;
    printf("%s (%s): %dx%d video, sink %d + window %d latent frames, %s\n", layout, c->preset, c->latent_w * 8,
           c->latent_h * 8, c->sink, c->window, kn_backend_name(be));
    if (a->pool_gb > 0 && residency(a, be, c, layout) < 0)
        return -1;
    int maxn = 1;
    for (int k = 0; k < a->n_streams; k++)
        maxn = a->streams[k] > maxn ? a->streams[k] : maxn;
    int rtb = a->rt_batch ? (int)a->rt_batch : 8;
    for (int k = 0; k < a->n_rt; k++)
        maxn = a->rt[k] > maxn ? a->rt[k] : maxn;
    if (rtb > maxn)
        maxn = rtb;
    char err[512];
    eng_options o;
    eng_options_default(&o);
    o.weight_seed = 7;
    o.max_batch = maxn;
    o.max_streams = maxn;
    o.kv_dtype = kn_backend_compute_dtype(be);
    int tpf = (c->latent_h / 2) * (c->latent_w / 2);
    if (a->offload)
        o.host_kv_bytes = (size_t)(c->sink + c->window) * (size_t)tpf * (size_t)c->layers *
                          (size_t)eng_config_kv_width(c) * kn_dtype_size(o.kv_dtype);
    double t0 = now_s();
    eng_engine_t *e = NULL;
    if (eng_open(&e, be, c, &o, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "vmla-bench serve: %s\n", err);
        return -1;
    }
    printf("  engine open (weights drawn, %d slots) in %.1f s\n", maxn, now_s() - t0);
    int rslots;
    size_t rbytes;
    int64_t reuses;
    eng_rebuild_cache_stats(e, &rslots, &rbytes, &reuses);
    if (eng_mla_rebuild(e))
        printf("  MLA rebuild cache: %d slots of %.1f MiB (a chunk's rebuilt context, kept for its passes)\n", rslots,
               rbytes / 1048576.0);
    jsep();
    if (jf)
        fprintf(jf, "  {\"kind\": \"config\", \"layout\": \"%s\", \"width\": %d, \"height\": %d, \"sink\": %d, "
                    "\"window\": %d, \"fps\": %d, \"frames_per_chunk\": %d}",
                layout, eng_video_width(e), eng_video_height(e), c->sink, c->window, c->fps, eng_frames_per_chunk(e));
    int rc = 0;
    if (a->offload)
        rc = offload(e, layout);
    if (!rc && a->n_streams)
        rc = throughput(a, be, e, layout);
    if (!rc && a->n_rt)
        rc = realtime(a, e, layout, rtb);
    eng_close(e);
    return rc;
}

int vmla_bench_serve(int argc, char **argv)
{
    sargs a = {.device = "cpu", .window = -1, .sink = -1, .rt_gap = 0.25, .rt_seconds = 10, .batched = 1,
               .single = 1, .mha = 1, .mla = 1, .offload = 1};
    a.streams[0] = 1;
    a.streams[1] = 2;
    a.streams[2] = 4;
    a.n_streams = 3;
    if (parse(argc, argv, &a))
        return 2;
    char err[512];
    eng_config mha, mla;
    char base[40];
    snprintf(base, sizeof base, "%s", a.preset);
    size_t bl = strlen(base);
    if (bl > 4 && !strcmp(base + bl - 4, "-mla"))
        base[bl - 4] = 0;
    char m2[48];
    snprintf(m2, sizeof m2, "%s-mla", base);
    if (eng_config_preset(&mha, base, err, sizeof err) || eng_config_preset(&mla, m2, err, sizeof err)) {
        fprintf(stderr, "vmla-bench serve: %s\n", err);
        return 2;
    }
    kn_backend_t *be = !strcmp(a.device, "cuda") ? kn_cuda_backend_new(0, err, sizeof err) : kn_cpu_backend_new();
    if (!be) {
        fprintf(stderr, "vmla-bench serve: backend: %s\n", err);
        return 1;
    }
    if (a.json && !(jf = fopen(a.json, "w"))) {
        fprintf(stderr, "vmla-bench serve: cannot write %s\n", a.json);
        kn_backend_free(be);
        return 1;
    }
    jfirst = 1;
    if (jf)
        fprintf(jf, "{\"preset\": \"%s\", \"device\": \"%s\", \"results\": [\n", base, kn_backend_name(be));
    int rc = 0;
    if (a.mha)
        rc = one_layout(&a, be, &mha, "per-head");
    if (!rc && a.mla)
        rc = one_layout(&a, be, &mla, "MLA");
    if (jf) {
        fprintf(jf, "\n]}\n");
        fclose(jf);
    }
    kn_backend_free(be);
    return rc ? 1 : 0;
}
