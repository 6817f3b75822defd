//! Presence shared by every node, and the registry of which node holds whose connections.
//!
//! # Keys (all under `<ns>:presence:`)
//! - `online`: sorted set, user → deadline (ms). A user is online while listed. Every
//!   node vouches for its connected users by pushing their deadline to `now + grace`
//!   once per heartbeat; a device disconnecting pushes it to `disconnect time + grace`.
//!   So a user goes offline `grace` after the last device left, and a crashed node's
//!   users go offline `grace` after its last heartbeat, with no cleanup by anyone.
//! - `route:<user>`: sorted set, node → deadline: the nodes holding the user's
//!   connections (the registry), refreshed by the same heartbeat, expiring by itself.
//! - `status`: hash, user → availability and status text.
//!
//! Going offline is decided by whichever node's expiry tick first pops the user from
//! `online` (one Lua script, so each transition is reported once in the cluster). If
//! Redis restarts empty, the next heartbeat puts every connected user back and reports
//! them as online again, which is harmless to clients that already thought so.

use crate::connection::RedisConn;
use crate::connection::RedisOptions;
use async_trait::async_trait;
use parking_lot::Mutex;
use parlor_core::error::{Error, Result};
use parlor_core::model::UserId;
use parlor_core::ports::Presence;
use parlor_core::presence::status_text;
use parlor_proto::rest::{Availability, PresenceView};
use parlor_proto::Id;
use redis::Script;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Users per heartbeat script call.
const HEARTBEAT_CHUNK: usize = 1000;
/// Users popped per expiry call.
const EXPIRE_LIMIT: usize = 1000;

/// KEYS[1] = online set; ARGV = deadline, node, route key prefix, route ttl ms, users…
/// Returns the users that were not online before.
const COME_ONLINE: &str = r#"
local fresh = {}
for i = 5, #ARGV do
  local user = ARGV[i]
  if not redis.call('ZSCORE', KEYS[1], user) then
    table.insert(fresh, user)
  end
  redis.call('ZADD', KEYS[1], 'GT', ARGV[1], user)
  local route = ARGV[3] .. user
  redis.call('ZADD', route, ARGV[1], ARGV[2])
  redis.call('PEXPIRE', route, ARGV[4])
end
return fresh
"#;

/// KEYS[1] = online set; ARGV = now, limit. Pops users whose deadline passed.
/// Returns user, deadline, user, deadline, …
const POP_EXPIRED: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[2])
for i = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[i])
end
return due
"#;

struct Keys {
    online: String,
    route_prefix: String,
    status: String,
}

pub struct RedisPresence {
    conn: RedisConn,
    keys: Keys,
    node: String,
    grace_ms: i64,
    /// Devices of each user connected to this node: what the heartbeat vouches for.
    local: Mutex<HashMap<UserId, u32>>,
    /// Users the heartbeat found missing and put back; reported by the next `expire`.
    rejoined: Mutex<Vec<UserId>>,
    come_online: Script,
    pop_expired: Script,
}

