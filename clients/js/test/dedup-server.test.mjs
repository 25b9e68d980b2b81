// Publish ids against the real server (issue 23): the server publishes an id once per room
// within its --dedup-window, so the client's ids are unique across connections (a random
// prefix per client and a counter), and a publish retried with its id (`{id}`, the id a
// PublishError carries) is published once.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Mioket, PublishError } from '../index.js';
import { WAIT_MS, WebSocket, startProxy, startServer, until, untilState } from '../support/helpers.mjs';

const fast = { WebSocket, minDelay: 0.05, maxDelay: 0.2, random: () => 0.5 };
let server;
before(async () => {
  server = await startServer(['--ping-interval', '0', '--welcome', '']);
});
after(async () => {
  await server?.stop();
});

/** A connected client in `room`, collecting its messages; closed when test `t` ends. */
async function member(t, url, room) {
  const client = new Mioket(url, fast);
  t.after(() => client.close());
  const got = [];
  const r = client.room(room);
  r.on('message', (m) => got.push(m));
  client.connect();
  await untilState(client, 'connected');
  await r.presence();
  return { client, room: r, got };
}

test('two clients publishing once each are two messages: their ids differ', { timeout: WAIT_MS }, async (t) => {
  const reader = await member(t, `${server.url}/two`, 'two');
  const a = await member(t, `${server.url}/two`, 'two');
  const b = await member(t, `${server.url}/two`, 'two');
  assert.deepEqual(await a.room.publish('from a'), { seq: 1 });
  assert.deepEqual(await b.room.publish('from b'), { seq: 2 });
  await until(reader.room, 'message', () => reader.got.length === 2, 'two messages');
  assert.deepEqual(reader.got.map((m) => m.data), ['from a', 'from b']);
});

test('a publish retried with its id is published once and resolves with the first seq', { timeout: WAIT_MS }, async (t) => {
  const reader = await member(t, `${server.url}/retry`, 'retry');
  const writer = await member(t, `${server.url}/retry`, 'retry');
  assert.deepEqual(await writer.room.publish('order 7', { id: 'order-7' }), { seq: 1 });
  assert.deepEqual(await writer.room.publish('order 7', { id: 'order-7' }), { seq: 1 });
  assert.deepEqual(await writer.room.publish('next'), { seq: 2 });
  await until(reader.room, 'message', () => reader.got.length === 2, 'two messages');
  assert.deepEqual(reader.got.map((m) => [m.seq, m.data]), [[1, 'order 7'], [2, 'next']]);
  await assert.rejects(writer.room.publish('x', { id: 'k'.repeat(65) }), TypeError);
  await assert.rejects(writer.room.publish('x', { id: '' }), TypeError);
});

test('a connection cut before the ack: the error carries the id, and the retry is published once', { timeout: 2 * WAIT_MS }, async (t) => {
  const reader = await member(t, `${server.url}/cut`, 'cut');
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  const writer = await member(t, `${proxy.url}/cut`, 'cut');
  const first = writer.room.publish('exactly once');
  proxy.cut();
  let seq;
  try {
    ({ seq } = await first);
  } catch (e) {
    assert.ok(e instanceof PublishError, `${e}`);
    assert.equal(e.reason, 'disconnected');
    assert.match(e.id, /^p-[0-9a-f]{12}-\d+$/);
    await untilState(writer.client, 'connected');
    ({ seq } = await writer.room.publish('exactly once', { id: e.id }));
  }
  assert.equal(seq, 1);
  // A timeout carries its id too (or a disconnect, if the cut is noticed only now).
  proxy.stall();
  const late = await writer.room.publish('stalled', { timeout: 0.2 }).catch((e) => e);
  assert.ok(late instanceof PublishError && ['timeout', 'disconnected'].includes(late.reason), `${late}`);
  assert.match(late.id, /^p-[0-9a-f]{12}-\d+$/);
  assert.deepEqual(await reader.room.publish('after'), { seq: 2 });
  await until(reader.room, 'message', () => reader.got.length === 2, 'two messages');
  assert.deepEqual(reader.got.map((m) => [m.seq, m.data]), [[1, 'exactly once'], [2, 'after']]);
});
