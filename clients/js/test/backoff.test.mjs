// Backoff with full jitter, in fake time (injected setTimeout and random): delays within
// [minDelay, min(maxDelay, minDelay * 2^(attempt+1))], growing to the 20 s cap, reset after
// a stable connection; no attempts while the browser says it is offline, one at once when
// it comes back. The connections are real: a proxy to the real server that refuses, then
// accepts, then cuts.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Mioket } from '../index.js';
import { WAIT_MS, WebSocket, startProxy, startServer, until, untilState } from '../support/helpers.mjs';

/** Timers that run only when told: fire(pred) runs the first pending timer pred accepts. */
function fakeTimers() {
  const timers = new Map();
  let next = 0;
  return {
    setTimeout: (fn, ms) => {
      timers.set(++next, { fn, ms });
      return next;
    },
    clearTimeout: (id) => timers.delete(id),
    fire(pred) {
      for (const [id, t] of timers) {
        if (pred(t)) {
          timers.delete(id);
          t.fn();
          return t;
        }
      }
      throw new Error(`no such timer among ${[...timers.values()].map((t) => t.ms)}`);
    },
    get pending() {
      return [...timers.values()].map((t) => t.ms);
    },
  };
}

let server;
before(async () => {
  server = await startServer(['--ping-interval', '0', '--welcome', '']);
});
after(async () => {
  await server?.stop();
});

test('the delay formula: full jitter between 0.5 s and a cap doubling up to 20 s', () => {
  let r = 0;
  const client = new Mioket('ws://127.0.0.1:9/', { WebSocket, random: () => r });
  const caps = [1, 2, 4, 8, 16, 20, 20, 20];
  caps.forEach((cap, attempt) => {
    r = 0;
    assert.equal(client.backoffDelay(attempt), 0.5);
    r = 0.999999;
    assert.ok(Math.abs(client.backoffDelay(attempt) - cap) < 1e-4, `attempt ${attempt}: cap ${cap}`);
    r = 0.5;
    assert.equal(client.backoffDelay(attempt), 0.5 + 0.5 * (cap - 0.5));
  });
});

test('failed attempts back off within bounds, a stable connection resets the backoff', { timeout: 2 * WAIT_MS }, async () => {
  const proxy = await startProxy(server.port);
  proxy.refuse(true);
  const timers = fakeTimers();
  const randoms = [0.9, 0.1, 0.99, 0.5, 0.0, 0.7, 0.3, 0.999];
  let ri = 0;
  const client = new Mioket(`${proxy.url}/`, { WebSocket, ...timers, random: () => randoms[ri++ % randoms.length] });
  const room = client.room('b');
  const delays = [];
  client.on('reconnecting', ({ delay }) => delays.push(delay));
  client.connect();
  for (let i = 0; i < 8; i++) {
    await until(client, 'reconnecting', () => delays.length > i, `failure ${i + 1}`);
    if (i === 7) break;
    const ms = delays[i] * 1000;
    timers.fire((t) => t.ms === ms); // the attempt, at once in fake time
  }
  const caps = [1, 2, 4, 8, 16, 20, 20, 20];
  delays.forEach((d, i) => {
    assert.ok(d >= 0.5 && d <= caps[i], `attempt ${i}: ${d} s within [0.5, ${caps[i]}]`);
    assert.ok(Math.abs(d - (0.5 + randoms[i] * (caps[i] - 0.5))) < 1e-9, `attempt ${i}: full jitter`);
  });

  // Let the next attempt through: connected, and stable once `stableAfter` (10 s) passes.
  proxy.refuse(false);
  timers.fire((t) => t.ms === delays[7] * 1000);
  await untilState(client, 'connected');
  await room.presence();
  timers.fire((t) => t.ms === 10_000);
  proxy.cut();
  await until(client, 'reconnecting', () => delays.length === 9, 'the reconnect after a stable connection');
  assert.ok(Math.abs(delays[8] - (0.5 + randoms[0] * 0.5)) < 1e-9, `back to the first step: ${delays[8]}`);

  // An unstable connection (cut before 10 s) does not reset it.
  timers.fire((t) => t.ms === delays[8] * 1000);
  await untilState(client, 'connected');
  proxy.cut();
  await until(client, 'reconnecting', () => delays.length === 10, 'the reconnect after a short connection');
  assert.ok(Math.abs(delays[9] - (0.5 + randoms[1] * 1.5)) < 1e-9, `second step: ${delays[9]}`);
  client.close();
  await proxy.close();
});

test('no attempts while offline, one at once when back online', { timeout: 2 * WAIT_MS }, async () => {
  const proxy = await startProxy(server.port);
  const timers = fakeTimers();
  const window = new EventTarget();
  window.navigator = { onLine: true };
  const client = new Mioket(`${proxy.url}/`, { WebSocket, ...timers, window, random: () => 0.5 });
  const room = client.room('net');
  let reconnecting = 0;
  client.on('reconnecting', () => reconnecting++);
  client.connect();
  await room.presence();

  window.navigator.onLine = false;
  window.dispatchEvent(new Event('offline'));
  proxy.cut();
  await untilState(client, 'disconnected');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(reconnecting, 0, 'no reconnect scheduled while offline');

  window.navigator.onLine = true;
  window.dispatchEvent(new Event('online'));
  await untilState(client, 'connected');
  assert.equal(reconnecting, 0, 'connected at once, no backoff timer');
  client.close();
  await proxy.close();
});
