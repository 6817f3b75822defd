//! Presence in memory: the core's tracker behind a mutex. Restarting the process forgets
//! who is online (everyone reconnects anyway); last-seen times live in the store.

use async_trait::async_trait;
use parking_lot::Mutex;
use parlor_core::error::Result;
use parlor_core::model::UserId;
use parlor_core::ports::Presence;
use parlor_core::presence::Tracker;
use parlor_proto::rest::{Availability, PresenceView};

pub struct MemoryPresence {
    tracker: Mutex<Tracker>,
    grace_ms: i64,
}

impl MemoryPresence {
    /// `grace_ms`: how long a user stays online after their last device disconnects.
    pub fn new(grace_ms: i64) -> Self {
        MemoryPresence {
            tracker: Mutex::new(Tracker::default()),
            grace_ms,
        }
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn connect(&self, user: UserId) -> Result<Option<PresenceView>> {
        Ok(self.tracker.lock().connect(user))
    }

    async fn disconnect(&self, user: UserId, now_ms: i64) -> Result<()> {
        self.tracker.lock().disconnect(user, now_ms, self.grace_ms);
        Ok(())
    }

    async fn expire(&self, now_ms: i64) -> Result<Vec<PresenceView>> {
        Ok(self.tracker.lock().expire(now_ms))
    }

    async fn set_status(
        &self,
        user: UserId,
        status: Availability,
        text: Option<String>,
    ) -> Result<PresenceView> {
        Ok(self.tracker.lock().set_status(user, status, text))
    }

    async fn get(&self, user: UserId) -> Result<PresenceView> {
        Ok(self.tracker.lock().get(user, None))
    }

    async fn nodes(&self, user: UserId) -> Result<Vec<String>> {
        Ok(if self.tracker.lock().devices(user) > 0 {
            vec!["local".to_string()]
        } else {
            Vec::new()
        })
    }
}
