"""PyTorch reference implementation of the vmla model (docs/MODEL.md, both layouts "mha" and "mla").

This file is the executable form of docs/MODEL.md. It is written for readability first: every op
is spelled out (no nn.Module, no fused kernels on the reference path), the weights live in one
dict under exactly the names of MODEL.md section 9, and device and dtype are parameters, so the
same code computes the float64 goldens on a CPU and serves as the PyTorch "peer" for GPU
benchmarks (float32 / bfloat16, optionally with torch's SDPA).

Shapes: a batch of B streams moves together (same chunk index, same latent size); each stream has
its own timestep, prompt context and cache rows. Latents are [B, C, F, h, w]; tokens [B, N, D].

Pure numpy parts (Philox noise, tokenizer, schedule) are in vmla_rng.py.
"""

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as TF

import vmla_rng

# ==============================================================================================
# Configuration (MODEL.md section 1)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    layout: str              # "mha" (per-head K/V cache) or "mla" (latent c, k_r cache)
    dim: int                 # D = heads * head_dim
    heads: int               # H
    head_dim: int            # dh
    layers: int
    ffn_dim: int
    freq_dim: int            # timestep sinusoid width
    latent_channels: int     # C
    text_dim: int            # Dt: width of the text encoder's output
    text_len: int            # rows of the prompt context
    d_c: int = 0             # MLA latent width
    d_r: int = 0             # MLA decoupled RoPE key width
    vocab: int = 0           # tiny text encoder: embedding rows (0: external text encoder)
    dec_ch: int = 0          # tiny decoder channels (0: no tiny decoder)
    dec_n_up: int = 0        # number of x2 upsamplings
    dec_t_up: int = 0        # video frames per latent frame
    chunk_frames: int = 3    # F: latent frames per chunk
    eps: float = 1e-6        # LayerNorm / RMSNorm epsilon
    text_pos: bool = False   # tiny text encoder adds a learned position embedding (bundled models)

    def __post_init__(self):
        assert self.layout in ("mha", "mla"), self.layout
        assert self.dim == self.heads * self.head_dim
        assert self.head_dim % 2 == 0
        assert self.freq_dim % 2 == 0
        if self.layout == "mla":
            assert self.d_c > 0 and self.d_r > 0 and self.d_r % 2 == 0


# (d_c, d_r) of the bundled MLA model (tiny; engine/config.c); train_dit.py --mla-dims overrides
# it for a run. The models before the fourth round (models/README.md) had (64, 32).
BUNDLED_MLA_DIMS = (32, 64)


def preset(name, layout=None):
    """Presets of MODEL.md section 1. `layout` picks "mha"/"mla" for tiny-test and tiny-bundled.

    "tiny" is kept as an alias of tiny-test (as it always was here); the engine's bundled presets
    `tiny` (mla) and `tiny-mha` are "tiny-bundled" with layout "mla" / "mha"."""
    if name == "tiny-bundled":
        lay = layout or "mla"
        return Config(name="tiny" if lay == "mla" else "tiny-mha", layout=lay, dim=256, heads=4,
                      head_dim=64, layers=6, ffn_dim=768, freq_dim=128, latent_channels=8,
                      text_dim=128, text_len=12, d_c=BUNDLED_MLA_DIMS[0], d_r=BUNDLED_MLA_DIMS[1],
                      vocab=64, dec_ch=32, dec_n_up=3,
                      dec_t_up=4, text_pos=True)
    if name in ("tiny-test", "tiny"):
        return Config(name="tiny-test", layout=layout or "mha", dim=64, heads=4, head_dim=16,
                      layers=2, ffn_dim=128, freq_dim=32, latent_channels=4, text_dim=32,
                      text_len=8, d_c=24, d_r=8, vocab=64, dec_ch=8, dec_n_up=3, dec_t_up=4)
    if name == "wan-1.3b":
        assert layout in (None, "mha")
        return Config(name=name, layout="mha", dim=1536, heads=12, head_dim=128, layers=30,
                      ffn_dim=8960, freq_dim=256, latent_channels=16, text_dim=4096,
                      text_len=512)
    if name == "wan-1.3b-mla":
        assert layout in (None, "mla")
        return Config(name=name, layout="mla", dim=1536, heads=12, head_dim=128, layers=30,
                      ffn_dim=8960, freq_dim=256, latent_channels=16, text_dim=4096,
                      text_len=512, d_c=160, d_r=64)
    raise ValueError("unknown preset %r" % name)


# ==============================================================================================
# Weights (MODEL.md section 9) and their random initialisation


