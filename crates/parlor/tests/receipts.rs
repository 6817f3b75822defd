//! Delivery and read receipts, end to end against the real binary: `delivered` from a
//! device reaches the sender live, read markers only move forward and sync to the user's
//! other devices (live and through `since`), unread counts stay exact across devices, and
//! `GET .../receipts` shows who received and read what, in direct conversations and
//! groups.

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::rest::Receipt;
use parlor_client::proto::ws::{ClientFrame, DeliveredEvent, ReadEvent, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::WsClient;
use support::*;

fn delivered_of(frame: &ServerFrame) -> Option<DeliveredEvent> {
    match frame {
        ServerFrame::Delivered(d) => Some(d.clone()),
        _ => None,
    }
}

fn read_of(frame: &ServerFrame) -> Option<ReadEvent> {
    match frame {
        ServerFrame::Read(r) => Some(r.clone()),
        _ => None,
    }
}

fn error_of(frame: &ServerFrame) -> Option<parlor_client::proto::ws::ErrorFrame> {
    match frame {
        ServerFrame::Error(e) => Some(e.clone()),
        _ => None,
    }
}

async fn read_frame(ws: &mut WsClient, conv: Id, seq: u64) {
    ws.send_frame(&ClientFrame::Read { conv, seq })
        .await
        .expect("read frame");
}

async fn delivered_frame(ws: &mut WsClient, conv: Id, seq: u64) {
    ws.send_frame(&ClientFrame::Delivered { conv, seq })
        .await
        .expect("delivered frame");
}

fn receipt_of(receipts: &[Receipt], user: Id) -> (u64, u64) {
    let r = receipts
        .iter()
        .find(|r| r.user == user)
        .unwrap_or_else(|| panic!("no receipt for {user} in {receipts:?}"));
    (r.delivered_seq, r.read_seq)
}

async fn unread(http: &parlor_client::Http, who: &User, conv: Id) -> (u64, u64, u64) {
    let list = http.conversations(&who.token).await.unwrap();
    let c = list
        .conversations
        .iter()
        .find(|c| c.info.id == conv)
        .expect("conversation listed");
    (c.last_seq, c.read_seq, c.unread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_by_frame_or_rest_reaches_the_sender_live() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    for i in 1..=3 {
        post(&http, &alice, conv, &format!("message {i}")).await;
    }
    messages(&mut bob_ws, 3).await;

    // A device says it received up to 1: the sender is told.
    delivered_frame(&mut bob_ws, conv, 1).await;
    let d = wait_for(&mut alice_ws, delivered_of).await;
    assert_eq!(
        d,
        DeliveredEvent {
            conv,
            user: bob.id,
            seq: 1
        }
    );

    // Over REST.
    http.mark_delivered(&bob.token, conv, 3).await.unwrap();
    let d = wait_for(&mut alice_ws, delivered_of).await;
    assert_eq!((d.user, d.seq), (bob.id, 3));

    // Backwards is a no-op: no event, the marker stays.
    http.mark_delivered(&bob.token, conv, 2).await.unwrap();
    delivered_frame(&mut bob_ws, conv, 1).await;
    let receipts = http.receipts(&alice.token, conv).await.unwrap();
    assert_eq!(receipt_of(&receipts.receipts, bob.id).0, 3);
    let seen = drain_to_marker(&http, &mut alice_ws, &alice).await;
    let stale: Vec<_> = seen.iter().filter_map(delivered_of).collect();
    assert!(
        stale.is_empty(),
        "a backwards delivered marker was announced: {stale:?}"
    );

    // Beyond the last message: refused over REST and WebSocket.
    let err = http.mark_delivered(&bob.token, conv, 4).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    delivered_frame(&mut bob_ws, conv, 4).await;
    let e = wait_for(&mut bob_ws, error_of).await;
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_marker_moves_forward_only_and_syncs_to_the_users_other_devices() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    for i in 1..=5 {
        post(&http, &alice, conv, &format!("message {i}")).await;
    }
    let phone = second_device(&http, &bob, "phone").await;
    let tablet = second_device(&http, &bob, "tablet").await;
    let (mut laptop_ws, since) = live(&server, &bob.token).await;
    let (mut phone_ws, _) = live(&server, &phone).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;

    // Read on the laptop: the phone (and the peer) learn it live.
    read_frame(&mut laptop_ws, conv, 3).await;
    let r = wait_for(&mut phone_ws, read_of).await;
    assert_eq!((r.conv, r.user, r.seq), (conv, bob.id, 3));
    let r_alice = wait_for(&mut alice_ws, read_of).await;
    assert_eq!(r_alice, r);
    let own = wait_for(&mut laptop_ws, read_of).await;
    assert_eq!(own, r);

    // Backwards is a no-op and announces nothing.
    let state = http.mark_read(&bob.token, conv, 2).await.unwrap();
    assert_eq!((state.conv, state.read_seq), (conv, 3));
    let state = http.mark_read(&phone, conv, 4).await.unwrap();
    assert_eq!(state.read_seq, 4);
    let r4 = wait_for(&mut phone_ws, read_of).await;
    assert_eq!(r4.seq, 4, "the no-op must not have produced a read event");
    assert!(r4.pos > r.pos);
    assert_eq!(unread(&http, &bob, conv).await, (5, 4, 1));

    // A device that was offline gets the marker through sync.
    let (_tablet_ws, backlog, _) = connect(&server, &tablet, Some(since)).await;
    let reads: Vec<(Id, u64)> = backlog
        .iter()
        .filter_map(read_of)
        .map(|r| (r.user, r.seq))
        .collect();
    assert_eq!(reads, vec![(bob.id, 4)], "backlog: {backlog:?}");

    // The phone goes offline, the laptop reads everything, the phone catches up.
    phone_ws.close().await.unwrap();
    read_frame(&mut laptop_ws, conv, 5).await;
    // (The laptop also received the read marker 4 set from the phone before.)
    let r5 = wait_for(&mut laptop_ws, |f| read_of(f).filter(|r| r.seq == 5)).await;
    assert_eq!(r5.user, bob.id);
    let (_phone_ws, backlog, _) = connect(&server, &phone, Some(r4.pos)).await;
    assert_eq!(
        backlog,
        vec![ServerFrame::Read(r5)],
        "the phone's backlog is exactly the newer read marker"
    );
    assert_eq!(unread(&http, &bob, conv).await, (5, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_are_exact_after_reads_on_several_devices() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let room = group(&http, &bob, &[&alice]).await;
    for i in 1..=10 {
        post(&http, &bob, conv, &format!("direct {i}")).await;
    }
    for i in 1..=4 {
        post(&http, &bob, room, &format!("group {i}")).await;
    }
    let device_a = alice.token.clone();
    let device_b = second_device(&http, &alice, "device b").await;
    assert_eq!(unread(&http, &alice, conv).await, (10, 0, 10));

    // Device A reads 3 (REST), device B reads 7 (WebSocket), device A reads 5 (REST).
    assert_eq!(
        http.mark_read(&device_a, conv, 3).await.unwrap().read_seq,
        3
    );
    let (mut b_ws, _) = live(&server, &device_b).await;
    read_frame(&mut b_ws, conv, 7).await;
    assert_eq!(wait_for(&mut b_ws, read_of).await.seq, 7);
    assert_eq!(
        http.mark_read(&device_a, conv, 5).await.unwrap().read_seq,
        7
    );

    assert_eq!(unread(&http, &alice, conv).await, (10, 7, 3));
    assert_eq!(unread(&http, &alice, room).await, (4, 0, 4));
    // The sender has read their own messages.
    assert_eq!(unread(&http, &bob, conv).await, (10, 10, 0));
    assert_eq!(unread(&http, &bob, room).await, (4, 4, 0));

    // A reply from Alice marks her read up to it.
    post(&http, &alice, conv, "caught up").await;
    assert_eq!(unread(&http, &alice, conv).await, (11, 11, 0));
    assert_eq!(unread(&http, &bob, conv).await, (11, 10, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_sender_sees_the_peers_delivered_and_read_state() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    for i in 1..=3 {
        send(&mut alice_ws, conv, &format!("c{i}"), &format!("hello {i}")).await;
    }
    messages(&mut bob_ws, 3).await;

    let before = http.receipts(&alice.token, conv).await.unwrap();
    assert_eq!(before.conv, conv);
    assert_eq!(before.last_seq, 3);
    assert_eq!(receipt_of(&before.receipts, bob.id), (0, 0));
    assert!(
        before.read_counts.iter().all(|c| c.read_by == 0),
        "{before:?}"
    );

    delivered_frame(&mut bob_ws, conv, 3).await;
    let d = wait_for(&mut alice_ws, delivered_of).await;
    assert_eq!((d.conv, d.user, d.seq), (conv, bob.id, 3));
    read_frame(&mut bob_ws, conv, 2).await;
    let r = wait_for(&mut alice_ws, read_of).await;
    assert_eq!((r.conv, r.user, r.seq), (conv, bob.id, 2));

    for viewer in [&alice, &bob] {
        let receipts = http.receipts(&viewer.token, conv).await.unwrap();
        assert_eq!(receipts.last_seq, 3);
        assert_eq!(receipts.receipts.len(), 2, "{receipts:?}");
        assert_eq!(receipt_of(&receipts.receipts, bob.id), (3, 2));
        assert_eq!(
            receipt_of(&receipts.receipts, alice.id).1,
            3,
            "the sender read her own"
        );
        let counts: Vec<(u64, u32)> = receipts
            .read_counts
            .iter()
            .map(|c| (c.seq, c.read_by))
            .collect();
        assert_eq!(counts, vec![(1, 1), (2, 1), (3, 0)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_receipts_show_who_read_what_and_counts_exclude_the_sender() {
    let server = start(&[]);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let ann = user(&http, "ann").await;
    let ben = user(&http, "ben").await;
    let cid = user(&http, "cid").await;
    let room = group(&http, &owner, &[&ann, &ben, &cid]).await;
    for i in 1..=4 {
        post(&http, &owner, room, &format!("news {i}")).await;
    }
    http.mark_read(&ann.token, room, 4).await.unwrap();
    http.mark_read(&ben.token, room, 2).await.unwrap();
    http.mark_delivered(&cid.token, room, 4).await.unwrap();

    let receipts = http.receipts(&owner.token, room).await.unwrap();
    assert_eq!(receipts.last_seq, 4);
    assert_eq!(receipts.receipts.len(), 4);
    assert_eq!(receipt_of(&receipts.receipts, owner.id).1, 4);
    assert_eq!(receipt_of(&receipts.receipts, ann.id).1, 4);
    assert_eq!(receipt_of(&receipts.receipts, ben.id).1, 2);
    assert_eq!(receipt_of(&receipts.receipts, cid.id), (4, 0));
    let counts: Vec<(u64, u32)> = receipts
        .read_counts
        .iter()
        .map(|c| (c.seq, c.read_by))
        .collect();
    assert_eq!(counts, vec![(1, 2), (2, 2), (3, 1), (4, 1)]);

    // Ann's own message: her reading it does not count, the owner's reading does.
    post(&http, &ann, room, "question").await;
    let counts = |r: &parlor_client::proto::rest::Receipts| -> Vec<(u64, u32)> {
        r.read_counts.iter().map(|c| (c.seq, c.read_by)).collect()
    };
    let receipts = http.receipts(&ben.token, room).await.unwrap();
    assert_eq!(receipt_of(&receipts.receipts, ann.id).1, 5);
    assert_eq!(
        counts(&receipts),
        vec![(1, 2), (2, 2), (3, 1), (4, 1), (5, 0)]
    );
    http.mark_read(&owner.token, room, 5).await.unwrap();
    let receipts = http.receipts(&ben.token, room).await.unwrap();
    assert_eq!(
        counts(&receipts),
        vec![(1, 2), (2, 2), (3, 1), (4, 1), (5, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_need_membership_and_a_real_message() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let outsider = user(&http, "outsider").await;
    let conv = direct(&http, &alice, &bob).await;
    let empty = group(&http, &alice, &[&bob]).await;
    post(&http, &alice, conv, "one").await;
    post(&http, &alice, conv, "two").await;

    let not_member = |r: Result<_, parlor_client::ClientError>| {
        let err: parlor_client::ClientError = r.expect_err("an error");
        assert_eq!(
            (err.status(), err.code()),
            (Some(403), Some(ErrorCode::NotMember)),
            "{err}"
        );
    };
    not_member(http.mark_read(&outsider.token, conv, 1).await.map(drop));
    not_member(http.mark_delivered(&outsider.token, conv, 1).await);
    not_member(http.receipts(&outsider.token, conv).await.map(drop));
    not_member(
        http.history(&outsider.token, conv, None, None, None)
            .await
            .map(drop),
    );

    let (mut outsider_ws, _) = live(&server, &outsider.token).await;
    read_frame(&mut outsider_ws, conv, 1).await;
    assert_eq!(
        wait_for(&mut outsider_ws, error_of).await.code,
        ErrorCode::NotMember
    );
    delivered_frame(&mut outsider_ws, conv, 1).await;
    assert_eq!(
        wait_for(&mut outsider_ws, error_of).await.code,
        ErrorCode::NotMember
    );

    // A member who left is no longer one.
    http.leave(&bob.token, empty).await.unwrap();
    not_member(http.mark_read(&bob.token, empty, 0).await.map(drop));
    not_member(http.receipts(&bob.token, empty).await.map(drop));

    // Beyond the last message.
    let err = http.mark_read(&bob.token, conv, 3).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some(ErrorCode::BadRequest)),
        "{err}"
    );
    let err = http.mark_read(&alice.token, empty, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    read_frame(&mut bob_ws, conv, 99).await;
    assert_eq!(
        wait_for(&mut bob_ws, error_of).await.code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        http.mark_read(&bob.token, conv, 2).await.unwrap().read_seq,
        2
    );

    // Unknown conversation.
    let err = http.receipts(&alice.token, Id(424242)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = http
        .mark_read(&alice.token, Id(424242), 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = http
        .mark_delivered(&alice.token, Id(424242), 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
}
