/**
 * Chunked transfer (protocol/chunks.py, docs/PROTOCOL.md §4.6): a payload above a
 * broker's cap travels as self-describing frames {v, type: "chunk", digest (SHA-256 of
 * the whole payload), index, count, size, data}; a chunked retained model also leaves a
 * manifest {v, type: "chunked", digest, count, size} on its main topic. Frames may
 * arrive out of order, twice, or not at all.
 *
 * Reassembler is pure: it takes `now` (seconds, any monotonic origin) and never reads a
 * clock; its memory is bounded by `maxBufferedBytes` (oldest incomplete sets evicted
 * first) and sets older than `ttlS` expire.
 */

import { fail, RejectReason } from './errors.js';
import { isInt, isMap, SCHEMA_VERSION } from './fields.js';
import { MsgpackError, pack, peekFields, unpack } from './msgpack.js';
import { sha256Hex } from './sha256.js';

/** msgpack framing around a chunk's data stays under this many bytes */
export const FRAME_OVERHEAD = 160;
export const MIN_MAX_PAYLOAD = 1024;
export const MAX_CHUNKS = 65_536;
/** completed sets remembered so that late duplicates of their chunks are ignored */
export const REMEMBER_COMPLETED = 256;
const DIGEST = /^[0-9a-f]{64}$/;
const { MALFORMED, TOO_LARGE } = RejectReason;

/** Whether `payload` is a chunk frame or a manifest rather than a whole message (cheap). */
export function isChunkFrame(payload) {
  try {
    const { type } = peekFields(payload, ['type']);
    return type === 'chunk' || type === 'chunked';
  } catch (err) {
    if (err instanceof MsgpackError) return false;
    throw err;
  }
}

/**
 * {manifest: {digest, count, size}, frames: Uint8Array[]} for `payload` if it exceeds
 * `maxPayload`, else null (send it whole). Throws RangeError for a cap below 1024.
 */
export function split(payload, maxPayload) {
  if (maxPayload < MIN_MAX_PAYLOAD) throw new RangeError(`max_payload must be >= ${MIN_MAX_PAYLOAD} bytes, got ${maxPayload}`);
  if (payload.length <= maxPayload) return null;
  const piece = maxPayload - FRAME_OVERHEAD;
  const count = Math.ceil(payload.length / piece);
  if (count > MAX_CHUNKS) throw new RangeError(`${payload.length} bytes would need ${count} chunks > ${MAX_CHUNKS}`);
  const manifest = { digest: sha256Hex(payload), count, size: payload.length };
  const frames = [];
  for (let i = 0; i < count; i++) {
    frames.push(pack({
      v: SCHEMA_VERSION, type: 'chunk', digest: manifest.digest, index: i, count, size: manifest.size,
      data: payload.subarray(i * piece, (i + 1) * piece),
    }));
  }
  return { manifest, frames };
}

export function encodeManifest(m) {
  return pack({ v: SCHEMA_VERSION, type: 'chunked', digest: m.digest, count: m.count, size: m.size });
}

const count = (v) => (isInt(v) && v >= 0 ? Number(v) : null);

/**
 * A chunk {kind: 'chunk', digest, index, count, size, data} or a manifest {kind:
 * 'chunked', digest, count, size}. Throws WireError: malformed for anything
 * inconsistent, too_large for a `size` above `maxSize`.
 */
