//! Raw WebSocket sessions to `/v1/ws`, bound to chosen loopback source addresses.
//!
//! One client address can hold at most ~28,000 connections to one server port (the
//! ephemeral port range), and ports linger in TIME_WAIT after a run, so connections are
//! spread over 127.0.0.2, 127.0.0.3, … (all of 127.0.0.0/8 is the loopback interface on
//! Linux). Each socket is bound explicitly before `connect`, then the WebSocket handshake
//! runs over that stream.

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use parlor_proto::ws::ClientFrame;
use parlor_proto::Id;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Upper bound for TCP connect plus the upgrade handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for `hello` → `synced` of a fresh session (no backlog).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long closing waits for the server's side of the close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where connections go, and which local addresses they come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// The URL of the upgrade request, `ws://host:port/v1/ws`.
    pub ws_url: String,
    /// Local addresses client sockets are bound to, round-robin; empty: the OS chooses.
    pub sources: Vec<IpAddr>,
}

impl Target {
    /// Resolves `http://host:port`. When the server is on IPv4 loopback, connections come
    /// from `source_ips` addresses 127.0.0.2 onwards.
    pub async fn resolve(base_url: &str, source_ips: u8) -> anyhow::Result<Target> {
        let base = base_url.trim_end_matches('/');
        let host_port = base.strip_prefix("http://").ok_or_else(|| {
            anyhow!("only http:// server URLs are supported (the load generator speaks no TLS): {base_url}")
        })?;
        if host_port.contains('/') {
            bail!("the server URL must have no path: {base_url}");
        }
        let with_port = if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            host_port.to_owned()
        } else {
            format!("{host_port}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolve {with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port} resolves to no address"))?;
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (0..source_ips.clamp(1, 250))
                .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k)))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Target {
            addr,
            ws_url: format!("ws://{with_port}/v1/ws"),
            sources,
        })
    }

    /// The source address of the `index`-th connection.
    pub fn source(&self, index: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[index % self.sources.len()])
        }
    }
}

/// Buffers for idle sessions: a 4 KiB read buffer and no write buffer, so that one
/// process can hold many thousands of connections.
pub fn idle_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Buffers for the few busy sessions of the traffic scenarios: fewer system calls per
/// frame, so that the generator does not become the bottleneck. Not a larger read
/// buffer: tungstenite zeroes the whole of it before every read, and 64 KiB cost the
/// generator 11% of its CPU (0.58 against 0.52 cores at 40,000 messages/s).
pub fn busy_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(32 * 1024)
}

/// TCP connect from `source` (bound explicitly) and the WebSocket upgrade.
pub async fn open(
    target: &Target,
    source: Option<IpAddr>,
    config: WebSocketConfig,
) -> anyhow::Result<Ws> {
    let attempt = async {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("create socket")?;
        if let Some(ip) = source {
            // Lets a port whose previous connection is in TIME_WAIT be bound again.
            socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connect to {}", target.addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            target.ws_url.as_str(),
            stream,
            Some(config),
        )
        .await
        .map_err(handshake_error)?;
        Ok::<Ws, anyhow::Error>(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| {
            anyhow!(
                "connect + upgrade timed out after {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
}

fn handshake_error(e: WsError) -> anyhow::Error {
    match e {
        WsError::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            anyhow!("upgrade refused: HTTP {}: {body}", response.status())
        }
        other => anyhow!("WebSocket handshake: {other}"),
    }
}

/// Sends the `hello` frame.
pub async fn hello(ws: &mut Ws, token: &str, since: Option<Id>) -> anyhow::Result<()> {
    let frame = ClientFrame::Hello {
        token: Some(token.to_owned()),
        since,
    };
    ws.send(Message::text(serde_json::to_string(&frame)?))
        .await
        .context("send hello")
}

/// Reads until `synced`, ignoring other frames; returns its position.
pub async fn wait_synced(ws: &mut Ws) -> anyhow::Result<Id> {
    let wait = async {
        loop {
            match ws.next().await {
                None => bail!("connection ended before synced"),
                Some(Err(e)) => bail!("read before synced: {e}"),
                Some(Ok(Message::Text(text))) => {
                    if let Some(frame) = Incoming::parse(&text) {
                        if frame.kind == "synced" {
                            return frame.pos.context("synced without pos");
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((0, String::new()));
                    bail!("closed before synced: {code} {reason}");
                }
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(SYNC_TIMEOUT, wait)
        .await
        .map_err(|_| anyhow!("no synced within {}s", SYNC_TIMEOUT.as_secs()))?
}

/// A fresh session: connect, `hello` without `since`, wait for `synced`.
pub async fn session(
    target: &Target,
    source: Option<IpAddr>,
    token: &str,
    config: WebSocketConfig,
) -> anyhow::Result<(Ws, Id)> {
    let mut ws = open(target, source, config).await?;
    hello(&mut ws, token, None).await?;
    let pos = wait_synced(&mut ws).await?;
    Ok((ws, pos))
}

/// Starts a normal close and waits briefly for the server to end the connection (so
/// that TIME_WAIT lands on the server's side rather than on the client's ports).
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExtListenOverflows` in `/proc/net/netstat`). Machine-wide: it counts every
/// listener of this network namespace, not only the server's.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let index = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(index)?.parse().ok();
    }
    None
}

/// The few fields of a server frame the benchmark looks at, parsed without copying.
/// Fields a frame type does not have stay `None`.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(default, borrow)]
    pub cid: Option<&'a str>,
    #[serde(default)]
    pub conv: Option<Id>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub pos: Option<Id>,
    #[serde(default)]
    pub sender: Option<Id>,
    #[serde(default, borrow)]
    pub code: Option<&'a str>,
}

impl<'a> Incoming<'a> {
    /// `None` for text that is not such a frame (or has escapes in the borrowed fields,
    /// which no frame of the benchmark's own messages has).
    pub fn parse(text: &'a str) -> Option<Incoming<'a>> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_targets_get_source_addresses() -> anyhow::Result<()> {
        let target = Target::resolve("http://127.0.0.1:8080/", 3).await?;
        assert_eq!(target.addr, "127.0.0.1:8080".parse()?);
        assert_eq!(target.ws_url, "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(target.source(0), Some("127.0.0.2".parse()?));
        assert_eq!(target.source(4), Some("127.0.0.3".parse()?));
        assert!(Target::resolve("https://127.0.0.1:8443", 3).await.is_err());
        assert!(Target::resolve("http://127.0.0.1:8080/x", 3).await.is_err());
        Ok(())
    }

    #[test]
    fn incoming_frames_parse_without_copying() {
        let text = r#"{"type":"ack","cid":"1.2.3","conv":"7","id":"9","seq":4,"pos":"11","ts":1}"#;
        let frame = Incoming::parse(text);
        assert!(frame.is_some());
        if let Some(f) = frame {
            assert_eq!(f.kind, "ack");
            assert_eq!(f.cid, Some("1.2.3"));
            assert_eq!(f.conv, Some(Id(7)));
            assert_eq!(f.seq, Some(4));
            assert_eq!(f.pos, Some(Id(11)));
        }
    }
}
