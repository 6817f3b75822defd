//! Configuration: built-in defaults, then a TOML file, then `PARLOR_*` environment
//! variables, then command-line flags (each overriding the one before).
//!
//! Environment variables map onto the TOML keys: `PARLOR_LISTEN` sets `listen`, and a
//! double underscore descends into a table, so `PARLOR_WS__PING_INTERVAL_SECS=5` sets
//! `ws.ping_interval_secs`. Values parse as TOML scalars (numbers, booleans) or strings.
//! Every key and its default is listed in `docs/configuration.md`.

use parlor_core::ports::RateRule;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on for HTTP(S) and WebSocket.
    pub listen: SocketAddr,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Snowflake machine id of this node (0-1023).
    pub machine_id: u16,
    /// `process` (acknowledged = in the WAL, survives a process crash) or `fsync`
    /// (acknowledged = fsynced, survives power loss).
    pub durability: String,
    /// PEM certificate chain and private key; both set means HTTPS and WSS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub ws: WsConfig,
    pub presence: PresenceConfig,
    pub rate: RateConfig,
    /// `text` or `json` logs on stderr.
    pub log_format: String,
    /// Threads of the async runtime (connections, HTTP, the hub). Unset: see
    /// [`Config::runtime_threads`].
    pub worker_threads: Option<usize>,
    /// Enables the admin API (`/v1/admin/*`) for this bearer credential (32+ characters).
    /// Unset: the admin API answers 404.
    pub admin_token: Option<String>,
    /// Cluster mode: PostgreSQL, NATS JetStream and Redis instead of the embedded store
    /// and in-process bus.
    pub cluster: ClusterConfig,
    pub uploads: UploadsConfig,
    pub push: PushConfig,
}

/// Notifications: who is pushed is decided by rules (see `parlor_core::notify`); this
/// says how pushes leave. A provider without its credentials is off: registering a
/// target for it answers `provider_not_configured`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Decide and send notifications at all.
    pub enabled: bool,
    /// Put the message text in pushes (off: "New message" only).
    pub include_content: bool,
    /// How long a provider may hold a push for an unreachable device.
    pub ttl_secs: u32,
    /// A node that claims a push and then dies leaves it to others after this long.
    pub lease_secs: u64,
    /// Pushes sent at once by this node.
    pub concurrency: usize,
    /// Extra PEM certificates to trust for provider connections (a private provider,
    /// tests). The system's roots are always trusted.
    pub extra_ca_file: Option<PathBuf>,
    pub web_push: WebPushSettings,
    pub fcm: FcmSettings,
    pub apns: ApnsSettings,
    pub webhook: WebhookSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebPushSettings {
    pub enabled: bool,
    /// PKCS#8 PEM of the VAPID P-256 key. Unset: `<data_dir>/vapid.pem`, created on first
    /// start. Every node of a cluster must use the same key.
    pub vapid_key_file: Option<PathBuf>,
    /// The VAPID contact (`mailto:` or `https:`), sent to push services.
    pub subject: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmSettings {
    /// The Firebase service-account JSON key file. Unset: FCM is off.
    pub service_account_file: Option<PathBuf>,
    /// Default `https://fcm.googleapis.com`.
    pub base_url: Option<String>,
    /// Default: the service account's `token_uri`.
    pub token_url: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApnsSettings {
    /// The `.p8` signing key. Unset: APNs is off.
    pub key_file: Option<PathBuf>,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Default `https://api.push.apple.com`; the sandbox is
    /// `https://api.sandbox.push.apple.com`.
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    pub enabled: bool,
    /// Allow webhook URLs on loopback and private networks (off: refused, so that users
    /// cannot make the server call internal services).
    pub allow_private: bool,
    /// Allow plain-HTTP webhook URLs.
    pub allow_http: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            include_content: true,
            ttl_secs: 24 * 3600,
            lease_secs: 30,
            concurrency: 16,
            extra_ca_file: None,
            web_push: WebPushSettings::default(),
            fcm: FcmSettings::default(),
            apns: ApnsSettings::default(),
            webhook: WebhookSettings::default(),
        }
    }
}

impl Default for WebPushSettings {
    fn default() -> Self {
        WebPushSettings {
            enabled: true,
            vapid_key_file: None,
            subject: "mailto:admin@localhost".into(),
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            enabled: true,
            allow_private: false,
            allow_http: false,
        }
    }
}

