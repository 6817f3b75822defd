//! Garbage collection of uploads: never-attached uploads after their time to live,
//! uploads whose messages were all deleted, and contents no upload uses any more.
//! Every node may run it; the store's deletes decide what goes, so two nodes running
//! at once only split the work.

use super::Uploads;
use parlor_core::error::Result;
use parlor_core::uploads::Garbage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

impl Uploads {
    /// One full collection: batches until the store reports nothing left.
    pub async fn collect_garbage(&self) -> Result<Garbage> {
        let ttl_ms = (self.config.unattached_ttl_secs.saturating_mul(1000)) as i64;
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let mut total = Garbage::default();
        loop {
            let batch = self.store.collect_garbage(cutoff).await?;
            let done = batch.uploads == 0 && batch.blobs == 0;
            self.remove_objects(&batch.objects).await;
            self.metrics.uploads_collected.inc_by(batch.uploads);
            self.metrics.blobs_collected.inc_by(batch.blobs);
            total.absorb(batch);
            if done {
                break;
            }
        }
        if total.uploads > 0 || total.blobs > 0 {
            tracing::info!(
                uploads = total.uploads,
                blobs = total.blobs,
                "upload garbage collected"
            );
        }
        Ok(total)
    }

    /// Collects every `gc_interval_secs` until shutdown.
    pub async fn run_gc(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_secs(self.config.gc_interval_secs.max(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.collect_garbage().await {
                tracing::warn!(error = %e, "upload garbage collection failed");
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
