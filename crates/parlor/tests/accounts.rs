//! Accounts and authentication, end to end against the real `parlor` binary:
//! registration rules, login and devices, refresh rotation and reuse detection, logout,
//! expiry, and how the WebSocket endpoint authenticates.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_api, expect_closed, start, start_default, WAIT};
use parlor_client::proto::close;
use parlor_client::proto::ws::ServerFrame;
use parlor_client::proto::ErrorCode;
use parlor_client::WsClient;
use parlor_testkit::{unique_name, user, ServerOptions, PASSWORD};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_enforces_username_rules_and_case_insensitive_uniqueness() {
    let server = start_default();
    let http = server.http();

    // Mixed case is accepted and stored lower-cased.
    let name = unique_name("alice");
    let created = http.register(&name.to_uppercase(), PASSWORD).await.unwrap();
    assert_eq!(created.username, name);

    // The same name in any case is taken.
    for again in [name.clone(), name.to_uppercase()] {
        expect_api(
            http.register(&again, PASSWORD).await,
            409,
            ErrorCode::UsernameTaken,
        );
    }

    // Every allowed character class, and the length bounds 3 and 32.
    let suffix = &unique_name("x")[2..];
    for ok in [
        format!("a.b-c_{suffix}"),
        format!("9{suffix}")[..3].to_owned(),
        format!("{suffix}{}", "z".repeat(32))[..32].to_owned(),
    ] {
        let user = http.register(&ok, PASSWORD).await.unwrap();
        assert_eq!(user.username, ok);
    }

    for bad in [
        "",
        "ab",
        &"a".repeat(33),
        "-starts-with-dash",
        "_underscore_first",
        ".dotfirst",
        "has space",
        "élodie",
        "semi;colon",
        "x'; DROP TABLE users;--",
        "slash/name",
    ] {
        let message = expect_api(
            http.register(bad, PASSWORD).await,
            400,
            ErrorCode::InvalidUsername,
        );
        assert!(!message.is_empty());
    }

    // Passwords: fewer than 8 characters is weak; 8 is enough.
    expect_api(
        http.register(&unique_name("weak"), "1234567").await,
        400,
        ErrorCode::WeakPassword,
    );
    expect_api(
        http.register(&unique_name("weak"), "").await,
        400,
        ErrorCode::WeakPassword,
    );
    http.register(&unique_name("eight"), "12345678")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_returns_token_pair_and_each_login_is_a_separate_device() {
    let server = start_default();
    let http = server.http();
    let name = unique_name("multi");
    let registered = http.register(&name, PASSWORD).await.unwrap();

    let laptop = http.login(&name, PASSWORD, Some("laptop")).await.unwrap();
    // Login is case-insensitive on the username too.
    let phone = http
        .login(&name.to_uppercase(), PASSWORD, Some("phone"))
        .await
        .unwrap();

    for pair in [&laptop, &phone] {
        assert!(!pair.access_token.is_empty());
        assert!(!pair.refresh_token.is_empty());
        assert!(pair.expires_in > 0);
        assert_eq!(pair.user, registered);
    }
    assert_ne!(laptop.device_id, phone.device_id, "two logins, two devices");
    assert_ne!(laptop.refresh_token, phone.refresh_token);

    // Both devices' tokens work at the same time, for REST and WebSocket.
    for pair in [&laptop, &phone] {
        assert_eq!(http.me(&pair.access_token).await.unwrap(), registered);
        let mut ws = server.ws(&pair.access_token, None).await.unwrap();
        ws.wait_synced(WAIT).await.unwrap();
        ws.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reusing_a_refresh_token_revokes_that_device() {
    let server = start_default();
    let http = server.http();
    let (me, first) = user(&http, &unique_name("rot")).await.unwrap();
    let other_device = http.login(&me.username, PASSWORD, None).await.unwrap();

    // Refresh: a new pair for the same device; the new access token works.
    let second = http.refresh(&first.refresh_token).await.unwrap();
    assert_eq!(second.device_id, first.device_id);
    assert_eq!(second.user, me);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(http.me(&second.access_token).await.unwrap(), me);

    // Presenting the used refresh token again: token_revoked, and the device's session
    // is revoked, so its current access token and refresh token stop working.
    expect_api(
        http.refresh(&first.refresh_token).await,
        401,
        ErrorCode::TokenRevoked,
    );
    expect_api(
        http.me(&second.access_token).await,
        401,
        ErrorCode::TokenRevoked,
    );
    let (status, code, _) = common::api_err(http.refresh(&second.refresh_token).await);
    assert_eq!(status, 401);
    assert!(
        matches!(code, ErrorCode::TokenRevoked | ErrorCode::Unauthorized),
        "{code}"
    );
    let mut ws = server.ws(&second.access_token, None).await.unwrap();
    let (code, reason) = expect_closed(&mut ws).await;
    assert_eq!(code, Some(close::UNAUTHORIZED));
    assert!(reason.starts_with("token_revoked"), "{reason}");

    // The user's other device is unaffected.
    assert_eq!(http.me(&other_device.access_token).await.unwrap(), me);
    http.refresh(&other_device.refresh_token).await.unwrap();

    // A refresh token that never existed.
    expect_api(
        http.refresh("not-a-refresh-token").await,
        401,
        ErrorCode::Unauthorized,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session_for_rest_and_websocket() {
    let server = start_default();
    let http = server.http();
    let (me, tokens) = user(&http, &unique_name("bye")).await.unwrap();
    let other_device = http.login(&me.username, PASSWORD, None).await.unwrap();

    http.logout(&tokens.access_token).await.unwrap();

    expect_api(
        http.me(&tokens.access_token).await,
        401,
        ErrorCode::TokenRevoked,
    );
    let mut ws = server.ws(&tokens.access_token, None).await.unwrap();
    let (code, reason) = expect_closed(&mut ws).await;
    assert_eq!(code, Some(close::UNAUTHORIZED), "{reason}");
    assert!(reason.starts_with("token_revoked"), "{reason}");
    // The session's refresh token is gone too.
    let (status, _, _) = common::api_err(http.refresh(&tokens.refresh_token).await);
    assert_eq!(status, 401);

    // Other devices stay logged in.
    assert_eq!(http.me(&other_device.access_token).await.unwrap(), me);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_the_same_invalid_credentials() {
    let server = start_default();
    let http = server.http();
    let name = unique_name("cred");
    http.register(&name, PASSWORD).await.unwrap();

    let wrong_password = expect_api(
        http.login(&name, "not the password", None).await,
        401,
        ErrorCode::InvalidCredentials,
    );
    let unknown_user = expect_api(
        http.login(&unique_name("nobody"), PASSWORD, None).await,
        401,
        ErrorCode::InvalidCredentials,
    );
    let invalid_name = expect_api(
        http.login("!!", PASSWORD, None).await,
        401,
        ErrorCode::InvalidCredentials,
    );
    assert_eq!(wrong_password, unknown_user);
    assert_eq!(wrong_password, invalid_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_token_is_rejected_on_rest_and_websocket() {
    let server = start(ServerOptions::default().with_env("PARLOR_AUTH__ACCESS_TTL_SECS", "1"));
    let http = server.http();
    let (_, tokens) = user(&http, &unique_name("exp")).await.unwrap();
    assert_eq!(tokens.expires_in, 1);

    tokio::time::sleep(Duration::from_millis(2500)).await;

    expect_api(
        http.me(&tokens.access_token).await,
        401,
        ErrorCode::TokenExpired,
    );
    let mut ws = server.ws(&tokens.access_token, None).await.unwrap();
    let (code, reason) = expect_closed(&mut ws).await;
    assert_eq!(code, Some(close::UNAUTHORIZED), "{reason}");
    assert!(reason.starts_with("token_expired"), "{reason}");

    // The refresh token outlives the access token.
    let renewed = http.refresh(&tokens.refresh_token).await.unwrap();
    assert_eq!(renewed.device_id, tokens.device_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_tampered_tokens_are_unauthorized() {
    let server = start_default();
    let http = server.http();
    let (_, tokens) = user(&http, &unique_name("junk")).await.unwrap();

    // Flip one character of the payload: the signature no longer matches.
    let mut parts: Vec<String> = tokens.access_token.split('.').map(str::to_owned).collect();
    assert_eq!(parts.len(), 3, "access tokens are JWTs");
    let payload = &mut parts[1];
    let flipped = if payload.ends_with('A') { 'B' } else { 'A' };
    payload.pop();
    payload.push(flipped);
    let tampered = parts.join(".");

    for bad in ["garbage", "a.b.c", "", tampered.as_str()] {
        expect_api(http.me(bad).await, 401, ErrorCode::Unauthorized);
    }
    // No Authorization header at all.
    common::expect_raw_error(
        http.get_raw("/v1/me", None).await.unwrap(),
        401,
        ErrorCode::Unauthorized,
    );

    for bad in ["garbage", tampered.as_str()] {
        let mut ws = server.ws(bad, None).await.unwrap();
        let (code, reason) = expect_closed(&mut ws).await;
        assert_eq!(code, Some(close::UNAUTHORIZED), "{reason}");
        assert!(reason.starts_with("unauthorized"), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_authenticates_with_bearer_header_on_the_upgrade() {
    let server = start_default();
    let http = server.http();
    let (alice, alice_tokens) = user(&http, &unique_name("hdr")).await.unwrap();
    let (bob, bob_tokens) = user(&http, &unique_name("hdr")).await.unwrap();
    let conv = http
        .open_direct(&alice_tokens.access_token, bob.id)
        .await
        .unwrap();

    let header = (
        "Authorization".to_owned(),
        format!("Bearer {}", alice_tokens.access_token),
    );
    let mut ws = server.ws_raw(vec![header]).await.unwrap();
    ws.send_text_raw(r#"{"type":"hello"}"#.to_owned())
        .await
        .unwrap();
    ws.wait_synced(WAIT).await.unwrap();

    // The connection acts as alice: her send is acknowledged and reaches bob.
    let mut bob_ws = server.ws(&bob_tokens.access_token, None).await.unwrap();
    bob_ws.wait_synced(WAIT).await.unwrap();
    ws.send_message(conv.id, "hdr-1", "via header")
        .await
        .unwrap();
    let ack = ws
        .wait_for(WAIT, |f| match f {
            ServerFrame::Ack(a) => Some(a.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!((ack.cid.as_str(), ack.conv), ("hdr-1", conv.id));
    let got = bob_ws
        .wait_for(WAIT, |f| match f {
            ServerFrame::Message(m) => Some(m.message.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(
        (got.sender, got.text.as_str(), got.seq),
        (alice.id, "via header", ack.seq)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_with_a_bad_bearer_header_is_refused_with_401() {
    let server = start_default();
    let http = server.http();
    let (_, tokens) = user(&http, &unique_name("badhdr")).await.unwrap();

    let header = |token: &str| vec![("Authorization".to_owned(), format!("Bearer {token}"))];
    expect_api(
        server.ws_raw(header("garbage")).await,
        401,
        ErrorCode::Unauthorized,
    );

    http.logout(&tokens.access_token).await.unwrap();
    expect_api(
        server.ws_raw(header(&tokens.access_token)).await,
        401,
        ErrorCode::TokenRevoked,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_hello_without_any_token_is_closed_with_4001() {
    let server = start_default();
    let mut ws = server.ws_raw(Vec::new()).await.unwrap();
    ws.send_text_raw(r#"{"type":"hello"}"#.to_owned())
        .await
        .unwrap();
    let (code, reason) = expect_closed(&mut ws).await;
    assert_eq!(code, Some(close::UNAUTHORIZED), "{reason}");
    assert!(reason.starts_with("unauthorized"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_without_hello_in_time_is_closed_with_4008() {
    let server = start(ServerOptions::default().with_env("PARLOR_WS__HELLO_TIMEOUT_SECS", "1"));
    let mut ws = server.ws_raw(Vec::new()).await.unwrap();
    let (code, reason) = expect_closed(&mut ws).await;
    assert_eq!(code, Some(close::HELLO_TIMEOUT), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_first_frame_other_than_hello_is_closed_with_4002() {
    let server = start_default();
    let http = server.http();
    let (_, tokens) = user(&http, &unique_name("proto")).await.unwrap();

    let send = r#"{"type":"send","cid":"c1","conv":"1","text":"hi"}"#.to_owned();
    let read = r#"{"type":"read","conv":"1","seq":1}"#.to_owned();
    let not_json = "hello?".to_owned();
    // A token is of no help when the frame is not hello.
    let token_in_wrong_frame = format!(r#"{{"type":"nope","token":"{}"}}"#, tokens.access_token);
    for first in [send, read, not_json, token_in_wrong_frame] {
        let mut ws = server.ws_raw(Vec::new()).await.unwrap();
        ws.send_text_raw(first.clone()).await.unwrap();
        let (code, reason) = expect_closed(&mut ws).await;
        assert_eq!(code, Some(close::PROTOCOL), "{first}: {reason}");
    }

    let mut ws = server.ws_raw(Vec::new()).await.unwrap();
    ws.send_binary(b"{\"type\":\"hello\"}".to_vec())
        .await
        .unwrap();
    let (code, reason) = expect_closed(&mut ws).await;
    assert_eq!(code, Some(close::PROTOCOL), "binary first frame: {reason}");

    // The same connection attempt with a proper hello works.
    let mut ok: WsClient = server.ws(&tokens.access_token, None).await.unwrap();
    ok.wait_synced(WAIT).await.unwrap();
}
