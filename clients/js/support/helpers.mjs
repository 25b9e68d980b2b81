// Test helpers: the real mioket binary on 127.0.0.1 (port 0), a TCP proxy that can cut
// its connections, refuse new ones, or silently stop forwarding while keeping sockets
// open, and bounded waits on events. Nothing here contacts any address but 127.0.0.1.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

// HS256 tokens and secret files: one copy, in clients/js/support/tokens.mjs.
export { secretFile, signToken } from './tokens.mjs';

export { WebSocket };
const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../../..'); // support/ -> clients/js -> clients -> repo
export const mioketBin = path.resolve(repoRoot, process.env.MIOKET_BIN || 'target/release/mioket');

/** Upper bound of any single wait in a test. */
export const WAIT_MS = Number(process.env.CLIENT_TEST_WAIT_MS || 15_000);

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * Starts mioket on 127.0.0.1 with a free port; resolves with {port, url, http, stop()}
 * once it printed `listening on ws://127.0.0.1:PORT`. Killed at the latest when the test
 * process exits.
 */
export async function startServer(args = []) {
  if (!existsSync(mioketBin)) throw new Error(`no server binary at ${mioketBin}: cargo build --release or set MIOKET_BIN`);
  const child = spawn(mioketBin, ['--host', '127.0.0.1', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  exited.then(() => running.delete(child));
  let out = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mioket ${args.join(' ')}: no listening line within ${WAIT_MS} ms: ${out}`));
    }, WAIT_MS);
    const look = (chunk) => {
      out += chunk;
      const m = /listening on ws:\/\/127\.0\.0\.1:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout.setEncoding('utf8').on('data', look);
    child.stderr.setEncoding('utf8').on('data', look);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`mioket exited (${code}) before listening: ${out}`));
    });
  });
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    http: `http://127.0.0.1:${port}`,
    async stop() {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/**
 * A TCP proxy on 127.0.0.1 (port 0) to `targetPort`. cut() destroys every connection
 * (both sides see it end), stall() stops forwarding on every open connection while
 * keeping its sockets open (a dead link), refuse(true) closes new connections at once.
 */
export async function startProxy(targetPort) {
  const pairs = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream, stalled: false };
    pairs.add(pair);
    const forward = (from, to) => {
      from.on('data', (chunk) => {
        if (!pair.stalled) to.write(chunk);
      });
    };
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on('error', end);
      s.on('close', () => {
        if (!pair.stalled) end();
      });
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    get connections() {
      return pairs.size;
    },
    cut() {
      for (const p of [...pairs]) {
        pairs.delete(p);
        p.client.destroy();
        p.upstream.destroy();
      }
    },
    stall() {
      for (const p of pairs) p.stalled = true;
    },
    refuse(on) {
      refusing = on;
    },
    async close() {
      this.cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Resolves when `predicate()` is true, checked on every `event` of `emitter` (and now). */
export function until(emitter, event, predicate = () => true, what = event) {
  return new Promise((resolve, reject) => {
    const check = (...args) => {
      let ok = false;
      try {
        ok = predicate(...args);
      } catch (e) {
        done();
        reject(e);
        return;
      }
      if (ok) {
        done();
        resolve(args[0]);
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`));
    }, WAIT_MS);
    const off = emitter.on(event, check);
    function done() {
      clearTimeout(timer);
      if (typeof off === 'function') off();
      else emitter.off(event, check);
    }
    if (predicate.length === 0) check();
  });
}

/** Resolves when the client's state is `state`. */
export function untilState(client, state) {
  if (client.state === state) return Promise.resolve();
  return until(client, 'state', (s) => s === state, `state ${state} (now ${client.state})`);
}

/** Publishes `n` messages over a raw v1 connection straight to the server, all at once. */
export async function rawPublisher(url) {
  const ws = new WebSocket(url, ['mioket.v1']);
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return {
    ws,
    publish(room, data) {
      ws.send(JSON.stringify({ op: 'publish', room, data }));
    },
    close() {
      ws.terminate();
    },
  };
}

/** A free port on 127.0.0.1 that nothing listens on (taken, then released). */
export async function closedPort() {
  const s = net.createServer();
  await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address();
  await new Promise((resolve) => s.close(resolve));
  return port;
}

/** The server's count of accepted WebSocket upgrades (GET /metrics). */
export async function upgrades(server) {
  const metrics = await (await fetch(`${server.http}/metrics`)).text();
  return Number(/^mioket_upgrades_total (\d+)$/m.exec(metrics)[1]);
}
