// The web client, served at /app.js as a module (a file of its own so that the
// page's Content-Security-Policy can forbid inline scripts).
// ============================================================== utilities
const NAME_RE = /^[A-Za-z0-9_.-]{1,32}$/;
const NAME_RULE = 'Names have 1 to 32 characters: letters, digits, _ - and .';
const HISTORY_PAGE = 50;
const TYPING_SEND_MS = 3000;     // send `typing` at most this often while composing
const TYPING_SHOW_MS = 6000;     // show someone as typing this long after their last `typing`
const GROUP_MS = 5 * 60 * 1000;  // messages this close by one sender are grouped
const MAX_NOTES = 300;

const $ = (id) => document.getElementById(id);

/** Creates an element. Strings among the children become text nodes, never HTML. */
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    // Through the CSSOM: a style attribute would be inline style, which the
    // page's Content-Security-Policy forbids.
    else if (k === 'style') for (const [p, pv] of Object.entries(v)) e.style.setProperty(p, pv);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) if (kid != null && kid !== false) e.append(kid);
  return e;
}

function randomId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return 'w' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function hue(name) {
  let h = 7;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return h % 360;
}

function avatar(name, small) {
  return el('span', { class: small ? 'avatar small' : 'avatar', 'aria-hidden': 'true', style: { '--hue': String(hue(name)) } },
    name.slice(0, 1).toUpperCase());
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
const dayYearFmt = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'long', day: 'numeric' });

