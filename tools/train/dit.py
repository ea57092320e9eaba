"""The DiT of docs/MODEL.md (both layouts) as torch modules for training.

Parameter names of `DiT.state_dict()` are exactly those of MODEL.md section 9 (plus
text_encoder.embed.weight / text_encoder.pos.weight), so export is a cast. The forward pass takes a
whole training sequence at once: several latent frames ("slots") with a timestep, an absolute
frame index and a validity flag each, and a frame-level attention mask that reproduces the
engine's sink + window KV cache (see `sequence_layout`). With that mask, clean slots play the
cache passes (t = 0) and noisy slots the denoising passes of the sampler, so one forward equals
what the engine computes chunk after chunk (tests: `check_dit.py` against tools/reference).

Math as vmla_ref (MODEL.md sections 2-5): norms in fp32, RoPE angles in float64 then fp32,
timestep sinusoid in float64; the matmuls run in bf16 under autocast on the GPU.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


class RMSNorm(nn.Module):
    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = _f(x)
        y = xf * torch.rsqrt((xf * xf).mean(dim=-1, keepdim=True) + self.eps)
        return y * self.weight.to(y.dtype)


def _f(x):
    """fp32 (or float64 when the whole computation is float64)."""
    return x if x.dtype == torch.float64 else x.float()


def layer_norm(x, eps, weight=None, bias=None):
    xf = _f(x)
    if weight is not None:
        weight, bias = weight.to(xf.dtype), bias.to(xf.dtype)
    return F.layer_norm(xf, (xf.shape[-1],), weight, bias, eps=eps)


def apply_rope(x, cos, sin):
    """x [B, N, nh, d]; cos/sin [B, N, 1, d/2]: pairs (x[2j], x[2j+1]) rotated."""
    xf = _f(x)
    re, im = xf[..., 0::2], xf[..., 1::2]
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2)


def rope_table(frame_abs, h2, w2, d, dtype):
    """Per-token cos/sin [B, N, 1, d/2] for slots whose absolute frames are frame_abs [B, Nf]
    (tokens ordered slot, row, column). Angles in float64 as MODEL.md section 4."""
    B, Nf = frame_abs.shape
    dev = frame_abs.device
    dt = d - 4 * (d // 6)
    ds = 2 * (d // 6)

    def freqs(n):
        k = torch.arange(n // 2, dtype=torch.float64, device=dev)
        return torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=dev), -2.0 * k / n)
    f = frame_abs.to(torch.float64)[:, :, None, None, None] * freqs(dt)          # [B,Nf,1,1,dt/2]
    y = torch.arange(h2, dtype=torch.float64, device=dev)[:, None, None] * freqs(ds)  # [h2,1,ds/2]
    x = torch.arange(w2, dtype=torch.float64, device=dev)[None, :, None] * freqs(ds)  # [1,w2,ds/2]
    ang = torch.cat([f.expand(B, Nf, h2, w2, dt // 2),
                     y[None, None].expand(B, Nf, h2, w2, ds // 2),
                     x[None, None].expand(B, Nf, h2, w2, ds // 2)], dim=-1)
    ang = ang.reshape(B, Nf * h2 * w2, 1, d // 2)
    return torch.cos(ang).to(dtype), torch.sin(ang).to(dtype)


def attention(q, k, v, mask):
    """q [B, N, H, d], k [B, M, H, d], v [B, M, H, dv]; mask [B, 1, N, M] bool or None.
    softmax(q k^T / sqrt(d)) v per head."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if HAS_SDPA and q.dtype != torch.float64:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        o = torch.matmul(torch.softmax(s.float() if s.dtype != torch.float64 else s, dim=-1).to(v.dtype), v)
    return o.transpose(1, 2)


class SelfAttnMHA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D = cfg.dim
        self.H, self.dh = cfg.heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(D, cfg.eps), RMSNorm(D, cfg.eps)

    def forward(self, u, rope, mask):
        B, N, _ = u.shape
        H, dh = self.H, self.dh
        v = self.v(u).view(B, N, H, dh)
        q = apply_rope(self.norm_q(self.q(u)).view(B, N, H, dh), *rope).to(v.dtype)
        k = apply_rope(self.norm_k(self.k(u)).view(B, N, H, dh), *rope).to(v.dtype)
        return self.o(attention(q, k, v, mask).reshape(B, N, H * dh))


