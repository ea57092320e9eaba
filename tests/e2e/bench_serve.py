#!/usr/bin/env python3
"""vmla-bench serve on the CPU (tiny-test): every section runs and its figures hold together.

Residency is checked against the pool's own arithmetic (pages // frames a stream), the longest
windows likewise; throughput has every N and mode; the real-time run admits every session at once
(the CPU has room for them) and misses no deadline; offload moves exactly one stream's KV."""
import json
import os
import subprocess
import sys
import tempfile

B = os.environ.get("VMLA_BUILD_DIR", "build")
passed = failed = 0


def check(c, what):
    global passed, failed
    print(("ok: " if c else "FAIL: ") + what)
    if c:
        passed += 1
    else:
        failed += 1


with tempfile.TemporaryDirectory() as d:
    out = os.path.join(d, "serve.json")
    r = subprocess.run([os.path.join(B, "vmla-bench"), "serve", "--preset", "tiny-test", "--pool-gb", "0.0005",
                        "--streams", "1,2,4", "--chunks", "3", "--rt-streams", "3", "--rt-seconds", "2",
                        "--rt-gap", "0.1", "--json", out], capture_output=True, text=True, timeout=600)
    print(r.stdout[-3000:], r.stderr[-2000:])
    check(r.returncode == 0, "vmla-bench serve exits 0")
    j = json.load(open(out)) if os.path.exists(out) else {"results": []}
    res = j["results"]
    by = lambda kind: [x for x in res if x["kind"] == kind]
    rs = {x["layout"]: x for x in by("residency")}
    check(set(rs) == {"per-head", "MLA"}, "residency for both layouts")
    for lay, x in rs.items():
        frames = x["sink"] + x["window"]
        check(x["resident"] == x["pages"] // frames, "%s: %d resident = %d pages // %d frames" %
              (lay, x["resident"], x["pages"], frames))
        for w in x["windows"]:
            want = (x["pages"] // w["streams"] - x["sink"]) // 3 * 3
            check(w["window"] == want, "%s: %d streams hold a %d-frame window (pool arithmetic %d)" %
                  (lay, w["streams"], w["window"], want))
    if len(rs) == 2:
        check(rs["MLA"]["resident"] > 3 * rs["per-head"]["resident"], "MLA holds several times the sessions (%d vs %d)"
              % (rs["MLA"]["resident"], rs["per-head"]["resident"]))
    tp = by("throughput")
    check(len(tp) == 2 * 3 * 2, "throughput: 2 layouts x 3 N x 2 modes (%d)" % len(tp))
    check(all(x["fps"] > 0 and x["chunk_p50_s"] > 0 and x["chunk_p99_s"] >= x["chunk_p50_s"] for x in tp),
          "throughput figures are positive and ordered")
    rt = by("realtime")
    check(len(rt) == 2 and all(x["admitted_at_once"] == 3 and x["deadline_misses"] == 0 for x in rt),
          "real time: 3 sessions admitted at once, no deadline missed")
    off = by("offload")
    check(len(off) == 2 and all(x["bytes"] > 0 and x["offload_ms"] >= 0 for x in off), "offload measured")
    for bad_args in (["--streams", "0"], ["--pool-gb", "-1"], ["--bogus", "1"], ["--modes", "neither"]):
        r = subprocess.run([os.path.join(B, "vmla-bench"), "serve", "--preset", "tiny-test"] + bad_args,
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 2 and "vmla-bench serve" in r.stderr, "refused: %s (%s)" % (bad_args, r.stderr.strip()))
# vmla-bench gen --compare: both layouts in one process, the ratios consistent with the figures
r = subprocess.run([os.path.join(B, "vmla-bench"), "gen", "--preset", "tiny-test", "--chunks", "2", "--compare",
                    "--json"], capture_output=True, text=True, timeout=600)
print(r.stdout, r.stderr[-1000:])
lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
check(r.returncode == 0 and len(lines) == 3, "gen --compare: two layouts and a comparison")
if len(lines) == 3:
    mha, mla, cmpr = lines
    check(mha["preset"] == "tiny-test" and mla["preset"] == "tiny-test-mla", "the per-head and latent presets")
    check(all(x["fps"] > 0 and x["flop_per_chunk"] > 0 and x["gemm_tflops"] > 0 and x["chunk_p99_s"] >= x["chunk_p50_s"]
              for x in (mha, mla)), "latency, frames/s, FLOP and the GEMM floor reported")
    check(abs(cmpr["kv_ratio"] - mla["kv_stream_bytes"] / mha["kv_stream_bytes"]) < 1e-3 and cmpr["kv_ratio"] < 1,
          "KV ratio %.4f from the pools' accounting" % cmpr["kv_ratio"])
    # the JSON rounds latencies to 10 us: compare within that rounding
    check(abs(cmpr["latency_ratio"] - mla["chunk_p50_s"] / mha["chunk_p50_s"]) < 0.02 * cmpr["latency_ratio"] + 1e-3,
          "latency ratio consistent")
r = subprocess.run([os.path.join(B, "vmla-bench"), "gen", "--preset", "tiny-test", "--device", "tpu"],
                   capture_output=True, text=True, timeout=60)
check(r.returncode == 2 and "--device" in r.stderr, "gen: unknown device refused")
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
