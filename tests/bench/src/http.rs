//! Accounts for the private-message scenario: `POST /api/register` and
//! `/api/login` over plain HTTP/1.1 on the server's port. The server hashes
//! passwords with argon2 on a small pool, so this happens once, up front,
//! over a few keep-alive connections in parallel, and is not measured.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::scan::scan;

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects from `local` when given (a loopback source address), with
    /// `timeout` on every read.
    fn open(addr: SocketAddr, local: Option<IpAddr>, timeout: Duration) -> io::Result<Conn> {
        let stream = match local {
            None => TcpStream::connect(addr)?,
            Some(ip) => {
                let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
                let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.bind(&SocketAddr::new(ip, 0).into())?;
                socket.connect(&addr.into())?;
                socket.into()
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        Ok(Conn { reader: BufReader::new(stream) })
    }

    /// Posts a JSON body; returns the status and the body.
    fn post(&mut self, path: &str, body: &str) -> io::Result<(u16, Vec<u8>)> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed without an answer"));
        }
        let status = parse_status(&line).ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(io::Error::other)?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }
}

/// One request on a connection of its own, from `local` when given: its
/// status and body. The attacks' requests, each its own client.
pub fn post_once(
    addr: SocketAddr,
    local: Option<IpAddr>,
    path: &str,
    body: &str,
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    Conn::open(addr, local, timeout)?.post(path, body)
}

fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// Registers each name (an existing one is fine) and logs it in over
/// `parallel` connections; returns the tokens in the order of `names`.
pub fn accounts(addr: SocketAddr, names: &[String], password: &str, parallel: usize) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let tokens: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; names.len()]);
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| {
                let mut conn = Conn::open(addr, None, Duration::from_secs(60))
                    .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { return };
                    let body = format!(r#"{{"user":"{name}","password":"{password}"}}"#);
                    let (status, reply) = conn.post("/api/register", &body).expect("register");
                    assert!(
                        status == 201 || status == 409,
                        "register {name}: {status} {}",
                        String::from_utf8_lossy(&reply)
                    );
                    let (status, reply) = conn.post("/api/login", &body).expect("login");
                    assert!(status == 200, "login {name}: {status} {}", String::from_utf8_lossy(&reply));
                    let token = scan(&reply).token.map(|t| String::from_utf8_lossy(t).into_owned());
                    let token = token.unwrap_or_else(|| panic!("login {name}: no token in {reply:?}"));
                    tokens.lock().expect("tokens")[i] = Some(token);
                }
            });
        }
    });
    tokens.into_inner().expect("tokens").into_iter().map(|t| t.expect("every name has a token")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 201 Created\r\n"), Some(201));
        assert_eq!(parse_status("HTTP/1.0 429 Too Many Requests\r\n"), Some(429));
        assert_eq!(parse_status("garbage"), None);
    }
}
