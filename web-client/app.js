// vmla web client: the page's controller. It starts sessions through the HTTP API
// (POST /v1/sessions), opens each session's stream_url over WebSocket, and shows every session as
// a tile with its video, live controls (prompt switch, pause/resume, stop, download) and stats.
// The protocol is proto/PROTOCOL.md; playback lives in player.js, the binary layout in protocol.js.
//
// For automated tests the page exposes window.vmlaTest = {ready, sessions, errors, start(opts)}:
// `sessions` holds the live Session objects below (id, state, framesPainted, lastFrameTime,
// firstFrameMs, canvas, video, element, error, ...), newest last.
//
// Query parameters: ?api=http://host:8080 sends API calls to another origin (the server must
// allow it); by default they go to the page's own origin.

import { parseMessage, formatBytes, MSG_INIT } from './protocol.js';
import { WebCodecsPlayer, MsePlayer } from './player.js';

// Prompts the bundled MLA model draws right: one of each shape, each right in 4 of 4 seeds at 5 s
// (`tools/eval/evaluate.py --prompt P ... --seeds 4 --seconds 5`, 2026-11-29, fourth- and
// fifth-round models; models/README.md).
const EXAMPLES = [
  'a red square moving left on a white background',
  'a yellow triangle moving up on a blue background',
  'a green ring moving down on a gray background',
  'a white cross moving left on a black background',
  'a yellow circle moving right on a blue background',
];
const KEY_STORAGE = 'vmla.apiKey';
const MAX_PROMPT_BYTES = 2000;
const MAX_SEED = Number.MAX_SAFE_INTEGER; // 2^53 - 1
const MAX_SECONDS = 3600;

const params = new URLSearchParams(window.location.search);
const API_BASE = (params.get('api') || '').replace(/\/+$/, '');

const test = { ready: false, sessions: [], errors: [], start: (opts) => startSession(opts || {}) };
window.vmlaTest = test;

const $ = (sel) => document.querySelector(sel);

// ------------------------------------------------------------------------------------------------
// Small helpers

/** Creates an element: el('div', {class: 'x', 'data-y': 1}, child, 'text', ...). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function utf8Bytes(s) {
  return new TextEncoder().encode(s).length;
}

function fmtMs(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '–';
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v >= 100 ? 0 : 1)} ms`;
}

function loadKey() {
  try { return window.localStorage.getItem(KEY_STORAGE) || ''; } catch (_) { return ''; }
}

function saveKey(k) {
  try {
    if (k) window.localStorage.setItem(KEY_STORAGE, k);
    else window.localStorage.removeItem(KEY_STORAGE);
  } catch (_) { /* storage disabled: the key lives in the field only */ }
}

function apiKey() {
  const f = $('#api-key');
  return (f ? f.value : loadKey()).trim();
}

function showGlobalError(text) {
  test.errors.push(text);
  const box = $('#global-error');
  if (!box) return;
  box.textContent = text;
  box.hidden = false;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return this.status ? `${this.status} ${this.code}: ${this.message}` : this.message;
  }
}

