// Acks, presence and the heartbeat against the real server: publishes resolve with the seq
// of their ack (text and binary, also when made before the room was joined), reject when the
// connection drops before the ack or on the timeout; a link that silently stops
// forwarding (the proxy keeps both sockets open) is noticed within heartbeat +
// heartbeatTimeout and healed by a reconnect that resumes; an idle link stays up.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Mioket, PublishError } from '../index.js';
import { WAIT_MS, WebSocket, rawPublisher, startProxy, startServer, until, untilState } from '../support/helpers.mjs';

let server;
before(async () => {
  server = await startServer(['--ping-interval', '0', '--welcome', '']);
});
after(async () => {
  await server?.stop();
});

test('publishes resolve with the seqs of their acks', { timeout: WAIT_MS }, async () => {
  const client = new Mioket(`${server.url}/`, { WebSocket });
  const room = client.room('acks');
  const got = [];
  room.on('message', (m) => got.push(m));
  // Made before connecting: sent once the room is joined.
  const early = room.publish('first');
  client.connect();
  assert.deepEqual(await early, { seq: 1 });
  const acks = await Promise.all([room.publish('a'), room.publish(new Uint8Array([0, 1, 2])), room.publish('c')]);
  assert.deepEqual(acks.map((a) => a.seq), [2, 3, 4]);
  await until(room, 'message', () => got.length === 4, 'own copies');
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3, 4]);
  assert.deepEqual(got.map((m) => m.data), ['first', 'a', new Uint8Array([0, 1, 2]), 'c']);

  // Presence: a second member is counted in its welcome and told to the first.
  const told = until(room, 'presence', (p) => p?.online === 2, 'presence 2');
  const other = new Mioket(`${server.url}/`, { WebSocket });
  other.connect();
  assert.deepEqual(await other.room('acks').presence(), { room: 'acks', online: 2, users: [] }); // anonymous members: no users
  await told;
  assert.deepEqual(await room.presence(), { room: 'acks', online: 2, users: [] });
  other.close();
  client.close();
});

test('a publish rejects when the connection drops before its ack, and on the timeout', { timeout: WAIT_MS }, async () => {
  const proxy = await startProxy(server.port);
  const client = new Mioket(`${proxy.url}/`, { WebSocket, minDelay: 0.05, maxDelay: 0.1, random: () => 0 });
  const room = client.room('drops');
  client.connect();
  await room.presence();
  proxy.stall(); // the publish goes nowhere
  const lost = room.publish('lost');
  const late = room.publish('late', { timeout: 0.2 });
  await assert.rejects(late, (e) => e instanceof PublishError && e.reason === 'timeout');
  proxy.cut();
  await assert.rejects(lost, (e) => e instanceof PublishError && e.reason === 'disconnected');
  // The reconnect works and publishes are acked again.
  assert.ok((await room.publish('after')).seq >= 1);
  client.close();
  await assert.rejects(room.publish('closed'), (e) => e.reason === 'left' || e.reason === 'closed');
  await proxy.close();
});

test('a link that stops forwarding is noticed within the heartbeat bound and healed', { timeout: WAIT_MS }, async () => {
  const proxy = await startProxy(server.port);
  const heartbeat = 0.3;
  const heartbeatTimeout = 0.3;
  const client = new Mioket(`${proxy.url}/`, { WebSocket, heartbeat, heartbeatTimeout, minDelay: 0.05, maxDelay: 0.1, random: () => 0 });
  const room = client.room('dead');
  const got = [];
  room.on('message', (m) => got.push(m.data));
  client.connect();
  await room.presence();
  const writer = await rawPublisher(`${server.url}/dead`);
  writer.publish('dead', 'before');
  await until(room, 'message', () => got.length === 1, 'the first message');

  proxy.stall();
  const stalledAt = performance.now();
  const lostInfo = await until(client, 'disconnected', (info) => Boolean(info), 'the dead link noticed');
  const tookMs = performance.now() - stalledAt;
  assert.equal(lostInfo.reason, 'heartbeat timeout');
  // At most one idle period, the ping, its timeout, and slack for a loaded machine.
  assert.ok(tookMs <= (heartbeat + heartbeatTimeout) * 1000 + 1000, `noticed after ${tookMs} ms`);
  writer.publish('dead', 'during');
  await until(room, 'message', () => got.length === 2, 'the message published while the link was dead');
  assert.deepEqual(got, ['before', 'during']);
  assert.equal(client.state, 'connected');
  writer.close();
  client.close();
  await proxy.close();
});

test('an idle but live link stays up: any frame answers the ping', { timeout: WAIT_MS }, async () => {
  const client = new Mioket(`${server.url}/`, { WebSocket, heartbeat: 0.1, heartbeatTimeout: 0.2 });
  const room = client.room('idle');
  let connects = 0;
  client.on('connected', () => connects++);
  client.connect();
  await room.presence();
  // Ten idle periods: ten pings, each answered (a pong, or today's "unknown op" error).
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.equal(client.state, 'connected');
  assert.equal(connects, 1);
  client.close();
});
