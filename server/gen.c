/* server/gen.c — the engine thread: carries out the scheduler's decisions (engine/scheduler.h)
 * on the engine and hands finished chunks to the encoders.
 *
 * Only this thread calls the scheduler and the engine. Other threads set a session's request
 * flags (stop, pause, prompt) under srv.lock; housekeeping() turns them into scheduler calls
 * before each decision. The lock is released while the engine works, so the network threads
 * never wait for a step.
 *
 * Pacing is the scheduler's: a stream runs at most --lead-chunks chunks ahead of its playback
 * clock, and not while two of its chunks wait for the encoder (sch_set_blocked). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sched_exec.h"
#include "server/server.h"

static int job_active(const srv_session *s)
{
    return s->job.state != SCH_NEW && s->job.state != SCH_DONE;
}

static int64_t frame_limit(const srv_session *s)
{
    return s->seconds >= 0 ? (int64_t)(s->seconds * srv.fps + 0.5) : -1;
}

/* Requests from the network threads become scheduler calls; new sessions are submitted. */
static void housekeeping(void)
{
    double now = srv_now();
    for (int i = 0; i < srv.n_table; i++) {
        srv_session *s = srv.table[i];
        int ended = s->state == SESS_ENDED || s->state == SESS_FAILED;
        if (s->state == SESS_QUEUED && !s->submitted && !s->stop_requested) {
            sch_job_init(&s->job, 0, s);
            s->submitted = 1;
            if (sch_submit(srv.sched, &s->job, now) < 0)
                srv_session_end(s, SESS_FAILED, "error", "the admission queue is full");
            continue;
        }
        if (!job_active(s)) {
            if (s->stop_requested && !ended)
                srv_session_end(s, SESS_ENDED, "stopped", NULL);
            continue;
        }
        if (ended || s->stop_requested) {
            if (!s->job.want_stop)
                sch_stop(srv.sched, &s->job);
            if (!ended)
                srv_session_end(s, SESS_ENDED, "stopped", NULL);
            continue;
        }
        int64_t lim = frame_limit(s);
        if (lim >= 0 && s->frames_generated >= lim) { /* all its frames are out: the stream can go */
            sch_stop(srv.sched, &s->job);
            continue;
        }
        if (s->prompt_pending && s->stream) {
            eng_stream_set_prompt(s->stream, s->pending_prompt);
            memcpy(s->prompt, s->pending_prompt, sizeof s->prompt);
            s->prompt_pending = 0;
        }
        if (s->pause_requested && !s->job.want_pause) {
            sch_pause(srv.sched, &s->job, now);
            if (s->state == SESS_RUNNING)
                s->state = SESS_PAUSED;
            s->paused_at = now;
        } else if (!s->pause_requested && s->job.want_pause) {
            sch_resume(srv.sched, &s->job, now);
            if (s->state == SESS_PAUSED)
                s->state = SESS_RUNNING;
        }
        sch_set_blocked(srv.sched, &s->job, s->jobs_pending >= 2);
        /* idle: nobody watching and no API activity */
        if (!s->viewers && srv.o.idle_timeout > 0 && now - s->last_activity > srv.o.idle_timeout)
            srv_session_end(s, SESS_ENDED, "idle", NULL);
    }
}

static eng_status open_job(void *user, sch_job *j, eng_stream_t **out)
{
    srv_session *s = j->user;
    /* the prompt is only written by this thread (housekeeping), so reading it unlocked is safe */
    return eng_stream_open(srv.eng, s->seed, s->prompt, out);
}

static double clock_fn(void) { return srv_now(); }

/* A finished chunk of session s goes to the encoders. */
static void deliver(srv_session *s, double now)
{
    double gen_ms = (now - s->chunk_started) * 1000.0;
    const eng_frames *fr = eng_stream_take_frames(s->stream);
    if (!fr)
        return;
    size_t bytes = (size_t)fr->n_frames * fr->width * fr->height * 3;
    int nf = fr->n_frames;
    int64_t lim = frame_limit(s);
    if (lim >= 0 && lim - s->frames_generated < nf) /* the last chunk may be cut */
        nf = (int)(lim - s->frames_generated > 0 ? lim - s->frames_generated : 0);
    uint8_t *rgb = malloc(bytes);
    if (rgb)
        memcpy(rgb, fr->rgb, bytes);
    s->frames_generated += nf;
    s->chunks_generated++;
    int last = lim >= 0 && s->frames_generated >= lim;
    if (!rgb || nf <= 0 || srv_enc_submit(s, rgb, nf, fr->chunk, fr->frame0, gen_ms, last)) {
        free(rgb);
        if (nf > 0)
            srv_session_end(s, SESS_FAILED, "error", "cannot queue a chunk for encoding");
    }
}

