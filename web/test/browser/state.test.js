import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DashboardState } from '../../src/dashboard/state.js';

const status = (o = {}) => ({ job: 'demo', run: 'r1', phase: 'training', round: 1, rounds: 3, attempt: 0, accepted: 0,
  quorum: 4, min_replies: 1, cohort_size: 5, agents_online: 5, deadline_at: 130, rejected: {}, at: 100, message: '', ...o });
const metrics = (o = {}) => ({ job: 'demo', run: 'r1', round: 1, closed_by: 'quorum', accepted: 4, declined: 0,
  rejected: { duplicate: 1 }, samples: 40, duration_s: 1.5, bytes_up: 100, bytes_down: 200, raw_bytes_up: 400,
  accuracy: 0.8, loss: 0.5, at: 110, ...o });

test('metrics count once per (run, round), however often they are redelivered', () => {
  const s = new DashboardState('demo');
  assert.equal(s.onMetrics(metrics()), true);
  assert.equal(s.onMetrics(metrics()), false); // QoS 1 again, or retained after a reconnect
  assert.equal(s.onMetrics(metrics({ round: 2, at: 120 })), true);
  assert.deepEqual(s.history().map((m) => m.round), [1, 2]);
  assert.equal(s.ignored, 1);
});

test('an older status of the same run is stale; a new run takes over', () => {
  const s = new DashboardState('demo');
  s.onStatus(status({ at: 100, accepted: 2 }));
  assert.equal(s.onStatus(status({ at: 90, accepted: 1 })), false);
  assert.equal(s.status.accepted, 2);
  assert.equal(s.onStatus(status({ run: 'r2', at: 50 })), true);
  assert.equal(s.run, 'r2');
});

test('participation: missing = asked while the round was open - accepted - declined', () => {
  const s = new DashboardState('demo');
  s.onStatus(status({ cohort_size: 6 }));
  s.onMetrics(metrics({ accepted: 4, declined: 1 }));
  const [row] = s.history();
  assert.equal(row.missing, 1);
  assert.equal(row.rejectedTotal, 1);
  assert.deepEqual(s.rejectedByReason(), { duplicate: 1 });
  s.onMetrics(metrics({ round: 2 })); // no status seen for round 2
  assert.equal(s.history()[1].missing, null);
});

test('the open round shows accepted against quorum and the time to the deadline', () => {
  const s = new DashboardState('demo');
  assert.equal(s.openRound(100), null);
  s.onStatus(status({ accepted: 3 }));
  assert.deepEqual(s.openRound(120), { round: 1, attempt: 0, accepted: 3, quorum: 4, minReplies: 1, cohort: 5, deadlineIn: 10 });
});

test('presence: stale ones are ignored, a last will always counts, a cleared one forgets', () => {
  const s = new DashboardState('demo');
  s.onPresence('a', { agent: 'a', online: true, at: 10, kind: 'browser', device: 'phone' });
  assert.equal(s.onPresence('a', { agent: 'a', online: false, at: 5 }), false);
  assert.equal(s.onPresence('a', { agent: 'a', online: false, at: 0 }), true); // the will
  s.onPresence('b', { agent: 'b', online: true, at: 10, kind: 'python' });
  assert.deepEqual(s.agentList().online, { python: 1 });
  s.onPresence('b', null);
  assert.deepEqual(s.agentList().list.map(([id]) => id), ['a']);
});

test('a snapshot restores the rounds seen before a reload', () => {
  const s = new DashboardState('demo');
  s.onStatus(status());
  s.onMetrics(metrics());
  const t = new DashboardState('demo');
  t.restore(JSON.parse(JSON.stringify(s.snapshot())));
  assert.deepEqual(t.history().map((m) => [m.round, m.missing]), [[1, 1]]);
  const other = new DashboardState('other');
  other.restore(s.snapshot());
  assert.equal(other.rounds.size, 0);
});

test('the final model keeps the rounds\' deadline in the run config', () => {
  const s = new DashboardState('demo');
  s.onModel({ run: 'r1', round: 3, attempt: 0, done: false, deadline_s: 30 }, 1000);
  s.onModel({ run: 'r1', round: 3, attempt: 0, done: true, deadline_s: 0 }, 1000);
  assert.equal(s.model.deadline_s, 30);
  assert.equal(s.model.done, true);
});

test('a round whose metrics this screen never saw is a row of its own, marked missed', () => {
  const s = new DashboardState('demo');
  s.onMetrics(metrics({ round: 1 }));
  s.onMetrics(metrics({ round: 4, at: 140 })); // 2 and 3 closed while it was offline
  assert.deepEqual(s.history().map((m) => [m.round, m.missed ?? false]), [[1, false], [2, true], [3, true], [4, false]]);
  assert.deepEqual(s.rejectedByReason(), { duplicate: 2 });
});
