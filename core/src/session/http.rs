//! The HTTP phase: the small API, `/healthz`, `/metrics`, the web page, and
//! the WebSocket upgrade.

use serde_json::Value;

use super::timers::Timer;
use super::{Ctx, Login, Phase, Session};
use crate::config::Config;
use crate::link::{ApiCall, Auth, Tag, ToHubInner};
use crate::render::reply::reply_json;
use crate::render::{http, CloseReason, ErrorCode, Failure, Reply};
use crate::transport::http::{parse_request, Request};
use crate::transport::ws::{accept_response, text_frame, Decoder};

/// The web client, embedded at build time: the page, its script and its styles.
const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const APP_CSS: &str = include_str!("../../web/app.css");

impl Session {
    pub(super) fn process_http(&mut self, ctx: &mut Ctx<'_>, buf: &[u8]) -> usize {
        match parse_request(buf) {
            Ok(None) => 0,
            Ok(Some((request, used))) => {
                // Keep-alive connections get the handshake time-out again as
                // their idle limit, but an upgrade does not: the upgrade and
                // its `hello` share one budget, from the moment the
                // connection opened (or went idle after its last answer), or
                // a client could stall the upgrade and then `hello` in turn.
                if !is_upgrade_path(&request.path) {
                    self.timers.set(Timer::Handshake, ctx.now.instant + ctx.config.handshake_timeout);
                }
                self.route(ctx, request);
                used
            }
            Err(e) => {
                self.respond_error(ctx, ErrorCode::from(e), &e.to_string(), true);
                buf.len()
            }
        }
    }

