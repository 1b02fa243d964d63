//! What went wrong, as the client is told. [`ErrorCode`] is the one mapping
//! from an error to what every transport shows of it: the code string
//! (`code` of a WebSocket `error`, `error` of an HTTP error body), the HTTP
//! status, and the code a line-protocol `! CODE message` line prints. No
//! error code is written anywhere else.

use crate::transport::http::HttpError;
use crate::transport::request::RequestError;

/// Declares [`ErrorCode`] from one table, so that the enum, its list of
/// variants and its three renderings cannot drift apart. A row is
/// `Variant: "code", status;`, or `Variant: "code", status, line "code";`
/// when the line protocol has always printed another code.
macro_rules! error_codes {
    (@line $code:literal) => { $code };
    (@line $code:literal, $line:literal) => { $line };
    ($($(#[doc = $doc:literal])* $name:ident: $code:literal, $status:literal $(, line $line:literal)?;)*) => {
        /// Every error a client is told of (PROTOCOL.md's error codes, and
        /// the HTTP refusals that share `bad_request` with their own status).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum ErrorCode {
            $($(#[doc = $doc])* $name,)*
        }

        impl ErrorCode {
            /// Every variant, in table order.
            #[cfg(test)]
            pub(crate) const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code on the wire: a WebSocket `error`'s `code`, an HTTP
            /// error body's `error`.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $code,)*
                }
            }

            /// The HTTP status of an answer carrying this error.
            pub(crate) fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$name => $status,)*
                }
            }

            /// The code of a line-protocol `! CODE message` line.
            pub(crate) fn line_code(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => error_codes!(@line $code $(, $line)?),)*
                }
            }
        }
    };
}

error_codes! {
    BadJson: "bad_json", 400;
    BadRequest: "bad_request", 400;
    UnknownType: "unknown_type", 400;
    Unauthenticated: "unauthenticated", 401;
    AlreadyAuthenticated: "already_authenticated", 409;
    InvalidToken: "invalid_token", 401;
    InvalidCredentials: "invalid_credentials", 401;
    GuestsDisabled: "guests_disabled", 403;
    BadName: "bad_name", 400;
    NameTaken: "name_taken", 409;
    NotMember: "not_member", 403;
    NoSuchUser: "no_such_user", 404;
    TooLong: "too_long", 400;
    RateLimited: "rate_limited", 429;
    TooManyRooms: "too_many_rooms", 403;
    InboxFull: "inbox_full", 429;
    Unavailable: "unavailable", 503;
    /// A request for a protected resource without the right credentials.
    Unauthorized: "unauthorized", 401;
    /// A request this server will not serve to this client.
    Forbidden: "forbidden", 403;
    /// No such HTTP path.
    NotFound: "not_found", 404;
    /// A password outside 8 to 1024 characters. The line port's `/register`
    /// has always called it a `bad_request`.
    BadPassword: "bad_password", 400, line "bad_request";
    /// An HTTP method the path does not serve.
    MethodNotAllowed: "bad_request", 405;
    /// A WebSocket path asked for without the upgrade (or with a version
    /// other than 13).
    UpgradeRequired: "bad_request", 426;
    /// A request head past `MAX_HEAD`.
    HeadTooLarge: "bad_request", 431;
    /// A request body past `MAX_BODY`.
    BodyTooLarge: "bad_request", 413;
    /// A chunked request body.
    LengthRequired: "bad_request", 411;
    /// No login in time; only a line session is told, in its last line
    /// (HTTP and WebSocket sessions just close).
    Timeout: "timeout", 408;
    /// The client does not read what it is sent; only a line session is
    /// told, in its last line (WebSocket gets close 1008 `slow consumer`).
    SlowConsumer: "slow_consumer", 429;
}

impl From<HttpError> for ErrorCode {
    fn from(e: HttpError) -> ErrorCode {
        match e {
            HttpError::Malformed => ErrorCode::BadRequest,
            HttpError::HeadTooLarge => ErrorCode::HeadTooLarge,
            HttpError::BodyTooLarge => ErrorCode::BodyTooLarge,
            HttpError::Chunked => ErrorCode::LengthRequired,
        }
    }
}