/* After the work: sessions learn what happened to their streams (lock held). */
static void apply(const sch_work *w, const sch_result *res, double now)
{
    for (int i = 0; i < w->n; i++) {
        srv_session *s = w->jobs[i]->user;
        const char *why = NULL;
        switch (w->kind) {
        case SCH_OPEN:
            if (res[i] != SCH_OK) {
                why = eng_error(srv.eng);
                break;
            }
            s->stream = w->jobs[i]->stream;
            if (s->state == SESS_QUEUED)
                s->state = s->pause_requested ? SESS_PAUSED : SESS_RUNNING;
            break;
        case SCH_STEP:
            if (res[i] == SCH_FAILED)
                why = eng_stream_error(s->stream)[0] ? eng_stream_error(s->stream) : eng_error(srv.eng);
            else if (res[i] == SCH_OK) {
                s->kv_bytes = eng_stream_kv_bytes(s->stream);
                deliver(s, now);
            }
            break;
        case SCH_OFFLOAD:
        case SCH_RESTORE:
            if (res[i] == SCH_FAILED)
                why = eng_stream_error(s->stream);
            else
                s->kv_bytes = eng_stream_resident(s->stream) ? eng_stream_kv_bytes(s->stream) : 0;
            break;
        case SCH_CLOSE:
            s->stream = NULL;
            s->kv_bytes = 0;
            break;
        case SCH_IDLE:
            break;
        }
        if (why)
            srv_session_end(s, SESS_FAILED, "error", why);
    }
}

static void *gen_main(void *arg)
{
    sch_result res[SCH_MAX_BATCH];
    while (atomic_load(&srv.running)) {
        pthread_mutex_lock(&srv.lock);
        housekeeping();
        srv_gc_sessions();
        double now = srv_now();
        sch_work w;
        sch_next(srv.sched, now, &w);
        if (w.kind == SCH_IDLE) {
            double wait = w.wake_at - now;
            if (!(wait < 0.05))
                wait = 0.05; /* requests arrive by srv.wake; housekeeping timers need a tick */
            if (wait > 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                long ns = ts.tv_nsec + (long)(wait * 1e9);
                ts.tv_sec += ns / 1000000000L;
                ts.tv_nsec = ns % 1000000000L;
                pthread_cond_timedwait(&srv.wake, &srv.lock, &ts);
            }
            pthread_mutex_unlock(&srv.lock);
            continue;
        }
        for (int i = 0; i < w.n; i++) {
            srv_session *s = w.jobs[i]->user;
            srv_session_ref(s);
            if (w.kind == SCH_STEP && w.jobs[i]->pass == 0)
                s->chunk_started = now; /* the chunk's first pass */
        }
        pthread_mutex_unlock(&srv.lock);

        double seconds = 0;
        eng_sched_execute(srv.eng, &w, open_job, NULL, clock_fn, res, &seconds);

        pthread_mutex_lock(&srv.lock);
        double after = srv_now();
        apply(&w, res, after);
        sch_done(srv.sched, &w, res, after, seconds);
        for (int i = 0; i < w.n; i++) {
            srv_session *s = w.jobs[i]->user;
            if (s->job.state == SCH_DONE && s->job.failed && s->state != SESS_FAILED)
                srv_session_end(s, SESS_FAILED, "error", "the stream failed");
            srv_session_unref(s);
        }
        pthread_mutex_unlock(&srv.lock);
    }
    /* shutdown: close every stream */
    pthread_mutex_lock(&srv.lock);
    for (int i = 0; i < srv.n_table; i++)
        if (srv.table[i]->stream) {
            eng_stream_close(srv.table[i]->stream);
            srv.table[i]->stream = NULL;
            srv.table[i]->job.stream = NULL;
        }
    pthread_mutex_unlock(&srv.lock);
    return NULL;
}

int srv_gen_start(char *err, size_t errlen)
{
    if (pthread_create(&srv.gen_thread, NULL, gen_main, NULL)) {
        snprintf(err, errlen, "cannot start the engine thread");
        return -1;
    }
    return 0;
}

void srv_gen_stop(void)
{
    pthread_mutex_lock(&srv.lock);
    pthread_cond_broadcast(&srv.wake);
    pthread_mutex_unlock(&srv.lock);
    pthread_join(srv.gen_thread, NULL);
}
