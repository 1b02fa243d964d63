// Older history loads when scrolling up, a page at a time, keeping the reader's place.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, openBrowser, signIn, shot, waitForText, timeline, lineClient } from './lib.mjs';

test('scrolling up loads older history without losing the place', { timeout: 60000 }, async (t) => {
  const server = await startServer({ args: ['--rate', '1000', '--burst', '1000'] });
  t.after(() => server.stop());
  const line = await lineClient(server, 'bot');
  t.after(() => line.close());
  await line.waitFor('* welcome bot');
  for (let i = 1; i <= 120; i++) line.write(`message ${i}${i % 9 === 0 ? ' — a longer one, so that the lines are not all of one height' : ''}`);
  line.write('/history 1');
  await line.waitFor(/^\[lobby\] bot: message 120/);

  const a = await openBrowser();
  t.after(() => a.close());
  await signIn(a.page, server, { mode: 'guest', user: 'reader' });
  await waitForText(a.page, 'message 120');
  let msgs = await timeline(a.page);
  assert.deepEqual([msgs.length, msgs[0].seq, msgs.at(-1).seq], [50, 71, 120], 'the newest page first');

  const scrollTop = () => a.page.evaluate(() => {
    const tl = document.getElementById('timeline');
    tl.scrollTop = 0;
    tl.dispatchEvent(new Event('scroll'));
  });
  const firstInView = () => a.page.evaluate(() => {
    const tl = document.getElementById('timeline');
    const top = tl.getBoundingClientRect().top;
    return Number([...tl.querySelectorAll('.msg[data-seq]')].find((e) => e.getBoundingClientRect().bottom > top + 1)?.dataset.seq);
  });

  await scrollTop();
  await a.page.waitForFunction(() => document.querySelectorAll('#timeline .msg[data-seq]').length === 100);
  const first = await firstInView();
  assert.ok(first >= 60 && first <= 71, `the place is kept (message ${first} in view, 71 was on top)`);
  await shot(a.page, 'history-paged');

  await scrollTop();
  await a.page.waitForFunction(() => document.querySelectorAll('#timeline .msg[data-seq]').length === 120);
  await scrollTop();
  await a.page.waitForSelector('#timeline .tl-top:has-text("This is the beginning.")');
  msgs = await timeline(a.page);
  assert.deepEqual(msgs.map((m) => m.seq), Array.from({ length: 120 }, (_, i) => i + 1));
  assert.deepEqual(a.errors, []);
});
