#!/usr/bin/env python3
"""Write the golden tensors of the tiny-test model (both layouts) and/or run the self-checks.

    python3 tools/reference/make_goldens.py --out tests/golden            # write
    python3 tools/reference/make_goldens.py --out tests/golden --check    # write and check
    python3 tools/reference/make_goldens.py --check                       # check only, write nothing

For layout in (mha, mla) it writes
    <out>/tiny-<layout>.safetensors         the random F32 weights (seed 1234 mha, 1235 mla)
    <out>/tiny-<layout>-golden.safetensors  F32 goldens, computed in float64 (see README.md)
"""

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np                      # noqa: E402
import torch                            # noqa: E402
import torch.nn.functional as TF        # noqa: E402

import vmla_ref as R                    # noqa: E402
import vmla_rng                         # noqa: E402

PROMPT = "a red square moving left"
SEED = 0x123456789                      # 4886718345: both Philox key words non-zero
WINDOW = 4
SINK = 1
LATENT_H = 4
LATENT_W = 6
FWD_T = 937.5                           # 1000 * sigma'_1 (step 750 warped by shift 5)
FWD_X_SEED = 4242                       # torch.Generator seed of fwd.x
N_CHUNKS = 3
WEIGHT_SEEDS = {"mha": 1234, "mla": 1235}
LAYOUTS = ("mha", "mla")

# what the 3-chunk run must attend to / evict (window 4, sink 1, chunk 3 frames)
WANT_CACHED = [[], [0, 2], [0, 5]]
WANT_EVICTED = [[], [1], [2, 3, 4]]
WANT_STORED_AFTER = [0, 5, 6, 7, 8]


def expected_shapes(cfg):
    C, F = cfg.latent_channels, cfg.chunk_frames
    N = F * (LATENT_H // 2) * (LATENT_W // 2)
    up = 2 ** cfg.dec_n_up
    lat = (C, F, LATENT_H, LATENT_W)
    s = {
        "tokens": (cfg.text_len,),
        "fwd.x": lat,
        "fwd.sin": (cfg.freq_dim,),
        "fwd.e": (cfg.dim,),
        "fwd.e0": (6 * cfg.dim,),
        "fwd.ctx": (cfg.text_len, cfg.dim),
        "fwd.patch": (N, cfg.dim),
        "fwd.head": (N, 4 * C),
        "fwd.v": lat,
        "gen.noise.0.0": lat,
        "gen.noise.1.2": lat,
    }
    for i in range(cfg.layers):
        s["fwd.block.%d" % i] = (N, cfg.dim)
    for n in range(N_CHUNKS):
        s["gen.chunk.%d" % n] = lat
        s["gen.rgb.%d" % n] = (F * cfg.dec_t_up, LATENT_H * up, LATENT_W * up, 3)
        s["gen.cached_frames.%d" % n] = (len(WANT_CACHED[n]),)
    return s


def fwd_latent(cfg):
    g = torch.Generator()
    g.manual_seed(FWD_X_SEED)
    return torch.randn((1, cfg.latent_channels, cfg.chunk_frames, LATENT_H, LATENT_W),
                       generator=g, dtype=torch.float32)


def compute_goldens(cfg, weights, dtype=torch.float64, device="cpu", mla_mode="rebuild",
                    attn_impl="explicit", stats=None):
    """Everything of tiny-<layout>-golden.safetensors, as tensors of `dtype` (batch dim dropped),
    plus a dict of run facts (evictions, cache contents) for the checks."""
    model = R.VmlaModel(cfg, weights, dtype=dtype, device=device, mla_mode=mla_mode,
                        attn_impl=attn_impl)
    model.stats = stats
    g = {}
    ids, ctx, ctx_kv = R.prompt_context(model, [PROMPT])
    g["tokens"] = ids[0].to(dtype)

    # one forward of a first chunk (frame offset 0, empty cache) at t = 937.5
    x = fwd_latent(cfg)
    rec = {}
    model.forward(x, [FWD_T], ctx_kv, 0, None, record=rec)
    g["fwd.x"] = x[0].to(dtype)
    g["fwd.sin"] = rec["sin"][0]
    g["fwd.e"] = rec["e"][0]
    g["fwd.e0"] = rec["e0"][0]
    g["fwd.ctx"] = ctx[0]
    g["fwd.patch"] = rec["patch"][0]
    for i in range(cfg.layers):
        g["fwd.block.%d" % i] = rec["block.%d" % i][0]
    g["fwd.head"] = rec["head"][0]
    g["fwd.v"] = rec["v"][0]

    # three chunks with the sampler, window 4, sink 1
    cache = R.KVCache(WINDOW, SINK, cfg.chunk_frames)
    facts = {"cached": [], "evicted": [], "entry_shapes": None}
    prev = None
    for n in range(N_CHUNKS):
        info = {}
        x0 = R.generate_chunk(model, cache, n, ctx_kv, [SEED], LATENT_H, LATENT_W, info=info)
        rgb = model.decode(x0, prev)
        prev = x0[:, :, -1]
        g["gen.chunk.%d" % n] = x0[0]
        g["gen.rgb.%d" % n] = rgb[0]
        g["gen.cached_frames.%d" % n] = torch.tensor(info["cached_frames"], dtype=dtype)
        if n == 0:
            g["gen.noise.0.0"] = info["noise"][0][0]
        if n == 1:
            g["gen.noise.1.2"] = info["noise"][2][0]
        facts["cached"].append(list(info["cached_frames"]))
        facts["evicted"].append(list(info["evicted"]))
    facts["stored_after"] = cache.stored_frames()
    facts["entry_shapes"] = [tuple(t.shape) for t in cache.frames[cache.stored_frames()[-1]][0]]
    facts["model"] = model
    facts["ctx_kv"] = ctx_kv
    return g, facts


def to_f32_cpu(d):
    return {k: v.detach().to(device="cpu", dtype=torch.float32).contiguous() for k, v in d.items()}


def golden_metadata(layout):
    return {"prompt": PROMPT, "seed": str(SEED), "window": str(WINDOW), "sink": str(SINK),
            "latent_h": str(LATENT_H), "latent_w": str(LATENT_W), "layout": layout,
            "t": repr(FWD_T)}


def maxdiff(a, b):
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max())


