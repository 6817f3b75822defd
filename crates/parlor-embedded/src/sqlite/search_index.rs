//! The search index: an FTS5 table in its own database file (`search.db`), written by its
//! own thread. A separate file has its own write lock, so indexing never holds up the
//! message writer; the index is a projection of the message store, fed in commit order
//! and up to a few tens of milliseconds behind it (see [`DEFAULT_LINGER`]).
//!
//! Crash safety: the index records the highest position it has applied. At start-up it
//! re-applies everything the main store committed after that position (new messages,
//! edits, deletes), so a crash between a commit and its indexing loses nothing. Applying
//! an operation twice is harmless: each one writes the message's current state.

use super::reader::db_err;
use parking_lot::Mutex;
use parlor_core::error::Result;
use parlor_core::search;
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

pub const SEARCH_FILE: &str = "search.db";
const MAX_BATCH: usize = 8192;
/// A batch waits up to this long for more (up to [`MAX_BATCH`]) before it is applied.
/// Each FTS5 transaction writes a new segment that later merges rewrite, so at low rates,
/// where every commit of the store carries one message, one transaction per message
/// cost more than the message's own commit (82 µs of indexer CPU per message at
/// 1,000/s). Waiting a little makes one segment of many messages, at the price of search
/// results trailing the store by at most this much more. Until 2026-12-02 only batches
/// under 512 operations waited; waiting always took 10% off the indexer's CPU at 60,000
/// messages/s (0.245 → 0.22 cores).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);

/// One change to apply to the index.
#[derive(Debug, Clone)]
pub enum IndexOp {
    /// A new or edited message, with its current text.
    Upsert {
        id: u64,
        conv: u64,
        seq: u64,
        sender: u64,
        ts: i64,
        text: String,
        /// An earlier version may be indexed (an edit, or any operation re-applied at
        /// start-up) and is deleted first. False for a message the writer just stored:
        /// the index has never seen its id, and the delete cost a lookup per message.
        replace: bool,
    },
    /// A deleted message: its text must not be findable any more.
    Remove { id: u64 },
}

const SCHEMA: &str = r#"
    CREATE TABLE IF NOT EXISTS index_state (id INTEGER PRIMARY KEY CHECK (id = 1), applied_pos INTEGER NOT NULL);
    INSERT OR IGNORE INTO index_state (id, applied_pos) VALUES (1, 0);
    CREATE VIRTUAL TABLE IF NOT EXISTS message_fts USING fts5(
        body, scope, conv_id UNINDEXED, seq UNINDEXED, sender UNINDEXED, ts UNINDEXED,
        content = '', contentless_delete = 1, contentless_unindexed = 1,
        tokenize = 'unicode61 remove_diacritics 2'
    );
"#;

const AUTOMERGE: i64 = 8;

/// Bumped whenever what is indexed per message changes ([`search::index_text`], the
/// conversation token, or the row key [`index_rowid`]): an index built with another
/// version is dropped and rebuilt from the store at start-up.
const TOKENIZER_VERSION: i64 = 4;

/// The index's row key for a message: its id negated, so that the newest message has the
/// smallest key. Searches want the newest matches first, and FTS5 walks its postings
/// forwards much more cheaply than backwards (`ORDER BY rowid DESC` re-parsed every
/// postings page to step back through it: 14% of a search's CPU).
pub fn index_rowid(id: u64) -> i64 {
    -(id as i64)
}

/// Every indexed message also carries, in the `scope` column, a token naming its
/// conversation, so that a query can be restricted to the caller's conversations inside
/// the full-text index itself instead of checking the conversation of every match of a
/// common word (see `search_query::search`). `scope` has weight 0 in the ranking.
pub fn conversation_token(conv: u64) -> String {
    format!("zconv{conv}")
}

