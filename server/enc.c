/* server/enc.c — encoder workers: each session's chunks are encoded in order by one worker
 * (sessions are spread over workers by id), off the network and engine threads. A finished chunk
 * becomes up to three shared messages (Annex-B media, fMP4 media, the chunk event) pushed to every
 * viewer's queue, and its fragment is appended to the session's recording. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

struct srv_job {
    srv_session *s;
    uint8_t *rgb;
    int n_frames, last;
    int64_t chunk, frame0;
    double gen_ms, submitted;
    srv_job *next;
};

typedef struct srv_encq {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_job *head, *tail;
    int depth, stop;
} srv_encq;

static int worker_of(const srv_session *s)
{
    unsigned h = 0;
    for (const char *p = s->id; *p; p++)
        h = h * 31u + (unsigned char)*p;
    return (int)(h % (unsigned)srv.n_enc);
}

int srv_enc_submit(srv_session *s, uint8_t *rgb, int n_frames, int64_t chunk, int64_t frame0, double gen_ms,
                   int last)
{
    /* srv.lock held */
    srv_job *j = calloc(1, sizeof *j);
    if (!j)
        return -1;
    *j = (srv_job){.s = s, .rgb = rgb, .n_frames = n_frames, .last = last, .chunk = chunk, .frame0 = frame0,
                   .gen_ms = gen_ms, .submitted = srv_now()};
    srv_session_ref(s);
    s->jobs_pending++;
    srv_encq *q = &srv.encq[worker_of(s)];
    pthread_mutex_lock(&q->mu);
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    q->depth++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

static srv_msg *media_msg(const hs_bytes *b, int type, int format, int key, int64_t chunk, uint64_t pts_us, int n)
{
    proto_media_hdr h = {.type = (uint8_t)type,
                         .flags = key ? PROTO_FLAG_KEY : 0,
                         .format = (uint8_t)format,
                         .seq = 0,
                         .chunk = (uint32_t)chunk,
                         .pts_us = pts_us,
                         .n_frames = (uint16_t)n,
                         .payload_len = (uint32_t)b->len};
    srv_msg *m = srv_msg_new(NULL, PROTO_MEDIA_HEADER + b->len, 1);
    if (!m)
        return NULL;
    proto_media_encode_header(m->data, &h);
    if (b->len)
        memcpy(m->data + PROTO_MEDIA_HEADER, b->data, b->len);
    m->media = type == PROTO_MSG_MEDIA;
    m->key = key;
    m->format = format;
    m->n_frames = n;
    return m;
}

static void record(srv_session *s, const uint8_t *p, size_t n)
{
    if (s->rec_full)
        return;
    if (s->rec_len + n > srv.o.max_recording) {
        s->rec_full = 1;
        return;
    }
    if (s->rec_len + n > s->rec_cap) {
        size_t cap = s->rec_cap ? s->rec_cap : 65536;
        while (cap < s->rec_len + n)
            cap *= 2;
        unsigned char *r = realloc(s->recording, cap);
        if (!r) {
            s->rec_full = 1;
            return;
        }
        s->recording = r;
        s->rec_cap = cap;
    }
    memcpy(s->recording + s->rec_len, p, n);
    s->rec_len += n;
}

