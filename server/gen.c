/* server/gen.c — the engine thread: admits queued sessions, advances due streams in batches
 * through eng_step, and hands finished chunks to the encoders.
 *
 * Pacing: a stream is due while it has generated less than its playback clock plus
 * --lead-chunks chunks (so a viewer's queue stays short and many streams share the engine), and
 * while fewer than two of its chunks wait for the encoder. Until the scheduler issue lands,
 * sessions beyond --max-sessions wait in a FIFO queue; a started stream is never frozen. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

static void open_streams(void)
{
    int running = srv_count_state(SESS_RUNNING) + srv_count_state(SESS_PAUSED);
    /* FIFO by queued time */
    for (;;) {
        srv_session *next = NULL;
        for (int i = 0; i < srv.n_table; i++) {
            srv_session *s = srv.table[i];
            if (s->state == SESS_QUEUED && (!next || s->queued_at < next->queued_at))
                next = s;
        }
        if (!next || running >= srv.o.max_sessions)
            return;
        eng_stream_t *st = NULL;
        if (eng_stream_open(srv.eng, next->seed, next->prompt, &st) != ENG_OK) {
            srv_session_end(next, SESS_FAILED, "error", eng_error(srv.eng));
            continue;
        }
        next->stream = st;
        next->state = next->pause_requested ? SESS_PAUSED : SESS_RUNNING;
        next->play_start = srv_now();
        running++;
    }
}

/* Apply requests; close streams of ended sessions. */
static void housekeeping(void)
{
    double now = srv_now();
    for (int i = 0; i < srv.n_table; i++) {
        srv_session *s = srv.table[i];
        if (s->stream && (s->state == SESS_ENDED || s->state == SESS_FAILED || s->stop_requested)) {
            eng_stream_close(s->stream);
            s->stream = NULL;
            s->kv_bytes = 0;
            if (s->state != SESS_ENDED && s->state != SESS_FAILED)
                srv_session_end(s, SESS_ENDED, "stopped", NULL);
            continue;
        }
        if (s->state == SESS_QUEUED && s->stop_requested)
            srv_session_end(s, SESS_ENDED, "stopped", NULL);
        if (!s->stream)
            continue;
        if (s->prompt_pending) {
            eng_stream_set_prompt(s->stream, s->pending_prompt);
            memcpy(s->prompt, s->pending_prompt, sizeof s->prompt);
            s->prompt_pending = 0;
        }
        if (s->pause_requested && s->state == SESS_RUNNING) {
            s->state = SESS_PAUSED;
            s->paused_at = now;
        } else if (!s->pause_requested && s->state == SESS_PAUSED) {
            s->state = SESS_RUNNING;
            s->play_start += now - s->paused_at; /* the playback clock stood still */
        }
        /* idle: nobody watching and no API activity */
        if (!s->viewers && srv.o.idle_timeout > 0 && now - s->last_activity > srv.o.idle_timeout)
            srv_session_end(s, SESS_ENDED, "idle", NULL);
    }
}

static int due(const srv_session *s, double now)
{
    if (s->state != SESS_RUNNING || !s->stream || s->stop_requested || s->jobs_pending >= 2)
        return 0;
    if (s->seconds >= 0 && s->frames_generated >= (int64_t)(s->seconds * srv.fps + 0.5))
        return 0;
    double allowed = (now - s->play_start) * srv.fps + srv.o.lead_chunks * srv.frames_per_chunk;
    return (double)s->frames_generated < allowed;
}

static void *gen_main(void *arg)
{
    int rr = 0; /* round-robin start */
    while (atomic_load(&srv.running)) {
        eng_stream_t *batch[64];
        srv_session *who[64];
        int n = 0;
        pthread_mutex_lock(&srv.lock);
        housekeeping();
        open_streams();
        srv_gc_sessions();
        double now = srv_now();
        int cap = srv.o.max_batch < 64 ? srv.o.max_batch : 64;
        for (int k = 0; k < srv.n_table && n < cap; k++) {
            srv_session *s = srv.table[(rr + k) % srv.n_table];
            if (due(s, now)) {
                srv_session_ref(s);
                who[n] = s;
                batch[n++] = s->stream;
            }
        }
        if (srv.n_table)
            rr = (rr + 1) % srv.n_table;
        if (n == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&srv.wake, &srv.lock, &ts);
            pthread_mutex_unlock(&srv.lock);
            continue;
        }
        pthread_mutex_unlock(&srv.lock);

        double t0 = srv_now();
        eng_status st = eng_step(srv.eng, batch, n);
        double dt = srv_now() - t0;

        pthread_mutex_lock(&srv.lock);
        for (int i = 0; i < n; i++) {
            srv_session *s = who[i];
            if (st != ENG_OK || eng_stream_status(s->stream) != ENG_OK) {
                const char *e = st != ENG_OK ? eng_error(srv.eng) : eng_stream_error(s->stream);
                srv_session_end(s, SESS_FAILED, "error", e);
            } else {
                s->kv_bytes = eng_stream_kv_bytes(s->stream);
                const eng_frames *fr = eng_stream_take_frames(s->stream);
                if (fr) {
                    size_t bytes = (size_t)fr->n_frames * fr->width * fr->height * 3;
                    int nf = fr->n_frames;
                    if (s->seconds >= 0) { /* the last chunk may be cut */
                        int64_t want = (int64_t)(s->seconds * srv.fps + 0.5) - s->frames_generated;
                        if (want < nf)
                            nf = (int)(want > 0 ? want : 0);
                    }
                    uint8_t *rgb = malloc(bytes);
                    if (rgb)
                        memcpy(rgb, fr->rgb, bytes);
                    s->frames_generated += nf;
                    s->chunks_generated++;
                    int last = s->seconds >= 0 && s->frames_generated >= (int64_t)(s->seconds * srv.fps + 0.5);
                    if (!rgb || nf <= 0 ||
                        srv_enc_submit(s, rgb, nf, fr->chunk, fr->frame0, dt * 1000.0, last)) {
                        free(rgb);
                        if (nf > 0)
                            srv_session_end(s, SESS_FAILED, "error", "cannot queue a chunk for encoding");
                    }
                }
            }
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
