// The browser pages (clients/index.html and clients/echo.html) in headless Chromium,
// against the real mioket binary. Every test starts its own server on 127.0.0.1 with
// --port 0 and stops it at the end; every wait is bounded (see harness.mjs).

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import {
  TEST_MS,
  WELCOME,
  artifactsDir,
  clientFile,
  openChat,
  rowsOf,
  say,
  stateOf,
  suite,
  waitFor,
  waitForRow,
  waitForOnline,
  waitForState,
} from './harness.mjs';

const { page, server, client } = suite({ before, after });

function assertNothingRan(p) {
  assert.deepEqual(p.errors, [], 'page errors');
  assert.deepEqual(p.dialogs, [], 'dialogs (injected script ran?)');
}

describe('chat page', { timeout: TEST_MS * 8 }, () => {
  test('two pages: what A sends shows in B and in A, marked as A\'s own', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const a = await page();
    const b = await page();
    await openChat(a, s.http + '/');
    await openChat(b, s.http + '/');
    assert.match((await stateOf(a)).text, new RegExp(`^open — ${s.ws}$`));

    await say(a, 'hello from A');
    await waitForRow(b, 'live', 'hello from A');
    await waitForRow(a, 'you', 'hello from A');
    assert.equal(await a.inputValue('#text'), '', 'the box is cleared after sending');

    await b.fill('#text', 'hi from B');
    await b.click('#send-button');
    await waitForRow(a, 'live', 'hi from B');
    await waitForRow(b, 'you', 'hi from B');

    for (const p of [a, b]) {
      const rows = await rowsOf(p);
      assert.deepEqual(
        rows.map((r) => r.kind),
        ['info', 'welcome', p === a ? 'you' : 'live', p === a ? 'live' : 'you'],
      );
      assert.equal(rows[1].text, WELCOME);
      for (const r of rows) assert.match(r.time, /^\d\d:\d\d:\d\d$/);
      assertNothingRan(p);
    }
  });

  test('Chromium negotiates permessage-deflate and the chat works compressed', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const a = await page();
    const b = await page();
    // Every socket a page opens, kept where the test can read its negotiated extensions.
    for (const p of [a, b]) {
      await p.addInitScript(() => {
        const Native = window.WebSocket;
        window.__sockets = [];
        window.WebSocket = class extends Native {
          constructor(...args) {
            super(...args);
            window.__sockets.push(this);
          }
        };
      });
    }
    await openChat(a, s.http + '/?room=deflate');
    await openChat(b, s.http + '/?room=deflate');
    for (const p of [a, b]) {
      const extensions = await p.evaluate(() => window.__sockets.at(-1).extensions);
      assert.match(extensions, /^permessage-deflate/, 'Chromium offered it and the server accepted');
      assert.match(extensions, /server_no_context_takeover/);
    }
    // Long enough to be sent compressed (over --deflate-min-size), both ways.
    const line = 'a line long enough to be compressed on its way to every page. '.repeat(8).trim();
    await say(a, line);
    await waitForRow(b, 'live', line);
    await waitForRow(a, 'you', line);
    const metrics = await (await fetch(s.http + '/metrics')).text();
    const compressed = Number(/^mioket_compressed_frames_total (\d+)$/m.exec(metrics)[1]);
    assert.ok(compressed >= 1, `the server compressed the broadcast (${compressed} frames)`);
    assert.match(metrics, /^mioket_deflate_connections_total 2$/m);
    for (const p of [a, b]) assertNothingRan(p);
  });

  test('a page opened later shows the welcome, then the history in order', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const c = await client(s.ws);
    await c.send('first');
    await c.send('second, with <b>markup</b>');
    await c.send(Buffer.from([1, 2, 3]));
    await c.received(4); // the welcome and its own three messages: the server has them all

    const p = await page();
    await openChat(p, s.http + '/');
    const rows = await rowsOf(p);
    assert.deepEqual(
      rows.map((r) => [r.kind, r.text]),
      [
        ['info', 'connected'],
        ['welcome', WELCOME],
        ['history', 'first'],
        ['history', 'second, with <b>markup</b>'],
        ['history', 'binary, 3 bytes: 01 02 03'],
      ],
    );

    await c.send('live now');
    await waitForRow(p, 'live', 'live now');
    assertNothingRan(p);
  });

  test('a restarted server is reconnected to, and the state line says so', { timeout: TEST_MS }, async () => {
    const first = await server([]);
    const p = await page();
    await openChat(p, first.http + '/');
    await say(p, 'before the restart');
    await waitForRow(p, 'you', 'before the restart');

    await first.stop();
    await waitForState(p, 'closed', /^closed \(\d{4}(, .+)?\) — reconnecting in \d+\.\d s$/);
    await waitFor(p, 'a disconnected row', () =>
      /^disconnected \(\d{4}\)$/.test(document.querySelector('#rows tr:last-child .msg').textContent),
    );

    const second = await server([], { port: first.port });
    assert.equal(second.port, first.port);
    // It asks to resume after seq 1 of the first server's epoch; the new server's room has
    // another epoch, so it answers "recovered":false and numbers from 1 again.
    await waitForState(p, 'open', new RegExp(`^open — ${second.ws}\\?since=1&epoch=[0-9a-f]{16}$`));
    await waitFor(p, 'a second welcome', () => document.querySelectorAll('#rows tr[data-kind="welcome"]').length === 2);
    await waitFor(p, 'the end of the replay', () => document.getElementById('log').dataset.replay === 'off');

    // seq 1 again, of the new epoch: shown, not taken for the message seen before.
    await say(p, 'back again');
    await waitForRow(p, 'you', 'back again');
    const rows = (await rowsOf(p)).map((r) => [r.kind, r.text.replace(/^disconnected \(\d{4}\)$/, 'disconnected')]);
    assert.deepEqual(
      rows,
      [
        ['info', 'connected'],
        ['welcome', WELCOME],
        ['you', 'before the restart'],
        ['info', 'disconnected'],
        ['info', 'connected'],
        ['welcome', WELCOME],
        ['gap', 'you may have missed messages: the room was started anew'],
        ['you', 'back again'],
      ],
    );
    assert.equal((await p.evaluate(() => window.mioketDebug.seen())).last, 1);
    assertNothingRan(p);
  });

  test('binary messages from a Node client show their size and a hex preview', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const p = await page();
    await openChat(p, s.http + '/');
    const c = await client(s.ws);
    await c.send(Buffer.from([0xde, 0xad, 0xbe, 0xef, 0x00]));
    await c.send(Buffer.alloc(0));
    await c.send(Buffer.from(Array.from({ length: 40 }, (_, i) => i)));
    await waitForRow(p, 'live', 'binary, 5 bytes: de ad be ef 00');
    await waitForRow(p, 'live', 'binary, 0 bytes');
    await waitForRow(p, 'live', 'binary, 40 bytes: 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f …');
    assertNothingRan(p);
  });

  test('HTML in a message is shown as text and never runs', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const p = await page();
    await openChat(p, s.http + '/');
    const attack = '<img src=x onerror=alert(1)>';
    await say(p, attack);
    const c = await client(s.ws);
    await c.send('<script>alert(2)</script><svg onload=alert(3)>');
    await waitForRow(p, 'you', attack);
    await waitForRow(p, 'live', '<script>alert(2)</script><svg onload=alert(3)>');
    const counts = await p.evaluate(() => ({
      img: document.querySelectorAll('img').length,
      svg: document.querySelectorAll('svg').length,
      script: document.querySelectorAll('script').length,
    }));
    // Only the page's own two scripts: mioket.js and the inline one.
    assert.deepEqual(counts, { img: 0, svg: 0, script: 2 });
    assertNothingRan(p);
  });

  test('the newest message stays in view on a phone-sized screen', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const p = await page({ viewport: { width: 360, height: 640 }, isMobile: true, hasTouch: true });
    await openChat(p, s.http + '/');
    const c = await client(s.ws);
    await c.send('a-very-long-word-without-any-spaces-'.repeat(8));
    for (let i = 1; i <= 40; i++) await c.send(`message ${i} of 40`);
    await waitForRow(p, 'live', 'message 40 of 40');
    const view = await p.evaluate(() => {
      const log = document.getElementById('log').getBoundingClientRect();
      const last = document.querySelector('#rows tr:last-child').getBoundingClientRect();
      const form = document.getElementById('send').getBoundingClientRect();
      return {
        lastInLog: last.top >= log.top && last.bottom <= log.bottom + 1,
        scrolled: document.getElementById('log').scrollTop > 0,
        formOnScreen: form.bottom <= innerHeight + 1,
        overflowX: document.documentElement.scrollWidth - innerWidth,
      };
    });
    assert.deepEqual(view, { lastInLog: true, scrolled: true, formOnScreen: true, overflowX: 0 });
  });

  test('the ?ws= parameter picks the server, served or opened from disk', { timeout: TEST_MS }, async () => {
    const chat = await server([]);
    const other = await server(['--welcome', 'the other server']);

    const served = await page();
    await served.goto(`${chat.http}/?ws=${encodeURIComponent(other.ws)}`);
    await waitForState(served, 'open', new RegExp(`^open — ${other.ws}$`));
    await waitForRow(served, 'welcome', 'the other server');
    await say(served, 'to the other server');
    await waitForRow(served, 'you', 'to the other server');

    const fromDisk = await page();
    const file = pathToFileURL(clientFile('index.html')).href;
    await openChat(fromDisk, `${file}?ws=${encodeURIComponent(chat.ws)}`);
    await waitForRow(fromDisk, 'welcome', WELCOME);
    await say(fromDisk, 'from disk');
    await waitForRow(fromDisk, 'you', 'from disk');

    // A relative ?ws= is resolved against the page; its path names the room unless ?room= does.
    const relative = await page();
    await relative.goto(`${chat.http}/?ws=/room`);
    await waitForState(relative, 'open', new RegExp(`^open — ${chat.ws}room$`));
    assert.equal(await relative.inputValue('#room'), 'room');
    const both = await page();
    await both.goto(`${chat.http}/?ws=/room&room=${encodeURIComponent('a/b')}`);
    await waitForState(both, 'open', new RegExp(`^open — ${chat.ws}a%2Fb$`));

    const nonsense = await page();
    await nonsense.goto(`${chat.http}/?ws=ftp://127.0.0.1/`);
    await waitForState(nonsense, 'closed', /^cannot connect to ftp:\/\/127\.0\.0\.1\/: /);
    for (const p of [served, fromDisk, relative, both, nonsense]) assertNothingRan(p);
  });

  test('opened from disk without ?ws= it connects to ws://localhost:8765/', { timeout: TEST_MS }, async () => {
    // No real server: Playwright stands in for ws://localhost:8765/ inside the page, with
    // a scripted mioket.v1 server that also sends an error, a presence and unknown things.
    const p = await page();
    let offered;
    await p.routeWebSocket('ws://localhost:8765/', (ws) => {
      offered = ws.protocols();
      const send = (o) => ws.send(JSON.stringify(o));
      send({ type: 'welcome', room: '', epoch: '00112233445566ff', seq: 1, online: 1, text: 'Welcome! (a stand-in)', later: 1 });
      send({ type: 'message', room: '', seq: 1, data: 'from the history' });
      send({ type: 'something-new', room: '' });
      send({ type: 'presence', room: '', online: 5 });
      let seq = 1;
      ws.onMessage((m) => {
        const op = JSON.parse(m);
        if (op.data === 'refuse me') return send({ type: 'error', id: op.id, reason: 'room not joined' });
        send({ type: 'ack', id: op.id, room: '', seq: ++seq });
        send({ type: 'message', room: '', seq, data: op.data });
        send({ type: 'message', room: '', seq: ++seq, b64: 'AAEC' });
      });
    });
    // Opened from disk, the page imports the client module from the server it talks to
    // (browsers load no module from file://): the stand-in serves it as mioket does.
    await p.route('http://localhost:8765/mioket-client.js', (route) =>
      route.fulfill({
        status: 200,
        contentType: 'text/javascript; charset=utf-8',
        headers: { 'access-control-allow-origin': '*' },
        body: readFileSync(clientFile('js/index.js'), 'utf8'),
      }),
    );
    await openChat(p, pathToFileURL(clientFile('index.html')).href);
    assert.equal((await stateOf(p)).text, 'open — ws://localhost:8765/');
    assert.deepEqual(offered, ['mioket.v1']);
    await waitForOnline(p, 5);
    await say(p, 'mine');
    await waitForRow(p, 'live', 'binary, 3 bytes: 00 01 02');
    await say(p, 'refuse me');
    await waitForRow(p, 'info', 'the server refused: room not joined');
    assert.deepEqual(
      (await rowsOf(p)).map((r) => [r.kind, r.text]),
      [
        ['info', 'connected'],
        ['welcome', 'Welcome! (a stand-in)'],
        ['history', 'from the history'],
        ['you', 'mine'],
        ['live', 'binary, 3 bytes: 00 01 02'],
        ['info', 'the server refused: room not joined'],
      ],
    );
    assertNothingRan(p);
  });

  test('a screenshot of the chat page is written', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const c = await client(s.ws);
    await c.send('Hello, room!');
    await c.received(2);
    const p = await page({ viewport: { width: 800, height: 500 } });
    await openChat(p, s.http + '/');
    await say(p, 'Hi from the browser');
    await waitForRow(p, 'you', 'Hi from the browser');
    mkdirSync(artifactsDir, { recursive: true });
    const file = path.join(artifactsDir, 'chat.png');
    await p.screenshot({ path: file, timeout: 20_000 });
    assert.ok(statSync(file).size > 1000, `${file} is not empty`);
    assert.deepEqual([...readFileSync(file).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'a PNG');
  });
});

