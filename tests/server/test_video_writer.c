/* tests/server/test_video_writer.c — checks server/encode/video_writer.c.
 *
 * Writes a few frames of a known pattern (a coloured square moving over an RGB gradient) as Y4M,
 * parses the file back and compares header, frame count and pixel values with BT.601 limited-range
 * values computed here in floating point. Checks that bad arguments fail with the right status and
 * leave no file, that vw_abort leaves no file, and that a half-written file only exists as
 * "<path>.part". When built with VMLA_HAVE_FFMPEG it also writes an MP4 and checks it with the
 * ffprobe/ffmpeg command-line tools (skipped with a message when they are not on PATH).
 * Prints one line per check and "N passed, M failed"; exits 0 only when nothing failed.
 */
#include "server/encode/video_writer.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef VMLA_HAVE_FFMPEG
#include <libavutil/log.h>
#endif

static int n_pass, n_fail;

static void check(int ok, const char *what) {
    printf("%s: %s\n", ok ? "PASS" : "FAIL", what);
    if (ok) n_pass++;
    else n_fail++;
}

static void checkf(int ok, const char *fmt, const char *detail) {
    char line[512];
    snprintf(line, sizeof line, fmt, detail);
    check(ok, line);
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Neither p nor p.part exists. */
static int no_files(const char *p) {
    char part[1100];
    snprintf(part, sizeof part, "%s.part", p);
    return !file_exists(p) && !file_exists(part);
}

/* ---- the test pattern ----------------------------------------------------------------------------- */

#define W 64
#define H 48
#define SQ 16 /* square side */
static const uint8_t SQ_RGB[3] = {220, 30, 60};

static void square_pos(int k, int *x0, int *y0) {
    *x0 = (2 + 2 * k) % (W - SQ);
    *y0 = 8 + (k % 8) * 2;
}

/* Frame k: gradient R = x, G = y, B = 64 (scaled to 0..255), with the square at square_pos(k). */
static void make_frame(uint8_t *rgb, int k) {
    int x0, y0;
    square_pos(k, &x0, &y0);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = rgb + ((size_t)y * W + x) * 3;
            if (x >= x0 && x < x0 + SQ && y >= y0 && y < y0 + SQ) {
                memcpy(p, SQ_RGB, 3);
            } else {
                p[0] = (uint8_t)(x * 255 / (W - 1));
                p[1] = (uint8_t)(y * 255 / (H - 1));
                p[2] = 64;
            }
        }
}

static double ref_y(const uint8_t *p) { return 16 + 219.0 / 255 * (0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]); }
static double ref_u(const uint8_t *p) {
    double yl = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    return 128 + 224.0 / 255 * (p[2] - yl) / (2 * (1 - 0.114));
}
static double ref_v(const uint8_t *p) {
    double yl = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    return 128 + 224.0 / 255 * (p[0] - yl) / (2 * (1 - 0.299));
}

static double dabs(double x) { return x < 0 ? -x : x; }

static uint8_t *read_file(const char *p, size_t *len) {
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    if (fseek(f, 0, SEEK_END) != 0) goto done;
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) goto done;
    buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    *len = (size_t)n;
done:
    fclose(f);
    return buf;
}

/* Runs cmd and reads up to cap bytes of its stdout; returns the byte count or -1. */
static long run_read(const char *cmd, uint8_t *buf, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = 0, r;
    while (n < cap && (r = fread(buf + n, 1, cap - n, p)) > 0) n += r;
    char sink[256];
    while (fread(sink, 1, sizeof sink, p) > 0) n = cap + 1; /* more than expected */
    int rc = pclose(p);
    return rc == 0 ? (long)n : -1;
}

static int have_tool(const char *name) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", name);
    return system(cmd) == 0;
}

/* Decodes all frames of path to rgb24 with the ffmpeg tool; checks the square's centre in frame k
 * and a gradient pixel against the source within tol. Returns 1 when the check ran and passed,
 * 0 when it failed. */
