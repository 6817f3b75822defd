//! Appends per second through one store with the batch writer (ignored: a measurement,
//! not a check). Run with
//! `cargo test -p parlor-postgres --release --test throughput -- --ignored --nocapture`
//! (on the test kit's PostgreSQL, over mutual TLS), or with
//! `PARLOR_TEST_POSTGRES_URL=postgres://…` set to measure against a server of your own.

mod support;

use parlor_core::model::NewMessage;
use parlor_core::ports::Store;
use std::time::Instant;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn appends_per_second() {
    let db = TestDb::create().await;
    let a = node(&db, "bench").await;
    let s = &*a.store;
    const SENDERS: usize = 50;
    const PER_SENDER: usize = 400;
    let mut users = Vec::new();
    for i in 0..SENDERS {
        users.push(s.create_user(&format!("u{i}"), "h").await.expect("user").id);
    }
    // Ten groups of ten: each sender writes to its own group.
    let mut groups = Vec::new();
    for chunk in users.chunks(5) {
        let others: Vec<_> = chunk[1..].to_vec();
        groups.push(
            s.create_group(chunk[0], "g", &others, 100)
                .await
                .expect("group")
                .id,
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, &sender) in users.iter().enumerate() {
        let store = a.store.clone();
        let conv = groups[i / 5];
        tasks.push(tokio::spawn(async move {
            // Up to 32 sends in flight per sender, like a pipelining client.
            let mut inflight = std::collections::VecDeque::new();
            for n in 0..PER_SENDER {
                inflight.push_back(store.append_message(NewMessage {
                    conv,
                    sender,
                    cid: Some(format!("c{n}")),
                    text: format!("message number {n} from a sender, with some words in it"),
                    reply_to: None,
                    mentions: Vec::new(),
                    mention_all: false,
                    attachments: Vec::new(),
                }));
                if inflight.len() >= 32 {
                    if let Some(f) = inflight.pop_front() {
                        f.await.expect("append");
                    }
                }
            }
            for f in inflight {
                f.await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = started.elapsed();
    let total = SENDERS * PER_SENDER;
    println!(
        "{total} appends from {SENDERS} pipelining senders in {:.2} s: {:.0} appends/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
