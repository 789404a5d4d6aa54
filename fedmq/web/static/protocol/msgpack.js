/**
 * msgpack exactly as fedmq's Python side writes and reads it (msgpack-python with
 * use_bin_type=True, raw=False, strict_map_key=True), so encodings match byte for
 * byte and decoding refuses what Python refuses.
 *
 * Why not @msgpack/msgpack: its decoder turns float64 1.0 into the integer 1, and the
 * protocol tells them apart (`"v": 1.0` is bad_version, an integer field holding 1.0 is
 * malformed); its encoder writes 30.0 as an integer. Here decoded floats are `Float`
 * values and an encoder writes a `Float` (or any non-integral number) as float64.
 *
 * Writing: smallest integer encoding (unsigned types for n >= 0), floats as float64,
 * str as UTF-8 (fixstr/str8/16/32), Uint8Array as bin, arrays, plain objects and Maps
 * as maps in insertion order. Reading: ints are Numbers (BigInt beyond 2^53), floats are
 * `Float`, maps are null-prototype objects (str keys; bin keys are accepted and
 * dropped, as no field can be named by them), ext values are `Ext`; at most 1024
 * nested containers; trailing bytes refused. Every failure is a MsgpackError.
 */

/** A float on the wire (float32 or float64); `valueOf` lets it take part in arithmetic. */
export class Float {
  constructor(value) { this.value = value; }
  valueOf() { return this.value; }
}

/** Mark `x` to be written as float64 even when it is integral. */
export const f64 = (x) => new Float(Number(x));

/** An extension value (fedmq writes none; a known field holding one is malformed). */
export class Ext {
  constructor(type, data) { this.type = type; this.data = data; }
}

export class MsgpackError extends Error {}

const MAX_DEPTH = 1024;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

// --- writing ------------------------------------------------------------------------------

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.at = 0;
  }

  room(n) {
    if (this.at + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.at + n) size *= 2;
    const bigger = new Uint8Array(size);
    bigger.set(this.buf.subarray(0, this.at));
    this.buf = bigger;
    this.view = new DataView(bigger.buffer);
  }

  byte(b) { this.room(1); this.buf[this.at++] = b; }

  bytes(b) { this.room(b.length); this.buf.set(b, this.at); this.at += b.length; }

  head(tag, n, width) {
    this.room(1 + width);
    this.buf[this.at++] = tag;
    if (width === 1) this.view.setUint8(this.at, n);
    else if (width === 2) this.view.setUint16(this.at, n);
    else if (width === 4) this.view.setUint32(this.at, n);
    else this.view.setBigUint64(this.at, BigInt.asUintN(64, BigInt(n)));
    this.at += width;
  }

  /** A length-prefixed family: fix (when `fix` given), then 8 (when `t8`), 16, 32 bits. */
  length(n, fix, fixMax, t8, t16, t32) {
    if (fix !== null && n <= fixMax) this.byte(fix | n);
    else if (t8 !== null && n < 0x100) this.head(t8, n, 1);
    else if (n < 0x10000) this.head(t16, n, 2);
    else if (n < 0x100000000) this.head(t32, n, 4);
    else throw new RangeError(`msgpack: ${n} items or bytes are too many`);
  }

  int(n) {
    const big = typeof n === 'bigint';
    if (!big && !Number.isSafeInteger(n)) throw new RangeError(`msgpack: ${n} is not a safe integer`);
    if (n >= 0) {
      if (n < 0x80) this.byte(Number(n));
      else if (n < 0x100) this.head(0xcc, Number(n), 1);
      else if (n < 0x10000) this.head(0xcd, Number(n), 2);
      else if (n < 0x100000000) this.head(0xce, Number(n), 4);
      else if (BigInt(n) < 1n << 64n) this.head(0xcf, n, 8);
      else throw new RangeError(`msgpack: ${n} does not fit 64 bits`);
    } else if (n >= -32) this.byte(0x100 + Number(n));
    else if (n >= -0x80) { this.byte(0xd0); this.byte(0x100 + Number(n)); }
    else if (n >= -0x8000) this.head(0xd1, 0x10000 + Number(n), 2);
    else if (n >= -0x80000000) this.head(0xd2, 0x100000000 + Number(n), 4);
    else if (BigInt(n) >= -(1n << 63n)) this.head(0xd3, n, 8);
    else throw new RangeError(`msgpack: ${n} does not fit 64 bits`);
  }

  float(x) {
    this.room(9);
    this.buf[this.at++] = 0xcb;
    this.view.setFloat64(this.at, x);
    this.at += 8;
  }

  value(v, depth = 0) {
    if (depth > MAX_DEPTH) throw new RangeError('msgpack: nested too deep');
    if (v === null || v === undefined) this.byte(0xc0);
    else if (v === false) this.byte(0xc2);
    else if (v === true) this.byte(0xc3);
    else if (v instanceof Float) this.float(v.value);
    else if (typeof v === 'number') { if (Number.isInteger(v)) this.int(v); else this.float(v); }
    else if (typeof v === 'bigint') this.int(v);
    else if (typeof v === 'string') {
      const b = utf8.encode(v);
      this.length(b.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
      this.bytes(b);
    } else if (v instanceof Uint8Array) {
      this.length(v.length, null, 0, 0xc4, 0xc5, 0xc6);
      this.bytes(v);
    } else if (Array.isArray(v)) {
      this.length(v.length, 0x90, 15, null, 0xdc, 0xdd);
      for (const item of v) this.value(item, depth + 1);
    } else if (v instanceof Map || typeof v === 'object') {
      const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
      this.length(entries.length, 0x80, 15, null, 0xde, 0xdf);
      for (const [k, item] of entries) {
        this.value(k, depth + 1);
        this.value(item, depth + 1);
      }
    } else throw new TypeError(`msgpack: cannot write ${typeof v}`);
  }
}

