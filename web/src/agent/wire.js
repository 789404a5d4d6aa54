/**
 * The wire functions the browser agent and the dashboard use, in one place.
 *
 * TRANSITIONAL: until the JavaScript protocol library (web/src/protocol, its own
 * work) lands, this module carries a minimal implementation of what the pages need,
 * with docs/PROTOCOL.md's validation for what they decode: the model (§4.1, §5),
 * presence, status and metrics (§4.3-4.5), and the `none` and `fp16` update codecs
 * (§7), and Ed25519 envelopes (§11). The pages import nothing else (checks.js and
 * reports.js are its parts), so switching to the library is these three files.
 */

import { decode, encode } from '@msgpack/msgpack';
import { bool, fail, header, ID, ident, int, num, present, scalars, SCHEMA_VERSION, text, utf8 } from './checks.js';

export { SCHEMA_VERSION, WireError } from './checks.js';
export { decodeMetrics, decodePresence, decodeStatus, encodePresence } from './reports.js';

const MAX_BYTES = 64 * 1024 * 1024;
const MAX_TENSORS = 4096;
const FLOAT_DTYPES = { '<f4': 4, '<f2': 2, '<f8': 8 };
/** codecs this build encodes */
export const CODECS = ['none', 'fp16'];


export function topicsFor(job) {
  const p = `fedmq/v1/${job}`;
  return {
    model: `${p}/model`,
    modelChunks: `${p}/model/chunk/+`,
    status: `${p}/status`,
    metrics: `${p}/metrics`,
    allPresence: `${p}/agents/+`,
    update: (agent) => `${p}/update/${agent}`,
    presence: (agent) => `${p}/agents/${agent}`,
  };
}

/** {kind, agent} of a topic under `fedmq/v1/{job}/`, or null. */
export function parseTopic(job, topic) {
  const parts = topic.split('/');
  if (parts[0] !== 'fedmq' || parts[1] !== 'v1' || parts[2] !== job) return null;
  if (parts.length === 4 && ['model', 'status', 'metrics'].includes(parts[3])) return { kind: parts[3] };
  if (parts.length === 5 && ['agents', 'update'].includes(parts[3]) && ID.test(parts[4])) {
    return { kind: parts[3], agent: parts[4] };
  }
  if (parts.length === 6 && parts[3] === 'model' && parts[4] === 'chunk') return { kind: 'chunk' };
  return null;
}

// --- model (msgpack) --------------------------------------------------------------------

function decodeMsgpack(bytes, what) {
  if (bytes.length > MAX_BYTES) fail('too_large', `${what}: ${bytes.length} bytes`);
  try {
    return decode(bytes, {
      maxStrLength: 1 << 20, maxBinLength: MAX_BYTES, maxArrayLength: 100_000,
      maxMapLength: 4096, maxExtLength: 0, useBigInt64: false,
    });
  } catch (err) {
    return fail('malformed', `${what}: ${err.message}`);
  }
}

function floatTensor(t, i) {
  if (t === null || typeof t !== 'object') fail('malformed', `tensors[${i}]: expected a map`);
  const name = text(t, 'name', 256);
  const size = FLOAT_DTYPES[t.dtype];
  if (!size) fail('malformed', `${name}: dtype ${t.dtype} not a float dtype`);
  const shape = t.shape;
  if (!Array.isArray(shape) || shape.length > 8 || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    fail('malformed', `${name}: bad shape`);
  }
  const count = shape.reduce((a, b) => a * b, 1);
  if (!(t.data instanceof Uint8Array) || t.data.length !== count * size) fail('malformed', `${name}: data size`);
  const bytes = new Uint8Array(t.data); // a copy: aligned and owned (node may hand a Buffer view)
  const view = new DataView(bytes.buffer);
  const out = new Float32Array(count);
  for (let k = 0; k < count; k++) {
    out[k] = size === 4 ? view.getFloat32(4 * k, true)
      : size === 2 ? halfToFloat(view.getUint16(2 * k, true)) : view.getFloat64(8 * k, true);
    if (!Number.isFinite(out[k])) fail('non_finite', `${name} holds NaN or Inf`);
  }
  return { name, shape, data: out };
}

