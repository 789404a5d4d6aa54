/**
 * Sorted, unique indices as LEB128 varints of their gaps (protocol/codecs/indices.py):
 * i_0 < i_1 < ... travel as g_0 = i_0, g_j = i_j - i_(j-1) - 1, each an unsigned LEB128
 * varint (7 bits a byte, low group first, high bit = more follow), concatenated into
 * one `|u1` array. Any decodable stream names a strictly increasing sequence.
 */

import { fail, RejectReason } from '../errors.js';
import { decodeArray, encodeArray } from '../tensors.js';

export const MAX_VARINT_BYTES = 5;
export const MAX_NUMEL = 2 ** 32 - 1;
const { BAD_CODEC } = RejectReason;

/** Strictly increasing indices (< 2^32) as one `|u1` array map. */
export function encodeIndices(idx) {
  const out = [];
  let prev = -1;
  for (const i of idx) {
    let gap = i - prev - 1;
    if (gap < 0 || i >= MAX_NUMEL) throw new RangeError(`indices must be strictly increasing and < ${MAX_NUMEL}`);
    prev = i;
    while (gap >= 0x80) {
      out.push((gap % 0x80) | 0x80);
      gap = Math.floor(gap / 0x80);
    }
    out.push(gap);
  }
  const bytes = Uint8Array.from(out);
  return encodeArray(bytes, '|u1', [bytes.length]);
}

/**
 * `count` strictly increasing indices, all < `numel`. Throws WireError: malformed for an
 * undecodable array, bad_codec for a stream that is truncated, overlong, of the wrong
 * count or out of range.
 */
export function decodeIndices(obj, count, numel, what) {
  if (obj === undefined || obj === null) fail(BAD_CODEC, `${what}: no 'idx' under a top-k codec`);
  const arr = decodeArray(obj, `${what}.idx`, MAX_VARINT_BYTES * count);
  if (arr.dtype !== '|u1' || arr.shape.length !== 1) fail(BAD_CODEC, `${what}.idx: want a 1-D |u1 array`);
  if (numel > MAX_NUMEL) fail(BAD_CODEC, `${what}: ${numel} elements cannot be indexed`);
  const data = arr.values;
  let ends = 0;
  for (const b of data) if (b < 0x80) ends++;
  if (ends !== count || (count && data[data.length - 1] >= 0x80)) fail(BAD_CODEC, `${what}.idx: want ${count} whole varints`);
  const idx = new Float64Array(count);
  const gaps = new Float64Array(count);
  let overlong = false;
  for (let j = 0, at = 0; j < count; j++) {
    let gap = 0;
    let scale = 1;
    const start = at;
    for (;;) {
      const b = data[at++];
      gap += (b & 0x7f) * scale;
      scale *= 0x80;
      if (b < 0x80) break;
    }
    const length = at - start;
    if (length > MAX_VARINT_BYTES || (length > 1 && data[at - 1] === 0)) overlong = true;
    gaps[j] = gap;
  }
  if (overlong) fail(BAD_CODEC, `${what}.idx: overlong varint`);
  let prev = -1;
  for (let j = 0; j < count; j++) {
    if (gaps[j] >= numel) fail(BAD_CODEC, `${what}.idx: index beyond ${numel} elements`);
    prev += gaps[j] + 1;
    idx[j] = prev;
  }
  if (count && prev >= numel) fail(BAD_CODEC, `${what}.idx: index beyond ${numel} elements`);
  return idx;
}
