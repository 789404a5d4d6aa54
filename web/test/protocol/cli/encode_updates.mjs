// Used by tests/protocol/test_js_interop.py: encode, in JavaScript, one update per codec
// vector (and one signed with the vectors' key); print {codec: hex} as JSON. Run with
// `node encode_updates.mjs --print`; without the flag (as node --test may run it) it does nothing.
import * as P from '../../../src/protocol/index.js';
import { fromHex, load, numpyRandom, tensors } from '../vectors.js';

if (process.argv[2] === '--print') {
  const out = {};
  for (const c of load('codecs.json').cases) {
    const random = c.seed === undefined ? null : await numpyRandom(c.seed);
    const update = {
      job: 'demo', agent: 'web-1', round: 3, model_id: 'e7e50b1c96ce0d9f4140c608f1c15fc7', samples: 100,
      codec: c.codec, tensors: P.encodeDelta(tensors(c.delta), c.codec, { random }),
      metrics: { loss: 0.5, accuracy: 0.75 }, train_s: 0.25, declined: null,
    };
    out[c.codec] = P.toHex(P.encodeUpdate(update));
  }
  const key = await P.signingKeyFromSeed(fromHex(load('signed.json').seed));
  out.signed = P.toHex(await P.seal(fromHex(out.int8), 'update', { job: 'demo', run: 'r1', signer: 'web-1', key }));
  process.stdout.write(JSON.stringify(out));
}
