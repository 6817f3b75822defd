//! Picks the adapters behind the core's ports: the embedded default (SQLite, in-process
//! bus, in-memory presence and rate limits) or cluster mode (PostgreSQL, NATS JetStream,
//! Redis). This is the only module that names an adapter.

use crate::config::{ClusterTls, Config};
use crate::notify::{BindQueue, PushSetup};
use parlor_core::error::{Error, Result as CoreResult};
use parlor_core::notify::TargetAddress;
use parlor_core::ports::{
    BlobStore, BoxFuture, Bus, EventLog, NotificationStore, Presence, PushProvider, RateLimiter,
    RecentCache, Store, UploadStore, WorkQueue,
};
use parlor_embedded::{
    Durability, InProcessBus, MemoryPresence, MemoryRateLimiter, SqliteStore, StoreOptions,
};
use parlor_proto::notify::{NewPushTarget, PushKind};
use parlor_proto::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;

/// A named health check for `/readyz`.
pub type Probe = Arc<dyn Fn() -> BoxFuture<Result<(), String>> + Send + Sync>;

/// Counters of the cluster adapters, for `/metrics`.
pub type ClusterStats = Arc<dyn Fn() -> ClusterCounters + Send + Sync>;

#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterCounters {
    pub bus_published: u64,
    pub bus_publish_failures: u64,
    pub bus_gap_filled: u64,
    pub rate_limiter_failed_open: u64,
    pub recent_cache_hits: u64,
    pub recent_cache_misses: u64,
}

