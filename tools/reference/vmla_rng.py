"""Pure numpy/python parts of the vmla model contract (docs/MODEL.md).

Nothing here needs torch, so it can be tested anywhere numpy is installed:

  * Philox4x32-10 counter-based RNG and the Box-Muller noise of MODEL.md section 7
    (`philox4x32_10`, `noise`);
  * the word tokenizer with FNV-1a of MODEL.md section 3 (`fnv1a32`, `tokenize`);
  * the shift-warped sigma / timestep schedule of MODEL.md section 6 (`warped_sigmas`).

Run as a script it asserts the Random123 known answers for philox4x32_10 and prints a few
known-answer values the C engine's tests can compare against.
"""

import math
import re

import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)

PHILOX_M0 = 0xD2511F53  # multiplier applied to counter word 0
PHILOX_M1 = 0xCD9E8D57  # multiplier applied to counter word 2
PHILOX_W0 = 0x9E3779B9  # key bump of key word 0 (golden ratio)
PHILOX_W1 = 0xBB67AE85  # key bump of key word 1 (sqrt(3) - 1)

NOISE_TAG = 0x564D4C41  # "VMLA": counter word 3 of the stream noise


def _u64(a):
    return np.asarray(a, dtype=np.uint64)


def _mulhilo(m, a):
    """(hi, lo) 32-bit halves of the 64-bit product of the 32-bit numbers m and a."""
    p = np.uint64(m) * a  # < 2^64: no wrap-around
    return p >> np.uint64(32), p & MASK32


def philox4x32_10(ctr, key, rounds=10):
    """Philox4x32 with `rounds` rounds (10 by default).

    ctr: array-like [..., 4] of 32-bit counter words (c0, c1, c2, c3);
    key: array-like [..., 2] of 32-bit key words (k0, k1), broadcastable against ctr[..., :2].
    Returns uint64 array [..., 4] holding the four 32-bit output words.

    One round (MODEL.md section 7, Random123's philox4x32round):
        (hi0, lo0) = mulhilo(0xD2511F53, c0)
        (hi1, lo1) = mulhilo(0xCD9E8D57, c2)
        c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    then the key is bumped: k0 += 0x9E3779B9, k1 += 0xBB67AE85 (mod 2^32).
    """
    ctr = _u64(ctr)
    key = _u64(key)
    c0, c1, c2, c3 = ctr[..., 0], ctr[..., 1], ctr[..., 2], ctr[..., 3]
    k0, k1 = key[..., 0], key[..., 1]
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + np.uint64(PHILOX_W0)) & MASK32
        k1 = (k1 + np.uint64(PHILOX_W1)) & MASK32
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    return np.stack([c0, c1, c2, c3], axis=-1)


def seed_key(seed):
    """Philox key of a 64-bit seed: (seed & 0xffffffff, seed >> 32)."""
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError("seed must be an unsigned 64-bit integer")
    return (seed & 0xFFFFFFFF, seed >> 32)


def box_muller(ra, rb):
    """Two 32-bit words -> two standard normals, in float64 (then the caller casts to fp32).

    u = (r + 0.5) / 2^32 (never 0 nor 1);
    n0 = sqrt(-2 ln u_a) cos(2 pi u_b),  n1 = sqrt(-2 ln u_a) sin(2 pi u_b).
    """
    ua = (np.asarray(ra, dtype=np.float64) + 0.5) / 4294967296.0
    ub = (np.asarray(rb, dtype=np.float64) + 0.5) / 4294967296.0
    rad = np.sqrt(-2.0 * np.log(ua))
    ang = 2.0 * math.pi * ub
    return rad * np.cos(ang), rad * np.sin(ang)


def noise(seed, chunk, draw, shape):
    """Stream noise of chunk `chunk`, draw `draw` (0 = initial noise), as a float32 array of `shape`
    (normally [C, F, h, w]).

    Element i of the flattened tensor comes from counter (i // 4, chunk, draw, 0x564D4C41),
    output normal i % 4, where words (r0, r1) give normals (n0, n1) and (r2, r3) give (n2, n3).
    """
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    if not (0 <= chunk < 2 ** 32 and 0 <= draw < 2 ** 32):
        raise ValueError("chunk and draw must fit in 32 bits")
    nblk = (n + 3) // 4
    ctr = np.empty((nblk, 4), dtype=np.uint64)
    ctr[:, 0] = np.arange(nblk, dtype=np.uint64)
    ctr[:, 1] = chunk
    ctr[:, 2] = draw
    ctr[:, 3] = NOISE_TAG
    r = philox4x32_10(ctr, seed_key(seed))
    n0, n1 = box_muller(r[:, 0], r[:, 1])
    n2, n3 = box_muller(r[:, 2], r[:, 3])
    out = np.stack([n0, n1, n2, n3], axis=-1).reshape(-1)[:n]
    return out.astype(np.float32).reshape(shape)


# ----------------------------------------------------------------------------------------------
# Tokenizer (MODEL.md section 3)

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


