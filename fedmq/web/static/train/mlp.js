/**
 * The browser's trainer: linear/softmax regression and ReLU MLPs on typed arrays, the
 * same maths as edge_agent/numpy_trainer.py, so a browser agent sends the update a
 * Python numpy agent would send for the same weights, plan, round, index and rows
 * (to float32 rounding; test/browser/mlp.test.js and tests/browser/test_trainer_parity.py
 * pin the bound).
 *
 * The rules it shares with the numpy trainer: layer k of the stack has `${2k}.weight`
 * (out, in) row-major and `${2k}.bias` (out); ReLU between layers, none after the last;
 * every gradient of a step is computed before any parameter moves; rows are visited
 * in `default_rng([plan.seed, round, index]).permutation(n)` order, one permutation per
 * epoch, in batches of `plan.batch_size` (the last may be short); plain SGD on mean
 * cross-entropy (classification) or mean squared error over every output (regression);
 * FedProx adds `mu * (w - w_global)` to every gradient; metrics are running means over
 * the samples seen, loss weighted by batch size.
 *
 * Invariants: pure computation, no DOM, no clock, no I/O, so it runs in a Web Worker
 * or in node's test runner alike; never mutates the caller's arrays; values are kept
 * in Float32Array (dot products sum in float64 before they are stored).
 */

import { Generator } from './rng.js';

/** rows per evaluation pass, as the numpy trainer's, so memory stays bounded */
export const EVAL_BATCH = 1024;
/** the archs this trainer builds (cnn and custom need torch) */
export const ARCHS = ['linear', 'mlp'];

/** Tensor names and shapes of a `linear` or `mlp` spec, in the model's order. */
export function modelShapes(spec) {
  if (!ARCHS.includes(spec.arch)) {
    throw new Error(`the browser trainer trains archs ${ARCHS.join(', ')}, not ${spec.arch}`);
  }
  const sizes = spec.sizes;
  if (!Array.isArray(sizes) || sizes.length < 2 || (spec.arch === 'linear' && sizes.length !== 2)) {
    throw new Error(`bad sizes ${JSON.stringify(sizes)} for arch ${spec.arch}`);
  }
  const shapes = [];
  for (let k = 0; k + 1 < sizes.length; k++) {
    shapes.push([`${2 * k}.weight`, [sizes[k + 1], sizes[k]]]);
    shapes.push([`${2 * k}.bias`, [sizes[k + 1]]]);
  }
  return shapes;
}