class SelfAttnMLA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, H, dh, dc, dr = cfg.dim, cfg.heads, cfg.head_dim, cfg.d_c, cfg.d_r
        self.H, self.dh, self.dc, self.dr = H, dh, dc, dr
        self.q = nn.Linear(D, H * dh)
        self.norm_q = RMSNorm(H * dh, cfg.eps)
        self.q_rope = nn.Linear(D, H * dr)
        self.norm_q_rope = RMSNorm(H * dr, cfg.eps)
        self.kv_down = nn.Linear(D, dc)
        self.norm_kv = RMSNorm(dc, cfg.eps)
        self.k_rope = nn.Linear(D, dr)
        self.norm_k_rope = RMSNorm(dr, cfg.eps)
        self.k_up = nn.Linear(dc, H * dh, bias=False)
        self.v_up = nn.Linear(dc, H * dh, bias=False)
        self.o = nn.Linear(H * dh, D)

    def forward(self, u, rope, mask):
        B, N, _ = u.shape
        H, dh, dr = self.H, self.dh, self.dr
        c = self.norm_kv(self.kv_down(u))                                   # fp32 [B, N, dc]
        k_c = self.k_up(c).view(B, N, H, dh)                                # c @ k_up_h.T
        v = self.v_up(c).view(B, N, H, dh)
        q_c = self.norm_q(self.q(u)).view(B, N, H, dh)
        q_r = apply_rope(self.norm_q_rope(self.q_rope(u)).view(B, N, H, dr), *rope)
        k_r = apply_rope(self.norm_k_rope(self.k_rope(u)).view(B, N, 1, dr), *rope)
        dt = v.dtype
        q = torch.cat([q_c.to(dt), q_r.to(dt)], dim=-1)                    # [B, N, H, dh+dr]
        k = torch.cat([k_c.to(dt), k_r.to(dt).expand(B, N, H, dr)], dim=-1)
        return self.o(attention(q, k, v, mask).reshape(B, N, H * dh))      # scale 1/sqrt(dh+dr)


class CrossAttn(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D = cfg.dim
        self.H, self.dh = cfg.heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(D, cfg.eps), RMSNorm(D, cfg.eps)

    def kv(self, ctx):
        B, L, _ = ctx.shape
        v = self.v(ctx).view(B, L, self.H, self.dh)
        k = self.norm_k(self.k(ctx)).view(B, L, self.H, self.dh).to(v.dtype)
        return k, v

    def forward(self, x, kv):
        B, N, _ = x.shape
        k, v = kv
        q = self.norm_q(self.q(x)).view(B, N, self.H, self.dh).to(v.dtype)
        return self.o(attention(q, k, v, None).reshape(B, N, self.H * self.dh))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D = cfg.dim
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.zeros(1, 6, D))
        self.self_attn = SelfAttnMHA(cfg) if cfg.layout == "mha" else SelfAttnMLA(cfg)
        self.cross_attn = CrossAttn(cfg)
        self.norm3 = nn.LayerNorm(D, eps=cfg.eps, elementwise_affine=True)
        self.ffn = nn.Sequential(nn.Linear(D, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, D))

    def forward(self, x, e0, rope, mask, ctx_kv, tpf):
        """x [B, N, D] (fp32 residual stream); e0 [B, Nf, 6, D] per slot; tpf tokens per slot."""
        B, N, D = x.shape
        Nf = N // tpf
        m = (_f(self.modulation) + _f(e0))[:, :, :, None, :]               # [B, Nf, 6, 1, D]
        sh1, sc1, g1, sh2, sc2, g2 = [m[:, :, j] for j in range(6)]         # [B, Nf, 1, D]
        xv = x.view(B, Nf, tpf, D)
        u = (layer_norm(xv, self.eps) * (1.0 + sc1) + sh1).view(B, N, D)
        sa = _f(self.self_attn(u, rope, mask)).view(B, Nf, tpf, D)
        x = (xv + sa * g1).view(B, N, D)
        nx = layer_norm(x, self.eps, self.norm3.weight, self.norm3.bias)
        x = x + _f(self.cross_attn(nx, ctx_kv))
        xv = x.view(B, Nf, tpf, D)
        u = (layer_norm(xv, self.eps) * (1.0 + sc2) + sh2).view(B, N, D)
        ff = _f(self.ffn(u)).view(B, Nf, tpf, D)
        return (xv + ff * g2).view(B, N, D)


