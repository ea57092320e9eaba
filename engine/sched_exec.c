/* engine/sched_exec.c — see sched_exec.h. */
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
        int64_t before[SCH_MAX_BATCH];
        for (int i = 0; i < w->n; i++) {
            batch[i] = w->jobs[i]->stream;
            before[i] = eng_stream_passes(batch[i]);
        }
        eng_status st = eng_step(e, batch, w->n);
        for (int i = 0; i < w->n; i++) {
            if (st != ENG_OK || eng_stream_status(batch[i]) != ENG_OK)
                res[i] = SCH_FAILED;
            else
                res[i] = eng_stream_passes(batch[i]) > before[i] ? SCH_OK : SCH_SKIPPED;
        }
        break;
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
