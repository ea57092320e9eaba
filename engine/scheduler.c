/* engine/scheduler.c — see scheduler.h. Every decision scans the job list: it holds at most a
 * few hundred jobs (slots + host tier + queue), and a step takes milliseconds to seconds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/scheduler.h"

struct sch {
    sch_config c;
    sch_job **jobs; /* every submitted job not yet detached */
    int n, cap;
    uint64_t seq;
    double est[SCH_MAX_BATCH + 1]; /* step seconds by batch size */
    int have[SCH_MAX_BATCH + 1];
    int64_t admitted, refused, offloads, restores, steps, misses;
};

const char *sch_state_name(sch_state s)
{
    static const char *const names[] = {"new",      "queued",    "opening",   "running", "paused",
                                        "offloading", "offloaded", "restoring", "closing", "done"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

void sch_config_default(sch_config *c)
{
    memset(c, 0, sizeof *c);
    c->max_batch = 1;
    c->max_resident = 1;
    c->max_queue = 16;
    c->lead_chunks = 2;
    c->ttff_target = 0.5;
    c->headroom = 0.85;
    c->offload_after = 30;
}

sch_t *sch_new(const sch_config *c, char *err, size_t errlen)
{
    const char *why = NULL;
    if (c->max_batch < 1 || c->max_batch > SCH_MAX_BATCH)
        why = "max_batch must be 1..64";
    else if (c->max_resident < 1 || c->max_queue < 0 || c->host_slots < 0)
        why = "max_resident must be positive, max_queue and host_slots not negative";
    else if (c->pages_per_stream < 1 || c->pool_pages < c->pages_per_stream)
        why = "the pool must hold at least one stream's pages";
    else if (c->passes_per_chunk < 1 || c->ready_pass < 1 || c->ready_pass > c->passes_per_chunk)
        why = "passes_per_chunk must be positive and ready_pass within it";
    else if (!(c->chunk_seconds > 0) || !(c->lead_chunks > 0) || !(c->ttff_target >= 0))
        why = "chunk_seconds and lead_chunks must be positive, ttff_target not negative";
    else if (!(c->headroom > 0 && c->headroom <= 1))
        why = "headroom must be in (0, 1]";
    if (why) {
        snprintf(err, errlen, "scheduler: %s", why);
        return NULL;
    }
    sch_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "scheduler: out of memory");
        return NULL;
    }
    s->c = *c;
    return s;
}

void sch_free(sch_t *s)
{
    if (!s)
        return;
    free(s->jobs);
    free(s);
}

const sch_config *sch_get_config(const sch_t *s) { return &s->c; }

void sch_job_init(sch_job *j, uint64_t id, void *user)
{
    memset(j, 0, sizeof *j);
    j->id = id;
    j->user = user;
}

/* ---- the cost model --------------------------------------------------------------------------- */

void sch_observe(sch_t *s, int n, double seconds)
{
    if (n < 1 || n > SCH_MAX_BATCH || !(seconds >= 0) || !isfinite(seconds))
        return;
    if (!s->have[n])
        s->est[n] = seconds;
    else if (seconds > s->est[n]) /* rise fast: a slow step is a warning */
        s->est[n] = 0.5 * s->est[n] + 0.5 * seconds;
    else
        s->est[n] = 0.9 * s->est[n] + 0.1 * seconds;
    s->have[n] = 1;
}

