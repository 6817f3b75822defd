//! From positions to sequence numbers within one conversation.
//!
//! Sync, the notification queue and the search indexer ask for a conversation's messages
//! by position (`pos`), but messages are stored clustered by `(conv_id, seq)` and have no
//! index on `pos`: it would be one more B-tree page written per conversation in every
//! group commit. None is needed, because the one writer assigns both numbers in the same
//! commit order, so within a conversation `pos` grows with `seq`. A position bound is
//! therefore a sequence bound, found by a search over the primary key: galloping back
//! from the newest message, so a device that missed k messages costs about 2·log₂ k
//! lookups, then bisecting.

use rusqlite::{params, Connection, OptionalExtension};

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
) -> rusqlite::Result<Option<(u64, u64)>> {
    let newest = conn
        .prepare_cached(
            "SELECT seq, pos FROM messages WHERE conv_id = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row([conv], row)
        .optional()?;
    let Some(newest) = newest else {
        return Ok(None);
    };
    if newest.pos <= after || upto <= after {
        return Ok(None);
    }
    let first = match known {
        Some((pos, seq)) if pos == after => seq + 1,
        _ => first_past(conn, conv, after, newest)?,
    };
    let last = match newest.pos <= upto {
        true => newest.seq,
        false => first_past(conn, conv, upto, newest)?.saturating_sub(1),
    };
    Ok((first <= last).then_some((first, last)))
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

/// The `seq` of the oldest message of `conv` with `pos > bound`, given one such message
/// (`newest`). Searches over probe points `x`: "the first message at or after `seq = x`
/// is past the bound" is false up to some `x` and true from there on, whether or not the
/// sequence has holes.
fn first_past(conn: &Connection, conv: i64, bound: u64, newest: Found) -> rusqlite::Result<u64> {
    let mut probe = conn.prepare_cached(
        "SELECT seq, pos FROM messages WHERE conv_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT 1",
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

    fn store(rows: &[(i64, i64, i64)]) -> Connection {
        // Before SQLite starts, as in every other test of this process.
        crate::sqlite::page_cache::install();
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE messages (conv_id INTEGER, seq INTEGER, pos INTEGER,
             PRIMARY KEY (conv_id, seq)) WITHOUT ROWID",
        )
        .expect("schema");
        for (conv, seq, pos) in rows {
            conn.execute(
                "INSERT INTO messages VALUES (?1, ?2, ?3)",
                params![conv, seq, pos],
            )
            .expect("insert");
        }
        conn
    }

    /// The sequence numbers of `conv` with `after < pos <= upto`, by scanning every row.
    fn scanned(rows: &[(i64, i64, i64)], conv: i64, after: u64, upto: u64) -> Vec<i64> {
        rows.iter()
            .filter(|(c, _, p)| *c == conv && (*p as u64) > after && (*p as u64) <= upto)
            .map(|(_, s, _)| *s)
            .collect()
    }

    /// The sequence numbers of `conv` inside the range `seq_range` answered.
    fn in_range(rows: &[(i64, i64, i64)], conv: i64, range: Option<(u64, u64)>) -> Vec<i64> {
        let Some((first, last)) = range else {
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
        let conn = store(&rows);
        for conv in [1, 2, 3] {
            for after in 0..=pos as u64 + 1 {
                for upto in [after, after + 1, after + 7, pos as u64, u64::MAX] {
                    let range = seq_range(&conn, conv, after, upto, None).expect("search");
                    assert_eq!(
                        in_range(&rows, conv, range),
                        scanned(&rows, conv, after, upto),
                        "conv {conv}, after {after}, upto {upto}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_known_message_at_the_bound_starts_the_range_after_it() {
        let rows: Vec<_> = (1..=10).map(|s| (1, s, 3 * s)).collect();
        let conn = store(&rows);
        assert_eq!(
            seq_range(&conn, 1, 12, 30, Some((12, 4))).expect("search"),
            Some((5, 10))
        );
        // A hint about another position is ignored.
        assert_eq!(
            seq_range(&conn, 1, 13, 30, Some((12, 4))).expect("search"),
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
        let conn = store(&rows);
        assert_eq!(
            seq_range(&conn, 7, 2 * 99_990, u64::MAX, None).expect("search"),
            Some((99_991, 100_000))
        );
        assert_eq!(
            seq_range(&conn, 7, 1, 2 * 50_000, None).expect("search"),
            Some((1, 50_000))
        );
    }
}