def weight_specs(cfg):
    """Ordered list of (name, shape, init) for every tensor of the model.

    init is one of ("normal", std), ("norm", std) [= 1 + N(0, std)], ("uniform", lo, hi).
    The order is the order in which the random initialiser draws them.
    """
    D, H, dh, L = cfg.dim, cfg.heads, cfg.head_dim, cfg.layers
    C, Ft, Dt, Fd = cfg.latent_channels, cfg.freq_dim, cfg.text_dim, cfg.ffn_dim
    B = ("normal", 0.1)          # biases
    M = ("normal", 0.1)          # modulation tables
    N = ("norm", 0.1)            # norm weights: 1 + N(0, 0.1)

    def lin(n_in):               # linear weights
        return ("normal", 1.0 / math.sqrt(n_in))

    s = []
    s.append(("patch_embedding.weight", (D, C, 1, 2, 2), lin(C * 4)))
    s.append(("patch_embedding.bias", (D,), B))
    s.append(("text_embedding.0.weight", (D, Dt), lin(Dt)))
    s.append(("text_embedding.0.bias", (D,), B))
    s.append(("text_embedding.2.weight", (D, D), lin(D)))
    s.append(("text_embedding.2.bias", (D,), B))
    s.append(("time_embedding.0.weight", (D, Ft), lin(Ft)))
    s.append(("time_embedding.0.bias", (D,), B))
    s.append(("time_embedding.2.weight", (D, D), lin(D)))
    s.append(("time_embedding.2.bias", (D,), B))
    s.append(("time_projection.1.weight", (6 * D, D), lin(D)))
    s.append(("time_projection.1.bias", (6 * D,), B))
    for i in range(L):
        p = "blocks.%d." % i
        s.append((p + "modulation", (1, 6, D), M))
        a = p + "self_attn."
        if cfg.layout == "mha":
            for n in ("q", "k", "v", "o"):
                s.append((a + n + ".weight", (D, D), lin(D)))
                s.append((a + n + ".bias", (D,), B))
            s.append((a + "norm_q.weight", (D,), N))
            s.append((a + "norm_k.weight", (D,), N))
        else:
            dc, dr = cfg.d_c, cfg.d_r
            s.append((a + "q.weight", (H * dh, D), lin(D)))
            s.append((a + "q.bias", (H * dh,), B))
            s.append((a + "norm_q.weight", (H * dh,), N))
            s.append((a + "q_rope.weight", (H * dr, D), lin(D)))
            s.append((a + "q_rope.bias", (H * dr,), B))
            s.append((a + "norm_q_rope.weight", (H * dr,), N))
            s.append((a + "kv_down.weight", (dc, D), lin(D)))
            s.append((a + "kv_down.bias", (dc,), B))
            s.append((a + "norm_kv.weight", (dc,), N))
            s.append((a + "k_rope.weight", (dr, D), lin(D)))
            s.append((a + "k_rope.bias", (dr,), B))
            s.append((a + "norm_k_rope.weight", (dr,), N))
            s.append((a + "k_up.weight", (H * dh, dc), lin(dc)))
            s.append((a + "v_up.weight", (H * dh, dc), lin(dc)))
            s.append((a + "o.weight", (D, H * dh), lin(H * dh)))
            s.append((a + "o.bias", (D,), B))
        c = p + "cross_attn."
        for n in ("q", "k", "v", "o"):
            s.append((c + n + ".weight", (D, D), lin(D)))
            s.append((c + n + ".bias", (D,), B))
        s.append((c + "norm_q.weight", (D,), N))
        s.append((c + "norm_k.weight", (D,), N))
        s.append((p + "norm3.weight", (D,), N))
        s.append((p + "norm3.bias", (D,), B))
        s.append((p + "ffn.0.weight", (Fd, D), lin(D)))
        s.append((p + "ffn.0.bias", (Fd,), B))
        s.append((p + "ffn.2.weight", (D, Fd), lin(Fd)))
        s.append((p + "ffn.2.bias", (D,), B))
    s.append(("head.head.weight", (4 * C, D), lin(D)))
    s.append(("head.head.bias", (4 * C,), B))
    s.append(("head.modulation", (1, 2, D), M))
    if cfg.vocab:
        s.append(("text_encoder.embed.weight", (cfg.vocab, Dt), ("normal", 1.0)))
        if cfg.text_pos:
            s.append(("text_encoder.pos.weight", (cfg.text_len, Dt), ("normal", 0.1)))
    if cfg.dec_ch:
        ch = cfg.dec_ch

        def conv(n_in):
            return ("normal", 1.0 / math.sqrt(n_in * 9))

        s.append(("decoder.latent_mean", (C,), ("normal", 0.1)))
        s.append(("decoder.latent_std", (C,), ("uniform", 0.5, 1.5)))
        s.append(("decoder.conv_in.weight", (ch, 2 * C, 3, 3), conv(2 * C)))
        s.append(("decoder.conv_in.bias", (ch,), B))
        s.append(("decoder.conv_mid.weight", (ch, ch, 3, 3), conv(ch)))
        s.append(("decoder.conv_mid.bias", (ch,), B))
        for i in range(cfg.dec_n_up):
            s.append(("decoder.up.%d.weight" % i, (ch, ch, 3, 3), conv(ch)))
            s.append(("decoder.up.%d.bias" % i, (ch,), B))
        s.append(("decoder.conv_out.weight", (3 * cfg.dec_t_up, ch, 3, 3), conv(ch)))
        s.append(("decoder.conv_out.bias", (3 * cfg.dec_t_up,), B))
    return s


