// The chat page with tokens (issue 21): a token in the URL fragment (#token=JWT) offered
// as the subprotocol entry mioket.token.JWT, the user and each message's sender shown,
// read-only where the token may not write, and close codes that stop instead of looping.
// Against the real mioket binary with --jwt-secret-file; the tokens are HS256 JWTs made
// here (harness.mjs: signToken).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  TEST_MS,
  WELCOME,
  openChat,
  rowsOf,
  say,
  secretFile,
  signToken,
  stateOf,
  suite,
  waitFor,
  waitForRow,
  waitForState,
} from './harness.mjs';

const { page, server, client } = suite({ before, after });

const SECRET = 'the chat page tests sign their tokens with this';
let secret;
before(() => {
  secret = secretFile(SECRET);
});
after(() => secret?.remove());

/** A token for `sub` that may read and write the rooms given, for `ttl` seconds from now. */
function tokenFor(sub, { read = ['*'], write = ['*'], ttl = 3600 } = {}) {
  return signToken(SECRET, { sub, exp: Math.floor(Date.now() / 1000) + ttl, rooms: { read, write } });
}

/** A server checking tokens with the test secret; `args` add patterns and the like. */
function tokenServer(args = []) {
  return server(['--jwt-secret-file', secret.file, ...args]);
}

/** The chat page of `room` on server `s` with `token` in its fragment. */
function chatUrl(s, room, token) {
  return `${s.http}/?room=${encodeURIComponent(room)}${token ? `#token=${token}` : ''}`;
}

/** A page that records the subprotocols each of its sockets offered and got. */
async function recordingPage() {
  const p = await page();
  await p.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends Native {
      constructor(url, protocols) {
        super(url, protocols);
        window.__sockets.push({ offered: protocols, socket: this });
      }
    };
  });
  return p;
}

function socketsOf(p) {
  return p.evaluate(() => window.__sockets.length);
}

async function upgrades(s) {
  const metrics = await (await fetch(`${s.http}/metrics`)).text();
  return Number(/^mioket_upgrades_total (\d+)$/m.exec(metrics)[1]);
}

function userOf(p) {
  return p.$eval('#user', (el) => (el.hidden ? null : el.textContent));
}

function readOnlyOf(p) {
  return p.evaluate(() => ({
    badge: !document.getElementById('read-only').hidden,
    input: document.getElementById('text').disabled,
    button: document.getElementById('send-button').disabled,
  }));
}

/** The rows as [kind, from, text], without the connected/disconnected lines. */
async function linesOf(p) {
  return (await rowsOf(p)).filter((r) => r.kind !== 'info').map((r) => [r.kind, r.from, r.text]);
}

function assertNothingRan(p) {
  assert.deepEqual(p.errors, [], 'page errors');
  assert.deepEqual(p.dialogs, [], 'dialogs');
}

