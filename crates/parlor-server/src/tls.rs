//! HTTPS and WSS with rustls (ring provider). Handshakes run in their own tasks so that a
//! slow or hostile client cannot hold up the accept loop.

use axum::serve::Listener;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = {
        let pem = std::fs::read(cert)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert.display()))?;
        rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>()?
    };
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key: PrivateKeyDer<'static> = {
        let pem = std::fs::read(key)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())?
            .ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                                .await
                            {
                                Ok(Ok(tls)) => {
                                    let _ = tx.send((tls, peer)).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "tls handshake failed")
                                }
                                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address, available to handlers as `ConnectInfo<ClientAddr>` on both the
/// plain and the TLS listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// Plain TCP with `TCP_NODELAY`: chat frames are small and latency matters more than
/// packet count.
pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return (tcp, peer);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}
