/* server/ws.c — the WebSocket side (libwebsockets, one service thread): viewers of sessions.
 *
 * A viewer connects to /v1/sessions/{id}/stream?format=annexb|fmp4[&key=K], gets the init event
 * (and, for fmp4, the init segment), then one media message and one chunk event per chunk from
 * its bounded queue (the drop policy is in session.c). Client messages (prompt, pause, resume,
 * stop) change session fields under srv.lock. Anything malformed gets an error event and a close
 * with status 1008; the session goes on. Encoders wake this loop with lws_cancel_service(). */
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

_Static_assert(LWS_PRE <= SRV_PRE, "SRV_PRE must hold libwebsockets' LWS_PRE");

int srv_key_ok(const char *given);

typedef struct {
    srv_viewer *v;
    char *rx;
    size_t rxlen;
    int rx_bad;
} pss_t;

void srv_wake_ws(void)
{
    if (srv.lws)
        lws_cancel_service(srv.lws);
}

/* A viewer with an error queued and a close pending (no session attached). */
static srv_viewer *viewer_new(int format)
{
    srv_viewer *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->q = calloc((size_t)srv.o.viewer_queue, sizeof *v->q);
    if (!v->q) {
        free(v);
        return NULL;
    }
    v->format = format;
    return v;
}

static void viewer_fail(srv_viewer *v, const char *code, const char *msg)
{
    srv_msg *m = srv_msg_text(proto_json_ws_error(code, msg));
    if (m) {
        if (v->qlen < srv.o.viewer_queue) {
            v->q[(v->qhead + v->qlen++) % srv.o.viewer_queue] = m;
        } else {
            srv_msg_unref(m);
        }
    }
    v->close_code = 1008;
    /* a close reason is short (RFC 6455: 123 bytes at most): cut on purpose */
    snprintf(v->close_reason, sizeof v->close_reason, "%.*s", (int)sizeof v->close_reason - 1, msg);
}

static void establish(struct lws *wsi, pss_t *p)
{
    char uri[256] = "", buf[128];
    lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    int format = PROTO_FMT_ANNEXB;
    const char *f = lws_get_urlarg_by_name(wsi, "format=", buf, sizeof buf);
    int bad_format = 0;
    if (f) {
        format = proto_format_from_name(f);
        bad_format = format == 0;
    }
    char keybuf[300];
    const char *key = lws_get_urlarg_by_name(wsi, "key=", keybuf, sizeof keybuf);
    srv_viewer *v = viewer_new(format ? format : PROTO_FMT_ANNEXB);
    p->v = v;
    if (!v)
        return;
    v->wsi = wsi;
    const char *pre = "/v1/sessions/", *suf = "/stream";
    size_t n = strlen(uri);
    pthread_mutex_lock(&srv.lock);
    v->all_next = srv.all_viewers;
    srv.all_viewers = v;
    srv_session *s = NULL;
    if (!srv_key_ok(key)) {
        viewer_fail(v, "unauthorized", "a valid API key is required (?key=)");
    } else if (bad_format) {
        viewer_fail(v, "bad_request", "format must be annexb or fmp4");
    } else if (n != strlen(pre) + SRV_ID_LEN + strlen(suf) || strncmp(uri, pre, strlen(pre)) ||
               strcmp(uri + strlen(pre) + SRV_ID_LEN, suf) ||
               !proto_valid_session_id(uri + strlen(pre), SRV_ID_LEN)) {
        viewer_fail(v, "not_found", "no such stream (expected /v1/sessions/{id}/stream)");
    } else {
        char id[SRV_ID_LEN + 1];
        memcpy(id, uri + strlen(pre), SRV_ID_LEN);
        id[SRV_ID_LEN] = 0;
        s = srv_session_find(id);
        if (!s)
            viewer_fail(v, "not_found", "no such session");
        else if (s->state == SESS_ENDED || s->state == SESS_FAILED)
            viewer_fail(v, "gone", "the session has ended");
    }
    if (s && !v->close_code) {
        srv_session_ref(s);
        v->sess = s;
        v->next = s->viewers;
        s->viewers = v;
        s->n_viewers++;
        s->last_activity = srv_now();
        srv_msg *init = srv_msg_text(proto_json_init(s->id, v->format, s->codec, srv.width, srv.height, srv.fps));
        if (init) {
            srv_viewer_push(v, init);
            srv_msg_unref(init);
        }
        if (v->format == PROTO_FMT_FMP4)
            srv_viewer_push(v, s->init_seg);
        /* a late joiner starts at the newest keyframe: the cached chunks since it go first */
        for (int i = 0; i < s->n_gop; i++) {
            srv_viewer_push(v, s->gop[i][v->format == PROTO_FMT_FMP4 ? 1 : 0]);
            srv_viewer_push(v, s->gop[i][2]);
        }
        if (!s->n_gop && s->chunks_delivered > 0) {
            v->need_key = 1; /* chunks are in flight but no keyframe is cached: wait for one */
            s->force_key = 1;
        }
        if (s->state == SESS_PAUSED) {
            srv_msg *m = srv_msg_text(proto_json_simple("paused"));
            if (m) {
                srv_viewer_push(v, m);
                srv_msg_unref(m);
            }
        }
    }
    pthread_mutex_unlock(&srv.lock);
    lws_callback_on_writable(wsi);
}

