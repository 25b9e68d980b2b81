// The browser's WebSocket API, as Node's own global WebSocket has it (undici, behind
// --experimental-websocket in Node 20): no `ws` package, no terminate(), Blob by default.
// A child Node process uses the client without the WebSocket option against the real
// server, through the test's proxy: text and binary round trips with acks, then a stalled
// link noticed by the heartbeat, healed, and a publish acked on the new connection.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { WAIT_MS, startProxy, startServer } from '../support/helpers.mjs';

const indexUrl = new URL('../index.js', import.meta.url).href;

const child = `
import { Mioket } from ${JSON.stringify(indexUrl)};
const say = (o) => console.log(JSON.stringify(o));
const rl = (await import('node:readline')).createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
const client = new Mioket(process.env.URL, { heartbeat: 0.3, heartbeatTimeout: 0.3, minDelay: 0.05, maxDelay: 0.1 });
const room = client.room('g');
const got = [];
room.on('message', (m) => got.push(typeof m.data === 'string' ? m.data : [...m.data]));
client.on('disconnected', (d) => say({ disconnected: d.reason }));
client.connect();
const a = await room.publish('text');
const b = await room.publish(new Uint8Array([7, 8, 9]));
while (got.length < 2) await new Promise((r) => room.once('message', r));
say({ acks: [a.seq, b.seq], got });
await lines.next(); // the parent stalled the proxy
await new Promise((r) => client.once('connected', r));
const c = await room.publish('after');
while (got.length < 3) await new Promise((r) => room.once('message', r));
say({ after: c.seq, got, state: client.state });
client.close();
process.exit(0);
`;

test('works on the global (browser-like) WebSocket without the ws package', { timeout: 2 * WAIT_MS }, async () => {
  const server = await startServer(['--ping-interval', '0', '--welcome', '']);
  const proxy = await startProxy(server.port);
  const proc = spawn(process.execPath, ['--experimental-websocket', '--no-warnings', '--input-type=module', '-e', child], {
    env: { ...process.env, URL: `${proxy.url}/` },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const killer = setTimeout(() => proc.kill('SIGKILL'), 2 * WAIT_MS - 1000);
  const out = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await out.next()).value);
  try {
    assert.deepEqual(await next(), { acks: [1, 2], got: ['text', [7, 8, 9]] });
    proxy.stall();
    proc.stdin.write('stalled\n');
    assert.deepEqual(await next(), { disconnected: 'heartbeat timeout' });
    assert.deepEqual(await next(), { after: 3, got: ['text', [7, 8, 9], 'after'], state: 'connected' });
  } finally {
    clearTimeout(killer);
    proc.kill();
    await proxy.close();
    await server.stop();
  }
});
