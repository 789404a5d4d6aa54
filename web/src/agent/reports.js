/**
 * Presence, status and metrics (docs/PROTOCOL.md §4.3-4.5): compact JSON documents,
 * decoded with the protocol's checks (transitional, as wire.js).
 */

import { fail, header, ident, int, num, present, scalars, SCHEMA_VERSION, text, utf8 } from './checks.js';

const MAX_JSON_BYTES = 64 * 1024;
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

function parseJson(bytes, type) {
  if (bytes.length > MAX_JSON_BYTES) fail('too_large', `${type}: ${bytes.length} bytes`);
  let obj;
  try {
    obj = JSON.parse(fromUtf8.decode(bytes));
  } catch (err) {
    fail('malformed', `${type}: ${err.message}`);
  }
  return header(obj, type);
}

/** Presence (§4.3), compact JSON, optional fields omitted when unknown. */
export function encodePresence(p) {
  const doc = { v: SCHEMA_VERSION, type: 'presence', agent: p.agent, state: p.online ? 'online' : 'offline', at: p.at };
  for (const key of ['samples', 'device', 'trainer', 'kind']) if (p[key] !== null && p[key] !== undefined) doc[key] = p[key];
  return utf8.encode(JSON.stringify(doc));
}

export function decodePresence(bytes) {
  const o = parseJson(bytes, 'presence');
  const state = text(o, 'state', 16);
  if (state !== 'online' && state !== 'offline') fail('malformed', `presence.state ${state}`);
  return {
    agent: ident(o, 'agent'),
    state,
    at: present(o, 'at') ? num(o, 'at', 0) : 0,
    samples: present(o, 'samples') ? int(o, 'samples', 0, 2 ** 40) : null,
    device: present(o, 'device') ? text(o, 'device', 64) : null,
    trainer: present(o, 'trainer') ? text(o, 'trainer', 64) : null,
    kind: present(o, 'kind') ? text(o, 'kind', 64) : null,
  };
}

const PHASES = ['waiting', 'training', 'evaluating', 'done', 'failed'];

function counts(o, key) {
  const m = scalars(o, key);
  for (const [k, v] of Object.entries(m)) if (!Number.isInteger(v) || v < 0) fail('malformed', `${key}.${k}`);
  return m;
}

export function decodeStatus(bytes) {
  const o = parseJson(bytes, 'status');
  const phase = text(o, 'phase', 16);
  if (!PHASES.includes(phase)) fail('malformed', `status.phase ${phase}`);
  return {
    job: ident(o, 'job'), run: ident(o, 'run'), phase,
    round: int(o, 'round'), rounds: int(o, 'rounds'), attempt: int(o, 'attempt'),
    accepted: int(o, 'accepted'), quorum: int(o, 'quorum'), min_replies: int(o, 'min_replies'),
    cohort_size: int(o, 'cohort_size'), agents_online: int(o, 'agents_online'),
    deadline_at: present(o, 'deadline_at') ? num(o, 'deadline_at', 0) : null,
    rejected: counts(o, 'rejected'), at: num(o, 'at', 0),
    message: present(o, 'message') ? text(o, 'message', 1024) : '',
  };
}

export function decodeMetrics(bytes) {
  const o = parseJson(bytes, 'metrics');
  const closedBy = text(o, 'closed_by', 16);
  if (!['quorum', 'all_replied', 'deadline'].includes(closedBy)) fail('malformed', `closed_by ${closedBy}`);
  const opt = (key) => (present(o, key) ? num(o, key) : null);
  return {
    job: ident(o, 'job'), run: ident(o, 'run'), round: int(o, 'round', 1), closed_by: closedBy,
    accepted: int(o, 'accepted'), declined: int(o, 'declined'), rejected: counts(o, 'rejected'),
    samples: int(o, 'samples'), duration_s: num(o, 'duration_s', 0), bytes_up: int(o, 'bytes_up'),
    bytes_down: int(o, 'bytes_down'), raw_bytes_up: int(o, 'raw_bytes_up'),
    accuracy: opt('accuracy'), loss: opt('loss'), train_loss: opt('train_loss'),
    train_accuracy: opt('train_accuracy'), at: num(o, 'at', 0), epsilon: opt('epsilon'),
  };
}
