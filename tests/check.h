/* tests/check.h — a minimal test harness: CHECK(cond, fmt, ...) counts and reports; each test
 * program ends with check_done(), which prints "N passed, M failed" and returns the exit status.
 * Also: normalised-error comparison for float arrays (atol + rtol*|ref|). */
#ifndef VMLA_TESTS_CHECK_H
#define VMLA_TESTS_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int check_pass_, check_fail_;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (cond) {                                                                               \
            check_pass_++;                                                                        \
        } else {                                                                                  \
            check_fail_++;                                                                        \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                           \
            printf(__VA_ARGS__);                                                                  \
            printf("\n");                                                                         \
        }                                                                                         \
    } while (0)

static inline int check_done(void)
{
    printf("%d passed, %d failed\n", check_pass_, check_fail_);
    return check_fail_ ? 1 : 0;
}

/* Largest violation of |a - ref| <= atol + rtol*|ref| as a ratio (<= 1 passes); NaN/Inf fail. */
static inline double check_close(const float *a, const float *ref, size_t n, double atol, double rtol,
                                 size_t *worst)
{
    double w = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(ref[i])) {
            if (worst)
                *worst = i;
            return INFINITY;
        }
        double r = fabs((double)a[i] - ref[i]) / (atol + rtol * fabs((double)ref[i]));
        if (r > w) {
            w = r;
            wi = i;
        }
    }
    if (worst)
        *worst = wi;
    return w;
}

#endif
