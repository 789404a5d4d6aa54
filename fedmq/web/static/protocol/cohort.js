/**
 * The hashed cohort (protocol/cohort_hash.py, docs/PROTOCOL.md §17): agent `a` is asked in
 * round `r` iff the first 8 bytes of SHA-256("{job}/{run}/{r}/{a}"), big-endian unsigned,
 * are below the announcement's `cohort_hash.below`. Values are BigInts (a uint64 does not
 * fit a Number).
 */

import { fail, RejectReason } from './errors.js';
import { isInt, isMap } from './fields.js';
import { sha256 } from './sha256.js';

/** the largest `below` msgpack carries (a uint64) */
export const MAX_BELOW = (1n << 64n) - 1n;

const utf8 = new TextEncoder();

/** The hashed bytes: job/run/round/agent, the round in decimal (a Number or a BigInt). */
export const hashInput = (job, run, round, agent) => utf8.encode(`${job}/${run}/${BigInt(round)}/${agent}`);

/** The agent's 64-bit value for this round (a BigInt). */
export function cohortValue(job, run, round, agent) {
  const digest = sha256(hashInput(job, run, round, agent));
  return new DataView(digest.buffer, digest.byteOffset, 8).getBigUint64(0, false);
}

/** True if `agent` passes `rule` ({below: BigInt}) in round `round`. */
export const inCohort = (rule, job, run, round, agent) => cohortValue(job, run, round, agent) < rule.below;

/** The `cohort_hash` map, checked: exactly {below: an integer in 1..2^64-1}. Throws WireError. */
export function decodeCohortHash(obj, what) {
  if (!isMap(obj) || Object.keys(obj).length !== 1 || !('below' in obj)) {
    fail(RejectReason.MALFORMED, `${what}.cohort_hash: expected {below}`);
  }
  const { below } = obj;
  if (!isInt(below) || BigInt(below) < 1n || BigInt(below) > MAX_BELOW) {
    fail(RejectReason.MALFORMED, `${what}.cohort_hash.below: not in 1..2^64-1`);
  }
  return { below: BigInt(below) };
}

/** True if the decoded announcement `model` asks `agent` to train: named in `cohort`,
 * passing `cohort_hash`, or every agent (both null). */
export function asks(model, agent) {
  if (model.cohort_hash) return inCohort(model.cohort_hash, model.job, model.run, model.round, agent);
  return model.cohort === null || model.cohort.includes(agent);
}
