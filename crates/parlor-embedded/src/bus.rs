//! In-process bus. The store's writer thread publishes each committed batch once; every
//! subscriber (normally one: the node's hub) receives the batches in commit order.
//! Unbounded on purpose: the writer must never block on a slow consumer, and the hub
//! drains in microseconds; back-pressure is applied per connection by the hub instead.

use futures_util::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;
use parlor_core::model::Event;
use parlor_core::ports::Bus;
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Default)]
pub struct InProcessBus {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<[Event]>>>>,
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Bus for InProcessBus {
    fn publish(&self, events: Arc<[Event]>) {
        let mut subscribers = self.subscribers.lock();
        subscribers.retain(|tx| tx.send(Arc::clone(&events)).is_ok());
    }

    fn subscribe(&self) -> BoxStream<'static, Arc<[Event]>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.subscribers.lock().push(tx);
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}
