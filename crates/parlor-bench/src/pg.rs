//! What PostgreSQL did during a window, read over one persistent connection on the
//! engine's Unix socket (the test kit's admin access: `trust`, no TLS), so that the
//! probing costs one idle backend rather than a `psql` process per sample.
//!
//! Always: write transactions (transaction ids assigned, exact) and WAL bytes (the
//! insert position, exact), per message. With `--pg-insight`: `pg_stat_statements`
//! (time inside each statement; wall time, so lock waits count) and a sampler of
//! `pg_stat_activity` every [`WAIT_SAMPLE`] that counts what the active client backends
//! are doing (on CPU, waiting for a lock, for the WAL flush, for the client…): the
//! average number of busy backends by wait event, as in an "active session history".

use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// How often the wait-event sampler looks at `pg_stat_activity`.
const WAIT_SAMPLE: Duration = Duration::from_millis(50);
/// Statements listed, the most time-consuming first.
const TOP_STATEMENTS: i64 = 10;

pub struct PgProbe {
    client: Arc<Client>,
    /// `pg_stat_statements` is loaded and created in the database.
    pub insight: bool,
}

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct PgCounters {
    /// The next transaction id: the difference is the number of write transactions.
    next_xid: i64,
    /// The WAL insert position in bytes.
    wal_lsn: i64,
}

/// PostgreSQL over a window.
#[derive(Debug, Clone, Serialize)]
pub struct PgFigures {
    pub write_transactions: i64,
    pub messages_per_transaction: Option<f64>,
    pub wal_bytes: i64,
    pub wal_bytes_per_message: Option<f64>,
    /// `--pg-insight`: average active client backends by what they were doing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub active_backends: Vec<WaitShare>,
    /// `--pg-insight`: statements by total time inside them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<Statement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitShare {
    /// `CPU` (no wait event) or `type:event`, e.g. `Lock:transactionid`, `IO:WALSync`.
    pub what: String,
    /// Backends in this state on average over the window.
    pub backends: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub query: String,
    pub calls: i64,
    /// Execution time (wall: lock waits included).
    pub total_ms: f64,
    pub mean_ms: f64,
    /// Planning time, over `plans` plannings (0 when a cached generic plan was used).
    pub plan_ms: f64,
    pub plans: i64,
    pub rows: i64,
    /// Time inside this statement (planning + execution) per message, in µs.
    pub us_per_message: Option<f64>,
}

/// A running wait-event sampler.
pub struct Insight {
    task: JoinHandle<(u64, BTreeMap<String, u64>)>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl PgProbe {
    /// Connects to `database` over the socket in `socket_dir`; with `insight`, creates
    /// `pg_stat_statements` there (the library must be preloaded).
    pub async fn connect(
        socket_dir: &Path,
        port: u16,
        user: &str,
        database: &str,
        insight: bool,
    ) -> anyhow::Result<PgProbe> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(socket_dir)
            .port(port)
            .user(user)
            .dbname(database)
            .application_name("parlor-bench probe");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .context("connect to PostgreSQL's socket")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("warning: the PostgreSQL probe's connection ended: {e}");
            }
        });
        if insight {
            client
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
                .context("CREATE EXTENSION pg_stat_statements")?;
        }
        Ok(PgProbe {
            client: Arc::new(client),
            insight,
        })
    }

    pub async fn counters(&self) -> anyhow::Result<PgCounters> {
        let row = self
            .client
            .query_one(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                        pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
                &[],
            )
            .await
            .context("read PostgreSQL counters")?;
        Ok(PgCounters {
            next_xid: row.get(0),
            wal_lsn: row.get(1),
        })
    }

    /// Resets `pg_stat_statements` and starts sampling wait events (with insight).
    pub async fn start_insight(&self) -> Option<Insight> {
        if !self.insight {
            return None;
        }
        if let Err(e) = self
            .client
            .batch_execute("SELECT pg_stat_statements_reset()")
            .await
        {
            eprintln!("warning: pg_stat_statements_reset: {e}");
        }
        let client = Arc::clone(&self.client);
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut samples = 0u64;
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut tick = tokio::time::interval(WAIT_SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let rows = client
                    .query(
                        "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*)
                         FROM pg_stat_activity
                         WHERE state = 'active' AND backend_type = 'client backend'
                           AND pid <> pg_backend_pid()
                         GROUP BY 1",
                        &[],
                    )
                    .await;
                let Ok(rows) = rows else { continue };
                samples += 1;
                for row in rows {
                    *counts.entry(row.get::<_, String>(0)).or_default() +=
                        u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
                }
            }
            (samples, counts)
        });
        Some(Insight { task, stop })
    }

    /// The window's figures: counters `before` → now, and what the insight gathered.
    pub async fn figures(
        &self,
        before: PgCounters,
        insight: Option<Insight>,
        messages: u64,
    ) -> anyhow::Result<PgFigures> {
        let after = self.counters().await?;
        let per = |v: f64| crate::report::ratio(v, messages as f64).map(crate::report::round3);
        let write_transactions = after.next_xid - before.next_xid;
        let wal_bytes = after.wal_lsn - before.wal_lsn;
        let mut figures = PgFigures {
            write_transactions,
            messages_per_transaction: crate::report::ratio(
                messages as f64,
                write_transactions as f64,
            )
            .map(crate::report::round3),
            wal_bytes,
            wal_bytes_per_message: per(wal_bytes as f64),
            active_backends: Vec::new(),
            statements: Vec::new(),
        };
        let Some(insight) = insight else {
            return Ok(figures);
        };
        let _ = insight.stop.send(());
        if let Ok((samples, counts)) = insight.task.await {
            let mut shares: Vec<WaitShare> = counts
                .into_iter()
                .map(|(what, n)| WaitShare {
                    what,
                    backends: crate::report::round3(n as f64 / samples.max(1) as f64),
                })
                .collect();
            shares.sort_by(|a, b| b.backends.total_cmp(&a.backends));
            figures.active_backends = shares;
        }
        let rows = self
            .client
            .query(
                "SELECT query, calls, total_exec_time, rows, total_plan_time, plans
                 FROM pg_stat_statements
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND query NOT LIKE '%pg_stat_%'
                 ORDER BY total_exec_time + total_plan_time DESC LIMIT $1",
                &[&TOP_STATEMENTS],
            )
            .await
            .context("read pg_stat_statements")?;
        figures.statements = rows
            .into_iter()
            .map(|row| {
                let calls: i64 = row.get(1);
                let total_ms: f64 = row.get(2);
                let plan_ms: f64 = row.get(4);
                Statement {
                    query: shorten(&row.get::<_, String>(0)),
                    calls,
                    total_ms: crate::report::round3(total_ms),
                    mean_ms: crate::report::round3(total_ms / calls.max(1) as f64),
                    plan_ms: crate::report::round3(plan_ms),
                    plans: row.get(5),
                    rows: row.get(3),
                    us_per_message: per((total_ms + plan_ms) * 1000.0),
                }
            })
            .collect();
        Ok(figures)
    }
}

/// The statement on one line, whitespace collapsed, at most 90 characters.
fn shorten(query: &str) -> String {
    let one_line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 90 {
        let cut: String = one_line.chars().take(89).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}
