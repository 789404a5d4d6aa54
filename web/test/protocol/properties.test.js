// Property-style round trips with a seeded PRNG: codecs within their error bounds,
// messages that survive encode -> decode -> encode, and mutated bytes that are either
// decoded or refused with a WireError, never anything else.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as P from '../../src/protocol/index.js';
import { fromHex, load } from './vectors.js';

/** mulberry32: a small seeded PRNG, so every run draws the same cases. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function randomDelta(rand) {
  const n = 1 + Math.floor(rand() * 3);
  return Array.from({ length: n }, (_, i) => {
    const shape = rand() < 0.2 ? [] : [1 + Math.floor(rand() * 40)];
    const scale = 10 ** (rand() * 8 - 6);
    const data = Float32Array.from({ length: P.numel(shape) }, () => (rand() - 0.5) * scale * (rand() < 0.1 ? 0 : 1));
    return { name: `t${i}`, shape, data };
  });
}

const CODECS = ['none', 'fp16', 'int8', 'int8:block=7', 'qsgd:8', 'qsgd:1,4', 'topk:0.3', 'topk:0.1+fp16',
  'topk:0.2+int8:block=3', 'int8+zstd', 'topk:0.5+qsgd+zstd:5'];
await P.loadZstd();

test('every codec decodes what it encodes, within its error bound', () => {
  const rand = prng(1);
  for (let i = 0; i < 300; i++) {
    const spec = CODECS[i % CODECS.length];
    const pipe = P.parseCodec(spec);
    const delta = randomDelta(rand);
    const entries = P.encodeDelta(delta, spec, { random: rand });
    const wire = P.unpack(P.pack(entries)); // as a receiver sees them
    const back = P.decodeDelta(wire, spec, delta);
    delta.forEach((t, k) => {
      const peak = t.data.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      const kept = new Set(pipe.topk === null ? t.data.keys() : P.topIndices(t.data, pipe.kept(t.data.length)));
      t.data.forEach((x, j) => {
        const y = back[k].data[j];
        if (!kept.has(j)) return assert.equal(y, 0);
        const q = pipe.quantiser;
        const step = Math.max(peak / (q.levels || 1), 2 ** -126);
        const bound = q.kind === 'f4' ? 0 : q.kind === 'f2' ? 2 ** -11 * Math.abs(x) + 2 ** -25 : (q.stochastic ? 1 : 0.5) * step * 1.0001;
        assert.ok(Math.abs(y - x) <= bound, `${spec}: ${x} -> ${y} (bound ${bound})`);
      });
    });
  }
});

test('error feedback: decoded updates plus the last residual add up to the true deltas', () => {
  const rand = prng(2);
  for (const spec of ['topk:0.2+int8', 'int8:block=4', 'topk:0.1']) {
    const shapes = [{ name: 'w', shape: [50] }];
    const sum = new Float64Array(50);
    const sent = new Float64Array(50);
    let residual = null;
    for (let r = 0; r < 10; r++) {
      const delta = [{ name: 'w', shape: [50], data: Float32Array.from({ length: 50 }, () => rand() - 0.5) }];
      delta[0].data.forEach((x, j) => { sum[j] += x; });
      const out = P.encodeWithFeedback(delta, spec, residual);
      P.decodeDelta(out.entries, spec, shapes)[0].data.forEach((x, j) => { sent[j] += x; });
      residual = out.residual;
    }
    sum.forEach((x, j) => assert.ok(Math.abs(sent[j] + residual[0].data[j] - x) < 1e-4, spec));
  }
});

test('messages survive encode -> decode -> encode byte for byte', () => {
  const rand = prng(3);
  const word = () => `a${Math.floor(rand() * 1e6)}`;
  for (let i = 0; i < 100; i++) {
    const weights = randomDelta(rand);
    const model = {
      job: word(), run: word(), round: 1 + Math.floor(rand() * 1e6), attempt: Math.floor(rand() * 3),
      model_id: P.weightsDigest(weights), task: 'digits',
      plan: { epochs: 1, batch_size: 32, lr: rand(), seed: Math.floor(rand() * 2 ** 32), options: { mu: rand(), tag: 'x' } },
      codec: 'int8', deadline_s: rand() * 100, cohort: rand() < 0.5 ? null : [word(), word()], done: rand() < 0.2,
      issued_at: 1.7e9 + rand(), max_payload: rand() < 0.5 ? 0 : 1024 + Math.floor(rand() * 1e6), weights,
    };
    const bytes = P.encodeModel(model);
    assert.equal(P.toHex(P.encodeModel(P.decodeModel(bytes))), P.toHex(bytes));
    const update = {
      job: model.job, agent: word(), round: model.round, model_id: model.model_id, samples: 1 + Math.floor(rand() * 1e4),
      codec: 'topk:0.5+int8', tensors: P.encodeDelta(weights, 'topk:0.5+int8'), metrics: { loss: rand() },
      train_s: rand(), declined: null,
    };
    const ub = P.encodeUpdate(update);
    assert.equal(P.toHex(P.encodeUpdate(P.decodeUpdate(ub))), P.toHex(ub));
    const presence = { agent: word(), online: rand() < 0.5, at: rand() * 10 ** Math.floor(rand() * 20 - 6), samples: 7, device: 'phone', trainer: 'js', kind: 'browser' };
    const pb = P.encodePresence(presence);
    assert.equal(P.toHex(P.encodePresence(P.decodePresence(pb))), P.toHex(pb));
  }
});

test('mutated and cut vector bytes are decoded or refused with a WireError, never a crash', () => {
  const rand = prng(4);
  const decoders = { model: P.decodeModel, update: P.decodeUpdate, presence: P.decodePresence, status: P.decodeStatus, metrics: P.decodeMetrics, rollcall: P.decodeRollcall };
  for (const v of load('messages.json').messages) {
    const bytes = fromHex(v.hex);
    for (let i = 0; i < 200; i++) {
      const b = bytes.slice(0, i % 5 === 0 ? Math.floor(rand() * bytes.length) : bytes.length);
      for (let k = 0; k < 1 + Math.floor(rand() * 3); k++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      try {
        decoders[v.kind](b);
      } catch (err) {
        assert.ok(err instanceof P.WireError, `${v.name}: ${err.stack}`);
        assert.ok(Object.values(P.RejectReason).includes(err.reason));
      }
    }
  }
});

test('sha256 matches node:crypto on random lengths', async () => {
  const { createHash } = await import('node:crypto');
  const rand = prng(5);
  for (let n = 0; n < 300; n += 1 + Math.floor(rand() * 9)) {
    const b = Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
    assert.equal(P.sha256Hex(b), createHash('sha256').update(b).digest('hex'));
  }
});

test('JSON floats are written as Python repr writes them', () => {
  const cases = [[30, '30.0'], [0.05, '0.05'], [1e16, '1e+16'], [1.5e16, '1.5e+16'], [1e-5, '1e-05'], [0.0001, '0.0001'],
    [1700000000.5, '1700000000.5'], [-0, '-0.0'], [123456789012345680, '1.2345678901234568e+17'], [5e-324, '5e-324']];
  for (const [x, want] of cases) assert.equal(new TextDecoder().decode(P.dumpJson(P.f64(x))), want);
});
