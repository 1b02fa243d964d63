//! A minimal WebSocket client connection for load: it sends masked text
//! frames and parses the server's unmasked frames in place, with no
//! per-frame allocation, so that the load generator is not the bottleneck.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;

/// One client socket and its buffers.
pub struct Client {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    pub open: bool,
    upgraded: bool,
}

/// A server frame, borrowed from the read buffer.
pub enum Frame<'a> {
    Text(&'a [u8]),
    Close(u16),
    Other,
}

impl Client {
    /// Starts a non-blocking connection, from `local` when given.
    pub fn connect(addr: SocketAddr, local: Option<std::net::IpAddr>) -> io::Result<Client> {
        let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        if let Some(ip) = local {
            // Several loopback source addresses: one has about 28,000 ports.
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
        Ok(Client { stream, rbuf: Vec::new(), wbuf: Vec::new(), open: true, upgraded: false })
    }

    pub fn queue_upgrade(&mut self, path: &str) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.wbuf.extend_from_slice(req.as_bytes());
    }

    /// Queues a masked text frame (mask of zeros: masking is required, its
    /// value is not, and zeros keep the payload as it is).
    pub fn queue_text(&mut self, payload: &[u8]) {
        let n = payload.len();
        self.wbuf.push(0x81);
        if n < 126 {
            self.wbuf.push(0x80 | n as u8);
        } else if n < 65536 {
            self.wbuf.push(0x80 | 126);
            self.wbuf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.wbuf.push(0x80 | 127);
            self.wbuf.extend_from_slice(&(n as u64).to_be_bytes());
        }
        self.wbuf.extend_from_slice(&[0, 0, 0, 0]);
        self.wbuf.extend_from_slice(payload);
    }

    pub fn wants_write(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes what it can; `Err` when the connection failed.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.write_vectored(&[IoSlice::new(&self.wbuf)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads until `WouldBlock`, calling `on_frame` for every complete frame.
    pub fn read(&mut self, scratch: &mut [u8], mut on_frame: impl FnMut(Frame<'_>)) -> io::Result<()> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.open = false;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.open = false;
                    return Err(e);
                }
            }
        }
        let mut pos = 0;
        if !self.upgraded {
            let Some(end) = self.rbuf.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(()) };
            if !self.rbuf.starts_with(b"HTTP/1.1 101") {
                self.open = false;
                return Err(io::Error::other(String::from_utf8_lossy(&self.rbuf[..end]).into_owned()));
            }
            self.upgraded = true;
            pos = end + 4;
        }
        loop {
            let buf = &self.rbuf[pos..];
            if buf.len() < 2 {
                break;
            }
            let op = buf[0] & 0x0f;
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0; 8])) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < head + len {
                break;
            }
            let payload = &buf[head..head + len];
            match op {
                1 => on_frame(Frame::Text(payload)),
                8 => {
                    let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                    on_frame(Frame::Close(code));
                }
                _ => on_frame(Frame::Other),
            }
            pos += head + len;
        }
        self.rbuf.drain(..pos);
        Ok(())
    }
}

/// The number after `"key":` in a JSON text, without parsing the rest.
pub fn json_u64(text: &[u8], key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let at = find(text, pat.as_bytes())? + pat.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

/// The string after `"key":"` up to the next quote (no escapes expected).
pub fn json_str<'a>(text: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let pat = format!("\"{key}\":\"");
    let at = find(text, pat.as_bytes())? + pat.len();
    let end = text[at..].iter().position(|&b| b == b'"')?;
    Some(&text[at..at + end])
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn local_addr_for(i: usize, spread: usize) -> Option<std::net::IpAddr> {
    (spread > 1).then(|| std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % spread) as u8)))
}
