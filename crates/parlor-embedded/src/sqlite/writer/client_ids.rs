//! Client message ids: how a retried send finds the message it already stored.
//!
//! A unique index on `messages(sender, cid)` cost one more B-tree leaf written per
//! message in every group commit: each sender's newest ids sit on a leaf of their own, so
//! a batch whose messages come from many senders dirties as many leaves, and each one is
//! a 4 KiB frame in the write-ahead log. Removing that index alone cut the p99 of
//! `parlor-bench direct` at 60,000 messages/s from 85–114 ms to 34–43 ms (BENCHMARKS,
//! "direct", eighth session).
//!
//! Only the writer ever looks a client id up, so the newest ids are kept here, in memory,
//! and moved into `message_cids` a sender at a time once there are more than
//! `target` of them: then each leaf write carries many ids instead of one.
//!
//! Crash safety: `cid_index_state.floor` is a position at or below which every stored
//! client id is in `message_cids`. At start-up the writer reloads, from `messages`, the
//! ids of messages above it that `message_cids` lacks ([`PendingCids::load`]). The floor
//! may lag (it is brought up to date every `2 × target` positions): a lower floor only
//! means a longer scan at start-up, never a lost id.

use super::super::positions::seq_range;
use parlor_core::model::{Appended, UserId};
use parlor_proto::Id;
use rusqlite::OptionalExtension;
use rusqlite::{params, Connection};
use std::collections::{BTreeMap, HashMap};

/// Default number of ids held in memory before they are moved a sender at a time.
pub const DEFAULT_TARGET: usize = 8192;
/// Senders whose greatest indexed id is remembered; beyond, the memory starts afresh.
const MAX_SENDERS_REMEMBERED: usize = 100_000;

pub struct PendingCids {
    /// Stored messages whose client id is not in `message_cids` yet, by sender, then id.
    by_sender: BTreeMap<u64, BTreeMap<String, Appended>>,
    len: usize,
    target: usize,
    /// Ids added since the last move while over the target; a move takes at least as
    /// many, so that the memory held stays near the target.
    credit: usize,
    /// Moves go round the senders in id order from here.
    cursor: u64,
    /// Senders whose ids the open transaction moves; dropped from memory once it commits.
    moving: Vec<u64>,
    /// The floor the open transaction writes, if it writes one.
    floor_written: Option<u64>,
    /// The floor stored in the database.
    floor: u64,
    /// The position from which the floor is next brought up to date.
    next_floor_check: u64,
    /// The floor is brought up to date (a pass over the ids in memory) every this many
    /// positions: twice the target.
    floor_step: u64,
    /// Per sender, the greatest id in `message_cids` (`None`: the sender has none there),
    /// read once per sender: an id above it cannot be in the table, so a client that
    /// makes its ids increase (time-ordered) spares the writer a lookup per message.
    table_max: HashMap<u64, Option<String>>,
    /// Senders holding ids older than this many positions are moved whatever the count,
    /// so that a few ids among much traffic without client ids cannot hold the floor (and
    /// the scan at start-up) back.
    max_lag: u64,
}