static int check_decoded_colours(const char *path, int nframes, int k, int tol, char *detail,
                                  size_t dlen) {
    size_t fb = (size_t)W * H * 3;
    uint8_t *all = malloc(fb * nframes), *ref = malloc(fb);
    int ok = 0;
    if (!all || !ref) goto done;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "ffmpeg -v error -i '%s' -f rawvideo -pix_fmt rgb24 -", path);
    long n = run_read(cmd, all, fb * nframes);
    if (n != (long)(fb * nframes)) {
        snprintf(detail, dlen, "ffmpeg gave %ld bytes, want %zu", n, fb * nframes);
        goto done;
    }
    make_frame(ref, k);
    int x0, y0;
    square_pos(k, &x0, &y0);
    const int px[2][2] = {{x0 + SQ / 2, y0 + SQ / 2}, {W - 3, 2}}; /* square centre, gradient */
    ok = 1;
    detail[0] = '\0';
    for (int i = 0; i < 2; i++) {
        size_t off = ((size_t)px[i][1] * W + px[i][0]) * 3;
        const uint8_t *got = all + fb * k + off, *want = ref + off;
        for (int c = 0; c < 3; c++)
            if (abs((int)got[c] - (int)want[c]) > tol) ok = 0;
        size_t l = strlen(detail);
        snprintf(detail + l, dlen - l, "%s(%d,%d) got %d,%d,%d want %d,%d,%d", i ? "; " : "",
                 px[i][0], px[i][1], got[0], got[1], got[2], want[0], want[1], want[2]);
    }
done:
    free(all);
    free(ref);
    return ok;
}

/* ---- tests ------------------------------------------------------------------------------------------ */

static void test_basics(void) {
    int distinct = 1;
    for (int a = VW_OK; a <= VW_ERR_NOMEM; a++)
        for (int b = a + 1; b <= VW_ERR_NOMEM; b++)
            if (strcmp(vw_strerror((vw_status)a), vw_strerror((vw_status)b)) == 0) distinct = 0;
    check(distinct && vw_strerror((vw_status)99) != NULL, "vw_strerror gives a distinct text per status");
#ifdef VMLA_HAVE_FFMPEG
    check(vw_mp4_available() == 1, "vw_mp4_available() == 1 with FFmpeg");
#else
    check(vw_mp4_available() == 0, "vw_mp4_available() == 0 without FFmpeg");
#endif
    check(vw_close(NULL) == VW_ERR_ARG, "vw_close(NULL) is VW_ERR_ARG");
    vw_abort(NULL);
    check(1, "vw_abort(NULL) is a no-op");
}

