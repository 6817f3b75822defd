//! The embedded durable work queue: committed events for background work (push
//! notifications), delivered again after a restart until acknowledged.
//!
//! The queue's cursor (the highest position acknowledged) lives in `notifications.db`.
//! On bind it subscribes to the bus first, then reads the messages committed between
//! the cursor and the head from the store, then follows the bus skipping what the
//! catch-up already covered: the same seam as a device's sync, so nothing falls
//! between the two. A queue bound for the first time starts at the head. The cursor is
//! written behind the acknowledgements, at most [`CURSOR_EVERY`] late.

use super::notifications::{self, NotifyDb};
use super::reader::{db_err, message_view, ReadPool, MESSAGE_COLUMNS};
use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;
use parlor_core::error::Result;
use parlor_core::model::Event;
use parlor_core::ports::{WorkAck, WorkItem, WorkQueue};
use parlor_proto::ws::{MessageEvent, ServerFrame};
use rusqlite::params;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Positions read per catch-up query.
const CATCH_UP_SPAN: u64 = 2_000;

/// A batch handed back by `retry_after`, and when to deliver it again.
type Redelivery = Arc<Mutex<Option<(tokio::time::Instant, Arc<[Event]>)>>>;

pub struct EmbeddedWorkQueue {
    cursor: Arc<Cursor>,
    reads: Arc<ReadPool>,
    live: BoxStream<'static, Arc<[Event]>>,
    /// Catch-up still to read: positions `(after, upto]`.
    catch_up: Option<(u64, u64)>,
    /// Highest position handed out; live events at or below it were covered by catch-up.
    last: u64,
    redeliver: Redelivery,
}

impl EmbeddedWorkQueue {
    pub(super) async fn bind(
        name: &str,
        notify: Arc<NotifyDb>,
        reads: Arc<ReadPool>,
        live: BoxStream<'static, Arc<[Event]>>,
        head: u64,
    ) -> Result<Self> {
        let key = name.to_owned();
        let cursor = notify
            .run(move |conn| {
                let cursor = notifications::cursor(conn, &key)?;
                if cursor.is_none() {
                    notifications::set_cursor(conn, &key, head)?;
                }
                Ok(cursor.unwrap_or(head))
            })
            .await?;
        if cursor < head {
            tracing::info!(
                queue = name,
                from = cursor,
                to = head,
                "work queue catching up"
            );
        }
        Ok(EmbeddedWorkQueue {
            cursor: Arc::new(Cursor {
                name: name.into(),
                notify,
                acked: AtomicU64::new(cursor),
                pending: AtomicBool::new(false),
            }),
            reads,
            live,
            catch_up: (cursor < head).then_some((cursor, head)),
            last: cursor.max(head),
            redeliver: Arc::new(Mutex::new(None)),
        })
    }

    fn item(&self, events: Arc<[Event]>) -> WorkItem {
        let upto = events.iter().map(|e| e.pos).max().unwrap_or(0);
        WorkItem {
            ack: Box::new(Ack {
                cursor: Arc::clone(&self.cursor),
                upto,
                events: Some(Arc::clone(&events)),
                redeliver: Arc::clone(&self.redeliver),
            }),
            events,
        }
    }
}

#[async_trait]
impl WorkQueue for EmbeddedWorkQueue {
    async fn next(&mut self) -> Option<Result<WorkItem>> {
        loop {
            let again = self.redeliver.lock().take();
            if let Some((at, events)) = again {
                tokio::time::sleep_until(at).await;
                return Some(Ok(self.item(events)));
            }
            if let Some((after, upto)) = self.catch_up {
                let end = upto.min(after + CATCH_UP_SPAN);
                let events = match self
                    .reads
                    .run(move |conn| messages_between(conn, after, end).map_err(db_err))
                    .await
                {
                    Ok(events) => events,
                    Err(e) => return Some(Err(e)),
                };
                self.catch_up = (end < upto).then_some((end, upto));
                if !events.is_empty() {
                    return Some(Ok(self.item(events.into())));
                }
                continue;
            }
            let batch = self.live.next().await?;
            // Ephemeral events (typing, presence: position 0) and what catch-up covered
            // are skipped; a batch of committed events passes whole, without a copy.
            let events: Arc<[Event]> = if batch.iter().all(|e| e.pos > self.last) {
                batch
            } else {
                batch
                    .iter()
                    .filter(|e| e.pos > self.last)
                    .cloned()
                    .collect()
            };
            if let Some(max) = events.iter().map(|e| e.pos).max() {
                self.last = max;
                return Some(Ok(self.item(events)));
            }
        }
    }
}

