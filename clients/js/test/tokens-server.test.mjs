// Tokens against the real server (issue 21), with HS256 JWTs made here and the server
// started with --jwt-secret-file: getToken for every connection (offered as the
// subprotocol entry mioket.token.JWT), the welcome's user, `from` on messages, refresh
// over the live connection before expiry, a 4001 at expiry answered with a new token and
// a resume without gap or duplicate, 4401/4403 terminal, a forbidden publish rejected.
// (tokens.test.mjs holds the same contract against a fake server, and the header form.)

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Mioket, PublishError } from '../index.js';
import {
  WAIT_MS,
  WebSocket,
  rawPublisher,
  secretFile,
  signToken,
  startProxy,
  startServer,
  until,
  untilState,
  upgrades,
} from '../support/helpers.mjs';

const SECRET = 'the client tests sign their tokens with this';
let secret;
before(() => {
  secret = secretFile(SECRET);
});
after(() => secret?.remove());

/** A token for `sub` that may read and write the rooms given, for `ttl` seconds from now. */
function tokenFor(sub, { read = ['*'], write = ['*'], ttl = 3600 } = {}) {
  return signToken(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + ttl, rooms: { read, write } });
}

/** The real server checking tokens with the test secret (no --jwt-leeway: exact expiry). */
function tokenServer(args = []) {
  return startServer(['--jwt-secret-file', secret.file, '--jwt-leeway', '0', '--ping-interval', '0', '--welcome', '', ...args]);
}

/** A `ws` WebSocket that records the subprotocols each connection offered. */
function recording() {
  const offered = [];
  class Recording extends WebSocket {
    constructor(url, protocols, options) {
      super(url, protocols, options);
      offered.push(protocols);
    }
  }
  return { Recording, offered };
}

const fast = { minDelay: 0.05, maxDelay: 0.2, heartbeat: 60 };

/** Awaits `thing` and has `end(it)` run when test `t` ends, passed or failed (no hang). */
async function cleanup(t, thing, end) {
  const it = await thing;
  t.after(() => end(it));
  return it;
}

/** A client closed when test `t` ends. */
function mioket(t, url, options) {
  const client = new Mioket(url, options);
  t.after(() => client.close());
  return client;
}

test('getToken for every connection as a subprotocol entry; the welcome\'s user; `from` on messages', { timeout: 2 * WAIT_MS }, async (t) => {
  const server = await cleanup(t, tokenServer(['--anonymous-read', '*', '--anonymous-write', '*']), (s) => s.stop());
  const proxy = await cleanup(t, startProxy(server.port), (p) => p.close());
  const { Recording, offered } = recording();
  const given = [];
  const getToken = async () => {
    given.push(tokenFor('alice', { read: ['lobby'], write: ['lobby'] }));
    return given.at(-1);
  };
  const reader = mioket(t, `${proxy.url}/lobby`, { ...fast, WebSocket: Recording, getToken });
  const lobby = reader.room('lobby');
  const got = [];
  lobby.on('message', (m) => got.push(m));
  const welcomes = [];
  lobby.on('joined', (j) => welcomes.push(j));
  reader.connect();
  await lobby.presence();
  assert.equal(reader.user, 'alice');
  assert.equal(welcomes[0].user, 'alice');
  assert.equal(lobby.readOnly, false);
  assert.deepEqual(offered, [['mioket.v1', `mioket.token.${given[0]}`]]);

  const bob = mioket(t, `${server.url}/lobby`, { ...fast, WebSocket, getToken: () => tokenFor('bob') });
  const bobLobby = bob.room('lobby');
  bob.connect();
  assert.deepEqual(await bobLobby.publish('hi from bob'), { seq: 1 });
  const anonymous = await cleanup(t, rawPublisher(`${server.url}/lobby`), (p) => p.close());
  anonymous.publish('lobby', 'from nobody');
  await until(lobby, 'message', () => got.length === 2, 'two messages');
  assert.deepEqual(got.map((m) => [m.seq, m.data, m.from]), [[1, 'hi from bob', 'bob'], [2, 'from nobody', undefined]]);

  // A cut: the reconnect asks getToken again and offers the new token; same user, resumed.
  proxy.cut();
  await until(lobby, 'joined', () => welcomes.length === 2, 'the second welcome');
  assert.equal(given.length, 2);
  assert.deepEqual(offered[1], ['mioket.v1', `mioket.token.${given[1]}`]);
  assert.equal(welcomes[1].user, 'alice');
  assert.equal(welcomes[1].recovered, true);
  await bobLobby.publish('after the cut');
  await until(lobby, 'message', () => got.length === 3, 'the third message');
  assert.deepEqual([got[2].seq, got[2].from], [3, 'bob']);

  // History and resume carry `from` too: a late reader gets all three with their senders.
  const late = mioket(t, `${server.url}/lobby`, { ...fast, WebSocket });
  const lateGot = [];
  late.room('lobby').on('message', (m) => lateGot.push([m.seq, m.from]));
  late.connect();
  await until(late.room('lobby'), 'message', () => lateGot.length === 3, 'the history');
  assert.deepEqual(lateGot, [[1, 'bob'], [2, undefined], [3, 'bob']]);
  assert.equal(late.user, null, 'no token: no user');
});

