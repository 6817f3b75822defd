//! The PostgreSQL store through the `Store` and `EventLog` ports, with two stores on one
//! database standing for two nodes of a cluster.

mod support;

use futures_util::StreamExt;
use parlor_core::model::*;
use parlor_core::ports::{EventLog, Store};
use parlor_proto::rest::Role;
use parlor_proto::ws::ServerFrame;
use parlor_proto::{ErrorCode, Id};
use std::collections::{BTreeSet, HashSet};
use support::*;

fn msg(conv: Id, sender: Id, cid: Option<String>, text: &str) -> NewMessage {
    NewMessage {
        conv,
        sender,
        cid,
        text: text.into(),
        reply_to: None,
        mentions: Vec::new(),
        mention_all: false,
        attachments: Vec::new(),
    }
}

async fn user(store: &dyn Store, name: &str) -> Id {
    store
        .create_user(name, "hash")
        .await
        .expect("create user")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_lease_different_machine_ids() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    assert_ne!(a.store.machine_id(), b.store.machine_id());
    // A released id is taken again by the next node.
    let released = a.store.machine_id();
    a.store.close().await;
    let c = node(&db, "c").await;
    assert_eq!(c.store.machine_id(), released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_two_nodes_are_gap_free_and_dense() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let alice = user(&*a.store, "alice").await;
    let bob = user(&*b.store, "bob").await;
    let group = a
        .store
        .create_group(alice, "g", &[bob], 100)
        .await
        .expect("group")
        .id;
    const N: usize = 300;
    let send = |store: std::sync::Arc<parlor_postgres::PgStore>, sender: Id, tag: &'static str| async move {
        // Pipelined: all queued first, then awaited, like a client's sends.
        let futures: Vec<_> = (0..N)
            .map(|i| {
                store.append_message(msg(
                    group,
                    sender,
                    Some(format!("{tag}{i}")),
                    &format!("{tag} {i}"),
                ))
            })
            .collect();
        let mut out = Vec::new();
        for f in futures {
            out.push(f.await.expect("append"));
        }
        out
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(send(a.store.clone(), alice, "a")),
        tokio::spawn(send(b.store.clone(), bob, "b"))
    );
    let (from_a, from_b) = (from_a.expect("task"), from_b.expect("task"));
    // Each node's sends keep their call order.
    for acks in [&from_a, &from_b] {
        assert!(acks
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].pos < w[1].pos));
        assert!(acks.iter().all(|a| !a.duplicate));
    }
    // seq 1..2N without gap, and seq order is position order.
    let mut all: Vec<Appended> = from_a.into_iter().chain(from_b).collect();
    all.sort_by_key(|a| a.seq);
    assert_eq!(
        all.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (1..=2 * N as u64).collect::<Vec<_>>()
    );
    assert!(all.windows(2).all(|w| w[0].pos < w[1].pos));
    // Positions are dense: the log holds 1..=head, each once.
    let head = Store::head(&*a.store).await.expect("head");
    let logged = a.store.events_after(0, 10_000).await.expect("log");
    assert_eq!(
        logged.iter().map(|e| e.pos).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    // What was published (by either node) is exactly what was logged.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut published: Vec<Event> = a.published.lock().clone();
    published.extend(b.published.lock().iter().cloned());
    published.sort_by_key(|e| e.pos);
    assert_eq!(published.len(), logged.len());
    for (p, l) in published.iter().zip(&logged) {
        assert_eq!(p.pos, l.pos);
        assert_eq!(p.frame, l.frame);
        assert_eq!(p.recipients, l.recipients);
    }
    // Each node published its own events in position order.
    for node in [&a, &b] {
        let positions: Vec<u64> = node.published.lock().iter().map(|e| e.pos).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
    }
    // History agrees.
    let history = b
        .store
        .history(alice, group, Page::Latest { limit: 200 })
        .await
        .expect("history");
    assert_eq!(history.messages.last().map(|m| m.seq), Some(2 * N as u64));
    assert!(history.has_more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_nodes_are_stored_once() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let alice = user(&*a.store, "alice").await;
    let bob = user(&*a.store, "bob").await;
    let (direct, _) = a.store.open_direct(alice, bob).await.expect("direct");
    let other = a
        .store
        .create_group(alice, "other", &[bob], 10)
        .await
        .expect("group");
    for round in 0..20 {
        let cid = Some(format!("retry-{round}"));
        let m = msg(direct.id, alice, cid.clone(), "hello");
        // The same send through both nodes at once, twice each, and once to another
        // conversation with the same client id.
        let futures = vec![
            a.store.append_message(m.clone()),
            b.store.append_message(m.clone()),
            a.store.append_message(m.clone()),
            b.store
                .append_message(msg(other.id, alice, cid, "hello elsewhere")),
            b.store.append_message(m),
        ];
        let acks: Vec<Appended> = futures_util::future::join_all(futures)
            .await
            .into_iter()
            .map(|r| r.expect("append"))
            .collect();
        assert_eq!(acks.iter().filter(|a| !a.duplicate).count(), 1, "{acks:?}");
        let first = acks.iter().find(|a| !a.duplicate).expect("original");
        for ack in &acks {
            assert_eq!(
                (ack.id, ack.conv, ack.seq, ack.pos),
                (first.id, first.conv, first.seq, first.pos)
            );
        }
    }
    let direct_last = a
        .store
        .conversation(alice, direct.id)
        .await
        .expect("detail")
        .last_seq;
    let other_last = a
        .store
        .conversation(alice, other.id)
        .await
        .expect("detail")
        .last_seq;
    assert_eq!(direct_last + other_last, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_and_live_events_meet_exactly_once() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let alice = user(&*a.store, "alice").await;
    let bob = user(&*a.store, "bob").await;
    let group = a
        .store
        .create_group(alice, "g", &[bob], 10)
        .await
        .expect("group")
        .id;
    let (direct, _) = a.store.open_direct(alice, bob).await.expect("direct");
    for i in 0..50 {
        a.store
            .append_message(msg(group, alice, None, &format!("before {i}")))
            .await
            .expect("append");
    }
    // Node b keeps appending while bob syncs through node a: what node b publishes
    // stands for the cluster bus, subscribed to before the backlog is read.
    let writer = {
        let store = b.store.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                let conv = if i % 2 == 0 { group } else { direct.id };
                store
                    .append_message(msg(conv, alice, None, &format!("during {i}")))
                    .await
                    .expect("append");
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let live_start = b.published.lock().len();
    let backlog = a.store.backlog(bob, 0, 64).await.expect("backlog");
    let head = backlog.head;
    let pages: Vec<Vec<Event>> = backlog.pages.map(|p| p.expect("page")).collect().await;
    writer.await.expect("writer");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let synced: Vec<u64> = pages.iter().flatten().map(|e| e.pos).collect();
    assert!(
        synced.windows(2).all(|w| w[0] < w[1]),
        "backlog in position order"
    );
    assert!(synced.iter().all(|&p| p <= head));
    let live: Vec<u64> = b.published.lock()[live_start..]
        .iter()
        .filter(|e| e.recipients.contains(&bob) && e.pos > head)
        .map(|e| e.pos)
        .collect();
    let seen: Vec<u64> = synced.iter().chain(&live).copied().collect();
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), unique.len(), "no event twice");
    // Everything bob may see: every logged event addressed to him.
    let expected: BTreeSet<u64> = a
        .store
        .events_after(0, 100_000)
        .await
        .expect("log")
        .iter()
        .filter(|e| e.recipients.contains(&bob))
        .map(|e| e.pos)
        .collect();
    assert_eq!(unique, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_edits_deletes_and_search() {
    let db = TestDb::create().await;
    let a = node(&db, "a").await;
    let s = &*a.store;
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let carol = user(s, "carol").await;
    assert_eq!(
        s.create_user("alice", "x").await.map_err(|e| e.code).err(),
        Some(ErrorCode::UsernameTaken)
    );
    let group = s
        .create_group(alice, "g", &[bob], 10)
        .await
        .expect("group")
        .id;
    s.change_membership(
        MembershipCommand::Add {
            actor: bob,
            conv: group,
            user: carol,
        },
        10,
    )
    .await
    .map_err(|e| e.code)
    .expect_err("members cannot add");
    s.change_membership(
        MembershipCommand::SetRole {
            actor: alice,
            conv: group,
            user: bob,
            role: Role::Admin,
        },
        10,
    )
    .await
    .expect("promote");
    s.change_membership(
        MembershipCommand::Add {
            actor: bob,
            conv: group,
            user: carol,
        },
        10,
    )
    .await
    .expect("admins add");
    let first = s
        .append_message(msg(group, carol, None, "我在東京都 with a Café"))
        .await
        .expect("append");
    let odd = "nul \u{0} inside, \u{7f} del, 'quotes' \\ and emoji 🎉";
    let kept = s
        .append_message(msg(group, bob, None, odd))
        .await
        .expect("append");
    let page = s
        .history(
            bob,
            group,
            Page::After {
                after: kept.seq - 1,
                limit: 1,
            },
        )
        .await
        .expect("history");
    assert_eq!(page.messages[0].text, odd);
    let second = s
        .append_message(msg(group, alice, None, "deployment on friday"))
        .await
        .expect("append");
    let query = |q: &str| SearchQuery {
        query: parlor_core::search::parse_query(q).expect("query"),
        conv: None,
        sender: None,
        from: None,
        to: None,
        offset: 0,
        limit: 20,
    };
    let hits = |r: parlor_proto::rest::SearchResults| {
        r.results.iter().map(|h| h.message.seq).collect::<Vec<_>>()
    };
    assert_eq!(
        hits(s.search(bob, query("東京")).await.expect("search")),
        vec![first.seq]
    );
    assert_eq!(
        hits(s.search(bob, query("cafe")).await.expect("search")),
        vec![first.seq]
    );
    assert_eq!(
        hits(s.search(bob, query("京")).await.expect("search")),
        vec![first.seq]
    );
    assert_eq!(
        hits(s.search(bob, query("deplo*")).await.expect("search")),
        vec![second.seq]
    );
    assert!(hits(s.search(bob, query("deplo")).await.expect("search")).is_empty());
    for nasty in ["x' & !'", "a:* | b", "\\' OR 1=1 --", "<-> (( !!", "'':*"] {
        if let Ok(q) = parlor_core::search::parse_query(nasty) {
            let r = s
                .search(
                    bob,
                    SearchQuery {
                        query: q,
                        ..query("x")
                    },
                )
                .await;
            assert!(
                r.is_ok() || r.as_ref().err().map(|e| e.code) == Some(ErrorCode::BadRequest),
                "{nasty}: {r:?}"
            );
        }
    }
    // Edit re-indexes; delete removes the text everywhere, including the event log.
    let edited = s
        .edit_message(alice, group, second.seq, "rollout on monday".into())
        .await
        .expect("edit");
    assert_eq!(edited.text, "rollout on monday");
    assert!(hits(s.search(bob, query("deployment")).await.expect("search")).is_empty());
    assert_eq!(
        hits(s.search(bob, query("monday")).await.expect("search")),
        vec![second.seq]
    );
    assert_eq!(
        s.edit_message(bob, group, second.seq, "no".into())
            .await
            .map_err(|e| e.code)
            .err(),
        Some(ErrorCode::Forbidden)
    );
    s.delete_message(bob, group, second.seq)
        .await
        .expect("admin deletes");
    assert!(hits(s.search(bob, query("monday")).await.expect("search")).is_empty());
    let log = s.events_after(0, 1000).await.expect("log");
    let text =
        serde_json::to_string(&log.iter().map(|e| &e.frame).collect::<Vec<_>>()).expect("json");
    assert!(
        !text.contains("monday") && !text.contains("deployment"),
        "{text}"
    );
    // Read markers and receipts.
    assert_eq!(s.mark_read(bob, group, 3).await.expect("read"), 3);
    assert_eq!(s.mark_read(bob, group, 1).await.expect("read"), 3);
    assert_eq!(
        s.mark_read(bob, group, 9).await.map_err(|e| e.code).err(),
        Some(ErrorCode::BadRequest)
    );
    let receipts = s.receipts(alice, group).await.expect("receipts");
    assert_eq!(receipts.last_seq, 3);
    // The owner leaves: the admin takes over; carol is removed and keeps old history.
    s.change_membership(
        MembershipCommand::Leave {
            conv: group,
            user: alice,
        },
        10,
    )
    .await
    .expect("leave");
    let detail = s.conversation(bob, group).await.expect("detail");
    assert_eq!(
        detail
            .members
            .iter()
            .find(|m| m.user.id == bob)
            .map(|m| m.role),
        Some(Role::Owner)
    );
    s.change_membership(
        MembershipCommand::Remove {
            actor: bob,
            conv: group,
            user: carol,
        },
        10,
    )
    .await
    .expect("remove");
    s.append_message(msg(group, bob, None, "after carol"))
        .await
        .expect("append");
    let history = s
        .history(carol, group, Page::Latest { limit: 10 })
        .await
        .expect("history");
    assert_eq!(
        history.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        s.append_message(msg(group, carol, None, "hi"))
            .await
            .map_err(|e| e.code)
            .err(),
        Some(ErrorCode::NotMember)
    );
    // Carol's backlog ends with her removal, which she receives.
    let backlog = s.backlog(carol, 0, 100).await.expect("backlog");
    let events: Vec<Event> = backlog
        .pages
        .map(|p| p.expect("page"))
        .collect::<Vec<_>>()
        .await
        .concat();
    let last = events.last().expect("events");
    assert!(matches!(&last.frame, ServerFrame::Member(m) if m.user == carol));
    assert!(s.conversations(carol).await.expect("list").is_empty());
    let convs = s.conversations(bob).await.expect("list");
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].last_seq, 4);
    let contacts: HashSet<Id> = s
        .contacts(bob)
        .await
        .expect("contacts")
        .into_iter()
        .collect();
    assert!(contacts.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_mid_append_answer_unavailable_then_recover() {
    let db = TestDb::create().await;
    let a = node(&db, "a").await;
    let alice = user(&*a.store, "alice").await;
    let bob = user(&*a.store, "bob").await;
    let (direct, _) = a.store.open_direct(alice, bob).await.expect("direct");
    let admin = db.inspect().await;
    let sender = {
        let store = a.store.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..400 {
                results.push(
                    store
                        .append_message(msg(direct.id, alice, Some(format!("k{i}")), "x"))
                        .await,
                );
            }
            results
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("terminate");
    let results = sender.await.expect("sender");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code, ErrorCode::Unavailable);
        }
    }
    // Everything acknowledged is stored; the store works again.
    let acked: Vec<&Appended> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let ok = a
        .store
        .append_message(msg(direct.id, alice, Some("after".into()), "back"))
        .await
        .expect("recovered");
    let history = a
        .store
        .history(alice, direct.id, Page::Latest { limit: 200 })
        .await
        .expect("history");
    assert_eq!(history.messages.last().map(|m| m.seq), Some(ok.seq));
    let stored: Vec<u64> = a
        .store
        .history(
            alice,
            direct.id,
            Page::After {
                after: 0,
                limit: 200,
            },
        )
        .await
        .expect("history")
        .messages
        .iter()
        .map(|m| m.seq)
        .collect();
    for ack in acked {
        assert!(stored.contains(&ack.seq) || ack.seq > 200);
    }
    // Retrying the failed ones with their client ids stores each once.
    for (i, r) in results.iter().enumerate() {
        if r.is_err() {
            a.store
                .append_message(msg(direct.id, alice, Some(format!("k{i}")), "x"))
                .await
                .expect("retry");
        }
    }
    let last = a
        .store
        .conversation(alice, direct.id)
        .await
        .expect("detail")
        .last_seq;
    assert_eq!(last, 401);
}