impl PendingCids {
    /// The ids stored above the database's floor and missing from `message_cids`.
    pub fn load(conn: &Connection, target: usize) -> rusqlite::Result<Self> {
        let floor = conn.query_row("SELECT floor FROM cid_index_state", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
        let mut pending = PendingCids {
            by_sender: BTreeMap::new(),
            len: 0,
            target: target.max(1),
            credit: 0,
            cursor: 0,
            moving: Vec::new(),
            floor_written: None,
            floor,
            next_floor_check: 0,
            table_max: HashMap::new(),
            floor_step: 2 * target.max(1) as u64,
            max_lag: 8 * target.max(1) as u64,
        };
        let convs: Vec<i64> = conn
            .prepare("SELECT id FROM conversations")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut rows = conn.prepare(
            "SELECT m.sender, m.cid, m.id, m.seq, m.pos, m.created_at FROM messages m
             WHERE m.conv_id = ?1 AND m.seq BETWEEN ?2 AND ?3 AND m.cid IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM message_cids c WHERE c.sender = m.sender AND c.cid = m.cid)",
        )?;
        for conv in convs {
            let Some(range) = seq_range(conn, conv, floor, u64::MAX, None)? else {
                continue;
            };
            let (first, last) = (range.first, range.last);
            let found = rows.query_map(params![conv, first as i64, last as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    Appended {
                        id: Id(r.get::<_, i64>(2)? as u64),
                        conv: Id(conv as u64),
                        seq: r.get::<_, i64>(3)? as u64,
                        pos: r.get::<_, i64>(4)? as u64,
                        ts: r.get(5)?,
                        duplicate: true,
                    },
                ))
            })?;
            for row in found {
                let (sender, cid, appended) = row?;
                pending.insert(Id(sender), cid, appended);
            }
        }
        pending.credit = 0;
        Ok(pending)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, sender: UserId, cid: &str) -> Option<&Appended> {
        self.by_sender.get(&sender.0)?.get(cid)
    }

    /// Whether `cid` may be in `message_cids` (then the insert must guard against it).
    pub fn may_be_indexed(
        &mut self,
        conn: &Connection,
        sender: UserId,
        cid: &str,
    ) -> rusqlite::Result<bool> {
        if self.table_max.len() > MAX_SENDERS_REMEMBERED {
            self.table_max.clear();
        }
        let max = match self.table_max.get(&sender.0) {
            Some(max) => max,
            None => {
                let max: Option<String> = conn
                    .prepare_cached(
                        "SELECT cid FROM message_cids WHERE sender = ?1 ORDER BY cid DESC LIMIT 1",
                    )?
                    .query_row([sender.0 as i64], |r| r.get(0))
                    .optional()?;
                self.table_max.entry(sender.0).or_insert(max)
            }
        };
        Ok(max.as_deref().is_some_and(|max| cid <= max))
    }

    /// Remembers a message just stored in the open transaction.
    pub fn insert(&mut self, sender: UserId, cid: String, appended: Appended) {
        let ids = self.by_sender.entry(sender.0).or_default();
        if ids.insert(cid, appended).is_none() {
            self.len += 1;
            if self.len > self.target {
                self.credit += 1;
            }
        }
    }

    /// Writes, in the open transaction, the ids due to move and, when due, the floor.
    /// `head` is the newest position the transaction assigned.
    pub fn write_due(&mut self, conn: &Connection, head: u64) -> rusqlite::Result<()> {
        self.moving.clear();
        self.floor_written = None;
        let check_floor = head >= self.next_floor_check;
        if check_floor {
            self.next_floor_check = head + self.floor_step;
        }
        if check_floor && head > self.max_lag {
            let old = head - self.max_lag;
            self.moving.extend(
                self.by_sender
                    .iter()
                    .filter(|(_, ids)| ids.values().any(|m| m.pos < old))
                    .map(|(&sender, _)| sender),
            );
        }
        if self.moving.is_empty() && self.len > self.target && self.credit > 0 {
            self.choose_senders();
        }
        self.write_moving(conn)?;
        if check_floor {
            let moving = &self.moving;
            let floor = self
                .by_sender
                .iter()
                .filter(|(sender, _)| !moving.contains(sender))
                .flat_map(|(_, ids)| ids.values().map(|m| m.pos))
                .min()
                .map_or(head, |pos| pos - 1);
            if floor > self.floor {
                self.write_floor(conn, floor)?;
            }
        }
        Ok(())
    }

    /// Moves everything at once (at shutdown, so that the next start has nothing to scan).
    pub fn write_all(&mut self, conn: &Connection, head: u64) -> rusqlite::Result<()> {
        self.moving.clear();
        self.moving.extend(self.by_sender.keys().copied());
        self.write_moving(conn)?;
        self.write_floor(conn, head)
    }

    fn write_moving(&self, conn: &Connection) -> rusqlite::Result<()> {
        if self.moving.is_empty() {
            return Ok(());
        }
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO message_cids (sender, cid, conv_id, seq) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for sender in &self.moving {
            for (cid, m) in self.by_sender.get(sender).into_iter().flatten() {
                insert.execute(params![*sender as i64, cid, m.conv.0 as i64, m.seq as i64])?;
            }
        }
        Ok(())
    }

    fn write_floor(&mut self, conn: &Connection, floor: u64) -> rusqlite::Result<()> {
        conn.prepare_cached("UPDATE cid_index_state SET floor = ?1")?
            .execute([floor as i64])?;
        self.floor_written = Some(floor);
        Ok(())
    }

    /// The open transaction committed: what it moved leaves memory.
    pub fn committed(&mut self) {
        for sender in self.moving.drain(..) {
            if let Some(ids) = self.by_sender.remove(&sender) {
                if let (Some(known), Some((moved, _))) =
                    (self.table_max.get_mut(&sender), ids.last_key_value())
                {
                    if known.as_deref().is_none_or(|max| moved.as_str() > max) {
                        *known = Some(moved.clone());
                    }
                }
                self.len -= ids.len();
                self.credit = self.credit.saturating_sub(ids.len());
            }
        }
        if self.len <= self.target {
            self.credit = 0;
        }
        if let Some(floor) = self.floor_written.take() {
            self.floor = floor;
        }
    }

    /// The open transaction rolled back: forget the ids it stored (above `start`), keep
    /// the ones it was moving.
    pub fn rolled_back(&mut self, start: u64) {
        self.moving.clear();
        self.floor_written = None;
        for ids in self.by_sender.values_mut() {
            ids.retain(|_, m| m.pos <= start);
        }
        self.by_sender.retain(|_, ids| !ids.is_empty());
        self.len = self.by_sender.values().map(BTreeMap::len).sum();
        self.credit = 0;
    }

    /// Picks senders after the cursor, going round, until they hold `credit` ids.
    fn choose_senders(&mut self) {
        let mut taken = 0;
        let after = self.by_sender.range(self.cursor..);
        let before = self.by_sender.range(..self.cursor);
        for (&sender, ids) in after.chain(before) {
            if taken >= self.credit {
                break;
            }
            self.moving.push(sender);
            taken += ids.len();
            self.cursor = sender + 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::super::schema::migrate(&mut conn).unwrap();
        conn.execute_batch(
            "INSERT INTO conversations (id, kind, member_count, created_at) VALUES (7, 1, 2, 0)",
        )
        .unwrap();
        conn
    }

    fn appended(seq: u64) -> Appended {
        Appended {
            id: Id(1000 + seq),
            conv: Id(7),
            seq,
            pos: seq,
            ts: 0,
            duplicate: false,
        }
    }

    /// Stores message `seq` of conversation 7 as the writer would: the row, then the id.
    fn send(conn: &Connection, pending: &mut PendingCids, sender: u64, seq: u64) {
        let cid = format!("c{seq:04}");
        conn.execute(
            "INSERT INTO message_rows (conv_id, seq, id, pos, sender, cid, body, created_at)
             VALUES (7, ?1, ?2, ?1, ?3, ?4, '', 0)",
            params![seq as i64, 1000 + seq as i64, sender as i64, cid],
        )
        .unwrap();
        pending.insert(Id(sender), cid, appended(seq));
    }

    fn indexed(conn: &Connection) -> Vec<(i64, String)> {
        conn.prepare("SELECT sender, cid FROM message_cids ORDER BY sender, cid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    fn floor(conn: &Connection) -> i64 {
        conn.query_row("SELECT floor FROM cid_index_state", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn ids_move_a_sender_at_a_time_once_over_the_target_and_leave_memory_on_commit() {
        let conn = store();
        let mut pending = PendingCids::load(&conn, 4).unwrap();
        for seq in 1..=4 {
            send(&conn, &mut pending, 10 + seq % 2, seq);
        }
        pending.write_due(&conn, 4).unwrap();
        pending.committed();
        assert_eq!(pending.len(), 4, "at the target nothing moves");
        assert!(indexed(&conn).is_empty());

        send(&conn, &mut pending, 11, 5);
        pending.write_due(&conn, 5).unwrap();
        assert!(
            pending.get(Id(10), "c0002").is_some(),
            "still held until commit"
        );
        pending.committed();
        // One over the target: the first sender in id order moves, with all its ids.
        assert_eq!(
            indexed(&conn),
            vec![(10, "c0002".to_string()), (10, "c0004".to_string())]
        );
        assert_eq!(pending.len(), 3);
        assert!(pending.get(Id(10), "c0002").is_none());
        assert_eq!(pending.get(Id(11), "c0005").map(|a| a.seq), Some(5));
    }

    #[test]
    fn a_rollback_forgets_the_ids_it_stored_and_keeps_the_ones_it_was_moving() {
        let conn = store();
        let mut pending = PendingCids::load(&conn, 2).unwrap();
        for seq in 1..=2 {
            send(&conn, &mut pending, 10, seq);
        }
        pending.write_due(&conn, 2).unwrap();
        pending.committed();
        conn.execute_batch("BEGIN").unwrap();
        send(&conn, &mut pending, 11, 3);
        pending.write_due(&conn, 3).unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
        pending.rolled_back(2);
        assert!(pending.get(Id(11), "c0003").is_none());
        assert_eq!(pending.len(), 2);
        assert!(pending.get(Id(10), "c0001").is_some());
        assert!(indexed(&conn).is_empty());
    }

    #[test]
    fn a_restart_reloads_exactly_the_ids_above_the_floor_that_the_table_lacks() {
        let conn = store();
        let mut pending = PendingCids::load(&conn, 2).unwrap();
        for seq in 1..=20 {
            send(&conn, &mut pending, 10 + seq % 3, seq);
            pending.write_due(&conn, seq).unwrap();
            pending.committed();
        }
        assert!(floor(&conn) > 0, "the floor moved up");
        let in_table = indexed(&conn);
        assert!(!in_table.is_empty());
        let held: Vec<(u64, String)> = pending
            .by_sender
            .iter()
            .flat_map(|(s, ids)| ids.keys().map(move |c| (*s, c.clone())))
            .collect();
        // Every id is in exactly one place: the table or memory.
        assert_eq!(in_table.len() + held.len(), 20);

        let reloaded = PendingCids::load(&conn, 2).unwrap();
        assert_eq!(reloaded.len(), held.len());
        for (sender, cid) in &held {
            let again = reloaded.get(Id(*sender), cid).unwrap();
            assert_eq!(
                (again.conv, again.seq, again.pos, again.duplicate),
                (Id(7), again.pos, again.pos, true)
            );
        }

        let mut reloaded = reloaded;
        reloaded.write_all(&conn, 20).unwrap();
        reloaded.committed();
        assert_eq!(floor(&conn), 20);
        assert_eq!(indexed(&conn).len(), 20);
        assert_eq!(PendingCids::load(&conn, 2).unwrap().len(), 0);
    }
}