def dict_maxdiff(a, b, keys=None):
    keys = keys if keys is not None else sorted(a)
    worst, where = 0.0, None
    for k in keys:
        d = maxdiff(a[k], b[k])
        if d > worst or where is None:
            worst, where = d, k
    return worst, where


# ==============================================================================================
# Self-checks


class Checker:
    def __init__(self):
        self.failures = []
        self.warnings = []

    def diff(self, name, d, tol, where=None):
        ok = d <= tol
        print("  %-58s max|diff| %.3e  (tol %.0e)%s %s" % (
            name, d, tol, (" at " + where) if where else "", "ok" if ok else "FAIL"))
        if not ok:
            self.failures.append(name)

    def true(self, name, cond, detail=""):
        print("  %-58s %s %s" % (name, "ok" if cond else "FAIL", detail))
        if not cond:
            self.failures.append(name)

    def warn(self, name, detail):
        print("  %-58s WARNING %s" % (name, detail))
        self.warnings.append(name)


def check_layout_free(ck):
    print("== checks independent of the layout")
    try:
        vmla_rng.self_test(verbose=False)
        ck.true("philox known answers, fnv1a, schedule, tokenizer", True)
    except AssertionError as ex:
        ck.true("philox known answers, fnv1a, schedule, tokenizer", False, str(ex))

    for d, want in ((128, (22, 21, 21)), (64, (12, 10, 10)), (16, (4, 2, 2)), (8, (2, 1, 1))):
        ck.true("rope split d=%d -> %s" % (d, want), R.rope_split(d) == want, str(R.rope_split(d)))

    # RoPE == multiplication by exp(i*angle) of complex numbers from adjacent pairs
    gen = torch.Generator().manual_seed(7)
    N, nh, d = 18, 3, 16
    pos = R.token_positions(3, 2, 3, 5, "cpu")
    ang = R.rope_angles(pos, d)
    x = torch.randn((2, N, nh, d), generator=gen, dtype=torch.float64)
    xc = torch.view_as_complex(x.reshape(2, N, nh, d // 2, 2).contiguous())
    rot = torch.polar(torch.ones_like(ang), ang)[None, :, None, :]
    want = torch.view_as_real(xc * rot).reshape(2, N, nh, d)
    ck.diff("rope == complex product (torch.polar)", maxdiff(R.apply_rope(x, ang), want), 1e-13)
    # explicit angle of one pair of each group
    p = pos[10]                         # frame 5 + 1, row 1, column 1
    assert [int(v) for v in p] == [6, 1, 1]
    f0 = float(p[0]) * 1.0
    f1 = float(p[0]) * 10000.0 ** (-2.0 * 1 / 8)
    r0 = float(p[1]) * 1.0
    c1 = float(p[2]) * 10000.0 ** (-2.0 * 1 / 4)
    got = ang[10]
    ck.diff("rope angles (frame k=0,1; row k=0; column k=1)",
            max(abs(float(got[0]) - f0), abs(float(got[1]) - f1), abs(float(got[4]) - r0),
                abs(float(got[7]) - c1)), 1e-12)
    # scores depend on relative positions only
    q = torch.randn((1, N, 1, d), generator=gen, dtype=torch.float64)
    k = torch.randn((1, N, 1, d), generator=gen, dtype=torch.float64)
    pos2 = pos + torch.tensor([11, 3, 2])
    s1 = torch.einsum("bqhd,bkhd->qk", R.apply_rope(q, ang), R.apply_rope(k, ang))
    ang2 = R.rope_angles(pos2, d)
    s2 = torch.einsum("bqhd,bkhd->qk", R.apply_rope(q, ang2), R.apply_rope(k, ang2))
    ck.diff("rope scores invariant to a common position shift", maxdiff(s1, s2), 1e-11)

    # 3x3 conv written out == torch conv2d
    xi = torch.randn((3, 5, 7, 9), generator=gen, dtype=torch.float64)
    wt = torch.randn((4, 5, 3, 3), generator=gen, dtype=torch.float64)
    bs = torch.randn((4,), generator=gen, dtype=torch.float64)
    ck.diff("conv3x3 == F.conv2d(padding=1)",
            maxdiff(R.conv3x3(xi, wt, bs), TF.conv2d(xi, wt, bs, padding=1)), 1e-12)
    up = R.upsample_nearest_2x(xi)
    ck.diff("upsample_nearest_2x == F.interpolate(nearest)",
            maxdiff(up, TF.interpolate(xi, scale_factor=2, mode="nearest")), 0.0)

    # patchify / unpatchify index formulas, element by element
    C, F, h, w = 4, 3, 4, 6
    lat = torch.randn((1, C, F, h, w), generator=gen, dtype=torch.float64)
    tok = R.VmlaModel.patchify(lat)
    out = torch.randn((1, F * (h // 2) * (w // 2), 4 * C), generator=gen, dtype=torch.float64)
    v = R.VmlaModel.unpatchify(out, C, F, h, w)
    err_p, err_u = 0.0, 0.0
    for f in range(F):
        for y in range(h // 2):
            for xx in range(w // 2):
                t = (f * (h // 2) + y) * (w // 2) + xx
                for c in range(C):
                    for qq in range(2):
                        for r in range(2):
                            err_p = max(err_p, abs(float(tok[0, t, c * 4 + qq * 2 + r]
                                                         - lat[0, c, f, 2 * y + qq, 2 * xx + r])))
                            err_u = max(err_u, abs(float(v[0, c, f, 2 * y + qq, 2 * xx + r]
                                                         - out[0, t, qq * 2 * C + r * C + c])))
    ck.diff("patchify index formula (MODEL.md 3)", err_p, 0.0)
    ck.diff("unpatchify index formula (MODEL.md 5)", err_u, 0.0)

    # cache rule
    ck.true("context frames w4 s1: chunks 0..3",
            [R.context_frame_indices(3 * n, 4, 1, 3) for n in range(4)]
            == [[], [0, 2], [0, 5], [0, 8]])
    ck.true("context frames w6 s1 / w12 s3 examples",
            R.context_frame_indices(9, 6, 1, 3) == [0, 6, 7, 8]
            and R.context_frame_indices(6, 12, 3, 3) == [0, 1, 2, 3, 4, 5]
            and R.context_frame_indices(30, 12, 3, 3) == [0, 1, 2] + list(range(21, 30)))

    # preset sizes (no allocation)
    for name in ("wan-1.3b", "wan-1.3b-mla"):
        cfg = R.preset(name)
        per_tok = 2 * cfg.dim if cfg.layout == "mha" else cfg.d_c + cfg.d_r
        print("  %-58s %d DiT parameters, %d cached values per token and layer"
              % (name, R.param_count(cfg, dit_only=True), per_tok))


def check_layout(ck, cfg, weights, g64, facts, device):
    layout = cfg.layout
    print("== checks of tiny-test/%s" % layout)
    # shapes
    want = expected_shapes(cfg)
    bad = [(k, tuple(g64[k].shape), want[k]) for k in want if k not in g64 or tuple(g64[k].shape) != want[k]]
    extra = sorted(set(g64) - set(want))
    ck.true("golden names and shapes", not bad and not extra, "%s %s" % (bad[:3], extra[:3]))
    # not degenerate
    degenerate = []
    for k, t in sorted(g64.items()):
        if k.startswith("gen.cached_frames") or k == "tokens":
            continue
        finite = bool(torch.isfinite(t).all())
        std = float(t.std()) if t.numel() > 1 else 0.0
        if not finite or std < 1e-3:
            degenerate.append("%s (std %.3g, finite %s)" % (k, std, finite))
    ck.true("every golden finite with std > 1e-3", not degenerate, "; ".join(degenerate))
    ck.true("tokens", [int(v) for v in g64["tokens"]]
            == vmla_rng.tokenize(PROMPT, cfg.vocab, cfg.text_len),
            str([int(v) for v in g64["tokens"]]))
    # noise straight from vmla_rng
    shp = (cfg.latent_channels, cfg.chunk_frames, LATENT_H, LATENT_W)
    ck.diff("gen.noise.0.0 == vmla_rng.noise(seed, 0, 0)",
            maxdiff(g64["gen.noise.0.0"], torch.from_numpy(vmla_rng.noise(SEED, 0, 0, shp))), 0.0)
    ck.diff("gen.noise.1.2 == vmla_rng.noise(seed, 1, 2)",
            maxdiff(g64["gen.noise.1.2"], torch.from_numpy(vmla_rng.noise(SEED, 1, 2, shp))), 0.0)
    # eviction and cache contents
    ck.true("cached frames per chunk %s" % WANT_CACHED, facts["cached"] == WANT_CACHED,
            str(facts["cached"]))
    ck.true("evicted at each chunk start %s" % WANT_EVICTED, facts["evicted"] == WANT_EVICTED,
            str(facts["evicted"]))
    ck.true("frames stored after 3 chunks %s" % WANT_STORED_AFTER,
            facts["stored_after"] == WANT_STORED_AFTER, str(facts["stored_after"]))
    tpf = (LATENT_H // 2) * (LATENT_W // 2)
    want_entries = ([(1, tpf, cfg.heads, cfg.head_dim)] * 2 if layout == "mha"
                    else [(1, tpf, cfg.d_c), (1, tpf, cfg.d_r)])
    ck.true("cache entry shapes per frame and layer %s" % want_entries,
            facts["entry_shapes"] == want_entries, str(facts["entry_shapes"]))
    # patch embedding == Conv3d with kernel = stride = (1, 2, 2)
    x = g64["fwd.x"][None]
    model = facts["model"]
    conv = TF.conv3d(x.to(model.device), model.w["patch_embedding.weight"],
                     model.w["patch_embedding.bias"], stride=(1, 2, 2))    # [1, D, F, h2, w2]
    conv = conv.permute(0, 2, 3, 4, 1).reshape(-1, cfg.dim)
    ck.diff("fwd.patch == Conv3d(kernel=stride=(1,2,2))", maxdiff(g64["fwd.patch"], conv), 1e-12)
    # timestep sinusoid written out
    half = cfg.freq_dim // 2
    sin_ref = torch.tensor([math.cos(FWD_T * 10000.0 ** (-i / half)) for i in range(half)]
                           + [math.sin(FWD_T * 10000.0 ** (-i / half)) for i in range(half)],
                           dtype=torch.float64)
    ck.diff("fwd.sin == [cos, sin] written out with math", maxdiff(g64["fwd.sin"], sin_ref), 1e-12)
    # head output unpatchified is fwd.v
    ck.diff("unpatchify(fwd.head) == fwd.v",
            maxdiff(R.VmlaModel.unpatchify(g64["fwd.head"][None], cfg.latent_channels,
                                           cfg.chunk_frames, LATENT_H, LATENT_W)[0], g64["fwd.v"]),
            0.0)
    # decoder range and causality across chunks
    for n in range(N_CHUNKS):
        rgb = g64["gen.rgb.%d" % n]
        ck.true("gen.rgb.%d within [0, 1]" % n, float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0,
                "min %.3f max %.3f mean %.3f" % (float(rgb.min()), float(rgb.max()), float(rgb.mean())))
    first = model.decode(g64["gen.chunk.1"][None], None)[0]
    ck.true("decoder is causal across chunks (prev of chunk 1 matters)",
            maxdiff(first, g64["gen.rgb.1"]) > 1e-6, "max|diff| %.3e" % maxdiff(first, g64["gen.rgb.1"]))
    all_at_once = model.decode(torch.cat([g64["gen.chunk.%d" % n] for n in range(N_CHUNKS)], 1)[None])[0]
    ck.diff("decoding 3 chunks at once == chunk by chunk",
            maxdiff(all_at_once, torch.cat([g64["gen.rgb.%d" % n] for n in range(N_CHUNKS)], 0)),
            1e-12)

    # batch of 2 streams (different t, latent, prompt) == each alone
    gen = torch.Generator().manual_seed(99)
    x2 = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device)
    ids2, ctx2, _ = R.prompt_context(model, [PROMPT, "blue circle bouncing"])
    kv2 = model.prompt_kv(ctx2)
    vb = model.forward(torch.cat([x, x2]), [FWD_T, 250.0], kv2, 0, None)
    _, _, kv_b = R.prompt_context(model, ["blue circle bouncing"])
    v2 = model.forward(x2, [250.0], kv_b, 0, None)
    ck.diff("batch of 2 streams == each stream alone",
            max(maxdiff(vb[0], g64["fwd.v"]), maxdiff(vb[1], v2[0])), 1e-12)

    # attention rows sum to 1 (explicit path, whole golden run)
    err = facts["stats"].get("attn_row_sum_err", float("nan"))
    ck.diff("attention probability rows sum to 1 (%d attention calls)"
            % facts["stats"].get("attn_calls", 0), err, 1e-12)

    keys = sorted(g64)
    if layout == "mla":
        # absorbed formulation (what the engine does) == rebuild (the reference)
        ga, _ = compute_goldens(cfg, weights, torch.float64, device, mla_mode="absorb")
        for k in ("fwd.block.0", "fwd.block.%d" % (cfg.layers - 1), "fwd.v"):
            ck.diff("MLA absorb == rebuild: %s" % k, maxdiff(ga[k], g64[k]), 1e-10)
        d, where = dict_maxdiff(ga, g64, keys)
        ck.diff("MLA absorb == rebuild: every golden", d, 1e-10, where)

    # torch SDPA instead of the explicit softmax
    modes = ["rebuild", "absorb"] if layout == "mla" else ["rebuild"]
    for mode in modes:
        try:
            gs, _ = compute_goldens(cfg, weights, torch.float64, device, mla_mode=mode,
                                    attn_impl="sdpa")
            d, where = dict_maxdiff(gs, g64, keys)
            ck.diff("SDPA (%s) == explicit attention: every golden" % mode if layout == "mla"
                    else "SDPA == explicit attention: every golden", d, 1e-10, where)
        except Exception as ex:       # the SDPA path is for the peer benchmarks only
            ck.warn("SDPA (%s) == explicit attention" % mode, "could not run: %r" % (ex,))

    # float32 all the way (as the C engine runs) vs the float64 goldens: informative tolerance
    g32, _ = compute_goldens(cfg, weights, torch.float32, device)
    print("  float32 run vs float64 goldens (what a C fp32 engine can expect):")
    for k in keys:
        if k.startswith("gen.cached_frames") or k == "tokens":
            continue
        d = maxdiff(g32[k], g64[k])
        scale = float(g64[k].abs().max())
        print("      %-22s max|diff| %.3e   max|golden| %.3g" % (k, d, scale))
        if d > 1e-3 * max(scale, 1.0):
            ck.warn("float32 vs float64 %s" % k, "max|diff| %.3e is large" % d)


def summary(name, g):
    print("== %s" % name)
    for k in sorted(g):
        t = g[k].detach().to("cpu", torch.float64)
        nan = int(torch.isnan(t).sum())
        if t.numel() == 0:
            print("  %-22s %-18s (empty)" % (k, list(t.shape)))
            continue
        std = float(t.std()) if t.numel() > 1 else 0.0
        extra = ""
        if k == "tokens" or k.startswith("gen.cached_frames"):
            extra = " values %s" % [int(v) for v in t.reshape(-1)]
        print("  %-22s %-18s mean % .6f std %.6f min % .4f max % .4f nan %d%s" % (
            k, list(t.shape), float(t.mean()), std, float(t.min()), float(t.max()), nan, extra))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="directory to write the safetensors files to (omit: write nothing)")
    ap.add_argument("--check", action="store_true", help="run the self-checks")
    ap.add_argument("--device", default="cpu", help="torch device of the float64 computation")
    ap.add_argument("--layouts", default="mha,mla")
    args = ap.parse_args()
    if not args.out and not args.check:
        ap.error("nothing to do: give --out DIR and/or --check")

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    print("torch %s, numpy %s, device %s" % (torch.__version__, np.__version__, args.device))
    ck = Checker()
    if args.check:
        check_layout_free(ck)

    for layout in [s for s in args.layouts.split(",") if s]:
        assert layout in LAYOUTS, layout
        cfg = R.preset("tiny-test", layout)
        weights = R.init_weights(cfg, WEIGHT_SEEDS[layout])               # F32, CPU
        stats = {}
        # goldens: float64 from the F32 weights
        g64, facts = compute_goldens(cfg, weights, torch.float64, args.device, stats=stats)
        facts["stats"] = stats
        if args.out:
            from safetensors.torch import load_file, save_file
            os.makedirs(args.out, exist_ok=True)
            wpath = os.path.join(args.out, "tiny-%s.safetensors" % layout)
            gpath = os.path.join(args.out, "tiny-%s-golden.safetensors" % layout)
            save_file({k: v.contiguous() for k, v in weights.items()}, wpath,
                      metadata={"preset": "tiny-test", "layout": layout})
            save_file(to_f32_cpu(g64), gpath, metadata=golden_metadata(layout))
            print("wrote %s (%d tensors) and %s (%d tensors)" % (wpath, len(weights), gpath, len(g64)))
            if args.check:
                back = load_file(wpath)
                d = max(maxdiff(back[k], weights[k]) for k in weights)
                ck.true("weights file reads back bit-exact (%d tensors)" % len(back),
                        set(back) == set(weights) and d == 0.0)
                back = load_file(gpath)
                d, where = dict_maxdiff({k: back[k] for k in g64}, to_f32_cpu(g64))
                ck.true("golden file reads back (%d tensors)" % len(back),
                        set(back) == set(g64) and d == 0.0, ("worst at %s" % where) if d else "")
        if args.check:
            check_layout(ck, cfg, weights, g64, facts, args.device)
        summary("tiny-%s goldens (float64, as stored in F32)" % layout, g64)

    if args.check:
        if ck.failures:
            print("SELF-CHECK FAILED: %d failures: %s" % (len(ck.failures), ck.failures))
            sys.exit(1)
        print("all self-checks passed (%d warnings%s)" % (
            len(ck.warnings), (": " + ", ".join(ck.warnings)) if ck.warnings else ""))


if __name__ == "__main__":
    main()
