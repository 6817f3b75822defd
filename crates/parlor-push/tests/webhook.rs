//! The webhook adapter against a local HTTPS receiver.

mod support;

use parlor_core::notify::{PushOutcome, PushReason, TargetAddress};
use parlor_core::ports::PushProvider;
use parlor_push::webhook::{generate_secret, validate_url, WebhookConfig, WebhookProvider};
use parlor_testkit::push::webhook::verify_signature;
use parlor_testkit::push::{FakeProvider, Reply};
use serde_json::json;
use std::time::Duration;
use support::{message, WAIT};

/// A receiver on loopback, so the provider must allow private addresses.
async fn setup() -> (FakeProvider, WebhookProvider, String) {
    let provider = FakeProvider::start().await.expect("fake provider");
    let webhook = WebhookProvider::new(WebhookConfig {
        allow_private: true,
        allow_http: false,
        client: support::client(&provider),
    })
    .expect("webhook provider");
    provider.respond(|_| Reply::status(204));
    let secret = generate_secret().expect("secret");
    (provider, webhook, secret)
}

fn target(provider: &FakeProvider, secret: &str) -> TargetAddress {
    TargetAddress::Webhook {
        url: format!("{}/hooks/parlor?team=7", provider.url()),
        secret: secret.into(),
    }
}

#[tokio::test]
async fn the_delivery_is_signed_and_shaped_as_documented() {
    let (provider, webhook, secret) = setup().await;
    let before = support::unix_now();
    let outcome = webhook
        .send(&target(&provider, &secret), &message(5, PushReason::Reply))
        .await;
    assert_eq!(outcome, PushOutcome::Sent);

    let reqs = provider.wait_for(1, WAIT).await.expect("one request");
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/parlor?team=7");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("x-parlor-delivery"), Some("5"));
    let ts: u64 = req
        .header("x-parlor-timestamp")
        .expect("timestamp")
        .parse()
        .expect("decimal seconds");
    assert!((before..=support::unix_now()).contains(&ts));
    assert_eq!(
        req.json().expect("JSON body"),
        json!({
            "id": "5",
            "type": "notification",
            "reason": "reply",
            "conv": "42",
            "seq": 17,
            "message": "9007199254740993",
            "sender": "7",
            "title": "Ada in Engines",
            "body": "the analytical one, \"quoted\" ✓",
            "badge": 3,
            "ts": 1_700_000_000_123i64,
        })
    );

    verify_signature(req, &secret, 300).expect("signature verifies");
    let other = generate_secret().expect("secret");
    assert!(verify_signature(req, &other, 300).is_err());
    let mut tampered = req.clone();
    let body = String::from_utf8(req.body.to_vec()).expect("UTF-8 body");
    assert!(body.contains("\"badge\":3"), "{body}");
    tampered.body = body.replace("\"badge\":3", "\"badge\":9").into();
    assert!(verify_signature(&tampered, &secret, 300).is_err());
    let mut replayed = req.clone();
    replayed.headers.insert(
        "x-parlor-timestamp",
        (ts - 3600).to_string().parse().expect("header value"),
    );
    assert!(verify_signature(&replayed, &secret, 300).is_err());
}

#[tokio::test]
async fn a_resend_carries_the_same_delivery_id() {
    let (provider, webhook, secret) = setup().await;
    for id in [5, 5, 6] {
        let outcome = webhook
            .send(
                &target(&provider, &secret),
                &message(id, PushReason::Message),
            )
            .await;
        assert_eq!(outcome, PushOutcome::Sent);
    }
    let ids: Vec<_> = provider
        .requests()
        .iter()
        .map(|r| r.header("x-parlor-delivery").map(str::to_string))
        .collect();
    assert_eq!(ids, [Some("5".into()), Some("5".into()), Some("6".into())]);
}

