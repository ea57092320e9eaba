/* tests/engine/test_rng.c — Philox4x32-10 known answers (Random123's), noise determinism and
 * statistics, the tokenizer rule, and config validation. */
#include <math.h>
#include <string.h>

#include "engine/config.h"
#include "engine/rng.h"
#include "engine/tokenizer.h"
#include "tests/check.h"

int main(void)
{
    /* Random123 known-answer tests for philox4x32_10 */
    struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        uint32_t out[4];
        eng_philox4x32(kat[i].ctr, kat[i].key, out);
        CHECK(!memcmp(out, kat[i].out, sizeof out), "philox KAT %zu: %08x %08x %08x %08x", i, out[0], out[1],
              out[2], out[3]);
    }

    /* noise: deterministic, element-addressable, different per seed/chunk/draw, ~N(0,1) */
    enum { N = 100003 };
    static float a[N], b[N], c[N];
    eng_noise(42, 0, 0, a, N);
    eng_noise(42, 0, 0, b, N);
    CHECK(!memcmp(a, b, sizeof a), "same seed, same noise");
    eng_noise(42, 0, 0, b, 7);
    CHECK(!memcmp(a, b, 7 * sizeof(float)), "prefix of a draw is the same draw");
    eng_noise(43, 0, 0, c, N);
    int same = 0;
    for (int i = 0; i < N; i++)
        same += a[i] == c[i];
    CHECK(same < 10, "another seed, other noise (%d equal)", same);
    eng_noise(42, 1, 0, c, N);
    same = 0;
    for (int i = 0; i < N; i++)
        same += a[i] == c[i];
    CHECK(same < 10, "another chunk, other noise");
    eng_noise(42, 0, 1, c, N);
    same = 0;
    for (int i = 0; i < N; i++)
        same += a[i] == c[i];
    CHECK(same < 10, "another draw, other noise");
    eng_noise((uint64_t)1 << 40, 0, 0, c, N);
    same = 0;
    for (int i = 0; i < N; i++)
        same += a[i] == c[i];
    CHECK(same < 10, "the high seed word matters");
    double s = 0, ss = 0, s4 = 0;
    for (int i = 0; i < N; i++) {
        s += a[i];
        ss += (double)a[i] * a[i];
        s4 += pow(a[i], 4);
    }
    double mean = s / N, var = ss / N - mean * mean, kurt = s4 / N / (var * var);
    CHECK(fabs(mean) < 0.02 && fabs(var - 1) < 0.02 && fabs(kurt - 3) < 0.1, "moments mean %.4f var %.4f kurt %.3f",
          mean, var, kurt);

    /* tokenizer: the rule of engine/tokenizer.h */
    int32_t ids[8], ids2[8];
    CHECK(eng_fnv1a32("a", 1) == 0xe40c292cu && eng_fnv1a32("", 0) == 0x811c9dc5u, "fnv1a32 test vectors");
    int n = eng_tokenize("a red square moving left", 24, 64, ids, 8);
    CHECK(n == 5 && ids[0] == (int32_t)(1 + eng_fnv1a32("a", 1) % 63) && ids[5] == 0 && ids[7] == 0,
          "five words then padding (n=%d)", n);
    const char *messy = "A  RED,square!!moving\tleft\xc3\xa9";
    eng_tokenize(messy, strlen(messy), 64, ids2, 8);
    CHECK(!memcmp(ids, ids2, sizeof ids), "case, punctuation, whitespace and UTF-8 bytes separate words alike");
    CHECK(eng_tokenize("", 0, 64, ids, 8) == 0 && ids[0] == 0, "empty prompt: all padding");
    CHECK(eng_tokenize(NULL, 5, 64, ids, 8) == 0, "NULL prompt: all padding");
    char longp[4096];
    memset(longp, 'x', sizeof longp);
    for (int i = 3; i < 4096; i += 4)
        longp[i] = ' ';
    CHECK(eng_tokenize(longp, sizeof longp, 64, ids, 8) == 8, "very long prompt: the first 8 words kept");
    for (int i = 0; i < 8; i++)
        CHECK(ids[i] >= 1 && ids[i] < 64, "ids in range");

    /* config */
    eng_config cfg;
    char err[256];
    CHECK(eng_config_preset(&cfg, "nope", err, sizeof err) == -1 && strstr(err, "tiny-test"), "unknown preset: %s", err);
    const char *presets[] = {"tiny-test", "tiny-test-mla", "wan-1.3b", "wan-1.3b-mla"};
    for (int i = 0; i < 4; i++) {
        CHECK(eng_config_preset(&cfg, presets[i], err, sizeof err) == 0, "%s", presets[i]);
        CHECK(eng_config_validate(&cfg, err, sizeof err) == 0, "%s validates: %s", presets[i], err);
    }
    eng_config_preset(&cfg, "wan-1.3b", err, sizeof err);
    CHECK(eng_config_kv_width(&cfg) == 3072, "wan-1.3b caches 3072 values a token a layer");
    eng_config_preset(&cfg, "wan-1.3b-mla", err, sizeof err);
    CHECK(eng_config_kv_width(&cfg) == 224, "wan-1.3b-mla caches 224");
    cfg.window = 2;
    CHECK(eng_config_validate(&cfg, err, sizeof err) == -1, "window under a chunk refused: %s", err);
    eng_config_preset(&cfg, "tiny-test", err, sizeof err);
    cfg.steps[2] = 900;
    CHECK(eng_config_validate(&cfg, err, sizeof err) == -1, "non-decreasing steps refused: %s", err);
    {
        /* slices drawn apart (as weights.c's threads do) equal the whole draw */
        enum { NS = 1000 };
        static float whole[NS], parts[NS];
        eng_normals(99, 3, 0, 0x57454947u, whole, NS);
        size_t cuts[] = {0, 4, 252, 600, NS};
        for (int k = 0; k + 1 < 5; k++)
            eng_normals_at(99, 3, 0, 0x57454947u, parts + cuts[k], cuts[k], cuts[k + 1] - cuts[k]);
        CHECK(!memcmp(whole, parts, sizeof whole), "normals drawn in slices equal the whole draw");
    }
    return check_done();
}
