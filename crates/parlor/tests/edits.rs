//! Editing and deleting messages, end to end against the real binary: only the sender
//! edits, deletes leave a tombstone in the sequence, group owners and admins moderate,
//! and `edited`/`deleted` events reach members live and through offline sync in position
//! order with everything else.

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::rest::{MessageView, Role};
use parlor_client::proto::ws::{ClientFrame, DeletedEvent, EditedEvent, ErrorFrame, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{ClientError, Http, WsClient};
use support::*;

fn edited_of(frame: &ServerFrame) -> Option<EditedEvent> {
    match frame {
        ServerFrame::Edited(e) => Some(e.clone()),
        _ => None,
    }
}

fn deleted_of(frame: &ServerFrame) -> Option<DeletedEvent> {
    match frame {
        ServerFrame::Deleted(d) => Some(d.clone()),
        _ => None,
    }
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, code: ErrorCode) {
    match result {
        Err(ClientError::Api { status: s, body }) => {
            assert_eq!((s, body.code), (status, code), "{}", body.message);
            assert!(!body.message.is_empty());
        }
        other => panic!("expected {code} ({status}), got {other:?}"),
    }
}

async fn message(http: &Http, token: &str, conv: Id, seq: u64) -> MessageView {
    full_history(http, token, conv)
        .await
        .into_iter()
        .find(|m| m.seq == seq)
        .unwrap_or_else(|| panic!("seq {seq} missing from history"))
}

/// The error frame answering `cid`.
async fn error_with_cid(ws: &mut WsClient, cid: &str) -> ErrorFrame {
    wait_for(ws, |f| match f {
        ServerFrame::Error(e) if e.cid.as_deref() == Some(cid) => Some(e.clone()),
        ServerFrame::Error(e) => panic!("error frame without the cid {cid}: {e:?}"),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_edits_their_message_in_place() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let first = post(&http, &alice, conv, "see you at 5").await;
    post(&http, &alice, conv, "bring snacks").await;
    let original = message(&http, &bob.token, conv, 1).await;
    assert_eq!(original.edited_at, None);

    let edited = http
        .edit(&alice.token, conv, 1, "see you at 6")
        .await
        .unwrap();
    assert_eq!(edited.seq, 1);
    assert_eq!(edited.id, first.id);
    assert_eq!(edited.text, "see you at 6");
    assert_eq!(edited.sender, alice.id);
    assert_eq!(edited.ts, first.ts, "the original time stays");
    let edited_at = edited.edited_at.expect("edited_at set");
    assert!(edited_at >= first.ts);
    assert!(!edited.deleted);

    // Live.
    let event = wait_for(&mut bob_ws, edited_of).await;
    assert_eq!(
        (
            event.conv,
            event.seq,
            event.id,
            event.text.as_str(),
            event.edited_at,
            event.by
        ),
        (conv, 1, first.id, "see you at 6", edited_at, alice.id)
    );
    assert!(event.pos > first.pos);

    // History shows the new text, same seq, nothing appended.
    let history = full_history(&http, &bob.token, conv).await;
    let view: Vec<(u64, &str, bool)> = history
        .iter()
        .map(|m| (m.seq, m.text.as_str(), m.edited_at.is_some()))
        .collect();
    assert_eq!(
        view,
        vec![(1, "see you at 6", true), (2, "bring snacks", false)]
    );
    assert_eq!(history[0], edited);

    // The same rules as a send apply to the new text.
    expect_code(
        http.edit(&alice.token, conv, 1, "   ").await,
        400,
        ErrorCode::EmptyMessage,
    );
    let huge = "x".repeat(16 * 1024 + 1);
    expect_code(
        http.edit(&alice.token, conv, 1, &huge).await,
        413,
        ErrorCode::MessageTooLarge,
    );
    expect_code(
        http.edit(&alice.token, conv, 9, "nope").await,
        404,
        ErrorCode::NotFound,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sender_may_edit() {
    let server = start(&[]);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let member = user(&http, "member").await;
    let outsider = user(&http, "outsider").await;
    let room = group(&http, &owner, &[&member]).await;
    post(&http, &member, room, "my words").await;

    // Not even the group's owner.
    expect_code(
        http.edit(&owner.token, room, 1, "their words").await,
        403,
        ErrorCode::Forbidden,
    );
    expect_code(
        http.edit(&outsider.token, room, 1, "x").await,
        403,
        ErrorCode::NotMember,
    );
    assert_eq!(
        message(&http, &member.token, room, 1).await.text,
        "my words"
    );

    // Over WebSocket the error echoes the request's cid.
    let (mut owner_ws, _) = live(&server, &owner.token).await;
    owner_ws
        .send_frame(&ClientFrame::Edit {
            cid: Some("edit-1".into()),
            conv: room,
            seq: 1,
            text: "their words".into(),
        })
        .await
        .unwrap();
    let e = error_with_cid(&mut owner_ws, "edit-1").await;
    assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
    assert_eq!(
        message(&http, &member.token, room, 1).await.text,
        "my words"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_a_tombstone_in_the_sequence() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    post(&http, &alice, conv, "one").await;
    let second = post(&http, &alice, conv, "my secret is 1234").await;
    post(&http, &alice, conv, "three").await;

    // The peer in a direct conversation may not delete it.
    expect_code(
        http.delete_message(&bob.token, conv, 2).await,
        403,
        ErrorCode::Forbidden,
    );

    http.delete_message(&alice.token, conv, 2).await.unwrap();
    let event = wait_for(&mut bob_ws, deleted_of).await;
    assert_eq!(
        (event.conv, event.seq, event.id, event.by),
        (conv, 2, second.id, alice.id)
    );
    assert!(event.pos > second.pos);

    let history = full_history(&http, &bob.token, conv).await;
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "the seq stays");
    let tomb = &history[1];
    assert!(tomb.deleted);
    assert_eq!(tomb.text, "");
    assert_eq!((tomb.id, tomb.sender), (second.id, alice.id));
    assert!(!history[0].deleted && !history[2].deleted);

    // A deleted message cannot be edited; sending goes on after it.
    expect_code(
        http.edit(&alice.token, conv, 2, "revived").await,
        409,
        ErrorCode::Conflict,
    );
    let fourth = post(&http, &alice, conv, "four").await;
    assert_eq!(fourth.seq, 4);
    expect_code(
        http.delete_message(&alice.token, conv, 7).await,
        404,
        ErrorCode::NotFound,
    );
    // The conversation list shows the tombstone as it is.
    http.delete_message(&alice.token, conv, 4).await.unwrap();
    let list = http.conversations(&bob.token).await.unwrap();
    let last = list.conversations[0].last_message.clone().unwrap();
    assert_eq!((last.seq, last.deleted, last.text.as_str()), (4, true, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_owner_and_admins_delete_any_message_members_only_their_own() {
    let server = start(&[]);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let admin = user(&http, "admin").await;
    let poster = user(&http, "poster").await;
    let member = user(&http, "member").await;
    let room = group(&http, &owner, &[&admin, &poster, &member]).await;
    http.set_role(&owner.token, room, admin.id, Role::Admin)
        .await
        .unwrap();
    for i in 1..=4 {
        post(&http, &poster, room, &format!("post {i}")).await;
    }
    let (mut member_ws, _) = live(&server, &member.token).await;

    expect_code(
        http.delete_message(&member.token, room, 1).await,
        403,
        ErrorCode::Forbidden,
    );
    // Moderators delete, but do not edit, other people's messages.
    expect_code(
        http.edit(&admin.token, room, 1, "moderated").await,
        403,
        ErrorCode::Forbidden,
    );
    http.delete_message(&admin.token, room, 1).await.unwrap();
    http.delete_message(&owner.token, room, 2).await.unwrap();
    http.delete_message(&poster.token, room, 3).await.unwrap();

    let mut by = Vec::new();
    for _ in 0..3 {
        let d = wait_for(&mut member_ws, deleted_of).await;
        by.push((d.seq, d.by));
    }
    assert_eq!(by, vec![(1, admin.id), (2, owner.id), (3, poster.id)]);

    let history = full_history(&http, &member.token, room).await;
    let state: Vec<(u64, bool)> = history.iter().map(|m| (m.seq, m.deleted)).collect();
    assert_eq!(state, vec![(1, true), (2, true), (3, true), (4, false)]);

    // An admin demoted to member loses the right.
    http.set_role(&owner.token, room, admin.id, Role::Member)
        .await
        .unwrap();
    expect_code(
        http.delete_message(&admin.token, room, 4).await,
        403,
        ErrorCode::Forbidden,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_an_offline_member_in_order() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut bob_ws, since) = live(&server, &bob.token).await;
    bob_ws.close().await.unwrap();

    let m1 = post(&http, &alice, conv, "first draft").await;
    http.edit(&alice.token, conv, 1, "final text")
        .await
        .unwrap();
    let m2 = post(&http, &alice, conv, "regrettable").await;
    http.delete_message(&alice.token, conv, 2).await.unwrap();

    let (_bob_ws, backlog, synced) = connect(&server, &bob.token, Some(since)).await;
    let positions: Vec<Id> = backlog
        .iter()
        .map(|f| match f {
            ServerFrame::Message(m) => m.pos,
            ServerFrame::Edited(e) => e.pos,
            ServerFrame::Deleted(d) => d.pos,
            other => panic!("unexpected backlog frame {other:?}"),
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "backlog not in increasing pos: {backlog:?}"
    );
    assert!(positions.last().is_some_and(|p| *p <= synced));
    match &backlog[..] {
        [ServerFrame::Message(first), ServerFrame::Edited(edit), ServerFrame::Message(second), ServerFrame::Deleted(delete)] =>
        {
            assert_eq!((first.pos, first.message.seq), (m1.pos, 1));
            assert_eq!(
                first.message.text, "final text",
                "the message carries its current text"
            );
            assert!(first.message.edited_at.is_some());
            assert_eq!(
                (edit.seq, edit.text.as_str(), edit.by),
                (1, "final text", alice.id)
            );
            assert_eq!((second.pos, second.message.seq), (m2.pos, 2));
            assert!(
                second.message.deleted,
                "the message is a tombstone: {second:?}"
            );
            assert_eq!(second.message.text, "");
            assert_eq!((delete.seq, delete.id, delete.by), (2, m2.id, alice.id));
        }
        other => panic!("expected message, edited, message, deleted; got {other:?}"),
    }

    // A device that syncs from the edit on gets only what followed it.
    let after_edit = positions[1];
    let (_, backlog, _) = connect(&server, &bob.token, Some(after_edit)).await;
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    assert!(matches!(&backlog[0], ServerFrame::Message(m) if m.message.seq == 2));
    assert!(matches!(&backlog[1], ServerFrame::Deleted(d) if d.seq == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_over_websocket() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let outsider = user(&http, "outsider").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    send(&mut alice_ws, conv, "m-1", "helo").await;
    send(&mut alice_ws, conv, "m-2", "oops").await;

    alice_ws
        .send_frame(&ClientFrame::Edit {
            cid: Some("e-1".into()),
            conv,
            seq: 1,
            text: "hello".into(),
        })
        .await
        .unwrap();
    // Every member's devices learn of it, the editor's included.
    for ws in [&mut bob_ws, &mut alice_ws] {
        let e = wait_for(ws, edited_of).await;
        assert_eq!((e.seq, e.text.as_str(), e.by), (1, "hello", alice.id));
    }
    alice_ws
        .send_frame(&ClientFrame::Delete {
            cid: Some("d-1".into()),
            conv,
            seq: 2,
        })
        .await
        .unwrap();
    for ws in [&mut bob_ws, &mut alice_ws] {
        let d = wait_for(ws, deleted_of).await;
        assert_eq!((d.seq, d.by), (2, alice.id));
    }

    // Errors answer with the request's cid.
    let cases = [
        (
            true,
            ClientFrame::Edit {
                cid: Some("x-forbidden".into()),
                conv,
                seq: 1,
                text: "mine now".into(),
            },
            ErrorCode::Forbidden,
        ),
        (
            true,
            ClientFrame::Delete {
                cid: Some("x-delete-forbidden".into()),
                conv,
                seq: 1,
            },
            ErrorCode::Forbidden,
        ),
        (
            false,
            ClientFrame::Edit {
                cid: Some("x-conflict".into()),
                conv,
                seq: 2,
                text: "back".into(),
            },
            ErrorCode::Conflict,
        ),
        (
            false,
            ClientFrame::Delete {
                cid: Some("x-missing".into()),
                conv,
                seq: 99,
            },
            ErrorCode::NotFound,
        ),
        (
            false,
            ClientFrame::Edit {
                cid: Some("x-empty".into()),
                conv,
                seq: 1,
                text: " ".into(),
            },
            ErrorCode::EmptyMessage,
        ),
    ];
    for (by_bob, frame, code) in cases {
        let ws = if by_bob { &mut bob_ws } else { &mut alice_ws };
        let cid = match &frame {
            ClientFrame::Edit { cid, .. } | ClientFrame::Delete { cid, .. } => cid.clone().unwrap(),
            _ => unreachable!(),
        };
        ws.send_frame(&frame).await.unwrap();
        let e = error_with_cid(ws, &cid).await;
        assert_eq!(e.code, code, "{cid}: {e:?}");
    }
    let (mut outsider_ws, _) = live(&server, &outsider.token).await;
    outsider_ws
        .send_frame(&ClientFrame::Delete {
            cid: Some("x-outsider".into()),
            conv,
            seq: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        error_with_cid(&mut outsider_ws, "x-outsider").await.code,
        ErrorCode::NotMember
    );

    let history = full_history(&http, &bob.token, conv).await;
    let state: Vec<(&str, bool)> = history
        .iter()
        .map(|m| (m.text.as_str(), m.deleted))
        .collect();
    assert_eq!(state, vec![("hello", false), ("", true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_keep_growing_after_a_restart_that_follows_an_edit() {
    let mut server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    post(&http, &alice, conv, "before").await;
    http.edit(&alice.token, conv, 1, "before, edited")
        .await
        .unwrap();
    let edit = wait_for(&mut bob_ws, edited_of).await;
    drop(bob_ws);

    tokio::task::block_in_place(|| server.restart()).expect("restart");
    let http = server.http();
    let after = post(&http, &alice, conv, "after").await;
    assert!(
        after.pos > edit.pos,
        "a new message got pos {:?}, not after the edit's {:?}",
        after.pos,
        edit.pos
    );

    // A client that handled the edit still receives the new message.
    let (_ws, backlog, _) = connect(&server, &bob.token, Some(edit.pos)).await;
    let seqs: Vec<u64> = backlog
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m.message.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![2], "backlog after the edit: {backlog:?}");
}