/** A model announcement (§4.1): weights as {name: Float32Array}, shapes as {name: [..]}. */
export function decodeModel(bytes) {
  const obj = header(decodeMsgpack(bytes, 'model'), 'model');
  const plan = obj.plan;
  if (plan === null || typeof plan !== 'object') fail('malformed', 'plan: expected a map');
  const tensors = obj.tensors;
  if (!Array.isArray(tensors) || tensors.length === 0) fail('malformed', 'tensors: expected a list');
  if (tensors.length > MAX_TENSORS) fail('too_large', `${tensors.length} tensors`);
  const weights = {};
  const shapes = {};
  tensors.forEach((t, i) => {
    const { name, shape, data } = floatTensor(t, i);
    if (Object.hasOwn(weights, name)) fail('malformed', `duplicate tensor ${name}`);
    weights[name] = data;
    shapes[name] = shape;
  });
  let cohort = null;
  if (present(obj, 'cohort')) {
    if (!Array.isArray(obj.cohort) || obj.cohort.length > 100_000) fail('malformed', 'cohort: bad list');
    cohort = obj.cohort.map((a) => ident({ cohort: a }, 'cohort'));
  }
  const maxPayload = present(obj, 'max_payload') ? int(obj, 'max_payload', 0, 2 ** 31) : 0;
  if (maxPayload !== 0 && maxPayload < 1024) fail('malformed', `max_payload ${maxPayload}`);
  return {
    job: ident(obj, 'job'),
    run: ident(obj, 'run'),
    round: int(obj, 'round', 1),
    attempt: int(obj, 'attempt', 0, 1_000_000),
    model_id: text(obj, 'model_id', 64),
    task: text(obj, 'task', 256),
    plan: {
      epochs: int(plan, 'epochs', 0, 10_000),
      batch_size: int(plan, 'batch_size', 1, 2 ** 20),
      lr: num(plan, 'lr', 0, 1e6),
      seed: int(plan, 'seed', 0, 2 ** 32 - 1),
      options: scalars(plan, 'options'),
    },
    codec: text(obj, 'codec', 256),
    deadline_s: num(obj, 'deadline_s', 0, 1e7),
    cohort,
    done: bool(obj, 'done'),
    issued_at: num(obj, 'issued_at', 0),
    max_payload: maxPayload,
    weights,
    shapes,
  };
}

/** A chunk frame or manifest (§4.6) rather than a whole message. */
export function isChunkFrame(bytes) {
  try {
    const t = decode(bytes, { maxStrLength: 256, maxBinLength: MAX_BYTES, maxArrayLength: 16, maxMapLength: 64 })?.type;
    return t === 'chunk' || t === 'chunked';
  } catch {
    return false;
  }
}

// --- update (msgpack) -------------------------------------------------------------------

/** An update or decline (§4.2), fields in the documented order. */
export function encodeUpdate(u) {
  const doc = {
    v: SCHEMA_VERSION, type: 'update', job: u.job, agent: u.agent, round: u.round,
    model_id: u.model_id, samples: u.samples, codec: u.codec,
    metrics: u.metrics ?? {}, train_s: u.train_s ?? 0, declined: u.declined ?? null,
    tensors: u.tensors,
  };
  return encode(doc, { forceFloat32: false, ignoreUndefined: true });
}

/** Whether a codec spec keeps an error-feedback residual (biased codecs do). */
export function codecKeepsResidual(codec) {
  checkCodec(codec);
  return false; // none is exact and fp16 rounds to nearest: neither is carried over here
}

/** Null when this build can encode `codec`, else why not (the agent then declines). */
export function codecProblem(codec) {
  return CODECS.includes(codec) ? null : `codec ${codec} is not supported in this browser build (it sends ${CODECS.join(', ')})`;
}

function checkCodec(codec) {
  const problem = codecProblem(codec);
  if (problem) throw new Error(problem);
}

/** The delta's tensor entries under `codec` (none: <f4, fp16: <f2), in model order. */
export function encodeDelta(delta, shapes, codec) {
  checkCodec(codec);
  return Object.entries(delta).map(([name, d]) => {
    let data;
    if (codec === 'none') {
      data = new Uint8Array(Float32Array.from(d).buffer);
    } else {
      const half = new Uint16Array(d.length);
      for (let i = 0; i < d.length; i++) half[i] = floatToHalf(Math.max(-65504, Math.min(65504, d[i])));
      data = new Uint8Array(half.buffer);
    }
    return { name, dtype: codec === 'none' ? '<f4' : '<f2', shape: shapes[name], data };
  });
}

