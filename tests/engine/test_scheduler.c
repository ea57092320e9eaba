/* tests/engine/test_scheduler.c — deterministic simulation of the scheduler over a real KV pool.
 *
 * A virtual clock; a step over n streams takes a + b*n seconds (plus seeded jitter where said);
 * every stream's cache is a real kv_stream over a real kv_pool (CPU backend) with a host tier, so
 * pages are really taken, evicted, offloaded, restored and freed as the engine would. Arrivals,
 * departures, pauses, resumes, cancellations, consumer back-pressure and injected failures come
 * from a seeded generator. After every piece of work the invariants are checked: the pool's used
 * pages equal the pages the streams hold, no stream exceeds its window, reservations fit the pool.
 * At the end every job is detached and every page is back: nothing leaked, no stream lost. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kvpool.h"
#include "engine/scheduler.h"
#include "tests/check.h"

/* model numbers of a small stream: 3-frame chunks, sink 1, window 6, 4 steps + cache pass */
#define CHUNK_F 3
#define SINK 1
#define WINDOW 6
#define PASSES 5
#define PPF 2 /* pages a frame */
#define PPS ((SINK + WINDOW) * PPF)

typedef struct {
    sch_job job;
    kv_stream kv;
    int open;
    int64_t chunks_begun;
    int64_t stop_after;   /* chunks, then the job stops itself (the session's length) */
    double pause_at, resume_at;
    int done_seen;
} sim_job;

typedef struct {
    uint64_t x;
} rng_t;
static uint64_t rnd(rng_t *r)
{
    r->x ^= r->x << 13;
    r->x ^= r->x >> 7;
    r->x ^= r->x << 17;
    return r->x;
}
static double unif(rng_t *r) { return (double)(rnd(r) >> 11) / 9007199254740992.0; }

typedef struct {
    double a, b, jitter;       /* step cost a + b*n (+ up to jitter share) */
    double fail_step, fail_open; /* probabilities */
    int n_jobs;
    double mean_gap;            /* seconds between arrivals */
    int min_chunks, max_chunks; /* session length */
    double p_pause, p_cancel, p_block;
    int max_batch, max_resident, max_queue, pool_pages, host_slots;
    double offload_after;
    uint64_t seed;
    int expect_no_misses;
} scenario;

typedef struct {
    int admitted, refused, completed, failed, cancelled;
    int64_t misses_rt, misses_all, offloads, restores;
    double worst_ttff, worst_late;
    int max_compute;
} outcome;

static kn_backend_t *be;

static int check_invariants(kv_pool_t *pool, sim_job *jobs, int n, const sch_config *c)
{
    int dev = 0, host = 0, res = 0;
    for (int i = 0; i < n; i++) {
        if (!jobs[i].open)
            continue;
        int p = kv_stream_pages(&jobs[i].kv);
        if (p > PPS) {
            printf("job %d holds %d pages > %d\n", i, p, PPS);
            return 0;
        }
        if (jobs[i].kv.offloaded)
            host += p;
        else
            dev += p;
        res += jobs[i].job.res;
    }
    if (dev != kv_pool_n_pages(pool) - kv_pool_n_free(pool)) {
        printf("device pages: streams hold %d, pool says %d used\n", dev, kv_pool_n_pages(pool) - kv_pool_n_free(pool));
        return 0;
    }
    if (host != kv_pool_n_host_pages(pool) - kv_pool_n_host_free(pool)) {
        printf("host pages: streams hold %d, pool says %d used\n", host,
               kv_pool_n_host_pages(pool) - kv_pool_n_host_free(pool));
        return 0;
    }
    if (res > c->max_resident || res * c->pages_per_stream > c->pool_pages) {
        printf("reservations: %d resident\n", res);
        return 0;
    }
    return 1;
}

