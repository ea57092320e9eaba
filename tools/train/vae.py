"""The small causal VAE of the bundled model: a train-time encoder (4 video frames -> one latent
frame of 8 x 12 x 12) and the decoder of docs/MODEL.md section 8, exactly.

    python3 tools/train/vae.py --out DIR [--steps N] [--batch B] [--device cpu|cuda] [--resume]

Trains encoder + decoder on procedural clips (tools/train/data.py): reconstruction of the 4 frames
of a latent frame from that latent frame and the previous one (the decoder is causal: it sees
[prev', z']), with noise added to the latents the decoder sees (so it tolerates the DiT's
imperfect latents) and a small penalty on the latent's magnitude. The first latent frame of a
video decodes with prev' = latent_mean (what the engine feeds: a zero normalised latent).
Writes DIR/vae.pt (weights, latent statistics, step; resumable), DIR/vae_log.txt and
reconstruction previews DIR/vae_recon.png.

The latent statistics (per-channel mean and std of the encoder's output over many clips) become
decoder.latent_mean / decoder.latent_std: the DiT is trained on (r - mean) / std, ~unit variance,
and the decoder maps the DiT's latent back with z' = z * std + mean.
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D      # noqa: E402

C_LAT = 8
DEC_CH = 32
N_UP = 3
T_UP = 4


def torch_load(path, device):
    """torch.load of our own checkpoints (trusted files: weights_only off where it exists)."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except TypeError:
        return torch.load(path, map_location=device)


class Encoder(nn.Module):
    """[N, 12, 96, 96] (4 RGB frames in [-1, 1], frame-major) -> raw latent [N, 8, 12, 12]."""

    def __init__(self, c_lat=C_LAT):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 * T_UP, 64, 4, stride=2, padding=1), nn.SiLU(),       # 48
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.Conv2d(64, 96, 4, stride=2, padding=1), nn.SiLU(),             # 24
            nn.Conv2d(96, 96, 3, padding=1), nn.SiLU(),
            nn.Conv2d(96, 128, 4, stride=2, padding=1), nn.SiLU(),            # 12
            nn.Conv2d(128, 128, 3, padding=1), nn.SiLU(),
            nn.Conv2d(128, c_lat, 1))

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    """docs/MODEL.md section 8 with the tensor names of section 9 (prefix decoder.).
    forward takes RAW latents (z' = z * std + mean already applied) prev', z' [N, C, h, w] and
    returns o [N, 3*t_up, 8h, 8w] before the (o + 1) / 2 clamp."""

    def __init__(self, c_lat=C_LAT, ch=DEC_CH, n_up=N_UP, t_up=T_UP):
        super().__init__()
        self.register_buffer("latent_mean", torch.zeros(c_lat))
        self.register_buffer("latent_std", torch.ones(c_lat))
        self.conv_in = nn.Conv2d(2 * c_lat, ch, 3, padding=1)
        self.conv_mid = nn.Conv2d(ch, ch, 3, padding=1)
        self.up = nn.ModuleList([nn.Conv2d(ch, ch, 3, padding=1) for _ in range(n_up)])
        self.conv_out = nn.Conv2d(ch, 3 * t_up, 3, padding=1)

    def forward(self, prev_raw, z_raw):
        a = F.silu(self.conv_in(torch.cat([prev_raw, z_raw], dim=1)))
        a = F.silu(self.conv_mid(a))
        for conv in self.up:
            a = F.silu(conv(F.interpolate(a, scale_factor=2, mode="nearest")))
        return self.conv_out(a)

    def decode_normalised(self, prev_z, z):
        """The engine's view: normalised latents (prev_z None = zeros) -> RGB [N, t_up, H, W, 3]."""
        m = self.latent_mean.view(1, -1, 1, 1)
        s = self.latent_std.view(1, -1, 1, 1)
        if prev_z is None:
            prev_z = torch.zeros_like(z)
        o = self.forward(prev_z * s + m, z * s + m)
        n, _, H, W = o.shape
        rgb = ((o + 1.0) / 2.0).clamp(0.0, 1.0).view(n, T_UP, 3, H, W)
        return rgb.permute(0, 1, 3, 4, 2)


class Renderer:
    """data.render on a torch device: training clips as encoder input."""

    def __init__(self, device):
        self.device = device
        g = torch.arange(D.SIZE, dtype=torch.float32, device=device) + 0.5
        self.grid = (g, g)
        self.tables = (torch.tensor(D.colour_table(), device=device),
                       torch.tensor(D.dir_table(), device=device))

    def params(self, p):
        out = {}
        for k, v in p.items():
            if k == "tokens":
                continue
            t = torch.as_tensor(v, device=self.device)
            out[k] = t.float() if t.dtype.is_floating_point else t.long()
        return out

    def frames(self, tp, latent_frames):
        """tp: torch params [n]; latent_frames: long tensor [n, F] -> encoder input
        [n, F, 12, 96, 96] in [-1, 1] (the 4 RGB frames of each latent frame, frame-major)."""
        n, nf = latent_frames.shape
        t = (latent_frames[:, :, None] * D.FRAMES_PER_LATENT
             + torch.arange(D.FRAMES_PER_LATENT, device=self.device)).reshape(n, -1).float()
        img = D.render(tp, t, xp=torch, grid=self.grid, tables=self.tables)   # [n, F*4, H, W, 3]
        img = img.view(n, nf, D.FRAMES_PER_LATENT, D.SIZE, D.SIZE, 3)
        img = img.permute(0, 1, 2, 5, 3, 4).reshape(n, nf, 3 * D.FRAMES_PER_LATENT, D.SIZE, D.SIZE)
        return img * 2.0 - 1.0


