/* engine/sched_exec.h — the scheduler's work done on an engine.
 *
 * The scheduler (engine/scheduler.h) decides; these functions carry its decisions out on an
 * engine: open a job's stream, run one eng_step over a batch, offload / restore / close streams.
 * The job's `stream` field holds its eng_stream_t. Used by the server's engine thread, by
 * vmla-bench serve and by the tests, so the three run the same code.
 */
#ifndef VMLA_ENGINE_SCHED_EXEC_H
#define VMLA_ENGINE_SCHED_EXEC_H

#include "engine/engine.h"
#include "engine/scheduler.h"

/* The scheduler's model numbers for this engine: slots, pool and host tier pages, pages a
 * stream, passes a chunk and when its frames are out, the chunk's playback time. The policy
 * numbers (max_batch, max_queue, lead, ttff, headroom, offload_after) are left as they are. */
void eng_sched_config(const eng_engine_t *e, sch_config *c);

/* Opens the stream of a job being admitted (the caller knows its seed and prompt). */
typedef eng_status (*eng_open_fn)(void *user, sch_job *j, eng_stream_t **out);

/* Do the piece of work: res[i] receives each job's outcome for sch_done; *seconds the time the
 * work took by `clock` (a step's duration feeds the cost model). A step does not wait for the
 * backend: the host enqueues the next one while the GPU runs it, and waits only when a chunk's
 * frames are downloaded (eng_drains). So a step's *seconds is the mean over the steps since the
 * last drain when it drained, and NAN (not measured; sch_observe skips it) when it did not.
 * Errors stay on the streams (eng_stream_error) or the engine (eng_error). */
void eng_sched_execute(eng_engine_t *e, const sch_work *w, eng_open_fn open, void *user, double (*clock)(void),
                       sch_result *res, double *seconds);

/* Measure step times at batch sizes 1 and up to max_n (bounded by max_batch, free slots and
 * pages) on throwaway streams whose window is full, and feed them to the scheduler's cost
 * model (so admission is right from the first session, and nothing compiles or tunes itself
 * while a user waits). Returns 0, or -1 with the engine's message in err. */
int eng_sched_calibrate(eng_engine_t *e, sch_t *s, int max_n, double (*clock)(void), char *err, size_t errlen);

#endif
