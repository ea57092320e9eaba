/* engine/sched_exec.c — see sched_exec.h. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/sched_exec.h"

void eng_sched_config(const eng_engine_t *e, sch_config *c)
{
    eng_pool_stats ps;
    eng_pool_get_stats(e, &ps);
    const eng_config *cfg = eng_get_config(e);
    c->max_resident = ps.slots;
    c->pool_pages = ps.pages > 0x7fffffff ? 0x7fffffff : (int)ps.pages;
    c->host_slots = ps.host_slots;
    c->pages_per_stream = ps.pages_per_stream;
    c->passes_per_chunk = eng_passes_per_chunk(e);
    c->ready_pass = cfg->n_steps;
    c->chunk_seconds = (double)eng_frames_per_chunk(e) / cfg->fps;
}

static sch_result of_status(eng_status st)
{
    return st == ENG_OK ? SCH_OK : st == ENG_ERR_POOL || st == ENG_ERR_LIMIT ? SCH_SKIPPED : SCH_FAILED;
}

/* A step's duration for the cost model. Steps do not wait for the GPU, so a step's host time is
 * its real duration only on average: the steps between two drains (eng_drains) together took the
 * time from the first one's start to the drain. Each step that ends with a drain reports that
 * time divided by the steps it covers; the others report NAN (not measured: sch_observe skips
 * them). One engine at a time (the engine thread); a different engine starts afresh. */
static struct {
    const eng_engine_t *e;
    double seconds;
    int steps;
} pending;

static void step_time(const eng_engine_t *e, int drained, double host_seconds, double *seconds)
{
    if (pending.e != e) {
        pending.e = e;
        pending.seconds = 0;
        pending.steps = 0;
    }
    pending.seconds += host_seconds;
    pending.steps++;
    if (!drained) {
        *seconds = NAN;
        return;
    }
    *seconds = pending.seconds / pending.steps;
    pending.seconds = 0;
    pending.steps = 0;
}

void eng_sched_execute(eng_engine_t *e, const sch_work *w, eng_open_fn open, void *user, double (*clock)(void),
                       sch_result *res, double *seconds)
{
    double t0 = clock();
    for (int i = 0; i < w->n; i++)
        res[i] = SCH_OK;
    switch (w->kind) {
    case SCH_OPEN:
        for (int i = 0; i < w->n; i++) {
            eng_stream_t *st = NULL;
            res[i] = open(user, w->jobs[i], &st) == ENG_OK && st ? SCH_OK : SCH_FAILED;
            w->jobs[i]->stream = res[i] == SCH_OK ? st : NULL;
        }
        break;
    case SCH_STEP: {
        eng_stream_t *batch[SCH_MAX_BATCH];
        int64_t before[SCH_MAX_BATCH], drains = eng_drains(e);
        for (int i = 0; i < w->n; i++) {
            batch[i] = w->jobs[i]->stream;
            before[i] = eng_stream_passes(batch[i]);
        }
        /* no sync here: the host enqueues the next step while the GPU runs this one; it waits
         * only when a chunk's frames are downloaded (once a chunk) */
        eng_status st = eng_step(e, batch, w->n);
        for (int i = 0; i < w->n; i++) {
            if (st != ENG_OK || eng_stream_status(batch[i]) != ENG_OK)
                res[i] = SCH_FAILED;
            else
                res[i] = eng_stream_passes(batch[i]) > before[i] ? SCH_OK : SCH_SKIPPED;
        }
        step_time(e, eng_drains(e) > drains, clock() - t0, seconds);
        return;
    }
    case SCH_OFFLOAD:
        for (int i = 0; i < w->n; i++)
            res[i] = of_status(eng_stream_offload(w->jobs[i]->stream));
        break;
    case SCH_RESTORE:
        for (int i = 0; i < w->n; i++)
            res[i] = of_status(eng_stream_restore(w->jobs[i]->stream));
        break;
    case SCH_CLOSE:
        for (int i = 0; i < w->n; i++) {
            eng_stream_close(w->jobs[i]->stream);
            w->jobs[i]->stream = NULL;
        }
        break;
    case SCH_IDLE:
        break;
    }
    *seconds = clock() - t0;
}

int eng_sched_calibrate(eng_engine_t *e, sch_t *s, int max_n, double (*clock)(void), char *err, size_t errlen)
{
    const sch_config *c = sch_get_config(s);
    const eng_config *cfg = eng_get_config(e);
    eng_pool_stats ps;
    eng_pool_get_stats(e, &ps);
    int cap = max_n;
    if (cap > c->max_batch)
        cap = c->max_batch;
    if (cap > ps.free_slots)
        cap = ps.free_slots;
    if (cap > ps.free_pages / ps.pages_per_stream)
        cap = (int)(ps.free_pages / ps.pages_per_stream);
    if (cap < 1) {
        snprintf(err, errlen, "calibration: no free stream slot or pages");
        return -1;
    }
    int sizes[2] = {1, cap}, n_sizes = cap > 1 ? 2 : 1;
    int warm = cfg->window / cfg->chunk_frames + 1; /* chunks until the window is full */
    eng_stream_t *st[SCH_MAX_BATCH];
    for (int k = 0; k < n_sizes; k++) {
        int n = sizes[k], opened = 0, bad = 0;
        for (; opened < n && !bad; opened++)
            bad = eng_stream_open(e, (uint64_t)opened + 1, "calibration", &st[opened]) != ENG_OK;
        if (bad)
            opened--;
        for (int ch = 0; ch < warm - 1 && !bad; ch++)
            bad = eng_generate_chunk(e, st, n) != ENG_OK;
        for (int p = 0; p < c->passes_per_chunk && !bad; p++) {
            double t0 = clock();
            bad = eng_step(e, st, n) != ENG_OK || eng_sync(e) != ENG_OK;
            for (int i = 0; i < n && !bad; i++)
                bad = eng_stream_status(st[i]) != ENG_OK;
            if (!bad)
                sch_observe(s, n, clock() - t0);
        }
        if (bad)
            snprintf(err, errlen, "calibration: %s", eng_error(e));
        for (int i = 0; i < opened; i++)
            eng_stream_close(st[i]);
        if (bad)
            return -1;
    }
    return 0;
}
