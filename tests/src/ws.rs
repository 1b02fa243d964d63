//! A WebSocket client (tungstenite over a blocking `TcpStream` with read
//! timeouts) that speaks the JSON protocol.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

use crate::http::percent_encode;
use crate::server::{Account, Server};
use crate::{ty, uniq, TIMEOUT};

/// What the next read brought.
#[derive(Debug)]
pub enum Incoming {
    /// Any frame-level message other than a close (text, binary, ping, pong).
    Message(Message),
    /// Nothing before the deadline.
    Timeout,
    /// The connection is closed: `Some(code)` if a close frame came,
    /// `None` if the stream ended or was reset without one.
    Closed(Option<u16>),
}

/// An HTTP answer that refused the WebSocket upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// A WebSocket session.
pub struct WsClient {
    ws: WebSocket<TcpStream>,
    pending: VecDeque<Value>,
    /// Default wait for things that should come promptly.
    pub timeout: Duration,
    next_ref: u64,
    closed: Option<Option<u16>>,
    /// The user name once welcomed (for messages), or a label.
    pub user: String,
    /// The `welcome` this session got, or `null`.
    pub welcome: Value,
}

impl WsClient {
    /// Opens `GET /ws` without sending anything.
    pub fn connect(server: &Server) -> WsClient {
        Self::connect_path(server.http, "/ws")
    }

    /// Opens `GET /ws?token=...`; the server sends `welcome` at once (not read here).
    pub fn connect_with_token(server: &Server, token: &str) -> WsClient {
        Self::connect_path(server.http, &format!("/ws?token={}", percent_encode(token)))
    }

    /// Opens `path` on `addr`, panicking if the upgrade is refused.
    pub fn connect_path(addr: SocketAddr, path: &str) -> WsClient {
        Self::try_connect_path(addr, path)
            .unwrap_or_else(|r| panic!("WebSocket upgrade of {path} refused: HTTP {} {:?}", r.status, r.body))
    }

