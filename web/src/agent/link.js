/**
 * What a page URL says about the job to join or watch (docs/WEB.md, "Page links").
 *
 * Keys are read from the fragment (`#broker=...&job=...`), which browsers never send
 * to a server, then from the query string, then from the server's /config.json
 * defaults. Credentials and keys belong in the fragment.
 *
 * Invariants: pure; no DOM, no fetch (the caller passes `location` and the defaults).
 */

/** keys a link may carry, and what they mean */
export const LINK_KEYS = {
  broker: 'the broker as a browser reaches it: ws://host:port or wss://host:port',
  job: 'the job id',
  user: 'MQTT user name',
  pass: 'MQTT password',
  agent: 'this device\'s agent id (default: one made up and kept in this browser)',
  shard: 'I/N: train on demo shard I of N, fetched from the server (demo data)',
  task: 'a built-in task name or the URL of a browser task module (default: the model\'s task)',
  device: 'device class announced in presence (default: phone, tablet or desktop)',
  key: 'Ed25519 signing key, PKCS#8 DER in base64url (secure profile)',
  ckey: 'the coordinator\'s Ed25519 public key, SubjectPublicKeyInfo DER in base64url',
};

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The link's settings from `href`, over `defaults` (the server's /config.json). */
export function readLink(href, defaults = {}) {
  const url = new URL(href);
  const fromHash = new URLSearchParams(url.hash.replace(/^#/, ''));
  const out = {};
  for (const key of Object.keys(LINK_KEYS)) {
    const value = fromHash.get(key) ?? url.searchParams.get(key) ?? defaults[key];
    if (value !== undefined && value !== null && value !== '') out[key] = String(value);
  }
  return out;
}

/** Problems that keep a page from connecting, as sentences; [] when it can. */
export function linkProblems(link, { agent = false } = {}) {
  const problems = [];
  if (!link.broker) problems.push('no broker: add #broker=ws://HOST:PORT to the URL');
  else if (!/^wss?:\/\/[^/]+/.test(link.broker)) problems.push(`broker ${link.broker} is not ws:// or wss://`);
  if (!link.job) problems.push('no job: add &job=JOB to the URL');
  else if (!ID.test(link.job)) problems.push(`job ${link.job} is not a valid id`);
  if (agent && link.agent && !ID.test(link.agent)) problems.push(`agent ${link.agent} is not a valid id`);
  if (agent && link.shard && !parseShard(link.shard)) problems.push(`shard ${link.shard} is not I/N with 0 <= I < N`);
  return problems;
}

/** `I/N` as {index, count}, or null. */
export function parseShard(value) {
  const m = /^(\d{1,6})\/(\d{1,6})$/.exec(value ?? '');
  if (!m) return null;
  const index = Number(m[1]);
  const count = Number(m[2]);
  return index < count ? { index, count } : null;
}

/** A fresh agent id for a browser without one: `web-` and 8 random hex digits. */
export function newAgentId(random = crypto.getRandomValues.bind(crypto)) {
  const bytes = random(new Uint8Array(4));
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** A device class from the user agent, for presence when the link names none. */
export function deviceClass(userAgent) {
  if (/iPad|Tablet/i.test(userAgent)) return 'tablet';
  if (/Mobi|Android|iPhone/i.test(userAgent)) return 'phone';
  return 'desktop';
}

/** base64url (no padding) to bytes. */
export function fromBase64url(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
