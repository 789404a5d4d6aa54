/**
 * The field checks the transitional wire modules share (wire.js, reports.js): the rules of
 * docs/PROTOCOL.md §3, each failure a WireError with the protocol's reason.
 */

export const SCHEMA_VERSION = 1;
export const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
export const utf8 = new TextEncoder();

export class WireError extends Error {
  constructor(reason, detail) {
    super(`${reason}: ${detail}`);
    this.reason = reason;
    this.detail = detail;
  }
}

export const fail = (reason, detail) => { throw new WireError(reason, detail); };

export function header(obj, type) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj) || obj instanceof Uint8Array) {
    fail('malformed', `${type}: expected a map`);
  }
  if (obj.v !== SCHEMA_VERSION || !Number.isInteger(obj.v)) fail('bad_version', `${type}: v=${obj.v}`);
  if (obj.type !== type) fail('malformed', `${type}: type ${obj.type}`);
  return obj;
}

export function int(obj, key, lo = 0, hi = 2 ** 53) {
  const v = obj[key];
  if (typeof v !== 'number' && typeof v !== 'bigint') fail('malformed', `${key}: expected an integer`);
  const n = Number(v);
  if (!Number.isInteger(n) || n < lo || n > hi) fail('malformed', `${key}=${v} outside [${lo}, ${hi}]`);
  return n;
}

export function num(obj, key, lo = -Infinity, hi = Infinity) {
  const v = obj[key];
  if (typeof v !== 'number') fail('malformed', `${key}: expected a number`);
  if (!Number.isFinite(v)) fail('non_finite', `${key} is not finite`);
  if (v < lo || v > hi) fail('malformed', `${key}=${v} outside [${lo}, ${hi}]`);
  return v;
}

export function text(obj, key, max = 256) {
  const v = obj[key];
  if (typeof v !== 'string' || v.length > max) fail('malformed', `${key}: expected a string of <= ${max}`);
  return v;
}

export function ident(obj, key) {
  const v = text(obj, key, 64);
  if (!ID.test(v)) fail('malformed', `${key}: ${v} is not an id`);
  return v;
}

export function bool(obj, key) {
  if (typeof obj[key] !== 'boolean') fail('malformed', `${key}: expected a boolean`);
  return obj[key];
}

export const present = (obj, key) => obj[key] !== undefined && obj[key] !== null;

export function scalars(obj, key) {
  const m = obj[key] ?? {};
  if (typeof m !== 'object' || Array.isArray(m) || Object.keys(m).length > 64) fail('malformed', `${key}: bad map`);
  for (const [k, v] of Object.entries(m)) {
    if (!['number', 'string', 'boolean'].includes(typeof v)) fail('malformed', `${key}.${k}: bad entry`);
    if (typeof v === 'number' && !Number.isFinite(v)) fail('non_finite', `${key}.${k} is not finite`);
  }
  return m;
}

