/* server/encode/video_writer.c — Y4M and MP4 (H.264) output for generated frames.
 *
 * The writer has one life cycle for both containers: vw_open validates the arguments and creates
 * "<path>.part", vw_write_rgb converts and appends frames, vw_finish completes the container and
 * renames the .part file to its final name, vw_abort (or any failure) deletes it. The Y4M path is
 * plain stdio plus the RGB -> I420 conversion below; the MP4 path (VMLA_HAVE_FFMPEG) is
 * swscale (RGB24 -> YUV420P) -> libavcodec/libx264 -> libavformat's mp4 muxer. All buffers are
 * allocated in vw_open, none per frame.
 */
#include "server/encode/video_writer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef VMLA_HAVE_FFMPEG
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libavutil/error.h>
#include <libavutil/frame.h>
#include <libavutil/log.h>
#include <libavutil/mem.h>
#include <libavutil/pixfmt.h>
#include <libswscale/swscale.h>
#endif

#define VW_ERRLEN 256
#define VW_SWS_PAD 64 /* bytes swscale's SIMD readers may touch past the end of the last row */
#define VW_PART_SUFFIX ".part"

typedef enum { VW_STATE_OPEN = 0, VW_STATE_FINISHED } vw_state;

struct vw_writer {
    vw_format fmt;   /* VW_FORMAT_Y4M or VW_FORMAT_MP4, never AUTO */
    int width, height, fps_num, fps_den;
    char *path;      /* final name, owned */
    char *part_path; /* path + ".part", owned */
    vw_state state;
    int part_created;        /* part_path was created by us (and is ours to remove) */
    vw_status failed;        /* sticky I/O or codec error, VW_OK while healthy */
    vw_status finish_status; /* what vw_finish returned, once state == VW_STATE_FINISHED */
    int64_t frames;          /* frames accepted so far */
    char err[VW_ERRLEN];

    /* Y4M */
    FILE *fp;
    uint8_t *yuv; /* one I420 frame: Y (w*h), U (w/2*h/2), V (w/2*h/2) */

#ifdef VMLA_HAVE_FFMPEG
    /* MP4 */
    AVFormatContext *oc;
    AVCodecContext *cc;
    AVStream *st;
    struct SwsContext *sws;
    AVFrame *frame; /* the YUV420P frame handed to the encoder */
    uint8_t *rgb_pad; /* (h, w, 3) copy of the input plus VW_SWS_PAD bytes, see vw_mp4_write */
    AVPacket *pkt;
#endif
};

/* ---- small helpers ---------------------------------------------------------------------------- */

const char *vw_strerror(vw_status s) {
    switch (s) {
    case VW_OK: return "ok";
    case VW_ERR_ARG: return "invalid argument";
    case VW_ERR_IO: return "I/O error";
    case VW_ERR_UNSUPPORTED: return "unsupported format";
    case VW_ERR_CODEC: return "encoder or muxer error";
    case VW_ERR_NOMEM: return "out of memory";
    }
    return "unknown status";
}

int vw_mp4_available(void) {
#ifdef VMLA_HAVE_FFMPEG
    return 1;
#else
    return 0;
#endif
}

const char *vw_error(const vw_writer_t *w) { return w ? w->err : "null writer"; }

static vw_status vw_fail(vw_writer_t *w, vw_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
    return s;
}

/* ASCII case-insensitive "does s end with suffix". */
static int vw_ends_with(const char *s, const char *suffix) {
    size_t ls = strlen(s), lx = strlen(suffix);
    if (lx > ls) return 0;
    s += ls - lx;
    for (size_t i = 0; i < lx; i++) {
        int a = (unsigned char)s[i], b = (unsigned char)suffix[i];
        if (a >= 'A' && a <= 'Z') a += 'a' - 'A';
        if (b >= 'A' && b <= 'Z') b += 'a' - 'A';
        if (a != b) return 0;
    }
    return 1;
}

