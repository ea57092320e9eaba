/* engine/cli.h — strict parsing of command-line numbers for the programs (header-only).
 *
 * Each parser accepts the whole string or nothing: "12x", "", " 3", out-of-range values are
 * errors, so a typo never becomes a silent default.
 */
#ifndef VMLA_ENGINE_CLI_H
#define VMLA_ENGINE_CLI_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

static inline int cli_int(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s || *s == ' ' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static inline int cli_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == ' ' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static inline int cli_double(const char *s, double lo, double hi, double *out)
{
    if (!s || !*s || *s == ' ')
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

#endif