static void encode_job(srv_job *j)
{
    srv_session *s = j->s;
    pthread_mutex_lock(&srv.lock);
    int force = s->force_key || j->chunk == 0;
    s->force_key = 0;
    int dead = s->state == SESS_ENDED || s->state == SESS_FAILED;
    pthread_mutex_unlock(&srv.lock);
    hs_bytes ab = {0}, fr = {0};
    int key = 0;
    hs_status hs = dead ? HS_OK : hs_encode(s->enc, j->rgb, j->n_frames, j->frame0, force, &ab, &fr, &key);
    double done = srv_now();
    pthread_mutex_lock(&srv.lock);
    s->jobs_pending--;
    if (dead) {
        /* nothing to deliver */
    } else if (hs != HS_OK) {
        srv_session_end(s, SESS_FAILED, "error", hs_error(s->enc));
    } else {
        uint64_t pts = (uint64_t)(j->frame0 * 1000000 / srv.fps);
        srv_msg *ma = media_msg(&ab, PROTO_MSG_MEDIA, PROTO_FMT_ANNEXB, key, j->chunk, pts, j->n_frames);
        srv_msg *mf = media_msg(&fr, PROTO_MSG_MEDIA, PROTO_FMT_FMP4, key, j->chunk, pts, j->n_frames);
        double latency = (done - j->submitted) * 1000.0 + j->gen_ms;
        if (s->ttff_ms < 0) {
            s->ttff_ms = (done - s->created) * 1000.0;
            srv_metrics_observe(srv.m.ttff_bucket, &srv.m.ttff_sum, &srv.m.ttff_count, s->ttff_ms / 1000.0);
        }
        s->chunk_ms_last = j->gen_ms;
        s->latency_ms_last = latency;
        s->chunks_delivered++;
        s->frames_delivered += j->n_frames;
        srv.m.chunks++;
        srv_metrics_observe(srv.m.lat_bucket, &srv.m.lat_sum, &srv.m.lat_count, latency / 1000.0);
        record(s, fr.data, fr.len);
        /* the joiners' cache restarts at every keyframe chunk */
        if (key || s->n_gop == SRV_GOP_CACHE) {
            for (int i = 0; i < s->n_gop; i++)
                for (int k = 0; k < 3; k++)
                    srv_msg_unref(s->gop[i][k]);
            s->n_gop = 0;
            if (!key)
                s->force_key = 1;
        }
        if (key || s->n_gop) {
            srv_msg *ev = srv_msg_text(proto_json_chunk(j->chunk, j->n_frames, pts, j->gen_ms, latency, s->ttff_ms,
                                                        s->kv_bytes, 0));
            if (ma && mf && ev) {
                atomic_fetch_add(&ma->refs, 1);
                atomic_fetch_add(&mf->refs, 1);
                s->gop[s->n_gop][0] = ma;
                s->gop[s->n_gop][1] = mf;
                s->gop[s->n_gop][2] = ev;
                s->n_gop++;
            } else {
                srv_msg_unref(ev);
            }
        }
        for (srv_viewer *v = s->viewers; v; v = v->next) {
            srv_msg *m = v->format == PROTO_FMT_FMP4 ? mf : ma;
            if (m)
                srv_viewer_push(v, m);
            srv_msg *ev = srv_msg_text(proto_json_chunk(j->chunk, j->n_frames, pts, j->gen_ms, latency, s->ttff_ms,
                                                        s->kv_bytes, v->dropped));
            if (ev) {
                srv_viewer_push(v, ev);
                srv_msg_unref(ev);
            }
        }
        srv_msg_unref(ma);
        srv_msg_unref(mf);
        if (j->last)
            srv_session_end(s, SESS_ENDED, "completed", NULL);
    }
    srv_session_unref(s);
    pthread_mutex_unlock(&srv.lock);
    srv_wake_ws();
    free(ab.data);
    free(fr.data);
}

static void *enc_main(void *arg)
{
    srv_encq *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (!q->head && !q->stop)
            pthread_cond_wait(&q->cv, &q->mu);
        srv_job *j = q->head;
        if (!j) {
            pthread_mutex_unlock(&q->mu);
            return NULL;
        }
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        q->depth--;
        pthread_mutex_unlock(&q->mu);
        encode_job(j);
        free(j->rgb);
        free(j);
    }
}

int srv_enc_start(int n, char *err, size_t errlen)
{
    srv.encq = calloc((size_t)n, sizeof *srv.encq);
    if (!srv.encq) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    srv.n_enc = n;
    for (int i = 0; i < n; i++) {
        pthread_mutex_init(&srv.encq[i].mu, NULL);
        pthread_cond_init(&srv.encq[i].cv, NULL);
        if (pthread_create(&srv.encq[i].thread, NULL, enc_main, &srv.encq[i])) {
            snprintf(err, errlen, "cannot start encoder thread %d", i);
            srv.n_enc = i;
            return -1;
        }
    }
    return 0;
}

/* Stop after the queued jobs are done. */
void srv_enc_stop(void)
{
    for (int i = 0; i < srv.n_enc; i++) {
        pthread_mutex_lock(&srv.encq[i].mu);
        srv.encq[i].stop = 1;
        pthread_cond_signal(&srv.encq[i].cv);
        pthread_mutex_unlock(&srv.encq[i].mu);
    }
    for (int i = 0; i < srv.n_enc; i++) {
        pthread_join(srv.encq[i].thread, NULL);
        pthread_mutex_destroy(&srv.encq[i].mu);
        pthread_cond_destroy(&srv.encq[i].cv);
    }
    free(srv.encq);
    srv.encq = NULL;
    srv.n_enc = 0;
}

int srv_enc_depth(void);
int srv_enc_depth(void)
{
    int d = 0;
    for (int i = 0; i < srv.n_enc; i++) {
        pthread_mutex_lock(&srv.encq[i].mu);
        d += srv.encq[i].depth;
        pthread_mutex_unlock(&srv.encq[i].mu);
    }
    return d;
}