    fn route(&mut self, ctx: &mut Ctx<'_>, req: Request) {
        let close = req.close;
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => {
                use std::sync::atomic::Ordering::Relaxed;
                let bus_down = ctx.config.cluster && ctx.metrics.bus_up.load(Relaxed) != 1;
                let database_down = ctx.metrics.database_down.load(Relaxed);
                self.send(ctx, http::health(database_down, bus_down, close))
            }
            ("GET", "/metrics") if !metrics_allowed(ctx.config, &req) => self.send(ctx, http::metrics_refused(close)),
            ("GET", "/metrics") => self.send(ctx, http::metrics(&ctx.metrics.render(), close)),
            ("GET", "/" | "/index.html") => {
                let policy = [("Content-Security-Policy", page_policy(req.header("host")))];
                self.send(ctx, http::ok("text/html; charset=utf-8", INDEX_HTML.as_bytes(), &policy, close))
            }
            ("GET", "/app.js") => {
                self.send(ctx, http::ok("text/javascript; charset=utf-8", APP_JS.as_bytes(), &[], close))
            }
            ("GET", "/app.css") => self.send(ctx, http::ok("text/css; charset=utf-8", APP_CSS.as_bytes(), &[], close)),
            ("GET", "/ws") => self.upgrade(ctx, &req, false),
            ("GET", "/echo") if ctx.config.echo => self.upgrade(ctx, &req, true),
            ("POST", "/api/register" | "/api/login") => match credentials(&req.body) {
                Err(f) => self.respond_error(ctx, f.code, &f.message, close),
                Ok((user, password)) => {
                    let call = if req.path == "/api/register" {
                        ApiCall::Register { user, password }
                    } else {
                        ApiCall::Login { user, password }
                    };
                    self.paused = true;
                    ctx.to_hub.push(ToHubInner::Api { sid: self.id, call, peer: self.peer });
                }
            },
            ("POST", "/api/logout") => match req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")) {
                Some(token) if !token.trim().is_empty() => {
                    self.paused = true;
                    let call = ApiCall::Logout { token: token.trim().to_string() };
                    ctx.to_hub.push(ToHubInner::Api { sid: self.id, call, peer: self.peer });
                }
                _ => self.respond_error(ctx, ErrorCode::InvalidToken, "send Authorization: Bearer <token>", close),
            },
            (
                _,
                "/healthz" | "/metrics" | "/" | "/app.js" | "/app.css" | "/ws" | "/api/register" | "/api/login"
                | "/api/logout",
            ) => self.respond_error(ctx, ErrorCode::MethodNotAllowed, "method not allowed", close),
            _ => self.respond_error(ctx, ErrorCode::NotFound, "no such path", close),
        }
        if close && self.paused {
            if let Phase::Http { close_after_reply } = &mut self.phase {
                *close_after_reply = true;
            }
        } else if close {
            self.close(ctx, CloseReason::Done);
        }
    }

    fn upgrade(&mut self, ctx: &mut Ctx<'_>, req: &Request, echo: bool) {
        if !req.header_has_token("upgrade", "websocket") || !req.header_has_token("connection", "upgrade") {
            return self.respond_error(ctx, ErrorCode::UpgradeRequired, "this path needs a WebSocket upgrade", false);
        }
        if req.header("sec-websocket-version") != Some("13") {
            return self.send(ctx, http::version_required());
        }
        let Some(key) = req.header("sec-websocket-key").filter(|k| !k.is_empty()).map(str::to_owned) else {
            return self.respond_error(ctx, ErrorCode::BadRequest, "Sec-WebSocket-Key is missing", true);
        };
        // RFC 6455 §4.2.1: the key "when decoded, is 16 bytes in length".
        if !is_websocket_key(&key) {
            let message = "Sec-WebSocket-Key is not base64 of 16 bytes";
            return self.respond_error(ctx, ErrorCode::BadRequest, message, true);
        }
        // A page from another site must not act with this user's cookies or
        // network position (cross-site WebSocket hijacking); clients that
        // are not browsers send no Origin and are not affected.
        if let Some(origin) = req.header("origin").filter(|o| !ctx.config.origin_allowed(o)) {
            ctx.metrics.origin_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let message = format!("pages from {} may not connect here", origin.chars().take(100).collect::<String>());
            return self.respond_error(ctx, ErrorCode::Forbidden, &message, true);
        }
        match req.query_param("token").filter(|_| !echo) {
            Some(token) if token.is_empty() => {
                self.respond_error(ctx, ErrorCode::InvalidToken, "the token is empty", true);
                self.close(ctx, CloseReason::Done);
            }
            Some(token) => {
                self.paused = true;
                self.phase = Phase::Upgrading;
                ctx.to_hub.push(ToHubInner::Hello {
                    sid: self.id,
                    tag: Tag::Upgrade { key },
                    auth: Auth::Token(token),
                    line: false,
                    peer: self.peer,
                });
            }
            None => self.become_ws(ctx, &key, echo),
        }
    }

    fn become_ws(&mut self, ctx: &mut Ctx<'_>, key: &str, echo: bool) {
        self.send(ctx, accept_response(key));
        if self.is_closing() {
            // The `101` alone passed `--max-queue`: the session closed as a
            // slow consumer, and a closing session never opens again.
            return;
        }
        // A slow-consumer close must not drop the `101` (or a response
        // before it): the close frame would follow nothing.
        self.outbox.seal();
        // PROTOCOL.md: invalid UTF-8 on `/ws` is a `bad_json` error, not a close.
        let decoder = if echo { Decoder::default() } else { Decoder::lenient_utf8() };
        self.phase = Phase::Ws { decoder, echo, login: Login::Anonymous };
        if echo {
            // An echo has no `hello`: its handshake ends with the upgrade.
            self.timers.stop(Timer::Handshake);
        }
        self.timers.set(Timer::Ping, ctx.now.instant + ctx.config.heartbeat);
        self.touch(ctx);
    }

    /// The hub's answer to a `?token=` upgrade: 101 and `welcome`, or 401.
    pub(super) fn upgrade_verdict(&mut self, ctx: &mut Ctx<'_>, key: &str, result: Result<Reply, Failure>) {
        match result {
            Ok(reply) => {
                self.become_ws(ctx, key, false);
                if self.is_closing() {
                    return;
                }
                self.send(ctx, text_frame(&reply_json(None, "hello", &Ok(reply))));
                self.resume(ctx);
            }
            Err(f) => {
                self.phase = Phase::Http { close_after_reply: false };
                self.send(ctx, http::upgrade_refused(&f));
                self.close(ctx, CloseReason::Done);
            }
        }
    }

    /// An error answer; with `close`, the connection closes after it.
    pub(super) fn respond_error(&mut self, ctx: &mut Ctx<'_>, code: ErrorCode, message: &str, close: bool) {
        self.send(ctx, http::error(code, message, &[], close));
        if close {
            self.close(ctx, CloseReason::Done);
        }
    }
}

