// The shared golden vectors, both ways, and every must-reject case with its reason.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as P from '../../src/protocol/index.js';
import { fromHex, load, numpyRandom, tensors } from './vectors.js';

const hex = (bytes) => P.toHex(bytes);
const MAX = 64 * 1024 * 1024;
const ENCODE = {
  model: P.encodeModel, update: P.encodeUpdate, presence: P.encodePresence,
  status: P.encodeStatus, metrics: P.encodeMetrics, rollcall: P.encodeRollcall,
};
const DECODE = {
  model: P.decodeModel, update: P.decodeUpdate, presence: P.decodePresence,
  status: P.decodeStatus, metrics: P.decodeMetrics, rollcall: P.decodeRollcall,
};

/** The JS value of a vector's message (weights and update entries from their hex). */
function message(kind, doc) {
  if (kind === 'model') return { ...doc, weights: tensors(doc.weights) };
  if (kind === 'update') {
    const { tensors_msgpack: entries, ...rest } = doc;
    return { ...rest, tensors: P.unpack(fromHex(entries)) };
  }
  return doc;
}

function assertSame(kind, got, want) {
  for (const [key, w] of Object.entries(want)) {
    if (key === 'weights') {
      assert.deepEqual(got.weights.map((t) => [t.name, t.shape, hex(P.encodeArray(t.data, '<f4', t.shape).data)]),
        w.map((t) => [t.name, t.shape, t.f32]));
    } else if (key === 'tensors_msgpack') {
      assert.equal(hex(P.pack(got.tensors)), w);
    } else assert.deepEqual(got[key], w, `${kind}.${key}`);
  }
}

for (const v of load('messages.json').messages) {
  test(`message ${v.name}: encode gives the bytes`, () => {
    const m = message(v.kind, v.message);
    const bytes = v.kind === 'model' && v.message.weights[0].dtype === '<f2'
      ? P.encodeModel(m, { downlink: '<f2' }) : ENCODE[v.kind](m);
    assert.equal(hex(bytes), v.hex);
  });
  test(`message ${v.name}: decode gives the message`, () => {
    assertSame(v.kind, DECODE[v.kind](fromHex(v.hex)), v.message);
  });
}

test('topics', () => {
  const t = load('messages.json').topics;
  const topics = new P.Topics(t.job);
  assert.deepEqual([topics.model, topics.modelChunk(3), topics.allModelChunks, topics.update(t.agent),
    topics.presence(t.agent), topics.status, topics.metrics, topics.allUpdates, topics.allPresence,
    topics.everything], [t.model, t.model_chunk_3, t.model_chunks, t.update, t.presence, t.status,
    t.metrics, t.all_updates, t.all_presence, t.everything]);
  assert.deepEqual(topics.agentSubscriptions, t.agent_subscriptions);
  assert.deepEqual(P.parseTopic(t.model_chunk_3), { job: 'demo', kind: 'model', agent: null, chunk: 3 });
  assert.deepEqual(P.parseTopic(t.update), { job: 'demo', kind: 'update', agent: 'pi-01', chunk: null });
});

const codecs = load('codecs.json');
await P.loadZstd();

for (const c of codecs.cases) {
  test(`codec ${c.codec}: encode gives the entries`, async () => {
    const random = c.seed === undefined ? null : await numpyRandom(c.seed);
    const entries = P.encodeDelta(tensors(c.delta), c.codec, { random });
    if (c.codec.includes('zstd')) {
      // this build writes raw blocks: the frame differs from libzstd's, its content may not
      const wire = P.unpack(fromHex(c.entries_msgpack));
      assert.equal(entries[0].size, wire[0].size);
      const inner = P.decodeDelta(entries, c.codec, tensors(c.delta));
      assert.ok(inner.length === c.delta.length);
      assert.equal(hex(P.unpack(P.pack([entries[0]]))[0].zstd.subarray(13 + 3)), c.inner_msgpack);
    } else assert.equal(hex(P.pack(entries)), c.entries_msgpack);
  });
  test(`codec ${c.codec}: decode gives the delta`, () => {
    const got = P.decodeDelta(P.unpack(fromHex(c.entries_msgpack)), c.codec, tensors(c.delta));
    assert.deepEqual(got.map((t) => [t.name, t.shape, hex(new Uint8Array(t.data.buffer))]),
      c.decoded.map((t) => [t.name, t.shape, t.f32]));
  });
}

