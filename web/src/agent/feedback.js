/**
 * Error feedback: what a lossy codec did not send stays on the device and joins the next
 * delta, as edge_agent/feedback.py does (Seide et al. 2014; Stich et al. 2018;
 * Karimireddy et al. 2019); the arithmetic is the protocol library's encodeWithFeedback.
 *
 * A residual belongs to one run (its `scope`) and one set of tensor names and sizes;
 * anything else starts from zero. Only a biased codec (top-k, deterministic rounding)
 * keeps one. The state is replaced, never mutated, so the adapter can tell when to
 * persist it (IndexedDB, store.js).
 */

import { encodeDelta } from './wire.js';

export class ErrorFeedback {
  /** `state`: {scope, tensors: {name: Float32Array}} loaded from the device, or null */
  constructor(state = null) {
    this.state = state;
  }

  /** The entries for `delta` (+ the carried residual) under `codec`; throws for NaN/Inf. */
  encode(delta, shapes, codec, scope, random = null) {
    const { entries, residual } = encodeDelta(delta, shapes, codec, this.carried(delta, scope), random);
    this.state = residual ? { scope, tensors: residual } : null;
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