double sch_predict(const sch_t *s, int n)
{
    if (n < 1)
        return 0;
    if (n > SCH_MAX_BATCH)
        n = SCH_MAX_BATCH;
    if (s->have[n])
        return s->est[n];
    int lo = 0, hi = 0, lo2 = 0;
    for (int m = n - 1; m >= 1 && !lo; m--)
        if (s->have[m])
            lo = m;
    for (int m = n + 1; m <= SCH_MAX_BATCH && !hi; m++)
        if (s->have[m])
            hi = m;
    if (lo && hi) /* interpolate */
        return s->est[lo] + (s->est[hi] - s->est[lo]) * (n - lo) / (double)(hi - lo);
    if (hi) /* below every measured size: no cheaper than the smallest measured */
        return s->est[hi];
    if (!lo)
        return -1;
    for (int m = lo - 1; m >= 1 && !lo2; m--)
        if (s->have[m])
            lo2 = m;
    /* above every measured size: extend the last segment, never below proportional growth from
     * the per-stream cost of the largest measured batch's marginal */
    double slope = lo2 ? (s->est[lo] - s->est[lo2]) / (lo - lo2) : s->est[lo] / lo;
    if (slope < 0)
        slope = 0;
    return s->est[lo] + slope * (n - lo);
}

double sch_busy(const sch_t *s, int n)
{
    if (n <= 0)
        return 0;
    int B = s->c.max_batch, q = n / B, r = n % B;
    double tb = q ? sch_predict(s, B) : 0, tr = r ? sch_predict(s, r) : 0;
    if (tb < 0 || tr < 0)
        return -1;
    return s->c.passes_per_chunk * (q * tb + tr);
}

static int fits(const sch_t *s, int n)
{
    double b = sch_busy(s, n);
    return b >= 0 && b <= s->c.headroom * s->c.chunk_seconds;
}

/* ---- job list --------------------------------------------------------------------------------- */

static int attach(sch_t *s, sch_job *j)
{
    if (s->n == s->cap) {
        int nc = s->cap ? 2 * s->cap : 64;
        sch_job **p = realloc(s->jobs, sizeof *p * (size_t)nc);
        if (!p)
            return -1;
        s->jobs = p;
        s->cap = nc;
    }
    s->jobs[s->n++] = j;
    return 0;
}

static void detach(sch_t *s, sch_job *j)
{
    for (int i = 0; i < s->n; i++)
        if (s->jobs[i] == j) {
            memmove(&s->jobs[i], &s->jobs[i + 1], sizeof *s->jobs * (size_t)(s->n - i - 1));
            s->n--;
            break;
        }
    j->res = 0;
    j->state = SCH_DONE;
}

static int holds_compute(const sch_job *j)
{
    return j->state == SCH_OPENING || j->state == SCH_RUNNING || j->state == SCH_PAUSED ||
           j->state == SCH_RESTORING;
}

static int waiting(const sch_job *j)
{
    return j->state == SCH_QUEUED || (j->state == SCH_OFFLOADED && !j->want_pause && !j->want_stop);
}

/* Admission order: offloaded streams that asked to resume (by when they asked), then the queue
 * (by submission). */
static int before(const sch_job *a, const sch_job *b)
{
    int ra = a->state == SCH_OFFLOADED, rb = b->state == SCH_OFFLOADED;
    if (ra != rb)
        return ra;
    if (ra && a->resume_asked_at != b->resume_asked_at)
        return a->resume_asked_at < b->resume_asked_at;
    return a->seq < b->seq;
}

int sch_queue_position(const sch_t *s, const sch_job *j)
{
    if (!waiting(j))
        return -1;
    int pos = 0;
    for (int i = 0; i < s->n; i++)
        if (s->jobs[i] != j && waiting(s->jobs[i]) && before(s->jobs[i], j))
            pos++;
    return pos;
}

int sch_submit(sch_t *s, sch_job *j, double now)
{
    int q = 0;
    for (int i = 0; i < s->n; i++)
        q += s->jobs[i]->state == SCH_QUEUED;
    if (q >= s->c.max_queue || attach(s, j)) {
        s->refused++;
        return -1;
    }
    j->state = SCH_QUEUED;
    j->seq = ++s->seq;
    j->submitted_at = now;
    j->res = 0;
    return sch_queue_position(s, j);
}

static void to_running(sch_job *j, double now)
{
    if (j->state == SCH_PAUSED || j->state == SCH_RESTORING)
        j->paused_total += now - j->paused_at;
    j->state = SCH_RUNNING;
}

