//! The PostgreSQL store through the `NotificationStore` port: targets, settings, the
//! feed, and the push queue, with two stores on one database standing for two nodes
//! where claiming must be shared.

mod support;

use parlor_core::model::*;
use parlor_core::notify::{
    Decisions, Mute, NewFeedItem, NewPush, PushContent, PushDone, PushReason, TargetAddress,
    MAX_TARGETS_PER_USER,
};
use parlor_core::ports::{NotificationStore, Store};
use parlor_proto::notify::NotificationKind;
use parlor_proto::{ErrorCode, Id};
use std::collections::{BTreeSet, HashMap, HashSet};
use support::*;

/// The clock the queue tests run on (pushes take their times from the caller).
const T: i64 = 1_700_000_000_000;
const LEASE: i64 = 30_000;

async fn user(store: &dyn Store, name: &str) -> Id {
    store
        .create_user(name, "hash")
        .await
        .expect("create user")
        .id
}

fn fcm(token: &str) -> TargetAddress {
    TargetAddress::Fcm {
        token: token.into(),
    }
}

fn msg(conv: Id, sender: Id, text: &str) -> NewMessage {
    NewMessage {
        conv,
        sender,
        cid: None,
        text: text.into(),
        reply_to: None,
        mentions: Vec::new(),
        mention_all: false,
        attachments: Vec::new(),
    }
}

fn push(user: Id, conv: Id, message: u64) -> NewPush {
    NewPush {
        user,
        content: PushContent {
            conv,
            seq: message,
            message: Id(message),
            sender: Id(1),
            reason: PushReason::Message,
            title: "alice in g".into(),
            body: format!("message {message}"),
            ts: T,
        },
    }
}

fn pushes(pushes: Vec<NewPush>) -> Decisions {
    Decisions {
        feed: Vec::new(),
        pushes,
    }
}

fn item(user: Id, message: u64, kind: NotificationKind) -> NewFeedItem {
    NewFeedItem {
        id: Id(message),
        user,
        kind,
        conv: Id(7),
        seq: message,
        message: Id(message),
        sender: Id(1),
        preview: format!("preview {message}"),
        ts: T + message as i64,
    }
}

fn code<T: std::fmt::Debug>(result: parlor_core::error::Result<T>) -> ErrorCode {
    result.expect_err("an error").code
}

