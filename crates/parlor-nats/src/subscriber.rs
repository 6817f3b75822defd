//! The receiving half: each node runs one subscriber (its hub's), made of
//! - an ordered JetStream consumer of `<ns>.ev.>` starting at "new" (nothing replayed:
//!   what was committed before the node started is in the store),
//! - a plain subscription to `<ns>.eph.>` for ephemeral events,
//! - a [`Reorder`] buffer, and gap filling from the store's event log when a position
//!   stays missing for [`GAP_WAIT`] or the store's head runs ahead of what arrived; what
//!   it fills it also publishes, so that durable work queues get it.

use crate::publisher::decode;
use crate::reorder::Reorder;
use crate::{BusStats, Names};
use async_nats::jetstream::{self, consumer};
use futures_util::stream::{BoxStream, StreamExt};
use parlor_core::model::Event;
use parlor_core::ports::EventLog;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a missing position may stay missing before it is read from the store. Nodes
/// publish within milliseconds of their commit; this only matters when one died or the
/// broker is down.
const GAP_WAIT: Duration = Duration::from_millis(250);
/// How often the store's head is read, to notice events that never reached the broker
/// when nothing newer arrives either.
const HEAD_POLL: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(50);
const FILL_PAGE: u32 = 1000;

type Out = mpsc::UnboundedSender<Arc<[Event]>>;
type Repair = mpsc::UnboundedSender<crate::publisher::Outgoing>;

pub(crate) async fn run(
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    log: Arc<OnceLock<Arc<dyn EventLog>>>,
    out: Out,
    repair: Repair,
    stats: Arc<BusStats>,
) {
    let mut ephemeral = loop {
        match client.subscribe(format!("{}.>", names.ephemeral)).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to ephemeral events, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut committed = consume(&js, &names).await;
    let log = loop {
        if let Some(log) = log.get() {
            break Arc::clone(log);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The head is read after the consumer exists: everything committed after it is
    // published after the consumer started, so it arrives (or shows up as a gap).
    let head = loop {
        match log.head().await {
            Ok(head) => break head,
            Err(e) => {
                tracing::warn!(error = %e.message, "cannot read the store head, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut reorder = Reorder::new(head);
    let mut stalled_since: Option<Instant> = None;
    let mut last_head_poll = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            message = committed.next() => match message {
                Some(Ok(payload)) => {
                    for event in decode(&payload) {
                        reorder.push(event);
                    }
                    if !emit(&out, reorder.release()) {
                        return;
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "ordered consumer error"),
                None => {
                    tracing::warn!("ordered consumer ended, creating a new one");
                    committed = consume(&js, &names).await;
                    // Whatever was published meanwhile is found through the head.
                    last_head_poll = Instant::now() - HEAD_POLL;
                }
            },
            message = ephemeral.next() => {
                let Some(message) = message else { return };
                if !emit(&out, decode(&message.payload)) {
                    return;
                }
            }
            _ = tick.tick() => {
                if last_head_poll.elapsed() >= HEAD_POLL {
                    last_head_poll = Instant::now();
                    match log.head().await {
                        Ok(head) => reorder.observe_head(head),
                        Err(e) => tracing::debug!(error = %e.message, "head poll failed"),
                    }
                }
                match reorder.gap() {
                    None => stalled_since = None,
                    Some((after, up_to)) => {
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= GAP_WAIT {
                            if !fill(&*log, &mut reorder, after, up_to, &out, &repair, &stats).await {
                                return;
                            }
                            stalled_since = None;
                        }
                    }
                }
            }
        }
    }
}

/// Payloads of the ordered consumer, recreated until it works.
async fn consume(
    js: &jetstream::Context,
    names: &Names,
) -> BoxStream<'static, Result<bytes::Bytes, String>> {
    loop {
        match try_consume(js, names).await {
            Ok(stream) => return stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the ordered consumer, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn try_consume(
    js: &jetstream::Context,
    names: &Names,
) -> anyhow::Result<BoxStream<'static, Result<bytes::Bytes, String>>> {
    let stream = js.get_stream(&names.stream).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", names.events),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let messages = consumer.messages().await?;
    Ok(messages
        .map(|m| m.map(|m| m.message.payload).map_err(|e| e.to_string()))
        .boxed())
}

/// Reads `(after, up_to]` from the event log into the reorder buffer and releases what
/// it can. Returns false when the hub is gone.
async fn fill(
    log: &dyn EventLog,
    reorder: &mut Reorder,
    mut after: u64,
    up_to: u64,
    out: &Out,
    repair: &Repair,
    stats: &BusStats,
) -> bool {
    while after < up_to {
        let want = (up_to - after).min(u64::from(FILL_PAGE)) as u32;
        let events = match log.events_after(after, want).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e.message, after, "gap fill failed, retrying later");
                return true;
            }
        };
        let Some(last) = events.last().map(|e| e.pos) else {
            break;
        };
        stats
            .gap_filled
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        tracing::debug!(
            after,
            count = events.len(),
            "filled a gap from the event log"
        );
        // Durable work queues only see what reached the stream: put it there.
        let _ = repair.send(crate::publisher::Outgoing::Repair(events.clone()));
        for event in events {
            reorder.push(event);
        }
        if !emit(out, reorder.release()) {
            return false;
        }
        after = last;
    }
    true
}

fn emit(out: &Out, events: Vec<Event>) -> bool {
    if events.is_empty() {
        return true;
    }
    out.send(events.into()).is_ok()
}
