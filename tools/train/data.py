"""Procedural captioned videos for the bundled model (numpy; the renderer also runs on torch).

A video is 96x96 RGB at 16 fps: one shape (square, circle, triangle, ring, cross) of one colour
moves at constant speed in a stated direction (left, right, up, down) over a plain background,
and bounces at the edges (its velocity reverses when it reaches a wall). Start position, size and
speed are random within ranges; the caption states colour, shape, initial direction and
background ("a red square moving left on a white background", or one of a few variants).

The position at any time is a closed-form triangle wave, so any frame of a video, however late,
is rendered without rendering those before it: a training clip can be frame 0 (the stream's sink
frame) plus a window of frames around second 50.

The renderer (`render`) is written with operations numpy and torch share, so training renders the
same videos on the GPU (pass `xp=torch` and torch tensors).

Vocabulary: VOCAB below (word k -> token id k + 2; 1 = unknown word, 0 = padding), stored in the
exported weight file's metadata "vmla.vocab" (docs/MODEL.md section 3).

Held-out combinations: a seeded ~12% of (colour, shape, direction, background) combinations never
appear in training; `heldout.json` beside this file lists them (written by `python3 data.py
--write-heldout`, checked by `--check`).

    python3 tools/train/data.py --check                 # self-checks (numpy only)
    python3 tools/train/data.py --preview out/prev      # a few PNG frames to look at
"""

import argparse
import json
import math
import os
import re
import struct
import zlib

import numpy as np

SIZE = 96            # video height = width
FPS = 16
TEXT_LEN = 12        # token rows of the prompt
FRAMES_PER_LATENT = 4

COLOURS = {          # name -> RGB in [0, 1]; well separated
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.12, 0.22, 0.95),
    "yellow": (0.98, 0.90, 0.10),
    "magenta": (0.90, 0.10, 0.85),
    "cyan": (0.10, 0.85, 0.90),
    "white": (1.00, 1.00, 1.00),
    "black": (0.00, 0.00, 0.00),
    "orange": (1.00, 0.55, 0.00),
    "gray": (0.50, 0.50, 0.50),
}
COLOUR_NAMES = list(COLOURS)
BACKGROUNDS = ["white", "black", "gray", "blue", "green", "yellow"]
SHAPES = ["square", "circle", "triangle", "ring", "cross"]
DIRECTIONS = ["left", "right", "up", "down"]
DIR_VEC = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

TEMPLATES = [
    "a {c} {s} moving {d} on a {b} background",
    "a {c} {s} moves {d} on a {b} background",
    "{c} {s} moving {d} on {b}",
    "a {c} {s} going {d} over a {b} background",
    "a {c} {s} on a {b} background moving {d}",
    "a {c} {s} heading {d} across a {b} background",
]
# Synonyms the captions use now and then (each word is in the vocabulary).
SYNONYMS = {"gray": ["grey"]}

VOCAB = (COLOUR_NAMES + ["grey"] + SHAPES + DIRECTIONS +
         ["a", "moving", "moves", "going", "heading", "on", "over", "across", "background"])
assert len(VOCAB) == len(set(VOCAB)) and len(VOCAB) <= 62
VOCAB_STRING = " ".join(VOCAB)
WORD_ID = {w: k + 2 for k, w in enumerate(VOCAB)}
UNK, PAD = 1, 0

SIZE_RANGE = (9.0, 15.0)      # half-size of the shape in pixels (recipe v1)
SPEED_RANGE = (0.8, 2.2)      # pixels per video frame (recipe v1)
# Data recipes (models/README.md, "Data"): v1 = the ranges above with a uniform start (the GPU
# pre-training of the first models); v2 = larger objects, a narrow speed range and a start at the
# frame's centre, so that the first chunk of a prompt is nearly one video (a few-step sampler of an
# MSE-trained model draws the mean of what the prompt allows: a narrow distribution makes the mean
# a sharp object of the right shape instead of a faint smear).
RECIPES = {
    "v1": {"size": SIZE_RANGE, "speed": SPEED_RANGE, "start": None},
    "v2": {"size": (12.0, 14.0), "speed": (1.3, 1.7), "start": 2.0},
    # v3: the video is a function of the prompt (half-size 13, 1.5 px/frame, start at the centre):
    # what an MSE-trained few-step model draws is then the video itself, not a blurred mean of
    # sizes, speeds and positions (the rounded squares of the v2 models; models/README.md)
    "v3": {"size": (13.0, 13.0), "speed": (1.5, 1.5), "start": 0.0},
}
HELDOUT_FRACTION = 0.12
HELDOUT_SEED = 20261201
# Prompts that must stay in training (the demo prompt and the parity golden's prompt).
KEEP_IN_TRAINING = [("red", "square", "left", "white"), ("blue", "circle", "right", "black"),
                    ("yellow", "triangle", "up", "blue"), ("green", "ring", "down", "gray"),
                    ("white", "cross", "left", "black")]

