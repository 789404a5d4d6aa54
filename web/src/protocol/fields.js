/**
 * The checked reading every decoder shares (protocol/fields.py): `Fields` reads one
 * decoded map field by field, each read checking type, range and finiteness and
 * throwing WireError naming the message and the field, with the same reason Python
 * gives; `unpackMessage` / `loadJson` bound sizes before parsing. Unknown fields are
 * ignored (docs/PROTOCOL.md §3).
 *
 * Values come from msgpack.js / json.js: integers are Numbers or BigInts, floats are
 * `Float`, maps null-prototype objects. Fields hands back plain Numbers.
 */

import { fail, RejectReason } from './errors.js';
import { dumpJson, JsonError, parseJson } from './json.js';
import { Ext, Float, MsgpackError, pack, unpack } from './msgpack.js';
import { checkId } from './topics.js';

export const SCHEMA_VERSION = 1;
/** Refuse to parse msgpack payloads above this size unless the caller says otherwise. */
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
export const MAX_JSON_BYTES = 64 * 1024;
export const MAX_MAP_ITEMS = 64;
export const MAX_COHORT = 100_000;
/** agents one announcement's roll call may name (docs/PROTOCOL.md §16.2) */
export const MAX_ROLL_CALL = 256;
export const MAX_TENSORS = 4096;

const { MALFORMED, NON_FINITE, BAD_VERSION, TOO_LARGE } = RejectReason;

/** A decoded map (not a list, bytes, ext or scalar). */
export function isMap(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)
    && !(v instanceof Float) && !(v instanceof Ext);
}

export const isInt = (v) => (typeof v === 'number' && Number.isInteger(v)) || typeof v === 'bigint';
export const isNumber = (v) => isInt(v) || v instanceof Float;

/** Python's type name of a decoded value, for details that read like Python's. */
function typeName(v) {
  if (v === undefined || v === null) return 'NoneType';
  if (typeof v === 'boolean') return 'bool';
  if (isInt(v)) return 'int';
  if (v instanceof Float) return 'float';
  if (typeof v === 'string') return 'str';
  if (v instanceof Uint8Array) return 'bytes';
  if (Array.isArray(v)) return 'list';
  if (v instanceof Ext) return 'ExtType';
  return 'dict';
}

/** Code points, as Python's len(str) counts them (not UTF-16 units). */
export function strLength(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

const inRange = (v, lo, hi) => (typeof v === 'bigint'
  ? (lo === -Infinity || v >= BigInt(lo)) && (hi === Infinity || v <= BigInt(hi))
  : lo <= v && v <= hi);

export class Fields {
  constructor(obj, what) {
    if (!isMap(obj)) fail(MALFORMED, `${what}: expected a map`);
    this.obj = obj;
    this.what = what;
  }

  get(key) { return this.obj[key]; }

  bad(key, expected) {
    return fail(MALFORMED, `${this.what}.${key}: expected ${expected}, got ${typeName(this.obj[key])}`);
  }

  present(key) { return this.obj[key] !== undefined && this.obj[key] !== null; }

  integer(key, lo = 0, hi = 2 ** 53) {
    const v = this.obj[key];
    if (!isInt(v)) this.bad(key, 'an integer');
    if (!inRange(v, lo, hi)) fail(MALFORMED, `${this.what}.${key}=${v} outside [${lo}, ${hi}]`);
    return Number(v);
  }

  number(key, lo = -Infinity, hi = Infinity) {
    const v = this.obj[key];
    if (!isNumber(v)) this.bad(key, 'a number');
    const x = Number(v);
    if (typeof v === 'bigint' && !Number.isFinite(x)) fail(MALFORMED, `${this.what}.${key}: out of range`);
    if (!Number.isFinite(x)) fail(NON_FINITE, `${this.what}.${key} is not finite`);
    if (!(lo <= x && x <= hi)) fail(MALFORMED, `${this.what}.${key}=${x} outside [${lo}, ${hi}]`);
    return x;
  }

  text(key, maxLen = 256) {
    const v = this.obj[key];
    if (typeof v !== 'string' || strLength(v) > maxLen) this.bad(key, `a string of <= ${maxLen} chars`);
    return v;
  }

  flag(key) {
    const v = this.obj[key];
    if (typeof v !== 'boolean') this.bad(key, 'a boolean');
    return v;
  }

  ident(key) {
    const v = this.text(key, 64);
    try {
      return checkId(v, key);
    } catch (err) {
      return fail(MALFORMED, `${this.what}.${key}: ${err.message}`);
    }
  }

  mapping(key) {
    const v = key in this.obj ? this.obj[key] : Object.create(null);
    if (!isMap(v) || Object.keys(v).length > MAX_MAP_ITEMS) this.bad(key, `a map of <= ${MAX_MAP_ITEMS} items`);
    return v;
  }

  /** A map of str -> int | float | str | bool, floats finite; values as plain JS values. */
  scalars(key) {
    const out = {};
    for (const [k, v] of Object.entries(this.mapping(key))) {
      if (!(isNumber(v) || typeof v === 'string' || typeof v === 'boolean')) {
        fail(MALFORMED, `${this.what}.${key}: bad entry '${k}'`);
      }
      if (v instanceof Float && !Number.isFinite(v.value)) fail(NON_FINITE, `${this.what}.${key}.${k} is not finite`);
      out[k] = isNumber(v) ? Number(v) : v;
    }
    return out;
  }

  floats(key) {
    const raw = this.mapping(key);
    const out = this.scalars(key);
    for (const k of Object.keys(out)) {
      if (!isNumber(raw[k])) fail(MALFORMED, `${this.what}.${key}.${k}: not a number`);
    }
    return out;
  }

  counts(key) {
    const raw = this.mapping(key);
    const out = this.scalars(key);
    for (const [k, v] of Object.entries(out)) {
      if (!isInt(raw[k]) || v < 0) fail(MALFORMED, `${this.what}.${key}.${k}: not a count`);
    }
    return out;
  }
}

/** Fields of `obj` once its `v` is the integer 1 and its `type` is `kind`. */
export function header(obj, kind) {
  const f = new Fields(obj, kind);
  const v = obj.v;
  if (!(typeof v === 'number' && v === SCHEMA_VERSION)) fail(BAD_VERSION, `${kind}: schema version ${v}, want 1`);
  if (obj.type !== kind) fail(MALFORMED, `expected type '${kind}', got ${JSON.stringify(obj.type) ?? 'None'}`);
  return f;
}

/** The msgpack value in `payload`, refusing payloads over `maxBytes` (too_large) first. */
export function unpackMessage(payload, maxBytes, kind) {
  if (payload.length > maxBytes) fail(TOO_LARGE, `${kind}: ${payload.length} bytes > ${maxBytes}`);
  try {
    return unpack(payload);
  } catch (err) {
    if (err instanceof MsgpackError) fail(MALFORMED, `${kind}: not msgpack (${err.message})`);
    throw err;
  }
}

export const packMessage = pack;

export function loadJson(payload, kind) {
  if (payload.length > MAX_JSON_BYTES) fail(TOO_LARGE, `${kind}: ${payload.length} bytes`);
  try {
    return parseJson(payload);
  } catch (err) {
    if (err instanceof JsonError) fail(MALFORMED, `${kind}: not JSON (${err.message})`);
    throw err;
  }
}

export const dumpMessage = dumpJson;
