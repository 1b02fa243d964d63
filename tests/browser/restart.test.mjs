// The server restarts mid-conversation: the pages reconnect, nothing is lost or doubled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, openBrowser, signIn, send, shot, waitForText, register, timeline, lineClient, freePort, waitConnected } from './lib.mjs';

test('the page reconnects after a server restart with nothing lost or doubled', { timeout: 90000 }, async (t) => {
  const port = await freePort();
  let server = await startServer({ httpPort: port });
  t.after(() => server.stop());
  await register(server, 'alice');
  await register(server, 'bob');
  const a = await openBrowser();
  t.after(() => a.close());
  const b = await openBrowser();
  t.after(() => b.close());
  await signIn(a.page, server, { mode: 'login', user: 'alice' });
  await signIn(b.page, server, { mode: 'login', user: 'bob' });
  await b.page.waitForSelector('#timeline[data-key="r:lobby"]');

  const sent = [];
  for (let i = 1; i <= 3; i++) {
    const [page, who] = i % 2 ? [a.page, 'alice'] : [b.page, 'bob'];
    const text = `before restart ${i} from ${who}`;
    await send(page, text);
    sent.push(text);
    await waitForText(a.page, text);
    await waitForText(b.page, text);
  }

  // SIGTERM: the server closes the sessions with 1012 and exits.
  const { code } = await server.stop();
  assert.equal(code, 0, 'the server exits 0 on SIGTERM');
  for (const page of [a.page, b.page]) {
    await page.waitForSelector('#banner:not([hidden])');
    await page.waitForFunction(() => document.body.dataset.conn !== 'open');
  }
  // Close code 1012 (service restart) is told apart from a lost connection.
  await a.page.waitForSelector('#banner:has-text("The server is restarting")');
  // Written while the server is down: pending, then sent after the reconnect.
  await send(a.page, 'written while the server was down');
  sent.push('written while the server was down');
  await a.page.waitForSelector('#timeline .msg.pending');
  await shot(a.page, 'restart-down');

  // Back on the same port and data directory; a terminal user talks before the pages are back.
  server = await startServer({ httpPort: port, dataDir: server.dataDir });
  const line = await lineClient(server, 'carol');
  t.after(() => line.close());
  await line.waitFor('* welcome carol');
  line.write('said right after the restart');
  sent.push('said right after the restart');
  await line.waitFor('[lobby] carol: said right after the restart');

  for (const page of [a.page, b.page]) await waitConnected(page, 30000);
  await send(b.page, 'after the reconnect');
  sent.push('after the reconnect');

  for (const page of [a.page, b.page]) {
    for (const text of sent) await waitForText(page, text, 15000);
    await page.waitForSelector('#timeline .msg.pending', { state: 'detached' });
    const msgs = await timeline(page);
    assert.deepEqual(msgs.map((m) => m.seq), sent.map((_, i) => i + 1), 'every seq once, in order, no gap');
    assert.deepEqual([...msgs.map((m) => m.text)].sort(), [...sent].sort(), 'every message once');
    assert.equal(new Set(msgs.map((m) => m.text)).size, msgs.length, 'nothing doubled');
  }
  await shot(a.page, 'restart-after');
  await shot(b.page, 'restart-after-bob');

  // Down again: a message written then survives closing the tab (the outbox is kept), and is
  // sent when the page is opened again.
  await server.stop();
  await a.page.waitForFunction(() => document.body.dataset.conn !== 'open');
  await send(a.page, 'written, then the tab was closed');
  sent.push('written, then the tab was closed');
  await a.page.waitForSelector('#timeline .msg.pending');
  await a.page.close();
  server = await startServer({ httpPort: port, dataDir: server.dataDir });
  a.page = await a.ctx.newPage();
  await a.page.goto(server.url);
  for (const page of [a.page, b.page]) {
    await waitConnected(page, 30000);
    for (const text of sent) await waitForText(page, text, 15000);
    await page.waitForSelector('#timeline .msg.pending', { state: 'detached' });
    assert.deepEqual((await timeline(page)).map((m) => m.seq), sent.map((_, i) => i + 1));
  }
});

test('a message whose ok was lost is sent again with the same id and shown once', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  await register(server, 'sender');
  const a = await openBrowser();
  t.after(() => a.close());
  const b = await openBrowser();
  t.after(() => b.close());
  await signIn(a.page, server, { mode: 'login', user: 'sender' });
  await signIn(b.page, server, { mode: 'guest', user: 'reader' });
  await send(a.page, 'one');
  await waitForText(b.page, 'one');

  // The connection drops right after the `send` frame leaves: the page never sees its `ok` or echo.
  const cutAfter = (page, text) => page.evaluate((text) => {
    const orig = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
      orig.call(this, data);
      const m = JSON.parse(data);
      if (m.type === 'send' && m.text === text && !window.__cut) { window.__cut = m.id; this.close(); }
    };
  }, text);
  await cutAfter(a.page, 'two');
  await send(a.page, 'two');
  await waitForText(b.page, 'two');
  await a.page.waitForFunction(() => window.__cut);
  await waitConnected(a.page, 20000);
  await waitForText(a.page, 'two', 15000);
  await a.page.waitForSelector('#timeline .msg.pending', { state: 'detached' });
  await send(a.page, 'three');
  await waitForText(b.page, 'three');
  await waitForText(a.page, 'three');
  for (const page of [a.page, b.page]) {
    assert.deepEqual((await timeline(page)).map((m) => [m.seq, m.text]), [[1, 'one'], [2, 'two'], [3, 'three']]);
  }

  // The same for a guest. The server keys a guest's ids by session, so it may store the retry
  // twice; the pages still show the message once.
  await cutAfter(b.page, 'guest two');
  await send(b.page, 'guest two');
  await waitForText(a.page, 'guest two');
  await b.page.waitForFunction(() => window.__cut);
  await waitConnected(b.page, 20000);
  await waitForText(b.page, 'guest two', 15000);
  await b.page.waitForSelector('#timeline .msg.pending', { state: 'detached' });
  await send(b.page, 'guest three');
  for (const page of [a.page, b.page]) {
    await waitForText(page, 'guest three');
    const texts = (await timeline(page)).map((m) => m.text);
    assert.deepEqual(texts, ['one', 'two', 'three', 'guest two', 'guest three']);
  }
});