def fnv1a32(data):
    """32-bit FNV-1a of a bytes object (a str is encoded as UTF-8 first)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFF
    return h


def words(text):
    """Lower-case, then split on anything that is not [a-z0-9]; empty pieces are dropped."""
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def tokenize(text, vocab, text_len):
    """Token ids (list of ints, length text_len): 1 + fnv1a32(word) % (vocab - 1) for the first
    text_len words, then 0 (padding)."""
    ids = [1 + fnv1a32(w) % (vocab - 1) for w in words(text)[:text_len]]
    return ids + [0] * (text_len - len(ids))


# ----------------------------------------------------------------------------------------------
# Sampler schedule (MODEL.md section 6)

DEFAULT_STEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 5.0


def warped_sigmas(steps=DEFAULT_STEPS, shift=DEFAULT_SHIFT):
    """sigma'_k = s*sigma_k / (1 + (s-1)*sigma_k) with sigma_k = T[k]/1000, as python floats
    (float64). The model's timestep at step k is 1000 * sigma'_k."""
    out = []
    for t in steps:
        s = float(t) / 1000.0
        out.append(shift * s / (1.0 + (shift - 1.0) * s))
    return out


def timesteps(steps=DEFAULT_STEPS, shift=DEFAULT_SHIFT):
    return [1000.0 * s for s in warped_sigmas(steps, shift)]


# ----------------------------------------------------------------------------------------------
# Known answers

# Random123 (kat_vectors) philox4x32_10: (counter, key) -> output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def self_test(verbose=True):
    """Assert the Random123 known answers and a few internal consistency properties."""
    for ctr, key, want in PHILOX_KAT:
        got = tuple(int(v) for v in philox4x32_10(ctr, key))
        if verbose:
            print("philox4x32_10 ctr=%s key=%s -> %s" % (
                "{" + ", ".join("%08x" % v for v in ctr) + "}",
                "{" + ", ".join("%08x" % v for v in key) + "}",
                "{" + ", ".join("0x%08x" % v for v in got) + "}"))
        assert got == want, "philox known answer mismatch: got %s want %s" % (
            [hex(v) for v in got], [hex(v) for v in want])
    # vectorised == scalar
    ctrs = np.array([c for c, _, _ in PHILOX_KAT], dtype=np.uint64)
    keys = np.array([k for _, k, _ in PHILOX_KAT], dtype=np.uint64)
    got = philox4x32_10(ctrs, keys)
    assert [tuple(int(v) for v in row) for row in got] == [w for _, _, w in PHILOX_KAT]
    # FNV-1a known answers (from the FNV reference test suite)
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968
    # noise: element i and the prefix property (a longer tensor starts with the same numbers)
    a = noise(0x123456789, 1, 2, (4, 3, 4, 6)).reshape(-1)
    b = noise(0x123456789, 1, 2, (7,))
    assert np.array_equal(a[:7], b)
    r = philox4x32_10((0, 1, 2, NOISE_TAG), seed_key(0x123456789))
    n0, n1 = box_muller(r[0], r[1])
    n2, n3 = box_muller(r[2], r[3])
    assert np.array_equal(a[:4], np.array([n0, n1, n2, n3], dtype=np.float32))
    # schedule
    ts = timesteps()
    assert ts[0] == 1000.0 and ts[1] == 937.5 and abs(ts[2] - 2500.0 / 3.0) < 1e-9 and ts[3] == 625.0
    # tokenizer
    assert words("A red-square, MOVING  left!") == ["a", "red", "square", "moving", "left"]
    assert tokenize("", 64, 8) == [0] * 8
    assert len(tokenize("one two three four five six seven eight nine ten", 64, 8)) == 8


def main():
    self_test(verbose=True)
    print("philox known answers: OK")
    seed = 0x123456789
    print("seed %d -> key (0x%08x, 0x%08x)" % ((seed,) + seed_key(seed)))
    for n, k in ((0, 0), (1, 2)):
        z = noise(seed, n, k, (4, 3, 4, 6))
        flat = z.reshape(-1)
        print("noise(seed, chunk=%d, draw=%d)[0:8] = %s" % (
            n, k, " ".join("%.9g" % v for v in flat[:8])))
        print("   mean %.6f std %.6f (288 values)" % (float(z.mean()), float(z.std())))
    r = philox4x32_10((0, 0, 0, NOISE_TAG), seed_key(seed))
    print("philox ctr=(0,0,0,0x564d4c41) key=seed_key(seed) -> %s" % (
        ", ".join("0x%08x" % int(v) for v in r)))
    big = noise(seed, 0, 0, (1 << 20,)).astype(np.float64)
    print("noise 2^20 values: mean %.5f std %.5f (expect ~0, ~1)" % (big.mean(), big.std()))
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1.0) < 0.01
    prompt = "a red square moving left"
    print("tokens(%r, vocab 64, len 8) = %s" % (prompt, tokenize(prompt, 64, 8)))
    for w in words(prompt):
        print("   fnv1a32(%r) = 0x%08x" % (w, fnv1a32(w)))
    print("timesteps 1000*sigma' =", timesteps())
    print("all vmla_rng checks passed")


if __name__ == "__main__":
    main()
