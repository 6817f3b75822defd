//! WebSocket client for the event stream (`/v1/ws`).
//!
//! [`WsClient`] is deliberately thin: it sends frames and hands back every server frame
//! in order, with a timeout on each wait, so tests can assert on exact sequences
//! (sync replay, `synced`, acks, close codes). It never reconnects by itself.
//!
//! Buffers are kept small (4 KiB read buffer, no write buffering) because the load
//! generator holds many idle connections and every frame the protocol defines is small.

use crate::error::{chain, ClientError, Result};
use crate::tls;
use futures_util::{SinkExt, StreamExt};
use parlor_proto::ws::{ClientFrame, ServerFrame};
use parlor_proto::Id;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// Upper bound for the TCP + TLS + upgrade handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`WsClient::close`] waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`WsClient::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    Frame(ServerFrame),
    /// The connection is closed. `code` is `None` when it ended without a close frame.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// One WebSocket connection to `/v1/ws`.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Set once the connection is known to be closed; later reads repeat it.
    closed: Option<(Option<u16>, String)>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl WsClient {
    /// Connects to `{ws|wss}://host/v1/ws` and sends `hello` with the token in the frame
    /// (never in the URL, where it would end up in access logs).
    pub async fn connect(
        base_url: &str,
        root_pem: Option<&[u8]>,
        token: &str,
        since: Option<Id>,
    ) -> Result<WsClient> {
        let mut client = WsClient::connect_raw(base_url, root_pem, Vec::new()).await?;
        client
            .send_frame(&ClientFrame::Hello {
                token: Some(token.to_owned()),
                since,
            })
            .await?;
        Ok(client)
    }

    /// Connects with the given extra upgrade-request headers and sends nothing, for
    /// protocol tests (header authentication, missing or malformed `hello`).
    ///
    /// A refused upgrade (non-101 answer) becomes [`ClientError::Api`] with the status.
    /// For `wss://`, pass the server's root in `root_pem`: this crate bundles no public
    /// roots for WebSockets, since it only ever talks to servers it was told to trust.
    pub async fn connect_raw(
        base_url: &str,
        root_pem: Option<&[u8]>,
        extra_headers: Vec<(String, String)>,
    ) -> Result<WsClient> {
        let url = ws_url(base_url)?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Transport(format!("bad WebSocket URL {url}: {e}")))?;
        for (name, value) in extra_headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ClientError::Transport(format!("bad header name {name:?}: {e}")))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|e| ClientError::Transport(format!("bad header value: {e}")))?;
            request.headers_mut().append(name, value);
        }
        let connector = match root_pem {
            Some(pem) => Some(Connector::Rustls(Arc::new(tls::client_config(pem)?))),
            None => None,
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            connector,
        );
        let (ws, _response) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(WsError::Http(resp))) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                return Err(ClientError::from_response(status, body));
            }
            Ok(Err(e)) => return Err(ClientError::Transport(chain(&e))),
            Ok(Ok(pair)) => pair,
        };
        Ok(WsClient { ws, closed: None })
    }

    /// Sends one client frame as JSON text.
    pub async fn send_frame(&mut self, frame: &ClientFrame) -> Result<()> {
        let text = serde_json::to_string(frame)
            .map_err(|e| ClientError::Protocol(format!("cannot encode frame: {e}")))?;
        self.send(Message::text(text)).await
    }

    /// Sends arbitrary text (for malformed-frame tests).
    pub async fn send_text_raw(&mut self, text: String) -> Result<()> {
        self.send(Message::text(text)).await
    }

    /// Sends a binary frame (which the protocol does not allow).
    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<()> {
        self.send(Message::binary(data)).await
    }

    /// Sends a `send` frame; the answer is an `ack` or an `error` frame with this `cid`.
    pub async fn send_message(&mut self, conv: Id, cid: &str, text: &str) -> Result<()> {
        self.send_frame(&ClientFrame::Send {
            cid: cid.to_owned(),
            conv,
            text: text.to_owned(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        })
        .await
    }

    /// Waits for the next server frame or the end of the connection. Pings are answered,
    /// pongs ignored. A text frame that is not a valid [`ServerFrame`] is a
    /// [`ClientError::Protocol`] error carrying the raw text.
    pub async fn next(&mut self, timeout: Duration) -> Result<WsEvent> {
        self.next_until(Instant::now() + timeout).await
    }

    /// Like [`WsClient::next`], but a close becomes [`ClientError::Closed`].
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<ServerFrame> {
        self.frame_until(Instant::now() + timeout).await
    }

    /// Collects frames until `synced`; returns the frames before it and its `pos`.
    /// `timeout` bounds the whole wait.
    pub async fn wait_synced(&mut self, timeout: Duration) -> Result<(Vec<ServerFrame>, Id)> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.frame_until(deadline).await? {
                ServerFrame::Synced { pos } => return Ok((frames, pos)),
                other => frames.push(other),
            }
        }
    }

    /// Skips frames until `f` returns `Some`. `timeout` bounds the whole wait.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.frame_until(deadline).await?;
            if let Some(found) = f(&frame) {
                return Ok(found);
            }
        }
    }

    /// Starts a normal close (1000) and waits briefly for the server's reply.
    pub async fn close(&mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        match self.ws.close(Some(frame)).await {
            Ok(()) => {}
            Err(e) if closed_error(&e) => return Ok(()),
            Err(e) => return Err(ClientError::Transport(chain(&e))),
        }
        // Drain until the server's close frame or the end of the stream.
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.next_until(deadline).await {
                Ok(WsEvent::Closed { .. }) | Err(ClientError::Timeout) => return Ok(()),
                Ok(WsEvent::Frame(_)) | Err(ClientError::Protocol(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn send(&mut self, msg: Message) -> Result<()> {
        if let Some((code, reason)) = &self.closed {
            return Err(ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            });
        }
        self.ws.send(msg).await.map_err(|e| {
            if closed_error(&e) {
                ClientError::Closed {
                    code: None,
                    reason: chain(&e),
                }
            } else {
                ClientError::Transport(chain(&e))
            }
        })
    }

    async fn frame_until(&mut self, deadline: Instant) -> Result<ServerFrame> {
        match self.next_until(deadline).await? {
            WsEvent::Frame(frame) => Ok(frame),
            WsEvent::Closed { code, reason } => Err(ClientError::Closed { code, reason }),
        }
    }

    async fn next_until(&mut self, deadline: Instant) -> Result<WsEvent> {
        loop {
            if let Some((code, reason)) = &self.closed {
                return Ok(WsEvent::Closed {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(msg) => msg,
            };
            match msg {
                None => self.mark_closed(None, "connection ended".into()),
                Some(Err(e)) if closed_error(&e) => self.mark_closed(None, chain(&e)),
                Some(Err(e)) => return Err(ClientError::Transport(chain(&e))),
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str::<ServerFrame>(text.as_str())
                        .map(WsEvent::Frame)
                        .map_err(|e| {
                            ClientError::Protocol(format!("bad server frame ({e}): {text}"))
                        });
                }
                Some(Ok(Message::Binary(data))) => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected binary frame of {} bytes",
                        data.len()
                    )));
                }
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong; push it out now rather than on the
                    // next read, which may be far away for an idle connection.
                    let _ = tokio::time::timeout_at(deadline, self.ws.flush()).await;
                }
                Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                        None => (None, String::new()),
                    };
                    // Complete the closing handshake (tungstenite queued the reply).
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                    self.mark_closed(code, reason);
                }
            }
        }
    }

    fn mark_closed(&mut self, code: Option<u16>, reason: String) {
        self.closed = Some((code, reason));
    }
}

/// Errors that mean "the connection is gone" rather than "something is broken": the
/// server closed it or its process died.
fn closed_error(e: &WsError) -> bool {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => true,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        WsError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// `http://h:p` -> `ws://h:p/v1/ws`, `https://h:p` -> `wss://h:p/v1/ws`.
fn ws_url(base_url: &str) -> Result<String> {
    let base = base_url.trim_end_matches('/');
    let rest = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(ClientError::Transport(format!(
            "base URL must start with http:// or https://: {base_url}"
        )));
    };
    Ok(format!("{rest}/v1/ws"))
}