class Head(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, 4 * cfg.latent_channels)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x, e, tpf):
        B, N, D = x.shape
        m = (_f(self.modulation) + _f(e)[:, :, None, :])[:, :, :, None, :]   # [B,Nf,2,1,D]
        u = layer_norm(x.view(B, N // tpf, tpf, D), self.eps) * (1.0 + m[:, :, 1]) + m[:, :, 0]
        return self.head(u.view(B, N, D))


class TextEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab, cfg.text_dim)
        self.pos = nn.Embedding(cfg.text_len, cfg.text_dim)

    def forward(self, ids):
        L = ids.shape[1]
        emb = self.embed.weight[ids] + self.pos.weight[:L][None]
        return emb * (ids != 0).to(emb.dtype)[..., None]


class DiT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        D, C = cfg.dim, cfg.latent_channels
        self.patch_embedding = nn.Conv3d(C, D, (1, 2, 2), stride=(1, 2, 2))
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, D), nn.GELU(approximate="tanh"),
                                            nn.Linear(D, D))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.head = Head(cfg)
        self.text_encoder = TextEncoder(cfg)
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.text_encoder.embed.weight, std=1.0)
        nn.init.normal_(self.text_encoder.pos.weight, std=0.1)
        # adaLN-zero: every block starts as the identity, the head outputs 0
        nn.init.zeros_(self.time_projection[1].weight)
        nn.init.zeros_(self.time_projection[1].bias)
        nn.init.zeros_(self.head.head.weight)
        nn.init.zeros_(self.head.head.bias)
        for b in self.blocks:
            nn.init.zeros_(b.modulation)

    # -- pieces -------------------------------------------------------------------------------

    def time_embed(self, t):
        """t [...] (1000 sigma') -> e [..., D], e0 [..., 6, D]."""
        half = self.cfg.freq_dim // 2
        dev = t.device
        i = torch.arange(half, dtype=torch.float64, device=dev)
        freq = torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=dev), -i / half)
        arg = t.to(torch.float64)[..., None] * freq
        dt = torch.float64 if self.patch_embedding.weight.dtype == torch.float64 else torch.float32
        sin = torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1).to(dt)
        e = self.time_embedding(sin)
        e0 = self.time_projection(e)
        return e, e0.view(*e0.shape[:-1], 6, self.cfg.dim)

    def context(self, ids):
        """Token ids [B, L] -> per-layer cross-attention (k, v)."""
        ctx = self.text_embedding(self.text_encoder(ids))
        return [b.cross_attn.kv(ctx) for b in self.blocks]

    @staticmethod
    def patchify(lat):
        B, C, F_, h, w = lat.shape
        t = lat.reshape(B, C, F_, h // 2, 2, w // 2, 2).permute(0, 2, 3, 5, 1, 4, 6)
        return t.reshape(B, F_ * (h // 2) * (w // 2), C * 4)

    @staticmethod
    def unpatchify(out, C, F_, h, w):
        B = out.shape[0]
        o = out.reshape(B, F_, h // 2, w // 2, 2, 2, C).permute(0, 6, 1, 2, 4, 3, 5)
        return o.reshape(B, C, F_, h, w)

    def forward(self, lat, t, frame_abs, mask, ids):
        """lat [B, C, Nf, h, w] slots; t [B, Nf] timesteps (1000 sigma', 0 for clean slots);
        frame_abs [B, Nf] absolute latent frame of each slot (RoPE); mask [B, Nf, Nf] bool
        (query slot, key slot) or None (all see all); ids [B, L] token ids.
        Returns v [B, C, Nf, h, w]."""
        cfg = self.cfg
        B, C, Nf, h, w = lat.shape
        tpf = (h // 2) * (w // 2)
        N = Nf * tpf
        wdt = torch.float64 if lat.dtype == torch.float64 else torch.float32
        e, e0 = self.time_embed(t)                                          # [B,Nf,D], [B,Nf,6,D]
        pw = self.patch_embedding.weight.reshape(cfg.dim, C * 4)
        x = F.linear(self.patchify(lat), pw, self.patch_embedding.bias).to(wdt)
        rope_d = cfg.head_dim if cfg.layout == "mha" else cfg.d_r
        rope = rope_table(frame_abs, h // 2, w // 2, rope_d, wdt)
        tmask = None
        if mask is not None:
            tmask = mask[:, None, :, None, :, None].expand(B, 1, Nf, tpf, Nf, tpf).reshape(B, 1, N, N)
        ctx_kv = self.context(ids)
        for i, blk in enumerate(self.blocks):
            x = blk(x, e0, rope, tmask, ctx_kv[i], tpf)
        out = self.head(x, e, tpf)
        return self.unpatchify(out.to(wdt), C, Nf, h, w)


# ==============================================================================================
# Training sequences: which slots, which mask


def context_frames(start, window=6, sink=1, chunk=3):
    """MODEL.md section 6 (same as vmla_ref.context_frame_indices)."""
    sinks = list(range(min(sink, start)))
    n_win = max(window - chunk, 0)
    recent = list(range(max(sink, start - n_win), start)) if n_win else []
    return sinks + recent


def sequence_layout(n0, K, window=6, sink=1, chunk=3):
    """Slots of one training sequence whose noisy chunks are n0 .. n0+K-1.

    Clean slots: chunk 0 (the sink's chunk: its cache pass wrote the sink frames), the chunk
    before n0 (the window context of chunk n0), and chunks n0 .. n0+K-2 (context of the later
    noisy chunks), each once, padded with invalid slots to K+1 chunks. Noisy slots: chunks
    n0 .. n0+K-1. Returns numpy arrays over slots (3 (K+1) + 3 K of them):
      frame (absolute latent frame), chunk (absolute chunk index), noisy (bool), valid (bool),
    and mask [S, S] (query slot, key slot): a valid query of chunk c sees the clean slots of
    the frames its cache context holds (context_frames(3c)) and the slots of its own chunk with
    its own noisiness; an invalid slot sees only itself."""
    assert sink <= chunk, "the sink frames must lie in chunk 0"
    clean = sorted({0} | {c for c in range(n0 - 1, n0 + K - 1) if c >= 0})
    assert len(clean) <= K + 1
    n_pad = K + 1 - len(clean)
    frame, chk, noisy, valid = [], [], [], []
    for c in clean:
        for j in range(chunk):
            frame.append(chunk * c + j); chk.append(c); noisy.append(False); valid.append(True)
    for _ in range(n_pad):
        for j in range(chunk):
            frame.append(0); chk.append(-1); noisy.append(False); valid.append(False)
    for c in range(n0, n0 + K):
        for j in range(chunk):
            frame.append(chunk * c + j); chk.append(c); noisy.append(True); valid.append(True)
    frame, chk = np.array(frame), np.array(chk)
    noisy, valid = np.array(noisy), np.array(valid)
    S = len(frame)
    mask = np.zeros((S, S), dtype=bool)
    for q in range(S):
        if not valid[q]:
            mask[q, q] = True
            continue
        ctx = set(context_frames(chunk * chk[q], window, sink, chunk))
        for k in range(S):
            if not valid[k]:
                continue
            if (not noisy[k]) and frame[k] in ctx:
                mask[q, k] = True
            elif chk[k] == chk[q] and noisy[k] == noisy[q]:
                mask[q, k] = True
    return {"frame": frame, "chunk": chk, "noisy": noisy, "valid": valid, "mask": mask}


_LAYOUT_CACHE = {}


def layouts_batch(n0s, K):
    """Stack sequence_layout for a batch of n0 (cached per n0)."""
    outs = []
    for n0 in n0s:
        key = (int(n0), K)
        if key not in _LAYOUT_CACHE:
            _LAYOUT_CACHE[key] = sequence_layout(int(n0), K)
        outs.append(_LAYOUT_CACHE[key])
    return {k: np.stack([o[k] for o in outs]) for k in outs[0]}
