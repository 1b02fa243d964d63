// Signing in, registering, guests, errors, staying signed in, signing out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, openBrowser, shot, register, waitConnected, upgradeStatus } from './lib.mjs';

const loginError = (page) => page.waitForSelector('#login-error:not([hidden])').then((e) => e.textContent());

async function fillLogin(page, mode, user, password) {
  await page.click(`.seg button[data-mode="${mode}"]`);
  await page.fill('#login-name', user);
  if (password != null) await page.fill('#login-password', password);
  await page.click('#login-submit');
}

test('accounts: register, clear errors, reload stays signed in, sign out revokes the token', { timeout: 60000 }, async (t) => {
  const server = await startServer({ args: ['--login-rate', '3'] });
  t.after(() => server.stop());
  await register(server, 'taken');
  const a = await openBrowser();
  t.after(() => a.close());
  const page = a.page;
  await page.goto(server.url);
  await page.waitForSelector('#login:not([hidden])');
  await shot(page, 'auth-login');

  await fillLogin(page, 'register', 'taken', 'long-enough-1');
  assert.match(await loginError(page), /name is taken/);
  await fillLogin(page, 'register', 'no spaces', 'long-enough-1');
  assert.match(await loginError(page), /1 to 32 characters/);
  await fillLogin(page, 'guest', 'taken');
  assert.match(await loginError(page), /belongs to an account or to someone online/);

  await fillLogin(page, 'register', 'erin', 'long-enough-1');
  await waitConnected(page);
  assert.equal(await page.textContent('#me-name'), 'erin');

  // A reload stays signed in.
  await page.reload();
  await waitConnected(page);
  assert.equal(await page.textContent('#me-name'), 'erin');
  assert.equal(await page.isHidden('#login'), true);
  const { token } = await page.evaluate(() => JSON.parse(localStorage.getItem('natter.auth')));
  assert.ok(token);

  // Sign out revokes the token on the server.
  await page.click('#btn-signout');
  await page.waitForSelector('#login:not([hidden])');
  assert.equal(await page.evaluate(() => localStorage.getItem('natter.auth')), null);
  assert.equal(await upgradeStatus(server, token), 401, 'the old token is refused');

  // A wrong password, then rate limiting with Retry-After.
  await fillLogin(page, 'signin', 'erin', 'not-the-password');
  assert.equal(await loginError(page), 'Wrong name or password.');
  let text = '';
  for (let i = 0; i < 4 && !/Too many attempts/.test(text); i++) {
    await page.fill('#login-password', 'still-not-it');
    await page.click('#login-submit');
    await page.waitForFunction(() => !document.getElementById('login-submit').disabled || /Try again/.test(document.getElementById('login-submit').textContent));
    text = await loginError(page);
  }
  assert.match(text, /Too many attempts\. Wait \d+ seconds?/);
  assert.equal(await page.isDisabled('#login-submit'), true);
  await shot(page, 'auth-rate-limited');
  assert.deepEqual(a.errors.filter((e) => !/status of (401|409|400|429)/.test(e)), []);
});

test('guests refused, then a revoked session goes back to the sign-in screen (close 4001)', { timeout: 60000 }, async (t) => {
  const server = await startServer({ args: ['--no-guests'] });
  t.after(() => server.stop());
  await register(server, 'frank');
  const a = await openBrowser();
  t.after(() => a.close());
  await a.page.goto(server.url);
  await fillLogin(a.page, 'guest', 'visitor');
  assert.match(await loginError(a.page), /does not allow guests/);
  assert.equal(await a.page.isHidden('#app'), true);
  await fillLogin(a.page, 'signin', 'frank', 'correct-horse-1');
  await waitConnected(a.page);
  const { token } = await a.page.evaluate(() => JSON.parse(localStorage.getItem('natter.auth')));
  const res = await fetch(`http://${server.http}/api/logout`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
  assert.equal(res.status, 204);
  await a.page.waitForSelector('#login:not([hidden])');
  assert.match(await loginError(a.page), /session has ended/);
  await shot(a.page, 'auth-revoked');
});

test('on a phone-sized screen the sidebar collapses into a drawer', { timeout: 60000 }, async (t) => {
  const server = await startServer();
  t.after(() => server.stop());
  const m = await openBrowser({ width: 390, height: 800, mobile: true });
  t.after(() => m.close());
  const page = m.page;
  await page.goto(server.url);
  await shot(page, 'phone-login');
  await fillLogin(page, 'guest', 'pat');
  await waitConnected(page);
  await page.waitForSelector('#timeline[data-key="r:lobby"]');
  const box = await page.locator('#sidebar').boundingBox();
  assert.ok(box.x + box.width <= 0, 'the sidebar is off screen');
  await page.fill('#input', 'hello from a phone');
  await page.click('#send');
  await page.waitForSelector('#timeline .msg[data-seq="1"]');
  await shot(page, 'phone-room');
  await page.click('#btn-menu');
  await page.waitForFunction(() => document.getElementById('sidebar').getBoundingClientRect().x >= 0);
  await page.waitForTimeout(250);  // the slide
  await shot(page, 'phone-drawer');
  await page.click('#btn-join');
  await page.fill('#join-name', 'phones');
  await page.press('#join-name', 'Enter');
  await page.waitForSelector('#timeline[data-key="r:phones"]');
  await page.waitForFunction(() => document.getElementById('sidebar').getBoundingClientRect().right <= 0);
  assert.deepEqual(m.errors, []);
});
