// A line-protocol user (raw TCP) and a browser user share a room.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, openBrowser, signIn, send, shot, waitForText, register, timeline, lineClient } from './lib.mjs';

test("a line-protocol client's message appears in the page, and back", { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  await register(server, 'alice');
  const a = await openBrowser();
  t.after(() => a.close());
  await signIn(a.page, server, { mode: 'login', user: 'alice' });
  await a.page.waitForSelector('#timeline[data-key="r:lobby"]');

  const line = await lineClient(server, 'carol');
  t.after(() => line.close());
  await line.waitFor('* welcome carol');
  await a.page.waitForSelector('#timeline .note:has-text("carol joined #lobby.")');

  line.write('hello from a terminal');
  await waitForText(a.page, 'hello from a terminal');
  const msgs = await timeline(a.page);
  assert.deepEqual(msgs.at(-1), { seq: 1, from: 'carol', text: 'hello from a terminal' });

  await send(a.page, 'hi carol, from the browser');
  await line.waitFor('[lobby] alice: hi carol, from the browser');

  // A private message from the terminal opens a conversation in the page.
  line.write('/msg alice psst, just you');
  await a.page.waitForSelector('.sidebar [data-key="d:carol"] .badge:has-text("1")');
  await a.page.click('.sidebar [data-key="d:carol"]');
  await waitForText(a.page, 'psst, just you');
  await send(a.page, 'got it');
  await line.waitFor('[pm] alice: got it');
  await a.page.waitForSelector('#timeline .msg[data-seq="2"][data-from="alice"]');
  await shot(a.page, 'line-dm');

  line.write('/quit');
  await line.waitFor('* bye');
  await a.page.click('.sidebar [data-key="r:lobby"]');
  await a.page.waitForSelector('#timeline .note:has-text("carol left #lobby.")');
  await shot(a.page, 'line-room');
  assert.deepEqual(a.errors, []);
});