static outcome simulate(const scenario *sc, const char *name)
{
    outcome o;
    memset(&o, 0, sizeof o);
    rng_t r = {sc->seed * 2654435761u + 1};
    char err[256];
    kv_pool_config pc = {.page_tokens = 4, .layers = 2, .width = 3, .dtype = KN_F32,
                         .n_pages = sc->pool_pages, .host_pages = sc->host_slots * PPS};
    kv_pool_t *pool = kv_pool_new(be, &pc, err, sizeof err);
    CHECK(pool != NULL, "%s: pool: %s", name, pool ? "" : err);
    sch_config c;
    sch_config_default(&c);
    c.max_batch = sc->max_batch;
    c.max_resident = sc->max_resident;
    c.max_queue = sc->max_queue;
    c.pool_pages = sc->pool_pages;
    c.host_slots = sc->host_slots;
    c.pages_per_stream = PPS;
    c.passes_per_chunk = PASSES;
    c.ready_pass = PASSES - 1;
    c.chunk_seconds = 0.75;
    c.offload_after = sc->offload_after;
    sch_t *s = sch_new(&c, err, sizeof err);
    CHECK(s != NULL, "%s: scheduler: %s", name, s ? "" : err);
    sim_job *jobs = calloc((size_t)sc->n_jobs, sizeof *jobs);
    double now = 0, next_arrival = 0;
    int arrived = 0, invariants_ok = 1, detached = 0, lost = 0;
    int64_t iterations = 0;
    while ((arrived < sc->n_jobs || detached < arrived) && iterations < 2000000) {
        iterations++;
        /* arrivals */
        while (arrived < sc->n_jobs && next_arrival <= now) {
            sim_job *j = &jobs[arrived];
            sch_job_init(&j->job, (uint64_t)arrived, j);
            j->stop_after = sc->min_chunks + (int64_t)(rnd(&r) % (uint64_t)(sc->max_chunks - sc->min_chunks + 1));
            j->pause_at = unif(&r) < sc->p_pause ? now + 1 + unif(&r) * 5 : INFINITY;
            j->resume_at = INFINITY;
            if (sch_submit(s, &j->job, now) < 0) {
                o.refused++;
                j->done_seen = 1;
                detached++;
            }
            arrived++;
            next_arrival = now + sc->mean_gap * -log(1 - unif(&r) * 0.999);
        }
        /* client events */
        for (int i = 0; i < arrived; i++) {
            sim_job *j = &jobs[i];
            if (j->done_seen)
                continue;
            if (j->pause_at <= now) {
                sch_pause(s, &j->job, now);
                j->pause_at = INFINITY;
                j->resume_at = now + 0.5 + unif(&r) * 4;
            } else if (j->resume_at <= now) {
                sch_resume(s, &j->job, now);
                j->resume_at = INFINITY;
            }
            if (j->job.chunks_ready >= j->stop_after && j->job.state != SCH_CLOSING)
                sch_stop(s, &j->job);
            else if (sc->p_cancel > 0 && unif(&r) < sc->p_cancel * 1e-3) {
                sch_stop(s, &j->job);
                o.cancelled++;
            }
            if (sc->p_block > 0)
                sch_set_blocked(s, &j->job, unif(&r) < sc->p_block);
            if (j->job.state == SCH_DONE) {
                j->done_seen = 1;
                detached++;
            }
        }
        sch_work w;
        sch_next(s, now, &w);
        sch_result res[SCH_MAX_BATCH];
        double dt = 0;
        for (int i = 0; i < w.n; i++) {
            sim_job *j = w.jobs[i]->user;
            res[i] = SCH_OK;
            switch (w.kind) {
            case SCH_OPEN:
                if (unif(&r) < sc->fail_open) {
                    res[i] = SCH_FAILED;
                    break;
                }
                CHECK(kv_stream_init(&j->kv, pool, 4 * PPF, SINK, WINDOW, CHUNK_F, err, sizeof err) == 0,
                      "%s: kv init: %s", name, err);
                j->open = 1;
                break;
            case SCH_STEP:
                if (j->job.pass == 0) {
                    if (kv_stream_begin_chunk(&j->kv, (int)(j->chunks_begun * CHUNK_F))) {
                        printf("%s: job %d: no pages for an admitted stream\n", name, (int)j->job.id);
                        invariants_ok = 0;
                        res[i] = SCH_SKIPPED;
                        break;
                    }
                    j->chunks_begun++;
                }
                if (unif(&r) < sc->fail_step) {
                    res[i] = SCH_FAILED;
                    break;
                }
                if (j->job.pass == PASSES - 1)
                    kv_stream_end_chunk(&j->kv);
                break;
            case SCH_OFFLOAD:
                res[i] = kv_stream_offload(&j->kv) == 0 ? SCH_OK : SCH_SKIPPED;
                if (res[i] != SCH_OK) {
                    printf("%s: offload refused\n", name);
                    invariants_ok = 0;
                }
                break;
            case SCH_RESTORE:
                res[i] = kv_stream_restore(&j->kv) == 0 ? SCH_OK : SCH_SKIPPED;
                if (res[i] != SCH_OK) {
                    printf("%s: restore refused\n", name);
                    invariants_ok = 0;
                }
                break;
            case SCH_CLOSE:
                if (j->open)
                    kv_stream_free(&j->kv);
                j->open = 0;
                break;
            default:
                break;
            }
        }
        if (w.kind == SCH_STEP) {
            dt = sc->a + sc->b * w.n;
            if (sc->jitter > 0)
                dt *= 1 + sc->jitter * unif(&r);
            for (int i = 0; i < w.n; i++) /* a failed pass leaves its chunk half done: abort it */
                if (res[i] == SCH_FAILED) {
                    sim_job *j = w.jobs[i]->user;
                    kv_stream_abort_chunk(&j->kv);
                }
        } else if (w.kind == SCH_OFFLOAD || w.kind == SCH_RESTORE) {
            dt = 0.002;
        } else if (w.kind == SCH_IDLE) {
            double t = fmin(w.wake_at, next_arrival);
            for (int i = 0; i < arrived; i++)
                t = fmin(t, fmin(jobs[i].pause_at, jobs[i].resume_at));
            if (!isfinite(t) || t <= now)
                t = now + 0.01; /* client events polled */
            dt = t - now;
        }
        if (w.kind == SCH_STEP) {
            sch_stats st;
            sch_get_stats(s, &st);
            if (st.compute > o.max_compute)
                o.max_compute = st.compute;
        }
        now += dt;
        sch_done(s, &w, w.kind == SCH_IDLE ? NULL : res, now, dt);
        for (int i = 0; i < w.n; i++) {
            sim_job *j = w.jobs[i]->user;
            if (w.kind == SCH_OPEN && res[i] == SCH_OK)
                o.admitted++;
            if (w.kind == SCH_OPEN && res[i] == SCH_FAILED)
                o.failed++;
            if (w.kind == SCH_STEP && res[i] == SCH_FAILED)
                o.failed++;
            if (w.kind == SCH_STEP && j->job.chunks_ready == 1 && j->job.pass == PASSES - 1) {
                double ttff = j->job.first_ready_at - j->job.admitted_at;
                if (ttff > o.worst_ttff)
                    o.worst_ttff = ttff;
            }
            if (j->job.state == SCH_DONE && !j->done_seen) {
                j->done_seen = 1;
                detached++;
                if (!j->job.failed && j->job.chunks_ready >= j->stop_after)
                    o.completed++;
                if (j->open) { /* detached while its stream is open: lost */
                    lost++;
                    kv_stream_free(&j->kv);
                    j->open = 0;
                }
                if (j->job.realtime)
                    o.misses_rt += j->job.misses;
                o.misses_all += j->job.misses;
                if (j->job.worst_late > o.worst_late)
                    o.worst_late = j->job.worst_late;
            }
        }
        if (!check_invariants(pool, jobs, arrived, &c))
            invariants_ok = 0;
        if (!invariants_ok)
            break;
    }
    sch_stats st;
    sch_get_stats(s, &st);
    o.offloads = st.offloads;
    o.restores = st.restores;
    CHECK(invariants_ok, "%s: invariants held at every step (%lld iterations)", name, (long long)iterations);
    CHECK(detached == sc->n_jobs && st.queued + st.running + st.paused + st.offloaded + st.closing + st.opening == 0,
          "%s: every job detached (%d of %d; %d still known)", name, detached, sc->n_jobs,
          st.queued + st.running + st.paused + st.offloaded + st.closing + st.opening);
    CHECK(lost == 0, "%s: no stream lost (%d)", name, lost);
    CHECK(kv_pool_n_free(pool) == kv_pool_n_pages(pool) && kv_pool_n_host_free(pool) == kv_pool_n_host_pages(pool),
          "%s: every page back (device %d/%d, host %d/%d)", name, kv_pool_n_free(pool), kv_pool_n_pages(pool),
          kv_pool_n_host_free(pool), kv_pool_n_host_pages(pool));
    printf("  %s: %d jobs: admitted %d, refused %d, completed %d, failed %d, cancelled %d; offloads %lld, "
           "restores %lld; most streams computing %d; misses (realtime) %lld, all %lld, worst late %.3f s; "
           "worst ttff %.3f s; %.1f s simulated\n",
           name, sc->n_jobs, o.admitted, o.refused, o.completed, o.failed, o.cancelled, (long long)o.offloads,
           (long long)o.restores, o.max_compute, (long long)o.misses_rt, (long long)o.misses_all, o.worst_late,
           o.worst_ttff, now);
    for (int i = 0; i < sc->n_jobs; i++)
        if (jobs[i].open)
            kv_stream_free(&jobs[i].kv);
    free(jobs);
    sch_free(s);
    kv_pool_free(pool);
    return o;
}

