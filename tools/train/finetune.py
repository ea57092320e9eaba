#!/usr/bin/env python3
"""Short fine-tune of a trained bundled DiT on the first chunks of videos that start at the
frame's centre (runs on a CPU; see models/README.md for why).

    python3 tools/train/finetune.py --layout mla --init models/vmla-tiny.safetensors \
        --vae out/vae/vae.pt --out out/ft/mla --seconds 2400 [--threads 1]

Batches alternate: (a) chunk 0 alone (no context), (b) every --every-k2 steps, chunks 0 and 1
with chunk 0's clean cache pass as chunk 1's context (the exact cache mask of train_dit.py,
compacted to the slots those chunks need). Same noise levels and v-target as train_dit.py.
The start is the centre +- --jitter px (data.sample_params(start=...)); size, speed, colours,
shape, direction, caption as in pre-training (--data v2: data.RECIPES' size and speed ranges).
With --late-batch N the steps cycle chunk 0, N late sequences (train_dit's sequences of two noisy
chunks n0, n0+1, n0 uniform in 1..85, with their sink + window context), chunk 0, chunks 0+1:
fine-tuning on first chunks alone lets the later chunks drift (objects vanish after ~2 s; seen in
decoded frames). --self-ctx P: a fraction P of the context-carrying sequences train on context the
model reconstructed itself (train_dit.self_context); --obj-weight W: loss weight 1 + W on the
latent pixels the object touches (train_dit.loss_fn). Writes an EMA of the weights, exported (BF16), to
--export at every save and at the end, and a resumable checkpoint OUT/ckpt.pt.
"""

import argparse
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

import data as D          # noqa: E402
import export as E        # noqa: E402
import train_dit as T     # noqa: E402
import vae as V           # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=("mla", "mha"), required=True)
    ap.add_argument("--init", required=True, help="exported .safetensors to start from")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--export", default="")
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batch-k2", type=int, default=3)
    ap.add_argument("--every-k2", type=int, default=3)
    ap.add_argument("--jitter", type=float, default=2.0)
    ap.add_argument("--data", choices=sorted(D.RECIPES), default="v1",
                    help="size and speed ranges of data.RECIPES (the start is always centre +- jitter)")
    ap.add_argument("--late-batch", type=int, default=0,
                    help="sequences of later chunks every 4th step (0: none; then every --every-k2 "
                         "steps chunks 0+1)")
    ap.add_argument("--obj-weight", type=float, default=0.0,
                    help="extra loss weight on the latent pixels the object touches (train_dit.loss_fn)")
    ap.add_argument("--self-ctx", type=float, default=0.0,
                    help="fraction of the chunks 0+1 sequences on self-reconstructed context")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=float, default=300.0)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device("cpu")
    os.makedirs(a.out, exist_ok=True)
    seed = a.seed * 10 + (0 if a.layout == "mla" else 1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    enc, dec, _ = V.load(a.vae, dev)
    enc.eval()
    for q in enc.parameters():
        q.requires_grad_(False)
    cfg, model = T.build(a.layout, dev)
    w, meta = E.read_safetensors(a.init)
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in w.items()
          if not k.startswith("decoder.")}
    model.load_state_dict(sd)
    _, ema = T.build(a.layout, dev)
    ema.load_state_dict(model.state_dict())
    for q in ema.parameters():
        q.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step = 0
    ck_path = os.path.join(a.out, "ckpt.pt")
    if a.resume and os.path.exists(ck_path):
        ck = V.torch_load(ck_path, dev)
        model.load_state_dict(ck["model"]); ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"]); step = ck["step"]
        rng.bit_generator.state = ck["rng"]; torch.set_rng_state(ck["torch_rng"])
        print("resumed at step %d" % step, flush=True)
    rec = D.RECIPES[a.data]
    b1 = T.Batcher(enc, dec.latent_mean, dec.latent_std, dev, K=1, p_first=1.0, ctx_noise=0.0,
                   amp=False, start=a.jitter, compact=True, size_range=rec["size"],
                   speed_range=rec["speed"], obj_weight=a.obj_weight)
    b2 = T.Batcher(enc, dec.latent_mean, dec.latent_std, dev, K=2, p_first=1.0, ctx_noise=0.1,
                   amp=False, start=a.jitter, compact=True, size_range=rec["size"],
                   speed_range=rec["speed"], obj_weight=a.obj_weight)
    # late sequences: train_dit's sequences of 2 noisy chunks n0, n0+1 with n0 uniform in
    # 1..85 and their sink + window context (not compacted), as in the GPU training
    b3 = T.Batcher(enc, dec.latent_mean, dec.latent_std, dev, K=2, p_first=0.0, ctx_noise=0.1,
                   amp=False, start=a.jitter, compact=False, size_range=rec["size"],
                   speed_range=rec["speed"], obj_weight=a.obj_weight)
    log = open(os.path.join(a.out, "log.txt"), "a")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n"); log.flush()
    say("finetune %s from %s (step %d): args %s" % (a.layout, a.init, step, json.dumps(vars(a))))
    t0 = time.time(); last = t0
    avg = {}

    def dump():
        T.save_ckpt(ck_path, model, ema, opt, step, a.steps, rng, {"avg": avg})
        if a.export:
            E.export(ema.state_dict(), dec.state_dict(), a.layout, a.export,
                     training="%s; then CPU fine-tune on centre-start first chunks (data %s, "
                     "self-ctx %g, object weight %g), step %d" % (E.TRAINING_NOTE, a.data, a.self_ctx,
                                                          a.obj_weight, step))
    while True:
        if a.steps and step >= a.steps:
            break
        if a.seconds and time.time() - t0 > a.seconds:
            break
        lr = a.lr * min(1.0, (step + 1) / 50)
        for g in opt.param_groups:
            g["lr"] = lr
        late = False
        if a.late_batch:
            # cycle of 4: chunk 0, late sequence, chunk 0, chunks 0+1
            late, k2 = step % 4 == 1, step % 4 == 3
        else:
            k2 = a.every_k2 and step % a.every_k2 == a.every_k2 - 1
        if late:
            b = b3(rng, a.late_batch)
        else:
            b = (b2 if k2 else b1)(rng, a.batch_k2 if k2 else a.batch)
        if (k2 or late) and a.self_ctx > 0:
            b = T.self_context(model, b, rng, a.self_ctx, False)
        loss, err = T.loss_fn(model, b, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        d = min(a.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1.0 - d)
        key = "late" if late else ("k2" if k2 else "c0")
        avg[key] = float(loss) if key not in avg else 0.95 * avg[key] + 0.05 * float(loss)
        if step % 20 == 0 or step == 1:
            say("%s ft step %d loss %.4f | avg chunk0-only %.4f chunks0+1 %.4f late %.4f | %.0fs" % (
                a.layout, step, float(loss), avg.get("c0", 0), avg.get("k2", 0), avg.get("late", 0),
                time.time() - t0))
        if time.time() - last > a.save_every:
            dump(); last = time.time()
    dump()
    say("%s ft done: step %d, %.0fs, avg %s" % (a.layout, step, time.time() - t0, avg))


if __name__ == "__main__":
    main()
