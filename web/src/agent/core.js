/**
 * The browser agent's logic: model announcements in, training requests and updates out.
 * It follows edge_agent/agent.py rule for rule (docs/PROTOCOL.md §9, "Agent").
 *
 * Rules of this module: no MQTT, no DOM, no Worker, no clock, no awaits. The adapter
 * (session.js) reassembles chunked models and opens signed envelopes first (WebCrypto
 * is asynchronous), runs the training the core asks for and feeds back the result
 * as an event; it signs and chunks what the core sends. `handle(event, wall)` returns
 * actions; `wall` (Unix seconds) only stamps presence.
 *
 * Per (run, round, model_id) the agent trains at most once and answers exactly once;
 * asked again (a retry, a restarted coordinator, or after a reconnect that may have
 * lost the update in flight) it sends the same bytes again: the coordinator counts
 * each (job, round, agent) once.
 *
 * Events:  {type: 'connected'} | {type: 'rollcall'} | {type: 'model', body} | {type: 'rejected', reason, detail}
 *          | {type: 'trained', key, result, train_s} | {type: 'failed', key, reason}
 *          | {type: 'pause', paused} | {type: 'shutdown'}
 * Actions: {type: 'publish', topic, payload, retain} | {type: 'train', key, model}
 *          | {type: 'send', key, topic, payload, run, maxPayload, declined, resent}
 *          | {type: 'model_rejected', reason, detail} | {type: 'keep_model', model}
 *          | {type: 'run_finished', model} | {type: 'save_residual', state}
 */

import {
  agentRngKey, asks, decodeModel, encodePresence, encodeUpdate, topicsFor, WireError,
} from './wire.js';
import { ErrorFeedback } from './feedback.js';
import { Generator } from '../train/rng.js';

export const KIND = 'browser';
export const TRAINER = 'js';

/** `run/round/model_id`: what an update answers */
export const keyOf = (model) => `${model.run}/${model.round}/${model.model_id}`;

export class AgentCore {
  /**
   * `refuse(model)` names a reason this device cannot train `model` (a codec this
   * build lacks, personal layers, another model), or returns null.
   */
  /**
   * `signedModels`: the adapter verifies every model with the coordinator's key, so no
   * round it passes on is implausible (docs/PROTOCOL.md §14.3).
   */
  constructor({ job, agent, samples, device = null, feedback = new ErrorFeedback(), refuse = () => null, signedModels = false }) {
    this.job = job;
    this.agent = agent;
    this.samples = samples;
    this.device = device;
    this.feedback = feedback;
    this.refuse = refuse;
    // stochastic codecs draw from default_rng([plan.seed, round, this]), as a Python agent
    this.rngKey = agentRngKey(agent);
    this.topics = topicsFor(job);
    this.latest = null;
    this.training = null;
    /** {key, asked: `${attempt}/${issued_at}`, payload, run, maxPayload, declined} */
    this.answer = null;
    this.runsJoined = new Set();
    this.resendArmed = false;
    this.paused = false;
    this.modelsRejected = 0;
    this.signedModels = signedModels;
    /** nothing taken since (re)connecting: the retained model may be any round */
    this.mayJump = true;
  }

  get busy() {
    return this.training !== null;
  }

  /** The last will the adapter registers in CONNECT: presence offline, retained. */
  will() {
    return this.presence(false, 0);
  }

  handle(event, wall = 0) {
    switch (event.type) {
      case 'connected':
        this.resendArmed = this.answer !== null;
        this.mayJump = true;
        return [this.presence(true, wall)];
      case 'model':
        return this.onModel(event.body, wall);
      case 'rollcall': // the coordinator asks who is online: answer live, not retained
        return [{ ...this.presence(true, wall), retain: false }];
      case 'rejected':
        this.modelsRejected++;
        return [{ type: 'model_rejected', reason: event.reason, detail: event.detail }];
      case 'trained':
        return this.onTrained(event.key, event.result, event.train_s);
      case 'failed':
        return this.onFailed(event.key, event.reason);
      case 'pause':
        this.paused = event.paused;
        return this.training === null && !this.paused ? this.trainLatest() : [];
      case 'shutdown':
        return [this.presence(false, wall)];
      default:
        throw new Error(`unknown agent event ${event.type}`);
    }
  }

  /** The device's sample count changed (a drawing was added): announce it. */
  setSamples(samples, wall) {
    this.samples = samples;
    return [this.presence(true, wall)];
  }

  onModel(body, wall) {
    let model;
    try {
      model = decodeModel(body);
      if (model.job !== this.job) throw new WireError('wrong_job', `model for job ${model.job}`);
      this.checkPlausible(model);
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      this.modelsRejected++;
      return [{ type: 'model_rejected', reason: err.reason, detail: err.detail }];
    }
    const latest = this.latest;
    const older = latest !== null && latest.run === model.run && model.round < latest.round;
    // A final model is never stale: it carries the last completed round.
    if (older && !model.done) return [];
    this.latest = model;
    this.mayJump = false;
    // the coordinator does not count us (§14.2): announce ourselves before anything else
    const again = model.roll_call.includes(this.agent) ? [this.presence(true, wall)] : [];
    return [...again, ...this.onLatest(model)];
  }

