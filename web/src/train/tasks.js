/**
 * Browser tasks: a model the browser trainer builds, and where the device's rows come from.
 *
 * A task is a plain object (a user's comes from an ES module's default export; see
 * docs/WEB.md, "Your own browser task", and docs/examples/web_task.js):
 *
 *   {
 *     name: 'digits',                                   // shown on the page
 *     model: { arch: 'mlp', sizes: [64, 64, 10] },      // or { arch: 'linear', sizes: [in, out] }
 *     kind: 'classification',                           // or 'regression'
 *     data: async (ctx) => ({ x, y }),                  // x: Float32Array rows x sizes[0];
 *                                                       // y: integer labels, or Float32Array targets
 *     image: { width: 8, height: 8, scale: 16 },        // optional: rows are greyscale images
 *   }                                                   // (pixel / scale); enables drawing
 *
 * `ctx` gives the data source what it may need: `ctx.link` (the page link's settings),
 * `ctx.params` (every key of the link's fragment and query, for a task's own settings),
 * `ctx.fetch` and `ctx.shard()` (the demo shard named by `#shard=I/N`, from the server).
 * A task with an `image` may return no rows: the device's labelled drawings, kept in
 * IndexedDB, are added to whatever it returns.
 * The built-in tasks mirror fedmq/tasks/registry.py's (same models, same rows).
 *
 * Invariants: no DOM; fetch only through the function the page passes in.
 */

import { decode } from '@msgpack/msgpack';
import { modelShapes } from './mlp.js';

/** the demo shard format's version (fedmq/web/shard.py) */
export const SHARD_VERSION = 1;
const MNIST_IMAGE = { width: 28, height: 28, scale: 1 };

const fromShard = (ctx) => ctx.shard();

export const BUILTIN = {
  digits: {
    name: 'digits',
    model: { arch: 'mlp', sizes: [64, 64, 10] },
    kind: 'classification',
    image: { width: 8, height: 8, scale: 1 },
    data: fromShard,
  },
  'mnist-logreg': {
    name: 'mnist-logreg',
    model: { arch: 'linear', sizes: [784, 10] },
    kind: 'classification',
    image: MNIST_IMAGE,
    data: fromShard,
  },
  'mnist-2nn': {
    name: 'mnist-2nn',
    model: { arch: 'mlp', sizes: [784, 200, 200, 10] },
    kind: 'classification',
    image: MNIST_IMAGE,
    data: fromShard,
  },
  mlp: { name: 'mlp', model: { arch: 'mlp', sizes: [10, 100, 10] }, kind: 'classification', data: fromShard },
  linreg: { name: 'linreg', model: { arch: 'linear', sizes: [10, 1] }, kind: 'regression', data: fromShard },
};

/** A task from a built-in name or a module URL (whose default export is the task). */
export async function loadTask(ref, importModule = (url) => import(url)) {
  if (Object.hasOwn(BUILTIN, ref)) return BUILTIN[ref];
  if (!/^(\/|\.\/|https?:)/.test(ref)) {
    throw new Error(`unknown task ${ref}: the browser trains ${Object.keys(BUILTIN).join(', ')} or a module URL`);
  }
  const module = await importModule(ref);
  return checkTask(module.default ?? module.task, ref);
}

/** `task` if it has what the agent needs; throws an Error naming what is wrong. */
export function checkTask(task, where = 'task') {
  if (!task || typeof task !== 'object') throw new Error(`${where}: no task object exported`);
  if (typeof task.name !== 'string' || !task.name) throw new Error(`${where}: task.name must be a string`);
  modelShapes(task.model); // throws for an arch or sizes the browser trainer cannot build
  if (task.kind !== 'classification' && task.kind !== 'regression') {
    throw new Error(`${where}: task.kind must be classification or regression`);
  }
  if (typeof task.data !== 'function') throw new Error(`${where}: task.data must be a function`);
  const img = task.image;
  if (img && !(img.width * img.height === task.model.sizes[0] && img.scale > 0)) {
    throw new Error(`${where}: task.image must be width x height = ${task.model.sizes[0]} with a scale > 0`);
  }
  return task;
}

/** A task's rows, checked against its model: {x, y, rows}. */
export async function loadData(task, ctx) {
  const { x, y } = await task.data(ctx);
  const features = task.model.sizes[0];
  const outputs = task.model.sizes.at(-1);
  // a task that takes drawings may start with none: the device's drawings are its rows
  const empty = x?.length === 0 && task.image && task.kind === 'classification';
  if (!(x instanceof Float32Array) || (x.length === 0 && !empty) || x.length % features !== 0) {
    throw new Error(`${task.name}: data x must be a non-empty Float32Array of rows of ${features}`);
  }
  const rows = x.length / features;
  const want = task.kind === 'classification' ? rows : rows * outputs;
  if (!ArrayBuffer.isView(y) || y.length !== want) {
    throw new Error(`${task.name}: data y must hold ${want} values for ${rows} rows`);
  }
  return { x, y, rows };
}

/** Decode a demo shard (fedmq/web/shard.py) for `task`. */
export function decodeShard(bytes, task) {
  let doc;
  try {
    doc = decode(bytes, { maxStrLength: 256, maxBinLength: 1 << 30, maxArrayLength: 16, maxMapLength: 32 });
  } catch (err) {
    throw new Error(`shard: not msgpack: ${err.message}`);
  }
  if (!doc || doc.v !== SHARD_VERSION || doc.type !== 'shard') throw new Error('shard: not a version-1 shard');
  const { rows, features, outputs } = doc;
  if (features !== task.model.sizes[0] || outputs !== task.model.sizes.at(-1)) {
    throw new Error(`shard of ${doc.task} has ${features} -> ${outputs}, the model ${task.model.sizes.join('-')}`);
  }
  const labels = doc.kind === 'classification';
  if (!(doc.x instanceof Uint8Array) || doc.x.length !== rows * features * 4
      || !(doc.y instanceof Uint8Array) || doc.y.length !== rows * (labels ? 1 : outputs) * 4) {
    throw new Error('shard: x or y has the wrong size');
  }
  const copy = (bin) => new Uint8Array(bin).buffer; // a copy: aligned and owned
  return {
    x: new Float32Array(copy(doc.x)),
    y: labels ? new Int32Array(copy(doc.y)) : new Float32Array(copy(doc.y)),
    shard: doc.shard,
    shards: doc.shards,
  };
}