HERE = os.path.dirname(os.path.abspath(__file__))
HELDOUT_PATH = os.path.join(HERE, "heldout.json")

# ==============================================================================================
# Tokenizer (docs/MODEL.md section 3, vocabulary mode)


def words(text):
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def tokenize(text, text_len=TEXT_LEN, vocab=VOCAB):
    ids = {w: k + 2 for k, w in enumerate(vocab)}
    out = [ids.get(w, UNK) if len(w) <= 64 else UNK for w in words(text)[:text_len]]
    return out + [PAD] * (text_len - len(out))


# ==============================================================================================
# Combinations and the held-out split


def all_combos():
    """Every (colour, shape, direction, background) with colour != background."""
    return [(c, s, d, b) for c in COLOUR_NAMES for s in SHAPES for d in DIRECTIONS
            for b in BACKGROUNDS if c != b]


def make_heldout():
    combos = all_combos()
    rng = np.random.default_rng(HELDOUT_SEED)
    n = int(round(HELDOUT_FRACTION * len(combos)))
    keep = set(KEEP_IN_TRAINING)
    order = [combos[i] for i in rng.permutation(len(combos))]
    held = sorted([c for c in order if c not in keep][:n])
    return held


def load_heldout():
    if os.path.exists(HELDOUT_PATH):
        with open(HELDOUT_PATH) as f:
            return [tuple(x) for x in json.load(f)["combinations"]]
    return make_heldout()


