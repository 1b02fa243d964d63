// Helpers for the browser tests: a real server binary on loopback, Debian's
// Chromium driven headless by playwright-core, a raw line-protocol client.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const OUT = path.join(ROOT, 'test-output', 'browser');
export const BIN = process.env.NATTER_BIN || 'natter-mio';
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

function binPath(name) {
  if (name.includes('/')) return path.resolve(name);
  const dir = process.env.NATTER_TARGET_DIR || path.join(ROOT, 'target', 'debug');
  return path.join(dir, name);
}

/** A free TCP port on loopback (for a server that must come back on the same port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const made = [];
process.on('exit', () => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });

/** A fresh directory, removed when the test process exits. */
export function tempDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(d);
  return d;
}

/**
 * Starts the server binary and waits for its `natter listening` line.
 * Returns {http, line, pid, stop(), log()}; stop() sends SIGTERM to that PID and waits for the exit.
 */
export async function startServer({ dataDir = tempDir('natter-data-'), httpPort = 0, linePort = 0, args = [] } = {}) {
  const exe = binPath(BIN);
  if (!fs.existsSync(exe)) throw new Error(`no server binary at ${exe} (run cargo build --bins first)`);
  const proc = spawn(exe, ['--http', `127.0.0.1:${httpPort}`, '--line', `127.0.0.1:${linePort}`, '--data', dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; if (stderr.length > 200000) stderr = stderr.slice(-100000); });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const addr = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('server did not print its listening line in 15 s\n' + stderr)), 15000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /natter listening http=(\S+) line=(\S+)/.exec(out);
      if (m) { clearTimeout(timer); resolve({ http: m[1], line: m[2] }); }
    });
    exited.then(({ code, signal }) => { clearTimeout(timer); reject(new Error(`server exited (${code ?? signal}) before listening\n${stderr}`)); });
  });
  let stopped = null;
  return {
    ...addr,
    dataDir,
    pid: proc.pid,
    url: `http://${addr.http}/`,
    log: () => stderr,
    exited,
    stop() {
      if (stopped) return stopped;
      stopped = (async () => {
        try { process.kill(proc.pid, 'SIGTERM'); } catch { /* gone */ }
        const t = setTimeout(() => { try { process.kill(proc.pid, 'SIGKILL'); } catch { /* gone */ } }, 10000);
        const r = await exited;
        clearTimeout(t);
        return r;
      })();
      return stopped;
    },
  };
}

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** One browser: its own Chromium with a fresh --user-data-dir. */
export async function openBrowser({ width = 1100, height = 720, mobile = false } = {}) {
  const dir = tempDir('natter-chromium-');
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    // A page answered by ctx.route() is not seen as coming from loopback: let it reach the server.
    args: process.env.NATTER_WEB_FROM_FILE ? [...ARGS, '--disable-features=LocalNetworkAccessChecks'] : ARGS,
    viewport: { width, height },
    isMobile: mobile,
    hasTouch: mobile,
    timeout: 30000,
  });
  ctx.setDefaultTimeout(10000);
  if (process.env.NATTER_WEB_FROM_FILE) {
    // For work on the page: serve core/web/index.html from disk instead of the binary's copy.
    await ctx.route((u) => u.pathname === '/' || u.pathname === '/index.html', (route) => route.fulfill({
      status: 200, contentType: 'text/html; charset=utf-8', body: fs.readFileSync(path.join(ROOT, 'core', 'web', 'index.html'), 'utf8'),
    }));
  }
  const page = ctx.pages()[0] || await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  return {
    ctx, page, errors,
    async close() { await ctx.close().catch(() => {}); fs.rmSync(dir, { recursive: true, force: true }); },
  };
}

export async function shot(page, name) {
  fs.mkdirSync(OUT, { recursive: true });
  const file = path.join(OUT, `${path.basename(BIN)}-${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

// ---------- page actions

export async function signIn(page, server, { mode = 'guest', user, password = 'correct-horse-1' }) {
  await page.goto(server.url);
  await page.click(`.seg button[data-mode="${mode === 'login' ? 'signin' : mode}"]`);
  await page.fill('#login-name', user);
  if (mode !== 'guest') await page.fill('#login-password', password);
  await page.click('#login-submit');
  await waitConnected(page);
}

export async function waitConnected(page, timeout = 15000) {
  await page.waitForSelector('body[data-conn="open"]', { timeout });
  await page.waitForSelector('#app:not([hidden])', { timeout });
}

export async function openChan(page, key) {
  await page.click(`.sidebar [data-key="${key}"]`);
  await page.waitForSelector(`#timeline[data-key="${key}"]`);
}

export async function send(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

/** The confirmed messages of the timeline in view: [{seq, from, text}]. */
export function timeline(page) {
  return page.$$eval('#timeline .msg[data-seq]', (els) => els.map((e) => ({
    seq: Number(e.dataset.seq), from: e.dataset.from, text: e.querySelector('.text').textContent,
  })));
}

export async function waitForText(page, text, timeout = 10000) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#timeline .msg[data-seq] .text')].some((e) => e.textContent === t), text, { timeout });
}

export async function register(server, user, password = 'correct-horse-1') {
  const res = await fetch(`http://${server.http}/api/register`, { method: 'POST', body: JSON.stringify({ user, password }) });
  if (res.status !== 201) throw new Error(`register ${user}: ${res.status} ${await res.text()}`);
}

// ---------- a line-protocol client over raw TCP

export async function lineClient(server, firstLine) {
  const [host, port] = [server.line.slice(0, server.line.lastIndexOf(':')), Number(server.line.slice(server.line.lastIndexOf(':') + 1))];
  const sock = net.connect({ host, port });
  sock.setEncoding('utf8');
  const lines = [];
  let buf = '';
  const waiters = [];
  sock.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i).replace(/\r$/, ''));
      buf = buf.slice(i + 1);
    }
    for (const w of [...waiters]) w();
  });
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  const client = {
    lines,
    write(line) { sock.write(line + '\n'); },
    /** Waits for a line matching `re` (a RegExp or an exact string). */
    waitFor(re, timeout = 10000) {
      const test = (l) => (typeof re === 'string' ? l === re : re.test(l));
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = lines.find(test);
          if (hit !== undefined) { cleanup(); resolve(hit); }
        };
        const timer = setTimeout(() => { cleanup(); reject(new Error(`line client: no line matching ${re} in ${timeout} ms; got:\n${lines.join('\n')}`)); }, timeout);
        const cleanup = () => { clearTimeout(timer); const k = waiters.indexOf(check); if (k >= 0) waiters.splice(k, 1); };
        waiters.push(check);
        check();
      });
    },
    close() { sock.destroy(); },
  };
  client.write(firstLine);
  return client;
}

/** The HTTP status of a WebSocket upgrade of /ws?token=TOKEN (101 when the token is good). */
export function upgradeStatus(server, token) {
  const [host, port] = [server.http.slice(0, server.http.lastIndexOf(':')), Number(server.http.slice(server.http.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const req = http.request({
      host, port, path: '/ws?token=' + encodeURIComponent(token),
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' },
    });
    req.on('upgrade', (res, socket) => { socket.destroy(); resolve(res.statusCode); });
    req.on('response', (res) => { res.resume(); resolve(res.statusCode); });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    req.end();
  });
}
