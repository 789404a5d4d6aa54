/**
 * The browser agent's adapter: owns the MQTT.js client, the training Worker, the
 * clock and IndexedDB, and feeds the pure core (core.js) events in arrival order.
 *
 * As edge_agent/mqtt.py: MQTT callbacks only queue; one loop feeds the core and
 * carries out its actions; what arrives while a round trains waits for its result.
 * Unlike it, a closed or reloaded tab does not decline its round: the reloaded page
 * re-sends the update it sent before (kept in IndexedDB), or trains the round it was
 * training, and a tab closed for good is covered by the round's deadline.
 *
 * MQTT: version 5, client id `fedmq-{job}-{agent}` (docs/PROTOCOL.md §1), keepalive 30 s,
 * reconnect every 2 s, last will = presence offline (retained, QoS 1); subscribes to the
 * model, its chunks, the status and the metrics after every connect. A refused login stops
 * reconnecting. Chunked models are reassembled here, and updates over the round's payload
 * cap are sent as chunks (§4.6), after signing. With a signing key every presence, the will
 * too, is sealed for this page's session (§16.1), in order with the updates.
 */

import mqtt from 'mqtt';
import { AgentCore, keyOf } from './core.js';
import { ErrorFeedback } from './feedback.js';
import {
  codecProblem, decodeMetrics, decodeStatus, isChunkFrame, MODEL_CHUNK_TTL_S, openModel, Reassembler, sealPresence,
  sealUpdate, split, WireError,
} from './wire.js';

/** the largest model a browser agent reassembles from chunks (edge_agent/agent.py's bound) */
const MAX_MODEL_BYTES = 64 * 1024 * 1024;

export const RECONNECT_MS = 2000;
export const KEEPALIVE_S = 30;

/** MQTT CONNACK codes that retrying will not fix (3.1.1 and 5). */
const REFUSED = new Set([4, 5, 134, 135, 138]);

