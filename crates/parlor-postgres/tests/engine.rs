//! Against a throwaway PostgreSQL from `parlor-testkit` that accepts only mutual TLS
//! (`hostssl … cert`): the store connects with its client certificate, and survives the
//! server being stopped and started again.

mod support;

use parlor_core::model::NewMessage;
use parlor_core::ports::Store;
use parlor_embedded::InProcessBus;
use parlor_postgres::{PgOptions, PgStore, TlsFiles};
use parlor_proto::ErrorCode;
use parlor_testkit::engines::{Certs, PgBins, Postgres};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_a_server_restart() {
    if PgBins::find().is_none() {
        if std::env::var("PARLOR_TEST_BACKEND").as_deref() == Ok("cluster") {
            panic!("PARLOR_TEST_BACKEND=cluster but no PostgreSQL installation was found");
        }
        eprintln!("note: no PostgreSQL installation, skipping");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = Certs::get()
        .expect("certificates")
        .write_to(dir.path())
        .expect("write certificates");
    let pg = Arc::new(Postgres::launch(&certs).expect("launch postgres"));
    let url = pg.create_database("store_engine").expect("database");
    let mut options = PgOptions::new(url);
    options.tls = Some(TlsFiles {
        ca_file: certs.ca_file.clone(),
        cert_file: certs.client_cert_file.clone(),
        key_file: certs.client_key_file.clone(),
    });
    options.partitions = 2;
    let store = PgStore::connect(options, Arc::new(InProcessBus::new()))
        .await
        .expect("connect over mutual TLS");
    let alice = store.create_user("alice", "h").await.expect("user").id;
    let bob = store.create_user("bob", "h").await.expect("user").id;
    let (direct, _) = store.open_direct(alice, bob).await.expect("direct");
    let send = |cid: String| {
        store.append_message(NewMessage {
            conv: direct.id,
            sender: alice,
            cid: Some(cid),
            text: "hi".into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        })
    };
    let first = send("one".into()).await.expect("append");
    assert_eq!(first.seq, 1);

    let stopping = Arc::clone(&pg);
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .expect("join")
        .expect("stop postgres");
    let started = Instant::now();
    let refused = send("two".into()).await;
    assert_eq!(
        refused.map_err(|e| e.code).err(),
        Some(ErrorCode::Unavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered promptly"
    );
    assert!(store.ping().await.is_err());

    let starting = Arc::clone(&pg);
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .expect("join")
        .expect("start postgres");
    // The pool replaces the broken connections; the retried send is stored once.
    let mut again = None;
    for _ in 0..50 {
        match send("two".into()).await {
            Ok(ack) => {
                again = Some(ack);
                break;
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let again = again.expect("recovered after the restart");
    assert_eq!(again.seq, 2);
    assert!(!again.duplicate);
    assert_eq!(send("two".into()).await.expect("retry").seq, 2);
    store.ping().await.expect("ping after recovery");
    store.close().await;
}
