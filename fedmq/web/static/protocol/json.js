/**
 * JSON exactly as fedmq's Python side reads and writes it (json.loads of UTF-8 text;
 * json.dumps(obj, separators=(",", ":"), allow_nan=False)), so presence, status and
 * metrics documents match byte for byte and are refused for the same reasons.
 *
 * Why not JSON.parse: it reads `1.0` as the integer 1 (the protocol tells them apart),
 * refuses NaN/Infinity where Python reads them (and the decoder then says non_finite),
 * and TextDecoder drops a BOM that Python refuses. Parsed integers are Numbers (BigInt
 * beyond 2^53), floats are `Float` (msgpack.js), objects null-prototype. Written
 * floats use Python's repr (`30.0`, `1e-05`, `1e+16`) and strings are ASCII with
 * \uXXXX escapes (ensure_ascii). Every parse failure is a JsonError.
 */

import { Float } from './msgpack.js';

export class JsonError extends Error {}

const MAX_DEPTH = 900;
const fromUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const utf8 = new TextEncoder();
const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/y;
const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

class Parser {
  constructor(text) { this.s = text; this.i = 0; }

  error(what) { return new JsonError(`${what} at char ${this.i}`); }

  ws() { while (' \t\n\r'.includes(this.s[this.i]) && this.i < this.s.length) this.i++; }

  value(depth) {
    this.ws();
    const c = this.s[this.i];
    if (c === '{') return this.object(depth + 1);
    if (c === '[') return this.array(depth + 1);
    if (c === '"') return this.string();
    for (const [word, v] of [['null', null], ['true', true], ['false', false],
      ['NaN', new Float(NaN)], ['Infinity', new Float(Infinity)], ['-Infinity', new Float(-Infinity)]]) {
      if (this.s.startsWith(word, this.i)) { this.i += word.length; return v; }
    }
    NUMBER.lastIndex = this.i;
    const m = NUMBER.exec(this.s);
    if (m === null) throw this.error('expecting value');
    this.i += m[0].length;
    if (m[1] !== undefined || m[2] !== undefined) return new Float(Number(m[0]));
    const big = BigInt(m[0]);
    return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }

  object(depth) {
    if (depth > MAX_DEPTH) throw this.error('nested too deep');
    this.i++;
    const out = Object.create(null);
    this.ws();
    if (this.s[this.i] === '}') { this.i++; return out; }
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') throw this.error('expecting property name');
      const key = this.string();
      this.ws();
      if (this.s[this.i] !== ':') throw this.error("expecting ':'");
      this.i++;
      out[key] = this.value(depth);
      this.ws();
      const c = this.s[this.i++];
      if (c === '}') return out;
      if (c !== ',') throw this.error("expecting ',' or '}'");
    }
  }

  array(depth) {
    if (depth > MAX_DEPTH) throw this.error('nested too deep');
    this.i++;
    const out = [];
    this.ws();
    if (this.s[this.i] === ']') { this.i++; return out; }
    for (;;) {
      out.push(this.value(depth));
      this.ws();
      const c = this.s[this.i++];
      if (c === ']') return out;
      if (c !== ',') throw this.error("expecting ',' or ']'");
    }
  }

  string() {
    this.i++;
    let out = '';
    for (;;) {
      if (this.i >= this.s.length) throw this.error('unterminated string');
      const c = this.s[this.i++];
      if (c === '"') return out;
      if (c.charCodeAt(0) < 0x20) throw this.error('invalid control character');
      if (c !== '\\') { out += c; continue; }
      const e = this.s[this.i++];
      if (e === 'u') {
        const hex = this.s.slice(this.i, this.i + 4);
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) throw this.error('invalid \\uXXXX escape');
        this.i += 4;
        out += String.fromCharCode(parseInt(hex, 16));
      } else if (e !== undefined && Object.hasOwn(ESCAPES, e)) out += ESCAPES[e];
      else throw this.error('invalid escape');
    }
  }
}

/** Parse UTF-8 `bytes` as Python's json.loads(bytes.decode("utf-8")) would. */
export function parseJson(bytes) {
  let text;
  try {
    text = fromUtf8.decode(bytes);
  } catch {
    throw new JsonError('not valid UTF-8');
  }
  if (text.startsWith('\ufeff')) throw new JsonError('unexpected UTF-8 BOM');
  const p = new Parser(text);
  const v = p.value(0);
  p.ws();
  if (p.i !== text.length) throw p.error('extra data');
  return v;
}

// --- writing ------------------------------------------------------------------------------

/** Python's repr(float) for a finite x: shortest round-trip digits, its notation rules. */
export function pyFloat(x) {
  if (!Number.isFinite(x)) throw new RangeError(`JSON cannot carry ${x} (allow_nan=False)`);
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expText] = Math.abs(x).toExponential().split('e');
  const exp = Number(expText);
  const digits = mant.replace('.', '');
  const sign = x < 0 ? '-' : '';
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const e = Math.abs(exp) < 10 ? `0${Math.abs(exp)}` : `${Math.abs(exp)}`;
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${e}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return `${sign}${digits}${'0'.repeat(exp + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

function pyString(s) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    const code = s.charCodeAt(i);
    if (c === '"') out += '\\"';
    else if (c === '\\') out += '\\\\';
    else if (c === '\n') out += '\\n';
    else if (c === '\r') out += '\\r';
    else if (c === '\t') out += '\\t';
    else if (c === '\b') out += '\\b';
    else if (c === '\f') out += '\\f';
    else if (code < 0x20 || code > 0x7e) out += `\\u${code.toString(16).padStart(4, '0')}`;
    else out += c;
  }
  return `${out}"`;
}

function write(v) {
  if (v === null || v === undefined) return 'null';
  if (v === true) return 'true';
  if (v === false) return 'false';
  if (v instanceof Float) return pyFloat(v.value);
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : pyFloat(v);
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'string') return pyString(v);
  if (Array.isArray(v)) return `[${v.map(write).join(',')}]`;
  if (typeof v === 'object') {
    return `{${Object.entries(v).map(([k, item]) => `${pyString(k)}:${write(item)}`).join(',')}}`;
  }
  throw new TypeError(`JSON cannot carry ${typeof v}`);
}

/** UTF-8 bytes of `v` as json.dumps(v, separators=(",", ":"), allow_nan=False).encode(). */
export function dumpJson(v) {
  return utf8.encode(write(v));
}