fn open_index(path: &Path) -> rusqlite::Result<Connection> {
    let conn = super::open::read_write(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != TOKENIZER_VERSION {
        tracing::info!(
            from = version,
            to = TOKENIZER_VERSION,
            "rebuilding the search index"
        );
        // Dropping a contentless FTS5 table leaves its `_content` shadow table behind
        // when it keeps unindexed columns (SQLite 3.50's `sqlite3Fts5DropAll` drops that
        // table only for tables with content), and creating the new one would fail on it.
        conn.execute_batch(
            "DROP TABLE IF EXISTS message_fts; DROP TABLE IF EXISTS message_fts_content;
             DROP TABLE IF EXISTS index_state;",
        )?;
        conn.pragma_update(None, "user_version", TOKENIZER_VERSION)?;
    }
    conn.execute_batch(SCHEMA)?;
    // FTS5 merges a level's segments once it holds `automerge` of them (default 4). At 8
    // the index does 9% less work per message (a 1M-message build in batches of 1,000,
    // like the indexer's at 50,000 messages/s) and queries cost the same; at 16 the
    // intersection with conversation tokens cost 22% more.
    conn.execute(
        "INSERT INTO message_fts (message_fts, rank) VALUES ('automerge', ?1)",
        [AUTOMERGE],
    )?;
    Ok(conn)
}

impl IndexOp {
    fn id(&self) -> u64 {
        match self {
            IndexOp::Upsert { id, .. } | IndexOp::Remove { id } => *id,
        }
    }
}

fn apply(conn: &Connection, ops: &[(u64, IndexOp)]) -> rusqlite::Result<()> {
    // In ascending row key order (newest message first): FTS5 starts a new segment
    // whenever a row key is below the previous one, which in commit order would be at
    // every message. The sort is stable, so the operations on one message keep their
    // order.
    let mut ops: Vec<&(u64, IndexOp)> = ops.iter().collect();
    ops.sort_by_key(|(_, op)| index_rowid(op.id()));
    let tx = conn.unchecked_transaction()?;
    {
        let mut delete = tx.prepare_cached("DELETE FROM message_fts WHERE rowid = ?1")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO message_fts (rowid, body, scope, conv_id, seq, sender, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut applied = 0u64;
        for (pos, op) in ops {
            applied = applied.max(*pos);
            match op {
                IndexOp::Upsert {
                    id,
                    conv,
                    seq,
                    sender,
                    ts,
                    text,
                    replace,
                } => {
                    if *replace {
                        delete.execute([index_rowid(*id)])?;
                    }
                    insert.execute(params![
                        index_rowid(*id),
                        search::index_text(text),
                        conversation_token(*conv),
                        *conv as i64,
                        *seq as i64,
                        *sender as i64,
                        ts
                    ])?;
                }
                IndexOp::Remove { id } => {
                    delete.execute([index_rowid(*id)])?;
                }
            }
        }
        tx.execute(
            "UPDATE index_state SET applied_pos = MAX(applied_pos, ?1) WHERE id = 1",
            [applied as i64],
        )?;
    }
    tx.commit()
}

/// A row of (pos, id, conv_id, seq, sender, created_at, body, deleted) as the operation
/// that brings the index up to that message's current state.
fn operation(r: &rusqlite::Row<'_>) -> rusqlite::Result<(u64, IndexOp)> {
    let (pos, id): (i64, i64) = (r.get(0)?, r.get(1)?);
    let op = if r.get::<_, bool>(7)? {
        IndexOp::Remove { id: id as u64 }
    } else {
        IndexOp::Upsert {
            id: id as u64,
            conv: r.get::<_, i64>(2)? as u64,
            seq: r.get::<_, i64>(3)? as u64,
            sender: r.get::<_, i64>(4)? as u64,
            ts: r.get(5)?,
            text: r.get(6)?,
            replace: true,
        }
    };
    Ok((pos as u64, op))
}

/// What the main store committed after `after`, as index operations in position order.
fn missed(main: &Connection, after: u64) -> rusqlite::Result<Vec<(u64, IndexOp)>> {
    let mut ops = Vec::new();
    let convs: Vec<i64> = main
        .prepare("SELECT id FROM conversations")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for conv in convs {
        let Some(range) = super::positions::seq_range(main, conv, after, u64::MAX, None)? else {
            continue;
        };
        let mut stmt = main.prepare_cached(&format!(
            "SELECT pos, id, conv_id, seq, sender, created_at, body, deleted FROM {}
             WHERE conv_id = ?1 AND seq >= ?2 AND seq <= ?3",
            range.table(range.last)
        ))?;
        let rows = stmt.query_map(
            params![conv, range.first as i64, range.last as i64],
            operation,
        )?;
        for row in rows {
            ops.push(row?);
        }
    }
    // Edits and deletes of older messages: re-apply their current state.
    let mut changes = main.prepare(
        "SELECT c.pos, m.id, m.conv_id, m.seq, m.sender, m.created_at, m.body, m.deleted
         FROM message_changes c JOIN messages m ON m.conv_id = c.conv_id AND m.seq = c.seq
         WHERE c.pos > ?1",
    )?;
    let rows = changes.query_map([after as i64], operation)?;
    for row in rows {
        ops.push(row?);
    }
    ops.sort_by_key(|(pos, _)| *pos);
    Ok(ops)
}

/// Fills `batch` with the next operations: blocks for the first, then sleeps out the rest
/// of the linger and takes what came meanwhile, up to [`MAX_BATCH`]. False once the
/// writer is gone and nothing is left to apply.
///
/// Sleeping instead of waiting on the channel with a timeout matters at moderate rates:
/// a waiting receiver is woken by every send, which was a wake-up of this thread (and a
/// `futex` call in the writer) for every store commit, thousands a second at 10,000
/// messages/s, to gather a batch that is applied 20 ms later anyway.
fn collect(
    rx: &mpsc::Receiver<Vec<(u64, IndexOp)>>,
    batch: &mut Vec<(u64, IndexOp)>,
    linger: Duration,
) -> bool {
    let Ok(first) = rx.recv() else {
        return false;
    };
    batch.extend(first);
    let backlog = take_ready(rx, batch);
    if !backlog {
        std::thread::sleep(linger);
        take_ready(rx, batch);
    }
    true
}

/// Moves what the channel holds into `batch` until it is empty or the batch is full;
/// true when the batch filled up first.
fn take_ready(rx: &mpsc::Receiver<Vec<(u64, IndexOp)>>, batch: &mut Vec<(u64, IndexOp)>) -> bool {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(ops) => batch.extend(ops),
            Err(_) => return false,
        }
    }
    true
}

