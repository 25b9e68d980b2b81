// The operator console (/dashboard, issue 25): it asks for the API token, tells a
// wrong one, shows numbers that move while a load runs (connections rise, messages/s
// above zero), lists the loaded rooms as the busiest, and its publish action reaches
// a connected client. Against the real mioket binary; the load is Node `ws` clients.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { TEST_MS, WAIT_MS, nodeClient, startLoad, suite, waitFor } from './harness.mjs';

const { page, server, later } = suite({ before, after });
const TOKEN = 'console-secret';

/** The console, signed in with `token` (typed into its form, as a person would). */
async function openConsole(s, token) {
  const p = await page({ viewport: { width: 1280, height: 900 } });
  await p.goto(`${s.http}/dashboard`, { timeout: WAIT_MS });
  await p.fill('#token', token);
  await p.click('#login button[type=submit]');
  return p;
}

function tileValue(p, name) {
  return p.$eval(`#tile-${name}`, (el) => Number(el.dataset.value));
}

/** A load (harness.mjs: startLoad) stopped when the suite ends. */
async function load(s, rooms) {
  const running = await startLoad(s.ws, rooms);
  later(running.stop);
  return running;
}

describe('the operator console', { timeout: TEST_MS }, () => {
  test('a wrong token is told and the form stays', async () => {
    const s = await server(['--api-token', TOKEN]);
    const p = await openConsole(s, 'not the token');
    await waitFor(p, 'the wrong token told', () => /Wrong token/.test(document.getElementById('login-error').textContent));
    assert.equal(await p.isVisible('#login'), true);
    assert.equal(await p.isVisible('#console'), false);
    assert.equal(await p.evaluate(() => sessionStorage.getItem('mioket.apiToken')), null);
  });

  test('without --api-token the console says the API is off', async () => {
    const s = await server([]);
    const p = await openConsole(s, 'anything');
    await waitFor(p, 'the API off told', () => /--api-token/.test(document.getElementById('login-error').textContent));
  });

  test('numbers move under a load and the busiest rooms are the loaded ones', async () => {
    const s = await server(['--api-token', TOKEN, '--welcome', '']);
    const p = await openConsole(s, TOKEN);
    await waitFor(p, 'the console shown', () => document.getElementById('status').dataset.state === 'live');
    assert.equal(await tileValue(p, 'connections'), 0);
    assert.equal(await p.isVisible('#login'), false, 'the token form goes');
    // Kept for the tab: a reload asks nothing.
    assert.equal(await p.evaluate(() => sessionStorage.getItem('mioket.apiToken')), TOKEN);

    await load(s, { 'load-a': 6, 'load-b': 4, 'load-c': 2 });
    await waitFor(p, '12 connections', () => Number(document.getElementById('tile-connections').dataset.value) === 12);
    await waitFor(p, 'messages/s above zero', () => Number(document.getElementById('tile-messages').dataset.value) > 0);
    await waitFor(p, 'deliveries/s above zero', () =>
      Number(document.getElementById('tile-deliveries').dataset.value) > 0);
    await waitFor(p, 'the loaded rooms as the busiest', () => {
      const rooms = Array.from(document.querySelectorAll('#busiest tbody tr'), (tr) => tr.cells[0].textContent);
      return ['load-a', 'load-b', 'load-c'].every((r) => rooms.includes(r)) && rooms[0] === 'load-a';
    });
    assert.ok((await tileValue(p, 'rss')) > 1 << 20, 'RSS shown');
    // The charts drew something: uPlot's canvases are there.
    assert.equal(await p.locator('.charts canvas').count(), 4);
  });

  test('the publish action reaches a connected client and its answer is shown', async () => {
    const s = await server(['--api-token', TOKEN]);
    const member = await nodeClient(`${s.ws}news`);
    later(() => member.close());
    const p = await openConsole(s, TOKEN);
    await waitFor(p, 'the console shown', () => document.getElementById('status').dataset.state === 'live');
    await p.fill('#publish-room', 'news');
    await p.fill('#publish-text', 'hello from the console');
    await p.click('#publish button[type=submit]');
    await waitFor(p, 'the answer shown', () => document.getElementById('answer').dataset.status === '200');
    assert.match(await p.textContent('#answer'), /"room":"news","seq":1/);
    const deadline = Date.now() + WAIT_MS;
    while (!member.messages.includes('hello from the console')) {
      assert.ok(Date.now() < deadline, `the member got ${JSON.stringify(member.messages)}`);
      await member.received(member.messages.length + 1);
    }
    // Presence of the room through its action.
    await p.fill('#presence-room', 'news');
    await p.click('#presence button[type=submit]');
    await waitFor(p, 'the presence answer', () => /presence → 200/.test(document.getElementById('answer').textContent));
  });
});
