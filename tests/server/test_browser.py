#!/usr/bin/python3
"""tests/server/test_browser.py: the web client in headless Chromium against the real server.

Drives Debian's chromium through the DevTools protocol (python3-websocket, no npm): opens the
page, types a prompt, clicks Start, and checks that frames are painted and video time advances
(WebCodecs tile) and that a painted frame is not blank; then the same through Media Source
Extensions (format fmp4, a <video> whose currentTime must advance). Saves a screenshot
(VMLA_SCREENSHOT, default build dir/browser.png) for a person to look at.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server import Server, free_port, SERVER  # noqa: E402

passed = failed = 0


def check(cond, what):
    global passed, failed
    passed += bool(cond)
    failed += not cond
    print(("ok: " if cond else "FAIL: ") + what)
    sys.stdout.flush()


class Browser:
    def __init__(self):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise FileNotFoundError("chromium")
        self.dir = tempfile.mkdtemp()
        self.port = free_port()
        self.p = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                   "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                                   "--user-data-dir=" + self.dir, "--remote-debugging-port=%d" % self.port,
                                   "--window-size=1280,900", "about:blank"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        targets = None
        for _ in range(100):
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % self.port, timeout=2) as r:
                    targets = [t for t in json.loads(r.read()) if t["type"] == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if not targets:
            raise RuntimeError("chromium did not start")
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self.id = 0
        self.console = []

    def call(self, method, **params):
        self.id += 1
        self.ws.send(json.dumps({"id": self.id, "method": method, "params": params}))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in m["params"]["args"]))
            if m.get("method") == "Runtime.exceptionThrown":
                self.console.append("EXCEPTION " + json.dumps(m["params"]["exceptionDetails"])[:500])
            if m.get("id") == self.id:
                if "error" in m:
                    raise RuntimeError(m["error"])
                return m["result"]

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(json.dumps(r["exceptionDetails"])[:500])
        return r["result"].get("value")

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


STATS = """(() => { const s = window.vmlaTest.sessions[window.vmlaTest.sessions.length - 1];
  if (!s) return null;
  const out = {id: s.id, state: s.state, painted: s.framesPainted || 0, first: s.firstFrameMs, err: String(s.error || '')};
  if (s.video) { out.t = s.video.currentTime; }
  const c = s.canvas;
  if (c && c.width) { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0, sum = 0, sq = 0; for (let i = 0; i < d.length; i += 4) { const y = (d[i] + d[i+1] + d[i+2]) / 3; sum += y; sq += y*y; n++; }
    out.mean = sum / n; out.std = Math.sqrt(Math.max(0, sq / n - (sum / n) ** 2)); }
  return out; })()"""


def run_case(b, s, fmt):
    b.call("Page.navigate", url="http://127.0.0.1:%d/" % s.port)
    for _ in range(100):
        if b.eval("!!(window.vmlaTest && window.vmlaTest.ready)"):
            break
        time.sleep(0.1)
    check(b.eval("!!window.vmlaTest && window.vmlaTest.ready"), "%s: page loaded, client ready" % fmt)
    b.eval("""(() => { const p = document.querySelector('#prompt'); p.value = 'a red square moving left on a white background';
      p.dispatchEvent(new Event('input', {bubbles: true}));
      const f = document.querySelector('#format'); f.value = '%s'; f.dispatchEvent(new Event('change', {bubbles: true}));
      document.querySelector('#start').click(); return true; })()""" % fmt)
    first = last = None
    for _ in range(150):
        st = b.eval(STATS)
        if st and st.get("painted", 0) > 0 and first is None:
            first = st
        last = st
        if st and st.get("painted", 0) >= 30:
            break
        time.sleep(0.1)
    print("  %s: %s" % (fmt, last))
    check(last is not None and last["id"], "%s: a session tile exists" % fmt)
    check(first is not None and last["painted"] > first["painted"], "%s: frames keep being painted (%s -> %s)" %
          (fmt, first and first["painted"], last and last["painted"]))
    if fmt == "fmp4":
        check(last and last.get("t", 0) > 0.5, "fmp4: <video> currentTime advances (%.2f s)" % (last or {}).get("t", 0))
    else:
        check(last and last.get("std", 0) > 1.0 and 5 < last.get("mean", 0) < 250,
              "annexb: the canvas frame is not blank (mean %.1f, std %.2f)" % ((last or {}).get("mean", 0), (last or {}).get("std", 0)))
    check(last and last.get("first") and last["first"] > 0, "%s: time to first frame measured (%s ms)" % (fmt, last and last.get("first")))
    png = base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
    path = os.environ.get("VMLA_SCREENSHOT", os.path.join(os.environ.get("VMLA_BUILD_DIR", "."), "browser-%s.png" % fmt))
    with open(path, "wb") as f:
        f.write(png)
    print("  screenshot:", path)


def main():
    if not os.path.exists(SERVER):
        print("skip: server not built\n0 passed, 0 failed")
        return 0
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("FAIL: chromium is not installed (make deps installs it)")
        return 1
    # the bundled model if present (what people see), else the tiny test weights
    s = Server("--idle-timeout", "30")
    b = None
    try:
        b = Browser()
        b.call("Runtime.enable")
        b.call("Page.enable")
        run_case(b, s, "annexb")
        run_case(b, s, "fmp4")
        bad = [c for c in b.console if "EXCEPTION" in c]
        check(not bad, "no uncaught exceptions in the page (%s)" % bad[:2])
    except Exception as e:
        import traceback
        traceback.print_exc()
        check(False, "exception: %r" % e)
    finally:
        if b:
            b.close()
        rc = s.stop()
    check(rc == 0, "server exits 0")
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
