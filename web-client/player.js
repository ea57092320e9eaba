// vmla web client: the two ways a tile plays a stream.
//
// WebCodecsPlayer (format "annexb"): each media message carries one chunk of H.264 access units.
// Every unit becomes an EncodedVideoChunk (key when it holds an IDR slice) fed to a VideoDecoder;
// decoded VideoFrames wait in a small queue and are painted on a <canvas> when their timestamp
// comes due, on requestAnimationFrame against performance.now(). Feeding is paced by the queue,
// so a server that runs ahead of real time costs memory for encoded bytes only. Every VideoFrame
// is closed exactly once (painted, skipped or discarded).
//
// MsePlayer (format "fmp4"): the type-1 init segment and then each moof+mdat fragment are appended
// to one SourceBuffer of a MediaSource attached to a muted <video>; appends queue while the buffer
// is updating, and playback is kept near the live edge of what is buffered.
//
// Both report to their owner through hooks: onPaint(nowMs, frames), onDrop(frames), onWarn(text),
// onError(text). Neither throws out of its event handlers.

import { MSG_INIT, MSG_MEDIA, splitAnnexB, isKeyAccessUnit } from './protocol.js';

// How far behind the newest received frame playback may fall before jumping ahead (ms).
const MAX_LAG_MS = 4000;
// Decoded frames held for painting, and decode requests in flight, at most.
const MAX_DECODED_FRAMES = 8;
const MAX_DECODE_QUEUE = 3;
// A frame that becomes ready this late (ms) means the stream stalled: re-anchor the clock.
const LATE_MS = 120;
// Extra delay added after each stall, up to a cap, so bursty delivery stops stuttering.
const JITTER_STEP_MS = 40;
const MAX_JITTER_MS = 400;
// MSE: where to sit behind the end of the buffer, and how much played media to keep.
const MSE_TARGET_LAG_S = 0.8;
const MSE_KEEP_BEHIND_S = 20;

function errorText(e) {
  if (e && typeof e.message === 'string' && e.message) return e.message;
  return String(e);
}

// ------------------------------------------------------------------------------------------------
// WebCodecs → canvas

export class WebCodecsPlayer {
  /** True when this browser has WebCodecs video decoding (it needs a secure context). */
  static available() {
    return typeof window !== 'undefined' && typeof window.VideoDecoder === 'function' &&
      typeof window.EncodedVideoChunk === 'function' && typeof window.VideoFrame === 'function';
  }

