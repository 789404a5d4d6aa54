/**
 * Error feedback: what a lossy codec did not send stays on the device and joins the
 * next delta, as edge_agent/feedback.py does (Seide et al. 2014; Stich et al. 2018;
 * Karimireddy et al. 2019).
 *
 * Each round the agent encodes u = delta + residual and keeps
 * residual' = u - decode(encode(u)), computed with the receiver's own decoder. Only a
 * biased codec (top-k, deterministic rounding) keeps a residual; a lossless or
 * unbiased one sends any carried residual and keeps none. A residual belongs to one
 * run (its `scope`) and one set of tensor shapes; anything else starts from zero.
 *
 * Invariants: pure; the state is replaced, never mutated, so the adapter can tell
 * when to persist it (IndexedDB, store.js).
 */

import { codecKeepsResidual, decodeDelta, encodeDelta } from './wire.js';

export class ErrorFeedback {
  /** `state`: {scope, tensors: {name: Float32Array}} loaded from the device, or null */
  constructor(state = null) {
    this.state = state;
  }

  /** The entries for `delta` (+ the carried residual) under `codec`; throws for NaN/Inf. */
  encode(delta, shapes, codec, scope) {
    const carried = this.carried(delta, scope);
    const total = {};
    for (const [name, d] of Object.entries(delta)) {
      const t = new Float32Array(d.length);
      const c = carried?.[name];
      for (let i = 0; i < d.length; i++) {
        t[i] = c ? d[i] + c[i] : d[i];
        if (!Number.isFinite(t[i])) throw new Error('the delta holds NaN or Inf');
      }
      total[name] = t;
    }
    const entries = encodeDelta(total, shapes, codec);
    if (!codecKeepsResidual(codec)) {
      this.state = null;
      return entries;
    }
    const sent = decodeDelta(entries, codec, shapes);
    const tensors = {};
    for (const [name, t] of Object.entries(total)) {
      const r = new Float32Array(t.length);
      for (let i = 0; i < t.length; i++) r[i] = t[i] - sent[name][i];
      tensors[name] = r;
    }
    this.state = { scope, tensors };
    return entries;
  }

  carried(delta, scope) {
    const state = this.state;
    if (state === null || state.scope !== scope) return null;
    const have = Object.entries(state.tensors).map(([n, a]) => `${n}:${a.length}`).join();
    const want = Object.entries(delta).map(([n, a]) => `${n}:${a.length}`).join();
    return have === want ? state.tensors : null;
  }
}
