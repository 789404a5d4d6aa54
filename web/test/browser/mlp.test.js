import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MlpTrainer, modelShapes, predict } from '../../src/train/mlp.js';
import { Generator, permutation } from '../../src/train/rng.js';

const spec = { arch: 'mlp', sizes: [3, 4, 2] };

function weights(seed) {
  const rng = new Generator(seed);
  const out = {};
  for (const [name, shape] of modelShapes(spec)) {
    const n = shape.reduce((a, b) => a * b, 1);
    out[name] = Float32Array.from(rng.permutation(n), (v) => (v - n / 2) / n);
  }
  return out;
}

test('numpy\'s default_rng permutations, for the seeds fedmq uses', () => {
  assert.deepEqual(Array.from(permutation(0, 10)), [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]);
  assert.deepEqual(Array.from(permutation([0, 1, 3], 20)), [16, 19, 10, 9, 15, 13, 1, 0, 8, 2, 6, 11, 7, 17, 18, 14, 5, 3, 4, 12]);
});

test('one full-batch SGD step moves each weight by -lr x its finite-difference gradient', () => {
  const x = Float32Array.of(0.5, -1, 2, 1, 0.25, -0.5, -1.5, 1, 0.75);
  const y = Int32Array.of(0, 1, 1);
  const trainer = new MlpTrainer(spec, 'classification', x, y, 0);
  const w = weights(1);
  const lr = 0.5;
  const after = trainer.train(w, { epochs: 1, batch_size: 3, lr, seed: 0, options: {} }, 1).weights;
  const loss = (ws) => trainer.evaluate(ws).loss;
  for (const [name] of modelShapes(spec)) {
    for (let i = 0; i < w[name].length; i++) {
      const h = 1e-3;
      const plus = { ...w, [name]: Float32Array.from(w[name]) };
      const minus = { ...w, [name]: Float32Array.from(w[name]) };
      plus[name][i] += h;
      minus[name][i] -= h;
      const grad = (loss(plus) - loss(minus)) / (2 * h);
      assert.ok(Math.abs((w[name][i] - after[name][i]) / lr - grad) < 2e-3, `${name}[${i}]`);
    }
  }
});

test('training is deterministic and leaves the caller\'s weights alone', () => {
  const x = Float32Array.from({ length: 30 }, (_, i) => Math.sin(i));
  const y = Int32Array.from({ length: 10 }, (_, i) => i % 2);
  const w = weights(2);
  const copy = JSON.stringify(Object.values(w).map((a) => Array.from(a)));
  const plan = { epochs: 2, batch_size: 4, lr: 0.1, seed: 3, options: { mu: 0.01 } };
  const a = new MlpTrainer(spec, 'classification', x, y, 5).train(w, plan, 2);
  const b = new MlpTrainer(spec, 'classification', x, y, 5).train(w, plan, 2);
  assert.deepEqual(a, b);
  assert.equal(JSON.stringify(Object.values(w).map((v) => Array.from(v))), copy);
  assert.equal(predict(spec, a.weights, x.subarray(0, 3)).length, 2);
  assert.throws(() => new MlpTrainer({ arch: 'cnn', sizes: [] }, 'classification', x, y, 0), /archs linear, mlp/);
  assert.throws(() => new MlpTrainer(spec, 'classification', x, Int32Array.of(0, 5), 0), /rows but/);
});
