/* tests/server/test_drop_policy.c — a viewer's bounded queue and the drop-to-keyframe policy
 * (server/session.c), driven directly: a slow viewer loses queued media, then waits for a keyframe
 * that carries the discontinuity flag, and asks the encoder for it; events are kept; a viewer that
 * reads nothing at all is closed. */
#include <stdlib.h>
#include <string.h>

#include "server/server.h"
#include "tests/check.h"

void srv_wake_ws(void) {} /* no WebSocket loop in this test */

static srv_msg *media(int key, int frames)
{
    srv_msg *m = srv_msg_new("x", 1, 1);
    m->media = 1;
    m->key = key;
    m->format = PROTO_FMT_ANNEXB;
    m->n_frames = frames;
    return m;
}

static int queued_media(const srv_viewer *v)
{
    int n = 0;
    for (int i = 0; i < v->qlen; i++)
        n += v->q[(v->qhead + i) % srv.o.viewer_queue]->media;
    return n;
}

int main(void)
{
    srv.o.viewer_queue = 4;
    pthread_mutex_init(&srv.lock, NULL);
    pthread_cond_init(&srv.wake, NULL);
    srv_session *s = calloc(1, sizeof *s);
    s->refs = 1;
    srv_viewer *v = calloc(1, sizeof *v);
    v->q = calloc(4, sizeof *v->q);
    v->format = PROTO_FMT_ANNEXB;
    v->sess = s;
    s->viewers = v;

    srv_msg *k = media(1, 12), *d = media(0, 12), *ev = srv_msg_text(proto_json_simple("paused"));
    srv_msg *other = media(1, 12);
    other->format = PROTO_FMT_FMP4;
    srv_viewer_push(v, other);
    CHECK(v->qlen == 0, "media of the other format is not queued");
    srv_viewer_push(v, k);
    srv_viewer_push(v, d);
    srv_viewer_push(v, ev);
    srv_viewer_push(v, d);
    CHECK(v->qlen == 4 && !v->need_key, "queue fills to its bound");
    srv_viewer_push(v, d); /* does not fit: queued media dropped, wait for a keyframe */
    CHECK(queued_media(v) == 0 && v->qlen == 1, "queued media dropped, the event kept (qlen %d)", v->qlen);
    CHECK(v->need_key && v->discont && s->force_key, "waiting for a keyframe, encoder asked for one");
    CHECK(v->dropped == 4 * 12, "48 frames counted as dropped (%llu)", (unsigned long long)v->dropped);
    srv_viewer_push(v, d);
    CHECK(v->qlen == 1 && v->dropped == 5 * 12, "delta frames are dropped until the keyframe");
    srv_viewer_push(v, k);
    CHECK(v->qlen == 2 && !v->need_key && v->discont, "the keyframe is queued and will carry the flag");
    CHECK(srv.m.frames_dropped == 60, "metrics count drops (%llu)", (unsigned long long)srv.m.frames_dropped);

    /* a viewer that reads nothing: events fill the queue, then it is closed */
    for (int i = 0; i < 10; i++)
        srv_viewer_push(v, ev);
    CHECK(v->close_code == 1008 && strstr(v->close_reason, "slow"), "a viewer that never reads is closed (%d)",
          v->close_code);

    for (int i = 0; i < v->qlen; i++)
        srv_msg_unref(v->q[(v->qhead + i) % 4]);
    srv_msg_unref(k);
    srv_msg_unref(d);
    srv_msg_unref(ev);
    srv_msg_unref(other);
    free(v->q);
    free(v);
    s->viewers = NULL;
    srv_session_unref(s);
    return check_done();
}
