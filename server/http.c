/* server/http.c — the HTTP side (libmicrohttpd, one internal poll thread): the sessions API,
 * health, metrics and the static web client. Every handler validates its input (proto/ parses
 * the bodies), answers errors as {"error": {"code", "message"}} and never blocks on the engine:
 * requests change session fields under srv.lock and wake the engine thread. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/server.h"

typedef struct {
    char *body;
    size_t len;
    int too_big;
} req_ctx;

static enum MHD_Result send_bytes(struct MHD_Connection *c, int status, const char *type, const void *data,
                                  size_t len, const char *extra_name, const char *extra_value)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (extra_name)
        MHD_add_response_header(r, extra_name, extra_value);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, int status, char *json /* freed */,
                                 const char *hn, const char *hv)
{
    if (!json)
        return send_bytes(c, 500, "application/json", "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}",
                          56, NULL, NULL);
    enum MHD_Result r = send_bytes(c, status, "application/json", json, strlen(json), hn, hv);
    free(json);
    return r;
}

static enum MHD_Result send_error(struct MHD_Connection *c, int status, const char *code, const char *msg,
                                  const char *hn, const char *hv)
{
    return send_json(c, status, proto_json_error(code, msg), hn, hv);
}

static char *dump(json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

/* ---- auth ------------------------------------------------------------------------------------- */

static int key_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned d = (unsigned)(la ^ lb);
    for (size_t i = 0; i < la; i++)
        d |= (unsigned)(a[i] ^ b[i % (lb ? lb : 1)]);
    return d == 0;
}

int srv_key_ok(const char *given);
int srv_key_ok(const char *given)
{
    return !srv.o.api_key || (given && key_equal(given, srv.o.api_key));
}

static int authorized(struct MHD_Connection *c)
{
    if (!srv.o.api_key)
        return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (h && !strncmp(h, "Bearer ", 7))
        return srv_key_ok(h + 7);
    return srv_key_ok(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-API-Key"));
}

/* ---- sessions --------------------------------------------------------------------------------- */

static json_t *session_json(srv_session *s, const char *ws_base)
{
    json_t *j = json_object();
    json_object_set_new(j, "id", json_string(s->id));
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions/%s/stream?format=%s", ws_base, s->id, proto_format_name(s->format));
    json_object_set_new(j, "stream_url", json_string(url));
    json_object_set_new(j, "state", json_string(srv_state_name(s->state)));
    json_object_set_new(j, "prompt", json_string(s->prompt));
    json_object_set_new(j, "seed", json_integer((json_int_t)s->seed));
    json_object_set_new(j, "seconds", s->seconds >= 0 ? json_real(s->seconds) : json_null());
    json_object_set_new(j, "format", json_string(proto_format_name(s->format)));
    json_object_set_new(j, "width", json_integer(srv.width));
    json_object_set_new(j, "height", json_integer(srv.height));
    json_object_set_new(j, "fps", json_integer(srv.fps));
    json_object_set_new(j, "codec", json_string(s->codec));
    json_object_set_new(j, "chunks", json_integer(s->chunks_delivered));
    json_object_set_new(j, "frames", json_integer(s->frames_delivered));
    json_object_set_new(j, "kv_bytes", json_integer((json_int_t)s->kv_bytes));
    json_object_set_new(j, "ttff_ms", s->ttff_ms >= 0 ? json_real(s->ttff_ms) : json_null());
    json_object_set_new(j, "chunk_ms", s->chunks_delivered ? json_real(s->chunk_ms_last) : json_null());
    json_object_set_new(j, "latency_ms", s->chunks_delivered ? json_real(s->latency_ms_last) : json_null());
    json_object_set_new(j, "queue_position", s->state == SESS_QUEUED ? json_integer(srv_queue_position(s)) : json_null());
    json_object_set_new(j, "viewers", json_integer(s->n_viewers));
    json_object_set_new(j, "end_reason", s->end_reason[0] ? json_string(s->end_reason) : json_null());
    json_object_set_new(j, "error", s->error[0] ? json_string(s->error) : json_null());
    json_object_set_new(j, "recording_bytes", json_integer((json_int_t)s->rec_len));
    return j;
}

/* ws://HOST:PORT for this request: --public-ws-url if given, else the host the client used
 * (its Host header, which browsers set to the page's host) with the WebSocket port. */
static void ws_base_for(struct MHD_Connection *c, char *out, size_t n)
{
    if (srv.ws_base[0]) {
        snprintf(out, n, "%s", srv.ws_base);
        return;
    }
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    char host[128] = "";
    if (h && *h && strlen(h) < sizeof host) {
        snprintf(host, sizeof host, "%s", h);
        char *colon = host[0] == '[' ? strstr(host, "]:") : strrchr(host, ':');
        if (colon)
            colon[host[0] == '[' ? 1 : 0] = 0;
        for (char *q = host; *q; q++) /* only host-name characters go into the URL */
            if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '.' ||
                  *q == '-' || *q == '[' || *q == ']' || *q == ':'))
                *q = '_';
    }
    snprintf(out, n, "ws://%s:%d", host[0] ? host : srv.o.host, srv.o.ws_port);
}

