//! What went wrong, as the client is told: every PROTOCOL.md error code
//! lives in [`ErrorCode`], and only here.

/// PROTOCOL.md's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    BadJson,
    BadRequest,
    UnknownType,
    Unauthenticated,
    AlreadyAuthenticated,
    InvalidToken,
    InvalidCredentials,
    GuestsDisabled,
    BadName,
    NameTaken,
    NotMember,
    NoSuchUser,
    TooLong,
    RateLimited,
    TooManyRooms,
    InboxFull,
    Unavailable,
    /// HTTP 401: a request for a protected resource without the right credentials.
    Unauthorized,
    /// HTTP 403: a request this server will not serve to this client.
    Forbidden,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::GuestsDisabled => "guests_disabled",
            ErrorCode::BadName => "bad_name",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NoSuchUser => "no_such_user",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::InboxFull => "inbox_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
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
}
