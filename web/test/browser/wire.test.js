import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeDelta, decodeModel, decodePresence, decodeStatus, encodeDelta, encodePresence, floatToHalf, halfToFloat, WireError,
} from '../../src/agent/wire.js';
import { modelBytes } from './helpers.js';

const reason = (fn) => { try { fn(); } catch (err) { assert.ok(err instanceof WireError, err); return err.reason; } return null; };

test('presence encodes as docs/PROTOCOL.md\'s golden example', () => {
  const bytes = encodePresence({ agent: 'pi-01', online: true, at: 1700000000.5, samples: 500, device: 'rpi4', trainer: 'torch' });
  assert.equal(new TextDecoder().decode(bytes),
    '{"v":1,"type":"presence","agent":"pi-01","state":"online","at":1700000000.5,"samples":500,"device":"rpi4","trainer":"torch"}');
  assert.equal(decodePresence(bytes).kind, null);
});

test('fp16 rounds to nearest even and round-trips', () => {
  assert.equal(floatToHalf(1), 0x3c00);
  assert.equal(floatToHalf(65504), 0x7bff);
  assert.equal(floatToHalf(1 + 2 ** -11), 0x3c00); // a tie: to even
  assert.equal(floatToHalf(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(floatToHalf(2 ** -24), 0x0001);
  assert.equal(floatToHalf(-0.5), 0xb800);
  for (const v of [0.1, -3.75, 1e-6, 1234.5]) assert.ok(Math.abs(halfToFloat(floatToHalf(v)) - v) <= 2 ** -11 * Math.abs(v) + 2 ** -25);
  const delta = { w: Float32Array.of(0.1, -2, 70000) };
  const entries = encodeDelta(delta, { w: [3] }, 'fp16');
  assert.equal(entries[0].dtype, '<f2');
  assert.deepEqual(Array.from(decodeDelta(entries, 'fp16', { w: [3] }).w), [halfToFloat(floatToHalf(0.1)), -2, 65504]);
});

test('bad models are refused with the protocol\'s reasons', () => {
  assert.equal(reason(() => decodeModel(new Uint8Array([0xc1]))), 'malformed');
  assert.equal(reason(() => decodeModel(modelBytes({ v: true }))), 'bad_version');
  assert.equal(reason(() => decodeModel(modelBytes({ round: 1.5 }))), 'malformed');
  assert.equal(reason(() => decodeModel(modelBytes({ deadline_s: Infinity }))), 'non_finite');
  assert.equal(reason(() => decodeModel(modelBytes({ job: 'a b' }))), 'malformed');
  assert.equal(reason(() => decodeModel(modelBytes({ tensors: [] }))), 'malformed');
  const model = decodeModel(modelBytes());
  assert.deepEqual(model.shapes, { '0.weight': [2, 2], '0.bias': [2] });
  assert.deepEqual(Array.from(model.weights['0.bias']), [0.5, -0.5]);
});

test('status and JSON limits', () => {
  assert.equal(reason(() => decodeStatus(new TextEncoder().encode('{"v":1,"type":"status"}'))), 'malformed');
  assert.equal(reason(() => decodeStatus(new TextEncoder().encode('[1'))), 'malformed');
  assert.equal(reason(() => decodePresence(new Uint8Array(70_000))), 'too_large');
  assert.equal(new TextDecoder().decode(encodePresence({ agent: 'a', online: false, at: 0 })),
    '{"v":1,"type":"presence","agent":"a","state":"offline","at":0}');
});
