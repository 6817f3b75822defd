//! Token buckets in memory, sharded so that one hot key does not serialize the others.

use parking_lot::Mutex;
use parlor_core::ports::{RateLimiter, RateRule};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Buckets idle this long are full again and can be forgotten.
const IDLE_EVICT: Duration = Duration::from_secs(600);

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets are keyed by a 64-bit hash of the key, not the key: no allocation per check,
/// and ~60 bytes less per bucket (one per connected user, for the connect rule). Two keys
/// sharing a hash would share a bucket; at 64 bits that is not worth a string per entry.
pub struct MemoryRateLimiter {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        MemoryRateLimiter {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl MemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, rule: RateRule) -> Result<(), Duration> {
        self.take(key, rule)
    }
}

impl MemoryRateLimiter {
    /// Takes one token for `key` without waiting on anything.
    pub fn take(&self, key: &str, rule: RateRule) -> Result<(), Duration> {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[(hash as usize) % SHARDS];
        let now = Instant::now();
        let mut map = shard.lock();
        if map.len() > 100_000 {
            map.retain(|_, b| now.duration_since(b.at) < IDLE_EVICT);
        }
        let burst = f64::from(rule.burst.max(1));
        let bucket = map.entry(hash).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rule.per_second;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rule.per_second.max(1e-9);
            Err(Duration::from_secs_f64(wait))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let rl = MemoryRateLimiter::new();
        let rule = RateRule {
            burst: 3,
            per_second: 1.0,
        };
        assert!(rl.take("k", rule).is_ok());
        assert!(rl.take("k", rule).is_ok());
        assert!(rl.take("k", rule).is_ok());
        let wait = rl.take("k", rule).err().unwrap_or_default();
        assert!(wait > Duration::from_millis(500));
        assert!(rl.take("other", rule).is_ok());
    }
}
