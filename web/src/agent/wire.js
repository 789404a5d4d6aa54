/**
 * What the pages take from the JavaScript protocol library (../protocol, docs/PROTOCOL.md),
 * shaped as they use it: weights and deltas as {name: Float32Array} with their shapes
 * beside them (the trainer's and the core's form; the library's is a list in model order),
 * topics for one job, and the few adapters below. Everything else is the library's.
 */

import {
  DEFAULT_MAX_BYTES, decodeModel as decodeModelList, decodeSigned, encodeWithFeedback, Float,
  importSigningKey, importVerifyKey, isSigned, MAX_JSON_BYTES, openModel as openModelEnvelope,
  parseCodec, parseTopic as parseAny, peekFields, Purpose, seal, sha256, Topics, WireError,
} from '../protocol/index.js';

export {
  asks, codecProblem, decodeMetrics, decodePresence, decodeRollcall, decodeStatus, encodePresence, encodeUpdate,
  isChunkFrame, Reassembler, SCHEMA_VERSION, split, WireError,
} from '../protocol/index.js';

/** incomplete chunked models older than this are dropped (edge_agent/agent.py's TTL) */
export const MODEL_CHUNK_TTL_S = 600;

/** One job's topics, as the pages subscribe and publish. */
export function topicsFor(job) {
  const t = new Topics(job);
  return {
    model: t.model,
    modelChunks: t.allModelChunks,
    rollcall: t.rollcall,
    status: t.status,
    metrics: t.metrics,
    allPresence: t.allPresence,
    update: (agent) => t.update(agent),
    presence: (agent) => t.presence(agent),
  };
}

/** {kind, agent, chunk} of a topic of `job`, or null for anything else. */
export function parseTopic(job, topic) {
  try {
    const ref = parseAny(topic);
    return ref.job === job ? ref : null;
  } catch (err) {
    if (err instanceof WireError) return null;
    throw err;
  }
}

/** A model announcement with `weights` {name: Float32Array} and `shapes` {name: shape}. */
export function decodeModel(bytes) {
  const model = decodeModelList(bytes);
  const weights = {};
  const shapes = {};
  for (const t of model.weights) {
    weights[t.name] = t.data;
    shapes[t.name] = t.shape;
  }
  return { ...model, weights, shapes };
}

/** The model body in `payload` (§11.3): verified with the coordinator's `key`, if given. */
export function openModel(payload, { job, key }) {
  return openModelEnvelope(payload, { job, key, maxBodyBytes: DEFAULT_MAX_BYTES });
}

/** `payload` (an encoded update) sealed for `run` with `signer`'s key (§11.1). */
export function sealUpdate(payload, { job, run, signer, key }) {
  return seal(payload, Purpose.UPDATE, { job, run, signer, key });
}

/**
 * A presence document (or last will) sealed with the agent's update key for its
 * `session` (§16.1): the coordinator of the secure profile counts no other presence.
 */
export function sealPresence(payload, { job, session, signer, key }) {
  return seal(payload, Purpose.PRESENCE, { job, run: session, signer, key });
}

/** The presence document in `bytes`, a signed envelope unwrapped unverified (§16.1): what
 * readers that hold no agent keys (the dashboard) show. Throws WireError. */
export function openPresence(bytes) {
  if (!isSigned(bytes)) return bytes;
  const envelope = decodeSigned(bytes, MAX_JSON_BYTES);
  if (envelope.purpose !== Purpose.PRESENCE) {
    throw new WireError('malformed', `a ${envelope.purpose} envelope where a presence belongs`);
  }
  return envelope.body;
}

/** Keys from a link: `key` (PKCS#8 DER) signs updates, `ckey` (SPKI DER) verifies models. */
export async function importKeys({ key = null, ckey = null }) {
  if ((key || ckey) && !globalThis.crypto?.subtle) {
    throw new Error('signed messages need WebCrypto: open the page over https (or on localhost)');
  }
  return {
    signing: key ? await importSigningKey(key) : null,
    coordinator: ckey ? await importVerifyKey(ckey) : null,
  };
}

/**
 * The update's entries for `delta` ({name: Float32Array}, in model order) under `codec`,
 * with error feedback: `carried` is the residual ({name: Float32Array}) or null; returns
 * {entries, residual} (residual null when the codec keeps none). `random` drives qsgd.
 */
export function encodeDelta(delta, shapes, codec, carried, random) {
  const list = (named) => Object.entries(named).map(([name, data]) => ({ name, shape: shapes[name], data }));
  const pipe = parseCodec(codec);
  const out = encodeWithFeedback(list(delta), codec, carried ? list(carried) : null,
    { random: pipe.stochastic ? random : null });
  const residual = out.residual ? Object.fromEntries(out.residual.map((t) => [t.name, t.data])) : null;
  return { entries: out.entries, residual };
}

/** The seed of an agent's stochastic rounding: sha256(agent)[:8], big-endian (agent.py). */
export function agentRngKey(agent) {
  const digest = sha256(new TextEncoder().encode(agent));
  return digest.slice(0, 8).reduce((n, b) => (n << 8n) | BigInt(b), 0n);
}

const HEADER = ['v', 'type', 'run', 'round', 'attempt', 'done', 'task', 'codec', 'deadline_s', 'plan', 'purpose', 'body'];
const num = (v) => (v instanceof Float ? Number(v) : v);

/**
 * A model announcement's header, its tensors left unread (the dashboard); null for a
 * chunk manifest or anything else. A signed model's body is read unverified: the
 * dashboard only shows it. Throws WireError for what is not msgpack.
 */
export function peekModel(bytes) {
  let found;
  try {
    found = peekFields(bytes, HEADER);
    if (found.type === 'signed' && found.purpose === 'model' && found.body instanceof Uint8Array) {
      found = peekFields(found.body, HEADER);
    }
  } catch (err) {
    throw new WireError('malformed', `model: ${err.message}`);
  }
  if (found.type !== 'model' || typeof found.run !== 'string' || typeof found.task !== 'string') return null;
  const plan = found.plan && typeof found.plan === 'object' ? found.plan : {};
  return {
    run: found.run, round: Number(found.round), attempt: Number(found.attempt), done: found.done === true,
    task: found.task, codec: String(found.codec), deadline_s: Number(num(found.deadline_s)),
    plan: { epochs: plan.epochs, batch_size: plan.batch_size, lr: Number(num(plan.lr)), seed: plan.seed },
  };
}
