//! The one error type of the client.
//!
//! Tests branch on *what kind* of failure happened: an API error carries the server's
//! stable [`ErrorCode`] (never the message), a WebSocket close carries the close code,
//! and transport trouble is kept apart from both so that a flaky network is never
//! mistaken for a server decision.

use parlor_proto::{ErrorBody, ErrorCode};

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-2xx status. When the body was not a valid
    /// [`ErrorBody`], `body` is synthesized with code [`ErrorCode::Internal`] and the raw
    /// text in the message.
    #[error("HTTP {status}: {} ({})", body.code, body.message)]
    Api { status: u16, body: ErrorBody },
    /// Connecting, TLS, reading or writing failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The server sent something the protocol does not allow (bad JSON, unexpected frame).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Nothing arrived within the given time.
    #[error("timed out")]
    Timeout,
    /// The WebSocket connection is closed. `code` is `None` when the connection ended
    /// without a close frame (e.g. the server process died).
    #[error("connection closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
}

impl ClientError {
    /// The server's error code, for API errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// The HTTP status, for API errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Builds an [`ClientError::Api`] from a status and a raw response body.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> ClientError {
        let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| ErrorBody {
            code: ErrorCode::Internal,
            message: if body.is_empty() {
                "empty error body".to_owned()
            } else {
                format!(
                    "unparseable error body: {}",
                    truncate(&String::from_utf8_lossy(body), 512)
                )
            },
            retry_after_ms: None,
        });
        ClientError::Api { status, body }
    }
}

/// Formats an error with its chain of sources; the top-level messages of `reqwest` and
/// `rustls` errors alone rarely say what went wrong.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s
}

/// Truncates to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
