#!/usr/bin/env python3
"""Checks the training modules against the reference (tools/reference/vmla_ref.py), in float64
on the CPU, with random weights (every tensor random, also those trained from zero):

  * one training forward over a sequence layout (noisy chunks n0..n0+2 with their clean context
    slots and the cache mask) == vmla_ref's chunk-by-chunk passes with its KV cache
    (begin_chunk, noisy pass, cache pass at t = 0), for n0 = 0, 1, 2 (exact layouts) and the
    mha and mla layouts;
  * the decoder module == vmla_ref's decode (MODEL.md section 8);
  * the text path with position embedding and the vocabulary tokenizer.

    python3 tools/train/check_dit.py
"""

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import data as D                 # noqa: E402
import dit as M                  # noqa: E402
import vae as V                  # noqa: E402
import vmla_ref as R             # noqa: E402


def randomise(mod, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif p.dim() >= 2 and "embed" not in name and "modulation" not in name:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / np.sqrt(fan_in))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in mod.named_buffers():
            if name.endswith("latent_std"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("latent_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=b.dtype))


def weights_of(dit, dec):
    w = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    for k, v in dec.state_dict().items():
        w["decoder." + k] = v.detach().clone()
    return w


def check_layout(layout, n0, K=3, seed=0):
    cfg = R.preset("tiny-bundled", layout)
    torch.manual_seed(seed)
    dit = M.DiT(cfg).double()
    dec = V.Decoder().double()
    randomise(dit, 100 + seed)
    randomise(dec, 200 + seed)
    w = weights_of(dit, dec)
    ref = R.VmlaModel(cfg, w, dtype=torch.float64, device="cpu")
    g = torch.Generator().manual_seed(7 + n0)
    C, F_, h = cfg.latent_channels, 3, 12
    n_chunks = n0 + K
    clean = [torch.randn(1, C, F_, h, h, generator=g, dtype=torch.float64) for _ in range(n_chunks)]
    noisy = [torch.randn(1, C, F_, h, h, generator=g, dtype=torch.float64) for _ in range(n_chunks)]
    ts = [1000.0, 937.5, 833.3333333333334, 625.0, 412.0, 100.0][:n_chunks] + [500.0] * 10
    prompt = "a red square moving left on a white background"
    ids, ctx, ctx_kv = R.prompt_context(ref, [prompt], vocab_words=D.VOCAB)
    assert ids[0].tolist() == D.tokenize(prompt), (ids, D.tokenize(prompt))
    cache = R.KVCache(6, 1, 3)
    want = {}
    for c in range(n_chunks):
        cache.begin_chunk(3 * c)
        want[c] = ref.forward(noisy[c], [ts[c]], ctx_kv, 3 * c, cache)
        ref.forward(clean[c], [0.0], ctx_kv, 3 * c, cache, write_cache=True)
    lay = M.sequence_layout(n0, K)
    S = len(lay["frame"])
    lat = torch.zeros(1, C, S, h, h, dtype=torch.float64)
    t = torch.zeros(1, S, dtype=torch.float64)
    for s in range(S):
        if not lay["valid"][s]:
            lat[0, :, s] = 3.0          # garbage: must not leak into valid slots
            continue
        c, j = lay["chunk"][s], lay["frame"][s] % 3
        lat[0, :, s] = (noisy[c] if lay["noisy"][s] else clean[c])[0, :, j]
        t[0, s] = ts[c] if lay["noisy"][s] else 0.0
    v = dit(lat, t, torch.as_tensor(lay["frame"])[None], torch.as_tensor(lay["mask"])[None],
            ids)
    worst = 0.0
    for c in range(n0, n0 + K):
        idx = [s for s in range(S) if lay["noisy"][s] and lay["chunk"][s] == c]
        got = v[0][:, idx]
        d = float((got - want[c][0]).abs().max())
        worst = max(worst, d)
    scale = float(max(x.abs().max() for x in want.values()))
    ok = worst < 1e-9 * max(1.0, scale)
    print("  %s n0=%d: training forward vs reference chunk passes: max|diff| %.2e (|v| max %.2f) %s"
          % (layout, n0, worst, scale, "ok" if ok else "FAIL"))
    # decoder
    lat3 = clean[0]
    prev = clean[1][:, :, -1]
    want_rgb = ref.decode(lat3, prev)[0]                                  # [12, 96, 96, 3]
    zs = lat3[0].permute(1, 0, 2, 3)                                       # [F, C, h, w]
    prevs = torch.cat([prev, zs[:-1]], 0)
    got_rgb = dec.decode_normalised(prevs, zs).reshape(-1, 96, 96, 3)
    dd = float((got_rgb - want_rgb).abs().max())
    ok2 = dd < 1e-10
    print("  %s decoder vs reference decode: max|diff| %.2e %s" % (layout, dd, "ok" if ok2 else "FAIL"))
    return ok and ok2


def main():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ok = True
    for layout in ("mla", "mha"):
        for n0 in (0, 1, 2):
            ok &= check_layout(layout, n0)
    # layout facts
    lay = M.sequence_layout(10, 3)
    assert list(lay["frame"][:12]) == [0, 1, 2, 27, 28, 29, 30, 31, 32, 33, 34, 35]
    assert lay["valid"].all()
    # noisy chunk 10 (frames 30..32) sees sink 0 and frames 27..29 (clean) and its own noisy frames
    q = 12
    assert [int(lay["frame"][k]) for k in np.nonzero(lay["mask"][q])[0]] == [0, 27, 28, 29, 30, 31, 32]
    lay0 = M.sequence_layout(0, 3)
    assert (~lay0["valid"]).sum() == 6
    print("all check_dit checks %s" % ("passed" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
