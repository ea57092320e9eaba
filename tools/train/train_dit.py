#!/usr/bin/env python3
"""Train the bundled DiT (one layout) on procedural videos through the frozen VAE encoder.

    python3 tools/train/train_dit.py --layout mla --vae OUT/vae.pt --out OUT/mla \
        [--seconds 300 | --steps N] [--batch 128] [--resume]

Recipe (why: models/README.md):
  * teacher forcing with the engine's cache rule: each sequence holds K = 3 consecutive noisy
    chunks n0..n0+2 plus, as clean slots at t = 0, chunk 0 (whose first frame is the sink), the
    chunk before n0 and chunks n0..n0+1; the frame-level mask lets every chunk see exactly the
    frames the engine's cache would hold (sink + window 6 incl. the chunk), see dit.sequence_layout;
    check_dit.py proves one such forward equals the reference's chunk-by-chunk cache passes;
  * n0 = 0 for 30% of sequences (the first chunk must come from the prompt alone), otherwise
    uniform in 1..85 so RoPE sees absolute frames up to ~260 (60 s is 240 latent frames);
  * noise level per noisy chunk: 75% one of the sampler's sigma' (1, .9375, .8333, .625),
    25% shift-5-warped uniform; x_t = (1 - s) x0 + s eps, target v = eps - x0, MSE on v;
  * the clean context slots get Gaussian noise (std up to --ctx-noise, half the sequences) at
    t = 0, so the model tolerates its own imperfect latents in the cache over long rollouts;
  * AdamW, warm-up then cosine, bf16 autocast, grad clip 1, EMA of the weights (exported).
Options of the later runs (models/README.md): --init FILE starts from an exported model, --data v2
the data recipe of data.RECIPES, --self-ctx P trains a fraction P of the sequences on context the
model reconstructed itself (self_context). finetune.py adds --obj-weight (loss weight on the
object's latent pixels, in Batcher/loss_fn here).
With --seconds and no --steps, the step count is fixed after 30 timed steps (printed: pass it as
--steps to reproduce the schedule). Checkpoints (weights, EMA, optimiser, step, RNG) go to
OUT/<layout>/ckpt.pt every --save-every seconds and at the end; --resume continues from there.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import data as D                 # noqa: E402
import dit as M                  # noqa: E402
import vae as V                  # noqa: E402
import vmla_ref as R             # noqa: E402
import vmla_rng                  # noqa: E402

SAMPLER_SIGMAS = vmla_rng.warped_sigmas()          # 1, .9375, .8333, .625


def autocast(on):
    return torch.autocast("cuda", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def sample_sigmas(rng, n, p_sampler=0.75, sigmas=None, shift=5.0):
    """p_sampler: one of the sampler's sigma' (`sigmas`, default the engine's original four), else
    uniform warped by `shift`. (With the defaults the draws are those of the earlier runs.)"""
    sg = SAMPLER_SIGMAS if sigmas is None else sigmas
    s = np.array(sg)[rng.integers(len(sg), size=n)]
    u = rng.random(n)
    warped = shift * u / (1.0 + (shift - 1.0) * u)
    return np.where(rng.random(n) < p_sampler, s, warped)


class Batcher:
    """Builds training batches on the device: render -> encode -> normalise -> noise."""

    def __init__(self, enc, mean, std, device, K=3, p_first=0.3, max_chunk=85, ctx_noise=0.1,
                 amp=True, start=None, compact=False, size_range=D.SIZE_RANGE,
                 speed_range=D.SPEED_RANGE, obj_weight=0.0, sigmas=None, shift=5.0):
        self.enc, self.device, self.K = enc, device, K
        self.mean = mean.view(1, -1, 1, 1).to(device)
        self.std = std.view(1, -1, 1, 1).to(device)
        self.rend = V.Renderer(device)
        self.p_first, self.max_chunk, self.ctx_noise = p_first, max_chunk, ctx_noise
        self.amp = amp and device.type == "cuda"
        self.combos = D.train_combos()
        self.start = start            # data.sample_params(start=...): None = uniform start
        self.compact = compact        # drop invalid slots (all sequences must share one n0)
        self.size_range, self.speed_range = size_range, speed_range
        self.obj_weight = obj_weight  # extra loss weight on the object's latent pixels (loss_fn)
        self.sigmas, self.shift = sigmas, shift   # the sampler's sigma' (sample_sigmas)

    def __call__(self, rng, B):
        dev = self.device
        p, _ = D.sample_params(rng, B, combos=self.combos, start=self.start,
                               size_range=self.size_range, speed_range=self.speed_range)
        n0 = np.where(rng.random(B) < self.p_first, 0, rng.integers(1, self.max_chunk + 1, size=B))
        lay = M.layouts_batch(n0, self.K)
        if self.compact:
            assert len(set(n0.tolist())) == 1
            m0 = lay["mask"][0]
            keep = lay["valid"][0] & lay["noisy"][0]      # the noisy slots and what they see
            while True:
                more = keep | (m0[keep].any(axis=0) & lay["valid"][0])
                if (more == keep).all():
                    break
                keep = more
            lay = {k: (v[:, keep][:, :, keep] if k == "mask" else v[:, keep]) for k, v in lay.items()}
        S = lay["frame"].shape[1]
        frames = torch.as_tensor(lay["frame"], device=dev)
        with torch.no_grad():
            x = self.rend.frames(self.rend.params(p), frames)              # [B, S, 12, 96, 96]
            with autocast(self.amp):
                r = self.enc(x.flatten(0, 1))
            z = ((r.float() - self.mean) / self.std).view(B, S, -1, 12, 12).permute(0, 2, 1, 3, 4)
            obj = None
            if self.obj_weight:
                # latent pixels the object touches (in any of the 4 frames), grown by one pixel
                bgc = self.rend.tables[0][torch.as_tensor(p["background"], device=dev)] * 2.0 - 1.0
                diff = (x.view(B, S, 4, 3, 96, 96) - bgc[:, None, None, :, None, None]).abs()
                hit = (diff.amax(dim=(2, 3)) > 0.1).float()                   # [B, S, 96, 96]
                hit = torch.nn.functional.max_pool2d(hit.view(B * S, 1, 96, 96), 8)
                hit = torch.nn.functional.max_pool2d(hit, 3, stride=1, padding=1)
                obj = hit.view(B, 1, S, 12, 12)
        noisy = torch.as_tensor(lay["noisy"], device=dev)
        valid = torch.as_tensor(lay["valid"], device=dev)
        # one sigma per noisy chunk (slots of a chunk share it)
        sig_chunk = torch.as_tensor(sample_sigmas(rng, B * self.K, sigmas=self.sigmas, shift=self.shift),
                                    device=dev, dtype=torch.float32)
        sig = torch.zeros(B, S, device=dev)
        sig[:, S - 3 * self.K:] = sig_chunk.view(B, self.K).repeat_interleave(3, dim=1)
        eps = torch.randn(z.shape, device=dev)
        s5 = sig[:, None, :, None, None]
        xt = (1.0 - s5) * z + s5 * eps
        # context noise augmentation on the clean slots
        amp_ctx = torch.as_tensor(rng.random(B) * self.ctx_noise * (rng.random(B) < 0.5),
                                  device=dev, dtype=torch.float32)[:, None, None, None, None]
        clean_in = z + amp_ctx * torch.randn(z.shape, device=dev)
        lat = torch.where(noisy[:, None, :, None, None], xt, clean_in)
        target = eps - z
        t = sig * 1000.0
        w = (noisy & valid).float()                                          # loss weight per slot
        return {"lat": lat, "z": z, "obj": obj, "obj_weight": self.obj_weight, "t": t, "frame": frames, "mask": torch.as_tensor(lay["mask"], device=dev),
                "ids": torch.as_tensor(p["tokens"], device=dev), "target": target, "w": w,
                "sig": sig, "first": torch.as_tensor(n0 == 0, device=dev), "noisy": noisy}


def self_context(model, b, rng, frac, amp, lo=0.35, hi=0.75):
    """Replace the clean context slots of a fraction `frac` of the sequences by the model's own
    one-step reconstruction of them (no gradient): each clean slot is noised to a sigma' drawn
    from U(lo, hi) (one per sequence; t = 1000 sigma'), the model predicts v with the sequence's
    mask, and x0 = x - sigma' v replaces the slot. The noisy chunks' targets stay the ground truth,
    so the model learns to continue a video from context that carries its own kind of errors
    (blur, faded or misplaced objects) and to pull it back to the prompt's video: a cheap stand-in
    for training on its own rollouts (models/README.md)."""
    B = b["lat"].shape[0]
    pick = rng.random(B) < frac
    if not pick.any():
        return b
    dev = b["lat"].device
    sel = torch.as_tensor(pick, device=dev)
    clean = (b["t"] == 0) & (b["w"] == 0)                          # [B, S] context slots
    sc = torch.as_tensor(rng.uniform(lo, hi, size=B), device=dev, dtype=torch.float32)[:, None]
    z = b["z"]
    s5 = sc[:, None, :, None, None]
    c5 = clean[:, None, :, None, None]
    x = torch.where(c5, (1.0 - s5) * z + s5 * torch.randn(z.shape, device=dev), b["lat"])
    t = torch.where(clean, sc * 1000.0, b["t"])
    # the model runs on the picked sequences only (the draws above are those of the whole batch,
    # as before, so the data do not depend on how many are picked)
    idx = torch.as_tensor(np.nonzero(pick)[0], device=dev)
    with torch.no_grad():
        with autocast(amp):
            v = model(x[idx], t[idx], b["frame"][idx], b["mask"][idx], b["ids"][idx])
        x0 = x[idx] - s5[idx] * v.float()
    b = dict(b)
    lat = b["lat"].clone()
    lat[idx] = torch.where(c5[idx], x0, lat[idx])
    b["lat"] = lat
    b["selfctx"] = sel
    return b


def rollout_inputs(model, b, rng, frac, sigmas, amp):
    """Give a fraction `frac` of the sequences the inputs the engine's sampler really feeds
    (docs/MODEL.md section 6) instead of (1 - s) x0 + s eps: each noisy chunk gets a step k
    (uniform over the sampler's sigma' `sigmas`), starts from pure noise and is advanced k steps by
    the model itself (no gradient; x0 = x - s_j v, re-noised to s_{j+1} with fresh noise), its
    context slots as in the batch. The target becomes the v that maps that input to the ground
    truth, (x - x0_true) / s_k, so every step learns to turn the previous steps' blurred estimate
    into the real video (the first chunk of recipe v2 is nearly determined by the prompt)."""
    B = b["lat"].shape[0]
    pick = np.nonzero(rng.random(B) < frac)[0]
    if len(pick) == 0:
        return b
    dev = b["lat"].device
    idx = torch.as_tensor(pick, device=dev)
    lat, t, z = b["lat"][idx], b["t"][idx].clone(), b["z"][idx]
    frame, mask, ids, w = b["frame"][idx], b["mask"][idx], b["ids"][idx], b["w"][idx]
    S = lat.shape[2]
    noisy = b["noisy"][idx]                                             # [n, S]
    # one step index per noisy chunk (3 slots each, the last 3K slots)
    nchunks = int(noisy[0].sum().item()) // 3
    ks = rng.integers(len(sigmas), size=(len(pick), nchunks))
    kslot = torch.zeros(len(pick), S, dtype=torch.long, device=dev)
    kslot[:, S - 3 * nchunks:] = torch.as_tensor(ks, device=dev).repeat_interleave(3, dim=1)
    sg = torch.as_tensor(sigmas, device=dev, dtype=torch.float32)
    n5 = noisy[:, None, :, None, None]
    x = torch.where(n5, torch.randn(z.shape, device=dev), lat)
    kmax = int(ks.max())
    with torch.no_grad():
        for j in range(kmax):
            sj = sg[torch.clamp(kslot, max=j)]                          # [n, S]
            tt = torch.where(noisy, sj * 1000.0, t)
            with autocast(amp):
                v = model(x, tt, frame, mask, ids)
            x0 = x - sj[:, None, :, None, None] * v.float()
            s_next = sg[torch.clamp(kslot, max=j + 1)][:, None, :, None, None]
            adv = n5 & (kslot > j)[:, None, :, None, None]
            x = torch.where(adv, (1.0 - s_next) * x0 + s_next * torch.randn(z.shape, device=dev), x)
    sk = sg[kslot]                                                      # [n, S]
    s5 = sk[:, None, :, None, None]
    b = dict(b)
    b["lat"], b["t"], b["sig"] = b["lat"].clone(), b["t"].clone(), b["sig"].clone()
    b["target"] = b["target"].clone()
    b["lat"][idx] = torch.where(n5, x, lat)
    b["t"][idx] = torch.where(noisy, sk * 1000.0, t)
    b["sig"][idx] = torch.where(noisy, sk, b["sig"][idx])
    b["target"][idx] = torch.where(n5, (x - z) / torch.clamp(s5, min=1e-3), b["target"][idx])
    return b


def loss_fn(model, b, amp):
    with autocast(amp):
        v = model(b["lat"], b["t"], b["frame"], b["mask"], b["ids"])
    e2 = (v.float() - b["target"]) ** 2                                     # [B, C, S, h, w]
    if b.get("obj") is not None and b.get("obj_weight"):
        # weight 1 + obj_weight on the latent pixels the object touches, normalised per slot
        pw = 1.0 + b["obj_weight"] * b["obj"]
        err = (e2 * pw).mean(dim=(1, 3, 4)) / pw.mean(dim=(1, 3, 4))
    else:
        err = e2.mean(dim=(1, 3, 4))                                        # [B, S]
    loss = (err * b["w"]).sum() / b["w"].sum()
    return loss, err.detach()


def build(layout, device):
    cfg = R.preset("tiny-bundled", layout)
    return cfg, M.DiT(cfg).to(device)


def save_ckpt(path, model, ema, opt, step, steps, rng, extra):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "step": step, "steps": steps, "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "extra": extra}, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=("mla", "mha"), required=True)
    ap.add_argument("--vae", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--ctx-noise", type=float, default=0.1)
    ap.add_argument("--p-first", type=float, default=0.3)
    ap.add_argument("--max-chunk", type=int, default=85)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--save-every", type=float, default=90.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--export", default="", help="write the EMA model here (bf16) at every save")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default="", help="start from this exported .safetensors (DiT weights)")
    ap.add_argument("--data", choices=sorted(D.RECIPES), default="v1", help="data recipe (data.RECIPES)")
    ap.add_argument("--self-ctx", type=float, default=0.0,
                    help="fraction of sequences trained on self-reconstructed context (self_context)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--sampler-steps", default="", help="the sampler the model is trained for "
                    "(timesteps, e.g. 1000,750,500,250; default the engine's original); also exported as metadata")
    ap.add_argument("--sampler-shift", type=float, default=5.0)
    ap.add_argument("--uniform-shift", type=float, default=5.0,
                    help="shift of the 25%% uniform sigma draws")
    ap.add_argument("--obj-weight", type=float, default=0.0, help="loss weight 1 + W on the object's latent pixels")
    ap.add_argument("--rollout", type=float, default=0.0,
                    help="fraction of sequences whose noisy inputs come from the model's own sampler steps")
    ap.add_argument("--mla-dims", default="", help="d_c,d_r of the MLA layout (default: the tiny "
                    "preset's, vmla_ref.BUNDLED_MLA_DIMS); the engine's preset must match to run the file")
    a = ap.parse_args()
    if a.mla_dims:
        try:
            dc, dr = (int(x) for x in a.mla_dims.split(","))
        except ValueError:
            ap.error("--mla-dims: expected two integers D_C,D_R (e.g. 32,64), got %r" % a.mla_dims)
        if dc <= 0 or dr < 6 or dr % 2:
            ap.error("--mla-dims: d_c must be > 0 and d_r an even number >= 6 (got %d,%d)" % (dc, dr))
        R.BUNDLED_MLA_DIMS = (dc, dr)
    steps_list = [float(x) for x in a.sampler_steps.split(",")] if a.sampler_steps else list(vmla_rng.DEFAULT_STEPS)
    sigmas = vmla_rng.warped_sigmas(steps_list, a.sampler_shift)
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.steps and not a.seconds:
        ap.error("give --steps or --seconds")
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    amp = dev.type == "cuda"
    os.makedirs(a.out, exist_ok=True)
    seed = a.seed * 10 + (0 if a.layout == "mla" else 1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    enc, dec, vck = V.load(a.vae, dev)
    enc.eval()
    for q in enc.parameters():
        q.requires_grad_(False)
    cfg, model = build(a.layout, dev)
    if a.init:
        import export as E
        w, _ = E.read_safetensors(a.init)
        model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in w.items()
                               if not k.startswith("decoder.")})
    _, ema = build(a.layout, dev)
    ema.load_state_dict(model.state_dict())
    for q in ema.parameters():
        q.requires_grad_(False)
    decay, no_decay = [], []
    for n, q in model.named_parameters():
        (decay if q.dim() >= 2 and "embed" not in n and "pos" not in n else no_decay).append(q)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.99), eps=1e-8)
    step, steps = 0, a.steps
    resumed_avg = {}
    ck_path = os.path.join(a.out, "ckpt.pt")
    log_path = os.path.join(a.out, "log.txt")
    if a.resume and os.path.exists(ck_path):
        ck = V.torch_load(ck_path, dev)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step, steps = ck["step"], a.steps or ck["steps"]
        resumed_avg = dict(ck.get("extra", {}).get("avg", {}))
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        if ck.get("cuda_rng") is not None and dev.type == "cuda":
            torch.cuda.set_rng_state(ck["cuda_rng"])
        print("resumed %s at step %d of %d" % (a.layout, step, steps), flush=True)
    nparam = sum(q.numel() for q in model.parameters())
    rec = D.RECIPES[a.data]
    batcher = Batcher(enc, dec.latent_mean, dec.latent_std, dev, p_first=a.p_first,
                      max_chunk=a.max_chunk, ctx_noise=a.ctx_noise, amp=amp, start=rec["start"],
                      size_range=rec["size"], speed_range=rec["speed"], obj_weight=a.obj_weight,
                      sigmas=sigmas, shift=a.uniform_shift)
    log = open(log_path, "a")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()
    say("train_dit %s: %d parameters, batch %d, lr %g, device %s, args %s" % (
        a.layout, nparam, a.batch, a.lr, dev, json.dumps(vars(a))))
    t0 = time.time()
    t_mark = None
    last_save = t0
    avg = dict(resumed_avg)

    def upd(k, v, m=0.98):
        avg[k] = v if k not in avg else m * avg[k] + (1 - m) * v

    def export_now():
        if a.export:
            import export as E
            E.export(ema.state_dict(), dec.state_dict(), a.layout, a.export,
                     training="%s; step %d of %d (data %s, self-ctx %g%s%s%s)" % (
                         E.TRAINING_NOTE, step, steps, a.data, a.self_ctx,
                         ", d_c %d d_r %d" % R.BUNDLED_MLA_DIMS if a.layout == "mla" else "",
                         (", rollout %g, obj-weight %g" % (a.rollout, a.obj_weight)) if a.rollout or a.obj_weight else "",
                         ", from " + os.path.basename(a.init) if a.init else ""),
                     sampler=(steps_list, a.sampler_shift) if a.sampler_steps else None)
    while True:
        if steps and step >= steps:
            break
        if not steps and step == 30:
            if t_mark is None:
                t_mark = time.time()
        if not steps and step == 60:
            dt = (time.time() - t_mark) / 30.0
            left = a.seconds - (time.time() - t0)
            steps = step + max(1, int(left / dt))
            say("step time %.1f ms: steps fixed at %d (reproduce with --steps %d)" % (
                1000 * dt, steps, steps))
        if a.seconds and steps and time.time() - t0 > a.seconds * 1.1:
            say("time limit reached at step %d" % step)
            break
        horizon = steps if steps else 10 ** 9
        lr = a.lr * min(1.0, (step + 1) / a.warmup)
        if step >= a.warmup and horizon > a.warmup:
            prog = min(1.0, (step - a.warmup) / max(1, horizon - a.warmup))
            lr *= 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * prog))
        for g in opt.param_groups:
            g["lr"] = lr
        b = batcher(rng, a.batch)
        if a.self_ctx > 0:
            b = self_context(model, b, rng, a.self_ctx, amp)
        if a.rollout > 0:
            b = rollout_inputs(model, b, rng, a.rollout, sigmas, amp)
        loss, err = loss_fn(model, b, amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        d = min(a.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1.0 - d)
        if step % 10 == 0 or step <= 2:
            lv = float(loss)
            if not math.isfinite(lv):
                say("non-finite loss at step %d: stopping" % step)
                sys.exit(3)
            upd("loss", lv)
            w, sig = b["w"], b["sig"]
            for k, s in enumerate(sigmas[:4]):
                sel = w * (torch.abs(sig - s) < 1e-6).float()
                if float(sel.sum()) > 0:
                    upd("s%d" % k, float((err * sel).sum() / sel.sum()))
            first = w * b["first"][:, None].float()
            first[:, -6:] = 0                                       # chunk n0 only (n0 = 0)
            if float(first.sum()) > 0:
                upd("chunk0", float((err * first).sum() / first.sum()))
        if step % a.log_every == 0 or step == 1:
            # (the per-sigma' columns are the sampler's first four sigma'; the logs of device run 4
            # still say "1 .94 .83 .62" there, for 1 .833 .667 .5)
            say("%s step %d/%d loss %.4f avg %.4f | sigma' %s | "
                "chunk0 %.4f | lr %.2e gn %.2f | %.0fs" % (
                    a.layout, step, steps, float(loss), avg.get("loss", 0),
                    " ".join("%.3g %.4f" % (sg, avg.get("s%d" % k, 0)) for k, sg in enumerate(sigmas[:4])),
                    avg.get("chunk0", 0),
                    lr, float(gn), time.time() - t0))
        if time.time() - last_save > a.save_every:
            save_ckpt(ck_path, model, ema, opt, step, steps, rng, {"avg": avg})
            export_now()
            last_save = time.time()
    save_ckpt(ck_path, model, ema, opt, step, steps, rng, {"avg": avg})
    export_now()
    mem = torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else 0.0
    say("%s done: step %d, %.0fs, %.1f GiB peak, avg loss %.4f, per sigma' %s, chunk0 %.4f" % (
        a.layout, step, time.time() - t0, mem, avg.get("loss", float("nan")),
        [round(avg.get("s%d" % k, float("nan")), 4) for k in range(4)], avg.get("chunk0", float("nan"))))
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({"layout": a.layout, "steps": step, "seconds": time.time() - t0, "avg": avg,
                   "params": nparam, "args": vars(a)}, f, indent=1)


if __name__ == "__main__":
    main()
