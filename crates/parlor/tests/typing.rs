//! Typing indicators, end to end against the real binary: they reach the other members'
//! connected devices (not the typist's connection, not outsiders), expire by themselves,
//! are never stored, are rate limited per user and conversation, and need membership.

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::ws::{ClientFrame, ServerFrame, TypingEvent};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::WsClient;
use support::*;

async fn typing(ws: &mut WsClient, conv: Id, typing: bool) {
    ws.send_frame(&ClientFrame::Typing { conv, typing })
        .await
        .expect("typing frame");
}

fn typing_of(frame: &ServerFrame) -> Option<TypingEvent> {
    match frame {
        ServerFrame::Typing(t) => Some(t.clone()),
        _ => None,
    }
}

fn no_typing(frames: &[ServerFrame], whose: &str) {
    let typing: Vec<_> = frames.iter().filter_map(typing_of).collect();
    assert!(
        typing.is_empty(),
        "{whose} received typing events: {typing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_members_devices_only() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let carol = user(&http, "carol").await;
    let outsider = user(&http, "outsider").await;
    let room = group(&http, &alice, &[&bob, &carol]).await;
    let bob_phone = second_device(&http, &bob, "phone").await;

    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let (mut bob_phone_ws, _) = live(&server, &bob_phone).await;
    let (mut carol_ws, _) = live(&server, &carol.token).await;
    let (mut outsider_ws, _) = live(&server, &outsider.token).await;

    typing(&mut alice_ws, room, true).await;
    let want = TypingEvent {
        conv: room,
        user: alice.id,
        typing: true,
        expires_in_ms: 5_000,
    };
    for ws in [&mut bob_ws, &mut bob_phone_ws, &mut carol_ws] {
        assert_eq!(wait_for(ws, typing_of).await, want);
    }

    typing(&mut alice_ws, room, false).await;
    for ws in [&mut bob_ws, &mut bob_phone_ws, &mut carol_ws] {
        let stopped = wait_for(ws, typing_of).await;
        assert_eq!(
            (stopped.user, stopped.typing),
            (alice.id, false),
            "{stopped:?}"
        );
        assert_eq!(stopped.conv, room);
        assert!(
            (4_000..=6_000).contains(&stopped.expires_in_ms),
            "{stopped:?}"
        );
    }

    // Another member typing reaches Alice, and it is the first typing event she sees:
    // her own two came before it and were not sent to her.
    typing(&mut carol_ws, room, true).await;
    let (_, from_carol) = frames_until(&mut alice_ws, typing_of).await;
    assert_eq!((from_carol.user, from_carol.typing), (carol.id, true));
    wait_for(&mut bob_ws, typing_of).await;
    let after_carols = drain_to_marker(&http, &mut alice_ws, &alice).await;
    no_typing(&after_carols, "the typist");

    // The outsider saw nobody's.
    let outsider_saw = drain_to_marker(&http, &mut outsider_ws, &outsider).await;
    no_typing(&outsider_saw, "an outsider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_never_stored() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (mut bob_ws, since) = live(&server, &bob.token).await;

    typing(&mut alice_ws, conv, true).await;
    assert!(wait_for(&mut bob_ws, typing_of).await.typing);
    let sent = send(&mut alice_ws, conv, "t-1", "there you go").await;
    typing(&mut alice_ws, conv, false).await;
    assert!(!wait_for(&mut bob_ws, typing_of).await.typing);

    // A device that syncs later gets the message but no typing event.
    let bob_phone = second_device(&http, &bob, "phone").await;
    let (_phone, backlog, synced) = connect(&server, &bob_phone, Some(since)).await;
    assert!(synced >= sent.pos);
    no_typing(&backlog, "a syncing device");
    let messages: Vec<u64> = backlog
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m.message.seq),
            _ => None,
        })
        .collect();
    assert_eq!(messages, vec![1], "backlog: {backlog:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_rate_limited_per_user_and_conversation() {
    let server = start(&[
        ("PARLOR_RATE__TYPING_PER_CONVERSATION__BURST", "2"),
        ("PARLOR_RATE__TYPING_PER_CONVERSATION__PER_SECOND", "0.01"),
    ]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let first = direct(&http, &alice, &bob).await;
    let second = group(&http, &alice, &[&bob]).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;

    for _ in 0..2 {
        typing(&mut alice_ws, first, true).await;
        let t = wait_for(&mut bob_ws, typing_of).await;
        assert_eq!((t.conv, t.user), (first, alice.id));
    }
    typing(&mut alice_ws, first, true).await;
    let error = wait_for(&mut alice_ws, |f| match f {
        ServerFrame::Error(e) => Some(e.clone()),
        _ => None,
    })
    .await;
    assert_eq!(error.code, ErrorCode::RateLimited, "{error:?}");
    assert!(error.retry_after_ms.is_some_and(|ms| ms > 0), "{error:?}");

    // Another conversation has its own budget, and so has another user.
    typing(&mut alice_ws, second, true).await;
    let t = wait_for(&mut bob_ws, typing_of).await;
    assert_eq!((t.conv, t.user), (second, alice.id));
    typing(&mut bob_ws, first, true).await;
    let t = wait_for(&mut alice_ws, typing_of).await;
    assert_eq!((t.conv, t.user), (first, bob.id));

    // The refused one never reached Bob.
    let seen = drain_to_marker(&http, &mut bob_ws, &bob).await;
    no_typing(&seen, "the peer of a rate-limited typist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_needs_membership() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let outsider = user(&http, "outsider").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let (mut outsider_ws, _) = live(&server, &outsider.token).await;

    typing(&mut outsider_ws, conv, true).await;
    let error = wait_for(&mut outsider_ws, |f| match f {
        ServerFrame::Error(e) => Some(e.clone()),
        _ => None,
    })
    .await;
    assert_eq!(error.code, ErrorCode::NotMember, "{error:?}");
    assert!(!error.message.is_empty());

    typing(&mut outsider_ws, Id(12345), true).await;
    let error = wait_for(&mut outsider_ws, |f| match f {
        ServerFrame::Error(e) => Some(e.clone()),
        _ => None,
    })
    .await;
    assert_eq!(error.code, ErrorCode::NotFound, "{error:?}");

    // The connection still works, and the members saw nothing.
    let seen = drain_to_marker(&http, &mut bob_ws, &bob).await;
    no_typing(&seen, "a member");
    drain_to_marker(&http, &mut outsider_ws, &outsider).await;
}