/** Calls the HTTP API; resolves to the parsed JSON body (or null), rejects with ApiError. */
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let res;
  try {
    res = await fetch(API_BASE + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server (${e && e.message ? e.message : e})`);
  }
  let text = '';
  try { text = await res.text(); } catch (_) { /* body lost: report the status alone */ }
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = null; }
  }
  if (!res.ok) {
    const err = data && typeof data === 'object' && data.error && typeof data.error === 'object' ? data.error : null;
    const code = err && err.code ? String(err.code) : `http_${res.status}`;
    // Not our JSON error (a proxy's HTML page, say): fall back to the status line.
    const plain = /^\s*</.test(text) ? '' : text.trim().slice(0, 200);
    let message = err && err.message ? String(err.message) : (plain || res.statusText || 'request failed');
    const retry = res.headers.get('Retry-After');
    if (retry) message += ` (retry after ${retry} s)`;
    throw new ApiError(res.status, code, message);
  }
  return data;
}

/** The stream URL as given by the API, made reachable from this page, with the key appended. */
function streamUrl(given, format) {
  const u = new URL(given, window.location.href);
  if (window.location.protocol === 'https:' && u.protocol === 'ws:') u.protocol = 'wss:';
  if ((u.hostname === '0.0.0.0' || u.hostname === '[::]') && window.location.hostname) {
    u.hostname = window.location.hostname;
  }
  if (format) u.searchParams.set('format', format);
  const key = apiKey();
  if (key) u.searchParams.set('key', key);
  return u.toString();
}

// ------------------------------------------------------------------------------------------------
// One session = one tile

const LIVE_STATES = new Set(['creating', 'queued', 'running', 'paused']);

class Session {
  constructor(opts) {
    this.id = null;
    this.state = 'creating';
    this.prompt = opts.prompt;
    this.seed = opts.seed;
    this.seconds = opts.seconds;
    this.format = opts.format; // 'annexb' | 'fmp4': what this client asked for / plays
    this.startedAt = opts.startedAt; // performance.now() at the Start click
    this.streamUrl = null;
    this.ws = null;
    this.player = null;
    this.canvas = null;
    this.video = null;
    this.width = 0;
    this.height = 0;
    this.fps = 0;
    this.codec = '';
    this.framesPainted = 0;
    this.lastFrameTime = null; // performance.now() of the last paint
    this.firstFrameMs = null; // Start click → first frame painted
    this.paintTimes = []; // performance.now() of paints in the last second
    this.clientDropped = 0;
    this.lastMediaAt = null;
    this.chunkIntervalMs = null;
    this.chunk = null; // the last `chunk` event
    this.queuePosition = null;
    this.error = null;
    this.endReason = null;
    this.closeInfo = null;
    this.fellBack = false;
    this.removed = false;
    this.pollTimer = 0;
    this.build();
  }

  // ---- DOM

  build() {
    const s = this;
    this.stateBadge = el('span', { class: 'state', 'data-role': 'state', text: this.state });
    this.promptLabel = el('span', { class: 'tile-prompt', title: this.prompt, text: this.prompt });
    this.screen = el('div', { class: 'screen' },
      el('div', { class: 'placeholder', text: 'starting…' }));
    this.errorBox = el('div', { class: 'error', role: 'alert', hidden: true });
    this.noteBox = el('div', { class: 'note', hidden: true });
    this.statEls = {};
    const stat = (name, label) => {
      const dd = el('dd', { 'data-stat': name, text: '–' });
      this.statEls[name] = dd;
      return [el('dt', { text: label }), dd];
    };
    this.stats = el('dl', { class: 'stats' },
      ...stat('state', 'State'),
      ...stat('fps', 'FPS shown'),
      ...stat('latency', 'Chunk latency'),
      ...stat('interval', 'Chunk every'),
      ...stat('ttff', 'First frame'),
      ...stat('kv', 'KV memory'),
      ...stat('dropped', 'Dropped'),
      ...stat('frames', 'Frames'),
      ...stat('buffer', 'Buffered'),
      ...stat('decoder', 'Playback'));
    this.switchInput = el('input', {
      class: 'prompt-switch', type: 'text', placeholder: 'switch prompt…', list: 'prompt-examples',
      'aria-label': 'new prompt', maxlength: MAX_PROMPT_BYTES,
      onkeydown: (e) => { if (e.key === 'Enter') { e.preventDefault(); s.switchPrompt(); } },
    });
    this.switchBtn = el('button', { class: 'switch', type: 'button', text: 'Switch', onclick: () => s.switchPrompt() });
    this.pauseBtn = el('button', { class: 'pause', type: 'button', text: 'Pause', onclick: () => s.togglePause() });
    this.stopBtn = el('button', { class: 'stop danger', type: 'button', text: 'Stop', onclick: () => s.stop() });
    this.download = el('a', {
      class: 'download', text: 'Download MP4', 'aria-disabled': 'true',
      onclick: (e) => s.onDownload(e),
    });
    this.closeBtn = el('button', {
      class: 'close', type: 'button', title: 'Stop and remove this tile', 'aria-label': 'remove tile', text: '×',
      onclick: () => s.remove(),
    });
    this.element = el('article', { class: 'tile', 'data-state': this.state, 'data-format': this.format },
      el('header', {}, this.promptLabel, this.stateBadge, this.closeBtn),
      this.screen,
      this.errorBox,
      this.noteBox,
      el('div', { class: 'controls' },
        el('div', { class: 'switch-row' }, this.switchInput, this.switchBtn),
        el('div', { class: 'button-row' }, this.pauseBtn, this.stopBtn, this.download)),
      this.stats);
    this.updateControls();
  }

  setState(state) {
    this.state = state;
    this.element.dataset.state = state;
    let label = state;
    if (state === 'queued' && this.queuePosition !== null) label = `queued #${this.queuePosition}`;
    if (state === 'ended' && this.endReason) label = `ended: ${this.endReason}`;
    this.stateBadge.textContent = label;
    this.updateControls();
    this.renderStats();
  }

  setError(text) {
    this.error = text;
    this.errorBox.textContent = text;
    this.errorBox.hidden = !text;
  }

  setNote(text) {
    this.noteBox.textContent = text;
    this.noteBox.hidden = !text;
  }

  updateControls() {
    const live = LIVE_STATES.has(this.state) && this.id !== null;
    const open = this.ws && this.ws.readyState === WebSocket.OPEN;
    this.switchInput.disabled = !live;
    this.switchBtn.disabled = !live;
    this.pauseBtn.disabled = !live || !open || this.state === 'queued';
    this.pauseBtn.textContent = this.state === 'paused' ? 'Resume' : 'Pause';
    this.stopBtn.disabled = !live;
    if (this.id) {
      this.download.href = `${API_BASE}/v1/sessions/${encodeURIComponent(this.id)}/video.mp4`;
      this.download.setAttribute('download', `vmla-${this.id}.mp4`);
      this.download.removeAttribute('aria-disabled');
    }
  }

  /** Gives the screen the video's aspect ratio once it is known. */
  fitScreen() {
    if (this.width > 0 && this.height > 0) this.screen.style.aspectRatio = `${this.width} / ${this.height}`;
  }

  /** Puts the canvas (WebCodecs) or video (MSE) in the tile; returns it. */
  mountScreen(kind) {
    this.screen.replaceChildren();
    this.canvas = null;
    this.video = null;
    if (kind === 'canvas') {
      this.canvas = el('canvas', { width: this.width || 320, height: this.height || 180, 'aria-label': 'generated video' });
      this.screen.append(this.canvas);
      return this.canvas;
    }
    const v = el('video', { muted: true, autoplay: true, playsinline: true, 'aria-label': 'generated video' });
    v.muted = true; // the property, not just the attribute, is what autoplay looks at
    v.playsInline = true;
    v.autoplay = true;
    this.video = v;
    this.screen.append(v);
    return v;
  }

  renderStats() {
    const c = this.chunk || {};
    const now = performance.now();
    while (this.paintTimes.length && this.paintTimes[0] < now - 1000) this.paintTimes.shift();
    const set = (k, v) => { if (this.statEls[k].textContent !== v) this.statEls[k].textContent = v; };
    set('state', this.state + (this.endReason ? ` (${this.endReason})` : ''));
    set('fps', this.fps ? `${this.paintTimes.length} / ${this.fps}` : '–');
    set('latency', typeof c.latency_ms === 'number'
      ? `${fmtMs(c.latency_ms)}${typeof c.gen_ms === 'number' ? ` (gen ${fmtMs(c.gen_ms)})` : ''}` : '–');
    set('interval', fmtMs(this.chunkIntervalMs));
    set('ttff', this.firstFrameMs !== null
      ? `${fmtMs(this.firstFrameMs)}${typeof c.ttff_ms === 'number' ? ` (server ${fmtMs(c.ttff_ms)})` : ''}` : '–');
    set('kv', typeof c.kv_bytes === 'number' ? formatBytes(c.kv_bytes) : '–');
    set('dropped', `${typeof c.dropped === 'number' ? c.dropped : 0} server · ${this.clientDropped} client`);
    set('frames', `${this.framesPainted}${typeof c.chunk === 'number' ? ` · chunk ${c.chunk}` : ''}`);
    set('buffer', this.player ? fmtMs(this.player.bufferedMs()) : '–');
    set('decoder', this.player ? `${this.player.kind}${this.codec ? ` ${this.codec}` : ''}` : this.format);
  }

  // ---- API + stream

  async create() {
    const body = { prompt: this.prompt, format: this.format };
    if (this.seed !== undefined) body.seed = this.seed;
    if (this.seconds !== undefined) body.seconds = this.seconds;
    let info;
    try {
      info = await api('POST', '/v1/sessions', body);
    } catch (e) {
      this.fail(`could not start: ${e}`);
      return;
    }
    if (this.removed) {
      if (info && info.id) api('DELETE', `/v1/sessions/${encodeURIComponent(info.id)}`).catch(() => {});
      return;
    }
    if (!info || typeof info.id !== 'string' || typeof info.stream_url !== 'string') {
      this.fail('the server answered without a session id or stream_url');
      return;
    }
    this.id = info.id;
    this.element.dataset.sessionId = info.id;
    this.streamUrl = info.stream_url;
    if (typeof info.seed === 'number') this.seed = info.seed;
    if (typeof info.width === 'number') this.width = info.width;
    if (typeof info.height === 'number') this.height = info.height;
    if (typeof info.fps === 'number') this.fps = info.fps;
    this.fitScreen();
    if (typeof info.format === 'string') this.format = info.format;
    this.element.dataset.format = this.format;
    this.promptLabel.title = `${this.prompt}\nid ${info.id}${typeof info.seed === 'number' ? ` · seed ${info.seed}` : ''}`;
    this.setState(typeof info.state === 'string' ? info.state : 'queued');
    if (this.state === 'queued') this.pollWhileQueued();
    this.connect();
  }

  /** While queued, shows the queue position from GET /v1/sessions/{id}. */
  pollWhileQueued() {
    clearTimeout(this.pollTimer);
    this.pollTimer = setTimeout(async () => {
      if (this.state !== 'queued' || this.removed) return;
      try {
        const info = await api('GET', `/v1/sessions/${encodeURIComponent(this.id)}`);
        if (this.state !== 'queued' || !info) return;
        this.queuePosition = typeof info.queue_position === 'number' ? info.queue_position : null;
        if (info.state === 'failed') { this.fail(info.error ? String(info.error) : 'the session failed'); return; }
        this.setState(this.state);
      } catch (_) { /* transient: try again */ }
      this.pollWhileQueued();
    }, 1000);
  }

  connect(format) {
    let url;
    try {
      url = streamUrl(this.streamUrl, format);
    } catch (e) {
      this.fail(`bad stream_url ${this.streamUrl}`);
      return;
    }
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.fail(`cannot open the stream: ${e && e.message ? e.message : e}`);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.addEventListener('open', () => { if (this.ws === ws) this.updateControls(); });
    ws.addEventListener('message', (ev) => {
      if (this.ws !== ws) return;
      try {
        if (typeof ev.data === 'string') this.onEvent(ev.data);
        else this.onBinary(ev.data);
      } catch (e) {
        this.setError(`stream error: ${e && e.message ? e.message : e}`);
      }
    });
    ws.addEventListener('close', (ev) => { if (this.ws === ws) this.onClose(ev); });
    // 'error' carries no detail in browsers; 'close' follows with the code and reason.
  }

  onEvent(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (_) { this.setError('the server sent a text message that is not JSON'); return; }
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'init': this.onInit(msg); break;
      case 'chunk':
        this.chunk = msg;
        if (this.state === 'queued') this.setState('running');
        break;
      case 'prompt_switched':
        if (typeof msg.prompt === 'string') {
          this.prompt = msg.prompt;
          this.promptLabel.textContent = msg.prompt;
          this.setNote(`prompt switched at chunk ${msg.chunk}`);
        }
        break;
      case 'paused': this.setState('paused'); break;
      case 'resumed': this.setState('running'); break;
      case 'ended':
        this.endReason = typeof msg.reason === 'string' ? msg.reason : null;
        this.setState('ended');
        if (this.endReason === 'error') this.setError('generation failed on the server');
        if (this.player) this.player.end();
        break;
      case 'error':
        this.setError(`server: ${msg.code || 'error'}: ${msg.message || ''}`);
        break;
      default: break; // unknown events are ignored (forward compatible)
    }
  }

  onInit(msg) {
    this.codec = typeof msg.codec === 'string' ? msg.codec : '';
    if (msg.width > 0) this.width = msg.width;
    if (msg.height > 0) this.height = msg.height;
    if (msg.fps > 0) this.fps = msg.fps;
    this.fitScreen();
    if (this.player) this.player.close();
    const hooks = {
      onPaint: (now, n) => this.onPaint(now, n),
      onDrop: (n) => { this.clientDropped += n; },
      onWarn: (t) => this.setNote(t),
      onError: (t) => this.setError(t),
    };
    const format = msg.format === 'fmp4' ? 'fmp4' : 'annexb';
    const player = format === 'annexb'
      ? new WebCodecsPlayer(this.mountScreen('canvas'), hooks)
      : new MsePlayer(this.mountScreen('video'), hooks);
    this.player = player;
    this.element.dataset.player = player.kind;
    const ws = this.ws;
    player.init(msg).catch((e) => {
      if (this.player !== player) return;
      player.close();
      this.player = null;
      const why = e && e.message ? e.message : String(e);
      if (format === 'annexb' && !this.fellBack && MsePlayer.available()) {
        // WebCodecs cannot play this stream: reconnect as a new viewer asking for fMP4.
        this.fellBack = true;
        this.format = 'fmp4';
        this.element.dataset.format = 'fmp4';
        this.setNote(`${why}; falling back to MSE`);
        if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000, 'switching to fmp4');
        this.connect('fmp4');
      } else {
        this.fail(why);
      }
    });
  }

  onBinary(buf) {
    const msg = parseMessage(buf);
    if (msg.type !== MSG_INIT) {
      const now = performance.now();
      if (this.lastMediaAt !== null) {
        const d = now - this.lastMediaAt;
        this.chunkIntervalMs = this.chunkIntervalMs === null ? d : 0.8 * this.chunkIntervalMs + 0.2 * d;
      }
      this.lastMediaAt = now;
    }
    if (this.player) this.player.media(msg);
  }

  onPaint(now, n) {
    this.framesPainted += n;
    this.lastFrameTime = now;
    if (this.firstFrameMs === null) {
      this.firstFrameMs = now - this.startedAt;
      this.screen.classList.add('live');
    }
    for (let i = 0; i < n; i++) this.paintTimes.push(now);
  }

  onClose(ev) {
    this.ws = null;
    if (this.state === 'ended' || this.state === 'failed') {
      if (ev.code !== 1000 && ev.code !== 1001 && ev.code !== 1005) {
        this.setNote(`stream closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`);
      }
      this.updateControls();
      return;
    }
    const why = `stream closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ev.code === 1006 ? ': connection lost' : ''})`;
    this.setError(this.error ? `${this.error} — ${why}` : why);
    this.setState('closed');
    if (this.player) this.player.end();
  }

  fail(text) {
    this.setError(text);
    this.setState('failed');
    clearTimeout(this.pollTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(1000, 'client error'); } catch (_) { /* already closed */ }
    }
    if (!this.player && !this.canvas && !this.video) {
      this.screen.replaceChildren(el('div', { class: 'placeholder', text: 'no video' }));
    }
  }

  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    try {
      this.ws.send(JSON.stringify(obj));
      return true;
    } catch (_) {
      return false;
    }
  }

  // ---- controls

  async switchPrompt() {
    const p = this.switchInput.value.trim();
    if (!p || !this.id) return;
    if (utf8Bytes(p) > MAX_PROMPT_BYTES) { this.setError(`the prompt is over ${MAX_PROMPT_BYTES} bytes`); return; }
    this.switchBtn.disabled = true;
    try {
      const r = await api('POST', `/v1/sessions/${encodeURIComponent(this.id)}/prompt`, { prompt: p });
      this.setError(null);
      this.setNote(r && typeof r.applies_at_chunk === 'number'
        ? `new prompt applies at chunk ${r.applies_at_chunk}` : 'new prompt accepted');
      this.switchInput.value = '';
    } catch (e) {
      this.setError(`prompt switch failed: ${e}`);
    } finally {
      this.updateControls();
    }
  }

  togglePause() {
    const type = this.state === 'paused' ? 'resume' : 'pause';
    if (!this.send({ type })) this.setError('the stream is not connected');
    else this.pauseBtn.disabled = true; // re-enabled by the paused/resumed event
  }

  async stop() {
    if (!this.id || !LIVE_STATES.has(this.state)) return;
    this.send({ type: 'stop' });
    this.stopBtn.disabled = true;
    try {
      await api('DELETE', `/v1/sessions/${encodeURIComponent(this.id)}`);
    } catch (e) {
      // 404: the session already ended and was freed; anything else is worth showing.
      if (!(e instanceof ApiError && e.status === 404)) this.setError(`stop failed: ${e}`);
    }
    if (LIVE_STATES.has(this.state)) {
      this.endReason = 'stopped';
      this.setState('ended');
      if (this.player) this.player.end();
    }
  }

  /** With an API key, a plain link cannot authenticate: fetch the file with the header instead. */
  async onDownload(e) {
    if (!this.id) { e.preventDefault(); return; }
    const key = apiKey();
    if (!key) return;
    e.preventDefault();
    try {
      const res = await fetch(this.download.href, { headers: { Authorization: `Bearer ${key}` } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: `vmla-${this.id}.mp4` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      this.setError(`download failed: ${err && err.message ? err.message : err}`);
    }
  }

  remove() {
    if (this.removed) return;
    if (this.id && LIVE_STATES.has(this.state)) this.stop().catch(() => {});
    this.removed = true;
    clearTimeout(this.pollTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(1000, 'closed by the user'); } catch (_) { /* already closed */ }
    }
    if (this.player) this.player.close();
    this.element.remove();
    const i = test.sessions.indexOf(this);
    if (i >= 0) test.sessions.splice(i, 1);
    updateEmptyHint();
  }
}

