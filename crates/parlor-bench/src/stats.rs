//! Latency histograms (HdrHistogram, microseconds, 3 significant digits) and their
//! summaries.

use anyhow::anyhow;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::{Mutex, PoisonError};

/// Highest trackable latency: one hour, in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;

pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// A histogram shared by the tasks that record into it.
pub struct SharedHist(Mutex<Histogram<u64>>);

impl SharedHist {
    pub fn new() -> anyhow::Result<SharedHist> {
        Ok(SharedHist(Mutex::new(histogram()?)))
    }

    /// Records a latency given in nanoseconds (clamped to 1 µs … 1 h).
    pub fn record_ns(&self, ns: u64) {
        let micros = (ns / 1_000).max(1);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros);
    }

    pub fn summary(&self) -> Latency {
        Latency::of(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The recorded buckets `(value, count)` of a histogram, to move it between processes
/// (the worker protocol is JSON) and merge it exactly on the other side.
pub fn export(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn import(into: &mut Histogram<u64>, buckets: &[(u64, u64)]) {
    for &(value, count) in buckets {
        let _ = into.record_n(value.clamp(1, MAX_MICROS), count);
    }
}

/// Percentiles in milliseconds with microsecond precision.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean().round() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}
