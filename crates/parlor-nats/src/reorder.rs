//! Puts committed events back into position order.
//!
//! Nodes publish after their own commits, so two commits made 1 ms apart on two nodes
//! can reach a subscriber in either order. Positions are dense, so the subscriber knows
//! exactly what it is missing: it releases events only from `next` onward without a
//! hole, and reports a gap when it has seen (or been told of) a later position.

use parlor_core::model::Event;
use std::collections::BTreeMap;

pub(crate) struct Reorder {
    /// The next position to release.
    next: u64,
    waiting: BTreeMap<u64, Event>,
    /// The newest position known to be committed (from events seen or the store's head).
    known_head: u64,
}

impl Reorder {
    /// Starts after `head`: events at or before it were committed before this subscriber
    /// existed, and connections read them from the store.
    pub fn new(head: u64) -> Reorder {
        Reorder {
            next: head + 1,
            waiting: BTreeMap::new(),
            known_head: head,
        }
    }

    pub fn push(&mut self, event: Event) {
        if event.pos < self.next {
            return; // already released, or from before this subscriber
        }
        self.known_head = self.known_head.max(event.pos);
        self.waiting.entry(event.pos).or_insert(event);
    }

    /// What the store says is committed.
    pub fn observe_head(&mut self, head: u64) {
        self.known_head = self.known_head.max(head);
    }

    /// Everything releasable now, in order.
    pub fn release(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(event) = self.waiting.remove(&self.next) {
            out.push(event);
            self.next += 1;
        }
        out
    }

    /// The missing range `(after, up_to]` if something committed has not arrived.
    pub fn gap(&self) -> Option<(u64, u64)> {
        if self.known_head < self.next {
            return None;
        }
        let up_to = match self.waiting.keys().next() {
            Some(&first) => first - 1,
            None => self.known_head,
        };
        Some((self.next - 1, up_to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor_proto::ws::{ReadEvent, ServerFrame};
    use parlor_proto::Id;

    fn ev(pos: u64) -> Event {
        Event {
            pos,
            recipients: vec![].into(),
            frame: ServerFrame::Read(ReadEvent {
                pos: Id(pos),
                conv: Id(1),
                user: Id(1),
                seq: pos,
            }),
        }
    }

    fn positions(events: Vec<Event>) -> Vec<u64> {
        events.into_iter().map(|e| e.pos).collect()
    }

    #[test]
    fn releases_in_order_without_holes() {
        let mut r = Reorder::new(10);
        r.push(ev(12));
        r.push(ev(9)); // before the start: dropped
        assert!(r.release().is_empty());
        assert_eq!(r.gap(), Some((10, 11)));
        r.push(ev(11));
        r.push(ev(12)); // duplicate
        assert_eq!(positions(r.release()), vec![11, 12]);
        assert_eq!(r.gap(), None);
        r.push(ev(11)); // late duplicate
        assert!(r.release().is_empty());
        assert_eq!(r.next, 13);
    }

    #[test]
    fn head_reveals_a_trailing_gap() {
        let mut r = Reorder::new(5);
        r.observe_head(7);
        assert_eq!(r.gap(), Some((5, 7)));
        r.push(ev(6));
        r.push(ev(7));
        assert_eq!(positions(r.release()), vec![6, 7]);
        assert_eq!(r.gap(), None);
    }
}
