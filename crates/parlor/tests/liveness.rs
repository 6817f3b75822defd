//! Liveness: the server pings, and a client that never answers is closed and cleaned up,
//! while a client that keeps reading (and so answers pings) stays connected.

#![allow(clippy::unwrap_used)]

mod support;

use futures_util::SinkExt;
use parlor_client::proto::ws::{ClientFrame, ServerFrame};
use parlor_client::{ClientError, WsClient};
use parlor_testkit::TestServer;
use std::time::Duration;
use support::*;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const OPEN: &str = "parlor_connections_open";
/// How long the server may take to notice and clean up (the idle timeout is 3 s).
const CLEANUP: Duration = Duration::from_secs(60);

fn fast_pings() -> TestServer {
    start(&[
        ("PARLOR_WS__PING_INTERVAL_SECS", "1"),
        ("PARLOR_WS__IDLE_TIMEOUT_SECS", "3"),
    ])
}

/// Completes the WebSocket handshake and `hello`, then is never polled again: it reads
/// nothing, so it never answers a ping.
async fn silent_client(
    server: &TestServer,
    token: &str,
) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    let url = format!(
        "{}/v1/ws",
        server.base_url().replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket handshake");
    let hello = serde_json::to_string(&ClientFrame::Hello {
        token: Some(token.to_owned()),
        since: None,
    })
    .unwrap();
    ws.send(Message::text(hello)).await.expect("send hello");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_that_never_answers_pings_is_disconnected_and_cleaned_up() {
    let server = fast_pings();
    let http = server.http();
    let alice = user(&http, "alice").await;
    assert_eq!(metric(&http, OPEN).await, 0.0);

    let silent = silent_client(&server, &alice.token).await;
    poll_metric(&http, OPEN, WAIT, |v| v == 1.0).await;
    poll_metric(&http, OPEN, CLEANUP, |v| v == 0.0).await;
    drop(silent);
}

/// Reads (and so answers pings) until told to stop; forwards message events.
async fn reading_client(
    mut ws: WsClient,
    messages: mpsc::UnboundedSender<ServerFrame>,
    mut stop: oneshot::Receiver<()>,
) -> Result<WsClient, ClientError> {
    loop {
        if stop.try_recv().is_ok() {
            return Ok(ws);
        }
        match ws.next_frame(Duration::from_millis(200)).await {
            Ok(frame) => {
                let _ = messages.send(frame);
            }
            Err(ClientError::Timeout) => {}
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_client_stays_connected_and_receives_messages_while_a_silent_one_is_dropped() {
    let server = fast_pings();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;

    let (ws, _) = live(&server, &bob.token).await;
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let reader = tokio::spawn(reading_client(ws, frames_tx, stop_rx));

    let silent = silent_client(&server, &alice.token).await;
    poll_metric(&http, OPEN, WAIT, |v| v == 2.0).await;
    poll_metric(&http, OPEN, CLEANUP, |v| v == 1.0).await;
    // Keep going for well over the idle timeout: the reading client is still there.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(metric(&http, OPEN).await, 1.0);
    assert!(
        !reader.is_finished(),
        "the reading client was disconnected: {:?}",
        reader.await
    );

    let sent = http
        .send(&alice.token, conv, Some("still"), "still there?")
        .await
        .unwrap();
    loop {
        let got = tokio::time::timeout(WAIT, frames_rx.recv())
            .await
            .expect("the reading client got no message")
            .expect("the reading client stopped");
        if let ServerFrame::Message(m) = got {
            assert_eq!(m.message.id, sent.id);
            break;
        }
    }
    stop_tx.send(()).unwrap();
    let mut ws = reader
        .await
        .unwrap()
        .expect("the reading client stayed connected");
    ws.close().await.unwrap();
    poll_metric(&http, OPEN, CLEANUP, |v| v == 0.0).await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cleaned_up_even_when_traffic_for_it_fills_its_socket() {
    let server = fast_pings();
    let http = server.http();
    let alice = user(&http, "alice").await;
    let mute = user(&http, "mute").await;
    let room = http
        .create_group(&alice.token, "room", &[mute.id])
        .await
        .unwrap()
        .id;
    let silent = silent_client(&server, &mute.token).await;
    poll_metric(&http, OPEN, WAIT, |v| v == 1.0).await;

    // Megabytes addressed to the silent client, far more than socket buffers hold, so
    // that the server's writes to it block.
    let (mut a, _) = live(&server, &alice.token).await;
    let filler = "z".repeat(4000);
    let sends: Vec<Outgoing> = (0..2000)
        .map(|i| Outgoing {
            conv: room,
            cid: format!("m{i}"),
            text: format!("{i} {filler}"),
        })
        .collect();
    let mut seen = Vec::new();
    pipeline(&mut a, &sends, 64, &mut seen).await;
    a.close().await.unwrap();

    poll_metric(&http, OPEN, CLEANUP, |v| v == 0.0).await;
    drop(silent);
}
