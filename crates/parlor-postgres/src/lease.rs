//! Machine-id leases and the node's Snowflake generator.
//!
//! Snowflake ids are unique only while no two nodes use the same 10-bit machine id at
//! once. The lease lives in PostgreSQL (not Redis, which may restart empty and hand the
//! same id out twice): at connect a node claims the lowest id that is free or whose
//! lease expired, atomically (`INSERT … ON CONFLICT … DO UPDATE … WHERE expires_at <
//! now()`), and renews it every [`RENEW_EVERY`] with an expiry of [`LEASE_TTL`].
//!
//! The node trusts its lease only until `LEASE_TTL - SAFETY_MARGIN` after the last
//! successful renewal was sent (measured on its own monotonic clock, so a database
//! clock ahead of it only shortens the lease). Past that, id generation stops: appends
//! and creations answer `unavailable` until a lease is held again — possibly another id,
//! if someone took the expired one. On every claim the generator observes the newest id
//! any holder reported and the newest stored account, conversation and session ids, so
//! that ids keep increasing across machine ids. A graceful close releases the lease.

use crate::db::Db;
use crate::error::DbResult;
use parking_lot::Mutex;
use parlor_core::error::{Error, Result};
use parlor_core::snowflake::{Snowflake, MAX_MACHINE_ID};
use parlor_proto::ErrorCode;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const LEASE_TTL: Duration = Duration::from_secs(30);
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Renewals are retried this often while they fail.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// The lease is considered lost this long before it would expire in the database.
const SAFETY_MARGIN: Duration = Duration::from_secs(5);

struct IdState {
    generator: Snowflake,
    /// The leased machine id and until when this node may use it.
    lease: Option<(u16, Instant)>,
    /// Newest id handed out, reported at each renewal.
    last: u64,
}

/// The node's id generator, usable only while the lease is held.
pub struct Ids {
    state: Mutex<IdState>,
    machine: AtomicU16,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lease_lost() -> Error {
    Error::new(
        ErrorCode::Unavailable,
        "node has no machine-id lease, retry later",
    )
}

impl Ids {
    fn new() -> Self {
        Ids {
            state: Mutex::new(IdState {
                generator: Snowflake::new(0),
                lease: None,
                last: 0,
            }),
            machine: AtomicU16::new(0),
        }
    }

    pub fn machine_id(&self) -> u16 {
        self.machine.load(Ordering::Relaxed)
    }

    /// `n` new ids, or `unavailable` when the lease is not (or no longer) held.
    pub fn next_ids(&self, n: usize) -> Result<Vec<u64>> {
        let mut state = self.state.lock();
        match state.lease {
            Some((_, until)) if Instant::now() < until => {}
            _ => return Err(lease_lost()),
        }
        let now = now_ms();
        let ids: Vec<u64> = (0..n).map(|_| state.generator.next_id(now)).collect();
        if let Some(&last) = ids.last() {
            state.last = last;
        }
        Ok(ids)
    }

    pub fn next_id(&self) -> Result<u64> {
        self.next_ids(1)?.pop().ok_or_else(Error::internal)
    }

    pub fn held(&self) -> bool {
        matches!(self.state.lock().lease, Some((_, until)) if Instant::now() < until)
    }

    fn last(&self) -> u64 {
        self.state.lock().last
    }

    fn granted(&self, machine: u16, until: Instant, floor: u64) {
        let mut state = self.state.lock();
        if state.lease.map(|(m, _)| m) != Some(machine) {
            let previous = state.last;
            state.generator = Snowflake::new(machine);
            state.generator.observe(previous);
        }
        state.generator.observe(floor);
        state.lease = Some((machine, until));
        self.machine.store(machine, Ordering::Relaxed);
    }

    fn extend(&self, machine: u16, until: Instant) {
        let mut state = self.state.lock();
        if state.lease.map(|(m, _)| m) == Some(machine) {
            state.lease = Some((machine, until));
        }
    }

    fn revoke(&self) {
        self.state.lock().lease = None;
    }

    fn current(&self) -> Option<u16> {
        self.state.lock().lease.map(|(m, _)| m)
    }
}

/// This node's claim on a machine id.
pub struct Lease {
    db: Arc<Db>,
    holder: String,
    pub ids: Arc<Ids>,
}

impl Lease {
    /// Claims a machine id; fails if none is free or the database is unreachable.
    pub async fn acquire(db: Arc<Db>, node_name: &str) -> anyhow::Result<Arc<Lease>> {
        let holder = format!(
            "{node_name}/{}/{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let lease = Arc::new(Lease {
            db,
            holder,
            ids: Arc::new(Ids::new()),
        });
        match lease.claim().await {
            Ok(true) => Ok(lease),
            Ok(false) => anyhow::bail!(
                "no free machine id (all {} leased)",
                MAX_MACHINE_ID as u32 + 1
            ),
            Err(e) => anyhow::bail!("cannot lease a machine id: {e}"),
        }
    }

