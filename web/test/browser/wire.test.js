import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createHash } from 'node:crypto';
import {
  agentRngKey, decodeModel, decodePresence, encodeDelta, encodePresence, openPresence, parseTopic, peekModel, sealPresence,
  topicsFor, WireError,
} from '../../src/agent/wire.js';
import { decodeDelta } from '../../src/protocol/index.js';
import { modelBytes } from './helpers.js';

test('a model comes with named weights and shapes, as the trainer takes them', () => {
  const model = decodeModel(modelBytes());
  assert.deepEqual(model.shapes, { '0.weight': [2, 2], '0.bias': [2] });
  assert.deepEqual(Array.from(model.weights['0.bias']), [0.5, -0.5]);
  assert.equal(model.plan.lr, 0.1);
  assert.throws(() => decodeModel(modelBytes({ v: 2 })), (err) => err instanceof WireError && err.reason === 'bad_version');
});

test('deltas go through the library\'s codecs with error feedback', () => {
  const shapes = { w: [4] };
  const delta = { w: Float32Array.of(0.5, -0.25, 0.125, 1) };
  const none = encodeDelta(delta, shapes, 'none', null, null);
  assert.equal(none.residual, null);
  const top = encodeDelta(delta, shapes, 'topk:0.5', null, null);
  const sent = decodeDelta(top.entries, 'topk:0.5', [{ name: 'w', shape: [4] }])[0].data;
  assert.deepEqual(Array.from(sent), [0.5, 0, 0, 1]);
  assert.deepEqual(Array.from(top.residual.w), [0, -0.25, 0.125, 0]); // kept for the next round
  let calls = 0;
  encodeDelta(delta, shapes, 'qsgd:4', null, () => { calls++; return 0.5; });
  assert.ok(calls > 0);
});

test('the stochastic-rounding seed is Python\'s sha256(agent)[:8], big-endian', () => {
  const want = BigInt(`0x${createHash('sha256').update('web-1').digest('hex').slice(0, 16)}`);
  assert.equal(agentRngKey('web-1'), want);
});

test('topics and model headers for the pages', () => {
  const t = topicsFor('demo');
  assert.equal(t.update('web-1'), 'fedmq/v1/demo/update/web-1');
  assert.equal(parseTopic('demo', 'fedmq/v1/demo/agents/web-1').agent, 'web-1');
  assert.equal(parseTopic('other', 'fedmq/v1/demo/status'), null);
  assert.equal(parseTopic('demo', 'fedmq/v1/demo/agents/a b'), null);
  const header = peekModel(modelBytes({ deadline_s: 30.5 }));
  assert.deepEqual([header.run, header.round, header.task, header.deadline_s, header.plan.batch_size], ['r1', 1, 'linreg', 30.5, 2]);
});

test('a signed presence opens to the presence document; a bare one passes as it is', async () => {
  const seed = new Uint8Array(32).fill(7);
  const pkcs8 = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20, ...seed]);
  const key = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
  const bare = encodePresence({ agent: 'web-1', online: true, at: 5 });
  const sealed = await sealPresence(bare, { job: 'demo', session: 'ab12', signer: 'web-1', key });
  const { decode } = await import('@msgpack/msgpack');
  const envelope = decode(sealed);
  assert.deepEqual([envelope.type, envelope.purpose, envelope.job, envelope.run, envelope.signer], ['signed', 'presence', 'demo', 'ab12', 'web-1']);
  assert.deepEqual(decodePresence(openPresence(sealed)), decodePresence(bare));
  assert.equal(openPresence(bare), bare);
});

test('a model\'s roll call is read, and defaults to no one', () => {
  assert.deepEqual(decodeModel(modelBytes()).roll_call, []);
  assert.deepEqual(decodeModel(modelBytes({ roll_call: ['a0', 'b1'] })).roll_call, ['a0', 'b1']);
  assert.throws(() => decodeModel(modelBytes({ roll_call: ['bad id'] })), (err) => err instanceof WireError && err.reason === 'malformed');
});