  /**
   * Connected, an agent sees every announcement: an unsigned model more than one round
   * ahead of the one held, or of a new run past round 1, is a forgery that would make
   * every genuine model look late (§14.3). Throws WireError(future_round).
   */
  checkPlausible(model) {
    const latest = this.latest;
    if (this.signedModels || this.mayJump || latest === null) return;
    const next = model.run === latest.run ? latest.round + 1 : 1;
    if (model.round > next) {
      throw new WireError('future_round', `run ${model.run} round ${model.round} right after run ${latest.run} round ${latest.round}: an implausible jump for an unsigned model`);
    }
  }

  /** What the newest model asks: keep it, train, or re-send the answer. */
  onLatest(model) {
    const kept = { type: 'keep_model', model };
    if (model.done) {
      // A retained final model of an earlier run ends nothing for a newcomer.
      return this.runsJoined.has(model.run) ? [kept, { type: 'run_finished', model }] : [kept];
    }
    if (!asks(model, this.agent)) return [kept]; // named or hashed (docs/PROTOCOL.md §17)
    const key = keyOf(model);
    const answer = this.answer;
    if (answer !== null && answer.key === key) {
      const asked = `${model.attempt}/${model.issued_at}`;
      if (asked !== answer.asked || this.resendArmed) {
        answer.asked = asked;
        this.resendArmed = false;
        return [kept, this.send(answer, true)];
      }
      return [kept]; // the same announcement again (QoS 1 redelivery)
    }
    if (this.training !== null) return [kept]; // picked up when the current training ends
    return [kept, ...this.start(key, model)];
  }

  onTrained(key, result, trainS) {
    this.training = null;
    const model = this.latest;
    if (model === null || model.done || keyOf(model) !== key) return this.trainLatest();
    const delta = {};
    for (const [name, global] of Object.entries(model.weights)) {
      const local = result.weights[name];
      const d = new Float32Array(global.length);
      for (let i = 0; i < d.length; i++) d[i] = local[i] - global[i];
      delta[name] = d;
    }
    const before = this.feedback.state;
    let tensors;
    try {
      const rng = new Generator([model.plan.seed, model.round, this.rngKey]);
      tensors = this.feedback.encode(delta, model.shapes, model.codec, model.run, () => rng.random());
    } catch (err) {
      return this.decline(model, `cannot encode the update: ${err.message}`);
    }
    const payload = encodeUpdate({
      job: this.job,
      agent: this.agent,
      round: model.round,
      model_id: model.model_id,
      samples: result.samples,
      codec: model.codec,
      metrics: result.metrics,
      train_s: trainS,
      tensors,
    });
    const actions = this.answerWith(model, payload);
    const after = this.feedback.state;
    return after === before ? actions : [...actions, { type: 'save_residual', state: after }];
  }

  onFailed(key, reason) {
    this.training = null;
    const model = this.latest;
    if (model === null || model.done || keyOf(model) !== key) return this.trainLatest();
    return this.decline(model, reason);
  }

  decline(model, reason) {
    const payload = encodeUpdate({
      job: this.job,
      agent: this.agent,
      round: model.round,
      model_id: model.model_id,
      samples: 0,
      codec: model.codec,
      tensors: [],
      declined: reason.slice(0, 256) || 'declined',
    });
    return this.answerWith(model, payload, reason.slice(0, 256) || 'declined');
  }

  answerWith(model, payload, declined = null) {
    this.answer = {
      key: keyOf(model),
      asked: `${model.attempt}/${model.issued_at}`,
      payload,
      run: model.run,
      maxPayload: model.max_payload,
      declined,
    };
    this.resendArmed = false;
    return [this.send(this.answer, false)];
  }

  send(answer, resent) {
    return {
      type: 'send',
      key: answer.key,
      topic: this.topics.update(this.agent),
      payload: answer.payload,
      run: answer.run,
      maxPayload: answer.maxPayload,
      declined: answer.declined,
      resent,
    };
  }

  trainLatest() {
    const model = this.latest;
    if (model === null || model.done) return [];
    if (!asks(model, this.agent)) return [];
    const key = keyOf(model);
    if (this.answer !== null && this.answer.key === key) return [];
    return this.start(key, model);
  }

  start(key, model) {
    this.runsJoined.add(model.run);
    const reason = this.paused ? 'paused on this device' : this.refuse(model);
    if (reason !== null) return this.decline(model, reason);
    this.training = key;
    return [{ type: 'train', key, model }];
  }

  /** Restore the answer cached before a page reload (session.js keeps it in IndexedDB). */
  restoreAnswer(answer) {
    this.answer = answer;
    this.resendArmed = answer !== null;
  }

  presence(online, at) {
    const payload = encodePresence({
      agent: this.agent,
      online,
      at,
      samples: this.samples,
      device: this.device,
      trainer: TRAINER,
      kind: KIND,
    });
    return { type: 'publish', topic: this.topics.presence(this.agent), payload, retain: true };
  }
}
