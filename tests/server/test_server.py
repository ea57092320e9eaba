#!/usr/bin/python3
"""tests/server/test_server.py: the real vmla-server on loopback, driven by real clients.

HTTP through urllib, WebSocket through python3-websocket (Debian's websocket-client), what
arrives checked by ffprobe/ffmpeg. Covers the API, both stream formats, the recording, every
bad request the protocol names, malformed WebSocket messages, abrupt disconnects, a prompt
switch, pause/resume, 20 concurrent sessions, the API key, capacity limits, and a graceful
SIGTERM. Run by ctest (tests/tests.cmake) with VMLA_BUILD_DIR and VMLA_SOURCE_DIR set.
Usage: test_server.py [--server PATH] [--quick]
"""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import shutil
import time
import urllib.error
import urllib.request

import websocket  # python3-websocket

BUILD = os.environ.get("VMLA_BUILD_DIR", "build")
SRC = os.environ.get("VMLA_SOURCE_DIR", ".")
SERVER = os.path.join(BUILD, "vmla-server")
for i, a in enumerate(sys.argv):
    if a == "--server":
        SERVER = sys.argv[i + 1]
QUICK = "--quick" in sys.argv
MODEL = os.path.join(SRC, "tests/golden/tiny-mla.safetensors")

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok:", what)
    else:
        failed += 1
        print("FAIL:", what)
    sys.stdout.flush()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, *extra, env=None, model=MODEL):
        self.port, self.ws_port = free_port(), free_port()
        args = [SERVER, "--preset", "tiny-test-mla", "--model", model, "--port", str(self.port),
                "--ws-port", str(self.ws_port), "--web-root", os.path.join(SRC, "web-client")] + list(extra)
        e = dict(os.environ)
        e.update(env or {})
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        for _ in range(200):
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start: " + self.output())

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def req(self, method, path, body=None, headers=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        r = urllib.request.Request(self.url(path), data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(r, timeout=20) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def get(self, path, headers=None):
        return self.req("GET", path, headers=headers)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return -999


def err_code(body):
    try:
        return json.loads(body)["error"]["code"]
    except Exception:
        return None


def parse_media(b):
    magic, ver, typ, flags, seq, chunk, pts, nfr, fmt, res, plen = struct.unpack(">BBBBIIQHBBI", b[:28])
    return dict(magic=magic, ver=ver, type=typ, flags=flags, seq=seq, chunk=chunk, pts=pts, n=nfr, fmt=fmt,
                res=res, plen=plen, payload=b[28:])


def watch(stream_url, fmt="annexb", until_end=True, max_msgs=10000, timeout=60, on_msg=None):
    """Receive a stream: returns (events, media headers, bytes for ffprobe, close info)."""
    base, _, query = stream_url.partition("?")
    params = [q for q in query.split("&") if q and not q.startswith("format=")]
    url = base + "?" + "&".join(["format=" + fmt] + params)
    ws = websocket.create_connection(url, timeout=timeout)
    events, media, data = [], [], bytearray()
    close = None
    for _ in range(max_msgs):
        try:
            op, payload = ws.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            break
        if op == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
            close = (code, payload[2:].decode(errors="replace"))
            break
        if op == websocket.ABNF.OPCODE_TEXT:
            ev = json.loads(payload.decode())
            events.append(ev)
        elif op == websocket.ABNF.OPCODE_BINARY:
            m = parse_media(payload)
            media.append(m)
            if m["fmt"] == 1:
                off = 0
                p = m["payload"]
                while off < len(p):
                    (l,) = struct.unpack(">I", p[off:off + 4])
                    data += p[off + 4:off + 4 + l]
                    off += 4 + l
            else:
                data += m["payload"]
        if on_msg and on_msg(ws, events, media):
            break
        if not until_end and media:
            break
    try:
        ws.close()
    except Exception:
        pass
    return events, media, bytes(data), close


def probe(data, suffix):
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
        f.write(data)
        name = f.name
    try:
        out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                              "stream=codec_name,width,height,nb_read_frames", "-of", "csv=p=0", name],
                             capture_output=True, text=True, timeout=60).stdout.strip()
        gray = subprocess.run(["ffmpeg", "-v", "error", "-i", name, "-vf", "select=eq(n\\,5)", "-vframes", "1",
                               "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, timeout=60).stdout
    finally:
        os.unlink(name)
    return out, gray


def create(s, **body):
    body.setdefault("prompt", "a red square moving left")
    st, b, h = s.req("POST", "/v1/sessions", body)
    return st, (json.loads(b) if st == 201 else b), h


# --------------------------------------------------------------------------------------------
def test_basics(s):
    st, b, _ = s.get("/healthz")
    check(st == 200 and b == b"ok\n", "healthz")
    check(s.get("/readyz")[0] == 200, "readyz when the model is loaded")
    st, b, h = s.get("/")
    check(st == 200 and b"<" in b and "text/html" in h.get("Content-Type", ""), "GET / serves the web client")
    check(s.get("/../../etc/passwd")[0] == 404 and s.get("/%2e%2e/secret")[0] == 404, "no path traversal")
    st, b, _ = s.get("/metrics")
    check(st == 200 and b"vmla_sessions_active" in b and b"vmla_kv_bytes_free" in b and
          b"vmla_chunk_latency_seconds_bucket" in b, "metrics in Prometheus text")


def test_session_annexb(s):
    st, j, h = create(s, prompt="a blue circle moving up", seed=7, seconds=3)
    check(st == 201 and len(j["id"]) == 32 and j["stream_url"].startswith("ws://"), "POST /v1/sessions -> 201")
    check(h.get("Location") == "/v1/sessions/" + j["id"], "Location header")
    check(j["width"] == 48 and j["height"] == 32 and j["fps"] == 16 and j["seed"] == 7, "session fields")
    events, media, data, close = watch(j["stream_url"], "annexb")
    types = [e["type"] for e in events]
    check(types[:1] == ["init"] and events[0]["codec"].startswith("avc1.") and events[0]["width"] == 48,
          "init event first: %s" % (events[:1],))
    check(types.count("chunk") == 4 and types[-1] == "ended" and events[-1]["reason"] == "completed",
          "4 chunk events then ended(completed): %s" % types)
    check(close is not None and close[0] == 1000, "normal close: %s" % (close,))
    check(all(m["magic"] == 0x56 and m["ver"] == 1 and m["type"] == 2 and m["fmt"] == 1 for m in media),
          "media headers")
    check([m["seq"] for m in media] == list(range(len(media))), "sequence numbers")
    check(media and media[0]["flags"] & 1, "first media message starts with a keyframe")
    check(sum(m["n"] for m in media) == 48, "48 frames for 3 s")
    check([m["pts"] for m in media] == [c * 750000 for c in range(4)], "pts of each chunk")
    out, gray = probe(data, ".h264")
    check(out == "h264,48,32,48", "ffprobe of the Annex-B stream: %s" % out)
    if gray:
        mean = sum(gray) / len(gray)
        sd = (sum((g - mean) ** 2 for g in gray) / len(gray)) ** 0.5
        check(sd > 0.5, "decoded frame is not flat (luma std %.2f)" % sd)
    st, b, _ = s.get("/v1/sessions/" + j["id"])
    g = json.loads(b)
    check(st == 200 and g["state"] == "ended" and g["chunks"] == 4 and g["frames"] == 48 and g["ttff_ms"] > 0,
          "GET after the end: %s" % {k: g[k] for k in ("state", "chunks", "frames", "ttff_ms")})
    st, b, h = s.get("/v1/sessions/%s/video.mp4" % j["id"])
    out, _ = probe(b, ".mp4")
    check(st == 200 and h.get("Content-Type") == "video/mp4" and out == "h264,48,32,48",
          "video.mp4 of the whole session: %s" % out)
    return j


def test_session_fmp4(s):
    st, j, _ = create(s, prompt="a green triangle", seconds=2, format="fmp4")
    check(st == 201 and j["stream_url"].endswith("format=fmp4"), "fmp4 session")
    events, media, data, close = watch(j["stream_url"], "fmp4")
    check(media and media[0]["type"] == 1 and media[0]["fmt"] == 2 and media[0]["payload"][4:8] == b"ftyp",
          "init segment first")
    check(all(m["type"] == 2 and m["payload"][4:8] == b"moof" for m in media[1:]), "then moof fragments")
    check(events[0]["mime"].startswith('video/mp4; codecs="avc1.'), "mime in init: %s" % events[0].get("mime"))
    out, _ = probe(data, ".mp4")
    check(out == "h264,48,32,32", "ffprobe of init + fragments: %s" % out)


def test_bad_requests(s):
    def code_of(method, path, body=None, raw=None, headers=None):
        st, b, h = s.req(method, path, body, headers=headers, raw=raw)
        return st, err_code(b), h

    cases = [
        ("invalid JSON", "POST", "/v1/sessions", None, b"{not json", 400),
        ("not an object", "POST", "/v1/sessions", [1, 2], None, 400),
        ("missing prompt", "POST", "/v1/sessions", {"seed": 1}, None, 400),
        ("empty prompt", "POST", "/v1/sessions", {"prompt": ""}, None, 400),
        ("prompt too long", "POST", "/v1/sessions", {"prompt": "x" * 2001}, None, 400),
        ("prompt not a string", "POST", "/v1/sessions", {"prompt": 5}, None, 400),
        ("negative seed", "POST", "/v1/sessions", {"prompt": "a", "seed": -1}, None, 400),
        ("fractional seed", "POST", "/v1/sessions", {"prompt": "a", "seed": 1.5}, None, 400),
        ("seconds 0", "POST", "/v1/sessions", {"prompt": "a", "seconds": 0}, None, 400),
        ("seconds a string", "POST", "/v1/sessions", {"prompt": "a", "seconds": "5"}, None, 400),
        ("unknown format", "POST", "/v1/sessions", {"prompt": "a", "format": "mkv"}, None, 400),
        ("NUL in body", "POST", "/v1/sessions", None, b'{"prompt": "a\x00b"}', 400),
        ("huge body", "POST", "/v1/sessions", None, b'{"prompt": "' + b"a" * 20000 + b'"}', 413),
        ("unknown session", "GET", "/v1/sessions/" + "0" * 32, None, None, 404),
        ("malformed id", "GET", "/v1/sessions/xyz", None, None, 404),
        ("unknown route", "GET", "/v1/nothing", None, None, 404),
        ("wrong method on collection", "GET", "/v1/sessions", None, None, 405),
        ("wrong method on session", "PUT", "/v1/sessions/" + "0" * 32, None, b"{}", 405),
        ("wrong method on prompt", "GET", "/v1/sessions/" + "0" * 32 + "/prompt", None, None, 405),
        ("prompt switch on unknown session", "POST", "/v1/sessions/" + "0" * 32 + "/prompt", {"prompt": "b"}, None, 404),
        ("wrong method on healthz", "POST", "/healthz", None, b"", 405),
    ]
    for name, method, path, body, raw, want in cases:
        st, code, _ = code_of(method, path, body, raw)
        check(st == want and code is not None, "%s -> %d (%s)" % (name, st, code))
    st, b, _ = s.req("POST", "/v1/sessions", raw=b'{"prompt":"a"}', headers={"Content-Type": "text/plain"})
    check(st == 415, "wrong content type -> 415")
    st, b, h = s.req("DELETE", "/v1/sessions", None)
    check(st == 405 and "POST" in h.get("Allow", ""), "405 carries Allow")
    check(s.get("/healthz")[0] == 200, "still serving after the bad requests")


def test_ws_misuse(s):
    st, j, _ = create(s, prompt="a yellow star")
    base = j["stream_url"].split("?")[0]
    bad = [("binary frame", lambda w: w.send_binary(b"\x00\x01")),
           ("invalid JSON", lambda w: w.send("{nope")),
           ("unknown type", lambda w: w.send('{"type":"dance"}')),
           ("prompt too long", lambda w: w.send(json.dumps({"type": "prompt", "prompt": "x" * 3000}))),
           ("oversized message", lambda w: w.send("x" * 10000))]
    for name, act in bad:
        w = websocket.create_connection(base + "?format=annexb", timeout=20)
        act(w)
        got_err = False
        close = None
        for _ in range(100):
            try:
                op, p = w.recv_data(control_frame=True)
            except Exception:
                break
            if op == websocket.ABNF.OPCODE_TEXT and json.loads(p)["type"] == "error":
                got_err = True
            if op == websocket.ABNF.OPCODE_CLOSE:
                close = struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None
                break
        check(got_err and close == 1008, "%s: error event and close 1008 (%s)" % (name, close))
    for path in ("/v1/sessions/%s/stream" % ("f" * 32), "/nowhere", base + "?format=avi"):
        url = path if path.startswith("ws") else "ws://127.0.0.1:%d%s" % (s.ws_port, path)
        w = websocket.create_connection(url, timeout=20)
        msgs = []
        close = None
        for _ in range(10):
            try:
                op, p = w.recv_data(control_frame=True)
            except Exception:
                break
            if op == websocket.ABNF.OPCODE_CLOSE:
                close = struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None
                break
            msgs.append(p)
        check(close == 1008 and msgs and b'"error"' in msgs[0], "bad stream URL %s refused with a reason" % path)
    # the session still streams to a proper viewer, which also switches the prompt and pauses
    seen = {"switched": False, "paused": False, "resumed": False}

    def on_msg(w, events, media):
        if len(media) == 1 and not seen["switched"]:
            w.send(json.dumps({"type": "prompt", "prompt": "a purple ring"}))
            seen["switched"] = True
        if any(e["type"] == "prompt_switched" for e in events) and not seen["paused"]:
            w.send('{"type":"pause"}')
            seen["paused"] = True
        if any(e["type"] == "paused" for e in events) and not seen["resumed"]:
            w.send('{"type":"resume"}')
            seen["resumed"] = True
        if len(media) >= 4 and not seen.get("stopped"):
            w.send('{"type":"stop"}')
            seen["stopped"] = True
        return False

    events, media, data, close = watch(j["stream_url"], on_msg=on_msg)
    types = [e["type"] for e in events]
    check("prompt_switched" in types and "paused" in types and "resumed" in types,
          "prompt switch, pause and resume events: %s" % sorted(set(types)))
    check(types[-1] == "ended" and events[-1]["reason"] == "stopped", "stop from the client ends the session")
    st, b, _ = s.get("/v1/sessions/" + j["id"])
    check(json.loads(b)["prompt"] == "a purple ring", "the prompt was switched")


def test_disconnects(s):
    st, j, _ = create(s, prompt="a cyan square")
    st2, j2, _ = create(s, prompt="a white circle", seconds=2)
    for _ in range(3):  # viewers that vanish mid-stream without a close frame
        w = websocket.create_connection(j["stream_url"], timeout=20)
        w.recv()
        w.sock.shutdown(socket.SHUT_RDWR)
        w.sock.close()
    raw = socket.create_connection(("127.0.0.1", s.ws_port))  # a half-open handshake
    raw.send(b"GET /v1/sessions/%s/stream HTTP/1.1\r\nHost: x\r\n" % j["id"].encode())
    raw.close()
    events, media, data, close = watch(j2["stream_url"])
    out, _ = probe(data, ".h264")
    check(out == "h264,48,32,32", "another session streams whole after abrupt disconnects: %s" % out)
    check(s.req("DELETE", "/v1/sessions/" + j["id"])[0] == 204, "DELETE -> 204")
    st, b, _ = s.get("/v1/sessions/" + j["id"])
    check(json.loads(b)["state"] == "ended", "deleted session is ended")
    check(s.req("POST", "/v1/sessions/%s/prompt" % j["id"], {"prompt": "x"})[0] == 409, "prompt on an ended session -> 409")


def test_concurrent(s, n=20):
    """n clients at once, each creating its session and connecting to it right away."""
    results = [None] * n

    def run(i):
        try:
            st, j, _ = create(s, prompt="shape %d" % i, seconds=3, seed=i)
            results[i] = watch(j["stream_url"], timeout=120) if st == 201 else "create: %s" % st
        except Exception as e:
            results[i] = e

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    t0 = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join(180)
    ok = 0
    for r in results:
        if isinstance(r, tuple):
            frames = sum(m["n"] for m in r[1])
            good = frames == 48 and r[0][-1]["type"] == "ended"
            ok += good
            if not good:
                print("  client: %d frames, chunks %s, last events %s, close %s" %
                      (frames, [m["chunk"] for m in r[1]], r[0][-3:], r[3]))
        else:
            print("  client:", r)
    check(ok == n, "%d of %d concurrent clients got all 48 frames (%.1f s)" % (ok, n, time.time() - t0))
    st, b, _ = s.get("/metrics")
    check(b"vmla_chunks_total" in b, "metrics after load")


def test_limits():
    s = Server("--max-sessions", "1", "--max-queue", "1", "--api-key", "sekrit", "--idle-timeout", "6")
    try:
        st, b, h = s.req("POST", "/v1/sessions", {"prompt": "a"})
        check(st == 401 and err_code(b) == "unauthorized", "no API key -> 401")
        auth = {"Authorization": "Bearer sekrit"}
        st, b, h = s.req("POST", "/v1/sessions", {"prompt": "a"}, headers={"Authorization": "Bearer wrong"})
        check(st == 401, "wrong API key -> 401")
        st, b, h = s.req("POST", "/v1/sessions", {"prompt": "a"}, headers=auth)
        check(st == 201, "with the key -> 201")
        a = json.loads(b)
        st, b, h = s.req("POST", "/v1/sessions", {"prompt": "b"}, headers={"X-API-Key": "sekrit"})
        check(st == 201 and json.loads(b)["state"] == "queued", "second session queued (X-API-Key)")
        q = json.loads(b)
        st, b, h = s.req("GET", "/v1/sessions/" + q["id"], headers=auth)
        check(json.loads(b)["queue_position"] == 0, "queue position reported (%s)" % json.loads(b)["queue_position"])
        st, b, h = s.req("POST", "/v1/sessions", {"prompt": "c"}, headers=auth)
        check(st == 503 and err_code(b) == "at_capacity" and h.get("Retry-After"),
              "third -> 503 at_capacity with Retry-After (%s %s)" % (st, b[:200]))
        w = websocket.create_connection(a["stream_url"], timeout=10)
        op, p = w.recv_data(control_frame=True)
        check(op == websocket.ABNF.OPCODE_CLOSE or b"unauthorized" in p, "stream without the key is refused")
        w.close()
        _, _, _, close = watch(a["stream_url"] + "&key=sekrit", until_end=False)
        check(close is None, "stream with ?key= works")
        time.sleep(8)  # nobody watches: idle timeout (6 s) ends both
        st, b, _ = s.req("GET", "/v1/sessions/" + a["id"], headers=auth)
        check(json.loads(b)["end_reason"] == "idle", "idle session ended: %s" % json.loads(b)["end_reason"])
        st, b, h = s.req("POST", "/v1/sessions", {"prompt": "d"}, headers=auth)
        check(st == 201, "capacity is free again")
    finally:
        rc = s.stop()
    check(rc == 0, "limits server exits 0 on SIGTERM")


def with_metadata(src, dst, meta):
    """Copy a safetensors file with entries added to its __metadata__ (the header is rewritten; data
    offsets are relative to the end of the header, so the tensors stay valid)."""
    raw = open(src, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    head.setdefault("__metadata__", {}).update(meta)
    h = json.dumps(head).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + raw[8 + n:])


def test_model_sampler():
    """The server runs the sampler a model file names (vmla.sampler.*), and refuses a malformed one
    at start with a message naming the file."""
    d = tempfile.mkdtemp()
    bad, good = os.path.join(d, "bad.safetensors"), os.path.join(d, "good.safetensors")
    with_metadata(MODEL, bad, {"vmla.sampler.steps": "1000,2000"})
    with_metadata(MODEL, good, {"vmla.sampler.steps": "1000,500", "vmla.sampler.shift": "1"})
    p = subprocess.run([SERVER, "--preset", "tiny-test-mla", "--model", bad, "--port", str(free_port()),
                        "--ws-port", str(free_port())], capture_output=True, timeout=60)
    err = p.stderr.decode(errors="replace")
    check(p.returncode == 2 and "bad.safetensors" in err and "steps" in err,
          "a malformed sampler in the model file: exit 2 naming the file (%d: %s)" % (p.returncode, err.strip()))
    s = Server("--max-sessions", "2", "--calibrate", "0", model=good)
    try:
        st, a, _ = create(s, prompt="a red square moving left", seed=3)
        check(st == 201, "session with the file's sampler created (%s)" % st)
        _, media, data, close = watch(a["stream_url"], until_end=False, max_msgs=8)
        check(len(media) > 0 and len(data) > 0 and close is None,
              "a model file's 2-step sampler serves video (%d media messages)" % len(media))
        _, b, _ = s.get("/metrics")
        check(b"vmla_" in b, "metrics answer")
    except Exception as e:
        check(False, "model sampler: %r" % e)
    finally:
        rc = s.stop()
    check(rc == 0, "sampler server exits 0 on SIGTERM")
    shutil.rmtree(d, ignore_errors=True)


def gray_frames(data, suffix=".h264"):
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
        f.write(data)
        name = f.name
    try:
        return subprocess.run(["ffmpeg", "-v", "error", "-i", name, "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                              capture_output=True, timeout=60).stdout
    finally:
        os.unlink(name)


def metric(s, name):
    st, b, _ = s.get("/metrics")
    for line in b.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_offload():
    """One slot. A paused session's KV goes to the host tier, another session takes the slot, the
    first resumes once it is free and its video is the one it would have been without the pause."""
    s = Server("--max-sessions", "1", "--max-queue", "4", "--host-kv-mb", "1", "--offload-after", "0.3",
               "--idle-timeout", "60")
    try:
        st, a, _ = create(s, prompt="a red square moving left", seed=3, seconds=4)
        ws = websocket.create_connection(a["stream_url"], timeout=30)
        ws.settimeout(0.2)
        media, events, data, phase, t_pause, b_result = [], [], bytearray(), "run", 0, None
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                op, p = ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                op, p = None, None
            except websocket.WebSocketConnectionClosedException:
                break
            if op == websocket.ABNF.OPCODE_CLOSE:
                break
            if op == websocket.ABNF.OPCODE_TEXT:
                events.append(json.loads(p.decode()))
            elif op == websocket.ABNF.OPCODE_BINARY:
                m = parse_media(p)
                media.append(m)
                data += m["payload"]
            if phase == "run" and len(media) >= 2:
                ws.send('{"type":"pause"}')
                phase, t_pause = "paused", time.time()
            elif phase == "paused" and (metric(s, 'vmla_sched_events_total{event="offload"}') or 0) >= 1:
                st, j = s.get("/v1/sessions/" + a["id"])[:2]
                check(json.loads(j)["kv_bytes"] == 0, "offloaded: the session holds no device KV")
                # the slot is free: a second session starts and runs to its end
                st, b, _ = create(s, prompt="a blue circle moving up", seed=4, seconds=1)
                check(st == 201, "a second session while the first is on the host")
                b_result = watch(b["stream_url"], timeout=30)
                ws.send('{"type":"resume"}')
                phase = "resumed"
            elif phase == "paused" and time.time() - t_pause > 10:
                break
            if events and events[-1]["type"] == "ended":
                break
        ws.close()
        check(phase == "resumed", "the paused session was offloaded (phase %s)" % phase)
        check(b_result and sum(m["n"] for m in b_result[1]) == 16 and b_result[0][-1]["type"] == "ended",
              "the second session got all its 16 frames")
        frames = sum(m["n"] for m in media)
        chunks = [m["chunk"] for m in media]
        check(frames == 64 and chunks == sorted(set(chunks)) and events[-1]["type"] == "ended",
              "the first got all 64 frames, chunks in order, no repeats (%d frames, chunks %s)" % (frames, chunks))
        check((metric(s, 'vmla_sched_events_total{event="restore"}') or 0) >= 1, "restored from the host tier")
        # the same session without a pause: the same video
        st, c, _ = create(s, prompt="a red square moving left", seed=3, seconds=4)
        ref = watch(c["stream_url"], timeout=30)
        g1, g2 = gray_frames(bytes(data)), gray_frames(ref[2])
        diff = (sum(abs(x - y) for x, y in zip(g1, g2)) / max(1, len(g1))) if g1 and len(g1) == len(g2) else 1e9
        check(diff < 2.0, "offloaded and restored: the same video as without a pause (mean |diff| %.2f of 255, "
              "%d vs %d bytes)" % (diff, len(g1), len(g2)))
    finally:
        rc = s.stop()
    check(rc == 0, "server exit 0")


def test_shutdown(s):
    st, j, _ = create(s, prompt="a long one")
    got = {}

    def run():
        got["r"] = watch(j["stream_url"], timeout=30)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(1.0)
    rc = s.stop()
    t.join(30)
    events = got.get("r", ([],))[0]
    check(events and events[-1]["type"] == "ended" and events[-1]["reason"] == "shutdown",
          "viewers get ended(shutdown): %s" % (events[-1:] if events else None))
    check(rc == 0, "SIGTERM: exit 0 after draining (rc %s)" % rc)
    out = s.output()
    check("ERROR: LeakSanitizer" not in out and "runtime error" not in out and "AddressSanitizer" not in out,
          "no sanitizer reports in the server's output")
    if failed:
        print(out[-3000:])


def main():
    if not os.path.exists(SERVER):
        print("skip: %s not built" % SERVER)
        print("0 passed, 0 failed")
        return 0
    s = Server("--max-sessions", "20", "--max-queue", "10", "--max-batch", "8", "--idle-timeout", "30")
    try:
        test_basics(s)
        test_session_annexb(s)
        test_session_fmp4(s)
        test_bad_requests(s)
        test_ws_misuse(s)
        test_disconnects(s)
        if not QUICK:
            test_concurrent(s)
    except Exception as e:
        import traceback
        traceback.print_exc()
        check(False, "exception: %r" % e)
    test_shutdown(s)
    if not QUICK:
        test_limits()
    test_offload()
    test_model_sampler()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