void sch_pause(sch_t *s, sch_job *j, double now)
{
    if (j->want_pause)
        return;
    j->want_pause = 1;
    if (j->state == SCH_RUNNING && j->pass == 0) {
        j->state = SCH_PAUSED;
        j->paused_at = now;
    }
}

void sch_resume(sch_t *s, sch_job *j, double now)
{
    if (!j->want_pause)
        return;
    j->want_pause = 0;
    if (j->state == SCH_PAUSED)
        to_running(j, now);
    else if (j->state == SCH_OFFLOADED) {
        j->resume_asked_at = now;
        j->hold_until = 0;
    }
}

void sch_stop(sch_t *s, sch_job *j)
{
    j->want_stop = 1;
    switch (j->state) {
    case SCH_QUEUED:
        detach(s, j);
        break;
    case SCH_RUNNING:
    case SCH_PAUSED:
    case SCH_OFFLOADED:
        j->state = SCH_CLOSING;
        break;
    default: /* NEW, DONE, CLOSING: nothing; OPENING, OFFLOADING, RESTORING: at sch_done */
        break;
    }
}

void sch_set_blocked(sch_t *s, sch_job *j, int blocked) { j->blocked = blocked != 0; }

/* ---- deadlines -------------------------------------------------------------------------------- */

/* When the frames of the job's next chunk are due. */
static double deadline(const sch_t *s, const sch_job *j)
{
    if (j->chunks_ready == 0)
        return j->admitted_at + s->c.ttff_target + j->paused_total;
    return j->first_ready_at + (double)j->chunks_ready * s->c.chunk_seconds + j->paused_total;
}

/* When the job may start its next chunk (it is between chunks). */
static double may_start_at(const sch_t *s, const sch_job *j)
{
    if (j->chunks_ready == 0)
        return -INFINITY;
    return j->first_ready_at + j->paused_total + ((double)j->chunks_ready - s->c.lead_chunks) * s->c.chunk_seconds;
}

static int runnable(const sch_t *s, const sch_job *j, double now)
{
    if (j->state != SCH_RUNNING || j->want_stop)
        return 0;
    if (j->pass > 0)
        return 1;
    return !j->blocked && !j->want_pause && may_start_at(s, j) < now + 1e-9;
}

/* ---- the next piece of work ------------------------------------------------------------------- */

static void one(sch_work *w, sch_kind k, sch_job *j)
{
    w->kind = k;
    w->n = 1;
    w->jobs[0] = j;
}