static void test_cost_model(void)
{
    char err[128];
    sch_config c;
    sch_config_default(&c);
    c.max_batch = 8;
    c.max_resident = 32;
    c.pool_pages = 1000;
    c.pages_per_stream = 10;
    c.passes_per_chunk = 5;
    c.ready_pass = 4;
    c.chunk_seconds = 1.0;
    sch_t *s = sch_new(&c, err, sizeof err);
    CHECK(s && sch_predict(s, 3) < 0 && sch_busy(s, 1) < 0, "nothing known before a measurement");
    sch_observe(s, 2, 0.10);
    CHECK(fabs(sch_predict(s, 1) - 0.10) < 1e-12, "below the smallest measured: no cheaper (%.3f)", sch_predict(s, 1));
    CHECK(fabs(sch_predict(s, 4) - 0.20) < 1e-12, "one size known: proportional above it (%.3f)", sch_predict(s, 4));
    sch_observe(s, 8, 0.20);
    CHECK(fabs(sch_predict(s, 5) - 0.15) < 1e-12, "interpolated between measured sizes (%.4f)", sch_predict(s, 5));
    /* 12 streams with batches of 8: one batch of 8 + one of 4, five passes */
    CHECK(fabs(sch_busy(s, 12) - 5 * (0.20 + sch_predict(s, 4))) < 1e-12, "busy time over two batches (%.4f)",
          sch_busy(s, 12));
    sch_observe(s, 8, 0.40);
    CHECK(fabs(sch_predict(s, 8) - 0.30) < 1e-12, "a slower step raises the estimate at once (%.3f)", sch_predict(s, 8));
    for (int i = 0; i < 200; i++)
        sch_observe(s, 8, 0.20);
    CHECK(fabs(sch_predict(s, 8) - 0.20) < 1e-6, "and it settles back (%.4f)", sch_predict(s, 8));
    sch_stats st;
    sch_get_stats(s, &st);
    /* busy(n) <= 0.85 s: n = 4 -> 5 * 0.1333 = 0.667; n = 5 -> 0.75; n = 6 -> 0.833; n = 7 -> 0.917 */
    CHECK(st.capacity == 6, "capacity from the model: %d streams", st.capacity);
    sch_free(s);

    c.headroom = 1.5;
    CHECK(!sch_new(&c, err, sizeof err) && strstr(err, "headroom"), "bad config refused: %s", err);
    c.headroom = 0.85;
    c.ready_pass = 6;
    CHECK(!sch_new(&c, err, sizeof err) && strstr(err, "ready_pass"), "bad config refused: %s", err);
}

