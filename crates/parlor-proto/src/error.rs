use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable machine-readable error codes. Clients branch on these, never on messages.
/// Adding a code is compatible; renaming or removing one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or a query parameter could not be parsed.
    BadRequest,
    /// A WebSocket text frame was not valid JSON or lacked required fields.
    MalformedFrame,
    /// A WebSocket frame had an unknown `type`, or was a binary frame.
    UnknownFrame,
    /// A frame or request body exceeded the size limit.
    PayloadTooLarge,
    /// Username does not follow the documented rules.
    InvalidUsername,
    /// Password shorter than 8 characters or longer than 1024 bytes.
    WeakPassword,
    /// Username is already registered (case-insensitively).
    UsernameTaken,
    /// Wrong username or password.
    InvalidCredentials,
    /// Missing or malformed access token.
    Unauthorized,
    /// The access token has expired; refresh it.
    TokenExpired,
    /// The session behind the token was revoked (logout, refresh-token reuse).
    TokenRevoked,
    /// The caller is authenticated but may not do this.
    Forbidden,
    /// The caller is not a member of the conversation.
    NotMember,
    /// Unknown conversation, user or message.
    NotFound,
    /// The message text is empty or only whitespace.
    EmptyMessage,
    /// The message text is larger than the configured limit.
    MessageTooLarge,
    /// The client message id is missing or invalid (1 to 64 printable ASCII characters).
    InvalidClientId,
    /// `limit`, `before` or `after` is out of range, or both `before` and `after` are given.
    InvalidPagination,
    /// The group is full (configured member limit).
    MemberLimit,
    /// The request conflicts with the current state (e.g. a direct conversation with oneself).
    Conflict,
    /// The upload would take the user past their storage quota.
    QuotaExceeded,
    /// The file's type is not accepted by this server.
    UnsupportedType,
    /// The bytes are not of the declared type (e.g. a PDF declared as `image/png`).
    TypeMismatch,
    /// An image or video that cannot be decoded safely: truncated, corrupt, or too
    /// large once decoded (an "image bomb").
    InvalidMedia,
    /// A `Range` header outside the file.
    RangeNotSatisfiable,
    /// A push target whose endpoint, keys, token or URL is malformed or not allowed.
    InvalidTarget,
    /// The push provider of this target is not configured on this server.
    ProviderNotConfigured,
    /// Too many requests; retry after `retry_after_ms`.
    RateLimited,
    /// The server cannot take the request right now (store unavailable, shutting down). Retryable.
    Unavailable,
    /// A bug on the server side. Nothing was changed.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownFrame => "unknown_frame",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidUsername => "invalid_username",
            ErrorCode::WeakPassword => "weak_password",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotFound => "not_found",
            ErrorCode::EmptyMessage => "empty_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::InvalidClientId => "invalid_client_id",
            ErrorCode::InvalidPagination => "invalid_pagination",
            ErrorCode::MemberLimit => "member_limit",
            ErrorCode::Conflict => "conflict",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UnsupportedType => "unsupported_type",
            ErrorCode::TypeMismatch => "type_mismatch",
            ErrorCode::InvalidMedia => "invalid_media",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::ProviderNotConfigured => "provider_not_configured",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status a REST response carries for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::MalformedFrame
            | ErrorCode::UnknownFrame
            | ErrorCode::InvalidUsername
            | ErrorCode::WeakPassword
            | ErrorCode::EmptyMessage
            | ErrorCode::InvalidClientId
            | ErrorCode::InvalidPagination
            | ErrorCode::InvalidTarget => 400,
            ErrorCode::InvalidCredentials
            | ErrorCode::Unauthorized
            | ErrorCode::TokenExpired
            | ErrorCode::TokenRevoked => 401,
            ErrorCode::Forbidden | ErrorCode::NotMember => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::UsernameTaken | ErrorCode::MemberLimit | ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge | ErrorCode::MessageTooLarge | ErrorCode::QuotaExceeded => {
                413
            }
            ErrorCode::UnsupportedType | ErrorCode::TypeMismatch => 415,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::InvalidMedia | ErrorCode::ProviderNotConfigured => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every REST error response, and the payload of the WebSocket `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}
