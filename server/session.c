/* server/session.c — sessions, viewers' bounded queues, shared messages, the drop policy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server.h"

srv_server srv;
const double srv_hist_bounds[11] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *srv_state_name(srv_state s)
{
    static const char *n[] = {"queued", "running", "paused", "ended", "failed"};
    return s <= SESS_FAILED ? n[s] : "?";
}

srv_msg *srv_msg_new(const void *data, size_t len, int binary)
{
    srv_msg *m = malloc(sizeof *m + SRV_PRE + len + 1);
    if (!m)
        return NULL;
    atomic_init(&m->refs, 1);
    m->binary = binary;
    m->media = m->key = m->format = m->n_frames = 0;
    m->len = len;
    m->data = m->buf + SRV_PRE;
    if (len && data)
        memcpy(m->data, data, len);
    else if (len)
        memset(m->data, 0, len);
    m->data[len] = 0;
    return m;
}

srv_msg *srv_msg_text(char *json)
{
    if (!json)
        return NULL;
    srv_msg *m = srv_msg_new(json, strlen(json), 0);
    free(json);
    return m;
}

void srv_msg_unref(srv_msg *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1)
        free(m);
}

static srv_msg *msg_ref(srv_msg *m)
{
    atomic_fetch_add(&m->refs, 1);
    return m;
}

void srv_metrics_observe(uint64_t *bucket, double *sum, uint64_t *count, double seconds)
{
    int i = 0;
    while (i < 11 && seconds > srv_hist_bounds[i])
        i++;
    bucket[i]++;
    *sum += seconds;
    (*count)++;
}

/* ---- viewers ----------------------------------------------------------------------------------
 * Drop policy: a viewer's queue holds at most viewer_queue messages. A media message that does not
 * fit drops every queued media message; from then on media is dropped until a keyframe arrives
 * (the encoder is asked for one), which goes out with the discontinuity flag. Text events are
 * never dropped while there is room; a viewer whose queue is full of text is closed. */
static void drop_media(srv_viewer *v)
{
    int k = 0;
    for (int i = 0; i < v->qlen; i++) {
        srv_msg *m = v->q[(v->qhead + i) % srv.o.viewer_queue];
        if (m->media) {
            v->dropped += (uint64_t)m->n_frames;
            srv.m.frames_dropped += (uint64_t)m->n_frames;
            srv_msg_unref(m);
        } else {
            v->q[(v->qhead + k++) % srv.o.viewer_queue] = m;
        }
    }
    v->qlen = k;
}

void srv_viewer_push(srv_viewer *v, srv_msg *m)
{
    int cap = srv.o.viewer_queue;
    if (v->close_code)
        return;
    if (m->media) {
        if (m->format != v->format && m->binary && m->format != 0)
            return;
        if (v->need_key && !m->key) {
            v->dropped += (uint64_t)m->n_frames;
            srv.m.frames_dropped += (uint64_t)m->n_frames;
            return;
        }
        if (v->qlen == cap) {
            drop_media(v);
            v->need_key = 1;
            v->discont = 1;
            v->sess->force_key = 1;
            if (!m->key) {
                v->dropped += (uint64_t)m->n_frames;
                srv.m.frames_dropped += (uint64_t)m->n_frames;
                return;
            }
        }
        v->need_key = 0;
    } else if (v->qlen == cap) {
        drop_media(v);
        if (v->qlen == cap) { /* only events queued: the viewer does not read at all */
            v->close_code = 1008;
            snprintf(v->close_reason, sizeof v->close_reason, "viewer too slow");
            return;
        }
        v->need_key = 1;
        v->discont = 1;
        v->sess->force_key = 1;
    }
    v->q[(v->qhead + v->qlen++) % cap] = msg_ref(m);
}

void srv_broadcast(srv_session *s, srv_msg *m)
{
    for (srv_viewer *v = s->viewers; v; v = v->next)
        srv_viewer_push(v, m);
}

/* ---- table ------------------------------------------------------------------------------------- */

srv_session *srv_session_find(const char *id)
{
    for (int i = 0; i < srv.n_table; i++)
        if (!strcmp(srv.table[i]->id, id))
            return srv.table[i];
    return NULL;
}

void srv_session_ref(srv_session *s) { s->refs++; }

void srv_session_unref(srv_session *s)
{
    if (--s->refs > 0)
        return;
    hs_close(s->enc);
    for (int i = 0; i < s->n_gop; i++)
        for (int k = 0; k < 3; k++)
            srv_msg_unref(s->gop[i][k]);
    srv_msg_unref(s->init_json);
    srv_msg_unref(s->init_seg);
    free(s->recording);
    free(s);
}

void srv_session_end(srv_session *s, srv_state st, const char *reason, const char *error)
{
    if (s->state == SESS_ENDED || s->state == SESS_FAILED)
        return;
    s->state = st;
    s->ended_at = srv_now();
    snprintf(s->end_reason, sizeof s->end_reason, "%s", reason);
    if (error) {
        snprintf(s->error, sizeof s->error, "%s", error);
        srv_msg *e = srv_msg_text(proto_json_ws_error("session_failed", error));
        if (e) {
            srv_broadcast(s, e);
            srv_msg_unref(e);
        }
    }
    srv_msg *m = srv_msg_text(proto_json_ended(reason));
    for (srv_viewer *v = s->viewers; v; v = v->next) {
        if (m)
            srv_viewer_push(v, m);
        if (!v->close_code) {
            v->close_code = 1000;
            snprintf(v->close_reason, sizeof v->close_reason, "%s", reason);
        }
    }
    srv_msg_unref(m);
    s->stop_requested = 1; /* the engine thread closes the stream */
    pthread_cond_signal(&srv.wake);
    srv_wake_ws();
}

int srv_count_state(srv_state st)
{
    int n = 0;
    for (int i = 0; i < srv.n_table; i++)
        n += srv.table[i]->state == st;
    return n;
}

int srv_queue_position(const srv_session *s)
{
    if (s->submitted) {
        int p = sch_queue_position(srv.sched, &s->job);
        return p >= 0 ? p : 0;
    }
    /* not handed to the scheduler yet: behind everyone waiting there and earlier arrivals */
    int pos = 0;
    for (int i = 0; i < srv.n_table; i++) {
        const srv_session *o = srv.table[i];
        if (o == s)
            continue;
        if (o->submitted ? sch_queue_position(srv.sched, &o->job) >= 0
                         : o->state == SESS_QUEUED && o->queued_at <= s->queued_at)
            pos++;
    }
    return pos;
}

/* Forget ended sessions after --retain seconds (their recording goes with them). */
void srv_gc_sessions(void)
{
    double now = srv_now();
    for (int i = 0; i < srv.n_table;) {
        srv_session *s = srv.table[i];
        int done = (s->state == SESS_ENDED || s->state == SESS_FAILED) && !s->stream && !s->jobs_pending &&
                   (s->job.state == SCH_NEW || s->job.state == SCH_DONE) &&
                   now - s->ended_at > srv.o.retain && !s->viewers;
        if (done) {
            srv.table[i] = srv.table[--srv.n_table];
            s->in_table = 0;
            srv_session_unref(s);
        } else {
            i++;
        }
    }
}
