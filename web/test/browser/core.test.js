import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decode } from '@msgpack/msgpack';
import { AgentCore } from '../../src/agent/core.js';
import { modelBytes } from './helpers.js';

const agent = () => new AgentCore({ job: 'demo', agent: 'web-1', samples: 10, device: 'phone' });
const only = (actions, type) => actions.filter((a) => a.type === type);
const trained = (key, bump = 1) => ({
  type: 'trained', key, train_s: 0.5,
  result: { samples: 10, metrics: { loss: 0.25 }, weights: { '0.weight': Float32Array.of(1 + bump, 2, 3, 4), '0.bias': Float32Array.of(0.5, -0.5) } },
});

test('presence says online, then offline, as a browser with its device class', () => {
  const core = agent();
  const [online] = core.handle({ type: 'connected' }, 5);
  assert.equal(online.topic, 'fedmq/v1/demo/agents/web-1');
  assert.equal(online.retain, true);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(online.payload)),
    { v: 1, type: 'presence', agent: 'web-1', state: 'online', at: 5, samples: 10, device: 'phone', trainer: 'js', kind: 'browser' });
  const will = JSON.parse(new TextDecoder().decode(core.will().payload));
  assert.equal(will.state, 'offline');
  assert.equal(will.at, 0);
});

test('a model is trained once and answered with the delta, in wire order', () => {
  const core = agent();
  const actions = core.handle({ type: 'model', body: modelBytes() });
  const [train] = only(actions, 'train');
  assert.equal(train.key, 'r1/1/m1');
  assert.equal(only(actions, 'keep_model').length, 1);
  const [send] = core.handle(trained(train.key, 1));
  assert.equal(send.type, 'send');
  assert.equal(send.topic, 'fedmq/v1/demo/update/web-1');
  const update = decode(send.payload);
  assert.deepEqual(Object.keys(update), ['v', 'type', 'job', 'agent', 'round', 'model_id', 'samples', 'codec', 'metrics', 'train_s', 'declined', 'tensors']);
  assert.equal(update.declined, null);
  const delta = new Float32Array(new Uint8Array(update.tensors[0].data).buffer);
  assert.deepEqual(Array.from(delta), [1, 0, 0, 0]);
  assert.deepEqual(core.handle({ type: 'model', body: modelBytes() }).filter((a) => a.type !== 'keep_model'), []);
});

test('a re-announcement or a reconnect re-sends the same bytes; nothing trains twice', () => {
  const core = agent();
  const [train] = only(core.handle({ type: 'model', body: modelBytes() }), 'train');
  const [first] = core.handle(trained(train.key));
  const [again] = only(core.handle({ type: 'model', body: modelBytes({ attempt: 1, issued_at: 1700000100 }) }), 'send');
  assert.equal(again.resent, true);
  assert.deepEqual(again.payload, first.payload);
  core.handle({ type: 'connected' });
  const [afterReconnect] = only(core.handle({ type: 'model', body: modelBytes({ attempt: 1, issued_at: 1700000100 }) }), 'send');
  assert.deepEqual(afterReconnect.payload, first.payload);
  assert.equal(only(core.handle({ type: 'model', body: modelBytes({ attempt: 1, issued_at: 1700000100 }) }), 'send').length, 0);
});

test('a newer round that arrives while training is trained next; the old result is dropped', () => {
  const core = agent();
  const [train1] = only(core.handle({ type: 'model', body: modelBytes() }), 'train');
  assert.deepEqual(only(core.handle({ type: 'model', body: modelBytes({ round: 2, model_id: 'm2' }) }), 'train'), []);
  const actions = core.handle(trained(train1.key));
  assert.deepEqual(actions.map((a) => a.type), ['train']);
  assert.equal(actions[0].key, 'r1/2/m2');
  assert.deepEqual(core.handle({ type: 'model', body: modelBytes({ round: 1 }) }), []); // late older round
});

test('outside the cohort, nothing is trained; a final model of a joined run ends it', () => {
  const core = agent();
  assert.deepEqual(only(core.handle({ type: 'model', body: modelBytes({ cohort: ['other'] }) }), 'train'), []);
  const stranger = agent();
  assert.deepEqual(only(stranger.handle({ type: 'model', body: modelBytes({ done: true }) }), 'run_finished'), []);
  const member = agent();
  member.handle({ type: 'model', body: modelBytes() });
  assert.equal(only(member.handle({ type: 'model', body: modelBytes({ done: true, round: 1 }) }), 'run_finished').length, 1);
});

test('a device that cannot or will not train declines, with the reason', () => {
  const core = new AgentCore({ job: 'demo', agent: 'web-1', samples: 10, refuse: () => 'codec topk is not supported' });
  const [send] = core.handle({ type: 'model', body: modelBytes() }).filter((a) => a.type === 'send');
  const update = decode(send.payload);
  assert.equal(send.declined, 'codec topk is not supported');
  assert.equal(update.declined, 'codec topk is not supported');
  assert.equal(update.samples, 0);
  assert.deepEqual(update.tensors, []);
  const paused = agent();
  paused.handle({ type: 'pause', paused: true });
  assert.equal(only(paused.handle({ type: 'model', body: modelBytes() }), 'send')[0].declined, 'paused on this device');
  const failed = agent();
  const [train] = only(failed.handle({ type: 'model', body: modelBytes() }), 'train');
  assert.equal(failed.handle({ type: 'failed', key: train.key, reason: 'training failed: boom' })[0].declined, 'training failed: boom');
});