export function decodeFrame(payload, maxSize) {
  let obj;
  try {
    obj = unpack(payload);
  } catch (err) {
    if (err instanceof MsgpackError) fail(MALFORMED, `chunk: not msgpack (${err.message})`);
    throw err;
  }
  if (!isMap(obj) || obj.v !== SCHEMA_VERSION) fail(MALFORMED, 'chunk: not a version 1 map');
  const { type, digest } = obj;
  const n = count(obj.count);
  const size = count(obj.size);
  if (typeof digest !== 'string' || !DIGEST.test(digest)) fail(MALFORMED, 'chunk: digest must be 64 lowercase hex digits');
  if (n === null || n < 1 || n > MAX_CHUNKS) fail(MALFORMED, `chunk: count ${obj.count}`);
  if (size === null || size < n) fail(MALFORMED, `chunk: size ${obj.size}`);
  if (size > maxSize) fail(TOO_LARGE, `chunked payload of ${size} bytes > ${maxSize}`);
  if (type === 'chunked') return { kind: 'chunked', digest, count: n, size };
  const index = count(obj.index);
  const { data } = obj;
  if (type !== 'chunk' || index === null || !(index < n)) fail(MALFORMED, `chunk: bad type or index ${obj.index}`);
  if (!(data instanceof Uint8Array) || !data.length || data.length > size) fail(MALFORMED, 'chunk: data must be non-empty binary');
  return { kind: 'chunk', digest, index, count: n, size, data };
}

/** Collects chunk frames per (source, digest) and yields each complete payload once. */
export class Reassembler {
  constructor({ maxBufferedBytes, ttlS, maxPayloadSize }) {
    this.maxBufferedBytes = maxBufferedBytes;
    this.ttlS = ttlS;
    this.maxPayloadSize = maxPayloadSize;
    this.sets = new Map();
    this.completed = new Map();
    this.buffered = 0;
    this.evicted = 0;
    this.expired = 0;
  }

  /**
   * Take one frame from `source` (a topic family or an agent) at time `now`; the
   * completed payload, or null. Manifests are accepted and ignored. Throws WireError
   * for a malformed, inconsistent or oversized frame, or a set that does not hash to
   * its digest.
   */
  add(source, frame, now) {
    this.expire(now);
    const parsed = decodeFrame(frame, this.maxPayloadSize);
    if (parsed.kind === 'chunked') return null;
    const key = `${source}\u0000${parsed.digest}`;
    if (this.completed.has(key)) return null;
    let entry = this.sets.get(key);
    if (entry === undefined) {
      entry = { count: parsed.count, size: parsed.size, firstSeen: now, parts: new Map(), buffered: 0 };
      this.sets.set(key, entry);
    } else if (entry.count !== parsed.count || entry.size !== parsed.size) {
      fail(MALFORMED, "chunk disagrees with its set's count/size");
    }
    if (entry.parts.has(parsed.index)) return null;
    if (entry.buffered + parsed.data.length > entry.size) {
      this.drop(key);
      fail(MALFORMED, 'chunks exceed their declared size');
    }
    entry.parts.set(parsed.index, parsed.data.slice());
    entry.buffered += parsed.data.length;
    this.buffered += parsed.data.length;
    if (entry.parts.size < entry.count) {
      this.evictOverBudget(key);
      return null;
    }
    this.drop(key);
    const payload = new Uint8Array(entry.buffered);
    for (let i = 0, at = 0; i < entry.count; i++) {
      payload.set(entry.parts.get(i), at);
      at += entry.parts.get(i).length;
    }
    if (payload.length !== entry.size || sha256Hex(payload) !== parsed.digest) {
      fail(MALFORMED, 'reassembled bytes do not match the digest');
    }
    this.completed.set(key, null);
    if (this.completed.size > REMEMBER_COMPLETED) this.completed.delete(this.completed.keys().next().value);
    return payload;
  }

  /** Drop incomplete sets older than `ttlS`. */
  expire(now) {
    for (const [key, s] of [...this.sets]) {
      if (now - s.firstSeen > this.ttlS) {
        this.drop(key);
        this.expired++;
      }
    }
  }

  evictOverBudget(keep) {
    for (const key of [...this.sets.keys()]) {
      if (this.buffered <= this.maxBufferedBytes) return;
      if (key !== keep) {
        this.drop(key);
        this.evicted++;
      }
    }
    if (this.buffered > this.maxBufferedBytes) {
      this.drop(keep);
      this.evicted++;
    }
  }

  drop(key) {
    const entry = this.sets.get(key);
    if (entry !== undefined) {
      this.sets.delete(key);
      this.buffered -= entry.buffered;
    }
  }
}
