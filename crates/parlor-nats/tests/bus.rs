//! The bus against a real NATS server with mutual TLS: events published by two nodes in
//! the wrong order, and events never published at all, reach a subscriber exactly once
//! and in position order; durable work outlives the node that took it.

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use parlor_core::error::Result;
use parlor_core::model::Event;
use parlor_core::ports::{Bus, EventLog};
use parlor_nats::{NatsBus, NatsOptions, TlsFiles};
use parlor_proto::ws::{ReadEvent, ServerFrame};
use parlor_proto::Id;
use parlor_testkit::engines::{Certs, NatsCluster};
use std::sync::Arc;
use std::time::Duration;

/// A store's event log in memory: what was committed, by position.
#[derive(Default)]
struct MemoryLog {
    events: Mutex<Vec<Event>>,
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>> {
        let events = self.events.lock();
        Ok(events
            .iter()
            .filter(|e| e.pos > after)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn head(&self) -> Result<u64> {
        Ok(self.events.lock().last().map_or(0, |e| e.pos))
    }
}

fn event(pos: u64) -> Event {
    Event {
        pos,
        recipients: vec![Id(1)].into(),
        frame: ServerFrame::Read(ReadEvent {
            pos: Id(pos),
            conv: Id(pos % 7),
            user: Id(1),
            seq: pos,
        }),
    }
}

async fn node(
    nats: &NatsCluster,
    certs: &parlor_testkit::engines::CertFiles,
    name: &str,
    namespace: &str,
) -> Arc<NatsBus> {
    NatsBus::connect(NatsOptions {
        url: nats.urls(),
        namespace: namespace.into(),
        tls: Some(TlsFiles {
            ca_file: certs.ca_file.clone(),
            cert_file: Some(certs.client_cert_file.clone()),
            key_file: Some(certs.client_key_file.clone()),
        }),
        replicas: 0,
        node_name: name.into(),
    })
    .await
    .expect("connect to nats")
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_and_unpublished_events_arrive_in_order_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = Certs::get()
        .and_then(|c| c.write_to(dir.path()))
        .expect("certificates");
    let nats = NatsCluster::launch(1, &certs).expect("nats-server");
    let log = Arc::new(MemoryLog::default());
    let a = node(&nats, &certs, "a", "ordering").await;
    let b = node(&nats, &certs, "b", "ordering").await;
    a.attach_log(log.clone());
    b.attach_log(log.clone());
    let mut received = a.subscribe();
    // Let the subscriber create its consumer; anything it would miss is a gap anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;

    const N: u64 = 300;
    let mut pos = 1;
    while pos <= N {
        // Commit two events, publish them from two nodes in the wrong order; every 50th
        // is committed but never published (its node "died" after the commit).
        let first = event(pos);
        let second = event(pos + 1);
        log.events.lock().extend([first.clone(), second.clone()]);
        if pos % 50 != 1 {
            b.publish(vec![second].into());
            a.publish(vec![first].into());
        } else {
            b.publish(vec![second].into());
        }
        pos += 2;
    }
    // The very last event is never published either: only the head poll finds it.
    log.events.lock().push(event(N + 1));

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < (N + 1) as usize {
        let batch = tokio::time::timeout_at(deadline, received.next())
            .await
            .expect("every event within 20 s")
            .expect("subscription open");
        seen.extend(batch.iter().map(|e| e.pos));
    }
    let expected: Vec<u64> = (1..=N + 1).collect();
    assert_eq!(seen, expected, "dense, ordered, exactly once");
    assert!(
        a.stats().snapshot()[2] >= 7,
        "the unpublished events came from the log: {:?}",
        a.stats().snapshot()
    );
    // Nothing more arrives: no duplicates after the fact.
    let extra = tokio::time::timeout(Duration::from_millis(1500), received.next()).await;
    assert!(extra.is_err(), "unexpected extra events");
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_work_survives_a_node_that_took_it_and_died() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = Certs::get()
        .and_then(|c| c.write_to(dir.path()))
        .expect("certificates");
    let nats = NatsCluster::launch(1, &certs).expect("nats-server");
    let log = Arc::new(MemoryLog::default());
    let a = node(&nats, &certs, "a", "work").await;
    let b = node(&nats, &certs, "b", "work").await;
    a.attach_log(log.clone());
    b.attach_log(log.clone());
    // Node a's live subscriber is what notices and repairs the unpublished event.
    let _live = a.subscribe();
    let mut queue_a = a
        .work_queue("notify", Duration::from_secs(1))
        .await
        .expect("bind on a");
    let mut queue_b = b
        .work_queue("notify", Duration::from_secs(1))
        .await
        .expect("bind on b");
    tokio::time::sleep(Duration::from_millis(300)).await;

    const N: u64 = 60;
    for pos in 1..=N {
        let e = event(pos);
        log.events.lock().push(e.clone());
        // Event 30's node died between commit and publish.
        if pos != 30 {
            let from = if pos % 2 == 0 { &a } else { &b };
            from.publish(vec![e].into());
        }
    }

    // Node a takes some work and dies before acknowledging it.
    let taken = tokio::time::timeout(Duration::from_secs(10), queue_a.next())
        .await
        .expect("work for a")
        .expect("queue open")
        .expect("work");
    assert!(!taken.events.is_empty());
    drop(taken);
    drop(queue_a);

    // Node b ends up with every event at least once: a's unacknowledged work comes back
    // after ack_wait, and the unpublished event arrives through the repair.
    let mut done = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done.len() < N as usize {
        let work = tokio::time::timeout_at(deadline, queue_b.next())
            .await
            .unwrap_or_else(|_| panic!("missing work: have {} of {N}", done.len()))
            .expect("queue open")
            .expect("work");
        done.extend(work.events.iter().map(|e| e.pos));
        work.ack().await.expect("ack");
    }
    assert_eq!(done, (1..=N).collect());
}
