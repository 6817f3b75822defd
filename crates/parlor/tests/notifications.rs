//! Notifications end to end against the real binary: who gets a push (offline vs
//! online, mute, mentions through a mute, do-not-disturb), what it carries (decrypted
//! with an independent RFC 8291 implementation, VAPID verified), collapse and badge,
//! pruning of gone targets, a restart mid-send without duplicates, the in-app feed with
//! read state across devices, target registration rules, and signed webhooks.
//!
//! The push service is `parlor_testkit::push::FakeProvider`, a local HTTPS server the
//! server trusts through `push.extra_ca_file`.

#![allow(clippy::unwrap_used)]

mod features;
mod support;

use features::*;
use parlor_client::proto::notify::{
    ConversationNotifications, MarkNotificationsRead, NewPushTarget, NotificationKind,
    NotificationPreferences, WebPushKeys,
};
use parlor_client::proto::rest::SendRequest;
use parlor_client::proto::ws::ServerFrame;
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{ClientError, Http};
use parlor_testkit::push::webpush::{verify_vapid, Browser};
use parlor_testkit::push::{FakeProvider, Recorded, Reply};
use parlor_testkit::TestServer;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// How long a test waits for "nothing more arrives" after a later push proved that the
/// notifier got past the message in question (pushes are sent concurrently, so a
/// later one can overtake an earlier one by a little).
const SETTLE: Duration = Duration::from_millis(700);

struct Setup {
    server: TestServer,
    http: Http,
    push: FakeProvider,
    _keys: tempfile::TempDir,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    setup_on(FakeProvider::start().await.unwrap(), extra)
}

fn setup_on(push: FakeProvider, extra: &[(&str, &str)]) -> Setup {
    let keys = tempfile::tempdir().unwrap();
    // Cluster nodes need a configured VAPID key (the embedded default makes one).
    let vapid = keys.path().join("vapid.pem");
    std::fs::write(
        &vapid,
        parlor_push::webpush::generate_vapid_key_pem().unwrap(),
    )
    .unwrap();
    let ca = push.ca_file().display().to_string();
    let vapid = vapid.display().to_string();
    let mut env = vec![
        ("PARLOR_PUSH__EXTRA_CA_FILE", ca.as_str()),
        ("PARLOR_PUSH__WEB_PUSH__VAPID_KEY_FILE", vapid.as_str()),
        ("PARLOR_PUSH__LEASE_SECS", "2"),
    ];
    env.extend_from_slice(extra);
    let server = start(&env);
    let http = server.http();
    Setup {
        server,
        http,
        push,
        _keys: keys,
    }
}

/// A registered Web Push subscription of one user, on the fake push service.
struct Device {
    browser: Browser,
    path: String,
    target: Id,
}

async fn subscribe(s: &Setup, user: &User) -> Device {
    let browser = Browser::new().unwrap();
    let name = parlor_testkit::unique_name("sub");
    let endpoint = Browser::endpoint(&s.push, &name);
    let view = s
        .http
        .register_push_target(
            &user.token,
            &NewPushTarget::WebPush {
                endpoint,
                keys: WebPushKeys {
                    p256dh: browser.p256dh(),
                    auth: browser.auth(),
                },
            },
        )
        .await
        .unwrap();
    Device {
        browser,
        path: format!("/push/{name}"),
        target: view.id,
    }
}

impl Device {
    fn requests(&self, push: &FakeProvider) -> Vec<Recorded> {
        push.requests()
            .into_iter()
            .filter(|r| r.path == self.path)
            .collect()
    }

    fn payloads(&self, push: &FakeProvider) -> Vec<Value> {
        self.requests(push).iter().map(|r| self.open(r)).collect()
    }

    fn open(&self, r: &Recorded) -> Value {
        serde_json::from_slice(&self.browser.decrypt(&r.body).unwrap()).unwrap()
    }

