//! Rate limits, end to end against the real `parlor` binary. Each test turns one limit
//! down (the test kit relaxes all of them by default) and shows what a client sees when
//! it is exceeded: `429 rate_limited` with `retry_after_ms` on REST and upgrades, and
//! `error` frames on a WebSocket, without disturbing other users.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_api, expect_raw_error, start, WAIT};
use parlor_client::proto::ws::ServerFrame;
use parlor_client::proto::ErrorCode;
use parlor_testkit::{unique_name, user, ServerOptions, PASSWORD};

/// A rule with a burst and a refill so slow that nothing refills during the test.
fn limit(opts: ServerOptions, rule: &str, burst: u32) -> ServerOptions {
    opts.with_env(format!("PARLOR_RATE__{rule}__BURST"), burst.to_string())
        .with_env(format!("PARLOR_RATE__{rule}__PER_SECOND"), "0.01")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_limited_per_ip_with_retry_after() {
    let server = start(limit(ServerOptions::default(), "LOGIN_PER_IP", 3));
    let http = server.http();
    let name = unique_name("login");
    http.register(&name, PASSWORD).await.unwrap();

    for _ in 0..3 {
        http.login(&name, PASSWORD, None).await.unwrap();
    }

    // The fourth attempt, seen raw: status, header and body.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/auth/login", server.base_url()))
        .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    let error = expect_raw_error((status, body), 429, ErrorCode::RateLimited);
    let retry_after_ms = error.retry_after_ms.expect("retry_after_ms in the body");
    assert!(retry_after_ms > 0);
    let retry_after: u64 = retry_after
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry_after >= 1);
    assert_eq!(retry_after, retry_after_ms.div_ceil(1000).max(1));

    // The limit is on the address, whatever the account or password.
    let (_, code, _) = common::api_err(
        http.login(&unique_name("other"), "wrong password", None)
            .await,
    );
    assert_eq!(code, ErrorCode::RateLimited);

    // Only logins are limited: the rest of the API still answers.
    assert_eq!(http.healthz().await.unwrap(), 200);
    http.register(&unique_name("more"), PASSWORD).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_limited_per_ip() {
    let server = start(limit(ServerOptions::default(), "REGISTER_PER_IP", 2));
    let http = server.http();
    http.register(&unique_name("r"), PASSWORD).await.unwrap();
    http.register(&unique_name("r"), PASSWORD).await.unwrap();
    let name = unique_name("r");
    expect_api(
        http.register(&name, PASSWORD).await,
        429,
        ErrorCode::RateLimited,
    );
    // Nothing was created by the refused request.
    expect_api(
        http.login(&name, PASSWORD, None).await,
        401,
        ErrorCode::InvalidCredentials,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_flood_is_limited_per_connection_and_other_users_are_unaffected() {
    const BURST: u32 = 20;
    const FLOOD: usize = 50;
    let server = start(limit(
        ServerOptions::default(),
        "FRAMES_PER_CONNECTION",
        BURST,
    ));
    let http = server.http();
    let (_, flooder) = user(&http, &unique_name("flood")).await.unwrap();
    let (victim, victim_tokens) = user(&http, &unique_name("victim")).await.unwrap();
    let (_, carol) = user(&http, &unique_name("carol")).await.unwrap();
    let (dave, dave_tokens) = user(&http, &unique_name("dave")).await.unwrap();
    let flood_conv = http
        .open_direct(&flooder.access_token, victim.id)
        .await
        .unwrap();
    let calm_conv = http
        .open_direct(&carol.access_token, dave.id)
        .await
        .unwrap();

    let mut flood_ws = server.ws(&flooder.access_token, None).await.unwrap();
    let mut victim_ws = server.ws(&victim_tokens.access_token, None).await.unwrap();
    let mut carol_ws = server.ws(&carol.access_token, None).await.unwrap();
    let mut dave_ws = server.ws(&dave_tokens.access_token, None).await.unwrap();
    for ws in [&mut flood_ws, &mut victim_ws, &mut carol_ws, &mut dave_ws] {
        ws.wait_synced(WAIT).await.unwrap();
    }

    // The flood and a calm exchange between two other users, at the same time.
    let flood = async {
        for i in 0..FLOOD {
            flood_ws
                .send_message(flood_conv.id, &format!("f-{i}"), &format!("flood {i}"))
                .await
                .unwrap();
        }
        let mut acks = Vec::new();
        let mut limited = Vec::new();
        while acks.len() + limited.len() < FLOOD {
            match flood_ws.next_frame(WAIT).await.unwrap() {
                ServerFrame::Ack(ack) => acks.push(ack),
                ServerFrame::Error(e) => limited.push(e),
                _ => {}
            }
        }
        (acks, limited)
    };
    let calm = async {
        let mut acked = Vec::new();
        for i in 0..5 {
            let cid = format!("c-{i}");
            carol_ws
                .send_message(calm_conv.id, &cid, &format!("calm {i}"))
                .await
                .unwrap();
            let ack = carol_ws
                .wait_for(WAIT, |f| match f {
                    ServerFrame::Ack(a) => Some(a.clone()),
                    ServerFrame::Error(e) => panic!("calm user got an error: {e:?}"),
                    _ => None,
                })
                .await
                .unwrap();
            assert_eq!(ack.cid, cid);
            acked.push(ack);
        }
        let mut delivered = Vec::new();
        while delivered.len() < 5 {
            if let ServerFrame::Message(m) = dave_ws.next_frame(WAIT).await.unwrap() {
                delivered.push(m.message.text);
            }
        }
        (acked, delivered)
    };
    let ((acks, limited), (calm_acks, delivered)) = tokio::join!(flood, calm);

    // The burst got through (plus whatever refilled meanwhile), the rest was refused.
    assert!(acks.len() >= BURST as usize, "{} acks", acks.len());
    assert!(!limited.is_empty(), "nothing was rate limited");
    for e in &limited {
        assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
        assert!(e.retry_after_ms.is_some_and(|ms| ms > 0), "{e:?}");
        assert!(!e.message.is_empty());
    }
    // Accepted sends are the first ones, stored in the order they were sent (acks of
    // pipelined sends may arrive in any order).
    let mut acks = acks;
    acks.sort_by_key(|a| a.seq);
    let acked_cids: Vec<String> = acks.iter().map(|a| a.cid.clone()).collect();
    let first: Vec<String> = (0..acks.len()).map(|i| format!("f-{i}")).collect();
    assert_eq!(acked_cids, first);

    // The other users' exchange went through in full.
    assert_eq!(calm_acks.len(), 5);
    let want: Vec<String> = (0..5).map(|i| format!("calm {i}")).collect();
    assert_eq!(delivered, want);

    // The victim got exactly the accepted messages; the flooder is still connected.
    let mut received = Vec::new();
    while received.len() < acks.len() {
        if let ServerFrame::Message(m) = victim_ws.next_frame(WAIT).await.unwrap() {
            received.push(m.message.text);
        }
    }
    let want: Vec<String> = (0..acks.len()).map(|i| format!("flood {i}")).collect();
    assert_eq!(received, want);
    let history = http
        .history(
            &victim_tokens.access_token,
            flood_conv.id,
            None,
            None,
            Some(100),
        )
        .await
        .unwrap();
    assert_eq!(history.messages.len(), acks.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_limited_per_ip_with_http_429() {
    let server = start(limit(ServerOptions::default(), "CONNECT_PER_IP", 3));
    let http = server.http();
    let (_, tokens) = user(&http, &unique_name("conn")).await.unwrap();

    let mut open = Vec::new();
    for _ in 0..3 {
        let mut ws = server.ws(&tokens.access_token, None).await.unwrap();
        ws.wait_synced(WAIT).await.unwrap();
        open.push(ws);
    }
    let (status, code, _) = common::api_err(server.ws(&tokens.access_token, None).await);
    assert_eq!((status, code), (429, ErrorCode::RateLimited));
    match server.ws_raw(Vec::new()).await {
        Err(parlor_client::ClientError::Api { status, body }) => {
            assert_eq!((status, body.code), (429, ErrorCode::RateLimited));
            assert!(body.retry_after_ms.is_some_and(|ms| ms > 0), "{body:?}");
        }
        other => panic!("expected 429, got {other:?}"),
    }

    // The connections that were let in keep working, and REST is not affected.
    let (bob, _) = user(&http, &unique_name("bob")).await.unwrap();
    let conv = http
        .open_direct(&tokens.access_token, bob.id)
        .await
        .unwrap();
    http.send(&tokens.access_token, conv.id, Some("m-1"), "still here")
        .await
        .unwrap();
    for ws in &mut open {
        let text = ws
            .wait_for(WAIT, |f| match f {
                ServerFrame::Message(m) => Some(m.message.text.clone()),
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(text, "still here");
        ws.close().await.unwrap();
    }
}
