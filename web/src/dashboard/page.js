/**
 * The live dashboard (/): one job, from its topics alone, over MQTT WebSockets. It
 * subscribes to status, metrics, agents/+ and (where the credentials may read it) the
 * model's header; it writes nothing, so the secure profile's read-only `monitor`
 * credentials are enough. It keeps the run's rounds in localStorage, so a reload keeps the
 * history this browser saw; reconnects every second after a broker restart (a round that
 * closed meanwhile shows as not seen), and a resumed coordinator (same run id) continues
 * the same history.
 */

import mqtt from 'mqtt';
import { linkProblems, readLink } from '../agent/link.js';
import { decodeMetrics, decodePresence, decodeStatus, openPresence, parseTopic, peekModel, topicsFor, WireError } from '../agent/wire.js';
import { Charts, human } from './charts.js';
import { DashboardState } from './state.js';

const $ = (id) => document.getElementById(id);
const fixed = (v, n = 4) => (v === null || v === undefined ? '–' : v.toFixed(n));

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderRounds(history) {
  const rows = history.slice().reverse().map((m) => {
    const tr = document.createElement('tr');
    tr.dataset.round = String(m.round);
    if (m.missed) {
      tr.dataset.missed = 'true';
      tr.className = 'missed';
      const note = cell('not seen: it closed while this screen was offline');
      note.colSpan = 9;
      tr.append(cell(m.round), note);
      return tr;
    }
    tr.append(cell(m.round), cell(m.closed_by.replace('_', ' ')), cell(m.accepted), cell(m.declined),
      cell(m.rejectedTotal), cell(m.missing ?? '–'), cell(fixed(m.accuracy)), cell(fixed(m.loss)),
      cell(human(m.bytes_up)), cell(m.duration_s.toFixed(2)));
    return tr;
  });
  $('rounds-table').tBodies[0].replaceChildren(...rows);
}

function renderAgents(state) {
  const { list, online } = state.agentList();
  $('agents-table').tBodies[0].replaceChildren(...list.map(([id, a]) => {
    const tr = document.createElement('tr');
    tr.dataset.agent = id;
    tr.dataset.kind = a.kind ?? '';
    tr.className = a.online ? 'online' : 'offline';
    const name = cell(` ${id}`);
    name.prepend(Object.assign(document.createElement('span'), { className: 'dot', title: a.online ? 'online' : 'offline' }));
    tr.append(name, cell(a.kind ?? '–', a.kind ? `kind-${a.kind}` : ''), cell(a.device ?? '–'),
      cell(a.trainer ?? '–'), cell(a.samples ?? '–'));
    return tr;
  }));
  const total = Object.values(online).reduce((a, b) => a + b, 0);
  $('online').textContent = String(total);
  $('online-kinds').textContent = Object.entries(online).map(([k, n]) => `${n} ${k}`).join(' · ') || 'none';
}

function renderConfig(state) {
  const s = state.status;
  const m = state.model;
  const items = [
    ['task', m?.task], ['codec', m?.codec], ['rounds', s?.rounds], ['quorum', s?.quorum],
    ['min replies', s?.min_replies], ['deadline', m ? `${m.deadline_s} s` : null],
    ['local epochs', m?.plan?.epochs], ['batch size', m?.plan?.batch_size], ['learning rate', m?.plan?.lr],
    ['model size', m ? human(m.size) : null],
  ];
  $('config').replaceChildren(...items.flatMap(([k, v]) => [
    Object.assign(document.createElement('dt'), { textContent: k }),
    Object.assign(document.createElement('dd'), { textContent: v ?? '–' }),
  ]));
}

function renderRound(state, now) {
  const open = state.openRound(now);
  const s = state.status;
  const bar = $('round-bar');
  const mark = $('round-quorum');
  if (!open) {
    bar.style.width = s && (s.phase === 'done') ? '100%' : '0%';
    mark.style.display = 'none';
    $('round-text').textContent = !s ? 'waiting for the coordinator\'s status'
      : s.phase === 'waiting' ? `waiting for agents (${s.agents_online} online)`
        : s.phase === 'evaluating' ? `round ${s.round} closed: evaluating`
          : `run ${s.phase}${s.message ? `: ${s.message}` : ''}`;
    return;
  }
  const scale = Math.max(open.cohort, open.quorum, 1);
  bar.style.width = `${Math.min(100, (open.accepted / scale) * 100)}%`;
  mark.style.display = 'block';
  mark.style.left = `${Math.min(100, (open.quorum / scale) * 100)}%`;
  const left = open.deadlineIn === null ? '' : ` · deadline in ${Math.max(0, open.deadlineIn).toFixed(0)} s`;
  const retry = open.attempt ? ` (retry ${open.attempt})` : '';
  $('round-text').textContent = `round ${open.round}${retry}: ${open.accepted} of ${open.cohort} accepted`
    + ` · quorum ${open.quorum}, ${open.minReplies} at the deadline${left}`;
}

