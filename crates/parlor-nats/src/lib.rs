//! NATS JetStream adapter of the [`Bus`](parlor_core::ports::Bus) port: carries committed
//! events from the node that committed them to every node, in commit order.
//!
//! # Layout
//! - [`options`]: engine address, namespace, mutual TLS.
//! - `publisher`: committed events to JetStream (one subject per conversation), ephemeral
//!   ones (typing, presence, delivered) to plain NATS subjects.
//! - `reorder`: puts what arrives back into position order and finds gaps.
//! - `subscriber`: one ordered consumer per node, gap filling from the store's event log
//!   (and republishing what it filled, so that durable work sees it too).
//! - [`durable`]: work queues shared by the nodes, for work that must survive a node
//!   (at least once).
//!
//! # Guarantees
//! - Committed events (position > 0) reach every node's subscriber exactly once each, in
//!   position order, with no gap: positions are dense (the store assigns them in commit
//!   order), so a subscriber that sees position `p + 2` before `p + 1` waits briefly and
//!   then reads `p + 1` from the [`EventLog`](parlor_core::ports::EventLog). That also
//!   covers a node that died between its commit and its publish, and a NATS outage.
//! - Ephemeral events are at most once: they go over core NATS, not JetStream.
//! - Nothing here acknowledges a message to a sender; the store's commit does. Losing
//!   the broker delays delivery (gap filling polls the store), it never loses data.

pub mod durable;
pub mod options;
mod publisher;
mod reorder;
mod subscriber;

pub use options::{NatsOptions, TlsFiles};

use async_nats::jetstream;
use futures_util::stream::{BoxStream, StreamExt};
use parlor_core::model::Event;
use parlor_core::ports::{Bus, EventLog};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Counters for the server's metrics.
#[derive(Default)]
pub struct BusStats {
    /// JetStream messages published and acknowledged by the stream.
    pub published: AtomicU64,
    pub publish_failures: AtomicU64,
    /// Events this node read from the event log because the broker did not bring them.
    pub gap_filled: AtomicU64,
}

impl BusStats {
    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.published.load(Ordering::Relaxed),
            self.publish_failures.load(Ordering::Relaxed),
            self.gap_filled.load(Ordering::Relaxed),
        ]
    }
}

/// Subject and stream names derived from the namespace.
#[derive(Clone)]
pub(crate) struct Names {
    pub stream: String,
    /// `<ns>.ev`; a conversation's committed events go to `<ns>.ev.<conv>`.
    pub events: String,
    /// `<ns>.eph`; ephemeral events go to `<ns>.eph.<conv>` or `<ns>.eph.user`.
    pub ephemeral: String,
}

impl Names {
    fn new(namespace: &str) -> Names {
        Names {
            stream: format!("{}_EVENTS", namespace.to_ascii_uppercase()),
            events: format!("{namespace}.ev"),
            ephemeral: format!("{namespace}.eph"),
        }
    }
}

pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    outgoing: mpsc::UnboundedSender<publisher::Outgoing>,
    /// Set once the store exists (the store needs the bus first); read by subscribers.
    log: Arc<OnceLock<Arc<dyn EventLog>>>,
    stats: Arc<BusStats>,
}

impl NatsBus {
    /// Connects, creates the stream if it does not exist, and starts the publisher.
    pub async fn connect(options: NatsOptions) -> anyhow::Result<Arc<NatsBus>> {
        let client = options::connect(&options).await?;
        let js = jetstream::new(client.clone());
        let names = Names::new(&options.namespace);
        let replicas = options::replicas(&options, &client);
        options::ensure_stream(&js, &names, replicas).await?;
        let stats = Arc::new(BusStats::default());
        let (outgoing, rx) = mpsc::unbounded_channel();
        tokio::spawn(publisher::run(
            client.clone(),
            js.clone(),
            names.clone(),
            rx,
            Arc::clone(&stats),
        ));
        tracing::info!(stream = %names.stream, replicas, "nats bus ready");
        Ok(Arc::new(NatsBus {
            client,
            js,
            names,
            outgoing,
            log: Arc::new(OnceLock::new()),
            stats,
        }))
    }

    /// Where subscribers fill gaps from. Must be called before [`Bus::subscribe`].
    pub fn attach_log(&self, log: Arc<dyn EventLog>) {
        let _ = self.log.set(log);
    }

    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// Binds (creating it if needed) the work queue `work`, shared by every node that
    /// binds the same name; see [`durable`].
    pub async fn work_queue(
        &self,
        work: &str,
        ack_wait: std::time::Duration,
    ) -> anyhow::Result<durable::WorkQueue> {
        durable::bind(&self.js, &self.names, work, ack_wait).await
    }

    /// A round trip to the server and a look at the stream.
    pub async fn ping(&self) -> anyhow::Result<()> {
        tokio::time::timeout(std::time::Duration::from_secs(2), async {
            self.client.flush().await?;
            self.js.get_stream(&self.names.stream).await?;
            anyhow::Ok(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("nats did not answer within 2 s"))?
    }
}

impl Bus for NatsBus {
    fn publish(&self, events: Arc<[Event]>) {
        // The publisher task lives as long as the process; a send can only fail during
        // shutdown, when nothing needs delivering any more.
        let _ = self.outgoing.send(publisher::Outgoing::Commit(events));
    }

    fn subscribe(&self) -> BoxStream<'static, Arc<[Event]>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(subscriber::run(
            self.client.clone(),
            self.js.clone(),
            self.names.clone(),
            Arc::clone(&self.log),
            tx,
            self.outgoing.clone(),
            Arc::clone(&self.stats),
        ));
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}
