/**
 * The /agent page: joins the job its link names (link.js), trains in a Web Worker,
 * shows its state on a phone-sized screen, and runs the current global model on
 * what you draw. Wiring only: the logic lives in core.js, session.js, draw.js and
 * ../train (docs/WEB.md).
 */

import { deviceClass, fromBase64url, linkProblems, newAgentId, parseShard, readLink } from './link.js';
import { drawingToRow } from './draw.js';
import { AgentSession } from './session.js';
import { AgentStore } from './store.js';
import { importKeys } from './wire.js';
import { decodeShard, loadData, loadTask } from '../train/tasks.js';
import { modelShapes, predict, softmax } from '../train/mlp.js';

const $ = (id) => document.getElementById(id);

function human(bytes) {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(1)} kB`;
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function fixed(v) {
  return v === null || v === undefined ? '–' : v.toFixed(3);
}

function showProblems(problems) {
  const box = $('problems');
  box.hidden = false;
  box.replaceChildren(...problems.map((p) => Object.assign(document.createElement('div'), { textContent: p })));
}

/** The shard index to train (the demo's `any/N` picks one per browser and keeps it). */
function chooseShard(link) {
  if (!link.shard) return null;
  const any = /^any\/(\d{1,6})$/.exec(link.shard);
  if (!any) return parseShard(link.shard);
  const count = Number(any[1]);
  const key = `fedmq:shard:${link.job}:${count}`;
  let index = Number(localStorage.getItem(key));
  if (!Number.isInteger(index) || index < 0 || index >= count || localStorage.getItem(key) === null) {
    index = crypto.getRandomValues(new Uint32Array(1))[0] % count;
    localStorage.setItem(key, String(index));
  }
  return { index, count };
}

async function fetchConfig() {
  try {
    const reply = await fetch('/config.json');
    return reply.ok ? await reply.json() : {};
  } catch {
    return {};
  }
}

function render(view) {
  $('connection').textContent = view.refused ? 'refused' : view.connection;
  $('connection').dataset.state = view.refused ? 'refused' : view.connection;
  $('job').textContent = `· job ${view.job}`;
  $('round').textContent = view.round ?? '–';
  $('rounds').textContent = view.rounds ? ` / ${view.rounds}` : '';
  const phase = view.phase === 'training' ? `training ${Math.round(view.progress * 100)}%` : view.phase;
  $('phase').textContent = phase;
  $('phase').dataset.phase = view.phase;
  $('phase').dataset.round = view.round ?? '';
  const done = ['sent', 'declined', 'finished'].includes(view.phase);
  $('progress').style.width = `${Math.round((view.phase === 'training' ? view.progress : done ? 1 : 0) * 100)}%`;
  const s = view.status;
  if (s && s.phase === 'training') {
    const left = s.deadline_at ? Math.max(0, Math.round(s.deadline_at - Date.now() / 1000)) : null;
    $('quorum').textContent = `round ${s.round}: ${s.accepted} of ${s.quorum} updates for quorum`
      + (left !== null ? ` · deadline in ${left} s` : '');
  } else if (s) {
    $('quorum').textContent = s.phase === 'done' || s.phase === 'failed' ? `run ${s.phase}: ${s.message}` : `coordinator: ${s.phase}`;
  }
  $('samples').textContent = view.samples;
  $('local-accuracy').textContent = fixed(view.lastAccuracy);
  $('global-accuracy').textContent = fixed(view.globalAccuracy);
  $('updates').textContent = view.updatesSent;
  $('updates').dataset.rounds = view.sentRounds.join(',');
  $('updates').dataset.declined = view.lastDecline ?? '';
  $('bytes').textContent = human(view.bytesSent);
  $('task').textContent = view.task;
  $('agent').textContent = view.agent;
  $('broker').textContent = view.broker;
  $('note').textContent = view.refused ?? view.note ?? '';
}

async function main() {
  const config = await fetchConfig();
  const link = readLink(location.href, config);
  const problems = linkProblems(link, { agent: true });
  if (!link.task) problems.push('no task: add &task=NAME (or a module URL) to the URL');
  if (problems.length) return showProblems(problems);
  const agentKey = `fedmq:agent:${link.job}`;
  const agent = link.agent ?? localStorage.getItem(agentKey) ?? newAgentId();
  if (!link.agent) localStorage.setItem(agentKey, agent);
  const device = link.device ?? deviceClass(navigator.userAgent);
  $('device').textContent = device;
  const task = await loadTask(link.task);
  const store = await AgentStore.open(indexedDB, link.job, agent);
  const shard = chooseShard(link);
  const params = new URLSearchParams(location.search);
  for (const [k, v] of new URLSearchParams(location.hash.replace(/^#/, ''))) params.set(k, v);
  const ctx = {
    link,
    params,
    fetch: (...args) => fetch(...args),
    shard: async () => {
      if (!shard) throw new Error(`task ${task.name} trains on a demo shard: add &shard=I/N to the URL`);
      const reply = await fetch(`/data/shard?shard=${shard.index}/${shard.count}`);
      if (!reply.ok) throw new Error(`demo shard ${shard.index}/${shard.count}: ${reply.status} ${await reply.text()}`);
      return decodeShard(new Uint8Array(await reply.arrayBuffer()), task);
    },
  };
  const base = await loadData(task, ctx);
  const worker = new Worker(new URL('../train/worker.js', import.meta.url), { type: 'module' });
  const trainer = { spec: task.model, kind: task.kind, shapes: modelShapes(task.model), samples: base.rows, worker };
  const withDrawings = async () => {
    const drawings = task.image && task.kind === 'classification' ? await store.drawings(task.name) : [];
    const features = task.model.sizes[0];
    const x = new Float32Array(base.x.length + drawings.length * features);
    x.set(base.x);
    const y = new Int32Array(base.rows + drawings.length);
    y.set(base.y);
    drawings.forEach((d, i) => { x.set(d.x, base.x.length + i * features); y[base.rows + i] = d.label; });
    worker.postMessage({ type: 'data', spec: task.model, kind: task.kind, x, y, index: shard?.index ?? 0 });
    $('drawings').textContent = "tap its digit to add a drawing to this device's own data (it never "
      + `leaves the device) · ${drawings.length} so far`;
    return y.length;
  };
  trainer.samples = task.kind === 'classification' ? await withDrawings() : base.rows;
  if (task.kind !== 'classification') {
    worker.postMessage({ type: 'data', spec: task.model, kind: task.kind, x: base.x, y: base.y, index: shard?.index ?? 0 });
  }
  let keys;
  try {
    keys = await importKeys({
      key: link.key ? fromBase64url(link.key) : null,
      ckey: link.ckey ? fromBase64url(link.ckey) : null,
    });
  } catch (err) {
    return showProblems([`keys: ${err.message}`]);
  }
  const session = new AgentSession({ link, agent, task, trainer, store, keys, device, onView: render });
  const saved = await store.loadModel();
  if (saved) session.set({ model: saved, round: saved.round, run: saved.run });
  render(session.view);
  await session.start();
  setInterval(() => render(session.view), 1000); // the deadline countdown
  $('pause').addEventListener('change', (e) => session.pause(e.target.checked));
  if (task.image && task.kind === 'classification') {
    drawPanel(task, session, store, async () => session.samplesChanged(await withDrawings()));
  }
}

function drawPanel(task, session, store, added) {
  $('draw-card').hidden = false;
  const pad = $('pad');
  const ctx2d = pad.getContext('2d');
  ctx2d.lineWidth = 22;
  ctx2d.lineCap = 'round';
  ctx2d.lineJoin = 'round';
  ctx2d.strokeStyle = '#17202a';
  let drawing = false;
  let row = null;
  const at = (e) => {
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left) * (pad.width / r.width), (e.clientY - r.top) * (pad.height / r.height)];
  };
  pad.addEventListener('pointerdown', (e) => { drawing = true; pad.setPointerCapture(e.pointerId); ctx2d.beginPath(); ctx2d.moveTo(...at(e)); });
  pad.addEventListener('pointermove', (e) => { if (drawing) { ctx2d.lineTo(...at(e)); ctx2d.stroke(); } });
  const finish = () => { if (drawing) { drawing = false; classify(); } };
  pad.addEventListener('pointerup', finish);
  pad.addEventListener('pointercancel', finish);
  const bars = Array.from({ length: 10 }, () => document.createElement('div'));
  $('probabilities').replaceChildren(...bars);
  const labels = Array.from({ length: task.model.sizes.at(-1) }, (_, digit) => {
    const b = Object.assign(document.createElement('button'), { type: 'button', textContent: String(digit), disabled: true });
    b.title = `add this drawing to your own data as a ${digit}`;
    b.addEventListener('click', async () => {
      if (!row) return;
      await store.addDrawing(task.name, row, digit);
      $('prediction').textContent = `added as a ${digit}: it trains from the next round`;
      clear();
      await added();
    });
    return b;
  });
  $('labels').replaceChildren(...labels);
  const clear = () => {
    ctx2d.clearRect(0, 0, pad.width, pad.height);
    row = null;
    labels.forEach((b) => { b.disabled = true; });
    bars.forEach((b) => { b.style.height = '1px'; });
  };
  $('clear').addEventListener('click', () => {
    clear();
    $('prediction').textContent = 'draw a digit: the current global model reads it here, on this device';
  });
  function classify() {
    row = drawingToRow(ctx2d.getImageData(0, 0, pad.width, pad.height).data, pad.width, task.image);
    labels.forEach((b) => { b.disabled = row === null; });
    const model = session.view.model;
    if (!row) return;
    if (!model) {
      $('prediction').textContent = 'no global model yet: label it to add it to your data';
      return;
    }
    const p = softmax(predict(task.model, model.weights, row));
    const best = p.indexOf(Math.max(...p));
    $('prediction').textContent = `the round ${model.round} model reads a ${best} (${Math.round(p[best] * 100)}%)`;
    $('prediction').dataset.digit = String(best);
    p.forEach((v, i) => {
      bars[i].style.height = `${Math.max(1, Math.round(v * 36))}px`;
      bars[i].classList.toggle('best', i === best);
    });
  }
}

main().catch((err) => showProblems([err.message]));
