#!/usr/bin/python3
"""tools/eval/evaluate.py: does the bundled model's video show what the prompt says, for a minute?

Runs the C engine (build/vmla-gen, CPU) on a prompt set that includes held-out combinations
(tools/train/heldout.json: never seen in training), decodes each video and measures, with numpy
only (Debian's python3-numpy, so it runs in CI):

  per frame   background colour (median of the border, nearest palette colour), the object mask
              (pixels far from the background), its colour (median, nearest palette colour), its
              centroid, area, and shape (best IoU against the five shapes rendered by
              tools/train/data.py at the object's position and size)
  adherence   over a window: colour, shape and background are the prompt's in most frames, and the
              object moves along the prompt's direction (5 s: the direction of the first clear move
              (2 px); 60 s: the axis along which the centroid spreads over the window, since it
              bounces at the walls)
  stability   over the last 5 s of a 60 s video: the object is present in >= 90% of frames with an
              area within 0.33x..3x of its first-second area, colour and background hold, it moves
              (centroid path >= 4 px a second), and the frame is not noise (>= 50% background pixels)

prompt set  --held N held-out and --seen M training combinations, generated for --seconds (60):
            adherence at 5 s and 60 s and stability; plus --short-held K and --short-seen J more,
            generated for 5 s only, which count in the 5 s adherence (a larger sample at little
            cost: one 60 s video costs as much as ~12 of 5 s). Held-out prompts are drawn without
            repetition from tools/train/heldout.json (seed 7), seen ones from the combinations kept
            in training, then from the training combinations (seed 8). Video i has seed --seed + i.

Usage: evaluate.py --preset tiny --model models/vmla-tiny.safetensors [--held 8 --seen 2]
                   [--short-held 16 --short-seen 4] [--seconds 60] [--json out.json]
                   [--gen build/vmla-gen] [--seed 1] [--prompt-seed 7]
                   [--sampler-steps 1000,750,500,250 --sampler-shift 5] [--device cuda]
       evaluate.py ... --prompt "a red square moving left on a white background" [--prompt ...]
                   [--seeds 4] --seconds 5        (given prompts, each with seeds --seed..)
--seed and --prompt-seed other than 1 and 7 give another prompt set and other noise, for choosing
settings apart from the standard set; --sampler-* are passed to vmla-gen (without them the model
file's sampler runs).
Prints one line per video and a summary table; exit 0 (the numbers are the result; targets are
judged by whoever reads them, see models/README.md).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import data as D  # noqa: E402  (numpy only)

PALETTE = D.colour_table()  # [10, 3] in [0, 1]


def read_y4m(path):
    """Frames [T, H, W, 3] float32 in [0, 1] (BT.601 limited range, as server/encode writes)."""
    with open(path, "rb") as f:
        raw = f.read()
    nl = raw.index(b"\n")
    hdr = raw[:nl].split()
    W = int([h for h in hdr if h.startswith(b"W")][0][1:])
    H = int([h for h in hdr if h.startswith(b"H")][0][1:])
    fsz = W * H * 3 // 2
    frames, pos = [], nl + 1
    while pos < len(raw):
        if raw[pos:pos + 6] != b"FRAME\n":
            raise ValueError("bad y4m frame at %d" % pos)
        pos += 6
        buf = np.frombuffer(raw, np.uint8, fsz, pos).astype(np.float32)
        pos += fsz
        y = buf[:W * H].reshape(H, W)
        u = buf[W * H:W * H + W * H // 4].reshape(H // 2, W // 2).repeat(2, 0).repeat(2, 1)
        v = buf[W * H + W * H // 4:].reshape(H // 2, W // 2).repeat(2, 0).repeat(2, 1)
        yy = (y - 16.0) * (255.0 / 219.0)
        uu, vv = (u - 128.0) * (255.0 / 224.0), (v - 128.0) * (255.0 / 224.0)
        r = yy + 1.402 * vv
        g = yy - 0.344136 * uu - 0.714136 * vv
        b = yy + 1.772 * uu
        frames.append(np.clip(np.stack([r, g, b], -1) / 255.0, 0, 1))
    return np.stack(frames)


def nearest(rgb, names):
    idx = [D.COLOUR_NAMES.index(n) for n in names]
    d = ((PALETTE[idx] - rgb[None]) ** 2).sum(-1)
    return names[int(np.argmin(d))]


def analyse(frames):
    """Per-frame measurements: dict of lists."""
    T, H, W, _ = frames.shape
    g = np.arange(W, dtype=np.float32) + 0.5
    out = {"bg": [], "colour": [], "cx": [], "cy": [], "area": [], "shape": [], "bgfrac": []}
    for t in range(T):
        f = frames[t]
        border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
        bg = np.median(border, 0)
        dist = np.sqrt(((f - bg) ** 2).sum(-1))
        mask = dist > 0.25
        out["bg"].append(nearest(bg, D.BACKGROUNDS))
        out["bgfrac"].append(float((dist < 0.15).mean()))
        area = int(mask.sum())
        out["area"].append(area)
        if area < 6:
            out["colour"].append(None)
            out["cx"].append(np.nan)
            out["cy"].append(np.nan)
            out["shape"].append(None)
            continue
        out["colour"].append(nearest(np.median(f[mask], 0), [c for c in D.COLOUR_NAMES]))
        ys, xs = np.nonzero(mask)
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        out["cx"].append(float(cx))
        out["cy"].append(float(cy))
        # shape: IoU with each shape rendered at the bounding box's centre and half-size
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        s = max(x1 - x0, y1 - y0) / 2.0
        bx, by = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        # the triangle's box is taller below its centre: its centre is 0.125 s below the box's
        best, best_iou = None, -1.0
        for k, name in enumerate(D.SHAPES):
            oy = by + (0.125 * s if name == "triangle" else 0.0)
            dx = g[None, :] - bx
            dy = g[:, None] - oy
            tmpl = D.shape_distance(k, dx, dy, s) < 0
            inter = (tmpl & mask).sum()
            iou = inter / max(1, (tmpl | mask).sum())
            if iou > best_iou:
                best, best_iou = name, iou
        out["shape"].append(best)
    return out


def mode(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    vals, counts = np.unique(xs, return_counts=True)
    return str(vals[np.argmax(counts)])


def frac(xs, want):
    xs = list(xs)
    return sum(1 for x in xs if x == want) / max(1, len(xs))


def direction_of(cx, cy):
    """The direction of the first clear move (2 px from the start): objects bounce at the walls,
    so a later window may legitimately move the other way."""
    ok = np.isfinite(cx) & np.isfinite(cy)
    if ok.sum() < 4:
        return None, 0.0
    cx, cy = cx[ok], cy[ok]
    dx, dy = cx - cx[0], cy - cy[0]
    far = np.nonzero(np.maximum(np.abs(dx), np.abs(dy)) > 2.0)[0]
    if not len(far):
        return None, 0.0
    t = far[0]
    if abs(dx[t]) >= abs(dy[t]):
        return ("right" if dx[t] > 0 else "left"), float(abs(dx[t]) / t)
    return ("down" if dy[t] > 0 else "up"), float(abs(dy[t]) / t)


def axis_of(cx, cy):
    """The axis along which the centroid spreads more over the window (5th to 95th percentile).
    (A median of per-frame steps, used before, calls a video that moves in steps, as the models'
    do, latent frame by latent frame, 'still' on its axis and lets jitter decide.)"""
    ok = np.isfinite(cx) & np.isfinite(cy)
    if ok.sum() < 4:
        return None
    sx = np.percentile(cx[ok], 95) - np.percentile(cx[ok], 5)
    sy = np.percentile(cy[ok], 95) - np.percentile(cy[ok], 5)
    return "h" if sx >= sy else "v"


def window_adherence(m, a, b, want, first_second):
    colour, shape, direction, background = want
    sl = slice(a, b)
    got = {"colour": mode(m["colour"][sl]), "shape": mode(m["shape"][sl]), "background": mode(m["bg"][sl])}
    cx, cy = np.array(m["cx"][sl]), np.array(m["cy"][sl])
    if first_second:
        got["direction"], _ = direction_of(cx[:16], cy[:16])
        dir_ok = got["direction"] == direction
    else:
        got["axis"] = axis_of(cx, cy)
        dir_ok = got["axis"] == ("h" if direction in ("left", "right") else "v")
    res = {"colour": got["colour"] == colour, "shape": got["shape"] == shape,
           "background": got["background"] == background, "direction": dir_ok}
    res["adherent"] = all(res.values())
    return res, got


def stability(m, fps=16):
    T = len(m["area"])
    a = max(0, T - 5 * fps)
    first = [x for x in m["area"][:fps] if x >= 6]
    a0 = np.median(first) if first else 0
    win = range(a, T)
    present = [a0 > 0 and m["area"][t] >= 6 and a0 / 3 <= m["area"][t] <= 3 * a0 for t in win]
    cx, cy = np.array(m["cx"][a:]), np.array(m["cy"][a:])
    steps = np.sqrt(np.diff(cx) ** 2 + np.diff(cy) ** 2)
    path = float(np.nansum(steps)) / 5.0
    res = {"present": float(np.mean(present)) >= 0.9,
           "colour_holds": mode(m["colour"][a:]) == mode(m["colour"][:fps]),
           "background_holds": mode(m["bg"][a:]) == mode(m["bg"][:fps]),
           "moving": path >= 4.0,
           "not_noise": float(np.median(m["bgfrac"][a:])) >= 0.5}
    res["stable"] = all(res.values())
    return res, {"path_px_per_s": path, "present_frac": float(np.mean(present))}


def prompts(n_held, n_seen, seed=7, short_held=0, short_seen=0):
    """[(combination, held_out, long)]: the long videos first (the first n_held held-out
    combinations of a seeded permutation, then the first n_seen of KEEP_IN_TRAINING), then the
    short ones (the next short_held held-out combinations, then training combinations not used yet
    in a seeded order: KEEP_IN_TRAINING's rest first)."""
    held = D.load_heldout()
    rng = np.random.default_rng(seed)
    order = [held[i] for i in rng.permutation(len(held))]
    if n_held + short_held > len(order):
        raise ValueError("only %d held-out combinations" % len(order))
    keep = [tuple(c) for c in D.KEEP_IN_TRAINING]
    train = D.train_combos()
    rest = [train[i] for i in np.random.default_rng(seed + 1).permutation(len(train))]
    seen_order = keep + [c for c in rest if c not in keep]
    out = [(c, True, True) for c in order[:n_held]] + [(c, False, True) for c in seen_order[:n_seen]]
    out += [(c, True, False) for c in order[n_held:n_held + short_held]]
    out += [(c, False, False) for c in seen_order[n_seen:n_seen + short_seen]]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", default=os.path.join(ROOT, "build", "vmla-gen"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "vmla-tiny.safetensors"))
    ap.add_argument("--held", type=int, default=6, help="held-out prompts")
    ap.add_argument("--seen", type=int, default=2, help="prompts seen in training")
    ap.add_argument("--short-held", type=int, default=0, help="more held-out prompts, 5 s videos")
    ap.add_argument("--short-seen", type=int, default=0, help="more prompts seen in training, 5 s videos")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--prompt-seed", type=int, default=7,
                    help="seed of the prompt draw (7: the standard set; another one for tuning)")
    ap.add_argument("--device", default="", help="vmla-gen --device (cpu, cuda; default vmla-gen's: cpu)")
    ap.add_argument("--sampler-steps", help="vmla-gen --sampler-steps (default: the model file's)")
    ap.add_argument("--sampler-shift", help="vmla-gen --sampler-shift (default: the model file's)")
    ap.add_argument("--prompt", action="append", default=[],
                    help="evaluate this prompt (repeatable; it must name colour, shape, direction and "
                    "background) instead of a drawn set, with seeds --seed .. --seed + --seeds - 1")
    ap.add_argument("--seeds", type=int, default=4, help="seeds a --prompt (default 4)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.prompt:
        if args.seeds < 1:
            ap.error("--seeds must be at least 1")
        heldset = {tuple(c) for c in D.load_heldout()}
        items = []
        for text in args.prompt:
            combo = D.parse_prompt(text)
            if None in combo:
                ap.error("--prompt %r: name a colour, a shape, a direction and a background "
                         "(e.g. 'a red square moving left on a white background')" % text)
            items += [(text, combo, combo in heldset, args.seconds >= 10, args.seed + k) for k in range(args.seeds)]
    else:
        items = [(D.caption(*combo), combo, held, long_, args.seed + i) for i, (combo, held, long_) in
                 enumerate(prompts(args.held, args.seen, seed=args.prompt_seed,
                                   short_held=args.short_held, short_seen=args.short_seen))]
    gen_extra = ["--device", args.device] if args.device else []
    if args.sampler_steps:
        gen_extra += ["--sampler-steps", args.sampler_steps]
    if args.sampler_shift:
        gen_extra += ["--sampler-shift", args.sampler_shift]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (text, combo, held, long_, seed) in enumerate(items):
            path = os.path.join(tmp, "v%d.y4m" % i)
            secs = args.seconds if long_ else min(args.seconds, 5.0)
            r = subprocess.run([args.gen, "--preset", args.preset, "--model", args.model, "--prompt", text,
                                "--seed", str(seed), "--seconds", str(secs), "--out", path] + gen_extra,
                               capture_output=True, text=True)
            if r.returncode:
                print("vmla-gen failed: " + r.stderr.strip())
                return 1
            frames = read_y4m(path)
            os.unlink(path)
            m = analyse(frames)
            a5, g5 = window_adherence(m, 0, min(len(frames), 80), combo, True)
            row = {"prompt": text, "heldout": held, "seconds": secs, "adh5": a5, "got5": g5}
            if secs >= 10:
                T = len(frames)
                a60, g60 = window_adherence(m, max(0, T - 80), T, combo, False)
                st, extra = stability(m)
                row.update({"adh60": a60, "got60": g60, "stab": st, "stab_extra": extra})
            rows.append(row)
            print("%-58s %s %2ds%s 5s:%s%s" % (text[:58], "held" if held else "seen", secs,
                                        " seed %d" % seed if args.prompt else "",
                                        "ok " if a5["adherent"] else "NO  (%s)" % g5,
                                        (" 60s:%s stable:%s" % ("ok" if row["adh60"]["adherent"] else "NO",
                                                                "ok" if row["stab"]["stable"] else "NO %s" % row["stab"]))
                                        if "adh60" in row else ""))
            sys.stdout.flush()
    def pct(xs):
        xs = list(xs)
        return 100.0 * sum(xs) / max(1, len(xs))
    held = [r for r in rows if r["heldout"]]
    longs = [r for r in rows if "adh60" in r]
    held_long = [r for r in longs if r["heldout"]]
    summ = {"preset": args.preset, "model": os.path.basename(args.model), "videos": len(rows),
            "device": args.device or "cpu", "sampler_steps": args.sampler_steps or "file", "sampler_shift": args.sampler_shift or "file",
            "prompt_seed": args.prompt_seed, "seed": args.seed,
            "heldout": len(held), "seconds": args.seconds, "videos_long": len(longs),
            "heldout_long": len(held_long),
            "adherence_5s_heldout": pct(r["adh5"]["adherent"] for r in held),
            "adherence_5s_all": pct(r["adh5"]["adherent"] for r in rows),
            "colour_5s": pct(r["adh5"]["colour"] for r in rows), "shape_5s": pct(r["adh5"]["shape"] for r in rows),
            "direction_5s": pct(r["adh5"]["direction"] for r in rows),
            "background_5s": pct(r["adh5"]["background"] for r in rows)}
    if longs:
        summ.update({"adherence_60s_heldout": pct(r["adh60"]["adherent"] for r in held_long),
                     "adherence_60s_all": pct(r["adh60"]["adherent"] for r in longs),
                     "stability_60s": pct(r["stab"]["stable"] for r in longs),
                     "colour_60s": pct(r["adh60"]["colour"] for r in longs),
                     "shape_60s": pct(r["adh60"]["shape"] for r in longs)})
    print(json.dumps(summ))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summ, "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