static void test_y4m(const char *dir) {
    enum { NF = 5 };
    char path[1024], part[1100];
    snprintf(path, sizeof path, "%s/pattern.y4m", dir);
    snprintf(part, sizeof part, "%s.part", path);
    size_t fb = (size_t)W * H * 3;
    uint8_t *rgb = malloc(fb * NF);
    if (!rgb) { check(0, "y4m: allocate frames"); return; }
    for (int k = 0; k < NF; k++) make_frame(rgb + fb * k, k);

    char err[256];
    vw_writer_t *w = NULL;
    vw_status s = vw_open(&w, path, VW_FORMAT_AUTO, W, H, 24, 1, err, sizeof err);
    checkf(s == VW_OK && w, "y4m: vw_open %s", s == VW_OK ? "ok" : err);
    if (!w) { free(rgb); return; }
    check(vw_write_rgb(w, rgb, 2) == VW_OK, "y4m: write 2 frames");
    check(vw_write_rgb(w, rgb + 2 * fb, NF - 2) == VW_OK, "y4m: write 3 more frames");
    check(vw_write_rgb(w, NULL, 0) == VW_OK, "y4m: writing 0 frames is a no-op");
    check(vw_write_rgb(w, rgb, -1) == VW_ERR_ARG && vw_error(w)[0], "y4m: negative count is VW_ERR_ARG");
    check(vw_write_rgb(w, NULL, 1) == VW_ERR_ARG, "y4m: NULL data is VW_ERR_ARG");
    check(file_exists(part) && !file_exists(path), "y4m: before close only <path>.part exists");
    s = vw_finish(w);
    checkf(s == VW_OK, "y4m: vw_finish %s", s == VW_OK ? "ok" : vw_error(w));
    check(vw_write_rgb(w, rgb, 1) == VW_ERR_ARG, "y4m: write after finish is VW_ERR_ARG");
    check(vw_close(w) == VW_OK, "y4m: vw_close after finish returns the finish status");
    check(file_exists(path) && !file_exists(part), "y4m: after close <path> exists, .part is gone");

    size_t len = 0;
    uint8_t *buf = read_file(path, &len);
    check(buf != NULL, "y4m: read back");
    if (!buf) { free(rgb); return; }
    char want_hdr[128];
    int hl = snprintf(want_hdr, sizeof want_hdr, "YUV4MPEG2 W%d H%d F24:1 Ip A1:1 C420jpeg\n", W, H);
    check(len >= (size_t)hl && memcmp(buf, want_hdr, (size_t)hl) == 0, "y4m: header fields");

    /* Walk the frames: "FRAME" [params] "\n" then w*h*3/2 bytes. */
    size_t ysz = (size_t)W * H, csz = (size_t)(W / 2) * (H / 2), fsz = ysz + 2 * csz;
    size_t off = (size_t)hl;
    int nframes = 0, ok_struct = 1;
    const uint8_t *frames[NF + 1] = {0};
    while (off < len) {
        if (len - off < 6 || memcmp(buf + off, "FRAME", 5) != 0) { ok_struct = 0; break; }
        const uint8_t *nl = memchr(buf + off, '\n', len - off);
        if (!nl) { ok_struct = 0; break; }
        off = (size_t)(nl - buf) + 1;
        if (len - off < fsz) { ok_struct = 0; break; }
        if (nframes <= NF) frames[nframes] = buf + off;
        nframes++;
        off += fsz;
    }
    char d[256];
    snprintf(d, sizeof d, "%d frames, file %zu bytes", nframes, len);
    checkf(ok_struct && nframes == NF && len == (size_t)hl + NF * (6 + fsz), "y4m: frame count (%s)", d);

    if (ok_struct && nframes == NF) {
        int k = 3, x0, y0;
        square_pos(k, &x0, &y0);
        const uint8_t *f = frames[k], *src = rgb + fb * k;
        int cx = x0 + SQ / 2, cy = y0 + SQ / 2; /* even: the 2x2 chroma block lies in the square */
        const uint8_t *sp = src + ((size_t)cy * W + cx) * 3;
        int gy = 5, gx = 41; /* a gradient pixel outside the square in every frame */
        const uint8_t *gp = src + ((size_t)gy * W + gx) * 3;
        int yv = f[(size_t)cy * W + cx], uv = f[ysz + (size_t)(cy / 2) * (W / 2) + cx / 2],
            vv = f[ysz + csz + (size_t)(cy / 2) * (W / 2) + cx / 2], yg = f[(size_t)gy * W + gx];
        snprintf(d, sizeof d, "Y %d want %.1f; U %d want %.1f; V %d want %.1f", yv, ref_y(sp), uv,
                 ref_u(sp), vv, ref_v(sp));
        checkf(dabs(yv - ref_y(sp)) <= 2 && dabs(uv - ref_u(sp)) <= 2 && dabs(vv - ref_v(sp)) <= 2,
               "y4m: square pixel in frame 3 (%s)", d);
        snprintf(d, sizeof d, "Y %d want %.1f", yg, ref_y(gp));
        checkf(dabs(yg - ref_y(gp)) <= 2, "y4m: gradient pixel (%s)", d);
        /* The square moved: a pixel near its far corner in frame 3 is still gradient in frame 0. */
        int mx = x0 + SQ - 2, my = y0 + SQ - 2;
        const uint8_t *p0 = rgb + ((size_t)my * W + mx) * 3, *p3 = src + ((size_t)my * W + mx) * 3;
        int y0v = frames[0][(size_t)my * W + mx], y3v = f[(size_t)my * W + mx];
        snprintf(d, sizeof d, "(%d,%d): frame 0 Y %d want %.1f, frame 3 Y %d want %.1f", mx, my,
                 y0v, ref_y(p0), y3v, ref_y(p3));
        checkf(memcmp(p0, p3, 3) != 0 && dabs(y0v - ref_y(p0)) <= 2 && dabs(y3v - ref_y(p3)) <= 2,
               "y4m: the square moves between frames %s", d);
    }
    free(buf);

    if (have_tool("ffmpeg")) {
        char detail[256];
        int ok = check_decoded_colours(path, NF, 3, 6, detail, sizeof detail);
        checkf(ok, "y4m: ffmpeg decodes the colours back (%s)", detail);
    } else {
        printf("SKIP: y4m: ffmpeg not on PATH, colour round trip not checked\n");
    }
    free(rgb);
}

