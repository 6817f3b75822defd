//! Presence rules, as a pure state machine over "now": a user is online while any device
//! is connected; when the last one goes, they stay online for a grace period (a quick
//! reconnect does not flicker) and then go offline with a last-seen time.
//!
//! The embedded adapter holds one [`Tracker`] in memory; a cluster adapter keeps the same
//! facts in a shared store with expiring keys.

use parlor_proto::rest::{Availability, PresenceView};
use parlor_proto::Id;
use std::collections::HashMap;

/// Longest status text, in characters.
pub const MAX_STATUS_TEXT: usize = 140;

/// A status text as stored: control characters removed, at most [`MAX_STATUS_TEXT`]
/// characters. Every presence adapter stores it this way.
pub fn status_text(text: Option<String>) -> Option<String> {
    text.map(|t| {
        t.chars()
            .filter(|c| !c.is_control())
            .take(MAX_STATUS_TEXT)
            .collect()
    })
}

#[derive(Debug, Clone, Default)]
struct Entry {
    devices: u32,
    /// When the user goes offline unless a device reconnects first.
    offline_at: Option<i64>,
    online: bool,
    last_seen: Option<i64>,
    availability: Availability,
    text: Option<String>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    users: HashMap<Id, Entry>,
}

fn view(user: Id, e: &Entry) -> PresenceView {
    PresenceView {
        user,
        online: e.online,
        status: e.availability,
        text: e.text.clone(),
        last_seen: if e.online { None } else { e.last_seen },
    }
}

impl Tracker {
    /// A device connected. Returns the new presence if the user just came online.
    pub fn connect(&mut self, user: Id) -> Option<PresenceView> {
        let e = self.users.entry(user).or_default();
        e.devices += 1;
        e.offline_at = None;
        if e.online {
            return None;
        }
        e.online = true;
        Some(view(user, e))
    }

    /// A device disconnected at `now`; the last one starts the grace period.
    pub fn disconnect(&mut self, user: Id, now: i64, grace_ms: i64) {
        if let Some(e) = self.users.get_mut(&user) {
            e.devices = e.devices.saturating_sub(1);
            if e.devices == 0 {
                e.offline_at = Some(now + grace_ms);
                e.last_seen = Some(now);
            }
        }
    }

    /// Users whose grace period has ended by `now` go offline; returns their presence.
    pub fn expire(&mut self, now: i64) -> Vec<PresenceView> {
        let mut changed = Vec::new();
        for (&user, e) in self.users.iter_mut() {
            if e.devices == 0 && e.online && e.offline_at.is_some_and(|t| t <= now) {
                e.online = false;
                e.offline_at = None;
                changed.push(view(user, e));
            }
        }
        changed
    }

    /// Sets the user's status; returns the presence others should now see.
    pub fn set_status(
        &mut self,
        user: Id,
        availability: Availability,
        text: Option<String>,
    ) -> PresenceView {
        let e = self.users.entry(user).or_default();
        e.availability = availability;
        e.text = status_text(text);
        view(user, e)
    }

    /// Current presence; `stored_last_seen` fills in users this process has not seen.
    pub fn get(&self, user: Id, stored_last_seen: Option<i64>) -> PresenceView {
        match self.users.get(&user) {
            Some(e) => {
                let mut v = view(user, e);
                if !v.online && v.last_seen.is_none() {
                    v.last_seen = stored_last_seen;
                }
                v
            }
            None => PresenceView {
                user,
                online: false,
                status: Availability::Available,
                text: None,
                last_seen: stored_last_seen,
            },
        }
    }

    /// Devices of `user` connected now.
    pub fn devices(&self, user: Id) -> u32 {
        self.users.get(&user).map_or(0, |e| e.devices)
    }

    pub fn is_online(&self, user: Id) -> bool {
        self.users.get(&user).is_some_and(|e| e.online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_period_prevents_flicker() {
        let mut t = Tracker::default();
        let u = Id(1);
        assert!(t.connect(u).is_some());
        assert!(t.connect(u).is_none(), "second device: already online");
        t.disconnect(u, 1_000, 5_000);
        assert!(t.expire(2_000).is_empty(), "one device still connected");
        t.disconnect(u, 3_000, 5_000);
        assert!(t.expire(7_000).is_empty(), "within grace");
        assert!(
            t.connect(u).is_none(),
            "quick reconnect: no change seen by others"
        );
        t.disconnect(u, 10_000, 5_000);
        let gone = t.expire(15_000);
        assert_eq!(gone.len(), 1);
        assert!(!gone[0].online);
        assert_eq!(gone[0].last_seen, Some(10_000));
    }

    #[test]
    fn status_is_kept_and_trimmed() {
        let mut t = Tracker::default();
        let v = t.set_status(Id(2), Availability::DoNotDisturb, Some("x".repeat(500)));
        assert_eq!(v.status, Availability::DoNotDisturb);
        assert_eq!(v.text.map(|s| s.len()), Some(MAX_STATUS_TEXT));
        assert_eq!(t.get(Id(3), Some(42)).last_seen, Some(42));
    }
}
