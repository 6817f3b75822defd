//! Shared helpers for the messaging, sync, durability and liveness end-to-end tests.
//!
//! Every test starts its own `parlor` binary through [`parlor_testkit::TestServer`]; these
//! helpers only remove boilerplate (users, WebSocket waits, pipelined sends, metrics).
//! Waits use generous timeouts so that a broken server fails a test instead of hanging it;
//! nothing here asserts on how long anything took.

#![allow(dead_code, clippy::unwrap_used)]

use parlor_client::proto::rest::{MessageView, TokenPair};
use parlor_client::proto::ws::{Ack, ErrorFrame, MessageEvent, ServerFrame};
use parlor_client::proto::Id;
use parlor_client::{ClientError, Http, WsClient};
use parlor_testkit::{ServerOptions, TestServer, PASSWORD};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Upper bound for any single wait on the server. Generous: debug builds on a shared,
/// two-core machine can be slow, and these bounds only exist to avoid hanging.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_parlor"))
}

/// Starts a server with the given configuration variables. The test kit relaxes the
/// rate limits by default, so tests registering many users from 127.0.0.1 and pipelining
/// thousands of frames are not throttled.
pub fn start(env: &[(&str, &str)]) -> TestServer {
    let mut opts = ServerOptions::default();
    for (k, v) in env {
        opts = opts.with_env(*k, *v);
    }
    // Process start-up blocks briefly; keep the runtime's other worker free meanwhile.
    tokio::task::block_in_place(|| TestServer::start(bin(), opts)).expect("start parlor")
}

/// Restarts on the same data directory (SIGKILL first if it still runs).
pub fn restart(server: &mut TestServer) {
    tokio::task::block_in_place(|| server.restart()).expect("restart parlor");
}

/// SIGKILL, and reap the process.
pub fn kill(server: &mut TestServer) {
    tokio::task::block_in_place(|| server.kill()).expect("kill parlor");
}

/// A registered, logged-in user (one device session).
#[derive(Debug, Clone)]
pub struct User {
    pub id: Id,
    pub name: String,
    pub token: String,
}

pub async fn user(http: &Http, prefix: &str) -> User {
    let name = parlor_testkit::unique_name(prefix);
    let (view, tokens) = parlor_testkit::user(http, &name)
        .await
        .expect("create user");
    User {
        id: view.id,
        name,
        token: tokens.access_token,
    }
}

/// `n` users created concurrently, named `prefix0`, `prefix1`, ...
pub async fn users(http: &Http, prefix: &str, n: usize) -> Vec<User> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let http = http.clone();
            let prefix = format!("{prefix}{i}");
            tokio::spawn(async move { user(&http, &prefix).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("user task"));
    }
    out
}

/// Logs the user in again: a second device session with its own token.
pub async fn second_device(http: &Http, user: &User, device: &str) -> String {
    let tokens: TokenPair = http
        .login(&user.name, PASSWORD, Some(device))
        .await
        .expect("login second device");
    tokens.access_token
}

/// Connects with `since` and collects everything up to `synced`.
pub async fn connect(
    server: &TestServer,
    token: &str,
    since: Option<Id>,
) -> (WsClient, Vec<ServerFrame>, Id) {
    let mut ws = server.ws(token, since).await.expect("connect WebSocket");
    let (backlog, pos) = ws.wait_synced(WAIT).await.expect("wait for synced");
    (ws, backlog, pos)
}

/// Connects for live events only (no `since`): nothing may come before `synced`.
pub async fn live(server: &TestServer, token: &str) -> (WsClient, Id) {
    let (ws, backlog, pos) = connect(server, token, None).await;
    assert!(
        !backlog.iter().any(is_state_event),
        "a connection without since must get no backlog, got {backlog:?}"
    );
    (ws, pos)
}

/// Message, membership and read events: the synced state. Other frames (acks, errors,
/// `synced`, and any ephemeral kind the protocol may add) are not.
pub fn is_state_event(f: &ServerFrame) -> bool {
    matches!(
        f,
        ServerFrame::Message(_) | ServerFrame::Member(_) | ServerFrame::Read(_)
    )
}

pub async fn frame(ws: &mut WsClient) -> ServerFrame {
    frame_for(ws, "client").await
}

/// Like [`frame`], naming the connection in the failure.
pub async fn frame_for(ws: &mut WsClient, who: &str) -> ServerFrame {
    match ws.next_frame(WAIT).await {
        Ok(f) => f,
        Err(e) => panic!("{who}: waiting for a frame: {e}"),
    }
}