test('error feedback: two rounds of topk+int8 give Python\'s entries and residuals', () => {
  let residual = null;
  for (const step of codecs.feedback.rounds) {
    const out = P.encodeWithFeedback(tensors(step.delta), codecs.feedback.codec, residual);
    assert.equal(hex(P.pack(out.entries)), step.entries_msgpack);
    assert.deepEqual(out.residual.map((t) => hex(new Uint8Array(t.data.buffer))), step.residual.map((t) => t.f32));
    residual = out.residual;
  }
});

test('chunks: split gives the frames and the manifest; reassembly the payload, once', () => {
  const c = load('chunks.json');
  const payload = fromHex(c.payload);
  const { manifest, frames } = P.split(payload, c.max_payload);
  assert.equal(hex(P.encodeManifest(manifest)), c.manifest);
  assert.deepEqual(frames.map(hex), c.frames);
  const r = new P.Reassembler({ maxBufferedBytes: 1 << 20, ttlS: 60, maxPayloadSize: MAX });
  const shuffled = [...c.frames].reverse().map(fromHex);
  const done = [...shuffled, shuffled[0]].map((f) => r.add('pi-01', f, 0)).filter((x) => x !== null);
  assert.deepEqual(done.map(hex), [c.payload]);
  assert.equal(P.isChunkFrame(fromHex(c.manifest)), true);
  assert.equal(P.isChunkFrame(payload), false);
});

const signed = load('signed.json');

test('signed: envelopes equal, signatures verify, keys import from PEM', async () => {
  const key = await P.signingKeyFromSeed(fromHex(signed.seed));
  const pemKey = await P.importSigningKey(signed.private_pem);
  const verify = await P.importVerifyKey(signed.public_pem);
  assert.equal(hex(new Uint8Array(await crypto.subtle.exportKey('raw', verify))), signed.public);
  for (const e of signed.envelopes) {
    const body = fromHex(e.body);
    assert.equal(hex(P.signedBytes(e.purpose, e.job, e.run, e.signer, body)), e.signed_bytes);
    for (const k of [key, pemKey]) {
      assert.equal(hex(await P.seal(body, e.purpose, { job: e.job, run: e.run, signer: e.signer, key: k })), e.envelope);
    }
    const open = e.purpose === 'model'
      ? P.openModel(fromHex(e.envelope), { job: e.job, key: verify, maxBodyBytes: MAX })
      : P.openUpdate(fromHex(e.envelope), { job: e.job, run: e.run, agent: e.signer, keys: { [e.signer]: verify }, maxBodyBytes: MAX });
    assert.equal(hex(await open), e.body);
  }
  const chunked = signed.chunked_model;
  const r = new P.Reassembler({ maxBufferedBytes: 1 << 20, ttlS: 60, maxPayloadSize: MAX });
  const whole = chunked.frames.map((f) => r.add('model', fromHex(f), 0)).at(-1);
  assert.equal(hex(whole), chunked.envelope);
  const body = await P.openModel(whole, { job: 'demo', key: verify, maxBodyBytes: MAX });
  assert.equal(P.decodeModel(body).max_payload, chunked.max_payload);
});

const verifyKey = await P.importVerifyKey(signed.public_pem);

async function attempt(c) {
  const bytes = c.hex === undefined ? null : fromHex(c.hex);
  switch (c.kind) {
    case 'delta': return P.decodeDelta(P.unpack(fromHex(c.entries_msgpack)), c.codec, c.shapes);
    case 'topic': return P.parseTopic(c.topic);
    case 'frame': return P.decodeFrame(bytes, c.max_size);
    case 'reassemble': {
      const r = new P.Reassembler({ maxBufferedBytes: 1 << 30, ttlS: 60, maxPayloadSize: c.max_size });
      return c.frames.map((f) => r.add('s', fromHex(f), 0));
    }
    case 'signed': return P.decodeSigned(bytes, c.max_body);
    case 'open_update':
      return P.openUpdate(bytes, { job: c.job, run: c.run, agent: c.agent, keys: { [c.agent]: verifyKey }, maxBodyBytes: c.max_body });
    case 'open_model': return P.openModel(bytes, { job: c.job, key: verifyKey, maxBodyBytes: c.max_body });
    default: return DECODE[c.kind](bytes);
  }
}

for (const c of load('reject.json').cases) {
  test(`must reject ${c.name}: ${c.reason}`, async () => {
    await assert.rejects(async () => attempt(c), (err) => {
      assert.ok(err instanceof P.WireError, `${c.name}: ${err.stack}`);
      assert.equal(err.reason, c.reason, err.detail);
      return true;
    });
  });
}
