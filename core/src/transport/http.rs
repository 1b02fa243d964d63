//! HTTP/1.1 requests (the upgrade, the small JSON API, `/healthz`, `/metrics`).
//! Responses are rendered in `crate::render::http`.

/// Largest request head we read. Browsers send well under 8 KiB.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest request body (the API's JSON bodies are tiny).
pub(crate) const MAX_BODY: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

/// Why a request could not be read. Each maps to one status through
/// `render::ErrorCode` (`From<HttpError>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("malformed request")]
    Malformed,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("chunked request bodies are not supported")]
    Chunked,
}

/// A request with its body, owning what the session needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path without the query.
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    /// HTTP/1.0, or `Connection: close`.
    pub(crate) close: bool,
}

impl Request {
    /// The first header named `name` (case-insensitive), as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Whether a comma-separated header lists `token` (case-insensitive).
    pub(crate) fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The value of query parameter `key`, percent-decoded.
    pub(crate) fn query_param(&self, key: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
}

/// Reads one request from the front of `buf`: `Ok(Some((request, consumed)))`,
/// or `Ok(None)` when more bytes are needed (nothing is consumed).
pub(crate) fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed);
    };
    let headers: Vec<(String, Vec<u8>)> = req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
    let mut request = Request {
        method: method.to_string(),
        path: String::new(),
        query: None,
        headers,
        body: Vec::new(),
        close: version == 0,
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    request.path = path.to_string();
    request.query = query;
    if request.header_has_token("connection", "close") {
        request.close = true;
    } else if version == 0 && request.header_has_token("connection", "keep-alive") {
        request.close = false;
    }
    let body_len = body_length(&request)?;
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    request.body = buf[head_len..head_len + body_len].to_vec();
    Ok(Some((request, head_len + body_len)))
}

/// The body's length from `Content-Length`. Anything a proxy in front of us
/// might read differently is refused, so that the two never disagree on where
/// a request ends (request smuggling, RFC 9112 §6.3): several
/// `Content-Length` headers (even equal ones), a value that is not plain
/// digits, and `Transfer-Encoding` beside `Content-Length`.
fn body_length(request: &Request) -> Result<usize, HttpError> {
    let mut lengths = request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(HttpError::Malformed);
    }
    let chunked = request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    let value = match (length, chunked) {
        (Some(_), true) => return Err(HttpError::Malformed),
        (None, true) => return Err(HttpError::Chunked),
        (None, false) => return Ok(0),
        (Some((_, value)), false) => value.trim_ascii(),
    };
    // RFC 9110 §8.6: `Content-Length = 1*DIGIT`; Rust's parser would also take a `+`.
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::Malformed);
    }
    // All digits: a value that does not parse is too large for any bound.
    let len = std::str::from_utf8(value).ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(usize::MAX);
    if len > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(len)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_split_at_every_byte() {
        let raw = b"POST /api/login?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..raw.len() {
            assert_eq!(parse_request(&raw[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (req, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/login");
        assert_eq!(req.query.as_deref(), Some("x=1"));
        assert_eq!(req.body, b"hello");
        assert!(!req.close);
    }

    #[test]
    fn leaves_a_pipelined_request_in_the_buffer() {
        let raw = b"GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n";
        let (req, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(req.path, "/healthz");
        let (req, _) = parse_request(&raw[used..]).unwrap().unwrap();
        assert_eq!(req.path, "/metrics");
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        assert_eq!(parse_request(b"\x00\x01\x02 nonsense\r\n\r\n"), Err(HttpError::Malformed));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(parse_request(long.as_bytes()), Err(HttpError::HeadTooLarge));
        let big = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        assert_eq!(parse_request(big.as_bytes()), Err(HttpError::BodyTooLarge));
        assert_eq!(parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(HttpError::Chunked));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Err(HttpError::Malformed));
    }

    #[test]
    fn content_length_is_one_header_of_plain_digits() {
        let with = |headers: &str| parse_request(format!("POST / HTTP/1.1\r\n{headers}\r\n12345").as_bytes());
        for bad in [
            "Content-Length: 5\r\nContent-Length: 0\r\n",
            "Content-Length: 5\r\ncontent-length: 5\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: -5\r\n",
            "Content-Length: 0x5\r\n",
            "Content-Length: 5 5\r\n",
            "Content-Length: 5,5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
        ] {
            assert_eq!(with(bad), Err(HttpError::Malformed), "{bad:?}");
        }
        assert_eq!(with("Content-Length: 99999999999999999999999\r\n"), Err(HttpError::BodyTooLarge));
        let (req, used) = with("Content-Length:  005 \r\n").unwrap().unwrap();
        assert_eq!((req.body.as_slice(), used), (&b"12345"[..], 47));
    }

    #[test]
    fn reads_query_parameters_and_headers() {
        let raw = b"GET /ws?a=1&token=ab%2Bc+d HTTP/1.0\r\nConnection: Upgrade, keep-alive\r\n\r\n";
        let (req, _) = parse_request(raw).unwrap().unwrap();
        assert_eq!(req.query_param("token").as_deref(), Some("ab+c d"));
        assert_eq!(req.query_param("a").as_deref(), Some("1"));
        assert_eq!(req.query_param("b"), None);
        assert!(req.header_has_token("connection", "upgrade"));
        assert!(!req.close, "HTTP/1.0 with keep-alive stays open");
    }

    #[test]
    fn percent_decoding_tolerates_bad_escapes() {
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41%"), "A%");
    }
}
