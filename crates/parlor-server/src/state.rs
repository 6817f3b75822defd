//! What every request handler and connection shares.

use crate::auth::{Auth, Principal};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use parlor_core::error::{Error, Result};
use parlor_core::ports::{RateLimiter, RateRule};
use parlor_core::Chat;
use parlor_proto::ErrorCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub config: Config,
    pub chat: Chat,
    pub auth: Auth,
    pub hub: Arc<Hub>,
    pub limiter: Arc<dyn RateLimiter>,
    pub uploads: Arc<crate::uploads::Uploads>,
    pub notifications: Arc<crate::notify::Notifications>,
    /// Engines `/readyz` checks besides the store (cluster mode).
    pub probes: Vec<(&'static str, crate::backends::Probe)>,
    pub metrics: Arc<Metrics>,
    /// Flips to true on shutdown; connections watch it to close with 1001.
    pub shutdown: watch::Receiver<bool>,
    /// Open WebSocket connections, so that shutdown can wait for them to close.
    pub live_connections: AtomicUsize,
    pub connections_closed: Notify,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    /// Takes one token from the bucket `key`, or fails with `rate_limited`.
    pub async fn rate(&self, key: &str, rule: RateRule) -> Result<()> {
        self.limiter
            .check(key, rule)
            .await
            .map_err(|wait| Error::rate_limited(wait.as_millis() as u64))
    }

    /// Verifies an access token and that its device session is not revoked.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let principal = self.auth.verify_access(token)?;
        if self.chat.store().session_revoked(principal.device).await? {
            return Err(Error::new(
                ErrorCode::TokenRevoked,
                "session was revoked, log in again",
            ));
        }
        Ok(principal)
    }

    pub fn connection_closed(&self) {
        if self.live_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.connections_closed.notify_waiters();
        }
    }
}