/** The rows as [kind, text] pairs, without the connected/disconnected lines. */
async function messagesOf(p) {
  return (await rowsOf(p)).filter((r) => r.kind !== 'info').map((r) => [r.kind, r.text]);
}

/** Drops the page's socket and keeps it from reconnecting until the returned function runs. */
async function dropAndHold(p) {
  await p.evaluate(() => {
    window.mioketDebug.hold(true);
    window.mioketDebug.drop();
  });
  await waitForState(p, 'closed', /^closed \(\d{4}(, .+)?\) — reconnecting in \d+\.\d s$/);
  return () => p.evaluate(() => window.mioketDebug.hold(false));
}

describe('rooms and resuming (mioket.v1)', { timeout: TEST_MS * 5 }, () => {
  test('pages in one room chat and count each other; another room hears nothing', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const a = await page();
    const b = await page();
    const c = await page();
    await openChat(a, `${s.http}/?room=lobby`);
    await openChat(b, `${s.http}/?room=lobby`);
    await openChat(c, `${s.http}/?room=other`);
    assert.match((await stateOf(a)).text, new RegExp(`^open — ${s.ws}lobby$`));
    assert.equal(await a.inputValue('#room'), 'lobby');
    await waitForOnline(a, 2);
    await waitForOnline(b, 2);
    await waitForOnline(c, 1);
    assert.equal(await a.textContent('#online'), '2 online');

    await say(a, 'hello lobby');
    await waitForRow(b, 'live', 'hello lobby');
    await waitForRow(a, 'you', 'hello lobby');
    // The other room's own message comes after A's in the server's one loop: once C has
    // it back, A's message would have reached C before it, had it been sent there.
    await say(c, 'hello other');
    await waitForRow(c, 'you', 'hello other');
    assert.deepEqual(await messagesOf(c), [['welcome', WELCOME], ['you', 'hello other']]);
    assert.deepEqual(await messagesOf(a), [['welcome', WELCOME], ['you', 'hello lobby']]);
    assert.deepEqual(await messagesOf(b), [['welcome', WELCOME], ['live', 'hello lobby']]);

    // A plain client in the room a/b (percent-encoded path) reaches a page of that room.
    const d = await page();
    await openChat(d, `${s.http}/?room=${encodeURIComponent('a/b')}`);
    assert.match((await stateOf(d)).text, new RegExp(`^open — ${s.ws}a%2Fb$`));
    const plain = await client(`${s.ws}a%2Fb`);
    await plain.send('from a plain client');
    await plain.send(Buffer.from([7, 8]));
    await waitForRow(d, 'live', 'from a plain client');
    await waitForRow(d, 'live', 'binary, 2 bytes: 07 08');

    // C switches to the lobby with the room box: its URL says so, it gets the lobby's
    // history, and the lobby counts three.
    await c.fill('#room', 'lobby');
    await c.press('#room', 'Enter');
    await waitForState(c, 'open', new RegExp(`^open — ${s.ws}lobby$`));
    await waitFor(c, 'the end of the replay', () => document.getElementById('log').dataset.replay === 'off');
    assert.equal(new URL(c.url()).searchParams.get('room'), 'lobby');
    assert.deepEqual(await messagesOf(c), [['welcome', WELCOME], ['history', 'hello lobby']]);
    await waitForOnline(a, 3);
    await waitForOnline(c, 3);
    await say(b, 'three of us');
    await waitForRow(c, 'live', 'three of us');
    await waitForRow(a, 'live', 'three of us');

    // A name the server would refuse is not joined.
    await c.fill('#room', 'bell\u0007');
    await c.press('#room', 'Enter');
    await waitForRow(c, 'info', 'cannot join that room: a control character');
    assert.equal(new URL(c.url()).searchParams.get('room'), 'lobby');
    for (const p of [a, b, c, d]) assertNothingRan(p);
  });

  test('a page that lost its connection resumes: each missed message once, in order', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const a = await page();
    const b = await page();
    await openChat(a, `${s.http}/?room=lobby`);
    await openChat(b, `${s.http}/?room=lobby`);
    await say(b, 'before 1');
    await say(b, 'before 2');
    await waitForRow(a, 'live', 'before 2');

    const release = await dropAndHold(a);
    for (let i = 1; i <= 5; i++) await say(b, `away ${i}`);
    await waitForRow(b, 'you', 'away 5'); // the server has all five
    await release();

    // It reconnects with what it has seen (seq 2 of the room's epoch) and gets the rest.
    await waitForState(a, 'open', new RegExp(`^open — ${s.ws}lobby\\?since=2&epoch=[0-9a-f]{16}$`));
    await waitFor(a, 'the end of the replay', () => document.getElementById('log').dataset.replay === 'off');
    await say(b, 'after');
    await waitForRow(a, 'live', 'after');
    assert.deepEqual(await messagesOf(a), [
      ['welcome', WELCOME],
      ['live', 'before 1'],
      ['live', 'before 2'],
      ['welcome', WELCOME],
      ['history', 'away 1'],
      ['history', 'away 2'],
      ['history', 'away 3'],
      ['history', 'away 4'],
      ['history', 'away 5'],
      ['live', 'after'],
    ]);
    assert.deepEqual(
      (await rowsOf(a)).filter((r) => r.kind === 'info').map((r) => r.text),
      ['connected', 'disconnected (1005)', 'connected'],
    );
    const seen = await a.evaluate(() => window.mioketDebug.seen());
    assert.equal(seen.last, 8);
    assert.match(seen.epoch, /^[0-9a-f]{16}$/);

    // And what it sends after the resume is still its own.
    await say(a, 'A is back');
    await waitForRow(a, 'you', 'A is back');
    await waitForRow(b, 'live', 'A is back');
    for (const p of [a, b]) assertNothingRan(p);
  });

  test('when the history no longer holds what it missed, the page says so', { timeout: TEST_MS }, async () => {
    const s = await server(['--history', '2']);
    const a = await page();
    const b = await page();
    await openChat(a, `${s.http}/?room=lobby`);
    await openChat(b, `${s.http}/?room=lobby`);
    await say(b, 'before');
    await waitForRow(a, 'live', 'before');

    const release = await dropAndHold(a);
    for (let i = 1; i <= 5; i++) await say(b, `away ${i}`);
    await waitForRow(b, 'you', 'away 5');
    await release();

    await waitForState(a, 'open', new RegExp(`^open — ${s.ws}lobby\\?since=1&epoch=[0-9a-f]{16}$`));
    await waitForRow(a, 'gap', 'you missed some messages while you were away');
    await waitFor(a, 'the end of the replay', () => document.getElementById('log').dataset.replay === 'off');
    await say(b, 'after');
    await waitForRow(a, 'live', 'after');
    assert.deepEqual(await messagesOf(a), [
      ['welcome', WELCOME],
      ['live', 'before'],
      ['welcome', WELCOME],
      ['gap', 'you missed some messages while you were away'],
      ['history', 'away 4'],
      ['history', 'away 5'],
      ['live', 'after'],
    ]);
    const gap = await a.$eval('#rows tr[data-kind="gap"]', (tr) => ({
      badge: tr.cells[1].textContent,
      visible: tr.getBoundingClientRect().height > 0 && getComputedStyle(tr).visibility === 'visible',
    }));
    assert.deepEqual(gap, { badge: 'missed', visible: true });
    for (const p of [a, b]) assertNothingRan(p);
  });
});

