//! A bare WebSocket client that does only what it is told: it never answers
//! pings and never reads unless asked. For silent clients, slow consumers and
//! hand-made frames.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::find;
use crate::TIMEOUT;

pub const OP_CONTINUE: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame from the server.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The reason text of a close frame.
    pub fn close_reason(&self) -> String {
        String::from_utf8_lossy(self.payload.get(2..).unwrap_or(&[])).into_owned()
    }
}

/// What a read brought.
#[derive(Debug)]
pub enum RawEvent {
    Frame(RawFrame),
    Timeout,
    /// End of stream or reset.
    Closed,
}

/// How a connection ended, as seen by [`RawWs::read_until_closed`].
#[derive(Debug, Default)]
pub struct Ending {
    /// Text frames received before the end.
    pub texts: Vec<String>,
    /// Ping frames received before the end (never answered).
    pub pings: usize,
    /// The close frame, if one came.
    pub close: Option<RawFrame>,
    /// The stream ended (EOF or reset) before the deadline.
    pub stream_ended: bool,
}

impl Ending {
    /// The close code, if a close frame with one came.
    pub fn close_code(&self) -> Option<u16> {
        self.close.as_ref().and_then(RawFrame::close_code)
    }

    /// Whether the server ended the connection (close frame or end of stream).
    pub fn ended(&self) -> bool {
        self.close.is_some() || self.stream_ended
    }
}

/// A hand-driven WebSocket connection.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawWs {
    /// Connects and upgrades `GET path`, checking the 101 answer and its
    /// `Sec-WebSocket-Accept` (RFC 6455 §1.3 sample key).
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        RawWs::upgrade(stream, path)
    }

    /// Upgrades `GET path` on a connection opened earlier, checking the 101
    /// as [`RawWs::connect`] does.
    pub fn upgrade(mut stream: TcpStream, path: &str) -> RawWs {
        let addr = stream.peer_addr().expect("a connected stream");
        let _ = stream.set_nodelay(true);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).expect("send the upgrade request");
        let mut ws = RawWs { stream, buf: Vec::new(), eof: false };
        let deadline = Instant::now() + TIMEOUT;
        let end = loop {
            if let Some(i) = find(&ws.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if ws.eof || !ws.fill(deadline) {
                panic!("no upgrade answer from {addr}{path}: got {:?}", String::from_utf8_lossy(&ws.buf));
            }
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        ws.buf.drain(..end);
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade of {path} refused: {head:?}");
        assert!(
            head.lines().any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
                })
            }),
            "wrong or missing Sec-WebSocket-Accept: {head:?}"
        );
        ws
    }

    /// Sends one masked frame. Write errors are returned (the server may
    /// have closed the connection already).
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(if fin { 0x80 } else { 0 } | opcode);
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)
    }

    /// Sends one text frame; panics if the write fails.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, OP_TEXT, text.as_bytes()).unwrap_or_else(|e| panic!("raw send failed: {e}"));
    }

    /// Sends `v` as one text frame.
    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Reads more bytes; false on timeout, sets `eof` at end of stream or reset.
    fn fill(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                true
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.eof = true;
                true
            }
        }
    }

    /// Parses one complete frame from the buffer, if there is one.
    fn parse(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        let mask = if masked {
            if b.len() < at + 4 {
                return None;
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < at + len {
            return None;
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= m[i % 4];
            }
        }
        self.buf.drain(..at + len);
        Some(RawFrame { fin, opcode, payload })
    }

    /// The next frame before `deadline`.
    pub fn read_frame(&mut self, deadline: Instant) -> RawEvent {
        loop {
            if let Some(f) = self.parse() {
                return RawEvent::Frame(f);
            }
            if self.eof {
                return RawEvent::Closed;
            }
            if !self.fill(deadline) {
                return RawEvent::Timeout;
            }
        }
    }

    /// The next text frame as JSON, skipping control frames (never answered).
    pub fn recv_json(&mut self) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.read_frame(deadline) {
                RawEvent::Frame(f) if f.opcode == OP_TEXT => {
                    return serde_json::from_slice(&f.payload)
                        .unwrap_or_else(|e| panic!("text frame that is not JSON ({e}): {:?}", f.payload))
                }
                RawEvent::Frame(f) if f.opcode == OP_CLOSE => {
                    panic!("closed by the server (code {:?}) while waiting for a message", f.close_code())
                }
                RawEvent::Frame(_) => {}
                RawEvent::Timeout => panic!("no message within {TIMEOUT:?}"),
                RawEvent::Closed => panic!("connection ended while waiting for a message"),
            }
        }
    }

    /// Sends `v` (which must carry `ref`) and returns the answer with that
    /// `ref`, dropping other messages.
    pub fn request(&mut self, v: Value) -> Value {
        let r = v["ref"].clone();
        assert!(r.is_string(), "raw request without ref: {v}");
        self.send_json(&v);
        loop {
            let got = self.recv_json();
            if got["ref"] == r {
                return got;
            }
        }
    }

    /// Reads everything until a close frame or the end of the stream, for
    /// at most `timeout`.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Ending {
        let deadline = Instant::now() + timeout;
        let mut ending = Ending::default();
        loop {
            match self.read_frame(deadline) {
                RawEvent::Frame(f) if f.opcode == OP_TEXT => {
                    ending.texts.push(String::from_utf8_lossy(&f.payload).into_owned())
                }
                RawEvent::Frame(f) if f.opcode == OP_CLOSE => {
                    ending.close = Some(f);
                    // Wait briefly for the end of the stream after the close frame.
                    let short = Instant::now() + Duration::from_secs(2);
                    loop {
                        match self.read_frame(short) {
                            RawEvent::Closed => {
                                ending.stream_ended = true;
                                break;
                            }
                            RawEvent::Timeout => break,
                            RawEvent::Frame(_) => {}
                        }
                    }
                    return ending;
                }
                RawEvent::Frame(f) if f.opcode == OP_PING => ending.pings += 1,
                RawEvent::Frame(_) => {}
                RawEvent::Timeout => return ending,
                RawEvent::Closed => {
                    ending.stream_ended = true;
                    return ending;
                }
            }
        }
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}
