// Trains with the browser's trainer (web/src/train/mlp.js) on what the Python side
// wrote, for tests/browser/test_trainer_parity.py: argv[2] in, argv[3] out (msgpack).
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MlpTrainer } from '../../web/src/train/mlp.js';
import { Generator } from '../../web/src/train/rng.js';

const require = createRequire(join(process.env.FEDMQ_WEB_DIR, 'package.json'));
const { decode, encode } = require('@msgpack/msgpack');

const doc = decode(readFileSync(process.argv[2]));
const f32 = (b) => new Float32Array(new Uint8Array(b).buffer); // a copy: node may hand a Buffer view
const bytes = (a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const out = { cases: [], permutations: [] };
for (const c of doc.cases) {
  const y = c.kind === 'classification' ? new Int32Array(new Uint8Array(c.y).buffer) : f32(c.y);
  const trainer = new MlpTrainer(c.spec, c.kind, f32(c.x), y, c.index);
  const weights = Object.fromEntries(Object.entries(c.weights).map(([k, v]) => [k, f32(v)]));
  const result = trainer.train(weights, c.plan, c.round);
  out.cases.push({
    weights: Object.fromEntries(Object.entries(result.weights).map(([k, v]) => [k, bytes(v)])),
    samples: result.samples,
    metrics: result.metrics,
  });
}
for (const p of doc.permutations) {
  const rng = new Generator(p.seed);
  out.permutations.push(p.sizes.map((n) => Array.from(rng.permutation(n))));
}
writeFileSync(process.argv[3], encode(out));
