//! The embedded durable work queue: committed events for background work (push
//! notifications), delivered again after a restart until acknowledged.
//!
//! The queue's cursor (the highest position acknowledged) lives in `notifications.db`.
//! On bind it subscribes to the bus first, then reads the messages committed between
//! the cursor and the head from the store, then follows the bus skipping what the
//! catch-up already covered: the same seam as a device's sync, so nothing falls
//! between the two. A queue bound for the first time starts at the head.

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
use std::sync::Arc;
use std::time::Duration;

/// Positions read per catch-up query.
const CATCH_UP_SPAN: u64 = 2_000;

/// A batch handed back by `retry_after`, and when to deliver it again.
type Redelivery = Arc<Mutex<Option<(tokio::time::Instant, Arc<[Event]>)>>>;

pub struct EmbeddedWorkQueue {
    name: Arc<str>,
    notify: Arc<NotifyDb>,
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
            name: name.into(),
            notify,
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
                name: Arc::clone(&self.name),
                notify: Arc::clone(&self.notify),
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

struct Ack {
    name: Arc<str>,
    notify: Arc<NotifyDb>,
    upto: u64,
    events: Option<Arc<[Event]>>,
    redeliver: Redelivery,
}

#[async_trait]
impl WorkAck for Ack {
    async fn ack(self: Box<Self>) -> Result<()> {
        let (name, upto) = (Arc::clone(&self.name), self.upto);
        self.notify
            .run(move |conn| notifications::set_cursor(conn, &name, upto))
            .await
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
        let Some((first, last)) = super::positions::seq_range(conn, conv, after, upto)? else {
            continue;
        };
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_id = ?1 AND seq >= ?2 AND seq <= ?3"
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
