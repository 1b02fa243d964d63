// Private messages to a registered user who is signed out reach them when they sign in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, openBrowser, signIn, send, shot, waitForText, register, timeline, waitConnected } from './lib.mjs';

test('a private message to a signed-out registered user appears when they sign in', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  await register(server, 'alice');
  await register(server, 'dave');
  const a = await openBrowser();
  t.after(() => a.close());
  await signIn(a.page, server, { mode: 'login', user: 'alice' });

  // Start a conversation by user name.
  await a.page.click('#btn-dm');
  await a.page.fill('#dm-name', 'dave');
  await a.page.press('#dm-name', 'Enter');
  await a.page.waitForSelector('#timeline[data-key="d:dave"]');
  await a.page.waitForSelector('#chan-sub:has-text("offline")');
  await send(a.page, 'dave, are you there?');
  await send(a.page, 'call me when you are back');
  await a.page.waitForSelector('#timeline .msg[data-seq="2"]');
  // A private message to nobody is refused beside the message.
  await a.page.click('#btn-dm');
  await a.page.fill('#dm-name', 'nobody');
  await a.page.press('#dm-name', 'Enter');
  await send(a.page, 'hello?');
  await a.page.waitForSelector('#timeline .msg.failed:has-text("no such user")');
  await shot(a.page, 'offline-no-such-user');

  const d = await openBrowser();
  t.after(() => d.close());
  await signIn(d.page, server, { mode: 'login', user: 'dave' });
  await d.page.waitForSelector('.sidebar [data-key="d:alice"] .badge:has-text("2")');
  await shot(d.page, 'offline-unread');
  await d.page.click('.sidebar [data-key="d:alice"]');
  await waitForText(d.page, 'call me when you are back');
  assert.deepEqual((await timeline(d.page)).map((m) => [m.seq, m.from, m.text]),
    [[1, 'alice', 'dave, are you there?'], [2, 'alice', 'call me when you are back']]);

  // The reply goes back live, and alice's page shows dave online.
  await send(d.page, 'back now');
  await a.page.click('.sidebar [data-key="d:dave"]');
  await waitForText(a.page, 'back now');
  assert.deepEqual((await timeline(a.page)).map((m) => m.seq), [1, 2, 3]);

  // The page acknowledged what it was shown: a new session of dave gets nothing again.
  const redelivered = await d.page.evaluate(async () => {
    const { token } = JSON.parse(localStorage.getItem('natter.auth'));
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    const got = [];
    await new Promise((resolve) => { ws.onopen = resolve; });
    ws.onmessage = (e) => got.push(JSON.parse(e.data));
    ws.send(JSON.stringify({ type: 'hello', token }));
    await new Promise((resolve) => setTimeout(resolve, 1000));
    ws.close();
    return { welcome: got.some((m) => m.type === 'welcome'), privates: got.filter((m) => m.type === 'private').length };
  });
  assert.deepEqual(redelivered, { welcome: true, privates: 0 });

  // A reload keeps dave signed in, and shows each message once.
  await d.page.reload();
  await waitConnected(d.page);
  await d.page.waitForSelector('#timeline[data-key="d:alice"]');
  await waitForText(d.page, 'back now');
  assert.deepEqual((await timeline(d.page)).map((m) => m.seq), [1, 2, 3]);
  await shot(d.page, 'offline-dm');
  assert.deepEqual(d.errors, []);
});

test('a guest who reloads is the same guest, and a new guest with the name continues the conversation', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  await register(server, 'rita');
  const r = await openBrowser();
  t.after(() => r.close());
  await signIn(r.page, server, { mode: 'login', user: 'rita' });

  // A guest writes to rita, reloads its tab, and writes again: the same
  // guest, the same conversation.
  const g = await openBrowser();
  t.after(() => g.close());
  await signIn(g.page, server, { mode: 'guest', user: 'gwen' });
  const resume = await g.page.evaluate(() => sessionStorage.getItem('natter.resume.gwen'));
  assert.ok(resume, 'the page keeps its resume secret');
  await g.page.click('#btn-dm');
  await g.page.fill('#dm-name', 'rita');
  await g.page.press('#dm-name', 'Enter');
  await send(g.page, 'first from gwen');
  await g.page.waitForSelector('#timeline .msg[data-seq="1"]');
  await g.page.reload();
  await waitConnected(g.page);
  await openChanIfNeeded(g.page, 'd:rita');
  await send(g.page, 'after my reload');
  await g.page.waitForSelector('#timeline .msg[data-seq="2"]');
  const history = await g.page.evaluate(async () => {
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    await new Promise((resolve) => { ws.onopen = resolve; });
    const got = [];
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      got.push(m);
      if (m.type === 'welcome') ws.send(JSON.stringify({ type: 'history', with: 'rita', ref: 'h' }));
    };
    ws.send(JSON.stringify({ type: 'hello', name: 'gwen', resume: sessionStorage.getItem('natter.resume.gwen') }));
    await new Promise((resolve) => setTimeout(resolve, 1000));
    ws.close();
    return got.find((m) => m.ref === 'h');
  });
  assert.deepEqual(history.messages.map((m) => m.text), ['first from gwen', 'after my reload']);

  // gwen signs out; someone else takes the name and writes: rita's page
  // shows it (its seq goes on), and reading it clears the badge.
  await g.page.click('#btn-signout');
  const h = await openBrowser();
  t.after(() => h.close());
  await signIn(h.page, server, { mode: 'guest', user: 'gwen' });
  await h.page.click('#btn-dm');
  await h.page.fill('#dm-name', 'rita');
  await h.page.press('#dm-name', 'Enter');
  await send(h.page, 'a different gwen');
  await h.page.waitForSelector('#timeline .msg[data-seq="3"]');
  await r.page.waitForSelector('.sidebar [data-key="d:gwen"] .badge');
  await r.page.click('.sidebar [data-key="d:gwen"]');
  await waitForText(r.page, 'a different gwen');
  assert.deepEqual((await timeline(r.page)).map((m) => [m.seq, m.text]),
    [[1, 'first from gwen'], [2, 'after my reload'], [3, 'a different gwen']]);
  await r.page.waitForSelector('.sidebar [data-key="d:gwen"] .badge', { state: 'detached' });
  await shot(r.page, 'offline-guest-name-again');
});

/** Opens the channel `key` unless it is already the one shown. */
async function openChanIfNeeded(page, key) {
  const shown = await page.$(`#timeline[data-key="${key}"]`);
  if (!shown) await page.click(`.sidebar [data-key="${key}"]`);
  await page.waitForSelector(`#timeline[data-key="${key}"]`);
}
