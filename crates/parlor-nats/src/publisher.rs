//! The publishing half: one task per node, fed by the store after each commit.
//!
//! Committed events of one commit are grouped by conversation and published as one
//! JetStream message per conversation on `<ns>.ev.<conv>`, so that the stream carries a
//! conversation's events in order and a burst costs a message per conversation, not per
//! event. The message id (`Nats-Msg-Id`) is the first position it carries: a retried
//! publish is stored once. Acknowledgements are awaited off the publishing path.

use crate::{BusStats, Names};
use async_nats::jetstream;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use parlor_core::model::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

pub(crate) enum Outgoing {
    /// The events of one commit, from the store.
    Commit(Arc<[Event]>),
    /// Events a subscriber read from the event log because their publish never came:
    /// published one by one, message id = position, so that the nodes repairing the same
    /// gap store each event once.
    Repair(Vec<Event>),
}

/// Acknowledgements awaited at once; beyond this the publisher waits before sending more,
/// which bounds memory when the broker is slow.
const MAX_PENDING_ACKS: usize = 8192;

pub(crate) async fn run(
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    stats: Arc<BusStats>,
) {
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                let messages = match batch {
                    Outgoing::Commit(batch) => group(&names, &batch),
                    Outgoing::Repair(events) => events
                        .iter()
                        .flat_map(|event| group(&names, std::slice::from_ref(event)))
                        .collect(),
                };
                for (subject, first_pos, payload) in messages {
                    if first_pos == 0 {
                        if let Err(e) = client.publish(subject, payload).await {
                            tracing::debug!(error = %e, "ephemeral publish failed");
                        }
                        continue;
                    }
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", first_pos.to_string().as_str());
                    match js.publish_with_headers(subject, headers, payload).await {
                        Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
                        Err(e) => {
                            stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                            warn_throttled(&format!("publish failed: {e}"));
                        }
                    }
                    while acks.len() >= MAX_PENDING_ACKS {
                        if let Some(result) = acks.next().await {
                            record(&stats, result);
                        }
                    }
                }
            }
            Some(result) = acks.next(), if !acks.is_empty() => record(&stats, result),
        }
    }
}

fn record(
    stats: &BusStats,
    result: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) {
    match result {
        Ok(_) => {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            warn_throttled(&format!("publish not acknowledged: {e}"));
        }
    }
}

/// Logs a publish failure at most once a second with how many there were: while
/// JetStream has no leader every publish fails, thousands a second, and the failures
/// cost nothing but delay (subscribers read the event log), so one line says enough.
fn warn_throttled(what: &str) {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let last = LAST_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 1000
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            error = what,
            more_since_last = suppressed,
            "publishing to jetstream fails; subscribers read the event log meanwhile"
        );
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Splits a commit into messages: `(subject, first position or 0 if ephemeral, payload)`.
/// The payload is the events' JSON forms separated by newlines (JSON escapes newlines
/// inside strings, so the separator is unambiguous).
fn group(names: &Names, batch: &[Event]) -> Vec<(String, u64, Bytes)> {
    let mut out: Vec<(String, u64, BytesMut)> = Vec::new();
    let mut index: std::collections::HashMap<(bool, u64), usize> = Default::default();
    for event in batch {
        let durable = event.pos > 0;
        let conv = event.conv().map(|c| c.0).unwrap_or(0);
        let slot = *index.entry((durable, conv)).or_insert_with(|| {
            let subject = match (durable, conv) {
                (true, c) => format!("{}.{c}", names.events),
                (false, 0) => format!("{}.user", names.ephemeral),
                (false, c) => format!("{}.{c}", names.ephemeral),
            };
            out.push((subject, event.pos, BytesMut::new()));
            out.len() - 1
        });
        let payload = &mut out[slot].2;
        if !payload.is_empty() {
            payload.put_u8(b'\n');
        }
        payload.extend_from_slice(&event.encode());
    }
    out.into_iter()
        .map(|(subject, pos, payload)| (subject, pos, payload.freeze()))
        .collect()
}

/// The inverse of the payload format above; undecodable lines are skipped (and logged),
/// the gap they leave is filled from the event log.
pub(crate) fn decode(payload: &[u8]) -> Vec<Event> {
    payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| match Event::decode(line) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable event on the bus");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor_proto::ws::{ReadEvent, ServerFrame, TypingEvent};
    use parlor_proto::Id;

    fn read(pos: u64, conv: u64) -> Event {
        Event {
            pos,
            recipients: vec![Id(1)].into(),
            frame: ServerFrame::Read(ReadEvent {
                pos: Id(pos),
                conv: Id(conv),
                user: Id(1),
                seq: pos,
            }),
        }
    }

    #[test]
    fn one_message_per_conversation_in_order() {
        let names = Names::new("t");
        let typing = Event {
            pos: 0,
            recipients: vec![Id(2)].into(),
            frame: ServerFrame::Typing(TypingEvent {
                conv: Id(5),
                user: Id(1),
                typing: true,
                expires_in_ms: 5000,
            }),
        };
        let batch = vec![read(10, 5), read(11, 6), read(12, 5), typing];
        let groups = group(&names, &batch);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].0, "t.ev.5");
        assert_eq!(groups[0].1, 10);
        let back: Vec<u64> = decode(&groups[0].2).iter().map(|e| e.pos).collect();
        assert_eq!(back, vec![10, 12]);
        assert_eq!(groups[1].0, "t.ev.6");
        assert_eq!((groups[2].0.as_str(), groups[2].1), ("t.eph.5", 0));
    }
}
