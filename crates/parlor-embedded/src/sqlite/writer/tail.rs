//! New messages are appended by position; the conversation-clustered table is written a
//! conversation at a time, behind.
//!
//! `message_rows` is clustered by `(conv_id, seq)` so that a history page is one
//! contiguous read. Inserting into it directly cost every group commit one leaf (and its
//! splits) per conversation the batch touched, each a 4 KiB frame in the write-ahead
//! log, however few bytes the message had: with messages from many conversations in a
//! batch, nothing was shared. So a message is first appended to `message_tail`, keyed by
//! its position (one hot page for every conversation), and this module copies a
//! conversation's pending rows into `message_rows` together once more than `target` rows
//! are pending, oldest first: then one leaf write carries many messages.
//!
//! Readers see both tables through the `messages` view (schema migration 6): the tail's
//! copy of a row is hidden as soon as `message_rows` has it, in the same commit, so every
//! snapshot sees each message exactly once. The tail's copied prefix is deleted in bulk.
//! A reader pays a scan of the tail (at most `target` pending rows plus a
//! `delete_step` of copied ones) besides its indexed read.
//!
//! Crash safety: nothing here is needed to read; the memory only says which tail rows
//! are not copied yet, and [`Tail::load`] rebuilds it from the tables.

use rusqlite::Connection;
use std::collections::{HashMap, VecDeque};

/// Default number of rows pending in the tail before the oldest conversation is copied.
pub const DEFAULT_TARGET: usize = 1024;

const COLUMNS: &str = "conv_id, seq, id, pos, sender, cid, body, created_at, reply_to, mentions, \
                       mention_all, edited_at, deleted, attachments";

pub struct Tail {
    target: usize,
    /// The tail's copied prefix is deleted once it holds this many positions.
    delete_step: u64,
    /// Rows not copied yet, by conversation, in position order.
    by_conv: HashMap<i64, Vec<u64>>,
    /// Every row not copied yet, in position order; entries of conversations copied
    /// since are dropped when they reach the front.
    order: VecDeque<(u64, i64)>,
    pending: usize,
    /// Positions below this are deleted from the tail.
    low: u64,
    /// Set when a reload after a rollback failed (see [`Tail::reload`]).
    stale: bool,
    /// The copy statement, built once (it is looked up in the statement cache by text).
    copy_sql: String,
}

impl Tail {
    /// The tail rows `message_rows` does not have yet.
    pub fn load(conn: &Connection, target: usize) -> rusqlite::Result<Self> {
        let target = target.max(1);
        let low: Option<i64> =
            conn.query_row("SELECT MIN(pos) FROM message_tail", [], |r| r.get(0))?;
        let mut tail = Tail {
            target,
            delete_step: (target as u64 / 4).max(1),
            by_conv: HashMap::new(),
            order: VecDeque::new(),
            pending: 0,
            low: low.unwrap_or(0) as u64,
            stale: false,
            copy_sql: format!(
                "INSERT OR IGNORE INTO message_rows ({COLUMNS}) SELECT {COLUMNS} FROM message_tail
                 WHERE pos = ?1"
            ),
        };
        let mut rows = conn.prepare(
            "SELECT pos, conv_id FROM message_tail t
             WHERE NOT EXISTS (SELECT 1 FROM message_rows r WHERE r.conv_id = t.conv_id AND r.seq = t.seq)
             ORDER BY pos",
        )?;
        let found = rows.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        for row in found {
            let (pos, conv) = row?;
            tail.appended(conv, pos);
        }
        Ok(tail)
    }

