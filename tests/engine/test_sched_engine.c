/* tests/engine/test_sched_engine.c — the scheduler driving a real engine (CPU, tiny-test, both
 * layouts): a stream's output is the same whether it ran alone or batched with streams joining
 * and leaving, paused, moved to the host tier and back. Also the engine's pool sizing (bytes,
 * fraction), offload/restore refusals and accounting; the step times eng_sched_execute reports. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/sched_exec.h"
#include "tests/check.h"

static kn_backend_t *be;

enum { NLAT = 4 * 3 * 4 * 6, NCH = 5, NS = 3 };

static const uint64_t seeds[NS] = {11, 12, 13};
static const char *const prompts[NS] = {"a blue circle", "a red square moving left", "a green star"};

static eng_engine_t *open_engine(const char *preset, int batch, int streams, size_t host_bytes)
{
    eng_config c;
    char err[512];
    eng_config_preset(&c, preset, err, sizeof err);
    eng_options o;
    eng_options_default(&o);
    o.weight_seed = 5;
    o.max_batch = batch;
    o.max_streams = streams;
    o.host_kv_bytes = host_bytes;
    eng_engine_t *e = NULL;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_OK, "eng_open %s: %s", preset, err);
    return e;
}

static double maxdiff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

typedef struct {
    sch_job job;
    int idx;
    int chunks;
    float lat[NCH][NLAT];
} tjob;

static double vclock;
static double clock_fn(void) { return vclock; }

static eng_status open_job(void *user, sch_job *j, eng_stream_t **out)
{
    tjob *t = j->user;
    return eng_stream_open(user, seeds[t->idx], prompts[t->idx], out);
}

static void test_scheduled_equals_alone(const char *preset)
{
    printf("%s: scheduled (joins, leaves, offload, restore) vs alone\n", preset);
    static float ref[NS][NCH][NLAT];
    eng_engine_t *e = open_engine(preset, 3, 3, 0);
    if (!e)
        return;
    for (int k = 0; k < NS; k++) {
        eng_stream_t *s = NULL;
        CHECK(eng_stream_open(e, seeds[k], prompts[k], &s) == ENG_OK, "open");
        for (int c = 0; c < NCH && s; c++) {
            CHECK(eng_generate_chunk(e, &s, 1) == ENG_OK, "chunk: %s", eng_error(e));
            eng_stream_last_latent(s, ref[k][c], NLAT);
        }
        eng_stream_close(s);
    }
    eng_close(e);

    /* two slots, a host tier for one stream, batches of three */
    eng_engine_t *probe = open_engine(preset, 1, 1, 0);
    if (!probe)
        return;
    eng_pool_stats ps;
    eng_pool_get_stats(probe, &ps);
    size_t stream_bytes = ps.page_bytes * (size_t)ps.pages_per_stream;
    eng_close(probe);
    e = open_engine(preset, 3, 2, stream_bytes);
    if (!e)
        return;
    eng_pool_get_stats(e, &ps);
    CHECK(ps.host_slots == 1 && ps.host_pages == ps.pages_per_stream, "host tier of one stream (%d slots, %lld pages)",
          ps.host_slots, (long long)ps.host_pages);
    sch_config sc;
    sch_config_default(&sc);
    sc.max_batch = 3;
    sc.max_queue = 4;
    sc.offload_after = -1;
    eng_sched_config(e, &sc);
    CHECK(sc.max_resident == 2 && sc.passes_per_chunk == 5 && sc.ready_pass == 4, "scheduler numbers from the engine");
    char err[256];
    sch_t *s = sch_new(&sc, err, sizeof err);
    static tjob t[NS];
    memset(t, 0, sizeof t);
    for (int k = 0; k < NS; k++) {
        t[k].idx = k;
        sch_job_init(&t[k].job, (uint64_t)k, &t[k]);
    }
    vclock = 0;
    sch_submit(s, &t[0].job, vclock);
    sch_submit(s, &t[1].job, vclock);
    int c_submitted = 0, a_resumed = 0, stops = 0, offloads = 0, restores = 0, offloaded_step_seen = 0;
    for (int guard = 0; guard < 10000; guard++) {
        /* the script: A pauses after 2 chunks; then C arrives (no slot: A goes to host); A asks to
         * resume once C runs and comes back when B leaves */
        if (t[0].chunks == 2 && !t[0].job.want_pause && !c_submitted) {
            sch_pause(s, &t[0].job, vclock);
            sch_submit(s, &t[2].job, vclock);
            c_submitted = 1;
        }
        if (c_submitted && !a_resumed && t[0].job.state == SCH_OFFLOADED && t[2].job.state == SCH_RUNNING) {
            sch_resume(s, &t[0].job, vclock);
            a_resumed = 1;
        }
        for (int k = 0; k < NS; k++)
            if (t[k].chunks == NCH && t[k].job.state != SCH_DONE && !t[k].job.want_stop) {
                sch_stop(s, &t[k].job);
                stops++;
            }
        sch_work w;
        sch_next(s, vclock, &w);
        if (w.kind == SCH_IDLE) {
            if (isinf(w.wake_at))
                break;
            vclock = w.wake_at;
            continue;
        }
        if (w.kind == SCH_STEP && t[0].job.state == SCH_OFFLOADED)
            offloaded_step_seen = 1;
        sch_result res[SCH_MAX_BATCH];
        double dt;
        eng_sched_execute(e, &w, open_job, e, clock_fn, res, &dt);
        if (w.kind == SCH_STEP) {
            dt = 0.001 * w.n; /* a virtual cost */
            vclock += dt;
        }
        offloads += w.kind == SCH_OFFLOAD && res[0] == SCH_OK;
        restores += w.kind == SCH_RESTORE && res[0] == SCH_OK;
        for (int i = 0; i < w.n; i++)
            CHECK(res[i] == SCH_OK, "work %d for job %d: %s", w.kind, (int)w.jobs[i]->id,
                  w.jobs[i]->stream ? eng_stream_error(w.jobs[i]->stream) : eng_error(e));
        if (w.kind == SCH_STEP)
            for (int i = 0; i < w.n; i++) {
                tjob *tj = w.jobs[i]->user;
                if (eng_stream_take_frames(w.jobs[i]->stream) && tj->chunks < NCH)
                    eng_stream_last_latent(w.jobs[i]->stream, tj->lat[tj->chunks++], NLAT);
            }
        sch_done(s, &w, res, vclock, dt);
    }
    CHECK(offloads == 1 && restores == 1 && offloaded_step_seen, "A went to host (%d) and came back (%d)", offloads,
          restores);
    double worst = 0;
    for (int k = 0; k < NS; k++) {
        CHECK(t[k].chunks == NCH && t[k].job.state == SCH_DONE, "stream %d: %d chunks, %s", k, t[k].chunks,
              sch_state_name(t[k].job.state));
        for (int c = 0; c < t[k].chunks; c++)
            worst = fmax(worst, maxdiff(t[k].lat[c], ref[k][c], NLAT));
    }
    printf("  scheduled vs alone: max |diff| %.3g over %d streams x %d chunks\n", worst, NS, NCH);
    CHECK(worst < 1e-5, "scheduled output equals alone (%.3g)", worst);
    CHECK(eng_kv_pool_free_bytes(e) == eng_kv_pool_bytes(e), "every device page back");
    eng_pool_get_stats(e, &ps);
    CHECK(ps.free_host_pages == ps.host_pages && ps.free_slots == ps.slots && ps.free_host_slots == ps.host_slots,
          "every host page and slot back");
    sch_free(s);
    eng_close(e);
}

