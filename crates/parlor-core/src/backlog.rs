//! The k-way merge behind [`Store::backlog`](crate::ports::Store::backlog), shared by
//! every store so that they release sync events by exactly the same rule.
//!
//! A user's backlog is the events of their conversations with positions in
//! `(since, head]`, in global position order. Messages are many, so each conversation
//! gets a cursor that reads its messages in position order, a chunk at a time; the few
//! other events (membership changes, edits and deletes, read markers) are loaded up
//! front. A page releases events only up to the **checkpoint**: the smallest
//! last-buffered position among cursors that may still have more. Anything a cursor
//! reads later lies above its last buffered position, hence above the checkpoint, so
//! what is released is final, in order, and every row is read once.
//!
//! This type holds no connection: the store asks it which cursors need rows
//! ([`BacklogMerge::refills`]), reads them however its engine does best, hands them back
//! ([`BacklogMerge::refilled`]) and takes a page ([`BacklogMerge::next_page`]).

use crate::model::{ConvId, Event};
use std::collections::VecDeque;

/// Messages of one conversation that a cursor still has to read: positions in
/// `(after, upper]`, in position order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub conv: ConvId,
    pub after: u64,
    pub upper: u64,
}

#[derive(Debug)]
struct Cursor {
    span: Span,
    buffered: VecDeque<Event>,
    /// The last read returned less than a chunk: nothing is left in the span.
    exhausted: bool,
}

/// The state of one backlog between pages.
#[derive(Debug)]
pub struct BacklogMerge {
    cursors: Vec<Cursor>,
    /// Non-message events, sorted by position.
    other: VecDeque<Event>,
    chunk: u32,
    page: usize,
}

impl BacklogMerge {
    /// A merge of one cursor per span and the `other` events (any order), releasing at
    /// most `page` events per page.
    pub fn new(spans: Vec<Span>, mut other: Vec<Event>, page: u32) -> BacklogMerge {
        // One round of refills reads about a page in all, but at least 64 rows per
        // cursor, so that a user in many conversations does not read them a few rows at
        // a time.
        let chunk = (page / (spans.len().max(1) as u32)).clamp(64, page.max(64));
        other.sort_by_key(|e| e.pos);
        BacklogMerge {
            cursors: spans
                .into_iter()
                .map(|span| Cursor {
                    span,
                    buffered: VecDeque::new(),
                    exhausted: false,
                })
                .collect(),
            other: other.into(),
            chunk,
            page: page.max(1) as usize,
        }
    }

    /// The most rows a refill may return for one cursor; fewer means the span is done.
    pub fn chunk(&self) -> u32 {
        self.chunk
    }

    /// The cursors to read before the next page, by index, with what each still has to
    /// read: those whose buffer ran empty and whose span is not done. A cursor that
    /// still holds rows is not read again until it has released them, so buffers stay
    /// within a chunk.
    pub fn refills(&self) -> Vec<(usize, Span)> {
        self.cursors
            .iter()
            .enumerate()
            .filter(|(_, c)| c.buffered.is_empty() && !c.exhausted)
            .map(|(i, c)| (i, c.span))
            .collect()
    }

    /// The rows read for cursor `index` (as [`BacklogMerge::refills`] named it): its next
    /// events in position order, at most [`BacklogMerge::chunk`] of them.
    ///
    /// # Panics
    /// If `index` is not a cursor's, like slice indexing.
    pub fn refilled(&mut self, index: usize, events: Vec<Event>) {
        let exhausted = events.len() < self.chunk as usize;
        let cursor = &mut self.cursors[index];
        cursor.exhausted = exhausted;
        if let Some(last) = events.last() {
            cursor.span.after = last.pos;
        }
        cursor.buffered.extend(events);
    }

