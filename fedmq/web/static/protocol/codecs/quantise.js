/**
 * Value quantisers: a flat float32 vector to wire fields and back
 * (protocol/codecs/quantise.py, docs/PROTOCOL.md §7).
 *
 * floats: {val: <f4 | <f2 (m,)}; float16 saturates finite values at +-65504.
 * scaled integers (int8, qsgd): {q: |i1 (m,), scale: <f4 (nblocks,)}, x_hat[i] =
 * q[i] * scale[floor(i / block)], step = float32(max(peak / levels, 2^-126)) per block
 * (peak = the block's largest |x|, in float64), one ulp lower if levels * step would pass
 * float32's max. int8 rounds x / step half to even; qsgd rounds down and adds 1 when a
 * uniform draw u in [0, 1) is < the remainder (one draw per value, in order).
 */

import { fail, RejectReason } from '../errors.js';
import { decodeArray, encodeArray } from '../tensors.js';

export const F16_MAX = 65504;
export const F32_MAX = 3.4028234663852886e38;
export const MIN_STEP = 2 ** -126;
const { BAD_CODEC, NON_FINITE } = RejectReason;

/** Values for the wire: float16 saturates finite values (NaN/Inf pass through). */
export function toFloat(x, dtype) {
  if (dtype === '<f4') return x;
  return Float32Array.from(x, (v) => (Number.isFinite(v) ? Math.min(F16_MAX, Math.max(-F16_MAX, v)) : v));
}

export function blockCount(m, block) {
  if (m === 0) return 0;
  return block ? Math.ceil(m / block) : 1;
}

/** Round half to even (numpy's rint). */
function rint(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The next float32 towards zero of a positive float32 `x`. */
function nextDown32(x) {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] -= 1;
  return f[0];
}

/**
 * Fields for the 1-D Float32Array `x` under quantiser `q`; `random()` gives uniform
 * draws in [0, 1) for a stochastic one. Throws Error for NaN/Inf under integers.
 */
export function quantise(x, q, random = null) {
  if (q.floatDtype !== null) {
    const vals = toFloat(x, q.floatDtype);
    return { val: encodeArray(vals, q.floatDtype, [vals.length]) };
  }
  if (!x.every(Number.isFinite)) throw new Error('an integer quantiser cannot encode NaN or Inf');
  const m = x.length;
  const block = q.block || Math.max(m, 1);
  const nblocks = blockCount(m, block);
  const step = new Float32Array(nblocks);
  for (let b = 0; b < nblocks; b++) {
    let peak = 0;
    for (let i = b * block; i < Math.min(m, (b + 1) * block); i++) peak = Math.max(peak, Math.abs(x[i]));
    step[b] = Math.max(peak / q.levels, MIN_STEP);
    if (step[b] * q.levels > F32_MAX) step[b] = nextDown32(step[b]);
  }
  if (q.stochastic && random === null) throw new Error('a stochastic quantiser needs random()');
  const ints = new Int8Array(m);
  for (let i = 0; i < m; i++) {
    const ratio = x[i] / step[Math.floor(i / block)];
    let v;
    if (q.stochastic) {
      const low = Math.floor(ratio);
      v = low + (random() < ratio - low ? 1 : 0);
    } else v = rint(ratio);
    ints[i] = Math.min(q.levels, Math.max(-q.levels, v));
  }
  return { q: encodeArray(ints, '|i1', [m]), scale: encodeArray(step, '<f4', [nblocks]) };
}

function field(entry, key, dtype, count, what) {
  const obj = entry[key];
  if (obj === undefined || obj === null) fail(BAD_CODEC, `${what}: no '${key}' under this codec`);
  const arr = decodeArray(obj, `${what}.${key}`, count);
  if (arr.dtype !== dtype || arr.shape.length !== 1 || arr.shape[0] !== count) {
    fail(BAD_CODEC, `${what}.${key}: ${arr.dtype} [${arr.shape}], want ${dtype} (${count},)`);
  }
  return arr.values;
}

/**
 * `m` float32 values from quantise's fields. Throws WireError: bad_codec for a field
 * the quantiser does not write, a wrong dtype or count, |q| above the levels or a
 * step <= 0; non_finite when q * scale overflows; malformed, too_large or non_finite
 * from the array decoder.
 */
export function dequantise(entry, q, m, what) {
  if (q.floatDtype !== null) return field(entry, 'val', q.floatDtype, m, what);
  const ints = field(entry, 'q', '|i1', m, what);
  const block = q.block || Math.max(m, 1);
  const nblocks = blockCount(m, block);
  const step = field(entry, 'scale', '<f4', nblocks, what);
  if (!step.every((s) => s > 0)) fail(BAD_CODEC, `${what}.scale: steps must be > 0`);
  if (ints.some((v) => Math.abs(v) > q.levels)) fail(BAD_CODEC, `${what}.q: |q| > ${q.levels} levels`);
  const out = new Float32Array(m);
  for (let i = 0; i < m; i++) out[i] = ints[i] * step[Math.floor(i / block)];
  if (!out.every(Number.isFinite)) fail(NON_FINITE, `${what}: q times scale is not finite`);
  return out;
}
