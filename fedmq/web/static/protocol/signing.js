/**
 * Signed envelopes (protocol/signing.py, docs/PROTOCOL.md §11): the encoded message,
 * untouched, inside {v, type: "signed", purpose, job, run, signer, body, sig}, with
 *
 *   sig = Ed25519(signer's key, "fedmq/v1 signed" 0 purpose 0 job 0 run 0 signer 0 SHA-256(body))
 *
 * Ed25519 runs on WebCrypto (crypto.subtle: Node 20, Chromium; a page needs a secure
 * context, https or localhost), so signing and verifying are async; parsing is not.
 * Receivers check the bytes as received and never parse a body whose signature failed.
 */

import { fail, RejectReason } from './errors.js';
import { Fields, isMap, MAX_JSON_BYTES, SCHEMA_VERSION } from './fields.js';
import { MsgpackError, pack, peekFields, unpack } from './msgpack.js';
import { sha256 } from './sha256.js';
import { checkId } from './topics.js';

export const Purpose = Object.freeze({ MODEL: 'model', UPDATE: 'update', PRESENCE: 'presence' });
/** what the coordinator puts in `signer` of a model */
export const COORDINATOR_SIGNER = 'coordinator';
/** the envelope's own fields stay under this many bytes on top of the body */
export const ENVELOPE_OVERHEAD = 512;
export const SIGNATURE_BYTES = 64;
const DOMAIN = 'fedmq/v1 signed';
const PKCS8_ED25519 = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);
const ED25519 = { name: 'Ed25519' };
const { MALFORMED, BAD_VERSION, TOO_LARGE, UNSIGNED, WRONG_JOB, AGENT_MISMATCH, WRONG_RUN, UNKNOWN_AGENT, BAD_SIGNATURE } = RejectReason;
const utf8 = new TextEncoder();

function subtle() {
  const s = globalThis.crypto?.subtle;
  if (!s) throw new Error('signed messages need WebCrypto: open the page over https (or on localhost)');
  return s;
}

/** DER bytes of a PEM block (`-----BEGIN ...-----`), or the bytes themselves. */
function der(key) {
  if (typeof key !== 'string') return key;
  const body = key.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
  return Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
}

/** A signing key from PKCS#8 (DER bytes or PEM text, as `openssl genpkey -algorithm ed25519`). */
export function importSigningKey(pkcs8) {
  return subtle().importKey('pkcs8', der(pkcs8), ED25519, false, ['sign']);
}

/** The signing key for a 32-byte seed (RFC 8032's private key): fixed keys for test vectors. */
export function signingKeyFromSeed(seed) {
  if (seed.length !== 32) throw new RangeError(`an Ed25519 seed is 32 bytes, got ${seed.length}`);
  const pkcs8 = new Uint8Array(48);
  pkcs8.set(PKCS8_ED25519);
  pkcs8.set(seed, 16);
  return importSigningKey(pkcs8);
}

/** A verify key from 32 raw bytes, or SubjectPublicKeyInfo (DER bytes or PEM text). */
export function importVerifyKey(key) {
  const bytes = der(key);
  return subtle().importKey(bytes.length === 32 ? 'raw' : 'spki', bytes, ED25519, true, ['verify']);
}

/** What the signature is computed over (§11.2). Ids never contain NUL. */
export function signedBytes(purpose, job, run, signer, body) {
  const parts = [DOMAIN, purpose, job, run, signer].map((s) => utf8.encode(s));
  const digest = sha256(body);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length + 1, 0) + digest.length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length + 1; // the 0x00 separator is already there
  }
  out.set(digest, at);
  return out;
}

/** `body` (an encoded model or update) sealed in an envelope signed with `key`. */
export async function seal(body, purpose, { job, run, signer, key }) {
  for (const [value, what] of [[job, 'job'], [run, 'run'], [signer, 'signer']]) checkId(value, what);
  if (!Object.values(Purpose).includes(purpose)) throw new Error(`purpose ${purpose}`);
  const sig = new Uint8Array(await subtle().sign(ED25519, key, signedBytes(purpose, job, run, signer, body)));
  return pack({ v: SCHEMA_VERSION, type: 'signed', purpose, job, run, signer, body, sig });
}

/** Whether `payload` is an envelope (cheap: reads the map's `type`). */
export function isSigned(payload) {
  try {
    return peekFields(payload, ['type']).type === 'signed';
  } catch (err) {
    if (err instanceof MsgpackError) return false;
    throw err;
  }
}

/**
 * A parsed, not yet verified, envelope {purpose, job, run, signer, body, sig}. Throws
 * WireError: too_large above `maxBodyBytes` plus the envelope's fields, bad_version for
 * another `v`, malformed for anything else.
 */
