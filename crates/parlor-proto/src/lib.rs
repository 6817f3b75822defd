//! Parlor's wire protocol, shared by the server and every client.
//!
//! # Layout
//! - [`error`]: the stable machine-readable error codes and the error body.
//! - [`ws`]: WebSocket frames, JSON in text frames, tagged by `"type"`.
//! - [`frame_json`]: server frames encoded as JSON text (the hot ones by hand).
//! - [`rest`]: REST request and response bodies.
//! - [`notify`]: push targets, the in-app notification feed, mute and do-not-disturb.
//! - [`ids`]: 64-bit ids travel as decimal strings, because JavaScript numbers lose
//!   precision above 2^53.
//!
//! Nothing here does I/O; the types only describe what crosses the wire.

pub mod admin;
pub mod error;
pub mod frame_json;
pub mod ids;
pub mod notify;
pub mod rest;
pub mod ws;

pub use error::{ErrorBody, ErrorCode};
pub use ids::Id;

/// Close codes the server uses on WebSocket connections, besides the standard ones
/// (1000 normal, 1001 going away, 1008 policy, 1009 too big).
pub mod close {
    /// The token in `hello` is missing, malformed, expired or revoked.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The first frame was not a valid `hello`.
    pub const PROTOCOL: u16 = 4002;
    /// No `hello` arrived in time.
    pub const HELLO_TIMEOUT: u16 = 4008;
    /// The client sent frames faster than allowed for too long.
    pub const RATE_LIMITED: u16 = 4029;
    /// The server could not serve the connection now (its store is unreachable, say):
    /// reconnect with backoff, keeping the token (the standard 1011).
    pub const UNAVAILABLE: u16 = 1011;
}
