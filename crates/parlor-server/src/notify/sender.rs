//! The push sender: claims due pushes from the store's queue (a lease, so a node that
//! dies mid-send leaves them to another), sends each through its provider with the
//! badge computed now, and records the outcome: sent, retried with backoff, pruned when
//! the provider says the target is gone, dropped when it refuses for good.

use super::Notifications;
use crate::config::PushConfig;
use crate::metrics::Metrics;
use futures_util::stream::{self, StreamExt};
use parlor_core::notify::{
    collapse_key, retry_delay_ms, PushDone, PushJob, PushMessage, PushOutcome, MAX_PUSH_ATTEMPTS,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest sleep between looks at the queue: pushes queued by another node, retries
/// coming due and expired leases are found at least this often.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(n: Arc<Notifications>, config: PushConfig, metrics: Arc<Metrics>) {
    let lease_ms = (config.lease_secs * 1000) as i64;
    let batch = (config.concurrency * 4).min(1000) as u32;
    loop {
        let now = crate::now_ms();
        let jobs = match n.store.claim_pushes(now, lease_ms, batch).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "claiming pushes failed");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        if jobs.is_empty() {
            let due = n.store.next_push_due().await.ok().flatten();
            let sleep = due
                .map(
                    |at| Duration::from_millis((at - now).clamp(1, POLL.as_millis() as i64) as u64),
                )
                .unwrap_or(POLL);
            tokio::select! {
                _ = n.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
            continue;
        }
        let badges = badges(&n, &jobs).await;
        stream::iter(jobs)
            .for_each_concurrent(config.concurrency, |job| {
                let badge = badges.get(&job.target.user).copied().unwrap_or(0);
                send_one(&n, &config, &metrics, job, badge)
            })
            .await;
    }
}

/// Unread counts for the users of a batch, one lookup per user.
async fn badges(n: &Notifications, jobs: &[PushJob]) -> HashMap<parlor_core::model::UserId, u64> {
    let mut out = HashMap::new();
    for job in jobs {
        let user = job.target.user;
        if out.contains_key(&user) {
            continue;
        }
        let badge = n.store.unread_messages(user).await.unwrap_or(0);
        out.insert(user, badge);
    }
    out
}

async fn send_one(
    n: &Notifications,
    config: &PushConfig,
    metrics: &Metrics,
    job: PushJob,
    badge: u64,
) {
    let kind = job.target.address.kind();
    let Some(provider) = n.setup.providers.get(&kind) else {
        tracing::info!(
            provider = kind.as_str(),
            "provider no longer configured, push dropped"
        );
        finish(n, &job, PushDone::Dropped).await;
        return;
    };
    let message = PushMessage {
        id: job.id,
        badge,
        collapse_key: collapse_key(job.content.conv),
        ttl_secs: config.ttl_secs,
        content: job.content.clone(),
    };
    if job.attempts == 0 {
        let waited = (crate::now_ms() - job.content.ts).max(0) as f64 / 1000.0;
        metrics.push_latency.observe(waited);
    }
    let outcome = provider.send(&job.target.address, &message).await;
    let label = kind.as_str();
    match outcome {
        PushOutcome::Sent => {
            metrics.pushes.with_label_values(&[label, "sent"]).inc();
            finish(n, &job, PushDone::Sent).await;
        }
        PushOutcome::Gone => {
            metrics.pushes.with_label_values(&[label, "pruned"]).inc();
            tracing::info!(target = %job.target.id, provider = label, "push target gone, removed");
            if let Err(e) = n.store.prune_target(job.target.id).await {
                tracing::warn!(error = %e, "removing a gone push target failed");
            }
        }
        PushOutcome::Retry { after, reason } => {
            let attempt = job.attempts + 1;
            if attempt >= MAX_PUSH_ATTEMPTS {
                metrics.pushes.with_label_values(&[label, "failed"]).inc();
                tracing::warn!(push = %job.id, provider = label, %reason, "push given up after {attempt} attempts");
                finish(n, &job, PushDone::Dropped).await;
                return;
            }
            metrics.pushes.with_label_values(&[label, "retried"]).inc();
            let backoff = retry_delay_ms(attempt);
            let asked = after.map_or(0, |d| d.as_millis() as i64);
            let at = crate::now_ms() + backoff.max(asked);
            tracing::debug!(push = %job.id, provider = label, %reason, at, "push will be retried");
            finish(n, &job, PushDone::RetryAt(at)).await;
        }
        PushOutcome::Failed { reason } => {
            metrics.pushes.with_label_values(&[label, "failed"]).inc();
            tracing::warn!(push = %job.id, provider = label, %reason, "push refused");
            finish(n, &job, PushDone::Dropped).await;
        }
    }
}

async fn finish(n: &Notifications, job: &PushJob, done: PushDone) {
    if let Err(e) = n.store.finish_push(job.id, done).await {
        // The lease runs out and the push is sent again, with the same id and collapse key.
        tracing::warn!(error = %e, push = %job.id, "recording a push outcome failed");
    }
}
