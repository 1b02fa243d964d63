//! HTTP responses: the status line, the headers every response carries,
//! the JSON bodies of errors and of the account API, and which status each
//! answer has (an error's comes from its [`ErrorCode`]).

use bytes::Bytes;
use serde_json::json;

use super::error::{ErrorCode, Failure};

const JSON: &str = "application/json";

/// A response, serialised at once.
struct Response<'a> {
    status: u16,
    content_type: &'a str,
    body: &'a [u8],
    extra_headers: &'a [(&'a str, String)],
    close: bool,
}

impl Response<'_> {
    fn encode(&self) -> Bytes {
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
fn error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "error": code.as_str(), "message": message })).unwrap_or_default()
}

/// A `200 OK` carrying `body`.
pub(crate) fn ok(content_type: &str, body: &[u8], extra_headers: &[(&str, String)], close: bool) -> Bytes {
    Response { status: 200, content_type, body, extra_headers, close }.encode()
}

/// `GET /healthz`: `ok`, or (503) what this node cannot reach. A node whose
/// database is unreachable refuses every send (`unavailable`); a node of a
/// cluster whose bus is down serves its own sessions but misses the others'
/// messages. Either way a load balancer should send new clients elsewhere.
pub(crate) fn health(database_down: bool, bus_down: bool, close: bool) -> Bytes {
    if !database_down && !bus_down {
        return ok(JSON, b"{\"status\":\"ok\"}", &[], close);
    }
    // Written out rather than through a map, which would sort `status` last.
    let mut body = String::from("{\"status\":\"unavailable\"");
    if database_down {
        body.push_str(",\"database\":\"down\"");
    }
    if bus_down {
        body.push_str(",\"bus\":\"down\"");
    }
    body.push('}');
    let body = body.into_bytes();
    Response { status: 503, content_type: JSON, body: &body, extra_headers: &[], close }.encode()
}

/// `GET /metrics`: Prometheus's text format.
pub(crate) fn metrics(text: &str, close: bool) -> Bytes {
    ok("text/plain; version=0.0.4", text.as_bytes(), &[], close)
}

/// An error answer, with the status of its code.
pub(crate) fn error(code: ErrorCode, message: &str, extra_headers: &[(&str, String)], close: bool) -> Bytes {
    error_with_status(code.status(), code, message, extra_headers, close)
}

fn error_with_status(status: u16, code: ErrorCode, message: &str, extra: &[(&str, String)], close: bool) -> Bytes {
    let body = error_body(code, message);
    Response { status, content_type: JSON, body: &body, extra_headers: extra, close }.encode()
}

/// `/metrics` without its token.
pub(crate) fn metrics_refused(close: bool) -> Bytes {
    let challenge = [("WWW-Authenticate", "Bearer realm=\"metrics\"".to_string())];
    error(ErrorCode::Unauthorized, "send Authorization: Bearer <metrics token>", &challenge, close)
}

/// An upgrade asking for a WebSocket version other than 13 (RFC 6455
/// §4.4: the answer names the versions the server speaks).
pub(crate) fn version_required() -> Bytes {
    let headers = [("Sec-WebSocket-Version", "13".to_string())];
    error(ErrorCode::UpgradeRequired, "WebSocket version 13 is required", &headers, false)
}

