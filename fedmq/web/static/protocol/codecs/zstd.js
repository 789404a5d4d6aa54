/**
 * The lossless entropy stage (protocol/codecs/entropy.py, docs/PROTOCOL.md §7): the
 * msgpack list of tensor entries inside one zstd frame, as the single entry
 * {zstd: <one frame>, size: <bytes of the list>}.
 *
 * Frame rules both sides enforce: exactly one frame (no trailing bytes), declaring its
 * content size equal to `size`, no dictionary id, no content checksum, a window of at
 * most 2^27 bytes; `size` within the receiver's bound, so nothing is inflated past it.
 *
 * Writing: this build writes the frame's blocks raw (RFC 8878 §3.1.1.2, Raw_Block), a
 * valid frame any decoder reads, without entropy coding: `+zstd` costs a few bytes
 * here instead of saving some (compression would need a zstd encoder library in the
 * page). Reading: fzstd (pure JavaScript, MIT), loaded on first use; where it cannot
 * be loaded, a zstd update is refused as bad_codec.
 */

import { fail, RejectReason } from '../errors.js';
import { isInt, isMap } from '../fields.js';
import { MsgpackError, pack, unpack } from '../msgpack.js';

const MAGIC = 0xfd2fb528;
const MAX_BLOCK = 128 * 1024;
const MAX_WINDOW = 2 ** 27;
const { BAD_CODEC, MALFORMED, TOO_LARGE } = RejectReason;

/** One zstd frame holding `content` in raw blocks, its content size declared (8 bytes). */
export function rawFrame(content) {
  const blocks = Math.max(1, Math.ceil(content.length / MAX_BLOCK));
  const out = new Uint8Array(4 + 1 + 8 + 3 * blocks + content.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC, true);
  out[4] = 0xe0; // FCS 8 bytes, single segment, no checksum, no dictionary
  v.setBigUint64(5, BigInt(content.length), true);
  let at = 13;
  for (let b = 0; b < blocks; b++) {
    const piece = content.subarray(b * MAX_BLOCK, (b + 1) * MAX_BLOCK);
    const head = (piece.length << 3) | (b === blocks - 1 ? 1 : 0); // Raw_Block type 0
    out[at] = head & 0xff;
    out[at + 1] = (head >>> 8) & 0xff;
    out[at + 2] = (head >>> 16) & 0xff;
    out.set(piece, at + 3);
    at += 3 + piece.length;
  }
  return out;
}

/** The wrapper entry for `entries` (`level` is carried by the spec; raw blocks ignore it). */
export function wrap(entries) {
  const inner = pack(entries);
  return { zstd: rawFrame(inner), size: inner.length };
}

/** Content size and end offset of the one frame in `blob`; throws WireError(malformed). */
export function frameLayout(blob) {
  const bad = (why) => fail(MALFORMED, `zstd: ${why}`);
  if (blob.length < 6) bad('not a zstd frame');
  const v = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  if (v.getUint32(0, true) !== MAGIC) bad('not a zstd frame');
  const flags = blob[4];
  const fcsFlag = flags >> 6;
  const single = (flags >> 5) & 1;
  if (flags & 0x08) bad('reserved bit set');
  if (flags & 0x04) bad('frames with a content checksum are refused');
  if (flags & 0x03) bad('frames with a dictionary are refused');
  let at = 5;
  let window = 0;
  if (!single) {
    const exp = blob[at] >> 3;
    const base = 2 ** (10 + exp);
    window = base + (base / 8) * (blob[at] & 7);
    at += 1;
  }
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  if (fcsBytes === 0) bad('frame declares no content size');
  if (at + fcsBytes > blob.length) bad('frame header cut short');
  let size;
  if (fcsBytes === 1) size = blob[at];
  else if (fcsBytes === 2) size = v.getUint16(at, true) + 256;
  else if (fcsBytes === 4) size = v.getUint32(at, true);
  else size = Number(v.getBigUint64(at, true));
  at += fcsBytes;
  if (single) window = size;
  if (window > MAX_WINDOW) bad(`window of ${window} bytes is too large`);
  for (let last = 0; !last;) {
    if (at + 3 > blob.length) bad('block header cut short');
    const head = blob[at] | (blob[at + 1] << 8) | (blob[at + 2] << 16);
    last = head & 1;
    const type = (head >> 1) & 3;
    const length = head >>> 3;
    if (type === 3) bad('reserved block type');
    at += 3 + (type === 1 ? 1 : length);
    if (at > blob.length) bad('block cut short');
  }
  if (at !== blob.length) bad(`${blob.length - at} bytes after the frame`);
  return { size, end: at };
}

let fzstd = null;

/** Load the decompressor (fzstd); false when this environment cannot. */
export async function loadZstd() {
  if (fzstd === null) {
    try {
      fzstd = await import('fzstd');
    } catch {
      fzstd = false;
    }
  }
  return fzstd !== false;
}

/** Whether `unwrap` can inflate here (after `loadZstd()` resolved true). */
export const zstdReady = () => Boolean(fzstd);

/**
 * The inner entry list of a wrapper entry, inflating at most `maxSize` bytes. Throws
 * WireError: bad_codec if `entries` is not one wrapper entry or no decompressor is
 * loaded; too_large for `size` above `maxSize`; malformed for a frame that breaks the
 * rules above or does not inflate to exactly `size` bytes of a msgpack list of maps.
 */
export function unwrap(entries, maxSize) {
  if (entries.length !== 1 || !isMap(entries[0]) || !('zstd' in entries[0])) {
    fail(BAD_CODEC, "zstd: want one {'zstd', 'size'} entry");
  }
  const { zstd: blob, size } = entries[0];
  if (!(blob instanceof Uint8Array) || !isInt(size)) fail(MALFORMED, "zstd: 'zstd' must be bytes and 'size' an int");
  if (!(size >= 0 && size <= maxSize)) fail(TOO_LARGE, `zstd: size ${size} outside [0, ${maxSize}]`);
  if (!fzstd) fail(BAD_CODEC, 'zstd: no decompressor in this build (call loadZstd first)');
  const { size: declared } = frameLayout(blob);
  if (declared !== Number(size)) fail(MALFORMED, `zstd: frame declares ${declared} != ${size}`);
  let inner;
  try {
    inner = fzstd.decompress(blob);
  } catch (err) {
    fail(MALFORMED, `zstd: ${err.message}`);
  }
  if (inner.length !== declared) fail(MALFORMED, `zstd: inflated ${inner.length} != ${size} bytes`);
  let obj;
  try {
    obj = unpack(inner);
  } catch (err) {
    if (err instanceof MsgpackError) fail(MALFORMED, `zstd: inner list not msgpack (${err.message})`);
    throw err;
  }
  if (!Array.isArray(obj) || !obj.every(isMap)) fail(MALFORMED, 'zstd: inner payload must be a list of maps');
  return obj;
}
