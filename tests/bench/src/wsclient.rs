//! A minimal WebSocket client connection for load. It sends masked text
//! frames and parses the server's unmasked frames in place, with no
//! per-frame allocation, so that the load generator is not the bottleneck:
//! at a million deliveries a second one core has about a microsecond per
//! frame, read syscall included.
//!
//! It answers the server's pings by itself: the server closes a session that
//! is silent for two heartbeats, and idle sessions must survive a long hold.
//!
//! The `Sec-WebSocket-Key` is fixed (RFC 6455's example): `natter-floor`
//! answers exactly that key.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mio::net::TcpStream;

/// One client socket and its buffers.
pub struct Client {
    pub stream: TcpStream,
    /// Bytes of an incomplete frame carried over to the next read.
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// False once the socket failed, hit end of file or was given up.
    pub open: bool,
    upgraded: bool,
    /// Pings answered.
    pub pongs: u64,
}

/// A server frame, borrowed from a read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Close(u16),
    Other,
}

/// Why a read ended the connection.
#[derive(Debug)]
pub enum ReadError {
    /// The server closed the TCP connection.
    Eof,
    /// The upgrade was refused: the response's status line.
    Refused(String),
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => f.write_str("closed by the server"),
            ReadError::Refused(status) => write!(f, "upgrade refused: {status}"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl Client {
    /// Starts a non-blocking connection, from `local` when given.
    pub fn connect(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<Client> {
        let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        if let Some(ip) = local {
            // Several loopback source addresses: one has about 28,000 ports.
            // SO_REUSEADDR lets a port still in TIME_WAIT from an earlier run
            // be bound again (each run's server listens on a new port).
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            // EINPROGRESS: the connection completes in the background.
            Err(e) if e.raw_os_error() == Some(115) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let stream = TcpStream::from_std(socket.into());
        Ok(Client { stream, rbuf: Vec::new(), wbuf: Vec::new(), open: true, upgraded: false, pongs: 0 })
    }

    /// Queues the HTTP upgrade of `path_and_query`.
    pub fn queue_upgrade(&mut self, path_and_query: &str) {
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.wbuf.extend_from_slice(req.as_bytes());
    }

    /// Queues a masked text frame.
    pub fn queue_text(&mut self, payload: &[u8]) {
        push_frame(&mut self.wbuf, 0x1, payload);
    }

    pub fn wants_write(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes what it can; `Err` when the connection failed.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut done = 0;
        let result = loop {
            if done == self.wbuf.len() {
                break Ok(());
            }
            match self.stream.write(&self.wbuf[done..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.wbuf.drain(..done);
        if result.is_err() {
            self.open = false;
        }
        result
    }

    /// Reads what the socket has, calling `on_frame` for every complete
    /// frame. With `until_block` false it stops after a short read: under
    /// edge-triggered polling any later data raises a new event, and the
    /// read that would only say `WouldBlock` costs a syscall per event.
    /// Pass true when the event reported a hang-up, so that the end of file
    /// is seen now.
    pub fn read(
        &mut self,
        scratch: &mut [u8],
        until_block: bool,
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), ReadError> {
        let pongs_before = self.wbuf.len();
        loop {
            let n = match self.stream.read(scratch) {
                Ok(0) => {
                    self.open = false;
                    return Err(ReadError::Eof);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.open = false;
                    return Err(ReadError::Io(e));
                }
            };
            if self.rbuf.is_empty() && self.upgraded {
                // The common case: parse straight from `scratch`, keep only a tail.
                let used = parse_frames(&scratch[..n], &mut self.wbuf, &mut on_frame);
                self.rbuf.extend_from_slice(&scratch[used..n]);
            } else {
                self.rbuf.extend_from_slice(&scratch[..n]);
                if !self.upgraded {
                    let Some(end) = self.rbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if n < scratch.len() && !until_block {
                            break;
                        }
                        continue;
                    };
                    if !self.rbuf.starts_with(b"HTTP/1.1 101") {
                        self.open = false;
                        let head = String::from_utf8_lossy(&self.rbuf[..end]);
                        return Err(ReadError::Refused(head.lines().next().unwrap_or("").to_string()));
                    }
                    self.upgraded = true;
                    self.rbuf.drain(..end + 4);
                }
                let used = parse_frames(&self.rbuf, &mut self.wbuf, &mut on_frame);
                self.rbuf.drain(..used);
            }
            if n < scratch.len() && !until_block {
                break;
            }
        }
        if self.wbuf.len() > pongs_before {
            self.pongs += 1;
            // Pongs were queued: send them now, a writable event finishes the rest.
            if let Err(e) = self.flush() {
                return Err(ReadError::Io(e));
            }
        }
        Ok(())
    }

    /// Stops using this connection (its socket closes when it is dropped).
    pub fn give_up(&mut self, registry: &mio::Registry) {
        self.open = false;
        let _ = registry.deregister(&mut self.stream);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Calls `on_frame` for every whole frame at the front of `buf`, queues a
/// pong into `wbuf` for every ping; returns the bytes used.
fn parse_frames(buf: &[u8], wbuf: &mut Vec<u8>, on_frame: &mut impl FnMut(Frame<'_>)) -> usize {
    let mut pos = 0;
    loop {
        let b = &buf[pos..];
        if b.len() < 2 {
            return pos;
        }
        let op = b[0] & 0x0f;
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap_or([0; 8])) as usize, 10),
            126 | 127 => return pos,
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            return pos;
        }
        let payload = &b[head..head + len];
        match op {
            0x1 => on_frame(Frame::Text(payload)),
            0x8 => {
                let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                on_frame(Frame::Close(code));
            }
            0x9 => push_frame(wbuf, 0xA, payload),
            _ => on_frame(Frame::Other),
        }
        pos += head + len;
    }
}

/// Appends one masked frame (FIN set). The mask is zeros: masking is
/// required, its value is not, and zeros keep the payload as it is.
fn push_frame(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    let n = payload.len();
    out.push(0x80 | op);
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// The source address of client `i` when clients are spread over `spread`
/// loopback addresses (127.0.0.2, 127.0.0.3, ...); `None` for the default.
pub fn local_addr_for(i: usize, spread: usize) -> Option<IpAddr> {
    (spread > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % spread) as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | op];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_cut_whole_and_pings_answered() {
        let mut buf = server_frame(1, b"{\"a\":1}");
        buf.extend(server_frame(9, b"hb"));
        buf.extend(server_frame(1, &[b'x'; 300]));
        buf.extend(server_frame(8, &1001u16.to_be_bytes()));
        let whole = buf.len();
        buf.extend_from_slice(&server_frame(1, b"partial")[..4]);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let used = parse_frames(&buf, &mut out, &mut |f| {
            seen.push(match f {
                Frame::Text(t) => format!("text {}", t.len()),
                Frame::Close(c) => format!("close {c}"),
                Frame::Other => "other".into(),
            })
        });
        assert_eq!(used, whole);
        assert_eq!(seen, ["text 7", "text 300", "close 1001"]);
        // One masked pong carrying the ping's payload.
        assert_eq!(out, [0x8A, 0x82, 0, 0, 0, 0, b'h', b'b']);
    }

    #[test]
    fn long_frames_get_the_16_bit_length() {
        let mut out = Vec::new();
        push_frame(&mut out, 1, &[b'a'; 200]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 0, 200]);
        assert_eq!(out.len(), 4 + 4 + 200);
    }

    #[test]
    fn sources_spread_over_loopback() {
        assert_eq!(local_addr_for(5, 1), None);
        assert_eq!(local_addr_for(5, 4), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))));
    }
}
