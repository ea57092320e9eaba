/* engine/rng.c — Philox4x32-10 (Salmon et al., SC'11) and Box-Muller normals. */
#include <math.h>

#include "engine/rng.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define NOISE_TAG 0x564D4C41u /* "VMLA" */

void eng_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

static void box_muller(uint32_t ra, uint32_t rb, float *n0, float *n1)
{
    const double two32 = 4294967296.0, two_pi = 6.283185307179586476925286766559;
    double ua = ((double)ra + 0.5) / two32, ub = ((double)rb + 0.5) / two32;
    double r = sqrt(-2.0 * log(ua));
    *n0 = (float)(r * cos(two_pi * ub));
    *n1 = (float)(r * sin(two_pi * ub));
}

void eng_normals(uint64_t seed, uint32_t a, uint32_t b, uint32_t tag, float *out, size_t n)
{
    eng_normals_at(seed, a, b, tag, out, 0, n);
}

void eng_normals_at(uint64_t seed, uint32_t a, uint32_t b, uint32_t tag, float *out, size_t i0, size_t n)
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (size_t i = 0; i < n; i += 4) {
        const uint32_t ctr[4] = {(uint32_t)((i0 + i) / 4), a, b, tag};
        uint32_t r[4];
        float v[4];
        eng_philox4x32(ctr, key, r);
        box_muller(r[0], r[1], &v[0], &v[1]);
        box_muller(r[2], r[3], &v[2], &v[3]);
        for (size_t j = 0; j < 4 && i + j < n; j++)
            out[i + j] = v[j];
    }
}

void eng_noise(uint64_t seed, uint32_t chunk, uint32_t draw, float *out, size_t n)
{
    eng_normals(seed, chunk, draw, NOISE_TAG, out, n);
}
