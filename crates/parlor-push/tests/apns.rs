//! The APNs adapter against a local HTTPS server playing APNs, over HTTP/2.

mod support;

use parlor_core::notify::{PushOutcome, PushReason, TargetAddress};
use parlor_core::ports::PushProvider;
use parlor_push::apns::{apns_id, validate_token, ApnsConfig, ApnsProvider};
use parlor_testkit::push::apns::ApnsKey;
use parlor_testkit::push::{FakeProvider, Recorded, Reply};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::{message, WAIT};

const TOPIC: &str = "org.parlor.app";

struct Setup {
    provider: FakeProvider,
    key: ApnsKey,
    apns: ApnsProvider,
}

async fn setup() -> Setup {
    let provider = FakeProvider::start().await.expect("fake provider");
    let key = ApnsKey::generate().expect("APNs key");
    let apns = ApnsProvider::new(ApnsConfig {
        key_pem: key.pem(),
        key_id: key.key_id.clone(),
        team_id: key.team_id.clone(),
        topic: TOPIC.into(),
        base_url: Some(provider.url()),
        client: support::client(&provider),
    })
    .expect("APNs provider");
    provider.respond(ok);
    Setup {
        provider,
        key,
        apns,
    }
}

fn device() -> String {
    "a1b2c3d4".repeat(8)
}

fn target() -> TargetAddress {
    TargetAddress::Apns { token: device() }
}

fn ok(req: &Recorded) -> Reply {
    let id = req.header("apns-id").unwrap_or_default().to_string();
    Reply::status(200).with_header("apns-id", &id)
}

fn refusal(status: u16, reason: &str) -> Reply {
    Reply::json(status, &json!({"reason": reason}))
}

#[tokio::test]
async fn the_request_is_http2_with_every_header_and_the_payload() {
    let s = setup().await;
    let before = support::unix_now();
    let outcome = s
        .apns
        .send(&target(), &message(5, PushReason::Mention))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);
    let after = support::unix_now();

    let reqs = s.provider.wait_for(1, WAIT).await.expect("one request");
    let req = &reqs[0];
    assert_eq!(req.version, reqwest::Version::HTTP_2);
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, format!("/3/device/{}", device()));
    let claims = s
        .key
        .verify_provider_token(req.header("authorization").expect("authorization"))
        .expect("provider token verifies");
    assert_eq!(claims["iss"], s.key.team_id.as_str());
    assert!(req
        .header("authorization")
        .is_some_and(|a| a.starts_with("bearer ")));
    assert_eq!(req.header("apns-topic"), Some(TOPIC));
    assert_eq!(req.header("apns-push-type"), Some("alert"));
    assert_eq!(req.header("apns-priority"), Some("10"));
    assert_eq!(req.header("apns-collapse-id"), Some("c42"));
    assert_eq!(req.header("apns-id"), Some(apns_id(5).as_str()));
    let expiration: u64 = req
        .header("apns-expiration")
        .expect("apns-expiration")
        .parse()
        .expect("decimal seconds");
    assert!(
        (before + 86_400..=after + 86_400).contains(&expiration),
        "{expiration}"
    );
    assert_eq!(
        req.json().expect("JSON body"),
        json!({
            "aps": {
                "alert": {"title": "Ada in Engines", "body": "the analytical one, \"quoted\" ✓"},
                "badge": 3,
                "sound": "default",
                "thread-id": "c42",
            },
            "conv": "42",
            "seq": "17",
            "message": "9007199254740993",
            "sender": "7",
            "reason": "mention",
        })
    );
}

#[tokio::test]
async fn plain_messages_are_priority_5() {
    let s = setup().await;
    let outcome = s
        .apns
        .send(&target(), &message(5, PushReason::Message))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);
    let req = &s.provider.requests()[0];
    assert_eq!(req.header("apns-priority"), Some("5"));
    assert_eq!(req.json().expect("JSON")["reason"], "message");
}

#[tokio::test]
async fn apns_id_is_stable_for_a_push_and_the_token_is_reused() {
    let s = setup().await;
    for id in [5, 5, 6] {
        let outcome = s
            .apns
            .send(&target(), &message(id, PushReason::Reply))
            .await;
        assert_eq!(outcome, PushOutcome::Sent);
    }
    let reqs = s.provider.requests();
    let ids: Vec<_> = reqs.iter().map(|r| r.header("apns-id")).collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    let id = ids[0].expect("apns-id");
    // Canonical 8-4-4-4-12 lowercase, as APNs requires.
    let groups: Vec<_> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
    assert!(id
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let auth: Vec<_> = reqs.iter().map(|r| r.header("authorization")).collect();
    assert!(auth.iter().all(|a| *a == auth[0]), "one provider token");
}

#[tokio::test]
async fn an_expired_provider_token_retries_and_the_next_send_signs_a_new_one() {
    let s = setup().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    s.provider.respond(move |req| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            refusal(403, "ExpiredProviderToken")
        } else {
            ok(req)
        }
    });
    let outcome = s
        .apns
        .send(&target(), &message(5, PushReason::Message))
        .await;
    match outcome {
        PushOutcome::Retry { reason, .. } => assert!(reason.contains("ExpiredProviderToken")),
        other => panic!("expected Retry, got {other:?}"),
    }
    let outcome = s
        .apns
        .send(&target(), &message(5, PushReason::Message))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);
    let reqs = s.provider.requests();
    let (first, second) = (
        reqs[0].header("authorization").expect("authorization"),
        reqs[1].header("authorization").expect("authorization"),
    );
    assert_ne!(first, second, "a fresh token after ExpiredProviderToken");
    s.key
        .verify_provider_token(second)
        .expect("fresh token verifies");
    assert_eq!(reqs[0].header("apns-id"), reqs[1].header("apns-id"));
}