    /// After a rolled-back commit, the memory is rebuilt from what the tables hold.
    pub fn reload(&mut self, conn: &Connection) {
        match Tail::load(conn, self.target) {
            Ok(tail) => *self = tail,
            Err(e) => {
                // The memory may now lack rows the rollback put back: nothing is copied
                // or deleted until a reload succeeds.
                tracing::error!(error = %e, "reloading the message tail failed");
                self.stale = true;
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Records a row the open transaction appended to the tail.
    pub fn appended(&mut self, conv: i64, pos: u64) {
        self.by_conv.entry(conv).or_default().push(pos);
        self.order.push_back((pos, conv));
        self.pending += 1;
    }

    /// Run before each commit: copies the oldest conversations while more than `target`
    /// rows are pending, then deletes the copied prefix if it is long enough. `head` is
    /// the newest position of the open transaction.
    pub fn copy_due(&mut self, conn: &Connection, head: u64) -> rusqlite::Result<()> {
        if self.stale {
            *self = Tail::load(conn, self.target)?;
        }
        while self.pending > self.target {
            let Some(&(_, conv)) = self.oldest() else {
                break;
            };
            self.copy_conv(conn, conv)?;
        }
        self.delete_copied(conn, head, self.delete_step)
    }

    /// Copies everything pending and empties the tail (shutdown).
    pub fn copy_all(&mut self, conn: &Connection, head: u64) -> rusqlite::Result<()> {
        let convs: Vec<i64> = self.by_conv.keys().copied().collect();
        for conv in convs {
            self.copy_conv(conn, conv)?;
        }
        self.delete_copied(conn, head, 1)
    }

    /// Copies the pending rows of `conv`, so that `message_rows` holds every message of
    /// it (before an edit or delete, which update `message_rows` only). The caller runs
    /// this outside any savepoint it may roll back: the memory forgets the rows at once.
    pub fn copy_conv(&mut self, conn: &Connection, conv: i64) -> rusqlite::Result<()> {
        let Some(positions) = self.by_conv.get(&conv) else {
            return Ok(());
        };
        // OR IGNORE: a copy the failed statement of an earlier attempt left in this
        // transaction is the same row. (Sixteen rows per statement measured the same.)
        let mut copy = conn.prepare_cached(&self.copy_sql)?;
        for pos in positions {
            copy.execute([*pos as i64])?;
        }
        if let Some(positions) = self.by_conv.remove(&conv) {
            self.pending -= positions.len();
        }
        Ok(())
    }

    /// The oldest pending row, dropping front entries of conversations copied since.
    fn oldest(&mut self) -> Option<&(u64, i64)> {
        while let Some(&(pos, conv)) = self.order.front() {
            match self.by_conv.get(&conv) {
                Some(positions) if positions.first() == Some(&pos) => break,
                _ => {
                    self.order.pop_front();
                }
            }
        }
        self.order.front()
    }

    /// Deletes the tail below the oldest pending row (everything up to `head` when none
    /// is pending) once that prefix spans at least `step` positions.
    fn delete_copied(&mut self, conn: &Connection, head: u64, step: u64) -> rusqlite::Result<()> {
        let below = match self.oldest() {
            Some(&(pos, _)) => pos,
            None => head + 1,
        };
        if below < self.low.saturating_add(step) {
            return Ok(());
        }
        conn.prepare_cached("DELETE FROM message_tail WHERE pos < ?1")?
            .execute([below as i64])?;
        self.low = below;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    fn store() -> Connection {
        crate::sqlite::page_cache::install();
        let mut conn = Connection::open_in_memory().expect("open");
        crate::sqlite::schema::migrate(&mut conn).expect("schema");
        conn
    }

    fn append(conn: &Connection, tail: &mut Tail, conv: i64, seq: i64, pos: i64) {
        conn.execute(
            "INSERT INTO message_tail (pos, conv_id, seq, id, sender, body, created_at)
             VALUES (?1, ?2, ?3, ?1, 1, 'hi', 0)",
            params![pos, conv, seq],
        )
        .expect("append");
        tail.appended(conv, pos as u64);
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).expect("count")
    }

    /// (conv, seq) of every message the view shows, in order.
    fn visible(conn: &Connection) -> Vec<(i64, i64)> {
        conn.prepare("SELECT conv_id, seq FROM messages ORDER BY conv_id, seq")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    #[test]
    fn copies_the_oldest_conversation_whole_and_shows_each_message_once() {
        let conn = store();
        let mut tail = Tail::load(&conn, 4).expect("load");
        let mut expected = Vec::new();
        let mut seqs = HashMap::new();
        for pos in 1..=40i64 {
            let conv = [1, 2, 3][(pos % 3) as usize];
            let seq = seqs.entry(conv).and_modify(|s| *s += 1).or_insert(1);
            append(&conn, &mut tail, conv, *seq, pos);
            expected.push((conv, *seq));
            tail.copy_due(&conn, pos as u64).expect("copy");
            assert!(tail.pending() <= 4);
            expected.sort();
            assert_eq!(visible(&conn), expected, "after pos {pos}");
        }
        // Copied rows left the tail in bulk, and the rest is pending.
        let in_tail = count(&conn, "SELECT COUNT(*) FROM message_tail");
        assert!(in_tail < 40 && in_tail >= tail.pending() as i64);
        tail.copy_all(&conn, 40).expect("copy all");
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM message_tail"), 0);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM message_rows"), 40);
        assert_eq!(visible(&conn), expected);
    }

    #[test]
    fn a_long_conversation_is_copied_whole() {
        let conn = store();
        let mut tail = Tail::load(&conn, 1000).expect("load");
        let rows = 53;
        for pos in 1..=rows {
            append(&conn, &mut tail, 9, pos, pos);
        }
        tail.copy_conv(&conn, 9).expect("copy");
        assert_eq!(tail.pending(), 0);
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM message_rows WHERE conv_id = 9"),
            rows
        );
        assert_eq!(visible(&conn).len(), rows as usize);
    }

    #[test]
    fn a_rolled_back_copy_is_pending_again_after_reload() {
        let conn = store();
        let mut tail = Tail::load(&conn, 100).expect("load");
        for pos in 1..=3 {
            append(&conn, &mut tail, 5, pos, pos);
        }
        conn.execute_batch("BEGIN").expect("begin");
        for pos in 4..=9 {
            append(&conn, &mut tail, 5 + pos % 2, pos, pos);
        }
        // Copies conversation 5's rows, the three committed ones among them.
        tail.copy_conv(&conn, 5).expect("copy");
        assert_eq!(tail.pending(), 3);
        conn.execute_batch("ROLLBACK").expect("rollback");
        tail.reload(&conn);
        // What the memory says is pending is exactly what the table lacks.
        assert_eq!(tail.by_conv, HashMap::from([(5, vec![1, 2, 3])]));
        tail.copy_all(&conn, 3).expect("copy all");
        assert_eq!(visible(&conn), vec![(5, 1), (5, 2), (5, 3)]);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM message_tail"), 0);
    }

    #[test]
    fn load_finds_what_is_not_copied() {
        let conn = store();
        let mut tail = Tail::load(&conn, 100).expect("load");
        for pos in 1..=6 {
            append(&conn, &mut tail, pos % 2, pos, pos);
        }
        tail.copy_conv(&conn, 0).expect("copy");
        let reloaded = Tail::load(&conn, 100).expect("reload");
        assert_eq!(reloaded.by_conv, HashMap::from([(1, vec![1, 3, 5])]));
        assert_eq!(reloaded.pending(), 3);
        assert_eq!(reloaded.low, 1);
    }
}
