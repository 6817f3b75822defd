//! A token bucket owned by one connection: no lock, no allocation, no shared key.

use crate::config::Rule;
use std::time::Instant;

pub struct Bucket {
    tokens: f32,
    at: Instant,
    burst: f32,
    per_second: f32,
}

impl Bucket {
    pub fn new(rule: Rule) -> Self {
        Bucket {
            tokens: rule.burst as f32,
            at: Instant::now(),
            burst: rule.burst.max(1) as f32,
            per_second: rule.per_second as f32,
        }
    }

    /// Takes a token, or returns the milliseconds until one is available.
    pub fn take(&mut self) -> Result<(), u64> {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f32() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.per_second.max(1e-6)) * 1000.0).ceil() as u64)
        }
    }
}