async fn outcome_of(reply: Reply) -> PushOutcome {
    let s = setup().await;
    s.provider.respond(move |_| reply.clone());
    s.apns
        .send(&target(), &message(5, PushReason::Message))
        .await
}

#[tokio::test]
async fn unregistered_is_gone() {
    let reply = Reply::json(
        410,
        &json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}),
    );
    assert_eq!(outcome_of(reply).await, PushOutcome::Gone);
}

#[tokio::test]
async fn bad_device_tokens_are_gone() {
    assert_eq!(
        outcome_of(refusal(400, "BadDeviceToken")).await,
        PushOutcome::Gone
    );
    assert_eq!(
        outcome_of(refusal(400, "DeviceTokenNotForTopic")).await,
        PushOutcome::Gone
    );
}

#[tokio::test]
async fn overload_and_server_errors_are_retried() {
    for reply in [
        refusal(503, "ServiceUnavailable"),
        refusal(500, "InternalServerError"),
        refusal(429, "TooManyRequests"),
    ] {
        let outcome = outcome_of(reply).await;
        assert!(matches!(outcome, PushOutcome::Retry { .. }), "{outcome:?}");
    }
}

#[tokio::test]
async fn other_refusals_fail_with_apples_reason() {
    for (status, reason) in [
        (400, "PayloadEmpty"),
        (403, "InvalidProviderToken"),
        (400, "TopicDisallowed"),
    ] {
        match outcome_of(refusal(status, reason)).await {
            PushOutcome::Failed { reason: r } => assert!(r.contains(reason), "{r}"),
            other => panic!("expected Failed for {reason}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_verifier_refuses_other_keys_and_altered_tokens() {
    let s = setup().await;
    assert_eq!(
        s.apns
            .send(&target(), &message(5, PushReason::Message))
            .await,
        PushOutcome::Sent
    );
    let auth = s.provider.requests()[0]
        .header("authorization")
        .expect("authorization")
        .to_string();
    s.key.verify_provider_token(&auth).expect("genuine token");
    let stranger = ApnsKey::generate().expect("APNs key");
    assert!(stranger.verify_provider_token(&auth).is_err());
    let mut altered = auth.into_bytes();
    let at = altered.len() - 3;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ASCII");
    assert!(s.key.verify_provider_token(&altered).is_err());
}

#[tokio::test]
async fn other_targets_and_bad_tokens_fail_without_a_request() {
    let s = setup().await;
    let fcm = TargetAddress::Fcm {
        token: "abc".into(),
    };
    for target in [
        fcm,
        TargetAddress::Apns {
            token: "xyz".into(),
        },
    ] {
        let outcome = s.apns.send(&target, &message(5, PushReason::Message)).await;
        assert!(matches!(outcome, PushOutcome::Failed { .. }), "{outcome:?}");
    }
    assert!(s.provider.requests().is_empty());
}

#[test]
fn token_validation() {
    assert!(validate_token(&"ab".repeat(32)).is_ok());
    assert!(validate_token(&"AB".repeat(16)).is_ok());
    assert!(validate_token(&"ab".repeat(200)).is_ok());
    assert!(validate_token(&"ab".repeat(201)).is_err());
    assert!(validate_token(&"ab".repeat(15)).is_err());
    assert!(validate_token(&format!("{}a", "ab".repeat(32))).is_err());
    assert!(validate_token(&"zz".repeat(32)).is_err());
    assert!(validate_token("").is_err());
}

#[test]
fn bad_keys_are_refused() {
    let key = ApnsKey::generate().expect("APNs key");
    let good = ApnsConfig {
        key_pem: key.pem(),
        key_id: key.key_id.clone(),
        team_id: key.team_id.clone(),
        topic: TOPIC.into(),
        ..ApnsConfig::default()
    };
    assert!(ApnsProvider::new(good.clone()).is_ok());
    assert!(ApnsProvider::new(ApnsConfig {
        key_pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
        ..good.clone()
    })
    .is_err());
    assert!(ApnsProvider::new(ApnsConfig {
        topic: "has space".into(),
        ..good.clone()
    })
    .is_err());
    let debug = format!("{good:?}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}
