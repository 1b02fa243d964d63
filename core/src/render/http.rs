//! HTTP responses: the status line, the headers every response carries,
//! and the JSON bodies of errors and of the account API.

use bytes::Bytes;

/// A response, serialised at once.
pub(crate) struct Response<'a> {
    pub(crate) status: u16,
    pub(crate) content_type: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) extra_headers: &'a [(&'a str, String)],
    pub(crate) close: bool,
}

impl Response<'_> {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(160 + self.body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
                self.status,
                reason(self.status),
                self.content_type,
                self.body.len()
            )
            .as_bytes(),
        );
        // Every response: no guessing a type other than the one given (a
        // JSON error body must never run as HTML or script), and no framing
        // by other sites (clickjacking; X-Frame-Options for browsers without
        // CSP's frame-ancestors). Responses that are not the page get a
        // policy that allows nothing at all.
        out.extend_from_slice(b"X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n");
        if !self.extra_headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-security-policy")) {
            out.extend_from_slice(b"Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n");
        }
        for (name, value) in self.extra_headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
        Bytes::from(out)
    }
}

/// A JSON error body as PROTOCOL.md writes it: `{"error":CODE,"message":...}`.
pub(crate) fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": code, "message": message })).unwrap_or_default()
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// An HTTP answer from the hub, rendered by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiResponse {
    pub(crate) status: u16,
    /// JSON body; empty for 204.
    pub(crate) body: Vec<u8>,
    pub(crate) retry_after_s: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_response_forbids_sniffing_and_framing() {
        let text = |extra: &[(&str, String)]| {
            let r = Response {
                status: 404,
                content_type: "application/json",
                body: b"{}",
                extra_headers: extra,
                close: false,
            };
            String::from_utf8(r.encode().to_vec()).unwrap()
        };
        let plain = text(&[]);
        assert!(plain.contains("\r\nX-Content-Type-Options: nosniff\r\n"), "{plain}");
        assert!(plain.contains("\r\nX-Frame-Options: DENY\r\n"), "{plain}");
        assert!(plain.contains("\r\nContent-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n"));
        let own = text(&[("Content-Security-Policy", "default-src 'self'".to_string())]);
        assert_eq!(own.matches("Content-Security-Policy").count(), 1, "{own}");
    }
}
