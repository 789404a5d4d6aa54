/**
 * The Web Worker that trains, so the page stays responsive while a round runs.
 *
 * Messages in: {type: 'data', spec, kind, x, y, index} (the device's rows, once and
 * whenever they change), {type: 'train', id, weights, plan, round}. Messages out:
 * {type: 'progress', id, done, total}, {type: 'done', id, weights, samples, metrics,
 * train_s}, {type: 'failed', id, reason}. Imports nothing but the trainer (module
 * workers get no import map).
 */

import { MlpTrainer } from './mlp.js';

let trainer = null;

self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === 'data') {
    try {
      trainer = new MlpTrainer(msg.spec, msg.kind, msg.x, msg.y, msg.index);
      self.postMessage({ type: 'ready', samples: trainer.samples });
    } catch (err) {
      trainer = null;
      self.postMessage({ type: 'failed', id: null, reason: `bad data: ${err.message}` });
    }
    return;
  }
  if (msg.type !== 'train') return;
  if (trainer === null) {
    self.postMessage({ type: 'failed', id: msg.id, reason: 'no training data on this device' });
    return;
  }
  const started = performance.now();
  let last = 0;
  try {
    const result = trainer.train(msg.weights, msg.plan, msg.round, (done, total) => {
      const now = performance.now();
      if (now - last > 100 || done === total) {
        last = now;
        self.postMessage({ type: 'progress', id: msg.id, done, total });
      }
    });
    const transfer = Object.values(result.weights).map((a) => a.buffer);
    self.postMessage({
      type: 'done',
      id: msg.id,
      weights: result.weights,
      samples: result.samples,
      metrics: result.metrics,
      train_s: (performance.now() - started) / 1000,
    }, transfer);
  } catch (err) {
    self.postMessage({ type: 'failed', id: msg.id, reason: `training failed: ${err.message}` });
  }
};
