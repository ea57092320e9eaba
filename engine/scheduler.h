/* engine/scheduler.h — which streams run next: continuous batching, admission, offload.
 *
 * The scheduler is policy and bookkeeping only: it never calls the engine and never reads a
 * clock. Its caller (the server's engine thread, vmla-bench serve, the simulation tests) asks
 * for the next piece of work with sch_next(now), does it (open a stream, run one eng_step over a
 * batch, move a paused stream's pages to host memory and back, close streams), and reports the
 * outcome with sch_done(now). So the same code runs on a real GPU and in a deterministic
 * simulation with a virtual clock.
 *
 * Jobs are the caller's memory (sch_job, e.g. inside a session); the scheduler links them while
 * they are submitted and lets go of them when they reach SCH_DONE.
 *
 * Time model. A stream's chunk is `chunk_seconds` of video and takes `passes_per_chunk` forward
 * passes; its frames are out after `ready_pass` of them. Playback starts when the first chunk's
 * frames are out (t0); chunk c is due at t0 + c*chunk_seconds (+ time spent paused). A stream may
 * start chunk c while c < (now - t0 - paused)/chunk_seconds + lead_chunks, so it runs at most
 * lead_chunks chunks ahead of what is shown; the first chunk is due admitted_at + ttff_target.
 *
 * Batches: every step takes the runnable streams (running, not blocked by their consumer, within
 * their lead, or with a chunk in progress) in earliest-deadline-first order, up to max_batch, and
 * advances each by one pass; streams at different passes share the batch.
 *
 * Admission: a job starts only when (1) a stream slot and a full window of pages
 * (pages_per_stream) can be reserved for it — so a running stream never runs out of pages — and
 * (2) the measured step times say every stream holding compute (running, paused on the device,
 * starting) still keeps its deadlines with the new one: passes_per_chunk * sum over the batches
 * needed of t(batch) <= headroom * chunk_seconds. t(n) is learned from the steps themselves
 * (sch_observe; an average that rises fast and falls slowly). With no measurement yet, or with no
 * stream running, one stream is admitted. A started stream is never stopped to admit another.
 * Jobs that cannot start wait in FIFO order (offloaded streams that asked to resume go first); a
 * full queue refuses.
 *
 * Offload: a paused stream (between chunks) moves its pages to the host tier after
 * `offload_after` seconds, or at once when a waiting job cannot start for lack of slots or pages;
 * it then holds no slot, pages or compute. On resume it waits for admission like a new job, ahead
 * of them.
 */
#ifndef VMLA_ENGINE_SCHEDULER_H
#define VMLA_ENGINE_SCHEDULER_H

#include <stdint.h>

#define SCH_MAX_BATCH 64

typedef struct {
    int max_batch;         /* streams one step may advance (1..SCH_MAX_BATCH) */
    int max_resident;      /* streams holding a slot (running, paused on the device, starting) */
    int max_queue;         /* jobs waiting for admission; more are refused */
    int pool_pages;        /* device KV pages */
    int host_slots;        /* offloaded streams the host tier holds (0: no offload) */
    int pages_per_stream;  /* pages one stream holds at its full window */
    int passes_per_chunk;  /* forward passes a chunk takes */
    int ready_pass;        /* passes after which the chunk's frames are out (1..passes_per_chunk) */
    double chunk_seconds;  /* video a chunk holds */
    double lead_chunks;    /* how far ahead of playback a stream may run (> 0) */
    double ttff_target;    /* deadline of the first chunk after admission */
    double headroom;       /* admit while the predicted busy share stays at or below this (0..1] */
    double offload_after;  /* seconds paused before the pages go to host (< 0: only when needed) */
    int admit_all;         /* benchmarks of offered load: skip the capacity test (slots and pages
                              still hold) */
} sch_config;

/* Defaults for the numbers that have one (max_batch 1, max_resident 1, max_queue 16, lead 2,
 * ttff 0.5 s, headroom 0.85, offload_after 30 s); the model's numbers must be set. */
void sch_config_default(sch_config *c);

typedef enum {
    SCH_NEW = 0,    /* not submitted, or detached */
    SCH_QUEUED,     /* waiting for admission */
    SCH_OPENING,    /* admitted; the caller opens its stream */
    SCH_RUNNING,
    SCH_PAUSED,     /* paused, pages on the device */
    SCH_OFFLOADING, /* the caller moves its pages to host */
    SCH_OFFLOADED,  /* pages in the host tier */
    SCH_RESTORING,  /* the caller moves them back */
    SCH_CLOSING,    /* the caller closes its stream */
    SCH_DONE,       /* detached; `failed` says whether it failed */
} sch_state;