/// Waits for the ack of `cid`, skipping (and dropping) other frames; an error frame fails.
/// The sender's own `message` event may arrive before the ack and is then dropped too.
pub async fn ack(ws: &mut WsClient, cid: &str) -> Ack {
    loop {
        match frame(ws).await {
            ServerFrame::Ack(a) if a.cid == cid => return a,
            ServerFrame::Error(e) if e.cid.as_deref() == Some(cid) => {
                panic!("send {cid} failed: {e:?}")
            }
            ServerFrame::Error(e) => panic!("unexpected error frame: {e:?}"),
            _ => {}
        }
    }
}

/// Sends and waits for the ack.
pub async fn send(ws: &mut WsClient, conv: Id, cid: &str, text: &str) -> Ack {
    ws.send_message(conv, cid, text).await.expect("send frame");
    ack(ws, cid).await
}

/// Waits for the error frame answering `cid`; an ack for it fails.
pub async fn error_for(ws: &mut WsClient, cid: &str) -> ErrorFrame {
    loop {
        match frame(ws).await {
            ServerFrame::Error(e) if e.cid.as_deref() == Some(cid) => return e,
            ServerFrame::Ack(a) if a.cid == cid => panic!("expected an error for {cid}, got {a:?}"),
            _ => {}
        }
    }
}

/// The next `message` event, skipping other frames (acks, member and read events).
pub async fn next_message(ws: &mut WsClient) -> MessageEvent {
    next_message_for(ws, "client").await
}

/// Like [`next_message`], naming the connection in the failure.
pub async fn next_message_for(ws: &mut WsClient, who: &str) -> MessageEvent {
    loop {
        if let ServerFrame::Message(m) = frame_for(ws, who).await {
            return m;
        }
    }
}

/// The next `n` message events.
pub async fn messages(ws: &mut WsClient, n: usize) -> Vec<MessageEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_message(ws).await);
    }
    out
}

/// Message events up to and including the one with `cid` (from any sender).
pub async fn messages_until(ws: &mut WsClient, cid: &str) -> Vec<MessageEvent> {
    let mut out = Vec::new();
    loop {
        let m = next_message(ws).await;
        let done = m.message.cid.as_deref() == Some(cid);
        out.push(m);
        if done {
            return out;
        }
    }
}

/// One send of a pipelined batch.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub conv: Id,
    pub cid: String,
    pub text: String,
}

/// Sends everything without waiting for acks one by one: at most `window` sends are
/// unacknowledged at any time (the window only keeps the socket buffers of a client that
/// reads and writes on one task from filling up). Every other frame that arrives on the
/// way is appended to `seen`. Returns the acks by cid; any error frame fails the test.
pub async fn pipeline(
    ws: &mut WsClient,
    sends: &[Outgoing],
    window: usize,
    seen: &mut Vec<ServerFrame>,
) -> HashMap<String, Ack> {
    let mut acks = HashMap::with_capacity(sends.len());
    let mut next = 0;
    while acks.len() < sends.len() {
        while next < sends.len() && next - acks.len() < window {
            let s = &sends[next];
            ws.send_message(s.conv, &s.cid, &s.text)
                .await
                .expect("send frame");
            next += 1;
        }
        match frame(ws).await {
            ServerFrame::Ack(a) => {
                assert!(
                    acks.insert(a.cid.clone(), a).is_none(),
                    "two acks for one cid"
                );
            }
            ServerFrame::Error(e) => panic!("pipelined send failed: {e:?}"),
            other => seen.push(other),
        }
    }
    acks
}

/// The whole history of a conversation, oldest first, read forwards with `after`.
pub async fn full_history(http: &Http, token: &str, conv: Id) -> Vec<MessageView> {
    let mut out: Vec<MessageView> = Vec::new();
    loop {
        let after = out.last().map_or(0, |m| m.seq);
        let page = http
            .history(token, conv, None, Some(after), Some(100))
            .await
            .expect("history page");
        let more = page.has_more;
        assert!(
            more || page.messages.len() <= 100,
            "page larger than the limit"
        );
        out.extend(page.messages);
        if !more {
            return out;
        }
    }
}

/// The value of a metric without labels, from `/metrics`.
pub async fn metric(http: &Http, name: &str) -> f64 {
    let text = http.metrics().await.expect("GET /metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
}

/// Polls `name` until `pred` holds; returns the last value, or fails after `limit`.
pub async fn poll_metric(
    http: &Http,
    name: &str,
    limit: Duration,
    pred: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let v = metric(http, name).await;
        if pred(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} still {v} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether an error means the connection is gone (closed, reset, or the process died).
pub fn is_disconnect(e: &ClientError) -> bool {
    matches!(e, ClientError::Closed { .. } | ClientError::Transport(_))
}
