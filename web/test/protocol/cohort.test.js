// Hashed cohorts (docs/PROTOCOL.md §17) against protocol/vectors/cohort.json.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as P from '../../src/protocol/index.js';
import { fromHex, load, tensors } from './vectors.js';

const V = load('cohort.json');

test('hash vectors: the hashed text, its first 8 bytes, the value and the verdict', () => {
  for (const c of V.hashes) {
    assert.equal(P.toHex(P.sha256(new TextEncoder().encode(c.text)).subarray(0, 8)), c.first8, c.text);
    assert.equal(P.cohortValue(c.job, c.run, c.round, c.agent), BigInt(c.value), c.text);
    assert.equal(P.inCohort({ below: BigInt(c.below) }, c.job, c.run, c.round, c.agent), c.in, c.text);
  }
});

test('a round past 2^53 arriving as a BigInt hashes as its decimal', () => {
  assert.equal(P.cohortValue('demo', 'r1', 3n, 'pi-01'), P.cohortValue('demo', 'r1', 3, 'pi-01'));
});

test('the announcement vector both ways', () => {
  const v = V.announcement;
  const m = P.decodeModel(fromHex(v.hex));
  assert.equal(m.cohort, null);
  assert.deepEqual(m.cohort_hash, { below: BigInt(v.message.cohort_hash.below) });
  const message = { ...v.message, weights: tensors(v.message.weights), cohort_hash: m.cohort_hash };
  assert.equal(P.toHex(P.encodeModel(message)), v.hex);
  assert.deepEqual(['pi-01', 'pi-02', 'pi-03', 'pi-04', 'phone-7'].map((a) => P.asks(m, a)),
    [true, false, false, true, true]);
});

test('announcements the vectors refuse are refused with the reason', () => {
  for (const r of V.rejects) {
    assert.throws(() => P.decodeModel(fromHex(r.hex)), (e) => e instanceof P.WireError && e.reason === r.reason, r.name);
  }
});

test('bad thresholds are malformed', () => {
  for (const below of [0, -1, 2n ** 64n, new P.Float(1), true, '5', null]) {
    assert.throws(() => P.decodeCohortHash({ below }, 'model'), (e) => e.reason === P.RejectReason.MALFORMED, String(below));
  }
  assert.deepEqual(P.decodeCohortHash({ below: P.MAX_BELOW }, 'model'), { below: P.MAX_BELOW });
});

test('without cohort_hash, asks follows the named cohort', () => {
  const base = { job: 'demo', run: 'r1', round: 3, cohort_hash: null };
  assert.equal(P.asks({ ...base, cohort: null }, 'pi-02'), true);
  assert.equal(P.asks({ ...base, cohort: ['pi-01'] }, 'pi-02'), false);
});
