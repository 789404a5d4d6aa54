// Builders shared by the browser modules' unit tests.
import { encode } from '@msgpack/msgpack';

/** A model announcement's bytes, as the coordinator writes them (docs/PROTOCOL.md §4.1). */
export function modelBytes(overrides = {}, weights = { '0.weight': [[1, 2], [3, 4]], '0.bias': [0.5, -0.5] }) {
  const tensors = Object.entries(weights).map(([name, value]) => {
    const flat = value.flat();
    const shape = Array.isArray(value[0]) ? [value.length, value[0].length] : [value.length];
    return { name, dtype: '<f4', shape, data: new Uint8Array(Float32Array.from(flat).buffer) };
  });
  return encode({
    v: 1, type: 'model', job: 'demo', run: 'r1', round: 1, attempt: 0, model_id: 'm1',
    task: 'linreg', plan: { epochs: 1, batch_size: 2, lr: 0.1, seed: 0, options: {} },
    codec: 'none', deadline_s: 30, cohort: null, done: false, issued_at: 1700000000, max_payload: 0,
    tensors, ...overrides,
  });
}
