//! A fresh database per test on the server named by `PARLOR_TEST_POSTGRES_URL`
//! (plain TCP, a role that may create databases). Without it the tests are skipped with
//! a note, unless `PARLOR_TEST_BACKEND=cluster` says PostgreSQL is expected: then they fail.

#![allow(dead_code)]

use parlor_core::model::Event;
use parlor_core::ports::Bus;
use parlor_embedded::InProcessBus;
use parlor_postgres::{PgOptions, PgStore};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub const URL_VAR: &str = "PARLOR_TEST_POSTGRES_URL";

/// The server's URL, or `None` (test skipped) when none is configured.
pub fn server_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("PARLOR_TEST_BACKEND").as_deref() == Ok("cluster") {
                panic!("PARLOR_TEST_BACKEND=cluster but {URL_VAR} is not set: cannot run the PostgreSQL store tests");
            }
            eprintln!("note: {URL_VAR} is not set, skipping a PostgreSQL store test");
            None
        }
    }
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

/// Creates an empty database and returns its URL.
pub async fn fresh_database(server: &str) -> String {
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
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    with_database(server, &name)
}

/// A direct connection for inspecting a test database.
pub async fn inspect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// One "node": a store on `url` with its own bus, and everything it published.
pub struct Node {
    pub store: Arc<PgStore>,
    pub bus: Arc<InProcessBus>,
    pub published: Arc<parking_lot::Mutex<Vec<Event>>>,
}

pub async fn node(url: &str, name: &str) -> Node {
    let bus = Arc::new(InProcessBus::new());
    let mut options = PgOptions::new(url);
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