function dayKey(ts) { const d = new Date(ts); return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`; }
function dayLabel(ts) {
  const d = new Date(ts), now = new Date();
  const start = (x) => new Date(x.getFullYear(), x.getMonth(), x.getDate()).getTime();
  const days = Math.round((start(now) - start(d)) / 86400000);
  if (days === 0) return 'Today';
  if (days === 1) return 'Yesterday';
  return d.getFullYear() === now.getFullYear() ? dayFmt.format(d) : dayYearFmt.format(d);
}
function timeEl(ts) {
  const d = new Date(ts);
  return el('time', { datetime: d.toISOString(), title: fullFmt.format(d) }, timeFmt.format(d));
}

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/g;
/** Fills `node` with `text` as text; web addresses become links (built as elements, never parsed). */
function fillText(node, text) {
  node.textContent = '';
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    const url = m[0].replace(/[.,;:!?)\]}]+$/, '');
    if (m.index > last) appendVisible(node, text.slice(last, m.index));
    node.append(el('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, url));
    last = m.index + url.length;
  }
  if (last < text.length) appendVisible(node, text.slice(last));
}

// Control characters other than tab and line breaks (C0, DEL, C1) and the
// Unicode line and paragraph separators. Browsers draw them as nothing, a
// box, or a line break; here each is shown as what it is, written as the
// line port writes it, in ASCII (control pictures such as ␛ show as boxes in
// many fonts).
const CONTROL_RE = /\r(?!\n)|[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u2028\u2029]/g;
/** ESC as ^[, CR as ^M, DEL as ^?; C1 and U+2028/9 as \u0085 and the like. */
function controlEscape(c) {
  const code = c.charCodeAt(0);
  if (code < 0x20) return '^' + String.fromCharCode(code + 0x40);
  if (code === 0x7f) return '^?';
  return '\\u' + code.toString(16).padStart(4, '0');
}
/** Appends `text` to `node`, each control character as a small marked escape. */
function appendVisible(node, text) {
  let last = 0;
  for (const m of text.matchAll(CONTROL_RE)) {
    if (m.index > last) node.append(text.slice(last, m.index));
    const code = 'U+' + m[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0');
    node.append(el('span', { class: 'ctl', title: code }, controlEscape(m[0])));
    last = m.index + 1;
  }
  if (last < text.length) node.append(text.slice(last));
}

const store = {
  get(k, d) { try { const v = localStorage.getItem('natter.' + k); return v == null ? d : JSON.parse(v); } catch { return d; } },
  set(k, v) { try { localStorage.setItem('natter.' + k, JSON.stringify(v)); } catch { /* full or disabled */ } },
  del(k) { try { localStorage.removeItem('natter.' + k); } catch { /* disabled */ } },
};

/**
 * A guest's `resume` secret, per tab: a reload or a reconnect comes back as
 * the same guest (its resends are recognised, its conversations go on);
 * another tab, or another person later, is a new guest.
 */
const guestResume = {
  get(name) { try { return sessionStorage.getItem('natter.resume.' + name); } catch { return null; } },
  set(name, v) { try { sessionStorage.setItem('natter.resume.' + name, v); } catch { /* disabled */ } },
  del(name) { try { sessionStorage.removeItem('natter.resume.' + name); } catch { /* disabled */ } },
};

// ============================================================== HTTP API
class ApiError extends Error {
  constructor(code, message, status = 0, retryAfter = 0) { super(message); this.code = code; this.status = status; this.retryAfter = retryAfter; }
}

async function api(path, body, token) {
  const headers = {};
  if (body) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = 'Bearer ' + token;
  let res;
  try {
    res = await fetch(path, { method: 'POST', headers, body: body ? JSON.stringify(body) : undefined, cache: 'no-store' });
  } catch {
    throw new ApiError('network', 'Can’t reach the server. Check your connection and try again.');
  }
  let data = null;
  try { data = await res.json(); } catch { /* 204 or not JSON */ }
  if (!res.ok) {
    const ra = parseInt(res.headers.get('Retry-After') || '', 10);
    throw new ApiError(data?.error || 'http_' + res.status, data?.message || res.statusText, res.status, Number.isFinite(ra) ? ra : 0);
  }
  return data;
}

// ============================================================== state
/** One room or direct conversation. */
class Chan {
  constructor(kind, name) {
    this.kind = kind;            // 'room' | 'dm'
    this.name = name;            // room name, or the other user
    this.key = (kind === 'room' ? 'r:' : 'd:') + name;
    this.msgs = [];              // confirmed messages, ascending seq
    this.bySeq = new Map();
    this.byId = new Map();       // sender + client id -> seq: one message however often it was stored
    this.hiddenMax = 0;          // the highest seq received but not shown (a twice-stored retry)
    this.notes = [];             // presence notes: {after, n, text, ts, el}
    this.pending = [];           // own messages without a seq yet: {id, text, created, state, error, el}
    this.base = 0;               // the seq this client knew when it first learnt of the chan
    this.baseKnown = false;
    this.latest = 0;             // the newest seq known to exist
    this.read = 0;               // the read mark shown (own messages count as read)
    this.serverRead = 0;         // the read mark the server has
    this.members = null;
    this.joined = false;         // placed in the room on the current connection
    this.joining = false;
    this.histLoading = false;
    this.histDone = false;
    this.histError = '';
    this.lost = 0;               // > 0: messages up to this seq are no longer stored
    this.typing = new Map();     // user -> until (ms)
    this.activity = 0;           // for ordering conversations
    this.divider = null;         // seq after which the "new" line is drawn
    this.els = new Map();        // cached day separators etc.
  }
  get maxSeen() { return Math.max(this.hiddenMax, this.msgs.length ? this.msgs[this.msgs.length - 1].seq : 0); }
  /** What to give `join` as `since` after a reconnect. */
  get since() { return Math.max(this.base, this.maxSeen); }
  get unread() { return Math.max(0, this.latest - this.read); }
  get label() { return this.kind === 'room' ? '#' + this.name : this.name; }
}

const S = {
  me: null,            // {user, token?, guest}
  chans: new Map(),    // key -> Chan
  active: null,        // Chan in view
  online: new Set(),   // users online now (`who`)
  roomDir: [],         // `rooms`
  conn: 'idle',        // idle | connecting | open | waiting | kicked | offline
  everWelcomed: false,
  signingOut: false,
  noteN: 0,
};

function chanFor(key, create = true) {
  let c = S.chans.get(key);
  if (!c && create) {
    const kind = key.startsWith('r:') ? 'room' : 'dm';
    c = new Chan(kind, key.slice(2));
    S.chans.set(key, c);
  }
  return c;
}
const roomKey = (name) => 'r:' + name;
const dmKey = (name) => 'd:' + name;

function removeChan(chan) {
  S.chans.delete(chan.key);
  if (S.active === chan) {
    S.active = null;
    const next = [...S.chans.values()].find((c) => c.kind === 'room') || S.chans.values().next().value;
    if (next) activate(next); else invalidate('all');
  }
  saveGuestRooms();
  invalidate('side');
}

function saveGuestRooms() {
  if (!S.me?.guest) return;
  store.set('rooms.' + S.me.user, [...S.chans.values()].filter((c) => c.kind === 'room').map((c) => c.name));
}

// The outbox: own messages not yet acknowledged, kept across reloads.
function saveOutbox() {
  if (!S.me) return;
  const all = [];
  for (const c of S.chans.values()) {
    for (const p of c.pending) all.push({ id: p.id, key: c.key, text: p.text, created: p.created, state: p.state, error: p.error });
  }
  if (all.length) store.set('outbox.' + S.me.user, all); else store.del('outbox.' + S.me.user);
}
function loadOutbox() {
  for (const p of store.get('outbox.' + S.me.user, [])) {
    if (typeof p?.key !== 'string' || typeof p.text !== 'string' || typeof p.id !== 'string') continue;
    const chan = chanFor(p.key);
    chan.pending.push({ id: p.id, text: p.text, created: p.created || Date.now(), state: p.state === 'failed' ? 'failed' : 'pending', error: p.error || null });
  }
}

/** Adds a message (live, replayed or from history); false when its seq is already there. */
function addMessage(chan, m) {
  if (typeof m.seq !== 'number') return false;
  const have = chan.bySeq.get(m.seq);
  if (have) {
    if (have.local && m.ts) { have.ts = m.ts; have.local = false; have.el = null; }
    return false;
  }
  if (typeof m.id === 'string' && typeof m.from === 'string') {
    // A retry the server stored twice (it only knows a guest's ids for one session): show it once.
    const k = m.from + '\n' + m.id;
    const first = chan.byId.get(k);
    if (first != null && first !== m.seq) {
      chan.latest = Math.max(chan.latest, m.seq);
      if (m.seq > chan.maxSeen) chan.hiddenMax = m.seq;
      if (m.from === S.me.user && m.seq === chan.latest) chan.read = Math.max(chan.read, m.seq);
      return false;
    }
    chan.byId.set(k, m.seq);
  }
  const msg = { seq: m.seq, from: m.from, text: String(m.text ?? ''), ts: m.ts || Date.now(), id: m.id, local: !!m.local, el: null };
  chan.bySeq.set(msg.seq, msg);
  const a = chan.msgs;
  if (!a.length || a[a.length - 1].seq < msg.seq) a.push(msg);
  else {
    let lo = 0, hi = a.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (a[mid].seq < msg.seq) lo = mid + 1; else hi = mid; }
    a.splice(lo, 0, msg);
  }
  chan.latest = Math.max(chan.latest, msg.seq);
  chan.activity = Math.max(chan.activity, msg.ts);
  if (msg.from === S.me.user) {
    // Our own message (this session or another): it is read, and ends a pending copy.
    if (msg.seq === chan.latest) chan.read = Math.max(chan.read, msg.seq);
    if (msg.id) {
      const i = chan.pending.findIndex((p) => p.id === msg.id);
      if (i >= 0) { chan.pending.splice(i, 1); saveOutbox(); }
    }
  }
  chan.typing.delete(msg.from);
  return true;
}

function addNote(chan, text, cls) {
  // A note follows the newest message known; before the room's seq is known (our own join comes
  // ahead of the join's `ok`) it waits at the end, and the `ok` pins it.
  chan.notes.push({ after: chan.baseKnown ? chan.latest : null, n: ++S.noteN, text, ts: Date.now(), cls, el: null });
  if (chan.notes.length > MAX_NOTES) chan.notes.shift();
}

// ============================================================== connection
const Net = {
  ws: null,
  refs: new Map(),      // ref -> {resolve, reject, timer}
  nextRef: 1,
  queue: [],            // frames waiting for the rate limiter
  tokens: 30,
  refilled: 0,
  pumpTimer: 0,
  retryTimer: 0,
  retryAt: 0,
  attempt: 0,
  lastCode: 0,
  heartbeat: 30,
  lastRx: 0,
  pingSent: 0,
  nameTakenTries: 0,
  lastSendId: null,
};
// The server allows 20 messages a second with bursts of 40 per connection; stay below.
const RATE = 15, BURST = 30;

function wsUrl() { return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws'; }

function setConn(state, extra = {}) {
  S.conn = state;
  Object.assign(Net, extra);
  document.body.dataset.conn = state;
  invalidate('banner', 'side', 'timeline');
}

function connect() {
  if (!S.me || S.conn === 'kicked') return;
  clearTimeout(Net.retryTimer);
  dropSocket();
  setConn('connecting');
  let ws;
  try { ws = new WebSocket(wsUrl()); } catch { return scheduleReconnect(1006); }
  Net.ws = ws;
  ws.onopen = () => {
    if (ws !== Net.ws) return;
    Net.lastRx = Date.now();
    Net.tokens = BURST; Net.refilled = Date.now(); Net.queue = [];
    const hello = S.me.token ? { type: 'hello', token: S.me.token } : { type: 'hello', name: S.me.user };
    const resume = S.me.token ? null : guestResume.get(S.me.user);
    if (resume) hello.resume = resume;
    hello.ref = 'hello';
    rawSend(hello);
  };
  ws.onmessage = (e) => {
    if (ws !== Net.ws) return;
    Net.lastRx = Date.now();
    Net.pingSent = 0;
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    if (m && typeof m === 'object') dispatch(m);
  };
  ws.onclose = (e) => { if (ws === Net.ws) onDrop(e.code, e.reason); };
}

/** Forgets the current socket without reacting to its close. */
function dropSocket(code = 1000) {
  const ws = Net.ws;
  Net.ws = null;
  if (ws) { ws.onopen = ws.onmessage = ws.onclose = null; try { ws.close(code); } catch { /* already closed */ } }
  for (const { reject, timer } of Net.refs.values()) { clearTimeout(timer); reject(new ApiError('disconnected', 'not connected')); }
  Net.refs.clear();
  Net.queue = [];
  clearTimeout(Net.pumpTimer);
  for (const c of S.chans.values()) { c.joined = false; c.joining = false; for (const p of c.pending) p.inflight = false; }
}

function onDrop(code) {
  const welcomed = S.conn === 'open';
  const lastSend = Net.lastSendId;
  dropSocket();
  if (S.signingOut || !S.me) return;
  if (code === 4001) return endSession('Your session has ended (signed out or expired). Please sign in again.');
  if (code === 4003) { setConn('kicked', { lastCode: code }); invalidate('all'); return; }
  if (code === 1009 && lastSend) {
    // The server found our last frame too big: do not send it again.
    for (const c of S.chans.values()) for (const p of c.pending) {
      if (p.id === lastSend) { p.state = 'failed'; p.error = { code: 'too_big', message: 'This message is too big to send.' }; }
    }
    saveOutbox();
  }
  if (!welcomed && !S.everWelcomed && S.pendingLogin) {
    // The very first connection failed: tell the sign-in form.
    S.pendingLogin.reject(new ApiError('network', 'Can’t reach the server. Check your connection and try again.'));
    return;
  }
  scheduleReconnect(code);
  invalidate('all');
}

function scheduleReconnect(code) {
  clearTimeout(Net.retryTimer);
  let delay;
  if (code === 1012) {
    delay = 300 + Math.random() * 2700;  // service restart: spread the crowd over a few seconds
  } else {
    const cap = Math.min(30000, 1000 * 2 ** Math.min(Net.attempt, 5));
    delay = cap / 2 + Math.random() * cap / 2;
  }
  Net.attempt++;
  if (code === 1012) Net.restarting = true;
  if (!navigator.onLine) { setConn('offline', { lastCode: code }); return; }
  setConn('waiting', { lastCode: code, retryAt: Date.now() + delay });
  Net.retryTimer = setTimeout(connect, delay);
}

function reconnectNow() {
  if (!S.me) return;
  if (S.conn === 'waiting' || S.conn === 'offline' || S.conn === 'kicked') { S.conn = 'idle'; connect(); }
}

/** Sends a frame now, bypassing the queue (only `hello`). */
function rawSend(obj) {
  const ws = Net.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  Net.tokens -= 1;
  if (obj.type === 'send') Net.lastSendId = obj.id;
  ws.send(JSON.stringify(obj));
  return true;
}

function enqueue(obj) {
  if (obj.type === 'typing' && Net.queue.length) return;  // not worth waiting for
  Net.queue.push(obj);
  pump();
}

function pump() {
  clearTimeout(Net.pumpTimer);
  const now = Date.now();
  Net.tokens = Math.min(BURST, Net.tokens + (now - Net.refilled) * RATE / 1000);
  Net.refilled = now;
  while (Net.queue.length && Net.tokens >= 1) {
    if (!rawSend(Net.queue.shift())) { Net.queue = []; return; }
  }
  if (Net.queue.length) Net.pumpTimer = setTimeout(pump, Math.ceil((1 - Net.tokens) * 1000 / RATE) + 5);
}

/** A request with a `ref`: resolves with the `ok`, rejects with the `error` (or on disconnect). */
function request(obj, timeoutMs = 20000) {
  if (S.conn !== 'open') return Promise.reject(new ApiError('disconnected', 'not connected'));
  const ref = 'r' + (Net.nextRef++);
  return new Promise((resolve, reject) => {
    const timer = timeoutMs ? setTimeout(() => { Net.refs.delete(ref); reject(new ApiError('timeout', 'The server did not answer.')); }, timeoutMs) : 0;
    Net.refs.set(ref, { resolve, reject, timer });
    enqueue({ ...obj, ref });
  });
}
const fire = (obj) => request(obj).catch(() => {});

function dispatch(m) {
  switch (m.type) {
    case 'welcome': return onWelcome(m);
    case 'ok': case 'pong': case 'error': {
      if (m.ref === 'hello' || (m.type === 'error' && m.request === 'hello')) return onHelloError(m);
      const r = m.ref != null && Net.refs.get(m.ref);
      if (r) {
        Net.refs.delete(m.ref);
        clearTimeout(r.timer);
        if (m.type === 'error') r.reject(new ApiError(m.code, m.message)); else r.resolve(m);
      } else if (m.type === 'error') {
        console.warn('natter: server error', m);
      }
      return;
    }
    case 'message': return onRoomMessage(m);
    case 'private': return onPrivate(m);
    case 'presence': return onPresence(m);
    case 'typing': return onTyping(m);
    case 'read': return onRead(m);
    default: return;  // the server may add types
  }
}

function onHelloError(m) {
  dropSocket();
  const code = m.code;
  if (S.pendingLogin) { S.pendingLogin.reject(new ApiError(code, m.message)); return; }
  if (code === 'invalid_token' || code === 'guests_disabled' || code === 'bad_name') {
    return endSession(code === 'invalid_token' ? 'Your session has expired. Please sign in again.' : helloMessage(code, m.message));
  }
  if (code === 'name_taken' && S.me?.guest) {
    // Our previous guest session may still be open on the server for a while after a drop.
    if (++Net.nameTakenTries > 8) return endSession(helloMessage(code, m.message));
  }
  scheduleReconnect(1006);
}

function helloMessage(code, message) {
  switch (code) {
    case 'name_taken': return 'That name belongs to an account or to someone online right now. Pick another guest name, or sign in.';
    case 'bad_name': return NAME_RULE;
    case 'guests_disabled': return 'This server does not allow guests. Create an account or sign in.';
    case 'invalid_token': return 'Your session has expired. Please sign in again.';
    default: return message || 'The server refused the session (' + code + ').';
  }
}

async function onWelcome(m) {
  const first = !S.everWelcomed;
  S.everWelcomed = true;
  S.me.user = m.user;
  S.me.guest = !!m.guest;
  renderMe();
  if (S.me.guest && typeof m.resume === 'string') guestResume.set(m.user, m.resume);
  Net.heartbeat = Math.max(5, Number(m.heartbeat_s) || 30);
  Net.attempt = 0;
  Net.nameTakenTries = 0;
  Net.restarting = false;
  const wasDown = S.conn !== 'open' && !first;
  setConn('open');
  if (S.pendingLogin) { const p = S.pendingLogin; S.pendingLogin = null; p.resolve(); }
  if (wasDown) flashBanner('Connected again.');

  // Rooms: the server's list for a registered user; our own list for a guest.
  const toJoin = [];
  if (!S.me.guest && Array.isArray(m.rooms)) {
    const listed = new Set();
    for (const r of m.rooms) {
      if (typeof r?.room !== 'string') continue;
      listed.add(r.room);
      const chan = chanFor(roomKey(r.room));
      if (!chan.baseKnown) { chan.base = r.seq || 0; chan.baseKnown = true; }
      chan.latest = Math.max(chan.latest, r.seq || 0);
      chan.read = Math.max(chan.read, r.read || 0);
      chan.serverRead = Math.max(chan.serverRead, r.read || 0);
      if (first && chan.base === (r.seq || 0)) {
        // This session is in the room already, and live messages follow `seq`: no join needed.
        chan.joined = true;
        flushPending(chan);
      } else {
        toJoin.push(chan);  // back after a drop: `join` with `since` replays what we missed
      }
    }
    for (const chan of [...S.chans.values()]) {
      if (chan.kind !== 'room' || listed.has(chan.name)) continue;
      // Left in another session while we were away, unless we have something to send there.
      if (chan.pending.length || (first && !chan.baseKnown)) toJoin.push(chan); else removeChan(chan);
    }
  } else {
    for (const chan of S.chans.values()) if (chan.kind === 'room') toJoin.push(chan);
  }
  // A newcomer starts in lobby, where line-protocol users are; someone who left it stays out.
  if (first && !toJoin.length && !S.chans.size && (S.me.guest || !store.get('started.' + S.me.user, false))) toJoin.push(chanFor(roomKey('lobby')));
  if (!S.me.guest) store.set('started.' + S.me.user, true);
  for (const chan of toJoin) joinRoom(chan);

  // Private messages to send again (their rooms' ones go after each join).
  for (const chan of S.chans.values()) if (chan.kind === 'dm') flushPending(chan);

  refreshDirectory();
  refreshOnline();
  refreshConversations();
  if (!S.active) {
    const want = S.wantView || store.get('view.' + S.me.user, null);
    let c = typeof want === 'string' && S.chans.get(want);
    if (!c && typeof want === 'string' && NAME_RE.test(want.slice(2))) {
      if (want.startsWith('d:')) c = chanFor(want);
      else if (want === S.wantView && want.startsWith('r:')) { c = chanFor(want); joinRoom(c); }
    }
    c = c || [...S.chans.values()].find((x) => x.kind === 'room') || [...S.chans.values()][0];
    const focus = first && (document.activeElement === document.body || $('login').contains(document.activeElement));
    if (c) activate(c, { focus });
  } else if (S.active.kind === 'dm') {
    ensureHistory(S.active);
  }
  invalidate('all');
}

async function joinRoom(chan, { userAction = false } = {}) {
  const frame = { type: 'join', room: chan.name };
  const withSince = chan.baseKnown;
  if (withSince) frame.since = chan.since;
  chan.joining = true;
  try {
    const ok = await request(frame);
    chan.joining = false;
    chan.joined = true;
    if (typeof ok.members === 'number') chan.members = ok.members;
    if (!chan.baseKnown) { chan.base = ok.seq || 0; chan.baseKnown = true; }
    chan.latest = Math.max(chan.latest, ok.seq || 0);
    for (const n of chan.notes) if (n.after == null) n.after = chan.base;
    if (withSince && ok.recovered === false) {
      chan.lost = Math.max(chan.lost, (ok.oldest || 1) - 1);
      addNote(chan, 'Some messages from while you were away are no longer stored.', 'gap');
    }
    saveGuestRooms();
    flushPending(chan);
    if (chan === S.active) ensureHistory(chan);
    invalidate('side', 'timeline', 'head');
    return ok;
  } catch (e) {
    chan.joining = false;
    if (e.code === 'disconnected' || e.code === 'timeout') { if (userAction) throw e; return null; }
    if (userAction) { if (!chan.msgs.length && !chan.pending.length) removeChan(chan); throw e; }
    addNote(chan, `Could not join #${chan.name}: ${e.message}`, 'gap');
    invalidate('timeline');
    return null;
  }
}