pub struct Backends {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Shared newest-history pages (cluster mode).
    pub recent: Option<Arc<dyn RecentCache>>,
    /// Upload metadata, on the same database as messages.
    pub upload_store: Arc<dyn UploadStore>,
    /// Where upload bytes live (`uploads.storage`).
    pub blobs: Arc<dyn BlobStore>,
    /// Notification state, on the same engine as messages.
    pub notifications: Arc<dyn NotificationStore>,
    /// The durable queue of committed events the notifier consumes.
    pub bind_queue: BindQueue,
    /// Engines `/readyz` checks besides the store.
    pub probes: Vec<(&'static str, Probe)>,
    pub cluster_stats: Option<ClusterStats>,
}

pub async fn build(config: &Config) -> anyhow::Result<Backends> {
    if config.cluster.enabled {
        cluster(config).await
    } else {
        embedded(config)
    }
}

fn embedded(config: &Config) -> anyhow::Result<Backends> {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let durability = match config.durability.as_str() {
        "fsync" => Durability::Fsync,
        _ => Durability::Process,
    };
    let store = Arc::new(SqliteStore::open(
        StoreOptions {
            machine_id: config.machine_id,
            durability,
            search_candidates: config.limits.search_candidates,
            write_queue: config.limits.write_queue.max(1),
            pending_client_ids: config.limits.pending_client_ids.max(1),
            pending_messages: config.limits.pending_messages.max(1),
            search_linger: std::time::Duration::from_millis(config.limits.search_linger_ms),
            ..StoreOptions::new(&config.data_dir)
        },
        Arc::clone(&bus),
    )?);
    let queue_store = Arc::clone(&store);
    let queue_bus = Arc::clone(&bus);
    let bind_queue: BindQueue = Arc::new(move |name| {
        let store = Arc::clone(&queue_store);
        let bus = Arc::clone(&queue_bus);
        Box::pin(async move {
            let queue = store
                .work_queue(name, bus.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("work queue {name}: {e}"))?;
            Ok(Box::new(queue) as Box<dyn WorkQueue>)
        })
    });
    Ok(Backends {
        upload_store: store.clone(),
        notifications: store.clone(),
        bind_queue,
        blobs: blob_store(config)?,
        store,
        bus,
        presence: Arc::new(MemoryPresence::new(
            (config.presence.grace_secs * 1000) as i64,
        )),
        limiter: Arc::new(MemoryRateLimiter::new()),
        recent: None,
        probes: Vec::new(),
        cluster_stats: None,
    })
}

/// This node's name: configured, or `<hostname>-<port>`.
pub fn node_name(config: &Config) -> String {
    if !config.cluster.node_name.is_empty() {
        return config.cluster.node_name.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", config.listen.port())
}

fn tls_parts(
    tls: &ClusterTls,
) -> Option<(
    std::path::PathBuf,
    Option<std::path::PathBuf>,
    Option<std::path::PathBuf>,
)> {
    tls.ca_file
        .clone()
        .map(|ca| (ca, tls.cert_file.clone(), tls.key_file.clone()))
}

async fn cluster(config: &Config) -> anyhow::Result<Backends> {
    let c = &config.cluster;
    let node = node_name(config);
    let tls = tls_parts(&c.tls);
    tracing::info!(node = %node, namespace = %c.namespace, tls = tls.is_some(), "starting as a cluster node");

    let nats = parlor_nats::NatsBus::connect(parlor_nats::NatsOptions {
        url: c.nats_url.clone(),
        namespace: c.namespace.clone(),
        tls: tls
            .clone()
            .map(|(ca_file, cert_file, key_file)| parlor_nats::TlsFiles {
                ca_file,
                cert_file,
                key_file,
            }),
        replicas: c.stream_replicas,
        node_name: node.clone(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("nats: {e}"))?;

    let redis_options = parlor_redis::RedisOptions {
        url: c.redis_url.clone(),
        namespace: c.namespace.clone(),
        tls: tls
            .clone()
            .map(|(ca_file, cert_file, key_file)| parlor_redis::TlsFiles {
                ca_file,
                cert_file,
                key_file,
            }),
        node_name: node.clone(),
    };
    let redis = parlor_redis::connection::connect(&redis_options)
        .await
        .map_err(|e| anyhow::anyhow!("redis: {e}"))?;

    let pg_tls = match &tls {
        Some((ca_file, Some(cert_file), Some(key_file))) => Some(parlor_postgres::TlsFiles {
            ca_file: ca_file.clone(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        }),
        _ => None,
    };
    let bus: Arc<dyn Bus> = nats.clone();
    let store = parlor_postgres::PgStore::connect(
        parlor_postgres::PgOptions {
            url: c.postgres_url.clone(),
            replica_urls: c.postgres_replica_urls.clone(),
            pool_size: c.postgres_pool_size.max(2),
            partitions: c.postgres_partitions,
            tls: pg_tls,
            node_name: node.clone(),
            search_candidates: config.limits.search_candidates,
            write_queue: config.limits.write_queue.max(1),
        },
        Arc::clone(&bus),
    )
    .await
    .map_err(|e| anyhow::anyhow!("postgres: {e}"))?;
    let log: Arc<dyn EventLog> = store.clone();
    nats.attach_log(log);
    tracing::info!(machine_id = store.machine_id(), "machine id leased");

    let presence = parlor_redis::RedisPresence::start(
        redis.clone(),
        &redis_options,
        (config.presence.grace_secs * 1000) as i64,
    );
    let limiter = Arc::new(parlor_redis::RedisRateLimiter::new(
        redis.clone(),
        &redis_options,
    ));

    let recent = Arc::new(parlor_redis::RedisRecentCache::new(
        redis.clone(),
        &redis_options,
    ));

    let nats_probe = Arc::clone(&nats);
    let redis_probe = redis.clone();
    let probes: Vec<(&'static str, Probe)> = vec![
        (
            "nats",
            Arc::new(move || {
                let nats = Arc::clone(&nats_probe);
                Box::pin(async move { nats.ping().await.map_err(|e| e.to_string()) })
            }),
        ),
        (
            "redis",
            Arc::new(move || {
                let redis = redis_probe.clone();
                Box::pin(async move {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        parlor_redis::connection::ping(&redis),
                    )
                    .await
                    .map_err(|_| "no answer within 2 s".to_string())?
                    .map_err(|e| e.to_string())
                })
            }),
        ),
    ];
    let stats_nats = Arc::clone(&nats);
    let stats_limiter = Arc::clone(&limiter);
    let stats_recent = Arc::clone(&recent);
    let cluster_stats: ClusterStats = Arc::new(move || {
        let [published, failures, gap] = stats_nats.stats().snapshot();
        ClusterCounters {
            bus_published: published,
            bus_publish_failures: failures,
            bus_gap_filled: gap,
            rate_limiter_failed_open: stats_limiter
                .failed_open
                .load(std::sync::atomic::Ordering::Relaxed),
            recent_cache_hits: stats_recent.hits.load(std::sync::atomic::Ordering::Relaxed),
            recent_cache_misses: stats_recent
                .misses
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    });
    if config.uploads.storage == "local" {
        tracing::warn!(
            "uploads.storage is local: files are visible only to nodes sharing {}; use s3 for a cluster",
            config.data_dir.display()
        );
    }
    let queue_nats = Arc::clone(&nats);
    let ack_wait = std::time::Duration::from_secs(30);
    let bind_queue: BindQueue = Arc::new(move |name| {
        let nats = Arc::clone(&queue_nats);
        Box::pin(async move {
            let queue = nats.work_queue(name, ack_wait).await?;
            Ok(Box::new(queue) as Box<dyn WorkQueue>)
        })
    });
    Ok(Backends {
        upload_store: store.clone(),
        notifications: store.clone(),
        bind_queue,
        blobs: blob_store(config)?,
        store,
        bus,
        presence,
        limiter,
        recent: Some(recent),
        probes,
        cluster_stats: Some(cluster_stats),
    })
}

/// The object storage `uploads.storage` names.
fn blob_store(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let u = &config.uploads;
    Ok(match u.storage.as_str() {
        "s3" => Arc::new(
            parlor_objects::ObjectBlobStore::s3(parlor_objects::S3Config {
                endpoint: (!u.s3.endpoint.is_empty()).then(|| u.s3.endpoint.clone()),
                region: u.s3.region.clone(),
                bucket: u.s3.bucket.clone(),
                access_key_id: u.s3.access_key_id.clone(),
                secret_access_key: u.s3.secret_access_key.clone(),
                allow_http: u.s3.allow_http,
            })
            .map_err(|e| anyhow::anyhow!("s3 storage: {e}"))?,
        ),
        _ => {
            let root = config.data_dir.join("uploads");
            Arc::new(
                parlor_objects::ObjectBlobStore::local(root.clone())
                    .map_err(|e| anyhow::anyhow!("upload storage {}: {e}", root.display()))?,
            )
        }
    })
}

/// The push providers `push.*` configures, and how registrations are checked.
pub fn push_setup(config: &Config) -> anyhow::Result<PushSetup> {
    let p = &config.push;
    let extra_roots_pem = match &p.extra_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("push.extra_ca_file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let client = parlor_push::http::ClientOptions {
        extra_roots_pem,
        timeout: None,
    };
    let mut providers: HashMap<PushKind, Arc<dyn PushProvider>> = HashMap::new();
    let mut vapid_public_key = None;

    if p.web_push.enabled {
        let path = match &p.web_push.vapid_key_file {
            Some(path) => Some(path.clone()),
            None if config.cluster.enabled => {
                tracing::warn!("Web Push is off: cluster mode needs push.web_push.vapid_key_file, the same key on every node");
                None
            }
            None => Some(config.data_dir.join("vapid.pem")),
        };
        if let Some(path) = path {
            let pem = match std::fs::read_to_string(&path) {
                Ok(pem) => pem,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && p.web_push.vapid_key_file.is_none() =>
                {
                    let pem = parlor_push::webpush::generate_vapid_key_pem()?;
                    write_private(&path, &pem)?;
                    tracing::info!(path = %path.display(), "created a VAPID key for Web Push");
                    pem
                }
                Err(e) => anyhow::bail!("VAPID key {}: {e}", path.display()),
            };
            let provider =
                parlor_push::webpush::WebPushProvider::new(parlor_push::webpush::WebPushConfig {
                    vapid_key_pem: pem,
                    subject: p.web_push.subject.clone(),
                    client: client.clone(),
                    allow_http: false,
                })?;
            vapid_public_key = Some(provider.public_key());
            providers.insert(PushKind::WebPush, Arc::new(provider));
        }
    }
    if let Some(path) = &p.fcm.service_account_file {
        let json = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("push.fcm.service_account_file {}: {e}", path.display())
        })?;
        let provider = parlor_push::fcm::FcmProvider::new(parlor_push::fcm::FcmConfig {
            service_account_json: json,
            base_url: p.fcm.base_url.clone(),
            token_url: p.fcm.token_url.clone(),
            client: client.clone(),
        })?;
        providers.insert(PushKind::Fcm, Arc::new(provider));
    }
    if let Some(path) = &p.apns.key_file {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("push.apns.key_file {}: {e}", path.display()))?;
        let provider = parlor_push::apns::ApnsProvider::new(parlor_push::apns::ApnsConfig {
            key_pem: pem,
            key_id: p.apns.key_id.clone(),
            team_id: p.apns.team_id.clone(),
            topic: p.apns.topic.clone(),
            base_url: p.apns.base_url.clone(),
            client: client.clone(),
        })?;
        providers.insert(PushKind::Apns, Arc::new(provider));
    }
    let webhook = parlor_push::webhook::WebhookConfig {
        allow_private: p.webhook.allow_private,
        allow_http: p.webhook.allow_http,
        client,
    };
    if p.webhook.enabled {
        providers.insert(
            PushKind::Webhook,
            Arc::new(parlor_push::webhook::WebhookProvider::new(webhook.clone())?),
        );
    }
    let enabled: Vec<PushKind> = providers.keys().copied().collect();
    tracing::info!(providers = ?enabled.iter().map(|k| k.as_str()).collect::<Vec<_>>(), "push providers");
    let validate = Arc::new(move |target: NewPushTarget| -> CoreResult<TargetAddress> {
        let kind = match &target {
            NewPushTarget::WebPush { .. } => PushKind::WebPush,
            NewPushTarget::Fcm { .. } => PushKind::Fcm,
            NewPushTarget::Apns { .. } => PushKind::Apns,
            NewPushTarget::Webhook { .. } => PushKind::Webhook,
        };
        if !enabled.contains(&kind) {
            return Err(Error::new(
                ErrorCode::ProviderNotConfigured,
                format!("{} is not configured on this server", kind.as_str()),
            ));
        }
        let invalid = |m: String| Error::new(ErrorCode::InvalidTarget, m);
        Ok(match target {
            NewPushTarget::WebPush { endpoint, keys } => {
                parlor_push::webpush::validate_subscription(
                    &endpoint,
                    &keys.p256dh,
                    &keys.auth,
                    false,
                )
                .map_err(invalid)?;
                TargetAddress::WebPush {
                    endpoint,
                    p256dh: keys.p256dh,
                    auth: keys.auth,
                }
            }
            NewPushTarget::Fcm { token } => {
                parlor_push::fcm::validate_token(&token).map_err(invalid)?;
                TargetAddress::Fcm { token }
            }
            NewPushTarget::Apns { token } => {
                parlor_push::apns::validate_token(&token).map_err(invalid)?;
                TargetAddress::Apns { token }
            }
            NewPushTarget::Webhook { url } => {
                parlor_push::webhook::validate_url(&url, &webhook).map_err(invalid)?;
                let secret =
                    parlor_push::webhook::generate_secret().map_err(|_| Error::internal())?;
                TargetAddress::Webhook { url, secret }
            }
        })
    });
    Ok(PushSetup {
        providers,
        validate,
        vapid_public_key,
    })
}

/// Writes a key file readable by its owner only.
fn write_private(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
