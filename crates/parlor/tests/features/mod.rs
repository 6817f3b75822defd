//! Shared helpers for the end-to-end tests of presence, typing, receipts, edits and
//! deletes, replies and mentions, and search. Builds on `support` (users, connections,
//! sends), which every one of those test files also declares.
//!
//! Absence ("B never sees X") is shown without timing: a later *marker* event is sent
//! to the same connection, and since the server hands events to one connection in the
//! order they were published, everything published before the marker arrives before it.
//! The marker is a status change of the connection's own user (users receive their own
//! presence events).

#![allow(dead_code, clippy::unwrap_used)]

use crate::support::{User, WAIT};
use parlor_client::proto::rest::{Availability, PresenceView, SearchResults, SendRequest};
use parlor_client::proto::ws::{Ack, ClientFrame, ServerFrame};
use parlor_client::proto::Id;
use parlor_client::{ClientError, Http, WsClient};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long to poll for something that happens asynchronously (the search index lags
/// commits by a few milliseconds); only a bound against hanging.
pub const POLL: Duration = Duration::from_secs(20);

pub async fn direct(http: &Http, a: &User, b: &User) -> Id {
    http.open_direct(&a.token, b.id)
        .await
        .expect("open direct conversation")
        .id
}

pub async fn group(http: &Http, owner: &User, members: &[&User]) -> Id {
    let ids: Vec<Id> = members.iter().map(|u| u.id).collect();
    http.create_group(&owner.token, "room", &ids)
        .await
        .expect("create group")
        .id
}

/// Skips frames until `f` returns `Some`.
pub async fn wait_for<T>(ws: &mut WsClient, f: impl FnMut(&ServerFrame) -> Option<T>) -> T {
    match ws.wait_for(WAIT, f).await {
        Ok(found) => found,
        Err(e) => panic!("waiting for a frame: {e}"),
    }
}

/// Frames before the first one for which `f` returns `Some`, and that value.
pub async fn frames_until<T>(
    ws: &mut WsClient,
    mut f: impl FnMut(&ServerFrame) -> Option<T>,
) -> (Vec<ServerFrame>, T) {
    let mut before = Vec::new();
    loop {
        let frame = match ws.next_frame(WAIT).await {
            Ok(frame) => frame,
            Err(e) => panic!("waiting for a frame (after {before:?}): {e}"),
        };
        if let Some(found) = f(&frame) {
            return (before, found);
        }
        before.push(frame);
    }
}

/// The presence event of `user`, if `frame` is one.
pub fn presence_of(frame: &ServerFrame, user: Id) -> Option<PresenceView> {
    match frame {
        ServerFrame::Presence(p) if p.user == user => Some(p.clone()),
        _ => None,
    }
}

/// Sets a unique status text for `user` (their own connections receive it) and returns
/// every frame `ws` (a connection of `user`) received before that marker.
pub async fn drain_to_marker(http: &Http, ws: &mut WsClient, user: &User) -> Vec<ServerFrame> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tag = format!("marker-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    http.set_status(&user.token, Availability::Available, Some(&tag))
        .await
        .expect("set marker status");
    let id = user.id;
    let (before, ()) = frames_until(ws, |f| match f {
        ServerFrame::Presence(p) if p.user == id && p.text.as_deref() == Some(tag.as_str()) => {
            Some(())
        }
        _ => None,
    })
    .await;
    before
}

/// A `send` frame with every option.
pub async fn send_full(
    ws: &mut WsClient,
    conv: Id,
    cid: &str,
    text: &str,
    reply_to: Option<u64>,
    mentions: Vec<Id>,
    mention_all: bool,
) {
    ws.send_frame(&ClientFrame::Send {
        cid: cid.to_owned(),
        conv,
        text: text.to_owned(),
        reply_to,
        mentions,
        mention_all,
        attachments: Vec::new(),
    })
    .await
    .expect("send frame");
}

/// A REST send with every option.
pub async fn rest_send_full(
    http: &Http,
    token: &str,
    conv: Id,
    text: &str,
    reply_to: Option<u64>,
    mentions: Vec<Id>,
    mention_all: bool,
) -> Result<Ack, ClientError> {
    let body = SendRequest {
        cid: None,
        text: text.to_owned(),
        reply_to,
        mentions,
        mention_all,
        attachments: Vec::new(),
    };
    http.send_request(token, conv, &body).await
}

/// A plain REST send that must succeed.
pub async fn post(http: &Http, user: &User, conv: Id, text: &str) -> Ack {
    http.send(&user.token, conv, None, text)
        .await
        .unwrap_or_else(|e| panic!("send {text:?}: {e}"))
}

/// Polls `f` until it returns `Some` (every 50 ms, at most [`POLL`]).
pub async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + POLL;
    loop {
        if let Some(found) = f().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still waiting after {POLL:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Searches until `done` holds for the results (the index lags commits slightly).
pub async fn search_until(
    http: &Http,
    token: &str,
    q: &str,
    filters: &[(&str, String)],
    done: impl Fn(&SearchResults) -> bool,
) -> SearchResults {
    poll(&format!("search {q:?} {filters:?}"), || async {
        let results = http
            .search(token, q, filters)
            .await
            .unwrap_or_else(|e| panic!("search {q:?}: {e}"));
        done(&results).then_some(results)
    })
    .await
}

/// The (conversation, seq) of every hit, in result order.
pub fn hits(results: &SearchResults) -> Vec<(Id, u64)> {
    results
        .results
        .iter()
        .map(|h| (h.message.conv, h.message.seq))
        .collect()
}

/// Milliseconds since the Unix epoch, this machine's clock (the server's clock too).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