/// An error with its human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    /// Why a WebSocket frame is no request; `kind` is its `type` text,
    /// whatever the client wrote.
    pub(crate) fn from_request_error(e: RequestError, kind: &str) -> Failure {
        match e {
            RequestError::BadJson => Failure::new(ErrorCode::BadJson, "a frame must hold one JSON object"),
            RequestError::BadField(field) => {
                Failure::new(ErrorCode::BadRequest, format!("missing or invalid field {field}"))
            }
            RequestError::UnknownType => Failure::new(ErrorCode::UnknownType, format!("unknown request type {kind}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md's codes and statuses (its error code list, "Accounts",
    /// "Limits" and the server API's statuses), and the line codes the line
    /// port prints, by variant.
    fn protocol(code: ErrorCode) -> (&'static str, u16, &'static str) {
        match code {
            ErrorCode::BadJson => ("bad_json", 400, "bad_json"),
            ErrorCode::BadRequest => ("bad_request", 400, "bad_request"),
            ErrorCode::UnknownType => ("unknown_type", 400, "unknown_type"),
            ErrorCode::Unauthenticated => ("unauthenticated", 401, "unauthenticated"),
            ErrorCode::AlreadyAuthenticated => ("already_authenticated", 409, "already_authenticated"),
            ErrorCode::InvalidToken => ("invalid_token", 401, "invalid_token"),
            ErrorCode::InvalidCredentials => ("invalid_credentials", 401, "invalid_credentials"),
            ErrorCode::GuestsDisabled => ("guests_disabled", 403, "guests_disabled"),
            ErrorCode::BadName => ("bad_name", 400, "bad_name"),
            ErrorCode::NameTaken => ("name_taken", 409, "name_taken"),
            ErrorCode::NotMember => ("not_member", 403, "not_member"),
            ErrorCode::NoSuchUser => ("no_such_user", 404, "no_such_user"),
            ErrorCode::TooLong => ("too_long", 400, "too_long"),
            ErrorCode::RateLimited => ("rate_limited", 429, "rate_limited"),
            ErrorCode::TooManyRooms => ("too_many_rooms", 403, "too_many_rooms"),
            ErrorCode::InboxFull => ("inbox_full", 429, "inbox_full"),
            ErrorCode::Unavailable => ("unavailable", 503, "unavailable"),
            ErrorCode::Unauthorized => ("unauthorized", 401, "unauthorized"),
            ErrorCode::Forbidden => ("forbidden", 403, "forbidden"),
            ErrorCode::NotFound => ("not_found", 404, "not_found"),
            ErrorCode::BadPassword => ("bad_password", 400, "bad_request"),
            ErrorCode::MethodNotAllowed => ("bad_request", 405, "bad_request"),
            ErrorCode::UpgradeRequired => ("bad_request", 426, "bad_request"),
            ErrorCode::HeadTooLarge => ("bad_request", 431, "bad_request"),
            ErrorCode::BodyTooLarge => ("bad_request", 413, "bad_request"),
            ErrorCode::LengthRequired => ("bad_request", 411, "bad_request"),
            ErrorCode::Timeout => ("timeout", 408, "timeout"),
            ErrorCode::SlowConsumer => ("slow_consumer", 429, "slow_consumer"),
        }
    }

    #[test]
    fn every_code_renders_as_the_protocol_says() {
        for &code in ErrorCode::ALL {
            assert_eq!((code.as_str(), code.status(), code.line_code()), protocol(code), "{code:?}");
        }
    }

    #[test]
    fn codes_are_wire_words_and_each_status_is_an_error() {
        for &code in ErrorCode::ALL {
            for s in [code.as_str(), code.line_code()] {
                assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code:?}: {s}");
            }
            assert!((400..600).contains(&code.status()), "{code:?}");
        }
    }

    #[test]
    fn only_http_refusals_share_a_code() {
        // Two errors with one code differ in their HTTP status only: a
        // client reading the code alone never confuses two meanings.
        for (i, &a) in ErrorCode::ALL.iter().enumerate() {
            for &b in &ErrorCode::ALL[i + 1..] {
                if a.as_str() == b.as_str() {
                    assert_eq!(a.as_str(), "bad_request", "{a:?} and {b:?}");
                    assert_ne!(a.status(), b.status(), "{a:?} and {b:?}");
                }
            }
        }
    }

    #[test]
    fn http_errors_keep_their_statuses() {
        let status = |e| ErrorCode::from(e).status();
        assert_eq!(status(HttpError::Malformed), 400);
        assert_eq!(status(HttpError::HeadTooLarge), 431);
        assert_eq!(status(HttpError::BodyTooLarge), 413);
        assert_eq!(status(HttpError::Chunked), 411);
        for e in [HttpError::Malformed, HttpError::HeadTooLarge, HttpError::BodyTooLarge, HttpError::Chunked] {
            assert_eq!(ErrorCode::from(e).as_str(), "bad_request");
        }
    }

    #[test]
    fn request_errors_name_the_field_or_type() {
        let f = Failure::from_request_error(RequestError::BadField("room"), "join");
        assert_eq!((f.code, f.message.as_str()), (ErrorCode::BadRequest, "missing or invalid field room"));
        let f = Failure::from_request_error(RequestError::UnknownType, "dance");
        assert_eq!((f.code, f.message.as_str()), (ErrorCode::UnknownType, "unknown request type dance"));
        assert_eq!(Failure::from_request_error(RequestError::BadJson, "").code, ErrorCode::BadJson);
    }
}