def write_heldout(path=HELDOUT_PATH):
    held = make_heldout()
    doc = {"about": "(colour, shape, direction, background) combinations never used in training "
                    "of the bundled models; tools/train/data.py make_heldout(), seed %d, %.0f%% of "
                    "%d combinations" % (HELDOUT_SEED, 100 * HELDOUT_FRACTION, len(all_combos())),
           "seed": HELDOUT_SEED, "fraction": HELDOUT_FRACTION, "count": len(held),
           "prompts": [caption(*c, template=0) for c in held],
           "combinations": [list(c) for c in held]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return held


def train_combos():
    held = set(load_heldout())
    return [c for c in all_combos() if c not in held]


def caption(colour, shape, direction, background, template=0, rng=None):
    """The caption of a combination; `rng` (np.random.Generator) picks synonyms when given."""
    def name(w):
        if rng is not None and w in SYNONYMS and rng.random() < 0.3:
            return SYNONYMS[w][int(rng.integers(len(SYNONYMS[w])))]
        return w
    return TEMPLATES[template].format(c=name(colour), s=shape, d=direction, b=name(background))


def parse_prompt(text):
    """(colour, shape, direction, background) named by a prompt in the templates' form, with
    None where a slot is missing. The first colour word is the shape's, a colour word after 'on'
    or 'over' is the background's."""
    ws = words(text)
    canon = {"grey": "gray"}
    col = shp = dr = bg = None
    after_on = False
    for w in ws:
        w = canon.get(w, w)
        if w in ("on", "over", "across"):
            after_on = True
        elif w in COLOURS:
            if after_on and bg is None:
                bg = w
            elif col is None:
                col = w
        elif w in SHAPES and shp is None:
            shp = w
        elif w in DIRECTIONS and dr is None:
            dr = w
    return col, shp, dr, bg


# ==============================================================================================
# Video parameters


def sample_params(rng, n, combos=None, template=None, start=None, size_range=SIZE_RANGE,
                  speed_range=SPEED_RANGE):
    """n random videos: dict of numpy arrays (length n) and the list of captions.

    colour/shape/direction/background indices, half-size `size`, `speed` (px/frame), start
    position (x0, y0) (pixel coordinates of the centre, 0..96), and token ids [n, TEXT_LEN].
    start: None (uniform over the frame) or a jitter J: the start is the frame's centre
    +- U(-J, J) pixels (the fine-tuning data, see models/README.md); size_range, speed_range:
    the half-size and speed ranges (RECIPES)."""
    combos = combos if combos is not None else train_combos()
    pick = rng.integers(len(combos), size=n)
    col = np.array([COLOUR_NAMES.index(combos[i][0]) for i in pick])
    shp = np.array([SHAPES.index(combos[i][1]) for i in pick])
    drc = np.array([DIRECTIONS.index(combos[i][2]) for i in pick])
    bgi = np.array([COLOUR_NAMES.index(combos[i][3]) for i in pick])
    size = rng.uniform(*size_range, size=n)
    speed = rng.uniform(*speed_range, size=n)
    lo = size + 1.0
    hi = SIZE - size - 1.0
    x0 = lo + (hi - lo) * rng.random(n)
    y0 = lo + (hi - lo) * rng.random(n)
    if start is not None:
        x0 = SIZE / 2.0 + rng.uniform(-start, start, size=n)
        y0 = SIZE / 2.0 + rng.uniform(-start, start, size=n)
    tmpl = rng.integers(len(TEMPLATES), size=n) if template is None else np.full(n, template)
    caps = [caption(*combos[i], template=int(t), rng=rng) for i, t in zip(pick, tmpl)]
    toks = np.array([tokenize(c) for c in caps], dtype=np.int64)
    p = {"colour": col, "shape": shp, "direction": drc, "background": bgi, "size": size,
         "speed": speed, "x0": x0, "y0": y0, "tokens": toks}
    return p, caps


def params_for(colour, shape, direction, background, size=12.0, speed=1.5, x0=48.0, y0=48.0):
    """Parameters of one given video (for previews and evaluation)."""
    p = {"colour": np.array([COLOUR_NAMES.index(colour)]), "shape": np.array([SHAPES.index(shape)]),
         "direction": np.array([DIRECTIONS.index(direction)]),
         "background": np.array([COLOUR_NAMES.index(background)]),
         "size": np.array([float(size)]), "speed": np.array([float(speed)]),
         "x0": np.array([float(x0)]), "y0": np.array([float(y0)]),
         "tokens": np.array([tokenize(caption(colour, shape, direction, background))])}
    return p


def colour_table():
    return np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)      # [10, 3]


def dir_table():
    return np.array([DIR_VEC[d] for d in DIRECTIONS], dtype=np.float32)        # [4, 2]


def positions(size, speed, x0, y0, dvec, t, xp=np):
    """Centre (x, y) at video-frame times t [..., T] of videos whose arrays broadcast as [..., 1].
    Each coordinate moves at dvec * speed px/frame and bounces between size+1 and 96-size-1:
    pos = lo + L - |((p0 - lo + v t) mod 2L) - L|, a triangle wave."""
    lo = size + 1.0
    L = (SIZE - size - 1.0) - lo

    def bounce(p0, v):
        u = (p0 - lo + v * t) % (2.0 * L)
        return lo + L - xp.abs(u - L)
    return bounce(x0, dvec[..., 0:1] * speed), bounce(y0, dvec[..., 1:2] * speed)


def shape_distance(shape, dx, dy, s, xp=np):
    """Approximate signed distance (pixels, < 0 inside) of each shape, all broadcast shapes;
    `shape` is an integer array broadcast like dx. Selects per element with where."""
    ax, ay = xp.abs(dx), xp.abs(dy)
    d_square = xp.maximum(ax, ay) - s
    r = xp.sqrt(dx * dx + dy * dy)
    d_circle = r - s
    # triangle pointing up: apex (0, -s), base y = +0.75 s, base half-width s
    base = dy - 0.75 * s
    # side through (0, -s) and (s, 0.75 s): normal (1.75, -1)/|.| outward for the right side
    nrm = math.sqrt(1.75 ** 2 + 1.0)
    side = (1.75 * ax - (dy + s)) / nrm
    d_tri = xp.maximum(base, side)
    d_ring = xp.abs(r - 0.7 * s) - 0.3 * s
    arm = 0.35 * s
    d_cross = xp.minimum(xp.maximum(ax - s, ay - arm), xp.maximum(ax - arm, ay - s))
    d = d_square
    d = xp.where(shape == 1, d_circle, d)
    d = xp.where(shape == 2, d_tri, d)
    d = xp.where(shape == 3, d_ring, d)
    d = xp.where(shape == 4, d_cross, d)
    return d


