#!/usr/bin/env python3
"""Export a trained bundled model to safetensors (BF16), as the engine loads it.

    python3 tools/train/export.py --dit OUT/mla/ckpt.pt --vae OUT/vae.pt --layout mla \
        --out models/vmla-tiny.safetensors

Tensor names and shapes: docs/MODEL.md section 9 for the preset tiny (mla) or tiny-mha, plus
text_encoder.embed.weight [64, 128] and text_encoder.pos.weight [12, 128] and the decoder.*
tensors (latent_mean / latent_std from the VAE's latent statistics). The DiT weights are the EMA
weights. Metadata: vmla.vocab (the tokenizer's word list), preset, training, and (when given) the
sampler the model is meant for: vmla.sampler.steps, vmla.sampler.shift.

The safetensors reader and writer here are plain numpy (no safetensors package needed).
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import data as D      # noqa: E402

TRAINING_NOTE = ("trained by tools/train (procedural shapes, teacher forcing with the sink + window "
                 "cache mask); see models/README.md")

_NP = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path, tensors, metadata=None, dtypes=None):
    """tensors: {name: numpy array}; dtypes: {name: "BF16"|"F32"|"F16"} (default: F32 for
    floating arrays, kept for integer ones). Tensors are written in name order."""
    dtypes = dtypes or {}
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dt = dtypes.get(name, "F32" if a.dtype.kind == "f" else {np.dtype(np.int64): "I64",
                                                               np.dtype(np.int32): "I32"}[a.dtype])
        if dt == "BF16":
            raw = f32_to_bf16_bits(a).tobytes()
        else:
            raw = np.ascontiguousarray(a, dtype=_NP[dt]).astype("<" + np.dtype(_NP[dt]).str[1:]).tobytes()
        header[name] = {"dtype": dt, "shape": [int(s) for s in a.shape],
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def read_safetensors(path):
    """-> ({name: float32/float64/int numpy array}, metadata dict). BF16 becomes float32."""
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, e in header.items():
        b0, b1 = e["data_offsets"]
        raw = buf[base + b0:base + b1]
        if e["dtype"] == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            a = np.frombuffer(raw, dtype=np.dtype(_NP[e["dtype"]]).newbyteorder("<")).astype(_NP[e["dtype"]])
        out[name] = a.reshape(e["shape"])
    return out, meta


def weights_dict(dit_state, dec_state):
    """{name: float32 numpy} of the DiT (its state dict names are MODEL.md's) and decoder."""
    w = {}
    for k, v in dit_state.items():
        w[k] = v.detach().float().cpu().numpy()
    for k, v in dec_state.items():
        w["decoder." + k] = v.detach().float().cpu().numpy()
    return w


def check_names(w, layout):
    import vmla_ref as R
    cfg = R.preset("tiny-bundled", layout)
    want = {n: tuple(s) for n, s, _ in R.weight_specs(cfg)}
    got = {n: tuple(a.shape) for n, a in w.items()}
    if want != got:
        raise ValueError("export %s: names/shapes differ from MODEL.md: missing %s extra %s bad %s" % (
            layout, sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5],
            [n for n in want if n in got and want[n] != got[n]][:5]))


def sampler_meta(steps, shift):
    """The metadata keys the engine reads for the sampler (docs/MODEL.md section 6):
    vmla.sampler.steps "1000,750,500,250", vmla.sampler.shift "5" (numbers as %g)."""
    return {"vmla.sampler.steps": ",".join("%g" % float(x) for x in steps),
            "vmla.sampler.shift": "%g" % float(shift)}


def export(dit_state, dec_state, layout, path, training=TRAINING_NOTE, sampler=None):
    w = weights_dict(dit_state, dec_state)
    check_names(w, layout)
    for k, a in w.items():
        if not np.all(np.isfinite(a)):
            raise ValueError("export: %s has non-finite values" % k)
    meta = {"vmla.vocab": D.VOCAB_STRING, "preset": "tiny" if layout == "mla" else "tiny-mha",
            "training": training}
    if sampler:
        meta.update(sampler_meta(*sampler))
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    write_safetensors(path, w, meta, dtypes={k: "BF16" for k in w})
    return path


def main():
    import torch  # noqa: F401
    import vae as V
    ap = argparse.ArgumentParser()
    ap.add_argument("--dit", required=True, help="train_dit.py checkpoint (its EMA weights)")
    ap.add_argument("--vae", required=True)
    ap.add_argument("--layout", choices=("mla", "mha"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--training", default=TRAINING_NOTE)
    a = ap.parse_args()
    ck = V.torch_load(a.dit, "cpu")
    vk = V.torch_load(a.vae, "cpu")
    export(ck["ema"], vk["decoder"], a.layout, a.out,
           training="%s; step %d" % (a.training, ck["step"]))
    print("wrote %s (%.2f MiB)" % (a.out, os.path.getsize(a.out) / 2 ** 20))


if __name__ == "__main__":
    main()
