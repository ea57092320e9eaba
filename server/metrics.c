/* server/metrics.c — /metrics in the Prometheus text format: sessions by state and capacity, chunks,
 * latency and time-to-first-frame histograms, KV pool bytes, encoder queue depth, drops. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/server.h"

int srv_enc_depth(void);

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

static void histogram(sbuf *b, const char *name, const char *help, const uint64_t *bucket, double sum, uint64_t count)
{
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < 11; i++) {
        cum += bucket[i];
        put(b, "%s_bucket{le=\"%g\"} %llu\n", name, srv_hist_bounds[i], (unsigned long long)cum);
    }
    cum += bucket[11];
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)cum, name, sum, name,
        (unsigned long long)count);
}

char *srv_metrics_text(void)
{
    sbuf b = {malloc(4096), 0, 4096, 0};
    if (!b.p)
        return NULL;
    int depth = srv_enc_depth();
    pthread_mutex_lock(&srv.lock);
    int viewers = 0;
    for (srv_viewer *v = srv.all_viewers; v; v = v->all_next)
        viewers += v->sess != NULL;
    put(&b, "# HELP vmla_sessions Sessions by state.\n# TYPE vmla_sessions gauge\n");
    for (int st = SESS_QUEUED; st <= SESS_FAILED; st++)
        put(&b, "vmla_sessions{state=\"%s\"} %d\n", srv_state_name((srv_state)st), srv_count_state((srv_state)st));
    put(&b, "# HELP vmla_sessions_active Sessions generating (running or paused).\n# TYPE vmla_sessions_active gauge\n"
            "vmla_sessions_active %d\n",
        srv_count_state(SESS_RUNNING) + srv_count_state(SESS_PAUSED));
    put(&b, "# HELP vmla_sessions_queued Sessions waiting for capacity.\n# TYPE vmla_sessions_queued gauge\n"
            "vmla_sessions_queued %d\n",
        srv_count_state(SESS_QUEUED));
    put(&b, "# HELP vmla_sessions_capacity Sessions this process runs at once.\n# TYPE vmla_sessions_capacity gauge\n"
            "vmla_sessions_capacity %d\n",
        srv.o.max_sessions);
    put(&b, "# HELP vmla_viewers Connected stream viewers.\n# TYPE vmla_viewers gauge\nvmla_viewers %d\n", viewers);
    put(&b, "# HELP vmla_sessions_created_total Sessions accepted.\n# TYPE vmla_sessions_created_total counter\n"
            "vmla_sessions_created_total %llu\n",
        (unsigned long long)srv.m.sessions_created);
    put(&b, "# HELP vmla_sessions_rejected_total Sessions refused for capacity.\n# TYPE vmla_sessions_rejected_total "
            "counter\nvmla_sessions_rejected_total %llu\n",
        (unsigned long long)srv.m.sessions_rejected);
    put(&b, "# HELP vmla_chunks_total Chunks generated and delivered.\n# TYPE vmla_chunks_total counter\n"
            "vmla_chunks_total %llu\n",
        (unsigned long long)srv.m.chunks);
    put(&b, "# HELP vmla_frames_dropped_total Frames dropped for slow viewers.\n# TYPE vmla_frames_dropped_total "
            "counter\nvmla_frames_dropped_total %llu\n",
        (unsigned long long)srv.m.frames_dropped);
    put(&b, "# HELP vmla_http_requests_total HTTP requests.\n# TYPE vmla_http_requests_total counter\n"
            "vmla_http_requests_total %llu\n",
        (unsigned long long)srv.m.http_requests);
    put(&b, "# HELP vmla_ws_bad_messages_total Malformed WebSocket messages.\n# TYPE vmla_ws_bad_messages_total "
            "counter\nvmla_ws_bad_messages_total %llu\n",
        (unsigned long long)srv.m.ws_bad_messages);
    put(&b, "# HELP vmla_encoder_queue_depth Chunks waiting for an encoder.\n# TYPE vmla_encoder_queue_depth gauge\n"
            "vmla_encoder_queue_depth %d\n",
        depth);
    if (srv.eng) {
        size_t total = eng_kv_pool_bytes(srv.eng), free_b = eng_kv_pool_free_bytes(srv.eng);
        put(&b, "# HELP vmla_kv_bytes KV pool bytes.\n# TYPE vmla_kv_bytes gauge\nvmla_kv_bytes{kind=\"used\"} %zu\n"
                "vmla_kv_bytes{kind=\"free\"} %zu\n",
            total - free_b, free_b);
        put(&b, "# HELP vmla_kv_bytes_free KV pool bytes free.\n# TYPE vmla_kv_bytes_free gauge\nvmla_kv_bytes_free %zu\n",
            free_b);
        eng_pool_stats ps;
        eng_pool_get_stats(srv.eng, &ps);
        sch_stats ss;
        sch_get_stats(srv.sched, &ss);
        put(&b, "# HELP vmla_kv_page_bytes Bytes of one KV page (a latent frame, all layers).\n"
                "# TYPE vmla_kv_page_bytes gauge\nvmla_kv_page_bytes %zu\n",
            ps.page_bytes);
        put(&b, "# HELP vmla_kv_pages KV pool pages: total, free, reserved for admitted sessions' windows.\n"
                "# TYPE vmla_kv_pages gauge\nvmla_kv_pages{kind=\"total\"} %lld\nvmla_kv_pages{kind=\"free\"} %lld\n"
                "vmla_kv_pages{kind=\"reserved\"} %d\nvmla_kv_pages{kind=\"per_session\"} %d\n",
            (long long)ps.pages, (long long)ps.free_pages, ss.reserved_pages, ps.pages_per_stream);
        put(&b, "# HELP vmla_kv_host_pages Host tier pages (paused sessions' KV).\n# TYPE vmla_kv_host_pages gauge\n"
                "vmla_kv_host_pages{kind=\"total\"} %lld\nvmla_kv_host_pages{kind=\"free\"} %lld\n",
            (long long)ps.host_pages, (long long)ps.free_host_pages);
        put(&b, "# HELP vmla_sched_sessions Scheduler jobs by state.\n# TYPE vmla_sched_sessions gauge\n"
                "vmla_sched_sessions{state=\"queued\"} %d\nvmla_sched_sessions{state=\"running\"} %d\n"
                "vmla_sched_sessions{state=\"paused\"} %d\nvmla_sched_sessions{state=\"offloaded\"} %d\n",
            ss.queued, ss.running, ss.paused, ss.offloaded);
        put(&b, "# HELP vmla_sched_capacity Real-time sessions the measured step times allow (-1: unknown).\n"
                "# TYPE vmla_sched_capacity gauge\nvmla_sched_capacity %d\n",
            ss.capacity);
        put(&b, "# HELP vmla_sched_step_seconds Predicted duration of one engine step by batch size.\n"
                "# TYPE vmla_sched_step_seconds gauge\nvmla_sched_step_seconds{batch=\"1\"} %.6f\n"
                "vmla_sched_step_seconds{batch=\"%d\"} %.6f\n",
            sch_predict(srv.sched, 1), srv.o.max_batch, sch_predict(srv.sched, srv.o.max_batch));
        put(&b, "# HELP vmla_sched_events_total Scheduler events.\n# TYPE vmla_sched_events_total counter\n"
                "vmla_sched_events_total{event=\"admitted\"} %lld\nvmla_sched_events_total{event=\"offload\"} %lld\n"
                "vmla_sched_events_total{event=\"restore\"} %lld\nvmla_sched_events_total{event=\"step\"} %lld\n"
                "vmla_sched_events_total{event=\"deadline_miss\"} %lld\n",
            (long long)ss.admitted, (long long)ss.offloads, (long long)ss.restores, (long long)ss.steps,
            (long long)ss.misses);
    }
    histogram(&b, "vmla_chunk_latency_seconds", "Generation + encoding time of a chunk.", srv.m.lat_bucket,
              srv.m.lat_sum, srv.m.lat_count);
    histogram(&b, "vmla_time_to_first_frame_seconds", "From session creation to its first chunk ready to send.",
              srv.m.ttff_bucket, srv.m.ttff_sum, srv.m.ttff_count);
    put(&b, "# HELP vmla_ready 1 when the model is loaded and sessions are accepted.\n# TYPE vmla_ready gauge\n"
            "vmla_ready %d\n",
        atomic_load(&srv.ready) && !atomic_load(&srv.draining));
    pthread_mutex_unlock(&srv.lock);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