static void test_pool_sizing_and_refusals(void)
{
    printf("pool sizing, offload refusals\n");
    eng_config c;
    char err[512];
    eng_config_preset(&c, "tiny-test", err, sizeof err);
    eng_options o;
    eng_options_default(&o);
    o.weight_seed = 5;
    o.max_streams = 2;
    eng_engine_t *e = NULL;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_OK, "default pool");
    eng_pool_stats ps;
    eng_pool_get_stats(e, &ps);
    size_t stream_bytes = ps.page_bytes * (size_t)ps.pages_per_stream;
    CHECK(ps.pages == 2 * ps.pages_per_stream && ps.host_slots == 0, "default: two full windows, no host tier");
    eng_stream_t *s = NULL;
    CHECK(eng_stream_open(e, 1, "x", &s) == ENG_OK && eng_generate_chunk(e, &s, 1) == ENG_OK, "a chunk");
    CHECK(eng_stream_offload(s) == ENG_ERR_POOL && eng_stream_resident(s), "no host tier: offload refused, resident");
    eng_stream_close(s);
    eng_close(e);

    o.kv_pool_bytes = 3 * stream_bytes + stream_bytes / 2;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_OK, "pool by bytes: %s", err);
    eng_pool_get_stats(e, &ps);
    CHECK(ps.pages == (int64_t)(o.kv_pool_bytes / ps.page_bytes), "bytes rounded down to whole pages (%lld)",
          (long long)ps.pages);
    eng_close(e);
    o.kv_pool_bytes = stream_bytes - 1;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_ERR_ARG && strstr(err, "fewer than one stream"),
          "a pool smaller than a stream refused: %s", err);
    o.kv_pool_bytes = 0;
    o.kv_pool_fraction = 1e-6;
    eng_status st = eng_open(&e, be, &c, &o, err, sizeof err);
    CHECK(st == ENG_OK || (st == ENG_ERR_ARG && strstr(err, "fewer than one stream")), "fraction of free memory: %s",
          st == ENG_OK ? "ok" : err);
    if (st == ENG_OK) {
        eng_pool_get_stats(e, &ps);
        printf("  1e-6 of free host memory: %lld pages of %zu bytes\n", (long long)ps.pages, ps.page_bytes);
        eng_close(e);
    }
    o.kv_pool_fraction = 1.5;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_ERR_ARG && strstr(err, "below 1"), "fraction >= 1: %s", err);
    o.kv_pool_fraction = 0;
    o.host_kv_bytes = stream_bytes - 1;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_ERR_ARG && strstr(err, "less than one stream"),
          "a host tier smaller than a stream refused: %s", err);

    /* offload mid-chunk refused; restore without a slot refused; the host tier full */
    o.host_kv_bytes = stream_bytes;
    o.max_streams = 1;
    CHECK(eng_open(&e, be, &c, &o, err, sizeof err) == ENG_OK, "one slot, host tier for one: %s", err);
    eng_stream_t *a = NULL, *b = NULL;
    CHECK(eng_stream_open(e, 1, "x", &a) == ENG_OK && eng_step(e, &a, 1) == ENG_OK, "a: one pass");
    CHECK(eng_stream_offload(a) == ENG_ERR_ARG && strstr(eng_stream_error(a), "in progress"), "mid-chunk: %s",
          eng_stream_error(a));
    for (int i = 0; i < 4; i++)
        eng_step(e, &a, 1);
    CHECK(eng_stream_pass(a) == 0 && eng_stream_offload(a) == ENG_OK && !eng_stream_resident(a),
          "between chunks: offloaded");
    CHECK(eng_step(e, &a, 1) == ENG_OK && eng_stream_pass(a) == 0 && eng_stream_status(a) == ENG_OK,
          "an offloaded stream is skipped, not failed");
    CHECK(eng_stream_open(e, 2, "y", &b) == ENG_OK, "its slot serves another stream");
    CHECK(eng_stream_restore(a) == ENG_ERR_LIMIT, "no slot: restore refused");
    CHECK(eng_generate_chunk(e, &b, 1) == ENG_OK, "b: a chunk");
    CHECK(eng_stream_offload(b) == ENG_ERR_POOL, "host tier full: %s", eng_stream_error(b));
    eng_stream_close(b);
    CHECK(eng_stream_restore(a) == ENG_OK && eng_generate_chunk(e, &a, 1) == ENG_OK, "a back and running");
    eng_stream_close(a);
    eng_pool_get_stats(e, &ps);
    CHECK(ps.free_pages == ps.pages && ps.free_host_pages == ps.host_pages, "nothing held");
    /* a stream closed while offloaded gives its host pages back */
    CHECK(eng_stream_open(e, 1, "x", &a) == ENG_OK && eng_generate_chunk(e, &a, 1) == ENG_OK &&
          eng_stream_offload(a) == ENG_OK, "offloaded again");
    eng_pool_get_stats(e, &ps);
    CHECK(ps.free_host_pages < ps.host_pages && ps.free_pages == ps.pages, "its pages are on the host");
    eng_stream_close(a);
    eng_pool_get_stats(e, &ps);
    CHECK(ps.free_host_pages == ps.host_pages && ps.free_host_slots == ps.host_slots, "closing frees them");
    eng_close(e);
}