describe('chat page with tokens', { timeout: TEST_MS * 6 }, () => {
  test('two users chat and every line shows its sender; anonymous lines show none', { timeout: TEST_MS }, async () => {
    const s = await tokenServer(['--anonymous-read', '*', '--anonymous-write', 'lobby']);
    const alice = tokenFor('alice', { read: ['lobby'], write: ['lobby'] });
    const bob = tokenFor('bob', { read: ['lobby'], write: ['lobby'] });
    const a = await recordingPage();
    const b = await recordingPage();
    await openChat(a, chatUrl(s, 'lobby', alice));
    await openChat(b, chatUrl(s, 'lobby', bob));

    // The token went as a subprotocol entry beside mioket.v1; the server chose mioket.v1.
    const offered = await a.evaluate(() => window.__sockets.map((w) => [w.offered, w.socket.protocol]));
    assert.deepEqual(offered, [[['mioket.v1', `mioket.token.${alice}`], 'mioket.v1']]);
    assert.equal(await userOf(a), 'alice');
    assert.equal(await userOf(b), 'bob');
    assert.deepEqual(await readOnlyOf(a), { badge: false, input: false, button: false });

    await say(a, 'hello from alice');
    await waitForRow(b, 'live', 'hello from alice', 'alice');
    await waitForRow(a, 'you', 'hello from alice', 'alice');
    await say(b, 'hi alice, bob here');
    await waitForRow(a, 'live', 'hi alice, bob here', 'bob');
    await waitForRow(b, 'you', 'hi alice, bob here', 'bob');
    // A name typed into the text is only text: the sender is what the token says.
    await say(b, 'alice: I am not alice');
    await waitForRow(a, 'live', 'alice: I am not alice', 'bob');

    // An anonymous plain client may write in the lobby: its lines have no sender.
    const plain = await client(`${s.ws}lobby`);
    await plain.send('from nobody in particular');
    await waitForRow(a, 'live', 'from nobody in particular', null);
    await waitForRow(b, 'live', 'from nobody in particular', null);

    for (const [p, me] of [[a, 'alice'], [b, 'bob']]) {
      const lines = await linesOf(p);
      const kind = (who) => (who === me ? 'you' : 'live');
      assert.deepEqual(lines, [
        ['welcome', null, WELCOME],
        [kind('alice'), 'alice', 'hello from alice'],
        [kind('bob'), 'bob', 'hi alice, bob here'],
        [kind('bob'), 'bob', 'alice: I am not alice'],
        ['live', null, 'from nobody in particular'],
      ]);
    }

    // A page without a token may read here (--anonymous-read): the history keeps each sender.
    const c = await page();
    await openChat(c, chatUrl(s, 'lobby', null));
    assert.deepEqual(await linesOf(c), [
      ['welcome', null, WELCOME],
      ['history', 'alice', 'hello from alice'],
      ['history', 'bob', 'hi alice, bob here'],
      ['history', 'bob', 'alice: I am not alice'],
      ['history', null, 'from nobody in particular'],
    ]);
    assert.equal(await userOf(c), null);
    for (const p of [a, b, c]) assertNothingRan(p);
  });

  test('a read-only page cannot send: input disabled, and nothing it tries arrives', { timeout: TEST_MS }, async () => {
    const s = await tokenServer(['--anonymous-read', '*']);
    const reader = tokenFor('rita', { read: ['lobby'], write: [] });
    const writer = tokenFor('walt', { read: ['lobby'], write: ['lobby'] });
    const r = await page();
    const w = await page();
    await openChat(r, chatUrl(s, 'lobby', reader));
    await openChat(w, chatUrl(s, 'lobby', writer));
    assert.equal(await userOf(r), 'rita');
    assert.deepEqual(await readOnlyOf(r), { badge: true, input: true, button: true });
    assert.equal(await r.textContent('#read-only'), 'read-only');
    assert.deepEqual(await readOnlyOf(w), { badge: false, input: false, button: false });

    // Past the disabled box: the page's own send refuses, and a publish through the client
    // itself is refused by the server (forbidden).
    await r.evaluate(() => {
      const input = document.getElementById('text');
      input.disabled = false;
      input.value = 'sneaked past the box';
      document.getElementById('send').requestSubmit();
    });
    const refused = await r.evaluate(() =>
      window.mioketDebug.client().room('lobby').publish('straight through the client').then(
        () => 'published',
        (e) => e.reason,
      ),
    );
    assert.equal(refused, 'forbidden');

    // The writer's line comes after anything the reader could have sent: none came.
    await say(w, 'only walt writes here');
    await waitForRow(r, 'live', 'only walt writes here', 'walt');
    await waitForRow(w, 'you', 'only walt writes here', 'walt');
    for (const p of [r, w]) {
      assert.deepEqual((await linesOf(p)).slice(1), [[p === w ? 'you' : 'live', 'walt', 'only walt writes here']]);
    }

    // Without a token, where anonymous clients may only read, the page is read-only too.
    const anon = await page();
    await openChat(anon, chatUrl(s, 'lobby', null));
    assert.deepEqual(await readOnlyOf(anon), { badge: true, input: true, button: true });
    assert.equal(await userOf(anon), null);
    for (const p of [r, w, anon]) assertNothingRan(p);
  });

  test('a publish refused as forbidden makes the page read-only (a stand-in server)', { timeout: TEST_MS }, async () => {
    // A scripted mioket.v1 stand-in (Playwright's routeWebSocket) whose welcome does not
    // say read_only but which refuses the publish: the page believes the refusal.
    const s = await server([]);
    const p = await page();
    const token = tokenFor('dora');
    let offered;
    await p.routeWebSocket(/^ws:\/\/localhost:9\/ro/, (ws) => {
      offered = ws.protocols();
      const send = (o) => ws.send(JSON.stringify(o));
      send({ type: 'welcome', room: 'ro', epoch: '00000000000000aa', seq: 0, online: 1, text: null, user: 'dora', expires_in: 3600 });
      ws.onMessage((m) => {
        const op = JSON.parse(m);
        if (op.op === 'publish') send({ type: 'error', id: op.id, reason: 'forbidden' });
      });
    });
    await openChat(p, `${s.http}/?ws=${encodeURIComponent('ws://localhost:9/ro')}#token=${token}`);
    assert.deepEqual(offered, ['mioket.v1', `mioket.token.${token}`]);
    assert.equal(await userOf(p), 'dora');
    assert.deepEqual(await readOnlyOf(p), { badge: false, input: false, button: false });
    await say(p, 'may I?');
    await waitForRow(p, 'info', 'the server refused: forbidden');
    await waitFor(p, 'the read-only badge', () => !document.getElementById('read-only').hidden);
    assert.deepEqual(await readOnlyOf(p), { badge: true, input: true, button: true });
    assertNothingRan(p);
  });

  test('an expired token says so and makes no reconnect loop', { timeout: TEST_MS }, async () => {
    const s = await tokenServer(['--jwt-leeway', '0']);
    const EXPIRED = /^closed: the token expired — open the page with a new #token= to reconnect$/;

    // Expired before the page opened: closed 4001 right after the upgrade, before a welcome.
    const late = await recordingPage();
    await late.goto(chatUrl(s, 'lobby', tokenFor('late', { ttl: -10 })));
    await waitForState(late, 'closed', EXPIRED);

    // Expires while the page chats: the refresh has no new token to send, the server closes
    // with 4001 at expiry, and the page stops.
    const soon = await recordingPage();
    await openChat(soon, chatUrl(s, 'lobby', tokenFor('soon', { ttl: 5 })));
    assert.equal(await userOf(soon), 'soon');
    await say(soon, 'while it lasts');
    await waitForRow(soon, 'you', 'while it lasts', 'soon');
    await waitForState(soon, 'closed', EXPIRED);
    assert.deepEqual(
      (await rowsOf(soon)).filter((r) => r.kind === 'info').map((r) => r.text),
      ['connected', 'disconnected (4001)'],
    );
    assert.equal(await soon.evaluate(() => window.mioketDebug.client().state), 'closed');
    assert.equal((await readOnlyOf(soon)).button, true, 'nothing can be sent');

    // Longer than the backoff's first waits (0.5-1 s, 0.5-2 s): no upgrade comes, and each
    // page opened one socket.
    const upgraded = await upgrades(s);
    await soon.waitForTimeout(3000);
    assert.equal(await upgrades(s), upgraded, 'no reconnect with the dead token');
    for (const p of [late, soon]) {
      assert.equal(await socketsOf(p), 1, 'one socket per page');
      assert.match((await stateOf(p)).text, EXPIRED);
      assertNothingRan(p);
    }
  });

  test('4401 and 4403 stop the page and say why', { timeout: TEST_MS }, async () => {
    const s = await tokenServer([]);
    const cases = [
      [chatUrl(s, 'lobby', 'not-a-token'), /^closed for good: the server refused the token \(4401, .+\)$/],
      [chatUrl(s, 'lobby', null), /^closed for good: this room needs a token, give one as #token= \(4401, token required\)$/],
      [chatUrl(s, 'lobby', tokenFor('eve', { read: ['elsewhere'], write: ['elsewhere'] })), /^closed for good: this token may not read this room \(4403, forbidden\)$/],
    ];
    const pages = [];
    for (const [url, expected] of cases) {
      const p = await recordingPage();
      await p.goto(url);
      await waitForState(p, 'closed', expected);
      pages.push(p);
    }
    const upgraded = await upgrades(s);
    await pages[0].waitForTimeout(2000);
    assert.equal(await upgrades(s), upgraded, 'none tried again');
    for (const p of pages) {
      assert.equal(await socketsOf(p), 1, 'one socket per page');
      assert.equal(await p.evaluate(() => window.mioketDebug.client().state), 'closed');
      assertNothingRan(p);
    }
  });
});