/// File uploads (attachments): limits, storage and media processing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// Largest file accepted, in bytes.
    pub max_bytes: u64,
    /// Bytes of uploads each user may keep (every upload counts, attached or not).
    pub quota_bytes: u64,
    /// Uploads never attached to a message are removed after this long.
    pub unattached_ttl_secs: u64,
    /// How often garbage collection runs.
    pub gc_interval_secs: u64,
    /// Accepted content types (`image/*`, `application/pdf`, `*/*`), matched against the
    /// type found in the bytes.
    pub allowed_types: Vec<String>,
    /// `local` (files under `<data_dir>/uploads`) or `s3`.
    pub storage: String,
    pub s3: S3Config,
    /// Path of `ffmpeg` for video posters; `auto` looks on PATH, empty disables.
    pub ffmpeg: String,
    /// Images with more pixels than this are refused before decoding.
    pub max_image_pixels: u64,
    /// Images and videos processed at once (each on a blocking thread).
    pub max_concurrent_processing: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible service; empty means AWS for `region`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allow a plain-HTTP endpoint (a service on loopback or a private network).
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            allow_http: false,
        }
    }
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            max_bytes: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            unattached_ttl_secs: 24 * 3600,
            gc_interval_secs: 300,
            allowed_types: vec!["*/*".into()],
            storage: "local".into(),
            s3: S3Config::default(),
            ffmpeg: "auto".into(),
            max_image_pixels: 50_000_000,
            max_concurrent_processing: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Off: the embedded default (nothing external). On (or `serve --cluster`): the
    /// engines below, all required.
    pub enabled: bool,
    /// This node's name in leases, logs and the connection registry; empty means
    /// `<hostname>-<listen port>`.
    pub node_name: String,
    /// Prefix of NATS stream and subject names and Redis keys, so that several Parlor
    /// clusters can share engines.
    pub namespace: String,
    /// The primary, e.g. `postgres://parlor@db1:5432/parlor?sslmode=require`.
    pub postgres_url: String,
    /// Read replicas for history and search (they may lag the primary by a little).
    pub postgres_replica_urls: Vec<String>,
    pub postgres_pool_size: usize,
    /// Hash partitions of the messages table, used when the schema is first created.
    pub postgres_partitions: u32,
    /// Comma-separated NATS servers, e.g. `tls://nats1:4222,tls://nats2:4222`.
    pub nats_url: String,
    /// Replicas of the JetStream stream; 0 picks 3 when the NATS cluster has at least
    /// three servers, else 1.
    pub stream_replicas: usize,
    /// `redis://` or `rediss://` (TLS).
    pub redis_url: String,
    /// Mutual TLS to all three engines.
    pub tls: ClusterTls,
}

/// PEM files. `ca_file` set means TLS to the engines, verified against this CA; with
/// `cert_file` and `key_file` the node also presents a client certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_name: String::new(),
            namespace: "parlor".into(),
            postgres_url: String::new(),
            postgres_replica_urls: Vec::new(),
            postgres_pool_size: 16,
            postgres_partitions: 16,
            nats_url: String::new(),
            stream_replicas: 0,
            redis_url: String::new(),
            tls: ClusterTls::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of access tokens (JWT, HS256).
    pub access_ttl_secs: u64,
    /// Lifetime of refresh tokens; each refresh starts a new period.
    pub refresh_ttl_secs: u64,
    /// HMAC key for access tokens. When absent, a random key is created once in
    /// `<data_dir>/jwt.key` (mode 0600) and reused across restarts.
    pub jwt_secret: Option<String>,
    /// Argon2id cost: memory in KiB, iterations, lanes (OWASP's minimum by default).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_lanes: u32,
    /// Password hashes computed at the same time; more wait their turn.
    pub max_concurrent_hashes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_text_bytes: usize,
    pub member_limit: u32,
    pub history_max_page: u32,
    pub sync_page: u32,
    /// Largest WebSocket message accepted; bigger ones close the connection (1009).
    pub max_frame_bytes: usize,
    /// Largest REST request body.
    pub max_body_bytes: usize,
    /// Newest matches a search ranks by relevance (bounds the cost of common words).
    pub search_candidates: u32,
    /// Writes queued for the store beyond this are refused with `unavailable` (a
    /// retryable error): the bound on how much latency overload may add.
    pub write_queue: usize,
    /// Embedded store: client message ids held in memory before they are indexed a
    /// sender at a time (more: fewer index pages written per message, a longer reload
    /// after a crash).
    pub pending_client_ids: usize,
    /// Embedded store: new messages kept in the position-ordered tail before the oldest
    /// conversation's are copied into the conversation-clustered table together (more:
    /// fewer pages written per message, a longer scan for each read).
    pub pending_messages: usize,
    /// Embedded store: longest a change waits before the search index applies it with
    /// the others that came meanwhile (more: fewer, larger index transactions and less
    /// merging, for search results that trail the store by up to this much).
    pub search_linger_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    pub ping_interval_secs: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_secs: u64,
    pub hello_timeout_secs: u64,
    /// Events queued for one connection before it falls back to reading the store.
    pub outbox: usize,
    /// Sends of one connection waiting for their commit at the same time.
    pub max_inflight: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// A user stays online this long after their last device disconnects, so that a
    /// quick reconnect does not flicker.
    pub grace_secs: u64,
    /// How often offline transitions are checked (and so announced).
    pub tick_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            grace_secs: 5,
            tick_ms: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub burst: u32,
    pub per_second: f64,
}

