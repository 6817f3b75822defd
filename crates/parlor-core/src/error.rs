use parlor_proto::{ErrorBody, ErrorCode};
use std::borrow::Cow;
use std::fmt;

/// A domain error: a stable code for machines and a short message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    pub retry_after_ms: Option<u64>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Error {
            code: ErrorCode::RateLimited,
            message: "too many requests".into(),
            retry_after_ms: Some(retry_after_ms.max(1)),
        }
    }

    pub fn not_member() -> Self {
        Error::new(ErrorCode::NotMember, "not a member of this conversation")
    }

    pub fn not_found(what: &'static str) -> Self {
        Error::new(ErrorCode::NotFound, what)
    }

    pub fn forbidden(why: &'static str) -> Self {
        Error::new(ErrorCode::Forbidden, why)
    }

    /// A storage or infrastructure failure. Adapters log the cause where it happens; the
    /// client only learns that it may retry.
    pub fn unavailable() -> Self {
        Error::new(ErrorCode::Unavailable, "storage unavailable, retry later")
    }

    pub fn internal() -> Self {
        Error::new(ErrorCode::Internal, "internal error")
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.to_string(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