/** Bytes for `value`, as msgpack-python's packb(value, use_bin_type=True) writes them. */
export function pack(value) {
  const w = new Writer();
  w.value(value);
  return w.buf.slice(0, w.at);
}

// --- reading ------------------------------------------------------------------------------

export class Reader {
  /** @param {Uint8Array} bytes */
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = 0;
  }

  need(n) {
    if (this.at + n > this.bytes.length) throw new MsgpackError('msgpack: data cut short');
    const at = this.at;
    this.at += n;
    return at;
  }

  u8() { return this.view.getUint8(this.need(1)); }
  u16() { return this.view.getUint16(this.need(2)); }
  u32() { return this.view.getUint32(this.need(4)); }

  take(n) { const at = this.need(n); return this.bytes.subarray(at, at + n); }

  str(n) {
    try {
      return fromUtf8.decode(this.take(n));
    } catch {
      throw new MsgpackError('msgpack: str is not valid UTF-8');
    }
  }

  /** The next value; `skip` reads past it without building it. */
  value(depth = 0, skip = false) {
    const t = this.u8();
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if (t >= 0xa0 && t <= 0xbf) return skip ? this.take(t & 0x1f) : this.str(t & 0x1f);
    if (t >= 0x90 && t <= 0x9f) return this.array(t & 0x0f, depth, skip);
    if (t >= 0x80 && t <= 0x8f) return this.map(t & 0x0f, depth, skip);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.take(this.u8());
      case 0xc5: return this.take(this.u16());
      case 0xc6: return this.take(this.u32());
      case 0xc7: { const n = this.u8(); return this.ext(n); }
      case 0xc8: { const n = this.u16(); return this.ext(n); }
      case 0xc9: { const n = this.u32(); return this.ext(n); }
      case 0xca: return new Float(this.view.getFloat32(this.need(4)));
      case 0xcb: return new Float(this.view.getFloat64(this.need(8)));
      case 0xcc: return this.u8();
      case 0xcd: return this.u16();
      case 0xce: return this.u32();
      case 0xcf: return safe(this.view.getBigUint64(this.need(8)));
      case 0xd0: return this.view.getInt8(this.need(1));
      case 0xd1: return this.view.getInt16(this.need(2));
      case 0xd2: return this.view.getInt32(this.need(4));
      case 0xd3: return safe(this.view.getBigInt64(this.need(8)));
      case 0xd4: return this.ext(1);
      case 0xd5: return this.ext(2);
      case 0xd6: return this.ext(4);
      case 0xd7: return this.ext(8);
      case 0xd8: return this.ext(16);
      case 0xd9: { const n = this.u8(); return skip ? this.take(n) : this.str(n); }
      case 0xda: { const n = this.u16(); return skip ? this.take(n) : this.str(n); }
      case 0xdb: { const n = this.u32(); return skip ? this.take(n) : this.str(n); }
      case 0xdc: return this.array(this.u16(), depth, skip);
      case 0xdd: return this.array(this.u32(), depth, skip);
      case 0xde: return this.map(this.u16(), depth, skip);
      case 0xdf: return this.map(this.u32(), depth, skip);
      default: throw new MsgpackError(`msgpack: reserved byte 0x${t.toString(16)}`);
    }
  }

  ext(n) {
    const type = this.view.getInt8(this.need(1));
    const data = this.take(n);
    if (type === -1) checkTimestamp(data);
    return new Ext(type, data);
  }

  array(n, depth, skip) {
    if (depth + 1 > MAX_DEPTH) throw new MsgpackError('msgpack: nested too deep');
    if (n > this.bytes.length - this.at) throw new MsgpackError('msgpack: data cut short');
    const out = skip ? null : new Array(n);
    for (let i = 0; i < n; i++) {
      const v = this.value(depth + 1, skip);
      if (!skip) out[i] = v;
    }
    return out;
  }

  map(n, depth, skip) {
    if (depth + 1 > MAX_DEPTH) throw new MsgpackError('msgpack: nested too deep');
    if (2 * n > this.bytes.length - this.at) throw new MsgpackError('msgpack: data cut short');
    const out = skip ? null : Object.create(null);
    for (let i = 0; i < n; i++) {
      const key = this.key(depth, skip);
      const v = this.value(depth + 1, skip);
      if (!skip && typeof key === 'string') out[key] = v;
    }
    return out;
  }

  /** A map key: str or bin only (strict_map_key); a bin key comes back as null. */
  key(depth, skip) {
    const t = this.bytes[this.at];
    const isStr = (t >= 0xa0 && t <= 0xbf) || t === 0xd9 || t === 0xda || t === 0xdb;
    const isBin = t === 0xc4 || t === 0xc5 || t === 0xc6;
    if (!isStr && !isBin) {
      if (this.at >= this.bytes.length) throw new MsgpackError('msgpack: data cut short');
      throw new MsgpackError('msgpack: map keys must be str');
    }
    const k = this.value(depth + 1, skip && isBin);
    return isStr ? k : null;
  }
}

