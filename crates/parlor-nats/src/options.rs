//! How a node reaches NATS: server list, mutual TLS, and the stream it needs.

use crate::Names;
use async_nats::jetstream::{self, stream};
use std::path::PathBuf;
use std::time::Duration;

/// PEM files for TLS to NATS: the CA that signed the servers' certificates, and this
/// node's client certificate when the servers require one (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Comma-separated server URLs; the client fails over between them.
    pub url: String,
    /// Prefix of the stream and subject names.
    pub namespace: String,
    pub tls: Option<TlsFiles>,
    /// Stream replicas; 0 means 3 when the cluster has three servers or more, else 1.
    pub replicas: usize,
    pub node_name: String,
}

/// How long committed events stay in the stream. The store keeps them for good; the
/// stream only carries them between nodes, and a node that was away longer catches up
/// from the store.
const STREAM_MAX_AGE: Duration = Duration::from_secs(3600);
/// Publishes retried within this window with the same message id are stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

pub(crate) async fn connect(options: &NatsOptions) -> anyhow::Result<async_nats::Client> {
    let mut connect = async_nats::ConnectOptions::new()
        .name(format!("parlor-{}", options.node_name))
        .connection_timeout(Duration::from_secs(5))
        // Reconnect forever: a node outlives broker restarts, and gap filling covers
        // what was published while it was away.
        .max_reconnects(None)
        .retry_on_initial_connect();
    if let Some(tls) = &options.tls {
        connect = connect
            .require_tls(true)
            .add_root_certificates(tls.ca_file.clone());
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let urls: Vec<async_nats::ServerAddr> = options
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("invalid cluster.nats_url: {e}"))?;
    anyhow::ensure!(!urls.is_empty(), "cluster.nats_url is empty");
    let client = tokio::time::timeout(Duration::from_secs(10), connect.connect(urls))
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach nats within 10 s"))?
        .map_err(|e| anyhow::anyhow!("cannot connect to nats: {e}"))?;
    // `retry_on_initial_connect` returns before the first connection; wait for it so
    // that start-up fails clearly instead of later.
    tokio::time::timeout(Duration::from_secs(10), client.flush())
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach nats within 10 s"))?
        .map_err(|e| anyhow::anyhow!("nats flush failed: {e}"))?;
    Ok(client)
}

/// Three replicas when the servers we can see form a cluster of three or more.
pub(crate) fn replicas(options: &NatsOptions, client: &async_nats::Client) -> usize {
    if options.replicas > 0 {
        return options.replicas;
    }
    let info = client.server_info();
    let configured = options
        .url
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .count();
    let seen = info.connect_urls.len().max(configured);
    if seen >= 3 {
        3
    } else {
        1
    }
}

pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> anyhow::Result<()> {
    let config = stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}.>", names.events)],
        max_age: STREAM_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    // Several nodes may start at once; creating is idempotent for one configuration, and
    // a JetStream cluster may still be electing its leader for a moment.
    let mut last = None;
    for _ in 0..20 {
        match js.get_or_create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "stream not ready yet");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(anyhow::anyhow!(
        "cannot create stream {}: {}",
        names.stream,
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}
