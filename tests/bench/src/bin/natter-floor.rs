//! `natter-floor`: the least a server can do for the fan-out scenario, as a
//! floor to measure Natter against on the same machine with the same load
//! generator. One mio loop, guests only, no storage, no limits, no
//! heartbeats: it answers the upgrade of `natter-bench`'s fixed key, `hello`
//! with `welcome`, `join` with `ok`, and fans each `send` out to the room,
//! each frame encoded once and written with one vectored write per
//! connection per loop turn. Not a chat server: it trusts its one client.
//!
//! `natter-floor --http 127.0.0.1:0` prints the same listening line as
//! Natter, so `natter-bench compare --bins natter-floor,...` can start it.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::rc::Rc;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
/// The accept key of `natter-bench`'s fixed `Sec-WebSocket-Key` (RFC 6455's example).
const UPGRADE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    upgraded: bool,
    name: String,
    out: VecDeque<(Rc<[u8]>, usize)>,
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let addr = flag("--http").unwrap_or_else(|| "127.0.0.1:8080".into()).parse().expect("--http ADDR");
    let nodelay = !args.iter().any(|a| a == "--nagle");
    let mut listener = TcpListener::bind(addr)?;
    println!("natter listening http={} line=0.0.0.0:0", listener.local_addr()?);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut rooms: HashMap<String, (u64, Vec<usize>)> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut dirty: Vec<usize> = Vec::new();
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(nodelay);
                    poll.registry().register(&mut stream, Token(next), Interest::READABLE | Interest::WRITABLE)?;
                    let conn =
                        Conn { stream, input: Vec::new(), upgraded: false, name: String::new(), out: VecDeque::new() };
                    conns.insert(next, conn);
                    next += 1;
                }
                continue;
            }
            let key = ev.token().0;
            if ev.is_writable() {
                dirty.push(key);
            }
            let mut gone = false;
            let mut frames: Vec<Vec<u8>> = Vec::new();
            if let Some(c) = conns.get_mut(&key) {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            gone = true;
                            break;
                        }
                        Ok(n) => c.input.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            gone = true;
                            break;
                        }
                    }
                }
                if !c.upgraded {
                    if let Some(end) = find(&c.input, b"\r\n\r\n") {
                        c.input.drain(..end + 4);
                        c.upgraded = true;
                        c.out.push_back((Rc::from(UPGRADE), 0));
                        dirty.push(key);
                    }
                }
                while c.upgraded {
                    let Some((payload, used)) = client_frame(&c.input) else { break };
                    c.input.drain(..used);
                    frames.push(payload);
                }
            }
            if gone {
                conns.remove(&key);
                continue;
            }
            for payload in frames {
                handle(key, &payload, &mut conns, &mut rooms, &mut dirty);
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            if let Some(c) = conns.get_mut(&key) {
                flush(c);
            }
        }
    }
}

fn handle(
    key: usize,
    payload: &[u8],
    conns: &mut HashMap<usize, Conn>,
    rooms: &mut HashMap<String, (u64, Vec<usize>)>,
    dirty: &mut Vec<usize>,
) {
    let Some(kind) = field(payload, "type") else { return };
    let Some(c) = conns.get_mut(&key) else { return };
    match kind {
        "hello" => {
            c.name = field(payload, "name").unwrap_or("guest").to_owned();
            let welcome = format!(
                r#"{{"type":"welcome","user":"{}","guest":true,"session":"{key}","heartbeat_s":30,"rooms":[]}}"#,
                c.name
            );
            c.out.push_back((frame(welcome.as_bytes()), 0));
            dirty.push(key);
        }
        "join" => {
            let room = field(payload, "room").unwrap_or("").to_owned();
            let entry = rooms.entry(room).or_default();
            entry.1.push(key);
            let ok = format!(r#"{{"type":"ok","seq":{},"members":{}}}"#, entry.0, entry.1.len());
            c.out.push_back((frame(ok.as_bytes()), 0));
            dirty.push(key);
        }
        "send" => {
            let room = field(payload, "room").unwrap_or("");
            let text = field(payload, "text").unwrap_or("");
            let name = c.name.clone();
            let Some((seq, members)) = rooms.get_mut(room) else { return };
            *seq += 1;
            let message =
                format!(r#"{{"type":"message","room":"{room}","seq":{seq},"from":"{name}","text":"{text}","ts":0}}"#);
            let message = frame(message.as_bytes());
            for &m in members.iter() {
                if let Some(c) = conns.get_mut(&m) {
                    c.out.push_back((Rc::clone(&message), 0));
                    dirty.push(m);
                }
            }
        }
        _ => {}
    }
}

/// One vectored write of everything queued (up to 64 frames).
fn flush(c: &mut Conn) {
    while !c.out.is_empty() {
        let slices: Vec<IoSlice<'_>> = c.out.iter().take(64).map(|(b, off)| IoSlice::new(&b[*off..])).collect();
        match c.stream.write_vectored(&slices) {
            Ok(mut n) => {
                while n > 0 {
                    let (b, off) = c.out.front_mut().expect("written bytes were queued");
                    let left = b.len() - *off;
                    if n >= left {
                        n -= left;
                        c.out.pop_front();
                    } else {
                        *off += n;
                        n = 0;
                    }
                }
            }
            Err(_) => return,
        }
    }
}

/// A server frame: FIN + text, unmasked.
fn frame(payload: &[u8]) -> Rc<[u8]> {
    let mut f = Vec::with_capacity(payload.len() + 4);
    f.push(0x81);
    if payload.len() < 126 {
        f.push(payload.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f.into()
}

/// A whole masked client frame at the start of `b`: its unmasked payload
/// and the bytes it took.
fn client_frame(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (usize::from(n), 2),
    };
    let mask: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = b.get(at..at + len)?;
    Some((payload.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect(), at + len))
}

/// The string value of `"name":"..."` (no escapes: the bench sends none).
fn field<'a>(json: &'a [u8], name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = find(json, key.as_bytes())? + key.len();
    let len = json[start..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&json[start..start + len]).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
