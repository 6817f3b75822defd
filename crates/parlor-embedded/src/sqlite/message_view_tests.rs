//! Reads through the `messages` view stay indexed: a read of a long conversation must not
//! turn into a scan of it. SQLite plans a `UNION ALL` view well only for some query
//! shapes (an aggregate such as `MAX(seq)` over it reads every row of the conversation),
//! so each read is run against a conversation of many messages and its cost is counted
//! in virtual-machine steps (SQLite's progress callback): deterministic, not timed.

use super::{positions, reader, schema};
use parlor_core::model::Page;
use parlor_proto::Id;
use rusqlite::{params, Connection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const ROWS: i64 = 20_000;
/// Messages still in the tail, as the writer leaves them between copies.
const TAIL: i64 = 50;
/// Far below what reading `ROWS` messages takes (several steps per row).
const BUDGET: u64 = 25_000;

fn store() -> Connection {
    super::page_cache::install();
    let mut conn = Connection::open_in_memory().expect("open");
    schema::migrate(&mut conn).expect("schema");
    conn.execute_batch(
        "INSERT INTO users (id, username, password_hash, created_at) VALUES (1, 'a', '', 0), (2, 'b', '', 0);
         INSERT INTO conversations (id, kind, member_count, created_at) VALUES (7, 1, 2, 0);
         INSERT INTO members (conv_id, user_id, role, joined_pos) VALUES (7, 1, 0, 1), (7, 2, 2, 1);",
    )
    .expect("accounts");
    let mut copied = conn
        .prepare(
            "INSERT INTO message_rows (conv_id, seq, id, pos, sender, body, created_at)
             VALUES (7, ?1, ?1, ?1, 1 + ?1 % 2, 'hello', 0)",
        )
        .expect("prepare");
    for seq in 1..=ROWS - TAIL {
        copied.execute([seq]).expect("row");
    }
    let mut tail = conn
        .prepare(
            "INSERT INTO message_tail (conv_id, seq, id, pos, sender, body, created_at)
             VALUES (7, ?1, ?1, ?1, 1 + ?1 % 2, 'hello', 0)",
        )
        .expect("prepare");
    // The last copied messages are still in the tail too (the copied prefix is deleted
    // in bulk), as are the ones not copied yet.
    for seq in ROWS - 2 * TAIL..=ROWS {
        tail.execute([seq]).expect("tail");
    }
    drop((copied, tail));
    conn
}

/// Runs `read`; returns what it returned and how many VM steps it took (to 100).
fn steps<T>(conn: &Connection, read: impl FnOnce(&Connection) -> T) -> (T, u64) {
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    conn.progress_handler(
        100,
        Some(move || {
            counter.fetch_add(100, Ordering::Relaxed);
            false
        }),
    );
    let out = read(conn);
    conn.progress_handler(0, None::<fn() -> bool>);
    (out, count.load(Ordering::Relaxed))
}

#[test]
fn reads_of_a_long_conversation_touch_a_page_of_it_not_all_of_it() {
    let conn = store();
    let (viewer, conv) = (Id(1), Id(7));
    let (latest, cost) = steps(&conn, |c| {
        reader::history(c, viewer, conv, Page::Latest { limit: 50 }).expect("latest")
    });
    assert_eq!(latest.messages.len(), 50);
    assert_eq!(latest.messages.last().map(|m| m.seq), Some(ROWS as u64));
    assert!(cost < BUDGET, "latest page: {cost} steps");

    let (before, cost) = steps(&conn, |c| {
        reader::history(
            c,
            viewer,
            conv,
            Page::Before {
                before: 10_000,
                limit: 50,
            },
        )
        .expect("before")
    });
    assert_eq!(before.messages.first().map(|m| m.seq), Some(9_950));
    assert!(cost < BUDGET, "page before: {cost} steps");

    let (after, cost) = steps(&conn, |c| {
        reader::history(
            c,
            viewer,
            conv,
            Page::After {
                after: 19_900,
                limit: 200,
            },
        )
        .expect("after")
    });
    let seqs: Vec<u64> = after.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (19_901..=ROWS as u64).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert!(cost < BUDGET, "page after: {cost} steps");

    let (detail, cost) = steps(&conn, |c| {
        reader::conversation(c, viewer, conv).expect("detail")
    });
    assert_eq!(detail.last_seq, ROWS as u64);
    assert!(cost < BUDGET, "conversation detail: {cost} steps");

    let (list, cost) = steps(&conn, |c| reader::conversations(c, viewer).expect("list"));
    assert_eq!(list.len(), 1);
    assert!(cost < BUDGET, "conversation list: {cost} steps");

    conn.execute("UPDATE members SET read_seq = 19000 WHERE user_id = 1", [])
        .expect("read marker");
    let (unread, cost) = steps(&conn, |c| {
        super::notifications::unread_count(c, viewer).expect("unread")
    });
    assert_eq!(unread, (ROWS - 19_000) as u64);
    assert!(cost < BUDGET, "unread count: {cost} steps");

    let (receipts, cost) = steps(&conn, |c| {
        reader::receipts(c, viewer, conv).expect("receipts")
    });
    assert_eq!(receipts.last_seq, ROWS as u64);
    assert_eq!(receipts.read_counts.len(), 50);
    assert!(cost < BUDGET, "receipts: {cost} steps");

    for seq in [1, ROWS / 2, ROWS - TAIL - 1, ROWS - TAIL, ROWS] {
        let (found, cost) = steps(&conn, |c| {
            reader::message_by_seq(c, conv, seq as u64).expect("by seq")
        });
        assert_eq!(found.map(|m| m.seq), Some(seq as u64));
        assert!(cost < BUDGET, "message {seq}: {cost} steps");
    }

    // Positions equal sequence numbers here.
    for (after, expected) in [(ROWS - 10, (ROWS - 9, ROWS)), (100, (101, ROWS))] {
        let (range, cost) = steps(&conn, |c| {
            positions::seq_range(c, 7, after as u64, u64::MAX, None).expect("range")
        });
        assert_eq!(
            range.map(|r| (r.first, r.last)),
            Some((expected.0 as u64, expected.1 as u64))
        );
        assert!(cost < BUDGET, "range after {after}: {cost} steps");
    }
}

#[test]
fn a_batch_of_lookups_scans_the_tail_once() {
    let conn = store();
    // Newest first, as a search ranks them: most are in the tail.
    let keys: Vec<(i64, u64)> = (ROWS - 40..=ROWS).rev().map(|s| (7, s as u64)).collect();
    let mut with_gone = keys.clone();
    with_gone.push((7, ROWS as u64 + 1));
    let (found, cost) = steps(&conn, |c| {
        reader::messages_at(c, &with_gone).expect("lookup")
    });
    let seqs: Vec<Option<u64>> = found.iter().map(|m| m.as_ref().map(|m| m.seq)).collect();
    let mut expected: Vec<Option<u64>> = keys.iter().map(|k| Some(k.1)).collect();
    expected.push(None);
    assert_eq!(seqs, expected);
    // One message through the view already scans the tail; a batch of 42 costs about
    // as much as two.
    let (_, one) = steps(&conn, |c| {
        reader::message_by_seq(c, Id(7), ROWS as u64).expect("one")
    });
    assert!(
        cost < 3 * one + 2_000,
        "batch: {cost} steps, one message: {one}"
    );
}

#[test]
fn the_view_shows_a_copied_message_once_and_its_edits() {
    let conn = store();
    conn.execute(
        "UPDATE message_rows SET body = 'edited' WHERE conv_id = 7 AND seq = ?1",
        params![ROWS - TAIL - 1],
    )
    .expect("edit");
    let count: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM messages WHERE conv_id = 7 AND seq = ?1",
            [ROWS - TAIL - 1],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(count, 1);
    let found = reader::message_by_seq(&conn, Id(7), (ROWS - TAIL - 1) as u64)
        .expect("read")
        .expect("found");
    assert_eq!(found.text, "edited");
}
