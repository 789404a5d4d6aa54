import assert from 'node:assert/strict';
import { test } from 'node:test';
import task, { parseDigitsCsv } from '../../../docs/examples/web_task.js';
import { checkTask, loadData } from '../../src/train/tasks.js';

test('docs/examples/web_task.js is a browser task with a working data source', async () => {
  assert.equal(checkTask(task, 'docs/examples/web_task.js'), task);
  const none = await loadData(task, { params: new URLSearchParams() });
  assert.equal(none.rows, 0); // drawings only
  const csv = `${Array(64).fill(16).join(',')},7\n${Array(64).fill(0).join(',')},0\n`;
  const ctx = {
    params: new URLSearchParams('csv=/mine.csv'),
    fetch: async (url) => ({ ok: url === '/mine.csv', status: 200, text: async () => csv }),
  };
  const data = await loadData(task, ctx);
  assert.equal(data.rows, 2);
  assert.deepEqual(Array.from(data.y), [7, 0]);
  assert.equal(data.x[0], 1);
  assert.throws(() => parseDigitsCsv('1,2,3\n'), /64 pixels/);
});
