// Tokens (issue 21's contract) against a small fake mioket.v1 server written here with
// the `ws` package, for what the real server does not do on demand (tokens-server.test.mjs
// runs the contract against the real one): getToken for every
// connection (subprotocol `mioket.token.TOKEN` or `Authorization: Bearer`), the refresh op
// before `expires_in` runs out, 4001 answered with a new token and an immediate reconnect
// that resumes, 4401/4403/4410 and an Unauthorized getToken terminal, `from` and `user`
// passed on, a publish rejected by the server's error, a refresh with the token in use
// not sent, read_only passed on.

import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { Mioket, PublishError, Unauthorized } from '../index.js';
import { WAIT_MS, WebSocket, until, untilState } from '../support/helpers.mjs';

/**
 * A fake server on 127.0.0.1: `events` emits 'connection' ({ws, token, url}) and 'op'
 * ({ws, op}); every connection gets a welcome for its path's room from `welcome(conn)`.
 */
async function fakeServer(welcome = () => ({})) {
  const events = new EventEmitter();
  const conns = [];
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    handleProtocols: (protocols) => (protocols.has('mioket.v1') ? 'mioket.v1' : false),
  });
  await new Promise((resolve) => wss.once('listening', resolve));
  wss.on('connection', (ws, req) => {
    const offered = (req.headers['sec-websocket-protocol'] || '').split(',').map((s) => s.trim());
    const fromProtocol = offered.find((p) => p.startsWith('mioket.token.'))?.slice('mioket.token.'.length);
    const fromHeader = /^Bearer (.+)$/.exec(req.headers.authorization || '')?.[1];
    const url = new URL(req.url, 'ws://x');
    const conn = { ws, token: fromProtocol ?? fromHeader ?? null, header: Boolean(fromHeader), url, room: decodeURIComponent(url.pathname.slice(1)) };
    conns.push(conn);
    ws.on('message', (data) => {
      const op = JSON.parse(data);
      // presence() asks the server (issue 22): answered as the real server does
      if (op.op === 'presence') ws.send(JSON.stringify({ type: 'presence', room: op.room, id: op.id, online: 1, users: [] }));
      events.emit('op', { ws, conn, op });
    });
    ws.send(JSON.stringify({ type: 'welcome', room: conn.room, epoch: 'e0e0e0e0e0e0e0e0', seq: 0, online: 1, text: null, ...welcome(conn) }));
    events.emit('connection', conn);
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}`,
    events,
    conns,
    close: () =>
      new Promise((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(resolve);
      }),
  };
}

function tokens() {
  let n = 0;
  const calls = [];
  const getToken = async () => {
    n++;
    calls.push(n);
    return `tok${n}`;
  };
  return { getToken, calls };
}

test('a token for every connection; refreshed over the live connection before it expires', { timeout: WAIT_MS }, async () => {
  const fake = await fakeServer(() => ({ user: 'alice', expires_in: 1 }));
  const { getToken, calls } = tokens();
  const client = new Mioket(`${fake.url}/lobby`, { WebSocket, getToken, heartbeat: 60 });
  const room = client.room('lobby');
  const got = [];
  room.on('message', (m) => got.push(m));
  const joined = until(room, 'joined', (j) => Boolean(j), 'welcome');
  const refreshes = [];
  const twoRefreshes = until(fake.events, 'op', ({ ws, op }) => {
    if (op.op !== 'refresh') return false;
    refreshes.push({ token: op.token, at: performance.now() });
    ws.send(JSON.stringify({ type: 'refreshed', id: op.id, expires_in: 1 }));
    return refreshes.length === 2;
  }, 'two refresh ops');
  const start = performance.now();
  client.connect();
  const welcome = await joined;
  assert.equal(welcome.user, 'alice');
  assert.equal(client.user, 'alice');
  assert.equal(fake.conns[0].token, 'tok1', 'the first token offered as mioket.token.TOKEN');
  fake.conns[0].ws.send(JSON.stringify({ type: 'message', room: 'lobby', seq: 1, data: 'hi', from: 'bob' }));
  await until(room, 'message', () => got.length === 1, 'a message');
  assert.equal(got[0].from, 'bob');

  await twoRefreshes;
  assert.deepEqual(refreshes.map((r) => r.token), ['tok2', 'tok3']);
  assert.deepEqual(calls, [1, 2, 3]);
  // Scheduled a third of the lifetime (1 s) before it runs out: not earlier; the upper
  // bound leaves a loaded machine 400 ms of slack past the expiry's 1 s from the start.
  assert.ok(refreshes[0].at - start >= 600 && refreshes[0].at - start < 1400, `first refresh after ${refreshes[0].at - start} ms`);
  assert.equal(fake.conns.length, 1, 'no reconnect for a refresh');
  client.close();
  await fake.close();
});

test('4001: a new token and a reconnect at once, resuming; Authorization header on request', { timeout: WAIT_MS }, async () => {
  const fake = await fakeServer(() => ({ expires_in: 3600 }));
  const { getToken } = tokens();
  const client = new Mioket(`${fake.url}/lobby`, { WebSocket, getToken, tokenIn: 'header', heartbeat: 60, minDelay: 0.01, maxDelay: 0.02 });
  const room = client.room('lobby');
  const got = [];
  room.on('message', (m) => got.push(m.seq));
  let reconnecting = 0;
  client.on('reconnecting', () => reconnecting++);
  client.connect();
  await room.presence();
  fake.conns[0].ws.send(JSON.stringify({ type: 'message', room: 'lobby', seq: 1, data: 'x' }));
  await until(room, 'message', () => got.length === 1, 'a message');

  const second = until(fake.events, 'connection', (c) => Boolean(c), 'the reconnect');
  fake.conns[0].ws.close(4001, 'token expired');
  const conn = await second;
  assert.equal(conn.token, 'tok2');
  assert.ok(conn.header, 'sent as Authorization: Bearer');
  assert.equal(conn.url.searchParams.get('since'), '1');
  assert.equal(conn.url.searchParams.get('epoch'), 'e0e0e0e0e0e0e0e0');
  await untilState(client, 'connected');
  assert.equal(reconnecting, 0, 'no backoff wait');

  // A second 4001 before the connection was stable waits the backoff: no tight loop.
  const third = until(fake.events, 'connection', (c) => Boolean(c), 'the second reconnect');
  conn.ws.close(4001, 'token expired');
  assert.equal((await third).token, 'tok3');
  assert.equal(reconnecting, 1, 'through the backoff');
  client.close();
  await fake.close();
});

for (const code of [4401, 4403, 4410]) {
  test(`${code} is terminal: closed with the reason, no new token, no reconnect`, { timeout: WAIT_MS }, async () => {
    const fake = await fakeServer();
    const { getToken, calls } = tokens();
    const client = new Mioket(`${fake.url}/`, { WebSocket, getToken, minDelay: 0.01, maxDelay: 0.02 });
    const room = client.room('');
    client.connect();
    await room.presence();
    const pending = room.publish('never acked');
    fake.conns[0].ws.close(code, 'go away');
    const closed = await until(client, 'closed', (info) => Boolean(info), 'closed');
    assert.deepEqual(closed, { code, reason: 'go away' });
    assert.equal(client.state, 'closed');
    assert.deepEqual(client.closeReason, { code, reason: 'go away' });
    await assert.rejects(pending, PublishError);
    assert.deepEqual(calls, [1]);
    assert.equal(fake.conns.length, 1);
    await fake.close();
  });
}

test('a getToken that throws Unauthorized stops for good; other errors are retried', { timeout: WAIT_MS }, async () => {
  const fake = await fakeServer();
  let n = 0;
  const getToken = async () => {
    n++;
    if (n === 1) throw new Error('token service down');
    throw new Unauthorized('logged out');
  };
  const client = new Mioket(`${fake.url}/`, { WebSocket, getToken, minDelay: 0.01, maxDelay: 0.02 });
  client.connect();
  const closed = await until(client, 'closed', (info) => Boolean(info), 'closed');
  assert.equal(n, 2, 'retried after a plain error, stopped at Unauthorized');
  assert.equal(closed.reason, 'logged out');
  assert.equal(fake.conns.length, 0);
  await fake.close();
});

test('a publish the server refuses rejects with its reason', { timeout: WAIT_MS }, async () => {
  const fake = await fakeServer();
  fake.events.on('op', ({ ws, op }) => {
    if (op.op === 'publish') ws.send(JSON.stringify({ type: 'error', id: op.id, reason: 'forbidden' }));
  });
  const client = new Mioket(`${fake.url}/`, { WebSocket });
  const room = client.room('');
  client.connect();
  await assert.rejects(room.publish('x'), (e) => e instanceof PublishError && e.reason === 'forbidden');
  client.close();
  await fake.close();
});

test('a refresh that gets the token in use sends nothing; read_only is passed on', { timeout: WAIT_MS }, async () => {
  // An application with one fixed token (the chat page with #token=): refreshing with the
  // same token would refresh nothing, and with a shrinking expires_in would come ever faster.
  const fake = await fakeServer(() => ({ user: 'rita', expires_in: 1, read_only: true }));
  let calls = 0;
  const getToken = () => {
    calls++;
    return 'the-one-token';
  };
  const ops = [];
  fake.events.on('op', ({ op }) => ops.push(op.op));
  const client = new Mioket(`${fake.url}/lobby`, { WebSocket, getToken, heartbeat: 60 });
  const room = client.room('lobby');
  const joined = until(room, 'joined', (j) => Boolean(j), 'welcome');
  client.connect();
  const welcome = await joined;
  assert.equal(welcome.readOnly, true);
  assert.equal(room.readOnly, true);
  await new Promise((resolve) => setTimeout(resolve, 1500)); // past the refresh at 2/3 s
  assert.ok(calls >= 2, `getToken was asked for the refresh (${calls})`);
  assert.deepEqual(ops, [], 'no refresh op with the same token');
  client.close();
  await fake.close();
});