def hinge_target_loss(o, tgt, weight=None):
    """L1 + L2 between o and the target in [-1, 1]; overshooting a saturated target (+-1) in its
    own direction costs nothing (the decoder's output is clamped). `weight` (broadcast like o):
    per-pixel weights, the loss then their weighted mean."""
    err = o - tgt
    err = torch.where((tgt >= 1.0) & (err > 0), torch.zeros_like(err), err)
    err = torch.where((tgt <= -1.0) & (err < 0), torch.zeros_like(err), err)
    if weight is None:
        return err.abs().mean() + (err * err).mean()
    weight = weight.expand_as(err)
    return ((err.abs() + err * err) * weight).sum() / weight.sum()


def sample_clip(rng, batch, p_first=0.2, max_frame=250):
    """Latent frame pairs (f-1, f): f = 0 for a fraction p_first (then prev is the mean)."""
    f = rng.integers(1, max_frame, size=batch)
    first = rng.random(batch) < p_first
    f[first] = 0
    return f, first


def latent_stats(enc, rend, rng, n_batches=20, batch=64, device="cpu"):
    """Per-channel mean and std of the encoder's raw latent over random clips (float64)."""
    s = torch.zeros(C_LAT, dtype=torch.float64, device=device)
    s2 = torch.zeros_like(s)
    n = 0
    with torch.no_grad():
        for _ in range(n_batches):
            p, _ = D.sample_params(rng, batch)
            tp = rend.params(p)
            f = torch.as_tensor(rng.integers(0, 250, size=(batch, 1)), device=device)
            r = enc(rend.frames(tp, f)[:, 0]).double()
            s += r.sum(dim=(0, 2, 3))
            s2 += (r * r).sum(dim=(0, 2, 3))
            n += r.shape[0] * r.shape[2] * r.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-8).sqrt()
    return mean.float(), std.float()


