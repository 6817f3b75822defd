//! The requests of one connection that wait for their outcome (pipelined sends, and
//! requests whose result is an event).

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use parlor_core::ports::BoxFuture;

/// Holds no set until the first request: most connections are idle, and an empty
/// `FuturesUnordered` still allocates its ready queue.
pub(super) struct Inflight<T>(Option<FuturesUnordered<BoxFuture<T>>>);

impl<T> Default for Inflight<T> {
    fn default() -> Self {
        Inflight(None)
    }
}

impl<T> Inflight<T> {
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push(&mut self, request: BoxFuture<T>) {
        self.0.get_or_insert_default().push(request);
    }

    /// The next completed request; pending forever while there is none, so a `select!`
    /// branch on it must be guarded by `!is_empty()`.
    pub(super) async fn next(&mut self) -> Option<T> {
        match &mut self.0 {
            Some(set) => set.next().await,
            None => std::future::pending().await,
        }
    }
}
