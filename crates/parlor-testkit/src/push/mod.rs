//! A local HTTPS server that plays a push provider (a Web Push service, FCM, APNs, a
//! webhook receiver): it records every request and answers as the test scripts it.
//! HTTP/1.1 and HTTP/2 (ALPN), with a throwaway certificate for `localhost` and
//! `127.0.0.1`; point the client at [`FakeProvider::ca_file`].

pub mod apns;
pub mod fcm;
pub mod webhook;
pub mod webpush;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

/// One request as the provider received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("request body is not JSON")
    }
}

/// What the provider answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    responder: RwLock<Responder>,
    arrived: Notify,
}

pub struct FakeProvider {
    port: u16,
    ca_pem: Vec<u8>,
    ca_file: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl FakeProvider {
    /// Starts on a free loopback port; answers `201 Created` until told otherwise.
    pub async fn start() -> anyhow::Result<FakeProvider> {
        let dir = tempfile::tempdir()?;
        let (cert, key, ca_pem) = crate::self_signed(dir.path())?;
        let acceptor = acceptor(&cert, &key)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            responder: RwLock::new(Arc::new(|_: &Recorded| Reply::status(201))),
            arrived: Notify::new(),
        });
        let task = tokio::spawn(serve(listener, acceptor, Arc::clone(&shared)));
        Ok(FakeProvider {
            port,
            ca_file: cert,
            ca_pem,
            shared,
            task,
            _dir: dir,
        })
    }

    /// `https://localhost:<port>` (the certificate also names 127.0.0.1).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// The certificate to trust, as a PEM file.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Scripts the answers from now on.
    pub fn respond(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        if let Ok(mut r) = self.shared.responder.write() {
            *r = Arc::new(f);
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits until at least `n` requests have arrived; all of them.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Recorded>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            let got = self.requests();
            if got.len() >= n {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.requests();
                anyhow::ensure!(
                    got.len() >= n,
                    "expected {n} requests within {timeout:?}, got {}",
                    got.len()
                );
                return Ok(got);
            }
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
        .context("no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        // Small answers must leave at once: with Nagle's algorithm and the client's
        // delayed ACK each response waited ~40 ms, which the push benchmark measured.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, hyper::Error>(handle(req, &shared).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers,
        body,
    };
    let responder = shared
        .responder
        .read()
        .map(|r| Arc::clone(&r))
        .unwrap_or_else(|_| Arc::new(|_: &Recorded| Reply::status(500)));
    let reply = responder(&recorded);
    if let Ok(mut r) = shared.requests.lock() {
        r.push(recorded);
    }
    shared.arrived.notify_waiters();
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}
