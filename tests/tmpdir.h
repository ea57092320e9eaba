/* tests/tmpdir.h — a scratch directory for a test program: made under /tmp at start (mkdtemp;
 * the includer enables POSIX 2008), removed with everything in it at the end. */
#ifndef VMLA_TESTS_TMPDIR_H
#define VMLA_TESTS_TMPDIR_H

#include <stdio.h>
#include <stdlib.h>

/* dir = /tmp/<name>-XXXXXX made unique; 0, or -1 with the reason printed. */
static inline int tmpdir_make(char *dir, size_t n, const char *name)
{
    snprintf(dir, n, "/tmp/%s-XXXXXX", name);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

static inline void tmpdir_remove(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("note: could not remove %s\n", dir);
}

#endif
