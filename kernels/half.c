/* kernels/half.c — bf16 and fp16 conversions shared by backends and loaders (host side). */
#include <math.h>
#include <string.h>

#include "kernels/backend_impl.h"

float kn_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kn_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

float kn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24 */
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kn_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00; /* NaN */
    if (a >= 0x477ff000u)
        return sign | 0x7c00; /* overflow (>= 65520 rounds to inf) */
    if (a < 0x38800000u) {
        /* subnormal or zero in fp16: round |f| * 2^24 to the nearest integer, ties to even */
        float m = fabsf(f) * 16777216.0f; /* exact: scaling by a power of two */
        float r = nearbyintf(m);           /* default rounding mode: to nearest even */
        return sign | (uint16_t)r;
    }
    uint32_t exp = (a >> 23) - 112, man = a & 0x7fffffu;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* may carry into the exponent, which is the right result */
    return sign | (uint16_t)h;
}

float kn_load(const void *base, kn_dtype t, size_t i)
{
    switch (t) {
    case KN_F32: return ((const float *)base)[i];
    case KN_BF16: return kn_bf16_to_f32(((const uint16_t *)base)[i]);
    case KN_F16: return kn_f16_to_f32(((const uint16_t *)base)[i]);
    }
    return 0.0f;
}

void kn_store(void *base, kn_dtype t, size_t i, float v)
{
    switch (t) {
    case KN_F32: ((float *)base)[i] = v; break;
    case KN_BF16: ((uint16_t *)base)[i] = kn_f32_to_bf16(v); break;
    case KN_F16: ((uint16_t *)base)[i] = kn_f32_to_f16(v); break;
    }
}