/// The web page's Content-Security-Policy: its script, styles and icon come
/// from this server only (no inline script or style: the page has none),
/// it talks only to this server, over HTTP and its own WebSocket, and no
/// other site may frame it. CSP Level 3 lets `'self'` cover `ws:`/`wss:` to
/// the same host, but older browsers do not, so the host the page was loaded
/// from is named too when it is a plain `host[:port]`.
fn page_policy(host: Option<&str>) -> String {
    let plain = |h: &str| {
        !h.is_empty() && h.len() <= 262 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    let sockets = host.filter(|h| plain(h)).map(|h| format!(" ws://{h} wss://{h}")).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{sockets}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// Whether `/metrics` may be read: always without `--metrics-token`, else
/// with `Authorization: Bearer TOKEN` (the scheme ignores case, RFC 9110 §11.1).
fn metrics_allowed(config: &Config, req: &Request) -> bool {
    let Some(secret) = &config.metrics_token else { return true };
    let Some((scheme, token)) = req.header("authorization").and_then(|h| h.split_once(' ')) else { return false };
    scheme.eq_ignore_ascii_case("bearer") && secret.matches(token.trim().as_bytes())
}

/// Whether `key` is base64 of exactly 16 bytes: 22 characters of the
/// alphabet, the last of them carrying only 2 bits, then `==`.
fn is_websocket_key(key: &str) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = key.as_bytes();
    let value = |b: u8| ALPHABET.iter().position(|&a| a == b);
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22].iter().all(|&b| value(b).is_some())
        && value(bytes[21]).is_some_and(|v| v & 0x0f == 0)
}

/// The paths that turn the connection into a WebSocket.
fn is_upgrade_path(path: &str) -> bool {
    matches!(path, "/ws" | "/echo")
}

/// `{"user":...,"password":...}` from an API body.
fn credentials(body: &[u8]) -> Result<(String, String), Failure> {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::new(ErrorCode::BadJson, "the body must be a JSON object"));
    };
    match (o.get("user").and_then(Value::as_str), o.get("password").and_then(Value::as_str)) {
        (Some(u), Some(p)) => Ok((u.to_string(), p.to_string())),
        _ => Err(Failure::new(ErrorCode::BadRequest, "user and password are required strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_policy_names_only_a_plain_host() {
        let p = page_policy(Some("chat.example:8080"));
        assert!(p.contains("connect-src 'self' ws://chat.example:8080 wss://chat.example:8080;"), "{p}");
        assert!(p.contains("script-src 'self';") && p.contains("frame-ancestors 'none'") && !p.contains("unsafe"));
        for host in [None, Some("evil.example; script-src *"), Some("a b"), Some("")] {
            assert!(page_policy(host).contains("connect-src 'self';"), "{host:?}");
        }
        assert!(page_policy(Some("[::1]:80")).contains("ws://[::1]:80 "));
    }

    #[test]
    fn a_websocket_key_is_base64_of_16_bytes() {
        assert!(is_websocket_key("dGhlIHNhbXBsZSBub25jZQ=="), "RFC 6455's sample");
        assert!(is_websocket_key("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(is_websocket_key("/////////////////////w=="));
        for bad in [
            "",
            "x",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ===",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZ-==",
            "dGhlIHNhbXBsZSBub25jZQ==dGhl",
            "dGhlIHNhbXBsZSBub25jZQAA",
            "dGhlIHNhbXBsZSBub25j",
            "dGhlIHNhbXBsZSBub25jZQ==\u{0}",
        ] {
            assert!(!is_websocket_key(bad), "{bad:?}");
        }
    }
}