function sizeOf(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

/** Indices of the non-zero entries of row `r` (width `w`) of `m`: most MNIST pixels and
 * many ReLU outputs are 0, and skipping them changes no sum. */
function nonZeros(m, r, w, into) {
  let n = 0;
  const base = r * w;
  for (let i = 0; i < w; i++) if (m[base + i] !== 0) into[n++] = i;
  return n;
}

/** `input (b, n_in) @ W.T + bias`, then ReLU unless `last`: one layer's output (b, n_out). */
function layerForward(input, b, nIn, W, bias, nOut, last, nz) {
  const out = new Float32Array(b * nOut);
  for (let r = 0; r < b; r++) {
    const count = nonZeros(input, r, nIn, nz);
    const xBase = r * nIn;
    for (let o = 0; o < nOut; o++) {
      const wBase = o * nIn;
      let s = 0;
      for (let t = 0; t < count; t++) {
        const i = nz[t];
        s += input[xBase + i] * W[wBase + i];
      }
      const v = Math.fround(Math.fround(s) + bias[o]);
      out[r * nOut + o] = last || v > 0 ? v : 0;
    }
  }
  return out;
}

/** Mean cross-entropy of logits (b, k) and its gradient w.r.t. the logits. */
function softmaxXent(out, b, k, labels, rows) {
  const grad = new Float32Array(b * k);
  let lossSum = 0;
  for (let r = 0; r < b; r++) {
    const base = r * k;
    let max = -Infinity;
    for (let j = 0; j < k; j++) if (out[base + j] > max) max = out[base + j];
    let norm = 0;
    for (let j = 0; j < k; j++) norm += Math.exp(Math.fround(out[base + j] - max));
    const logNorm = Math.fround(Math.log(Math.fround(norm)));
    const label = labels[rows[r]];
    for (let j = 0; j < k; j++) {
      const logp = Math.fround(Math.fround(out[base + j] - max) - logNorm);
      if (j === label) lossSum += logp;
      grad[base + j] = Math.fround(Math.exp(logp) - (j === label ? 1 : 0)) / b;
    }
  }
  return { loss: -Math.fround(lossSum / b), grad };
}

/** Mean squared error over every element of (b, k) and its gradient w.r.t. the output. */
function squaredError(out, b, k, targets, rows) {
  const grad = new Float32Array(b * k);
  const scale = Math.fround(2 / (b * k));
  let sum = 0;
  for (let r = 0; r < b; r++) {
    for (let j = 0; j < k; j++) {
      const d = Math.fround(out[r * k + j] - targets[rows[r] * k + j]);
      sum += d * d;
      grad[r * k + j] = d * scale;
    }
  }
  return { loss: Math.fround(sum / (b * k)), grad };
}

function argmaxRow(out, r, k) {
  let best = 0;
  for (let j = 1; j < k; j++) if (out[r * k + j] > out[r * k + best]) best = j;
  return best;
}

export class MlpTrainer {
  /**
   * `x`: Float32Array of n rows of `sizes[0]` features; `y`: integer labels
   * (classification) or Float32Array targets, n x `sizes.at(-1)` (regression);
   * `index`: the agent's index in the shuffle seed (its shard, as Python agents use).
   */
  constructor(spec, kind, x, y, index) {
    this.shapes = modelShapes(spec);
    this.sizes = spec.sizes;
    if (kind !== 'classification' && kind !== 'regression') throw new Error(`bad task kind ${kind}`);
    this.kind = kind;
    this.index = index;
    const nIn = this.sizes[0];
    const nOut = this.sizes.at(-1);
    if (x.length === 0 || x.length % nIn !== 0) {
      throw new Error(`${x.length} input values are not rows of ${nIn} features`);
    }
    this.samples = x.length / nIn;
    const targets = kind === 'classification' ? this.samples : this.samples * nOut;
    if (y.length !== targets) throw new Error(`${this.samples} rows but ${y.length} targets`);
    this.x = Float32Array.from(x);
    if (kind === 'classification') {
      this.labels = Int32Array.from(y);
      for (const label of this.labels) {
        if (label < 0 || label >= nOut) throw new Error(`label ${label} outside 0..${nOut - 1}`);
      }
    } else {
      this.targets = Float32Array.from(y);
    }
    this.nz = new Int32Array(Math.max(...this.sizes));
  }

  /** Fresh copies of the layers, checked against the model's names and shapes. */
  layers(weights) {
    const names = Object.keys(weights).sort();
    const want = this.shapes.map(([n]) => n).sort();
    if (names.join() !== want.join()) {
      throw new Error(`weights name ${names.join(',')}, the model has ${want.join(',')}`);
    }
    const layers = [];
    for (let k = 0; k < this.shapes.length; k += 2) {
      const [wName, wShape] = this.shapes[k];
      const [bName, bShape] = this.shapes[k + 1];
      const w = weights[wName];
      const b = weights[bName];
      if (w.length !== sizeOf(wShape) || b.length !== sizeOf(bShape)) {
        throw new Error(`${wName}/${bName}: sizes ${w.length}/${b.length}, model ${wShape}/${bShape}`);
      }
      layers.push({ w: Float32Array.from(w), b: Float32Array.from(b), nIn: wShape[1], nOut: wShape[0] });
    }
    return layers;
  }

  weightsOf(layers) {
    const out = {};
    layers.forEach((layer, k) => {
      out[`${2 * k}.weight`] = layer.w;
      out[`${2 * k}.bias`] = layer.b;
    });
    return out;
  }

  /** Each layer's input, then the output, for the given rows. */
  forward(layers, input, b) {
    const acts = [input];
    layers.forEach((layer, k) => {
      acts.push(layerForward(acts[k], b, layer.nIn, layer.w, layer.b, layer.nOut,
        k === layers.length - 1, this.nz));
    });
    return acts;
  }

  rowsOf(rows) {
    const nIn = this.sizes[0];
    const input = new Float32Array(rows.length * nIn);
    rows.forEach((row, r) => input.set(this.x.subarray(row * nIn, (row + 1) * nIn), r * nIn));
    return input;
  }

  loss(out, b, rows) {
    const k = this.sizes.at(-1);
    return this.kind === 'classification'
      ? softmaxXent(out, b, k, this.labels, rows)
      : squaredError(out, b, k, this.targets, rows);
  }

  /** Backpropagate `grad` (b, n_out) into every layer's (weight, bias) gradient. */
  gradients(layers, acts, grad, b) {
    const grads = new Array(layers.length);
    for (let k = layers.length - 1; k >= 0; k--) {
      const { w, nIn, nOut } = layers[k];
      const input = acts[k];
      const gW = new Float32Array(nOut * nIn);
      const gB = new Float32Array(nOut);
      for (let r = 0; r < b; r++) {
        const count = nonZeros(input, r, nIn, this.nz);
        const xBase = r * nIn;
        for (let o = 0; o < nOut; o++) {
          const g = grad[r * nOut + o];
          gB[o] += g;
          if (g === 0) continue;
          const base = o * nIn;
          for (let t = 0; t < count; t++) {
            const i = this.nz[t];
            gW[base + i] += g * input[xBase + i];
          }
        }
      }
      grads[k] = { w: gW, b: gB };
      if (k > 0) { // through the layer, then through the ReLU that made its input
        const next = new Float32Array(b * nIn);
        for (let r = 0; r < b; r++) {
          for (let i = 0; i < nIn; i++) {
            if (input[r * nIn + i] <= 0) continue;
            let s = 0;
            for (let o = 0; o < nOut; o++) s += grad[r * nOut + o] * w[o * nIn + i];
            next[r * nIn + i] = s;
          }
        }
        grad = next;
      }
    }
    return grads;
  }

  /**
   * `plan.epochs` epochs of plain SGD from `weights`; `onBatch(done, total)` after each step.
   * Returns {weights, samples, metrics}.
   */
  train(weights, plan, round, onBatch = null) {
    if (!(plan.batch_size >= 1)) throw new Error(`batch_size must be >= 1, got ${plan.batch_size}`);
    const mu = proximalMu(plan);
    const layers = this.layers(weights);
    const anchors = mu ? this.layers(weights) : null;
    if (plan.epochs === 0) {
      return { weights: this.weightsOf(layers), samples: this.samples, metrics: this.evaluate(weights) };
    }
    const lr = Math.fround(plan.lr);
    const perEpoch = Math.ceil(this.samples / plan.batch_size);
    const total = perEpoch * plan.epochs;
    let done = 0;
    let lossSum = 0;
    let correct = 0;
    let seen = 0;
    // one generator for the whole call, one permutation per epoch, as numpy's
    const shuffles = permutations([plan.seed, round, this.index], this.samples, plan.epochs);
    for (const order of shuffles) {
      for (let start = 0; start < order.length; start += plan.batch_size) {
        const rows = order.subarray(start, start + plan.batch_size);
        const b = rows.length;
        const acts = this.forward(layers, this.rowsOf(rows), b);
        const out = acts.at(-1);
        const { loss, grad } = this.loss(out, b, rows);
        const grads = this.gradients(layers, acts, grad, b);
        layers.forEach((layer, k) => {
          step(layer.w, grads[k].w, lr, mu, anchors?.[k].w);
          step(layer.b, grads[k].b, lr, mu, anchors?.[k].b);
        });
        lossSum += loss * b;
        seen += b;
        if (this.kind === 'classification') {
          const k = this.sizes.at(-1);
          for (let r = 0; r < b; r++) if (argmaxRow(out, r, k) === this.labels[rows[r]]) correct++;
        }
        done++;
        if (onBatch) onBatch(done, total);
      }
    }
    const metrics = { loss: lossSum / seen };
    if (this.kind === 'classification') metrics.accuracy = correct / seen;
    else metrics.mse = metrics.loss;
    return { weights: this.weightsOf(layers), samples: this.samples, metrics };
  }

  /** Loss and accuracy (or MSE) of `weights` on this agent's own rows. */
  evaluate(weights) {
    const layers = this.layers(weights);
    const k = this.sizes.at(-1);
    let lossSum = 0;
    let correct = 0;
    for (let start = 0; start < this.samples; start += EVAL_BATCH) {
      const b = Math.min(EVAL_BATCH, this.samples - start);
      const rows = new Int32Array(b).map((_, r) => start + r);
      const out = this.forward(layers, this.rowsOf(rows), b).at(-1);
      lossSum += this.loss(out, b, rows).loss * b;
      if (this.kind === 'classification') {
        for (let r = 0; r < b; r++) if (argmaxRow(out, r, k) === this.labels[rows[r]]) correct++;
      }
    }
    const loss = lossSum / this.samples;
    return this.kind === 'classification'
      ? { loss, accuracy: correct / this.samples }
      : { loss, mse: loss };
  }
}

/** The model's outputs (n, out) for n rows `x` (logits for classification). */
export function predict(spec, weights, x) {
  const shapes = modelShapes(spec);
  const nIn = spec.sizes[0];
  const b = x.length / nIn;
  const nz = new Int32Array(Math.max(...spec.sizes));
  let act = Float32Array.from(x);
  for (let k = 0; k < shapes.length; k += 2) {
    const [wName, [nOut]] = shapes[k];
    act = layerForward(act, b, shapes[k][1][1], weights[wName], weights[shapes[k + 1][0]], nOut,
      k === shapes.length - 2, nz);
  }
  return act;
}

/** Probabilities of each class for one row of logits. */
export function softmax(logits) {
  const max = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** FedProx's `mu` from `plan.options` (docs/PROTOCOL.md §4.1), 0 when absent. */
export function proximalMu(plan) {
  const mu = plan.options?.mu ?? 0;
  if (typeof mu !== 'number' || !Number.isFinite(mu) || mu < 0) {
    throw new Error(`plan option mu must be a finite number >= 0, got ${mu}`);
  }
  return mu;
}

/** `epochs` permutations of `n` drawn one after another from one generator. */
function permutations(seed, n, epochs) {
  const rng = new Generator(seed);
  return Array.from({ length: epochs }, () => rng.permutation(n));
}

/** `p -= lr * (g + mu * (p - anchor))`, in place. */
function step(p, g, lr, mu, anchor) {
  if (mu) {
    const m = Math.fround(mu);
    for (let i = 0; i < p.length; i++) p[i] -= lr * Math.fround(g[i] + Math.fround(m * Math.fround(p[i] - anchor[i])));
  } else {
    for (let i = 0; i < p.length; i++) p[i] -= Math.fround(lr * g[i]);
  }
}
