/**
 * The codec spec string: its grammar and the pipeline it names (protocol/codecs/spec.py,
 * docs/PROTOCOL.md §7).
 *
 *   spec  := stage ("+" stage)*        stage := name [":" arg ("," arg)*]
 *   arg   := [key "="] value
 *
 * Stages in a fixed order: a sparsifier (topk), a value quantiser (fp16, int8, qsgd),
 * an entropy coder (zstd), each at most once; `none` stands alone. Parsing is strict
 * (no whitespace, no case folding, every value range-checked): a spec means exactly
 * one pipeline or parseCodec throws Error. The string itself travels, not a canonical form.
 */

import { strLength } from '../fields.js';

export const MAX_SPEC_LEN = 256;
export const MAX_BLOCK = 1 << 24;
export const MAX_LEVELS = 127;

const INT = /^(?:0|[1-9][0-9]{0,9})$/;
const FLOAT = /^(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?$/;
const NAME = /^[a-z][a-z0-9]*$/;

const param = (key, kind, def, lo, hi, loClosed = true) => ({ key, kind, def, lo, hi, loClosed });

/** stage name -> [role, parameters in positional order] */
export const STAGES = Object.freeze({
  none: ['raw', []],
  topk: ['sparsifier', [param('fraction', 'float', 0.01, 0, 1, false)]],
  fp16: ['quantiser', []],
  int8: ['quantiser', [param('block', 'int', 0, 0, MAX_BLOCK)]],
  qsgd: ['quantiser', [param('levels', 'int', 16, 1, MAX_LEVELS), param('block', 'int', 0, 0, MAX_BLOCK)]],
  zstd: ['entropy', [param('level', 'int', 3, 1, 22)]],
});
const ROLE_ORDER = ['sparsifier', 'quantiser', 'entropy'];

/** kind 'f4' | 'f2' (floats) or 'int' (levels, block, stochastic). */
const quantiser = (kind, levels = 0, block = 0, stochastic = false) => ({
  kind, levels, block, stochastic, floatDtype: { f4: '<f4', f2: '<f2' }[kind] ?? null,
});

/** A parsed spec: optional top-k fraction, one quantiser, optional zstd level. */
export class Pipeline {
  constructor(topk = null, q = quantiser('f4'), zstdLevel = null) {
    this.topk = topk;
    this.quantiser = q;
    this.zstdLevel = zstdLevel;
  }

  /** decode(encode(x)) == x exactly: no residual is ever left. */
  get lossless() { return this.topk === null && this.quantiser.kind === 'f4'; }

  /** E[decode(encode(x))] != x (top-k, deterministic rounding): error feedback applies. */
  get biased() { return !this.lossless && !(this.topk === null && this.quantiser.stochastic); }

  /** Encoding draws random numbers (qsgd). */
  get stochastic() { return this.quantiser.stochastic; }

  /** Values of a tensor of `n` that top-k keeps: ceil(f * n), at least 1. */
  kept(n) {
    if (this.topk === null || n === 0) return n;
    return Math.min(n, Math.max(1, Math.ceil(this.topk * n)));
  }
}

function value(p, text, where) {
  if (!(p.kind === 'int' ? INT : FLOAT).test(text)) throw new Error(`${where}: ${p.key}='${text}' is not a plain ${p.kind}`);
  const v = Number(text);
  const tooLow = p.loClosed ? v < p.lo : v <= p.lo;
  if (tooLow || v > p.hi || !Number.isFinite(v)) throw new Error(`${where}: ${p.key}=${text} out of range`);
  return v;
}

function stage(text) {
  const colon = text.indexOf(':');
  const name = colon < 0 ? text : text.slice(0, colon);
  const argText = colon < 0 ? '' : text.slice(colon + 1);
  if (!NAME.test(name) || !Object.hasOwn(STAGES, name)) {
    throw new Error(`unknown codec stage '${name}'; stages: ${Object.keys(STAGES).join(', ')}`);
  }
  const params = STAGES[name][1];
  const values = Object.fromEntries(params.map((p) => [p.key, p.def]));
  if (!argText) {
    if (text.endsWith(':')) throw new Error(`${name}: empty argument list`);
    return [name, values];
  }
  const given = new Set();
  let keywords = false;
  argText.split(',').forEach((arg, i) => {
    const eq = arg.indexOf('=');
    let key = eq < 0 ? null : arg.slice(0, eq);
    let raw = eq < 0 ? arg : arg.slice(eq + 1);
    if (eq < 0) {
      if (keywords || i >= params.length) throw new Error(`${name}: unexpected positional argument '${arg}'`);
      [key, raw] = [params[i].key, arg];
    }
    keywords = keywords || eq >= 0;
    const p = params.find((q) => q.key === key);
    if (!p || given.has(key)) throw new Error(`${name}: unknown or repeated parameter '${key}'`);
    given.add(key);
    values[key] = value(p, raw, name);
  });
  return [name, values];
}

const cache = new Map();

/** The pipeline `spec` names; throws Error for anything outside the grammar. */
export function parseCodec(spec) {
  if (cache.has(spec)) return cache.get(spec);
  if (typeof spec !== 'string' || !spec || strLength(spec) > MAX_SPEC_LEN) {
    throw new Error(`codec spec must be a non-empty string of <= ${MAX_SPEC_LEN} chars`);
  }
  const stages = spec.split('+').map(stage);
  let pipe;
  if (stages[0][0] === 'none') {
    if (stages.length > 1) throw new Error("'none' (raw float32) stands alone; use 'zstd' for lossless packing");
    pipe = new Pipeline();
  } else {
    const roles = stages.map(([name]) => STAGES[name][0]);
    const ordered = [...new Set(roles)].sort((a, b) => ROLE_ORDER.indexOf(a) - ROLE_ORDER.indexOf(b));
    if (roles.includes('raw') || roles.join() !== ordered.join()) {
      throw new Error(`codec '${spec}': stages go sparsifier, quantiser, entropy, each at most once`);
    }
    let [topk, q, level] = [null, quantiser('f4'), null];
    for (const [name, v] of stages) {
      if (name === 'topk') topk = v.fraction;
      else if (name === 'fp16') q = quantiser('f2');
      else if (name === 'int8') q = quantiser('int', MAX_LEVELS, v.block);
      else if (name === 'qsgd') q = quantiser('int', v.levels, v.block, true);
      else level = v.level;
    }
    pipe = new Pipeline(topk, q, level);
  }
  if (cache.size > 64) cache.clear();
  cache.set(spec, pipe);
  return pipe;
}
