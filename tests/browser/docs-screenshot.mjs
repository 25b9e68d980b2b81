// Makes docs/chat.png for the README: a chat room with a few messages.
// Usage (from tests/browser, after npm ci): node docs-screenshot.mjs [OUTPUT]
// Uses the same server binary and browser as the tests (MIOKET_BIN, CHROMIUM_BIN).

import path from 'node:path';
import { launchBrowser, newPage, nodeClient, openChat, repoRoot, startServer, waitForRow } from './harness.mjs';

const out = path.resolve(process.argv[2] || path.join(repoRoot, 'docs', 'chat.png'));
const server = await startServer([]);
const browser = await launchBrowser();
try {
  const ana = await nodeClient(server.ws);
  const bo = await nodeClient(server.ws);
  await ana.send('Morning! Is the release still on for 3 pm?');
  await bo.send('Yes. Staging has been green since the last fix.');
  await bo.send(Buffer.from('mioket\x00\x01\x02\xfe\xff sensor frame', 'latin1'));
  await ana.received(4);

  const page = await newPage(browser, { viewport: { width: 820, height: 520 }, deviceScaleFactor: 1 });
  await openChat(page, server.http + '/');
  await ana.send('Pushing the changelog now.');
  await waitForRow(page, 'live', 'Pushing the changelog now.');
  await page.fill('#text', "Great, I'll watch the room.");
  await page.press('#text', 'Enter');
  await waitForRow(page, 'you', "Great, I'll watch the room.");
  await page.fill('#text', '<img src=x onerror=alert(1)> stays text');
  await page.press('#text', 'Enter');
  await waitForRow(page, 'you', '<img src=x onerror=alert(1)> stays text');
  await page.locator('#text').blur();
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
  await ana.close();
  await bo.close();
} finally {
  await browser.close();
  await server.stop();
}