/* ---- RGB24 -> I420, BT.601 limited range -----------------------------------------------------------
 *
 * With R, G, B in 0..255 and Kr = 0.299, Kb = 0.114, Kg = 1 - Kr - Kb:
 *   Y  = 16  + 219/255 * (Kr*R + Kg*G + Kb*B)
 *   Cb = 128 + 224/255 * (B - Y') / (2*(1 - Kb))     where Y' = Kr*R + Kg*G + Kb*B
 *   Cr = 128 + 224/255 * (R - Y') / (2*(1 - Kr))
 * The coefficients below are those factors times 2^16, rounded (the Cb row nudged by one so that it
 * sums to exactly 0 and greys map to 128). Chroma is computed from the sum of the 2x2 block's
 * R, G, B (4x the average), hence the shift by 18 instead of 16. The bias terms keep every
 * intermediate non-negative (no right shift of a negative number) and round to nearest; results
 * already lie in 16..235 / 16..240, the clamp only guards the arithmetic. */
#define VW_YR 16829
#define VW_YG 33039
#define VW_YB 6416
#define VW_UR (-9714)
#define VW_UG (-19070)
#define VW_UB 28784
#define VW_VR 28784
#define VW_VG (-24103)
#define VW_VB (-4681)

static uint8_t vw_clamp_u8(int32_t v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* rgb: (h, w, 3) packed; yuv: I420, w*h*3/2 bytes; w and h even. */
static void vw_rgb_to_i420(const uint8_t *rgb, int w, int h, uint8_t *yuv) {
    uint8_t *yp = yuv;                             /* (h, w) */
    uint8_t *up = yuv + (size_t)w * h;             /* (h/2, w/2) */
    uint8_t *vp = up + (size_t)(w / 2) * (h / 2);  /* (h/2, w/2) */
    const size_t stride = (size_t)w * 3;
    for (int y = 0; y < h; y += 2) {
        const uint8_t *r0 = rgb + (size_t)y * stride, *r1 = r0 + stride;
        uint8_t *y0 = yp + (size_t)y * w, *y1 = y0 + w;
        uint8_t *u = up + (size_t)(y / 2) * (w / 2), *v = vp + (size_t)(y / 2) * (w / 2);
        for (int x = 0; x < w; x += 2) {
            const uint8_t *p[4] = {r0 + 3 * x, r0 + 3 * x + 3, r1 + 3 * x, r1 + 3 * x + 3};
            uint8_t *yo[4] = {y0 + x, y0 + x + 1, y1 + x, y1 + x + 1};
            int32_t rs = 0, gs = 0, bs = 0;
            for (int k = 0; k < 4; k++) {
                int32_t r = p[k][0], g = p[k][1], b = p[k][2];
                rs += r; gs += g; bs += b;
                *yo[k] = vw_clamp_u8((VW_YR * r + VW_YG * g + VW_YB * b + (16 << 16) + (1 << 15)) >> 16);
            }
            u[x / 2] = vw_clamp_u8((VW_UR * rs + VW_UG * gs + VW_UB * bs + (128 << 18) + (1 << 17)) >> 18);
            v[x / 2] = vw_clamp_u8((VW_VR * rs + VW_VG * gs + VW_VB * bs + (128 << 18) + (1 << 17)) >> 18);
        }
    }
}

/* ---- Y4M ------------------------------------------------------------------------------------------ */

static vw_status vw_y4m_open(vw_writer_t *w) {
    size_t n = (size_t)w->width * w->height * 3 / 2;
    w->yuv = malloc(n);
    if (!w->yuv) return vw_fail(w, VW_ERR_NOMEM, "cannot allocate a %zu-byte frame buffer", n);
    w->fp = fopen(w->part_path, "wb");
    if (!w->fp) return vw_fail(w, VW_ERR_IO, "cannot create %s: %s", w->part_path, strerror(errno));
    w->part_created = 1;
    if (fprintf(w->fp, "YUV4MPEG2 W%d H%d F%d:%d Ip A1:1 C420jpeg\n", w->width, w->height,
                w->fps_num, w->fps_den) < 0)
        return vw_fail(w, VW_ERR_IO, "cannot write the y4m header to %s: %s", w->part_path,
                       strerror(errno));
    return VW_OK;
}

static vw_status vw_y4m_write(vw_writer_t *w, const uint8_t *rgb) {
    size_t n = (size_t)w->width * w->height * 3 / 2;
    vw_rgb_to_i420(rgb, w->width, w->height, w->yuv);
    if (fwrite("FRAME\n", 1, 6, w->fp) != 6 || fwrite(w->yuv, 1, n, w->fp) != n)
        return vw_fail(w, VW_ERR_IO, "cannot write frame %lld to %s: %s", (long long)w->frames,
                       w->part_path, strerror(errno));
    return VW_OK;
}

static vw_status vw_y4m_finish(vw_writer_t *w) {
    FILE *fp = w->fp;
    w->fp = NULL;
    int bad = fflush(fp) != 0 || ferror(fp);
    int e = errno;
    if (fclose(fp) != 0 && !bad) { bad = 1; e = errno; }
    if (bad) return vw_fail(w, VW_ERR_IO, "cannot finish %s: %s", w->part_path, strerror(e));
    return VW_OK;
}

/* ---- MP4 through FFmpeg ------------------------------------------------------------------------------ */

#ifdef VMLA_HAVE_FFMPEG

static vw_status vw_av_fail(vw_writer_t *w, vw_status s, const char *what, int averr) {
    char buf[AV_ERROR_MAX_STRING_SIZE];
    if (av_strerror(averr, buf, sizeof buf) < 0) snprintf(buf, sizeof buf, "error %d", averr);
    if (averr == AVERROR(ENOMEM)) s = VW_ERR_NOMEM;
    return vw_fail(w, s, "%s: %s", what, buf);
}

static vw_status vw_mp4_open(vw_writer_t *w) {
    AVDictionary *opts = NULL;
    vw_status s = VW_OK;
    int ret;

    const AVCodec *codec = avcodec_find_encoder_by_name("libx264");
    if (!codec)
        return vw_fail(w, VW_ERR_UNSUPPORTED,
                       "this FFmpeg has no libx264 encoder; use a .y4m file or an FFmpeg built "
                       "with libx264");

    ret = avformat_alloc_output_context2(&w->oc, NULL, "mp4", w->part_path);
    if (ret < 0 || !w->oc) return vw_av_fail(w, VW_ERR_UNSUPPORTED, "mp4 muxer", ret);
    w->st = avformat_new_stream(w->oc, NULL);
    if (!w->st) return vw_fail(w, VW_ERR_NOMEM, "cannot add a video stream");
    w->cc = avcodec_alloc_context3(codec);
    if (!w->cc) return vw_fail(w, VW_ERR_NOMEM, "cannot allocate the encoder context");

    AVCodecContext *cc = w->cc;
    cc->width = w->width;
    cc->height = w->height;
    cc->pix_fmt = AV_PIX_FMT_YUV420P;
    cc->time_base = (AVRational){w->fps_den, w->fps_num}; /* one tick per frame */
    cc->framerate = (AVRational){w->fps_num, w->fps_den};
    cc->sample_aspect_ratio = (AVRational){1, 1};
    /* A keyframe about every two seconds (the first frame is always one), so a player can seek. */
    int64_t gop = (2 * (int64_t)w->fps_num + w->fps_den - 1) / w->fps_den;
    cc->gop_size = (int)(gop < 1 ? 1 : gop > 600 ? 600 : gop);
    cc->max_b_frames = 0;
    cc->color_range = AVCOL_RANGE_MPEG;     /* limited range, as swscale writes it */
    cc->colorspace = AVCOL_SPC_SMPTE170M;   /* BT.601 matrix, as swscale uses by default */
    if (w->oc->oformat->flags & AVFMT_GLOBALHEADER) cc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;

    if ((ret = av_dict_set(&opts, "preset", "veryfast", 0)) < 0 ||
        (ret = av_dict_set(&opts, "tune", "zerolatency", 0)) < 0 ||
        (ret = av_dict_set(&opts, "crf", "20", 0)) < 0) {
        s = vw_av_fail(w, VW_ERR_NOMEM, "encoder options", ret);
        goto cleanup;
    }
    /* FFmpeg's own log lines (x264's statistics) would land on the caller's stderr: keep errors
     * only; every failure reaches the caller as a message anyway */
    if (av_log_get_level() > AV_LOG_ERROR)
        av_log_set_level(AV_LOG_ERROR);
    ret = avcodec_open2(cc, codec, &opts);
    if (ret < 0) {
        s = vw_av_fail(w, VW_ERR_CODEC, "cannot open the libx264 encoder", ret);
        goto cleanup;
    }
    av_dict_free(&opts);

    ret = avcodec_parameters_from_context(w->st->codecpar, cc);
    if (ret < 0) {
        s = vw_av_fail(w, VW_ERR_CODEC, "cannot copy the encoder parameters", ret);
        goto cleanup;
    }
    w->st->time_base = cc->time_base;
    w->st->avg_frame_rate = cc->framerate;

    w->frame = av_frame_alloc();
    w->pkt = av_packet_alloc();
    if (!w->frame || !w->pkt) {
        s = vw_fail(w, VW_ERR_NOMEM, "cannot allocate a frame or packet");
        goto cleanup;
    }
    w->frame->format = cc->pix_fmt;
    w->frame->width = cc->width;
    w->frame->height = cc->height;
    ret = av_frame_get_buffer(w->frame, 0);
    if (ret < 0) {
        s = vw_av_fail(w, VW_ERR_NOMEM, "cannot allocate the frame buffer", ret);
        goto cleanup;
    }

    w->rgb_pad = av_malloc((size_t)w->width * w->height * 3 + VW_SWS_PAD);
    if (!w->rgb_pad) {
        s = vw_fail(w, VW_ERR_NOMEM, "cannot allocate the input frame buffer");
        goto cleanup;
    }
    memset(w->rgb_pad + (size_t)w->width * w->height * 3, 0, VW_SWS_PAD);

    w->sws = sws_getContext(w->width, w->height, AV_PIX_FMT_RGB24, w->width, w->height,
                            AV_PIX_FMT_YUV420P, SWS_BILINEAR | SWS_ACCURATE_RND, NULL, NULL, NULL);
    if (!w->sws) {
        s = vw_fail(w, VW_ERR_CODEC, "cannot create the RGB24 -> YUV420P converter");
        goto cleanup;
    }

    ret = avio_open(&w->oc->pb, w->part_path, AVIO_FLAG_WRITE);
    if (ret < 0) {
        char what[VW_ERRLEN / 2];
        snprintf(what, sizeof what, "cannot create %s", w->part_path);
        s = vw_av_fail(w, VW_ERR_IO, what, ret);
        goto cleanup;
    }
    w->part_created = 1;
    /* faststart: the index goes before the data, so a browser can play while downloading. */
    if ((ret = av_dict_set(&opts, "movflags", "+faststart", 0)) < 0) {
        s = vw_av_fail(w, VW_ERR_NOMEM, "muxer options", ret);
        goto cleanup;
    }
    ret = avformat_write_header(w->oc, &opts);
    if (ret < 0) {
        s = vw_av_fail(w, VW_ERR_CODEC, "cannot write the mp4 header", ret);
        goto cleanup;
    }

cleanup:
    av_dict_free(&opts);
    return s;
}

/* Moves every packet the encoder has ready into the muxer. Returns VW_OK when the encoder wants
 * more input (or, when draining, has nothing left). */
static vw_status vw_mp4_drain(vw_writer_t *w) {
    for (;;) {
        int ret = avcodec_receive_packet(w->cc, w->pkt);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return VW_OK;
        if (ret < 0) return vw_av_fail(w, VW_ERR_CODEC, "encoder failed", ret);
        av_packet_rescale_ts(w->pkt, w->cc->time_base, w->st->time_base);
        w->pkt->stream_index = w->st->index;
        ret = av_interleaved_write_frame(w->oc, w->pkt); /* takes the packet's reference */
        if (ret < 0) {
            av_packet_unref(w->pkt);
            return vw_av_fail(w, VW_ERR_IO, "cannot write to the mp4 file", ret);
        }
    }
}

static vw_status vw_mp4_write(vw_writer_t *w, const uint8_t *rgb) {
    /* The encoder may still hold a reference to the previous frame's buffer. */
    int ret = av_frame_make_writable(w->frame);
    if (ret < 0) return vw_av_fail(w, VW_ERR_NOMEM, "cannot make the frame writable", ret);
    /* swscale's vectorised RGB24 reader loads 16 bytes at a time and runs a few bytes past the end
     * of the last row (valgrind: "invalid read of size 16"), i.e. past the caller's buffer. So the
     * frame is first copied into a buffer of ours with VW_SWS_PAD spare bytes; the copy costs far
     * less than encoding the frame. */
    memcpy(w->rgb_pad, rgb, (size_t)w->width * w->height * 3);
    const uint8_t *src[4] = {w->rgb_pad, NULL, NULL, NULL};
    const int src_stride[4] = {w->width * 3, 0, 0, 0};
    ret = sws_scale(w->sws, src, src_stride, 0, w->height, w->frame->data, w->frame->linesize);
    if (ret != w->height)
        return vw_fail(w, VW_ERR_CODEC, "RGB24 -> YUV420P conversion failed (%d rows of %d)",
                       ret, w->height);
    w->frame->pts = w->frames;
    w->frame->pict_type = w->frames == 0 ? AV_PICTURE_TYPE_I : AV_PICTURE_TYPE_NONE;
    ret = avcodec_send_frame(w->cc, w->frame);
    if (ret < 0) return vw_av_fail(w, VW_ERR_CODEC, "encoder rejected a frame", ret);
    return vw_mp4_drain(w);
}

static vw_status vw_mp4_finish(vw_writer_t *w) {
    int ret = avcodec_send_frame(w->cc, NULL); /* enter draining mode */
    if (ret < 0) return vw_av_fail(w, VW_ERR_CODEC, "cannot flush the encoder", ret);
    vw_status s = vw_mp4_drain(w);
    if (s != VW_OK) return s;
    ret = av_write_trailer(w->oc);
    if (ret < 0) return vw_av_fail(w, VW_ERR_IO, "cannot write the mp4 trailer", ret);
    ret = avio_closep(&w->oc->pb);
    if (ret < 0) return vw_av_fail(w, VW_ERR_IO, "cannot close the mp4 file", ret);
    return VW_OK;
}

static void vw_mp4_release(vw_writer_t *w) {
    sws_freeContext(w->sws);
    w->sws = NULL;
    av_freep(&w->rgb_pad);
    av_frame_free(&w->frame);
    av_packet_free(&w->pkt);
    avcodec_free_context(&w->cc);
    if (w->oc) {
        if (w->oc->pb) avio_closep(&w->oc->pb);
        avformat_free_context(w->oc);
        w->oc = NULL;
    }
    w->st = NULL;
}

#endif /* VMLA_HAVE_FFMPEG */

/* ---- life cycle ------------------------------------------------------------------------------------- */

/* Closes whatever is open without completing the container; the .part file stays on disk. */
static void vw_release_outputs(vw_writer_t *w) {
    if (w->fp) {
        fclose(w->fp);
        w->fp = NULL;
    }
#ifdef VMLA_HAVE_FFMPEG
    vw_mp4_release(w);
#endif
}

static void vw_free(vw_writer_t *w) {
    vw_release_outputs(w);
    free(w->yuv);
    free(w->path);
    free(w->part_path);
    free(w);
}

vw_status vw_open(vw_writer_t **out, const char *path, vw_format fmt, int width, int height,
                  int fps_num, int fps_den, char *err, size_t errlen) {
    vw_status s = VW_OK;
    vw_writer_t *w = NULL;
    char msg[VW_ERRLEN] = "";

    if (out) *out = NULL;
    if (err && errlen) err[0] = '\0';
    if (!out || !path || !path[0]) {
        snprintf(msg, sizeof msg, "vw_open: out and path must be given");
        s = VW_ERR_ARG;
        goto cleanup;
    }
    if (width < VW_MIN_DIM || width > VW_MAX_DIM || height < VW_MIN_DIM || height > VW_MAX_DIM) {
        snprintf(msg, sizeof msg, "frame size %dx%d is outside %d..%d", width, height, VW_MIN_DIM,
                 VW_MAX_DIM);
        s = VW_ERR_ARG;
        goto cleanup;
    }
    if (width % 2 || height % 2) {
        snprintf(msg, sizeof msg,
                 "frame size %dx%d: width and height must be even for 4:2:0 video", width, height);
        s = VW_ERR_ARG;
        goto cleanup;
    }
    if (fps_num <= 0 || fps_den <= 0) {
        snprintf(msg, sizeof msg, "frame rate %d/%d: both parts must be positive", fps_num,
                 fps_den);
        s = VW_ERR_ARG;
        goto cleanup;
    }
    if (fmt == VW_FORMAT_AUTO) {
        if (vw_ends_with(path, ".y4m")) fmt = VW_FORMAT_Y4M;
        else if (vw_ends_with(path, ".mp4")) fmt = VW_FORMAT_MP4;
        else {
            snprintf(msg, sizeof msg, "%s: unknown extension, use .y4m or .mp4", path);
            s = VW_ERR_ARG;
            goto cleanup;
        }
    } else if (fmt != VW_FORMAT_Y4M && fmt != VW_FORMAT_MP4) {
        snprintf(msg, sizeof msg, "unknown format %d", (int)fmt);
        s = VW_ERR_ARG;
        goto cleanup;
    }
#ifndef VMLA_HAVE_FFMPEG
    if (fmt == VW_FORMAT_MP4) {
        snprintf(msg, sizeof msg,
                 "%s: MP4 output needs FFmpeg, which this build lacks; write a .y4m file instead "
                 "or rebuild with FFmpeg (libavcodec, libavformat, libswscale, libx264)",
                 path);
        s = VW_ERR_UNSUPPORTED;
        goto cleanup;
    }
#endif

    w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(msg, sizeof msg, "cannot allocate the writer");
        s = VW_ERR_NOMEM;
        goto cleanup;
    }
    w->fmt = fmt;
    w->width = width;
    w->height = height;
    w->fps_num = fps_num;
    w->fps_den = fps_den;
    size_t plen = strlen(path);
    w->path = malloc(plen + 1);
    w->part_path = malloc(plen + sizeof VW_PART_SUFFIX);
    if (!w->path || !w->part_path) {
        snprintf(msg, sizeof msg, "cannot allocate the file names");
        s = VW_ERR_NOMEM;
        goto cleanup;
    }
    memcpy(w->path, path, plen + 1);
    memcpy(w->part_path, path, plen);
    memcpy(w->part_path + plen, VW_PART_SUFFIX, sizeof VW_PART_SUFFIX);

    if (fmt == VW_FORMAT_Y4M) s = vw_y4m_open(w);
#ifdef VMLA_HAVE_FFMPEG
    else s = vw_mp4_open(w);
#endif
    if (s != VW_OK) {
        snprintf(msg, sizeof msg, "%s", w->err);
        goto cleanup;
    }
    *out = w;
    return VW_OK;

cleanup:
    if (w) {
        vw_release_outputs(w);
        if (w->part_created) remove(w->part_path);
        vw_free(w);
    }
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return s;
}

