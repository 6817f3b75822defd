//! Opening a connection to one of the embedded store's database files.
//!
//! Every connection uses SQLite's `unix-excl` VFS. The first connection that reads a
//! file takes one process-wide lock on it and the WAL index lives in heap memory shared
//! by the process's connections, so a transaction no longer costs `fcntl` calls to lock
//! the file and the `-shm` index: with the default `unix` VFS a one-message commit made
//! four to six of them, about a tenth of the writer thread's time at 10,000 messages/s
//! (see BENCHMARKS, "direct", thirteenth session). The other effect is wanted too: a
//! second server pointed at the same data directory cannot open the store under the
//! first one and fails at start-up with "database is locked".

use rusqlite::{Connection, OpenFlags};
use std::path::Path;

const VFS: &str = "unix-excl";

/// Opens `path` for reading and writing, creating the file if it does not exist.
pub fn read_write(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        VFS,
    )
}

/// Opens an existing `path` for queries only.
///
/// The file is opened read-write with `query_only` set rather than with
/// `SQLITE_OPEN_READONLY`: `unix-excl` leaves read-only files on ordinary POSIX locks,
/// whose unlock would also release the process-wide lock the writer relies on.
pub fn query_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        VFS,
    )?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_of_one_process_share_the_file_and_see_each_others_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let writer = read_write(&path).expect("open writer");
        writer
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("schema");
        let reader = query_only(&path).expect("open reader");
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .expect("count")
        };
        assert_eq!(count(&reader), 1);
        writer
            .execute("INSERT INTO t VALUES (2)", [])
            .expect("insert");
        assert_eq!(count(&reader), 2);
        assert!(reader.execute("INSERT INTO t VALUES (3)", []).is_err());
        drop(reader);
        writer
            .execute("INSERT INTO t VALUES (3)", [])
            .expect("insert after reader closed");
        assert_eq!(count(&writer), 3);
    }
}