static void new_id(char out[SRV_ID_LEN + 1])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) { /* extremely unlikely: time and a counter */
        static uint64_t counter;
        double t = srv_now();
        uint64_t k = ++counter;
        memcpy(b, &t, sizeof t);
        memcpy(b + 8, &k, sizeof k);
    }
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static enum MHD_Result create_session(struct MHD_Connection *c, req_ctx *rq)
{
    char err[256];
    proto_create_req req;
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (ct && strncmp(ct, "application/json", 16))
        return send_error(c, 415, "unsupported_media_type", "the body must be application/json", NULL, NULL);
    if (proto_parse_create(rq->body ? rq->body : "", rq->len, &req, err, sizeof err) != PROTO_OK)
        return send_error(c, 400, "bad_request", err, NULL, NULL);
    if (!atomic_load(&srv.ready) || atomic_load(&srv.draining))
        return send_error(c, 503, "unavailable", "the server is not accepting sessions", "Retry-After", "5");
    hs_stream_t *enc = NULL;
    if (hs_open(&enc, srv.width, srv.height, srv.fps, srv.o.gop, err, sizeof err) != HS_OK)
        return send_error(c, 503, "unavailable", err, "Retry-After", "60");
    srv_session *s = calloc(1, sizeof *s);
    if (!s) {
        hs_close(enc);
        return send_error(c, 500, "internal", "out of memory", NULL, NULL);
    }
    new_id(s->id);
    s->refs = 1;
    s->enc = enc;
    snprintf(s->codec, sizeof s->codec, "%s", hs_codec(enc));
    snprintf(s->prompt, sizeof s->prompt, "%s", req.prompt);
    if (req.has_seed) {
        s->seed = req.seed;
    } else {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint64_t)(srv_now() * 1e6);
        s->seed = r & ((1ULL << 53) - 1);
    }
    s->seconds = req.has_seconds ? req.seconds : -1;
    s->format = req.format ? req.format : PROTO_FMT_ANNEXB;
    s->created = s->queued_at = s->last_activity = srv_now();
    s->ttff_ms = -1;
    s->state = SESS_QUEUED;
    size_t il;
    const uint8_t *init = hs_init_segment(enc, &il);
    proto_media_hdr h = {.type = PROTO_MSG_INIT, .format = PROTO_FMT_FMP4, .payload_len = (uint32_t)il};
    s->init_seg = srv_msg_new(NULL, PROTO_MEDIA_HEADER + il, 1);
    if (!s->init_seg) {
        srv_session_unref(s);
        return send_error(c, 500, "internal", "out of memory", NULL, NULL);
    }
    proto_media_encode_header(s->init_seg->data, &h);
    memcpy(s->init_seg->data + PROTO_MEDIA_HEADER, init, il);
    s->recording = malloc(il);
    if (s->recording) {
        memcpy(s->recording, init, il);
        s->rec_len = s->rec_cap = il;
    }

    pthread_mutex_lock(&srv.lock);
    /* a new session waits only if the scheduler cannot start it now (its room) */
    int queued = srv_count_state(SESS_QUEUED);
    if (queued >= srv.o.max_queue + sch_admit_room(srv.sched)) {
        srv.m.sessions_rejected++;
        pthread_mutex_unlock(&srv.lock);
        srv_session_unref(s);
        snprintf(err, sizeof err, "at capacity: %d sessions already wait for admission (the limit)", queued);
        return send_error(c, 503, "at_capacity", err, "Retry-After", "10");
    }
    if (srv.n_table == srv.cap_table) {
        int cap = srv.cap_table ? 2 * srv.cap_table : 64;
        srv_session **t = realloc(srv.table, sizeof *t * (size_t)cap);
        if (!t) {
            pthread_mutex_unlock(&srv.lock);
            srv_session_unref(s);
            return send_error(c, 500, "internal", "out of memory", NULL, NULL);
        }
        srv.table = t;
        srv.cap_table = cap;
    }
    srv.table[srv.n_table++] = s;
    s->in_table = 1;
    srv.m.sessions_created++;
    char base[200];
    ws_base_for(c, base, sizeof base);
    char *body = dump(session_json(s, base));
    pthread_cond_signal(&srv.wake);
    pthread_mutex_unlock(&srv.lock);
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/sessions/%s", s->id);
    return send_json(c, 201, body, "Location", loc);
}