/* A backend failure inside a batched pass: transient -> every stream goes on (the pass is run
 * again stream by stream) and the output is unchanged; persistent -> every stream fails with the
 * message, nothing crashes, every page comes back. */
static void test_batch_failure(void)
{
    printf("backend failure in a batch\n");
    static float ref[NS][NCH][NLAT], got[NLAT];
    eng_engine_t *e = open_engine("tiny-test", 3, 3, 0);
    if (!e)
        return;
    for (int k = 0; k < NS; k++) {
        eng_stream_t *s = NULL;
        CHECK(eng_stream_open(e, seeds[k], prompts[k], &s) == ENG_OK, "open");
        for (int c = 0; c < 2 && s; c++) {
            CHECK(eng_generate_chunk(e, &s, 1) == ENG_OK, "chunk");
            eng_stream_last_latent(s, ref[k][c], NLAT);
        }
        eng_stream_close(s);
    }
    eng_stream_t *st[NS];
    for (int k = 0; k < NS; k++)
        CHECK(eng_stream_open(e, seeds[k], prompts[k], &st[k]) == ENG_OK, "open %d", k);
    CHECK(eng_generate_chunk(e, st, NS) == ENG_OK, "first chunk batched");
    kn_backend_inject_fault(be, 40, 0); /* one op in the middle of the next batched pass fails */
    CHECK(eng_step(e, st, NS) == ENG_OK, "a transient failure: the step still succeeds (%s)", eng_error(e));
    CHECK(strstr(kn_backend_error(be), "injected fault") != NULL, "the fault did fire in that step (%s)",
          kn_backend_error(be));
    int all_ok = 1;
    for (int k = 0; k < NS; k++)
        all_ok &= eng_stream_status(st[k]) == ENG_OK;
    CHECK(all_ok, "every stream goes on");
    CHECK(eng_generate_chunk(e, st, NS) == ENG_OK, "second chunk: %s", eng_error(e));
    double worst = 0;
    for (int k = 0; k < NS; k++) {
        eng_stream_last_latent(st[k], got, NLAT);
        worst = fmax(worst, maxdiff(got, ref[k][1], NLAT));
    }
    CHECK(worst < 1e-5, "and the output is what it would have been (%.3g)", worst);
    kn_backend_inject_fault(be, 10, 1); /* the device is broken from now on */
    CHECK(eng_step(e, st, NS) == ENG_ERR_BACKEND && strstr(eng_error(e), "injected fault"),
          "a persistent failure: the step fails with the message: %s", eng_error(e));
    int all_failed = 1;
    for (int k = 0; k < NS; k++)
        all_failed &= eng_stream_status(st[k]) == ENG_ERR_BACKEND && strstr(eng_stream_error(st[k]), "injected");
    CHECK(all_failed, "every stream of the batch failed with it");
    CHECK(eng_step(e, st, NS) == ENG_OK, "failed streams are left out afterwards");
    kn_backend_inject_fault(be, -1, 0);
    for (int k = 0; k < NS; k++)
        eng_stream_close(st[k]);
    CHECK(eng_kv_pool_free_bytes(e) == eng_kv_pool_bytes(e), "every page back");
    eng_stream_t *s = NULL;
    CHECK(eng_stream_open(e, 1, "after", &s) == ENG_OK && eng_generate_chunk(e, &s, 1) == ENG_OK,
          "the engine serves new streams once the device works");
    eng_stream_close(s);
    eng_close(e);
}