function render(state, now) {
  const s = state.status;
  $('job').textContent = state.job;
  $('run').textContent = state.run ?? '–';
  $('phase').textContent = s ? s.phase : 'no status yet';
  $('phase').dataset.phase = s ? s.phase : '';
  $('round').textContent = s ? String(s.round) : '–';
  $('rounds').textContent = s ? ` / ${s.rounds}` : '';
  const history = state.history();
  const last = [...history].reverse().find((m) => !m.missed && (m.accuracy !== null || m.loss !== null));
  $('accuracy').textContent = fixed(last?.accuracy);
  $('loss').textContent = fixed(last?.loss);
  $('accuracy-round').textContent = last ? `after round ${last.round}` : '';
  const rejected = Object.entries(s?.rejected ?? {}).map(([r, n]) => `${r} ${n}`).join(', ');
  $('rejected').textContent = rejected ? `rejected: ${rejected}` : 'none rejected';
  renderRound(state, now);
  renderAgents(state);
  renderConfig(state);
  renderRounds(history);
  return history;
}

async function main() {
  let config = {};
  try {
    const reply = await fetch('/config.json');
    if (reply.ok) config = await reply.json();
  } catch { /* the link alone will do */ }
  const link = readLink(location.href, config);
  const problems = linkProblems(link);
  if (problems.length) {
    $('problems').hidden = false;
    $('problems').textContent = problems.join(' · ');
    return;
  }
  const state = new DashboardState(link.job);
  const saved = `fedmq:dashboard:${link.job}`;
  try {
    state.restore(JSON.parse(localStorage.getItem(saved) ?? 'null'));
  } catch { /* a corrupt snapshot: start afresh */ }
  const charts = new Charts({ quality: $('chart-quality'), bytes: $('chart-bytes'), participation: $('chart-participation') });
  const now = () => Date.now() / 1000;
  let dirty = true;
  const topics = topicsFor(link.job);
  const client = mqtt.connect(link.broker, {
    clientId: `dash-${crypto.getRandomValues(new Uint32Array(1))[0].toString(16)}`,
    username: link.user, password: link.pass, protocolVersion: 5, clean: true,
    reconnectPeriod: 1000, connectTimeout: 10_000, keepalive: 30,
  });
  const setConnection = (state_) => { $('connection').textContent = state_; $('connection').dataset.state = state_; };
  client.on('connect', () => {
    setConnection('connected');
    client.subscribe([topics.status, topics.metrics, topics.allPresence, topics.model], { qos: 1 });
  });
  client.on('reconnect', () => setConnection('reconnecting'));
  client.on('offline', () => setConnection('offline'));
  client.on('error', (err) => {
    if ([4, 5, 134, 135].includes(err.code)) {
      client.end(true);
      setConnection('refused');
      $('problems').hidden = false;
      $('problems').textContent = `the broker refused the login: ${err.message}`;
    }
  });
  client.on('message', (topic, payload) => {
    const ref = parseTopic(link.job, topic);
    if (!ref || ref.chunk !== null) return;
    const bytes = new Uint8Array(payload);
    try {
      switch (ref.kind) {
        case 'status': dirty = state.onStatus(decodeStatus(bytes)) || dirty; break;
        case 'metrics': dirty = state.onMetrics(decodeMetrics(bytes)) || dirty; break;
        case 'agents': dirty = state.onPresence(ref.agent, bytes.length ? decodePresence(openPresence(bytes)) : null) || dirty; break;
        case 'model': {
          const header = bytes.length ? peekModel(bytes) : null;
          if (header) dirty = state.onModel(header, bytes.length) || dirty;
          break;
        }
        default: break;
      }
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      state.countMalformed(ref.kind);
    }
  });
  const tick = () => {
    const history = render(state, now());
    if (dirty) {
      charts.update(history);
      localStorage.setItem(saved, JSON.stringify(state.snapshot()));
      dirty = false;
    }
  };
  tick();
  setInterval(tick, 500);
}

main().catch((err) => {
  $('problems').hidden = false;
  $('problems').textContent = err.message;
});