    /// The next page: up to `page` events in position order, none beyond the checkpoint.
    /// `None` once everything has been released. Call after feeding every refill.
    pub fn next_page(&mut self) -> Option<Vec<Event>> {
        let checkpoint = self
            .cursors
            .iter()
            .filter(|c| !c.exhausted)
            .filter_map(|c| c.buffered.back().map(|e| e.pos))
            .min()
            .unwrap_or(u64::MAX);
        let mut out = Vec::new();
        while out.len() < self.page {
            // `None` stands for `other`; it wins a tie, which positions (unique) never make.
            let mut best: Option<(u64, Option<usize>)> = self.other.front().map(|e| (e.pos, None));
            for (i, c) in self.cursors.iter().enumerate() {
                if let Some(front) = c.buffered.front() {
                    if best.is_none_or(|(pos, _)| front.pos < pos) {
                        best = Some((front.pos, Some(i)));
                    }
                }
            }
            let Some((pos, source)) = best else { break };
            if pos > checkpoint {
                break;
            }
            let event = match source {
                None => self.other.pop_front(),
                Some(i) => self.cursors[i].buffered.pop_front(),
            };
            out.extend(event);
        }
        let finished = self.other.is_empty()
            && self
                .cursors
                .iter()
                .all(|c| c.exhausted && c.buffered.is_empty());
        if out.is_empty() && finished {
            None
        } else {
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Id;
    use parlor_proto::ws::{ReadEvent, ServerFrame};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn event(conv: u64, pos: u64) -> Event {
        Event {
            pos,
            recipients: Arc::from(Vec::new()),
            frame: ServerFrame::Read(ReadEvent {
                pos: Id(pos),
                conv: Id(conv),
                user: Id(1),
                seq: pos,
            }),
        }
    }

    /// An in-memory store: each conversation's message positions.
    struct Fake {
        messages: BTreeMap<u64, Vec<u64>>,
        reads: usize,
        rows_read: usize,
    }

    impl Fake {
        fn new(messages: &[(u64, &[u64])]) -> Fake {
            Fake {
                messages: messages.iter().map(|(c, p)| (*c, p.to_vec())).collect(),
                reads: 0,
                rows_read: 0,
            }
        }

        fn span(&self, conv: u64, after: u64, upper: u64) -> Span {
            Span {
                conv: Id(conv),
                after,
                upper,
            }
        }

        /// Drives `merge` as a store does; returns the pages.
        fn drain(&mut self, merge: &mut BacklogMerge) -> Vec<Vec<u64>> {
            let mut pages = Vec::new();
            loop {
                for (index, span) in merge.refills() {
                    self.reads += 1;
                    let rows: Vec<Event> = self.messages[&span.conv.0]
                        .iter()
                        .filter(|&&p| p > span.after && p <= span.upper)
                        .take(merge.chunk() as usize)
                        .map(|&p| event(span.conv.0, p))
                        .collect();
                    self.rows_read += rows.len();
                    merge.refilled(index, rows);
                }
                match merge.next_page() {
                    Some(page) => pages.push(page.iter().map(|e| e.pos).collect()),
                    None => return pages,
                }
            }
        }
    }

    #[test]
    fn merges_cursors_and_other_events_in_position_order() {
        let a: Vec<u64> = (1..=300).filter(|p| p % 3 == 0).collect();
        let b: Vec<u64> = (1..=300).filter(|p| p % 3 == 1).collect();
        let mut fake = Fake::new(&[(10, &a), (20, &b)]);
        let other = vec![event(10, 299), event(20, 2), event(10, 5)];
        let spans = vec![fake.span(10, 0, u64::MAX), fake.span(20, 0, u64::MAX)];
        let mut merge = BacklogMerge::new(spans, other, 50);
        let pages = fake.drain(&mut merge);
        assert!(pages.iter().all(|p| p.len() <= 50));
        let all: Vec<u64> = pages.concat();
        let mut expected: Vec<u64> = a.iter().chain(&b).copied().collect();
        expected.extend([299, 2, 5]);
        expected.sort_unstable();
        assert_eq!(all, expected);
        // Each row read once.
        assert_eq!(fake.rows_read, a.len() + b.len());
    }

    #[test]
    fn releases_nothing_beyond_what_an_unfinished_cursor_has_reached() {
        let a: Vec<u64> = (1..=200).filter(|&p| p != 150).collect();
        let mut fake = Fake::new(&[(10, &a), (20, &[150])]);
        let spans = vec![fake.span(10, 0, 1000), fake.span(20, 0, 1000)];
        let mut merge = BacklogMerge::new(spans, vec![event(20, 201)], 128);
        assert_eq!(merge.chunk(), 64);
        let pages = fake.drain(&mut merge);
        // Conversation 20 is read to its end at once, but its 150 (and 201) wait until
        // conversation 10's cursor has passed them: the first pages stop at the 64th
        // and the 128th position, the end of what 10 had read.
        assert_eq!(pages[0], (1..=64).collect::<Vec<_>>());
        assert_eq!(pages[1], (65..=128).collect::<Vec<_>>());
        assert_eq!(pages.concat(), (1..=201).collect::<Vec<_>>());
    }

    #[test]
    fn chunks_share_a_page_but_stay_at_least_64() {
        let spans = |n: u64| {
            (0..n)
                .map(|c| Span {
                    conv: Id(c),
                    after: 0,
                    upper: 9,
                })
                .collect()
        };
        assert_eq!(BacklogMerge::new(spans(2), Vec::new(), 1000).chunk(), 500);
        assert_eq!(BacklogMerge::new(spans(100), Vec::new(), 1000).chunk(), 64);
        assert_eq!(BacklogMerge::new(spans(0), Vec::new(), 1000).chunk(), 1000);
        assert_eq!(BacklogMerge::new(spans(1), Vec::new(), 0).chunk(), 64);
    }

    #[test]
    fn spans_bound_what_is_read() {
        let a: Vec<u64> = (1..=20).collect();
        let mut fake = Fake::new(&[(10, &a)]);
        let mut merge = BacklogMerge::new(vec![fake.span(10, 5, 12)], Vec::new(), 100);
        assert_eq!(
            fake.drain(&mut merge).concat(),
            (6..=12).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_full_chunk_is_read_again_and_an_empty_backlog_ends_at_once() {
        let a: Vec<u64> = (1..=64).collect();
        let mut fake = Fake::new(&[(10, &a)]);
        let mut merge = BacklogMerge::new(vec![fake.span(10, 0, 100)], Vec::new(), 64);
        assert_eq!(fake.drain(&mut merge).concat(), a);
        // A full chunk might not be the end: one more read finds nothing.
        assert_eq!(fake.reads, 2);

        let mut empty = BacklogMerge::new(Vec::new(), Vec::new(), 64);
        assert!(empty.refills().is_empty());
        assert!(empty.next_page().is_none());
    }
}
