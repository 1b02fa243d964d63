//! A line-protocol client over raw TCP.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::server::{Account, Server};
use crate::{uniq, TIMEOUT};

/// What the next read brought.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    Line(String),
    Timeout,
    /// End of stream or reset.
    Closed,
}

/// A line-protocol session.
pub struct LineClient {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// Default wait for things that should come promptly.
    pub timeout: Duration,
    /// The name once welcomed, or a label.
    pub name: String,
}

impl LineClient {
    /// Connects to the server's line port without sending anything.
    pub fn connect(server: &Server) -> LineClient {
        Self::connect_addr(server.line)
    }

    pub fn connect_addr(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(TIMEOUT));
        LineClient { stream, buf: Vec::new(), eof: false, timeout: TIMEOUT, name: "(line, before welcome)".to_string() }
    }

    /// A guest named after `prefix`, past `* welcome NAME` and its own
    /// `* NAME joined lobby` (so it is surely in the lobby when this returns).
    pub fn guest(server: &Server, prefix: &str) -> LineClient {
        let mut c = Self::connect(server);
        let name = uniq(prefix);
        c.send_line(&name);
        let before = c.expect_welcome(&name);
        let joined = format!("* {name} joined lobby");
        if !before.contains(&joined) {
            c.wait_exact(&joined);
        }
        c
    }

    /// `/login USER PASSWORD` as the first line, past `* welcome USER`.
    pub fn login(server: &Server, account: &Account) -> LineClient {
        let mut c = Self::connect(server);
        c.send_line(&format!("/login {} {}", account.name, account.password));
        c.expect_welcome(&account.name);
        c
    }

    /// Reads until `* welcome NAME`, failing on an error line first;
    /// returns the lines before it.
    pub fn expect_welcome(&mut self, name: &str) -> Vec<String> {
        let want = format!("* welcome {name}");
        let mut lines = self.recv_until_line(|l| l == want || l.starts_with("! "));
        let last = lines.pop().unwrap();
        assert_eq!(last, want, "line login as {name}: got {lines:?}");
        self.name = name.to_string();
        lines
    }

    /// Writes `line` followed by `\n`.
    pub fn send_line(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.send_raw(&bytes);
    }

    /// Writes raw bytes; panics if the write fails.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|e| panic!("{}: write failed: {e}", self.name));
    }

    /// Writes raw bytes, returning the error if the write fails.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next line (without `\n` or `\r\n`) before `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> LineEvent {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return LineEvent::Line(String::from_utf8_lossy(&line).into_owned());
            }
            if self.eof {
                if !self.buf.is_empty() {
                    let rest: Vec<u8> = self.buf.drain(..).collect();
                    return LineEvent::Line(String::from_utf8_lossy(&rest).into_owned());
                }
                return LineEvent::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return LineEvent::Timeout;
            }
            let _ = self.stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.eof = true,
            }
        }
    }

    /// The next line; panics on timeout or end of stream.
    pub fn recv_line(&mut self) -> String {
        let deadline = Instant::now() + self.timeout;
        match self.next_line(deadline) {
            LineEvent::Line(l) => l,
            other => panic!("{}: waited {:?} for a line: {other:?}", self.name, self.timeout),
        }
    }

    /// Every line up to and including the first matching `pred`.
    pub fn recv_until_line(&mut self, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + self.timeout;
        let mut seen = Vec::new();
        loop {
            match self.next_line(deadline) {
                LineEvent::Line(l) => {
                    let done = pred(&l);
                    seen.push(l);
                    if done {
                        return seen;
                    }
                }
                other => {
                    panic!("{}: waited {:?} for a matching line ({other:?}); got {seen:?}", self.name, self.timeout)
                }
            }
        }
    }

    /// The first line matching `pred`; those before it are dropped.
    pub fn wait_line(&mut self, pred: impl FnMut(&str) -> bool) -> String {
        self.recv_until_line(pred).pop().unwrap()
    }

    /// Waits for exactly the line `want`, dropping others.
    pub fn wait_exact(&mut self, want: &str) {
        self.wait_line(|l| l == want);
    }

    /// Sends `command` (`/who`, `/rooms`, `/history ...`) and returns the
    /// lines before its closing `* end`, leaving out presence lines
    /// (`* NAME joined ROOM`, `* NAME left ROOM`) that may come in between.
    pub fn listing(&mut self, command: &str) -> Vec<String> {
        self.send_line(command);
        let mut lines = self.recv_until_line(|l| l == "* end");
        lines.pop();
        lines.retain(|l| !is_presence_line(l));
        lines
    }

    /// `/who`: the member lines (`* NAME` or `* NAME (online)`) before `* end`.
    /// Other informational lines the server may add are left out.
    pub fn who(&mut self) -> Vec<String> {
        let mut lines = self.listing("/who");
        lines.retain(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            parts[0] == "*" && (parts.len() == 2 || (parts.len() == 3 && parts[2] == "(online)"))
        });
        lines
    }

    /// `/rooms`: the room lines (`* ROOM N`) before `* end`.
    pub fn rooms(&mut self) -> Vec<String> {
        let mut lines = self.listing("/rooms");
        lines.retain(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            parts.len() == 3 && parts[0] == "*" && parts[2].parse::<u64>().is_ok()
        });
        lines
    }

    /// `/history` or `/history N`: the message lines (`[ROOM] FROM: text`) before `* end`.
    pub fn history(&mut self, n: Option<u32>) -> Vec<String> {
        let command = match n {
            Some(n) => format!("/history {n}"),
            None => "/history".to_string(),
        };
        let mut lines = self.listing(&command);
        lines.retain(|l| l.starts_with('[') && l.contains("] ") && l.contains(": "));
        lines
    }

    /// Asserts no line arrives within `d` (and the connection stays open).
    pub fn expect_no_line(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        match self.next_line(deadline) {
            LineEvent::Timeout => {}
            other => panic!("{}: expected no line within {d:?}, got {other:?}", self.name),
        }
    }

    /// Asserts no line matching `pred` arrives within `d`; returns the others.
    pub fn expect_no_line_matching(&mut self, d: Duration, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut others = Vec::new();
        loop {
            match self.next_line(deadline) {
                LineEvent::Line(l) if pred(&l) => {
                    panic!("{}: got the unexpected line {l:?}", self.name)
                }
                LineEvent::Line(l) => others.push(l),
                LineEvent::Timeout => return others,
                LineEvent::Closed => panic!("{}: the connection closed", self.name),
            }
        }
    }

    /// Reads until the server closes the connection (within `timeout`) and
    /// returns the lines it wrote before that.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            match self.next_line(deadline) {
                LineEvent::Line(l) => lines.push(l),
                LineEvent::Closed => return lines,
                LineEvent::Timeout => {
                    panic!("{}: the server did not close the connection within {timeout:?}; got {lines:?}", self.name)
                }
            }
        }
    }
}

/// Whether `line` is `* NAME joined ROOM` or `* NAME left ROOM`.
pub fn is_presence_line(line: &str) -> bool {
    let parts: Vec<&str> = line.split(' ').collect();
    parts.len() == 4 && parts[0] == "*" && (parts[2] == "joined" || parts[2] == "left")
}