    /// Tries to claim the lowest free or expired machine id. `Ok(false)`: none free.
    async fn claim(&self) -> Result<bool> {
        let client = self.db.primary().await?;
        for _ in 0..10 {
            let sent = Instant::now();
            let row = client
                .query_opt(
                    "INSERT INTO machine_leases (machine_id, holder, expires_at)
                     SELECT g, $1, now() + $2::float8 * interval '1 second'
                     FROM generate_series(0, $3::int) AS g
                     WHERE NOT EXISTS (
                        SELECT 1 FROM machine_leases l WHERE l.machine_id = g AND l.expires_at >= now())
                     ORDER BY g LIMIT 1
                     ON CONFLICT (machine_id) DO UPDATE
                        SET holder = excluded.holder, expires_at = excluded.expires_at
                        WHERE machine_leases.expires_at < now()
                     RETURNING machine_id",
                    &[
                        &self.holder,
                        &LEASE_TTL.as_secs_f64(),
                        &i32::from(MAX_MACHINE_ID),
                    ],
                )
                .await
                .db()?;
            let Some(row) = row else {
                // Either every id is leased or another node claimed the same one at the
                // same moment: look again.
                let free: i64 = client
                    .query_one(
                        "SELECT $1::bigint - COUNT(*) FROM machine_leases WHERE expires_at >= now()",
                        &[&(i64::from(MAX_MACHINE_ID) + 1)],
                    )
                    .await
                    .db()?
                    .get(0);
                if free <= 0 {
                    return Ok(false);
                }
                continue;
            };
            let machine: i32 = row.get(0);
            let machine = u16::try_from(machine).map_err(|_| Error::internal())?;
            let floor: i64 = client
                .query_one(
                    "SELECT GREATEST(
                        (SELECT COALESCE(MAX(last_id), 0) FROM machine_leases),
                        (SELECT COALESCE(MAX(id), 0) FROM users),
                        (SELECT COALESCE(MAX(id), 0) FROM conversations),
                        (SELECT COALESCE(MAX(id), 0) FROM sessions))",
                    &[],
                )
                .await
                .db()?
                .get(0);
            self.ids
                .granted(machine, sent + LEASE_TTL - SAFETY_MARGIN, floor as u64);
            tracing::info!(machine, holder = %self.holder, "leased machine id");
            return Ok(true);
        }
        Ok(false)
    }

    /// Extends the lease; `Ok(false)` if another node holds the id now.
    async fn renew(&self, machine: u16) -> Result<bool> {
        let client = self.db.primary().await?;
        let sent = Instant::now();
        let renewed = client
            .execute(
                "UPDATE machine_leases
                 SET expires_at = now() + $3::float8 * interval '1 second', last_id = GREATEST(last_id, $4)
                 WHERE machine_id = $1 AND holder = $2",
                &[
                    &i32::from(machine),
                    &self.holder,
                    &LEASE_TTL.as_secs_f64(),
                    &(self.ids.last() as i64),
                ],
            )
            .await
            .db()?;
        if renewed == 1 {
            self.ids.extend(machine, sent + LEASE_TTL - SAFETY_MARGIN);
        }
        Ok(renewed == 1)
    }

    /// Renews forever (until the task is aborted); claims a new id when the lease is lost.
    pub async fn maintain(self: Arc<Self>) {
        loop {
            let ok = match self.ids.current() {
                Some(machine) => match self.renew(machine).await {
                    Ok(true) => true,
                    Ok(false) => {
                        tracing::error!(machine, "machine-id lease taken by another node");
                        self.ids.revoke();
                        false
                    }
                    Err(_) => {
                        if !self.ids.held() {
                            tracing::error!(machine, "machine-id lease expired, ids stopped");
                        }
                        false
                    }
                },
                None => matches!(self.claim().await, Ok(true)),
            };
            tokio::time::sleep(if ok { RENEW_EVERY } else { RETRY_EVERY }).await;
        }
    }

    /// Gives the machine id back (graceful shutdown), keeping the newest id reported.
    pub async fn release(&self) {
        let Some(machine) = self.ids.current() else {
            return;
        };
        self.ids.revoke();
        let Ok(client) = self.db.primary().await else {
            return;
        };
        let released = client
            .execute(
                "UPDATE machine_leases SET expires_at = now() - interval '1 second', last_id = GREATEST(last_id, $3)
                 WHERE machine_id = $1 AND holder = $2",
                &[&i32::from(machine), &self.holder, &(self.ids.last() as i64)],
            )
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, machine, "cannot release the machine-id lease");
        }
    }
}