def param_count(cfg, dit_only=False):
    n = 0
    for name, shape, _ in weight_specs(cfg):
        if dit_only and (name.startswith("decoder.") or name.startswith("text_encoder.")):
            continue
        n += int(np.prod(shape))
    return n


def init_weights(cfg, seed, device="cpu", dtype=torch.float32):
    """Seeded random weights, drawn in float32 from a torch.Generator on `device` in the order
    of weight_specs(), then cast to `dtype`. Returns {name: tensor}."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    w = {}
    for name, shape, init in weight_specs(cfg):
        if init[0] == "normal":
            t = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * init[1]
        elif init[0] == "norm":
            t = 1.0 + torch.randn(shape, generator=g, device=device, dtype=torch.float32) * init[1]
        elif init[0] == "uniform":
            lo, hi = init[1], init[2]
            t = lo + (hi - lo) * torch.rand(shape, generator=g, device=device, dtype=torch.float32)
        else:
            raise ValueError(init)
        w[name] = t.to(dtype).contiguous()
    return w


def check_weights(cfg, weights):
    """Every tensor of weight_specs present with its shape, nothing else."""
    want = {n: tuple(s) for n, s, _ in weight_specs(cfg)}
    got = {n: tuple(t.shape) for n, t in weights.items()}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    bad = sorted(n for n in want if n in got and want[n] != got[n])
    if missing or extra or bad:
        raise ValueError("weights do not match %s/%s: missing %s extra %s bad shapes %s"
                         % (cfg.name, cfg.layout, missing[:5], extra[:5],
                            [(n, got[n], want[n]) for n in bad[:5]]))


# ==============================================================================================
# Elementary ops


def _norm_dtype(dtype):
    """Norms run in fp32 (MODEL.md), or in float64 when the whole computation is float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def layer_norm(x, eps, weight=None, bias=None):
    """LayerNorm over the last dim (biased variance), optional affine."""
    xf = x.to(_norm_dtype(x.dtype))
    mu = xf.mean(dim=-1, keepdim=True)
    var = ((xf - mu) ** 2).mean(dim=-1, keepdim=True)
    y = (xf - mu) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def rms_norm(x, weight, eps):
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight."""
    xf = x.to(_norm_dtype(x.dtype))
    y = xf / torch.sqrt((xf * xf).mean(dim=-1, keepdim=True) + eps)
    return (y * weight.to(y.dtype)).to(x.dtype)


def silu(u):
    return u * torch.sigmoid(u)


def gelu_tanh(u):
    return 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u * u * u)))


def softmax_last(s):
    """Softmax over the last dim, max-subtracted; in fp32 at least."""
    sf = s.to(_norm_dtype(s.dtype))
    sf = sf - sf.amax(dim=-1, keepdim=True)
    p = torch.exp(sf)
    return p / p.sum(dim=-1, keepdim=True)


def conv3x3(x, weight, bias):
    """3x3 convolution, padding 1, PyTorch Conv2d semantics (cross-correlation), written out:
    out[o, y, x] = b[o] + sum_{i, ky, kx} W[o, i, ky, kx] * xpad[i, y + ky, x + kx].
    x [N, I, h, w], weight [O, I, 3, 3] -> [N, O, h, w]."""
    n, _, h, w = x.shape
    xp = TF.pad(x, (1, 1, 1, 1))
    out = bias.view(1, -1, 1, 1).expand(n, -1, h, w).clone()
    for ky in range(3):
        for kx in range(3):
            out = out + torch.einsum("oi,nihw->nohw", weight[:, :, ky, kx],
                                     xp[:, :, ky:ky + h, kx:kx + w])
    return out


def upsample_nearest_2x(x):
    """[N, C, h, w] -> [N, C, 2h, 2w], each pixel repeated in a 2x2 block."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


# ----------------------------------------------------------------------------------------------
# 3D RoPE (MODEL.md section 4)


