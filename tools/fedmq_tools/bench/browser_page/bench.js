/**
 * `python -m fedmq_tools.bench.browser`'s browser half: trains `rounds` rounds of a task on a
 * demo shard in the Web Worker the agent uses, and reports each round's seconds in the
 * page title (`fedmq-bench:{json}`), which the benchmark reads from Chromium's DevTools
 * endpoint. Link: /train/bench.html#task=mnist-2nn&shard=4/20&rounds=5
 */

import { decodeShard, loadTask } from './tasks.js';
import { modelShapes } from './mlp.js';
import { Generator } from './rng.js';

/** torch's default init distribution, U(+-1/sqrt(fan_in)), from a seeded generator. */
function initialWeights(spec, seed) {
  const rng = new Generator(seed);
  const out = {};
  for (const [name, shape] of modelShapes(spec)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const fanIn = name.endsWith('weight') ? shape[1] : modelShapes(spec).find(([w]) => w === name.replace('bias', 'weight'))[1][1];
    const bound = 1 / Math.sqrt(fanIn);
    const order = rng.permutation(n); // a cheap seeded spread over [0, n)
    out[name] = Float32Array.from(order, (v) => ((2 * (v + 0.5)) / n - 1) * bound);
  }
  return out;
}

async function main() {
  const params = new URLSearchParams(location.hash.slice(1));
  const task = await loadTask(params.get('task'));
  const [index, count] = params.get('shard').split('/').map(Number);
  const rounds = Number(params.get('rounds') ?? 5);
  const reply = await fetch(`/data/shard?shard=${index}/${count}`);
  const data = decodeShard(new Uint8Array(await reply.arrayBuffer()), task);
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  const next = () => new Promise((resolve) => { worker.onmessage = (e) => { if (e.data.type !== 'progress') resolve(e.data); }; });
  worker.postMessage({ type: 'data', spec: task.model, kind: task.kind, x: data.x, y: data.y, index });
  await next();
  let weights = initialWeights(task.model, 0);
  const seconds = [];
  for (let round = 0; round <= rounds; round++) { // round 0 warms the JIT up, and is not kept
    const started = performance.now();
    worker.postMessage({ type: 'train', id: String(round), weights, plan: { epochs: 1, batch_size: 32, lr: 0.05, seed: 0, options: {} }, round: round + 1 });
    const done = await next();
    if (done.type !== 'done') throw new Error(done.reason);
    if (round > 0) seconds.push((performance.now() - started) / 1000);
    weights = done.weights;
  }
  const result = { task: task.name, rows: data.x.length / task.model.sizes[0], seconds, userAgent: navigator.userAgent };
  document.getElementById('out').textContent = JSON.stringify(result, null, 2);
  document.title = `fedmq-bench:${JSON.stringify(result)}`;
}

main().catch((err) => { document.title = `fedmq-bench:${JSON.stringify({ error: err.message })}`; });
