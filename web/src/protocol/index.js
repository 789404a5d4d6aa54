/**
 * fedmq's wire protocol in JavaScript (docs/PROTOCOL.md): the same bytes, validation
 * rules and reject reasons as the Python package `protocol/`, checked against the shared
 * vectors in protocol/vectors/. ES modules for the browser and Node 20; the only import
 * outside this folder is `fzstd`, loaded lazily to read zstd updates (codecs/zstd.js).
 *
 * Values: byte strings are Uint8Array; named tensors are [{name, shape, data:
 * Float32Array}] in model order; messages use the wire's (and the Python dataclasses')
 * field names, e.g. model.model_id, model.plan.batch_size, model.weights. A peer's bad
 * input throws WireError (`.reason` is a RejectReason value); a caller's mistake throws
 * Error.
 *
 * Messages      encodeModel/decodeModel, encodeUpdate/decodeUpdate (decline: declined
 *               set, samples 0, tensors []), encodePresence/decodePresence,
 *               encodeStatus/decodeStatus, encodeMetrics/decodeMetrics
 * Topics        new Topics(job) (.model, .allModelChunks, .agentSubscriptions, .update(a),
 *               .presence(a), .status, .metrics, ...), parseTopic(topic), checkId, isId
 * Codecs        parseCodec(spec) (.lossless, .biased, .stochastic, .kept(n)),
 *               codecProblem(spec), encodeDelta(delta, spec, {random}),
 *               decodeDelta(entries, spec, shapes), encodeWithFeedback(delta, spec,
 *               residual, {random}) -> {entries, residual}, rawSize, loadZstd
 * Chunks        split(payload, maxPayload) -> {manifest, frames} | null, encodeManifest,
 *               decodeFrame, isChunkFrame, new Reassembler({maxBufferedBytes, ttlS,
 *               maxPayloadSize}).add(source, frame, now)
 * Signing       importSigningKey(pkcs8), signingKeyFromSeed(seed), importVerifyKey(spki |
 *               raw), seal(body, purpose, {job, run, signer, key}), openModel(payload,
 *               {job, key, maxBodyBytes}), openUpdate(...), openPresence(...), decodeSigned, isSigned,
 *               signedBytes (async where WebCrypto is)
 * Tensors       encodeArray/decodeArray, encodeWeights/decodeWeights, weightsDigest,
 *               floatToHalf/halfToFloat, sha256/sha256Hex
 * Low level     pack/unpack/peekFields/Float/f64 (msgpack as Python writes it),
 *               parseJson/dumpJson (JSON as Python writes it)
 */

export { fail, RejectReason, WireError } from './errors.js';
export { checkId, isId, parseTopic, PREFIX, TopicKind, Topics } from './topics.js';
export { DEFAULT_MAX_BYTES, MAX_JSON_BYTES, MAX_TENSORS, SCHEMA_VERSION } from './fields.js';
export { decodeModel, decodeUpdate, encodeModel, encodeUpdate, MIN_MAX_PAYLOAD } from './messages.js';
export { asks, cohortValue, decodeCohortHash, inCohort, MAX_BELOW } from './cohort.js';
export {
  CLOSED_BY, decodeMetrics, decodePresence, decodeRollcall, decodeStatus, encodeMetrics,
  encodePresence, encodeRollcall, encodeStatus, PHASES,
} from './reports.js';
export {
  decodeArray, decodeWeights, DTYPES, encodeArray, encodeWeights, numElements, numel, weightsDigest,
} from './tensors.js';
export { floatToHalf, halfToFloat } from './float16.js';
export { sha256, sha256Hex, toHex } from './sha256.js';
export { MAX_BLOCK, MAX_LEVELS, parseCodec, Pipeline, STAGES } from './codecs/spec.js';
export {
  codecProblem, decodeDelta, encodeDelta, encodeWithFeedback, maxInnerSize, rawSize, topIndices,
} from './codecs/delta.js';
export { loadZstd, rawFrame, zstdReady } from './codecs/zstd.js';
export {
  decodeFrame, encodeManifest, FRAME_OVERHEAD, isChunkFrame, MAX_CHUNKS, Reassembler, split,
} from './chunks.js';
export {
  COORDINATOR_SIGNER, decodeSigned, ENVELOPE_OVERHEAD, importSigningKey, importVerifyKey, isSigned,
  openModel, openPresence, openUpdate, Purpose, seal, signedBytes, signingKeyFromSeed,
} from './signing.js';
export { Ext, f64, Float, pack, peekFields, unpack } from './msgpack.js';
export { dumpJson, parseJson } from './json.js';
