import assert from 'node:assert/strict';
import { test } from 'node:test';
import { drawingToRow } from '../../src/agent/draw.js';

function canvas(size, ink) {
  const rgba = new Uint8ClampedArray(size * size * 4);
  for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) if (ink(x, y)) rgba[(y * size + x) * 4 + 3] = 255;
  return rgba;
}

test('a blank pad is no input', () => {
  assert.equal(drawingToRow(canvas(40, () => false), 40, { width: 8, height: 8 }), null);
});

test('an MNIST-like row fits the ink in a 20 pixel box centred by mass', () => {
  const bar = canvas(280, (x, y) => x >= 10 && x < 40 && y >= 20 && y < 220); // a stroke in a corner
  const row = drawingToRow(bar, 280, { width: 28, height: 28 });
  let mass = 0, cx = 0, cy = 0, top = 28, bottom = -1;
  row.forEach((v, i) => {
    mass += v; cx += v * (i % 28); cy += v * Math.floor(i / 28);
    if (v > 0) { top = Math.min(top, Math.floor(i / 28)); bottom = Math.max(bottom, Math.floor(i / 28)); }
  });
  assert.ok(Math.abs(cx / mass - 13.5) < 1 && Math.abs(cy / mass - 13.5) < 1);
  assert.ok(bottom - top + 1 >= 19 && bottom - top + 1 <= 21);
  assert.ok(row.every((v) => v >= 0 && v <= 1));
});

test('an 8x8 row (scikit-learn digits) fills the frame', () => {
  const full = drawingToRow(canvas(64, (x, y) => x > 5 && x < 58 && y > 5 && y < 58), 64, { width: 8, height: 8 });
  assert.equal(full.length, 64);
  assert.ok(full.every((v) => v > 0.9));
});