static void viewer_gone(pss_t *p)
{
    srv_viewer *v = p->v;
    free(p->rx);
    p->rx = NULL;
    if (!v)
        return;
    pthread_mutex_lock(&srv.lock);
    for (srv_viewer **pp = &srv.all_viewers; *pp; pp = &(*pp)->all_next)
        if (*pp == v) {
            *pp = v->all_next;
            break;
        }
    if (v->sess) {
        for (srv_viewer **pp = &v->sess->viewers; *pp; pp = &(*pp)->next)
            if (*pp == v) {
                *pp = v->next;
                break;
            }
        v->sess->n_viewers--;
        v->sess->last_activity = srv_now();
        srv_session_unref(v->sess);
    }
    for (int i = 0; i < v->qlen; i++)
        srv_msg_unref(v->q[(v->qhead + i) % srv.o.viewer_queue]);
    pthread_mutex_unlock(&srv.lock);
    free(v->q);
    free(v);
    p->v = NULL;
}

static void client_message(pss_t *p)
{
    srv_viewer *v = p->v;
    proto_client_msg cm;
    char err[256];
    pthread_mutex_lock(&srv.lock);
    srv.m.ws_messages_in++;
    if (!v->sess || v->close_code) {
        pthread_mutex_unlock(&srv.lock);
        return;
    }
    if (p->rx_bad || proto_parse_client_msg(p->rx ? p->rx : "", p->rxlen, &cm, err, sizeof err) != PROTO_OK) {
        srv.m.ws_bad_messages++;
        viewer_fail(v, "bad_message", p->rx_bad ? "messages must be JSON text of at most 8 KiB" : err);
        pthread_mutex_unlock(&srv.lock);
        return;
    }
    srv_session *s = v->sess;
    s->last_activity = srv_now();
    srv_msg *ev = NULL;
    switch (cm.type) {
    case PROTO_CMSG_PROMPT:
        if (s->state == SESS_ENDED || s->state == SESS_FAILED)
            break;
        memcpy(s->pending_prompt, cm.prompt, sizeof s->pending_prompt);
        s->prompt_pending = 1;
        ev = srv_msg_text(proto_json_prompt_switched(cm.prompt, s->chunks_generated + 1));
        break;
    case PROTO_CMSG_PAUSE:
        s->pause_requested = 1;
        ev = srv_msg_text(proto_json_simple("paused"));
        break;
    case PROTO_CMSG_RESUME:
        s->pause_requested = 0;
        ev = srv_msg_text(proto_json_simple("resumed"));
        break;
    case PROTO_CMSG_STOP:
        srv_session_end(s, SESS_ENDED, "stopped", NULL);
        break;
    }
    if (ev) {
        srv_broadcast(s, ev);
        srv_msg_unref(ev);
    }
    pthread_cond_signal(&srv.wake);
    pthread_mutex_unlock(&srv.lock);
    srv_wake_ws();
}