function refreshDirectory() {
  return request({ type: 'rooms', limit: 200 }).then((ok) => {
    S.roomDir = Array.isArray(ok.rooms) ? ok.rooms : [];
    for (const r of S.roomDir) { const c = S.chans.get(roomKey(r.room)); if (c) c.members = r.members; }
    invalidate('side', 'head', 'dialogs');
  }, () => {});
}

let onlineTimer = 0;
function refreshOnline(delay = 0) {
  clearTimeout(onlineTimer);
  onlineTimer = setTimeout(() => {
    request({ type: 'who', limit: 500 }).then((ok) => {
      S.online = new Set((ok.users || []).filter((u) => u.online !== false).map((u) => u.user));
      invalidate('side', 'head', 'dialogs', 'members');
    }, () => {});
  }, delay);
}

function refreshConversations() {
  return request({ type: 'conversations', limit: 200 }).then((ok) => {
    (ok.conversations || []).forEach((cv, i) => {
      if (typeof cv?.with !== 'string') return;
      const chan = chanFor(dmKey(cv.with));
      chan.latest = Math.max(chan.latest, cv.seq || 0);
      chan.read = Math.max(chan.read, cv.read || 0);
      chan.serverRead = Math.max(chan.serverRead, cv.read || 0);
      if (!chan.activity) chan.activity = -i - 1;
    });
    invalidate('side', 'title');
  }, () => {});
}

