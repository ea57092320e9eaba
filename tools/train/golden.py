#!/usr/bin/env python3
"""Parity goldens of the bundled models, computed by the reference (tools/reference/vmla_ref.py)
in float64 on the CPU from the exported BF16 weights (cast to float64).

    python3 tools/train/golden.py --layout mla    # models/vmla-tiny.safetensors -> tests/golden/bundled-mla-golden.safetensors
    python3 tools/train/golden.py --layout mha    # models/vmla-tiny-mha.safetensors -> ...bundled-mha-golden...
    (--model, --out to override; --png DIR also writes the decoded frames of the 3 chunks)

Tensors: tokens [12] (ids as floats), gen.chunk.0..2 [8, 3, 12, 12] (latents of 3 consecutive
chunks: the model file's sampler (metadata vmla.sampler.steps / vmla.sampler.shift, docs/MODEL.md
section 6; without them 4 steps 1000/750/500/250 shift 5), Philox stream noise of the seed, window
6, sink 1, each followed by its cache pass at t = 0), gen.rgb.0 [12, 96, 96, 3] (decoded frames of
chunk 0, prev = zeros, float in [0, 1], stored F16 to stay under 1 MiB; the others F32).
Metadata: prompt, seed, window, sink, layout, model, latent_h, latent_w, sampler.steps,
sampler.shift (the schedule used, as the model file states it).
"""

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))

import data as D          # noqa: E402
import export as E        # noqa: E402
import vmla_ref as R      # noqa: E402

PROMPT = "a red square moving left on a white background"
SEED = 12345
WINDOW, SINK = 6, 1
N_CHUNKS = 3
MODELS = {"mla": "models/vmla-tiny.safetensors", "mha": "models/vmla-tiny-mha.safetensors"}


def load_model(path, layout, dtype=torch.float64, device="cpu"):
    w, meta = E.read_safetensors(path)
    cfg = R.preset("tiny-bundled", layout)
    wt = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in w.items()}
    return R.VmlaModel(cfg, wt, dtype=dtype, device=device), meta


def sampler_of(meta):
    """(steps, shift) of the model file's metadata, each value rounded to float32 as the engine
    stores it (engine/config.h), and the metadata strings; the original schedule when absent."""
    st = meta.get("vmla.sampler.steps", "1000,750,500,250")
    sh = meta.get("vmla.sampler.shift", "5")
    steps = [float(np.float32(float(x))) for x in st.split(",")]
    return steps, float(np.float32(float(sh))), st, sh


def generate(model, vocab, prompt, seed, n_chunks, window=WINDOW, sink=SINK, steps=(1000, 750, 500, 250),
             shift=5.0):
    """-> token ids [L], list of chunk latents [C, 3, 12, 12], list of RGB [12, 96, 96, 3]."""
    ids, ctx, ctx_kv = R.prompt_context(model, [prompt], vocab_words=vocab)
    cache = R.KVCache(window, sink, 3)
    chunks, rgbs = [], []
    prev = None
    for n in range(n_chunks):
        x0 = R.generate_chunk(model, cache, n, ctx_kv, [seed], 12, 12, steps=steps, shift=shift)
        rgbs.append(model.decode(x0, prev)[0])
        prev = x0[:, :, -1]
        chunks.append(x0[0])
    return ids[0], chunks, rgbs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=("mla", "mha"), required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None)
    a = ap.parse_args()
    rel = a.model or MODELS[a.layout]
    path = rel if os.path.isabs(rel) else os.path.join(ROOT, rel)
    out = a.out or os.path.join(ROOT, "tests", "golden", "bundled-%s-golden.safetensors" % a.layout)
    model, meta = load_model(path, a.layout)
    vocab = meta["vmla.vocab"]
    assert vocab == D.VOCAB_STRING, "model vocabulary differs from data.VOCAB"
    steps, shift, st_text, sh_text = sampler_of(meta)
    ids, chunks, rgbs = generate(model, vocab, PROMPT, SEED, N_CHUNKS, steps=steps, shift=shift)
    g = {"tokens": ids.to(torch.float64).numpy().astype(np.float32)}
    for n, c in enumerate(chunks):
        g["gen.chunk.%d" % n] = c.numpy().astype(np.float32)
    g["gen.rgb.0"] = rgbs[0].numpy().astype(np.float16)
    md = {"prompt": PROMPT, "seed": str(SEED), "window": str(WINDOW), "sink": str(SINK),
          "layout": a.layout, "model": MODELS[a.layout] if a.model is None else rel,
          "latent_h": "12", "latent_w": "12", "sampler.steps": st_text, "sampler.shift": sh_text,
          "note": "float64 reference (tools/reference/vmla_ref.py) on the BF16 weights; "
                  "gen.rgb.0 stored F16"}
    E.write_safetensors(out, g, md, dtypes={"gen.rgb.0": "F16"})
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))
    for k in sorted(g):
        v = g[k].astype(np.float64)
        print("  %-12s %-18s mean %9.5f std %8.5f min %8.4f max %8.4f" % (
            k, list(v.shape), v.mean(), v.std(), v.min(), v.max()))
    if a.png:
        os.makedirs(a.png, exist_ok=True)
        allf = np.concatenate([r.numpy() for r in rgbs])
        D.write_png(os.path.join(a.png, "golden-%s.png" % a.layout), D.tile(allf, 12))


if __name__ == "__main__":
    main()
