//! The page cache wrapper (`sqlite::page_cache`) in a process of its own, so that it is
//! installed before SQLite starts.

use parlor_embedded::sqlite::page_cache;
use rusqlite::Connection;
use std::sync::{Mutex, MutexGuard};

/// The counters are per process: one test at a time, so that each sees only its own.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open(dir: &tempfile::TempDir) -> Connection {
    assert!(page_cache::install(), "installed before any connection");
    let conn = Connection::open(dir.path().join("t.db")).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.execute_batch(
        "CREATE TABLE t (k INTEGER NOT NULL, v TEXT NOT NULL, PRIMARY KEY (k)) WITHOUT ROWID",
    )
    .expect("schema");
    conn
}

/// Keys in an order that makes balances reorder their pages (what parks a page under the
/// locking page's number), values long enough for many pages.
fn scattered(n: u64) -> Vec<(i64, String)> {
    (0..n)
        .map(|i| {
            let k = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as i64;
            (k, format!("{k:x}-{}", "v".repeat(200)))
        })
        .collect()
}

fn insert_all(conn: &mut Connection, rows: &[(i64, String)], commit: bool) {
    let tx = conn.transaction().expect("begin");
    for (k, v) in rows {
        tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k, v))
            .expect("insert");
    }
    if commit {
        tx.commit().expect("commit");
    } // else dropping `tx` rolls back
}

fn count(conn: &Connection) -> usize {
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
        .expect("count");
    n as usize
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check")
}

#[test]
fn commits_skip_the_cache_walk_and_keep_every_row() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut conn = open(&dir);
    let before = page_cache::truncations_skipped();
    let rows = scattered(20_000);
    for chunk in rows.chunks(50) {
        insert_all(&mut conn, chunk, true);
    }
    assert!(
        page_cache::truncations_skipped() > before,
        "commits after reordering balances skipped the walk"
    );
    assert_eq!(integrity(&conn), "ok");
    for (k, v) in rows.iter().step_by(97) {
        let got: String = conn
            .query_row("SELECT v FROM t WHERE k = ?1", [k], |r| r.get(0))
            .expect("row");
        assert_eq!(&got, v);
    }
    assert_eq!(count(&conn), rows.len());
}

/// A rolled-back transaction that grew the file leaves pages past the end in the cache:
/// that truncation still reaches the default cache, and every row stays right.
#[test]
fn a_rollback_past_the_end_still_drops_its_pages() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut conn = open(&dir);
    let forwarded = page_cache::truncations_forwarded();
    let rows = scattered(4_000);
    let (kept, dropped) = rows.split_at(2_000);
    insert_all(&mut conn, kept, true);
    for round in 0..3 {
        let before = page_cache::truncations_forwarded();
        insert_all(&mut conn, dropped, false);
        assert!(
            page_cache::truncations_forwarded() > before,
            "round {round}: the rollback's truncation was forwarded"
        );
        assert_eq!(count(&conn), kept.len(), "round {round}: rolled back");
        let again: Vec<(i64, String)> = dropped
            .iter()
            .take(500)
            .map(|(k, _)| (*k, format!("second {k}")))
            .collect();
        insert_all(&mut conn, &again, true);
        conn.execute("DELETE FROM t WHERE v LIKE 'second %'", [])
            .expect("delete");
    }
    assert!(page_cache::truncations_forwarded() > forwarded);
    assert_eq!(integrity(&conn), "ok");
    assert_eq!(count(&conn), kept.len());
    let other = Connection::open(dir.path().join("t.db")).expect("second connection");
    assert_eq!(count(&other), kept.len());
    assert_eq!(integrity(&other), "ok");
}
