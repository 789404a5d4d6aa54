// Every relative import in web/src names something its target exports: a page that
// imports a missing name fails as a whole in the browser, and no unit test would see it.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');
const IMPORT = /import\s*\{([^}]*)\}\s*from\s*'(\.[^']+)'/g;

function sources(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory()
    ? sources(join(dir, e.name)) : e.name.endsWith('.js') ? [join(dir, e.name)] : []));
}

test('relative imports name exported bindings', async () => {
  const checked = [];
  for (const file of sources(join(SRC, 'agent')).concat(sources(join(SRC, 'dashboard')), sources(join(SRC, 'train')))) {
    for (const [, names, target] of readFileSync(file, 'utf8').matchAll(IMPORT)) {
      const path = resolve(dirname(file), target);
      const text = readFileSync(path, 'utf8');
      for (const name of names.split(',').map((n) => n.trim().split(/\s+as\s+/)[0]).filter(Boolean)) {
        const exported = new RegExp(`export\\s+(async\\s+)?(function|class|const|let)\\s+${name}\\b`).test(text)
          || new RegExp(`export\\s*\\{[^}]*\\b${name}\\b[^}]*\\}`).test(text);
        assert.ok(exported, `${file.slice(SRC.length)} imports ${name} from ${target}, which does not export it`);
        checked.push(name);
      }
    }
  }
  assert.ok(checked.length > 40);
  await import(pathToFileURL(join(SRC, 'agent', 'wire.js')));
});
