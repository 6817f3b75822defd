//! A small Rust client for the Parlor chat server: REST over HTTP(S) and the event stream
//! over WS(S).
//!
//! # Why this crate exists
//! The server's end-to-end tests and the load generator both need to talk to a real
//! server exactly as any other client would. Keeping that code in one place means the
//! tests exercise the documented wire protocol ([`parlor_proto`]) rather than server
//! internals, and the load generator gets the same behaviour the tests verified.
//!
//! # Layout
//! - [`error`]: [`ClientError`], one error type for transport, API and protocol failures.
//! - [`tls`]: a rustls configuration that trusts exactly the given roots (self-signed
//!   test certificates), shared by HTTPS and WSS.
//! - [`http`]: [`Http`], one method per REST endpoint plus raw helpers for bad-input tests.
//! - [`ws`]: [`WsClient`], a thin, timeout-aware wrapper around one WebSocket connection.
//!
//! The client does no retries and keeps no state besides the connection: tests need to
//! see every error exactly as the server sent it.

pub mod error;
pub mod http;
pub mod tls;
pub mod ws;

pub use error::{ClientError, Result};
pub use http::Http;
pub use ws::{WsClient, WsEvent};

pub use parlor_proto as proto;