// ============================================================== events
function onRoomMessage(m) {
  if (typeof m.room !== 'string') return;
  let chan = S.chans.get(roomKey(m.room));
  if (!chan) {
    // Joined in another session of ours: membership belongs to the user.
    chan = chanFor(roomKey(m.room));
    chan.base = m.seq - 1; chan.baseKnown = true;
    joinRoom(chan);
  }
  if (addMessage(chan, m)) afterIncoming(chan);
}

function onPrivate(m) {
  const other = m.from === S.me.user ? m.to : m.from;
  if (typeof other !== 'string') return;
  const chan = chanFor(dmKey(other));
  if (addMessage(chan, m)) afterIncoming(chan);
  if (m.to === S.me.user) scheduleAck(chan, m.seq);
}

function afterIncoming(chan) {
  invalidate('side', 'title');
  if (chan === S.active) { invalidate('timeline', 'typing'); scheduleRead(); }
  else if (chan.typing.size) invalidate('side');
}

// Offline delivery: tell the server which private messages this client has.
const ackWant = new Map();
let ackTimer = 0;
function scheduleAck(chan, seq) {
  if (S.me.guest) return;
  if (seq > (ackWant.get(chan.name) || 0)) ackWant.set(chan.name, seq);
  clearTimeout(ackTimer);
  ackTimer = setTimeout(() => {
    for (const [who, s] of ackWant) {
      const c = S.chans.get(dmKey(who));
      if (c && s > (c.acked || 0)) { c.acked = s; fire({ type: 'ack', with: who, seq: s }); }
    }
    ackWant.clear();
  }, 150);
}

function onPresence(m) {
  const { room, user, state } = m;
  if (typeof user !== 'string') return;
  if (state === 'online') S.online.add(user);
  else if (state === 'offline') S.online.delete(user);
  refreshOnline(400);
  if (typeof room !== 'string') { invalidate('side'); return; }
  let chan = S.chans.get(roomKey(room));
  if (!chan) {
    if (user === S.me.user && state === 'join') { chan = chanFor(roomKey(room)); joinRoom(chan); invalidate('side'); }
    return;
  }
  if (state === 'join') {
    if (user === S.me.user) {
      if (!chan.joinNoted) addNote(chan, `You joined #${room}.`);
      chan.joinNoted = true;
    } else {
      addNote(chan, `${user} joined #${room}.`);
      if (chan.members != null) chan.members++;
    }
  } else if (state === 'leave') {
    if (user === S.me.user) { removeChan(chan); return; }
    addNote(chan, `${user} left #${room}.`);
    if (chan.members != null) chan.members = Math.max(0, chan.members - 1);
    chan.typing.delete(user);
  }
  if (chan === S.active) { invalidate('timeline', 'head', 'typing'); if (S.membersOpen) loadMembers(); }
}

function onTyping(m) {
  if (m.user === S.me.user || typeof m.user !== 'string') return;
  const chan = S.chans.get(typeof m.room === 'string' ? roomKey(m.room) : dmKey(m.user));
  if (!chan) return;
  chan.typing.set(m.user, Date.now() + TYPING_SHOW_MS);
  invalidate('typing', 'side');
  startTypingTicker();
}

function onRead(m) {
  const chan = typeof m.room === 'string' ? S.chans.get(roomKey(m.room)) : typeof m.with === 'string' ? S.chans.get(dmKey(m.with)) : null;
  if (chan && typeof m.seq === 'number') { chan.read = Math.max(chan.read, m.seq); chan.serverRead = Math.max(chan.serverRead, m.seq); invalidate('side', 'title'); }
}

let typingTicker = 0;
function startTypingTicker() {
  if (typingTicker) return;
  typingTicker = setInterval(() => {
    const now = Date.now();
    let any = false;
    for (const c of S.chans.values()) {
      for (const [u, until] of c.typing) if (until <= now) { c.typing.delete(u); invalidate('typing', 'side'); }
      if (c.typing.size) any = true;
    }
    if (!any) { clearInterval(typingTicker); typingTicker = 0; }
  }, 1000);
}

// ============================================================== actions
function activate(chan, { focus = false } = {}) {
  if (!chan) return;
  if (S.active !== chan) {
    if (S.active) S.active.divider = null;
    S.active = chan;
    chan.divider = chan.unread > 0 ? chan.read : null;
    S.scrollTo = 'open';
    store.set('view.' + S.me.user, chan.key);
    const hash = '#/' + (chan.kind === 'room' ? 'room/' : 'dm/') + encodeURIComponent(chan.name);
    if (location.hash !== hash) history.replaceState(null, '', hash);
    $('input').value = chan.draft || '';
    autosize();
  }
  document.getElementById('app').classList.remove('drawer');
  $('btn-menu').setAttribute('aria-expanded', 'false');
  ensureHistory(chan);
  scheduleRead();
  if (S.membersOpen) { if (chan.kind === 'room') loadMembers(); else setMembersOpen(false); }
  invalidate('all');
  if (focus && !matchMedia('(pointer: coarse)').matches) $('input').focus();
}

function ensureHistory(chan) {
  if (!chan.histStarted && !chan.histDone) loadOlder(chan);
}

async function loadOlder(chan) {
  if (chan.histLoading || chan.histDone || S.conn !== 'open') return;
  if (chan.kind === 'room' && !chan.joined) return;  // comes again once joined
  const before = chan.msgs.length ? chan.msgs[0].seq : null;
  chan.histStarted = true;
  if (before != null && (before <= 1 || before <= chan.lost + 1)) { chan.histDone = true; invalidate('timeline'); return; }
  chan.histLoading = true;
  chan.histError = '';
  invalidate('timeline');
  const frame = { type: 'history', limit: HISTORY_PAGE };
  if (before != null) frame.before = before;
  if (chan.kind === 'room') frame.room = chan.name; else frame.with = chan.name;
  try {
    const ok = await request(frame);
    const list = Array.isArray(ok.messages) ? ok.messages : [];
    for (const m of list) addMessage(chan, m);
    if (list.length < HISTORY_PAGE || (chan.msgs[0] && chan.msgs[0].seq <= 1)) chan.histDone = true;
  } catch (e) {
    if (e.code !== 'disconnected') chan.histError = e.message || e.code;
    chan.histStarted = false;
  } finally {
    chan.histLoading = false;
    invalidate('timeline', 'side', 'title');
    if (chan === S.active) scheduleRead();
  }
}

let readTimer = 0;
function scheduleRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const chan = S.active;
    if (!chan || S.conn !== 'open' || document.visibilityState !== 'visible') return;
    const seq = chan.maxSeen;
    if (seq > chan.serverRead) {
      chan.read = Math.max(chan.read, seq);
      chan.serverRead = seq;
      const frame = { type: 'read', seq };
      if (chan.kind === 'room') frame.room = chan.name; else frame.with = chan.name;
      fire(frame);
      invalidate('side', 'title');
    }
  }, 300);
}

function sendMessage(chan, text) {
  const p = { id: randomId(), text, created: Date.now(), state: 'pending', error: null };
  chan.pending.push(p);
  saveOutbox();
  S.scrollTo = 'bottom';
  invalidate('timeline');
  sendPending(chan, p);
}

function flushPending(chan) {
  for (const p of chan.pending) if (p.state === 'pending') sendPending(chan, p);
}