#[tokio::test]
async fn statuses_map_onto_outcomes() {
    let (provider, webhook, secret) = setup().await;
    type Expect = fn(&PushOutcome) -> bool;
    let cases: Vec<(Reply, Expect)> = vec![
        (Reply::status(200), |o| *o == PushOutcome::Sent),
        (Reply::status(202), |o| *o == PushOutcome::Sent),
        (Reply::status(410), |o| *o == PushOutcome::Gone),
        (Reply::status(500), |o| {
            matches!(o, PushOutcome::Retry { after: None, .. })
        }),
        (
            Reply::status(503).with_header("retry-after", "12"),
            |o| matches!(o, PushOutcome::Retry { after: Some(d), .. } if *d == Duration::from_secs(12)),
        ),
        (Reply::status(429), |o| {
            matches!(o, PushOutcome::Retry { .. })
        }),
        (Reply::status(408), |o| {
            matches!(o, PushOutcome::Retry { .. })
        }),
        (Reply::status(400), |o| {
            matches!(o, PushOutcome::Failed { .. })
        }),
        (Reply::status(404), |o| {
            matches!(o, PushOutcome::Failed { .. })
        }),
        (
            Reply::status(302).with_header("location", "https://127.0.0.1/elsewhere"),
            |o| matches!(o, PushOutcome::Failed { reason } if reason.contains("redirect")),
        ),
    ];
    for (n, (reply, expected)) in cases.into_iter().enumerate() {
        let status = reply.status;
        provider.respond(move |_| reply.clone());
        let outcome = webhook
            .send(
                &target(&provider, &secret),
                &message(5, PushReason::Message),
            )
            .await;
        assert!(expected(&outcome), "{status}: {outcome:?}");
        assert_eq!(
            provider.requests().len(),
            n + 1,
            "redirects are not followed"
        );
    }
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried() {
    let (provider, webhook, secret) = setup().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let target = TargetAddress::Webhook {
        url: format!("https://localhost:{port}/hook?key=receiver-credential"),
        secret,
    };
    match webhook
        .send(&target, &message(5, PushReason::Message))
        .await
    {
        PushOutcome::Retry { reason, .. } => {
            assert!(!reason.contains("receiver-credential"), "URL in {reason}");
            assert!(reason.to_lowercase().contains("connect"), "{reason}");
        }
        other => panic!("expected Retry, got {other:?}"),
    }
    assert!(provider.requests().is_empty());
}

#[tokio::test]
async fn names_resolving_to_loopback_are_refused_at_send_time() {
    let provider = FakeProvider::start().await.expect("fake provider");
    provider.respond(|_| Reply::status(204));
    let secret = generate_secret().expect("secret");
    let guarded = WebhookProvider::new(WebhookConfig {
        allow_private: false,
        allow_http: false,
        client: support::client(&provider),
    })
    .expect("webhook provider");
    // `localhost` is not an IP literal: only the resolver can tell where it goes.
    match guarded
        .send(
            &target(&provider, &secret),
            &message(5, PushReason::Message),
        )
        .await
    {
        PushOutcome::Failed { reason } => assert!(reason.contains("private address"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    let literal = TargetAddress::Webhook {
        url: format!("https://127.0.0.1:{}/hook", provider.port()),
        secret: secret.clone(),
    };
    let outcome = guarded
        .send(&literal, &message(5, PushReason::Message))
        .await;
    assert!(matches!(outcome, PushOutcome::Failed { .. }), "{outcome:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        provider.requests().is_empty(),
        "nothing reached the receiver"
    );

    // The same target is reachable when private addresses are allowed: the refusal
    // above was the guard, not a broken URL.
    let open = WebhookProvider::new(WebhookConfig {
        allow_private: true,
        allow_http: false,
        client: support::client(&provider),
    })
    .expect("webhook provider");
    let outcome = open
        .send(
            &target(&provider, &secret),
            &message(5, PushReason::Message),
        )
        .await;
    assert_eq!(outcome, PushOutcome::Sent);
    assert_eq!(provider.requests().len(), 1);
}

#[tokio::test]
async fn other_targets_fail() {
    let (provider, webhook, _) = setup().await;
    let fcm = TargetAddress::Fcm {
        token: "abc".into(),
    };
    let outcome = webhook.send(&fcm, &message(5, PushReason::Message)).await;
    assert!(matches!(outcome, PushOutcome::Failed { .. }), "{outcome:?}");
    let unsigned = TargetAddress::Webhook {
        url: format!("{}/hook", provider.url()),
        secret: String::new(),
    };
    let outcome = webhook
        .send(&unsigned, &message(5, PushReason::Message))
        .await;
    assert!(matches!(outcome, PushOutcome::Failed { .. }), "{outcome:?}");
    assert!(provider.requests().is_empty());
}

#[test]
fn url_validation() {
    let strict = WebhookConfig::default();
    let open = WebhookConfig {
        allow_private: true,
        allow_http: true,
        ..WebhookConfig::default()
    };
    for ok in [
        "https://hooks.example.com/parlor",
        "https://hooks.example.com:8443/p?x=1",
        "https://8.8.8.8/hook",
        "https://[2001:4860:4860::8888]/hook",
    ] {
        assert_eq!(validate_url(ok, &strict), Ok(()), "{ok}");
    }
    for bad in [
        "http://hooks.example.com/parlor",
        "ftp://hooks.example.com/",
        "/relative/path",
        "https://user:pass@hooks.example.com/",
        "https://user@hooks.example.com/",
        "https://localhost/hook",
        "https://LOCALHOST./hook",
        "https://api.localhost/hook",
        "https://127.0.0.1/hook",
        "https://127.1/hook",
        "https://2130706433/hook",
        "https://10.1.2.3/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://255.255.255.255/hook",
        "https://224.0.0.1/hook",
        "https://[::1]/hook",
        "https://[::]/hook",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://[ff02::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
    ] {
        assert!(validate_url(bad, &strict).is_err(), "accepted {bad}");
    }
    assert!(validate_url(&format!("https://h.example/{}", "a".repeat(2048)), &open).is_err());
    for allowed in [
        "http://hooks.example.com/parlor",
        "https://localhost/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
    ] {
        assert_eq!(validate_url(allowed, &open), Ok(()), "{allowed}");
    }
    assert!(validate_url("https://user:pass@localhost/", &open).is_err());
    assert!(validate_url("ftp://localhost/", &open).is_err());
}

#[test]
fn secrets_are_32_random_bytes_in_hex() {
    let a = generate_secret().expect("secret");
    let b = generate_secret().expect("secret");
    assert_eq!(a.len(), 64);
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    assert_ne!(a, b);
}

#[tokio::test]
async fn retry_after_may_be_an_http_date() {
    let (provider, webhook, secret) = setup().await;
    let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
    provider.respond(move |_| Reply::status(503).with_header("retry-after", &at));
    match webhook
        .send(
            &target(&provider, &secret),
            &message(5, PushReason::Message),
        )
        .await
    {
        PushOutcome::Retry {
            after: Some(after), ..
        } => assert!(
            (Duration::from_secs(85)..=Duration::from_secs(90)).contains(&after),
            "{after:?}"
        ),
        other => panic!("expected Retry with a delay, got {other:?}"),
    }
}