static void expect_open_fail(const char *dir, const char *name, vw_format fmt, int w_, int h_,
                             int fn, int fd, vw_status want, const char *what) {
    char path[1024], err[256] = "untouched";
    snprintf(path, sizeof path, "%s/%s", dir, name);
    vw_writer_t *w = (vw_writer_t *)&path; /* must be reset to NULL */
    vw_status s = vw_open(&w, path, fmt, w_, h_, fn, fd, err, sizeof err);
    char d[400];
    snprintf(d, sizeof d, "%s -> %s: \"%s\"", what, vw_strerror(s), err);
    checkf(s == want && w == NULL && err[0] && strcmp(err, "untouched") && no_files(path),
           "bad args: %s", d);
    if (s == VW_OK && w) vw_abort(w);
}

static void test_bad_args(const char *dir) {
    expect_open_fail(dir, "odd_w.y4m", VW_FORMAT_AUTO, 63, 48, 24, 1, VW_ERR_ARG, "odd width");
    expect_open_fail(dir, "odd_h.y4m", VW_FORMAT_AUTO, 64, 47, 24, 1, VW_ERR_ARG, "odd height");
    expect_open_fail(dir, "tiny.y4m", VW_FORMAT_AUTO, 0, 48, 24, 1, VW_ERR_ARG, "zero width");
    expect_open_fail(dir, "huge.y4m", VW_FORMAT_AUTO, 8194, 48, 24, 1, VW_ERR_ARG, "width 8194");
    expect_open_fail(dir, "fps0.y4m", VW_FORMAT_AUTO, 64, 48, 0, 1, VW_ERR_ARG, "zero fps");
    expect_open_fail(dir, "den0.y4m", VW_FORMAT_AUTO, 64, 48, 24, 0, VW_ERR_ARG, "zero fps denominator");
    expect_open_fail(dir, "negfps.y4m", VW_FORMAT_AUTO, 64, 48, -24, 1, VW_ERR_ARG, "negative fps");
    expect_open_fail(dir, "clip.avi", VW_FORMAT_AUTO, 64, 48, 24, 1, VW_ERR_ARG, "unknown extension");
    expect_open_fail(dir, "noext", VW_FORMAT_AUTO, 64, 48, 24, 1, VW_ERR_ARG, "no extension");
    expect_open_fail(dir, "bad.y4m", (vw_format)42, 64, 48, 24, 1, VW_ERR_ARG, "bad format value");
    expect_open_fail(dir, "no/such/dir/out.y4m", VW_FORMAT_AUTO, 64, 48, 24, 1, VW_ERR_IO,
                     "unwritable directory (y4m)");
    expect_open_fail(dir, "odd.mp4", VW_FORMAT_AUTO, 64, 47, 24, 1, VW_ERR_ARG, "odd height (mp4)");
#ifdef VMLA_HAVE_FFMPEG
    expect_open_fail(dir, "no/such/dir/out.mp4", VW_FORMAT_AUTO, 64, 48, 24, 1, VW_ERR_IO,
                     "unwritable directory (mp4)");
#endif

    char err[256] = "";
    vw_writer_t *w = NULL;
    check(vw_open(&w, NULL, VW_FORMAT_Y4M, 64, 48, 24, 1, err, sizeof err) == VW_ERR_ARG && !w,
          "bad args: NULL path is VW_ERR_ARG");
    check(vw_open(NULL, "x.y4m", VW_FORMAT_Y4M, 64, 48, 24, 1, NULL, 0) == VW_ERR_ARG,
          "bad args: NULL out (and NULL err) is VW_ERR_ARG");

    /* An explicit format ignores the extension; upper-case extensions are recognised. */
    char path[1024];
    snprintf(path, sizeof path, "%s/explicit.bin", dir);
    vw_status s = vw_open(&w, path, VW_FORMAT_Y4M, 2, 2, 30000, 1001, err, sizeof err);
    check(s == VW_OK && w, "explicit VW_FORMAT_Y4M with a .bin name opens");
    if (w) vw_abort(w);
    check(no_files(path), "vw_abort right after open leaves no file");
    snprintf(path, sizeof path, "%s/UPPER.Y4M", dir);
    w = NULL;
    s = vw_open(&w, path, VW_FORMAT_AUTO, 2, 2, 1, 1, err, sizeof err);
    check(s == VW_OK && w, "AUTO recognises .Y4M");
    if (w) vw_abort(w);
}

