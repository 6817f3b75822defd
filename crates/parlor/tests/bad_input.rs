//! One running server takes a whole battery of bad input, over WebSocket and REST, and
//! afterwards still works normally with nothing stored lost: a bystander connected the
//! whole time still gets messages, history is intact and verbatim, the process is alive,
//! and the errors were counted in the metrics.
#![allow(clippy::unwrap_used)]

mod common;

use common::{expect_closed, expect_error_frame, expect_raw_error, start_default, WAIT};
use futures_util::{SinkExt, StreamExt};
use parlor_client::proto::ws::{Ack, ClientFrame, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{ClientError, WsClient};
use parlor_testkit::{unique_name, user, PASSWORD};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Message texts that must be stored and returned exactly as sent.
const TRICKY_TEXTS: &[&str] = &[
    "'; DROP TABLE messages; --",
    "<script>alert(1)</script>",
    "\" OR 1=1; --",
    "Robert'); DELETE FROM users WHERE ('1'='1",
    r#"{"type":"hello","token":"x"}"#,
    "back\\slash \"quotes\" and\nnew\tlines",
    "emoji 🎉 and RTL \u{202E}txet and combining e\u{301}",
    "%s %n %x {0} ${jndi:ldap://x}",
    "nul \u{0} inside and \u{7f} del",
];

async fn ack_for(ws: &mut WsClient, cid: &str) -> Ack {
    ws.wait_for(WAIT, |f| match f {
        ServerFrame::Ack(a) if a.cid == cid => Some(a.clone()),
        ServerFrame::Error(e) => panic!("expected an ack for {cid}, got {e:?}"),
        _ => None,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_survives_a_battery_of_bad_input_without_losing_anything() {
    let server = start_default();
    let http = server.http();
    let (alice, alice_tokens) = user(&http, &unique_name("alice")).await.unwrap();
    let (bob, bob_tokens) = user(&http, &unique_name("bob")).await.unwrap();
    let (_, carol_tokens) = user(&http, &unique_name("carol")).await.unwrap();
    let token = alice_tokens.access_token.clone();
    let conv = http.open_direct(&token, bob.id).await.unwrap().id;
    let foreign = http
        .create_group(&carol_tokens.access_token, "not yours", &[])
        .await
        .unwrap()
        .id;

    // What must survive: a few messages stored before anything bad happens.
    let mut stored: Vec<String> = Vec::new();
    for i in 0..3 {
        let text = format!("stored before {i}");
        http.send(&token, conv, Some(&format!("pre-{i}")), &text)
            .await
            .unwrap();
        stored.push(text);
    }

    // A bystander, connected the whole time.
    let mut bystander = server.ws(&bob_tokens.access_token, None).await.unwrap();
    bystander.wait_synced(WAIT).await.unwrap();

    // ---------------------------------------------------------------- WebSocket ----
    let mut ws = server.ws(&token, None).await.unwrap();
    ws.wait_synced(WAIT).await.unwrap();

    // Not JSON, or JSON that is not a frame.
    for raw in [
        "{not json",
        "",
        "null",
        "[1,2,3]",
        "\"send\"",
        r#"{"type":"send"}"#,
    ] {
        ws.send_text_raw(raw.to_owned()).await.unwrap();
        expect_error_frame(&mut ws, ErrorCode::MalformedFrame).await;
    }
    // Well-formed, but no such frame type; and binary frames.
    ws.send_text_raw(r#"{"type":"nope"}"#.to_owned())
        .await
        .unwrap();
    expect_error_frame(&mut ws, ErrorCode::UnknownFrame).await;
    ws.send_binary(b"{\"type\":\"send\"}".to_vec())
        .await
        .unwrap();
    expect_error_frame(&mut ws, ErrorCode::UnknownFrame).await;
    ws.send_binary(vec![0, 159, 146, 150]).await.unwrap();
    expect_error_frame(&mut ws, ErrorCode::UnknownFrame).await;

    // Send validation; each error names the send it answers.
    let cases: Vec<(String, Id, String, ErrorCode)> = vec![
        ("empty".into(), conv, String::new(), ErrorCode::EmptyMessage),
        (
            "blank".into(),
            conv,
            " \n\t ".into(),
            ErrorCode::EmptyMessage,
        ),
        (
            "too-large".into(),
            conv,
            "x".repeat(16 * 1024 + 1),
            ErrorCode::MessageTooLarge,
        ),
        (
            "too-large-utf8".into(),
            conv,
            "é".repeat(8 * 1024 + 1),
            ErrorCode::MessageTooLarge,
        ),
        (String::new(), conv, "hi".into(), ErrorCode::InvalidClientId),
        (
            "c".repeat(65),
            conv,
            "hi".into(),
            ErrorCode::InvalidClientId,
        ),
        (
            "has space".into(),
            conv,
            "hi".into(),
            ErrorCode::InvalidClientId,
        ),
        (
            "non-ascii-é".into(),
            conv,
            "hi".into(),
            ErrorCode::InvalidClientId,
        ),
        (
            "unknown-conv".into(),
            Id(987_654_321_012),
            "hi".into(),
            ErrorCode::NotFound,
        ),
        (
            "foreign-conv".into(),
            foreign,
            "hi".into(),
            ErrorCode::NotMember,
        ),
    ];
    for (cid, target, text, code) in cases {
        ws.send_message(target, &cid, &text).await.unwrap();
        let error = expect_error_frame(&mut ws, code).await;
        assert_eq!(error.cid.as_deref(), Some(cid.as_str()), "{error:?}");
    }

    // Marking read beyond the last message, and a second hello.
    ws.send_frame(&ClientFrame::Read { conv, seq: 10_000 })
        .await
        .unwrap();
    expect_error_frame(&mut ws, ErrorCode::BadRequest).await;
    ws.send_frame(&ClientFrame::Read {
        conv: foreign,
        seq: 0,
    })
    .await
    .unwrap();
    expect_error_frame(&mut ws, ErrorCode::NotMember).await;
    ws.send_frame(&ClientFrame::Hello {
        token: Some(token.clone()),
        since: None,
    })
    .await
    .unwrap();
    expect_error_frame(&mut ws, ErrorCode::BadRequest).await;

    // The same connection still works after all of that. The largest allowed text and
    // texts that look like injections are stored verbatim.
    let largest = "y".repeat(16 * 1024);
    let mut texts: Vec<String> = vec![largest];
    texts.extend(TRICKY_TEXTS.iter().map(|t| t.to_string()));
    for (i, text) in texts.iter().enumerate() {
        let cid = format!("tricky-{i}");
        ws.send_message(conv, &cid, text).await.unwrap();
        let ack = ack_for(&mut ws, &cid).await;
        assert_eq!(ack.seq, stored.len() as u64 + 1);
        stored.push(text.clone());
    }

    // A frame over the 128 KiB limit closes that connection with 1009...
    let huge = format!(
        r#"{{"type":"send","cid":"huge","conv":"{conv}","text":"{}"}}"#,
        "z".repeat(130 * 1024)
    );
    match ws.send_text_raw(huge).await {
        Ok(()) | Err(ClientError::Closed { .. }) => {}
        Err(e) => panic!("sending the huge frame: {e:?}"),
    }
    let (code, reason) = expect_closed(&mut ws).await;
    assert_eq!(code, Some(1009), "{reason}");

    // ...and the client simply reconnects.
    let mut ws = server.ws(&token, None).await.unwrap();
    ws.wait_synced(WAIT).await.unwrap();

    // Invalid UTF-8 in a text frame closes the connection with 1007. WsClient cannot
    // send that, so this uses tungstenite directly with a hand-made frame.
    let url = format!(
        "{}/v1/ws",
        server.base_url().replacen("http://", "ws://", 1)
    );
    let (mut raw, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let hello = serde_json::to_string(&ClientFrame::Hello {
        token: Some(token.clone()),
        since: None,
    })
    .unwrap();
    raw.send(Message::text(hello)).await.unwrap();
    loop {
        let msg = tokio::time::timeout(WAIT, raw.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            if matches!(
                serde_json::from_str::<ServerFrame>(t.as_str()),
                Ok(ServerFrame::Synced { .. })
            ) {
                break;
            }
        }
    }
    let bad_utf8 = Frame::message(
        vec![b'{', b'"', 0xff, 0xfe, 0xc3, b'"', b'}'],
        OpCode::Data(Data::Text),
        true,
    );
    let _ = raw.send(Message::Frame(bad_utf8)).await;
    let close_code = loop {
        match tokio::time::timeout(WAIT, raw.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close_code, Some(1007));

    // ---------------------------------------------------------------------- REST ----
    let json = "application/json";
    let messages = format!("/v1/conversations/{conv}/messages");

    // Bodies that are not the expected JSON.
    for body in [
        &b"{not json"[..],
        b"",
        b"[]",
        b"{\"username\": 5}",
        b"\xff\xfe",
    ] {
        expect_raw_error(
            http.post_raw("/v1/auth/register", None, json, body.to_vec())
                .await
                .unwrap(),
            400,
            ErrorCode::BadRequest,
        );
    }
    expect_raw_error(
        http.post_raw(
            "/v1/auth/login",
            None,
            "text/plain",
            br#"{"username":"x","password":"y"}"#.to_vec(),
        )
        .await
        .unwrap(),
        400,
        ErrorCode::BadRequest,
    );
    expect_raw_error(
        http.post_raw(&messages, Some(&token), json, b"{\"text\":".to_vec())
            .await
            .unwrap(),
        400,
        ErrorCode::BadRequest,
    );

    // A body over the 1 MiB limit.
    let big_body = serde_json::to_vec(&serde_json::json!({
        "cid": "too-big-body",
        "text": "b".repeat(1024 * 1024 + 100),
    }))
    .unwrap();
    expect_raw_error(
        http.post_raw(&messages, Some(&token), json, big_body)
            .await
            .unwrap(),
        413,
        ErrorCode::PayloadTooLarge,
    );

    // REST sends get the same validation as WebSocket sends.
    let empty =
        serde_json::to_vec(&serde_json::json!({ "cid": "rest-empty", "text": "" })).unwrap();
    expect_raw_error(
        http.post_raw(&messages, Some(&token), json, empty)
            .await
            .unwrap(),
        400,
        ErrorCode::EmptyMessage,
    );
    let large =
        serde_json::to_vec(&serde_json::json!({ "text": "l".repeat(16 * 1024 + 1) })).unwrap();
    expect_raw_error(
        http.post_raw(&messages, Some(&token), json, large)
            .await
            .unwrap(),
        413,
        ErrorCode::MessageTooLarge,
    );

    // Absurd pagination.
    for query in [
        "limit=0",
        "limit=100000",
        "limit=-1",
        "limit=abc",
        "before=abc",
        "after=-5",
        "before=1&after=1",
        "before=99999999999999999999999",
    ] {
        expect_raw_error(
            http.get_raw(&format!("{messages}?{query}"), Some(&token))
                .await
                .unwrap(),
            400,
            ErrorCode::InvalidPagination,
        );
    }

    // Ids that cannot exist, and endpoints that do not exist.
    for path in [
        "/v1/conversations/abc",
        "/v1/conversations/abc/messages",
        "/v1/conversations/-1",
        "/v1/conversations/99999999999999999999999",
        "/v1/users/abc",
        "/v1/nope",
        "/v1/conversations/1/nope",
        "/v2/me",
    ] {
        expect_raw_error(
            http.get_raw(path, Some(&token)).await.unwrap(),
            404,
            ErrorCode::NotFound,
        );
    }

    // Account errors.
    let taken = serde_json::to_vec(&serde_json::json!({
        "username": alice.username.to_uppercase(),
        "password": PASSWORD,
    }))
    .unwrap();
    expect_raw_error(
        http.post_raw("/v1/auth/register", None, json, taken)
            .await
            .unwrap(),
        409,
        ErrorCode::UsernameTaken,
    );
    let wrong = serde_json::to_vec(&serde_json::json!({
        "username": alice.username,
        "password": "definitely wrong",
    }))
    .unwrap();
    expect_raw_error(
        http.post_raw("/v1/auth/login", None, json, wrong)
            .await
            .unwrap(),
        401,
        ErrorCode::InvalidCredentials,
    );

    // Missing or malformed Authorization.
    expect_raw_error(
        http.get_raw("/v1/me", None).await.unwrap(),
        401,
        ErrorCode::Unauthorized,
    );
    expect_raw_error(
        http.get_raw(&messages, None).await.unwrap(),
        401,
        ErrorCode::Unauthorized,
    );
    let basic = reqwest::Client::new()
        .get(format!("{}/v1/me", server.base_url()))
        .header("Authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")
        .send()
        .await
        .unwrap();
    let status = basic.status().as_u16();
    expect_raw_error(
        (status, basic.text().await.unwrap()),
        401,
        ErrorCode::Unauthorized,
    );

    // ----------------------------------------------------------------- afterwards ----
    // A normal exchange works, and the bystander, connected all along, receives it.
    ws.send_message(conv, "after", "after the storm")
        .await
        .unwrap();
    let ack = ack_for(&mut ws, "after").await;
    stored.push("after the storm".to_owned());
    assert_eq!(ack.seq, stored.len() as u64);
    let mut live = Vec::new();
    while live.last().map(String::as_str) != Some("after the storm") {
        match bystander.next_frame(WAIT).await.unwrap() {
            ServerFrame::Message(m) => {
                assert_eq!(m.message.sender, alice.id);
                live.push(m.message.text);
            }
            // Others coming online is not part of this exchange.
            ServerFrame::Presence(_) => {}
            other => panic!("unexpected frame for the bystander: {other:?}"),
        }
    }
    // Everything sent over WebSocket since the bystander connected, verbatim and in order.
    assert_eq!(live, stored[3..]);

    // History has every stored message, verbatim, in order, and nothing else.
    let history = http
        .history(&bob_tokens.access_token, conv, None, None, Some(200))
        .await
        .unwrap();
    let texts: Vec<String> = history.messages.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, stored);
    assert!(!history.has_more);
    let seqs: Vec<u64> = history.messages.iter().map(|m| m.seq).collect();
    let want: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(seqs, want);

    // The process is alive and counted the errors.
    assert_eq!(http.healthz().await.unwrap(), 200);
    let metrics = http.metrics().await.unwrap();
    for code in [
        "malformed_frame",
        "unknown_frame",
        "invalid_pagination",
        "not_found",
    ] {
        assert!(
            metrics.contains(&format!("parlor_errors_total{{code=\"{code}\"}}")),
            "no error count for {code} in:\n{metrics}"
        );
    }
}