/* Admission, queue positions, EDF order, pause at the chunk boundary, offload under pressure. */
static void test_protocol(void)
{
    char err[128];
    sch_config c;
    sch_config_default(&c);
    c.max_batch = 2;
    c.max_resident = 2;
    c.max_queue = 2;
    c.pool_pages = 2 * PPS;
    c.host_slots = 1;
    c.pages_per_stream = PPS;
    c.passes_per_chunk = PASSES;
    c.ready_pass = PASSES - 1;
    c.chunk_seconds = 0.75;
    c.offload_after = -1;
    sch_t *s = sch_new(&c, err, sizeof err);
    sch_job a, b, d, e;
    sch_job_init(&a, 1, NULL);
    sch_job_init(&b, 2, NULL);
    sch_job_init(&d, 3, NULL);
    sch_job_init(&e, 4, NULL);
    CHECK(sch_submit(s, &a, 0) == 0 && sch_submit(s, &b, 0) == 1, "queue positions 0 and 1");
    CHECK(sch_submit(s, &d, 0) == -1, "a full queue refuses");
    sch_work w;
    sch_next(s, 0, &w);
    CHECK(w.kind == SCH_OPEN && w.jobs[0] == &a, "the first job opens first");
    sch_done(s, &w, NULL, 0, 0);
    sch_next(s, 0, &w);
    CHECK(w.kind == SCH_STEP && w.n == 1 && w.jobs[0] == &a,
          "nothing measured and one stream running: the second waits (kind %d)", w.kind);
    CHECK(sch_queue_position(s, &b) == 0, "b is next in the queue");
    sch_done(s, &w, NULL, 0.05, 0.05);
    sch_next(s, 0.05, &w);
    CHECK(w.kind == SCH_OPEN && w.jobs[0] == &b, "once a step is measured, capacity admits b");
    sch_done(s, &w, NULL, 0.05, 0);
    sch_next(s, 0.05, &w);
    CHECK(w.kind == SCH_STEP && w.n == 2 && w.jobs[0] == &a && w.jobs[1] == &b,
          "both run, a (first chunk due 0.50 s) before b (0.55 s): %d %s", w.n,
          w.n ? (w.jobs[0] == &a ? "a first" : "b first") : "");
    sch_done(s, &w, NULL, 0.10, 0.05);
    CHECK(a.pass == 2 && b.pass == 1, "streams at different passes share a batch");
    sch_pause(s, &a, 0.10);
    CHECK(a.state == SCH_RUNNING && a.want_pause, "pause waits for the chunk boundary");
    for (int k = 0; k < 8 && a.state == SCH_RUNNING; k++) {
        sch_next(s, 0.1, &w);
        sch_done(s, &w, NULL, 0.1, 0.05);
    }
    CHECK(a.state == SCH_PAUSED && a.pass == 0 && a.chunks_ready == 1, "a paused after its chunk (pass %d)", a.pass);
    /* a third job: no slot; a paused stream makes room by going to host */
    CHECK(sch_submit(s, &d, 0.2) == 0, "d queued");
    sch_next(s, 0.2, &w);
    CHECK(w.kind == SCH_OFFLOAD && w.jobs[0] == &a, "pressure offloads the paused stream (kind %d)", w.kind);
    sch_done(s, &w, NULL, 0.2, 0);
    CHECK(a.state == SCH_OFFLOADED && !a.res, "a holds nothing on the device");
    sch_next(s, 0.2, &w);
    CHECK(w.kind == SCH_OPEN && w.jobs[0] == &d, "d opens in the freed slot");
    sch_done(s, &w, NULL, 0.2, 0);
    sch_resume(s, &a, 0.3);
    CHECK(sch_queue_position(s, &a) == 0, "a resumed: first in line for a restore");
    CHECK(sch_submit(s, &e, 0.3) == 1, "e queued behind a");
    sch_stop(s, &d);
    sch_next(s, 0.3, &w);
    CHECK(w.kind == SCH_CLOSE && w.jobs[0] == &d, "stop closes d");
    sch_done(s, &w, NULL, 0.3, 0);
    CHECK(d.state == SCH_DONE, "d detached");
    sch_next(s, 0.3, &w);
    CHECK(w.kind == SCH_RESTORE && w.jobs[0] == &a, "a restored before e opens");
    sch_done(s, &w, NULL, 0.3, 0);
    CHECK(a.state == SCH_RUNNING && fabs(a.paused_total - 0.2) < 1e-9, "a runs again; its clock stood still %.3f s",
          a.paused_total);
    sch_stop(s, &e);
    CHECK(e.state == SCH_DONE, "a queued job stops at once");
    sch_stop(s, &a);
    sch_stop(s, &b);
    sch_next(s, 0.4, &w);
    CHECK(w.kind == SCH_CLOSE && w.n == 2, "both close");
    sch_done(s, &w, NULL, 0.4, 0);
    sch_next(s, 0.4, &w);
    CHECK(w.kind == SCH_IDLE && isinf(w.wake_at), "idle with nothing to wake for");
    sch_free(s);
}

