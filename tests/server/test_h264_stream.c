/* tests/server/test_h264_stream.c — the live encoder: Annex-B records parse, keyframes where asked,
 * init segment + fragments form an MP4 that ffprobe decodes with the right frame count and size. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/encode/h264_stream.h"
#include "tests/check.h"

static void pattern(uint8_t *rgb, int w, int h, int f)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            int in = x >= (f * 2) % w && x < (f * 2) % w + 12 && y >= 10 && y < 22;
            p[0] = in ? 230 : (uint8_t)(x * 4);
            p[1] = in ? 30 : (uint8_t)(y * 6);
            p[2] = in ? 40 : 128;
        }
}

/* Count access units and IDR units in a record stream. */
static int parse_records(const hs_bytes *b, int *idr_first)
{
    size_t off = 0;
    int n = 0;
    while (off + 4 <= b->len) {
        uint32_t l = ((uint32_t)b->data[off] << 24) | ((uint32_t)b->data[off + 1] << 16) |
                     ((uint32_t)b->data[off + 2] << 8) | b->data[off + 3];
        off += 4;
        if (l == 0 || l > b->len - off)
            return -1;
        const uint8_t *au = b->data + off;
        if (!(au[0] == 0 && au[1] == 0 && au[2] == 0 && au[3] == 1))
            return -1;
        if (n == 0 && idr_first) {
            *idr_first = 0;
            for (uint32_t i = 0; i + 4 < l; i++)
                if (au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 && (au[i + 3] & 0x1f) == 5)
                    *idr_first = 1;
        }
        off += l;
        n++;
    }
    return off == b->len ? n : -1;
}

int main(void)
{
    if (!hs_available()) {
        printf("skip: built without FFmpeg\n");
        return check_done();
    }
    char err[256];
    hs_stream_t *s = NULL;
    CHECK(hs_open(&s, 47, 32, 16, 0, err, sizeof err) == HS_ERR_ARG && !s, "odd width refused: %s", err);
    CHECK(hs_open(&s, 48, 32, 16, 0, err, sizeof err) == HS_OK, "open: %s", err);
    if (!s)
        return check_done();
    CHECK(!strncmp(hs_codec(s), "avc1.", 5) && strlen(hs_codec(s)) == 11, "codec string %s", hs_codec(s));
    size_t il;
    const uint8_t *init = hs_init_segment(s, &il);
    CHECK(il > 100 && !memcmp(init + 4, "ftyp", 4), "init segment starts with ftyp (%zu bytes)", il);
    char path[] = "/tmp/vmla-h264-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "wb");
    fwrite(init, 1, il, f);
    uint8_t *rgb = malloc(48 * 32 * 3 * 12);
    for (int c = 0; c < 4; c++) {
        for (int i = 0; i < 12; i++)
            pattern(rgb + (size_t)i * 48 * 32 * 3, 48, 32, c * 12 + i);
        hs_bytes ab = {0}, fr = {0};
        int key = -1, idr = -1;
        int force = c == 0 || c == 2;
        CHECK(hs_encode(s, rgb, 12, (int64_t)c * 12, force, &ab, &fr, &key) == HS_OK, "encode chunk %d: %s", c,
              hs_error(s));
        int n = parse_records(&ab, &idr);
        CHECK(n == 12, "chunk %d: 12 access units (%d)", c, n);
        CHECK(key == force && idr == force, "chunk %d: keyframe first = %d (idr %d, forced %d)", c, key, idr, force);
        CHECK(fr.len > 8 && !memcmp(fr.data + 4, "moof", 4), "chunk %d: a moof fragment", c);
        fwrite(fr.data, 1, fr.len, f);
        free(ab.data);
        free(fr.data);
    }
    fclose(f);
    hs_close(s);
    free(rgb);
    char cmd[512], out[128] = "";
    snprintf(cmd, sizeof cmd,
             "ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=codec_name,width,height,"
             "nb_read_frames -of csv=p=0 %s 2>&1",
             path);
    FILE *p = popen(cmd, "r");
    if (p && fgets(out, sizeof out, p)) {
        out[strcspn(out, "\n")] = 0;
        CHECK(!strcmp(out, "h264,48,32,48"), "ffprobe of init + fragments: '%s'", out);
    } else {
        printf("skip: no ffprobe\n");
    }
    if (p)
        pclose(p);
    unlink(path);
    return check_done();
}
