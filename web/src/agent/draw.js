/**
 * The draw-a-digit panel's maths: a finger or mouse drawing on a square canvas becomes
 * one input row shaped like the task's training images, so the current global model
 * can be run on it on the device, and the labelled drawing can join the device's own
 * training data (never sent anywhere: only updates leave the device).
 *
 * MNIST-like (28 x 28): the ink's bounding box is scaled into a 20 x 20 box and centred
 * by its centre of mass, as MNIST's digits were made (LeCun et al.). Smaller images
 * (scikit-learn's 8 x 8 digits) fill the frame, as those do. Pixels are coverage in
 * [0, 1], the scale the built-in tasks train on.
 *
 * Invariants: pure; takes the canvas's RGBA pixels (ink = alpha), no DOM.
 */

/** One row (Float32Array of width * height) from `rgba` (size x size x 4), or null if blank. */
export function drawingToRow(rgba, size, { width, height }) {
  let minX = size, minY = size, maxX = -1, maxY = -1;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      if (rgba[(y * size + x) * 4 + 3] > 0) {
        if (x < minX) minX = x;
        if (x > maxX) maxX = x;
        if (y < minY) minY = y;
        if (y > maxY) maxY = y;
      }
    }
  }
  if (maxX < 0) return null;
  const mnistLike = width >= 20;
  const box = mnistLike ? Math.round(width * 20 / 28) : width;
  const inkW = maxX - minX + 1;
  const inkH = maxY - minY + 1;
  const scale = box / Math.max(inkW, inkH); // output pixels per canvas pixel
  const outW = inkW * scale;
  const outH = inkH * scale;
  // where the ink's box lands: centred, then (MNIST) shifted to centre the mass
  let offX = (width - outW) / 2;
  let offY = (height - outH) / 2;
  const row = new Float32Array(width * height);
  const weight = new Float32Array(width * height);
  const splat = (dx, dy) => {
    for (let y = minY; y <= maxY; y++) {
      for (let x = minX; x <= maxX; x++) {
        const a = rgba[(y * size + x) * 4 + 3] / 255;
        const px = Math.floor((x - minX + 0.5) * scale + dx);
        const py = Math.floor((y - minY + 0.5) * scale + dy);
        if (px >= 0 && px < width && py >= 0 && py < height) {
          row[py * width + px] += a;
          weight[py * width + px] += 1;
        }
      }
    }
  };
  splat(offX, offY);
  if (mnistLike) {
    let mass = 0, cx = 0, cy = 0;
    for (let i = 0; i < row.length; i++) {
      mass += row[i];
      cx += row[i] * (i % width);
      cy += row[i] * Math.floor(i / width);
    }
    if (mass > 0) {
      offX += (width - 1) / 2 - cx / mass;
      offY += (height - 1) / 2 - cy / mass;
      row.fill(0);
      weight.fill(0);
      splat(offX, offY);
    }
  }
  // each output pixel: the mean ink coverage of the canvas pixels that land on it
  for (let i = 0; i < row.length; i++) if (weight[i] > 0) row[i] = Math.min(1, row[i] / weight[i]);
  return row;
}