/** Polls `check` in Node until it is true, within the wait bound. */
async function until(what, check, ms = 20_000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('the client module in the page (clients/js/index.js)', { timeout: TEST_MS * 2 }, () => {
  test('a link that silently stops is noticed by the heartbeat; the page resumes where it was', { timeout: TEST_MS }, async () => {
    // A scripted mioket.v1 stand-in (Playwright's routeWebSocket) that stops answering on
    // its first connection: the browser sees an open socket, only the module's ping (after
    // 10 s without a frame, given up 5 s later) can tell. The second connection must come
    // with since/epoch of what the page was shown, and gets the missed message.
    const s = await server([]);
    const p = await page();
    const epoch = '0123456789abcdef';
    const conns = [];
    await p.routeWebSocket(/^ws:\/\/localhost:9\/hb/, (ws) => {
      const conn = { url: ws.url(), ops: [], at: Date.now(), closed: null };
      conns.push(conn);
      const send = (o) => ws.send(JSON.stringify(o));
      ws.onClose((code) => (conn.closed = { code, at: Date.now() }));
      ws.onMessage((m) => {
        const op = JSON.parse(m);
        conn.ops.push({ ...op, at: Date.now() });
        if (conns.length > 1 && op.op === 'ping') send({ type: 'pong', id: op.id });
      });
      if (conns.length === 1) {
        send({ type: 'welcome', room: 'hb', epoch, seq: 2, online: 1, text: 'stand-in' });
        send({ type: 'message', room: 'hb', seq: 1, data: 'one' });
        send({ type: 'message', room: 'hb', seq: 2, data: 'two' });
      } else {
        send({ type: 'welcome', room: 'hb', epoch, seq: 3, online: 1, text: 'stand-in again', recovered: true });
        send({ type: 'message', room: 'hb', seq: 3, data: 'three, sent while the link was dead' });
      }
    });
    await openChat(p, `${s.http}/?ws=${encodeURIComponent('ws://localhost:9/hb')}`);
    assert.equal(conns[0].url, 'ws://localhost:9/hb');

    await until('the heartbeat ping', () => conns[0].ops.some((o) => o.op === 'ping'));
    const ping = conns[0].ops.find((o) => o.op === 'ping');
    assert.match(ping.id, /^h-\d+$/);
    assert.ok(ping.at - conns[0].at >= 9_000, 'the ping comes after about 10 s without a frame');
    await until('the second connection', () => conns.length === 2);
    const gaveUp = conns[1].at - ping.at;
    assert.ok(gaveUp >= 4_500 && gaveUp <= 8_000, `given up 5 s after the ping, reconnected within the backoff (${gaveUp} ms)`);
    assert.equal(conns[1].url, `ws://localhost:9/hb?since=2&epoch=${epoch}`);
    await waitForRow(p, 'history', 'three, sent while the link was dead');
    await waitForState(p, 'open', new RegExp(`^open — ws://localhost:9/hb\\?since=2&epoch=${epoch}$`));
    assert.deepEqual(await messagesOf(p), [
      ['welcome', 'stand-in'],
      ['history', 'one'],
      ['history', 'two'],
      ['welcome', 'stand-in again'],
      ['history', 'three, sent while the link was dead'],
    ]);
    assert.deepEqual(
      (await rowsOf(p)).filter((r) => r.kind === 'info').map((r) => r.text),
      ['connected', 'disconnected (heartbeat timeout)', 'connected'],
    );
    // What the page was shown is the module's bookkeeping: the client's room.
    assert.deepEqual(await p.evaluate(() => window.mioketDebug.seen()), { room: 'hb', epoch, last: 3 });
    assert.equal(await p.evaluate(() => window.mioketDebug.client().constructor.name), 'Mioket');
    assertNothingRan(p);
  });

  test('a publish not confirmed before the link dropped is sent again with the same id', { timeout: TEST_MS }, async () => {
    // A stand-in that drops the link on the first publish (no ack: perhaps published) and
    // acks on the next connection: the page sends it again with its id, which the server
    // publishes once per room (--dedup-window), so the retry cannot double it.
    const s = await server([]);
    const p = await page();
    const epoch = '0123456789abcdef';
    const conns = [];
    await p.routeWebSocket(/^ws:\/\/localhost:9\/rt/, (ws) => {
      const conn = { ops: [] };
      conns.push(conn);
      const send = (o) => ws.send(JSON.stringify(o));
      ws.onMessage((m) => {
        const op = JSON.parse(m);
        conn.ops.push(op);
        if (op.op !== 'publish') return;
        if (conns.length === 1) return ws.close({ code: 1011, reason: 'gone' });
        send({ type: 'ack', id: op.id, room: 'rt', seq: 1 });
        send({ type: 'message', room: 'rt', seq: 1, data: op.data });
      });
      send({ type: 'welcome', room: 'rt', epoch, seq: 0, online: 1, text: 'stand-in', recovered: conns.length > 1 });
    });
    await openChat(p, `${s.http}/?ws=${encodeURIComponent('ws://localhost:9/rt')}`);
    await say(p, 'retry me');
    await waitForRow(p, 'you', 'retry me');
    const [first, again] = conns.map((c) => c.ops.find((o) => o.op === 'publish'));
    assert.match(first.id, /^p-[0-9a-f]{12}-\d+$/, 'a publish id unique across connections');
    assert.equal(again.id, first.id, 'the retry carries the same id');
    assert.equal(again.data, 'retry me');
    const info = (await rowsOf(p)).filter((r) => r.kind === 'info').map((r) => r.text);
    assert.ok(info.some((t) => t.startsWith('not confirmed (disconnected): sending "retry me" again')), info.join(' | '));
    assertNothingRan(p);
  });

  test('while the browser is offline the page waits, and resumes when it is back', { timeout: TEST_MS }, async () => {
    const s = await server([]);
    const a = await page();
    const b = await page();
    await a.addInitScript(() => {
      const Native = window.WebSocket;
      window.__opened = 0;
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          window.__opened++;
        }
      };
    });
    await openChat(a, `${s.http}/?room=lobby`);
    await openChat(b, `${s.http}/?room=lobby`);
    await say(b, 'before');
    await waitForRow(a, 'live', 'before');

    await a.context().setOffline(true);
    await a.evaluate(() => window.mioketDebug.drop()); // if going offline did not already
    await waitForState(a, 'closed', /^closed \(.+\) — offline: reconnecting when the network is back$/);
    const opened = await a.evaluate(() => window.__opened);
    for (let i = 1; i <= 3; i++) await say(b, `away ${i}`);
    await waitForRow(b, 'you', 'away 3');
    await a.waitForTimeout(1500); // longer than the first backoff (0.5-1 s)
    assert.equal(await a.evaluate(() => window.__opened), opened, 'no attempt while offline');

    await a.context().setOffline(false);
    await waitForState(a, 'open', new RegExp(`^open — ${s.ws}lobby\\?since=1&epoch=[0-9a-f]{16}$`));
    await waitForRow(a, 'history', 'away 3');
    assert.deepEqual(await messagesOf(a), [
      ['welcome', WELCOME],
      ['live', 'before'],
      ['welcome', WELCOME],
      ['history', 'away 1'],
      ['history', 'away 2'],
      ['history', 'away 3'],
    ]);
    for (const p of [a, b]) assertNothingRan(p);
  });
});

