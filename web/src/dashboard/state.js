/**
 * What the dashboard knows about one job, built from its topics alone, as
 * fedmq/monitor/state.py builds the terminal monitor's.
 *
 * Rules (the monitor's): pure, never reads a clock (`now` is passed in) and never
 * throws for what a peer sent (the page counts decode failures itself, by topic
 * kind, in `malformed`). QoS 1 redelivers and retained messages come again after
 * every reconnect, a broker restart or a coordinator resume: metrics count once per
 * (run, round); a status older (by `at`) than the one held for the same run is
 * stale; a presence older than the one held for that agent is stale, except a last
 * will (`at` 0). Messages take the wire's field names (docs/PROTOCOL.md §4).
 *
 * Participation "missing" = agents expected in the round (the status's
 * `cohort_size` while that round was open) - accepted - declined.
 */

/** rounds kept per job: enough for any run on a wall screen, and bounded */
export const MAX_ROUNDS = 1000;

export class DashboardState {
  constructor(job) {
    this.job = job;
    this.status = null;
    /** `${run}/${round}` -> metrics, in arrival order */
    this.rounds = new Map();
    /** `${run}/${round}` -> agents expected, from the status while the round was open */
    this.expected = new Map();
    /** agent -> {online, samples, device, trainer, kind, at} */
    this.agents = new Map();
    /** the latest model announcement's header (no tensors) */
    this.model = null;
    this.ignored = 0;
    this.malformed = {};
    this.messages = 0;
  }

  /** The run the status names, else the newest metrics' run. */
  get run() {
    if (this.status) return this.status.run;
    let newest = null;
    for (const m of this.rounds.values()) if (!newest || m.at > newest.at) newest = m;
    return newest ? newest.run : null;
  }

  countMalformed(kind) {
    this.messages++;
    this.malformed[kind] = (this.malformed[kind] ?? 0) + 1;
  }

  /** A decoded status; true if it changed the view. */
  onStatus(status) {
    this.messages++;
    const held = this.status;
    if (held && held.run === status.run && status.at <= held.at) {
      this.ignored++;
      return false;
    }
    this.status = status;
    if (status.phase === 'training') this.expected.set(`${status.run}/${status.round}`, status.cohort_size);
    return true;
  }

  /** A decoded metrics document; true the first time its (run, round) is seen. */
  onMetrics(metrics) {
    this.messages++;
    const key = `${metrics.run}/${metrics.round}`;
    if (this.rounds.has(key)) {
      this.ignored++;
      return false;
    }
    this.rounds.set(key, metrics);
    while (this.rounds.size > MAX_ROUNDS) this.rounds.delete(this.rounds.keys().next().value);
    return true;
  }

  /** A decoded presence, or null for a cleared one (the agent is forgotten). */
  onPresence(agent, presence) {
    this.messages++;
    if (presence === null) return this.agents.delete(agent);
    const held = this.agents.get(agent);
    const at = presence.at ?? 0;
    if (held && at > 0 && at < held.at) {
      this.ignored++;
      return false;
    }
    this.agents.set(agent, {
      online: presence.online,
      samples: presence.samples ?? null,
      device: presence.device ?? null,
      trainer: presence.trainer ?? null,
      kind: presence.kind ?? null,
      at,
    });
    return true;
  }

  /** A model announcement's header fields and its size in bytes. */
  onModel(header, size) {
    this.messages++;
    const held = this.model;
    if (held && held.run === header.run && held.round === header.round
        && held.attempt === header.attempt && held.done === header.done) {
      this.ignored++;
      return false;
    }
    // the final model says deadline 0: the run's config keeps the rounds' deadline
    const deadline = header.done && held ? held.deadline_s : header.deadline_s;
    this.model = { ...header, deadline_s: deadline, size };
    return true;
  }

  /**
   * The current run's closed rounds, in round order, with participation worked out. A
   * round this screen never saw the metrics of (it closed while the screen was offline:
   * the broker keeps only the last round's) is a row `{round, missed: true}`.
   */
  history() {
    const run = this.run;
    const mine = [];
    for (const m of this.rounds.values()) if (m.run === run) mine.push(m);
    mine.sort((a, b) => a.round - b.round);
    const first = mine.length ? mine[0].round : 1;
    const rows = [];
    for (const m of mine) {
      const last = rows.length ? rows.at(-1).round : first - 1;
      for (let r = last + 1; r < m.round; r++) rows.push({ run, round: r, missed: true });
      rows.push(m);
    }
    return rows.map((m) => {
      if (m.missed) return m;
      const rejected = Object.values(m.rejected ?? {}).reduce((a, b) => a + b, 0);
      const expected = this.expected.get(`${m.run}/${m.round}`);
      const missing = expected === undefined ? null : Math.max(0, expected - m.accepted - m.declined);
      return { ...m, rejectedTotal: rejected, expected: expected ?? null, missing };
    });
  }

  /** Rejections of the current run by reason, summed over its rounds. */
  rejectedByReason() {
    const out = {};
    for (const m of this.history()) {
      if (m.missed) continue;
      for (const [reason, n] of Object.entries(m.rejected ?? {})) out[reason] = (out[reason] ?? 0) + n;
    }
    return out;
  }

  /** The open round: {round, attempt, accepted, quorum, minReplies, cohort, deadlineIn}, or null. */
  openRound(now) {
    const s = this.status;
    if (!s || s.phase !== 'training') return null;
    return {
      round: s.round,
      attempt: s.attempt,
      accepted: s.accepted,
      quorum: s.quorum,
      minReplies: s.min_replies,
      cohort: s.cohort_size,
      deadlineIn: s.deadline_at == null ? null : s.deadline_at - now,
    };
  }

  /** Agents sorted by id, with counts online by kind. */
  agentList() {
    const list = [...this.agents.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    const online = {};
    for (const [, a] of list) if (a.online) online[a.kind ?? 'unknown'] = (online[a.kind ?? 'unknown'] ?? 0) + 1;
    return { list, online };
  }

  /** What survives a page reload (localStorage): the rounds and their expected counts. */
  snapshot() {
    return { job: this.job, rounds: [...this.rounds.values()], expected: [...this.expected.entries()] };
  }

  restore(snapshot) {
    if (!snapshot || snapshot.job !== this.job) return;
    for (const [key, n] of snapshot.expected ?? []) this.expected.set(key, n);
    for (const m of snapshot.rounds ?? []) this.rounds.set(`${m.run}/${m.round}`, m);
  }
}
