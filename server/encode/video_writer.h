/* server/encode/video_writer.h — writes generated RGB frames to a video file.
 *
 * The engine hands the server packed RGB24 frames; this module turns them into a file a person can
 * play. Two containers:
 *   - Y4M (YUV4MPEG2), always built, no dependencies. Uncompressed planar I420, large but exact,
 *     readable by ffmpeg, mpv and x264 directly. The header is
 *         "YUV4MPEG2 W<width> H<height> F<fps_num>:<fps_den> Ip A1:1 C420jpeg\n"
 *     and every frame is "FRAME\n" followed by the Y plane (width*height bytes), then U and V
 *     ((width/2)*(height/2) bytes each).
 *   - MP4 (H.264 by libx264, through libavcodec/libavformat/libswscale), only when the build
 *     defines VMLA_HAVE_FFMPEG. Without it an MP4 request fails with VW_ERR_UNSUPPORTED.
 *
 * Colour: both containers use the BT.601 matrix with limited ("studio", Y in 16..235) range, the
 * range every y4m reader assumes when the header carries no range tag and the one swscale produces
 * for yuv420p, so the two outputs decode to the same colours. Chroma is 4:2:0, each chroma sample
 * the average of a 2x2 block of pixels (C420jpeg: chroma sited at the block's centre). Width and
 * height must therefore be even; odd sizes are rejected with VW_ERR_ARG.
 *
 * Files never look complete before they are: everything is written to "<path>.part", which a
 * successful vw_close (or vw_finish) renames to <path>, replacing any file already there. A failed
 * write, a failed close, or vw_abort removes the .part file and leaves <path> untouched.
 *
 * Errors: every call returns a vw_status; the writer keeps a message for the last error
 * (vw_error). An I/O or codec error is sticky: later writes return the same status, and closing
 * discards the file. Argument errors (a NULL pointer, a negative count) are not sticky.
 *
 * Threads: a writer belongs to one thread at a time; distinct writers are independent.
 * FFmpeg's own log output (av_log, e.g. libx264's banner) is left to the application to configure.
 */
#ifndef VMLA_SERVER_ENCODE_VIDEO_WRITER_H
#define VMLA_SERVER_ENCODE_VIDEO_WRITER_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    VW_OK = 0,
    VW_ERR_ARG,         /* bad argument: size, frame rate, format/extension, NULL pointer */
    VW_ERR_IO,          /* could not create, write, close or rename the file */
    VW_ERR_UNSUPPORTED, /* the format is not built in (MP4 without FFmpeg, FFmpeg without libx264) */
    VW_ERR_CODEC,       /* the encoder or muxer reported an error (message on the writer) */
    VW_ERR_NOMEM,       /* allocation failed */
} vw_status;

/* A static English description of s; never NULL. */
const char *vw_strerror(vw_status s);

typedef enum {
    VW_FORMAT_AUTO = 0, /* from the path's extension, case-insensitive: ".y4m" or ".mp4" */
    VW_FORMAT_Y4M,
    VW_FORMAT_MP4,
} vw_format;

/* Limits on vw_open's arguments. */
#define VW_MIN_DIM 2
#define VW_MAX_DIM 8192 /* width and height, each; both must also be even */

typedef struct vw_writer vw_writer_t;

/* Opens a writer for frames of width x height at fps_num/fps_den frames per second (both > 0).
 * fmt VW_FORMAT_AUTO picks the container from path's extension; an unknown or missing extension
 * is VW_ERR_ARG. An explicit fmt is used whatever the extension. Output goes to "<path>.part"
 * (created or truncated here) until vw_close renames it.
 * On success *out is a new writer, owned by the caller and released by vw_close or vw_abort.
 * On failure *out = NULL, no file is left behind, and err (if not NULL, errlen > 0) receives a
 * NUL-terminated message. */
vw_status vw_open(vw_writer_t **out, const char *path, vw_format fmt, int width, int height,
                  int fps_num, int fps_den, char *err, size_t errlen);

/* Appends n >= 0 frames of packed RGB24: n consecutive frames of height rows of width pixels of
 * 3 bytes (R, G, B), height*width*3 bytes each. rgb is only read, and not kept after the call.
 * n == 0 does nothing (rgb may then be NULL). */
vw_status vw_write_rgb(vw_writer_t *w, const uint8_t *rgb, int n);

/* Finishes the file (flushes the encoder, writes the trailer, closes, renames "<path>.part" to
 * path) and frees w, in every case; w must not be used afterwards. On failure the .part file is
 * removed. vw_close(NULL) returns VW_ERR_ARG. The message of a failure here is lost with w; call
 * vw_finish first when it is wanted. */
vw_status vw_close(vw_writer_t *w);

/* Does vw_close's work without freeing w, so vw_error(w) can still be read on failure. After it
 * only vw_error, vw_close (frees, returns the same status) and vw_abort (frees; a file that
 * finished successfully is kept) are valid; writes return VW_ERR_ARG. */
vw_status vw_finish(vw_writer_t *w);

/* Discards the output: removes "<path>.part" and frees w. NULL is a no-op. */
void vw_abort(vw_writer_t *w);

/* The message for the writer's last error ("" when none; "null writer" for NULL). Owned by w;
 * valid until the next call on w or its release. */
const char *vw_error(const vw_writer_t *w);

/* 1 when built with FFmpeg (VMLA_HAVE_FFMPEG defined), so MP4 can be requested; 0 otherwise. */
int vw_mp4_available(void);

#endif /* VMLA_SERVER_ENCODE_VIDEO_WRITER_H */