/// Handle held by the writer (to feed the index) and by readers (to query it).
pub struct SearchIndex {
    feed: mpsc::Sender<Vec<(u64, IndexOp)>>,
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl SearchIndex {
    /// Opens the index, catches up with what `main` committed since the index last
    /// applied, and starts the indexing thread.
    pub fn open(dir: &Path, main: &Connection, linger: Duration) -> anyhow::Result<Arc<Self>> {
        let path = dir.join(SEARCH_FILE);
        let conn = open_index(&path)?;
        let applied: i64 = conn.query_row(
            "SELECT applied_pos FROM index_state WHERE id = 1",
            [],
            |r| r.get(0),
        )?;
        let backlog = missed(main, applied as u64)?;
        if !backlog.is_empty() {
            tracing::info!(operations = backlog.len(), "search index catching up");
            for chunk in backlog.chunks(MAX_BATCH) {
                apply(&conn, chunk)?;
            }
        }
        let (feed, rx) = mpsc::channel::<Vec<(u64, IndexOp)>>();
        std::thread::Builder::new()
            .name("parlor-search-indexer".into())
            .spawn(move || {
                let mut batch = Vec::new();
                while collect(&rx, &mut batch, linger) {
                    if let Err(e) = apply(&conn, &batch) {
                        // The next start-up re-applies from the last recorded position.
                        tracing::error!(error = %e, "search indexing failed");
                    }
                    batch.clear();
                }
            })?;
        Ok(Arc::new(SearchIndex {
            feed,
            path,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Queues committed changes, in commit order.
    pub fn feed(&self, ops: Vec<(u64, IndexOp)>) {
        if !ops.is_empty() {
            let _ = self.feed.send(ops);
        }
    }

    /// Runs `f` on a read-only connection to the index (blocking; call from a blocking
    /// thread).
    pub fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.idle.lock().pop() {
            Some(conn) => conn,
            None => {
                let conn = super::open::query_only(&self.path).map_err(db_err)?;
                conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
                conn
            }
        };
        let result = f(&conn);
        let mut idle = self.idle.lock();
        if idle.len() < 8 {
            idle.push(conn);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index from an older version (here: rows keyed by the plain id, which the
    /// newest-first query would now read oldest first) is dropped on open, so that
    /// start-up rebuilds it from the store (everything after position 0).
    #[test]
    fn an_index_of_another_version_is_dropped_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SEARCH_FILE);
        {
            let old = Connection::open(&path).expect("open");
            old.execute_batch(
                "CREATE TABLE index_state (id INTEGER PRIMARY KEY, applied_pos INTEGER NOT NULL);
                 INSERT INTO index_state VALUES (1, 99);
                 CREATE VIRTUAL TABLE message_fts USING fts5(body, scope, conv_id UNINDEXED, seq UNINDEXED, sender UNINDEXED, ts UNINDEXED, content = '', contentless_delete = 1, contentless_unindexed = 1);
                 INSERT INTO message_fts (rowid, body, scope, conv_id, seq, sender, ts) VALUES (7, 'plum', 'zconv1', 1, 1, 1, 0);
                 PRAGMA user_version = 3;",
            )
            .expect("old index");
        }
        let conn = open_index(&path).expect("reopen");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM message_fts WHERE message_fts MATCH 'plum'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        let applied: i64 = conn
            .query_row("SELECT applied_pos FROM index_state", [], |r| r.get(0))
            .expect("state");
        assert_eq!((version, rows, applied), (TOKENIZER_VERSION, 0, 0));
    }

    #[test]
    fn newer_messages_have_smaller_row_keys() {
        assert!(index_rowid(2) < index_rowid(1));
        assert_eq!(index_rowid(1 << 62), -(1 << 62));
    }
}
