//! The notifier loop: takes committed events from the durable work queue, lets the
//! core decide, and acknowledges only once the decisions are recorded. A failure is
//! retried (the queue redelivers), and recording is idempotent, so a crash anywhere
//! here costs a redelivery, never a lost or doubled notification.

use super::BindQueue;
use crate::metrics::Metrics;
use parlor_core::notifier::Notifier;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub const QUEUE: &str = "notify";

pub async fn run(notifier: Notifier, bind: BindQueue, wake: Arc<Notify>, metrics: Arc<Metrics>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut queue = match bind(QUEUE).await {
            Ok(queue) => queue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot bind the notification queue, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        while let Some(item) = queue.next().await {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    tracing::warn!(error = %e, "notification queue");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match notifier.handle(&item.events, crate::now_ms()).await {
                Ok(handled) => {
                    if handled.pushes > 0 {
                        wake.notify_one();
                    }
                    metrics
                        .notifications_recorded
                        .inc_by(handled.feed_items as u64);
                    if let Err(e) = item.ack.ack().await {
                        tracing::warn!(error = %e, "acknowledging notification work failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification decision failed, retrying");
                    if let Err(e) = item.ack.retry_after(Duration::from_secs(1)).await {
                        tracing::warn!(error = %e, "requeueing notification work failed");
                    }
                }
            }
        }
        tracing::warn!("notification queue closed, binding again");
        tokio::time::sleep(backoff).await;
    }
}