// ------------------------------------------------------------------------------------------------
// The start form

function resolveFormat(choice) {
  if (choice === 'annexb' || choice === 'fmp4') return choice;
  if (WebCodecsPlayer.available()) return 'annexb';
  if (MsePlayer.available()) return 'fmp4';
  return 'annexb';
}

/** Validates the form values; returns {prompt, seed, seconds, format} or throws Error(text). */
function readOptions(opts) {
  const prompt = String(opts.prompt ?? '').trim();
  if (!prompt) throw new Error('enter a prompt');
  if (utf8Bytes(prompt) > MAX_PROMPT_BYTES) throw new Error(`the prompt is over ${MAX_PROMPT_BYTES} bytes`);
  const out = { prompt };
  const seed = String(opts.seed ?? '').trim();
  if (seed) {
    if (!/^\d+$/.test(seed) || Number(seed) > MAX_SEED) throw new Error(`the seed must be an integer from 0 to ${MAX_SEED}`);
    out.seed = Number(seed);
  }
  const secs = String(opts.seconds ?? '').trim();
  if (secs) {
    const v = Number(secs);
    if (!Number.isFinite(v) || v <= 0 || v > MAX_SECONDS) throw new Error(`seconds must be a number in (0, ${MAX_SECONDS}]`);
    out.seconds = v;
  }
  out.format = resolveFormat(String(opts.format || 'auto'));
  if (out.format === 'annexb' && !WebCodecsPlayer.available() && !MsePlayer.available()) {
    throw new Error('this browser has neither WebCodecs nor Media Source Extensions');
  }
  return out;
}

