// Drives Debian's headless Chromium for tests/browser through playwright-core (no
// downloaded browser). One JSON command per stdin line, one JSON reply per stdout line:
//   {"id", "op": "open", "name", "url", "width", "height"}   a new page (its own context)
//   {"id", "op": "wait", "name", "js", "timeout_ms"}          until the expression is truthy
//   {"id", "op": "eval", "name", "js"}                        the expression's JSON value
//   {"id", "op": "reload", "name"} | {"id", "op": "screenshot", "name", "path"}
//   {"id", "op": "close", "name"} | {"id", "op": "quit"}
// Replies: {"id", "ok": true, "value"} or {"id", "ok": false, "error"}. Page console
// lines and errors go to stderr. argv[2]: JSON {"args": [extra chromium flags]}.
import { createRequire } from 'node:module';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import readline from 'node:readline';

const require = createRequire(join(process.env.FEDMQ_WEB_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const options = JSON.parse(process.argv[2] ?? '{}');
const profile = mkdtempSync(join(tmpdir(), 'fedmq-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.FEDMQ_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: [...FLAGS, ...(options.args ?? [])],
  viewport: null,
});
const pages = new Map();

async function run(cmd) {
  const page = pages.get(cmd.name);
  switch (cmd.op) {
    case 'open': {
      const p = await context.newPage();
      await p.setViewportSize({ width: cmd.width ?? 1280, height: cmd.height ?? 800 });
      p.on('console', (m) => process.stderr.write(`[${cmd.name}] ${m.type()}: ${m.text()}\n`));
      p.on('pageerror', (e) => process.stderr.write(`[${cmd.name}] pageerror: ${e.message}\n`));
      pages.set(cmd.name, p);
      await p.goto(cmd.url);
      return null;
    }
    case 'wait':
      await page.waitForFunction(cmd.js, null, { timeout: cmd.timeout_ms ?? 60_000, polling: 100 });
      return null;
    case 'eval':
      return page.evaluate(cmd.js);
    case 'reload':
      await page.reload();
      return null;
    case 'screenshot':
      await page.screenshot({ path: cmd.path });
      return null;
    case 'close':
      await page.close();
      pages.delete(cmd.name);
      return null;
    case 'quit':
      await context.close();
      rmSync(profile, { recursive: true, force: true });
      process.exit(0);
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const cmd = JSON.parse(line);
  try {
    const value = await run(cmd);
    process.stdout.write(`${JSON.stringify({ id: cmd.id, ok: true, value: value ?? null })}\n`);
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ id: cmd.id, ok: false, error: String(err.message ?? err) })}\n`);
  }
}
await context.close();
rmSync(profile, { recursive: true, force: true });
