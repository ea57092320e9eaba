// vmla web client: the binary side of the wire protocol (proto/PROTOCOL.md, "Server → client,
// binary"). Pure functions with no DOM access, so they can be checked under Node as well.
//
// Every media message starts with a 28-byte big-endian header:
//   0 magic 0x56 'V' | 1 version 1 | 2 type (1 init segment, 2 media) | 3 flags (bit 0 keyframe
//   first, bit 1 discontinuity) | 4 u32 sequence | 8 u32 chunk index | 12 u64 pts (µs) of the
//   first frame | 20 u16 frame count | 22 format (1 annexb, 2 fmp4) | 23 reserved | 24 u32 payload
//   length L | 28 L bytes of payload.
// An Annex-B payload is, per frame, a u32 length followed by one access unit with start codes.
// An fMP4 payload is one moof+mdat fragment (type 2) or the ftyp+moov init segment (type 1).

export const HEADER_BYTES = 28;
export const MAGIC = 0x56;
export const VERSION = 1;
export const MSG_INIT = 1;
export const MSG_MEDIA = 2;
export const FLAG_KEYFRAME = 1;
export const FLAG_DISCONTINUITY = 2;
export const FORMAT_ANNEXB = 1;
export const FORMAT_FMP4 = 2;

/** Thrown for any message that does not follow the binary layout. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/**
 * Parses one binary message. `buf` is an ArrayBuffer. Returns
 * {type, keyframe, discontinuity, sequence, chunk, ptsUs, frames, format, payload} where payload
 * is a Uint8Array view into `buf` (no copy). Throws ProtocolError when the message is malformed.
 */
export function parseMessage(buf) {
  if (!(buf instanceof ArrayBuffer)) throw new ProtocolError('binary message is not an ArrayBuffer');
  if (buf.byteLength < HEADER_BYTES) {
    throw new ProtocolError(`binary message of ${buf.byteLength} bytes is shorter than the header`);
  }
  const dv = new DataView(buf);
  const magic = dv.getUint8(0);
  if (magic !== MAGIC) throw new ProtocolError(`bad magic 0x${magic.toString(16)}`);
  const version = dv.getUint8(1);
  if (version !== VERSION) throw new ProtocolError(`unsupported protocol version ${version}`);
  const type = dv.getUint8(2);
  if (type !== MSG_INIT && type !== MSG_MEDIA) throw new ProtocolError(`unknown message type ${type}`);
  const flags = dv.getUint8(3);
  // u64 pts as two u32 halves: exact up to 2^53, which is far beyond any stream length.
  const ptsUs = dv.getUint32(12) * 4294967296 + dv.getUint32(16);
  const format = dv.getUint8(22);
  if (format !== FORMAT_ANNEXB && format !== FORMAT_FMP4) throw new ProtocolError(`unknown format ${format}`);
  const length = dv.getUint32(24);
  if (length > buf.byteLength - HEADER_BYTES) {
    throw new ProtocolError(`payload length ${length} exceeds the ${buf.byteLength - HEADER_BYTES} bytes received`);
  }
  return {
    type,
    keyframe: (flags & FLAG_KEYFRAME) !== 0,
    discontinuity: (flags & FLAG_DISCONTINUITY) !== 0,
    sequence: dv.getUint32(4),
    chunk: dv.getUint32(8),
    ptsUs,
    frames: dv.getUint16(20),
    format,
    payload: new Uint8Array(buf, HEADER_BYTES, length),
  };
}

/**
 * Splits an Annex-B payload into its access units: returns an array of Uint8Array views, one a
 * frame, in order. Throws ProtocolError if a length runs past the payload or the count differs
 * from `expectedFrames` (when given).
 */
export function splitAnnexB(payload, expectedFrames) {
  const units = [];
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  let off = 0;
  while (off < payload.byteLength) {
    if (payload.byteLength - off < 4) throw new ProtocolError('truncated frame length in Annex-B payload');
    const len = dv.getUint32(off);
    off += 4;
    if (len > payload.byteLength - off) throw new ProtocolError(`frame of ${len} bytes runs past the payload`);
    units.push(payload.subarray(off, off + len));
    off += len;
  }
  if (expectedFrames !== undefined && units.length !== expectedFrames) {
    throw new ProtocolError(`payload holds ${units.length} frames, header says ${expectedFrames}`);
  }
  return units;
}

/**
 * Returns the NAL unit types (nal_unit_type, low 5 bits of the first NAL byte) found after each
 * 3- or 4-byte start code of an Annex-B access unit.
 */
export function nalTypes(au) {
  const types = [];
  const n = au.length;
  let i = 0;
  while (i + 3 <= n) {
    // A start code is 00 00 01 (a 4-byte 00 00 00 01 ends with the same three bytes).
    if (au[i] === 0 && au[i + 1] === 0 && au[i + 2] === 1) {
      if (i + 3 < n) types.push(au[i + 3] & 0x1f);
      i += 3;
    } else {
      i += 1;
    }
  }
  return types;
}

/** True when the access unit holds an IDR slice (NAL type 5): decodable on its own. */
export function isKeyAccessUnit(au) {
  return nalTypes(au).includes(5);
}

/** Formats a byte count as B, KiB, MiB or GiB with a sensible number of digits. */
export function formatBytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  if (u === 0) return `${v} B`;
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[u]}`;
}