describe('echo page', { timeout: TEST_MS * 2 }, () => {
  test('a message round-trips against a --mode echo server, with its time', { timeout: TEST_MS }, async () => {
    const s = await server(['--mode', 'echo']);
    const p = await page();
    await p.goto(s.http + '/echo');
    await waitForState(p, 'open', new RegExp(`^open — ${s.ws}$`));
    for (const text of ['ping 1', 'ping <i>2</i>', 'ping 3']) await say(p, text);
    for (const text of ['ping 1', 'ping <i>2</i>', 'ping 3']) await waitForRow(p, 'echo', text);
    const rows = await rowsOf(p);
    assert.deepEqual(rows.map((r) => r.kind), ['info', 'echo', 'echo', 'echo']);
    for (const r of rows.slice(1)) assert.match(r.cells[2], /^\d+(\.\d)? ms$/);
    assert.equal(await p.evaluate(() => document.querySelectorAll('i').length), 0);
    assertNothingRan(p);
  });

  test('the echo page is also served at /echo.html and reconnects too', { timeout: TEST_MS }, async () => {
    const first = await server(['--mode', 'echo']);
    const p = await page();
    await p.goto(first.http + '/echo.html');
    await waitForState(p, 'open');
    await first.stop();
    await waitForState(p, 'closed', /reconnecting in \d+\.\d s$/);
    await server(['--mode', 'echo'], { port: first.port });
    await waitForState(p, 'open');
    await say(p, 'after the restart');
    await waitForRow(p, 'echo', 'after the restart');
  });
});