fn unavailable(e: redis::RedisError) -> Error {
    tracing::warn!(error = %e, "redis presence call failed");
    Error::unavailable()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl RedisPresence {
    /// `grace_ms`: how long a user stays online after their last device left; also the
    /// longest a crashed node's users stay online. The heartbeat runs five times per grace
    /// period, so a live node's users never lapse.
    pub fn start(conn: RedisConn, options: &RedisOptions, grace_ms: i64) -> Arc<Self> {
        let prefix = format!("{}:presence:", options.namespace);
        let presence = Arc::new(RedisPresence {
            conn,
            keys: Keys {
                online: format!("{prefix}online"),
                route_prefix: format!("{prefix}route:"),
                status: format!("{prefix}status"),
            },
            node: options.node_name.clone(),
            grace_ms: grace_ms.max(1000),
            local: Mutex::new(HashMap::new()),
            rejoined: Mutex::new(Vec::new()),
            come_online: Script::new(COME_ONLINE),
            pop_expired: Script::new(POP_EXPIRED),
        });
        let period = Duration::from_millis((presence.grace_ms / 5) as u64);
        tokio::spawn(heartbeat(Arc::downgrade(&presence), period));
        presence
    }

    /// Vouches for `users`; returns those that were not online.
    async fn vouch(&self, users: &[UserId]) -> redis::RedisResult<Vec<UserId>> {
        let mut conn = self.conn.clone();
        let deadline = now_ms() + self.grace_ms;
        let mut fresh = Vec::new();
        for chunk in users.chunks(HEARTBEAT_CHUNK) {
            let mut call = self.come_online.key(&self.keys.online);
            call.arg(deadline)
                .arg(&self.node)
                .arg(&self.keys.route_prefix)
                .arg(self.grace_ms * 2);
            for user in chunk {
                call.arg(user.0);
            }
            let added: Vec<u64> = call.invoke_async(&mut conn).await?;
            fresh.extend(added.into_iter().map(Id));
        }
        Ok(fresh)
    }

    async fn status_of(&self, user: UserId) -> Result<(Availability, Option<String>)> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&self.keys.status)
            .arg(user.0)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(raw
            .and_then(|raw| serde_json::from_str::<StoredStatus>(&raw).ok())
            .map(|s| (s.status, s.text))
            .unwrap_or_default())
    }

    async fn view(&self, user: UserId, online: bool, last_seen: Option<i64>) -> PresenceView {
        let (status, text) = self.status_of(user).await.unwrap_or_default();
        PresenceView {
            user,
            online,
            status,
            text,
            last_seen: if online { None } else { last_seen },
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredStatus {
    status: Availability,
    text: Option<String>,
}

async fn heartbeat(presence: Weak<RedisPresence>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(presence) = presence.upgrade() else {
            return;
        };
        let users: Vec<UserId> = presence.local.lock().keys().copied().collect();
        if users.is_empty() {
            continue;
        }
        match presence.vouch(&users).await {
            Ok(fresh) if !fresh.is_empty() => {
                tracing::info!(
                    users = fresh.len(),
                    "presence entries were missing (redis restarted?), restored"
                );
                presence.rejoined.lock().extend(fresh);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn connect(&self, user: UserId) -> Result<Option<PresenceView>> {
        // Counted here only after vouching: a heartbeat between the two would otherwise
        // vouch first and take the "came online" for itself (reported a tick later).
        let vouched = self.vouch(&[user]).await;
        *self.local.lock().entry(user).or_insert(0) += 1;
        let fresh = vouched.map_err(unavailable)?;
        if fresh.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.view(user, true, None).await))
    }

    async fn disconnect(&self, user: UserId, now_ms: i64) -> Result<()> {
        let last_here = {
            let mut local = self.local.lock();
            match local.get_mut(&user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    local.remove(&user);
                    true
                }
                None => false,
            }
        };
        if !last_here {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("ZADD")
            .arg(&self.keys.online)
            .arg("GT")
            .arg(now_ms + self.grace_ms)
            .arg(user.0)
            .ignore()
            .cmd("ZREM")
            .arg(format!("{}{}", self.keys.route_prefix, user.0))
            .arg(&self.node)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn expire(&self, now_ms: i64) -> Result<Vec<PresenceView>> {
        let mut changes = Vec::new();
        let rejoined: Vec<UserId> = std::mem::take(&mut *self.rejoined.lock());
        for user in rejoined {
            changes.push(self.view(user, true, None).await);
        }
        let mut conn = self.conn.clone();
        let due: Vec<(u64, f64)> = self
            .pop_expired
            .key(&self.keys.online)
            .arg(now_ms)
            .arg(EXPIRE_LIMIT)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        for (user, deadline) in due {
            let user = Id(user);
            if self.local.lock().contains_key(&user) {
                // Still connected here: the heartbeat was late. The next one puts the
                // user back (and reports them online); no offline is announced.
                continue;
            }
            // The deadline is `grace` after the last moment a node vouched for the user.
            let last_seen = deadline as i64 - self.grace_ms;
            changes.push(self.view(user, false, Some(last_seen)).await);
        }
        Ok(changes)
    }

    async fn set_status(
        &self,
        user: UserId,
        status: Availability,
        text: Option<String>,
    ) -> Result<PresenceView> {
        let text = status_text(text);
        let stored = serde_json::to_string(&StoredStatus {
            status,
            text: text.clone(),
        })
        .map_err(|_| Error::internal())?;
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(&self.keys.status)
            .arg(user.0)
            .arg(stored)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        let online = self.get(user).await?.online;
        Ok(PresenceView {
            user,
            online,
            status,
            text,
            last_seen: None,
        })
    }

    async fn nodes(&self, user: UserId) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(format!("{}{}", self.keys.route_prefix, user.0))
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn get(&self, user: UserId) -> Result<PresenceView> {
        let mut conn = self.conn.clone();
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&self.keys.online)
            .arg(user.0)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let (status, text) = self.status_of(user).await?;
        Ok(PresenceView {
            user,
            online: score.is_some(),
            status,
            text,
            last_seen: None,
        })
    }
}
