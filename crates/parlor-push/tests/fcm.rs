//! The FCM adapter against a local HTTPS server playing both Google's token endpoint
//! (`/token`) and the FCM HTTP v1 API.

mod support;

use parlor_core::notify::{PushOutcome, PushReason, TargetAddress};
use parlor_core::ports::PushProvider;
use parlor_push::fcm::{validate_token, FcmConfig, FcmProvider};
use parlor_testkit::push::fcm::ServiceAccount;
use parlor_testkit::push::{FakeProvider, Recorded, Reply};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use support::{message, WAIT};

const PROJECT: &str = "parlor-test";
const SEND_PATH: &str = "/v1/projects/parlor-test/messages:send";
const DEVICE: &str = "dXNlcjEyMzQ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx";

struct Setup {
    provider: FakeProvider,
    account: &'static ServiceAccount,
    fcm: FcmProvider,
}

/// One key for the whole binary: RSA key generation is the slow part of these tests.
fn shared_account() -> &'static ServiceAccount {
    static ACCOUNT: OnceLock<ServiceAccount> = OnceLock::new();
    ACCOUNT.get_or_init(|| ServiceAccount::generate().expect("service account"))
}

async fn setup() -> Setup {
    let provider = FakeProvider::start().await.expect("fake provider");
    let account = shared_account();
    let fcm = FcmProvider::new(FcmConfig {
        service_account_json: account.json(&format!("{}/token", provider.url()), PROJECT),
        base_url: Some(provider.url()),
        token_url: None,
        client: support::client(&provider),
    })
    .expect("FCM provider");
    Setup {
        provider,
        account,
        fcm,
    }
}

fn target() -> TargetAddress {
    TargetAddress::Fcm {
        token: DEVICE.into(),
    }
}

