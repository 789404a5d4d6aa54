/**
 * Update codecs: how an agent writes its weight delta into an update, and how it is
 * read back (protocol/compress.py, docs/PROTOCOL.md §7). One entry per tensor, in model
 * order, each naming its tensor:
 *
 *   none / fp16        {name, dtype, shape, data}           (dtype <f4 / <f2)
 *   int8 / qsgd        {name, shape, q, scale}
 *   topk (+fp16)       {name, shape, idx, val}
 *   topk + int8/qsgd   {name, shape, idx, q, scale}
 *   +zstd              the whole list becomes one {zstd, size} entry (codecs/zstd.js)
 *
 * A delta is named float32 tensors [{name, shape, data: Float32Array}] in model order;
 * `shapes` are [{name, shape}] (a model's `weights` serve). Encoding is deterministic
 * given `random`; decoding checks the spec, names, shapes, dtypes, counts, indices,
 * steps and declared sizes before it fills a tensor, and throws only WireError.
 */

import { fail, RejectReason } from '../errors.js';
import { isMap } from '../fields.js';
import { decodeArray, encodeArray, numel } from '../tensors.js';
import { decodeIndices, encodeIndices, MAX_NUMEL } from './indices.js';
import { blockCount, dequantise, quantise, toFloat } from './quantise.js';
import { parseCodec } from './spec.js';
import { unwrap, wrap } from './zstd.js';

const { BAD_CODEC, MALFORMED, TENSOR_MISMATCH } = RejectReason;

/** Null when this build can encode `spec`, else why not (an agent then declines the round). */
export function codecProblem(spec) {
  try {
    parseCodec(spec);
    return null;
  } catch (err) {
    return `codec '${spec}': ${err.message}`;
  }
}

/** The indices of the k largest |x| (ties: lowest index first), ascending. */
export function topIndices(x, k) {
  if (k === 0) return [];
  const mags = Float32Array.from(x, Math.abs).sort();
  const threshold = mags[x.length - k];
  const idx = [];
  let ties = k;
  for (let i = 0; i < x.length; i++) if (Math.abs(x[i]) > threshold) ties--;
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]);
    if (a > threshold) idx.push(i);
    else if (a === threshold && ties > 0) { idx.push(i); ties--; }
  }
  return idx;
}

function encodeTensor(t, pipe, random) {
  const x = Float32Array.from(t.data);
  const dtype = pipe.quantiser.floatDtype;
  if (pipe.topk === null && dtype !== null) return { name: t.name, ...encodeArray(toFloat(x, dtype), dtype, t.shape) };
  const fields = {};
  let values = x;
  if (pipe.topk !== null) {
    if (!x.every(Number.isFinite)) throw new Error(`${t.name}: top-k cannot rank NaN or Inf`);
    if (x.length > MAX_NUMEL) throw new Error(`${t.name}: ${x.length} elements are too many to sparsify`);
    const idx = topIndices(x, pipe.kept(x.length));
    fields.idx = encodeIndices(idx);
    values = Float32Array.from(idx, (i) => x[i]);
  }
  return { name: t.name, shape: [...t.shape], ...fields, ...quantise(values, pipe.quantiser, random) };
}

/**
 * The update's tensor entries for `delta` under codec `spec`. `random` () => [0, 1)
 * drives qsgd's stochastic rounding: pass numpy's Generator.random for the agent's
 * default_rng([seed, round, index]) stream to match a Python agent bit for bit.
 * Throws Error for a bad spec, a missing `random` under qsgd, or NaN/Inf under a codec
 * that cannot carry them.
 */
export function encodeDelta(delta, spec, { random = null } = {}) {
  const pipe = parseCodec(spec);
  if (pipe.stochastic && random === null) throw new Error(`codec '${spec}' needs random()`);
  const entries = delta.map((t) => encodeTensor(t, pipe, random));
  return pipe.zstdLevel !== null ? [wrap(entries)] : entries;
}

/** An upper bound on the msgpack entry list `pipe` writes for `shapes` (compress.py). */
export function maxInnerSize(pipe, shapes) {
  let total = 16;
  for (const { name, shape } of shapes) {
    const kept = pipe.kept(numel(shape));
    const block = pipe.quantiser.block || Math.max(kept, 1);
    const indexBytes = pipe.topk !== null ? 5 * kept : 0;
    total += 4 * kept + indexBytes + 4 * blockCount(kept, block);
    total += 4 * name.length + 9 * shape.length + 256;
  }
  return total;
}

