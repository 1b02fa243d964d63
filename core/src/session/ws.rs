//! The WebSocket phase: frames in, requests to the hub, replies out.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::LazyLock;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::{Ctx, Login, Phase, Session};
use crate::link::{Auth, Tag, ToHubInner};
use crate::render::reply::reply_json;
use crate::render::CloseReason;
use crate::render::{ErrorCode, Failure, Reply};
use crate::transport::request::{self, ClientRequest, HelloAuth, RequestKind};
use crate::transport::ws::{close_frame, encode_frame, text_frame, WsEvent};

/// The heartbeat ping, the same bytes for every session.
pub(super) static PING: LazyLock<Bytes> = LazyLock::new(|| encode_frame(OpCode::Control(Control::Ping), b""));

impl Session {
    pub(super) fn process_ws(&mut self, ctx: &mut Ctx<'_>, buf: &[u8]) -> usize {
        let Phase::Ws { decoder, .. } = &mut self.phase else { return 0 };
        match decoder.decode(buf, ctx.config.max_frame) {
            Err(e) => {
                self.close(ctx, CloseReason::Frame(e));
                buf.len()
            }
            Ok((used, event)) => {
                if let Some(event) = event {
                    self.ws_event(ctx, event);
                }
                used
            }
        }
    }

    fn ws_event(&mut self, ctx: &mut Ctx<'_>, event: WsEvent) {
        let echo = matches!(self.phase, Phase::Ws { echo: true, .. });
        match event {
            // RFC 6455 §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST
            // send a Pong frame in response", with the same payload.
            WsEvent::Ping(payload) => self.send(ctx, encode_frame(OpCode::Control(Control::Pong), &payload)),
            WsEvent::Pong => {}
            WsEvent::Close(code) => {
                // §5.5.1: echo the status code back, then close.
                let reply = code.map_or(CloseCode::Normal, CloseCode::from);
                self.outbox.push_unbounded(close_frame(reply, ""));
                self.enter_closing(ctx);
            }
            WsEvent::Text(data) if echo => self.send(ctx, text_frame(&data)),
            WsEvent::Binary(data) if echo => self.send(ctx, encode_frame(OpCode::Data(Data::Binary), &data)),
            WsEvent::Binary(_) => {
                ctx.metrics.messages_received.fetch_add(1, Relaxed);
                if self.rate_ok(ctx) {
                    let f = Failure::new(ErrorCode::BadJson, "binary frames are not accepted; send JSON text");
                    self.ws_refuse(ctx, None, "binary", f);
                } else {
                    self.rate_limited(ctx, None, "binary");
                }
            }
            WsEvent::Text(data) => self.ws_request(ctx, &data),
        }
    }

    fn ws_login(&self) -> Login {
        match self.phase {
            Phase::Ws { login, .. } => login,
            _ => Login::Anonymous,
        }
    }

    fn set_ws_login(&mut self, to: Login) {
        if let Phase::Ws { login, .. } = &mut self.phase {
            *login = to;
        }
    }

    fn rate_ok(&mut self, ctx: &Ctx<'_>) -> bool {
        self.rate.allow(ctx.now.instant, ctx.config.rate, ctx.config.burst)
    }

    /// Before decoding: `request` is the frame's `type` text, whatever it is.
    fn rate_limited(&mut self, ctx: &mut Ctx<'_>, reference: Option<&str>, request: &str) {
        ctx.metrics.rate_limited.fetch_add(1, Relaxed);
        let rate = ctx.config.rate;
        let f =
            Failure::new(ErrorCode::RateLimited, format!("more than {rate} messages a second; this one was dropped"));
        self.ws_refuse(ctx, reference, request, f);
    }

    fn ws_request(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        ctx.metrics.messages_received.fetch_add(1, Relaxed);
        let decoded = request::decode(data);
        let reference = decoded.reference.as_deref();
        let kind_text = decoded.kind.as_deref().unwrap_or("");
        if !self.rate_ok(ctx) {
            return self.rate_limited(ctx, reference, kind_text);
        }
        let request = match decoded.request {
            Ok(r) => r,
            Err(e) => return self.ws_refuse(ctx, reference, kind_text, Failure::from_request_error(e, kind_text)),
        };
        let kind = request.kind();
        let tag = Tag::Ws { reference: decoded.reference.clone(), kind };
        match request {
            ClientRequest::Hello { auth } => {
                if self.ws_login() != Login::Anonymous {
                    let f = Failure::new(ErrorCode::AlreadyAuthenticated, "this session has said hello already");
                    return self.ws_reply(ctx, reference, kind, &Err(f));
                }
                self.set_ws_login(Login::Pending);
                let auth = match auth {
                    HelloAuth::Token(t) => Auth::Token(t),
                    HelloAuth::Guest(n) => Auth::Guest(n),
                    HelloAuth::Resume { name, resume } => Auth::Resume { name, resume },
                };
                ctx.to_hub.push(ToHubInner::Hello { sid: self.id, tag, auth, line: false, peer: self.peer });
            }
            _ if self.ws_login() != Login::Welcomed => {
                let f = Failure::new(ErrorCode::Unauthenticated, "send hello first");
                self.ws_reply(ctx, reference, kind, &Err(f));
            }
            ClientRequest::Ping => self.ws_reply(ctx, reference, kind, &Ok(Reply::Pong)),
            request => {
                // Membership may wait for storage: later requests of this
                // connection wait for it too, so that a `send` right after a
                // `join` finds the user in the room.
                if matches!(request, ClientRequest::Join { .. } | ClientRequest::Leave { .. }) {
                    self.paused = true;
                }
                ctx.to_hub.push(ToHubInner::Request { sid: self.id, tag, request });
            }
        }
    }

    /// The answer to a decoded request; a refused `hello` may be sent again.
    pub(super) fn ws_reply(
        &mut self,
        ctx: &mut Ctx<'_>,
        reference: Option<&str>,
        kind: RequestKind,
        result: &Result<Reply, Failure>,
    ) {
        if kind == RequestKind::Hello && result.is_err() && self.ws_login() == Login::Pending {
            self.set_ws_login(Login::Anonymous);
        }
        self.send(ctx, text_frame(&reply_json(reference, kind.as_str(), result)));
    }

    /// The error for a frame that is no request (or is refused before it is
    /// decoded): it changes no state, whatever `type` text the client chose.
    fn ws_refuse(&mut self, ctx: &mut Ctx<'_>, reference: Option<&str>, request: &str, failure: Failure) {
        self.send(ctx, text_frame(&reply_json(reference, request, &Err(failure))));
    }

    /// A reply from the hub to a WebSocket request; the answer to a `join`
    /// or `leave` lets the requests behind it through.
    pub(super) fn ws_hub_reply(
        &mut self,
        ctx: &mut Ctx<'_>,
        reference: Option<&str>,
        kind: RequestKind,
        result: &Result<Reply, Failure>,
    ) {
        self.ws_reply(ctx, reference, kind, result);
        if self.paused && matches!(kind, RequestKind::Join | RequestKind::Leave) {
            self.resume(ctx);
        }
    }
}