void sch_next(sch_t *s, double now, sch_work *w)
{
    const sch_config *c = &s->c;
    memset(w, 0, sizeof *w);
    /* 1. streams to close */
    for (int i = 0; i < s->n && w->n < SCH_MAX_BATCH; i++)
        if (s->jobs[i]->state == SCH_CLOSING)
            w->jobs[w->n++] = s->jobs[i];
    if (w->n) {
        w->kind = SCH_CLOSE;
        return;
    }
    int resident = 0, compute = 0, host_used = 0;
    sch_job *cand = NULL, *oldest_paused = NULL;
    for (int i = 0; i < s->n; i++) {
        sch_job *j = s->jobs[i];
        if (j->state == SCH_RUNNING && j->want_pause && j->pass == 0) {
            j->state = SCH_PAUSED;
            j->paused_at = now;
        }
        resident += j->res;
        compute += holds_compute(j);
        host_used += j->state == SCH_OFFLOADED || j->state == SCH_OFFLOADING;
        if (waiting(j) && j->hold_until <= now && (!cand || before(j, cand)))
            cand = j;
        if (j->state == SCH_PAUSED && j->hold_until <= now && (!oldest_paused || j->paused_at < oldest_paused->paused_at))
            oldest_paused = j;
    }
    int host_room = host_used < c->host_slots;
    /* 2. admission (or make room for it) */
    if (cand) {
        int slot_ok = resident < c->max_resident;
        int pages_ok = (resident + 1) * c->pages_per_stream <= c->pool_pages;
        int cap_ok = compute == 0 || c->admit_all || fits(s, compute + 1);
        if (slot_ok && pages_ok && cap_ok) {
            cand->res = 1;
            cand->realtime = fits(s, compute + 1);
            if (cand->state == SCH_QUEUED) {
                cand->state = SCH_OPENING;
                one(w, SCH_OPEN, cand);
            } else {
                cand->state = SCH_RESTORING;
                one(w, SCH_RESTORE, cand);
            }
            return;
        }
        if (oldest_paused && host_room) { /* a paused stream makes room */
            oldest_paused->state = SCH_OFFLOADING;
            one(w, SCH_OFFLOAD, oldest_paused);
            return;
        }
    }
    /* 3. paused long enough: to the host tier */
    double wake = INFINITY;
    if (host_room && c->offload_after >= 0) {
        for (int i = 0; i < s->n; i++) {
            sch_job *j = s->jobs[i];
            if (j->state != SCH_PAUSED)
                continue;
            double at = fmax(j->paused_at + c->offload_after, j->hold_until);
            if (at <= now) {
                j->state = SCH_OFFLOADING;
                one(w, SCH_OFFLOAD, j);
                return;
            }
            wake = fmin(wake, at);
        }
    }
    /* 4. a step: runnable streams, earliest deadline first */
    double dl[SCH_MAX_BATCH];
    for (int i = 0; i < s->n; i++) {
        sch_job *j = s->jobs[i];
        if (!runnable(s, j, now)) {
            if (j->state == SCH_RUNNING && !j->want_stop && !j->blocked && !j->want_pause && j->pass == 0)
                wake = fmin(wake, may_start_at(s, j));
            continue;
        }
        double d = deadline(s, j);
        /* insert into the sorted batch (by deadline, then submission), keep the first max_batch */
        int k = w->n < c->max_batch ? w->n : c->max_batch;
        while (k > 0 && (dl[k - 1] > d || (dl[k - 1] == d && w->jobs[k - 1]->seq > j->seq)))
            k--;
        if (k >= c->max_batch)
            continue;
        int last = w->n < c->max_batch ? w->n : c->max_batch - 1;
        memmove(&w->jobs[k + 1], &w->jobs[k], sizeof *w->jobs * (size_t)(last - k));
        memmove(&dl[k + 1], &dl[k], sizeof *dl * (size_t)(last - k));
        w->jobs[k] = j;
        dl[k] = d;
        if (w->n < c->max_batch)
            w->n++;
    }
    if (w->n) {
        w->kind = SCH_STEP;
        return;
    }
    for (int i = 0; i < s->n; i++)
        if (waiting(s->jobs[i]) && s->jobs[i]->hold_until > now)
            wake = fmin(wake, s->jobs[i]->hold_until);
    w->kind = SCH_IDLE;
    w->wake_at = wake;
}

/* ---- outcomes --------------------------------------------------------------------------------- */

static void fail_job(sch_job *j)
{
    j->failed = 1;
    j->state = SCH_CLOSING;
}

#define SCH_RETRY 1.0 /* seconds before an offload or restore refused by the engine is tried again */

