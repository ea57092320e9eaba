/* tests/fuzz/fuzz.h — what every libFuzzer harness here shares: REQUIRE, a promise whose breaking
 * calls abort() (libFuzzer reports it as a crash, with the input). */
#ifndef VMLA_TESTS_FUZZ_H
#define VMLA_TESTS_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(c)                                                                        \
    do {                                                                                  \
        if (!(c)) {                                                                       \
            fprintf(stderr, "%s:%d: broken promise: %s\n", __FILE__, __LINE__, #c);      \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

#endif
