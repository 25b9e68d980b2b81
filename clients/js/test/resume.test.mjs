// Resume against the real server: exactly-once delivery across connections cut by a TCP
// proxy while another client publishes 1,000 messages, `recovered:false` told (with a
// `gap`) when the room's history is too short to fill what was missed, and a room made
// again after its TTL (a new epoch) told as a gap with its messages from seq 1.

import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { after, before, test } from 'node:test';
import { Mioket } from '../index.js';
import { WebSocket, WAIT_MS, rawPublisher, startProxy, startServer, until, untilState } from '../support/helpers.mjs';

const fast = { WebSocket, minDelay: 0.05, maxDelay: 0.2, random: () => 0.5 };
let server;
before(async () => {
  server = await startServer(['--history', '2000', '--ping-interval', '0', '--welcome', '']);
});
after(async () => {
  await server?.stop();
});

test('every message once, in order, across two cuts while 1,000 are published', { timeout: 4 * WAIT_MS }, async () => {
  const proxy = await startProxy(server.port);
  // `lobby` is the URL's room (resumed with ?since=&epoch=), `news` is joined by an op
  // (resumed with since/epoch in the join).
  const reader = new Mioket(`${proxy.url}/lobby`, fast);
  const got = { lobby: [], news: [] };
  const progress = new EventEmitter();
  const gaps = [];
  const recovered = [];
  for (const name of ['lobby', 'news']) {
    const room = reader.room(name);
    room.on('message', (m) => {
      got[name].push(m);
      progress.emit('message');
    });
    room.on('gap', (g) => gaps.push(g));
    room.on('recovered', (r) => recovered.push(r));
  }
  let connects = 0;
  reader.on('connected', () => connects++);
  // Cut the reader's connection when it has 300 and 700 messages of lobby.
  reader.room('lobby').on('message', (m) => {
    if (m.seq === 300 || m.seq === 700) proxy.cut();
  });
  reader.connect();
  await untilState(reader, 'connected');
  await Promise.all([reader.room('lobby').presence(), reader.room('news').presence()]);

  const writer = new Mioket(`${server.url}/`, { WebSocket });
  const out = { lobby: writer.room('lobby'), news: writer.room('news') };
  writer.connect();
  const acks = { lobby: [], news: [] };
  for (let i = 0; i < 1000; i += 50) {
    const batch = [];
    for (let j = i; j < i + 50; j++) {
      for (const name of ['lobby', 'news']) batch.push(out[name].publish(`${name}-${j}`).then((a) => acks[name].push(a.seq)));
    }
    await Promise.all(batch);
  }
  await until(progress, 'message', () => got.lobby.length >= 1000 && got.news.length >= 1000, 'all 2,000 messages');

  for (const name of ['lobby', 'news']) {
    assert.deepEqual(acks[name], Array.from({ length: 1000 }, (_, i) => i + 1), `${name}: acks are seqs 1..1000 in order`);
    assert.deepEqual(got[name].map((m) => m.seq), Array.from({ length: 1000 }, (_, i) => i + 1), `${name}: seqs 1..1000 once each`);
    assert.deepEqual(got[name].map((m) => m.data), Array.from({ length: 1000 }, (_, i) => `${name}-${i}`));
  }
  // The last cut may still be healing: wait until both rooms are joined again.
  await Promise.all([reader.room('lobby').presence(), reader.room('news').presence()]);
  assert.ok(connects >= 3, `reconnected after each cut (${connects} connections)`);
  assert.deepEqual(gaps, [], 'no gap: the history held everything');
  // A cut can come before a room's welcome on the new connection: each room resumed at least once.
  assert.ok(recovered.some((r) => r.room === 'lobby') && recovered.some((r) => r.room === 'news') && recovered.every((r) => r.recovered === true), `every resume recovered: ${JSON.stringify(recovered)}`);
  reader.close();
  writer.close();
  await proxy.close();
});

