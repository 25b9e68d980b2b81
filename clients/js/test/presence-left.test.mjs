// presence() and the server's `left` (issue 22) against the real server, with HS256 tokens
// made here: presence() asks the server and lists the users with their connection counts
// and info; a moderation removal (DELETE /api/rooms/{room}/users/{user}) is told as `left`
// with reason `removed`, rejects the room's pending publishes, and the room is not
// rejoined after a reconnect.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocketServer } from 'ws';
import { Mioket, PublishError } from '../index.js';
import { WAIT_MS, WebSocket, secretFile, signToken, startProxy, startServer, until, untilState } from '../support/helpers.mjs';

/** The next `event` (until() with no predicate argument resolves at once). */
const next = (emitter, event) => until(emitter, event, (_x) => true, event);

const SECRET = 'the presence tests sign their tokens with this';
let secret;
before(() => {
  secret = secretFile(SECRET);
});
after(() => secret?.remove());

function tokenFor(sub, info) {
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + 3600, rooms: { read: ['*'], write: ['*'] } };
  if (info) claims.info = info;
  return signToken(SECRET, claims);
}

function server() {
  return startServer(['--jwt-secret-file', secret.file, '--api-token', 't', '--ping-interval', '0', '--welcome', '']);
}

const fast = { WebSocket, minDelay: 0.05, maxDelay: 0.2, heartbeat: 60 };

function mioket(t, url, options) {
  const client = new Mioket(url, options);
  t.after(() => client.close());
  return client;
}

test('presence() asks the server: two users with their connection counts and info', { timeout: 2 * WAIT_MS }, async (t) => {
  const s = await server();
  t.after(() => s.stop());
  const alice1 = mioket(t, `${s.url}/`, { ...fast, getToken: () => tokenFor('alice', { name: 'Alice' }) });
  const alice2 = mioket(t, `${s.url}/`, { ...fast, getToken: () => tokenFor('alice', { name: 'Alice' }) });
  const bob = mioket(t, `${s.url}/`, { ...fast, getToken: () => tokenFor('bob') });
  const rooms = [alice1, alice2, bob].map((c) => c.room('lobby'));
  for (const c of [alice1, alice2, bob]) c.connect();
  await Promise.all(rooms.map((r) => next(r, 'joined')));
  const answer = await rooms[2].presence();
  assert.equal(answer.room, 'lobby');
  assert.equal(answer.online, 3);
  assert.deepEqual(answer.users, [
    { user: 'alice', info: { name: 'Alice' }, connections: 2 },
    { user: 'bob', connections: 1 },
  ]);
  assert.equal(answer.truncated, undefined);
  assert.equal(rooms[2].online, 3);
});

test('presence() rejects on its timeout (never joined) and after leave()', { timeout: 2 * WAIT_MS }, async (t) => {
  const s = await server();
  t.after(() => s.stop());
  const client = mioket(t, `${s.url}/`, { ...fast, getToken: () => tokenFor('carol') });
  const lobby = client.room('lobby');
  await assert.rejects(lobby.presence({ timeout: 0.2 }), (e) => e instanceof PublishError && e.reason === 'timeout');
  client.connect();
  await next(lobby, 'joined');
  assert.equal((await lobby.presence()).online, 1);
  lobby.leave();
  await assert.rejects(lobby.presence(), (e) => e instanceof PublishError && e.reason === 'left');
});

test('a moderation removal is told as `left` (removed), later publishes reject, and it is not rejoined', { timeout: 2 * WAIT_MS }, async (t) => {
  const s = await server();
  t.after(() => s.stop());
  const proxy = await startProxy(s.port);
  t.after(() => proxy.close());
  const client = mioket(t, `${proxy.url}/`, { ...fast, getToken: () => tokenFor('dave') });
  const lobby = client.room('lobby');
  const other = client.room('other');
  client.connect();
  await Promise.all([next(lobby, 'joined'), next(other, 'joined')]);
  const left = next(lobby, 'left');
  const res = await fetch(`${s.http}/api/rooms/lobby/users/dave`, { method: 'DELETE', headers: { Authorization: 'Bearer t' } });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { room: 'lobby', user: 'dave', connections: 1 });
  const info = await left;
  assert.deepEqual(info, { room: 'lobby', reason: 'removed' });
  assert.equal(lobby.active, false);
  await assert.rejects(lobby.publish('late'), (e) => e instanceof PublishError && e.reason === 'left');
  // Reconnect: `other` is rejoined, `lobby` is not (nothing published there reaches us).
  proxy.cut();
  await untilState(client, 'disconnected');
  await next(other, 'joined');
  const got = [];
  lobby.on('message', (m) => got.push(m.data));
  const seen = [];
  other.on('message', (m) => seen.push(m.data));
  const api = (room, body) => fetch(`${s.http}/api/rooms/${room}/messages`, { method: 'POST', body, headers: { Authorization: 'Bearer t' } });
  await api('lobby', 'not for dave');
  await api('other', 'for dave');
  await until(other, 'message', () => seen.length === 1, 'the message in other');
  assert.deepEqual(got, []);
  const presence = await fetch(`${s.http}/api/rooms/lobby/presence`, { headers: { Authorization: 'Bearer t' } }).then((r) => r.json());
  assert.equal(presence.online, 0);
});

test('a publish waiting for its ack is rejected with `left` when the server takes its room away (forbidden)', { timeout: WAIT_MS }, async (t) => {
  // A scripted server: it never acks, and answers the first publish with left/forbidden.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'mioket.v1' });
  await new Promise((resolve) => wss.once('listening', resolve));
  t.after(() => new Promise((resolve) => { for (const c of wss.clients) c.terminate(); wss.close(resolve); }));
  let connections = 0;
  const joins = [];
  wss.on('connection', (ws) => {
    connections++;
    ws.send(JSON.stringify({ type: 'welcome', room: 'lobby', epoch: 'e0e0e0e0e0e0e0e0', seq: 0, online: 1, text: null }));
    ws.on('message', (data) => {
      const op = JSON.parse(data);
      if (op.op === 'join') joins.push(op.room);
      if (op.op === 'publish') ws.send(JSON.stringify({ type: 'left', room: op.room, reason: 'forbidden' }));
    });
  });
  const url = `ws://127.0.0.1:${wss.address().port}`;
  const client = mioket(t, `${url}/lobby`, fast);
  const lobby = client.room('lobby');
  client.connect();
  await next(lobby, 'joined');
  const left = next(lobby, 'left');
  await assert.rejects(lobby.publish('x'), (e) => e instanceof PublishError && e.reason === 'left');
  assert.deepEqual(await left, { room: 'lobby', reason: 'forbidden' });
  assert.equal(lobby.active, false);
  // After a reconnect the room is not joined again (the path's room is left at once).
  for (const c of wss.clients) c.terminate();
  await until(client, 'connected', (_x) => true, 'the reconnect');
  assert.equal(connections, 2);
  assert.deepEqual(joins, []);
});
