//! The transactional outbox: every position-bearing event is written to `event_log` in
//! the transaction that creates it, with its recipients as that transaction saw them.
//! A bus that receives position 7 and then 9 asks [`events_after`] for 8, which a node
//! may have committed and then died before publishing.
//!
//! Rows older than [`RETENTION`] are pruned by a periodic task on every node: a gap is
//! filled within seconds, and a device that was away longer syncs from the tables
//! themselves (`backlog`). When a message is deleted, its original `message` event and
//! the `edited` events of it are rewritten here as well, so the text (and the files it
//! carried) survives nowhere.

use crate::codec::clamp;
use crate::error::DbResult;
use crate::Core;
use parlor_core::error::{Error, Result};
use parlor_core::model::Event;
use parlor_proto::ws::ServerFrame;
use std::sync::Arc;
use std::time::Duration;

/// How long events stay in the log.
pub const RETENTION: Duration = Duration::from_secs(3600);
/// How often each node prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The stored form of an event: the core's wire form (`Event::encode`, JSON, the same
/// bytes that cross between nodes). Stored as `bytea`: `jsonb` refuses `\u0000`, which a
/// message may contain.
pub fn encode(event: &Event) -> Vec<u8> {
    event.encode()
}

pub fn decode(pos: u64, body: &[u8]) -> Result<Event> {
    let mut event = Event::decode(body).map_err(|e| {
        tracing::error!(error = %e, pos, "cannot decode a logged event");
        Error::internal()
    })?;
    event.pos = pos;
    Ok(event)
}

/// Inserts the rows of [`columns`].
pub const INSERT: &str = "INSERT INTO event_log (pos, conv_id, body)
     SELECT v.pos, v.conv_id, v.body
     FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS v(pos, conv_id, body)";

/// Positions, conversations and bodies of events, as arrays for [`INSERT`].
pub type Columns = (Vec<i64>, Vec<i64>, Vec<Vec<u8>>);

pub fn columns(events: &[Event]) -> Result<Columns> {
    let mut positions = Vec::with_capacity(events.len());
    let mut convs = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    for event in events {
        positions.push(clamp(event.pos));
        convs.push(event.conv().map_or(0, |c| c.0 as i64));
        bodies.push(encode(event));
    }
    Ok((positions, convs, bodies))
}

/// Inserts `events` (all position-bearing) into the log, in one statement.
pub async fn append(tx: &deadpool_postgres::Transaction<'_>, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (positions, convs, bodies) = columns(events)?;
    let stmt = tx.prepare_cached(INSERT).await.db()?;
    tx.execute(&stmt, &[&positions, &convs, &bodies])
        .await
        .db()?;
    Ok(())
}

/// Removes the text of a deleted message from its logged `message` and `edited` events.
pub async fn scrub(tx: &deadpool_postgres::Transaction<'_>, positions: &[i64]) -> Result<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let rows = tx
        .query(
            "SELECT pos, body FROM event_log WHERE pos = ANY($1) FOR UPDATE",
            &[&positions],
        )
        .await
        .db()?;
    for row in rows {
        let pos: i64 = row.get(0);
        let mut event = decode(pos as u64, row.get(1))?;
        match &mut event.frame {
            ServerFrame::Message(e) => {
                e.message.text.clear();
                e.message.mentions.clear();
                e.message.mention_all = false;
                e.message.reply_to = None;
                e.message.attachments.clear();
                e.message.deleted = true;
            }
            ServerFrame::Edited(e) => e.text.clear(),
            _ => continue,
        }
        tx.execute(
            "UPDATE event_log SET body = $2 WHERE pos = $1",
            &[&pos, &encode(&event)],
        )
        .await
        .db()?;
    }
    Ok(())
}

/// See [`parlor_core::ports::EventLog::events_after`]: never beyond the committed head,
/// read from the primary.
pub async fn events_after(core: &Core, after: u64, limit: u32) -> Result<Vec<Event>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT pos, body FROM event_log
             WHERE pos > $1 AND pos <= (SELECT pos FROM parlor_head)
             ORDER BY pos LIMIT $2",
        )
        .await
        .db()?;
    let rows = client
        .query(&stmt, &[&clamp(after), &i64::from(limit)])
        .await
        .db()?;
    rows.iter()
        .map(|row| decode(row.get::<_, i64>(0) as u64, row.get(1)))
        .collect()
}

/// Deletes what is older than the retention, every [`PRUNE_EVERY`], until aborted.
pub async fn prune_forever(core: Arc<Core>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let Ok(client) = core.db.primary().await else {
            continue;
        };
        let pruned = client
            .execute(
                "DELETE FROM event_log WHERE logged_at < now() - $1::float8 * interval '1 second'",
                &[&RETENTION.as_secs_f64()],
            )
            .await;
        match pruned {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "pruned the event log"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the event log"),
        }
    }
}
