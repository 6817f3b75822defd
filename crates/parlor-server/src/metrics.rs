//! Prometheus metrics on the paths that matter, served at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub connections_open: IntGauge,
    pub connections_total: IntCounter,
    pub messages_accepted: IntCounter,
    pub messages_delivered: IntCounter,
    pub events_published: IntCounter,
    pub outbox_overflows: IntCounter,
    /// Commit (message timestamp) to hand-off to the connection; the timestamp has
    /// millisecond resolution, so the first bucket is 1 ms.
    pub delivery_latency: Histogram,
    /// From receiving a send to acknowledging it (validation, queueing, group commit).
    pub ack_latency: Histogram,
    pub errors: IntCounterVec,
    /// Upload bytes received and stored (every part of every upload).
    pub upload_bytes: IntCounter,
    /// Uploads that completed, by outcome (`stored`, `deduplicated`, `rejected`).
    pub uploads_completed: IntCounterVec,
    /// Bytes of upload content and thumbnails sent to clients.
    pub download_bytes: IntCounter,
    /// Time from the last byte of an upload to it being ready (hash, checks, thumbnails).
    pub upload_processing: Histogram,
    /// Uploads and blobs removed by garbage collection.
    pub uploads_collected: IntCounter,
    pub blobs_collected: IntCounter,
    /// Pushes by provider and outcome (`sent`, `failed`, `pruned`, `retried`).
    pub pushes: IntCounterVec,
    /// Message commit to the push request leaving for the provider (first attempts).
    pub push_latency: Histogram,
    /// Feed items recorded (in-app notifications).
    pub notifications_recorded: IntCounter,
    /// Cluster adapters' counters, copied into gauges at each scrape.
    cluster: std::sync::OnceLock<(crate::backends::ClusterStats, [IntGauge; 6])>,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("parlor".into()), None)?;
        let connections_open = IntGauge::new(
            "connections_open",
            "Open authenticated WebSocket connections",
        )?;
        let connections_total = IntCounter::new(
            "connections_total",
            "WebSocket connections authenticated since start",
        )?;
        let messages_accepted =
            IntCounter::new("messages_accepted_total", "Messages committed to the store")?;
        let messages_delivered = IntCounter::new(
            "messages_delivered_total",
            "Message events written to device connections (live and sync)",
        )?;
        let events_published = IntCounter::new(
            "events_published_total",
            "Committed events received from the bus",
        )?;
        let outbox_overflows = IntCounter::new(
            "outbox_overflows_total",
            "Times a slow connection's queue overflowed and it caught up from the store",
        )?;
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "Commit to hand-off to a device connection",
            )
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let ack_latency = Histogram::with_opts(
            HistogramOpts::new(
                "send_ack_latency_seconds",
                "Send received to acknowledgement",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )?;
        let errors = IntCounterVec::new(
            Opts::new("errors_total", "Errors returned to clients, by code"),
            &["code"],
        )?;
        let upload_bytes =
            IntCounter::new("upload_bytes_total", "Upload bytes received and stored")?;
        let uploads_completed = IntCounterVec::new(
            Opts::new("uploads_completed_total", "Completed uploads, by outcome"),
            &["outcome"],
        )?;
        let download_bytes = IntCounter::new(
            "download_bytes_total",
            "Bytes of uploads and thumbnails sent to clients",
        )?;
        let upload_processing = Histogram::with_opts(
            HistogramOpts::new(
                "upload_processing_seconds",
                "Last byte of an upload to ready (hash, type check, thumbnails)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let uploads_collected = IntCounter::new(
            "uploads_collected_total",
            "Uploads removed by garbage collection",
        )?;
        let blobs_collected = IntCounter::new(
            "blobs_collected_total",
            "Stored contents removed by garbage collection",
        )?;
        let pushes = IntCounterVec::new(
            Opts::new("pushes_total", "Push requests by provider and outcome"),
            &["provider", "outcome"],
        )?;
        let push_latency = Histogram::with_opts(
            HistogramOpts::new(
                "push_latency_seconds",
                "Message commit to the push request (first attempt)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let notifications_recorded = IntCounter::new(
            "notifications_recorded_total",
            "In-app notifications (mentions, replies) recorded",
        )?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(push_latency.clone()))?;
        registry.register(Box::new(notifications_recorded.clone()))?;
        for counter in [
            &upload_bytes,
            &download_bytes,
            &uploads_collected,
            &blobs_collected,
        ] {
            registry.register(Box::new(counter.clone()))?;
        }
        registry.register(Box::new(uploads_completed.clone()))?;
        registry.register(Box::new(upload_processing.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(messages_accepted.clone()))?;
        registry.register(Box::new(messages_delivered.clone()))?;
        registry.register(Box::new(events_published.clone()))?;
        registry.register(Box::new(outbox_overflows.clone()))?;
        registry.register(Box::new(delivery_latency.clone()))?;
        registry.register(Box::new(ack_latency.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Metrics {
            registry,
            connections_open,
            connections_total,
            messages_accepted,
            messages_delivered,
            events_published,
            outbox_overflows,
            delivery_latency,
            ack_latency,
            errors,
            upload_bytes,
            uploads_completed,
            download_bytes,
            upload_processing,
            uploads_collected,
            blobs_collected,
            pushes,
            push_latency,
            notifications_recorded,
            cluster: std::sync::OnceLock::new(),
        })
    }

    pub fn error(&self, code: parlor_proto::ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// Exports the cluster adapters' counters (bus, rate limiter, history cache) at each
    /// scrape.
    pub fn watch_cluster(&self, stats: crate::backends::ClusterStats) {
        let gauge = |name: &str, help: &str| -> Option<IntGauge> {
            let g = IntGauge::new(name, help).ok()?;
            self.registry.register(Box::new(g.clone())).ok()?;
            Some(g)
        };
        let gauges = (
            gauge(
                "bus_published_total",
                "JetStream messages published and acknowledged",
            ),
            gauge(
                "bus_publish_failures_total",
                "JetStream publishes that failed (events then come from the event log)",
            ),
            gauge(
                "bus_gap_filled_events_total",
                "Events this node read from the event log because the broker did not bring them",
            ),
            gauge(
                "rate_limiter_failed_open_total",
                "Rate-limit checks let through because Redis did not answer",
            ),
            gauge(
                "recent_cache_hits_total",
                "Newest-history reads answered by the shared cache",
            ),
            gauge(
                "recent_cache_misses_total",
                "Newest-history reads the shared cache could not answer",
            ),
        );
        if let (Some(a), Some(b), Some(c), Some(d), Some(e), Some(f)) = gauges {
            let _ = self.cluster.set((stats, [a, b, c, d, e, f]));
        }
    }

    pub fn render(&self) -> String {
        if let Some((stats, [published, failures, gap, open, hits, misses])) = self.cluster.get() {
            let now = stats();
            published.set(now.bus_published as i64);
            failures.set(now.bus_publish_failures as i64);
            gap.set(now.bus_gap_filled as i64);
            open.set(now.rate_limiter_failed_open as i64);
            hits.set(now.recent_cache_hits as i64);
            misses.set(now.recent_cache_misses as i64);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
