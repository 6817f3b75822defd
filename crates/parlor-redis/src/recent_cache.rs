//! The newest history page of each conversation, shared by the nodes.
//!
//! # Keys (under `<ns>:recent:`)
//! - `v:<conv>`: the conversation's version, incremented after every committed send,
//!   edit or delete (by the node that made it, before its client hears of the commit).
//! - `p:<conv>`: hash of the page (JSON) and the version it was read under; expires
//!   after [`PAGE_TTL`].
//!
//! A reader takes the version, reads the store, and stores the page only if the version
//! has not moved meanwhile (one Lua script); `get` returns a page only if its version is
//! still the current one. So a page read before a commit is never served after that
//! commit's bump, in whatever order two nodes interleave. If a bump itself fails (Redis
//! unreachable for that one call but serving others), a stale page can live until its
//! expiry: that is what [`PAGE_TTL`] bounds.

use crate::connection::RedisConn;
use crate::connection::RedisOptions;
use async_trait::async_trait;
use parlor_core::model::ConvId;
use parlor_core::ports::RecentCache;
use parlor_proto::rest::History;
use redis::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Longest life of a cached page.
pub const PAGE_TTL: Duration = Duration::from_secs(60);
/// Versions outlive pages by far, so a page can never meet a reset version.
const VERSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// KEYS = page, version; ARGV = version read, page JSON, ttl ms.
const PUT: &str = r#"
if (redis.call('GET', KEYS[2]) or '0') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'page', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"#;

/// KEYS = page, version. The page if it is current.
const GET: &str = r#"
local entry = redis.call('HMGET', KEYS[1], 'v', 'page')
if entry[1] and entry[1] == (redis.call('GET', KEYS[2]) or '0') then
  return entry[2]
end
return false
"#;

pub struct RedisRecentCache {
    conn: RedisConn,
    prefix: String,
    put: Script,
    get: Script,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl RedisRecentCache {
    pub fn new(conn: RedisConn, options: &RedisOptions) -> Self {
        RedisRecentCache {
            conn,
            prefix: format!("{}:recent:", options.namespace),
            put: Script::new(PUT),
            get: Script::new(GET),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn keys(&self, conv: ConvId) -> (String, String) {
        (
            format!("{}p:{}", self.prefix, conv.0),
            format!("{}v:{}", self.prefix, conv.0),
        )
    }
}

#[async_trait]
impl RecentCache for RedisRecentCache {
    async fn get(&self, conv: ConvId) -> Option<History> {
        let (page, version) = self.keys(conv);
        let mut conn = self.conn.clone();
        let raw: Option<String> = match self
            .get
            .key(page)
            .key(version)
            .invoke_async(&mut conn)
            .await
        {
            Ok(raw) => raw,
            Err(e) => {
                tracing::debug!(error = %e, "recent cache read failed");
                None
            }
        };
        let page = raw.and_then(|raw| serde_json::from_str(&raw).ok());
        let counter = if page.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        page
    }

    async fn version(&self, conv: ConvId) -> Option<u64> {
        let (_, version) = self.keys(conv);
        let mut conn = self.conn.clone();
        let current: redis::RedisResult<Option<u64>> =
            redis::cmd("GET").arg(version).query_async(&mut conn).await;
        current.ok().map(|v| v.unwrap_or(0))
    }

    async fn put(&self, conv: ConvId, version: u64, history: &History) {
        let Ok(json) = serde_json::to_string(history) else {
            return;
        };
        let (page, version_key) = self.keys(conv);
        let mut conn = self.conn.clone();
        let stored: redis::RedisResult<u8> = self
            .put
            .key(page)
            .key(version_key)
            .arg(version)
            .arg(json)
            .arg(PAGE_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = stored {
            tracing::debug!(error = %e, "recent cache write failed");
        }
    }

    async fn bump(&self, conv: ConvId) {
        let (_, version) = self.keys(conv);
        let mut conn = self.conn.clone();
        let bumped: redis::RedisResult<()> = redis::pipe()
            .cmd("INCR")
            .arg(&version)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&version)
            .arg(VERSION_TTL.as_millis() as u64)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(e) = bumped {
            tracing::warn!(error = %e, conv = conv.0, "recent cache bump failed; the page may be stale until it expires");
        }
    }
}