function sendPending(chan, p) {
  if (S.conn !== 'open' || p.inflight) return;
  if (chan.kind === 'room' && !chan.joined) return;  // goes after the join
  p.inflight = true;
  const frame = { type: 'send', text: p.text, id: p.id };
  if (chan.kind === 'room') frame.room = chan.name; else frame.to = chan.name;
  request(frame, 0).then((ok) => {
    p.inflight = false;
    const i = chan.pending.indexOf(p);
    if (i >= 0) chan.pending.splice(i, 1);
    if (typeof ok.seq === 'number' && !chan.bySeq.has(ok.seq)) {
      // A private message is not echoed to the session that sent it.
      addMessage(chan, { seq: ok.seq, from: S.me.user, text: p.text, ts: Date.now(), id: p.id, local: true });
      if (chan.kind === 'dm') chan.read = Math.max(chan.read, ok.seq);
    }
    saveOutbox();
    if (chan === S.active) scheduleRead();
    invalidate('timeline', 'side', 'title');
  }, (e) => {
    p.inflight = false;
    if (e.code === 'disconnected') return;  // sent again after the reconnect, with the same id
    if (e.code === 'rate_limited' && (p.tries = (p.tries || 0) + 1) <= 3) {
      p.error = { code: e.code, message: 'Sending too fast — retrying…' };
      setTimeout(() => { if (chan.pending.includes(p) && p.state === 'pending') { p.error = null; sendPending(chan, p); invalidate('timeline'); } }, 1200 * p.tries);
    } else {
      p.state = 'failed';
      p.error = { code: e.code, message: sendErrorText(e) };
      saveOutbox();
    }
    invalidate('timeline');
  });
}

function sendErrorText(e) {
  switch (e.code) {
    case 'too_long': return 'Too long to send. Shorten it and try again.';
    case 'rate_limited': return 'Not sent: you are sending too fast.';
    case 'not_member': return 'Not sent: you are not a member of this room.';
    case 'no_such_user': return 'Not sent: there is no such user.';
    case 'unavailable': return 'Not sent: the server could not store it.';
    default: return 'Not sent: ' + (e.message || e.code);
  }
}

function retryPending(chan, p) {
  p.state = 'pending'; p.error = null; p.tries = 0;
  saveOutbox();
  sendPending(chan, p);
  invalidate('timeline');
}
function discardPending(chan, p) {
  const i = chan.pending.indexOf(p);
  if (i >= 0) chan.pending.splice(i, 1);
  saveOutbox();
  invalidate('timeline');
}

let lastTyping = 0, lastTypingKey = '';
function composing() {
  const chan = S.active;
  if (!chan || S.conn !== 'open' || !$('input').value.trim()) return;
  const now = Date.now();
  if (now - lastTyping < TYPING_SEND_MS && lastTypingKey === chan.key) return;
  if (chan.kind === 'room' && !chan.joined) return;
  lastTyping = now; lastTypingKey = chan.key;
  enqueue(chan.kind === 'room' ? { type: 'typing', room: chan.name } : { type: 'typing', to: chan.name });
}

async function leaveRoom(chan) {
  try {
    await request({ type: 'leave', room: chan.name });
  } catch (e) {
    if (e.code !== 'not_member') { flashBanner('Could not leave: ' + e.message, 'bad'); return; }
  }
  removeChan(chan);
}

// ============================================================== rendering
const dirty = new Set();
let frame = 0;
function invalidate(...parts) {
  for (const p of parts) dirty.add(p);
  if (!frame) frame = requestAnimationFrame(flush);
}
function flush() {
  frame = 0;
  const all = dirty.has('all');
  const has = (p) => all || dirty.has(p);
  const parts = { side: has('side'), head: has('head'), timeline: has('timeline'), typing: has('typing'), banner: has('banner'), dialogs: has('dialogs'), members: has('members') };
  dirty.clear();
  if (!S.me) return;
  if (parts.banner) renderBanner();
  if (parts.side) renderSidebar();
  if (parts.head) renderHead();
  if (parts.timeline) renderTimeline();
  if (parts.typing) renderTyping();
  if (parts.dialogs) renderDialogLists();
  if (parts.members && S.membersOpen) renderMembers();
  renderTitle();
}

function renderTitle() {
  let n = 0;
  for (const c of S.chans.values()) if (c !== S.active || document.visibilityState !== 'visible') n += c.unread;
  const where = S.active ? S.active.label + ' · ' : '';
  document.title = (n ? `(${n}) ` : '') + where + 'Natter';
}

let bannerTick = 0, flash = null;
function flashBanner(text, kind = 'good') {
  flash = { text, kind, until: Date.now() + 2500 };
  invalidate('banner');
  setTimeout(() => invalidate('banner'), 2600);
}
function renderBanner() {
  const b = $('banner'), t = $('banner-text'), btn = $('banner-btn');
  clearTimeout(bannerTick);
  let text = '', kind = '', button = '';
  switch (S.conn) {
    case 'connecting':
      text = Net.restarting ? 'The server is restarting. Reconnecting…' : S.everWelcomed ? 'Reconnecting…' : 'Connecting…';
      break;
    case 'waiting': {
      const s = Math.max(1, Math.ceil((Net.retryAt - Date.now()) / 1000));
      text = (Net.restarting ? 'The server is restarting.' : 'Connection lost.') + ` Reconnecting in ${s}s…`;
      button = 'Reconnect now';
      bannerTick = setTimeout(() => invalidate('banner'), 500);
      break;
    }
    case 'offline': text = 'You are offline. Waiting for the network…'; button = 'Try now'; break;
    case 'kicked': text = 'The server disconnected this session.'; kind = 'bad'; button = 'Reconnect'; break;
    default:
      if (flash && flash.until > Date.now()) { text = flash.text; kind = flash.kind; }
  }
  b.hidden = !text;
  b.className = 'banner' + (kind ? ' ' + kind : '');
  t.textContent = text;
  btn.hidden = !button;
  btn.textContent = button;
}

function memberCount(n) {
  const e = el('span', { class: 'count', title: `${n} member${n === 1 ? '' : 's'}` });
  // A small person icon, drawn inline.
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', 'M8 8a3 3 0 1 0 0-6 3 3 0 0 0 0 6zm-5.5 6.5C2.5 11.5 5 10 8 10s5.5 1.5 5.5 4.5z');
  svg.append(path);
  e.append(svg, String(n));
  return e;
}

function sideItem(chan) {
  const isActive = chan === S.active;
  const unread = isActive && document.visibilityState === 'visible' ? 0 : chan.unread;
  const typing = chan.kind === 'dm' && chan.typing.size && !isActive;
  const kids = chan.kind === 'room'
    ? [el('span', { class: 'hash', 'aria-hidden': 'true' }, '#'), el('span', { class: 'label' }, chan.name),
      chan.members != null && !unread ? memberCount(chan.members) : null]
    : [el('span', { class: 'dot' + (S.online.has(chan.name) ? ' on' : ''), title: S.online.has(chan.name) ? 'online' : 'offline' }),
      el('span', { class: 'label' }, chan.name), typing ? el('span', { class: 'sub' }, 'typing…') : null];
  if (unread) kids.push(el('span', { class: 'badge' }, unread > 99 ? '99+' : String(unread)));
  const label = chan.kind === 'room'
    ? `Room ${chan.name}${chan.members != null ? `, ${chan.members} members` : ''}${unread ? `, ${unread} unread` : ''}`
    : `Conversation with ${chan.name}${S.online.has(chan.name) ? ', online' : ''}${unread ? `, ${unread} unread` : ''}`;
  return el('li', {}, el('button', {
    type: 'button', class: 'side-item' + (unread ? ' unread' : ''), 'aria-current': isActive ? 'page' : null,
    'aria-label': label, dataset: { key: chan.key }, onclick: () => activate(chan, { focus: true }),
  }, kids));
}

function renderSidebar() {
  const rooms = [...S.chans.values()].filter((c) => c.kind === 'room').sort((a, b) => a.name.localeCompare(b.name));
  const dms = [...S.chans.values()].filter((c) => c.kind === 'dm').sort((a, b) => b.activity - a.activity || a.name.localeCompare(b.name));
  const focused = document.activeElement?.dataset?.key;
  $('room-list').replaceChildren(...rooms.map(sideItem));
  if (!rooms.length) $('room-list').append(el('li', { class: 'side-empty' }, 'No rooms yet.'));
  $('dm-list').replaceChildren(...dms.map(sideItem));
  if (!dms.length) $('dm-list').append(el('li', { class: 'side-empty' }, 'No conversations yet.'));
  const others = [...S.online].filter((u) => u !== S.me.user).sort((a, b) => a.localeCompare(b));
  $('online-h').textContent = `Online — ${S.online.size || (S.conn === 'open' ? 1 : 0)}`;
  $('online-list').replaceChildren(...others.map((u) => el('li', {}, el('button', {
    type: 'button', class: 'side-item', dataset: { key: 'u:' + u }, 'aria-label': `${u}, online: send a direct message`,
    onclick: () => activate(chanFor(dmKey(u)), { focus: true }),
  }, el('span', { class: 'dot on' }), el('span', { class: 'label' }, u)))));
  if (!others.length) $('online-list').append(el('li', { class: 'side-empty' }, S.conn === 'open' ? 'Nobody else is online.' : '—'));
  if (focused) document.querySelector(`.sidebar [data-key="${CSS.escape(focused)}"]`)?.focus();
  renderMe();
  $('me-status').textContent = (S.me.guest ? 'Guest · ' : '') + ({ open: 'online', connecting: 'connecting…', waiting: 'reconnecting…', offline: 'offline', kicked: 'disconnected' }[S.conn] || '');
}

