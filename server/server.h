/* server/server.h — the streaming server's shared state (private to server/).
 *
 * Threads and who owns what:
 *  - the HTTP thread (libmicrohttpd's internal poll thread) owns every MHD object;
 *  - the WebSocket thread (libwebsockets' service loop) owns every lws object (wsi);
 *  - the engine thread owns the engine and every eng_stream_t;
 *  - encoder workers own each session's H.264 encoder while encoding its chunk.
 * Everything they share (the session table, sessions, viewers' queues, metrics) is guarded by one
 * mutex, srv.lock; threads hand work over through bounded queues keyed by session, never by
 * pointers into another thread's library objects. Encoders wake the WebSocket loop with
 * lws_cancel_service(); the engine thread sleeps on srv.wake.
 */
#ifndef VMLA_SERVER_SERVER_H
#define VMLA_SERVER_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/scheduler.h"
#include "proto/proto.h"
#include "server/encode/h264_stream.h"

#define SRV_PRE 16 /* headroom before every message's bytes (libwebsockets' LWS_PRE) */
#define SRV_ID_LEN 32
#define SRV_GOP_CACHE 3 /* chunks kept for joiners; past it the next chunk is forced to a keyframe */

/* A message for viewers, shared by reference (the WebSocket thread patches the media header's
 * sequence and flags per viewer right before writing it). */
typedef struct srv_msg {
    atomic_int refs;
    int binary;
    int media;    /* a media message (droppable) */
    int key;      /* media starting with a keyframe */
    int format;   /* PROTO_FMT_* for media, 0 for text */
    int n_frames;
    size_t len;
    unsigned char *data; /* = buf + SRV_PRE */
    unsigned char buf[];
} srv_msg;

srv_msg *srv_msg_new(const void *data, size_t len, int binary);
srv_msg *srv_msg_text(char *json); /* takes a malloc'd JSON string (frees it); NULL on failure */
void srv_msg_unref(srv_msg *m);

typedef struct srv_session srv_session;

typedef struct srv_viewer {
    srv_session *sess;
    int format;
    srv_msg **q; /* ring of qcap */
    int qhead, qlen;
    int need_key;     /* dropping media until the next keyframe */
    int discont;      /* the next media message carries the discontinuity flag */
    uint64_t dropped; /* frames dropped */
    uint32_t seq;
    int close_code;   /* non-zero: close after the queue drains (1000 normal, 1008 policy) */
    char close_reason[96];
    void *wsi;        /* WebSocket thread only */
    struct srv_viewer *next, *all_next;
} srv_viewer;

typedef enum { SESS_QUEUED = 0, SESS_RUNNING, SESS_PAUSED, SESS_ENDED, SESS_FAILED } srv_state;
const char *srv_state_name(srv_state s);

struct srv_session {
    char id[SRV_ID_LEN + 1];
    int refs; /* the table, viewers and encoder jobs (srv.lock) */
    int in_table;
    srv_state state;
    char end_reason[16];
    char error[256];
    char prompt[PROTO_MAX_PROMPT + 1];
    char pending_prompt[PROTO_MAX_PROMPT + 1];
    int prompt_pending;
    uint64_t seed;
    double seconds; /* < 0: until stopped */
    int format;
    double created, ended_at, last_activity, paused_at;
    double queued_at;
    /* progress */
    int64_t chunks_generated, chunks_delivered, frames_delivered;
    double ttff_ms, chunk_ms_last, latency_ms_last;
    size_t kv_bytes;
    int stop_requested, pause_requested;
    int jobs_pending; /* chunks handed to the encoder, not delivered yet */
    int final_sent;
    /* engine thread only */
    sch_job job;    /* its place in the scheduler */
    int submitted;  /* job submitted to the scheduler */
    eng_stream_t *stream;
    double chunk_started;
    int64_t frames_generated;
    /* encoder (worker only, set at creation) */
    hs_stream_t *enc;
    int force_key;
    char codec[32];
    /* output */
    srv_msg *init_json, *init_seg;
    unsigned char *recording;
    size_t rec_len, rec_cap;
    int rec_full;
    srv_viewer *viewers;
    int n_viewers;
    /* the messages since the newest keyframe chunk (Annex-B, fMP4, event per chunk): a viewer who
     * joins gets them first, so it starts at a keyframe without waiting for one */
    srv_msg *gop[SRV_GOP_CACHE][3];
    int n_gop;
};

typedef struct {
    const char *model, *preset, *host, *api_key, *web_root;
    int port, ws_port, max_sessions, max_queue, viewer_queue, encoders, max_batch;
    double idle_timeout, retain;
    size_t max_recording;
    int gop;
    const char *device;
    double lead_chunks, drain_timeout;
    /* scheduler and KV pool */
    double kv_pool_mb, kv_pool_fraction, host_kv_mb, offload_after, headroom, ttff_target;
    int calibrate;
} srv_options;

typedef struct srv_metrics {
    uint64_t sessions_created, sessions_rejected, chunks, frames_dropped, http_requests, ws_messages_in,
        ws_bad_messages;
    /* histograms (seconds): chunk latency (generate + encode), time to first frame */
    uint64_t lat_bucket[12], ttff_bucket[12];
    double lat_sum, ttff_sum;
    uint64_t lat_count, ttff_count;
} srv_metrics;

extern const double srv_hist_bounds[11];

typedef struct srv_job srv_job;

typedef struct {
    srv_options o;
    pthread_mutex_t lock;
    pthread_cond_t wake; /* the engine thread's */
    srv_session **table;
    int n_table, cap_table;
    srv_viewer *all_viewers;
    atomic_int running, ready, draining;
    srv_metrics m;
    /* engine */
    kn_backend_t *be;
    eng_engine_t *eng;
    sch_t *sched;
    int width, height, fps, frames_per_chunk;
    pthread_t gen_thread;
    /* encoders */
    struct srv_encq *encq;
    int n_enc;
    /* network */
    struct MHD_Daemon *mhd;
    struct lws_context *lws;
    pthread_t ws_thread;
    char ws_base[128];
} srv_server;

extern srv_server srv;

double srv_now(void);
/* ---- sessions (srv.lock held unless noted) ---- */
srv_session *srv_session_find(const char *id); /* NULL if absent */
void srv_session_ref(srv_session *s);
void srv_session_unref(srv_session *s);
/* Push a message to every viewer (of the message's format for media) with the drop policy. */
void srv_broadcast(srv_session *s, srv_msg *m);
void srv_viewer_push(srv_viewer *v, srv_msg *m);
/* End a session: state, reason, viewers get `ended` and close. */
void srv_session_end(srv_session *s, srv_state st, const char *reason, const char *error);
int srv_count_state(srv_state st);
int srv_queue_position(const srv_session *s);
void srv_gc_sessions(void);
void srv_wake_ws(void); /* lock not needed */
void srv_metrics_observe(uint64_t *bucket, double *sum, uint64_t *count, double seconds);

/* ---- parts ---- */
int srv_gen_start(char *err, size_t errlen);
void srv_gen_stop(void);
int srv_enc_start(int n, char *err, size_t errlen);
void srv_enc_stop(void);
/* Queue a finished chunk for encoding (takes ownership of rgb). */
int srv_enc_submit(srv_session *s, uint8_t *rgb, int n_frames, int64_t chunk, int64_t frame0, double gen_ms,
                   int last);
int srv_http_start(char *err, size_t errlen);
void srv_http_stop(void);
int srv_ws_start(char *err, size_t errlen);
void srv_ws_stop(void);
/* Prometheus text (malloc'd). */
char *srv_metrics_text(void);

#endif
