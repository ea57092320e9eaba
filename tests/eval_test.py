#!/usr/bin/python3
"""tests/eval_test.py: the evaluator (tools/eval/evaluate.py) judges right and wrong.

Renders ground-truth videos with the training data generator (tools/train/data.py), passes them
through a y4m round trip like vmla-gen's output, and checks that the evaluator accepts each
video for its own prompt and rejects it for a prompt with another colour, shape, direction or
background; and that stability fails on a frozen video and on noise.
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
sys.path.insert(0, os.path.join(ROOT, "tools", "eval"))
import data as D  # noqa: E402
import evaluate as E  # noqa: E402

passed = failed = 0


def check(c, what):
    global passed, failed
    passed += bool(c)
    failed += not c
    print(("ok: " if c else "FAIL: ") + what)


def y4m_roundtrip(frames):
    """RGB -> BT.601 limited-range I420 -> RGB, as the real pipeline does."""
    rgb = frames * 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    u = u.reshape(u.shape[0], 48, 2, 48, 2).mean((2, 4)).repeat(2, 1).repeat(2, 2)
    v = v.reshape(v.shape[0], 48, 2, 48, 2).mean((2, 4)).repeat(2, 1).repeat(2, 2)
    y, u, v = np.round(y), np.round(u), np.round(v)
    yy = (y - 16.0) * (255.0 / 219.0)
    uu, vv = (u - 128.0) * (255.0 / 224.0), (v - 128.0) * (255.0 / 224.0)
    out = np.stack([yy + 1.402 * vv, yy - 0.344136 * uu - 0.714136 * vv, yy + 1.772 * uu], -1) / 255.0
    return np.clip(out, 0, 1).astype(np.float32)


def video(combo, seconds, seed):
    rng = np.random.default_rng(seed)
    size, speed = rng.uniform(9, 15), rng.uniform(0.8, 2.2)
    lo, hi = size + 1, 96 - size - 1
    p = D.params_for(*combo, size=size, speed=speed, x0=rng.uniform(lo, hi), y0=rng.uniform(lo, hi))
    t = np.arange(int(seconds * 16), dtype=np.float32)[None]
    return y4m_roundtrip(D.render(p, t)[0])


def main():
    held = D.load_heldout()
    rng = np.random.default_rng(3)
    for k, i in enumerate(rng.permutation(len(held))[:8]):
        combo = held[i]
        fr = video(combo, 5, k)
        m = E.analyse(fr)
        res, got = E.window_adherence(m, 0, 80, combo, True)
        check(res["adherent"], "%s: adherent (%s)" % (D.caption(*combo), got))
        c, s, d, b = combo
        wrong = [(next(x for x in D.COLOUR_NAMES if x not in (c, b)), s, d, b),
                 (c, next(x for x in D.SHAPES if x != s), d, b),
                 (c, s, {"left": "right", "right": "left", "up": "down", "down": "up"}[d], b),
                 (c, s, d, next(x for x in D.BACKGROUNDS if x not in (c, b)))]
        for w in wrong:
            check(not E.window_adherence(m, 0, 80, w, True)[0]["adherent"], "  rejects '%s'" % D.caption(*w))
    # the 60 s test (the last 5 s): the axis of motion, also for a video that moves in steps
    # (each position held for 4 frames, as the models' videos move latent frame by latent frame)
    for k, combo in enumerate(held[:4]):
        fr = video(combo, 12, 50 + k)
        stepped = fr[(np.arange(len(fr)) // 4) * 4]
        other = {"left": "up", "right": "down", "up": "left", "down": "right"}[combo[2]]
        for name, v in (("smooth", fr), ("stepped", stepped)):
            m = E.analyse(v)
            T = len(v)
            ok = E.window_adherence(m, T - 80, T, combo, False)[0]
            check(ok["direction"], "%s (%s): 60 s axis right" % (D.caption(*combo), name))
            bad = E.window_adherence(m, T - 80, T, combo[:2] + (other,) + combo[3:], False)[0]
            check(not bad["direction"], "  rejects the other axis ('%s')" % other)
    combo = held[0]
    fr = video(combo, 12, 99)
    m = E.analyse(fr)
    st, extra = E.stability(m)
    check(st["stable"], "a moving ground-truth video is stable (%s)" % extra)
    frozen = np.repeat(fr[:1], len(fr), 0)
    st, _ = E.stability(E.analyse(frozen))
    check(not st["stable"] and not st["moving"], "a frozen video is not")
    noise = np.random.default_rng(0).random(fr.shape).astype(np.float32)
    st, _ = E.stability(E.analyse(np.concatenate([fr[:16], noise[16:]])))
    check(not st["stable"], "a video that turns to noise is not")
    # --prompt must name all four attributes: refused with a usage error before anything runs
    import subprocess
    for bad in ("a red thing", "", "a red square moving left"):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval", "evaluate.py"),
                            "--gen", "/nonexistent/vmla-gen", "--prompt", bad, "--seconds", "5"],
                           capture_output=True, text=True)
        check(r.returncode == 2 and "name a colour, a shape" in r.stderr,
              "--prompt %r refused (exit %d)" % (bad, r.returncode))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
