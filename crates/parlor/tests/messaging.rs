//! Sending and delivery, end to end against the real binary: acknowledgements, fan-out to
//! every device, REST sends, idempotent retries, Snowflake ids, the size limit and the
//! ordering of concurrent pipelined senders in one group.

#![allow(clippy::unwrap_used)]

mod support;

use parlor_client::proto::rest::ConversationInfo;
use parlor_client::proto::ws::{Ack, MessageEvent, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use support::*;

async fn group(http: &parlor_client::Http, owner: &User, members: &[&User]) -> ConversationInfo {
    let ids: Vec<Id> = members.iter().map(|u| u.id).collect();
    http.create_group(&owner.token, "room", &ids)
        .await
        .expect("create group")
}

/// On the sending connection: the ack of `cid` and the message event it produced, in
/// whichever order they arrive (they travel separately: commit, and bus to hub to queue).
async fn ack_and_event(ws: &mut parlor_client::WsClient, cid: &str) -> (Ack, MessageEvent) {
    let mut ack = None;
    let mut event = None;
    while ack.is_none() || event.is_none() {
        match frame(ws).await {
            ServerFrame::Ack(a) if a.cid == cid => ack = Some(a),
            ServerFrame::Message(m) if m.message.cid.as_deref() == Some(cid) => event = Some(m),
            ServerFrame::Error(e) => panic!("unexpected error {e:?}"),
            _ => {}
        }
    }
    (ack.unwrap(), event.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_send_is_acknowledged_with_id_seq_pos_and_ts() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut ws, synced) = live(&server, &alice.token).await;

    let first = send(&mut ws, conv, "c-1", "hello").await;
    assert_eq!(first.cid, "c-1");
    assert_eq!(first.conv, conv);
    assert_eq!(first.seq, 1);
    assert!(first.id.0 > 0);
    assert!(
        first.pos > synced,
        "ack pos {:?} not after synced {synced:?}",
        first.pos
    );
    assert!(first.ts > 0);
    assert!(!first.duplicate);

    let second = send(&mut ws, conv, "c-2", "again").await;
    assert_eq!(second.seq, 2);
    assert!(second.pos > first.pos);
    assert!(second.id > first.id);
    assert!(second.ts >= first.ts);
    assert!(!second.duplicate);

    // The acknowledged message is what history holds.
    let history = http
        .history(&bob.token, conv, None, None, None)
        .await
        .unwrap();
    let stored: Vec<_> = history
        .messages
        .iter()
        .map(|m| {
            (
                m.id,
                m.seq,
                m.ts,
                m.sender,
                m.text.as_str(),
                m.cid.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        vec![
            (first.id, 1, first.ts, alice.id, "hello", Some("c-1")),
            (second.id, 2, second.ts, alice.id, "again", Some("c-2")),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_reaches_every_device_of_every_member_including_the_senders_other_device() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let carol = user(&http, "carol").await;
    let outsider = user(&http, "outsider").await;
    let room = group(&http, &alice, &[&bob, &carol]).await.id;
    let alice2 = second_device(&http, &alice, "alice phone").await;
    let bob2 = second_device(&http, &bob, "bob phone").await;

    let (mut a1, _) = live(&server, &alice.token).await;
    let (mut a2, _) = live(&server, &alice2).await;
    let (mut b1, _) = live(&server, &bob.token).await;
    let (mut b2, _) = live(&server, &bob2).await;
    let (mut c1, _) = live(&server, &carol.token).await;
    let (mut o1, _) = live(&server, &outsider.token).await;

    // On the sender's connection the message event may come before or after the ack.
    a1.send_message(room, "from-a1", "hi all").await.unwrap();
    let (acked, own) = ack_and_event(&mut a1, "from-a1").await;
    assert_eq!(own.message.id, acked.id);
    for (name, ws) in [
        ("alice device 2", &mut a2),
        ("bob device 1", &mut b1),
        ("bob device 2", &mut b2),
        ("carol", &mut c1),
    ] {
        let m = next_message_for(ws, name).await;
        assert_eq!(m.message.id, acked.id, "{name}");
        assert_eq!(m.message.conv, room, "{name}");
        assert_eq!(m.message.seq, acked.seq, "{name}");
        assert_eq!(m.pos, acked.pos, "{name}");
        assert_eq!(m.message.sender, alice.id, "{name}");
        assert_eq!(m.message.text, "hi all", "{name}");
        assert_eq!(m.message.cid.as_deref(), Some("from-a1"), "{name}");
    }

    // Device 2 sends too: device 1 receives it.
    let acked2 = send(&mut a2, room, "from-a2", "from my phone").await;
    let m = next_message(&mut a1).await;
    assert_eq!(m.message.id, acked2.id);

    // The outsider got nothing of the group: the first message it sees is a later one
    // in its own direct conversation.
    let direct = http
        .open_direct(&alice.token, outsider.id)
        .await
        .unwrap()
        .id;
    let marker = send(&mut a1, direct, "marker", "just for you").await;
    let m = next_message(&mut o1).await;
    assert_eq!(m.message.id, marker.id, "outsider received a group message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_connection_receives_its_own_message_event_as_well_as_the_ack() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut ws, _) = live(&server, &alice.token).await;

    ws.send_message(conv, "own", "echo me").await.unwrap();
    let (ack, event) = ack_and_event(&mut ws, "own").await;
    assert_eq!(event.message.id, ack.id);
    assert_eq!(event.message.seq, ack.seq);
    assert_eq!(event.pos, ack.pos);
    assert_eq!(event.message.ts, ack.ts);
    assert_eq!(event.message.sender, alice.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_send_is_delivered_live_to_websocket_clients() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let room = group(&http, &alice, &[&bob]).await.id;
    let (mut a, _) = live(&server, &alice.token).await;
    let (mut b, _) = live(&server, &bob.token).await;

    let acked = http
        .send(&alice.token, room, Some("rest-1"), "via REST")
        .await
        .unwrap();
    assert_eq!(acked.cid, "rest-1");
    assert_eq!(acked.seq, 1);
    assert!(!acked.duplicate);
    for ws in [&mut a, &mut b] {
        let m = next_message(ws).await;
        assert_eq!(m.message.id, acked.id);
        assert_eq!(m.pos, acked.pos);
        assert_eq!(m.message.text, "via REST");
        assert_eq!(m.message.cid.as_deref(), Some("rest-1"));
    }
}

/// Asserts that `conv` holds exactly the given cids, in this order, with seq 1..n.
async fn assert_history_cids(http: &parlor_client::Http, token: &str, conv: Id, cids: &[&str]) {
    let history = full_history(http, token, conv).await;
    let got: Vec<(u64, Option<&str>)> = history.iter().map(|m| (m.seq, m.cid.as_deref())).collect();
    let want: Vec<(u64, Option<&str>)> = cids
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u64 + 1, Some(*c)))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_ws_send_with_same_cid_returns_the_original_ack_and_stores_nothing_new() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&server, &alice.token).await;
    let (mut b, _) = live(&server, &bob.token).await;

    let original = send(&mut a, conv, "same", "first try").await;
    assert!(!original.duplicate);
    let retry = send(&mut a, conv, "same", "first try").await;
    assert!(retry.duplicate, "a retry must be flagged duplicate");
    assert_eq!(
        (retry.id, retry.seq, retry.pos, retry.ts, retry.conv),
        (
            original.id,
            original.seq,
            original.pos,
            original.ts,
            original.conv
        )
    );
    // A retry from another connection of the same user is the same send.
    let (mut a2, _) = live(&server, &alice.token).await;
    let retry2 = send(&mut a2, conv, "same", "first try").await;
    assert!(retry2.duplicate);
    assert_eq!(retry2.id, original.id);

    let next = send(&mut a, conv, "other", "second").await;
    assert_eq!(
        next.seq, 2,
        "the retries must not have used a sequence number"
    );

    // Bob saw the message once: the next message event after it is the next send.
    let got = messages(&mut b, 2).await;
    assert_eq!(got[0].message.id, original.id);
    assert_eq!(got[1].message.id, next.id);
    assert_history_cids(&http, &bob.token, conv, &["same", "other"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_send_is_deduplicated_after_a_long_delay_and_much_traffic() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&server, &alice.token).await;

    let original = send(&mut a, conv, "early", "before the pause").await;
    let filler: Vec<Outgoing> = (0..300)
        .map(|i| Outgoing {
            conv,
            cid: format!("filler-{i}"),
            text: format!("filler {i}"),
        })
        .collect();
    let mut seen = Vec::new();
    pipeline(&mut a, &filler, 64, &mut seen).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Reconnect, as a client that retries after a long outage would.
    drop(a);
    let (mut a, _) = live(&server, &alice.token).await;
    let retry = send(&mut a, conv, "early", "before the pause").await;
    assert!(retry.duplicate);
    assert_eq!(
        (retry.id, retry.seq, retry.pos),
        (original.id, 1, original.pos)
    );
    let last = send(&mut a, conv, "late", "after").await;
    assert_eq!(last.seq, 302);
    assert_eq!(full_history(&http, &bob.token, conv).await.len(), 302);
}

/// With the writer holding only 8 client ids in memory, most ids of 200 sends have moved
/// to the index table: a retry finds its original wherever the id is, after a graceful
/// restart (which indexes every id) and after the sender has left the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_find_their_original_in_memory_or_in_the_index_across_restart_and_leave() {
    let mut server = start(&[("PARLOR_LIMITS__PENDING_CLIENT_IDS", "8")]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let group = http
        .create_group(&alice.token, "room", &[bob.id])
        .await
        .unwrap()
        .id;
    let direct = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let sends: Vec<Outgoing> = (0..200)
        .map(|i| Outgoing {
            conv: if i % 2 == 0 { group } else { direct },
            cid: format!("m-{i:03}"),
            text: format!("message {i}"),
        })
        .collect();
    let (mut a, _) = live(&server, &alice.token).await;
    let mut seen = Vec::new();
    let originals = pipeline(&mut a, &sends, 32, &mut seen).await;
    let (mut b, _) = live(&server, &bob.token).await;
    let bobs = pipeline(
        &mut b,
        &[Outgoing {
            conv: group,
            cid: "m-000".into(),
            text: "the same cid from another sender is another message".into(),
        }],
        1,
        &mut seen,
    )
    .await;
    assert!(!bobs["m-000"].duplicate);

    let check = |acks: &HashMap<String, Ack>| {
        assert_eq!(acks.len(), sends.len());
        for (cid, ack) in acks {
            let original = &originals[cid];
            assert!(ack.duplicate, "{cid}");
            assert_eq!(
                (ack.id, ack.conv, ack.seq, ack.pos, ack.ts),
                (
                    original.id,
                    original.conv,
                    original.seq,
                    original.pos,
                    original.ts
                ),
                "{cid}"
            );
        }
    };
    // The oldest ids are in the table by now, the newest in memory.
    check(&pipeline(&mut a, &sends, 32, &mut seen).await);
    drop((a, b));

    server.send_sigterm().unwrap();
    tokio::task::block_in_place(|| server.wait_exit(WAIT)).unwrap();
    restart(&mut server);
    let http = server.http();
    let (mut a, _) = live(&server, &alice.token).await;
    check(&pipeline(&mut a, &sends, 32, &mut seen).await);

    http.leave(&alice.token, group).await.unwrap();
    let group_sends: Vec<Outgoing> = sends.iter().filter(|o| o.conv == group).cloned().collect();
    let after_leaving = pipeline(&mut a, &group_sends, 32, &mut seen).await;
    assert_eq!(after_leaving.len(), 100);
    assert!(after_leaving.values().all(|ack| ack.duplicate));

    assert_eq!(full_history(&http, &bob.token, group).await.len(), 101);
    assert_eq!(full_history(&http, &bob.token, direct).await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_send_is_deduplicated_after_a_server_restart() {
    let mut server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&server, &alice.token).await;
    let over_ws = send(&mut a, conv, "ws-cid", "sent over ws").await;
    let over_rest = http
        .send(&alice.token, conv, Some("rest-cid"), "sent over rest")
        .await
        .unwrap();
    drop(a);

    restart(&mut server);
    let http = server.http();
    let (mut a, _) = live(&server, &alice.token).await;
    let retry_ws = send(&mut a, conv, "ws-cid", "sent over ws").await;
    assert!(retry_ws.duplicate);
    assert_eq!(
        (retry_ws.id, retry_ws.seq, retry_ws.pos, retry_ws.ts),
        (over_ws.id, over_ws.seq, over_ws.pos, over_ws.ts)
    );
    let retry_rest = http
        .send(&alice.token, conv, Some("rest-cid"), "sent over rest")
        .await
        .unwrap();
    assert!(retry_rest.duplicate);
    assert_eq!(
        (retry_rest.id, retry_rest.seq, retry_rest.pos),
        (over_rest.id, over_rest.seq, over_rest.pos)
    );
    // Retrying the REST send over the WebSocket (and vice versa) is the same send too.
    let cross = send(&mut a, conv, "rest-cid", "sent over rest").await;
    assert!(cross.duplicate);
    assert_eq!(cross.id, over_rest.id);

    let fresh = send(&mut a, conv, "new-cid", "after restart").await;
    assert!(!fresh.duplicate);
    assert_eq!(fresh.seq, 3);
    assert!(
        fresh.id > over_rest.id,
        "ids keep increasing across a restart"
    );
    assert!(fresh.pos > over_rest.pos);
    assert_history_cids(&http, &bob.token, conv, &["ws-cid", "rest-cid", "new-cid"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_rest_send_with_same_cid_returns_the_original_ack() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let room = group(&http, &alice, &[&bob]).await.id;

    let original = http
        .send(&alice.token, room, Some("r1"), "hello")
        .await
        .unwrap();
    assert!(!original.duplicate);
    for _ in 0..3 {
        let retry = http
            .send(&alice.token, room, Some("r1"), "hello")
            .await
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(
            (retry.cid.as_str(), retry.id, retry.seq, retry.pos, retry.ts),
            ("r1", original.id, original.seq, original.pos, original.ts)
        );
    }
    // The same cid from another user is a different message.
    let bobs = http
        .send(&bob.token, room, Some("r1"), "hello")
        .await
        .unwrap();
    assert!(!bobs.duplicate);
    assert_eq!(bobs.seq, 2);
    let history = full_history(&http, &alice.token, room).await;
    assert_eq!(history.len(), 2);
    assert_eq!(
        history.iter().map(|m| m.sender).collect::<Vec<_>>(),
        vec![alice.id, bob.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_ids_increase_with_seq() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let other = group(&http, &alice, &[&bob]).await.id;
    let (mut a, _) = live(&server, &alice.token).await;

    // Two conversations interleaved: ids increase with seq in each, and with pos overall.
    let sends: Vec<Outgoing> = (0..400)
        .map(|i| Outgoing {
            conv: if i % 3 == 0 { other } else { conv },
            cid: format!("m{i}"),
            text: format!("message {i}"),
        })
        .collect();
    let mut seen = Vec::new();
    let acks = pipeline(&mut a, &sends, 100, &mut seen).await;
    let mut all: Vec<_> = acks.values().collect();
    all.sort_by_key(|a| a.pos);
    for pair in all.windows(2) {
        assert!(
            pair[0].id < pair[1].id,
            "id not increasing with pos: {pair:?}"
        );
    }
    for c in [conv, other] {
        let mut in_conv: Vec<_> = acks.values().filter(|a| a.conv == c).collect();
        in_conv.sort_by_key(|a| a.seq);
        let seqs: Vec<u64> = in_conv.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, (1..=in_conv.len() as u64).collect::<Vec<_>>());
        for pair in in_conv.windows(2) {
            assert!(
                pair[0].id < pair[1].id,
                "id not increasing with seq: {pair:?}"
            );
        }
        // History agrees.
        let history = full_history(&http, &bob.token, c).await;
        for pair in history.windows(2) {
            assert!(pair[0].id < pair[1].id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_of_exactly_16_kib_is_accepted_and_one_byte_more_is_message_too_large() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&server, &alice.token).await;
    const LIMIT: usize = 16 * 1024;

    let exact = "a".repeat(LIMIT);
    let ok = send(&mut a, conv, "exact", &exact).await;
    assert_eq!(ok.seq, 1);

    a.send_message(conv, "over", &"a".repeat(LIMIT + 1))
        .await
        .unwrap();
    let e = error_for(&mut a, "over").await;
    assert_eq!(e.code, ErrorCode::MessageTooLarge);

    // The limit counts bytes of UTF-8, not characters: 8,192 two-byte characters fit,
    // 8,192 plus one more byte do not.
    let two_byte = "é".repeat(LIMIT / 2);
    assert_eq!(two_byte.len(), LIMIT);
    let ok2 = send(&mut a, conv, "exact-utf8", &two_byte).await;
    assert_eq!(ok2.seq, 2);
    a.send_message(conv, "over-utf8", &format!("{two_byte}x"))
        .await
        .unwrap();
    assert_eq!(
        error_for(&mut a, "over-utf8").await.code,
        ErrorCode::MessageTooLarge
    );

    // REST applies the same limit.
    let rest_ok = http
        .send(&alice.token, conv, Some("rest-exact"), &exact)
        .await
        .unwrap();
    assert_eq!(rest_ok.seq, 3);
    let err = http
        .send(
            &alice.token,
            conv,
            Some("rest-over"),
            &"a".repeat(LIMIT + 1),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge));
    assert_eq!(err.status(), Some(413));

    // Nothing refused was stored; the accepted texts are stored whole.
    let history = full_history(&http, &bob.token, conv).await;
    let got: Vec<(Option<&str>, usize)> = history
        .iter()
        .map(|m| (m.cid.as_deref(), m.text.len()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("exact"), LIMIT),
            (Some("exact-utf8"), LIMIT),
            (Some("rest-exact"), LIMIT)
        ]
    );
    assert_eq!(history[1].text, two_byte);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_size_limit_is_configurable() {
    let server = start(&[("PARLOR_LIMITS__MAX_TEXT_BYTES", "10")]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&server, &alice.token).await;

    assert_eq!(send(&mut a, conv, "ten", "0123456789").await.seq, 1);
    a.send_message(conv, "eleven", "0123456789X").await.unwrap();
    assert_eq!(
        error_for(&mut a, "eleven").await.code,
        ErrorCode::MessageTooLarge
    );
    let err = http
        .send(&alice.token, conv, Some("rest-eleven"), "0123456789X")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MessageTooLarge));
    assert_history_cids(&http, &bob.token, conv, &["ten"]).await;
}

/// What one connection saw in the ordering test.
struct Seen {
    who: String,
    messages: Vec<MessageEvent>,
    acks: Vec<parlor_client::proto::ws::Ack>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelined_senders_are_delivered_to_every_member_as_seq_1_to_n_in_order() {
    const SENDERS: usize = 10;
    const PER_SENDER: usize = 200;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let server = start(&[]);
    let http = server.http();
    let senders = users(&http, "sender", SENDERS).await;
    let receivers = users(&http, "receiver", 2).await;
    let members: Vec<&User> = senders[1..].iter().chain(receivers.iter()).collect();
    let room = group(&http, &senders[0], &members).await.id;

    // Everyone connects (and is synced) before anyone sends.
    let start_line = Arc::new(tokio::sync::Barrier::new(SENDERS + receivers.len()));
    let mut tasks = Vec::new();
    for (i, u) in senders.iter().enumerate() {
        let (mut ws, _) = live(&server, &u.token).await;
        let start_line = Arc::clone(&start_line);
        let who = format!("sender {i}");
        tasks.push(tokio::spawn(async move {
            start_line.wait().await;
            // As fast as possible: every send written before reading any ack.
            for k in 0..PER_SENDER {
                ws.send_message(
                    room,
                    &format!("s{i}-{k:04}"),
                    &format!("sender {i} message {k}"),
                )
                .await
                .expect("send frame");
            }
            let mut seen = Seen {
                who,
                messages: Vec::new(),
                acks: Vec::new(),
            };
            while seen.messages.len() < TOTAL || seen.acks.len() < PER_SENDER {
                match frame(&mut ws).await {
                    ServerFrame::Message(m) => seen.messages.push(m),
                    ServerFrame::Ack(a) => seen.acks.push(a),
                    ServerFrame::Error(e) => panic!("{}: error {e:?}", seen.who),
                    _ => {}
                }
            }
            seen
        }));
    }
    for (i, u) in receivers.iter().enumerate() {
        let (mut ws, _) = live(&server, &u.token).await;
        let start_line = Arc::clone(&start_line);
        let who = format!("receiver {i}");
        tasks.push(tokio::spawn(async move {
            start_line.wait().await;
            let mut seen = Seen {
                who,
                messages: Vec::new(),
                acks: Vec::new(),
            };
            while seen.messages.len() < TOTAL {
                match frame(&mut ws).await {
                    ServerFrame::Message(m) => seen.messages.push(m),
                    ServerFrame::Error(e) => panic!("{}: error {e:?}", seen.who),
                    _ => {}
                }
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("connection task"));
    }

    let sender_index: HashMap<Id, usize> =
        senders.iter().enumerate().map(|(i, u)| (u.id, i)).collect();
    let reference: Vec<Id> = all[0].messages.iter().map(|m| m.message.id).collect();
    for seen in &all {
        let who = &seen.who;
        let seqs: Vec<u64> = seen.messages.iter().map(|m| m.message.seq).collect();
        assert_eq!(
            seqs,
            (1..=TOTAL as u64).collect::<Vec<_>>(),
            "{who}: not seq 1..{TOTAL} in order"
        );
        let ids: HashSet<Id> = seen.messages.iter().map(|m| m.message.id).collect();
        assert_eq!(ids.len(), TOTAL, "{who}: duplicate message ids");
        assert!(
            seen.messages.iter().all(|m| m.message.conv == room),
            "{who}"
        );
        for pair in seen.messages.windows(2) {
            assert!(pair[0].pos < pair[1].pos, "{who}: pos not increasing");
        }
        // Every member saw the same stream.
        let stream: Vec<Id> = seen.messages.iter().map(|m| m.message.id).collect();
        assert_eq!(
            stream, reference,
            "{who}: different order than {}",
            all[0].who
        );
        // Each sender's messages keep their send order, with the right text.
        let mut next_k = vec![0usize; SENDERS];
        for m in &seen.messages {
            let i = sender_index[&m.message.sender];
            let k = next_k[i];
            assert_eq!(
                m.message.cid.as_deref(),
                Some(format!("s{i}-{k:04}").as_str()),
                "{who}"
            );
            assert_eq!(m.message.text, format!("sender {i} message {k}"), "{who}");
            next_k[i] += 1;
        }
        assert_eq!(next_k, vec![PER_SENDER; SENDERS], "{who}");
    }
    // Acks match what was delivered, and seqs follow each sender's send order.
    let by_cid: HashMap<&str, &MessageEvent> = all[0]
        .messages
        .iter()
        .map(|m| (m.message.cid.as_deref().unwrap(), m))
        .collect();
    for seen in all.iter().take(SENDERS) {
        assert_eq!(seen.acks.len(), PER_SENDER, "{}", seen.who);
        let mut acks = seen.acks.clone();
        acks.sort_by(|a, b| a.cid.cmp(&b.cid));
        for pair in acks.windows(2) {
            assert!(
                pair[0].seq < pair[1].seq,
                "{}: ack seqs out of send order",
                seen.who
            );
        }
        for a in &acks {
            let m = by_cid[a.cid.as_str()];
            assert!(!a.duplicate);
            assert_eq!(
                (a.id, a.seq, a.pos, a.ts),
                (m.message.id, m.message.seq, m.pos, m.message.ts)
            );
        }
    }
    assert_eq!(
        full_history(&http, &receivers[0].token, room).await.len(),
        TOTAL
    );
}
