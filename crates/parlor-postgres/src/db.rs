//! Connection pools: one to the primary (every write, and every read that must see the
//! latest commit: backlog, head, accounts, membership), and one per read replica for
//! history and search, which may lag by a little.

use crate::error::DbResult;
use crate::PgOptions;
use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use parlor_core::error::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a caller waits for a pooled connection, or for a new one to be opened,
/// before it is told the store is unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Db {
    primary: Pool,
    replicas: Vec<Pool>,
    next_replica: AtomicUsize,
}

fn pool(url: &str, options: &PgOptions, size: usize) -> anyhow::Result<Pool> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .with_context(|| "invalid postgres url".to_string())?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("parlor");
    // Fast recycling only checks that the connection is still open: a connection
    // broken by a database restart is closed by its task and replaced on next use.
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &options.tls {
        Some(files) => Manager::from_config(config, crate::tls_connector(files)?, manager_config),
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
    };
    Pool::builder(manager)
        .max_size(size.max(2))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .context("cannot build the postgres pool")
}

impl Db {
    pub fn new(options: &PgOptions) -> anyhow::Result<Db> {
        let primary = pool(&options.url, options, options.pool_size)?;
        let replicas = options
            .replica_urls
            .iter()
            .map(|url| pool(url, options, options.pool_size))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Db {
            primary,
            replicas,
            next_replica: AtomicUsize::new(0),
        })
    }

    /// A connection to the primary.
    pub async fn primary(&self) -> Result<Object> {
        self.primary.get().await.db()
    }

    /// A connection for reads that may lag (history, search): a replica in turn, or the
    /// primary when there is none.
    pub async fn replica(&self) -> Result<Object> {
        if self.replicas.is_empty() {
            return self.primary().await;
        }
        let i = self.next_replica.fetch_add(1, Ordering::Relaxed) % self.replicas.len();
        self.replicas[i].get().await.db()
    }

    /// A connection to the primary, with the cause of a failure (for start-up).
    pub async fn primary_checked(&self) -> anyhow::Result<Object> {
        self.primary
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to postgres: {e}"))
    }
}
