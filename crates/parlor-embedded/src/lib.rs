//! The embedded default: every port of `parlor-core` implemented inside the process, with
//! no external service.
//!
//! # Layout
//! - [`sqlite`]: the store, one SQLite database in WAL mode under the data directory.
//!   One writer thread commits in groups; a small pool of connections serves reads;
//!   the search index is a projection in its own file (`search.db`).
//! - [`bus`]: the in-process bus, an ordered fan-in to this node's connection hub.
//! - [`presence`]: who is online, in memory.
//! - [`rate_limit`]: token buckets in memory.

pub mod bus;
pub mod presence;
pub mod rate_limit;
pub mod sqlite;

pub use bus::InProcessBus;
pub use presence::MemoryPresence;
pub use rate_limit::MemoryRateLimiter;
pub use sqlite::{Durability, SqliteStore, StoreOptions};
