#!/usr/bin/env python3
"""Second, torch-free implementation of docs/MODEL.md in plain numpy (float64), written apart
from vmla_ref.py in a different style (index formulas and per-head loops, read off MODEL.md),
that recomputes the goldens from the weights file and compares.

    python3 tools/reference/crosscheck_numpy.py tests/golden [--layouts mha,mla]

Needs only numpy (no torch, no safetensors package: the files are parsed here). It catches coding
slips in either implementation; a misreading of MODEL.md shared by both is not caught.
"""

import json
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmla_rng  # noqa: E402

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """-> ({name: np.ndarray}, metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw[base + b:base + e], dtype=dt).reshape(info["shape"])
        out[name] = arr.astype(np.float64)
    return out, meta


class Tiny:
    def __init__(self, W, layout):
        self.W = W
        self.layout = layout
        self.D = W["patch_embedding.weight"].shape[0]
        self.C = W["patch_embedding.weight"].shape[1]
        self.L = len({k.split(".")[1] for k in W if k.startswith("blocks.")})
        self.H = 4                                   # tiny-test
        self.dh = self.D // self.H
        self.Ft = W["time_embedding.0.weight"].shape[1]
        if layout == "mla":
            self.dc = W["blocks.0.self_attn.kv_down.weight"].shape[0]
            self.dr = W["blocks.0.self_attn.k_rope.weight"].shape[0]
        self.eps = 1e-6

    # elementary ---------------------------------------------------------------------------------
    def lin(self, x, name, bias=True):
        y = x @ self.W[name + ".weight"].T
        return y + self.W[name + ".bias"] if bias else y

    def ln(self, x):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + self.eps)

    def rms(self, x, w):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + self.eps) * w

    @staticmethod
    def silu(u):
        return u / (1.0 + np.exp(-u))

    @staticmethod
    def gelu(u):
        return 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))

    @staticmethod
    def softmax(s):
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        return p / p.sum(-1, keepdims=True)

    @staticmethod
    def rope_vec(vec, f, y, x):
        """One head vector of width d at position (f, y, x)."""
        d = vec.shape[0]
        dt, ds = d - 4 * (d // 6), 2 * (d // 6)
        out = np.empty_like(vec)
        for j in range(d // 2):
            if j < dt // 2:
                ang = f * 10000.0 ** (-2.0 * j / dt)
            elif j < dt // 2 + ds // 2:
                ang = y * 10000.0 ** (-2.0 * (j - dt // 2) / ds)
            else:
                ang = x * 10000.0 ** (-2.0 * (j - dt // 2 - ds // 2) / ds)
            a, b = vec[2 * j], vec[2 * j + 1]
            out[2 * j] = a * math.cos(ang) - b * math.sin(ang)
            out[2 * j + 1] = a * math.sin(ang) + b * math.cos(ang)
        return out

    # model ----------------------------------------------------------------------------------------
    def context(self, tokens):
        emb = np.stack([self.W["text_encoder.embed.weight"][t] if t != 0
                        else np.zeros(self.W["text_encoder.embed.weight"].shape[1]) for t in tokens])
        return self.lin(self.gelu(self.lin(emb, "text_embedding.0")), "text_embedding.2")

    def temb(self, t):
        half = self.Ft // 2
        sin = np.array([math.cos(t * 10000.0 ** (-i / half)) for i in range(half)]
                       + [math.sin(t * 10000.0 ** (-i / half)) for i in range(half)])
        e = self.lin(self.silu(self.lin(sin, "time_embedding.0")), "time_embedding.2")
        return sin, e, self.lin(self.silu(e), "time_projection.1")

    def forward(self, lat, t, ctx, f0, cache, write):
        """lat [C, F, h, w]; cache: {frame: [per layer entries of that frame]}; the caller passes
        only the frames the chunk may see."""
        C, F, h, w = lat.shape
        D, H, dh = self.D, self.H, self.dh
        pos, toks = [], []
        for f in range(F):
            for y in range(h // 2):
                for x in range(w // 2):
                    pos.append((f0 + f, y, x))
                    toks.append([lat[c, f, 2 * y + q, 2 * x + r]
                                 for c in range(C) for q in range(2) for r in range(2)])
        toks = np.array(toks)
        N = len(pos)
        rec = {}
        sin, e, e0 = self.temb(t)
        rec.update(sin=sin, e=e, e0=e0)
        xx = toks @ self.W["patch_embedding.weight"].reshape(D, -1).T + self.W["patch_embedding.bias"]
        rec["patch"] = xx
        ctx_frames = sorted(cache)
        new_entries = []
        for i in range(self.L):
            p = "blocks.%d." % i
            m = self.W[p + "modulation"][0] + e0.reshape(6, D)
            u = self.ln(xx) * (1 + m[1]) + m[0]
            a = p + "self_attn."
            heads_out = []
            if self.layout == "mha":
                q = self.rms(self.lin(u, a + "q"), self.W[a + "norm_q.weight"])
                k = self.rms(self.lin(u, a + "k"), self.W[a + "norm_k.weight"])
                v = self.lin(u, a + "v")
                q = np.stack([np.concatenate([self.rope_vec(q[n, hh * dh:(hh + 1) * dh], *pos[n])
                                              for hh in range(H)]) for n in range(N)])
                k = np.stack([np.concatenate([self.rope_vec(k[n, hh * dh:(hh + 1) * dh], *pos[n])
                                              for hh in range(H)]) for n in range(N)])
                new_entries.append((k, v))
                K = np.concatenate([cache[f][i][0] for f in ctx_frames] + [k])
                V = np.concatenate([cache[f][i][1] for f in ctx_frames] + [v])
                for hh in range(H):
                    sl = slice(hh * dh, (hh + 1) * dh)
                    pr = self.softmax(q[:, sl] @ K[:, sl].T / math.sqrt(dh))
                    heads_out.append(pr @ V[:, sl])
            else:
                dc, dr = self.dc, self.dr
                qc = self.rms(self.lin(u, a + "q"), self.W[a + "norm_q.weight"])
                qr = self.rms(self.lin(u, a + "q_rope"), self.W[a + "norm_q_rope.weight"])
                qr = np.stack([np.concatenate([self.rope_vec(qr[n, hh * dr:(hh + 1) * dr], *pos[n])
                                               for hh in range(H)]) for n in range(N)])
                c = self.rms(self.lin(u, a + "kv_down"), self.W[a + "norm_kv.weight"])
                kr = self.rms(self.lin(u, a + "k_rope"), self.W[a + "norm_k_rope.weight"])
                kr = np.stack([self.rope_vec(kr[n], *pos[n]) for n in range(N)])
                new_entries.append((c, kr))
                Cc = np.concatenate([cache[f][i][0] for f in ctx_frames] + [c])
                Kr = np.concatenate([cache[f][i][1] for f in ctx_frames] + [kr])
                for hh in range(H):
                    rows = slice(hh * dh, (hh + 1) * dh)
                    kch = Cc @ self.W[a + "k_up.weight"][rows].T
                    vh = Cc @ self.W[a + "v_up.weight"][rows].T
                    s = qc[:, rows] @ kch.T + qr[:, hh * dr:(hh + 1) * dr] @ Kr.T
                    heads_out.append(self.softmax(s / math.sqrt(dh + dr)) @ vh)
            xx = xx + self.lin(np.concatenate(heads_out, axis=1), a + "o") * m[2]
            cz = p + "cross_attn."
            n3 = self.ln(xx) * self.W[p + "norm3.weight"] + self.W[p + "norm3.bias"]
            q = self.rms(self.lin(n3, cz + "q"), self.W[cz + "norm_q.weight"])
            k = self.rms(self.lin(ctx, cz + "k"), self.W[cz + "norm_k.weight"])
            v = self.lin(ctx, cz + "v")
            outs = []
            for hh in range(H):
                sl = slice(hh * dh, (hh + 1) * dh)
                outs.append(self.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(dh)) @ v[:, sl])
            xx = xx + self.lin(np.concatenate(outs, axis=1), cz + "o")
            u = self.ln(xx) * (1 + m[4]) + m[3]
            xx = xx + self.lin(self.gelu(self.lin(u, p + "ffn.0")), p + "ffn.2") * m[5]
            rec["block.%d" % i] = xx
        hm = self.W["head.modulation"][0] + e
        out = self.lin(self.ln(xx) * (1 + hm[1]) + hm[0], "head.head")
        rec["head"] = out
        vout = np.zeros_like(lat)
        for n, (f, y, x) in enumerate(pos):
            for c in range(C):
                for q in range(2):
                    for r in range(2):
                        vout[c, f - f0, 2 * y + q, 2 * x + r] = out[n, q * 2 * C + r * C + c]
        rec["v"] = vout
        if write:
            tpf = (h // 2) * (w // 2)
            for f in range(F):
                cache_frame = [tuple(ent[f * tpf:(f + 1) * tpf] for ent in layer) for layer in new_entries]
                rec.setdefault("new", {})[f0 + f] = cache_frame
        return vout, rec

    def conv(self, x, name):
        wt, b = self.W[name + ".weight"], self.W[name + ".bias"]
        _, h, w = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
        out = np.zeros((wt.shape[0], h, w)) + b[:, None, None]
        for ky in range(3):
            for kx in range(3):
                out += np.tensordot(wt[:, :, ky, kx], xp[:, ky:ky + h, kx:kx + w], axes=(1, 0))
        return out

    def decode_frame(self, z, prev):
        mean, std = self.W["decoder.latent_mean"], self.W["decoder.latent_std"]
        a = np.concatenate([prev * std[:, None, None] + mean[:, None, None],
                            z * std[:, None, None] + mean[:, None, None]])
        a = self.silu(self.conv(a, "decoder.conv_in"))
        a = self.silu(self.conv(a, "decoder.conv_mid"))
        i = 0
        while "decoder.up.%d.weight" % i in self.W:
            a = np.kron(a, np.ones((1, 2, 2)))
            a = self.silu(self.conv(a, "decoder.up.%d" % i))
            i += 1
        o = self.conv(a, "decoder.conv_out")
        return [np.clip((o[3 * j:3 * j + 3] + 1) / 2, 0, 1).transpose(1, 2, 0)
                for j in range(o.shape[0] // 3)]


def run(golden_dir, layout):
    W, wmeta = read_safetensors(os.path.join(golden_dir, "tiny-%s.safetensors" % layout))
    G, meta = read_safetensors(os.path.join(golden_dir, "tiny-%s-golden.safetensors" % layout))
    assert wmeta.get("layout") == layout and meta.get("layout") == layout, (wmeta, meta)
    m = Tiny(W, layout)
    seed, window, sink = int(meta["seed"]), int(meta["window"]), int(meta["sink"])
    lh, lw, t_fwd = int(meta["latent_h"]), int(meta["latent_w"]), float(meta["t"])
    vocab, tlen = W["text_encoder.embed.weight"].shape[0], len(G["tokens"])
    tokens = vmla_rng.tokenize(meta["prompt"], vocab, tlen)
    res = {"tokens": np.array(tokens, dtype=np.float64)}
    ctx = m.context(tokens)
    res["fwd.ctx"] = ctx
    _, rec = m.forward(G["fwd.x"], t_fwd, ctx, 0, {}, False)
    res["fwd.x"] = G["fwd.x"]
    for k in ("sin", "e", "e0", "patch", "head", "v"):
        res["fwd." + k] = rec[k]
    for i in range(m.L):
        res["fwd.block.%d" % i] = rec["block.%d" % i]
    F = 3
    store = {}
    sig = vmla_rng.warped_sigmas()
    prev = np.zeros((m.C, lh, lw))
    for n in range(3):
        start = n * F
        earlier = list(range(start))
        sinks = [f for f in earlier if f < sink]
        rest = [f for f in earlier if f >= sink][-(window - F):] if window > F else []
        vis = {f: store[f] for f in sinks + rest}
        res["gen.cached_frames.%d" % n] = np.array(sinks + rest, dtype=np.float64)
        eps = [vmla_rng.noise(seed, n, k, (m.C, F, lh, lw)).astype(np.float64) for k in range(4)]
        if n == 0:
            res["gen.noise.0.0"] = eps[0]
        if n == 1:
            res["gen.noise.1.2"] = eps[2]
        x = eps[0]
        for k in range(4):
            v, _ = m.forward(x, 1000 * sig[k], ctx, start, vis, False)
            x0 = x - sig[k] * v
            if k < 3:
                x = (1 - sig[k + 1]) * x0 + sig[k + 1] * eps[k + 1]
        _, rec = m.forward(x0, 0.0, ctx, start, vis, True)
        store.update(rec["new"])
        res["gen.chunk.%d" % n] = x0
        frames = []
        for f in range(F):
            frames += m.decode_frame(x0[:, f], prev)
            prev = x0[:, f]
        res["gen.rgb.%d" % n] = np.stack(frames)
    worst = 0.0
    ok = True
    for k in sorted(G):
        if k not in res:
            print("  %-22s missing in the numpy recomputation" % k)
            ok = False
            continue
        a, b = G[k], np.asarray(res[k], dtype=np.float64)
        if a.shape != b.shape:
            print("  %-22s shape %s vs %s" % (k, a.shape, b.shape))
            ok = False
            continue
        d = float(np.abs(a - b).max()) if a.size else 0.0
        scale = float(np.abs(b).max()) if b.size else 0.0
        # goldens are stored as F32: allow F32 rounding of the value
        tol = 1e-6 * max(scale, 1.0)
        flag = "ok" if d <= tol else "FAIL"
        ok = ok and d <= tol
        worst = max(worst, d)
        print("  %-22s %-16s max|diff| %.3e  %s" % (k, list(a.shape), d, flag))
    print("tiny-%s: metadata %s" % (layout, json.dumps(meta, sort_keys=True)))
    print("tiny-%s: numpy recomputation %s (worst %.3e)" % (layout, "AGREES" if ok else "DISAGREES", worst))
    return ok


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("golden_dir")
    ap.add_argument("--layouts", default="mha,mla")
    args = ap.parse_args()
    ok = True
    for layout in args.layouts.split(","):
        ok = run(args.golden_dir, layout) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