impl From<Rule> for RateRule {
    fn from(r: Rule) -> Self {
        RateRule {
            burst: r.burst,
            per_second: r.per_second,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    pub login_per_ip: Rule,
    pub login_per_user: Rule,
    pub register_per_ip: Rule,
    pub connect_per_ip: Rule,
    pub connect_per_user: Rule,
    /// Frames of one WebSocket connection (sends, reads, anything).
    pub frames_per_connection: Rule,
    pub rest_per_user: Rule,
    /// Typing notifications per user and conversation.
    pub typing_per_conversation: Rule,
    /// Search queries per user.
    pub search_per_user: Rule,
}

impl Config {
    /// Threads for the async runtime on a machine with `cores` cores: `worker_threads`
    /// if set, else one per core. On two cores, one runtime thread (the store's writer
    /// and the search indexer have threads of their own) took 7–14% off the server's CPU
    /// per message and per delivery, but at 1,000 messages/s its p99 varied 0.54–3.1 ms
    /// over seven runs against 0.58–0.69 ms with two: a single thread leaves nothing to
    /// run the connections while it is held up. See BENCHMARKS, "direct".
    pub fn runtime_threads(&self, cores: usize) -> usize {
        self.worker_threads.unwrap_or(cores).max(1)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./parlor-data"),
            machine_id: 0,
            durability: "process".into(),
            tls_cert: None,
            tls_key: None,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            ws: WsConfig::default(),
            presence: PresenceConfig::default(),
            rate: RateConfig::default(),
            log_format: "text".into(),
            worker_threads: None,
            admin_token: None,
            cluster: ClusterConfig::default(),
            uploads: UploadsConfig::default(),
            push: PushConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_ttl_secs: 900,
            refresh_ttl_secs: 30 * 24 * 3600,
            jwt_secret: None,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_lanes: 1,
            max_concurrent_hashes: 2,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_text_bytes: 16 * 1024,
            member_limit: 1000,
            history_max_page: 200,
            sync_page: 1000,
            max_frame_bytes: 128 * 1024,
            max_body_bytes: 1024 * 1024,
            search_candidates: 300,
            write_queue: 65_536,
            pending_client_ids: 8192,
            pending_messages: 1024,
            search_linger_ms: 20,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            ping_interval_secs: 20,
            idle_timeout_secs: 50,
            hello_timeout_secs: 10,
            outbox: 1024,
            max_inflight: 64,
        }
    }
}

impl Default for RateConfig {
    fn default() -> Self {
        let rule = |burst, per_second| Rule { burst, per_second };
        RateConfig {
            login_per_ip: rule(20, 2.0),
            login_per_user: rule(10, 0.5),
            register_per_ip: rule(10, 0.5),
            connect_per_ip: rule(2000, 1000.0),
            connect_per_user: rule(30, 5.0),
            frames_per_connection: rule(200, 100.0),
            rest_per_user: rule(100, 50.0),
            typing_per_conversation: rule(5, 1.0),
            search_per_user: rule(20, 5.0),
        }
    }
}

impl Config {
    /// Loads the file (if any) and applies `vars` (normally `std::env::vars()`).
    pub fn load(
        file: Option<&std::path::Path>,
        vars: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
                text.parse::<toml::Table>()
                    .map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let defaults = default_settings();
        for (key, value) in vars {
            let Some(rest) = key.strip_prefix("PARLOR_") else {
                continue;
            };
            // Test harnesses' own switches (`PARLOR_TEST_BACKEND`, …) are not settings.
            if rest.starts_with("TEST_") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let typed = match lookup(&defaults, &path) {
                // Text settings stay text: an APNs key id such as `1234567890` or
                // `4E12345678` (a float, infinite) would otherwise be refused.
                Some(toml::Value::String(_)) => toml::Value::String(value),
                _ => scalar(&value),
            };
            set_path(&mut table, &path, typed);
        }
        fill_rate_defaults(&mut table);
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.machine_id <= parlor_core::snowflake::MAX_MACHINE_ID,
            "machine_id must be 0-1023"
        );
        anyhow::ensure!(
            matches!(self.durability.as_str(), "process" | "fsync"),
            "durability must be \"process\" or \"fsync\""
        );
        anyhow::ensure!(
            matches!(self.uploads.storage.as_str(), "local" | "s3"),
            "uploads.storage must be \"local\" or \"s3\""
        );
        if self.uploads.storage == "s3" {
            anyhow::ensure!(
                !self.uploads.s3.bucket.is_empty(),
                "uploads.s3.bucket is required with uploads.storage = \"s3\""
            );
        }
        anyhow::ensure!(
            self.uploads.gc_interval_secs > 0,
            "uploads.gc_interval_secs must be at least 1"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key go together"
        );
        if let Some(token) = &self.admin_token {
            anyhow::ensure!(
                token.len() >= 32,
                "admin_token must be at least 32 characters"
            );
        }
        anyhow::ensure!(
            self.limits.max_text_bytes > 0,
            "limits.max_text_bytes must be positive"
        );
        if self.cluster.enabled {
            let c = &self.cluster;
            anyhow::ensure!(
                !c.postgres_url.is_empty() && !c.nats_url.is_empty() && !c.redis_url.is_empty(),
                "cluster mode needs cluster.postgres_url, cluster.nats_url and cluster.redis_url"
            );
            anyhow::ensure!(
                !c.namespace.is_empty()
                    && c.namespace
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "cluster.namespace must be letters, digits and '_'"
            );
            anyhow::ensure!(
                c.tls.cert_file.is_some() == c.tls.key_file.is_some(),
                "cluster.tls.cert_file and cluster.tls.key_file go together"
            );
            anyhow::ensure!(
                c.tls.cert_file.is_none() || c.tls.ca_file.is_some(),
                "cluster.tls.cert_file needs cluster.tls.ca_file"
            );
            // Each node would otherwise make its own key, and a token issued by one node
            // would be refused by the next.
            anyhow::ensure!(
                self.auth.jwt_secret.is_some(),
                "cluster mode needs auth.jwt_secret, the same on every node"
            );
            anyhow::ensure!(
                (1..=1000).contains(&c.postgres_partitions),
                "cluster.postgres_partitions must be 1-1000"
            );
        }
        anyhow::ensure!(self.ws.outbox >= 8, "ws.outbox must be at least 8");
        anyhow::ensure!(
            self.push.lease_secs > 0 && self.push.concurrency > 0,
            "push.lease_secs and push.concurrency must be positive"
        );
        if self.push.apns.key_file.is_some() {
            let a = &self.push.apns;
            anyhow::ensure!(
                !a.key_id.is_empty() && !a.team_id.is_empty() && !a.topic.is_empty(),
                "push.apns needs key_id, team_id and topic with key_file"
            );
        }
        anyhow::ensure!(
            self.ws.ping_interval_secs > 0,
            "ws.ping_interval_secs must be positive"
        );
        Ok(())
    }