def rope_split(d):
    """(pairs for frame, pairs for row, pairs for column) of a width-d vector."""
    dt = d - 4 * (d // 6)
    ds = 2 * (d // 6)
    return dt // 2, ds // 2, ds // 2


def rope_angles(pos, d):
    """pos: int tensor [N, 3] of (frame, row, column). Returns float64 angles [N, d/2].
    Frame pairs k = 0..dt/2-1 use freq 10000^(-2k/dt); row and column pairs 10000^(-2k/ds)."""
    dt = d - 4 * (d // 6)
    ds = 2 * (d // 6)
    dev = pos.device

    def freqs(n):
        k = torch.arange(n // 2, dtype=torch.float64, device=dev)
        return torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=dev), -2.0 * k / n)

    p = pos.to(torch.float64)
    return torch.cat([p[:, 0:1] * freqs(dt)[None, :],
                      p[:, 1:2] * freqs(ds)[None, :],
                      p[:, 2:3] * freqs(ds)[None, :]], dim=1)


def apply_rope(x, ang):
    """x: [B, N, nh, d] (nh heads of width d); ang: [N, d/2] float64.
    Pair j = (x[2j], x[2j+1]) is multiplied, as a complex number, by exp(i*ang[:, j]);
    computed in float64 and cast back to x.dtype."""
    xd = x.to(torch.float64)
    re, im = xd[..., 0::2], xd[..., 1::2]
    c = torch.cos(ang)[None, :, None, :]
    s = torch.sin(ang)[None, :, None, :]
    out = torch.stack([re * c - im * s, re * s + im * c], dim=-1).flatten(-2)
    return out.to(x.dtype)


def token_positions(frames, h2, w2, frame_offset, device):
    """[frames*h2*w2, 3] int64 positions (absolute latent frame, row, column) of a chunk's
    tokens, ordered frame, row, column."""
    f = torch.arange(frames, device=device).repeat_interleave(h2 * w2) + int(frame_offset)
    y = torch.arange(h2, device=device).repeat_interleave(w2).repeat(frames)
    x = torch.arange(w2, device=device).repeat(frames * h2)
    return torch.stack([f, y, x], dim=1)


# ==============================================================================================
# KV cache with sinks and a sliding window (MODEL.md section 6)


def context_frame_indices(start, window, sink, chunk_frames):
    """Absolute latent frames a chunk starting at frame `start` attends to from the cache:
    the sink frames (the first `sink` frames of the stream) that precede the chunk, then the
    newest `window - chunk_frames` earlier frames that are not sinks, in frame order."""
    sinks = list(range(min(sink, start)))
    n_win = max(window - chunk_frames, 0)
    recent = list(range(max(sink, start - n_win), start)) if n_win else []
    return sinks + recent


class KVCache:
    """Per-stream-batch cache, one entry per absolute latent frame.

    frames[f] is a list over layers of a tuple of tensors [B, tokens_per_frame, ...]:
      mha: (k after RoPE [B, T, H, dh], v [B, T, H, dh])
      mla: (c [B, T, d_c], k_r after RoPE [B, T, d_r])
    """

    def __init__(self, window, sink, chunk_frames=3):
        self.window = int(window)
        self.sink = int(sink)
        self.chunk_frames = int(chunk_frames)
        self.frames = {}
        self.evicted = []          # every frame evicted so far, in order

    def context_frames(self, start):
        return context_frame_indices(start, self.window, self.sink, self.chunk_frames)

    def begin_chunk(self, start):
        """Evict the frames the chunk starting at `start` no longer attends to. Returns them."""
        keep = set(self.context_frames(start))
        gone = sorted(f for f in self.frames if f not in keep)
        for f in gone:
            del self.frames[f]
        self.evicted.extend(gone)
        return gone

    def gather(self, layer, frames):
        """Tuple of tensors: the entries of `frames` for `layer`, concatenated along tokens, or
        None if `frames` is empty."""
        if not frames:
            return None
        missing = [f for f in frames if f not in self.frames]
        assert not missing, "cache misses frames %s" % missing
        parts = [self.frames[f][layer] for f in frames]
        return tuple(torch.cat([p[j] for p in parts], dim=1) for j in range(len(parts[0])))

    def store(self, frame, layer, entries, n_layers):
        slot = self.frames.setdefault(frame, [None] * n_layers)
        slot[layer] = tuple(e.detach().clone() for e in entries)

    def stored_frames(self):
        return sorted(self.frames)


# ==============================================================================================
# The model


class VmlaModel:
    """The DiT of MODEL.md sections 2-5, plus the tiny text encoder (section 3) and the tiny
    decoder (section 8).

    weights: {name: tensor} as MODEL.md section 9 (any float dtype); they are cast to `dtype` and
    moved to `device`. All activations are in `dtype`; norms and softmax in fp32 at least, RoPE and
    the timestep sinusoid in float64 (MODEL.md).

    mla_mode: "rebuild" (explicit k_c,h and v_h per head; the reference) or "absorb" (k_up folded
              into the query, attention over the latent, v_up applied after: what the engine does).
    attn_impl: "explicit" (softmax(q k^T * scale) v written out) or "sdpa" (torch's
               scaled_dot_product_attention; for the peer benchmarks).
    """

    def __init__(self, cfg, weights, dtype=torch.float64, device=None,
                 mla_mode="rebuild", attn_impl="explicit"):
        check_weights(cfg, weights)
        self.cfg = cfg
        self.dtype = dtype
        if device is None:
            device = next(iter(weights.values())).device
        self.device = torch.device(device)
        self.w = {k: v.to(device=self.device, dtype=dtype) for k, v in weights.items()}
        assert mla_mode in ("rebuild", "absorb")
        assert attn_impl in ("explicit", "sdpa")
        self.mla_mode = mla_mode
        self.attn_impl = attn_impl
        # debug statistics, filled when not None: max |row sum - 1| of attention probabilities
        self.stats = None

    # -- helpers --------------------------------------------------------------------------------

    def linear(self, x, name, bias=True):
        y = torch.matmul(x, self.w[name + ".weight"].t())
        if bias:
            y = y + self.w[name + ".bias"]
        return y

    def attention(self, q, k, v, scale):
        """q [B, Nq, H, d], k [B, Nk, H, d], v [B, Nk, H, dv] -> [B, Nq, H, dv];
        softmax(q k^T * scale) v per head, every query sees every key."""
        if self.attn_impl == "sdpa":
            o = TF.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                v.transpose(1, 2), scale=scale)
            return o.transpose(1, 2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
        p = softmax_last(s)
        self._note_probs(p)
        return torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v)

    def _note_probs(self, p):
        if self.stats is not None:
            err = float((p.sum(dim=-1) - 1.0).abs().max())
            self.stats["attn_row_sum_err"] = max(self.stats.get("attn_row_sum_err", 0.0), err)
            self.stats["attn_calls"] = self.stats.get("attn_calls", 0) + 1

    # -- text (MODEL.md section 3) ----------------------------------------------------------------

    def encode_text(self, token_ids):
        """Tiny text encoder: token ids [B, L] (0 = padding) -> [B, L, Dt]; padded rows zeroed.
        With cfg.text_pos (bundled models) row i adds text_encoder.pos.weight[i]."""
        ids = torch.as_tensor(token_ids, device=self.device).long()
        emb = self.w["text_encoder.embed.weight"][ids]
        if self.cfg.text_pos:
            emb = emb + self.w["text_encoder.pos.weight"][None, :ids.shape[1]]
        return emb * (ids != 0).to(emb.dtype)[..., None]

    def text_context(self, text_emb):
        """Text encoder output [B, L, Dt] -> prompt context ctx [B, L, D]."""
        h = gelu_tanh(self.linear(text_emb.to(self.dtype), "text_embedding.0"))
        return self.linear(h, "text_embedding.2")

    def prompt_kv(self, ctx):
        """Cross-attention keys/values of each layer: list of (k [B, L, H, dh], v [B, L, H, dh]).
        They depend on the prompt only, so a stream computes them once per prompt."""
        cfg = self.cfg
        B, L, _ = ctx.shape
        out = []
        for i in range(cfg.layers):
            p = "blocks.%d.cross_attn." % i
            k = rms_norm(self.linear(ctx, p + "k"), self.w[p + "norm_k.weight"], cfg.eps)
            v = self.linear(ctx, p + "v")
            out.append((k.view(B, L, cfg.heads, cfg.head_dim), v.view(B, L, cfg.heads, cfg.head_dim)))
        return out

    # -- timestep (MODEL.md section 2) ------------------------------------------------------------

    def time_sinusoid(self, t):
        """t: [B] (floats) -> [B, freq_dim] = [cos(t*freq), sin(t*freq)], computed in float64."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device).reshape(-1)
        half = self.cfg.freq_dim // 2
        i = torch.arange(half, dtype=torch.float64, device=self.device)
        freq = torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=self.device), -i / half)
        arg = t[:, None] * freq[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).to(self.dtype)

    def time_embed(self, t):
        """-> (sin_emb [B, Ft], e [B, D], e0 [B, 6D])."""
        sin_emb = self.time_sinusoid(t)
        e = self.linear(silu(self.linear(sin_emb, "time_embedding.0")), "time_embedding.2")
        e0 = self.linear(silu(e), "time_projection.1")
        return sin_emb, e, e0

    # -- patches (MODEL.md sections 3 and 5) ------------------------------------------------------

    @staticmethod
    def patchify(lat):
        """[B, C, F, h, w] -> [B, F*(h/2)*(w/2), 4C], token(f,y,x)[c*4+q*2+r] = lat[c,f,2y+q,2x+r]."""
        B, C, F, h, w = lat.shape
        t = lat.reshape(B, C, F, h // 2, 2, w // 2, 2)      # b c f y q x r
        t = t.permute(0, 2, 3, 5, 1, 4, 6)                   # b f y x c q r
        return t.reshape(B, F * (h // 2) * (w // 2), C * 4)

    @staticmethod
    def unpatchify(out, C, F, h, w):
        """[B, N, 4C] -> [B, C, F, h, w], v[c,f,2y+q,2x+r] = out[token(f,y,x), q*2C + r*C + c]."""
        B = out.shape[0]
        o = out.reshape(B, F, h // 2, w // 2, 2, 2, C)      # b f y x q r c
        v = o.permute(0, 6, 1, 2, 4, 3, 5)                   # b c f y q x r
        return v.reshape(B, C, F, h, w)

    # -- attention of a block (MODEL.md section 4) ------------------------------------------------

    def self_attn_mha(self, i, u, ang, past):
        """u [B, N, D] (modulated), ang [N, dh/2]; past: (k, v) of the cache or None.
        Returns (SA output [B, N, D], the chunk's new cache entries (k, v))."""
        cfg = self.cfg
        B, N, _ = u.shape
        H, dh = cfg.heads, cfg.head_dim
        p = "blocks.%d.self_attn." % i
        q = rms_norm(self.linear(u, p + "q"), self.w[p + "norm_q.weight"], cfg.eps)
        k = rms_norm(self.linear(u, p + "k"), self.w[p + "norm_k.weight"], cfg.eps)
        v = self.linear(u, p + "v")
        q = apply_rope(q.view(B, N, H, dh), ang)
        k = apply_rope(k.view(B, N, H, dh), ang)
        v = v.view(B, N, H, dh)
        K, V = (k, v) if past is None else (torch.cat([past[0], k], 1), torch.cat([past[1], v], 1))
        o = self.attention(q, K, V, 1.0 / math.sqrt(dh))
        return self.linear(o.reshape(B, N, H * dh), p + "o"), (k, v)

    def self_attn_mla(self, i, u, ang, past):
        """Latent layout; ang [N, d_r/2]; past: (c, k_r) of the cache or None.
        Returns (SA output [B, N, D], the chunk's new cache entries (c, k_r))."""
        cfg = self.cfg
        B, N, _ = u.shape
        H, dh, dc, dr = cfg.heads, cfg.head_dim, cfg.d_c, cfg.d_r
        p = "blocks.%d.self_attn." % i
        w = self.w
        q_c = rms_norm(self.linear(u, p + "q"), w[p + "norm_q.weight"], cfg.eps).view(B, N, H, dh)
        q_r = rms_norm(self.linear(u, p + "q_rope"), w[p + "norm_q_rope.weight"], cfg.eps)
        q_r = apply_rope(q_r.view(B, N, H, dr), ang)                      # rope per head
        c = rms_norm(self.linear(u, p + "kv_down"), w[p + "norm_kv.weight"], cfg.eps)  # [B, N, dc]
        k_r = rms_norm(self.linear(u, p + "k_rope"), w[p + "norm_k_rope.weight"], cfg.eps)
        k_r = apply_rope(k_r.view(B, N, 1, dr), ang).view(B, N, dr)      # one shared "head"
        if past is None:
            Cl, Kr = c, k_r
        else:
            Cl, Kr = torch.cat([past[0], c], 1), torch.cat([past[1], k_r], 1)
        Nk = Cl.shape[1]
        k_up = w[p + "k_up.weight"].view(H, dh, dc)     # rows h*dh..(h+1)*dh of [H*dh, dc]
        v_up = w[p + "v_up.weight"].view(H, dh, dc)
        scale = 1.0 / math.sqrt(dh + dr)
        if self.mla_mode == "rebuild":
            k_c = torch.einsum("bkc,hdc->bkhd", Cl, k_up)                 # c @ k_up_h.T
            v_h = torch.einsum("bkc,hdc->bkhd", Cl, v_up)                 # c @ v_up_h.T
            qq = torch.cat([q_c, q_r], dim=-1)                            # [B, N, H, dh+dr]
            kk = torch.cat([k_c, Kr[:, :, None, :].expand(B, Nk, H, dr)], dim=-1)
            o = self.attention(qq, kk, v_h, scale)                        # [B, N, H, dh]
        else:
            q_t = torch.einsum("bqhd,hdc->bqhc", q_c, k_up)               # q~_h = q_c,h @ k_up_h
            if self.attn_impl == "sdpa":
                qq = torch.cat([q_t, q_r], dim=-1)                        # [B, N, H, dc+dr]
                kk = torch.cat([Cl, Kr], dim=-1)[:, :, None, :].expand(B, Nk, H, dc + dr)
                vv = Cl[:, :, None, :].expand(B, Nk, H, dc)
                o_lat = self.attention(qq, kk, vv, scale)                 # [B, N, H, dc]
            else:
                s = (torch.einsum("bqhc,bkc->bhqk", q_t, Cl)
                     + torch.einsum("bqhr,bkr->bhqk", q_r, Kr)) * scale
                pr = softmax_last(s)
                self._note_probs(pr)
                o_lat = torch.einsum("bhqk,bkc->bqhc", pr.to(Cl.dtype), Cl)
            o = torch.einsum("bqhc,hdc->bqhd", o_lat, v_up)               # apply v_up per head
        return self.linear(o.reshape(B, N, H * dh), p + "o"), (c, k_r)

    def cross_attn(self, i, u, kv):
        cfg = self.cfg
        B, N, _ = u.shape
        p = "blocks.%d.cross_attn." % i
        q = rms_norm(self.linear(u, p + "q"), self.w[p + "norm_q.weight"], cfg.eps)
        o = self.attention(q.view(B, N, cfg.heads, cfg.head_dim), kv[0], kv[1],
                           1.0 / math.sqrt(cfg.head_dim))
        return self.linear(o.reshape(B, N, cfg.dim), p + "o")

    def block(self, i, x, e0, ang, ctx_kv_i, past):
        cfg = self.cfg
        B, N, D = x.shape
        p = "blocks.%d." % i
        m = self.w[p + "modulation"][0][None] + e0.view(B, 6, D)         # [B, 6, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = [m[:, j, None, :] for j in range(6)]
        u = layer_norm(x, cfg.eps) * (1.0 + scale1) + shift1
        if cfg.layout == "mha":
            sa, new = self.self_attn_mha(i, u, ang, past)
        else:
            sa, new = self.self_attn_mla(i, u, ang, past)
        x = x + sa * gate1
        x = x + self.cross_attn(i, layer_norm(x, cfg.eps, self.w[p + "norm3.weight"],
                                              self.w[p + "norm3.bias"]), ctx_kv_i)
        u = layer_norm(x, cfg.eps) * (1.0 + scale2) + shift2
        ffn = self.linear(gelu_tanh(self.linear(u, p + "ffn.0")), p + "ffn.2")
        x = x + ffn * gate2
        return x, new

    def head(self, x, e):
        m = self.w["head.modulation"][0][None] + e[:, None, :]            # [B, 2, D]
        shift, scale = m[:, 0, None, :], m[:, 1, None, :]
        return self.linear(layer_norm(x, self.cfg.eps) * (1.0 + scale) + shift, "head.head")

    # -- one forward over a chunk -------------------------------------------------------------------

    def forward(self, lat, t, ctx_kv, frame_offset, cache=None, write_cache=False, record=None):
        """One model evaluation of a chunk.

        lat: [B, C, F, h, w] latents of the chunk; t: [B] timesteps (1000*sigma');
        ctx_kv: prompt_kv(ctx); frame_offset: absolute latent frame of the chunk's first frame;
        cache: KVCache or None; the chunk attends to cache.context_frames(frame_offset) and to
        itself. write_cache: store the chunk's per-frame entries in the cache (the cache pass).
        record: dict or None; receives sin, e, e0, patch, block.<i>, head, v.
        Returns the flow prediction v [B, C, F, h, w].
        """
        cfg = self.cfg
        lat = lat.to(device=self.device, dtype=self.dtype)
        B, C, F, h, w = lat.shape
        assert C == cfg.latent_channels and h % 2 == 0 and w % 2 == 0
        h2, w2 = h // 2, w // 2
        tpf = h2 * w2                                                     # tokens per frame
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if t.numel() == 1 and B > 1:
            t = t.expand(B)
        sin_emb, e, e0 = self.time_embed(t)

        x = torch.matmul(self.patchify(lat), self.w["patch_embedding.weight"].reshape(cfg.dim, C * 4).t())
        x = x + self.w["patch_embedding.bias"]

        pos = token_positions(F, h2, w2, frame_offset, self.device)
        rope_d = cfg.head_dim if cfg.layout == "mha" else cfg.d_r
        ang = rope_angles(pos, rope_d)

        ctx_frames = cache.context_frames(frame_offset) if cache is not None else []
        if record is not None:
            record.update({"sin": sin_emb, "e": e, "e0": e0, "patch": x,
                           "cached_frames": list(ctx_frames)})
        for i in range(cfg.layers):
            past = cache.gather(i, ctx_frames) if cache is not None else None
            x, new = self.block(i, x, e0, ang, ctx_kv[i], past)
            if write_cache:
                for f in range(F):
                    cache.store(frame_offset + f, i,
                                [n[:, f * tpf:(f + 1) * tpf] for n in new], cfg.layers)
            if record is not None:
                record["block.%d" % i] = x
        out = self.head(x, e)
        v = self.unpatchify(out, C, F, h, w)
        if record is not None:
            record["head"] = out
            record["v"] = v
        return v

    # -- tiny decoder (MODEL.md section 8) ----------------------------------------------------------

    def decode(self, lat, prev=None):
        """lat [B, C, F, h, w] -> RGB [B, F*t_up, h*2^n_up, w*2^n_up, 3] in [0, 1].
        prev [B, C, h, w]: the stream's latent frame before lat's first one (None: zeros)."""
        cfg = self.cfg
        w = self.w
        lat = lat.to(device=self.device, dtype=self.dtype)
        B, C, F, h, wd = lat.shape
        if prev is None:
            prev = torch.zeros(B, C, h, wd, dtype=self.dtype, device=self.device)
        prev = prev.to(device=self.device, dtype=self.dtype)
        z = lat.permute(0, 2, 1, 3, 4)                                   # [B, F, C, h, w]
        zp = torch.cat([prev[:, None], z[:, :-1]], dim=1)                 # previous frame of each
        mean = w["decoder.latent_mean"].view(1, 1, C, 1, 1)
        std = w["decoder.latent_std"].view(1, 1, C, 1, 1)
        a = torch.cat([zp * std + mean, z * std + mean], dim=2)          # prev first: [B, F, 2C, h, w]
        a = a.reshape(B * F, 2 * C, h, wd)
        a = silu(conv3x3(a, w["decoder.conv_in.weight"], w["decoder.conv_in.bias"]))
        a = silu(conv3x3(a, w["decoder.conv_mid.weight"], w["decoder.conv_mid.bias"]))
        for i in range(cfg.dec_n_up):
            a = silu(conv3x3(upsample_nearest_2x(a), w["decoder.up.%d.weight" % i],
                             w["decoder.up.%d.bias" % i]))
        o = conv3x3(a, w["decoder.conv_out.weight"], w["decoder.conv_out.bias"])
        T, Hh, Ww = cfg.dec_t_up, o.shape[2], o.shape[3]
        o = o.reshape(B, F, T, 3, Hh, Ww)
        rgb = ((o + 1.0) / 2.0).clamp(0.0, 1.0)
        return rgb.permute(0, 1, 2, 4, 5, 3).reshape(B, F * T, Hh, Ww, 3)


# ==============================================================================================
# Sampler (MODEL.md section 6)


def stream_noise(seeds, chunk, draw, shape, dtype, device):
    """[B, *shape] noise of each stream (its own seed), from vmla_rng (Philox, float32)."""
    arrs = [vmla_rng.noise(s, chunk, draw, shape) for s in seeds]
    return torch.from_numpy(np.stack(arrs)).to(device=device, dtype=dtype)


def generate_chunk(model, cache, chunk, ctx_kv, seeds, latent_h, latent_w,
                   steps=vmla_rng.DEFAULT_STEPS, shift=vmla_rng.DEFAULT_SHIFT, info=None):
    """Generate chunk number `chunk` of a batch of streams (one seed each) and run its cache pass.

    Evicts what falls out of the window, denoises with len(steps) passes, then runs the model at
    t = 0 on the clean chunk with write_cache=True. Returns the latents x0 [B, C, F, h, w].
    info (dict or None) receives cached_frames, evicted, noise (list of the draws).
    """
    cfg = model.cfg
    F = cache.chunk_frames
    start = chunk * F
    B = len(seeds)
    shape = (cfg.latent_channels, F, latent_h, latent_w)
    evicted = cache.begin_chunk(start)
    sig = vmla_rng.warped_sigmas(steps, shift)
    K = len(sig)
    draws = [stream_noise(seeds, chunk, 0, shape, model.dtype, model.device)]
    x = draws[0]
    x0 = None
    for k in range(K):
        v = model.forward(x, [1000.0 * sig[k]] * B, ctx_kv, start, cache)
        x0 = x - sig[k] * v
        if k < K - 1:
            eps = stream_noise(seeds, chunk, k + 1, shape, model.dtype, model.device)
            draws.append(eps)
            x = (1.0 - sig[k + 1]) * x0 + sig[k + 1] * eps
    model.forward(x0, [0.0] * B, ctx_kv, start, cache, write_cache=True)
    if info is not None:
        info["cached_frames"] = cache.context_frames(start)
        info["evicted"] = evicted
        info["noise"] = draws
    return x0


def tokenize_vocab(text, vocab_words, text_len):
    """Vocabulary mode of MODEL.md section 3 (bundled models): word k of `vocab_words` (a list,
    or the space-separated "vmla.vocab" string) -> k + 2, any other word -> 1, padding 0; same
    splitting and truncation as the hash mode. Words longer than 64 bytes are unknown."""
    if isinstance(vocab_words, str):
        vocab_words = vocab_words.split()
    ids = {w: k + 2 for k, w in enumerate(vocab_words)}
    out = [ids.get(w, 1) if len(w) <= 64 else 1 for w in vmla_rng.words(text)[:text_len]]
    return out + [0] * (text_len - len(out))


def prompt_context(model, prompts, vocab_words=None):
    """Tiny path: list of prompt strings -> (token ids [B, L] int64, ctx [B, L, D], ctx_kv).
    vocab_words: None (hash tokenizer) or the vocabulary (list or "vmla.vocab" string)."""
    cfg = model.cfg
    if vocab_words is None:
        rows = [vmla_rng.tokenize(p, cfg.vocab, cfg.text_len) for p in prompts]
    else:
        rows = [tokenize_vocab(p, vocab_words, cfg.text_len) for p in prompts]
    ids = torch.tensor(rows, dtype=torch.int64, device=model.device)
    ctx = model.text_context(model.encode_text(ids))
    return ids, ctx, model.prompt_kv(ctx)