typedef struct sch_job {
    uint64_t id;    /* the caller's */
    void *user;     /* the caller's */
    void *stream;   /* the caller's (its engine stream) */
    sch_state state;
    /* requests (set through the functions below) */
    int want_pause, want_stop, blocked;
    int failed;     /* ended by a failure */
    /* progress */
    int pass;              /* passes done in the chunk in progress */
    int64_t chunks_ready;  /* chunks whose frames are out */
    int64_t passes;        /* passes taken */
    int64_t misses;        /* chunks whose frames came after their deadline */
    double worst_late;     /* seconds, the worst of those */
    int realtime;          /* admitted with capacity predicted to keep its deadlines */
    /* times (the caller's clock, seconds) */
    double submitted_at, admitted_at, first_ready_at, paused_at, paused_total, resume_asked_at;
    /* scheduler's */
    uint64_t seq;
    int res;            /* holds a slot and a window of reserved pages */
    double hold_until;  /* no offload or restore attempt before this (after one was refused) */
} sch_job;

const char *sch_state_name(sch_state s);

typedef struct sch sch_t;

/* NULL when the config is invalid (message in err). */
sch_t *sch_new(const sch_config *c, char *err, size_t errlen);
void sch_free(sch_t *s);
const sch_config *sch_get_config(const sch_t *s);

void sch_job_init(sch_job *j, uint64_t id, void *user);
/* Submit a job. Returns its queue position (0 = next), or -1 when the queue is full. */
int sch_submit(sch_t *s, sch_job *j, double now);
/* Pause / resume / stop. Pause takes effect at the job's next chunk boundary (a chunk in progress
 * finishes); stop at once (a queued job is detached at once, a resident one goes to CLOSING). */
void sch_pause(sch_t *s, sch_job *j, double now);
void sch_resume(sch_t *s, sch_job *j, double now);
void sch_stop(sch_t *s, sch_job *j);
/* The job's consumer cannot take more chunks now (e.g. its encoder queue is full). */
void sch_set_blocked(sch_t *s, sch_job *j, int blocked);
/* Position in the admission queue (0 = next), or -1 when not waiting. */
int sch_queue_position(const sch_t *s, const sch_job *j);

typedef enum { SCH_IDLE = 0, SCH_OPEN, SCH_STEP, SCH_OFFLOAD, SCH_RESTORE, SCH_CLOSE } sch_kind;

typedef struct {
    sch_kind kind;
    int n;
    sch_job *jobs[SCH_MAX_BATCH];
    double wake_at; /* SCH_IDLE: nothing to do before this time (may be INFINITY) */
} sch_work;

/* Per job outcome of a piece of work. */
typedef enum { SCH_OK = 0, SCH_SKIPPED, SCH_FAILED } sch_result;

/* The next piece of work at time `now`. The caller must report it with sch_done before asking
 * again (one piece in flight). */
void sch_next(sch_t *s, double now, sch_work *w);
/* Report: res[i] for w->jobs[i] (NULL: all SCH_OK); `seconds` the step's duration (SCH_STEP; it
 * feeds the cost model when every job ran). For SCH_STEP, SCH_OK means the job took one pass. */
void sch_done(sch_t *s, const sch_work *w, const sch_result *res, double now, double seconds);

/* Record the duration of one step over n streams (the cost model; sch_done does it for steps). */
void sch_observe(sch_t *s, int n, double seconds);
/* The predicted duration of a step over n streams (< 0 when nothing is known yet). */
double sch_predict(const sch_t *s, int n);
/* Predicted busy seconds per chunk_seconds with n streams holding compute (< 0: unknown). */
double sch_busy(const sch_t *s, int n);

/* How many more jobs could start now by slots, pages and measured capacity (the queue aside). */
int sch_admit_room(const sch_t *s);

typedef struct {
    int queued, opening, running, paused, offloaded, closing; /* jobs by state (paused: on device) */
    int resident;         /* holding a slot and reserved pages */
    int reserved_pages;
    int compute;          /* holding compute (running, paused on device, starting) */
    int capacity;         /* streams the measured cost model says fit (-1: unknown) */
    int64_t admitted, refused, offloads, restores, steps, misses;
} sch_stats;
void sch_get_stats(const sch_t *s, sch_stats *st);

#endif
