//! Shared helpers for the end-to-end tests in `accounts.rs`, `conversations.rs`,
//! `bad_input.rs`, `tls.rs` and `rate_limits.rs`. Each test file compiles its own copy,
//! so not every helper is used everywhere.
#![allow(dead_code, clippy::unwrap_used)]

use parlor_client::proto::ws::{ErrorFrame, ServerFrame};
use parlor_client::proto::{ErrorBody, ErrorCode};
use parlor_client::{ClientError, WsClient, WsEvent};
use parlor_testkit::{ServerOptions, TestServer};
use std::path::Path;
use std::time::Duration;

/// Upper bound for any single wait; only there so that a broken server fails the test
/// instead of hanging it. Nothing asserts on how long anything takes.
pub const WAIT: Duration = Duration::from_secs(15);

/// Starts the real `parlor` binary built for this test run.
pub fn start(opts: ServerOptions) -> TestServer {
    let bin = Path::new(env!("CARGO_BIN_EXE_parlor"));
    // Process start-up blocks briefly; keep the runtime's other worker free meanwhile.
    tokio::task::block_in_place(|| TestServer::start(bin, opts)).expect("start parlor server")
}

/// Starts a server with the test kit's defaults (relaxed rate limits).
pub fn start_default() -> TestServer {
    start(ServerOptions::default())
}

/// Unwraps an expected API error into (HTTP status, code, message).
#[track_caller]
pub fn api_err<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, ErrorCode, String) {
    match result {
        Err(ClientError::Api { status, body }) => {
            assert!(
                !body.message.trim().is_empty(),
                "error {} has an empty message",
                body.code
            );
            (status, body.code, body.message)
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Asserts that `result` is an API error with this status and code; returns the message.
#[track_caller]
pub fn expect_api<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    status: u16,
    code: ErrorCode,
) -> String {
    let (got_status, got_code, message) = api_err(result);
    assert_eq!(
        (got_status, got_code),
        (status, code),
        "unexpected error: {message}"
    );
    message
}

/// Parses a raw REST error response and checks it is a proper error body: JSON with a
/// known `code`, a non-empty `message`, and the given status and code.
#[track_caller]
pub fn expect_raw_error(
    (status, body): (u16, String),
    want_status: u16,
    want: ErrorCode,
) -> ErrorBody {
    let parsed: ErrorBody = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("status {status}: body is not an error body ({e}): {body}"));
    assert_eq!(
        (status, parsed.code),
        (want_status, want),
        "unexpected error body: {body}"
    );
    assert!(
        !parsed.message.trim().is_empty(),
        "empty error message: {body}"
    );
    parsed
}

/// Waits for the connection to close, skipping any frames; returns (code, reason).
pub async fn expect_closed(ws: &mut WsClient) -> (Option<u16>, String) {
    loop {
        match ws.next(WAIT).await {
            Ok(WsEvent::Closed { code, reason }) => return (code, reason),
            Ok(WsEvent::Frame(_)) | Err(ClientError::Protocol(_)) => continue,
            Err(e) => panic!("expected the server to close the connection, got {e:?}"),
        }
    }
}

/// Waits for the next `error` frame, skipping others (e.g. live message events).
pub async fn next_error(ws: &mut WsClient) -> ErrorFrame {
    ws.wait_for(WAIT, |f| match f {
        ServerFrame::Error(e) => Some(e.clone()),
        _ => None,
    })
    .await
    .expect("an error frame")
}

/// Waits for the next `error` frame and checks its code and message; returns it.
pub async fn expect_error_frame(ws: &mut WsClient, code: ErrorCode) -> ErrorFrame {
    let frame = next_error(ws).await;
    assert_eq!(frame.code, code, "unexpected error frame: {frame:?}");
    assert!(
        !frame.message.trim().is_empty(),
        "error frame without message: {frame:?}"
    );
    frame
}
