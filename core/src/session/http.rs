//! The HTTP phase: the small API, `/healthz`, `/metrics`, the web page, and
//! the WebSocket upgrade.

use serde_json::Value;

use super::{Ctx, Phase, Session};
use crate::link::{ApiCall, Auth, Tag, ToHubInner};
use crate::reply::{reply_json, Failure, Reply};
use crate::session::CloseReason;
use crate::transport::http::{error_body, parse_request, Request, Response};
use crate::transport::ws::{accept_response, text_frame, Decoder};

/// The web client, embedded at build time.
const INDEX_HTML: &str = include_str!("../../web/index.html");

impl Session {
    pub(super) fn process_http(&mut self, ctx: &mut Ctx<'_>, buf: &[u8]) -> usize {
        match parse_request(buf) {
            Ok(None) => 0,
            Ok(Some((request, used))) => {
                // Keep-alive connections get the handshake time-out again as
                // their idle limit.
                self.handshake_at = Some(ctx.now.instant + ctx.config.handshake_timeout);
                self.route(ctx, request);
                used
            }
            Err(e) => {
                self.respond_error(ctx, e.status(), "bad_request", &e.to_string(), true);
                buf.len()
            }
        }
    }

    fn route(&mut self, ctx: &mut Ctx<'_>, req: Request) {
        let close = req.close;
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/healthz") => self.respond(ctx, 200, "application/json", b"{\"status\":\"ok\"}", &[], close),
            ("GET", "/metrics") => {
                let text = ctx.metrics.render();
                self.respond(ctx, 200, "text/plain; version=0.0.4", text.as_bytes(), &[], close)
            }
            ("GET", "/" | "/index.html") => {
                self.respond(ctx, 200, "text/html; charset=utf-8", INDEX_HTML.as_bytes(), &[], close)
            }
            ("GET", "/ws") => self.upgrade(ctx, &req, false),
            ("GET", "/echo") if ctx.config.echo => self.upgrade(ctx, &req, true),
            ("POST", "/api/register" | "/api/login") => match credentials(&req.body) {
                Err(f) => self.respond_error(ctx, 400, f.code.as_str(), &f.message, close),
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
                _ => self.respond_error(ctx, 401, "invalid_token", "send Authorization: Bearer <token>", close),
            },
            (_, "/healthz" | "/metrics" | "/" | "/ws" | "/api/register" | "/api/login" | "/api/logout") => {
                self.respond_error(ctx, 405, "bad_request", "method not allowed", close)
            }
            _ => self.respond_error(ctx, 404, "not_found", "no such path", close),
        }
        if close && self.paused {
            self.close_after_reply = true;
        } else if close {
            self.close(ctx, CloseReason::Done);
        }
    }

    fn upgrade(&mut self, ctx: &mut Ctx<'_>, req: &Request, echo: bool) {
        if !req.header_has_token("upgrade", "websocket") || !req.header_has_token("connection", "upgrade") {
            return self.respond_error(ctx, 426, "bad_request", "this path needs a WebSocket upgrade", false);
        }
        if req.header("sec-websocket-version") != Some("13") {
            let headers = [("Sec-WebSocket-Version", "13".to_string())];
            let body = error_body("bad_request", "WebSocket version 13 is required");
            return self.respond(ctx, 426, "application/json", &body, &headers, false);
        }
        let Some(key) = req.header("sec-websocket-key").filter(|k| !k.is_empty()).map(str::to_owned) else {
            return self.respond_error(ctx, 400, "bad_request", "Sec-WebSocket-Key is missing", true);
        };
        match req.query_param("token").filter(|_| !echo) {
            Some(token) if token.is_empty() => {
                self.respond_error(ctx, 401, "invalid_token", "the token is empty", true);
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
        // A slow-consumer close must not drop the `101` (or a response
        // before it): the close frame would follow nothing.
        self.outbox.seal();
        // PROTOCOL.md: invalid UTF-8 on `/ws` is a `bad_json` error, not a close.
        let decoder = if echo { Decoder::default() } else { Decoder::lenient_utf8() };
        self.phase = Phase::Ws { decoder, echo };
        if echo {
            // An echo has no `hello`: its handshake ends with the upgrade.
            self.handshake_at = None;
        }
        self.ping_at = Some(ctx.now.instant + ctx.config.heartbeat);
        self.touch(ctx);
    }

    /// The hub's answer to a `?token=` upgrade: 101 and `welcome`, or 401.
    pub(super) fn upgrade_verdict(&mut self, ctx: &mut Ctx<'_>, key: &str, result: Result<Reply, Failure>) {
        match result {
            Ok(reply) => {
                self.become_ws(ctx, key, false);
                self.send(ctx, text_frame(&reply_json(None, "hello", &Ok(reply))));
                self.resume(ctx);
            }
            Err(f) => {
                let status = match f.code {
                    crate::reply::ErrorCode::Unavailable => 503,
                    // Too many sessions opened lately: not a bad token.
                    crate::reply::ErrorCode::RateLimited => 429,
                    _ => 401,
                };
                self.phase = Phase::Http;
                self.respond_error(ctx, status, f.code.as_str(), &f.message, true);
                self.close(ctx, CloseReason::Done);
            }
        }
    }

    pub(super) fn respond(
        &mut self,
        ctx: &mut Ctx<'_>,
        status: u16,
        content_type: &str,
        body: &[u8],
        headers: &[(&str, String)],
        close: bool,
    ) {
        let bytes = Response { status, content_type, body, extra_headers: headers, close }.encode();
        self.send(ctx, bytes);
    }

    pub(super) fn respond_error(&mut self, ctx: &mut Ctx<'_>, status: u16, code: &str, message: &str, close: bool) {
        self.respond(ctx, status, "application/json", &error_body(code, message), &[], close);
        if close {
            self.close(ctx, CloseReason::Done);
        }
    }
}

/// `{"user":...,"password":...}` from an API body.
fn credentials(body: &[u8]) -> Result<(String, String), Failure> {
    use crate::reply::ErrorCode;
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::new(ErrorCode::BadJson, "the body must be a JSON object"));
    };
    match (o.get("user").and_then(Value::as_str), o.get("password").and_then(Value::as_str)) {
        (Some(u), Some(p)) => Ok((u.to_string(), p.to_string())),
        _ => Err(Failure::new(ErrorCode::BadRequest, "user and password are required strings")),
    }
}
