// Shared helpers for the browser tests: start and stop the real mioket binary,
// launch headless Chromium, talk to the server from Node with the `ws` package,
// and wait for page conditions with a bound and a useful message on timeout.
// Nothing here contacts any address but 127.0.0.1.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

// HS256 tokens and secret files: one copy, in clients/js/support/tokens.mjs.
export { secretFile, signToken } from '../../clients/js/support/tokens.mjs';

export const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../..');
export const mioketBin = path.resolve(repoRoot, process.env.MIOKET_BIN || 'target/release/mioket');
export const chromiumBin = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const artifactsDir = path.resolve(here, process.env.ARTIFACTS_DIR || 'artifacts');
export const clientFile = (name) => path.join(repoRoot, 'clients', name);

/** How long any single wait may take; generous for a slow shared 2-core machine. */
export const WAIT_MS = Number(process.env.BROWSER_TEST_WAIT_MS || 20_000);

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * A self-signed P-256 certificate for localhost and 127.0.0.1, valid for a day, made with
 * openssl in a fresh temporary folder: `{ cert, key, remove() }` (PEM file paths).
 */
export function makeCertificate() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mioket-tls-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-days', '1',
      '-keyout', key, '-out', cert],
    { stdio: ['ignore', 'ignore', 'pipe'], timeout: WAIT_MS },
  );
  return { cert, key, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts mioket on 127.0.0.1 (port 0 unless given) and resolves once it has printed
 * its `listening on ws://HOST:PORT` line (`wss://` with --tls-cert/--tls-key: then
 * `http` and `ws` below are https:// and wss:// URLs).
 */
export async function startServer(args = [], { port = 0 } = {}) {
  if (!existsSync(mioketBin)) {
    throw new Error(`no server binary at ${mioketBin}: run cargo build --release or set MIOKET_BIN`);
  }
  const child = spawn(mioketBin, ['--host', '127.0.0.1', '--port', String(port), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  exited.then(() => running.delete(child));

  const listening = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => fail(`no listening line within ${WAIT_MS} ms`), WAIT_MS);
    function fail(why) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`mioket ${args.join(' ')}: ${why}\nstdout: ${out}\nstderr: ${stderr}`));
    }
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = /listening on (wss?):\/\/127\.0\.0\.1:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ tls: m[1] === 'wss', port: Number(m[2]) });
      }
    });
    child.once('error', (e) => fail(e.message));
    exited.then(({ code, signal }) => fail(`exited early (code ${code}, signal ${signal})`));
  });
  child.stdout.resume();

  const s = listening.tls ? 's' : '';
  return {
    port: listening.port,
    tls: listening.tls,
    http: `http${s}://127.0.0.1:${listening.port}`,
    ws: `ws${s}://127.0.0.1:${listening.port}/`,
    stderr: () => stderr,
    /** SIGTERM, then SIGKILL if it has not exited within the wait bound. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), WAIT_MS / 2);
      await exited;
      clearTimeout(timer);
    },
  };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: chromiumBin,
    headless: true,
    timeout: WAIT_MS * 2,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
      // Belt and braces: no host name resolves, so nothing but 127.0.0.1 can be reached.
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    ],
  });
}

/**
 * A new page in its own context that records page errors and dialogs (a dialog
 * would mean injected script ran) and dismisses any dialog at once.
 */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.errors = [];
  page.dialogs = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('dialog', (d) => {
    page.dialogs.push(`${d.type()}: ${d.message()}`);
    d.dismiss().catch(() => {});
  });
  return page;
}

/**
 * The rows of a page's message table, as plain data: `from` is the sender the page shows
 * (a publisher with a token; else null), `text` the message without it.
 */
export function rowsOf(page) {
  return page.$$eval('#rows tr', (trs) =>
    trs.map((tr) => {
      const msg = tr.querySelector('.msg');
      const from = msg.querySelector('.from');
      return {
        kind: tr.dataset.kind,
        time: tr.cells[0].textContent,
        from: from ? from.textContent : null,
        text: from ? msg.textContent.slice(from.textContent.length) : msg.textContent,
        cells: Array.from(tr.cells, (c) => c.textContent),
      };
    }),
  );
}

export function stateOf(page) {
  return page.$eval('#state', (el) => ({ state: el.dataset.state, text: el.textContent }));
}

/** Waits for fn(arg) to be truthy in the page; on timeout says what and shows the page's state. */
export async function waitFor(page, what, fn, arg) {
  try {
    return await page.waitForFunction(fn, arg, { timeout: WAIT_MS, polling: 50 });
  } catch (e) {
    let seen = '';
    try {
      seen = `\nstate: ${JSON.stringify(await stateOf(page))}\nrows: ${JSON.stringify(await rowsOf(page), null, 1)}`;
    } catch {
      // the page itself is gone; the original error says enough
    }
    throw new Error(`timed out waiting for ${what}: ${e.message.split('\n')[0]}${seen}`);
  }
}

