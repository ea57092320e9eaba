/* server/encode/h264_stream.c — see h264_stream.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/encode/h264_stream.h"

static int bytes_append(hs_bytes *b, const void *p, size_t n)
{
    if (n > SIZE_MAX - b->len)
        return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

#ifndef VMLA_HAVE_FFMPEG

int hs_available(void) { return 0; }
hs_status hs_open(hs_stream_t **out, int width, int height, int fps, int gop, char *err, size_t errlen)
{
    *out = NULL;
    snprintf(err, errlen, "this build has no FFmpeg: live H.264 streaming is unavailable");
    return HS_ERR_UNSUPPORTED;
}
void hs_close(hs_stream_t *s) { (void)s; }
const uint8_t *hs_init_segment(const hs_stream_t *s, size_t *len)
{
    *len = 0;
    return NULL;
}
const char *hs_codec(const hs_stream_t *s) { return ""; }
hs_status hs_encode(hs_stream_t *s, const uint8_t *rgb, int n, int64_t frame0, int force_key, hs_bytes *annexb,
                    hs_bytes *frag, int *first_is_key)
{
    (void)bytes_append;
    return HS_ERR_UNSUPPORTED;
}
const char *hs_error(const hs_stream_t *s) { return "no FFmpeg"; }

#else

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>

struct hs_stream {
    int w, h, fps;
    AVCodecContext *cc;
    AVFormatContext *fc;
    AVStream *st;
    AVFrame *frame;
    AVPacket *pkt;
    struct SwsContext *sws;
    uint8_t *iobuf;
    hs_bytes init;     /* init segment */
    hs_bytes *sink;    /* where the muxer's bytes go now */
    hs_bytes annexb_ps; /* SPS and PPS in Annex-B, prepended to keyframes */
    char codec[32];
    char err[256];
};

int hs_available(void) { return 1; }

static hs_status fail(hs_stream_t *s, hs_status st, const char *what, int averr)
{
    char e[128] = "";
    if (averr)
        av_strerror(averr, e, sizeof e);
    snprintf(s->err, sizeof s->err, "%s%s%s", what, averr ? ": " : "", e);
    return st;
}

static int mux_write(void *opaque, uint8_t *buf, int n)
{
    hs_stream_t *s = opaque;
    if (s->sink && bytes_append(s->sink, buf, (size_t)n))
        return AVERROR(ENOMEM);
    return n;
}

/* SPS/PPS from extradata, either Annex-B already or avcC. */
static int parameter_sets(hs_stream_t *s)
{
    const uint8_t *x = s->cc->extradata;
    int n = s->cc->extradata_size;
    static const uint8_t sc[4] = {0, 0, 0, 1};
    if (n >= 4 && x[0] == 0 && x[1] == 0 && (x[2] == 1 || (x[2] == 0 && x[3] == 1)))
        return bytes_append(&s->annexb_ps, x, (size_t)n);
    if (n < 7 || x[0] != 1)
        return -1;
    int pos = 5, nsps = x[5] & 0x1f;
    pos = 6;
    for (int k = 0; k < 2; k++) {
        int cnt = k == 0 ? nsps : (pos < n ? x[pos++] : 0);
        for (int i = 0; i < cnt; i++) {
            if (pos + 2 > n)
                return -1;
            int len = (x[pos] << 8) | x[pos + 1];
            pos += 2;
            if (pos + len > n || bytes_append(&s->annexb_ps, sc, 4) || bytes_append(&s->annexb_ps, x + pos, (size_t)len))
                return -1;
            pos += len;
        }
    }
    return 0;
}

/* The first SPS NAL: profile, constraints, level -> "avc1.PPCCLL". */
static void codec_string(hs_stream_t *s)
{
    const uint8_t *p = s->annexb_ps.data;
    size_t n = s->annexb_ps.len;
    snprintf(s->codec, sizeof s->codec, "avc1.42e01e");
    for (size_t i = 0; i + 7 < n; i++)
        if (p[i] == 0 && p[i + 1] == 0 && p[i + 2] == 1 && (p[i + 3] & 0x1f) == 7) {
            snprintf(s->codec, sizeof s->codec, "avc1.%02x%02x%02x", p[i + 4], p[i + 5], p[i + 6]);
            return;
        }
}

