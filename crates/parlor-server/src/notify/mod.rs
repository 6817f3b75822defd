//! Notifications on this node: the notifier loop (durable work queue → decisions, see
//! `parlor_core::notifier`) and the push sender (queued pushes → providers, with
//! retries, pruning and collapse). Both run off the send path: a sender's
//! acknowledgement never waits for either.

mod sender;
mod worker;

use crate::config::PushConfig;
use crate::metrics::Metrics;
use parlor_core::error::Result;
use parlor_core::notifier::Notifier;
use parlor_core::notify::TargetAddress;
use parlor_core::ports::{BoxFuture, NotificationStore, PushProvider, WorkQueue};
use parlor_proto::notify::{NewPushTarget, PushKind};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// Binds the durable work queue of the given name (embedded cursor or JetStream
/// durable consumer, chosen in `backends.rs`).
pub type BindQueue =
    Arc<dyn Fn(&'static str) -> BoxFuture<anyhow::Result<Box<dyn WorkQueue>>> + Send + Sync>;

/// Turns a client's registration into a target address, or says why not (the checks
/// belong to each provider's adapter).
pub type ValidateTarget = Arc<dyn Fn(NewPushTarget) -> Result<TargetAddress> + Send + Sync>;

/// The configured providers.
pub struct PushSetup {
    pub providers: HashMap<PushKind, Arc<dyn PushProvider>>,
    pub validate: ValidateTarget,
    /// The VAPID application server key, when Web Push is on.
    pub vapid_public_key: Option<String>,
}

/// What request handlers need.
pub struct Notifications {
    pub store: Arc<dyn NotificationStore>,
    pub setup: PushSetup,
    /// Wakes the push sender when new pushes are queued.
    pub wake: Arc<Notify>,
}

impl Notifications {
    /// Starts the notifier and the push sender; they run until the process ends.
    pub fn start(
        self: &Arc<Self>,
        config: &PushConfig,
        notifier: Notifier,
        bind: BindQueue,
        metrics: Arc<Metrics>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        if !config.enabled {
            tracing::info!("notifications are off (push.enabled = false)");
            return Vec::new();
        }
        vec![
            tokio::spawn(worker::run(
                notifier,
                bind,
                Arc::clone(&self.wake),
                Arc::clone(&metrics),
            )),
            tokio::spawn(sender::run(Arc::clone(self), config.clone(), metrics)),
        ]
    }
}