export function waitForState(page, state, pattern = /./) {
  return waitFor(
    page,
    `state ${state} matching ${pattern}`,
    ([state, source, flags]) => {
      const el = document.getElementById('state');
      return el.dataset.state === state && new RegExp(source, flags).test(el.textContent);
    },
    [state, pattern.source, pattern.flags],
  );
}

/** Waits for a row of `kind` with the message `text` (and, when given, the sender `from`; null: none). */
export function waitForRow(page, kind, text, from) {
  return waitFor(
    page,
    `a ${kind} row ${JSON.stringify(text)}${from === undefined ? '' : ` from ${JSON.stringify(from)}`}`,
    ([kind, text, anyFrom, from]) =>
      Array.from(document.querySelectorAll('#rows tr')).some((tr) => {
        const msg = tr.querySelector('.msg');
        const sender = msg.querySelector('.from');
        const shown = sender ? msg.textContent.slice(sender.textContent.length) : msg.textContent;
        return tr.dataset.kind === kind && shown === text && (anyFrom || (sender ? sender.textContent : null) === from);
      }),
    [kind, text, from === undefined, from ?? null],
  );
}

/** Opens the chat page and waits until it is connected and has shown the replay its welcome announced. */
export async function openChat(page, url) {
  await page.goto(url, { timeout: WAIT_MS });
  await waitForState(page, 'open');
  await waitFor(page, 'the end of the replay', () => document.getElementById('log').dataset.replay === 'off');
}

/** Waits until the page's #online count says n. */
export function waitForOnline(page, n) {
  return waitFor(page, `${n} online`, (n) => document.getElementById('online').dataset.online === String(n), n);
}

/**
 * A Node client (the `ws` package): an implementation independent of the browser's.
 * `options` go to the `ws` constructor (e.g. `{ ca }` to trust a test certificate for wss://).
 */
export async function nodeClient(url, options = {}) {
  const ws = new WebSocket(url, options);
  const messages = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    messages.push(isBinary ? Buffer.from(data) : data.toString('utf8'));
    for (const w of waiters.splice(0)) w();
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`node client: no open within ${WAIT_MS} ms`)), WAIT_MS);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve();
    });
    ws.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
  return {
    messages,
    send: (data) => new Promise((resolve, reject) => ws.send(data, (e) => (e ? reject(e) : resolve()))),
    /** Resolves once at least n messages have arrived. */
    async received(n) {
      const deadline = Date.now() + WAIT_MS;
      while (messages.length < n) {
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`node client: ${messages.length} of ${n} messages within ${WAIT_MS} ms`);
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, left);
          waiters.push(() => {
            clearTimeout(timer);
            resolve();
          });
        });
      }
      return messages;
    },
    close: () =>
      new Promise((resolve) => {
        if (ws.readyState === WebSocket.CLOSED) return resolve();
        const timer = setTimeout(() => {
          ws.terminate();
          resolve();
        }, WAIT_MS / 4);
        ws.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        ws.close(1000);
      }),
  };
}

/**
 * A load for the console: `{ room: clients }` Node clients on the server at `wsBase`
 * (ending with `/`), each sending a message every `everyMs`. `stop()` ends it.
 */
export async function startLoad(wsBase, rooms, everyMs = 50) {
  const clients = [];
  for (const [room, count] of Object.entries(rooms)) {
    for (let i = 0; i < count; i++) clients.push(await nodeClient(`${wsBase}${room}`));
  }
  let n = 0;
  const timer = setInterval(() => {
    for (const c of clients) c.send(`load ${n++}`).catch(() => {});
  }, everyMs);
  return {
    clients,
    async stop() {
      clearInterval(timer);
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}

/** The server's default welcome text, and the time one test may take. */
export const WELCOME = "Welcome! You're now in the broadcast room.";
export const TEST_MS = 120_000;

/**
 * One browser for a test file, and what its tests open, closed at the end of the file
 * even when a test fails half way: `later(fn)` runs fn then; `page(options)`,
 * `server(args, options)` and `client(url)` are newPage, startServer and nodeClient
 * whose ends are registered with it. Call once, at the top of a test file.
 */
export function suite({ before, after }) {
  let browser;
  const cleanups = [];
  const later = (fn) => cleanups.push(fn);
  before(async () => {
    browser = await launchBrowser();
  });
  after(async () => {
    for (const fn of cleanups.reverse()) await fn().catch(() => {});
    await browser?.close();
  });
  return {
    later,
    async page(options) {
      const p = await newPage(browser, options);
      later(() => p.context().close());
      return p;
    },
    async server(args, options) {
      const s = await startServer(args, options);
      later(() => s.stop());
      return s;
    },
    async client(url) {
      const c = await nodeClient(url);
      later(() => c.close());
      return c;
    },
  };
}

/** Types into the message box and sends with Enter, as a person would. */
export async function say(p, text) {
  await p.fill('#text', text);
  await p.press('#text', 'Enter');
}

