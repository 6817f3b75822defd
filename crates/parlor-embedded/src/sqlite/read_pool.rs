//! The read-only connections the store reads with.
//!
//! A read normally runs on a blocking thread ([`ReadPool::run`]): it may touch many
//! pages, and a tokio worker must not stall on it. Handing it over costs two thread
//! wake-ups, which on a busy two-core machine cost more than a point lookup itself
//! (about a third of the server's CPU per connect went to the contacts lookup's
//! hand-over). [`ReadPool::run_quick`] therefore runs small lookups on the calling
//! worker, on connections that cannot stall it: they never wait for a lock (no busy
//! timeout) and SQLite interrupts any statement there after [`QUICK_STEPS`] virtual
//! machine steps. A lookup that fails either way, or finds no quick connection, runs
//! again on the blocking pool, so the limits cost a retry, never a result.

use super::reader::db_err;
use parking_lot::Mutex;
use parlor_core::error::{Error, Result};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::Arc;

/// Virtual machine steps a quick statement may take before SQLite interrupts it: well
/// under a millisecond of one core. A user's contacts in a few small conversations take
/// some hundreds.
const QUICK_STEPS: i32 = 20_000;
/// Idle connections kept for the blocking pool.
const MAX_IDLE: usize = 16;
/// Quick connections kept: one per worker running a quick read at the same moment.
const MAX_QUICK: usize = 8;

pub struct ReadPool {
    path: PathBuf,
    /// Idle connections for the blocking pool; the lock is only held to push or pop.
    idle: Mutex<Vec<Connection>>,
    /// Idle connections for [`ReadPool::run_quick`].
    quick: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
            quick: Mutex::new(Vec::new()),
        }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = super::open::query_only(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "cache_size", -16_384)?;
        Ok(conn)
    }

    fn open_quick(&self) -> rusqlite::Result<Connection> {
        let conn = self.open()?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        // The handler first runs after QUICK_STEPS steps of a statement; interrupting
        // then is the whole point. (The count carries over between executions of a
        // cached statement, so a short one is sometimes cut short too: it just retries.)
        conn.progress_handler(QUICK_STEPS, Some(|| true));
        Ok(conn)
    }

    /// Opening a connection reads the schema: that happens here, on a blocking thread,
    /// never in [`ReadPool::run_quick`] itself.
    fn add_quick(&self) {
        match self.open_quick() {
            Ok(conn) => {
                let mut quick = self.quick.lock();
                if quick.len() < MAX_QUICK {
                    quick.push(conn);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open a quick read connection"),
        }
    }

    /// Runs `f` with a pooled connection on a blocking thread.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().pop() {
                Some(conn) => conn,
                None => pool.open().map_err(db_err)?,
            };
            let result = f(&conn);
            let mut idle = pool.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "store read task failed");
            Error::internal()
        })?
    }

    /// Runs the small lookup `f` on the calling thread when it can (see the module
    /// documentation), else on the blocking pool.
    pub async fn run_quick<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let idle = self.quick.lock().pop();
        let Some(conn) = idle else {
            let pool = Arc::clone(self);
            return self
                .run(move |conn| {
                    let result = f(conn).map_err(db_err);
                    pool.add_quick();
                    result
                })
                .await;
        };
        let result = f(&conn);
        {
            let mut quick = self.quick.lock();
            if quick.len() < MAX_QUICK {
                quick.push(conn);
            }
        }
        match result {
            Ok(value) => Ok(value),
            Err(e) => {
                tracing::debug!(error = %e, "quick read moves to the blocking pool");
                self.run(move |conn| f(conn).map_err(db_err)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with a table too big to count within [`QUICK_STEPS`].
    fn big_table() -> (tempfile::TempDir, Arc<ReadPool>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        // Before SQLite starts, as in every other test of this process.
        crate::sqlite::page_cache::install();
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t (x INTEGER);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
             INSERT INTO t SELECT i FROM n;",
        )
        .expect("fill");
        (dir, Arc::new(ReadPool::new(path)))
    }

    fn count(conn: &Connection) -> rusqlite::Result<i64> {
        conn.query_row("SELECT count(*) FROM t WHERE x % 7 = 0", [], |r| r.get(0))
    }

    #[test]
    fn a_long_statement_on_a_quick_connection_is_interrupted() {
        let (_dir, pool) = big_table();
        let quick = pool.open_quick().expect("quick connection");
        let err = count(&quick).expect_err("interrupted");
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted)
        );
    }

    #[tokio::test]
    async fn an_interrupted_quick_read_still_answers_from_the_blocking_pool() {
        let (_dir, pool) = big_table();
        // The first call finds no quick connection and opens one; the second uses it,
        // is interrupted, and retries.
        for _ in 0..2 {
            assert_eq!(pool.run_quick(count).await.expect("count"), 7142);
        }
        assert_eq!(pool.quick.lock().len(), 1);
    }
}
