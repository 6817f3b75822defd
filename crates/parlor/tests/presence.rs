//! Presence, end to end against the real binary: online while any device is connected,
//! offline with a last-seen time after a grace period (a quick reconnect does not
//! flicker), live presence events for people one shares a conversation with (not for
//! strangers), presence queries, last seen across a restart, and status.

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::rest::Availability;
use parlor_client::proto::ws::{ClientFrame, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use std::time::Duration;
use support::*;

/// A 2 s grace period and a fast expiry tick.
fn start_presence() -> parlor_testkit::TestServer {
    start(&[
        ("PARLOR_PRESENCE__GRACE_SECS", "2"),
        ("PARLOR_PRESENCE__TICK_MS", "100"),
    ])
}

/// Longer than the grace period plus a few expiry ticks: by then a user without a
/// connected device would have been announced offline.
const PAST_GRACE: Duration = Duration::from_millis(3_000);

fn offline_of(frame: &ServerFrame, user: Id) -> Option<parlor_client::proto::rest::PresenceView> {
    presence_of(frame, user).filter(|p| !p.online)
}

fn online_of(frame: &ServerFrame, user: Id) -> Option<parlor_client::proto::rest::PresenceView> {
    presence_of(frame, user).filter(|p| p.online)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_while_any_device_is_connected_then_offline_with_last_seen() {
    let server = start_presence();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;

    let (mut laptop, _) = live(&server, &alice.token).await;
    let came = wait_for(&mut bob_ws, |f| presence_of(f, alice.id)).await;
    assert!(came.online, "{came:?}");
    assert_eq!(came.last_seen, None, "no last seen while online: {came:?}");

    let phone_token = second_device(&http, &alice, "phone").await;
    let (mut phone, _) = live(&server, &phone_token).await;
    laptop.close().await.unwrap();
    tokio::time::sleep(PAST_GRACE).await;

    // The phone is still connected: still online, and Bob was never told otherwise.
    let now = http.presence(&bob.token, &[alice.id]).await.unwrap();
    assert_eq!(now.presence.len(), 1);
    assert!(now.presence[0].online, "{now:?}");
    assert_eq!(now.presence[0].last_seen, None);
    let seen = drain_to_marker(&http, &mut bob_ws, &bob).await;
    assert!(
        !seen.iter().any(|f| offline_of(f, alice.id).is_some()),
        "offline announced while a device was connected: {seen:?}"
    );

    let before = now_ms();
    phone.close().await.unwrap();
    let gone = wait_for(&mut bob_ws, |f| presence_of(f, alice.id)).await;
    let after = now_ms();
    assert!(!gone.online, "expected offline, got {gone:?}");
    let last_seen = gone.last_seen.expect("offline presence carries last_seen");
    assert!(
        (before..=after).contains(&last_seen),
        "last_seen {last_seen} outside [{before}, {after}]"
    );

    // The query agrees.
    let queried = http.presence(&bob.token, &[alice.id]).await.unwrap();
    assert_eq!(queried.presence.len(), 1);
    let p = &queried.presence[0];
    assert_eq!(p.user, alice.id);
    assert!(!p.online);
    assert_eq!(p.last_seen, Some(last_seen));

    // Coming back is announced again.
    let (_back, _) = live(&server, &alice.token).await;
    let back = wait_for(&mut bob_ws, |f| presence_of(f, alice.id)).await;
    assert!(back.online, "{back:?}");
    assert_eq!(back.last_seen, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_reconnect_within_the_grace_period_does_not_flicker() {
    let server = start_presence();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let (mut first, _) = live(&server, &alice.token).await;
    wait_for(&mut bob_ws, |f| online_of(f, alice.id)).await;

    // Disconnect and reconnect at once (well within the 2 s grace period).
    first.close().await.unwrap();
    let (mut second, _) = live(&server, &alice.token).await;
    tokio::time::sleep(PAST_GRACE).await;

    let seen = drain_to_marker(&http, &mut bob_ws, &bob).await;
    let flicker: Vec<_> = seen
        .iter()
        .filter_map(|f| presence_of(f, alice.id))
        .collect();
    assert!(
        flicker.is_empty(),
        "a reconnect within the grace period must not be visible: {flicker:?}"
    );
    let now = http.presence(&bob.token, &[alice.id]).await.unwrap();
    assert!(now.presence[0].online, "{now:?}");

    // Staying away longer than the grace period is announced, with last seen.
    let before = now_ms();
    second.close().await.unwrap();
    let gone = wait_for(&mut bob_ws, |f| presence_of(f, alice.id)).await;
    assert!(!gone.online, "{gone:?}");
    assert!(gone.last_seen.is_some_and(|t| t >= before), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_contacts_and_not_strangers() {
    let server = start_presence();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let carol = user(&http, "carol").await;
    let stranger = user(&http, "stranger").await;
    // Bob shares a direct conversation with Alice, Carol a group.
    direct(&http, &alice, &bob).await;
    group(&http, &carol, &[&alice]).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let (mut carol_ws, _) = live(&server, &carol.token).await;
    let (mut stranger_ws, _) = live(&server, &stranger.token).await;

    let (mut alice_ws, _) = live(&server, &alice.token).await;
    assert!(
        wait_for(&mut bob_ws, |f| presence_of(f, alice.id))
            .await
            .online
    );
    assert!(
        wait_for(&mut carol_ws, |f| presence_of(f, alice.id))
            .await
            .online
    );
    // Alice's own devices learn of it too.
    let own = wait_for(&mut alice_ws, |f| presence_of(f, alice.id)).await;
    assert!(own.online);

    http.set_status(&alice.token, Availability::Away, Some("lunch"))
        .await
        .unwrap();
    let status = wait_for(&mut bob_ws, |f| presence_of(f, alice.id)).await;
    assert_eq!(status.status, Availability::Away);
    assert_eq!(status.text.as_deref(), Some("lunch"));
    wait_for(&mut carol_ws, |f| {
        presence_of(f, alice.id).filter(|p| p.status == Availability::Away)
    })
    .await;

    alice_ws.close().await.unwrap();
    assert!(
        !wait_for(&mut bob_ws, |f| presence_of(f, alice.id))
            .await
            .online
    );

    // The stranger got none of it: not the online, the status, nor the offline event.
    let seen = drain_to_marker(&http, &mut stranger_ws, &stranger).await;
    assert!(
        !seen.iter().any(|f| presence_of(f, alice.id).is_some()),
        "a stranger received Alice's presence events: {seen:?}"
    );

    // Anyone may still ask.
    let asked = http.presence(&stranger.token, &[alice.id]).await.unwrap();
    assert!(!asked.presence[0].online);
    assert!(asked.presence[0].last_seen.is_some());
}

/// Who hears a user's presence follows membership as it changes, also for a user who
/// is already online (whose contacts the server may have looked up before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_membership_changes() {
    let server = start_presence();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let dave = user(&http, "dave").await;
    direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let (mut dave_ws, _) = live(&server, &dave.token).await;
    let (_alice_ws, _) = live(&server, &alice.token).await;
    wait_for(&mut bob_ws, |f| online_of(f, alice.id)).await;

    let status_of = |wanted: Availability| {
        move |f: &ServerFrame| presence_of(f, alice.id).filter(|p| p.status == wanted)
    };
    let team = group(&http, &alice, &[&dave]).await;
    http.set_status(&alice.token, Availability::Away, None)
        .await
        .unwrap();
    wait_for(&mut dave_ws, status_of(Availability::Away)).await;

    http.remove_member(&alice.token, team, dave.id)
        .await
        .unwrap();
    http.set_status(&alice.token, Availability::DoNotDisturb, None)
        .await
        .unwrap();
    wait_for(&mut bob_ws, status_of(Availability::DoNotDisturb)).await;
    let seen = drain_to_marker(&http, &mut dave_ws, &dave).await;
    assert!(
        !seen
            .iter()
            .any(|f| status_of(Availability::DoNotDisturb)(f).is_some()),
        "a removed member still hears Alice's presence: {seen:?}"
    );

    http.add_member(&alice.token, team, dave.id).await.unwrap();
    http.set_status(&alice.token, Availability::Available, None)
        .await
        .unwrap();
    wait_for(&mut dave_ws, status_of(Availability::Available)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_presence_and_last_seen_of_several_users() {
    let server = start_presence();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let carol = user(&http, "carol").await;
    let never = user(&http, "never").await;
    direct(&http, &alice, &bob).await;
    direct(&http, &alice, &carol).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    let (_bob_ws, _) = live(&server, &bob.token).await;
    wait_for(&mut alice_ws, |f| online_of(f, bob.id)).await;
    let (mut carol_ws, _) = live(&server, &carol.token).await;
    wait_for(&mut alice_ws, |f| online_of(f, carol.id)).await;
    carol_ws.close().await.unwrap();
    let carol_gone = wait_for(&mut alice_ws, |f| offline_of(f, carol.id)).await;

    let list = http
        .presence(&alice.token, &[bob.id, carol.id, never.id])
        .await
        .unwrap();
    let by_user: Vec<(Id, bool, Option<i64>)> = list
        .presence
        .iter()
        .map(|p| (p.user, p.online, p.last_seen))
        .collect();
    assert_eq!(
        by_user,
        vec![
            (bob.id, true, None),
            (carol.id, false, carol_gone.last_seen),
            (never.id, false, None),
        ]
    );
    assert!(carol_gone.last_seen.is_some());
    for p in &list.presence {
        assert_eq!(p.status, Availability::Available, "default status: {p:?}");
        assert_eq!(p.text, None);
    }

    // Malformed queries are refused cleanly.
    let (status, body) = http
        .get_raw("/v1/presence?users=", Some(&alice.token))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = http
        .get_raw("/v1/presence?users=12,abc", Some(&alice.token))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let too_many: Vec<Id> = (1..=201).map(Id).collect();
    let err = http.presence(&alice.token, &too_many).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    let err = http.presence("not-a-token", &[bob.id]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_is_stored_and_survives_a_restart() {
    let mut server = start(&[
        ("PARLOR_PRESENCE__GRACE_SECS", "1"),
        ("PARLOR_PRESENCE__TICK_MS", "100"),
    ]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let carol = user(&http, "carol").await;
    direct(&http, &alice, &bob).await;
    direct(&http, &carol, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    wait_for(&mut bob_ws, |f| online_of(f, alice.id)).await;
    alice_ws.close().await.unwrap();
    let gone = wait_for(&mut bob_ws, |f| offline_of(f, alice.id)).await;
    let alice_seen = gone.last_seen.expect("last_seen");

    // Carol is still connected when the server stops.
    let carol_connected = now_ms();
    let (_carol_ws, _) = live(&server, &carol.token).await;
    wait_for(&mut bob_ws, |f| online_of(f, carol.id)).await;

    let status = tokio::task::block_in_place(|| server.terminate()).expect("terminate");
    assert!(status.success(), "graceful exit: {status:?}");
    let stopped = now_ms();
    tokio::task::block_in_place(|| server.restart()).expect("restart");
    let http = server.http();

    let list = http
        .presence(&bob.token, &[alice.id, carol.id])
        .await
        .unwrap();
    let alice_now = &list.presence[0];
    assert_eq!(alice_now.user, alice.id);
    assert!(!alice_now.online);
    assert_eq!(alice_now.last_seen, Some(alice_seen), "{alice_now:?}");
    // Carol was connected until the shutdown: her last seen is from then.
    let carol_now = &list.presence[1];
    assert_eq!(carol_now.user, carol.id);
    assert!(!carol_now.online);
    let carol_seen = carol_now
        .last_seen
        .unwrap_or_else(|| panic!("last seen of a user connected at shutdown: {carol_now:?}"));
    assert!(
        (carol_connected..=stopped).contains(&carol_seen),
        "carol last seen {carol_seen} outside [{carol_connected}, {stopped}]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_seen_live_and_in_queries() {
    let server = start_presence();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    direct(&http, &alice, &bob).await;
    let (mut bob_ws, _) = live(&server, &bob.token).await;
    let (mut alice_ws, _) = live(&server, &alice.token).await;
    wait_for(&mut bob_ws, |f| online_of(f, alice.id)).await;

    // Over REST: the answer is the presence others now see.
    let mine = http
        .set_status(&alice.token, Availability::Away, Some("back at 3"))
        .await
        .unwrap();
    assert_eq!(mine.user, alice.id);
    assert!(mine.online);
    assert_eq!(mine.status, Availability::Away);
    assert_eq!(mine.text.as_deref(), Some("back at 3"));
    let live_status = wait_for(&mut bob_ws, |f| presence_of(f, alice.id)).await;
    assert_eq!(live_status, mine);

    // Over WebSocket.
    alice_ws
        .send_frame(&ClientFrame::Status {
            status: Availability::DoNotDisturb,
            text: Some("focus".into()),
        })
        .await
        .unwrap();
    let dnd = wait_for(&mut bob_ws, |f| presence_of(f, alice.id)).await;
    assert_eq!(dnd.status, Availability::DoNotDisturb);
    assert_eq!(dnd.text.as_deref(), Some("focus"));
    assert!(dnd.online);

    let queried = http.presence(&bob.token, &[alice.id]).await.unwrap();
    assert_eq!(queried.presence[0].status, Availability::DoNotDisturb);
    assert_eq!(queried.presence[0].text.as_deref(), Some("focus"));

    // Back to available without text; a long text is cut to 140 characters.
    let cleared = http
        .set_status(&alice.token, Availability::Available, None)
        .await
        .unwrap();
    assert_eq!(cleared.status, Availability::Available);
    assert_eq!(cleared.text, None);
    let long = "é".repeat(500);
    let trimmed = http
        .set_status(&alice.token, Availability::Away, Some(&long))
        .await
        .unwrap();
    assert_eq!(
        trimmed.text.as_deref().map(|t| t.chars().count()),
        Some(140)
    );

    // A status that does not exist is refused.
    let (code, body) = put_status_raw(&server, &alice.token, r#"{"status":"asleep"}"#).await;
    assert_eq!(code, 400, "{body}");
}

async fn put_status_raw(
    server: &parlor_testkit::TestServer,
    token: &str,
    body: &str,
) -> (u16, String) {
    let response = reqwest::Client::new()
        .put(format!("{}/v1/me/status", server.base_url()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}