export function decodeSigned(payload, maxBodyBytes) {
  if (payload.length > maxBodyBytes + ENVELOPE_OVERHEAD) fail(TOO_LARGE, `signed: ${payload.length} bytes`);
  let obj;
  try {
    obj = unpack(payload);
  } catch (err) {
    if (err instanceof MsgpackError) fail(MALFORMED, `signed: not msgpack (${err.message})`);
    throw err;
  }
  if (!isMap(obj)) fail(MALFORMED, 'signed: expected a map');
  if (obj.v !== SCHEMA_VERSION) fail(BAD_VERSION, `signed: schema version ${obj.v}, want 1`);
  if (obj.type !== 'signed') fail(MALFORMED, `expected type 'signed', got ${obj.type}`);
  if (!Object.values(Purpose).includes(obj.purpose)) fail(MALFORMED, `signed.purpose: ${obj.purpose}`);
  const { body, sig } = obj;
  if (!(body instanceof Uint8Array)) fail(MALFORMED, 'signed.body: expected binary');
  if (body.length > maxBodyBytes) fail(TOO_LARGE, `signed.body: ${body.length} > ${maxBodyBytes} B`);
  if (!(sig instanceof Uint8Array) || sig.length !== SIGNATURE_BYTES) fail(MALFORMED, `signed.sig: expected ${SIGNATURE_BYTES} bytes`);
  const f = new Fields(obj, 'signed');
  const ident = (key) => (typeof obj[key] === 'string' ? f.ident(key) : fail(MALFORMED, `signed.${key}: expected an id`));
  return { purpose: obj.purpose, job: ident('job'), run: ident('run'), signer: ident('signer'), body, sig };
}

async function verified(envelope, key) {
  const ok = await subtle().verify(ED25519, key, envelope.sig,
    signedBytes(envelope.purpose, envelope.job, envelope.run, envelope.signer, envelope.body));
  if (!ok) fail(BAD_SIGNATURE, `${envelope.purpose} signed by '${envelope.signer}' does not verify`);
  return envelope.body;
}

function expect(envelope, purpose) {
  if (envelope.purpose !== purpose) fail(MALFORMED, `a ${envelope.purpose} envelope where a ${purpose} belongs`);
  return envelope;
}

/**
 * The model bytes inside `payload`, checked against the coordinator's `key`
 * (a CryptoKey, or null for an agent running unsigned: an envelope is then unwrapped
 * unverified and a bare model passes). Throws WireError: unsigned, wrong_job,
 * bad_signature; malformed, bad_version or too_large for a bad envelope.
 */
export async function openModel(payload, { job, key, maxBodyBytes }) {
  if (!isSigned(payload)) {
    if (key) fail(UNSIGNED, 'model is not signed');
    return payload;
  }
  const envelope = expect(decodeSigned(payload, maxBodyBytes), Purpose.MODEL);
  if (!key) return envelope.body;
  if (envelope.job !== job) fail(WRONG_JOB, `model signed for job '${envelope.job}'`);
  return verified(envelope, key);
}

/**
 * The update bytes inside `payload` sent on `agent`'s topic, checked against `keys`
 * ({agent: CryptoKey}, or null when unsigned). Throws WireError: unsigned, wrong_job,
 * agent_mismatch, wrong_run (another run), unknown_agent (no key), bad_signature; malformed,
 * bad_version or too_large for a bad envelope.
 */
export async function openUpdate(payload, { job, run, agent, keys, maxBodyBytes }) {
  if (!isSigned(payload)) {
    if (keys) fail(UNSIGNED, 'update is not signed');
    return payload;
  }
  const envelope = expect(decodeSigned(payload, maxBodyBytes), Purpose.UPDATE);
  if (!keys) return envelope.body;
  if (envelope.job !== job) fail(WRONG_JOB, `update signed for job '${envelope.job}'`);
  if (envelope.signer !== agent) fail(AGENT_MISMATCH, `signed by '${envelope.signer}'`);
  if (envelope.run !== run) fail(WRONG_RUN, `signed for run '${envelope.run}', not '${run}'`);
  const key = Object.hasOwn(keys, agent) ? keys[agent] : null;
  if (!key) fail(UNKNOWN_AGENT, `no update key provisioned for '${agent}'`);
  return verified(envelope, key);
}

/**
 * The presence document inside `payload` and the session it was signed in (null for a
 * bare one), checked against `agent`'s key in `keys` as openUpdate checks an update
 * (docs/PROTOCOL.md §16.1; the session is the envelope's `run`). With `keys` null an
 * envelope is unwrapped unverified, as readers that hold no agent keys do.
 */
export async function openPresence(payload, { job, agent, keys }) {
  if (!isSigned(payload)) {
    if (keys) fail(UNSIGNED, 'presence is not signed');
    return { body: payload, session: null };
  }
  const envelope = expect(decodeSigned(payload, MAX_JSON_BYTES), Purpose.PRESENCE);
  if (!keys) return { body: envelope.body, session: envelope.run };
  if (envelope.job !== job) fail(WRONG_JOB, `presence signed for job '${envelope.job}'`);
  if (envelope.signer !== agent) fail(AGENT_MISMATCH, `signed by '${envelope.signer}'`);
  const key = Object.hasOwn(keys, agent) ? keys[agent] : null;
  if (!key) fail(UNKNOWN_AGENT, `no update key provisioned for '${agent}'`);
  return { body: await verified(envelope, key), session: envelope.run };
}