fn token_reply(n: usize) -> Reply {
    Reply::json(
        200,
        &json!({"access_token": format!("ya29.test-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
    )
}

/// Answers the token endpoint with numbered tokens and sends with `send`.
fn script(
    provider: &FakeProvider,
    send: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
) -> Arc<AtomicUsize> {
    let exchanges = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&exchanges);
    provider.respond(move |req| {
        if req.path == "/token" {
            token_reply(counter.fetch_add(1, Ordering::SeqCst) + 1)
        } else {
            send(req)
        }
    });
    exchanges
}

fn fcm_error(code: u16, status: &str, error_code: Option<&str>, message: &str) -> Reply {
    let mut details = vec![];
    if let Some(e) = error_code {
        details.push(
            json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": e}),
        );
    }
    Reply::json(
        code,
        &json!({"error": {"code": code, "message": message, "status": status, "details": details}}),
    )
}

fn sent_ok(_: &Recorded) -> Reply {
    Reply::json(
        200,
        &json!({"name": "projects/parlor-test/messages/0:1700000000"}),
    )
}

#[tokio::test]
async fn token_exchange_and_send_are_as_documented() {
    let s = setup().await;
    script(&s.provider, sent_ok);
    let before = support::unix_now() as i64;
    let outcome = s
        .fcm
        .send(&target(), &message(5, PushReason::Mention))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);

    let reqs = s.provider.wait_for(2, WAIT).await.expect("two requests");
    let (exchange, push) = (&reqs[0], &reqs[1]);
    assert_eq!(exchange.method, "POST");
    assert_eq!(exchange.path, "/token");
    assert_eq!(
        exchange.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let claims = s
        .account
        .verify_assertion(&exchange.body)
        .expect("assertion verifies");
    assert_eq!(claims["aud"], format!("{}/token", s.provider.url()));
    let iat = claims["iat"].as_i64().expect("iat");
    assert!(iat >= before - 1, "iat {iat} before the send started");
    assert_eq!(claims["exp"].as_i64(), Some(iat + 3600));

    assert_eq!(push.method, "POST");
    assert_eq!(push.path, SEND_PATH);
    assert_eq!(push.header("authorization"), Some("Bearer ya29.test-1"));
    assert_eq!(push.header("content-type"), Some("application/json"));
    assert_eq!(
        push.json().expect("JSON body"),
        json!({"message": {
            "token": DEVICE,
            "notification": {"title": "Ada in Engines", "body": "the analytical one, \"quoted\" ✓"},
            "data": {
                "conv": "42", "seq": "17", "message": "9007199254740993", "sender": "7",
                "reason": "mention", "badge": "3", "ts": "1700000000123",
            },
            "android": {
                "collapse_key": "c42",
                "priority": "HIGH",
                "ttl": "86400s",
                "notification": {"tag": "c42", "notification_count": 3},
            },
            "apns": {
                "headers": {"apns-collapse-id": "c42", "apns-priority": "10"},
                "payload": {"aps": {"badge": 3, "thread-id": "c42"}},
            },
        }})
    );
}

#[tokio::test]
async fn plain_messages_are_normal_priority() {
    let s = setup().await;
    script(&s.provider, sent_ok);
    let outcome = s
        .fcm
        .send(&target(), &message(5, PushReason::Message))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);
    let body = s.provider.requests()[1].json().expect("JSON body");
    assert_eq!(body["message"]["android"]["priority"], "NORMAL");
    assert_eq!(body["message"]["apns"]["headers"]["apns-priority"], "5");
    assert_eq!(body["message"]["data"]["reason"], "message");
}

#[tokio::test]
async fn the_access_token_is_cached_across_sends() {
    let s = setup().await;
    let exchanges = script(&s.provider, sent_ok);
    for id in 1..=4 {
        let outcome = s.fcm.send(&target(), &message(id, PushReason::Reply)).await;
        assert_eq!(outcome, PushOutcome::Sent);
    }
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
    let reqs = s.provider.requests();
    assert_eq!(reqs.len(), 5);
    for push in &reqs[1..] {
        assert_eq!(push.header("authorization"), Some("Bearer ya29.test-1"));
    }
}

#[tokio::test]
async fn concurrent_sends_share_one_exchange() {
    let s = Arc::new(setup().await);
    let exchanges = script(&s.provider, sent_ok);
    let sends: Vec<_> = (1..=8)
        .map(|id| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                s.fcm
                    .send(&target(), &message(id, PushReason::Message))
                    .await
            })
        })
        .collect();
    for send in sends {
        assert_eq!(send.await.expect("send task"), PushOutcome::Sent);
    }
    assert_eq!(exchanges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries() {
    let s = setup().await;
    let exchanges = script(&s.provider, |req| {
        if req.header("authorization") == Some("Bearer ya29.test-1") {
            fcm_error(
                401,
                "UNAUTHENTICATED",
                None,
                "Request had invalid authentication credentials.",
            )
        } else {
            sent_ok(req)
        }
    });
    let outcome = s
        .fcm
        .send(&target(), &message(5, PushReason::Message))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);
    assert_eq!(exchanges.load(Ordering::SeqCst), 2);
    let reqs = s.provider.requests();
    let seen: Vec<_> = reqs
        .iter()
        .map(|r| (r.path.as_str(), r.header("authorization")))
        .collect();
    assert_eq!(
        seen,
        [
            ("/token", None),
            (SEND_PATH, Some("Bearer ya29.test-1")),
            ("/token", None),
            (SEND_PATH, Some("Bearer ya29.test-2")),
        ]
    );
    for exchange in reqs.iter().filter(|r| r.path == "/token") {
        s.account
            .verify_assertion(&exchange.body)
            .expect("assertion verifies");
    }
    // The fresh token is kept.
    let outcome = s
        .fcm
        .send(&target(), &message(6, PushReason::Message))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);
    assert_eq!(exchanges.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_401_on_a_fresh_token_fails_after_one_retry() {
    let s = setup().await;
    let exchanges = script(&s.provider, |_| {
        fcm_error(
            401,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
        )
    });
    let outcome = s
        .fcm
        .send(&target(), &message(5, PushReason::Message))
        .await;
    assert!(matches!(outcome, PushOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(exchanges.load(Ordering::SeqCst), 2);
    assert_eq!(s.provider.requests().len(), 4);
}

async fn outcome_of(reply: Reply) -> PushOutcome {
    let s = setup().await;
    script(&s.provider, move |_| reply.clone());
    s.fcm
        .send(&target(), &message(5, PushReason::Message))
        .await
}

#[tokio::test]
async fn unregistered_is_gone() {
    let reply = fcm_error(
        404,
        "NOT_FOUND",
        Some("UNREGISTERED"),
        "Requested entity was not found.",
    );
    assert_eq!(outcome_of(reply).await, PushOutcome::Gone);
}

#[tokio::test]
async fn sender_id_mismatch_is_gone() {
    let reply = fcm_error(
        403,
        "PERMISSION_DENIED",
        Some("SENDER_ID_MISMATCH"),
        "SenderId mismatch",
    );
    assert_eq!(outcome_of(reply).await, PushOutcome::Gone);
}

#[tokio::test]
async fn an_invalid_registration_token_is_gone() {
    let reply = Reply::json(
        400,
        &json!({"error": {
            "code": 400,
            "message": "The registration token is not a valid FCM registration token",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
                {"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]},
            ],
        }}),
    );
    assert_eq!(outcome_of(reply).await, PushOutcome::Gone);
    // Without field violations, the message alone names the token.
    let reply = fcm_error(
        400,
        "INVALID_ARGUMENT",
        Some("INVALID_ARGUMENT"),
        "The registration token is not a valid FCM registration token",
    );
    assert_eq!(outcome_of(reply).await, PushOutcome::Gone);
}

#[tokio::test]
async fn another_invalid_argument_fails_and_keeps_the_target() {
    let reply = Reply::json(
        400,
        &json!({"error": {
            "code": 400,
            "message": "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), Field 'ttl', Illegal duration format",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": "message.android.ttl", "description": "Illegal duration format"}]},
            ],
        }}),
    );
    match outcome_of(reply).await {
        PushOutcome::Failed { reason } => assert!(reason.contains("INVALID_ARGUMENT"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn unavailable_is_retried_after_retry_after() {
    let reply = fcm_error(
        503,
        "UNAVAILABLE",
        Some("UNAVAILABLE"),
        "The service is currently unavailable.",
    )
    .with_header("retry-after", "7");
    match outcome_of(reply).await {
        PushOutcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(7))),
        other => panic!("expected Retry, got {other:?}"),
    }
}

#[tokio::test]
async fn quota_exceeded_is_retried() {
    let reply = fcm_error(
        429,
        "RESOURCE_EXHAUSTED",
        Some("QUOTA_EXCEEDED"),
        "Quota exceeded.",
    )
    .with_header("retry-after", "30");
    match outcome_of(reply).await {
        PushOutcome::Retry { after, reason } => {
            assert_eq!(after, Some(Duration::from_secs(30)));
            assert!(reason.contains("QUOTA_EXCEEDED"), "{reason}");
        }
        other => panic!("expected Retry, got {other:?}"),
    }
    let bare = outcome_of(Reply::status(500)).await;
    assert!(
        matches!(bare, PushOutcome::Retry { after: None, .. }),
        "{bare:?}"
    );
}

#[tokio::test]
async fn a_refused_grant_fails_and_an_unavailable_token_endpoint_retries() {
    let s = setup().await;
    s.provider.respond(|_| {
        Reply::json(
            400,
            &json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        )
    });
    match s
        .fcm
        .send(&target(), &message(5, PushReason::Message))
        .await
    {
        PushOutcome::Failed { reason } => assert!(reason.contains("invalid_grant"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    s.provider
        .respond(|_| Reply::status(503).with_header("retry-after", "2"));
    match s
        .fcm
        .send(&target(), &message(5, PushReason::Message))
        .await
    {
        PushOutcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(2))),
        other => panic!("expected Retry, got {other:?}"),
    }
    assert!(s.provider.requests().iter().all(|r| r.path == "/token"));
}

#[tokio::test]
async fn an_unreachable_token_endpoint_retries() {
    let s = setup().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let fcm = FcmProvider::new(FcmConfig {
        service_account_json: s
            .account
            .json(&format!("https://127.0.0.1:{port}/token"), PROJECT),
        base_url: Some(s.provider.url()),
        token_url: None,
        client: support::client(&s.provider),
    })
    .expect("FCM provider");
    let outcome = fcm.send(&target(), &message(5, PushReason::Message)).await;
    assert!(matches!(outcome, PushOutcome::Retry { .. }), "{outcome:?}");
    assert!(s.provider.requests().is_empty());
}

#[tokio::test]
async fn token_url_overrides_where_the_assertion_goes_but_not_its_audience() {
    let provider = FakeProvider::start().await.expect("fake provider");
    let account = shared_account();
    let fcm = FcmProvider::new(FcmConfig {
        service_account_json: account.json("https://oauth2.googleapis.com/token", PROJECT),
        base_url: Some(provider.url()),
        token_url: Some(format!("{}/token", provider.url())),
        client: support::client(&provider),
    })
    .expect("FCM provider");
    script(&provider, sent_ok);
    assert_eq!(
        fcm.send(&target(), &message(5, PushReason::Message)).await,
        PushOutcome::Sent
    );
    let claims = account
        .verify_assertion(&provider.requests()[0].body)
        .expect("assertion verifies");
    assert_eq!(claims["aud"], "https://oauth2.googleapis.com/token");
}

#[tokio::test]
async fn other_targets_and_bad_tokens_fail_without_a_request() {
    let s = setup().await;
    let apns = TargetAddress::Apns {
        token: "ab".repeat(32),
    };
    let outcome = s.fcm.send(&apns, &message(5, PushReason::Message)).await;
    assert!(matches!(outcome, PushOutcome::Failed { .. }), "{outcome:?}");
    let spaced = TargetAddress::Fcm {
        token: "has space".into(),
    };
    let outcome = s.fcm.send(&spaced, &message(5, PushReason::Message)).await;
    assert!(matches!(outcome, PushOutcome::Failed { .. }), "{outcome:?}");
    assert!(s.provider.requests().is_empty());
}

#[test]
fn token_validation() {
    assert!(validate_token(DEVICE).is_ok());
    assert!(validate_token("").is_err());
    assert!(validate_token("a b").is_err());
    assert!(validate_token("tab\there").is_err());
    assert!(validate_token("é").is_err());
    assert!(validate_token(&"a".repeat(4096)).is_ok());
    assert!(validate_token(&"a".repeat(4097)).is_err());
}

#[test]
fn bad_service_accounts_are_refused() {
    let account = shared_account();
    let good: serde_json::Value =
        serde_json::from_str(&account.json("https://oauth2.googleapis.com/token", PROJECT))
            .expect("JSON");
    let config = |json: String| FcmConfig {
        service_account_json: json,
        ..FcmConfig::default()
    };
    assert!(FcmProvider::new(config(good.to_string())).is_ok());
    for (field, value) in [
        ("private_key", json!("not a key")),
        ("project_id", json!("../other")),
        ("client_email", json!(null)),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        assert!(
            FcmProvider::new(config(bad.to_string())).is_err(),
            "accepted a bad {field}"
        );
    }
    let debug = format!("{:?}", config(good.to_string()));
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
}

#[tokio::test]
async fn the_verifier_refuses_other_keys_and_altered_assertions() {
    let s = setup().await;
    script(&s.provider, sent_ok);
    assert_eq!(
        s.fcm
            .send(&target(), &message(5, PushReason::Message))
            .await,
        PushOutcome::Sent
    );
    let body = s.provider.requests()[0].body.clone();
    s.account
        .verify_assertion(&body)
        .expect("genuine assertion");
    let stranger = ServiceAccount::generate().expect("service account");
    stranger.json(&format!("{}/token", s.provider.url()), PROJECT);
    assert!(stranger.verify_assertion(&body).is_err());
    // Flip one character of the claims part.
    let text = String::from_utf8(body.to_vec()).expect("form is ASCII");
    let dot = text.find('.').expect("JWT header end") + 5;
    let mut altered = text.into_bytes();
    altered[dot] = if altered[dot] == b'A' { b'B' } else { b'A' };
    assert!(s.account.verify_assertion(&altered).is_err());
}