void sch_done(sch_t *s, const sch_work *w, const sch_result *res, double now, double seconds)
{
    const sch_config *c = &s->c;
    int all_ok = 1;
    for (int i = 0; i < w->n; i++)
        all_ok &= !res || res[i] == SCH_OK;
    if (w->kind == SCH_STEP) {
        s->steps++;
        if (all_ok)
            sch_observe(s, w->n, seconds);
    }
    for (int i = 0; i < w->n; i++) {
        sch_job *j = w->jobs[i];
        sch_result r = res ? res[i] : SCH_OK;
        switch (w->kind) {
        case SCH_OPEN:
            if (r != SCH_OK) { /* nothing was opened: nothing to close */
                j->failed = 1;
                detach(s, j);
                break;
            }
            s->admitted++;
            j->admitted_at = now;
            if (j->want_stop)
                j->state = SCH_CLOSING;
            else if (j->want_pause) {
                j->state = SCH_PAUSED;
                j->paused_at = now;
            } else
                j->state = SCH_RUNNING;
            break;
        case SCH_STEP:
            if (r == SCH_FAILED) {
                fail_job(j);
                break;
            }
            if (r != SCH_OK)
                break;
            j->passes++;
            if (++j->pass == c->ready_pass) {
                double d = deadline(s, j);
                if (now > d + 1e-9) {
                    j->misses++;
                    s->misses++;
                    if (now - d > j->worst_late)
                        j->worst_late = now - d;
                }
                if (j->chunks_ready++ == 0) {
                    j->first_ready_at = now; /* playback starts */
                    j->paused_total = 0;
                }
            }
            if (j->pass == c->passes_per_chunk)
                j->pass = 0;
            if (j->want_stop)
                j->state = SCH_CLOSING;
            else if (j->want_pause && j->pass == 0) {
                j->state = SCH_PAUSED;
                j->paused_at = now;
            }
            break;
        case SCH_OFFLOAD:
            if (r == SCH_FAILED) {
                fail_job(j);
                break;
            }
            if (r == SCH_SKIPPED) {
                j->state = SCH_PAUSED;
                j->hold_until = now + SCH_RETRY;
                break;
            }
            s->offloads++;
            j->res = 0;
            j->state = j->want_stop ? SCH_CLOSING : SCH_OFFLOADED;
            if (!j->want_pause)
                j->resume_asked_at = now; /* resumed while it moved: wait for a restore */
            break;
        case SCH_RESTORE:
            if (r == SCH_FAILED) {
                fail_job(j);
                break;
            }
            if (r == SCH_SKIPPED) {
                j->res = 0;
                j->state = SCH_OFFLOADED;
                j->hold_until = now + SCH_RETRY;
                break;
            }
            s->restores++;
            if (j->want_stop)
                j->state = SCH_CLOSING;
            else if (j->want_pause) {
                j->state = SCH_PAUSED; /* paused again while it came back: its pause goes on */
            } else
                to_running(j, now);
            break;
        case SCH_CLOSE:
            detach(s, j);
            break;
        case SCH_IDLE:
            break;
        }
    }
}

int sch_admit_room(const sch_t *s)
{
    sch_stats st;
    sch_get_stats(s, &st);
    int room = s->c.max_resident - st.resident;
    int pages = s->c.pool_pages / s->c.pages_per_stream - st.resident;
    if (pages < room)
        room = pages;
    int cap = st.capacity < 0 ? (st.compute == 0) : st.capacity - st.compute;
    if (st.compute == 0 && cap < 1)
        cap = 1; /* one stream is always admitted */
    if (cap < room)
        room = cap;
    return room > 0 ? room : 0;
}

void sch_get_stats(const sch_t *s, sch_stats *st)
{
    memset(st, 0, sizeof *st);
    for (int i = 0; i < s->n; i++) {
        const sch_job *j = s->jobs[i];
        st->queued += j->state == SCH_QUEUED;
        st->opening += j->state == SCH_OPENING;
        st->running += j->state == SCH_RUNNING;
        st->paused += j->state == SCH_PAUSED;
        st->offloaded += j->state == SCH_OFFLOADED || j->state == SCH_OFFLOADING;
        st->closing += j->state == SCH_CLOSING;
        st->resident += j->res;
        st->compute += holds_compute(j);
    }
    st->reserved_pages = st->resident * s->c.pages_per_stream;
    st->capacity = -1;
    if (sch_busy(s, 1) >= 0) {
        st->capacity = 0;
        while (st->capacity < s->c.max_resident && fits(s, st->capacity + 1))
            st->capacity++;
    }
    st->admitted = s->admitted;
    st->refused = s->refused;
    st->offloads = s->offloads;
    st->restores = s->restores;
    st->steps = s->steps;
    st->misses = s->misses;
}
