//! The nodes' own counters from `/metrics` (Prometheus text), before and after a window.
//!
//! The generator measures end to end; the server's histograms split that in two: send →
//! ack on the sender's node (`send_ack_latency_seconds`: the write queue and the store's
//! transaction) and the message's timestamp → hand-off to the recipient's connection on
//! every node (`delivery_latency_seconds`: the rest of the transaction, the publish, the
//! broker, the subscriber's reorder buffer and the hub). The cluster bus also counts the
//! events it had to read from the store's event log because the broker did not bring
//! them in time (`bus_gap_filled_events_total`): each one stalled a node's delivery for
//! at least 250 ms.

use parlor_client::Http;
use serde::Serialize;
use std::collections::BTreeMap;

/// Every sample of one scrape, keyed by the series as written (`name{labels}`).
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Parses the text format; comments and malformed lines are skipped.
    pub fn parse(text: &str) -> Scrape {
        let mut values = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.trim().parse::<f64>() {
                    values.insert(series.trim().to_owned(), v);
                }
            }
        }
        Scrape(values)
    }

    /// GET /metrics of `http`'s server; an empty scrape (and a warning) on failure.
    pub async fn take(http: &Http) -> Scrape {
        match http.metrics().await {
            Ok(text) => Scrape::parse(&text),
            Err(e) => {
                eprintln!("warning: cannot read {}/metrics: {e}", http.base_url());
                Scrape::default()
            }
        }
    }

    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// `self − before`, series by series (several nodes' deltas can then be summed).
    pub fn delta(&self, before: &Scrape) -> Scrape {
        Scrape(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.get(k)))
                .collect(),
        )
    }

    pub fn add(&mut self, other: &Scrape) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_insert(0.0) += v;
        }
    }

    /// A histogram's count, mean and bucket-bound quantiles.
    pub fn histogram(&self, name: &str) -> Histogram {
        let count = self.get(&format!("{name}_count"));
        let sum = self.get(&format!("{name}_sum"));
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        // The smallest bucket bound holding the quantile: an upper bound of it.
        let quantile = |q: f64| -> Option<f64> {
            let rank = q * count;
            buckets
                .iter()
                .find(|(_, cumulative)| *cumulative >= rank)
                .map(|(le, _)| le * 1000.0)
                .filter(|v| v.is_finite())
        };
        Histogram {
            count: count.round() as u64,
            mean_ms: (count > 0.0).then(|| crate::report::round3(sum / count * 1000.0)),
            p50_ms_at_most: (count > 0.0).then(|| quantile(0.5)).flatten(),
            p99_ms_at_most: (count > 0.0).then(|| quantile(0.99)).flatten(),
        }
    }

    /// The figures of a window (a delta, possibly summed over nodes).
    pub fn figures(&self) -> NodeFigures {
        NodeFigures {
            send_to_ack: self.histogram("parlor_send_ack_latency_seconds"),
            timestamp_to_handoff: self.histogram("parlor_delivery_latency_seconds"),
            events_from_bus: self.get("parlor_events_published_total").round() as u64,
            bus_published: self.get("parlor_bus_published_total").round() as u64,
            bus_publish_failures: self.get("parlor_bus_publish_failures_total").round() as u64,
            bus_gap_filled_events: self.get("parlor_bus_gap_filled_events_total").round() as u64,
            outbox_overflows: self.get("parlor_outbox_overflows_total").round() as u64,
        }
    }
}

/// A latency histogram of the server, over a window.
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub count: u64,
    pub mean_ms: Option<f64>,
    /// The bucket bound the median falls under (the histogram's resolution).
    pub p50_ms_at_most: Option<f64>,
    pub p99_ms_at_most: Option<f64>,
}

/// The nodes' own counters over a window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFigures {
    /// Send received → ack queued, on the sender's node (write queue + transaction).
    pub send_to_ack: Histogram,
    /// Message timestamp (taken inside the transaction, before the positions) →
    /// hand-off to connections, on every node that received it (millisecond clock).
    pub timestamp_to_handoff: Histogram,
    /// Committed events the hubs received from the bus (every node receives every one).
    pub events_from_bus: u64,
    /// JetStream messages published and acknowledged (one per conversation per commit).
    pub bus_published: u64,
    pub bus_publish_failures: u64,
    /// Events read from the event log because the broker had not brought them in time.
    pub bus_gap_filled_events: u64,
    pub outbox_overflows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_from_deltas() {
        let before = Scrape::parse(
            "# HELP x\nparlor_delivery_latency_seconds_bucket{le=\"0.001\"} 0\n\
             parlor_delivery_latency_seconds_bucket{le=\"0.005\"} 0\n\
             parlor_delivery_latency_seconds_bucket{le=\"+Inf\"} 0\n\
             parlor_delivery_latency_seconds_sum 0\nparlor_delivery_latency_seconds_count 0\n",
        );
        let after = Scrape::parse(
            "parlor_delivery_latency_seconds_bucket{le=\"0.001\"} 50\n\
             parlor_delivery_latency_seconds_bucket{le=\"0.005\"} 99\n\
             parlor_delivery_latency_seconds_bucket{le=\"+Inf\"} 100\n\
             parlor_delivery_latency_seconds_sum 0.2\nparlor_delivery_latency_seconds_count 100\n\
             parlor_bus_gap_filled_events_total 3\n",
        );
        let mut total = Scrape::default();
        total.add(&after.delta(&before));
        let f = total.figures();
        assert_eq!(f.timestamp_to_handoff.count, 100);
        assert_eq!(f.timestamp_to_handoff.mean_ms, Some(2.0));
        assert_eq!(f.timestamp_to_handoff.p50_ms_at_most, Some(1.0));
        assert_eq!(f.timestamp_to_handoff.p99_ms_at_most, Some(5.0));
        assert_eq!(f.bus_gap_filled_events, 3);
    }
}
