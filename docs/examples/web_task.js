// A browser task for fedmq's /agent page (docs/WEB.md, "Your own browser task").
//
// Phones learn a digit reader together from what their owners draw: each device trains
// the model on the digits drawn and labelled on its own page (kept in its IndexedDB,
// never sent), plus, when the link says `#csv=URL`, a CSV file of its own with rows of
// 64 pixel values (0..16, scikit-learn's 8x8 digits layout) and a label. The coordinator
// runs the matching Python task, docs/examples/web_task.py, whose model is the same.
//
//   fedmq web --broker ws://HOST:9001 --job draw --task-module docs/examples/web_task.js
//   open  http://HOST:8080/agent#broker=...&job=draw&user=...&pass=...&task=/tasks/web_task.js

export default {
  name: 'my-digits',
  model: { arch: 'mlp', sizes: [64, 64, 10] },
  kind: 'classification',
  // rows are 8x8 greyscale images in [0, 1]: the page shows its draw panel
  image: { width: 8, height: 8, scale: 1 },

  async data(ctx) {
    const url = ctx.params.get('csv');
    if (!url) return { x: new Float32Array(0), y: new Int32Array(0) }; // drawings only
    const reply = await ctx.fetch(url);
    if (!reply.ok) throw new Error(`${url}: ${reply.status}`);
    return parseDigitsCsv(await reply.text());
  },
};

/** `p0,...,p63,label` lines (pixels 0..16) as rows in [0, 1] and labels 0..9. */
export function parseDigitsCsv(text) {
  const rows = text.split(/\r?\n/).filter((line) => line.trim() && !/^[a-z]/i.test(line));
  const x = new Float32Array(rows.length * 64);
  const y = new Int32Array(rows.length);
  rows.forEach((line, r) => {
    const cells = line.split(',').map(Number);
    if (cells.length !== 65 || cells.some((v) => !Number.isFinite(v))) {
      throw new Error(`CSV line ${r + 1}: want 64 pixels and a label`);
    }
    for (let i = 0; i < 64; i++) x[r * 64 + i] = Math.min(16, Math.max(0, cells[i])) / 16;
    y[r] = cells[64];
  });
  return { x, y };
}