/** Who is signed in, at the foot of the sidebar: drawn at once when the
 *  session starts, so a name from an earlier attempt never shows beside a
 *  connected state (the rest of the sidebar waits for the next frame). */
function renderMe() {
  if (!S.me) return;
  $('me-avatar').replaceChildren(avatar(S.me.user));
  $('me-name').textContent = S.me.user;
}

function renderHead() {
  const chan = S.active;
  $('btn-members').hidden = $('btn-leave').hidden = !chan || chan.kind !== 'room';
  if (!chan) { $('chan-name').textContent = 'Natter'; $('chan-sub').textContent = ''; return; }
  $('chan-name').textContent = chan.label;
  if (chan.kind === 'room') {
    $('chan-sub').textContent = chan.members != null ? `${chan.members} member${chan.members === 1 ? '' : 's'}` : '';
    $('btn-members').textContent = chan.members != null ? `Members (${chan.members})` : 'Members';
  } else {
    $('chan-sub').textContent = chan.name === S.me.user ? 'Notes to yourself' : S.online.has(chan.name) ? 'online' : 'offline';
  }
  $('input').placeholder = 'Message ' + chan.label;
}

function renderTyping() {
  const chan = S.active;
  const names = chan ? [...chan.typing.keys()] : [];
  const t = $('typing');
  if (!names.length) { t.textContent = ''; return; }
  let who;
  if (names.length === 1) who = `${names[0]} is typing`;
  else if (names.length === 2) who = `${names[0]} and ${names[1]} are typing`;
  else if (names.length === 3) who = `${names[0]}, ${names[1]} and ${names[2]} are typing`;
  else who = 'Several people are typing';
  t.replaceChildren(el('span', { class: 'dots' }, who));
}

function msgEl(chan, m) {
  const text = el('div', { class: 'text' });
  fillText(text, m.text);
  return el('div', { class: 'msg', dataset: { seq: m.seq, from: m.from }, role: 'article' },
    avatar(m.from),
    el('div', { class: 'gutter-time' }, timeEl(m.ts)),
    el('div', { class: 'body' },
      el('div', { class: 'meta' }, el('span', { class: 'from' }, m.from), m.from === S.me.user ? el('span', { class: 'tag' }, 'you') : null, timeEl(m.ts)),
      text));
}

function pendingEl(chan, p) {
  const text = el('div', { class: 'text' });
  fillText(text, p.text);
  const state = el('div', { class: 'state' });
  const e = el('div', { class: 'msg pending', dataset: { id: p.id, from: S.me.user }, role: 'article' },
    avatar(S.me.user), el('div', { class: 'gutter-time' }),
    el('div', { class: 'body' }, el('div', { class: 'meta' }, el('span', { class: 'from' }, S.me.user), el('span', { class: 'tag' }, 'you')), text, state));
  e._state = state;
  return e;
}

function updatePendingEl(chan, p) {
  const e = p.el;
  e.className = 'msg ' + (p.state === 'failed' ? 'failed' : 'pending');
  e.dataset.state = p.state;
  const state = e._state;
  const key = p.state + '|' + (p.error?.message || '') + '|' + S.conn;
  if (e._key === key) return;
  e._key = key;
  if (p.state === 'failed') {
    state.replaceChildren(el('span', { class: 'err', role: 'alert' }, '⚠ ' + p.error.message),
      p.error.code === 'too_long' || p.error.code === 'too_big'
        ? el('button', { type: 'button', onclick: () => { discardPending(chan, p); $('input').value = p.text; autosize(); $('input').focus(); } }, 'Edit')
        : el('button', { type: 'button', onclick: () => retryPending(chan, p) }, 'Retry'),
      el('button', { type: 'button', onclick: () => discardPending(chan, p) }, 'Discard'));
  } else {
    state.replaceChildren(el('span', {}, p.error ? p.error.message : S.conn === 'open' ? 'Sending…' : 'Waiting for the connection…'));
  }
}

function cached(chan, key, make) {
  let e = chan.els.get(key);
  if (!e) { e = make(); chan.els.set(key, e); }
  return e;
}

function renderTimeline() {
  const tl = $('timeline');
  const chan = S.active;
  $('empty').hidden = !!chan;
  tl.parentElement.hidden = !chan;
  $('composer').hidden = !chan;
  if (!chan) { tl.replaceChildren(); return; }
  const switched = tl.dataset.key !== chan.key;
  if (switched) { tl.replaceChildren(); tl.dataset.key = chan.key; }

  // Where the reader is, to keep it there.
  const fromBottom = tl.scrollHeight - tl.scrollTop - tl.clientHeight;
  const atBottom = fromBottom < 40;
  let anchor = null, anchorTop = 0;
  if (!switched && !atBottom) {
    // The first message or note in view (not the status line on top, which stays first).
    for (const c of tl.children) {
      if (c.classList.contains('tl-top') || c.classList.contains('day')) continue;
      if (c.offsetTop + c.offsetHeight > tl.scrollTop) { anchor = c; anchorTop = c.offsetTop - tl.scrollTop; break; }
    }
  }

  // The items, in order.
  const items = [];
  const top = cached(chan, 'top', () => el('div', { class: 'tl-top' }));
  const topText = chan.histLoading ? 'Loading older messages…'
    : chan.histError ? 'Could not load older messages: ' + chan.histError
    : chan.histDone ? (chan.lost ? 'Older messages are no longer stored.' : 'This is the beginning.')
    : '';
  if (top._text !== topText) {
    top._text = topText;
    const title = chan.kind === 'room' ? '#' + chan.name : chan.name === S.me.user ? 'Notes to yourself' : 'Conversation with ' + chan.name;
    top.replaceChildren(chan.histDone && !chan.lost ? el('strong', {}, title) : null, topText);
  }
  items.push(top);

  let prev = null, lastDay = '', dividerDone = chan.divider == null;
  const notes = chan.notes;
  let ni = 0;
  const day = (ts) => {
    const dk = dayKey(ts);
    if (dk === lastDay) return;
    lastDay = dk;
    items.push(cached(chan, 'day:' + dk, () => el('div', { class: 'day', role: 'separator' }, dayLabel(ts))));
    prev = null;
  };
  const pushNote = (n) => {
    if (!n.el) n.el = el('div', { class: 'note' + (n.cls ? ' ' + n.cls : '') }, el('span', {}, n.text), timeEl(n.ts));
    day(n.ts);
    items.push(n.el);
    prev = null;
  };
  for (const m of chan.msgs) {
    while (ni < notes.length && (notes[ni].after ?? Infinity) < m.seq) pushNote(notes[ni++]);
    day(m.ts);
    if (!dividerDone && m.seq > chan.divider && m.from !== S.me.user) {
      dividerDone = true;
      items.push(cached(chan, 'divider', () => el('div', { class: 'new-divider', role: 'separator' }, 'New')));
      prev = null;
    }
    if (!m.el) m.el = msgEl(chan, m);
    m.el.classList.toggle('cont', !!prev && prev.from === m.from && m.ts - prev.ts < GROUP_MS);
    items.push(m.el);
    prev = m;
  }
  while (ni < notes.length) pushNote(notes[ni++]);
  for (const p of chan.pending) {
    if (!p.el) p.el = pendingEl(chan, p);
    updatePendingEl(chan, p);
    p.el.classList.toggle('cont', !!prev && prev.from === S.me.user && Date.now() - (prev.ts || 0) < GROUP_MS);
    items.push(p.el);
    prev = { from: S.me.user, ts: p.created };
  }

  // Reconcile: move what moved, add what is new, drop what went away.
  let cur = tl.firstChild;
  for (const e of items) {
    if (cur === e) { cur = cur.nextSibling; continue; }
    tl.insertBefore(e, cur);
  }
  while (cur) { const next = cur.nextSibling; cur.remove(); cur = next; }

  // Scroll.
  const want = S.scrollTo;
  S.scrollTo = want === 'open' && !chan.msgs.length && !chan.histDone ? 'open' : null;
  if (switched || want === 'open') {
    const div = chan.els.get('divider');
    if (div && div.isConnected && chan.divider != null) div.scrollIntoView({ block: 'center' });
    else tl.scrollTop = tl.scrollHeight;
  } else if (want === 'bottom' || atBottom) {
    tl.scrollTop = tl.scrollHeight;
  } else if (anchor && anchor.isConnected) {
    tl.scrollTop = anchor.offsetTop - anchorTop;
  }
  updateJump();
  // Fill the screen: fetch more while the top is in view.
  if (!chan.histDone && !chan.histLoading && !chan.histError && tl.scrollTop < 400) queueMicrotask(() => loadOlder(chan));
}

