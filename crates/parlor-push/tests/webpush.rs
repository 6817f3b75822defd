//! The Web Push adapter end to end, against a local push service: what arrives must
//! open with a browser's keys in Mozilla's `ece` and carry a VAPID token that OpenSSL
//! verifies, so these tests do not trust Parlor's own cryptography to check itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use parlor_core::notify::{PushContent, PushMessage, PushOutcome, PushReason, TargetAddress};
use parlor_core::ports::PushProvider;
use parlor_proto::notify::PushKind;
use parlor_proto::Id;
use parlor_push::http::ClientOptions;
use parlor_push::webpush::{
    generate_vapid_key_pem, validate_subscription, WebPushConfig, WebPushProvider,
};
use parlor_testkit::push::webpush::{verify_vapid, Browser};
use parlor_testkit::push::{FakeProvider, Reply};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn provider(service: &FakeProvider) -> WebPushProvider {
    WebPushProvider::new(WebPushConfig {
        vapid_key_pem: generate_vapid_key_pem().expect("generate a VAPID key"),
        subject: "mailto:ops@parlor.test".into(),
        client: ClientOptions {
            extra_roots_pem: Some(service.ca_pem().to_vec()),
            timeout: Some(Duration::from_secs(5)),
        },
        allow_http: false,
    })
    .expect("web push provider")
}

fn target(browser: &Browser, endpoint: String) -> TargetAddress {
    TargetAddress::WebPush {
        endpoint,
        p256dh: browser.p256dh(),
        auth: browser.auth(),
    }
}