  constructor(canvas, hooks) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.hooks = hooks;
    this.decoder = null;
    this.config = null;
    this.fps = 16;
    this.encoded = []; // {chunk: EncodedVideoChunk, key: bool}, oldest first
    this.frames = []; // {frame: VideoFrame, due: ms on the performance.now() clock}
    this.needKey = true; // after (re)configuring, decoding must start at a key frame
    this.anchor = null; // {wall, ts}: frame timestamp ts (µs) is due at wall (ms)
    this.jitterMs = 0;
    this.painted = 0;
    this.decodeErrors = 0;
    this.ending = false;
    this.flushed = false;
    this.closed = false;
    this.rafId = 0;
    this.lastTick = 0;
    // requestAnimationFrame stops in hidden tabs (and can be sparse in some headless setups);
    // this timer keeps the queue moving, dropping what is late, so the decoder never stalls.
    this.watchdog = setInterval(() => {
      if (this.frames.length && performance.now() - this.lastTick > 150) this.tick();
    }, 100);
  }

  get kind() { return 'WebCodecs'; }

  /** Checks and configures the decoder from the stream's init message; rejects if unsupported. */
  async init(msg) {
    this.fps = msg.fps > 0 ? msg.fps : 16;
    if (msg.width > 0 && msg.height > 0) {
      this.canvas.width = msg.width;
      this.canvas.height = msg.height;
    }
    const config = { codec: msg.codec, optimizeForLatency: true };
    if (msg.width > 0 && msg.height > 0) {
      config.codedWidth = msg.width;
      config.codedHeight = msg.height;
    }
    // No `description`: the bitstream is Annex-B with in-band SPS/PPS.
    let support;
    try {
      support = await window.VideoDecoder.isConfigSupported(config);
    } catch (e) {
      throw new Error(`WebCodecs rejected the configuration for ${msg.codec}: ${errorText(e)}`);
    }
    if (!support || !support.supported) throw new Error(`WebCodecs cannot decode ${msg.codec}`);
    if (this.closed) return;
    this.config = config;
    this.createDecoder();
    this.pump();
  }

  createDecoder() {
    this.decoder = new window.VideoDecoder({
      output: (frame) => this.onOutput(frame),
      error: (e) => this.onDecoderError(e),
    });
    this.decoder.configure(this.config);
    // 'dequeue' (decode queue shrank) is newer than WebCodecs itself; tick() pumps as well.
    if (typeof this.decoder.addEventListener === 'function') {
      this.decoder.addEventListener('dequeue', () => this.pump());
    }
    this.needKey = true;
  }

  onDecoderError(e) {
    if (this.closed) return;
    this.decodeErrors += 1;
    if (this.decodeErrors > 3) {
      this.hooks.onError(`decoder failed: ${errorText(e)}`);
      this.close();
      return;
    }
    this.hooks.onWarn(`decoder error (${errorText(e)}); restarting at the next key frame`);
    try {
      if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
    } catch (_) { /* already closed */ }
    try {
      this.createDecoder();
    } catch (err) {
      this.hooks.onError(`cannot restart the decoder: ${errorText(err)}`);
      this.close();
    }
  }

  /** Takes one parsed binary message (protocol.parseMessage) of this stream. */
  media(msg) {
    if (this.closed || msg.type !== MSG_MEDIA) return;
    const units = splitAnnexB(msg.payload, msg.frames);
    const frameUs = 1e6 / this.fps;
    for (let i = 0; i < units.length; i++) {
      const key = isKeyAccessUnit(units[i]);
      // EncodedVideoChunk copies the bytes, so the message buffer can go.
      const chunk = new window.EncodedVideoChunk({
        type: key ? 'key' : 'delta',
        timestamp: Math.round(msg.ptsUs + i * frameUs),
        duration: Math.round(frameUs),
        data: units[i],
      });
      this.encoded.push({ chunk, key });
    }
    this.skipToLive();
    this.pump();
  }

  /** When far behind the newest frame received, jumps to the newest key frame, if there is one. */
  skipToLive() {
    const frameMs = 1000 / this.fps;
    if ((this.encoded.length + this.frames.length) * frameMs <= MAX_LAG_MS) return;
    let k = -1;
    for (let i = this.encoded.length - 1; i > 0; i--) {
      if (this.encoded[i].key) { k = i; break; }
    }
    if (k < 0) return;
    const dropped = k + this.frames.length;
    this.encoded.splice(0, k);
    for (const f of this.frames) f.frame.close();
    this.frames = [];
    this.anchor = null;
    this.hooks.onDrop(dropped);
  }

  /** Feeds the decoder while there is room in the decode and paint queues. */
  pump() {
    const d = this.decoder;
    if (this.closed || !d || d.state !== 'configured') return;
    while (this.encoded.length && d.decodeQueueSize < MAX_DECODE_QUEUE &&
           this.frames.length < MAX_DECODED_FRAMES) {
      const item = this.encoded.shift();
      if (this.needKey) {
        if (!item.key) { this.hooks.onDrop(1); continue; }
        this.needKey = false;
      }
      try {
        d.decode(item.chunk);
      } catch (e) {
        this.onDecoderError(e);
        return;
      }
    }
    if (this.ending && !this.encoded.length && !this.flushed) {
      this.flushed = true;
      d.flush().catch(() => { /* closed or reset meanwhile: nothing left to show */ });
    }
  }

  onOutput(frame) {
    if (this.closed) { frame.close(); return; }
    this.decodeErrors = 0;
    const now = performance.now();
    const frameMs = 1000 / this.fps;
    const last = this.frames.length ? this.frames[this.frames.length - 1].due : null;
    let due = this.anchor ? this.anchor.wall + (frame.timestamp - this.anchor.ts) / 1000 : NaN;
    const stalled = this.anchor !== null && due < now - LATE_MS;
    const outOfOrder = last !== null && due < last;
    const farAhead = due > Math.max(now, last === null ? now : last) + MAX_LAG_MS;
    if (!this.anchor || stalled || outOfOrder || farAhead) {
      // (Re)start the media clock: first frame, a stall (pause, slow network, dropped frames) or a
      // jump in timestamps. After a stall keep a little more in hand.
      if (stalled && this.painted > 0) this.jitterMs = Math.min(MAX_JITTER_MS, this.jitterMs + JITTER_STEP_MS);
      const wall = last !== null ? Math.max(now, last + frameMs) : now + (this.painted > 0 ? this.jitterMs : 0);
      this.anchor = { wall, ts: frame.timestamp };
      due = wall;
    }
    this.frames.push({ frame, due });
    this.schedule();
  }

  schedule() {
    if (this.rafId || this.closed) return;
    this.rafId = requestAnimationFrame(() => {
      this.rafId = 0;
      this.tick();
      if (this.frames.length) this.schedule();
    });
  }

  /** Paints the newest frame that is due; frames it passes over count as dropped. */
  tick() {
    if (this.closed) return;
    const now = performance.now();
    this.lastTick = now;
    let show = null;
    let skipped = 0;
    // Half a display refresh of slack, so a frame due just after this vsync is not held back.
    while (this.frames.length && this.frames[0].due <= now + 4) {
      const f = this.frames.shift();
      if (show) { show.frame.close(); skipped += 1; }
      show = f;
    }
    if (skipped) this.hooks.onDrop(skipped);
    if (show) {
      const frame = show.frame;
      try {
        const w = frame.displayWidth;
        const h = frame.displayHeight;
        if (w > 0 && h > 0 && (this.canvas.width !== w || this.canvas.height !== h)) {
          this.canvas.width = w;
          this.canvas.height = h;
        }
        this.ctx.drawImage(frame, 0, 0, this.canvas.width, this.canvas.height);
        this.painted += 1;
        this.hooks.onPaint(now, 1);
      } catch (e) {
        this.hooks.onWarn(`cannot paint a frame: ${errorText(e)}`);
      } finally {
        frame.close();
      }
    }
    this.pump();
  }

  /** Frames received but not yet painted, in milliseconds of video. */
  bufferedMs() {
    const pending = this.encoded.length + this.frames.length + (this.decoder ? this.decoder.decodeQueueSize : 0);
    return pending * 1000 / this.fps;
  }

  /** The stream ended: decode and show what is left, then flush the decoder. */
  end() {
    this.ending = true;
    this.pump();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.watchdog);
    if (this.rafId) cancelAnimationFrame(this.rafId);
    this.rafId = 0;
    for (const f of this.frames) f.frame.close();
    this.frames = [];
    this.encoded = [];
    try {
      if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
    } catch (_) { /* already closed */ }
  }
}

