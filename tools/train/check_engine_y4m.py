#!/usr/bin/env python3
"""Rough engine-vs-golden parity through vmla-gen's Y4M output (no C test needed): generates the
golden's prompt/seed with build/vmla-gen into a .y4m, and compares its luma of chunk 0 (frames
0..11) with the luma of the golden's gen.rgb.0 (quantised to 8 bits as the engine does, then
the writer's BT.601 integer formula).

    python3 tools/train/check_engine_y4m.py --layout mla
"""
import argparse
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import export as E      # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=("mla", "mha"), required=True)
    ap.add_argument("--gen", default=os.path.join(ROOT, "build", "vmla-gen"))
    a = ap.parse_args()
    g, meta = E.read_safetensors(os.path.join(ROOT, "tests", "golden", "bundled-%s-golden.safetensors" % a.layout))
    out = "/tmp/vmla-parity-%s.y4m" % a.layout
    subprocess.run([a.gen, "--preset", "tiny" if a.layout == "mla" else "tiny-mha", "--model",
                    os.path.join(ROOT, meta["model"]), "--prompt", meta["prompt"], "--seed", meta["seed"],
                    "--window", meta["window"], "--sink", meta["sink"], "--seconds", "0.75", "--out", out],
                   check=True, capture_output=True)
    data = open(out, "rb").read()
    frames = data.split(b"FRAME\n")[1:]
    ys = np.stack([np.frombuffer(f[:96 * 96], np.uint8).reshape(96, 96) for f in frames[:12]]).astype(np.int32)
    rgb = np.rint(np.asarray(g["gen.rgb.0"], np.float64) * 255.0).astype(np.int64)
    yg = (16829 * rgb[..., 0] + 33039 * rgb[..., 1] + 6416 * rgb[..., 2] + (16 << 16) + (1 << 15)) >> 16
    d = np.abs(ys - yg)
    print("%s: luma |engine - golden| over chunk 0: max %d, mean %.4f, >1: %d of %d pixels" % (
        a.layout, d.max(), d.mean(), int((d > 1).sum()), d.size))
    sys.exit(0 if d.max() <= 2 else 1)


if __name__ == "__main__":
    main()
