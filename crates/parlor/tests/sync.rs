//! Offline delivery and the sync protocol: `hello.since`, the backlog, `synced`, the seam
//! between backlog and live events, membership changes while offline, and a slow
//! consumer whose queue overflows.

#![allow(clippy::unwrap_used)]

mod support;

use parlor_client::proto::ws::{MemberChange, MessageEvent, ServerFrame};
use parlor_client::proto::Id;
use parlor_client::WsClient;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// The message events of a backlog, which must hold no other state event.
fn only_messages(frames: &[ServerFrame]) -> Vec<MessageEvent> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m.clone()),
            ServerFrame::Member(_) | ServerFrame::Read(_) | ServerFrame::Error(_) => {
                panic!("expected only message events, got {f:?}")
            }
            _ => None,
        })
        .collect()
}

/// The state events (messages, membership, read markers) of a backlog.
fn state_events(frames: Vec<ServerFrame>) -> Vec<ServerFrame> {
    frames.into_iter().filter(is_state_event).collect()
}

/// Per conversation, the seqs must be strictly consecutive from `first[conv]` on.
fn assert_consecutive(stream: &[MessageEvent], first: &HashMap<Id, u64>, what: &str) {
    let mut expect: HashMap<Id, u64> = first.clone();
    for m in stream {
        let want = expect.entry(m.message.conv).or_insert(1);
        assert_eq!(
            m.message.seq,
            *want,
            "{what}: conversation {} jumped from seq {} to {}",
            m.message.conv,
            *want - 1,
            m.message.seq
        );
        *want += 1;
    }
}

fn assert_pos_increasing(stream: &[MessageEvent], what: &str) {
    for pair in stream.windows(2) {
        assert!(
            pair[0].pos < pair[1].pos,
            "{what}: pos {} then {}",
            pair[0].pos,
            pair[1].pos
        );
    }
}

/// How a background sender paces itself.
struct Pace {
    /// Sends per pipelined window.
    window: usize,
    /// Keep sending at least this many, even when told to stop.
    min: usize,
    /// Pause between windows.
    pause: Duration,
}

