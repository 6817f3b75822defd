//! A fresh database per test ([`TestDb::create`]).
//!
//! By default the database is on the test kit's PostgreSQL (`shared_engines`, started
//! once per test binary), so that `cargo test` runs these tests wherever the engines are
//! installed, CI included. That server accepts only TLS with the kit's client
//! certificate (`hostssl … cert`), so every store and inspection connection here uses
//! mutual TLS, as a cluster node does. A missing engine fails the test rather than
//! skipping it: a skipped store test would hide a broken CI image.
//!
//! `PARLOR_TEST_POSTGRES_URL` overrides this with a server of your own (plain TCP, a
//! role that may create databases), for instance to measure throughput on a tuned server.

#![allow(dead_code)]

use parlor_core::model::Event;
use parlor_core::ports::Bus;
use parlor_embedded::InProcessBus;
use parlor_postgres::{PgOptions, PgStore, TlsFiles};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub const URL_VAR: &str = "PARLOR_TEST_POSTGRES_URL";

/// One test's empty database, and how to reach it.
pub struct TestDb {
    pub url: String,
    /// `Some` on the test kit's server, which requires the client certificate.
    pub tls: Option<TlsFiles>,
}

impl TestDb {
    /// A new empty database, on the server named by `PARLOR_TEST_POSTGRES_URL` if set,
    /// else on the test kit's PostgreSQL.
    pub async fn create() -> TestDb {
        match std::env::var(URL_VAR) {
            Ok(server) if !server.is_empty() => TestDb {
                url: fresh_database(&server).await,
                tls: None,
            },
            _ => on_test_kit().await,
        }
    }

    /// Store options for this database (TLS included).
    pub fn options(&self) -> PgOptions {
        let mut options = PgOptions::new(&self.url);
        options.tls = self.tls.clone();
        options
    }

    /// A direct connection for inspecting (or sabotaging) the database.
    pub async fn inspect(&self) -> tokio_postgres::Client {
        match &self.tls {
            Some(files) => {
                let tls = parlor_postgres::tls_connector(files).expect("client TLS config");
                connect(&self.url, tls).await
            }
            None => connect(&self.url, tokio_postgres::NoTls).await,
        }
    }
}

async fn connect<T>(url: &str, tls: T) -> tokio_postgres::Client
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = tokio_postgres::connect(url, tls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// A database on the kit's shared PostgreSQL. Starting the engines and `psql` block, so
/// they run off the async workers. The database is not dropped: the whole server goes
/// away with the test process.
async fn on_test_kit() -> TestDb {
    tokio::task::spawn_blocking(|| {
        let engines = parlor_testkit::shared_engines().unwrap_or_else(|e| {
            panic!("{URL_VAR} is not set and the test kit's PostgreSQL did not start: {e:#}")
        });
        let url = engines
            .postgres
            .create_database(&parlor_testkit::unique_name("store"))
            .expect("create a test database");
        TestDb {
            url,
            tls: Some(TlsFiles {
                ca_file: engines.certs.ca_file.clone(),
                cert_file: engines.certs.client_cert_file.clone(),
                key_file: engines.certs.client_key_file.clone(),
            }),
        }
    })
    .await
    .expect("join the database set-up")
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let prefix = match base.rsplit_once('/') {
        Some((p, _)) if p.contains("//") && !p.ends_with('/') => p.to_string(),
        _ => base.trim_end_matches('/').to_string(),
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

/// Creates an empty database on the plain-TCP `server` and returns its URL.
async fn fresh_database(server: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "parlor_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    connect(server, tokio_postgres::NoTls)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    with_database(server, &name)
}

/// One "node": a store on the test database with its own bus, and everything it
/// published.
pub struct Node {
    pub store: Arc<PgStore>,
    pub bus: Arc<InProcessBus>,
    pub published: Arc<parking_lot::Mutex<Vec<Event>>>,
}

pub async fn node(db: &TestDb, name: &str) -> Node {
    let bus = Arc::new(InProcessBus::new());
    let mut options = db.options();
    options.node_name = name.into();
    options.pool_size = 8;
    options.partitions = 4;
    let store = PgStore::connect(options, bus.clone())
        .await
        .expect("connect the store");
    let published = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = Arc::clone(&published);
    let mut events = bus.subscribe();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(batch) = events.next().await {
            sink.lock().extend(batch.iter().cloned());
        }
    });
    Node {
        store,
        bus,
        published,
    }
}