/// How many queued pushes are in each state.
async fn states(db: &TestDb) -> HashMap<String, i64> {
    db.inspect()
        .await
        .query("SELECT state, count(*) FROM push_queue GROUP BY state", &[])
        .await
        .expect("count states")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_move_keep_their_id_and_are_limited_per_user() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let bob = user(&*s, "bob").await;

    let phone = s.register_target(alice, fcm("phone")).await.expect("phone");
    let web = s
        .register_target(
            alice,
            TargetAddress::WebPush {
                endpoint: "https://push.example/1".into(),
                p256dh: "key".into(),
                auth: "auth".into(),
            },
        )
        .await
        .expect("web");
    assert_eq!(phone.user, alice);
    let listed = s.targets(alice).await.expect("targets");
    assert_eq!(listed, vec![web.clone(), phone.clone()], "newest first");

    // The same browser subscribing again with new keys: same target, new keys.
    let renewed = TargetAddress::WebPush {
        endpoint: "https://push.example/1".into(),
        p256dh: "key2".into(),
        auth: "auth2".into(),
    };
    let again = s
        .register_target(alice, renewed.clone())
        .await
        .expect("again");
    assert_eq!((again.id, again.address.clone()), (web.id, renewed));
    assert_eq!(s.targets(alice).await.expect("targets").len(), 2);

    // The phone changes hands: it moves to bob with its id.
    let moved = s.register_target(bob, fcm("phone")).await.expect("moved");
    assert_eq!((moved.id, moved.user), (phone.id, bob));
    assert_eq!(s.targets(bob).await.expect("bob's"), vec![moved.clone()]);
    assert_eq!(
        s.targets(alice).await.expect("alice's"),
        vec![again.clone()]
    );

    // Removing someone else's target is refused; one's own goes.
    assert_eq!(
        code(s.remove_target(alice, moved.id).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(s.remove_target(alice, Id(999_999)).await),
        ErrorCode::NotFound
    );
    s.remove_target(bob, moved.id).await.expect("remove");
    assert!(s.targets(bob).await.expect("bob's").is_empty());

    // Pruning removes whoever owns it, and pruning again is no error.
    s.prune_target(again.id).await.expect("prune");
    s.prune_target(again.id).await.expect("prune again");
    assert!(s.targets(alice).await.expect("alice's").is_empty());

    // The limit: a new address past it is refused, a known one still moves in.
    for i in 0..MAX_TARGETS_PER_USER {
        s.register_target(alice, fcm(&format!("device {i}")))
            .await
            .expect("within the limit");
    }
    let refused = s
        .register_target(alice, fcm("one too many"))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code, ErrorCode::Conflict);
    assert!(refused.message.contains("20 push targets"), "{refused:?}");
    let again = s
        .register_target(alice, fcm("device 3"))
        .await
        .expect("known address");
    assert_eq!(again.user, alice);
    assert_eq!(
        s.targets(alice).await.expect("targets").len(),
        MAX_TARGETS_PER_USER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_changes_hands_loses_the_previous_owners_pushes() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let bob = user(&*s, "bob").await;
    s.register_target(alice, fcm("tablet"))
        .await
        .expect("alice");
    s.record(pushes(vec![push(alice, Id(7), 100)]), T)
        .await
        .expect("record");
    s.register_target(bob, fcm("tablet")).await.expect("bob");
    assert!(s
        .claim_pushes(T, LEASE, 10)
        .await
        .expect("claim")
        .is_empty());
    // Bob's own pushes reach it.
    s.record(pushes(vec![push(bob, Id(7), 101)]), T)
        .await
        .expect("record");
    let jobs = s.claim_pushes(T, LEASE, 10).await.expect("claim");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].target.user, jobs[0].content.message),
        (bob, Id(101))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_and_do_not_disturb_round_trip_and_mutes_need_membership() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let bob = user(&*s, "bob").await;
    let carol = user(&*s, "carol").await;
    let group = s
        .create_group(alice, "g", &[bob], 10)
        .await
        .expect("group")
        .id;

    assert_eq!(s.mute(alice, group).await.expect("mute"), None);
    let until = Mute {
        until: Some(T),
        mentions: true,
    };
    s.set_mute(alice, group, Some(until)).await.expect("mute");
    assert_eq!(s.mute(alice, group).await.expect("mute"), Some(until));
    let forever = Mute {
        until: None,
        mentions: false,
    };
    s.set_mute(alice, group, Some(forever)).await.expect("mute");
    assert_eq!(s.mute(alice, group).await.expect("mute"), Some(forever));
    assert_eq!(s.mute(bob, group).await.expect("bob"), None);
    s.set_mute(alice, group, None).await.expect("unmute");
    assert_eq!(s.mute(alice, group).await.expect("mute"), None);

    assert_eq!(
        code(s.set_mute(carol, group, Some(forever)).await),
        ErrorCode::NotMember
    );
    assert_eq!(
        code(s.set_mute(alice, Id(424_242), Some(forever)).await),
        ErrorCode::NotMember
    );
    s.change_membership(
        MembershipCommand::Leave {
            conv: group,
            user: bob,
        },
        10,
    )
    .await
    .expect("leave");
    assert_eq!(
        code(s.set_mute(bob, group, Some(forever)).await),
        ErrorCode::NotMember
    );

    assert_eq!(s.dnd(alice).await.expect("dnd"), None);
    s.set_dnd(alice, Some(None)).await.expect("dnd on");
    assert_eq!(s.dnd(alice).await.expect("dnd"), Some(None));
    s.set_dnd(alice, Some(Some(T))).await.expect("dnd until");
    assert_eq!(s.dnd(alice).await.expect("dnd"), Some(Some(T)));
    assert_eq!(s.dnd(bob).await.expect("bob"), None);
    s.set_dnd(alice, None).await.expect("dnd off");
    assert_eq!(s.dnd(alice).await.expect("dnd"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_in_the_order_asked() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let bob = user(&*s, "bob").await;
    let carol = user(&*s, "carol").await;
    let dave = user(&*s, "dave").await;
    let group = s
        .create_group(alice, "g", &[bob, carol, dave], 10)
        .await
        .expect("group")
        .id;
    let other = s
        .create_group(alice, "other", &[bob], 10)
        .await
        .expect("other")
        .id;
    let mute = Mute {
        until: None,
        mentions: true,
    };
    s.set_mute(alice, group, Some(mute)).await.expect("mute");
    s.set_mute(bob, other, Some(mute)).await.expect("other");
    s.set_dnd(bob, Some(Some(T))).await.expect("dnd");
    s.set_dnd(carol, Some(None)).await.expect("dnd");
    let until = Mute {
        until: Some(T),
        mentions: false,
    };
    s.set_mute(carol, group, Some(until)).await.expect("mute");

    let got = s
        .settings(group, &[carol, dave, alice, bob, alice])
        .await
        .expect("settings");
    assert_eq!(
        got,
        vec![
            (Some(until), Some(None)),
            (None, None),
            (Some(mute), None),
            (None, Some(Some(T))),
            (Some(mute), None),
        ]
    );
    assert!(s.settings(group, &[]).await.expect("none").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_is_idempotent_and_queues_one_push_per_target() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let bob = user(&*s, "bob").await;
    let carol = user(&*s, "carol").await;
    let phone = s.register_target(alice, fcm("a1")).await.expect("a1");
    let laptop = s.register_target(alice, fcm("a2")).await.expect("a2");
    let bobs = s.register_target(bob, fcm("b1")).await.expect("b1");

    let decisions = Decisions {
        feed: vec![
            item(bob, 100, NotificationKind::Mention),
            item(carol, 100, NotificationKind::Reply),
        ],
        // Carol has no target: her push queues nothing.
        pushes: vec![
            push(alice, Id(7), 100),
            push(bob, Id(7), 100),
            push(carol, Id(7), 100),
        ],
    };
    let new = s.record(decisions.clone(), T).await.expect("record");
    assert_eq!(new, decisions.feed);
    assert_eq!(
        s.record(decisions.clone(), T + 5).await.expect("again"),
        vec![]
    );
    assert_eq!(states(&db).await.get("pending"), Some(&3));
    assert_eq!(s.unread_notifications(bob).await.expect("bob"), 1);
    assert_eq!(s.unread_notifications(carol).await.expect("carol"), 1);

    // A redelivery together with something new returns only the new item.
    let mixed = Decisions {
        feed: vec![
            item(bob, 100, NotificationKind::Mention),
            item(bob, 101, NotificationKind::Mention),
            item(bob, 101, NotificationKind::Mention),
        ],
        pushes: vec![push(bob, Id(7), 100)],
    };
    assert_eq!(
        s.record(mixed, T).await.expect("mixed"),
        vec![item(bob, 101, NotificationKind::Mention)]
    );
    assert_eq!(s.unread_notifications(bob).await.expect("bob"), 2);
    assert_eq!(
        s.record(Decisions::default(), T).await.expect("nothing"),
        vec![]
    );

    let jobs = s.claim_pushes(T, LEASE, 10).await.expect("claim");
    let mut got: Vec<(Id, Id, u32)> = jobs
        .iter()
        .map(|j| (j.target.id, j.target.user, j.attempts))
        .collect();
    got.sort();
    let mut want = vec![
        (phone.id, alice, 0),
        (laptop.id, alice, 0),
        (bobs.id, bob, 0),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(jobs
        .iter()
        .all(|j| j.content == push(j.target.user, Id(7), 100).content));
    assert!(jobs.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_pages_newest_first_and_marks_read_by_ids_and_up_to() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let bob = user(&*s, "bob").await;
    let mut feed: Vec<NewFeedItem> = (101..=105)
        .map(|m| item(bob, m, NotificationKind::Mention))
        .collect();
    feed.push(item(alice, 200, NotificationKind::Reply));
    s.record(
        Decisions {
            feed,
            pushes: Vec::new(),
        },
        T,
    )
    .await
    .expect("record");

    let ids = |page: &[parlor_proto::notify::NotificationView]| -> Vec<u64> {
        page.iter().map(|n| n.id.0).collect()
    };
    let first = s.feed(bob, None, 2).await.expect("first");
    assert_eq!(ids(&first), vec![105, 104]);
    assert_eq!(first[0], item(bob, 105, NotificationKind::Mention).view());
    assert_eq!(
        ids(&s.feed(bob, Some(Id(104)), 2).await.expect("second")),
        vec![103, 102]
    );
    assert_eq!(
        ids(&s.feed(bob, Some(Id(102)), 10).await.expect("last")),
        vec![101]
    );
    assert_eq!(s.unread_notifications(bob).await.expect("unread"), 5);

    // Only bob's own unread items change: not alice's, not unknown ids.
    let changed = s
        .mark_notifications_read(bob, &[Id(102), Id(200), Id(999)], None)
        .await
        .expect("mark");
    assert_eq!(changed, vec![Id(102)]);
    assert_eq!(s.unread_notifications(bob).await.expect("unread"), 4);
    assert_eq!(s.unread_notifications(alice).await.expect("alice"), 1);

    let changed = s
        .mark_notifications_read(bob, &[Id(105)], Some(Id(103)))
        .await
        .expect("mark");
    assert_eq!(changed, vec![Id(101), Id(103), Id(105)]);
    assert_eq!(
        s.mark_notifications_read(bob, &[Id(105)], Some(Id(103)))
            .await
            .expect("again"),
        vec![]
    );
    assert_eq!(
        s.mark_notifications_read(bob, &[], None)
            .await
            .expect("nothing"),
        vec![]
    );
    assert_eq!(s.unread_notifications(bob).await.expect("unread"), 1);
    let read: Vec<(u64, bool)> = s
        .feed(bob, None, 10)
        .await
        .expect("feed")
        .iter()
        .map(|n| (n.id.0, n.read))
        .collect();
    assert_eq!(
        read,
        vec![
            (105, true),
            (104, false),
            (103, true),
            (102, true),
            (101, true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_messages_is_the_sum_of_the_conversation_list() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let bob = user(&*s, "bob").await;
    let carol = user(&*s, "carol").await;
    let group = s
        .create_group(alice, "g", &[bob, carol], 10)
        .await
        .expect("group")
        .id;
    let left = s
        .create_group(alice, "left", &[bob], 10)
        .await
        .expect("left")
        .id;
    let (direct, _) = s.open_direct(alice, bob).await.expect("direct");
    // Sending reads up to one's own message, so bob's comes first.
    s.append_message(msg(group, bob, "bob's own"))
        .await
        .expect("bob's message");
    for i in 0..3 {
        s.append_message(msg(group, alice, &format!("g{i}")))
            .await
            .expect("group message");
    }
    for i in 0..2 {
        s.append_message(msg(direct.id, alice, &format!("d{i}")))
            .await
            .expect("direct message");
    }
    s.append_message(msg(left, alice, "before leaving"))
        .await
        .expect("message");
    s.mark_read(bob, group, 2).await.expect("read");
    s.change_membership(
        MembershipCommand::Leave {
            conv: left,
            user: bob,
        },
        10,
    )
    .await
    .expect("leave");

    for viewer in [alice, bob, carol] {
        let listed: u64 = s
            .conversations(viewer)
            .await
            .expect("conversations")
            .iter()
            .map(|c| c.unread)
            .sum();
        assert_eq!(
            s.unread_messages(viewer).await.expect("unread"),
            listed,
            "viewer {viewer:?}"
        );
    }
    // Bob: two of the group's four, both direct ones, none of the group he left.
    assert_eq!(s.unread_messages(bob).await.expect("bob"), 4);
    assert_eq!(s.unread_messages(carol).await.expect("carol"), 4);
    assert_eq!(s.unread_messages(Id(424_242)).await.expect("nobody"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_collapse_each_target_and_conversation_to_the_newest_push() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let phone = s.register_target(alice, fcm("a1")).await.expect("a1");
    let laptop = s.register_target(alice, fcm("a2")).await.expect("a2");
    for m in 100..103 {
        s.record(pushes(vec![push(alice, Id(7), m)]), T)
            .await
            .expect("record");
    }
    s.record(pushes(vec![push(alice, Id(8), 103)]), T)
        .await
        .expect("other conversation");

    let jobs = s.claim_pushes(T, LEASE, 10).await.expect("claim");
    let got: BTreeSet<(Id, Id, u64)> = jobs
        .iter()
        .map(|j| (j.target.id, j.content.conv, j.content.message.0))
        .collect();
    let want: BTreeSet<(Id, Id, u64)> = [
        (phone.id, Id(7), 102),
        (laptop.id, Id(7), 102),
        (phone.id, Id(8), 103),
        (laptop.id, Id(8), 103),
    ]
    .into();
    assert_eq!(got, want);
    let counts = states(&db).await;
    assert_eq!(counts.get("superseded"), Some(&4), "{counts:?}");
    assert_eq!(counts.get("pending"), Some(&4), "{counts:?}");
    // Superseded pushes are never handed out, even once the leases ran out.
    for job in &jobs {
        s.finish_push(job.id, PushDone::Sent).await.expect("sent");
    }
    assert!(s
        .claim_pushes(T + 10 * LEASE, LEASE, 10)
        .await
        .expect("claim")
        .is_empty());

    // A newer push retires an older one waiting for its retry.
    s.record(pushes(vec![push(alice, Id(9), 200)]), T)
        .await
        .expect("record");
    let first = s.claim_pushes(T, LEASE, 10).await.expect("claim");
    assert_eq!(first.len(), 2);
    for job in &first {
        s.finish_push(job.id, PushDone::RetryAt(T + 60_000))
            .await
            .expect("retry");
    }
    s.record(pushes(vec![push(alice, Id(9), 201)]), T + 1)
        .await
        .expect("record");
    let second = s.claim_pushes(T + 1, LEASE, 10).await.expect("claim");
    assert_eq!(second.len(), 2);
    assert!(second.iter().all(|j| j.content.message == Id(201)));
    assert_eq!(states(&db).await.get("superseded"), Some(&6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_hands_the_same_push_out_again() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    s.register_target(alice, fcm("a1")).await.expect("a1");
    s.record(pushes(vec![push(alice, Id(7), 100)]), T)
        .await
        .expect("record");
    assert_eq!(s.next_push_due().await.expect("due"), Some(T));
    assert!(s
        .claim_pushes(T - 1, LEASE, 10)
        .await
        .expect("not due yet")
        .is_empty());

    let first = s.claim_pushes(T, LEASE, 10).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempts, 0);
    assert_eq!(s.next_push_due().await.expect("due"), Some(T + LEASE));
    assert!(s
        .claim_pushes(T + LEASE - 1, LEASE, 10)
        .await
        .expect("leased")
        .is_empty());

    let second = s.claim_pushes(T + LEASE, LEASE, 10).await.expect("claim");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].attempts, 1);
    assert_eq!(second[0].content, first[0].content);
    assert_eq!(second[0].target, first[0].target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_pushes_are_never_claimed_again_and_retries_wait_their_time() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    s.register_target(alice, fcm("a1")).await.expect("a1");
    assert_eq!(s.next_push_due().await.expect("empty"), None);
    s.record(
        pushes(vec![push(alice, Id(7), 100), push(alice, Id(8), 101)]),
        T,
    )
    .await
    .expect("record");
    let jobs = s.claim_pushes(T, LEASE, 10).await.expect("claim");
    assert_eq!(jobs.len(), 2);
    let (sent, retried) = (&jobs[0], &jobs[1]);
    s.finish_push(sent.id, PushDone::Sent).await.expect("sent");
    s.finish_push(retried.id, PushDone::RetryAt(T + 5_000))
        .await
        .expect("retry");
    assert_eq!(s.next_push_due().await.expect("due"), Some(T + 5_000));
    assert!(s
        .claim_pushes(T + 4_999, LEASE, 10)
        .await
        .expect("before the retry")
        .is_empty());
    let again = s.claim_pushes(T + 5_000, LEASE, 10).await.expect("retry");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (retried.id, 1));

    s.finish_push(retried.id, PushDone::Dropped)
        .await
        .expect("dropped");
    // A push whose row is gone (target pruned meanwhile) finishes quietly.
    s.finish_push(Id(987_654), PushDone::Sent)
        .await
        .expect("missing push");
    assert_eq!(s.next_push_due().await.expect("none pending"), None);
    assert!(s
        .claim_pushes(T + 100 * LEASE, LEASE, 10)
        .await
        .expect("nothing left")
        .is_empty());

    // Recording the same message again within a day queues nothing; after a day the
    // finished rows are cleaned up by a claim.
    s.record(
        pushes(vec![push(alice, Id(7), 100), push(alice, Id(8), 101)]),
        T + 1_000,
    )
    .await
    .expect("redelivery");
    assert_eq!(s.next_push_due().await.expect("still none"), None);
    s.claim_pushes(T + 24 * 3_600_000 + 1, LEASE, 10)
        .await
        .expect("claim");
    assert!(states(&db).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_claiming_at_once_never_share_a_push() {
    let db = TestDb::create().await;
    let (a, b) = tokio::join!(node(&db, "a"), node(&db, "b"));
    let mut newest = HashSet::new();
    let mut users = Vec::new();
    for u in 0..4 {
        let id = user(&*a.store, &format!("user{u}")).await;
        for t in 0..5 {
            a.store
                .register_target(id, fcm(&format!("u{u}t{t}")))
                .await
                .expect("target");
        }
        users.push(id);
    }
    // Two messages in each of 25 conversations for each user: the older one of each
    // (target, conversation) must be retired, the newer one handed out exactly once.
    for conv in 0..25u64 {
        for round in 0..2u64 {
            let message = 1_000 + conv * 2 + round;
            let decided: Vec<NewPush> = users
                .iter()
                .map(|u| push(*u, Id(conv + 1), message))
                .collect();
            a.store.record(pushes(decided), T).await.expect("record");
            if round == 1 {
                newest.insert(message);
            }
        }
    }

    let claim_all = |store: std::sync::Arc<parlor_postgres::PgStore>| async move {
        let mut claimed = Vec::new();
        loop {
            let jobs = store.claim_pushes(T, LEASE, 7).await.expect("claim");
            if jobs.is_empty() {
                return claimed;
            }
            claimed.extend(jobs);
        }
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(claim_all(a.store.clone())),
        tokio::spawn(claim_all(b.store.clone()))
    );
    let (from_a, from_b) = (from_a.expect("a"), from_b.expect("b"));
    let mut ids = HashSet::new();
    for job in from_a.iter().chain(&from_b) {
        assert!(ids.insert(job.id), "push {:?} handed out twice", job.id);
        assert!(newest.contains(&job.content.message.0), "{job:?}");
        assert_eq!(job.attempts, 0);
    }
    assert_eq!(ids.len(), 4 * 5 * 25);
    let pairs: HashSet<(Id, Id)> = from_a
        .iter()
        .chain(&from_b)
        .map(|j| (j.target.id, j.content.conv))
        .collect();
    assert_eq!(
        pairs.len(),
        ids.len(),
        "one push per (target, conversation)"
    );
    let counts = states(&db).await;
    assert_eq!(counts.get("superseded"), Some(&500), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_target_removes_its_queued_pushes() {
    let db = TestDb::create().await;
    let s = node(&db, "a").await.store;
    let alice = user(&*s, "alice").await;
    let phone = s.register_target(alice, fcm("a1")).await.expect("a1");
    let laptop = s.register_target(alice, fcm("a2")).await.expect("a2");
    let old = s.register_target(alice, fcm("a3")).await.expect("a3");
    s.record(pushes(vec![push(alice, Id(7), 100)]), T)
        .await
        .expect("record");
    // Pushes in every state go with their target.
    let jobs = s.claim_pushes(T, LEASE, 10).await.expect("claim");
    let sent = jobs
        .iter()
        .find(|j| j.target.id == old.id)
        .expect("a push for the old device");
    s.finish_push(sent.id, PushDone::Sent).await.expect("sent");
    s.record(pushes(vec![push(alice, Id(8), 101)]), T)
        .await
        .expect("record");

    s.remove_target(alice, laptop.id).await.expect("remove");
    s.prune_target(old.id).await.expect("prune");
    let left: Vec<i64> = db
        .inspect()
        .await
        .query("SELECT DISTINCT target_id FROM push_queue", &[])
        .await
        .expect("targets in the queue")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![phone.id.0 as i64]);
    let jobs = s.claim_pushes(T + LEASE, LEASE, 10).await.expect("claim");
    assert!(!jobs.is_empty());
    assert!(jobs.iter().all(|j| j.target.id == phone.id));
}