/// The queue's acknowledged position, written to `notifications.db` at most once per
/// [`CURSOR_EVERY`] instead of once per item: under load the store commits (and the
/// queue hands out) thousands of batches a second, and a write per batch was a
/// transaction and a blocking-thread round trip each. What a crash loses is at most that
/// much of acknowledged work, delivered again to handlers that are idempotent anyway.
struct Cursor {
    name: Arc<str>,
    notify: Arc<NotifyDb>,
    acked: AtomicU64,
    /// A write is due (a task sleeps until it is made).
    pending: AtomicBool,
}

/// How long an acknowledgement may wait to be written.
const CURSOR_EVERY: Duration = Duration::from_millis(100);

impl Cursor {
    fn ack(self: &Arc<Self>, upto: u64) {
        self.acked.fetch_max(upto, Ordering::AcqRel);
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let cursor = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(CURSOR_EVERY).await;
            // Cleared before reading: an acknowledgement after this point schedules a
            // write of its own (`set_cursor` keeps the maximum, so order does not matter).
            cursor.pending.store(false, Ordering::Release);
            let upto = cursor.acked.load(Ordering::Acquire);
            let name = Arc::clone(&cursor.name);
            let saved = cursor
                .notify
                .run(move |conn| notifications::set_cursor(conn, &name, upto))
                .await;
            if let Err(e) = saved {
                tracing::warn!(error = %e, queue = %cursor.name, "saving the work queue cursor failed");
            }
        });
    }
}

struct Ack {
    cursor: Arc<Cursor>,
    upto: u64,
    events: Option<Arc<[Event]>>,
    redeliver: Redelivery,
}

#[async_trait]
impl WorkAck for Ack {
    async fn ack(self: Box<Self>) -> Result<()> {
        self.cursor.ack(self.upto);
        Ok(())
    }

    async fn retry_after(mut self: Box<Self>, delay: Duration) -> Result<()> {
        if let Some(events) = self.events.take() {
            *self.redeliver.lock() = Some((tokio::time::Instant::now() + delay, events));
        }
        Ok(())
    }
}

/// Messages committed with positions in `(after, upto]`, in position order; one range
/// read per conversation (the same walk the search index uses to catch up).
fn messages_between(
    conn: &rusqlite::Connection,
    after: u64,
    upto: u64,
) -> rusqlite::Result<Vec<Event>> {
    let convs: Vec<i64> = conn
        .prepare_cached("SELECT id FROM conversations")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut events = Vec::new();
    for conv in convs {
        let Some(range) = super::positions::seq_range(conn, conv, after, upto, None)? else {
            continue;
        };
        let (first, last, table) = (range.first, range.last, range.table(range.last));
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM {table} WHERE conv_id = ?1 AND seq >= ?2 AND seq <= ?3"
        ))?;
        let rows = stmt.query_map(params![conv, first as i64, last as i64], |r| {
            Ok((r.get::<_, i64>(7)? as u64, message_view(r)?))
        })?;
        for row in rows {
            let (pos, message) = row?;
            events.push(Event {
                pos,
                recipients: Arc::from(Vec::new()),
                frame: ServerFrame::Message(MessageEvent {
                    pos: parlor_proto::Id(pos),
                    message,
                }),
            });
        }
    }
    events.sort_by_key(|e| e.pos);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn saved(notify: &NotifyDb) -> Option<u64> {
        notify
            .run(|conn| notifications::cursor(conn, "q"))
            .await
            .expect("read the cursor")
    }

    #[tokio::test]
    async fn acknowledgements_reach_the_database_and_the_highest_wins() {
        let dir = tempfile::tempdir().expect("temp dir");
        let notify = Arc::new(NotifyDb::open(dir.path()).expect("open"));
        let cursor = Arc::new(Cursor {
            name: "q".into(),
            notify: Arc::clone(&notify),
            acked: AtomicU64::new(0),
            pending: AtomicBool::new(false),
        });
        for upto in [3, 9, 5] {
            cursor.ack(upto);
        }
        let mut waited = Duration::ZERO;
        while saved(&notify).await != Some(9) {
            assert!(waited < Duration::from_secs(10), "cursor never saved");
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
        // A later acknowledgement is written by a write of its own.
        cursor.ack(12);
        while saved(&notify).await != Some(12) {
            assert!(waited < Duration::from_secs(10), "second ack never saved");
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += Duration::from_millis(20);
        }
    }
}