fn message(reason: PushReason, body: &str) -> PushMessage {
    PushMessage {
        id: Id(900),
        content: PushContent {
            conv: Id(123_456),
            seq: 41,
            message: Id(18_000_000_000_000_000_001),
            sender: Id(77),
            reason,
            title: "Ann in Design".into(),
            body: body.into(),
            ts: 1_750_000_000_123,
        },
        badge: 5,
        collapse_key: "c123456".into(),
        ttl_secs: 3600,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_arrives_encrypted_signed_and_with_its_headers() {
    let service = FakeProvider::start().await.expect("fake push service");
    let push = provider(&service);
    let browser = Browser::new().expect("browser");
    let to = target(&browser, Browser::endpoint(&service, "alice"));
    assert_eq!(push.kind(), PushKind::WebPush);

    let sent = push
        .send(&to, &message(PushReason::Mention, "@alice lunch?"))
        .await;
    assert_eq!(sent, PushOutcome::Sent);
    let requests = service.wait_for(1, WAIT).await.expect("the push");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/push/alice");

    let plaintext = browser.decrypt(&request.body).expect("decrypts in ece");
    let json: serde_json::Value = serde_json::from_slice(&plaintext).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({
            "title": "Ann in Design",
            "body": "@alice lunch?",
            "conv": "123456",
            "seq": 41,
            "message": "18000000000000000001",
            "sender": "77",
            "reason": "mention",
            "badge": 5,
            "ts": 1_750_000_000_123i64,
            "tag": "c123456",
        })
    );

    let claims = verify_vapid(request, &push.public_key(), &service.url()).expect("VAPID");
    assert_eq!(claims["sub"], "mailto:ops@parlor.test");
    let exp = claims["exp"].as_u64().expect("exp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        (now + 11 * 3600..=now + 12 * 3600 + 60).contains(&exp),
        "exp {exp} is not about 12 h from {now}"
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(push.public_key())
            .expect("base64url")
            .len(),
        65
    );

    assert_eq!(request.header("ttl"), Some("3600"));
    assert_eq!(request.header("topic"), Some("c123456"));
    assert_eq!(request.header("urgency"), Some("high"));
    assert_eq!(request.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(
        request.header("content-type"),
        Some("application/octet-stream")
    );

    // A plain message is less urgent; the same service gets the same cached token.
    let sent = push.send(&to, &message(PushReason::Message, "hi")).await;
    assert_eq!(sent, PushOutcome::Sent);
    let requests = service.wait_for(2, WAIT).await.expect("the second push");
    assert_eq!(requests[1].header("urgency"), Some("normal"));
    assert_eq!(
        requests[1].header("authorization"),
        request.header("authorization")
    );
    let json: serde_json::Value =
        serde_json::from_slice(&browser.decrypt(&requests[1].body).expect("decrypts"))
            .expect("JSON");
    assert_eq!(json["reason"], "message");
    assert_eq!(json["body"], "hi");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_body_is_shortened_to_fit_4096_bytes() {
    let service = FakeProvider::start().await.expect("fake push service");
    let push = provider(&service);
    let browser = Browser::new().expect("browser");
    let to = target(&browser, Browser::endpoint(&service, "bob"));
    let body = "Grüße \"aus\" Köln 🎉\n".repeat(600);

    let sent = push.send(&to, &message(PushReason::Reply, &body)).await;
    assert_eq!(sent, PushOutcome::Sent);
    let requests = service.wait_for(1, WAIT).await.expect("the push");
    let request = &requests[0];
    assert!(
        request.body.len() <= 4096,
        "body is {} bytes",
        request.body.len()
    );
    assert!(
        request.body.len() > 4000,
        "body is needlessly short: {} bytes",
        request.body.len()
    );
    let json: serde_json::Value =
        serde_json::from_slice(&browser.decrypt(&request.body).expect("decrypts")).expect("JSON");
    let shortened = json["body"].as_str().expect("body");
    let kept = shortened.strip_suffix('…').expect("marked as cut");
    assert!(body.starts_with(kept) && !kept.is_empty());
    assert_eq!(json["title"], "Ann in Design");
    assert_eq!(json["reason"], "reply");
    assert_eq!(json["tag"], "c123456");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_service_answers_map_to_outcomes() {
    let service = FakeProvider::start().await.expect("fake push service");
    service.respond(|r| match r.path.as_str() {
        "/push/unsubscribed" => Reply::status(410),
        "/push/unknown" => Reply::status(404),
        "/push/overloaded" => Reply::status(503).with_header("retry-after", "7"),
        "/push/throttled" => Reply::status(429),
        "/push/malformed" => Reply::json(
            400,
            &serde_json::json!({"errno": 110, "message": "Invalid TTL header"}),
        ),
        "/push/too-big" => Reply::status(413),
        "/push/unauthorized" => Reply::status(401),
        _ => Reply::status(201),
    });
    let push = provider(&service);
    let browser = Browser::new().expect("browser");
    let send = |name: &str| {
        let to = target(&browser, Browser::endpoint(&service, name));
        let push = &push;
        async move { push.send(&to, &message(PushReason::Message, "x")).await }
    };

    assert_eq!(send("unsubscribed").await, PushOutcome::Gone);
    assert_eq!(send("unknown").await, PushOutcome::Gone);
    match send("overloaded").await {
        PushOutcome::Retry { after, reason } => {
            assert_eq!(after, Some(Duration::from_secs(7)));
            assert!(reason.contains("503"), "{reason}");
        }
        other => panic!("503 should be retried, got {other:?}"),
    }
    assert!(matches!(
        send("throttled").await,
        PushOutcome::Retry { after: None, .. }
    ));
    match send("malformed").await {
        PushOutcome::Failed { reason } => {
            assert!(reason.contains("400"), "{reason}");
            assert!(reason.contains("Invalid TTL header"), "{reason}");
        }
        other => panic!("400 is a permanent failure, got {other:?}"),
    }
    assert!(matches!(send("too-big").await, PushOutcome::Failed { .. }));
    assert!(matches!(
        send("unauthorized").await,
        PushOutcome::Failed { .. }
    ));
    assert_eq!(send("fine").await, PushOutcome::Sent);
    assert_eq!(service.requests().len(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_push_service_is_retried() {
    let service = FakeProvider::start().await.expect("fake push service");
    let push = provider(&service);
    let browser = Browser::new().expect("browser");
    // A port that was just free and is now closed: the connection is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let to = target(&browser, format!("https://127.0.0.1:{port}/push/nobody"));
    match push.send(&to, &message(PushReason::Message, "x")).await {
        PushOutcome::Retry { after, reason } => {
            assert_eq!(after, None);
            assert!(reason.contains("unreachable"), "{reason}");
            assert!(!reason.contains("/push/nobody"), "{reason}");
        }
        other => panic!("a refused connection should be retried, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn targets_it_cannot_serve_fail_without_a_request() {
    let service = FakeProvider::start().await.expect("fake push service");
    let push = provider(&service);
    let browser = Browser::new().expect("browser");
    let fcm = TargetAddress::Fcm {
        token: "token".into(),
    };
    let plain_http = target(
        &browser,
        format!("http://localhost:{}/push/a", service.port()),
    );
    for to in [fcm, plain_http] {
        let outcome = push.send(&to, &message(PushReason::Message, "x")).await;
        assert!(
            matches!(outcome, PushOutcome::Failed { .. }),
            "{to:?}: {outcome:?}"
        );
    }
    assert!(service.requests().is_empty());
}

#[test]
fn subscriptions_are_validated() {
    let browser = Browser::new().expect("browser");
    let (p256dh, auth) = (browser.p256dh(), browser.auth());
    let ok = "https://updates.push.services.mozilla.com/wpush/v2/gAAAAA";
    validate_subscription(ok, &p256dh, &auth, false).expect("a real browser's keys");
    validate_subscription(ok, &format!("{p256dh}="), &format!("{auth}=="), false)
        .expect("padded keys");
    validate_subscription("http://127.0.0.1:9/p", &p256dh, &auth, true).expect("allow_http");

    let too_long = format!("{ok}/{}", "a".repeat(2048));
    for endpoint in [
        "http://push.example.net/p",
        "wss://push.example.net/p",
        "/wpush/v2/relative",
        "https://me:secret@push.example.net/p",
        too_long.as_str(),
    ] {
        assert!(
            validate_subscription(endpoint, &p256dh, &auth, false).is_err(),
            "{endpoint} should be refused"
        );
    }

    let mut point = URL_SAFE_NO_PAD.decode(&p256dh).expect("base64url");
    point[64] ^= 0x01;
    let off_curve = URL_SAFE_NO_PAD.encode(&point);
    let err = validate_subscription(ok, &off_curve, &auth, false).expect_err("off the curve");
    assert!(err.contains("curve"), "{err}");
    let short = URL_SAFE_NO_PAD.encode(&point[..64]);
    assert!(validate_subscription(ok, &short, &auth, false).is_err());
    let long = URL_SAFE_NO_PAD.encode([point.as_slice(), &[0]].concat());
    assert!(validate_subscription(ok, &long, &auth, false).is_err());

    for bad_auth in [
        URL_SAFE_NO_PAD.encode([7u8; 15]),
        URL_SAFE_NO_PAD.encode([7u8; 17]),
    ] {
        let err = validate_subscription(ok, &p256dh, &bad_auth, false).expect_err("auth");
        assert!(err.contains("auth"), "{err}");
    }
}

/// The browser side is only a fair judge if it is right itself: it must open the
/// published example of RFC 8291 Appendix A.
#[test]
fn the_browser_decrypts_the_rfc_8291_example() {
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("base64url");
    let browser = Browser::from_raw(
        &b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"),
        &b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"),
        &b64("BTBZMqHH6r4Tts7J_aSIgg"),
    )
    .expect("the RFC's key pair");
    let body = b64(concat!(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
        "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT",
        "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
    ));
    assert_eq!(
        browser.decrypt(&body).expect("decrypts"),
        b"When I grow up, I want to be a watermelon"
    );
    let mut tampered = body.clone();
    tampered[100] ^= 1;
    assert!(browser.decrypt(&tampered).is_err());
}