    pub fn limits(&self) -> parlor_core::model::Limits {
        parlor_core::model::Limits {
            max_text_bytes: self.limits.max_text_bytes,
            member_limit: self.limits.member_limit,
            history_max_page: self.limits.history_max_page,
            sync_page: self.limits.sync_page,
            search_candidates: self.limits.search_candidates,
        }
    }
}

/// A rate rule given only in part (e.g. just `PARLOR_RATE__LOGIN_PER_IP__BURST=3`) keeps
/// the default of its other field instead of failing to deserialize.
fn fill_rate_defaults(table: &mut toml::Table) {
    let Some(toml::Value::Table(rate)) = table.get_mut("rate") else {
        return;
    };
    let d = RateConfig::default();
    let rules = [
        ("login_per_ip", d.login_per_ip),
        ("login_per_user", d.login_per_user),
        ("register_per_ip", d.register_per_ip),
        ("connect_per_ip", d.connect_per_ip),
        ("connect_per_user", d.connect_per_user),
        ("frames_per_connection", d.frames_per_connection),
        ("rest_per_user", d.rest_per_user),
        ("typing_per_conversation", d.typing_per_conversation),
        ("search_per_user", d.search_per_user),
    ];
    for (name, rule) in rules {
        if let Some(toml::Value::Table(t)) = rate.get_mut(name) {
            t.entry("burst")
                .or_insert(toml::Value::Integer(i64::from(rule.burst)));
            t.entry("per_second")
                .or_insert(toml::Value::Float(rule.per_second));
        }
    }
}