    /// Waits for a push whose body contains `text`.
    async fn wait_for(&self, push: &FakeProvider, text: &str) -> Value {
        poll(&format!("a push saying {text:?}"), || async {
            self.payloads(push)
                .into_iter()
                .find(|p| p["body"].as_str().is_some_and(|b| b.contains(text)))
        })
        .await
    }
}

/// Proves the notifier has handled everything `sender` sent before: a direct message
/// to `witness` (offline, subscribed) is pushed only after the earlier ones were decided.
async fn flush(s: &Setup, sender: &User, witness: &User, device: &Device) {
    let conv = direct(&s.http, sender, witness).await;
    let marker = parlor_testkit::unique_name("marker");
    post(&s.http, sender, conv, &marker).await;
    device.wait_for(&s.push, &marker).await;
    tokio::time::sleep(SETTLE).await;
}

fn seq_of(p: &Value) -> u64 {
    p["seq"]
        .as_u64()
        .or_else(|| p["seq"].as_str().and_then(|s| s.parse().ok()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_gets_an_encrypted_signed_push_with_badge_and_topic() {
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let phone = subscribe(&s, &bob).await;
    let conv = direct(&s.http, &alice, &bob).await;

    let ack = post(&s.http, &alice, conv, "are you there?").await;
    let p = phone.wait_for(&s.push, "are you there?").await;
    assert_eq!(p["title"], alice.name.as_str());
    assert_eq!(p["conv"], conv.to_string().as_str());
    assert_eq!(p["message"], ack.id.to_string().as_str());
    assert_eq!(p["sender"], alice.id.to_string().as_str());
    assert_eq!(p["reason"], "message");
    assert_eq!(p["badge"], 1);
    assert_eq!(seq_of(&p), ack.seq);

    let request = &phone.requests(&s.push)[0];
    let key = s.http.vapid_key(&bob.token).await.unwrap().public_key;
    let claims = verify_vapid(request, &key, &s.push.url()).unwrap();
    assert!(claims["sub"].as_str().is_some());
    assert_eq!(request.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(
        request.header("topic"),
        Some(format!("c{}", conv.0).as_str())
    );
    assert!(request.header("ttl").is_some());

    post(&s.http, &alice, conv, "second one").await;
    let p = phone.wait_for(&s.push, "second one").await;
    assert_eq!(p["badge"], 2, "the badge counts unread messages");
    // Reading lowers the badge of the next push.
    s.http
        .mark_read(&bob.token, conv, ack.seq + 1)
        .await
        .unwrap();
    post(&s.http, &alice, conv, "third one").await;
    let p = phone.wait_for(&s.push, "third one").await;
    assert_eq!(p["badge"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_user_gets_no_push_but_a_live_notification_for_a_mention() {
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let carol = user(&s.http, "carol").await;
    let bob_phone = subscribe(&s, &bob).await;
    let carol_phone = subscribe(&s, &carol).await;
    let conv = group(&s.http, &alice, &[&bob]).await;
    let (mut bob_ws, _) = live(&s.server, &bob.token).await;

    let ack = s
        .http
        .send_request(
            &alice.token,
            conv,
            &SendRequest {
                cid: Some("m1".into()),
                text: format!("@{} look", bob.name),
                reply_to: None,
                mentions: vec![bob.id],
                mention_all: false,
                attachments: vec![],
            },
        )
        .await
        .unwrap();
    let n = wait_for(&mut bob_ws, |f| match f {
        ServerFrame::Notification(n) => Some(n.clone()),
        _ => None,
    })
    .await;
    assert_eq!(n.kind, NotificationKind::Mention);
    assert_eq!((n.conv, n.seq, n.message), (conv, ack.seq, ack.id));
    assert_eq!(n.sender, alice.id);
    assert!(n.preview.contains("look"));
    assert!(!n.read);

    flush(&s, &alice, &carol, &carol_phone).await;
    assert!(
        bob_phone.requests(&s.push).is_empty(),
        "bob is connected: no push"
    );
    // The mention is in the feed too.
    let feed = s.http.notifications(&bob.token, None, None).await.unwrap();
    assert_eq!(feed.unread, 1);
    assert_eq!(feed.notifications[0].id, n.id);
}

async fn mention(http: &Http, from: &User, conv: Id, to: &User, text: &str) {
    http.send_request(
        &from.token,
        conv,
        &SendRequest {
            cid: None,
            text: text.into(),
            reply_to: None,
            mentions: vec![to.id],
            mention_all: false,
            attachments: vec![],
        },
    )
    .await
    .unwrap();
}

async fn mute(http: &Http, who: &User, conv: Id, until: Option<i64>, mentions: bool) {
    http.set_conversation_notifications(
        &who.token,
        conv,
        &ConversationNotifications {
            muted: true,
            until,
            mute_mentions: mentions,
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_group_pushes_only_mentions_unless_mentions_are_muted_too() {
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let carol = user(&s.http, "carol").await;
    let phone = subscribe(&s, &bob).await;
    let witness = subscribe(&s, &carol).await;
    let conv = group(&s.http, &alice, &[&bob]).await;

    mute(&s.http, &bob, conv, None, false).await;
    let stored = s
        .http
        .conversation_notifications(&bob.token, conv)
        .await
        .unwrap();
    assert!(stored.muted && stored.until.is_none() && !stored.mute_mentions);
    post(&s.http, &alice, conv, "plain while muted").await;
    mention(&s.http, &alice, conv, &bob, "mention while muted").await;
    let all = s
        .http
        .send_request(
            &alice.token,
            conv,
            &SendRequest {
                cid: None,
                text: "everyone while muted".into(),
                reply_to: None,
                mentions: vec![],
                mention_all: true,
                attachments: vec![],
            },
        )
        .await;
    all.unwrap();
    flush(&s, &alice, &carol, &witness).await;
    let bodies: Vec<String> = phone
        .payloads(&s.push)
        .iter()
        .map(|p| p["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        !bodies.iter().any(|b| b.contains("plain while muted")),
        "{bodies:?}"
    );
    // The two mentions collapse to the newest when both are still queued; at least the
    // newest arrives, and each is a mention.
    assert!(
        bodies.iter().any(|b| b.contains("everyone while muted")),
        "{bodies:?}"
    );
    assert!(phone
        .payloads(&s.push)
        .iter()
        .all(|p| p["reason"] == "mention"));

    // Mentions muted too: nothing.
    mute(&s.http, &bob, conv, None, true).await;
    let before = phone.requests(&s.push).len();
    mention(&s.http, &alice, conv, &bob, "mention fully muted").await;
    flush(&s, &alice, &carol, &witness).await;
    assert_eq!(phone.requests(&s.push).len(), before);

    // A mute that has ended is no mute.
    mute(&s.http, &bob, conv, Some(now_ms() - 1_000), true).await;
    let ended = s
        .http
        .conversation_notifications(&bob.token, conv)
        .await
        .unwrap();
    assert!(!ended.muted, "an ended mute reads as unmuted");
    post(&s.http, &alice, conv, "after the mute ended").await;
    phone.wait_for(&s.push, "after the mute ended").await;

    // Unmuting through the API; and a non-member may not mute.
    s.http
        .set_conversation_notifications(&bob.token, conv, &ConversationNotifications::default())
        .await
        .unwrap();
    let err = s
        .http
        .set_conversation_notifications(
            &carol.token,
            conv,
            &ConversationNotifications {
                muted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), ErrorCode::NotMember);
}

fn api_code(err: &ClientError) -> ErrorCode {
    match err {
        ClientError::Api { body, .. } => body.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_disturb_stops_pushes_but_the_feed_still_records_mentions() {
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let carol = user(&s.http, "carol").await;
    let phone = subscribe(&s, &bob).await;
    let witness = subscribe(&s, &carol).await;
    let conv = group(&s.http, &alice, &[&bob]).await;

    let prefs = NotificationPreferences {
        do_not_disturb: true,
        until: None,
    };
    s.http
        .set_notification_preferences(&bob.token, &prefs)
        .await
        .unwrap();
    assert_eq!(
        s.http.notification_preferences(&bob.token).await.unwrap(),
        prefs
    );
    post(&s.http, &alice, conv, "plain during dnd").await;
    mention(&s.http, &alice, conv, &bob, "mention during dnd").await;
    flush(&s, &alice, &carol, &witness).await;
    assert!(phone.requests(&s.push).is_empty());
    let feed = s.http.notifications(&bob.token, None, None).await.unwrap();
    assert_eq!(feed.notifications.len(), 1);
    assert!(feed.notifications[0].preview.contains("mention during dnd"));

    // Do-not-disturb that has ended, then off.
    s.http
        .set_notification_preferences(
            &bob.token,
            &NotificationPreferences {
                do_not_disturb: true,
                until: Some(now_ms() - 1),
            },
        )
        .await
        .unwrap();
    let ended = s.http.notification_preferences(&bob.token).await.unwrap();
    assert!(
        !ended.do_not_disturb,
        "an ended do-not-disturb reads as off"
    );
    post(&s.http, &alice, conv, "dnd has ended").await;
    phone.wait_for(&s.push, "dnd has ended").await;
    s.http
        .set_notification_preferences(&bob.token, &NotificationPreferences::default())
        .await
        .unwrap();
    assert!(
        !s.http
            .notification_preferences(&bob.token)
            .await
            .unwrap()
            .do_not_disturb
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_pushes_of_one_conversation_collapse_to_the_newest() {
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let carol = user(&s.http, "carol").await;
    let phone = subscribe(&s, &bob).await;
    let conv = direct(&s.http, &alice, &bob).await;

    // The service is down for bob: every push to it is retried.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    {
        let (up, accepted) = (Arc::clone(&up), Arc::clone(&accepted));
        s.push.respond(move |r| {
            if up.load(std::sync::atomic::Ordering::SeqCst) {
                accepted.lock().unwrap().push(r.body.to_vec());
                Reply::status(201)
            } else {
                Reply::status(503).with_header("retry-after", "1")
            }
        });
    }
    for i in 1..=3 {
        post(&s.http, &alice, conv, &format!("burst {i}")).await;
    }
    s.push.wait_for(1, WAIT).await.unwrap();
    // A later message's push attempt proves the burst was decided and queued.
    let witness = subscribe(&s, &carol).await;
    let carol_conv = direct(&s.http, &alice, &carol).await;
    post(&s.http, &alice, carol_conv, "witness").await;
    poll("the witness push attempt", || async {
        (!witness.requests(&s.push).is_empty()).then_some(())
    })
    .await;
    up.store(true, std::sync::atomic::Ordering::SeqCst);

    poll("bob's push after the service is back", || async {
        let got = accepted.lock().unwrap().clone();
        got.iter()
            .filter_map(|b| phone.browser.decrypt(b).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .find(|p| p["body"] == "burst 3")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivered: Vec<Value> = accepted
        .lock()
        .unwrap()
        .iter()
        .filter_map(|b| phone.browser.decrypt(b).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .collect();
    assert_eq!(
        delivered.len(),
        1,
        "older queued pushes of the conversation were retired: {delivered:?}"
    );
    assert_eq!(delivered[0]["body"], "burst 3");
    assert_eq!(delivered[0]["badge"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_the_push_service_reports_gone_is_removed() {
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let phone = subscribe(&s, &bob).await;
    let kept = subscribe(&s, &bob).await;
    let gone_path = phone.path.clone();
    s.push.respond(move |r| {
        if r.path == gone_path {
            Reply::status(410)
        } else {
            Reply::status(201)
        }
    });
    let conv = direct(&s.http, &alice, &bob).await;
    post(&s.http, &alice, conv, "hello").await;
    kept.wait_for(&s.push, "hello").await;
    poll("the gone target to be removed", || async {
        let targets = s.http.push_targets(&bob.token).await.unwrap().targets;
        (targets.len() == 1 && targets[0].id == kept.target).then_some(())
    })
    .await;
    let metrics = s.http.metrics().await.unwrap();
    assert!(
        metrics.contains("parlor_pushes_total{outcome=\"pruned\",provider=\"web_push\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("pushes"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_send_sends_every_push_exactly_once() {
    let mut s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let mut people = Vec::new();
    for i in 0..6 {
        let u = user(&s.http, &format!("p{i}")).await;
        let d = subscribe(&s, &u).await;
        let conv = direct(&s.http, &alice, &u).await;
        people.push((u, d, conv));
    }
    // The service accepts three pushes, then fails until the restart.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let (accepted, failing) = (Arc::clone(&accepted), Arc::clone(&failing));
        s.push.respond(move |r| {
            let mut got = accepted.lock().unwrap();
            if got.len() < 3 || !failing.load(std::sync::atomic::Ordering::SeqCst) {
                got.push(r.path.clone());
                Reply::status(201)
            } else {
                Reply::status(503).with_header("retry-after", "1")
            }
        });
    }
    for (u, _, conv) in &people {
        post(&s.http, &alice, *conv, &format!("for {}", u.name)).await;
    }
    s.push.wait_for(6, WAIT).await.unwrap();
    // Let the sender record what it learned, then kill the node without warning.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(&mut s.server);
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    restart(&mut s.server);

    poll("every person's push accepted", || async {
        let got = accepted.lock().unwrap().clone();
        people
            .iter()
            .all(|(_, d, _)| got.contains(&d.path))
            .then_some(())
    })
    .await;
    // Give a duplicate every chance to show up (leases are 2 s here).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = accepted.lock().unwrap().clone();
    for (u, d, _) in &people {
        let n = got.iter().filter(|p| **p == d.path).count();
        assert_eq!(n, 1, "{} got {n} pushes: {got:?}", u.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_paginates_and_its_read_state_follows_across_devices() {
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let conv = group(&s.http, &alice, &[&bob]).await;
    let mine = post(&s.http, &bob, conv, "my message").await;
    for i in 1..=3 {
        mention(&s.http, &alice, conv, &bob, &format!("mention {i}")).await;
    }
    s.http
        .send_request(
            &alice.token,
            conv,
            &SendRequest {
                cid: None,
                text: "a reply".into(),
                reply_to: Some(mine.seq),
                mentions: vec![],
                mention_all: false,
                attachments: vec![],
            },
        )
        .await
        .unwrap();
    let all = poll("four notifications", || async {
        let page = s.http.notifications(&bob.token, None, None).await.unwrap();
        (page.notifications.len() == 4).then_some(page)
    })
    .await;
    assert_eq!(all.unread, 4);
    assert_eq!(all.notifications[0].kind, NotificationKind::Reply);
    assert!(all.notifications[1..]
        .iter()
        .all(|n| n.kind == NotificationKind::Mention));
    let ids: Vec<Id> = all.notifications.iter().map(|n| n.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    // Alice is not notified of her own messages.
    let own = s
        .http
        .notifications(&alice.token, None, None)
        .await
        .unwrap();
    assert!(own.notifications.is_empty());

    let first = s
        .http
        .notifications(&bob.token, None, Some(3))
        .await
        .unwrap();
    assert_eq!(first.notifications.len(), 3);
    let rest = s
        .http
        .notifications(&bob.token, first.next_before, Some(3))
        .await
        .unwrap();
    assert_eq!(rest.notifications.len(), 1);
    assert!(rest.next_before.is_none());
    assert_eq!(rest.notifications[0].id, ids[3]);

    let (mut laptop, _) = live(&s.server, &bob.token).await;
    let read = s
        .http
        .mark_notifications_read(
            &bob.token,
            &MarkNotificationsRead {
                ids: vec![ids[0]],
                up_to: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((read.ids.clone(), read.unread), (vec![ids[0]], 3));
    let seen = wait_for(&mut laptop, |f| match f {
        ServerFrame::NotificationsRead(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(seen, read);
    let read = s
        .http
        .mark_notifications_read(
            &bob.token,
            &MarkNotificationsRead {
                ids: vec![],
                up_to: Some(ids[0]),
            },
        )
        .await
        .unwrap();
    assert_eq!(read.unread, 0);
    assert_eq!(read.ids.len(), 3);
    let page = s.http.notifications(&bob.token, None, None).await.unwrap();
    assert!(page.notifications.iter().all(|n| n.read));
    // Someone else's ids change nothing.
    let none = s
        .http
        .mark_notifications_read(
            &alice.token,
            &MarkNotificationsRead {
                ids: ids.clone(),
                up_to: None,
            },
        )
        .await
        .unwrap();
    assert!(none.ids.is_empty());
    let err = s
        .http
        .notifications(&bob.token, None, Some(0))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), ErrorCode::InvalidPagination);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_targets_are_validated_listed_and_removed_by_their_owner_only() {
    let s = setup(&[]).await;
    let bob = user(&s.http, "bob").await;
    let eve = user(&s.http, "eve").await;
    let browser = Browser::new().unwrap();
    let keys = WebPushKeys {
        p256dh: browser.p256dh(),
        auth: browser.auth(),
    };
    let register = |target: NewPushTarget| {
        let http = s.http.clone();
        let token = bob.token.clone();
        async move { http.register_push_target(&token, &target).await }
    };
    for (target, code) in [
        (
            NewPushTarget::WebPush {
                endpoint: "http://push.example/x".into(),
                keys: keys.clone(),
            },
            ErrorCode::InvalidTarget,
        ),
        (
            NewPushTarget::WebPush {
                endpoint: Browser::endpoint(&s.push, "bad-key"),
                keys: WebPushKeys {
                    p256dh: "AAAA".into(),
                    auth: keys.auth.clone(),
                },
            },
            ErrorCode::InvalidTarget,
        ),
        (
            NewPushTarget::Fcm {
                token: "abc".into(),
            },
            ErrorCode::ProviderNotConfigured,
        ),
        (
            NewPushTarget::Webhook {
                url: "https://127.0.0.1:9/hook".into(),
            },
            ErrorCode::InvalidTarget,
        ),
    ] {
        let err = register(target.clone()).await.unwrap_err();
        assert_eq!(api_code(&err), code, "{target:?}");
    }
    let (status, body) = s
        .http
        .post_raw(
            "/v1/push/targets",
            Some(&bob.token),
            "application/json",
            br#"{"kind":"carrier_pigeon"}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");

    let endpoint = Browser::endpoint(&s.push, "phone");
    let first = register(NewPushTarget::WebPush {
        endpoint: endpoint.clone(),
        keys: keys.clone(),
    })
    .await
    .unwrap();
    // The same subscription again (a page reload) keeps its id.
    let again = register(NewPushTarget::WebPush {
        endpoint: endpoint.clone(),
        keys: keys.clone(),
    })
    .await
    .unwrap();
    assert_eq!(first.id, again.id);
    let listed = s.http.push_targets(&bob.token).await.unwrap().targets;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].address, endpoint);
    assert!(s
        .http
        .push_targets(&eve.token)
        .await
        .unwrap()
        .targets
        .is_empty());

    let err = s
        .http
        .remove_push_target(&eve.token, first.id)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), ErrorCode::NotFound);
    s.http
        .remove_push_target(&bob.token, first.id)
        .await
        .unwrap();
    assert!(s
        .http
        .push_targets(&bob.token)
        .await
        .unwrap()
        .targets
        .is_empty());

    for i in 0..20 {
        register(NewPushTarget::WebPush {
            endpoint: Browser::endpoint(&s.push, &format!("d{i}")),
            keys: keys.clone(),
        })
        .await
        .unwrap();
    }
    let err = register(NewPushTarget::WebPush {
        endpoint: Browser::endpoint(&s.push, "one-too-many"),
        keys,
    })
    .await
    .unwrap_err();
    assert_eq!(api_code(&err), ErrorCode::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_target_receives_signed_deliveries() {
    let s = setup(&[("PARLOR_PUSH__WEBHOOK__ALLOW_PRIVATE", "true")]).await;
    let alice = user(&s.http, "alice").await;
    let bot = user(&s.http, "bot").await;
    let url = format!("{}/hooks/bot", s.push.url());
    let target = s
        .http
        .register_push_target(&bot.token, &NewPushTarget::Webhook { url })
        .await
        .unwrap();
    let secret = target.secret.clone().expect("the secret is shown once");
    let listed = s.http.push_targets(&bot.token).await.unwrap().targets;
    assert!(listed[0].secret.is_none(), "and only once");

    let conv = direct(&s.http, &alice, &bot).await;
    let ack = post(&s.http, &alice, conv, "ping the bot").await;
    let hook = poll("the webhook delivery", || async {
        s.push
            .requests()
            .into_iter()
            .find(|r| r.path == "/hooks/bot")
    })
    .await;
    parlor_testkit::push::webhook::verify_signature(&hook, &secret, 300).unwrap();
    assert!(parlor_testkit::push::webhook::verify_signature(&hook, "not the secret", 300).is_err());
    let body = hook.json().unwrap();
    assert_eq!(body["message"], ack.id.to_string().as_str());
    assert_eq!(body["body"], "ping the bot");
    assert!(hook.header("x-parlor-delivery").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_and_apns_targets_get_pushes_through_the_configured_providers() {
    use parlor_testkit::push::apns::ApnsKey;
    use parlor_testkit::push::fcm::ServiceAccount;

    let push = FakeProvider::start().await.unwrap();
    let account = Arc::new(ServiceAccount::generate().unwrap());
    let apple = Arc::new(ApnsKey::generate().unwrap());
    let files = tempfile::tempdir().unwrap();
    let account_file = files.path().join("service-account.json");
    std::fs::write(
        &account_file,
        account.json(&format!("{}/token", push.url()), "parlor-test"),
    )
    .unwrap();
    let key_file = files.path().join("AuthKey.p8");
    std::fs::write(&key_file, apple.pem()).unwrap();
    push.respond(|r| {
        if r.path == "/token" {
            Reply::json(
                200,
                &serde_json::json!({"access_token": "fcm-access", "expires_in": 3600, "token_type": "Bearer"}),
            )
        } else if r.path.starts_with("/v1/projects/") {
            Reply::json(200, &serde_json::json!({"name": "projects/parlor-test/messages/1"}))
        } else {
            Reply::status(200)
        }
    });
    let url = push.url();
    let account_file = account_file.display().to_string();
    let key_file = key_file.display().to_string();
    let s = setup_on(
        push,
        &[
            ("PARLOR_PUSH__FCM__SERVICE_ACCOUNT_FILE", &account_file),
            ("PARLOR_PUSH__FCM__BASE_URL", &url),
            ("PARLOR_PUSH__APNS__KEY_FILE", &key_file),
            ("PARLOR_PUSH__APNS__KEY_ID", &apple.key_id),
            ("PARLOR_PUSH__APNS__TEAM_ID", &apple.team_id),
            ("PARLOR_PUSH__APNS__TOPIC", "chat.parlor.app"),
            ("PARLOR_PUSH__APNS__BASE_URL", &url),
        ],
    );
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let device_token = "a1".repeat(32);
    s.http
        .register_push_target(
            &bob.token,
            &NewPushTarget::Fcm {
                token: "fcm-registration-token".into(),
            },
        )
        .await
        .unwrap();
    s.http
        .register_push_target(
            &bob.token,
            &NewPushTarget::Apns {
                token: device_token.clone(),
            },
        )
        .await
        .unwrap();
    let conv = direct(&s.http, &alice, &bob).await;
    let ack = post(&s.http, &alice, conv, "to the phone apps").await;

    let requests = poll("the FCM and APNs requests", || async {
        let got = s.push.requests();
        let fcm = got
            .iter()
            .find(|r| r.path.starts_with("/v1/projects/"))?
            .clone();
        let apns = got
            .iter()
            .find(|r| r.path.starts_with("/3/device/"))?
            .clone();
        let token = got.iter().find(|r| r.path == "/token")?.clone();
        Some((token, fcm, apns))
    })
    .await;
    let (token, fcm, apns) = requests;
    account.verify_assertion(&token.body).unwrap();
    assert_eq!(fcm.path, "/v1/projects/parlor-test/messages:send");
    assert_eq!(fcm.header("authorization"), Some("Bearer fcm-access"));
    let body = fcm.json().unwrap();
    assert_eq!(body["message"]["token"], "fcm-registration-token");
    assert_eq!(body["message"]["notification"]["body"], "to the phone apps");
    assert_eq!(
        body["message"]["data"]["message"],
        ack.id.to_string().as_str()
    );
    assert_eq!(
        body["message"]["android"]["collapse_key"],
        format!("c{}", conv.0).as_str()
    );

    assert_eq!(apns.version, reqwest::Version::HTTP_2);
    assert_eq!(apns.path, format!("/3/device/{device_token}"));
    apple
        .verify_provider_token(apns.header("authorization").unwrap())
        .unwrap();
    assert_eq!(apns.header("apns-topic"), Some("chat.parlor.app"));
    assert_eq!(
        apns.header("apns-collapse-id"),
        Some(format!("c{}", conv.0).as_str())
    );
    let body = apns.json().unwrap();
    assert_eq!(body["aps"]["alert"]["body"], "to the phone apps");
    assert_eq!(body["aps"]["badge"], 1);

    // The counters move once the server has the providers' answers.
    let http = s.http.clone();
    poll("the sent counters and the latency histogram", || {
        let http = http.clone();
        async move {
            let metrics = http.metrics().await.ok()?;
            let sent = ["fcm", "apns"].iter().all(|p| {
                metrics.contains(&format!(
                    "parlor_pushes_total{{outcome=\"sent\",provider=\"{p}\"}} 1"
                ))
            });
            (sent && metrics.contains("parlor_push_latency_seconds_count 2")).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_committed_while_the_notifier_was_down_are_pushed_after_a_restart() {
    let mut s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let phone = subscribe(&s, &bob).await;
    let conv = direct(&s.http, &alice, &bob).await;
    post(&s.http, &alice, conv, "before the outage").await;
    phone.wait_for(&s.push, "before the outage").await;
    // Let the node record that push as sent: a push in flight when a node dies is sent
    // again after its lease (see a_restart_mid_send…), which is not what this checks.
    tokio::time::sleep(SETTLE).await;

    s.server.set_env("PARLOR_PUSH__ENABLED", "false");
    restart(&mut s.server);
    s.http = s.server.http();
    post(&s.http, &alice, conv, "while the notifier was off").await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(phone.requests(&s.push).len(), 1);

    s.server.set_env("PARLOR_PUSH__ENABLED", "true");
    restart(&mut s.server);
    s.http = s.server.http();
    phone.wait_for(&s.push, "while the notifier was off").await;
    tokio::time::sleep(SETTLE).await;
    let bodies: Vec<Value> = phone.payloads(&s.push);
    assert_eq!(bodies.len(), 2, "nothing sent twice: {bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_do_not_disturb_presence_status_also_stops_pushes() {
    use parlor_client::proto::rest::Availability;
    let s = setup(&[]).await;
    let alice = user(&s.http, "alice").await;
    let bob = user(&s.http, "bob").await;
    let carol = user(&s.http, "carol").await;
    let phone = subscribe(&s, &bob).await;
    let witness = subscribe(&s, &carol).await;
    let conv = direct(&s.http, &alice, &bob).await;
    s.http
        .set_status(&bob.token, Availability::DoNotDisturb, Some("focus"))
        .await
        .unwrap();
    post(&s.http, &alice, conv, "while bob focuses").await;
    flush(&s, &alice, &carol, &witness).await;
    assert!(phone.requests(&s.push).is_empty());
    s.http
        .set_status(&bob.token, Availability::Available, None)
        .await
        .unwrap();
    post(&s.http, &alice, conv, "bob is available").await;
    phone.wait_for(&s.push, "bob is available").await;
}
