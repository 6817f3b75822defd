//! Redis adapters: presence shared by every node (with expiring entries, so a crashed
//! node's users go offline by themselves), the registry of which node holds which user's
//! connections, cluster-wide rate limits, and a cache of each conversation's newest
//! history page.
//!
//! # Layout
//! - [`connection`]: engine address and mutual TLS; one auto-reconnecting connection.
//! - [`presence`]: the `Presence` port and the connection registry.
//! - [`rate_limit`]: the `RateLimiter` port as token buckets in Redis.
//! - [`recent_cache`]: the `RecentCache` port: each conversation's newest history page.
//!
//! Redis keeps nothing that matters for correctness: every key here is rebuilt by the
//! nodes within a heartbeat after Redis restarts empty (presence, registry) or simply
//! starts over (rate limits), or is read from PostgreSQL again (cached pages). Redis
//! is never the only place a message is.

pub mod connection;
pub mod presence;
pub mod rate_limit;
pub mod recent_cache;

pub use connection::{RedisOptions, TlsFiles};
pub use presence::RedisPresence;
pub use rate_limit::RedisRateLimiter;
pub use recent_cache::RedisRecentCache;
