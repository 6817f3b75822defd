//! How a node reaches Redis.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::path::PathBuf;
use std::time::Duration;

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
pub async fn connect(options: &RedisOptions) -> anyhow::Result<ConnectionManager> {
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
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_max_delay(1000);
    let manager = tokio::time::timeout(
        Duration::from_secs(10),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot reach redis within 10 s"))?
    .map_err(|e| anyhow::anyhow!("cannot connect to redis: {e}"))?;
    Ok(manager)
}

pub async fn ping(conn: &ConnectionManager) -> anyhow::Result<()> {
    let mut conn = conn.clone();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    anyhow::ensure!(pong == "PONG", "unexpected answer to PING: {pong}");
    Ok(())
}
