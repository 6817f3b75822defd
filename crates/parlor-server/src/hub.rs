//! The hub: which users have which connections on this node, and the dispatcher that
//! turns committed events from the bus into frames on those connections.
//!
//! Each event is encoded to JSON once, then the same bytes are queued for every device
//! of every recipient (reference-counted, no copy). Queues are bounded: when a device's
//! queue is full the event is dropped for it and the connection is flagged; the connection
//! then re-reads what it missed from the store, so a slow device never slows the others
//! and never loses an event.

use crate::metrics::Metrics;
use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use parking_lot::RwLock;
use parlor_core::model::{Event, UserId};
use parlor_core::ports::Bus;
use parlor_proto::ws::ServerFrame;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

const SHARDS: usize = 32;

/// A frame queued for one connection. `pos` 0 means "not part of the ordered stream".
pub struct Outgoing {
    pub pos: u64,
    pub text: Utf8Bytes,
    pub is_message: bool,
}

/// One connection's queue of frames. Allocates nothing while empty: most connections are
/// idle most of the time, and a channel would reserve its first block of slots for each.
pub struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    ready: Notify,
    /// Set when the hub had to drop an event because the queue was full.
    pub overflowed: AtomicBool,
    capacity: usize,
}

/// Queues that grew past this during a burst give their memory back once drained.
const KEEP_CAPACITY: usize = 32;

impl Outbox {
    fn new(capacity: usize) -> Self {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            overflowed: AtomicBool::new(false),
            capacity,
        }
    }

    /// False when the queue is full.
    fn push(&self, outgoing: Outgoing) -> bool {
        {
            let mut queue = self.queue.lock();
            if queue.len() >= self.capacity {
                return false;
            }
            queue.push_back(outgoing);
        }
        // Stores a permit if the connection is not waiting, so no wake-up is lost.
        self.ready.notify_one();
        true
    }

    pub fn pop(&self) -> Option<Outgoing> {
        let mut queue = self.queue.lock();
        let next = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
            *queue = VecDeque::new();
        }
        next
    }

    /// Completes when something may have been queued since the last call.
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

struct Entry {
    id: u64,
    outbox: Arc<Outbox>,
}

pub struct Registration {
    pub id: u64,
    pub outbox: Arc<Outbox>,
}

pub struct Hub {
    hasher: RandomState,
    /// Sharded so that connects and disconnects rarely contend with the dispatcher.
    shards: Vec<RwLock<HashMap<UserId, Vec<Entry>>>>,
    next_id: AtomicU64,
    outbox: usize,
}

impl Hub {
    pub fn new(outbox: usize) -> Self {
        Hub {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            outbox,
        }
    }

    fn shard(&self, user: UserId) -> &RwLock<HashMap<UserId, Vec<Entry>>> {
        &self.shards[(self.hasher.hash_one(user) as usize) % SHARDS]
    }

    pub fn register(&self, user: UserId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.outbox));
        self.shard(user)
            .write()
            .entry(user)
            .or_default()
            .push(Entry {
                id,
                outbox: Arc::clone(&outbox),
            });
        Registration { id, outbox }
    }

    /// Whether this node holds a connection of `user`.
    pub fn is_connected(&self, user: UserId) -> bool {
        self.shard(user).read().contains_key(&user)
    }

    pub fn unregister(&self, user: UserId, id: u64) {
        let mut shard = self.shard(user).write();
        if let Some(entries) = shard.get_mut(&user) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                shard.remove(&user);
            }
        }
    }

    /// Queues `text` for every connection of every recipient; returns how many.
    pub fn deliver(
        &self,
        event: &Event,
        text: &Utf8Bytes,
        is_message: bool,
        metrics: &Metrics,
    ) -> usize {
        let mut delivered = 0;
        for &user in event.recipients.iter() {
            let shard = self.shard(user).read();
            let Some(entries) = shard.get(&user) else {
                continue;
            };
            for entry in entries {
                let outgoing = Outgoing {
                    pos: event.pos,
                    text: text.clone(),
                    is_message,
                };
                if entry.outbox.push(outgoing) {
                    delivered += 1;
                } else if !entry.outbox.overflowed.swap(true, Ordering::AcqRel) {
                    metrics.outbox_overflows.inc();
                }
            }
        }
        delivered
    }
}

/// Runs until the bus ends: one task, so events leave in the order they were committed.
pub async fn dispatch(bus: Arc<dyn Bus>, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    let mut stream = bus.subscribe();
    while let Some(batch) = stream.next().await {
        let now_ms = crate::now_ms();
        for event in batch.iter() {
            metrics.events_published.inc();
            let is_message = matches!(event.frame, ServerFrame::Message(_));
            let text = match serde_json::to_string(&event.frame) {
                Ok(text) => Utf8Bytes::from(text),
                Err(e) => {
                    tracing::error!(error = %e, pos = event.pos, "event encoding failed");
                    continue;
                }
            };
            hub.deliver(event, &text, is_message, &metrics);
            if let ServerFrame::Message(m) = &event.frame {
                metrics.messages_accepted.inc();
                metrics
                    .delivery_latency
                    .observe((now_ms - m.message.ts).max(0) as f64 / 1000.0);
            }
        }
    }
}