/// The hub refused a `GET /ws?token=` upgrade (the connection closes).
/// PROTOCOL.md: a bad token is 401 before the upgrade. Storage failing and
/// too many sessions opened lately are not the token's fault and keep their
/// own status; anything else is told as 401, under its own code.
pub(crate) fn upgrade_refused(f: &Failure) -> Bytes {
    let status = match f.code {
        ErrorCode::Unavailable | ErrorCode::RateLimited => f.code.status(),
        _ => ErrorCode::InvalidToken.status(),
    };
    error_with_status(status, f.code, &f.message, &[], true)
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

impl ApiResponse {
    /// An error, with `Retry-After` when waiting helps.
    pub(crate) fn error(code: ErrorCode, message: &str, retry_after_s: Option<u64>) -> ApiResponse {
        ApiResponse { status: code.status(), body: error_body(code, message), retry_after_s }
    }

    /// `POST /api/register` made the account: `201 {"user":...}`.
    pub(crate) fn registered(user: &str) -> ApiResponse {
        ApiResponse::json(201, &json!({ "user": user }))
    }

    /// `POST /api/login` signed the user in: `200 {"token","user","expires_ms"}`.
    pub(crate) fn logged_in(token: &str, user: &str, expires_ms: u64) -> ApiResponse {
        ApiResponse::json(200, &json!({ "token": token, "user": user, "expires_ms": expires_ms }))
    }

    /// `POST /api/logout` revoked the token: `204`, no body.
    pub(crate) fn logged_out() -> ApiResponse {
        ApiResponse { status: 204, body: Vec::new(), retry_after_s: None }
    }

    fn json(status: u16, body: &serde_json::Value) -> ApiResponse {
        ApiResponse { status, body: serde_json::to_vec(body).unwrap_or_default(), retry_after_s: None }
    }

    /// The response's bytes.
    pub(crate) fn encode(&self, close: bool) -> Bytes {
        let retry = self.retry_after_s.map(|s| ("Retry-After", s.to_string()));
        let headers: Vec<(&str, String)> = retry.into_iter().collect();
        Response { status: self.status, content_type: JSON, body: &self.body, extra_headers: &headers, close }.encode()
    }
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

    fn parse(bytes: &Bytes) -> (String, serde_json::Value) {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    }

    #[test]
    fn health_is_ok_or_503_naming_what_is_down() {
        let text = |database_down, bus_down| String::from_utf8(health(database_down, bus_down, true).to_vec()).unwrap();
        let ok = text(false, false);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("{\"status\":\"ok\"}"), "{ok}");
        for (database, bus, body) in [
            (false, true, r#"{"status":"unavailable","bus":"down"}"#),
            (true, false, r#"{"status":"unavailable","database":"down"}"#),
            (true, true, r#"{"status":"unavailable","database":"down","bus":"down"}"#),
        ] {
            let down = text(database, bus);
            assert!(down.starts_with("HTTP/1.1 503 ") && down.ends_with(body), "{down}");
        }
    }

    #[test]
    fn an_error_answer_has_its_codes_status_and_body() {
        let (head, body) = parse(&error(ErrorCode::NotFound, "no such path", &[], false));
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"), "{head}");
        assert!(!head.contains("Connection: close"), "{head}");
        assert_eq!(body, json!({"error":"not_found","message":"no such path"}));
        let (head, body) = parse(&error(ErrorCode::MethodNotAllowed, "method not allowed", &[], true));
        assert!(head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && head.ends_with("Connection: close"));
        assert_eq!(body["error"], "bad_request");
    }

    #[test]
    fn a_refused_token_upgrade_is_401_unless_busy_or_limited() {
        let status = |code| {
            let (head, body) = parse(&upgrade_refused(&Failure::new(code, "m")));
            assert!(head.ends_with("Connection: close"), "{head}");
            assert_eq!(body["error"], code.as_str());
            head[9..12].parse::<u16>().unwrap()
        };
        assert_eq!(status(ErrorCode::InvalidToken), 401);
        assert_eq!(status(ErrorCode::NameTaken), 401, "a guest holds the name: still no session for this token");
        assert_eq!(status(ErrorCode::Unavailable), 503);
        assert_eq!(status(ErrorCode::RateLimited), 429);
    }

    #[test]
    fn api_answers_carry_retry_after_only_when_set() {
        let (head, body) = parse(&ApiResponse::error(ErrorCode::RateLimited, "wait", Some(7)).encode(false));
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n") && head.contains("\r\nRetry-After: 7"));
        assert_eq!(body, json!({"error":"rate_limited","message":"wait"}));
        let (head, body) = parse(&ApiResponse::registered("Alice").encode(true));
        assert!(head.starts_with("HTTP/1.1 201 Created\r\n") && !head.contains("Retry-After"), "{head}");
        assert!(head.ends_with("Connection: close"), "{head}");
        assert_eq!(body, json!({"user":"Alice"}));
        let (_, body) = parse(&ApiResponse::logged_in("t", "alice", 9).encode(false));
        assert_eq!(body, json!({"token":"t","user":"alice","expires_ms":9}));
        let (head, body) = parse(&ApiResponse::logged_out().encode(false));
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\n") && head.contains("Content-Length: 0\r\n"));
        assert_eq!(body, serde_json::Value::Null);
    }

    #[test]
    fn the_metrics_refusal_challenges_for_a_bearer_token() {
        let (head, body) = parse(&metrics_refused(false));
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("\r\nWWW-Authenticate: Bearer realm=\"metrics\""), "{head}");
        assert_eq!(body["error"], "unauthorized");
        let (head, _) = parse(&version_required());
        assert!(head.starts_with("HTTP/1.1 426 Upgrade Required\r\n") && head.contains("Sec-WebSocket-Version: 13"));
    }
}