function safe(big) {
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/** msgpack-python decodes ext -1 as a Timestamp and refuses a malformed one. */
function checkTimestamp(data) {
  const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let nanos = 0;
  if (data.length === 8) nanos = v.getUint32(0) >>> 2;
  else if (data.length === 12) nanos = v.getUint32(0);
  else if (data.length !== 4) throw new MsgpackError('msgpack: timestamp of a bad length');
  if (nanos > 999_999_999) throw new MsgpackError('msgpack: timestamp nanoseconds out of range');
}

/** The one value in `bytes`; trailing bytes are an error, as msgpack-python's unpackb says. */
export function unpack(bytes) {
  const r = new Reader(bytes);
  const v = r.value();
  if (r.at !== bytes.length) throw new MsgpackError('msgpack: extra data after the value');
  return v;
}

/**
 * The values of those of `keys` that the map in `bytes` holds, other values skipped
 * unbuilt, stopping once all are found (protocol/peek.py). Throws MsgpackError if
 * `bytes` is not a msgpack map (or is cut short before the keys are found).
 */
export function peekFields(bytes, keys) {
  const r = new Reader(bytes);
  const t = r.u8();
  let n;
  if (t >= 0x80 && t <= 0x8f) n = t & 0x0f;
  else if (t === 0xde) n = r.u16();
  else if (t === 0xdf) n = r.u32();
  else throw new MsgpackError('msgpack: not a map');
  const found = Object.create(null);
  let left = keys.length;
  for (let i = 0; i < n && left > 0; i++) {
    const key = r.key(0, false);
    if (typeof key === 'string' && keys.includes(key)) {
      if (!(key in found)) left--;
      found[key] = r.value(1);
    } else r.value(1, true);
  }
  return found;
}