export class AgentSession {
  /**
   * `trainer`: {spec, kind, samples, index, worker} - the Worker already holds the data.
   * `onView(view)` is called whenever what the page shows changes.
   */
  constructor({ link, agent, task, trainer, store, keys, device, onView, now = () => Date.now() / 1000 }) {
    this.link = link;
    this.task = task;
    this.trainer = trainer;
    this.store = store;
    this.keys = keys;
    this.now = now;
    this.onView = onView;
    this.core = new AgentCore({
      job: link.job, agent, samples: trainer.samples, device,
      refuse: (model) => this.refusal(model), signedModels: Boolean(keys.coordinator),
    });
    /** one per page load: the coordinator tells this page's will from an earlier one's */
    this.session = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, '0')).join('');
    this.queue = [];
    this.deferred = [];
    this.running = false;
    this.client = null;
    this.trainingKey = null;
    this.sendChain = Promise.resolve();
    this.chunks = new Reassembler({ maxBufferedBytes: 2 * MAX_MODEL_BYTES, ttlS: MODEL_CHUNK_TTL_S, maxPayloadSize: MAX_MODEL_BYTES });
    this.view = {
      agent, job: link.job, task: task.name, broker: link.broker, connection: 'connecting',
      refused: null, round: null, rounds: null, phase: 'waiting', progress: 0, samples: trainer.samples,
      lastAccuracy: null, lastLoss: null, globalAccuracy: null, bytesSent: 0, updatesSent: 0,
      sentRounds: [], status: null, run: null, note: null, modelsRejected: 0, lastDecline: null,
    };
    trainer.worker.onmessage = (event) => this.fromWorker(event.data);
  }

  /** Why this device will not train `model`, or null (the core then declines, with it). */
  refusal(model) {
    const codec = codecProblem(model.codec);
    if (codec) return codec;
    if (model.plan.options?.local_layers) return 'personal layers (local_layers) are not supported in the browser';
    const names = this.trainer.shapes.map(([n]) => n).sort().join();
    if (Object.keys(model.weights).sort().join() !== names) {
      return `this device trains ${this.task.name}, not ${model.task}`;
    }
    return null;
  }

  async start() {
    const { link } = this;
    const residual = await this.store.loadResidual();
    if (residual) this.core.feedback = new ErrorFeedback(residual);
    const answer = await this.store.loadAnswer();
    if (answer) this.core.restoreAnswer(answer);
    const will = this.core.will();
    will.payload = await this.sealed(will);
    this.client = mqtt.connect(this.link.broker, {
      clientId: `fedmq-${link.job}-${this.core.agent}`,
      username: this.link.user,
      password: this.link.pass,
      protocolVersion: 5,
      clean: true,
      keepalive: KEEPALIVE_S,
      reconnectPeriod: RECONNECT_MS,
      connectTimeout: 10_000,
      will: { topic: will.topic, payload: will.payload, qos: 1, retain: true },
    });
    const topics = this.core.topics;
    this.client.on('connect', () => {
      this.client.subscribe([topics.model, topics.modelChunks, topics.status, topics.metrics], { qos: 1 });
      this.set({ connection: 'connected', refused: null });
      this.put({ type: 'connected' });
    });
    this.client.on('message', (topic, payload) => this.onMessage(topic, new Uint8Array(payload)));
    this.client.on('reconnect', () => this.set({ connection: 'reconnecting' }));
    this.client.on('offline', () => this.set({ connection: 'offline' }));
    this.client.on('error', (err) => {
      if (REFUSED.has(err.code)) {
        this.client.end(true);
        this.set({ connection: 'refused', refused: `the broker refused the login: ${err.message}` });
      }
    });
    addEventListener('pagehide', () => this.stop());
  }

  /** Go offline cleanly (a closed or reloaded tab). */
  stop() {
    if (!this.client) return;
    for (const action of this.core.handle({ type: 'shutdown' }, this.now())) this.carryOut(action);
    this.sendChain = this.sendChain.then(() => this.client.end(false));
  }

  /** A presence publish's payload: sealed in the secure profile, else as it is. */
  sealed(action) {
    const { signing } = this.keys;
    if (!signing) return Promise.resolve(action.payload);
    return sealPresence(action.payload, { job: this.link.job, session: this.session, signer: this.core.agent, key: signing });
  }

  pause(paused) {
    this.put({ type: 'pause', paused });
  }

  /** A drawing was added: the trainer got new rows; announce the new sample count. */
  samplesChanged(samples) {
    this.trainer.samples = samples;
    this.set({ samples });
    for (const action of this.core.setSamples(samples, this.now())) this.carryOut(action);
  }

  onMessage(topic, payload) {
    const topics = this.core.topics;
    if (topic === topics.status) {
      try {
        const status = decodeStatus(payload);
        this.set({ status, rounds: status.rounds });
      } catch (err) {
        if (!(err instanceof WireError)) throw err;
      }
      return;
    }
    if (topic === topics.metrics) {
      try {
        const m = decodeMetrics(payload);
        this.set({ globalAccuracy: m.accuracy, globalRound: m.round });
      } catch (err) {
        if (!(err instanceof WireError)) throw err;
      }
      return;
    }
    // models: reassemble, then open (verify) in arrival order before the core sees them
    const job = this.link.job;
    let whole = payload;
    try {
      if (isChunkFrame(payload)) whole = this.chunks.add('model', payload, this.now());
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      this.put({ type: 'rejected', reason: err.reason, detail: err.detail });
      return;
    }
    if (whole === null) return; // a chunk of a set still incomplete, or a manifest
    const opened = openModel(whole, { job, key: this.keys.coordinator })
      .then((body) => ({ type: 'model', body }))
      .catch((err) => {
        if (!(err instanceof WireError)) throw err;
        return { type: 'rejected', reason: err.reason, detail: err.detail };
      });
    this.put(opened);
  }

  /** Queue an event (or a promise of one); events are handled one at a time, in order. */
  put(event) {
    this.queue.push(Promise.resolve(event));
    if (!this.running) this.drain();
  }

  async drain() {
    this.running = true;
    while (this.queue.length || (this.deferred.length && this.trainingKey === null)) {
      const event = this.deferred.length && this.trainingKey === null
        ? this.deferred.shift() : await this.queue.shift();
      const result = event.type === 'trained' || event.type === 'failed';
      if (result) {
        this.trainingKey = null;
      } else if (this.trainingKey !== null && event.type === 'model') {
        this.deferred.push(event); // as a trainer running inline would see it
        continue;
      }
      for (const action of this.core.handle(event, this.now())) this.carryOut(action);
    }
    this.running = false;
  }

  carryOut(action) {
    switch (action.type) {
      case 'publish': // presence: sealed (asynchronously) and sent in order with the updates
        this.sendChain = this.sendChain.then(async () => {
          this.client.publish(action.topic, await this.sealed(action), { qos: 1, retain: action.retain });
        });
        break;
      case 'train': {
        this.trainingKey = action.key;
        const { model } = action;
        this.set({ round: model.round, run: model.run, phase: 'training', progress: 0, note: null });
        this.trainer.worker.postMessage({
          type: 'train', id: action.key, weights: model.weights, plan: model.plan, round: model.round,
        });
        break;
      }
      case 'send':
        this.sendUpdate(action);
        break;
      case 'model_rejected':
        this.set({ modelsRejected: this.core.modelsRejected, note: `refused a model: ${action.reason}: ${action.detail}` });
        break;
      case 'keep_model':
        this.set({ round: action.model.round, run: action.model.run, model: action.model,
          phase: this.trainingKey ? this.view.phase : action.model.done ? 'finished' : this.view.phase });
        this.store.saveModel(action.model);
        break;
      case 'run_finished':
        this.set({ phase: 'finished', note: `run finished after round ${action.model.round}` });
        break;
      case 'save_residual':
        this.store.saveResidual(action.state);
        break;
      default:
        throw new Error(`unknown agent action ${action.type}`);
    }
  }

  /** Seal (secure profile) and publish an update, in order; identical bytes on a resend. */
  sendUpdate(action) {
    const { signing } = this.keys;
    const answer = this.core.answer;
    this.sendChain = this.sendChain.then(async () => {
      const payload = signing
        ? await sealUpdate(action.payload, { job: this.link.job, run: action.run, signer: this.core.agent, key: signing })
        : action.payload;
      // over the broker's payload cap: the update travels as chunks, after signing
      const parts = action.maxPayload ? split(payload, action.maxPayload) : null;
      for (const frame of parts ? parts.frames : [payload]) this.client.publish(action.topic, frame, { qos: 1 });
      const round = Number(action.key.split('/')[1]);
      const { declined } = action;
      this.set({
        bytesSent: this.view.bytesSent + payload.length,
        updatesSent: this.view.updatesSent + 1,
        sentRounds: this.view.sentRounds.includes(round) ? this.view.sentRounds : [...this.view.sentRounds, round],
        phase: declined ? 'declined' : 'sent',
        lastDecline: declined ?? this.view.lastDecline,
        note: declined ? `declined round ${round}: ${declined}` : action.resent ? `re-sent round ${round}` : null,
      });
      if (!action.resent && answer) await this.store.saveAnswer({ ...answer });
    });
  }

  fromWorker(msg) {
    switch (msg.type) {
      case 'progress':
        if (msg.id === this.trainingKey) this.set({ progress: msg.done / msg.total });
        break;
      case 'done':
        this.set({ lastAccuracy: msg.metrics.accuracy ?? null, lastLoss: msg.metrics.loss, progress: 1 });
        this.put({ type: 'trained', key: msg.id, train_s: msg.train_s,
          result: { weights: msg.weights, samples: msg.samples, metrics: msg.metrics } });
        break;
      case 'failed':
        if (msg.id !== null) this.put({ type: 'failed', key: msg.id, reason: msg.reason });
        else this.set({ note: msg.reason });
        break;
      default:
        break;
    }
  }

  set(changes) {
    Object.assign(this.view, changes);
    this.onView(this.view);
  }
}

export { keyOf };
