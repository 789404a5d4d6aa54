import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deviceClass, fromBase64url, linkProblems, parseShard, readLink } from '../../src/agent/link.js';

test('the fragment wins over the query, and both over the server defaults', () => {
  const link = readLink('http://h/agent?job=q&agent=x#job=f&pass=a%26b', { job: 'd', broker: 'ws://h:9001', task: 'digits' });
  assert.deepEqual(link, { broker: 'ws://h:9001', job: 'f', pass: 'a&b', agent: 'x', task: 'digits' });
});

test('a link without a broker or job, or with bad values, says what to add', () => {
  assert.equal(linkProblems({}).length, 2);
  assert.match(linkProblems({ broker: 'mqtt://h', job: 'j' })[0], /not ws/);
  assert.match(linkProblems({ broker: 'ws://h:1', job: 'a/b' })[0], /not a valid id/);
  assert.deepEqual(linkProblems({ broker: 'wss://h:1', job: 'j', shard: '3/10' }, { agent: true }), []);
  assert.match(linkProblems({ broker: 'ws://h:1', job: 'j', shard: '10/10' }, { agent: true })[0], /shard/);
});

test('shards, device classes and keys parse as the docs say', () => {
  assert.deepEqual(parseShard('3/10'), { index: 3, count: 10 });
  assert.equal(parseShard('3'), null);
  assert.equal(deviceClass('Mozilla/5.0 (Linux; Android 14; Pixel 8) Mobile'), 'phone');
  assert.equal(deviceClass('Mozilla/5.0 (X11; Linux x86_64)'), 'desktop');
  assert.deepEqual(Array.from(fromBase64url('-_8')), [0xfb, 0xff]);
});