/// Skips env vars that are not config keys (e.g. `PARLOR_TEST_*` of test harnesses) only
/// if they fail to deserialize; unknown keys are reported, so typos do not pass silently.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

/// Every setting's default as TOML, to tell which environment values are text. An unset
/// `Option` would be absent, and its value typed by its look (`scalar`), so the optional
/// text settings are set here to an empty text; a new one belongs in this list.
fn default_settings() -> toml::Table {
    let mut probe = Config {
        admin_token: Some(String::new()),
        ..Config::default()
    };
    probe.auth.jwt_secret = Some(String::new());
    probe.push.fcm.base_url = Some(String::new());
    probe.push.fcm.token_url = Some(String::new());
    probe.push.apns.base_url = Some(String::new());
    match toml::Value::try_from(probe) {
        Ok(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    match (table.get(first)?, rest) {
        (value, []) => Some(value),
        (toml::Value::Table(inner), rest) => lookup(inner, rest),
        _ => None,
    }
}

fn scalar(raw: &str) -> toml::Value {
    // Lists (e.g. replica URLs) are written as TOML arrays: `["a", "b"]`.
    if raw.starts_with('[') {
        if let Ok(mut t) = format!("v = {raw}").parse::<toml::Table>() {
            if let Some(v) = t.remove("v") {
                return v;
            }
        }
    }
    if let Ok(v) = raw.parse::<i64>() {
        return toml::Value::Integer(v);
    }
    if let Ok(v) = raw.parse::<f64>() {
        return toml::Value::Float(v);
    }
    if let Ok(v) = raw.parse::<bool>() {
        return toml::Value::Boolean(v);
    }
    toml::Value::String(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_defaults() {
        let vars = vec![
            ("PARLOR_LISTEN".to_string(), "127.0.0.1:9999".to_string()),
            ("PARLOR_WS__PING_INTERVAL_SECS".to_string(), "5".to_string()),
            (
                "PARLOR_RATE__LOGIN_PER_IP__BURST".to_string(),
                "3".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let config = Config::load(None, vars.into_iter()).unwrap_or_default();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.ws.ping_interval_secs, 5);
        assert_eq!(config.rate.login_per_ip.burst, 3);
        assert_eq!(config.limits.member_limit, 1000);
    }

    #[test]
    fn runtime_threads_default_to_the_cores() {
        let mut config = Config::default();
        assert_eq!(config.runtime_threads(2), 2);
        assert_eq!(config.runtime_threads(0), 1);
        config.worker_threads = Some(0);
        assert_eq!(config.runtime_threads(2), 1);
        config.worker_threads = Some(6);
        assert_eq!(config.runtime_threads(2), 6);
    }

    #[test]
    fn text_settings_that_look_like_numbers_stay_text() {
        assert!(
            default_settings().contains_key("push"),
            "every setting's default serializes"
        );
        let vars = [
            ("PARLOR_PUSH__APNS__KEY_ID", "4E12345678"),
            ("PARLOR_PUSH__APNS__TEAM_ID", "1234567890"),
            ("PARLOR_PUSH__APNS__TOPIC", "true"),
            ("PARLOR_WS__PING_INTERVAL_SECS", "7"),
            ("PARLOR_ADMIN_TOKEN", "12345678901234567890123456789012345"),
            ("PARLOR_WORKER_THREADS", "3"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let config = Config::load(None, vars.into_iter()).expect("loads");
        assert_eq!(config.push.apns.key_id, "4E12345678");
        assert_eq!(config.push.apns.team_id, "1234567890");
        assert_eq!(config.push.apns.topic, "true");
        assert_eq!(config.ws.ping_interval_secs, 7);
        assert_eq!(
            config.admin_token.as_deref(),
            Some("12345678901234567890123456789012345")
        );
        assert_eq!(config.worker_threads, Some(3));
        let wrong = [("PARLOR_WORKER_THREADS".to_string(), "many".to_string())];
        let error = Config::load(None, wrong.into_iter()).expect_err("refused");
        assert!(
            error.to_string().contains("invalid configuration"),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let vars = vec![("PARLOR_LISTNE".to_string(), "x".to_string())];
        assert!(Config::load(None, vars.into_iter()).is_err());
    }
}