function updateJump() {
  const tl = $('timeline');
  $('jump').hidden = tl.scrollHeight - tl.scrollTop - tl.clientHeight < 300;
}

function renderDialogLists() {
  if ($('dlg-join').open) {
    const mine = new Set([...S.chans.values()].filter((c) => c.kind === 'room').map((c) => c.name));
    const list = S.roomDir.filter((r) => !mine.has(r.room));
    $('join-list').replaceChildren(...list.map((r) => el('li', {}, el('button', {
      type: 'button', onclick: () => { $('join-name').value = r.room; submitJoin(); },
    }, el('span', { class: 'label' }, '#' + r.room), el('span', { class: 'count' }, `${r.members} member${r.members === 1 ? '' : 's'}`)))));
    if (!list.length) $('join-list').append(el('li', { class: 'hint', style: { padding: '10px 4px' } }, 'No other rooms yet: type a name to create one.'));
  }
  if ($('dlg-dm').open) {
    const users = [...S.online].filter((u) => u !== S.me.user).sort();
    $('dm-pick').replaceChildren(...users.map((u) => el('li', {}, el('button', {
      type: 'button', onclick: () => { $('dm-name').value = u; submitDm(); },
    }, el('span', { class: 'dot on' }), el('span', { class: 'label' }, u)))));
  }
}

function setMembersOpen(open) {
  S.membersOpen = open;
  $('members').hidden = !open;
  $('btn-members').setAttribute('aria-expanded', String(open));
  if (open) loadMembers();
}
async function loadMembers() {
  const chan = S.active;
  if (!chan || chan.kind !== 'room') return;
  try {
    const ok = await request({ type: 'who', room: chan.name, limit: 1000 });
    S.memberList = { key: chan.key, users: ok.users || [] };
    invalidate('members');
  } catch { /* shown next time */ }
}
function renderMembers() {
  const data = S.memberList;
  const chan = S.active;
  $('members-h').textContent = chan ? `Members of #${chan.name}` : 'Members';
  if (!data || !chan || data.key !== chan.key) { $('members-list').replaceChildren(el('li', { class: 'hint', style: { padding: '8px' } }, 'Loading…')); return; }
  const users = [...data.users].sort((a, b) => (b.online === true) - (a.online === true) || a.user.localeCompare(b.user));
  $('members-list').replaceChildren(...users.map((u) => el('li', {}, el('button', {
    type: 'button', class: u.online ? '' : 'off', onclick: () => activate(chanFor(dmKey(u.user)), { focus: true }),
    'aria-label': `${u.user}, ${u.online ? 'online' : 'offline'}: send a direct message`,
  }, el('span', { class: 'dot' + (u.online ? ' on' : '') }), avatar(u.user, true), el('span', {}, u.user)))));
}

// ============================================================== composer and controls
function autosize() {
  const t = $('input');
  t.style.height = 'auto';
  t.style.height = Math.min(t.scrollHeight, window.innerHeight * 0.4) + 'px';
}

$('input').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    submitComposer();
  }
});
$('input').addEventListener('input', () => {
  autosize();
  if (S.active) S.active.draft = $('input').value;
  composing();
});
$('composer').addEventListener('submit', (e) => { e.preventDefault(); submitComposer(); $('input').focus(); });

function submitComposer() {
  const chan = S.active;
  const text = $('input').value.replace(/\s+$/, '');
  if (!chan || !text.trim()) return;
  $('input').value = '';
  chan.draft = '';
  autosize();
  sendMessage(chan, text);
}

$('timeline').addEventListener('scroll', () => {
  const tl = $('timeline');
  updateJump();
  if (S.active && tl.scrollTop < 400) loadOlder(S.active);
}, { passive: true });
$('jump').addEventListener('click', () => { const tl = $('timeline'); tl.scrollTop = tl.scrollHeight; updateJump(); });

$('banner-btn').addEventListener('click', reconnectNow);
$('btn-signout').addEventListener('click', signOut);
$('btn-leave').addEventListener('click', () => {
  const chan = S.active;
  if (chan?.kind === 'room' && confirm(`Leave #${chan.name}?`)) leaveRoom(chan);
});
$('btn-members').addEventListener('click', () => setMembersOpen(!S.membersOpen));
$('members-close').addEventListener('click', () => setMembersOpen(false));

function setDrawer(open) {
  $('app').classList.toggle('drawer', open);
  $('btn-menu').setAttribute('aria-expanded', String(open));
  if (open) $('sidebar').querySelector('[aria-current="page"], .side-item, button')?.focus();
}
$('btn-menu').addEventListener('click', () => setDrawer(!$('app').classList.contains('drawer')));
$('scrim').addEventListener('click', () => setDrawer(false));

// Dialogs: join/create a room, start a conversation.
for (const d of document.querySelectorAll('dialog')) {
  d.querySelector('[data-close]').addEventListener('click', () => d.close());
}
$('btn-join').addEventListener('click', () => {
  $('join-error').hidden = true;
  $('join-name').value = '';
  $('dlg-join').showModal();
  refreshDirectory();
  invalidate('dialogs');
});
$('join-form').addEventListener('submit', (e) => { e.preventDefault(); submitJoin(); });
async function submitJoin() {
  const name = $('join-name').value.trim().replace(/^#/, '');
  const err = $('join-error');
  const show = (t) => { err.textContent = t; err.hidden = false; };
  if (!NAME_RE.test(name)) return show(NAME_RULE);
  if (S.conn !== 'open') return show('Not connected. Try again once the connection is back.');
  const existing = S.chans.get(roomKey(name));
  if (existing) { $('dlg-join').close(); activate(existing, { focus: true }); return; }
  const chan = chanFor(roomKey(name));
  try {
    await joinRoom(chan, { userAction: true });
    $('dlg-join').close();
    activate(chan, { focus: true });
    refreshDirectory();
  } catch (e) {
    show(e.code === 'too_many_rooms' ? 'You are in too many rooms. Leave one first.' : e.code === 'bad_name' ? NAME_RULE : (e.message || e.code));
  }
}

$('btn-dm').addEventListener('click', () => {
  $('dm-error').hidden = true;
  $('dm-name').value = '';
  $('dlg-dm').showModal();
  refreshOnline();
  invalidate('dialogs');
});
$('dm-form').addEventListener('submit', (e) => { e.preventDefault(); submitDm(); });
function submitDm() {
  const name = $('dm-name').value.trim().replace(/^@/, '');
  if (!NAME_RE.test(name)) { $('dm-error').textContent = NAME_RULE; $('dm-error').hidden = false; return; }
  $('dlg-dm').close();
  activate(chanFor(dmKey(name)), { focus: true });
}

// Keyboard: Alt+Up/Down walks the conversations; Escape closes drawers.
document.addEventListener('keydown', (e) => {
  if (!S.me || $('app').hidden) return;
  if (e.altKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
    const order = [...document.querySelectorAll('#room-list .side-item, #dm-list .side-item')];
    const keys = order.map((b) => b.dataset.key);
    if (!keys.length) return;
    e.preventDefault();
    let i = S.active ? keys.indexOf(S.active.key) : -1;
    i = e.key === 'ArrowUp' ? (i <= 0 ? keys.length - 1 : i - 1) : (i + 1) % keys.length;
    activate(S.chans.get(keys[i]), { focus: true });
  } else if (e.key === 'Escape') {
    if ($('app').classList.contains('drawer')) setDrawer(false);
    else if (S.membersOpen) setMembersOpen(false);
  }
});

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    scheduleRead();
    if (S.conn === 'waiting') reconnectNow();
    invalidate('side');
  }
});
window.addEventListener('online', () => { if (S.conn === 'offline' || S.conn === 'waiting') reconnectNow(); });
window.addEventListener('offline', () => invalidate('banner'));
window.addEventListener('hashchange', () => { const c = chanFromHash(); if (c) activate(c); });
window.addEventListener('storage', (e) => {
  // Signed out in another tab.
  if (e.key === 'natter.auth' && e.newValue == null && S.me && !S.me.guest) endSession('You signed out in another tab.');
});

