/* tests/fuzz/fuzz_sampler.c — libFuzzer harness for the sampler metadata parser
 * (eng_config_set_sampler, engine/config.c), which reads `vmla.sampler.steps` / `vmla.sampler.shift`
 * from model files a user may hand the server.
 *
 * An input is "STEPS\nSHIFT" (either part may be absent: no newline means steps only; an input
 * starting with a newline gives shift only). The harness applies it to a preset and checks the
 * promises: a refusal leaves the config untouched and writes a message; an acceptance gives 1 to
 * ENG_MAX_STEPS steps in (0, 1000], strictly decreasing, a shift in (0, 100], a config that passes
 * eng_config_validate, and text (eng_config_sampler_text) that parses back to the same values.
 * A broken promise calls abort().
 *
 * Build and run: `cmake -DVMLA_FUZZ=ON` (clang) and `ctest -L fuzz`, or by hand:
 *   clang -fsanitize=fuzzer,address,undefined -I. engine/config.c tests/fuzz/fuzz_sampler.c -lm \
 *       -o /tmp/fuzz_sampler && /tmp/fuzz_sampler -max_total_time=60 <copy of tests/fuzz/corpus/sampler>
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/config.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *buf = malloc(size + 1);
    REQUIRE(buf);
    memcpy(buf, data, size);
    buf[size] = 0;
    if (strlen(buf) != size) { /* an embedded NUL: the metadata strings are C strings */
        free(buf);
        return 0;
    }
    char *nl = strchr(buf, '\n'), *steps = buf, *shift = NULL;
    if (nl) {
        *nl = 0;
        shift = nl + 1;
        if (nl == buf)
            steps = NULL;
    }
    eng_config c, before;
    char err[256];
    REQUIRE(eng_config_preset(&c, "tiny", err, sizeof err) == 0);
    before = c;
    err[0] = 0;
    if (eng_config_set_sampler(&c, steps, shift, "fuzz", err, sizeof err) != 0) {
        REQUIRE(err[0] != 0);
        REQUIRE(memcmp(&c, &before, sizeof c) == 0);
        free(buf);
        return 0;
    }
    REQUIRE(c.n_steps >= 1 && c.n_steps <= ENG_MAX_STEPS);
    for (int i = 0; i < c.n_steps; i++) {
        REQUIRE(c.steps[i] > 0.0f && c.steps[i] <= 1000.0f);
        REQUIRE(i == 0 || c.steps[i] < c.steps[i - 1]);
    }
    REQUIRE(c.shift > 0.0f && c.shift <= 100.0f && isfinite(c.shift));
    REQUIRE(eng_config_validate(&c, err, sizeof err) == 0);
    /* what it writes, it reads back to the same floats */
    char st[256], sh[64];
    eng_config_sampler_text(&c, st, sizeof st, sh, sizeof sh);
    eng_config again = before;
    if (eng_config_set_sampler(&again, st, sh, "fuzz", err, sizeof err) == 0) {
        REQUIRE(again.n_steps == c.n_steps);
        for (int i = 0; i < c.n_steps; i++)
            REQUIRE(fabsf(again.steps[i] - c.steps[i]) <= 1e-5f * c.steps[i]);
        REQUIRE(fabsf(again.shift - c.shift) <= 1e-5f * c.shift);
    }
    free(buf);
    return 0;
}
