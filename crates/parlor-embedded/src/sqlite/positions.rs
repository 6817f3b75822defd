//! From positions to sequence numbers within one conversation.
//!
//! Sync, the notification queue and the search indexer ask for a conversation's messages
//! by position (`pos`), but `message_rows` is clustered by `(conv_id, seq)` and has no
//! index on `pos`: it would be one more B-tree page written per conversation in every
//! copy. None is needed, because the one writer assigns both numbers in the same commit
//! order, so within a conversation `pos` grows with `seq`. A position bound is therefore
//! a sequence bound, found by a search over the primary key: galloping back from the
//! newest message, so a device that missed k messages costs about 2·log₂ k lookups, then
//! bisecting.
//!
//! A conversation's newest messages may still be only in `message_tail` (see
//! `writer/tail.rs`), and they follow every message of it in `message_rows`. The search
//! therefore probes `message_rows` alone, and a bound past its newest message is looked
//! up in the tail with one scan, instead of a tail scan per probe through the view.

use rusqlite::{params, Connection, OptionalExtension};

/// An inclusive range of sequence numbers of one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
    /// The newest `seq` of the conversation in `message_rows` (0: none).
    pub copied: u64,
}

impl SeqRange {
    /// What to read the messages up to `seq` from: `message_rows` alone when it has them
    /// all, which spares the view's scan of the tail.
    pub fn table(&self, seq: u64) -> &'static str {
        match seq <= self.copied {
            true => "message_rows",
            false => "messages",
        }
    }
}

