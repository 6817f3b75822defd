//! Replies and mentions, end to end against the real binary: `reply_to` names a message
//! of the same conversation, mentions name members, `mention_all` is for groups, and all
//! of it is stored, returned by history and carried by live and synced events.

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::ws::{MessageEvent, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::ClientError;
use support::*;

#[track_caller]
fn bad_request<T: std::fmt::Debug>(result: Result<T, ClientError>) {
    match result {
        Err(ClientError::Api { status, body }) => {
            assert_eq!(
                (status, body.code),
                (400, ErrorCode::BadRequest),
                "{}",
                body.message
            );
            assert!(!body.message.is_empty());
        }
        other => panic!("expected bad_request, got {other:?}"),
    }
}

fn sorted(mut ids: Vec<Id>) -> Vec<Id> {
    ids.sort();
    ids
}

/// The next message event with `text`.
async fn message_with(ws: &mut parlor_client::WsClient, text: &str) -> MessageEvent {
    wait_for(ws, |f| match f {
        ServerFrame::Message(m) if m.message.text == text => Some(m.clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_names_a_message_of_the_same_conversation() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = direct(&http, &alice, &bob).await;
    let other = group(&http, &alice, &[&bob]).await;
    let (mut alice_ws, since) = live(&server, &alice.token).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    send(&mut alice_ws, conv, "q-1", "what time?").await;
    send(&mut alice_ws, conv, "q-2", "and where?").await;

    // Over WebSocket.
    send_full(&mut bob_ws, conv, "r-1", "at 6", Some(1), vec![], false).await;
    let acked = ack(&mut bob_ws, "r-1").await;
    assert_eq!(acked.seq, 3);
    let seen = message_with(&mut alice_ws, "at 6").await;
    assert_eq!(seen.message.reply_to, Some(1));
    assert_eq!(seen.message.sender, bob.id);

    // Over REST.
    let rest = rest_send_full(
        &http,
        &bob.token,
        conv,
        "at the café",
        Some(2),
        vec![],
        false,
    )
    .await
    .unwrap();
    assert_eq!(rest.seq, 4);
    assert_eq!(
        message_with(&mut alice_ws, "at the café")
            .await
            .message
            .reply_to,
        Some(2)
    );

    // Stored: history and sync return the same.
    let history = full_history(&http, &alice.token, conv).await;
    let replies: Vec<(u64, Option<u64>)> = history.iter().map(|m| (m.seq, m.reply_to)).collect();
    assert_eq!(
        replies,
        vec![(1, None), (2, None), (3, Some(1)), (4, Some(2))]
    );
    let (_, backlog, _) = connect(&server, &alice.token, Some(since)).await;
    let synced: Vec<(u64, Option<u64>)> = backlog
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) if m.message.conv == conv => {
                Some((m.message.seq, m.message.reply_to))
            }
            _ => None,
        })
        .collect();
    assert_eq!(synced, replies);

    // A seq that does not exist (yet), zero, or only exists in another conversation.
    bad_request(
        rest_send_full(
            &http,
            &bob.token,
            conv,
            "to the future",
            Some(5),
            vec![],
            false,
        )
        .await,
    );
    bad_request(
        rest_send_full(
            &http,
            &bob.token,
            conv,
            "to nothing",
            Some(0),
            vec![],
            false,
        )
        .await,
    );
    post(&http, &alice, other, "only one here").await;
    bad_request(
        rest_send_full(
            &http,
            &bob.token,
            other,
            "elsewhere",
            Some(3),
            vec![],
            false,
        )
        .await,
    );
    send_full(&mut bob_ws, conv, "r-bad", "nope", Some(99), vec![], false).await;
    let e = error_for(&mut bob_ws, "r-bad").await;
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");

    // Nothing was stored for the refused ones: no gap in the sequence.
    let next = post(&http, &alice, conv, "ok then").await;
    assert_eq!(next.seq, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_of_members_are_stored_and_delivered() {
    let server = start(&[]);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let ann = user(&http, "ann").await;
    let ben = user(&http, "ben").await;
    let leaver = user(&http, "leaver").await;
    let outsider = user(&http, "outsider").await;
    let room = group(&http, &owner, &[&ann, &ben, &leaver]).await;
    http.leave(&leaver.token, room).await.unwrap();
    let (mut owner_ws, _) = live(&server, &owner.token).await;
    let (mut ben_ws, _) = live(&server, &ben.token).await;

    // Duplicates are dropped; the order does not matter.
    send_full(
        &mut owner_ws,
        room,
        "m-1",
        "@ben @ann please review",
        None,
        vec![ben.id, ann.id, ben.id],
        false,
    )
    .await;
    ack(&mut owner_ws, "m-1").await;
    let seen = message_with(&mut ben_ws, "@ben @ann please review").await;
    assert_eq!(
        sorted(seen.message.mentions.clone()),
        sorted(vec![ann.id, ben.id])
    );
    assert!(!seen.message.mention_all);

    let rest = rest_send_full(
        &http,
        &ann.token,
        room,
        "on it @owner",
        Some(1),
        vec![owner.id],
        false,
    )
    .await
    .unwrap();
    let seen = message_with(&mut ben_ws, "on it @owner").await;
    assert_eq!(seen.message.mentions, vec![owner.id]);
    assert_eq!(seen.message.reply_to, Some(1));
    assert_eq!(seen.message.seq, rest.seq);

    let history = full_history(&http, &ben.token, room).await;
    assert_eq!(
        sorted(history[0].mentions.clone()),
        sorted(vec![ann.id, ben.id])
    );
    assert_eq!(history[1].mentions, vec![owner.id]);
    assert_eq!(history[1].reply_to, Some(1));

    // Mentioning someone who is not (or no longer) a member is refused.
    bad_request(
        rest_send_full(
            &http,
            &ann.token,
            room,
            "hey",
            None,
            vec![outsider.id],
            false,
        )
        .await,
    );
    bad_request(
        rest_send_full(
            &http,
            &ann.token,
            room,
            "hey",
            None,
            vec![ben.id, leaver.id],
            false,
        )
        .await,
    );
    bad_request(rest_send_full(&http, &ann.token, room, "hey", None, vec![Id(777)], false).await);
    send_full(
        &mut owner_ws,
        room,
        "m-bad",
        "hey",
        None,
        vec![outsider.id],
        false,
    )
    .await;
    assert_eq!(
        error_for(&mut owner_ws, "m-bad").await.code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        full_history(&http, &ben.token, room).await.len(),
        2,
        "nothing stored"
    );

    // Deleting a message removes its mentions and reply with its text.
    http.delete_message(&ann.token, room, 2).await.unwrap();
    let tomb = &full_history(&http, &ben.token, room).await[1];
    assert!(tomb.deleted);
    assert!(tomb.mentions.is_empty(), "{tomb:?}");
    assert_eq!(tomb.reply_to, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mention_all_is_for_groups_only() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let carol = user(&http, "carol").await;
    let room = group(&http, &alice, &[&bob, &carol]).await;
    let conv = direct(&http, &alice, &bob).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (mut carol_ws, _) = live(&server, &carol.token).await;

    send_full(
        &mut alice_ws,
        room,
        "all-1",
        "@all standup now",
        None,
        vec![],
        true,
    )
    .await;
    ack(&mut alice_ws, "all-1").await;
    let seen = message_with(&mut carol_ws, "@all standup now").await;
    assert!(seen.message.mention_all);
    assert!(seen.message.mentions.is_empty());
    let ack = rest_send_full(
        &http,
        &bob.token,
        room,
        "@all @carol too",
        None,
        vec![carol.id],
        true,
    )
    .await
    .unwrap();
    let history = full_history(&http, &carol.token, room).await;
    let flags: Vec<(u64, bool, Vec<Id>)> = history
        .iter()
        .map(|m| (m.seq, m.mention_all, m.mentions.clone()))
        .collect();
    assert_eq!(
        flags,
        vec![(1, true, vec![]), (ack.seq, true, vec![carol.id])]
    );

    // In a direct conversation there is no "all".
    bad_request(rest_send_full(&http, &alice.token, conv, "@all", None, vec![], true).await);
    send_full(
        &mut alice_ws,
        conv,
        "all-direct",
        "@all",
        None,
        vec![],
        true,
    )
    .await;
    assert_eq!(
        error_for(&mut alice_ws, "all-direct").await.code,
        ErrorCode::BadRequest
    );
    assert!(full_history(&http, &bob.token, conv).await.is_empty());
    // Mentioning the peer is fine.
    let ok = rest_send_full(
        &http,
        &alice.token,
        conv,
        "@bob hi",
        None,
        vec![bob.id],
        false,
    )
    .await
    .unwrap();
    assert_eq!(ok.seq, 1);
}
