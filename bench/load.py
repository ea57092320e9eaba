#!/usr/bin/python3
"""bench/load.py: open N sessions on a running vmla-server and measure what viewers get.

  bench/load.py --url http://127.0.0.1:8080 --sessions 8 --seconds 6 [--prompt P] [--api-key K] [--json]

For each session: POST /v1/sessions, connect its stream at once, read to the end. Reports
time to first frame (POST sent -> first media message received), chunk delivery latency as the
server reports it (generation + encoding, `chunk` events' latency_ms), the gap between consecutive
chunks at the client (should be ~ chunk duration once the lead is used up), and frames received.
Loopback only; bounded in count and time.
"""
import argparse
import json
import statistics
import struct
import threading
import time
import urllib.request

import websocket


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def one(args, i, out):
    body = json.dumps({"prompt": args.prompt, "seed": i, "seconds": args.seconds}).encode()
    h = {"Content-Type": "application/json"}
    if args.api_key:
        h["Authorization"] = "Bearer " + args.api_key
    t0 = time.time()
    try:
        with urllib.request.urlopen(urllib.request.Request(args.url + "/v1/sessions", data=body, headers=h),
                                    timeout=30) as r:
            j = json.loads(r.read())
    except Exception as e:
        out[i] = {"error": "create: %r" % e}
        return
    url = j["stream_url"] + ("&key=" + args.api_key if args.api_key else "")
    ws = websocket.create_connection(url, timeout=args.seconds + 60)
    first = None
    arrivals, lat, frames, dropped = [], [], 0, 0
    while True:
        try:
            op, p = ws.recv_data()
        except Exception:
            break
        now = time.time()
        if op == websocket.ABNF.OPCODE_BINARY and p[2] == 2:
            if first is None:
                first = now - t0
            arrivals.append(now)
            frames += struct.unpack(">H", p[20:22])[0]
        elif op == websocket.ABNF.OPCODE_TEXT:
            ev = json.loads(p)
            if ev["type"] == "chunk":
                lat.append(ev["latency_ms"])
                dropped = ev.get("dropped", 0)
            if ev["type"] in ("ended", "error"):
                break
    ws.close()
    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:])]
    out[i] = {"ttff_ms": (first or float("nan")) * 1000, "lat": lat, "gaps": gaps, "frames": frames, "dropped": dropped}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--prompt", default="a red square moving left on a white background")
    ap.add_argument("--api-key")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (1 <= args.sessions <= 256 and 0 < args.seconds <= 600):
        ap.error("1..256 sessions, 0..600 s")
    out = [None] * args.sessions
    ts = [threading.Thread(target=one, args=(args, i, out)) for i in range(args.sessions)]
    t0 = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join(args.seconds + 120)
    ok = [o for o in out if o and "error" not in o]
    ttff = [o["ttff_ms"] for o in ok]
    lat = [x for o in ok for x in o["lat"]]
    gaps = [x for o in ok for x in o["gaps"]]
    res = {"sessions": args.sessions, "completed": len(ok), "seconds": args.seconds, "wall_s": time.time() - t0,
           "ttff_ms_p50": pct(ttff, 50), "ttff_ms_p99": pct(ttff, 99),
           "chunk_latency_ms_p50": pct(lat, 50), "chunk_latency_ms_p99": pct(lat, 99),
           "chunk_gap_ms_p50": pct(gaps, 50), "chunk_gap_ms_p99": pct(gaps, 99),
           "frames_per_session_min": min((o["frames"] for o in ok), default=0),
           "dropped_total": sum(o["dropped"] for o in ok),
           "errors": [o["error"] for o in out if o and "error" in o][:3]}
    if args.json:
        print(json.dumps(res))
    else:
        print("%d/%d sessions of %.1f s completed in %.1f s" % (len(ok), args.sessions, args.seconds, res["wall_s"]))
        print("time to first frame   p50 %7.1f ms  p99 %7.1f ms" % (res["ttff_ms_p50"], res["ttff_ms_p99"]))
        print("chunk latency (server) p50 %7.1f ms  p99 %7.1f ms" % (res["chunk_latency_ms_p50"], res["chunk_latency_ms_p99"]))
        print("chunk gap at client   p50 %7.1f ms  p99 %7.1f ms" % (res["chunk_gap_ms_p50"], res["chunk_gap_ms_p99"]))
        print("frames per session (min) %d, dropped %d%s" % (res["frames_per_session_min"], res["dropped_total"],
                                                             ", errors: %s" % res["errors"] if res["errors"] else ""))


if __name__ == "__main__":
    main()
