/* server/encode/h264_stream.h — a session's live H.264 encoder: RGB chunks in, Annex-B access
 * units (for WebCodecs) and fragmented-MP4 fragments (for Media Source Extensions and the
 * recording) out. libavcodec + libx264 (ultrafast, zerolatency, no B-frames); libavformat's mp4
 * muxer writes into memory.
 *
 * One encoder belongs to one session and is used by one thread at a time (the session's encoder
 * worker). Created with FFmpeg only: without it hs_open returns HS_ERR_UNSUPPORTED.
 */
#ifndef VMLA_SERVER_H264_STREAM_H
#define VMLA_SERVER_H264_STREAM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { HS_OK = 0, HS_ERR_ARG, HS_ERR_CODEC, HS_ERR_NOMEM, HS_ERR_UNSUPPORTED } hs_status;

typedef struct hs_stream hs_stream_t;

/* A growable byte buffer the encoder fills (caller owns; free with free(data)). */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} hs_bytes;

/* Open an encoder for width x height at fps. gop: frames between regular keyframes (0: only on
 * request). On failure *out = NULL and err holds a message. */
hs_status hs_open(hs_stream_t **out, int width, int height, int fps, int gop, char *err, size_t errlen);
void hs_close(hs_stream_t *s);
/* The fMP4 init segment (ftyp + moov), valid for the encoder's life. */
const uint8_t *hs_init_segment(const hs_stream_t *s, size_t *len);
/* RFC 6381 codec string, e.g. "avc1.42c01e". */
const char *hs_codec(const hs_stream_t *s);

/* Encode n RGB24 frames (frame index frame0 .. frame0+n-1; the first one a keyframe if
 * force_key). Appends to annexb: for each frame, u32 big-endian length + one Annex-B access unit
 * (keyframes carry SPS/PPS); to frag: one moof+mdat fragment with the n frames. *first_is_key tells
 * whether the first frame came out as a keyframe. */
hs_status hs_encode(hs_stream_t *s, const uint8_t *rgb, int n, int64_t frame0, int force_key, hs_bytes *annexb,
                    hs_bytes *frag, int *first_is_key);
const char *hs_error(const hs_stream_t *s);
int hs_available(void);

#endif