test('refreshed over the live connection before expiry: one connection through several lifetimes', { timeout: 2 * WAIT_MS }, async (t) => {
  const server = await cleanup(t, tokenServer(), (s) => s.stop());
  let calls = 0;
  // Each token lives 3-4 s (exp is a whole second); the test runs 8 s.
  const getToken = () => {
    calls++;
    return tokenFor('alice', { ttl: 4 });
  };
  const client = mioket(t, `${server.url}/lobby`, { ...fast, WebSocket, getToken });
  const lobby = client.room('lobby');
  const drops = [];
  client.on('disconnected', (d) => drops.push(d));
  client.connect();
  await lobby.presence();
  await new Promise((resolve) => setTimeout(resolve, 8000));
  assert.deepEqual(drops, [], 'never closed: the refreshes kept the token alive');
  assert.equal(client.state, 'connected');
  assert.ok(calls >= 3, `getToken for the connection and for two refreshes at least (${calls})`);
  assert.equal(await upgrades(server), 1, 'one upgrade');
  // Still allowed to publish with the latest token.
  assert.deepEqual(await lobby.publish('still here'), { seq: 1 });
});

test('4001 at expiry: a new token, a reconnect at once, and a resume without gap or duplicate', { timeout: 3 * WAIT_MS }, async (t) => {
  const server = await cleanup(t, tokenServer(['--history', '1000', '--anonymous-read', 'lobby', '--anonymous-write', 'lobby']), (s) => s.stop());
  let calls = 0;
  let client;
  // The first token lives 2 s; refreshes fail (the token service is down), so the server
  // closes with 4001 at expiry; the reconnect's token is a long one.
  const getToken = () => {
    if (client?.state === 'connected') throw new Error('the token service is down');
    calls++;
    return tokenFor('alice', { ttl: calls === 1 ? 2 : 3600 });
  };
  client = mioket(t, `${server.url}/lobby`, { ...fast, WebSocket, getToken });
  const lobby = client.room('lobby');
  const seqs = [];
  const gaps = [];
  const recovered = [];
  const drops = [];
  let reconnecting = 0;
  lobby.on('message', (m) => seqs.push(m.seq));
  lobby.on('gap', (g) => gaps.push(g));
  lobby.on('recovered', (r) => recovered.push(r.recovered));
  client.on('disconnected', (d) => drops.push(d));
  client.on('reconnecting', () => reconnecting++);
  client.connect();
  await lobby.presence();

  // A publisher writes all through the expiry: 1 message every 10 ms for about 4 s.
  const writer = await cleanup(t, rawPublisher(`${server.url}/lobby`), (p) => p.close());
  const N = 400;
  for (let i = 1; i <= N; i++) {
    writer.publish('lobby', `m${i}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await until(lobby, 'message', () => seqs.length >= N, `${N} messages`);
  assert.deepEqual(drops, [{ code: 4001, reason: 'token expired' }]);
  assert.equal(reconnecting, 0, 'reconnected at once, no backoff');
  assert.equal(calls, 2, 'a new token for the reconnect');
  assert.deepEqual(seqs, Array.from({ length: N }, (_, i) => i + 1), 'every seq once, in order');
  assert.deepEqual(gaps, []);
  assert.deepEqual(recovered, [true]);
  assert.equal(client.state, 'connected');
  assert.equal(await upgrades(server), 3, 'the reader twice, the writer once');
});

for (const [what, args, token, code, reason] of [
  ['a bad token', [], 'not-a-jwt', 4401, null],
  ['a token signed with another secret', [], signToken('another secret', { sub: 'mallory', exp: Math.floor(Date.now() / 1000) + 3600, rooms: { read: ['*'], write: ['*'] } }), 4401, null],
  ['no token where the room is not anonymous', ['--anonymous-read', 'public/*'], null, 4401, 'token required'],
  ['a token that may not read the room', [], 'eve', 4403, 'forbidden'],
]) {
  test(`${code} is terminal: ${what}`, { timeout: WAIT_MS }, async (t) => {
    const server = await cleanup(t, tokenServer(args), (s) => s.stop());
    let calls = 0;
    const getToken = () => {
      calls++;
      return token === 'eve' ? tokenFor('eve', { read: ['elsewhere'], write: ['elsewhere'] }) : token;
    };
    const client = mioket(t, `${server.url}/lobby`, { ...fast, WebSocket, getToken });
    client.room('lobby');
    client.connect();
    const closed = await until(client, 'closed', (info) => Boolean(info), 'closed');
    assert.equal(closed.code, code);
    if (reason !== null) assert.equal(closed.reason, reason);
    assert.equal(client.state, 'closed');
    const upgraded = await upgrades(server);
    await new Promise((resolve) => setTimeout(resolve, 1000)); // several backoff delays
    assert.equal(calls, 1, 'no new token asked for: no second attempt');
    assert.equal(await upgrades(server), upgraded, 'no reconnect');
  });
}

test('a publish into a room not writable is rejected with forbidden, and nothing is published', { timeout: WAIT_MS }, async (t) => {
  const server = await cleanup(t, tokenServer(), (s) => s.stop());
  const reader = mioket(t, `${server.url}/lobby`, { ...fast, WebSocket, getToken: () => tokenFor('rita', { read: ['lobby'], write: [] }) });
  const lobby = reader.room('lobby');
  const got = [];
  lobby.on('message', (m) => got.push(m));
  const joined = until(lobby, 'joined', (j) => Boolean(j), 'the welcome');
  reader.connect();
  assert.equal((await joined).readOnly, true, 'the welcome says read_only');
  assert.equal(lobby.readOnly, true);
  await assert.rejects(lobby.publish('not allowed'), (e) => e instanceof PublishError && e.reason === 'forbidden');
  assert.equal(reader.state, 'connected', 'the connection stays');

  // A join of a room it may not read is refused too; the connection still stays.
  const secret = reader.room('secret');
  const refusal = await until(secret, 'error', (e) => Boolean(e), 'the refused join');
  assert.equal(refusal.reason, 'forbidden');
  assert.equal(reader.state, 'connected');

  // The writer's message is the room's first: the refused publish took no seq.
  const writer = mioket(t, `${server.url}/lobby`, { ...fast, WebSocket, getToken: () => tokenFor('walt', { read: ['lobby'], write: ['lobby'] }) });
  writer.connect();
  assert.deepEqual(await writer.room('lobby').publish('allowed'), { seq: 1 });
  await until(lobby, 'message', () => got.length === 1, 'the writer\'s message');
  assert.deepEqual([got[0].seq, got[0].data, got[0].from], [1, 'allowed', 'walt']);
});
