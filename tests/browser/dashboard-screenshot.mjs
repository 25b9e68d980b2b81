// Makes docs/dashboard.png for the README: the operator console under a load that
// grows for about 40 seconds (clients joining rooms and sending, some leaving).
// Usage (from tests/browser, after npm ci): node dashboard-screenshot.mjs [OUTPUT]
// Uses the same server binary and browser as the tests (MIOKET_BIN, CHROMIUM_BIN).

import path from 'node:path';
import { launchBrowser, newPage, repoRoot, startLoad, startServer, waitFor } from './harness.mjs';

const out = path.resolve(process.argv[2] || path.join(repoRoot, 'docs', 'dashboard.png'));
const TOKEN = 'screenshot';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const server = await startServer(['--api-token', TOKEN, '--welcome', '']);
const browser = await launchBrowser();
const loads = [];
try {
  const page = await newPage(browser, { viewport: { width: 1280, height: 1040 }, deviceScaleFactor: 1 });
  await page.goto(`${server.http}/dashboard`);
  await page.fill('#token', TOKEN);
  await page.click('#login button[type=submit]');
  await waitFor(page, 'the console', () => document.getElementById('status').dataset.state === 'live');

  const rooms = ['lobby', 'support', 'deploys', 'sensors/floor-1', 'sensors/floor-2', 'random'];
  for (let step = 0; step < 8; step++) {
    const some = Object.fromEntries(rooms.slice(0, 2 + (step % rooms.length)).map((r, i) => [r, 2 + ((step + i) % 4)]));
    loads.push(await startLoad(server.ws, some, 120 - step * 10));
    await sleep(3000);
    // Some leave as others come: closes by the client show in their chart.
    if (step % 3 === 2) await loads.shift().stop();
  }
  await page.fill('#publish-room', 'deploys');
  await page.fill('#publish-text', 'release 1.4 is live');
  await page.click('#publish button[type=submit]');
  await waitFor(page, 'the answer', () => document.getElementById('answer').dataset.status === '200');
  await sleep(6000);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  for (const load of loads) await load.stop();
  await browser.close();
  await server.stop();
}
