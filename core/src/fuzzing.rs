//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): thin
//! public wrappers over the crate-private decoders, so that a target is a
//! few lines. Not part of the API; nothing else should use them.

use crate::transport::{http, line, request, ws};

/// What [`http_request`] read from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Bytes consumed: the head and the body.
    pub consumed: usize,
    /// Length of the body.
    pub body_len: usize,
    /// The path, without the query.
    pub path: String,
    /// The query, if any.
    pub query: Option<String>,
    /// The connection closes after the response.
    pub close: bool,
    /// The `token` query parameter, percent-decoded.
    pub token: Option<String>,
    /// The request asks for a WebSocket upgrade.
    pub upgrade: bool,
}

/// [`http::parse_request`]: `Ok(None)` when more bytes are needed,
/// `Err(status)` for a request the server answers with an error.
pub fn http_request(buf: &[u8]) -> Result<Option<HttpRequest>, u16> {
    match http::parse_request(buf) {
        Ok(None) => Ok(None),
        Err(e) => Err(crate::render::ErrorCode::from(e).status()),
        Ok(Some((req, consumed))) => Ok(Some(HttpRequest {
            consumed,
            body_len: req.body.len(),
            token: req.query_param("token"),
            upgrade: req.header_has_token("upgrade", "websocket") && req.header_has_token("connection", "upgrade"),
            path: req.path,
            query: req.query,
            close: req.close,
        })),
    }
}

pub use crate::transport::ws::WsEvent;

/// One connection's WebSocket frame decoder.
#[derive(Debug, Default)]
pub struct WsDecoder(ws::Decoder);

impl WsDecoder {
    /// The `/echo` decoder (`lenient == false`: invalid UTF-8 fails the
    /// connection) or the `/ws` one (invalid UTF-8 is handed up).
    pub fn new(lenient: bool) -> WsDecoder {
        WsDecoder(if lenient { ws::Decoder::lenient_utf8() } else { ws::Decoder::default() })
    }

    /// Bytes held for a fragmented message in progress.
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }

    /// At most one frame from the front of `buf`: bytes consumed and the
    /// event it completed; `Ok((0, None))` when more bytes are needed;
    /// `Err(close code)` when the connection fails.
    pub fn decode(&mut self, buf: &[u8], max_message: usize) -> Result<(usize, Option<WsEvent>), u16> {
        self.0.decode(buf, max_message).map_err(|e| u16::from(e.close_code()))
    }
}

/// A line, as [`LineReader::next_line`] hands it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line without its ending.
    Text(&'a [u8]),
    /// A line over the limit, dropped.
    TooLong,
}

/// The line port's splitter.
#[derive(Debug, Default)]
pub struct LineReader(line::LineReader);

impl LineReader {
    /// The next line from the front of `buf`: bytes consumed, and the line
    /// if one is complete (or reported too long).
    pub fn next_line<'a>(&mut self, buf: &'a [u8], max_line: usize) -> (usize, Option<Line<'a>>) {
        let (n, l) = self.0.next_line(buf, max_line);
        let l = l.map(|l| match l {
            line::Line::Text(t) => Line::Text(t),
            line::Line::TooLong => Line::TooLong,
        });
        (n, l)
    }
}

/// What [`json_request`] made of a text frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonRequest {
    /// The client's `ref`, if valid.
    pub reference: Option<String>,
    /// The `type` field, if a string.
    pub kind: Option<String>,
    /// The request, as debug text, or why not.
    pub request: Result<String, String>,
    /// The `id` of a `send`, if any.
    pub send_id: Option<String>,
}

/// Longest `ref` and `id` a client may choose, in characters.
pub const MAX_REF: usize = request::MAX_REF;

/// [`request::decode`] of one text frame.
pub fn json_request(text: &[u8]) -> JsonRequest {
    let d = request::decode(text);
    let send_id = match &d.request {
        Ok(request::ClientRequest::Send { id, .. }) => id.clone(),
        _ => None,
    };
    JsonRequest {
        reference: d.reference,
        kind: d.kind.map(std::borrow::Cow::into_owned),
        request: d.request.map(|r| format!("{r:?}")).map_err(|e| e.to_string()),
        send_id,
    }
}

/// Cuts `stream` into consecutive reads whose sizes cycle through `sizes`
/// (a size of 0 is an empty read); with no size above 0, one read of it
/// all. The targets feed a decoder this way to check that how the bytes
/// arrive changes nothing.
pub fn split_reads<'a>(mut stream: &'a [u8], sizes: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let any = sizes.iter().any(|&s| s > 0);
    let mut cycle = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if stream.is_empty() {
            return None;
        }
        let size = if any { usize::from(*cycle.next()?) } else { stream.len() };
        let (read, rest) = stream.split_at(size.min(stream.len()));
        stream = rest;
        Some(read)
    })
}
