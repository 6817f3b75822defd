//! The embedded default: every port of `parlor-core` implemented inside the process, with
//! no external service.
//!
//! # Layout
//! - [`sqlite`]: the store, one SQLite database in WAL mode under the data directory.
//!   One writer thread commits in groups; a small pool of connections serves reads.
//! - [`bus`]: the in-process bus, an ordered fan-in to this node's connection hub.
//! - [`rate_limit`]: token buckets in memory.

pub mod bus;
pub mod rate_limit;
pub mod sqlite;

pub use bus::InProcessBus;
pub use rate_limit::MemoryRateLimiter;
pub use sqlite::{Durability, SqliteStore, StoreOptions};