static int writable(struct lws *wsi, pss_t *p)
{
    srv_viewer *v = p->v;
    if (!v)
        return -1;
    pthread_mutex_lock(&srv.lock);
    srv_msg *m = NULL;
    if (v->qlen) {
        m = v->q[v->qhead];
        v->qhead = (v->qhead + 1) % srv.o.viewer_queue;
        v->qlen--;
    }
    int more = v->qlen > 0, close_code = v->close_code;
    char reason[96];
    snprintf(reason, sizeof reason, "%s", v->close_reason);
    uint32_t seq = 0;
    int discont = 0;
    if (m && m->binary) {
        seq = v->seq++;
        if (m->media && v->discont) {
            discont = 1;
            v->discont = 0;
        }
    }
    pthread_mutex_unlock(&srv.lock);
    if (m) {
        if (m->binary) { /* this viewer's sequence and flags, patched in place: only this thread writes */
            m->data[4] = (unsigned char)(seq >> 24);
            m->data[5] = (unsigned char)(seq >> 16);
            m->data[6] = (unsigned char)(seq >> 8);
            m->data[7] = (unsigned char)seq;
            m->data[3] = (unsigned char)((m->key ? PROTO_FLAG_KEY : 0) | (discont ? PROTO_FLAG_DISCONT : 0));
        }
        int w = lws_write(wsi, m->data, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
        srv_msg_unref(m);
        if (w < 0)
            return -1;
    }
    if (more) {
        lws_callback_on_writable(wsi);
    } else if (close_code) {
        lws_close_reason(wsi, close_code == 1000 ? LWS_CLOSE_STATUS_NORMAL : LWS_CLOSE_STATUS_POLICY_VIOLATION,
                         (unsigned char *)reason, strlen(reason));
        return -1;
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    pss_t *p = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        memset(p, 0, sizeof *p);
        establish(wsi, p);
        if (!p->v)
            return -1;
        break;
    case LWS_CALLBACK_RECEIVE:
        if (!p->v)
            return -1;
        if (lws_frame_is_binary(wsi))
            p->rx_bad = 1;
        if (!p->rx_bad && p->rxlen + len <= PROTO_MAX_CLIENT_MSG) {
            char *b = realloc(p->rx, p->rxlen + len + 1);
            if (!b)
                return -1;
            p->rx = b;
            memcpy(p->rx + p->rxlen, in, len);
            p->rxlen += len;
            p->rx[p->rxlen] = 0;
        } else {
            p->rx_bad = 1;
        }
        if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
            client_message(p);
            free(p->rx);
            p->rx = NULL;
            p->rxlen = 0;
            p->rx_bad = 0;
            lws_callback_on_writable(wsi);
        }
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return writable(wsi, p);
    case LWS_CALLBACK_CLOSED:
        viewer_gone(p);
        break;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        pthread_mutex_lock(&srv.lock);
        for (srv_viewer *v = srv.all_viewers; v; v = v->all_next)
            if (v->wsi && (v->qlen || v->close_code))
                lws_callback_on_writable(v->wsi);
        pthread_mutex_unlock(&srv.lock);
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"vmla", callback, sizeof(pss_t), PROTO_MAX_CLIENT_MSG, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static atomic_int ws_running;

static void *ws_main(void *arg)
{
    while (atomic_load(&ws_running))
        if (lws_service(srv.lws, 0) < 0)
            break;
    return NULL;
}

int srv_ws_start(char *err, size_t errlen)
{
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = srv.o.ws_port;
    info.iface = srv.o.host;
    info.protocols = protocols;
    info.gid = -1;
    info.uid = -1;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
    info.timeout_secs = 30;
    srv.lws = lws_create_context(&info);
    if (!srv.lws) {
        snprintf(err, errlen, "cannot listen for WebSocket on %s:%d (in use?)", srv.o.host, srv.o.ws_port);
        return -1;
    }
    atomic_store(&ws_running, 1);
    if (pthread_create(&srv.ws_thread, NULL, ws_main, NULL)) {
        lws_context_destroy(srv.lws);
        srv.lws = NULL;
        snprintf(err, errlen, "cannot start the WebSocket thread");
        return -1;
    }
    return 0;
}

void srv_ws_stop(void)
{
    if (!srv.lws)
        return;
    atomic_store(&ws_running, 0);
    lws_cancel_service(srv.lws);
    pthread_join(srv.ws_thread, NULL);
    lws_context_destroy(srv.lws); /* closes every connection: viewers are freed in LWS_CALLBACK_CLOSED */
    srv.lws = NULL;
}
