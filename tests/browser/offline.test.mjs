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
