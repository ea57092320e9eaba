#!/usr/bin/env python3
"""Plot `vmla-bench serve --json` results: aggregate frames/s and chunk latency against the number
of concurrent streams, per-head vs MLA, batched vs one at a time; one row per JSON file.

    python3 bench/plot_serve.py OUT.png serve-480x832.json serve-240x416.json

Needs matplotlib (Debian: python3-matplotlib); only for making the figure, not for the tests."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    files = argv[2:]
    fig, axes = plt.subplots(len(files), 2, figsize=(11, 4 * len(files)), squeeze=False)
    style = {("per-head", "batched"): ("tab:red", "-"), ("per-head", "single"): ("tab:red", ":"),
             ("MLA", "batched"): ("tab:blue", "-"), ("MLA", "single"): ("tab:blue", ":")}
    for row, f in enumerate(files):
        j = json.load(open(f))
        cfg = [x for x in j["results"] if x["kind"] == "config"]
        size = "%dx%d" % (cfg[0]["width"], cfg[0]["height"]) if cfg else f
        title = "%s on %s, %s" % (j["preset"], j["device"], size)
        tp = [x for x in j["results"] if x["kind"] == "throughput"]
        for (lay, mode), (col, ls) in style.items():
            pts = sorted((x["streams"], x) for x in tp if x["layout"] == lay and x["mode"] == mode)
            if not pts:
                continue
            n = [p[0] for p in pts]
            axes[row][0].plot(n, [p[1]["fps"] for p in pts], color=col, ls=ls, marker="o",
                              label="%s, %s" % (lay, "batched" if mode == "batched" else "one at a time"))
            axes[row][1].plot(n, [p[1]["chunk_p50_s"] for p in pts], color=col, ls=ls, marker="o",
                              label="%s %s p50" % (lay, mode))
            axes[row][1].plot(n, [p[1]["chunk_p99_s"] for p in pts], color=col, ls=ls, marker="x", alpha=0.6,
                              label="%s %s p99" % (lay, mode))
        for k, (ylab, name) in enumerate((("aggregate frames/s", "throughput"), ("chunk latency (s)", "latency"))):
            ax = axes[row][k]
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent streams N")
            ax.set_ylabel(ylab)
            ax.set_title("%s: %s" % (title, name), fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(argv[1], dpi=110)
    print("wrote", argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