vw_status vw_write_rgb(vw_writer_t *w, const uint8_t *rgb, int n) {
    if (!w) return VW_ERR_ARG;
    if (w->state != VW_STATE_OPEN)
        return vw_fail(w, VW_ERR_ARG, "vw_write_rgb after the writer was finished");
    if (w->failed != VW_OK) return w->failed; /* the message of the first failure stays */
    if (n < 0 || (n > 0 && !rgb))
        return vw_fail(w, VW_ERR_ARG, "vw_write_rgb: %s", n < 0 ? "negative frame count"
                                                                : "NULL frame data");
    const size_t frame_bytes = (size_t)w->width * w->height * 3;
    for (int i = 0; i < n; i++, rgb += frame_bytes) {
        vw_status s;
        if (w->fmt == VW_FORMAT_Y4M) s = vw_y4m_write(w, rgb);
#ifdef VMLA_HAVE_FFMPEG
        else s = vw_mp4_write(w, rgb);
#else
        else s = VW_ERR_UNSUPPORTED; /* unreachable: vw_open refuses MP4 without FFmpeg */
#endif
        if (s != VW_OK) {
            w->failed = s;
            return s;
        }
        w->frames++;
    }
    return VW_OK;
}

vw_status vw_finish(vw_writer_t *w) {
    if (!w) return VW_ERR_ARG;
    if (w->state == VW_STATE_FINISHED) return w->finish_status;
    vw_status s = w->failed;
    if (s == VW_OK) {
        if (w->fmt == VW_FORMAT_Y4M) s = vw_y4m_finish(w);
#ifdef VMLA_HAVE_FFMPEG
        else s = vw_mp4_finish(w);
#endif
    }
    vw_release_outputs(w);
    if (s == VW_OK && rename(w->part_path, w->path) != 0)
        s = vw_fail(w, VW_ERR_IO, "cannot rename %s to %s: %s", w->part_path, w->path,
                    strerror(errno));
    if (s != VW_OK) remove(w->part_path);
    else w->err[0] = '\0';
    w->part_created = 0;
    w->state = VW_STATE_FINISHED;
    w->finish_status = s;
    return s;
}

vw_status vw_close(vw_writer_t *w) {
    if (!w) return VW_ERR_ARG;
    vw_status s = vw_finish(w);
    vw_free(w);
    return s;
}

void vw_abort(vw_writer_t *w) {
    if (!w) return;
    vw_release_outputs(w);
    if (w->part_created) remove(w->part_path);
    vw_free(w);
}