int main(void)
{
    be = kn_cpu_backend_new();
    test_cost_model();
    test_protocol();
    /* within capacity: step 0.02 + 0.01 n; 5 passes a 0.75 s chunk -> about 10 streams fit at
     * headroom 0.85; arrivals every 1.5 s, sessions of 4..12 chunks: load stays near capacity */
    scenario base = {
        .a = 0.02, .b = 0.01, .n_jobs = 120, .mean_gap = 1.5, .min_chunks = 4, .max_chunks = 12,
        .max_batch = 8, .max_resident = 24, .max_queue = 64, .pool_pages = 24 * PPS, .host_slots = 4,
        .offload_after = 2.0, .seed = 1, .expect_no_misses = 1,
    };
    outcome o = simulate(&base, "steady");
    CHECK(o.misses_rt == 0, "steady: admitted streams keep every deadline (%lld missed)", (long long)o.misses_rt);
    CHECK(o.worst_ttff <= 0.5 + 1e-9, "steady: first chunk within 0.5 s of admission (%.3f)", o.worst_ttff);
    CHECK(o.completed == o.admitted, "steady: every admitted stream completes (%d of %d)", o.completed, o.admitted);

    /* overload: arrivals every 0.2 s; the queue absorbs some, the rest are refused; the admitted
     * still keep their deadlines (nobody is frozen to admit another) */
    scenario over = base;
    over.mean_gap = 0.2;
    over.max_queue = 16;
    over.seed = 2;
    o = simulate(&over, "overload");
    CHECK(o.refused > 0 && o.misses_rt == 0 && o.max_compute <= 11,
          "overload: refusals (%d), no deadline missed by admitted streams (%lld), compute capped (%d)", o.refused,
          (long long)o.misses_rt, o.max_compute);

    /* pool exhaustion and offload: a pool of 5 streams, pauses, host tier of 3 */
    scenario tight = base;
    tight.pool_pages = 5 * PPS;
    tight.max_resident = 5;
    tight.host_slots = 3;
    tight.p_pause = 0.6;
    tight.mean_gap = 0.8;
    tight.offload_after = -1;
    tight.seed = 3;
    o = simulate(&tight, "pool-exhaustion");
    CHECK(o.offloads > 0 && o.restores > 0, "pool-exhaustion: paused streams offloaded (%lld) and restored (%lld)",
          (long long)o.offloads, (long long)o.restores);

    /* chaos: jitter, failures, cancellations, back-pressure, timed offload */
    scenario chaos = base;
    chaos.jitter = 0.5;
    chaos.fail_step = 0.002;
    chaos.fail_open = 0.05;
    chaos.p_cancel = 0.5;
    chaos.p_block = 0.2;
    chaos.p_pause = 0.3;
    chaos.mean_gap = 0.4;
    chaos.max_queue = 8;
    chaos.pool_pages = 8 * PPS;
    chaos.max_resident = 10;
    chaos.host_slots = 2;
    chaos.offload_after = 1.0;
    chaos.n_jobs = 200;
    for (uint64_t seed = 10; seed < 14; seed++) {
        chaos.seed = seed;
        char name[32];
        snprintf(name, sizeof name, "chaos-%llu", (unsigned long long)seed);
        o = simulate(&chaos, name);
        CHECK(o.failed > 0 && o.cancelled > 0, "%s: failures (%d) and cancellations (%d) exercised", name, o.failed,
              o.cancelled);
    }
    kn_backend_free(be);
    return check_done();
}