/* eng_sched_execute does not wait for the backend after a step: a step reports a duration only
 * when the engine drained (a chunk's frames downloaded), as the mean of the steps since the last
 * drain; the others report NAN, which the cost model skips. */
static double tclock;
static double tick_clock(void) { return tclock += 0.25; } /* every reading 0.25 s later */

static void test_step_times(void)
{
    printf("step times without a sync a step\n");
    eng_engine_t *e = open_engine("tiny-test", 1, 1, 0);
    if (!e)
        return;
    sch_job j;
    sch_job_init(&j, 1, NULL);
    eng_stream_t *st = NULL;
    CHECK(eng_stream_open(e, 3, "a blue circle", &st) == ENG_OK, "open");
    j.stream = st;
    sch_work w;
    memset(&w, 0, sizeof w);
    w.kind = SCH_STEP;
    w.n = 1;
    w.jobs[0] = &j;
    int ppc = eng_passes_per_chunk(e), measured = 0, unmeasured = 0;
    int64_t d0 = eng_drains(e);
    for (int p = 0; p < 2 * ppc; p++) {
        sch_result res[1];
        double sec = -1;
        int64_t before = eng_drains(e);
        eng_sched_execute(e, &w, NULL, NULL, tick_clock, res, &sec);
        CHECK(res[0] == SCH_OK, "pass %d ran", p);
        if (eng_drains(e) > before) {
            /* each step's host time is 0.25 s by this clock: the mean of the steps covered too */
            CHECK(fabs(sec - 0.25) < 1e-12, "a draining step reports the mean step time (%g)", sec);
            measured++;
        } else {
            CHECK(isnan(sec), "a step that did not drain reports NAN (%g)", sec);
            unmeasured++;
        }
    }
    CHECK(eng_drains(e) - d0 == 2 && measured == 2 && unmeasured == 2 * ppc - 2,
          "one drain a chunk (%lld drains, %d measured, %d not)", (long long)(eng_drains(e) - d0), measured,
          unmeasured);
    /* the scheduler's estimate takes the measured means and skips the NANs */
    sch_config sc;
    sch_config_default(&sc);
    eng_sched_config(e, &sc);
    char err[128];
    sch_t *s = sch_new(&sc, err, sizeof err);
    CHECK(s != NULL, "sch_new: %s", err);
    if (s) {
        sch_observe(s, 1, NAN);
        sch_observe(s, 1, 0.25);
        sch_observe(s, 1, NAN);
        CHECK(fabs(sch_predict(s, 1) - 0.25) < 1e-12, "NANs do not move the estimate (%g)", sch_predict(s, 1));
        sch_free(s);
    }
    eng_stream_close(st);
    eng_close(e);
}

int main(void)
{
    be = kn_cpu_backend_new();
    test_scheduled_equals_alone("tiny-test");
    test_scheduled_equals_alone("tiny-test-mla");
    test_pool_sizing_and_refusals();
    test_batch_failure();
    test_step_times();
    kn_backend_free(be);
    return check_done();
}