def save(path, enc, dec, opt, step, ema_mean, ema_std, extra=None):
    tmp = path + ".tmp"
    torch.save({"encoder": enc.state_dict(), "decoder": dec.state_dict(),
                "opt": opt.state_dict() if opt is not None else None, "step": step,
                "ema_mean": ema_mean, "ema_std": ema_std, "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def load(path, device="cpu"):
    ck = torch_load(path, device)
    enc, dec = Encoder().to(device), Decoder().to(device)
    enc.load_state_dict(ck["encoder"])
    dec.load_state_dict(ck["decoder"])
    return enc, dec, ck


def preview(path, enc, dec, rend, device, seed=5):
    """Rows: ground truth and reconstruction of 4 clips (latent frames 0 and 1, 8 frames each)."""
    rng = np.random.default_rng(seed)
    p, caps = D.sample_params(rng, 4)
    tp = rend.params(p)
    f = torch.tensor([[0, 1]] * 4, device=device)
    with torch.no_grad():
        x = rend.frames(tp, f)                                    # [4, 2, 12, 96, 96]
        r = enc(x.flatten(0, 1)).view(4, 2, C_LAT, 12, 12)
        m = dec.latent_mean.view(1, -1, 1, 1)
        o0 = dec(m.expand(4, -1, 12, 12), r[:, 0])
        o1 = dec(r[:, 0], r[:, 1])
        o = torch.stack([o0, o1], 1)                              # [4, 2, 12, 96, 96]
    def to_img(a):
        a = ((a + 1) / 2).clamp(0, 1).view(4, 2, T_UP, 3, 96, 96).permute(0, 1, 2, 4, 5, 3)
        return a.reshape(4, 8, 96, 96, 3).cpu().numpy()
    gt, rc = to_img(x), to_img(o)
    rows = []
    for i in range(4):
        rows += [gt[i], rc[i]]
    D.write_png(path, D.tile(np.concatenate(rows), 8))
    return caps


def train(a):
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    dev = torch.device(a.device)
    os.makedirs(a.out, exist_ok=True)
    enc, dec = Encoder().to(dev), Decoder().to(dev)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema_mean = torch.zeros(C_LAT, device=dev)
    ema_std = torch.ones(C_LAT, device=dev)
    step = 0
    resumed_steps = 0
    ck_path = os.path.join(a.out, "vae.pt")
    if a.resume and os.path.exists(ck_path):
        ck = torch_load(ck_path, dev)
        enc.load_state_dict(ck["encoder"])
        dec.load_state_dict(ck["decoder"])
        opt.load_state_dict(ck["opt"])
        step, ema_mean, ema_std = ck["step"], ck["ema_mean"].to(dev), ck["ema_std"].to(dev)
        resumed_steps = ck["extra"].get("steps", 0)
        rng = np.random.default_rng([a.seed, step])
        torch.manual_seed(a.seed + step)
        print("resumed from step", step, flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    rend = Renderer(dev)
    log = open(os.path.join(a.out, "vae_log.txt"), "a")
    t0 = time.time()
    last_save = t0
    run_avg = None
    steps = a.steps or resumed_steps
    t_mark = None
    while not steps or step < steps:
        if not steps and step == 20 and t_mark is None:
            t_mark = time.time()
        if not steps and step == 50:
            dt = (time.time() - t_mark) / 30.0
            steps = step + max(1, int((a.seconds - (time.time() - t0)) / dt))
            msg = "step time %.1f ms: steps fixed at %d (reproduce with --steps %d)" % (
                1000 * dt, steps, steps)
            print(msg, flush=True)
            log.write(msg + "\n")
        if a.seconds and steps and time.time() - t0 > 1.1 * a.seconds:
            break
        prog = step / steps if steps else 0.0
        lr = a.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        for g in opt.param_groups:
            g["lr"] = lr
        p, _ = D.sample_params(rng, a.batch)
        tp = rend.params(p)
        f, first = sample_clip(rng, a.batch)
        fr = torch.as_tensor(np.stack([np.maximum(f - 1, 0), f], 1), device=dev)
        x = rend.frames(tp, fr)                                          # [B, 2, 12, 96, 96]
        r = enc(x.flatten(0, 1)).view(a.batch, 2, C_LAT, 12, 12)
        with torch.no_grad():
            bm = r.mean(dim=(0, 1, 3, 4))
            bs = r.std(dim=(0, 1, 3, 4))
            ema_mean.mul_(0.99).add_(0.01 * bm)
            ema_std.mul_(0.99).add_(0.01 * bs)
        sd = ema_std.view(1, -1, 1, 1)
        mu = ema_mean.view(1, -1, 1, 1)
        lvl = torch.rand(a.batch, 1, 1, 1, device=dev) * a.noise
        r_prev = r[:, 0] + lvl * sd * torch.randn_like(r[:, 0])
        r_cur = r[:, 1] + lvl * sd * torch.randn_like(r[:, 1])
        firstt = torch.as_tensor(first, device=dev).view(-1, 1, 1, 1)
        r_prev = torch.where(firstt, mu.expand_as(r_prev), r_prev)
        o = dec(r_prev, r_cur)
        loss_rec = hinge_target_loss(o, x[:, 1])
        loss = loss_rec + a.latent_penalty * (r * r).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        lv = float(loss_rec)
        run_avg = lv if run_avg is None else 0.98 * run_avg + 0.02 * lv
        if step % a.log_every == 0 or step == 1:
            msg = "vae step %d loss_rec %.5f avg %.5f lr %.2e |r| %.3f %.1fs" % (
                step, lv, run_avg, lr, float(r.abs().mean()), time.time() - t0)
            print(msg, flush=True)
            log.write(msg + "\n")
            log.flush()
        if time.time() - last_save > a.save_every:
            save(ck_path, enc, dec, opt, step, ema_mean, ema_std, extra={"steps": steps})
            last_save = time.time()
    mean, std = latent_stats(enc, rend, np.random.default_rng(a.seed + 1), device=dev,
                             n_batches=a.stat_batches)
    dec.latent_mean.copy_(mean)
    dec.latent_std.copy_(std)
    save(ck_path, enc, dec, opt, step, ema_mean, ema_std,
         extra={"loss_rec_avg": run_avg, "seconds": time.time() - t0, "steps": steps})
    msg = "vae done: step %d loss_rec_avg %.5f latent mean %s std %s" % (
        step, run_avg or float("nan"), np.round(mean.cpu().numpy(), 3).tolist(),
        np.round(std.cpu().numpy(), 3).tolist())
    print(msg, flush=True)
    log.write(msg + "\n")
    log.close()
    caps = preview(os.path.join(a.out, "vae_recon.png"), enc, dec, rend, dev)
    print("vae_recon.png rows (truth, reconstruction):", caps, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=0, help="0: fixed from --seconds after 50 steps")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--noise", type=float, default=0.2, help="max latent noise (x latent std)")
    ap.add_argument("--latent-penalty", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--save-every", type=float, default=120.0)
    ap.add_argument("--stat-batches", type=int, default=20)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    if not a.steps and not a.seconds:
        ap.error("give --steps or --seconds")
    if a.threads:
        torch.set_num_threads(a.threads)
    train(a)


if __name__ == "__main__":
    main()
