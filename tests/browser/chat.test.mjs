// Two browsers in one room: messages, presence, typing; HTML stays text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, openBrowser, signIn, send, shot, waitForText, register, timeline, lineClient } from './lib.mjs';

test('two browsers chat in a room and see presence and typing', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  await register(server, 'alice');
  const a = await openBrowser();
  t.after(() => a.close());
  const b = await openBrowser();
  t.after(() => b.close());

  await signIn(a.page, server, { mode: 'login', user: 'alice' });
  await a.page.waitForSelector('#timeline[data-key="r:lobby"]');
  await signIn(b.page, server, { mode: 'guest', user: 'bob' });
  await b.page.waitForSelector('#timeline[data-key="r:lobby"]');

  // Presence: alice sees bob join, and bob online; the member count follows.
  await a.page.waitForSelector('#timeline .note:has-text("bob joined #lobby.")');
  await a.page.waitForSelector('#online-list [data-key="u:bob"]');
  await a.page.waitForSelector('#chan-sub:has-text("2 members")');

  // Typing: shown while bob composes, gone once his message arrives.
  await b.page.fill('#input', 'hello al');
  await a.page.waitForSelector('#typing:has-text("bob is typing")');
  await shot(a.page, 'chat-typing');
  await b.page.fill('#input', 'hello alice');
  await b.page.press('#input', 'Enter');
  await waitForText(a.page, 'hello alice');
  await a.page.waitForFunction(() => document.getElementById('typing').textContent === '');
  assert.equal(await b.page.inputValue('#input'), '', 'Enter sends and clears the composer');

  // Shift+Enter makes a new line; Enter sends.
  await a.page.fill('#input', 'first line');
  await a.page.press('#input', 'Shift+Enter');
  await a.page.type('#input', 'second line');
  await a.page.press('#input', 'Enter');
  await waitForText(b.page, 'first line\nsecond line');
  await waitForText(a.page, 'first line\nsecond line');

  const ta = await timeline(a.page);
  const tb = await timeline(b.page);
  assert.deepEqual(ta, tb, 'both pages show the same messages');
  assert.deepEqual(ta.map((m) => [m.seq, m.from, m.text]), [[1, 'bob', 'hello alice'], [2, 'alice', 'first line\nsecond line']]);
  assert.equal(await a.page.locator('#timeline .msg.pending').count(), 0);

  // An unread count on a room not in view, cleared when it is opened.
  await a.page.click('#btn-join');
  await a.page.fill('#join-name', 'side');
  await a.page.press('#join-name', 'Enter');
  await a.page.waitForSelector('#timeline[data-key="r:side"]');
  await send(b.page, 'are you still here?');
  await a.page.waitForSelector('.sidebar [data-key="r:lobby"] .badge:has-text("1")');
  await shot(a.page, 'chat-unread');
  await a.page.click('.sidebar [data-key="r:lobby"]');
  await waitForText(a.page, 'are you still here?');
  await a.page.waitForSelector('.sidebar [data-key="r:lobby"] .badge', { state: 'detached' });

  // Keyboard: Alt+ArrowDown moves to the next conversation.
  await a.page.focus('#input');
  await a.page.keyboard.press('Alt+ArrowDown');
  await a.page.waitForSelector('#timeline[data-key="r:side"]');
  await a.page.keyboard.press('Alt+ArrowUp');
  await a.page.waitForSelector('#timeline[data-key="r:lobby"]');

  // bob (a guest) signs out: alice sees him leave.
  await b.page.click('#btn-signout');
  await b.page.waitForSelector('#login:not([hidden])');
  await a.page.waitForSelector('#timeline .note:has-text("bob left #lobby.")');
  await a.page.waitForSelector('#chan-sub:has-text("1 member")');
  await shot(a.page, 'chat-after');
  assert.deepEqual(a.errors, []);
  assert.deepEqual(b.errors, []);
});

test('a message with HTML in it is shown as text', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const a = await openBrowser();
  t.after(() => a.close());
  const b = await openBrowser();
  t.after(() => b.close());
  await signIn(a.page, server, { mode: 'guest', user: 'mallory' });
  await signIn(b.page, server, { mode: 'guest', user: 'victim' });

  const html = '<img src=x onerror="window.__pwned=1"><b>bold</b> &amp; <script>window.__pwned=2</script>';
  await send(a.page, html);
  await waitForText(b.page, html);
  const line = await lineClient(server, 'tty');
  t.after(() => line.close());
  await line.waitFor(/^\* welcome tty/);
  const html2 = '<i onmouseover="window.__pwned=3">line</i> <a href="javascript:window.__pwned=4">x</a>';
  line.write(html2);
  await waitForText(b.page, html2);

  for (const page of [a.page, b.page]) {
    await waitForText(page, html);
    const texts = page.locator('#timeline .msg .text');
    assert.equal(await page.locator('#timeline .msg .text img, #timeline .msg .text b, #timeline .msg .text script, #timeline .msg .text i').count(), 0);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.ok((await texts.allTextContents()).includes(html));
  }
  // Web addresses become links, and only http(s) ones.
  await send(a.page, 'see https://example.com/a?b=1 and javascript:alert(1)');
  await waitForText(b.page, 'see https://example.com/a?b=1 and javascript:alert(1)');
  const hrefs = await b.page.$$eval('#timeline .msg .text a', (as) => as.map((x) => x.getAttribute('href')));
  assert.deepEqual(hrefs, ['https://example.com/a?b=1']);
  await shot(b.page, 'html-as-text');
  assert.deepEqual(b.errors, []);
});

test('control characters in messages are shown as visible escapes, not obeyed or dropped', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const b = await openBrowser();
  t.after(() => b.close());
  await signIn(b.page, server, { mode: 'guest', user: 'bob' });
  await b.page.waitForSelector('#timeline[data-key="r:lobby"]');
  const line = await lineClient(server, 'tty');
  t.after(() => line.close());
  await line.waitFor(/^\* welcome tty/);
  // ESC [ 2 K, a lone CR, BEL, C1's NEL and CSI, DEL and U+2028.
  line.write('\u001b[2K\rfake\u0007 nel\u0085 csi\u009b1m del\u007f sep\u2028end');
  const shown = '^[[2K^Mfake^G nel\\u0085 csi\\u009b1m del^? sep\\u2028end';
  await waitForText(b.page, shown);
  const marks = await b.page.$$eval('#timeline .msg .text .ctl', (els) => els.map((e) => [e.textContent, e.title]));
  assert.deepEqual(marks, [['^[', 'U+001B'], ['^M', 'U+000D'], ['^G', 'U+0007'], ['\\u0085', 'U+0085'], ['\\u009b', 'U+009B'], ['^?', 'U+007F'], ['\\u2028', 'U+2028']]);
  await shot(b.page, 'control-characters');
  assert.deepEqual(b.errors, []);
});
