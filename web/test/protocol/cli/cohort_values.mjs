// Used by tests/protocol/test_js_interop.py: the hashed-cohort value (docs/PROTOCOL.md §17)
// of each [job, run, round, agent] read as JSON from stdin (round as a decimal string),
// printed as a JSON list of decimal strings. Run with `node cohort_values.mjs --print`;
// without the flag (as node --test may run it) it does nothing.
import * as P from '../../../src/protocol/index.js';

if (process.argv[2] === '--print') {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  const tuples = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const values = tuples.map(([job, run, round, agent]) => String(P.cohortValue(job, run, BigInt(round), agent)));
  process.stdout.write(JSON.stringify(values));
}
