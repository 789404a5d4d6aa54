/**
 * Arrays on the wire: `{dtype, shape, data}` with raw little-endian bytes, row-major
 * (protocol/tensors.py, docs/PROTOCOL.md §5), and the model digest (§6).
 *
 * A decoded array is `{dtype, shape, values}` with `values` a typed array owned by the
 * caller (copied out of the payload, so it is aligned): Float32Array for `<f4` and for
 * `<f2` (widened exactly), Float64Array, Int8Array, Uint8Array, Int32Array, Uint32Array,
 * BigInt64Array. Named tensors are `{name, shape, data: Float32Array}` in model order.
 */

import { fail, RejectReason } from './errors.js';
import { isInt, isMap, strLength } from './fields.js';
import { floatToHalf, halfToFloat } from './float16.js';
import { Sha256, toHex } from './sha256.js';

const { MALFORMED, NON_FINITE, TOO_LARGE } = RejectReason;

/** dtype -> [bytes per element, typed array]; `<f2` is read through halfToFloat. */
export const DTYPES = Object.freeze({
  '<f4': [4, Float32Array], '<f2': [2, Uint16Array], '<f8': [8, Float64Array],
  '|i1': [1, Int8Array], '|u1': [1, Uint8Array], '<i4': [4, Int32Array],
  '<u4': [4, Uint32Array], '<i8': [8, BigInt64Array],
});
const FLOATS = new Set(['<f4', '<f2', '<f8']);
export const MAX_DIMS = 8;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const MAX_INTP = 2n ** 63n - 1n;

export const numel = (shape) => shape.reduce((a, b) => a * b, 1);

/** Little-endian bytes of a typed array (a copy). */
export function bytesOf(typed) {
  const out = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength).slice();
  if (!LITTLE_ENDIAN && typed.BYTES_PER_ELEMENT > 1) {
    for (let i = 0; i < out.length; i += typed.BYTES_PER_ELEMENT) out.subarray(i, i + typed.BYTES_PER_ELEMENT).reverse();
  }
  return out;
}

/** `values` (Float32Array etc.) as the wire map, `dtype` naming how it travels. */
export function encodeArray(values, dtype, shape) {
  if (!(dtype in DTYPES)) throw new TypeError(`dtype ${dtype} cannot travel`);
  if (numel(shape) !== values.length) throw new RangeError(`shape [${shape}] for ${values.length} values`);
  let typed = values;
  if (dtype === '<f2') {
    typed = new Uint16Array(values.length);
    for (let i = 0; i < values.length; i++) typed[i] = floatToHalf(values[i]);
  } else if (!(values instanceof DTYPES[dtype][1])) {
    typed = DTYPES[dtype][1].from(values);
  }
  return { dtype, shape: [...shape], data: bytesOf(typed) };
}

/** numpy refuses a zero-size shape whose other dimensions overflow its index type. */
function numpyRefuses(shape, itemsize) {
  let size = BigInt(itemsize);
  for (const d of shape) {
    const big = BigInt(d);
    if (big > MAX_INTP) return true;
    if (big !== 0n) size *= big;
  }
  return size > MAX_INTP;
}

/**
 * Rebuild one array from encodeArray's map. Throws WireError: malformed for wrong
 * types or a byte count that does not match the shape; too_large above `maxElements`;
 * non_finite for NaN/Inf in a float array.
 */
export function decodeArray(obj, what, maxElements = null) {
  if (!isMap(obj)) fail(MALFORMED, `${what}: expected a map`);
  const { dtype, shape, data } = obj;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPES, dtype)) fail(MALFORMED, `${what}: dtype ${dtype} not allowed`);
  if (!Array.isArray(shape) || shape.length > MAX_DIMS) fail(MALFORMED, `${what}: shape must be a list of <= 8 ints`);
  if (!shape.every((d) => isInt(d) && d >= 0)) fail(MALFORMED, `${what}: shape has a non-count`);
  if (!(data instanceof Uint8Array)) fail(MALFORMED, `${what}: data must be binary`);
  const [itemsize, Typed] = DTYPES[dtype];
  const count = shape.reduce((a, d) => a * Number(d), 1);
  if (maxElements !== null && count > maxElements) fail(TOO_LARGE, `${what}: ${count} elements > ${maxElements}`);
  if (data.length !== count * itemsize) fail(MALFORMED, `${what}: ${data.length} bytes for shape [${shape}] of ${dtype}`);
  if (count === 0 && numpyRefuses(shape, itemsize)) fail(MALFORMED, `${what}: shape [${shape}] too large`);
  const own = data.slice();
  if (!LITTLE_ENDIAN && itemsize > 1) {
    for (let i = 0; i < own.length; i += itemsize) own.subarray(i, i + itemsize).reverse();
  }
  let values = new Typed(own.buffer, 0, count);
  if (dtype === '<f2') values = Float32Array.from(values, halfToFloat);
  if (FLOATS.has(dtype)) {
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) fail(NON_FINITE, `${what}: NaN or Inf`);
    }
  }
  return { dtype, shape: shape.map(Number), values };
}

/** Named float32 tensors as the wire list `[{name, dtype, shape, data}]` (`dtype` <f4 or <f2). */
export function encodeWeights(tensors, dtype = '<f4') {
  return tensors.map((t) => ({ name: t.name, ...encodeArray(t.data, dtype, t.shape) }));
}

/**
 * Named float32 tensors from a model's list: float dtypes only, unique names, `<f2`
 * widened, `<f8` narrowed (an overflow is non_finite). Throws WireError.
 */
export function decodeWeights(list, maxElements = null) {
  if (!Array.isArray(list) || list.length === 0) fail(MALFORMED, 'tensors: expected a non-empty list');
  const out = [];
  const seen = new Set();
  let budget = maxElements;
  list.forEach((entry, i) => {
    const name = isMap(entry) ? entry.name : undefined;
    if (typeof name !== 'string' || !name || strLength(name) > 256) fail(MALFORMED, `tensors[${i}]: bad name`);
    if (seen.has(name)) fail(MALFORMED, `tensors: duplicate name '${name}'`);
    seen.add(name);
    const arr = decodeArray(entry, `tensor '${name}'`, budget);
    if (!FLOATS.has(arr.dtype)) fail(MALFORMED, `tensor '${name}': weights must be floats`);
    const data = arr.values instanceof Float32Array ? arr.values : Float32Array.from(arr.values);
    if (arr.dtype === '<f8' && !data.every(Number.isFinite)) fail(NON_FINITE, `tensor '${name}': overflows float32`);
    out.push({ name, shape: arr.shape, data });
    if (budget !== null) budget -= arr.values.length;
  });
  return out;
}

/** Python's str(tuple(shape)): `()`, `(n,)`, `(a, b)`. */
export const shapeText = (shape) => (shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`);

const utf8 = new TextEncoder();

/** The model id (§6): first 32 hex digits of SHA-256 over name|shape| and float32 LE values. */
export function weightsDigest(tensors) {
  const h = new Sha256();
  for (const t of tensors) {
    h.update(utf8.encode(`${t.name}|${shapeText(t.shape)}|`));
    h.update(bytesOf(Float32Array.from(t.data)));
  }
  return toHex(h.digest()).slice(0, 32);
}

/** Float32 elements in `tensors`. */
export const numElements = (tensors) => tensors.reduce((n, t) => n + t.data.length, 0);
