// The chat page over https:// and wss:// in headless Chromium: mioket with --tls-cert and
// --tls-key (a self-signed certificate made with openssl for this run), on 127.0.0.1 with
// --port 0, stopped at the end. The pages' contexts ignore certificate errors; a Node
// client trusts the certificate as its CA and so checks it for real.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import {
  TEST_MS,
  WELCOME,
  makeCertificate,
  nodeClient,
  openChat,
  rowsOf,
  say,
  startServer,
  stateOf,
  suite,
  waitForOnline,
  waitForRow,
} from './harness.mjs';

const suiteTools = suite({ before, after });
const { later } = suiteTools;

async function page(options) {
  const p = await suiteTools.page(options);
  // Every WebSocket the page opens, as Chromium reports it (independent of the page's own view).
  p.sockets = [];
  p.on('websocket', (ws) => p.sockets.push(ws.url()));
  return p;
}

test('the chat page over https://: two pages chat through wss://', { timeout: TEST_MS }, async () => {
  const certificate = makeCertificate();
  later(async () => certificate.remove());
  const s = await startServer(['--tls-cert', certificate.cert, '--tls-key', certificate.key]);
  later(() => s.stop());
  assert.equal(s.tls, true, 'the start line says wss://');

  // Without the exception the browser refuses the self-signed certificate: it is TLS for real.
  const strict = await page();
  await assert.rejects(strict.goto(`${s.http}/?room=tls`), /ERR_CERT_AUTHORITY_INVALID/);

  const a = await page({ ignoreHTTPSErrors: true });
  const b = await page({ ignoreHTTPSErrors: true });
  const url = `${s.http}/?room=tls`;
  assert.match(url, /^https:\/\/127\.0\.0\.1:\d+\//);
  await openChat(a, url);
  await openChat(b, url);
  const wss = `wss://127.0.0.1:${s.port}/tls`;
  for (const p of [a, b]) {
    assert.equal(await p.evaluate(() => location.protocol), 'https:');
    assert.equal((await stateOf(p)).text, `open — ${wss}`);
    assert.deepEqual(p.sockets, [wss]);
  }
  await waitForOnline(a, 2);

  await say(a, 'hello over TLS');
  await waitForRow(b, 'live', 'hello over TLS');
  await waitForRow(a, 'you', 'hello over TLS');
  await say(b, 'and back');
  await waitForRow(a, 'live', 'and back');
  await waitForRow(b, 'you', 'and back');

  // A Node client that checks the certificate (as its CA) joins the room and is heard.
  const c = await nodeClient(wss, { ca: readFileSync(certificate.cert) });
  later(() => c.close());
  await c.received(3); // its welcome and the two messages from the history
  await c.send('from node over wss');
  await waitForRow(a, 'live', 'from node over wss');
  await waitForRow(b, 'live', 'from node over wss');

  for (const p of [a, b]) {
    const rows = (await rowsOf(p)).map((r) => [r.kind, r.text]);
    assert.deepEqual(rows, [
      ['info', 'connected'],
      ['welcome', WELCOME],
      [p === a ? 'you' : 'live', 'hello over TLS'],
      [p === a ? 'live' : 'you', 'and back'],
      ['live', 'from node over wss'],
    ]);
    assert.deepEqual(p.errors, [], 'page errors');
    assert.deepEqual(p.sockets, [wss], 'one socket, never reopened');
  }
});