def render(p, t, xp=np, grid=None, tables=None):
    """Frames of videos `p` at video-frame times t: RGB [n, T, 96, 96, 3] in [0, 1].

    p: dict of arrays [n] (numpy, or torch tensors with xp=torch); t: [n, T] (float);
    grid: (gx, gy) pixel-centre coordinates [96] (made with numpy when None);
    tables: (colour_table [10, 3], dir_table [4, 2]) of xp's array type (numpy when None)."""
    if grid is None:
        g = np.arange(SIZE, dtype=np.float32) + 0.5
        grid = (g, g)
    if tables is None:
        tables = (colour_table(), dir_table())
    ctab, dtab = tables
    gx, gy = grid
    size = p["size"][:, None]
    speed = p["speed"][:, None]
    dvec = dtab[p["direction"]]                                            # [n, 2]
    cx, cy = positions(size, speed, p["x0"][:, None], p["y0"][:, None], dvec, t, xp)   # [n, T]
    dx = gx[None, None, None, :] - cx[:, :, None, None]                   # [n, T, 1, 96]
    dy = gy[None, None, :, None] - cy[:, :, None, None]                   # [n, T, 96, 1]
    s = size[:, :, None, None]
    shp = p["shape"][:, None, None, None]
    d = shape_distance(shp, dx, dy, s, xp)                                 # [n, T, 96, 96]
    a = xp.clip(0.5 - d, 0.0, 1.0)[..., None]                              # 1-pixel antialiasing
    fg = ctab[p["colour"]][:, None, None, None, :]
    bg = ctab[p["background"]][:, None, None, None, :]
    return bg + a * (fg - bg)


def latent_frame_times(frames, xp=np):
    """Video-frame times of latent frames `frames` [..., F]: [..., F*4], latent frame f covers
    video frames 4f .. 4f+3 (every latent frame, the first included, stands for 4 frames)."""
    sub = np.arange(FRAMES_PER_LATENT)
    if xp is np:
        return (frames[..., :, None] * FRAMES_PER_LATENT + sub).reshape(*frames.shape[:-1], -1)
    sub = xp.arange(FRAMES_PER_LATENT, device=frames.device)
    return (frames[..., :, None] * FRAMES_PER_LATENT + sub).reshape(*frames.shape[:-1], -1)


# ==============================================================================================
# PNG (for looking at frames without extra packages)