/** Decode what `encodeDelta` wrote (for error feedback). */
export function decodeDelta(entries, codec, shapes) {
  checkCodec(codec);
  const out = {};
  entries.forEach((e, i) => {
    const t = floatTensor(e, i);
    if (JSON.stringify(t.shape) !== JSON.stringify(shapes[t.name])) fail('tensor_mismatch', t.name);
    out[t.name] = t.data;
  });
  return out;
}

// --- half floats (IEEE binary16, round to nearest even) --------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function floatToHalf(value) {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  return sign | half;
}

export function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** A model announcement's header, its tensors left undecoded (for the dashboard); null for
 * a chunk manifest; a signed model's body, unverified (the dashboard only shows it). */
export function peekModel(bytes) {
  let o = decodeMsgpack(bytes, 'model');
  if (o?.type === 'chunked') return null; // the chunks' manifest: no header to show
  if (isEnvelope(o) && o.body instanceof Uint8Array) o = decodeMsgpack(o.body, 'model');
  header(o, 'model');
  return {
    run: ident(o, 'run'), round: int(o, 'round', 1), attempt: int(o, 'attempt'), done: bool(o, 'done'),
    task: text(o, 'task'), codec: text(o, 'codec'), deadline_s: num(o, 'deadline_s', 0),
    plan: o.plan && typeof o.plan === 'object'
      ? { epochs: o.plan.epochs, batch_size: o.plan.batch_size, lr: o.plan.lr, seed: o.plan.seed } : null,
    tensors: Array.isArray(o.tensors) ? o.tensors.length : 0,
  };
}

// --- signed envelopes (§11), Ed25519 through WebCrypto ----------------------------------

const SIGNED_PREFIX = utf8.encode('fedmq/v1 signed');

async function signedBytes(purpose, job, run, signer, body) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', body));
  const parts = [SIGNED_PREFIX, ...[purpose, job, run, signer].flatMap((s) => [new Uint8Array([0]), utf8.encode(s)]),
    new Uint8Array([0]), digest];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** Keys from the link: `key` (PKCS#8 DER) signs updates, `ckey` (SPKI DER) verifies models. */
export async function importKeys({ key = null, ckey = null }) {
  if ((key || ckey) && !globalThis.crypto?.subtle) {
    throw new Error('signed messages need WebCrypto: open the page over https (or on localhost)');
  }
  return {
    signing: key ? await crypto.subtle.importKey('pkcs8', key, { name: 'Ed25519' }, false, ['sign']) : null,
    coordinator: ckey ? await crypto.subtle.importKey('spki', ckey, { name: 'Ed25519' }, false, ['verify']) : null,
  };
}

function isEnvelope(obj) {
  return obj && typeof obj === 'object' && obj.type === 'signed';
}

/**
 * The model body in `payload` (§11.3): with the coordinator's key, only a signed
 * envelope for this job whose signature verifies; without, a bare model or an
 * envelope unwrapped unchecked. Throws WireError.
 */
export async function openModel(payload, { job, key }) {
  if (isChunkFrame(payload)) fail('malformed', 'chunked models need the JavaScript protocol library');
  const obj = decodeMsgpack(payload, 'model');
  if (!isEnvelope(obj)) {
    if (key) fail('unsigned', 'a bare model where signatures are required');
    return payload;
  }
  header(obj, 'signed');
  if (obj.purpose !== 'model') fail('malformed', `envelope purpose ${obj.purpose}`);
  if (obj.job !== job) fail('wrong_job', `envelope for job ${obj.job}`);
  const body = obj.body;
  if (!(body instanceof Uint8Array) || !(obj.sig instanceof Uint8Array) || obj.sig.length !== 64) {
    fail('malformed', 'envelope body or sig');
  }
  if (key) {
    const message = await signedBytes('model', obj.job, ident(obj, 'run'), ident(obj, 'signer'), body);
    if (!(await crypto.subtle.verify({ name: 'Ed25519' }, key, obj.sig, message))) {
      fail('bad_signature', 'the model signature does not verify');
    }
  }
  return body;
}

/** `payload` sealed in a signed envelope (§11.1) for `run`, signed by `signer`'s key. */
export async function sealUpdate(payload, { job, run, signer, key }) {
  const message = await signedBytes('update', job, run, signer, payload);
  const sig = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, key, message));
  return encode({ v: SCHEMA_VERSION, type: 'signed', purpose: 'update', job, run, signer, body: payload, sig });
}