/// The newest `seq` of `conv` in `message_rows` (0: none); every older message of `conv`
/// is there too.
pub fn copied_through(conn: &Connection, conv: i64) -> rusqlite::Result<u64> {
    Ok(conn
        .prepare_cached(
            "SELECT seq FROM message_rows WHERE conv_id = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([conv], |r| r.get::<_, i64>(0))
        .optional()?
        .map_or(0, |seq| seq as u64))
}

/// Runs `read` inside one read transaction (one snapshot), unless the connection is in
/// one already; `db` maps the transaction's own errors.
///
/// Any read that looks at both `message_rows` and `message_tail` in more than one
/// statement needs it: outside a transaction each statement sees the store as of its own
/// start, and the writer may copy rows from the tail into `message_rows` in between, so
/// the second statement would miss rows the first did not see in the tail. `seq_range`
/// once returned a last `seq` past its position bound that way, and sync sent a slow
/// consumer messages beyond the head it then reported, out of order and twice.
pub fn in_one_snapshot<T, E>(
    conn: &Connection,
    read: impl FnOnce() -> Result<T, E>,
    db: impl Fn(rusqlite::Error) -> E,
) -> Result<T, E> {
    if !conn.is_autocommit() {
        return read();
    }
    let tx = conn.unchecked_transaction().map_err(&db)?;
    let out = read()?;
    tx.commit().map_err(&db)?;
    Ok(out)
}

/// The messages of `conv` with `after < pos <= upto`, as an inclusive `seq` range; `None`
/// when there are none. `known` is the `(pos, seq)` of a message of `conv` the caller
/// already read (the end of its previous chunk): when it is the message at `after`, the
/// range starts right after it, without a search.
pub fn seq_range(
    conn: &Connection,
    conv: i64,
    after: u64,
    upto: u64,
    known: Option<(u64, u64)>,
) -> rusqlite::Result<Option<SeqRange>> {
    in_one_snapshot(conn, || seq_range_in(conn, conv, after, upto, known), |e| e)
}

fn seq_range_in(
    conn: &Connection,
    conv: i64,
    after: u64,
    upto: u64,
    known: Option<(u64, u64)>,
) -> rusqlite::Result<Option<SeqRange>> {
    let copied = conn
        .prepare_cached(
            "SELECT seq, pos FROM message_rows WHERE conv_id = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([conv], row)
        .optional()?;
    // Backwards by position: an active conversation's newest row is found near the end.
    let in_tail = conn
        .prepare_cached(
            "SELECT seq, pos FROM message_tail WHERE conv_id = ?1 ORDER BY pos DESC LIMIT 1",
        )?
        .query_row([conv], row)
        .optional()?;
    let newest = match (copied, in_tail) {
        (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
        (a, b) => a.or(b),
    };
    let Some(newest) = newest else {
        return Ok(None);
    };
    if newest.pos <= after || upto <= after {
        return Ok(None);
    }
    let first = match known {
        Some((pos, seq)) if pos == after => seq + 1,
        _ => first_past(conn, conv, after, copied, newest)?,
    };
    let last = match newest.pos <= upto {
        true => newest.seq,
        false => first_past(conn, conv, upto, copied, newest)?.saturating_sub(1),
    };
    Ok((first <= last).then_some(SeqRange {
        first,
        last,
        copied: copied.map_or(0, |c| c.seq),
    }))
}

/// The `seq` of the oldest message of `conv` with `pos > bound`, given that `newest` is
/// past it; `copied` is the newest message of `conv` in `message_rows`.
fn first_past(
    conn: &Connection,
    conv: i64,
    bound: u64,
    copied: Option<Found>,
    newest: Found,
) -> rusqlite::Result<u64> {
    match copied {
        Some(copied) if copied.pos > bound => search_copied(conn, conv, bound, copied),
        // Every message past the bound is newer than the copied ones: in the tail.
        _ => Ok(conn
            .prepare_cached(
                "SELECT seq FROM message_tail WHERE pos > ?2 AND conv_id = ?1 ORDER BY pos LIMIT 1",
            )?
            .query_row(params![conv, bound as i64], |r| r.get::<_, i64>(0))
            .optional()?
            .map_or(newest.seq + 1, |seq| seq as u64)),
    }
}

#[derive(Clone, Copy)]
struct Found {
    seq: u64,
    pos: u64,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Found> {
    Ok(Found {
        seq: r.get::<_, i64>(0)? as u64,
        pos: r.get::<_, i64>(1)? as u64,
    })
}

/// The `seq` of the oldest message of `conv` in `message_rows` with `pos > bound`, given
/// one such message (`newest`). Searches over probe points `x`: "the first message at or
/// after `seq = x` is past the bound" is false up to some `x` and true from there on,
/// whether or not the sequence has holes.
fn search_copied(conn: &Connection, conv: i64, bound: u64, newest: Found) -> rusqlite::Result<u64> {
    let mut probe = conn.prepare_cached(
        "SELECT seq, pos FROM message_rows WHERE conv_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT 1",
    )?;
    let mut at = |x: u64| -> rusqlite::Result<Option<Found>> {
        probe.query_row(params![conv, x as i64], row).optional()
    };
    // Invariant: the answer is the message found at probe `hi`; probes at or below `lo`
    // find messages at or before the bound (`lo = 0` stands for "before the first").
    let (mut lo, mut hi, mut best) = (0u64, newest.seq, newest);
    let mut step = 1u64;
    while hi > lo + 1 {
        let x = hi.saturating_sub(step).max(lo + 1);
        match at(x)? {
            Some(found) if found.pos > bound => {
                (hi, best) = (x, found);
                step = step.saturating_mul(2);
            }
            _ => {
                lo = x;
                break;
            }
        }
    }
    while hi > lo + 1 {
        let x = lo + (hi - lo) / 2;
        match at(x)? {
            Some(found) if found.pos > bound => (hi, best) = (x, found),
            _ => lo = x,
        }
    }
    Ok(best.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows` as the writer leaves them: each conversation's last `uncopied` messages only
    /// in the tail, the `uncopied` before those in both tables, the rest copied.
    fn store(rows: &[(i64, i64, i64)], uncopied: usize) -> Connection {
        // Before SQLite starts, as in every other test of this process.
        crate::sqlite::page_cache::install();
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE message_rows (conv_id INTEGER, seq INTEGER, pos INTEGER,
             PRIMARY KEY (conv_id, seq)) WITHOUT ROWID;
             CREATE TABLE message_tail (pos INTEGER PRIMARY KEY, conv_id INTEGER, seq INTEGER);",
        )
        .expect("schema");
        // Rows come in sequence order within each conversation.
        let mut left = std::collections::HashMap::new();
        for (conv, _, _) in rows {
            *left.entry(*conv).or_insert(0usize) += 1;
        }
        for (conv, seq, pos) in rows {
            let newer = left.get_mut(conv).map_or(0, |n| {
                *n -= 1;
                *n
            });
            if newer >= uncopied {
                conn.execute(
                    "INSERT INTO message_rows VALUES (?1, ?2, ?3)",
                    params![conv, seq, pos],
                )
                .expect("insert");
            }
            if newer < 2 * uncopied {
                conn.execute(
                    "INSERT INTO message_tail VALUES (?3, ?1, ?2)",
                    params![conv, seq, pos],
                )
                .expect("insert");
            }
        }
        conn
    }

    fn bounds(range: SeqRange) -> (u64, u64) {
        (range.first, range.last)
    }

    /// The sequence numbers of `conv` with `after < pos <= upto`, by scanning every row.
    fn scanned(rows: &[(i64, i64, i64)], conv: i64, after: u64, upto: u64) -> Vec<i64> {
        rows.iter()
            .filter(|(c, _, p)| *c == conv && (*p as u64) > after && (*p as u64) <= upto)
            .map(|(_, s, _)| *s)
            .collect()
    }

    /// The sequence numbers of `conv` inside the range `seq_range` answered.
    fn in_range(rows: &[(i64, i64, i64)], conv: i64, range: Option<SeqRange>) -> Vec<i64> {
        let Some(SeqRange { first, last, .. }) = range else {
            return Vec::new();
        };
        rows.iter()
            .filter(|(c, s, _)| *c == conv && (first..=last).contains(&(*s as u64)))
            .map(|(_, s, _)| *s)
            .collect()
    }

    #[test]
    fn every_bound_matches_a_full_scan() {
        // Two interleaved conversations, a hole in the second one's sequence.
        let mut rows = Vec::new();
        let (mut pos, mut next_b) = (0, 1);
        for seq in 1..=40 {
            pos += 1;
            rows.push((1, seq, pos));
            if seq % 3 == 0 {
                pos += 1;
                rows.push((2, next_b, pos));
                next_b += if next_b == 4 { 3 } else { 1 };
            }
        }
        for uncopied in [0, 1, 4, 100] {
            let conn = store(&rows, uncopied);
            for conv in [1, 2, 3] {
                for after in 0..=pos as u64 + 1 {
                    for upto in [after, after + 1, after + 7, pos as u64, u64::MAX] {
                        let range = seq_range(&conn, conv, after, upto, None).expect("search");
                        let expected = scanned(&rows, conv, after, upto);
                        assert_eq!(
                            in_range(&rows, conv, range),
                            expected,
                            "conv {conv}, after {after}, upto {upto}, {uncopied} uncopied"
                        );
                        // The range names `message_rows` only when that table has it all.
                        if let Some(r) = range.filter(|r| r.table(r.last) == "message_rows") {
                            let copied: usize = conn
                                .query_row(
                                    "SELECT COUNT(*) FROM message_rows
                                     WHERE conv_id = ?1 AND seq BETWEEN ?2 AND ?3",
                                    params![conv, r.first as i64, r.last as i64],
                                    |row| row.get(0),
                                )
                                .expect("count");
                            assert_eq!(copied, expected.len());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_known_message_at_the_bound_starts_the_range_after_it() {
        let rows: Vec<_> = (1..=10).map(|s| (1, s, 3 * s)).collect();
        let conn = store(&rows, 3);
        assert_eq!(
            seq_range(&conn, 1, 12, 30, Some((12, 4)))
                .expect("search")
                .map(bounds),
            Some((5, 10))
        );
        // A hint about another position is ignored.
        assert_eq!(
            seq_range(&conn, 1, 13, 30, Some((12, 4)))
                .expect("search")
                .map(bounds),
            Some((5, 10))
        );
        assert_eq!(
            seq_range(&conn, 1, 30, u64::MAX, Some((30, 10))).expect("search"),
            None
        );
    }

    #[test]
    fn bounds_deep_in_a_long_conversation() {
        let rows: Vec<_> = (1..=100_000).map(|s| (7, s, 2 * s)).collect();
        let conn = store(&rows, 3);
        assert_eq!(
            seq_range(&conn, 7, 2 * 99_990, u64::MAX, None)
                .expect("search")
                .map(bounds),
            Some((99_991, 100_000))
        );
        assert_eq!(
            seq_range(&conn, 7, 1, 2 * 50_000, None)
                .expect("search")
                .map(bounds),
            Some((1, 50_000))
        );
    }
}