/** Starts a session from options (the form's values, or a test's); returns the Session. */
function startSession(opts) {
  const startedAt = performance.now();
  const formError = $('#form-error');
  let o;
  try {
    o = readOptions(opts);
  } catch (e) {
    if (formError) { formError.textContent = e.message; formError.hidden = false; }
    return null;
  }
  if (formError) formError.hidden = true;
  const s = new Session({ ...o, startedAt });
  test.sessions.push(s);
  $('#sessions').prepend(s.element);
  updateEmptyHint();
  s.create().catch((e) => s.fail(String(e)));
  return s;
}

function updateEmptyHint() {
  const hint = $('#empty');
  if (hint) hint.hidden = test.sessions.length > 0;
}

function setup() {
  const list = $('#prompt-examples');
  const buttons = $('#examples');
  for (const p of EXAMPLES) {
    list.append(el('option', { value: p }));
    buttons.append(el('button', {
      class: 'example', type: 'button', text: p,
      onclick: () => { $('#prompt').value = p; $('#prompt').focus(); },
    }));
  }

  const keyField = $('#api-key');
  keyField.value = loadKey();
  keyField.addEventListener('change', () => saveKey(keyField.value.trim()));

  const caps = [];
  caps.push(`WebCodecs ${WebCodecsPlayer.available() ? 'yes' : 'no'}`);
  caps.push(`MSE ${MsePlayer.available() ? 'yes' : 'no'}`);
  $('#caps').textContent = caps.join(' · ');

  $('#start-form').addEventListener('submit', (e) => {
    e.preventDefault();
    startSession({
      prompt: $('#prompt').value,
      seed: $('#seed').value,
      seconds: $('#seconds').value,
      format: $('#format').value,
    });
  });

  // One timer refreshes every tile's numbers; painting itself is driven by the players.
  setInterval(() => {
    for (const s of test.sessions) {
      try { s.renderStats(); } catch (_) { /* a tile being torn down */ }
    }
  }, 250);
  updateEmptyHint();
  test.ready = true;
}

window.addEventListener('error', (e) => showGlobalError(`error: ${e.message || e.error || 'unknown'}`));
window.addEventListener('unhandledrejection', (e) => {
  const r = e.reason;
  showGlobalError(`error: ${r && r.message ? r.message : String(r)}`);
});

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', setup);
else setup();
