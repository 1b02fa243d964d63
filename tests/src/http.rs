//! A tiny HTTP/1.1 client over `std::net::TcpStream`: one request per
//! connection (`Connection: close`), bodies by `Content-Length`, chunked or
//! read to end of stream.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::TIMEOUT;

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the status and body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {} body is not JSON ({e}): {:?}", self.status, self.text()))
    }

    /// The `error` code of a JSON error body `{"error":"CODE","message":"..."}`,
    /// checking that `message` is a string.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["message"].is_string(), "HTTP {} error body has no string message: {v}", self.status);
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("HTTP {} error body has no error code: {v}", self.status))
            .to_string()
    }
}

/// Sends one request and reads the response. `headers` are added after
/// `Host`, `Connection: close` and `Content-Length` (when there is a body).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    http_raw(addr, &bytes)
}

/// Writes `request` as-is on a new connection and reads one response.
/// A write that fails (the server may answer and close before reading, as
/// with 503) is ignored: the response is what counts.
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to HTTP port {addr}: {e}"));
    let _ = stream.set_nodelay(true);
    let _ = stream.write_all(request);
    read_response(&mut stream, TIMEOUT).unwrap_or_else(|e| panic!("HTTP {addr}: {e} (request {:?})", head_of(request)))
}

fn head_of(request: &[u8]) -> String {
    let s = String::from_utf8_lossy(request);
    s.lines().next().unwrap_or("").to_string()
}

/// Reads one HTTP response from `stream`.
pub fn read_response(stream: &mut TcpStream, timeout: Duration) -> Result<HttpResponse, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut eof = false;
    // Head.
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if eof {
            return Err(format!(
                "connection closed before a full response head; got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        eof = fill(stream, &mut buf, deadline)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = HttpResponse { status, headers, body: Vec::new() };
    let mut rest = buf[head_end..].to_vec();
    let chunked = resp.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    if chunked {
        resp.body = read_chunked(stream, &mut rest, &mut eof, deadline)?;
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| format!("bad Content-Length {len:?}"))?;
        while rest.len() < len {
            if eof {
                return Err(format!("connection closed after {} of {len} body bytes", rest.len()));
            }
            eof = fill(stream, &mut rest, deadline)?;
        }
        rest.truncate(len);
        resp.body = rest;
    } else {
        while !eof {
            eof = fill(stream, &mut rest, deadline)?;
        }
        resp.body = rest;
    }
    Ok(resp)
}

fn read_chunked(
    stream: &mut TcpStream,
    rest: &mut Vec<u8>,
    eof: &mut bool,
    deadline: Instant,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(rest, b"\r\n") {
                break i;
            }
            if *eof {
                return Err("connection closed inside a chunked body".into());
            }
            *eof = fill(stream, rest, deadline)?;
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_text, 16).map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest.drain(..line_end + 2);
        if size == 0 {
            return Ok(body);
        }
        while rest.len() < size + 2 {
            if *eof {
                return Err("connection closed inside a chunk".into());
            }
            *eof = fill(stream, rest, deadline)?;
        }
        body.extend_from_slice(&rest[..size]);
        rest.drain(..size + 2);
    }
}

/// Reads more bytes into `buf`; returns true at end of stream (a reset
/// counts as the end: what was read before it is kept).
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<bool, String> {
    let now = Instant::now();
    if now >= deadline {
        return Err(format!("timed out reading the response; got {:?}", String::from_utf8_lossy(buf)));
    }
    stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) => Ok(true),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(false)
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => Ok(false),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(false),
        Err(e) if e.kind() == ErrorKind::ConnectionReset || e.kind() == ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
