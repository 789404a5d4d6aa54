/**
 * Topic names `fedmq/v1/{job}/{kind}[/{agent}]` and the id rule (protocol/topics.py,
 * docs/PROTOCOL.md §2). Ids never hold `/`, `+`, `#` or spaces, so a topic always
 * parses back to the ids that built it.
 */

import { fail, RejectReason } from './errors.js';

export const PREFIX = 'fedmq/v1';
const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The last fixed level of a topic. */
export const TopicKind = Object.freeze({
  MODEL: 'model', UPDATE: 'update', STATUS: 'status', METRICS: 'metrics', AGENTS: 'agents',
});
const KINDS = new Set(Object.values(TopicKind));
const PER_AGENT = new Set([TopicKind.UPDATE, TopicKind.AGENTS]);

/** `value` if it is a valid job, run or agent id; else throws Error (a caller's mistake). */
export function checkId(value, what = 'id') {
  if (typeof value !== 'string' || !ID.test(value)) {
    throw new Error(`invalid ${what} '${value}': use 1-64 of A-Z a-z 0-9 _ . - starting alphanumeric`);
  }
  return value;
}

export const isId = (value) => typeof value === 'string' && ID.test(value);

/** Topic names for one job. */
export class Topics {
  constructor(job) {
    this.job = checkId(job, 'job');
    this.base = `${PREFIX}/${job}`;
  }

  get model() { return `${this.base}/model`; }
  /** Where chunk `index` of a chunked model is retained. */
  modelChunk(index) { return `${this.base}/model/chunk/${index}`; }
  get allModelChunks() { return `${this.base}/model/chunk/+`; }
  /** What an agent subscribes to (QoS 1): the model, whole or in chunks. */
  get agentSubscriptions() { return [this.model, this.allModelChunks]; }
  get status() { return `${this.base}/status`; }
  get metrics() { return `${this.base}/metrics`; }
  update(agent) { return `${this.base}/update/${checkId(agent, 'agent')}`; }
  presence(agent) { return `${this.base}/agents/${checkId(agent, 'agent')}`; }
  get allUpdates() { return `${this.base}/update/+`; }
  get allPresence() { return `${this.base}/agents/+`; }
  get everything() { return `${this.base}/#`; }
}

/**
 * {job, kind, agent, chunk} of a fedmq topic (`agent` for update/agents, `chunk` for
 * model/chunk/{i}, else null). Throws WireError(malformed) for anything else.
 */
export function parseTopic(topic) {
  const parts = topic.split('/');
  if (parts.length < 4 || `${parts[0]}/${parts[1]}` !== PREFIX) fail(RejectReason.MALFORMED, `not a ${PREFIX} topic: '${topic}'`);
  const [job, kind] = [parts[2], parts[3]];
  const rest = parts.slice(4);
  if (!KINDS.has(kind) || !isId(job)) fail(RejectReason.MALFORMED, `bad topic '${topic}'`);
  if (PER_AGENT.has(kind)) {
    if (rest.length !== 1) fail(RejectReason.MALFORMED, `${kind} topic needs one agent level`);
    if (!isId(rest[0])) fail(RejectReason.MALFORMED, `invalid agent '${rest[0]}'`);
    return { job, kind, agent: rest[0], chunk: null };
  }
  if (kind === TopicKind.MODEL && rest.length === 2 && rest[0] === 'chunk') {
    if (!/^[0-9]{1,6}$/.test(rest[1])) fail(RejectReason.MALFORMED, `bad chunk index in '${topic}'`);
    return { job, kind, agent: null, chunk: Number(rest[1]) };
  }
  if (rest.length) fail(RejectReason.MALFORMED, `unexpected levels after ${kind}`);
  return { job, kind, agent: null, chunk: null };
}
