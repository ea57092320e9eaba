#!/usr/bin/env python3
"""bench/peer.py: the PyTorch peer of vmla-bench-gpu: the same model at the same shapes on the
same GPU (tools/reference/vmla_ref.py in bf16, torch SDPA attention, a per-frame KV cache gathered
by torch.cat as Self-Forcing keeps it), seeded random weights, sink 1 + window W (default 6),
480x832.

    python3 bench/peer.py [--chunks 6] [--warmup 2] [--window 6] [--presets wan-1.3b,wan-1.3b-mla]

The warm-up is at least as many chunks as fill the window (window / 3 + 1), so the timed chunks
attend over a full cache.

Per preset: chunk latency median / p99 over --chunks timed chunks (each = 4 denoising passes +
the cache pass, synchronised before and after), frames/s (12 frames a chunk), peak memory.
MLA runs the way PyTorch users would: per-head K/V rebuilt from the latent, then SDPA.
"""
import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools", "reference"))
import vmla_ref as R  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--presets", default="wan-1.3b,wan-1.3b-mla")
    ap.add_argument("--mla-mode", default="rebuild", choices=("rebuild", "absorb"))
    args = ap.parse_args()
    if args.window < 3 or args.chunks < 1:
        ap.error("--window >= 3 (a chunk) and --chunks >= 1")
    args.warmup = max(args.warmup, args.window // 3 + 1)
    dev = "cuda"
    print("peer: torch %s on %s" % (torch.__version__, torch.cuda.get_device_name(0)))
    rows = []
    for name in args.presets.split(","):
        cfg = R.preset(name)
        w = R.init_weights(cfg, 1, device=dev, dtype=torch.bfloat16)
        m = R.VmlaModel(cfg, w, dtype=torch.bfloat16, device=dev, mla_mode=args.mla_mode, attn_impl="sdpa")
        # umT5's output is what Wan's DiT sees: stand-in random text states, 512 x 4096
        g = torch.Generator(device=dev).manual_seed(3)
        emb = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g, device=dev).to(torch.bfloat16)
        ctx_kv = m.prompt_kv(m.text_context(emb))
        cache = R.KVCache(window=args.window, sink=1, chunk_frames=3)
        torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.no_grad():
            for c in range(args.warmup + args.chunks):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                R.generate_chunk(m, cache, c, ctx_kv, [7], 60, 104)
                torch.cuda.synchronize()
                if c >= args.warmup:
                    times.append(time.perf_counter() - t0)
        times.sort()
        med = times[len(times) // 2]
        p99 = times[-1]
        row = (name, med * 1000, p99 * 1000, 12.0 / med, torch.cuda.max_memory_allocated() / 2**30,
               cache.context_frames(3 * (args.warmup + args.chunks)))
        rows.append(row)
        print("peer %-13s window %d: chunk median %8.1f ms  p99(max) %8.1f ms  %6.2f frames/s  peak %.2f GiB  "
              "ctx frames %s" % ((row[0], args.window) + row[1:]))
        del m, w, cache
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