test('a model that does not decode, or of another job, is refused and counted', () => {
  const core = agent();
  const [bad] = core.handle({ type: 'model', body: modelBytes({ v: 2 }) });
  assert.equal(bad.reason, 'bad_version');
  const [other] = core.handle({ type: 'model', body: modelBytes({ job: 'other' }) });
  assert.equal(other.reason, 'wrong_job');
  const [nan] = core.handle({ type: 'model', body: modelBytes({}, { w: [NaN] }) });
  assert.equal(nan.reason, 'non_finite');
  assert.equal(core.modelsRejected, 3);
});

test('an answer restored after a page reload is re-sent, not trained again', () => {
  const before = agent();
  const [train] = only(before.handle({ type: 'model', body: modelBytes() }), 'train');
  const [sent] = before.handle(trained(train.key));
  const after = agent();
  after.restoreAnswer({ ...before.answer });
  const actions = after.handle({ type: 'model', body: modelBytes() });
  assert.deepEqual(only(actions, 'train'), []);
  assert.deepEqual(only(actions, 'send')[0].payload, sent.payload);
});

test('an agent named in the roll call announces itself again before it trains', () => {
  const core = agent();
  core.handle({ type: 'connected' }, 1);
  const actions = core.handle({ type: 'model', body: modelBytes({ roll_call: ['web-0', 'web-1'] }) }, 7);
  const [again] = only(actions, 'publish');
  assert.equal(again.topic, 'fedmq/v1/demo/agents/web-1');
  assert.equal(JSON.parse(new TextDecoder().decode(again.payload)).at, 7);
  assert.ok(actions.indexOf(again) < actions.findIndex((a) => a.type === 'train'));
  assert.deepEqual(only(core.handle({ type: 'model', body: modelBytes({ round: 2, model_id: 'm2', roll_call: ['web-0'] }) }), 'publish'), []);
});

test('connected, an unsigned model far ahead of the one held is refused; after a reconnect it is taken', () => {
  const core = agent();
  core.handle({ type: 'connected' });
  const [train] = only(core.handle({ type: 'model', body: modelBytes({ round: 3, model_id: 'm3' }) }), 'train');
  core.handle(trained(train.key));
  const [refused] = core.handle({ type: 'model', body: modelBytes({ round: 1000000, model_id: 'mX' }) });
  assert.deepEqual([refused.type, refused.reason], ['model_rejected', 'future_round']);
  assert.deepEqual(only(core.handle({ type: 'model', body: modelBytes({ run: 'r2', round: 7, model_id: 'mY' }) }), 'model_rejected').map((a) => a.reason), ['future_round']);
  assert.equal(only(core.handle({ type: 'model', body: modelBytes({ round: 4, model_id: 'm4' }) }), 'train').length, 1);
  const signed = new AgentCore({ job: 'demo', agent: 'web-1', samples: 10, signedModels: true });
  signed.handle({ type: 'connected' });
  signed.handle({ type: 'model', body: modelBytes({ round: 3, model_id: 'm3' }) });
  assert.deepEqual(only(signed.handle({ type: 'model', body: modelBytes({ round: 40, model_id: 'm40' }) }), 'model_rejected'), []);
  core.handle({ type: 'connected' });
  assert.deepEqual(only(core.handle({ type: 'model', body: modelBytes({ round: 40, model_id: 'm40' }) }), 'model_rejected'), []);
});

test('a hashed cohort: the agent trains exactly the rounds whose hash it passes (§17)', async () => {
  const P = await import('../../src/protocol/index.js');
  const rule = { below: 1n << 62n }; // a fraction 0.25
  const weights = [{ name: '0.weight', shape: [2, 2], data: Float32Array.of(1, 2, 3, 4) }, { name: '0.bias', shape: [2], data: Float32Array.of(0.5, -0.5) }];
  const model = (round) => P.encodeModel({
    job: 'demo', run: 'r1', round, attempt: 0, model_id: `m${round}`, task: 'linreg',
    plan: { epochs: 1, batch_size: 2, lr: 0.1, seed: 0, options: {} }, codec: 'none', deadline_s: 30,
    cohort: null, done: false, issued_at: 1700000000, max_payload: 0, weights, cohort_hash: rule,
  });
  const rounds = Array.from({ length: 16 }, (_, k) => k + 1);
  const passes = rounds.filter((r) => P.inCohort(rule, 'demo', 'r1', r, 'web-1'));
  assert.ok(passes.length > 0 && passes.length < rounds.length);
  const asked = rounds.filter((r) => only(agent().handle({ type: 'model', body: model(r) }), 'train').length === 1);
  assert.deepEqual(asked, passes);
  // the newest model read when a training ends (the next round) is held to the same rule
  const seen = new Set();
  for (const first of passes) {
    const core = agent();
    const [train] = only(core.handle({ type: 'model', body: model(first) }), 'train');
    core.handle({ type: 'model', body: model(first + 1) });
    const trains = passes.includes(first + 1);
    assert.equal(only(core.handle(trained(train.key)), 'train').length, trains ? 1 : 0, `round ${first + 1}`);
    seen.add(trains);
  }
  assert.equal(seen.size, 2); // both a next round passed and one failed
});