    /// Opens `path` on `addr`; `Err` carries the HTTP answer that refused the upgrade.
    pub fn try_connect_path(addr: SocketAddr, path: &str) -> Result<WsClient, Refused> {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let url = format!("ws://{addr}{path}");
        let mut attempt = tungstenite::client(url.as_str(), stream);
        let ws = loop {
            match attempt {
                Ok((ws, _response)) => break ws,
                Err(HandshakeError::Interrupted(mid)) => {
                    if Instant::now() >= deadline {
                        panic!("WebSocket handshake with {url} timed out after {TIMEOUT:?}");
                    }
                    attempt = mid.handshake();
                }
                Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                    let body =
                        resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                    return Err(Refused { status: resp.status().as_u16(), body });
                }
                Err(HandshakeError::Failure(e)) => {
                    panic!("WebSocket handshake with {url} failed: {e}")
                }
            }
        };
        Ok(WsClient {
            ws,
            pending: VecDeque::new(),
            timeout: TIMEOUT,
            next_ref: 1,
            closed: None,
            user: "(before hello)".to_string(),
            welcome: Value::Null,
        })
    }

    /// A guest session named after `prefix`, past `welcome`.
    pub fn guest(server: &Server, prefix: &str) -> WsClient {
        let mut c = Self::connect(server);
        let name = uniq(prefix);
        let reply = c.hello_guest(&name);
        assert_eq!(ty(&reply), "welcome", "guest hello {name}: {reply}");
        c
    }

    /// A session of `account` (hello with its token), past `welcome`.
    pub fn user(server: &Server, account: &Account) -> WsClient {
        let mut c = Self::connect(server);
        let reply = c.hello_token(&account.token);
        assert_eq!(ty(&reply), "welcome", "hello of {}: {reply}", account.name);
        c
    }

    /// Sends a guest `hello` (with a `ref`) and returns the reply.
    pub fn hello_guest(&mut self, name: &str) -> Value {
        let reply = self.request("hello", json!({ "name": name }));
        self.note_welcome(&reply);
        reply
    }

    /// Sends a token `hello` (with a `ref`) and returns the reply.
    pub fn hello_token(&mut self, token: &str) -> Value {
        let reply = self.request("hello", json!({ "token": token }));
        self.note_welcome(&reply);
        reply
    }

    /// Records a `welcome` that arrived without being asked for (`?token=`).
    pub fn expect_welcome(&mut self) -> Value {
        let v = self.recv_json();
        assert_eq!(ty(&v), "welcome", "expected welcome first, got {v}");
        self.note_welcome(&v);
        v
    }

    fn note_welcome(&mut self, reply: &Value) {
        if ty(reply) == "welcome" {
            if let Some(u) = reply["user"].as_str() {
                self.user = u.to_string();
            }
            self.welcome = reply.clone();
        }
    }

    // ---- sending ----

    /// Sends one text frame carrying `v`.
    pub fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Sends one text frame.
    pub fn send_text(&mut self, text: &str) {
        let user = self.user.clone();
        self.send(Message::Text(text.to_string())).unwrap_or_else(|e| panic!("{user}: send failed: {e}"));
    }

    /// Sends any message (binary, ping, raw frame...).
    #[allow(clippy::result_large_err)] // tungstenite's own error type
    pub fn send(&mut self, msg: Message) -> tungstenite::Result<()> {
        self.ws.send(msg)
    }

    /// Sends one raw data frame (`opcode` Text, Binary or Continue) with the FIN bit as given.
    #[allow(clippy::result_large_err)] // tungstenite's own error type
    pub fn send_frame(&mut self, opcode: Data, payload: Vec<u8>, fin: bool) -> tungstenite::Result<()> {
        self.ws.send(Message::Frame(Frame::message(payload, OpCode::Data(opcode), fin)))
    }

    /// The tungstenite socket, for anything else.
    pub fn socket(&mut self) -> &mut WebSocket<TcpStream> {
        &mut self.ws
    }

    fn fresh_ref(&mut self) -> String {
        let r = format!("r{}", self.next_ref);
        self.next_ref += 1;
        r
    }

    /// Sends request `ty` with `fields` and a fresh `ref`; returns the ref.
    pub fn send_request(&mut self, ty: &str, fields: Value) -> String {
        let r = self.fresh_ref();
        let mut obj: Map<String, Value> = match fields {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => panic!("request fields must be an object, not {other}"),
        };
        obj.insert("type".into(), Value::String(ty.to_string()));
        obj.insert("ref".into(), Value::String(r.clone()));
        self.send_json(Value::Object(obj));
        r
    }

    /// Sends request `ty` with `fields` and a fresh `ref` and returns the
    /// answer carrying that `ref`; other events are kept for later reads.
    pub fn request(&mut self, ty: &str, fields: Value) -> Value {
        let r = self.send_request(ty, fields);
        self.reply_to(&r)
    }

    /// Like [`request`](Self::request), asserting the answer is `ok`.
    pub fn ok(&mut self, ty: &str, fields: Value) -> Value {
        let shown = fields.to_string();
        let reply = self.request(ty, fields);
        assert_eq!(crate::ty(&reply), "ok", "{}: {ty} {shown} answered {reply}", self.user);
        reply
    }

    /// Like [`request`](Self::request), asserting the answer is an `error`
    /// (with the `ref` and a string `message`); returns its `code`.
    pub fn error(&mut self, ty: &str, fields: Value) -> String {
        let shown = fields.to_string();
        let reply = self.request(ty, fields);
        assert_error_shape(&reply, &format!("{}: {ty} {shown}", self.user));
        reply["code"].as_str().unwrap().to_string()
    }

    /// The answer carrying `r`, from what is buffered or what comes next.
    pub fn reply_to(&mut self, r: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["ref"] == r) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.wire_json(deadline) {
                Ok(Some(v)) if v["ref"] == r => return v,
                Ok(Some(v)) => self.pending.push_back(v),
                Ok(None) => panic!("{}: no answer to ref {r:?} within {:?}", self.user, self.timeout),
                Err(why) => panic!("{}: no answer to ref {r:?}: {why}", self.user),
            }
        }
    }

    // ---- receiving ----

    /// The next frame-level event before `deadline`, without touching the
    /// JSON buffer. Pings are answered by tungstenite on the next read or write.
    pub fn next_incoming(&mut self, deadline: Instant) -> Incoming {
        if let Some(code) = self.closed {
            return Incoming::Closed(code);
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Incoming::Timeout;
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            let _ = self.ws.get_mut().set_read_timeout(Some(wait));
            match self.ws.read() {
                Ok(Message::Close(frame)) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    // Drive our close reply; errors do not matter any more.
                    let _ = self.ws.flush();
                    return Incoming::Closed(code);
                }
                Ok(m) => return Incoming::Message(m),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) =>
                {
                    continue
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    let code = *self.closed.get_or_insert(None);
                    return Incoming::Closed(code);
                }
                Err(tungstenite::Error::Io(_))
                | Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    let code = *self.closed.get_or_insert(None);
                    return Incoming::Closed(code);
                }
                Err(e) => panic!("{}: WebSocket error: {e}", self.user),
            }
        }
    }

    /// The next JSON message from the wire (not the buffer), skipping ping
    /// and pong frames.
    fn wire_json(&mut self, deadline: Instant) -> Result<Option<Value>, String> {
        loop {
            match self.next_incoming(deadline) {
                Incoming::Message(Message::Text(t)) => {
                    return serde_json::from_str(&t)
                        .map(Some)
                        .map_err(|e| format!("server sent a text frame that is not JSON ({e}): {t:?}"))
                }
                Incoming::Message(Message::Binary(b)) => return Err(format!("server sent a binary frame: {b:?}")),
                Incoming::Message(_) => continue,
                Incoming::Timeout => return Ok(None),
                Incoming::Closed(code) => return Err(format!("the connection is closed (close code {code:?})")),
            }
        }
    }

    /// The next JSON message (buffered first) before `deadline`.
    fn next_json(&mut self, deadline: Instant) -> Result<Value, String> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(v);
        }
        match self.wire_json(deadline)? {
            Some(v) => Ok(v),
            None => Err("nothing came before the deadline".into()),
        }
    }

    /// The next JSON message, waiting at most `timeout` (default 5 s); panics otherwise.
    pub fn recv_json(&mut self) -> Value {
        let deadline = Instant::now() + self.timeout;
        match self.next_json(deadline) {
            Ok(v) => v,
            Err(why) => panic!("{}: waited {:?} for a message: {why}", self.user, self.timeout),
        }
    }

    /// The next JSON message within `timeout`, or `None` (panics if the connection closes).
    pub fn try_recv_json(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        let deadline = Instant::now() + timeout;
        self.wire_json(deadline).unwrap_or_else(|why| panic!("{}: {why}", self.user))
    }

    /// Every message up to and including the first one matching `pred`.
    pub fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + self.timeout;
        let mut seen = Vec::new();
        loop {
            match self.next_json(deadline) {
                Ok(v) => {
                    let done = pred(&v);
                    seen.push(v);
                    if done {
                        return seen;
                    }
                }
                Err(why) => panic!(
                    "{}: waited {:?} for a matching message: {why}; skipped {}",
                    self.user,
                    self.timeout,
                    show(&seen)
                ),
            }
        }
    }

    /// The first message matching `pred`; those before it are dropped.
    pub fn wait_for(&mut self, pred: impl FnMut(&Value) -> bool) -> Value {
        self.recv_until(pred).pop().unwrap()
    }

    /// The next `n` messages matching `pred`, in order; others are dropped.
    pub fn collect(&mut self, n: usize, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + self.timeout;
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_json(deadline) {
                Ok(v) if pred(&v) => got.push(v),
                Ok(_) => {}
                Err(why) => {
                    panic!("{}: got {} of {n} matching messages: {why}; so far {}", self.user, got.len(), show(&got))
                }
            }
        }
        got
    }

    /// Everything that arrives within `d` (buffered messages first); stops
    /// early if the connection closes.
    pub fn drain(&mut self, d: Duration) -> Vec<Value> {
        let mut got: Vec<Value> = self.pending.drain(..).collect();
        let deadline = Instant::now() + d;
        while let Ok(Some(v)) = self.wire_json(deadline) {
            got.push(v);
        }
        got
    }

    /// Asserts nothing is buffered and no message arrives within `d`.
    pub fn expect_no_message(&mut self, d: Duration) {
        assert!(
            self.pending.is_empty(),
            "{}: expected no message, but had {}",
            self.user,
            show(self.pending.make_contiguous())
        );
        if let Some(v) = self.try_recv_json(d) {
            panic!("{}: expected no message within {d:?}, got {v}", self.user);
        }
    }

    /// Asserts no message matching `pred` is buffered or arrives within `d`;
    /// other messages are kept for later reads.
    pub fn expect_none(&mut self, d: Duration, mut pred: impl FnMut(&Value) -> bool) {
        if let Some(v) = self.pending.iter().find(|v| pred(v)) {
            panic!("{}: got the unexpected {v}", self.user);
        }
        let deadline = Instant::now() + d;
        loop {
            match self.wire_json(deadline) {
                Ok(Some(v)) if pred(&v) => panic!("{}: got the unexpected {v}", self.user),
                Ok(Some(v)) => self.pending.push_back(v),
                Ok(None) => return,
                Err(why) => panic!("{}: {why}", self.user),
            }
        }
    }

    /// Takes every message buffered so far (events that came while waiting
    /// for answers), without reading more.
    pub fn take_buffered(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Throws away buffered messages and whatever arrives within `d`.
    pub fn clear(&mut self, d: Duration) {
        let _ = self.drain(d);
    }

    /// Waits (default timeout) for the server to close the connection and
    /// returns the close code (`None`: closed without a close frame).
    /// Messages before the close are dropped.
    pub fn close_code(&mut self) -> Option<u16> {
        self.close_code_within(self.timeout)
    }

    /// Like [`close_code`](Self::close_code) with an explicit wait.
    pub fn close_code_within(&mut self, timeout: Duration) -> Option<u16> {
        self.pending.clear();
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_incoming(deadline) {
                Incoming::Message(_) => {}
                Incoming::Timeout => {
                    panic!("{}: the server did not close the connection within {timeout:?}", self.user)
                }
                Incoming::Closed(code) => return code,
            }
        }
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Closes the connection from this side (close frame, then wait briefly
    /// for the server's close), so the server sees the session end.
    pub fn disconnect(mut self) {
        if self.closed.is_none() {
            let _ = self.ws.close(None);
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Incoming::Message(_) = self.next_incoming(deadline) {}
        }
    }

    // ---- conveniences that read like the protocol ----

    /// `join` `room`, asserting `ok`.
    pub fn join(&mut self, room: &str) -> Value {
        self.ok("join", json!({ "room": room }))
    }

    /// `leave` `room`, asserting `ok`.
    pub fn leave(&mut self, room: &str) -> Value {
        self.ok("leave", json!({ "room": room }))
    }

    /// `send` `text` to `room`, asserting `ok`; returns the `seq`.
    pub fn say(&mut self, room: &str, text: &str) -> u64 {
        let reply = self.ok("send", json!({ "room": room, "text": text }));
        crate::seq(&reply)
    }

    /// `send` `text` to user `to`, asserting `ok`; returns the `seq`.
    pub fn tell(&mut self, to: &str, text: &str) -> u64 {
        let reply = self.ok("send", json!({ "to": to, "text": text }));
        crate::seq(&reply)
    }

    /// Sends `texts` to `room`, pipelining up to `window` requests at a time
    /// (so the server never holds many answers for us), and returns the
    /// `seq`s. The room's `message` events up to the last `seq` (the
    /// sender's own copies) are read and dropped; other events stay buffered.
    pub fn say_many(&mut self, room: &str, texts: &[String], window: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(texts.len());
        let mut seen = 0;
        for batch in texts.chunks(window.max(1)) {
            let refs: Vec<String> =
                batch.iter().map(|t| self.send_request("send", json!({ "room": room, "text": t }))).collect();
            for r in refs {
                let reply = self.reply_to(&r);
                assert_eq!(crate::ty(&reply), "ok", "{}: send answered {reply}", self.user);
                seqs.push(crate::seq(&reply));
            }
            self.pending.retain(|v| {
                if crate::is_message_in(v, room) {
                    seen = seen.max(v["seq"].as_u64().unwrap_or(0));
                    false
                } else {
                    true
                }
            });
        }
        if let Some(&last) = seqs.last().filter(|&&last| last > seen) {
            let deadline = Instant::now() + self.timeout;
            loop {
                match self.wire_json(deadline) {
                    Ok(Some(v)) if crate::is_message_in(&v, room) => {
                        if v["seq"].as_u64() >= Some(last) {
                            break;
                        }
                    }
                    Ok(Some(v)) => self.pending.push_back(v),
                    Ok(None) => panic!("{}: own message seq {last} never came", self.user),
                    Err(why) => panic!("{}: {why}", self.user),
                }
            }
        }
        seqs
    }
}

/// Asserts `v` is a well-formed `error` reply (`code` and `message` strings).
pub fn assert_error_shape(v: &Value, what: &str) {
    assert_eq!(ty(v), "error", "{what}: expected an error, got {v}");
    assert!(v["code"].is_string(), "{what}: error without code: {v}");
    assert!(v["message"].is_string(), "{what}: error without message: {v}");
}

fn show(vs: &[Value]) -> String {
    let mut s = String::new();
    for v in vs.iter().take(20) {
        s.push_str(&format!("\n  {v}"));
    }
    if vs.len() > 20 {
        s.push_str(&format!("\n  ... and {} more", vs.len() - 20));
    }
    if s.is_empty() {
        s.push_str("nothing");
    }
    s
}