/// Sends round-robin over `convs` in windows until `stop` is set (and at least
/// `pace.min` were sent); signals `started` after the first window; returns every ack.
async fn background_sender(
    mut ws: WsClient,
    convs: Vec<Id>,
    pace: Pace,
    started: tokio::sync::oneshot::Sender<()>,
    stop: Arc<AtomicBool>,
) -> Vec<parlor_client::proto::ws::Ack> {
    let Pace { window, min, pause } = pace;
    let prefix = "bg";
    let mut started = Some(started);
    let mut acks = Vec::new();
    let mut n = 0;
    while acks.len() < min || !stop.load(Ordering::Acquire) {
        let batch: Vec<Outgoing> = (0..window)
            .map(|i| Outgoing {
                conv: convs[(n + i) % convs.len()],
                cid: format!("{prefix}-{}", n + i),
                text: format!("{prefix} live {}", n + i),
            })
            .collect();
        n += window;
        let mut seen = Vec::new();
        acks.extend(
            pipeline(&mut ws, &batch, window, &mut seen)
                .await
                .into_values(),
        );
        if let Some(tx) = started.take() {
            let _ = tx.send(());
        }
        // Spread the sends out so that some land during the reconnecting client's sync.
        tokio::time::sleep(pause).await;
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_user_gets_5000_missed_messages_then_synced_then_live_without_gap_or_duplicate() {
    const CONVS: usize = 20;
    const SENDERS: usize = 4;
    const MISSED: usize = 5000;
    let server = start(&[]);
    let http = server.http();
    let reader = user(&http, "reader").await;
    let senders = users(&http, "sender", SENDERS).await;
    // Conversation j belongs to sender j % SENDERS and has the reader as the other member.
    let mut convs = Vec::new();
    for j in 0..CONVS {
        let owner = &senders[j % SENDERS];
        let info = http
            .create_group(&owner.token, &format!("room {j}"), &[reader.id])
            .await
            .unwrap();
        convs.push(info.id);
    }

    // The reader is online once, remembers the position of its last `synced`, goes away.
    let (mut ws, last_synced) = live(&server, &reader.token).await;
    ws.close().await.unwrap();
    drop(ws);

    // 5,000 messages in 20 conversations from 4 concurrent pipelining connections.
    let mut tasks = Vec::new();
    for (s, sender) in senders.iter().enumerate() {
        let (mut ws, _) = live(&server, &sender.token).await;
        let mine: Vec<Id> = (0..CONVS)
            .filter(|j| j % SENDERS == s)
            .map(|j| convs[j])
            .collect();
        let sends: Vec<Outgoing> = (0..MISSED / SENDERS)
            .map(|k| Outgoing {
                conv: mine[k % mine.len()],
                cid: format!("off-{s}-{k}"),
                text: format!("offline {s}/{k}"),
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            pipeline(&mut ws, &sends, 100, &mut seen).await
        }));
    }
    let mut missed: HashMap<Id, parlor_client::proto::ws::Ack> = HashMap::new();
    for t in tasks {
        for (_, a) in t.await.unwrap() {
            missed.insert(a.id, a);
        }
    }
    assert_eq!(missed.len(), MISSED);

    // A sender keeps going while the reader reconnects, so that messages are committed
    // before, during and after the reader's sync.
    let (bg_ws, _) = live(&server, &senders[0].token).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let sender0_convs: Vec<Id> = (0..CONVS)
        .filter(|j| j % SENDERS == 0)
        .map(|j| convs[j])
        .collect();
    let bg = tokio::spawn(background_sender(
        bg_ws,
        sender0_convs,
        Pace {
            window: 10,
            min: 100,
            pause: Duration::from_millis(5),
        },
        started_tx,
        Arc::clone(&stop),
    ));
    started_rx.await.unwrap();

    let (mut ws, backlog, synced) = connect(&server, &reader.token, Some(last_synced)).await;
    let backlog = only_messages(&backlog);
    assert!(
        backlog.len() >= MISSED,
        "backlog has only {} messages",
        backlog.len()
    );
    let backlog_ids: HashSet<Id> = backlog.iter().map(|m| m.message.id).collect();
    assert_eq!(
        backlog_ids.len(),
        backlog.len(),
        "duplicates in the backlog"
    );
    for id in missed.keys() {
        assert!(
            backlog_ids.contains(id),
            "missed message {id} not in the backlog"
        );
    }
    // Everything in the backlog beyond the 5,000 is from the background sender.
    for m in &backlog {
        let cid = m.message.cid.as_deref().unwrap();
        assert!(
            missed.contains_key(&m.message.id) || cid.starts_with("bg-"),
            "{cid}"
        );
        if let Some(a) = missed.get(&m.message.id) {
            assert_eq!(
                (m.message.seq, m.pos, m.message.conv),
                (a.seq, a.pos, a.conv)
            );
        }
    }
    assert!(backlog
        .iter()
        .all(|m| m.pos > last_synced && m.pos <= synced));
    assert_pos_increasing(&backlog, "backlog");
    assert_consecutive(&backlog, &HashMap::new(), "backlog");

    // Live events after `synced`: read some, then let the sender finish and read the rest.
    let mut live_msgs = messages(&mut ws, 20).await;
    stop.store(true, Ordering::Release);
    let bg_acks = bg.await.unwrap();
    let mut marker_ws = live(&server, &senders[1].token).await.0;
    let marker = send(&mut marker_ws, convs[1], "marker", "the end").await;
    live_msgs.extend(messages_until(&mut ws, "marker").await);
    assert!(
        live_msgs.iter().all(|m| m.pos > synced),
        "live event at or before synced"
    );

    let stream: Vec<MessageEvent> = backlog.iter().chain(live_msgs.iter()).cloned().collect();
    assert_pos_increasing(&stream, "backlog + live");
    assert_consecutive(&stream, &HashMap::new(), "backlog + live");
    let got: Vec<Id> = stream.iter().map(|m| m.message.id).collect();
    let got_set: HashSet<Id> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "a message arrived twice");
    let mut want: HashSet<Id> = missed.keys().copied().collect();
    want.extend(bg_acks.iter().map(|a| a.id));
    want.insert(marker.id);
    assert_eq!(got_set, want, "backlog + live is not exactly every message");
    // The seam was exercised: background messages on both sides of `synced`.
    let bg_in_backlog = backlog.len() - MISSED;
    let bg_live = live_msgs.len() - 1;
    assert!(
        bg_live >= 20,
        "only {bg_live} background messages arrived live"
    );
    eprintln!("seam: {bg_in_backlog} background messages in the backlog, {bg_live} live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_added_while_offline_gets_the_member_added_event_on_reconnect() {
    let server = start(&[]);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let late = user(&http, "late").await;
    let (mut ws, last_synced) = live(&server, &late.token).await;
    ws.close().await.unwrap();

    let room = http.create_group(&owner.token, "club", &[]).await.unwrap();
    let before = http
        .send(&owner.token, room.id, Some("before"), "before you")
        .await
        .unwrap();
    http.add_member(&owner.token, room.id, late.id)
        .await
        .unwrap();
    let after = http
        .send(&owner.token, room.id, Some("after"), "welcome")
        .await
        .unwrap();

    let (_ws, backlog, synced) = connect(&server, &late.token, Some(last_synced)).await;
    let backlog = state_events(backlog);
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    match &backlog[0] {
        ServerFrame::Member(e) => {
            assert_eq!(e.change, MemberChange::Added);
            assert_eq!((e.conv, e.user, e.by), (room.id, late.id, owner.id));
            assert_eq!(e.conversation, room);
            assert!(e.pos > before.pos && e.pos < after.pos);
        }
        other => panic!("expected the member event first, got {other:?}"),
    }
    match &backlog[1] {
        ServerFrame::Message(m) => {
            assert_eq!(
                (m.message.id, m.message.seq, m.pos),
                (after.id, 2, after.pos)
            );
        }
        other => panic!("expected the message after joining, got {other:?}"),
    }
    assert!(synced >= after.pos);
    // What was said before joining is history, not backlog.
    let history = full_history(&http, &late.token, room.id).await;
    assert_eq!(
        history.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![before.id, after.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_removed_while_offline_gets_the_removed_event_and_no_later_messages() {
    let server = start(&[]);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let stays = user(&http, "stays").await;
    let gone = user(&http, "gone").await;
    let room = http
        .create_group(&owner.token, "club", &[stays.id, gone.id])
        .await
        .unwrap()
        .id;
    let direct = http.open_direct(&owner.token, gone.id).await.unwrap().id;
    let (mut ws, last_synced) = live(&server, &gone.token).await;
    ws.close().await.unwrap();

    let m1 = http
        .send(&owner.token, room, Some("m1"), "still here")
        .await
        .unwrap();
    http.remove_member(&owner.token, room, gone.id)
        .await
        .unwrap();
    let m2 = http
        .send(&owner.token, room, Some("m2"), "after removal")
        .await
        .unwrap();
    http.send(&stays.token, room, Some("m3"), "also after")
        .await
        .unwrap();

    let (mut ws, backlog, _) = connect(&server, &gone.token, Some(last_synced)).await;
    let backlog = state_events(backlog);
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    match &backlog[0] {
        ServerFrame::Message(m) => assert_eq!(m.message.id, m1.id),
        other => panic!("expected m1, got {other:?}"),
    }
    match &backlog[1] {
        ServerFrame::Member(e) => {
            assert_eq!(e.change, MemberChange::Removed);
            assert_eq!((e.conv, e.user, e.by), (room, gone.id, owner.id));
            assert!(e.role.is_none());
            assert!(e.pos > m1.pos && e.pos < m2.pos);
        }
        other => panic!("expected the removal, got {other:?}"),
    }

    // Live, too, nothing of the group reaches them: the next message they get is the
    // marker in their direct conversation, sent after another group message.
    http.send(&owner.token, room, Some("m4"), "still not for you")
        .await
        .unwrap();
    let marker = http
        .send(&owner.token, direct, Some("marker"), "hi")
        .await
        .unwrap();
    let m = next_message(&mut ws).await;
    assert_eq!(m.message.id, marker.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_since_in_the_middle_receives_exactly_what_came_after() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let direct = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let room = http
        .create_group(&alice.token, "room", &[bob.id])
        .await
        .unwrap()
        .id;
    let (mut b, _) = live(&server, &bob.token).await;
    let (mut a, _) = live(&server, &alice.token).await;
    let sends: Vec<Outgoing> = (0..40)
        .map(|i| Outgoing {
            conv: if i % 2 == 0 { direct } else { room },
            cid: format!("m{i}"),
            text: format!("message {i}"),
        })
        .collect();
    let mut seen = Vec::new();
    pipeline(&mut a, &sends, 40, &mut seen).await;
    let received = messages(&mut b, 40).await;
    drop(b);

    let middle = &received[17];
    let (_b, backlog, synced) = connect(&server, &bob.token, Some(middle.pos)).await;
    let backlog = only_messages(&backlog);
    assert_eq!(
        backlog.iter().map(|m| m.message.id).collect::<Vec<_>>(),
        received[18..]
            .iter()
            .map(|m| m.message.id)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        backlog,
        received[18..].to_vec(),
        "replayed events differ from the live ones"
    );
    assert_eq!(synced, received[39].pos);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_since_gets_only_synced_then_live_events() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let mut last = None;
    for i in 0..30 {
        last = Some(
            http.send(&alice.token, conv, Some(&format!("old{i}")), "old")
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();

    let mut ws = server.ws(&bob.token, None).await.unwrap();
    let (before, pos) = ws.wait_synced(WAIT).await.unwrap();
    assert!(
        !before.iter().any(is_state_event),
        "state events before synced: {before:?}"
    );
    assert!(pos >= last.pos, "synced {pos} before {}", last.pos);
    let fresh = http
        .send(&alice.token, conv, Some("new"), "new")
        .await
        .unwrap();
    // The first message after `synced` is the new one: none of the old ones.
    assert_eq!(next_message(&mut ws).await.message.id, fresh.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_gets_every_message_in_order_once_it_reads_again() {
    const TOTAL: usize = 2000;
    let server = start(&[("PARLOR_WS__OUTBOX", "8")]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let slow = user(&http, "slow").await;
    let rooms: Vec<Id> = vec![
        http.create_group(&alice.token, "a", &[slow.id])
            .await
            .unwrap()
            .id,
        http.create_group(&alice.token, "b", &[slow.id])
            .await
            .unwrap()
            .id,
    ];
    let (mut slow_ws, synced) = live(&server, &slow.token).await;
    let overflows_before = metric(&http, "parlor_outbox_overflows_total").await;

    // Heavy traffic while the slow connection reads nothing: big messages fill the
    // socket buffers, the connection's 8-event queue overflows.
    let (mut a, _) = live(&server, &alice.token).await;
    let filler = "x".repeat(1500);
    let sends: Vec<Outgoing> = (0..TOTAL)
        .map(|i| Outgoing {
            conv: rooms[i % 2],
            cid: format!("m{i:05}"),
            text: format!("{i} {filler}"),
        })
        .collect();
    let mut seen = Vec::new();
    let acks = pipeline(&mut a, &sends, 100, &mut seen).await;
    let overflows = metric(&http, "parlor_outbox_overflows_total").await;
    assert!(
        overflows > overflows_before,
        "the slow connection's queue never overflowed"
    );

    let got = messages(&mut slow_ws, TOTAL).await;
    assert!(got.iter().all(|m| m.pos > synced));
    assert_pos_increasing(&got, "slow consumer");
    assert_consecutive(&got, &HashMap::new(), "slow consumer");
    let by_pos: BTreeMap<Id, &parlor_client::proto::ws::Ack> =
        acks.values().map(|a| (a.pos, a)).collect();
    let want: Vec<Id> = by_pos.values().map(|a| a.id).collect();
    assert_eq!(got.iter().map(|m| m.message.id).collect::<Vec<_>>(), want);
    // And nothing more: the next message is a fresh one.
    let last = send(&mut a, rooms[0], "last", "last").await;
    assert_eq!(next_message(&mut slow_ws).await.message.id, last.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_during_heavy_traffic_with_a_tiny_queue_misses_nothing_and_doubles_nothing() {
    const MISSED: usize = 2000;
    let server = start(&[("PARLOR_WS__OUTBOX", "8")]);
    let http = server.http();
    let reader = user(&http, "reader").await;
    let writer = user(&http, "writer").await;
    let mut rooms = Vec::new();
    for j in 0..4 {
        let info = http
            .create_group(&writer.token, &format!("room {j}"), &[reader.id])
            .await
            .unwrap();
        rooms.push(info.id);
    }
    let (mut ws, last_synced) = live(&server, &reader.token).await;
    ws.close().await.unwrap();

    let (mut w, _) = live(&server, &writer.token).await;
    let sends: Vec<Outgoing> = (0..MISSED)
        .map(|k| Outgoing {
            conv: rooms[k % rooms.len()],
            cid: format!("off-{k}"),
            text: format!("offline {k} {}", "y".repeat(500)),
        })
        .collect();
    let mut seen = Vec::new();
    let missed = pipeline(&mut w, &sends, 100, &mut seen).await;

    // Unpaced traffic while the reader syncs: its 8-event queue overflows during the
    // backlog, and it has to fall back to the store again right after `synced`.
    let overflows_before = metric(&http, "parlor_outbox_overflows_total").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let bg = tokio::spawn(background_sender(
        w,
        rooms.clone(),
        Pace {
            window: 50,
            min: 500,
            pause: Duration::ZERO,
        },
        started_tx,
        Arc::clone(&stop),
    ));
    started_rx.await.unwrap();
    let (mut ws, backlog, synced) = connect(&server, &reader.token, Some(last_synced)).await;
    let backlog = only_messages(&backlog);
    let mut live_msgs = messages(&mut ws, 100).await;
    stop.store(true, Ordering::Release);
    let bg_acks = bg.await.unwrap();
    let mut marker_ws = live(&server, &writer.token).await.0;
    let marker = send(&mut marker_ws, rooms[0], "marker", "the end").await;
    live_msgs.extend(messages_until(&mut ws, "marker").await);
    assert!(backlog.iter().all(|m| m.pos <= synced));
    assert!(live_msgs.iter().all(|m| m.pos > synced));

    let stream: Vec<MessageEvent> = backlog.iter().chain(live_msgs.iter()).cloned().collect();
    assert_pos_increasing(&stream, "backlog + live");
    assert_consecutive(&stream, &HashMap::new(), "backlog + live");
    let got: Vec<Id> = stream.iter().map(|m| m.message.id).collect();
    let got_set: HashSet<Id> = got.iter().copied().collect();
    assert_eq!(got_set.len(), got.len(), "a message arrived twice");
    let mut want: HashSet<Id> = missed.values().map(|a| a.id).collect();
    want.extend(bg_acks.iter().map(|a| a.id));
    want.insert(marker.id);
    assert_eq!(got_set, want, "backlog + live is not exactly every message");
    let overflows = metric(&http, "parlor_outbox_overflows_total").await - overflows_before;
    eprintln!(
        "{} in the backlog, {} live, {overflows} queue overflows",
        backlog.len(),
        live_msgs.len()
    );
}
