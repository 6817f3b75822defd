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
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use parking_lot::Mutex;
use parking_lot::RwLock;
use parlor_core::model::{Event, UserId};
use parlor_core::ports::Bus;
use parlor_proto::ws::ServerFrame;
use smallvec::SmallVec;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

const SHARDS: usize = 32;

/// A frame queued for one connection. `pos` 0 means "not part of the ordered stream".
pub struct Outgoing {
    pub pos: u64,
    pub text: Utf8Bytes,
    pub is_message: bool,
}

/// One connection's queue of frames, and the signals the node sends it (ping due, server
/// closing). Allocates nothing while empty: most connections are idle most of the time,
/// and a channel would reserve its first block of slots for each.
///
/// One task waits on it, so a single waker slot does instead of a `Notify` (whose waiting
/// future alone is 80 bytes of every idle connection's task).
pub struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    waker: AtomicWaker,
    /// Something happened since the connection last looked.
    signalled: AtomicBool,
    /// Set when the hub had to drop an event because the queue was full.
    pub overflowed: AtomicBool,
    /// Set by the hub's ping sweep: time to check the client is alive and ping it.
    ping_due: AtomicBool,
    /// Set once when the server shuts down.
    closing: AtomicBool,
    capacity: usize,
}

impl Outbox {
    fn new(capacity: usize) -> Self {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            signalled: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            ping_due: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            capacity,
        }
    }

    fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
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
        self.signal();
        true
    }

    /// The queue's memory goes back as soon as it is drained: kept, a connection that
    /// received one event would hold the block for good.
    pub fn pop(&self) -> Option<Outgoing> {
        let mut queue = self.queue.lock();
        let next = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
        next
    }

    /// Whether a ping sweep passed since the last call (and clears it).
    pub fn take_ping(&self) -> bool {
        self.ping_due.swap(false, Ordering::AcqRel)
    }

    /// Whether the server is shutting down.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Completes when something may have been queued or signalled since the last call.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.signalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A signal between the check and the registration would otherwise be missed.
            if self.signalled.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

struct Entry {
    id: u64,
    outbox: Arc<Outbox>,
}

/// A user's connections on this node: nearly always one, kept inline (a `Vec` would be
/// one more allocation per connected user).
type Entries = SmallVec<[Entry; 1]>;

pub struct Registration {
    pub id: u64,
    pub outbox: Arc<Outbox>,
}

pub struct Hub {
    hasher: RandomState,
    /// Sharded so that connects and disconnects rarely contend with the dispatcher.
    shards: Vec<RwLock<HashMap<UserId, Entries>>>,
    next_id: AtomicU64,
    outbox: usize,
    closed: AtomicBool,
}

impl Hub {
    pub fn new(outbox: usize) -> Self {
        Hub {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            outbox,
            closed: AtomicBool::new(false),
        }
    }

    fn shard(&self, user: UserId) -> &RwLock<HashMap<UserId, Entries>> {
        &self.shards[(self.hasher.hash_one(user) as usize) % SHARDS]
    }

    pub fn register(&self, user: UserId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(self.outbox));
        let mut shard = self.shard(user).write();
        shard.entry(user).or_default().push(Entry {
            id,
            outbox: Arc::clone(&outbox),
        });
        // Checked after the insert, under the shard's lock: either `close_all` sees this
        // entry, or it had set `closed` before it looked at the shard.
        if self.closed.load(Ordering::SeqCst) {
            outbox.closing.store(true, Ordering::Release);
            outbox.signal();
        }
        drop(shard);
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

    /// Flags every connection of one shard for a ping and wakes it.
    fn sweep(&self, shard: usize) {
        for entries in self.shards[shard].read().values() {
            for entry in entries {
                entry.outbox.ping_due.store(true, Ordering::Release);
                entry.outbox.signal();
            }
        }
    }

    /// Tells every connection, and every one registering from now on, that the server is
    /// shutting down.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for shard in &self.shards {
            for entries in shard.read().values() {
                for entry in entries {
                    entry.outbox.closing.store(true, Ordering::Release);
                    entry.outbox.signal();
                }
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

/// Asks every connection to ping its client once per `period`, one shard at a time.
///
/// One timer for the node instead of one per connection: a timer is ~200 bytes of an idle
/// connection's memory. Sweeping a shard per tick spreads the pings (and the idle checks
/// they carry) over the period instead of waking every connection at once.
pub async fn ping_sweeps(hub: Arc<Hub>, period: std::time::Duration) {
    let mut tick = tokio::time::interval(period / SHARDS as u32);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    for shard in (0..SHARDS).cycle() {
        tick.tick().await;
        hub.sweep(shard);
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
            let text = match parlor_proto::frame_json::encode(&event.frame) {
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
