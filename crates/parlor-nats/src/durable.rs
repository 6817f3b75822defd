//! Durable work queues: committed events for work that must not be lost when a node is
//! down (push notifications, indexing into another system, webhooks).
//!
//! One JetStream durable pull consumer per kind of work, named `<ns>_<work>`, bound by
//! every node that does that work. JetStream hands each message to one of them; a
//! message not acknowledged within `ack_wait` (the node died, or its handler asked for a
//! retry) goes to another. So each committed event is handled at least once somewhere
//! in the cluster while any node runs, and work resumes where it stopped after a full
//! restart. Handlers must be idempotent: at-least-once means a redelivery after a crash
//! between the work and its acknowledgement, and a gap repair (below) may deliver an
//! event a second time.
//!
//! Events whose publish never happened (the node died between commit and publish) are
//! published later by whichever node fills that gap from the event log (see
//! `subscriber.rs`), so they reach the work queues too, provided some node runs a
//! subscriber; a queue created after an event was committed does not see it (it starts
//! with new events).

use crate::{publisher, Names};
use async_nats::jetstream::{self, consumer, AckKind};
use futures_util::StreamExt;
use parlor_core::model::Event;
use std::time::Duration;

pub struct WorkQueue {
    messages: consumer::pull::Stream,
}

/// One published batch of committed events (one conversation's events of one commit),
/// to acknowledge once handled.
pub struct Work {
    pub events: Vec<Event>,
    message: jetstream::Message,
}

impl Work {
    /// The work is done: it is not delivered again.
    pub async fn ack(self) -> anyhow::Result<()> {
        self.message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack failed: {e}"))
    }

    /// The work failed transiently: deliver it again after `delay` (to any node).
    pub async fn retry_after(self, delay: Duration) -> anyhow::Result<()> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| anyhow::anyhow!("nak failed: {e}"))
    }
}

pub(crate) async fn bind(
    js: &jetstream::Context,
    names: &Names,
    work: &str,
    ack_wait: Duration,
) -> anyhow::Result<WorkQueue> {
    anyhow::ensure!(
        !work.is_empty() && work.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "work queue names are letters, digits and '_'"
    );
    let durable = format!("{}_{work}", names.stream.trim_end_matches("_EVENTS"));
    let stream = js.get_stream(&names.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: format!("{}.>", names.events),
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind work queue {durable}: {e}"))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot pull from {durable}: {e}"))?;
    Ok(WorkQueue { messages })
}

impl WorkQueue {
    /// The next batch of work; `None` when the connection is gone for good.
    pub async fn next(&mut self) -> Option<anyhow::Result<Work>> {
        let message = self.messages.next().await?;
        Some(
            message
                .map(|message| Work {
                    events: publisher::decode(&message.payload),
                    message,
                })
                .map_err(|e| anyhow::anyhow!("work queue: {e}")),
        )
    }
}

#[async_trait::async_trait]
impl parlor_core::ports::WorkQueue for WorkQueue {
    async fn next(&mut self) -> Option<parlor_core::Result<parlor_core::ports::WorkItem>> {
        let work = WorkQueue::next(self).await?;
        Some(match work {
            Ok(mut work) => Ok(parlor_core::ports::WorkItem {
                events: std::mem::take(&mut work.events).into(),
                ack: Box::new(work),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "work queue");
                Err(parlor_core::Error::unavailable())
            }
        })
    }
}

#[async_trait::async_trait]
impl parlor_core::ports::WorkAck for Work {
    async fn ack(self: Box<Self>) -> parlor_core::Result<()> {
        Work::ack(*self).await.map_err(|e| {
            tracing::warn!(error = %e, "work queue ack");
            parlor_core::Error::unavailable()
        })
    }

    async fn retry_after(self: Box<Self>, delay: Duration) -> parlor_core::Result<()> {
        Work::retry_after(*self, delay).await.map_err(|e| {
            tracing::warn!(error = %e, "work queue nak");
            parlor_core::Error::unavailable()
        })
    }
}
