/**
 * Bytes <-> the small JSON messages (protocol/reports.py, docs/PROTOCOL.md §4.3-4.5):
 * presence, status and metrics, compact JSON written as Python writes it.
 *
 *   presence {agent, online, samples, device, trainer, at, kind} (absent optionals null)
 *   status   {job, run, phase, round, rounds, attempt, accepted, quorum, min_replies,
 *             cohort_size, agents_online, deadline_at, rejected, at, message}
 *   metrics  {job, run, round, closed_by, accepted, declined, rejected, samples,
 *             duration_s, bytes_up, bytes_down, raw_bytes_up, accuracy, loss,
 *             train_loss, train_accuracy, at, epsilon}
 * Every decode* throws WireError for bad input.
 */

import { fail, RejectReason } from './errors.js';
import { dumpMessage, header, loadJson, SCHEMA_VERSION } from './fields.js';
import { f64 } from './msgpack.js';
import { isId } from './topics.js';

const { MALFORMED } = RejectReason;
export const PHASES = Object.freeze(['waiting', 'training', 'evaluating', 'done', 'failed']);
export const CLOSED_BY = Object.freeze(['quorum', 'all_replied', 'deadline']);
const OPTIONAL_METRICS = ['accuracy', 'loss', 'train_loss', 'train_accuracy'];
const floatOrNull = (x) => (x === null || x === undefined ? null : f64(x));

export function encodePresence(p) {
  const doc = { v: SCHEMA_VERSION, type: 'presence', agent: p.agent, state: p.online ? 'online' : 'offline', at: f64(p.at ?? 0) };
  for (const key of ['samples', 'device', 'trainer', 'kind']) {
    if (p[key] !== null && p[key] !== undefined) doc[key] = p[key];
  }
  return dumpMessage(doc);
}

export function decodePresence(payload) {
  const f = header(loadJson(payload, 'presence'), 'presence');
  const state = f.text('state', 16);
  if (state !== 'online' && state !== 'offline') fail(MALFORMED, `presence.state: '${state}'`);
  return {
    agent: f.ident('agent'),
    online: state === 'online',
    samples: f.present('samples') ? f.integer('samples', 0, 2 ** 40) : null,
    device: f.present('device') ? f.text('device', 64) : null,
    trainer: f.present('trainer') ? f.text('trainer', 64) : null,
    at: f.present('at') ? f.number('at', 0) : 0,
    kind: f.present('kind') ? f.text('kind', 64) : null,
  };
}

export function encodeStatus(s) {
  return dumpMessage({
    v: SCHEMA_VERSION, type: 'status', job: s.job, run: s.run, phase: s.phase, round: s.round,
    rounds: s.rounds, attempt: s.attempt, accepted: s.accepted, quorum: s.quorum,
    min_replies: s.min_replies, cohort_size: s.cohort_size, agents_online: s.agents_online,
    deadline_at: floatOrNull(s.deadline_at), rejected: { ...s.rejected }, at: f64(s.at),
    message: s.message ?? '',
  });
}

export function decodeStatus(payload) {
  const obj = loadJson(payload, 'status');
  const f = header(obj, 'status');
  const phase = f.text('phase', 16);
  if (!PHASES.includes(phase)) fail(MALFORMED, `status.phase: '${phase}'`);
  return {
    job: f.ident('job'), run: f.ident('run'), phase,
    round: f.integer('round'), rounds: f.integer('rounds'), attempt: f.integer('attempt'),
    accepted: f.integer('accepted'), quorum: f.integer('quorum'), min_replies: f.integer('min_replies'),
    cohort_size: f.integer('cohort_size'), agents_online: f.integer('agents_online'),
    deadline_at: f.present('deadline_at') ? f.number('deadline_at', 0) : null,
    rejected: f.counts('rejected'),
    at: f.number('at', 0),
    message: f.present('message') ? f.text('message', 1024) : '',
  };
}

export function encodeMetrics(m) {
  const doc = {
    v: SCHEMA_VERSION, type: 'metrics', job: m.job, run: m.run, round: m.round, closed_by: m.closed_by,
    accepted: m.accepted, declined: m.declined, rejected: { ...m.rejected }, samples: m.samples,
    duration_s: f64(m.duration_s), bytes_up: m.bytes_up, bytes_down: m.bytes_down,
    raw_bytes_up: m.raw_bytes_up, at: f64(m.at),
  };
  for (const key of OPTIONAL_METRICS) doc[key] = floatOrNull(m[key]);
  if (m.epsilon !== null && m.epsilon !== undefined) doc.epsilon = f64(m.epsilon);
  if (m.secagg !== null && m.secagg !== undefined) doc.secagg = { ...m.secagg };
  return dumpMessage(doc);
}

export function decodeMetrics(payload) {
  const f = header(loadJson(payload, 'metrics'), 'metrics');
  const closedBy = f.text('closed_by', 16);
  if (!CLOSED_BY.includes(closedBy)) fail(MALFORMED, 'metrics.closed_by: unknown value');
  const optional = Object.fromEntries(OPTIONAL_METRICS.map((k) => [k, f.present(k) ? f.number(k) : null]));
  return {
    job: f.ident('job'), run: f.ident('run'), round: f.integer('round', 1), closed_by: closedBy,
    accepted: f.integer('accepted'), declined: f.integer('declined'), rejected: f.counts('rejected'),
    samples: f.integer('samples'), duration_s: f.number('duration_s', 0), bytes_up: f.integer('bytes_up'),
    bytes_down: f.integer('bytes_down'), raw_bytes_up: f.integer('raw_bytes_up'), at: f.number('at', 0),
    epsilon: f.present('epsilon') ? f.number('epsilon', 0) : null,
    secagg: f.present('secagg') ? dropouts(f) : null,
    ...optional,
  };
}

/** The SecAgg phases a round records dropouts for (docs/PROTOCOL.md §14.8). */
export const SECAGG_PHASES = Object.freeze(['keys', 'shares', 'masked', 'unmask']);

/** metrics.secagg: phase -> the agents that dropped out in it. */
function dropouts(f) {
  const out = {};
  for (const [phase, agents] of Object.entries(f.mapping('secagg'))) {
    if (!SECAGG_PHASES.includes(phase) || !Array.isArray(agents)) {
      fail(RejectReason.MALFORMED, `metrics.secagg: bad entry '${phase}'`);
    }
    out[phase] = agents.map((a) => {
      if (typeof a !== 'string' || !isId(a)) fail(RejectReason.MALFORMED, 'metrics.secagg: bad agent id');
      return a;
    });
  }
  return out;
}
