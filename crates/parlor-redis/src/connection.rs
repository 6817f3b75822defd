//! How a node reaches Redis: one reconnecting connection behind a deadline per call and
//! a circuit breaker.
//!
//! Redis being away must cost chat nothing but presence accuracy: sends bump the history
//! cache, connects and REST calls check rate limits, and every one of those would
//! otherwise wait out the client's reconnect attempts. So a call that fails on the
//! connection (or takes longer than [`CALL_TIMEOUT`]) opens the breaker, and for
//! [`OPEN_FOR`] every call fails at once without touching Redis; the next call after
//! that tries again.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for one command; Redis answers in well under a millisecond when well.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How long calls fail at once after a failure.
pub const OPEN_FOR: Duration = Duration::from_secs(1);

/// The connection every adapter here uses; cheap to clone (clones share the breaker).
#[derive(Clone)]
pub struct RedisConn {
    manager: ConnectionManager,
    breaker: Arc<Breaker>,
}

#[derive(Default)]
struct Breaker {
    /// Milliseconds since the Unix epoch until which calls fail at once.
    open_until_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Breaker {
    async fn guard<T>(&self, call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
        if now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "redis unreachable a moment ago; not retrying yet",
            )));
        }
        let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "redis did not answer in time",
            ))),
        };
        if let Err(e) = &outcome {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.open_until_ms
                    .store(now_ms() + OPEN_FOR.as_millis() as u64, Ordering::Relaxed);
            }
        }
        outcome
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let RedisConn { manager, breaker } = self;
        Box::pin(breaker.guard(manager.req_packed_command(cmd)))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let RedisConn { manager, breaker } = self;
        Box::pin(breaker.guard(manager.req_packed_commands(cmd, offset, count)))
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}

/// PEM files for TLS to Redis (`rediss://` URLs): the CA, and this node's client
/// certificate when Redis requires one (`tls-auth-clients yes`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    /// Prefix of every key, so that clusters (and tests) can share one Redis.
    pub namespace: String,
    pub tls: Option<TlsFiles>,
    pub node_name: String,
}

/// A connection that reconnects by itself; commands fail fast while Redis is away.
pub async fn connect(options: &RedisOptions) -> anyhow::Result<RedisConn> {
    let client = match &options.tls {
        None => redis::Client::open(options.url.as_str())?,
        Some(tls) => {
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
            };
            let client_tls = match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert)?,
                    client_key: read(key)?,
                }),
                _ => None,
            };
            redis::Client::build_with_tls(
                options.url.as_str(),
                redis::TlsCertificates {
                    client_tls,
                    root_cert: Some(read(&tls.ca_file)?),
                },
            )?
        }
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(1))
        .set_number_of_retries(1)
        .set_max_delay(500);
    let manager = tokio::time::timeout(
        Duration::from_secs(10),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot reach redis within 10 s"))?
    .map_err(|e| anyhow::anyhow!("cannot connect to redis: {e}"))?;
    Ok(RedisConn {
        manager,
        breaker: Arc::default(),
    })
}

pub async fn ping(conn: &RedisConn) -> anyhow::Result<()> {
    let mut conn = conn.clone();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    anyhow::ensure!(pong == "PONG", "unexpected answer to PING: {pong}");
    Ok(())
}