function keyFromHash() {
  const m = /^#\/(room|dm)\/(.+)$/.exec(location.hash);
  if (!m) return null;
  let name;
  try { name = decodeURIComponent(m[2]); } catch { return null; }
  return NAME_RE.test(name) ? (m[1] === 'room' ? 'r:' : 'd:') + name : null;
}
function chanFromHash() {
  const key = keyFromHash();
  if (!key || !S.me) return null;
  if (key.startsWith('d:')) return chanFor(key);
  if (S.chans.has(key)) return S.chans.get(key);
  if (S.conn === 'open') { const c = chanFor(key); joinRoom(c); return c; }
  return null;
}

// Keep the online list and the member counts fresh.
setInterval(() => { if (S.conn === 'open') { refreshOnline(); refreshDirectory(); } }, 30000);

// Liveness: if the server has been silent for a heartbeat, ping it; no answer in 10 s means a dead link.
setInterval(() => {
  if (S.conn !== 'open' || !Net.ws) return;
  const now = Date.now();
  if (Net.pingSent && now - Net.pingSent > 10000) {
    Net.pingSent = 0;
    onDrop(1006);
  } else if (!Net.pingSent && now - Net.lastRx > Net.heartbeat * 1000) {
    Net.pingSent = now;
    enqueue({ type: 'ping' });
  }
}, 2000);

// ============================================================== session start and end
function startApp() {
  $('login').hidden = true;
  $('app').hidden = false;
  invalidate('all');
}

function resetState() {
  dropSocket();
  clearTimeout(Net.retryTimer);
  S.chans = new Map();
  S.active = null;
  S.online = new Set();
  S.roomDir = [];
  S.everWelcomed = false;
  S.membersOpen = false;
  S.memberList = null;
  $('members').hidden = true;
  Net.attempt = 0;
  Net.restarting = false;
  setConn('idle');
}

/** Starts a session for `me`; resolves at `welcome`, rejects on a refused `hello`. */
function beginSession(me, { waitForWelcome }) {
  resetState();
  S.me = me;
  renderMe();
  S.signingOut = false;
  if (me.guest) for (const r of store.get('rooms.' + me.user, [])) if (NAME_RE.test(r)) chanFor(roomKey(r));
  loadOutbox();
  S.wantView = keyFromHash();
  const done = waitForWelcome ? new Promise((resolve, reject) => { S.pendingLogin = { resolve, reject }; }) : null;
  connect();
  return done;
}

function endSession(message) {
  const user = S.me?.user;
  resetState();
  if (S.me?.guest && user) store.del('rooms.' + user);
  S.me = null;
  store.del('auth');
  showLogin(message, user);
}

async function signOut() {
  if (!S.me) return;
  S.signingOut = true;
  const me = S.me;
  if (me.token) { try { await api('/api/logout', null, me.token); } catch { /* revoked or unreachable: forget it anyway */ } }
  resetState();
  store.del('auth');
  store.del('outbox.' + me.user);
  store.del('view.' + me.user);
  if (me.guest) { store.del('rooms.' + me.user); guestResume.del(me.user); }
  S.me = null;
  history.replaceState(null, '', location.pathname);
  showLogin('You are signed out.', me.user, 'info');
}

// ---------- the sign-in screen
let loginMode = 'signin';
let retryUntil = 0, retryTimer = 0;

function showLogin(message, name, kind) {
  document.title = 'Natter — sign in';
  $('app').hidden = true;
  $('login').hidden = false;
  if (name) $('login-name').value = name;
  setLoginMode(loginMode);
  loginError(message || '', kind);
  ($('login-name').value ? (loginMode === 'guest' ? $('login-name') : $('login-password')) : $('login-name')).focus();
}

function loginError(text, kind) {
  const e = $('login-error');
  e.textContent = text;
  e.hidden = !text;
  e.style.background = kind === 'info' ? 'var(--panel)' : '';
  e.style.color = kind === 'info' ? 'var(--fg)' : '';
}

function setLoginMode(mode) {
  loginMode = mode;
  for (const b of document.querySelectorAll('.seg button')) b.setAttribute('aria-pressed', String(b.dataset.mode === mode));
  $('login-pw-field').hidden = mode === 'guest';
  $('login-password').autocomplete = mode === 'register' ? 'new-password' : 'current-password';
  $('login-tagline').textContent = { signin: 'Sign in to chat.', register: 'Create an account: your rooms and messages wait for you.', guest: 'Chat as a guest: nothing is kept after you leave.' }[mode];
  $('login-hint').textContent = mode === 'register' ? 'Name: 1–32 of A–Z a–z 0–9 _ - . · Password: at least 8 characters.' : mode === 'guest' ? 'Pick a name that no account and nobody online uses.' : '';
  updateSubmit();
}
for (const b of document.querySelectorAll('.seg button')) {
  b.addEventListener('click', () => { setLoginMode(b.dataset.mode); loginError(''); $('login-name').focus(); });
}

function updateSubmit() {
  const btn = $('login-submit');
  const wait = Math.ceil((retryUntil - Date.now()) / 1000);
  clearTimeout(retryTimer);
  if (wait > 0) {
    btn.disabled = true;
    btn.textContent = `Try again in ${wait}s`;
    retryTimer = setTimeout(updateSubmit, 500);
    return;
  }
  if (retryUntil) { retryUntil = 0; loginError(''); }
  btn.disabled = !!S.loginBusy;
  btn.textContent = S.loginBusy ? 'Please wait…' : { signin: 'Sign in', register: 'Create account', guest: 'Continue as guest' }[loginMode];
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (S.loginBusy || retryUntil > Date.now()) return;
  const user = $('login-name').value.trim();
  const password = $('login-password').value;
  if (!NAME_RE.test(user)) { loginError(NAME_RULE); $('login-name').focus(); return; }
  if (loginMode !== 'guest' && loginMode === 'register' && password.length < 8) { loginError('The password needs at least 8 characters.'); $('login-password').focus(); return; }
  if (loginMode === 'signin' && !password) { loginError('Enter your password.'); $('login-password').focus(); return; }
  S.loginBusy = true;
  loginError('');
  updateSubmit();
  try {
    if (loginMode === 'guest') {
      const me = { user, guest: true };
      await beginSession(me, { waitForWelcome: true });
      store.set('auth', me);
    } else {
      if (loginMode === 'register') await api('/api/register', { user, password });
      const r = await api('/api/login', { user, password });
      const me = { user: r.user || user, token: r.token, guest: false };
      store.set('auth', me);
      beginSession(me, { waitForWelcome: false });
    }
    $('login-password').value = '';
    startApp();
  } catch (err) {
    S.pendingLogin = null;
    if (loginMode === 'guest') { resetState(); S.me = null; }
    loginError(loginErrorText(err));
    if (err.status === 429) { retryUntil = Date.now() + Math.max(1, err.retryAfter || 60) * 1000; }
  } finally {
    S.loginBusy = false;
    updateSubmit();
  }
});

function loginErrorText(err) {
  if (err.status === 429 || err.code === 'rate_limited') {
    const s = err.retryAfter || 60;
    return `Too many attempts. Wait ${s} second${s === 1 ? '' : 's'} and try again.`;
  }
  switch (err.code) {
    case 'name_taken': return loginMode === 'register' ? 'That name is taken. Choose another, or sign in if it is yours.' : helloMessage('name_taken');
    case 'bad_name': return NAME_RULE;
    case 'bad_password': return 'Passwords have 8 to 1024 characters.';
    case 'invalid_credentials': return 'Wrong name or password.';
    case 'guests_disabled': return helloMessage('guests_disabled');
    case 'network': return err.message;
    default:
      if (err.status === 401) return 'Wrong name or password.';
      return err.message || 'Something went wrong (' + err.code + ').';
  }
}

// ---------- boot
const saved = store.get('auth', null);
if (saved && typeof saved.user === 'string' && NAME_RE.test(saved.user) && (saved.token || saved.guest)) {
  beginSession({ user: saved.user, token: saved.token, guest: !!saved.guest }, { waitForWelcome: false });
  startApp();
} else {
  showLogin('');
}
