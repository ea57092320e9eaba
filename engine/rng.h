/* engine/rng.h — the counter-based noise generator (Philox4x32-10 + Box-Muller).
 *
 * The same seed gives the same noise in C and in the Python reference (tools/reference/vmla_rng.py):
 * docs/MODEL.md §7 spells out the counter layout. Counter-based means any element can be drawn
 * independently: no state, no order dependence, any thread.
 */
#ifndef VMLA_ENGINE_RNG_H
#define VMLA_ENGINE_RNG_H

#include <stddef.h>
#include <stdint.h>

/* One Philox4x32-10 block: out = philox(key, ctr). */
void eng_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* n standard normals for stream `seed`, chunk `chunk`, draw `draw` (0 = the initial noise of the
 * chunk, k = the noise added before denoising step k), element 0 .. n-1 of the flattened tensor. */
void eng_noise(uint64_t seed, uint32_t chunk, uint32_t draw, float *out, size_t n);

/* Standard normals for other uses (random weights): counter (i/4, a, b, tag). */
void eng_normals(uint64_t seed, uint32_t a, uint32_t b, uint32_t tag, float *out, size_t n);
/* Elements i0 .. i0+n-1 of that sequence into out[0..n) (i0 a multiple of 4): the same values as
 * eng_normals would give there, so a tensor can be drawn in slices by several threads. */
void eng_normals_at(uint64_t seed, uint32_t a, uint32_t b, uint32_t tag, float *out, size_t i0, size_t n);

#endif