static enum MHD_Result session_route(struct MHD_Connection *c, const char *method, const char *rest, req_ctx *rq)
{
    /* rest: "{id}" or "{id}/prompt" or "{id}/video.mp4" */
    const char *slash = strchr(rest, '/');
    size_t idlen = slash ? (size_t)(slash - rest) : strlen(rest);
    const char *sub = slash ? slash + 1 : "";
    if (!proto_valid_session_id(rest, idlen))
        return send_error(c, 404, "not_found", "no such session", NULL, NULL);
    char id[SRV_ID_LEN + 1];
    memcpy(id, rest, idlen);
    id[idlen] = 0;
    int is_get = !strcmp(method, "GET"), is_post = !strcmp(method, "POST"), is_del = !strcmp(method, "DELETE");
    if (!*sub && !is_get && !is_del)
        return send_error(c, 405, "method_not_allowed", "use GET or DELETE", "Allow", "GET, DELETE");
    if (!strcmp(sub, "prompt") && !is_post)
        return send_error(c, 405, "method_not_allowed", "use POST", "Allow", "POST");
    if (!strcmp(sub, "video.mp4") && !is_get)
        return send_error(c, 405, "method_not_allowed", "use GET", "Allow", "GET");
    if (*sub && strcmp(sub, "prompt") && strcmp(sub, "video.mp4"))
        return send_error(c, 404, "not_found", "no such route", NULL, NULL);
    char prompt[PROTO_MAX_PROMPT + 1], err[256];
    if (is_post && proto_parse_prompt(rq->body ? rq->body : "", rq->len, prompt, err, sizeof err) != PROTO_OK)
        return send_error(c, 400, "bad_request", err, NULL, NULL);