static void test_abort(const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/aborted.y4m", dir);
    uint8_t *rgb = malloc((size_t)W * H * 3);
    if (!rgb) { check(0, "abort: allocate"); return; }
    make_frame(rgb, 0);
    char err[256];
    vw_writer_t *w = NULL;
    vw_status s = vw_open(&w, path, VW_FORMAT_AUTO, W, H, 24, 1, err, sizeof err);
    check(s == VW_OK && vw_write_rgb(w, rgb, 1) == VW_OK && vw_write_rgb(w, rgb, 1) == VW_OK,
          "abort: open and write 2 frames");
    vw_abort(w);
    check(no_files(path), "abort: vw_abort leaves neither <path> nor <path>.part");
    free(rgb);
}

/* Fault injection: a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with
 * EFBIG) makes the disk "full" part-way through; the writer must report VW_ERR_IO with a message
 * from vw_finish and leave no file behind. */
static void test_write_failure(const char *dir, const char *name, int nframes, rlim_t limit) {
    char path[1024], what[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t fb = (size_t)W * H * 3;
    uint8_t *rgb = malloc(fb);
    struct rlimit old;
    if (!rgb || getrlimit(RLIMIT_FSIZE, &old) != 0) {
        free(rgb);
        check(0, "write failure: setup");
        return;
    }
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    char err[256] = "";
    vw_writer_t *w = NULL;
    vw_status s = vw_open(&w, path, VW_FORMAT_AUTO, W, H, 24, 1, err, sizeof err);
    vw_status ws = VW_OK, fs = VW_OK;
    char msg[256] = "";
    if (s == VW_OK) {
        struct rlimit lim = old;
        lim.rlim_cur = limit;
        setrlimit(RLIMIT_FSIZE, &lim);
        for (int k = 0; k < nframes && ws == VW_OK; k++) {
            make_frame(rgb, k);
            ws = vw_write_rgb(w, rgb, 1);
        }
        fs = vw_finish(w);
        snprintf(msg, sizeof msg, "%s", vw_error(w));
        setrlimit(RLIMIT_FSIZE, &old);
        vw_close(w);
    }
    signal(SIGXFSZ, old_handler);
    snprintf(what, sizeof what, "write failure: %s with a %lu-byte limit -> write %s, finish %s: \"%s\"",
             name, (unsigned long)limit, vw_strerror(ws), vw_strerror(fs), msg);
    check(s == VW_OK && fs == VW_ERR_IO && (ws == VW_OK || ws == VW_ERR_IO) && msg[0] && no_files(path),
          what);
    free(rgb);
}

#ifdef VMLA_HAVE_FFMPEG
static void test_mp4(const char *dir) {
    enum { NF = 24 };
    char path[1024];
    snprintf(path, sizeof path, "%s/pattern.mp4", dir);
    size_t fb = (size_t)W * H * 3;
    uint8_t *rgb = malloc(fb * NF);
    if (!rgb) { check(0, "mp4: allocate frames"); return; }
    for (int k = 0; k < NF; k++) make_frame(rgb + fb * k, k);

    char err[256];
    vw_writer_t *w = NULL;
    vw_status s = vw_open(&w, path, VW_FORMAT_AUTO, W, H, 24, 1, err, sizeof err);
    checkf(s == VW_OK && w, "mp4: vw_open %s", s == VW_OK ? "ok" : err);
    if (!w) { free(rgb); return; }
    int ok = 1;
    for (int k = 0; k < NF && ok; k += 6) ok = vw_write_rgb(w, rgb + fb * k, 6) == VW_OK;
    checkf(ok, "mp4: write 24 frames %s", ok ? "ok" : vw_error(w));
    s = vw_close(w);
    check(s == VW_OK, "mp4: vw_close");
    char part[1100];
    snprintf(part, sizeof part, "%s.part", path);
    check(file_exists(path) && !file_exists(part), "mp4: after close <path> exists, .part is gone");

    if (!have_tool("ffprobe")) {
        printf("SKIP: mp4: ffprobe not on PATH, stream not checked\n");
    } else {
        char cmd[1300], out[256] = "";
        snprintf(cmd, sizeof cmd,
                 "ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                 "stream=codec_name,width,height,nb_read_frames -of csv=p=0 '%s'", path);
        long n = run_read(cmd, (uint8_t *)out, sizeof out - 1);
        if (n >= 0) out[n] = '\0';
        while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r')) out[--n] = '\0';
        checkf(strcmp(out, "h264,64,48,24") == 0, "mp4: ffprobe reports h264,64,48,24 (got \"%s\")", out);
    }
    if (!have_tool("ffmpeg")) {
        printf("SKIP: mp4: ffmpeg not on PATH, colours not checked\n");
    } else {
        char detail[256];
        ok = check_decoded_colours(path, NF, 10, 30, detail, sizeof detail);
        checkf(ok, "mp4: decoded frame 10 has the square's colour within 30 (%s)", detail);
    }

    /* An aborted MP4 leaves nothing. */
    snprintf(path, sizeof path, "%s/aborted.mp4", dir);
    w = NULL;
    s = vw_open(&w, path, VW_FORMAT_MP4, W, H, 30000, 1001, err, sizeof err);
    check(s == VW_OK && vw_write_rgb(w, rgb, 3) == VW_OK, "mp4: open and write 3 frames at 29.97 fps");
    vw_abort(w);
    check(no_files(path), "mp4: vw_abort leaves no file");
    free(rgb);
}
#else
static void test_mp4_missing(const char *dir) {
    char path[1024], err[256] = "";
    snprintf(path, sizeof path, "%s/nolib.mp4", dir);
    vw_writer_t *w = NULL;
    vw_status s = vw_open(&w, path, VW_FORMAT_AUTO, W, H, 24, 1, err, sizeof err);
    checkf(s == VW_ERR_UNSUPPORTED && !w && strstr(err, ".y4m") && strstr(err, "FFmpeg") && no_files(path),
           "mp4 without FFmpeg: VW_ERR_UNSUPPORTED, no file (\"%s\")", err);
    s = vw_open(&w, path, VW_FORMAT_MP4, W, H, 24, 1, err, sizeof err);
    check(s == VW_ERR_UNSUPPORTED && !w, "explicit VW_FORMAT_MP4 without FFmpeg: VW_ERR_UNSUPPORTED");
}
#endif

int main(void) {
#ifdef VMLA_HAVE_FFMPEG
    av_log_set_level(AV_LOG_WARNING); /* quiet libx264's banner */
#endif
    char dir[] = "/tmp/vmla_test_vw_XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_basics();
    test_y4m(dir);
    test_bad_args(dir);
    test_abort(dir);
    test_write_failure(dir, "full.y4m", 10, 20000);
#ifdef VMLA_HAVE_FFMPEG
    test_write_failure(dir, "full.mp4", 24, 2000);
#endif
#ifdef VMLA_HAVE_FFMPEG
    test_mp4(dir);
#else
    test_mp4_missing(dir);
#endif
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", dir);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail == 0 ? 0 : 1;
}
