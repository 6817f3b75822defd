//! Parlor's domain core: what a chat is, its rules, and the ports through which it reaches
//! storage and the bus. Nothing here opens a socket or a file.
//!
//! # Layout
//! - [`snowflake`]: 64-bit time-ordered ids (timestamp, machine id, sequence).
//! - [`model`]: domain values (events, new messages, membership commands, pages).
//! - [`presence`]: online/offline with a grace period, status, last seen.
//! - [`rules`]: pure validation and authorization rules, shared by every adapter.
//! - [`ports`]: the traits adapters implement (store, bus, rate limiter).
//! - [`search`]: how text is tokenized for search (CJK bigrams) and highlighted.
//! - [`backlog`]: the merge that puts a user's sync events in position order.
//! - [`uploads`]: uploads, blobs and the rules for hostile files (names, types).
//! - [`notify`]: who is notified of a message (push and feed rules) and the values
//!   the notification ports carry.
//! - [`notifier`]: the service that turns committed messages into feed items and pushes.
//! - [`chat`]: the chat service, the one entry point the server calls.
//! - [`error`]: the domain error, carrying a stable wire code.
//!
//! Architecture invariant: this crate never imports an adapter or a transport; adapters
//! depend on it, never the other way round.

pub mod backlog;
pub mod chat;
pub mod error;
pub mod model;
pub mod notifier;
pub mod notify;
pub mod ports;
pub mod presence;
pub mod rules;
pub mod search;
pub mod snowflake;
pub mod uploads;

pub use chat::Chat;
pub use error::{Error, Result};
pub use parlor_proto::Id;