def write_png(path, rgb):
    """rgb: uint8 [h, w, 3] or float [h, w, 3] in [0, 1]."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def tile(frames, cols):
    """[n, h, w, 3] -> one image of `cols` columns with 2-pixel gaps."""
    n, h, w, _ = frames.shape
    rows = (n + cols - 1) // cols
    out = np.full((rows * (h + 2), cols * (w + 2), 3), 0.35, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = frames[i]
    return out


# ==============================================================================================
# Checks and previews


def check():
    assert len(VOCAB) <= 62, len(VOCAB)
    assert all(re.fullmatch(r"[a-z0-9]{1,64}", w) for w in VOCAB)
    assert tokenize("a red square moving left on a white background") == [
        WORD_ID[w] for w in "a red square moving left on a white background".split()] + [0] * 3
    assert tokenize("A Purple blob!")[:3] == [WORD_ID["a"], UNK, UNK]
    assert max(WORD_ID.values()) <= 63
    for c in all_combos():
        for k in range(len(TEMPLATES)):
            cap = caption(*c, template=k)
            assert len(words(cap)) <= TEXT_LEN, cap
            assert UNK not in tokenize(cap), cap
            assert parse_prompt(cap) == c, (cap, parse_prompt(cap))
    held = make_heldout()
    assert held == load_heldout(), "heldout.json is stale: run data.py --write-heldout"
    assert not set(held) & set(KEEP_IN_TRAINING)
    tr = train_combos()
    assert len(tr) + len(held) == len(all_combos()) and not set(tr) & set(held)
    # every colour, shape, direction and background still occurs in training
    for k in range(4):
        assert {c[k] for c in tr} == {c[k] for c in all_combos()}
    rng = np.random.default_rng(0)
    p, caps = sample_params(rng, 64)
    for i in range(64):
        c = (COLOUR_NAMES[p["colour"][i]], SHAPES[p["shape"][i]], DIRECTIONS[p["direction"][i]],
             COLOUR_NAMES[p["background"][i]])
        assert c not in held and parse_prompt(caps[i]) == c
    t = np.arange(0, 2000, dtype=np.float64)[None, :].repeat(64, 0)
    dvec = dir_table()[p["direction"]]
    cx, cy = positions(p["size"][:, None], p["speed"][:, None], p["x0"][:, None], p["y0"][:, None],
                       dvec, t)
    lo, hi = p["size"][:, None] + 1.0, SIZE - p["size"][:, None] - 1.0
    assert np.all(cx >= lo - 1e-6) and np.all(cx <= hi + 1e-6)
    assert np.all(cy >= lo - 1e-6) and np.all(cy <= hi + 1e-6)
    assert np.allclose(cx[:, 0], p["x0"]) and np.allclose(cy[:, 0], p["y0"])
    # the initial direction is the stated one
    d1x, d1y = cx[:, 1] - cx[:, 0], cy[:, 1] - cy[:, 0]
    want = dvec * p["speed"][:, None]
    near_wall = (np.minimum(p["x0"] - lo[:, 0], hi[:, 0] - p["x0"]) < 3) | (
        np.minimum(p["y0"] - lo[:, 0], hi[:, 0] - p["y0"]) < 3)
    ok = np.isclose(d1x, want[:, 0], atol=1e-6) & np.isclose(d1y, want[:, 1], atol=1e-6)
    assert np.all(ok | near_wall)
    # speed is constant: |step| == speed everywhere but at the bounce
    step = np.abs(np.diff(cx, axis=1)) + np.abs(np.diff(cy, axis=1))
    assert np.mean(np.isclose(step, p["speed"][:, None], atol=1e-6)) > 0.9
    img = render({k: v[:4] for k, v in p.items()}, np.array([[0.0, 5.0]] * 4))
    assert img.shape == (4, 2, SIZE, SIZE, 3) and img.min() >= 0 and img.max() <= 1
    # the object's colour is present and the background fills most of the frame
    for i in range(4):
        fg = colour_table()[p["colour"][i]]
        bg = colour_table()[p["background"][i]]
        f0 = img[i, 0].reshape(-1, 3)
        n_fg = np.sum(np.all(np.abs(f0 - fg) < 1e-3, axis=1))
        n_bg = np.sum(np.all(np.abs(f0 - bg) < 1e-3, axis=1))
        assert n_fg > 40 and n_bg > 0.5 * SIZE * SIZE, (i, n_fg, n_bg)
    print("data.py checks passed: %d words, %d combinations, %d held out, %d for training" % (
        len(VOCAB), len(all_combos()), len(held), len(tr)))


def preview(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1)
    p, caps = sample_params(rng, 8)
    t = np.arange(0, 48, 4, dtype=np.float64)[None, :].repeat(8, 0)       # frames 0, 4, .. 44
    img = render(p, t)
    for i in range(8):
        write_png(os.path.join(out, "video%d.png" % i), tile(img[i], 6))
        print("video%d.png: %s (every 4th frame, 0..44)" % (i, caps[i]))
    shapes = [params_for(COLOUR_NAMES[k % 10], SHAPES[k % 5], "right", BACKGROUNDS[(k + 1) % 6]
                         if COLOUR_NAMES[k % 10] != BACKGROUNDS[(k + 1) % 6] else "gray")
              for k in range(10)]
    frames = np.concatenate([render(q, np.zeros((1, 1)))[0] for q in shapes])
    write_png(os.path.join(out, "shapes.png"), tile(frames, 5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--write-heldout", action="store_true")
    ap.add_argument("--preview", metavar="DIR")
    a = ap.parse_args()
    if a.write_heldout:
        held = write_heldout()
        print("wrote %s (%d combinations)" % (HELDOUT_PATH, len(held)))
    if a.check:
        check()
    if a.preview:
        preview(a.preview)


if __name__ == "__main__":
    main()