test('recovered:false and a gap are told when the history is too short', { timeout: 2 * WAIT_MS }, async () => {
  const small = await startServer(['--history', '5', '--ping-interval', '0', '--welcome', '']);
  const proxy = await startProxy(small.port);
  const reader = new Mioket(`${proxy.url}/`, fast);
  const room = reader.room('short');
  const got = [];
  const gaps = [];
  const resumes = [];
  room.on('message', (m) => got.push(m.seq));
  room.on('gap', (g) => gaps.push(g));
  room.on('recovered', (r) => resumes.push(r.recovered));
  reader.connect();
  await room.presence();

  const writer = await rawPublisher(`${small.url}/short`);
  for (let i = 1; i <= 3; i++) writer.publish('short', `a${i}`);
  await until(room, 'message', () => got.length === 3, '3 messages');

  // Lose the reader and keep it out while 20 more are published: 5 stay in the history.
  proxy.refuse(true);
  proxy.cut();
  await untilState(reader, 'disconnected');
  for (let i = 1; i <= 20; i++) writer.publish('short', `b${i}`);
  // The writer gets its own copies: when its 20th comes back, all are published.
  await new Promise((resolve) => {
    let n = 0;
    writer.ws.on('message', (d) => {
      if (JSON.parse(d).type === 'message' && ++n === 20) resolve();
    });
  });
  proxy.refuse(false);
  await until(room, 'message', () => got.length === 8, 'the 5 retained messages');

  assert.deepEqual(resumes, [false], 'the resume was told recovered:false');
  assert.equal(gaps.length, 1);
  assert.equal(gaps[0].reason, 'history');
  assert.equal(gaps[0].previousSeq, 3);
  assert.equal(gaps[0].seq, 23);
  assert.deepEqual(got, [1, 2, 3, 19, 20, 21, 22, 23], 'the retained history after the gap, nothing twice');
  writer.close();
  reader.close();
  await proxy.close();
  await small.stop();
});

test('a room made again (new epoch) is told as a gap, and its messages from seq 1 delivered', { timeout: 2 * WAIT_MS }, async () => {
  const ttl = await startServer(['--room-ttl', '1', '--api-token', 't', '--ping-interval', '0', '--welcome', '']);
  const proxy = await startProxy(ttl.port);
  const api = (method, path, body) =>
    fetch(`${ttl.http}${path}`, { method, body, headers: { Authorization: 'Bearer t' } }).then((r) => r.json());
  const reader = new Mioket(`${proxy.url}/`, fast);
  const room = reader.room('ttl');
  const got = [];
  const gaps = [];
  room.on('message', (m) => got.push([m.data, m.seq, m.epoch]));
  room.on('gap', (g) => gaps.push(g));
  reader.connect();
  await room.presence();
  await api('POST', '/api/rooms/ttl/messages', 'a1');
  await api('POST', '/api/rooms/ttl/messages', 'a2');
  await until(room, 'message', () => got.length === 2, 'a1, a2');
  const first = room.epoch;

  // Keep the reader out until the empty room was freed (--room-ttl 1), then make it again.
  proxy.refuse(true);
  proxy.cut();
  await untilState(reader, 'disconnected');
  const deadline = Date.now() + WAIT_MS;
  while ((await api('GET', '/api/rooms')).some((r) => r.room === 'ttl')) {
    assert.ok(Date.now() < deadline, 'the room was not freed');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal((await api('POST', '/api/rooms/ttl/messages', 'b1')).seq, 1);
  proxy.refuse(false);
  await until(room, 'message', () => got.length === 3, 'b1');

  assert.notEqual(room.epoch, first);
  assert.deepEqual(got, [['a1', 1, first], ['a2', 2, first], ['b1', 1, room.epoch]]);
  assert.equal(gaps.length, 1);
  assert.deepEqual(
    { reason: gaps[0].reason, previousEpoch: gaps[0].previousEpoch, previousSeq: gaps[0].previousSeq, epoch: gaps[0].epoch },
    { reason: 'epoch', previousEpoch: first, previousSeq: 2, epoch: room.epoch },
  );
  reader.close();
  await proxy.close();
  await ttl.stop();
});
