//! The client side of the wire, as browsers, `nc` and `curl` speak it:
//! masked WebSocket frames out, server frames, lines and HTTP responses in.

use std::io::Cursor;

use serde_json::Value;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// What a client read from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A text frame holding JSON.
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// A ping frame and its payload.
    Ping(Vec<u8>),
    /// A pong frame and its payload.
    Pong(Vec<u8>),
    /// A close frame: its status code (`None`: none given) and reason.
    Close {
        /// The status code.
        code: Option<u16>,
        /// The reason text.
        reason: String,
    },
    /// A line-protocol line, without its `\n`.
    Line(String),
    /// An HTTP response.
    Http(HttpResponse),
}

impl Event {
    /// The JSON of a text frame.
    pub fn json(&self) -> Option<&Value> {
        match self {
            Event::Json(v) => Some(v),
            _ => None,
        }
    }

    /// The `type` of a JSON frame.
    pub fn kind(&self) -> Option<&str> {
        self.json().and_then(|v| v["type"].as_str())
    }
}

/// An HTTP response as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A masked client frame (RFC 6455 §5.3: a client MUST mask).
pub fn client_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader { opcode, is_final: fin, mask: Some(mask), ..FrameHeader::default() };
    let mut out = Vec::with_capacity(payload.len() + 14);
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Reads one server frame from the front of `buf`: `Ok(None)` when more
/// bytes are needed. Server frames that break RFC 6455 are errors: the
/// harness fails the test.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Event, usize)>, String> {
    let mut cursor = Cursor::new(buf);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("server sent a bad frame header: {e}")),
    };
    let head = cursor.position() as usize;
    if header.mask.is_some() {
        return Err("server frame is masked (RFC 6455 §5.1: a server MUST NOT mask)".into());
    }
    if !header.is_final {
        return Err("server frames are never fragmented".into());
    }
    let len = len as usize;
    if buf.len() < head + len {
        return Ok(None);
    }
    let payload = buf[head..head + len].to_vec();
    let event = match header.opcode {
        OpCode::Data(Data::Text) => match String::from_utf8(payload) {
            Ok(s) => match serde_json::from_str::<Value>(&s) {
                Ok(v) => Event::Json(v),
                Err(_) => Event::Text(s),
            },
            Err(_) => return Err("server sent invalid UTF-8 in a text frame".into()),
        },
        OpCode::Data(Data::Binary) => Event::Binary(payload),
        OpCode::Control(Control::Ping) => Event::Ping(payload),
        OpCode::Control(Control::Pong) => Event::Pong(payload),
        OpCode::Control(Control::Close) => {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
            Event::Close { code, reason }
        }
        op => return Err(format!("server sent opcode {op:?}")),
    };
    Ok(Some((event, head + len)))
}

/// Reads one HTTP response from the front of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Option<(HttpResponse, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let head = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("server sent a bad HTTP response: {e}")),
    };
    let status = res.code.unwrap_or(0);
    let headers: Vec<(String, String)> =
        res.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string())).collect();
    let len = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(Ok(0), |(_, v)| v.parse::<usize>())
        .map_err(|_| "bad Content-Length from the server".to_string())?;
    if buf.len() < head + len {
        return Ok(None);
    }
    let body = buf[head..head + len].to_vec();
    Ok(Some((HttpResponse { status, headers, body }, head + len)))
}

/// An HTTP/1.1 request with a `Content-Length`.
pub fn request(method: &str, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: sim\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The sample key of RFC 6455 §1.3 and the accept value it must produce.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`WS_KEY`].
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A browser's upgrade request for `path`.
pub fn upgrade(path: &str) -> Vec<u8> {
    request(
        "GET",
        path,
        b"",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", WS_KEY),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
}
