/** Reading protocol/vectors/*.json (the vectors the Python tests read too). */

import { readFileSync } from 'node:fs';

const ROOT = new URL('../../../protocol/vectors/', import.meta.url);

export const load = (name) => JSON.parse(readFileSync(new URL(name, ROOT), 'utf8'));

export const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));

/** A vector's named tensors [{name, shape, data: Float32Array}] from their float32 hex. */
export function tensors(doc) {
  return doc.map((t) => ({ name: t.name, shape: t.shape, data: new Float32Array(fromHex(t.f32).buffer) }));
}

/** numpy's Generator.random() for default_rng(seed): (next64 >> 11) * 2^-53. */
export async function numpyRandom(seed) {
  const { PCG64 } = await import('../../src/train/rng.js');
  const bits = new PCG64(seed);
  return () => Number(bits.next64() >> 11n) * 2 ** -53;
}