hs_status hs_open(hs_stream_t **out, int width, int height, int fps, int gop, char *err, size_t errlen)
{
    *out = NULL;
    if (width < 2 || height < 2 || width % 2 || height % 2 || fps <= 0) {
        snprintf(err, errlen, "h264: size %dx%d must be even and fps positive", width, height);
        return HS_ERR_ARG;
    }
    hs_stream_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "h264: out of memory");
        return HS_ERR_NOMEM;
    }
    s->w = width;
    s->h = height;
    s->fps = fps;
    hs_status st = HS_ERR_CODEC;
    int r;
    if (av_log_get_level() > AV_LOG_ERROR)
        av_log_set_level(AV_LOG_ERROR);
    const AVCodec *codec = avcodec_find_encoder_by_name("libx264");
    if (!codec) {
        fail(s, HS_ERR_UNSUPPORTED, "h264: FFmpeg has no libx264 encoder", 0);
        st = HS_ERR_UNSUPPORTED;
        goto bad;
    }
    s->cc = avcodec_alloc_context3(codec);
    s->frame = av_frame_alloc();
    s->pkt = av_packet_alloc();
    if (!s->cc || !s->frame || !s->pkt)
        goto nomem;
    s->cc->width = width;
    s->cc->height = height;
    s->cc->time_base = (AVRational){1, fps};
    s->cc->framerate = (AVRational){fps, 1};
    s->cc->pix_fmt = AV_PIX_FMT_YUV420P;
    s->cc->gop_size = gop > 0 ? gop : 100000;
    s->cc->max_b_frames = 0;
    s->cc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    av_opt_set(s->cc->priv_data, "preset", "ultrafast", 0);
    av_opt_set(s->cc->priv_data, "tune", "zerolatency", 0);
    av_opt_set(s->cc->priv_data, "forced-idr", "1", 0);
    av_opt_set(s->cc->priv_data, "crf", "23", 0);
    av_opt_set(s->cc->priv_data, "x264-params", "scenecut=0:repeat-headers=0", 0);
    if ((r = avcodec_open2(s->cc, codec, NULL)) < 0) {
        fail(s, HS_ERR_CODEC, "h264: opening libx264", r);
        goto bad;
    }
    if (parameter_sets(s)) {
        fail(s, HS_ERR_CODEC, "h264: cannot read SPS/PPS from the encoder", 0);
        goto bad;
    }
    codec_string(s);
    s->frame->format = AV_PIX_FMT_YUV420P;
    s->frame->width = width;
    s->frame->height = height;
    if ((r = av_frame_get_buffer(s->frame, 0)) < 0) {
        fail(s, HS_ERR_NOMEM, "h264: frame buffer", r);
        goto bad;
    }
    s->sws = sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, AV_PIX_FMT_YUV420P, SWS_BILINEAR, NULL,
                            NULL, NULL);
    if (!s->sws)
        goto nomem;
    /* the fragmented-MP4 muxer, writing into memory */
    if ((r = avformat_alloc_output_context2(&s->fc, NULL, "mp4", NULL)) < 0) {
        fail(s, HS_ERR_CODEC, "h264: mp4 muxer", r);
        goto bad;
    }
    s->iobuf = av_malloc(65536);
    if (!s->iobuf)
        goto nomem;
    s->fc->pb = avio_alloc_context(s->iobuf, 65536, 1, s, NULL, mux_write, NULL);
    if (!s->fc->pb)
        goto nomem;
    s->fc->flags |= AVFMT_FLAG_CUSTOM_IO;
    s->st = avformat_new_stream(s->fc, NULL);
    if (!s->st)
        goto nomem;
    s->st->time_base = (AVRational){1, fps};
    if ((r = avcodec_parameters_from_context(s->st->codecpar, s->cc)) < 0) {
        fail(s, HS_ERR_CODEC, "h264: stream parameters", r);
        goto bad;
    }
    AVDictionary *opt = NULL;
    av_dict_set(&opt, "movflags", "frag_custom+empty_moov+default_base_moof", 0);
    s->sink = &s->init;
    r = avformat_write_header(s->fc, &opt);
    av_dict_free(&opt);
    if (r < 0) {
        fail(s, HS_ERR_CODEC, "h264: mp4 header", r);
        goto bad;
    }
    avio_flush(s->fc->pb);
    s->sink = NULL;
    if (!s->init.len) {
        fail(s, HS_ERR_CODEC, "h264: the muxer wrote no init segment", 0);
        goto bad;
    }
    *out = s;
    return HS_OK;
nomem:
    fail(s, HS_ERR_NOMEM, "h264: out of memory", 0);
    st = HS_ERR_NOMEM;
bad:
    snprintf(err, errlen, "%s", s->err);
    hs_close(s);
    return st;
}

void hs_close(hs_stream_t *s)
{
    if (!s)
        return;
    if (s->fc) {
        if (s->fc->pb) {
            av_freep(&s->fc->pb->buffer);
            avio_context_free(&s->fc->pb);
        } else {
            av_free(s->iobuf);
        }
        avformat_free_context(s->fc);
    } else {
        av_free(s->iobuf);
    }
    sws_freeContext(s->sws);
    av_packet_free(&s->pkt);
    av_frame_free(&s->frame);
    avcodec_free_context(&s->cc);
    free(s->init.data);
    free(s->annexb_ps.data);
    free(s);
}