function decodeTensor(entry, pipe, expected, name) {
  const dtype = pipe.quantiser.floatDtype;
  const dense = pipe.topk === null && dtype !== null;
  if (dense && entry.dtype !== dtype) fail(BAD_CODEC, `${name}: dtype ${entry.dtype}, the codec writes ${dtype}`);
  const { shape } = entry;
  if (!Array.isArray(shape)) fail(MALFORMED, `${name}: shape must be a list`);
  if (shape.length !== expected.length || shape.some((d, i) => d !== expected[i])) {
    fail(TENSOR_MISMATCH, `${name}: shape [${shape}] != [${expected}]`);
  }
  if (dense) return decodeArray(entry, `tensor '${name}'`).values;
  const n = numel(expected);
  const kept = pipe.kept(n);
  const idx = pipe.topk !== null ? decodeIndices(entry.idx, kept, n, name) : null;
  const values = dequantise(entry, pipe.quantiser, kept, name);
  if (idx === null) return values;
  const out = new Float32Array(n);
  for (let j = 0; j < kept; j++) out[idx[j]] = values[j];
  return out;
}

function decodeList(list, pipe, shapes) {
  const names = list.map((e) => (isMap(e) ? e.name : undefined));
  if (names.length !== shapes.length || names.some((n, i) => n !== shapes[i].name)) {
    fail(TENSOR_MISMATCH, `tensor names ${names.slice(0, 4)}... != model's ${shapes.slice(0, 4).map((s) => s.name)}...`);
  }
  return list.map((entry, i) => ({
    name: shapes[i].name,
    shape: [...shapes[i].shape],
    data: Float32Array.from(decodeTensor(entry, pipe, shapes[i].shape, shapes[i].name)),
  }));
}

/**
 * The float32 delta [{name, shape, data}] from an update's entries. Throws WireError:
 * bad_codec for an unknown spec or an entry the codec did not write; tensor_mismatch
 * for names or shapes that differ from `shapes`; too_large for a zstd payload beyond
 * what the model could need; malformed or non_finite from the array decoders.
 */
export function decodeDelta(entries, spec, shapes) {
  let pipe;
  try {
    pipe = parseCodec(spec);
  } catch (err) {
    fail(BAD_CODEC, `codec '${spec}': ${err.message}`);
  }
  const list = pipe.zstdLevel !== null ? unwrap(entries, maxInnerSize(pipe, shapes)) : entries;
  return decodeList(list, pipe, shapes);
}

/** Bytes the delta would take as raw float32: the baseline for ratios. */
export const rawSize = (shapes) => 4 * shapes.reduce((n, s) => n + numel(s.shape), 0);

/**
 * Error feedback (edge_agent/feedback.py): encode u = delta + residual and return the
 * new residual u - decode(encode(u)), computed with the receiver's decoder. Only a
 * biased pipeline (top-k, deterministic rounding) keeps one; otherwise `residual` is
 * null. Pass `residual` null when none is carried (another run, other shapes).
 * Returns {entries, residual}; throws Error for NaN/Inf in u (nothing changes).
 */
export function encodeWithFeedback(delta, spec, residual = null, { random = null } = {}) {
  const pipe = parseCodec(spec);
  if (pipe.stochastic && random === null) throw new Error(`codec '${spec}' needs random()`);
  const total = delta.map((t, i) => {
    const data = Float32Array.from(t.data);
    if (residual) for (let j = 0; j < data.length; j++) data[j] += residual[i].data[j];
    return { name: t.name, shape: [...t.shape], data };
  });
  if (!total.every((t) => t.data.every(Number.isFinite))) throw new Error('the delta holds NaN or Inf');
  const inner = total.map((t) => encodeTensor(t, pipe, random));
  const entries = pipe.zstdLevel !== null ? [wrap(inner)] : inner;
  if (!pipe.biased) return { entries, residual: null };
  let sent;
  try {
    sent = decodeList(inner, pipe, total); // zstd is lossless: the inner list is what arrives
  } catch (err) {
    throw new Error(`the encoded delta does not decode: ${err.message}`);
  }
  const left = total.map((t, i) => ({
    name: t.name, shape: t.shape, data: Float32Array.from(t.data, (v, j) => v - sent[i].data[j]),
  }));
  return { entries, residual: left };
}
