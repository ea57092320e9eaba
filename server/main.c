/* server/main.c — vmla-server: load the model, start the engine thread, the encoder workers, the
 * HTTP and WebSocket listeners; drain gracefully on SIGTERM/SIGINT.
 *
 *   vmla-server --model FILE --preset P [--host 127.0.0.1] [--port 8080] [--ws-port 8081]
 *               [--max-sessions 4] [--max-queue 16] [--api-key K] [--web-root web-client] ...
 * (vmla-server --help lists every option with its default.)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli.h"
#include "engine/sched_exec.h"
#include "engine/weights.h"
#include "server/server.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: vmla-server [options]\n"
            "  --model FILE          safetensors weights (default: models/vmla-tiny.safetensors when --preset tiny)\n"
            "  --preset P            %s (default tiny)\n"
            "  --host ADDR           IPv4 address to listen on (default 127.0.0.1; 0.0.0.0 for all)\n"
            "  --port N              HTTP port (default 8080)\n"
            "  --ws-port N           WebSocket port (default: HTTP port + 1)\n"
            "  --public-ws-url URL   base of stream URLs (default ws://<the request's host>:<ws-port>)\n"
            "  --max-sessions N      sessions resident at once: stream slots (default 4)\n"
            "  --max-queue N         sessions waiting for admission; more get 503 + Retry-After (default 16)\n"
            "  --max-batch N         streams advanced in one engine step (default 4)\n"
            "  --api-key K           require this key on /v1 and streams (or env VMLA_API_KEY)\n"
            "  --viewer-queue N      messages queued per viewer before dropping to a keyframe (default 8)\n"
            "  --encoders N          encoder threads (default 2)\n"
            "  --idle-timeout S      end sessions nobody watches or polls for S seconds (default 60; 0 = never)\n"
            "  --retain S            keep ended sessions (status, video.mp4) for S seconds (default 300)\n"
            "  --max-recording-mb N  video.mp4 cap per session (default 64)\n"
            "  --gop N               frames between regular keyframes (default 24: every 2 chunks)\n"
            "  --lead-chunks X       chunks a stream may run ahead of playback (default 2)\n"
            "  --web-root DIR        the web client (default web-client)\n"
            "  --device cpu|cuda     backend (default cpu)\n"
            "  --drain-timeout S     on SIGTERM, let running sessions go on up to S seconds (default 0)\n"
            "  --kv-pool-mb N        KV pool size (default: --max-sessions full windows)\n"
            "  --kv-pool-fraction F  or that share of the memory left after weights and activations\n"
            "  --host-kv-mb N        page-locked host tier for paused sessions' KV (default 0: none)\n"
            "  --offload-after S     move a paused session's KV to the host tier after S seconds (default 30;\n"
            "                        at once when a waiting session needs its room)\n"
            "  --headroom F          admit while predicted busy time stays within F of real time (default 0.85)\n"
            "  --ttff-target S       deadline of a session's first chunk (default 0.5)\n"
            "  --calibrate 0|1       measure step times at start, before accepting sessions (default 1)\n",
            eng_config_presets());
}

static int parse(int argc, char **argv, srv_options *o, const char **public_ws)
{
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        double d = 0;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!v) {
            fprintf(stderr, "vmla-server: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--preset")) o->preset = v;
        else if (!strcmp(a, "--host")) o->host = v;
        else if (!strcmp(a, "--api-key")) o->api_key = v;
        else if (!strcmp(a, "--web-root")) o->web_root = v;
        else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--public-ws-url")) *public_ws = v;
        else if (!strcmp(a, "--port")) bad = cli_int(v, 1, 65535, &n), o->port = (int)n;
        else if (!strcmp(a, "--ws-port")) bad = cli_int(v, 1, 65535, &n), o->ws_port = (int)n;
        else if (!strcmp(a, "--max-sessions")) bad = cli_int(v, 1, 4096, &n), o->max_sessions = (int)n;
        else if (!strcmp(a, "--max-queue")) bad = cli_int(v, 0, 100000, &n), o->max_queue = (int)n;
        else if (!strcmp(a, "--max-batch")) bad = cli_int(v, 1, 64, &n), o->max_batch = (int)n;
        else if (!strcmp(a, "--viewer-queue")) bad = cli_int(v, 2, 4096, &n), o->viewer_queue = (int)n;
        else if (!strcmp(a, "--encoders")) bad = cli_int(v, 1, 256, &n), o->encoders = (int)n;
        else if (!strcmp(a, "--gop")) bad = cli_int(v, 0, 100000, &n), o->gop = (int)n;
        else if (!strcmp(a, "--max-recording-mb")) bad = cli_int(v, 1, 1 << 20, &n), o->max_recording = (size_t)n << 20;
        else if (!strcmp(a, "--idle-timeout")) bad = cli_double(v, 0, 1e7, &d), o->idle_timeout = d;
        else if (!strcmp(a, "--retain")) bad = cli_double(v, 0, 1e7, &d), o->retain = d;
        else if (!strcmp(a, "--lead-chunks")) bad = cli_double(v, 0.5, 100, &d), o->lead_chunks = d;
        else if (!strcmp(a, "--drain-timeout")) bad = cli_double(v, 0, 3600, &d), o->drain_timeout = d;
        else if (!strcmp(a, "--kv-pool-mb")) bad = cli_double(v, 1, 1 << 24, &d), o->kv_pool_mb = d;
        else if (!strcmp(a, "--kv-pool-fraction")) bad = cli_double(v, 0.001, 0.99, &d), o->kv_pool_fraction = d;
        else if (!strcmp(a, "--host-kv-mb")) bad = cli_double(v, 0, 1 << 24, &d), o->host_kv_mb = d;
        else if (!strcmp(a, "--offload-after")) bad = cli_double(v, 0, 1e7, &d), o->offload_after = d;
        else if (!strcmp(a, "--headroom")) bad = cli_double(v, 0.05, 1, &d), o->headroom = d;
        else if (!strcmp(a, "--ttff-target")) bad = cli_double(v, 0, 3600, &d), o->ttff_target = d;
        else if (!strcmp(a, "--calibrate")) bad = cli_int(v, 0, 1, &n), o->calibrate = (int)n;
        else {
            fprintf(stderr, "vmla-server: unknown option %s (see --help)\n", a);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "vmla-server: bad value for %s: '%s'\n", a, v);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    srv_options *o = &srv.o;
    *o = (srv_options){.preset = "tiny", .host = "127.0.0.1", .web_root = "web-client", .port = 8080,
                       .max_sessions = 4, .max_queue = 16, .viewer_queue = 8, .encoders = 2, .max_batch = 4,
                       .idle_timeout = 60, .retain = 300, .max_recording = (size_t)64 << 20, .gop = 24,
                       .device = "cpu", .lead_chunks = 2, .offload_after = 30, .headroom = 0.85,
                       .ttff_target = 0.5, .calibrate = 1};
    const char *public_ws = NULL;
    if (parse(argc, argv, o, &public_ws))
        return 2;
    if (!o->ws_port)
        o->ws_port = o->port == 65535 ? 65534 : o->port + 1;
    if (o->ws_port == o->port) {
        fprintf(stderr, "vmla-server: --ws-port must differ from --port\n");
        return 2;
    }
    if (!o->api_key && getenv("VMLA_API_KEY") && *getenv("VMLA_API_KEY"))
        o->api_key = getenv("VMLA_API_KEY");
    if (!o->model && !strcmp(o->preset, "tiny"))
        o->model = "models/vmla-tiny.safetensors";
    if (!o->model && !strcmp(o->preset, "tiny-mha"))
        o->model = "models/vmla-tiny-mha.safetensors";
    if (public_ws)
        snprintf(srv.ws_base, sizeof srv.ws_base, "%s", public_ws);
    char err[512];
    eng_config cfg;
    if (eng_config_preset(&cfg, o->preset, err, sizeof err)) {
        fprintf(stderr, "vmla-server: %s\n", err);
        return 2;
    }
    /* the sampler the model was trained for, when its file names one (vmla.sampler.*) */
    if (o->model && eng_config_apply_file(&cfg, o->model, err, sizeof err)) {
        fprintf(stderr, "vmla-server: %s\n", err);
        return 2;
    }
    if (!hs_available()) {
        fprintf(stderr, "vmla-server: built without FFmpeg: cannot stream H.264\n");
        return 1;
    }
    /* signals are taken by sigwait() below: block them before any thread starts */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    pthread_mutex_init(&srv.lock, NULL);
    pthread_cond_init(&srv.wake, NULL);
    int rc = 1;
    srv.be = !strcmp(o->device, "cuda") ? kn_cuda_backend_new(0, err, sizeof err) : kn_cpu_backend_new();
    if (!srv.be) {
        fprintf(stderr, "vmla-server: backend: %s\n", err);
        return 1;
    }
    eng_options eo;
    eng_options_default(&eo);
    eo.weights = o->model;
    eo.weight_seed = 1;
    eo.max_batch = o->max_batch;
    eo.max_streams = o->max_sessions;
    eo.kv_pool_bytes = (size_t)(o->kv_pool_mb * 1048576.0);
    eo.kv_pool_fraction = o->kv_pool_fraction;
    eo.host_kv_bytes = (size_t)(o->host_kv_mb * 1048576.0);
    if (!strcmp(o->device, "cuda"))
        eo.kv_dtype = KN_BF16;
    if (eng_open(&srv.eng, srv.be, &cfg, &eo, err, sizeof err) != ENG_OK) {
        fprintf(stderr, "vmla-server: %s\n", err);
        goto out;
    }
    sch_config sc;
    sch_config_default(&sc);
    sc.max_batch = o->max_batch;
    /* the HTTP layer limits waiting sessions (max_queue beyond what can start at once); sessions it
     * accepted reach the scheduler together, before any is admitted, so its queue takes them all */
    sc.max_queue = o->max_queue + o->max_sessions + 4096;
    sc.lead_chunks = o->lead_chunks;
    sc.headroom = o->headroom;
    sc.ttff_target = o->ttff_target;
    sc.offload_after = o->offload_after;
    eng_sched_config(srv.eng, &sc);
    if (!(srv.sched = sch_new(&sc, err, sizeof err)) ||
        (o->calibrate && eng_sched_calibrate(srv.eng, srv.sched, o->max_batch, srv_now, err, sizeof err))) {
        fprintf(stderr, "vmla-server: %s\n", err);
        goto out;
    }
    {
        eng_pool_stats ps;
        eng_pool_get_stats(srv.eng, &ps);
        sch_stats ss;
        sch_get_stats(srv.sched, &ss);
        printf("vmla-server: KV pool %lld pages of %.2f MiB (%d sessions' windows), host tier %d sessions; "
               "step %.1f ms alone, %.1f ms for %d; capacity %d real-time sessions\n",
               (long long)ps.pages, ps.page_bytes / 1048576.0, (int)(ps.pages / ps.pages_per_stream), ps.host_slots,
               sch_predict(srv.sched, 1) * 1000.0, sch_predict(srv.sched, o->max_batch) * 1000.0, o->max_batch,
               ss.capacity);
    }
    srv.width = eng_video_width(srv.eng);
    srv.height = eng_video_height(srv.eng);
    srv.fps = eng_get_config(srv.eng)->fps;
    srv.frames_per_chunk = eng_frames_per_chunk(srv.eng);
    atomic_store(&srv.running, 1);
    if (srv_enc_start(o->encoders, err, sizeof err) || srv_gen_start(err, sizeof err) ||
        srv_ws_start(err, sizeof err) || srv_http_start(err, sizeof err)) {
        fprintf(stderr, "vmla-server: %s\n", err);
        goto stop;
    }
    atomic_store(&srv.ready, 1);
    printf("vmla-server: %s (%s) %dx%d at %d fps on %s; http://%s:%d/ (WebSocket port %d)%s\n", o->preset,
           o->model ? o->model : "random weights", srv.width, srv.height, srv.fps, kn_backend_name(srv.be), o->host,
           o->port, o->ws_port, o->api_key ? ", API key required" : "");
    fflush(stdout);
    int sig = 0;
    sigwait(&sigs, &sig);
    printf("vmla-server: %s: draining\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    fflush(stdout);
    rc = 0;
    /* drain: no new sessions (readyz 503); running ones may finish within --drain-timeout; a second
     * signal cuts the wait short */
    atomic_store(&srv.draining, 1);
    for (double t0 = srv_now(); srv_now() - t0 < o->drain_timeout;) {
        pthread_mutex_lock(&srv.lock);
        int active = srv_count_state(SESS_RUNNING) + srv_count_state(SESS_PAUSED) + srv_count_state(SESS_QUEUED);
        pthread_mutex_unlock(&srv.lock);
        struct timespec ts = {0, 100 * 1000 * 1000};
        if (!active || sigtimedwait(&sigs, NULL, &ts) > 0)
            break;
    }
stop:
    atomic_store(&srv.draining, 1);
    /* end every session: viewers get `ended` (shutdown) and a close; give them a moment to flush */
    pthread_mutex_lock(&srv.lock);
    for (int i = 0; i < srv.n_table; i++)
        srv_session_end(srv.table[i], SESS_ENDED, "shutdown", NULL);
    pthread_mutex_unlock(&srv.lock);
    for (int k = 0; k < 40; k++) {
        pthread_mutex_lock(&srv.lock);
        int left = srv.all_viewers != NULL;
        pthread_mutex_unlock(&srv.lock);
        if (!left)
            break;
        usleep(50000);
    }
    srv_http_stop();
    atomic_store(&srv.running, 0);
    if (srv.gen_thread)
        srv_gen_stop();
    if (srv.encq)
        srv_enc_stop();
    srv_ws_stop();
    pthread_mutex_lock(&srv.lock);
    for (int i = 0; i < srv.n_table; i++)
        srv_session_unref(srv.table[i]);
    free(srv.table);
    srv.table = NULL;
    srv.n_table = 0;
    pthread_mutex_unlock(&srv.lock);
out:
    sch_free(srv.sched);
    eng_close(srv.eng);
    kn_backend_free(srv.be);
    printf("vmla-server: stopped\n");
    return rc;
}