test('both pages use the shared script and style, which the server serves', async () => {
  for (const name of ['index.html', 'echo.html']) {
    const html = readFileSync(clientFile(name), 'utf8');
    assert.match(html, /<script src="mioket\.js"><\/script>/, `${name} loads mioket.js`);
    assert.match(html, /<link rel="stylesheet" href="mioket\.css">/, `${name} loads mioket.css`);
  }
  const srv = await server([]);
  for (const [path, type, file] of [
    ['/mioket.js', 'text/javascript', 'mioket.js'],
    ['/mioket.css', 'text/css', 'mioket.css'],
    ['/mioket-client.js', 'text/javascript', 'js/index.js'],
  ]) {
    const res = await fetch(`http://127.0.0.1:${srv.port}${path}`);
    assert.equal(res.status, 200, path);
    assert.ok(res.headers.get('content-type').startsWith(type), path);
    assert.equal(await res.text(), readFileSync(clientFile(file), 'utf8'));
  }
});

test('the chat page is built on the client module: no connection logic of its own', () => {
  const html = readFileSync(clientFile('index.html'), 'utf8');
  assert.match(html, /import\(from\)/, 'it imports the module');
  assert.match(html, /'mioket-client\.js'/);
  assert.match(html, /new Mioket\(/);
  // Resuming, reconnecting and heartbeats are the module's: the page builds no since/epoch
  // URL, sets no reconnect timer, sends no op and parses no envelope itself.
  for (const banned of [/['"`]since/, /searchParams\.set/, /keepConnected/, /setTimeout/, /JSON\.(parse|stringify)/, /\.send\(/, /op: '/, /b64/]) {
    assert.doesNotMatch(html, banned);
  }
  // The old helper keeps only what the echo page uses.
  const helper = readFileSync(clientFile('mioket.js'), 'utf8');
  for (const gone of [/reconnect\(\)/, /drop\(\)/, /hold\(/]) assert.doesNotMatch(helper, gone);
});
