//! Token buckets in Redis, shared by every node: a client spreading its requests over
//! the nodes of a cluster gets the same limit as on one node.
//!
//! Each bucket is one hash (`<ns>:rate:<key>`: tokens and the time they were counted),
//! updated by one Lua script that reads Redis's own clock, so nodes with skewed clocks
//! agree. Buckets expire once they would be full again. If Redis cannot be reached, the
//! limiter lets the request through and logs it: a limiter must not take the service down.

use crate::connection::RedisConn;
use crate::connection::RedisOptions;
use async_trait::async_trait;
use parlor_core::ports::{RateLimiter, RateRule};
use redis::Script;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// KEYS[1] = bucket; ARGV = burst, tokens per millisecond. Returns 0 when a token was
/// taken, else the milliseconds until one is available.
const TAKE: &str = r#"
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return wait
"#;

pub struct RedisRateLimiter {
    conn: RedisConn,
    prefix: String,
    take: Script,
    /// Checks let through because Redis did not answer (exported as a metric).
    pub failed_open: AtomicU64,
}

impl RedisRateLimiter {
    pub fn new(conn: RedisConn, options: &RedisOptions) -> Self {
        RedisRateLimiter {
            conn,
            prefix: format!("{}:rate:", options.namespace),
            take: Script::new(TAKE),
            failed_open: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, rule: RateRule) -> Result<(), Duration> {
        let per_ms = (rule.per_second / 1000.0).max(1e-9);
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<u64> = self
            .take
            .key(format!("{}{key}", self.prefix))
            .arg(rule.burst.max(1))
            .arg(per_ms)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok(0) => Ok(()),
            Ok(wait_ms) => Err(Duration::from_millis(wait_ms)),
            Err(e) => {
                if self
                    .failed_open
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::warn!(error = %e, "rate limiter unavailable, letting requests through");
                }
                Ok(())
            }
        }
    }
}