const uint8_t *hs_init_segment(const hs_stream_t *s, size_t *len)
{
    *len = s->init.len;
    return s->init.data;
}
const char *hs_codec(const hs_stream_t *s) { return s->codec; }
const char *hs_error(const hs_stream_t *s) { return s->err; }

/* Append one packet as a length-prefixed Annex-B access unit (+ SPS/PPS on keyframes). */
static int append_au(hs_stream_t *s, const AVPacket *p, hs_bytes *out)
{
    static const uint8_t sc[4] = {0, 0, 0, 1};
    int key = (p->flags & AV_PKT_FLAG_KEY) != 0;
    const uint8_t *d = p->data;
    int n = p->size;
    int annexb = n >= 4 && d[0] == 0 && d[1] == 0 && (d[2] == 1 || (d[2] == 0 && d[3] == 1));
    size_t lenpos = out->len;
    uint8_t len4[4] = {0};
    if (bytes_append(out, len4, 4))
        return -1;
    if (key && bytes_append(out, s->annexb_ps.data, s->annexb_ps.len))
        return -1;
    if (annexb) {
        if (bytes_append(out, d, (size_t)n))
            return -1;
    } else { /* length-prefixed NAL units -> start codes */
        int pos = 0;
        while (pos + 4 <= n) {
            uint32_t l = ((uint32_t)d[pos] << 24) | ((uint32_t)d[pos + 1] << 16) | ((uint32_t)d[pos + 2] << 8) | d[pos + 3];
            pos += 4;
            if (l > (uint32_t)(n - pos))
                return -1;
            if (bytes_append(out, sc, 4) || bytes_append(out, d + pos, l))
                return -1;
            pos += (int)l;
        }
    }
    size_t au = out->len - lenpos - 4;
    out->data[lenpos] = (uint8_t)(au >> 24);
    out->data[lenpos + 1] = (uint8_t)(au >> 16);
    out->data[lenpos + 2] = (uint8_t)(au >> 8);
    out->data[lenpos + 3] = (uint8_t)au;
    return 0;
}

static hs_status drain(hs_stream_t *s, hs_bytes *annexb, int *first_key, int *got)
{
    int r;
    while ((r = avcodec_receive_packet(s->cc, s->pkt)) == 0) {
        if (*got == 0 && first_key)
            *first_key = (s->pkt->flags & AV_PKT_FLAG_KEY) != 0;
        (*got)++;
        if (append_au(s, s->pkt, annexb)) {
            av_packet_unref(s->pkt);
            return fail(s, HS_ERR_NOMEM, "h264: out of memory", 0);
        }
        av_packet_rescale_ts(s->pkt, s->cc->time_base, s->st->time_base);
        s->pkt->stream_index = s->st->index;
        r = av_write_frame(s->fc, s->pkt);
        av_packet_unref(s->pkt);
        if (r < 0)
            return fail(s, HS_ERR_CODEC, "h264: muxing", r);
    }
    if (r != AVERROR(EAGAIN) && r != AVERROR_EOF)
        return fail(s, HS_ERR_CODEC, "h264: encoding", r);
    return HS_OK;
}

hs_status hs_encode(hs_stream_t *s, const uint8_t *rgb, int n, int64_t frame0, int force_key, hs_bytes *annexb,
                    hs_bytes *frag, int *first_is_key)
{
    if (!s || !rgb || n <= 0 || !annexb || !frag)
        return HS_ERR_ARG;
    int got = 0, r;
    *first_is_key = 0;
    s->sink = frag;
    for (int i = 0; i < n; i++) {
        if ((r = av_frame_make_writable(s->frame)) < 0) {
            s->sink = NULL;
            return fail(s, HS_ERR_CODEC, "h264: frame", r);
        }
        const uint8_t *src[1] = {rgb + (size_t)i * s->w * s->h * 3};
        const int stride[1] = {s->w * 3};
        sws_scale(s->sws, src, stride, 0, s->h, s->frame->data, s->frame->linesize);
        s->frame->pts = frame0 + i;
        s->frame->pict_type = (i == 0 && force_key) ? AV_PICTURE_TYPE_I : AV_PICTURE_TYPE_NONE;
        if ((r = avcodec_send_frame(s->cc, s->frame)) < 0) {
            s->sink = NULL;
            return fail(s, HS_ERR_CODEC, "h264: encoding", r);
        }
        hs_status st = drain(s, annexb, first_is_key, &got);
        if (st != HS_OK) {
            s->sink = NULL;
            return st;
        }
    }
    if (got != n) {
        s->sink = NULL;
        return fail(s, HS_ERR_CODEC, "h264: the encoder held frames back (zerolatency expected)", 0);
    }
    r = av_write_frame(s->fc, NULL); /* close the fragment */
    avio_flush(s->fc->pb);
    s->sink = NULL;
    if (r < 0)
        return fail(s, HS_ERR_CODEC, "h264: closing the fragment", r);
    return HS_OK;
}

#endif