    pthread_mutex_lock(&srv.lock);
    srv_session *s = srv_session_find(id);
    if (!s) {
        pthread_mutex_unlock(&srv.lock);
        return send_error(c, 404, "not_found", "no such session", NULL, NULL);
    }
    s->last_activity = srv_now();
    if (is_del) {
        srv_session_end(s, SESS_ENDED, "stopped", NULL);
        pthread_mutex_unlock(&srv.lock);
        return send_bytes(c, 204, "application/json", "", 0, NULL, NULL);
    }
    if (is_post) {
        if (s->state == SESS_ENDED || s->state == SESS_FAILED) {
            pthread_mutex_unlock(&srv.lock);
            return send_error(c, 409, "conflict", "the session has ended", NULL, NULL);
        }
        memcpy(s->pending_prompt, prompt, sizeof prompt);
        s->prompt_pending = 1;
        int64_t at = s->chunks_generated + 1;
        srv_msg *m = srv_msg_text(proto_json_prompt_switched(prompt, at));
        if (m) {
            srv_broadcast(s, m);
            srv_msg_unref(m);
        }
        pthread_cond_signal(&srv.wake);
        pthread_mutex_unlock(&srv.lock);
        srv_wake_ws();
        json_t *j = json_object();
        json_object_set_new(j, "applies_at_chunk", json_integer(at));
        return send_json(c, 202, dump(j), NULL, NULL);
    }
    if (!strcmp(sub, "video.mp4")) {
        size_t n = s->rec_len;
        unsigned char *copy = malloc(n ? n : 1);
        if (copy && n)
            memcpy(copy, s->recording, n);
        pthread_mutex_unlock(&srv.lock);
        if (!copy)
            return send_error(c, 500, "internal", "out of memory", NULL, NULL);
        struct MHD_Response *r = MHD_create_response_from_buffer(n, copy, MHD_RESPMEM_MUST_FREE);
        if (!r) {
            free(copy);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "video/mp4");
        MHD_add_response_header(r, "Cache-Control", "no-store");
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    char base[200];
    ws_base_for(c, base, sizeof base);
    char *body = dump(session_json(s, base));
    pthread_mutex_unlock(&srv.lock);
    return send_json(c, 200, body, NULL, NULL);
}

/* ---- static files ----------------------------------------------------------------------------- */

static const char *mime(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (!dot)
        return "application/octet-stream";
    if (!strcmp(dot, ".html"))
        return "text/html; charset=utf-8";
    if (!strcmp(dot, ".js") || !strcmp(dot, ".mjs"))
        return "text/javascript; charset=utf-8";
    if (!strcmp(dot, ".css"))
        return "text/css; charset=utf-8";
    if (!strcmp(dot, ".png"))
        return "image/png";
    if (!strcmp(dot, ".svg"))
        return "image/svg+xml";
    if (!strcmp(dot, ".json"))
        return "application/json";
    return "application/octet-stream";
}

static enum MHD_Result static_file(struct MHD_Connection *c, const char *url)
{
    const char *rel = !strcmp(url, "/") ? "index.html" : url + 1;
    if (!strncmp(rel, "static/", 7)) /* /static/X is X in the web root */
        rel += 7;
    size_t n = strlen(rel);
    int ok = n > 0 && n < 200 && rel[0] != '.' && !strstr(rel, "..") && !strstr(rel, "//");
    for (size_t i = 0; i < n && ok; i++) {
        char ch = rel[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
             ch == '_' || ch == '-' || ch == '/';
    }
    if (!ok)
        return send_error(c, 404, "not_found", "no such file", NULL, NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", srv.o.web_root, rel);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return send_error(c, 404, "not_found", "no such file", NULL, NULL);
    }
    struct MHD_Response *r = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
    if (!r) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", mime(path));
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    enum MHD_Result ret = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ret;
}

/* ---- dispatch --------------------------------------------------------------------------------- */

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
    req_ctx *rq = *con_cls;
    if (!rq) { /* headers only: set up, check the declared size */
        rq = calloc(1, sizeof *rq);
        if (!rq)
            return MHD_NO;
        *con_cls = rq;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > PROTO_MAX_BODY)
            rq->too_big = 1;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!rq->too_big && rq->len + *upload_size <= PROTO_MAX_BODY) {
            char *b = realloc(rq->body, rq->len + *upload_size + 1);
            if (!b)
                return MHD_NO;
            rq->body = b;
            memcpy(rq->body + rq->len, upload_data, *upload_size);
            rq->len += *upload_size;
            rq->body[rq->len] = 0;
        } else {
            rq->too_big = 1;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&srv.lock);
    srv.m.http_requests++;
    pthread_mutex_unlock(&srv.lock);
    if (rq->too_big)
        return send_error(c, 413, "payload_too_large", "the body is larger than 16 KiB", NULL, NULL);
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (!strcmp(url, "/healthz"))
        return is_get ? send_bytes(c, 200, "text/plain", "ok\n", 3, NULL, NULL)
                      : send_error(c, 405, "method_not_allowed", "use GET", "Allow", "GET");
    if (!strcmp(url, "/readyz")) {
        if (!is_get)
            return send_error(c, 405, "method_not_allowed", "use GET", "Allow", "GET");
        int ready = atomic_load(&srv.ready) && !atomic_load(&srv.draining);
        return ready ? send_bytes(c, 200, "text/plain", "ready\n", 6, NULL, NULL)
                     : send_bytes(c, 503, "text/plain", "not ready\n", 10, "Retry-After", "5");
    }
    if (!strcmp(url, "/metrics")) {
        if (!is_get)
            return send_error(c, 405, "method_not_allowed", "use GET", "Allow", "GET");
        char *t = srv_metrics_text();
        if (!t)
            return send_error(c, 500, "internal", "out of memory", NULL, NULL);
        enum MHD_Result r = send_bytes(c, 200, "text/plain; version=0.0.4", t, strlen(t), NULL, NULL);
        free(t);
        return r;
    }
    if (!strncmp(url, "/v1/", 4)) {
        if (!authorized(c))
            return send_error(c, 401, "unauthorized", "a valid API key is required", "WWW-Authenticate", "Bearer");
        if (!strcmp(url, "/v1/sessions")) {
            if (strcmp(method, "POST"))
                return send_error(c, 405, "method_not_allowed", "use POST", "Allow", "POST");
            return create_session(c, rq);
        }
        if (!strncmp(url, "/v1/sessions/", 13))
            return session_route(c, method, url + 13, rq);
        return send_error(c, 404, "not_found", "no such route", NULL, NULL);
    }
    if (!is_get)
        return send_error(c, 405, "method_not_allowed", "use GET", "Allow", "GET");
    return static_file(c, url);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    req_ctx *rq = *con_cls;
    if (rq) {
        free(rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

int srv_http_start(char *err, size_t errlen)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)srv.o.port);
    if (inet_pton(AF_INET, srv.o.host, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "--host %s is not an IPv4 address", srv.o.host);
        return -1;
    }
    srv.mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)srv.o.port, NULL, NULL,
                               handler, NULL, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_SOCK_ADDR,
                               (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT, (unsigned)512,
                               MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)256, MHD_OPTION_CONNECTION_TIMEOUT,
                               (unsigned)30, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
    if (!srv.mhd) {
        snprintf(err, errlen, "cannot listen for HTTP on %s:%d (in use?)", srv.o.host, srv.o.port);
        return -1;
    }
    return 0;
}

void srv_http_stop(void)
{
    if (srv.mhd)
        MHD_stop_daemon(srv.mhd);
    srv.mhd = NULL;
}
