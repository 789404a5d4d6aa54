/**
 * Bytes <-> the messages that carry tensors (protocol/wire.py, docs/PROTOCOL.md §4.1,
 * §4.2): model announcements and updates, msgpack, fields written in the documented
 * order so encodings equal Python's byte for byte.
 *
 * Values (the same field names as the Python dataclasses and the wire):
 *   model  {job, run, round, attempt, model_id, task, plan: {epochs, batch_size, lr, seed,
 *           options}, codec, deadline_s, cohort (string[] | null), done, issued_at,
 *           max_payload, weights: [{name, shape, data: Float32Array}], cohort_hash
 *           ({below: BigInt} | null, docs/PROTOCOL.md §17)}
 *   update {job, agent, round, model_id, samples, codec, tensors (the codec's entries,
 *           see codecs/delta.js), metrics {name: number}, train_s, declined (string | null)}
 * Every decode* throws WireError for bad input; any other exception is a bug.
 */

import { decodeCohortHash } from './cohort.js';
import { fail, RejectReason } from './errors.js';
import {
  DEFAULT_MAX_BYTES, Fields, header, isMap, MAX_COHORT, MAX_ROLL_CALL, MAX_TENSORS, packMessage, SCHEMA_VERSION,
  unpackMessage,
} from './fields.js';
import { f64 } from './msgpack.js';
import { decodeWeights, encodeWeights } from './tensors.js';

const { MALFORMED, TOO_LARGE } = RejectReason;
/** the smallest payload cap fedmq chunks for (protocol/chunks.py MIN_MAX_PAYLOAD) */
export const MIN_MAX_PAYLOAD = 1024;

/** A model announcement's bytes; `weights` travel as `<f4` unless `downlink` is '<f2'. */
export function encodeModel(m, { downlink = '<f4' } = {}) {
  return packMessage({
    v: SCHEMA_VERSION,
    type: 'model',
    job: m.job,
    run: m.run,
    round: m.round,
    attempt: m.attempt ?? 0,
    model_id: m.model_id,
    task: m.task,
    plan: {
      epochs: m.plan.epochs,
      batch_size: m.plan.batch_size,
      lr: f64(m.plan.lr),
      seed: m.plan.seed,
      options: { ...m.plan.options }, // integral numbers are written as integers
    },
    codec: m.codec,
    deadline_s: f64(m.deadline_s),
    cohort: m.cohort ?? null,
    done: m.done ?? false,
    issued_at: f64(m.issued_at ?? 0),
    max_payload: m.max_payload ?? 0,
    tensors: encodeWeights(m.weights, downlink),
    ...(m.cohort_hash ? { cohort_hash: { below: m.cohort_hash.below } } : {}), // §17, only when set
  });
}

/** Parse and validate a model announcement (§4.1). Throws WireError. */
export function decodeModel(payload, maxBytes = DEFAULT_MAX_BYTES) {
  const obj = unpackMessage(payload, maxBytes, 'model');
  const f = header(obj, 'model');
  const p = new Fields(obj.plan, 'model.plan');
  const plan = {
    epochs: p.integer('epochs', 0, 10_000),
    batch_size: p.integer('batch_size', 1, 2 ** 20),
    lr: p.number('lr', 0, 1e6),
    seed: p.integer('seed', 0, 2 ** 32 - 1),
    options: p.scalars('options'),
  };
  let cohort = null;
  if (obj.cohort !== undefined && obj.cohort !== null) {
    if (!Array.isArray(obj.cohort) || obj.cohort.length > MAX_COHORT) fail(MALFORMED, 'model.cohort: expected a list of ids');
    cohort = obj.cohort.map((a) => new Fields({ a }, 'model.cohort').ident('a'));
  }
  let cohortHash = null; // docs/PROTOCOL.md §17: a round names its agents one way only
  if (obj.cohort_hash !== undefined && obj.cohort_hash !== null) {
    if (cohort !== null) fail(MALFORMED, 'model: cohort_hash with a named cohort');
    cohortHash = decodeCohortHash(obj.cohort_hash, 'model');
  }
  let rollCall = []; // docs/PROTOCOL.md §16.2
  if (obj.roll_call !== undefined && obj.roll_call !== null) {
    if (!Array.isArray(obj.roll_call) || obj.roll_call.length > MAX_ROLL_CALL) fail(MALFORMED, 'model.roll_call: expected a list of ids');
    rollCall = obj.roll_call.map((a) => new Fields({ a }, 'model.roll_call').ident('a'));
  }
  const { tensors } = obj;
  if (Array.isArray(tensors) && tensors.length > MAX_TENSORS) fail(TOO_LARGE, `model: ${tensors.length} tensors`);
  const out = {
    job: f.ident('job'),
    run: f.ident('run'),
    round: f.integer('round', 1),
    attempt: f.integer('attempt', 0, 1_000_000),
    model_id: f.text('model_id', 64),
    task: f.text('task'),
    plan,
    codec: f.text('codec'),
    deadline_s: f.number('deadline_s', 0, 1e7),
    cohort,
    done: f.flag('done'),
    issued_at: f.number('issued_at', 0),
    max_payload: maxPayload(f),
    roll_call: rollCall,
    cohort_hash: cohortHash,
  };
  out.weights = decodeWeights(tensors);
  return out;
}

function maxPayload(f) {
  const cap = f.present('max_payload') ? f.integer('max_payload', 0, 2 ** 31) : 0;
  if (cap > 0 && cap < MIN_MAX_PAYLOAD) fail(MALFORMED, `model.max_payload=${cap} < ${MIN_MAX_PAYLOAD}`);
  return cap;
}

/** An update's (or decline's) bytes; metrics are written as float64. */
export function encodeUpdate(u) {
  return packMessage({
    v: SCHEMA_VERSION,
    type: 'update',
    job: u.job,
    agent: u.agent,
    round: u.round,
    model_id: u.model_id,
    samples: u.samples,
    codec: u.codec,
    metrics: Object.fromEntries(Object.entries(u.metrics ?? {}).map(([k, v]) => [k, f64(v)])),
    train_s: f64(u.train_s ?? 0),
    declined: u.declined ?? null,
    tensors: u.tensors,
  });
}

/**
 * Parse and validate an update (§4.2); its tensors stay codec-encoded (decodeDelta
 * reads them once the model's shapes are known). A decline carries no tensors and
 * `samples: 0`. Throws WireError.
 */
export function decodeUpdate(payload, maxBytes = DEFAULT_MAX_BYTES) {
  const obj = unpackMessage(payload, maxBytes, 'update');
  const f = header(obj, 'update');
  const declined = f.present('declined') ? f.text('declined', 256) : null;
  const { tensors } = obj;
  if (!Array.isArray(tensors) || tensors.length > MAX_TENSORS) fail(MALFORMED, 'update.tensors: expected a list');
  if (!tensors.every(isMap)) fail(MALFORMED, 'update.tensors: entries must be maps');
  if (declined === null && tensors.length === 0) fail(MALFORMED, 'update: no tensors and not a decline');
  if (declined !== null && tensors.length > 0) fail(MALFORMED, 'update: a decline carries no tensors');
  return {
    job: f.ident('job'),
    agent: f.ident('agent'),
    round: f.integer('round', 1),
    model_id: f.text('model_id', 64),
    samples: declined !== null ? f.integer('samples', 0, 0) : f.integer('samples', 1, 2 ** 40),
    codec: f.text('codec'),
    tensors,
    metrics: f.floats('metrics'),
    train_s: f.number('train_s', 0),
    declined,
  };
}