// ------------------------------------------------------------------------------------------------
// Media Source Extensions → <video>

function mediaSourceClass() {
  if (typeof window === 'undefined') return null;
  return window.MediaSource || window.ManagedMediaSource || null;
}

export class MsePlayer {
  static available() { return mediaSourceClass() !== null; }

  constructor(video, hooks) {
    this.video = video;
    this.hooks = hooks;
    this.ms = null;
    this.sb = null;
    this.queue = []; // Uint8Array: init segment, then fragments
    this.fps = 16;
    this.appends = 0;
    this.ending = false;
    this.closed = false;
    this.presented = 0;
    this.droppedSeen = 0;
    this.timer = 0;
    this.objectUrl = null;
    this.onUpdateEnd = () => this.afterAppend();
    this.onSbError = () => this.hooks.onWarn('the browser rejected a media fragment');
  }

  get kind() { return 'MSE'; }

  async init(msg) {
    const MS = mediaSourceClass();
    if (!MS) throw new Error('Media Source Extensions are not available in this browser');
    if (!msg.mime || !MS.isTypeSupported(msg.mime)) throw new Error(`MSE cannot play ${msg.mime || '(no mime)'}`);
    this.fps = msg.fps > 0 ? msg.fps : 16;
    const ms = new MS();
    this.ms = ms;
    if (MS !== window.MediaSource) this.video.disableRemotePlayback = true; // ManagedMediaSource needs it
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('MediaSource did not open')), 5000);
      ms.addEventListener('sourceopen', () => { clearTimeout(t); resolve(); }, { once: true });
      this.objectUrl = URL.createObjectURL(ms);
      this.video.src = this.objectUrl;
    });
    URL.revokeObjectURL(this.objectUrl); // the element holds the source now
    this.objectUrl = null;
    if (this.closed) return;
    this.sb = ms.addSourceBuffer(msg.mime);
    this.sb.addEventListener('updateend', this.onUpdateEnd);
    this.sb.addEventListener('error', this.onSbError);
    this.countFrames();
    this.timer = setInterval(() => this.keepLive(), 250);
    this.pump();
  }

  media(msg) {
    if (this.closed) return;
    if (msg.type !== MSG_INIT && msg.type !== MSG_MEDIA) return;
    this.queue.push(msg.payload);
    this.pump();
  }

  pump() {
    const sb = this.sb;
    if (this.closed || !sb || sb.updating || this.ms.readyState !== 'open') return;
    if (this.queue.length) {
      const buf = this.queue.shift();
      try {
        sb.appendBuffer(buf);
      } catch (e) {
        if (e && e.name === 'QuotaExceededError' && this.evict(true)) {
          this.queue.unshift(buf); // retried after the removal's updateend
        } else {
          this.hooks.onError(`cannot append media: ${errorText(e)}`);
          this.close();
        }
      }
    } else if (this.ending) {
      try { this.ms.endOfStream(); } catch (_) { /* already ended or closed */ }
      this.ending = false;
    }
  }

  afterAppend() {
    if (this.closed) return;
    this.appends += 1;
    this.keepLive();
    if (this.appends % 16 === 0 && this.evict(false)) return; // pump() runs on the removal's updateend
    this.pump();
  }

  /** Removes media well behind the playhead; true when a removal was started. */
  evict(force) {
    const sb = this.sb;
    const b = this.video.buffered;
    if (!sb || sb.updating || !b.length) return false;
    const keep = force ? 2 : MSE_KEEP_BEHIND_S;
    const until = this.video.currentTime - keep;
    if (until <= b.start(0) + 0.5) return false;
    try {
      sb.remove(b.start(0), until);
      return true;
    } catch (_) {
      return false;
    }
  }

  /** Seeks to the live edge when far behind it, or across a gap left by dropped media. */
  keepLive() {
    if (this.closed || !this.sb) return;
    const v = this.video;
    const b = v.buffered;
    if (!b.length) return;
    const t = v.currentTime;
    const lastStart = b.start(b.length - 1);
    const end = b.end(b.length - 1);
    let inRange = false;
    for (let i = 0; i < b.length; i++) if (t >= b.start(i) && t < b.end(i)) inRange = true;
    try {
      if (end - t > MAX_LAG_MS / 1000) {
        v.currentTime = Math.max(lastStart, end - MSE_TARGET_LAG_S);
      } else if (!inRange && t < lastStart) {
        v.currentTime = lastStart;
      }
    } catch (_) { /* seeking can throw while the element is being torn down */ }
    if (v.paused && !v.ended) v.play().catch(() => { /* autoplay refused; muted video should be allowed */ });
    const q = typeof v.getVideoPlaybackQuality === 'function' ? v.getVideoPlaybackQuality() : null;
    if (q && q.droppedVideoFrames > this.droppedSeen) {
      this.hooks.onDrop(q.droppedVideoFrames - this.droppedSeen);
      this.droppedSeen = q.droppedVideoFrames;
    }
    if (!this.hasVfc && q && q.totalVideoFrames > this.presented) {
      const n = q.totalVideoFrames - this.presented;
      this.presented = q.totalVideoFrames;
      this.hooks.onPaint(performance.now(), n);
    }
  }

  /** Counts presented frames with requestVideoFrameCallback where the browser has it. */
  countFrames() {
    const v = this.video;
    this.hasVfc = typeof v.requestVideoFrameCallback === 'function';
    if (!this.hasVfc) return;
    const onFrame = (now, meta) => {
      if (this.closed) return;
      const total = meta && typeof meta.presentedFrames === 'number' ? meta.presentedFrames : this.presented + 1;
      const n = Math.max(1, total - this.presented);
      this.presented = Math.max(this.presented, total);
      this.hooks.onPaint(performance.now(), n);
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  }

  bufferedMs() {
    const b = this.video.buffered;
    if (!b.length) return 0;
    return Math.max(0, (b.end(b.length - 1) - this.video.currentTime) * 1000);
  }

  end() {
    this.ending = true;
    this.pump();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.queue = [];
    if (this.sb) {
      this.sb.removeEventListener('updateend', this.onUpdateEnd);
      this.sb.removeEventListener('error', this.onSbError);
    }
    if (this.objectUrl) URL.revokeObjectURL(this.objectUrl);
    // Keep the last picture on screen; just stop playback.
    try { this.video.pause(); } catch (_) { /* ignore */ }
  }
}
