//! Real PostgreSQL, Redis and NATS JetStream processes for cluster-mode tests.
//!
//! # Why real engines
//! Cluster mode's guarantees (ordering under a row lock, redelivery, failover, TLS
//! configuration) live in the engines' behaviour, which a mock would only restate. So the
//! kit runs the engines themselves, each on free loopback ports in a temporary directory,
//! with **mutual TLS**: every engine accepts only clients presenting a certificate signed
//! by the test process's throwaway CA ([`certs`]). Nodes therefore exercise exactly the
//! TLS configuration production uses.
//!
//! # Shapes
//! - [`Postgres`], [`Redis`], [`NatsCluster`]: one engine each, with kill/restart for
//!   failure tests. Each owns its processes and stops them when dropped.
//! - [`Engines`]: one of each (NATS with 1 or 3 servers) sharing a CA and a directory.
//!   [`Engines::spec_for_new_test`] carves out an isolated slice for one test: a fresh
//!   database and a fresh namespace (the node prefixes NATS streams, subjects and Redis
//!   keys with it). Several nodes started on one [`ClusterSpec`] form one cluster.
//! - [`shared_engines`]: one [`Engines`] per test process, started on first use, for the
//!   behavioural suite run in cluster mode (`PARLOR_TEST_BACKEND=cluster`). Tests that
//!   kill engines must start their own [`Engines`] instead.
//!
//! No engine outlives the test process, even when `static` engines are never dropped or
//! the test binary is killed: each runs under a guard shell that stops it when the test
//! process's end of a pipe closes (`engines/process.rs` explains the design).

pub mod certs;
mod nats;
mod postgres;
mod process;
mod redis;

pub use certs::{CertFiles, Certs, CLIENT_CN};
pub use nats::{NatsCluster, NATS_CLUSTER_NAME};
pub use postgres::{PgBins, Postgres, PG_USER};
pub use redis::Redis;

use anyhow::{anyhow, bail, Context};
use postgres::PgAdmin;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tempfile::TempDir;

/// Selects the backend of the behavioural suite: `cluster` runs every [`crate::TestServer`]
/// that did not choose a backend on [`shared_engines`]; unset or `embedded` keeps SQLite.
pub const BACKEND_ENV: &str = "PARLOR_TEST_BACKEND";

/// One PostgreSQL, one Redis and one NATS cluster sharing a CA and a temporary directory.
pub struct Engines {
    pub postgres: Postgres,
    pub redis: Redis,
    pub nats: NatsCluster,
    /// The CA, the engines' server certificate and the nodes' client certificate.
    pub certs: CertFiles,
    /// Declared last: the engines stop before their files go.
    _dir: TempDir,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engines")
            .field("postgres", &self.postgres)
            .field("redis", &self.redis)
            .field("nats", &self.nats)
            .field("dir", &self._dir.path())
            .finish()
    }
}

/// How [`Engines::launch_with`] starts the engines; the default is what the tests use.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// NATS servers: 1, or 3 for a cluster that survives losing one (and R3 streams).
    pub nats_servers: usize,
    /// PostgreSQL with `fsync = on` and `full_page_writes = on`, so that a commit
    /// survives an OS crash or power cut, for benchmarks comparing with the embedded
    /// store's `durability = "fsync"`. Off by default, like the tests: with
    /// `synchronous_commit` on either way, a commit then survives a crash of PostgreSQL
    /// (the WAL is written before COMMIT returns) but not of the OS.
    pub postgres_fsync: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            nats_servers: 1,
            postgres_fsync: false,
        }
    }
}

impl Engines {
    /// Starts PostgreSQL, Redis and `nats_servers` NATS servers (1, or 3 for failover
    /// tests), in parallel, and returns once all accept connections.
    pub fn launch(nats_servers: usize) -> anyhow::Result<Engines> {
        Engines::launch_with(EngineOptions {
            nats_servers,
            ..EngineOptions::default()
        })
    }

    /// [`Engines::launch`] with every option.
    pub fn launch_with(options: EngineOptions) -> anyhow::Result<Engines> {
        let EngineOptions {
            nats_servers,
            postgres_fsync,
        } = options;
        let missing = missing_engines();
        if !missing.is_empty() {
            bail!(
                "engines not installed: {} (apt-get install postgresql postgresql-client \
                 redis-server nats-server; scripts/test does this)",
                missing.join(", ")
            );
        }
        let tmp = temp_dir("parlor-engines-")?;
        let root = tmp.path().to_owned();
        if is_root()? {
            // The `postgres` user must reach its directory inside this root-owned one.
            make_traversable(&root)?;
        }
        let certs = Certs::get()?.write_to(&root.join("certs"))?;
        let (postgres, redis, nats) = std::thread::scope(|s| {
            let pg = s.spawn(|| {
                Postgres::launch_in(&root.join("postgres"), &certs, &root, None, postgres_fsync)
            });
            let redis = s.spawn(|| Redis::launch_in(&root.join("redis"), &certs, &root, None));
            let nats = s.spawn(|| {
                NatsCluster::launch_in(&root.join("nats"), nats_servers, &certs, &root, None)
            });
            (join(pg), join(redis), join(nats))
        });
        // Whatever started is stopped by its own Drop if another engine failed.
        Ok(Engines {
            postgres: postgres.context("PostgreSQL")?,
            redis: redis.context("Redis")?,
            nats: nats.context("NATS")?,
            certs,
            _dir: tmp,
        })
    }

    /// The temporary directory holding the certificates and every engine's files.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A fresh database and namespace on these engines, for one test. Clones of the spec
    /// share them; the database is dropped when the last clone goes.
    pub fn spec_for_new_test(&self) -> anyhow::Result<ClusterSpec> {
        let namespace = crate::unique_name("ns");
        let postgres_url = self.postgres.create_database(&namespace)?;
        Ok(ClusterSpec {
            postgres_url,
            nats_url: self.nats.urls(),
            redis_url: self.redis.url(),
            namespace: namespace.clone(),
            ca_file: self.certs.ca_file.clone(),
            cert_file: self.certs.client_cert_file.clone(),
            key_file: self.certs.client_key_file.clone(),
            _database: Some(Arc::new(DatabaseLease {
                admin: self.postgres.admin(),
                name: namespace,
            })),
        })
    }
}

fn join<T>(handle: std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>) -> anyhow::Result<T> {
    handle
        .join()
        .unwrap_or_else(|_| Err(anyhow!("engine start-up thread panicked")))
}

/// The engines of this test process (PostgreSQL, Redis, one NATS server), started on the
/// first call. They are never stopped explicitly: the guard of each engine stops it when
/// the process exits. A start-up failure is remembered and returned to every caller, so
/// every cluster-mode test fails with the same message.
pub fn shared_engines() -> anyhow::Result<&'static Engines> {
    static SHARED: OnceLock<Result<Engines, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| Engines::launch(1).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("shared test engines: {e}"))
}

/// Whether PostgreSQL (postgres, initdb, psql), redis-server and nats-server are
/// installed.
pub fn engines_available() -> bool {
    missing_engines().is_empty()
}

/// The engines that are not installed, by name.
pub fn missing_engines() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if PgBins::find().is_none() {
        missing.push("postgresql (postgres, initdb, psql)");
    }
    if find_in_path("redis-server").is_none() {
        missing.push("redis-server");
    }
    if find_in_path("nats-server").is_none() {
        missing.push("nats-server");
    }
    missing
}

/// Everything a node needs to join a cluster: engine URLs, its namespace and the TLS
/// files. Start several [`crate::TestServer`]s with one spec to form a multi-node cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// `postgres://parlor@127.0.0.1:PORT/DB?sslmode=require`.
    pub postgres_url: String,
    /// Comma-separated `tls://127.0.0.1:PORT` of every NATS server.
    pub nats_url: String,
    /// `rediss://127.0.0.1:PORT`.
    pub redis_url: String,
    /// Unique lower-case name (`a-z`, `0-9`, `_`) prefixing NATS streams, subjects and
    /// Redis keys of this test; also the database name.
    pub namespace: String,
    /// The CA that signed the engines' certificate.
    pub ca_file: PathBuf,
    /// Client certificate (CN `parlor`) and key the node presents to every engine.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Held for its `Drop`: the database goes with the last clone of the spec.
    _database: Option<Arc<DatabaseLease>>,
}

impl ClusterSpec {
    /// The environment that puts a node in cluster mode on this spec.
    pub fn env(&self, node_name: &str) -> Vec<(String, String)> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("PARLOR_CLUSTER__ENABLED".into(), "true".into()),
            ("PARLOR_CLUSTER__NODE_NAME".into(), node_name.into()),
            ("PARLOR_CLUSTER__NAMESPACE".into(), self.namespace.clone()),
            (
                "PARLOR_CLUSTER__POSTGRES_URL".into(),
                self.postgres_url.clone(),
            ),
            ("PARLOR_CLUSTER__NATS_URL".into(), self.nats_url.clone()),
            ("PARLOR_CLUSTER__REDIS_URL".into(), self.redis_url.clone()),
            ("PARLOR_CLUSTER__TLS__CA_FILE".into(), path(&self.ca_file)),
            (
                "PARLOR_CLUSTER__TLS__CERT_FILE".into(),
                path(&self.cert_file),
            ),
            ("PARLOR_CLUSTER__TLS__KEY_FILE".into(), path(&self.key_file)),
            // Nodes of one cluster must share the token key (cluster mode requires one).
            (
                "PARLOR_AUTH__JWT_SECRET".into(),
                format!("cluster-test-secret-{}-0123456789abcdef", self.namespace),
            ),
        ]
    }
}

/// Drops a test's database once no spec refers to it, so a long suite on the shared
/// server does not pile up one database per test on disk.
#[derive(Debug)]
struct DatabaseLease {
    admin: PgAdmin,
    name: String,
}

impl Drop for DatabaseLease {
    fn drop(&mut self) {
        // The engines may be gone already (a test's own Engines dropped first); then
        // there is nothing left to clean.
        let _ = self.admin.drop_database(&self.name);
    }
}

/// A free TCP port on 127.0.0.1, never the same twice in this process. The port is free
/// when returned; another process could take it before the engine binds it, which the
/// kernel's random ephemeral allocation makes unlikely.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
        let port = listener.local_addr().context("local address")?.port();
        if lock(&GIVEN).get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port found in 100 attempts")
}

/// `name` in `PATH`, then in the system directories: `nats-server` and `setpriv` live in
/// `sbin`, which a non-login root shell or a CI runner may leave out of `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    const SYSTEM_DIRS: [&str; 6] = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs as root: `/proc/self` belongs to the effective user, which
/// avoids `geteuid` (the workspace denies `unsafe`).
pub(crate) fn is_root() -> anyhow::Result<bool> {
    let meta = std::fs::metadata("/proc/self").context("stat /proc/self")?;
    Ok(meta.uid() == 0)
}

pub(crate) fn temp_dir(prefix: &str) -> anyhow::Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create temporary directory")
}

/// `rwxr-xr-x`: temporary directories are private to their owner, and PostgreSQL runs
/// as another user when the tests run as root.
pub(crate) fn make_traversable(dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", dir.display()))
}

/// A poisoned lock only means a test panicked while holding it; the process handle
/// inside is still accurate.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A minimal HTTP/1.0 GET against 127.0.0.1 (the NATS monitoring port), returning status
/// and body; enough for JSON endpoints without pulling in an HTTP client.
pub(crate) fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect to {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .context("set read timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .with_context(|| format!("send GET {path}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("read GET {path}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response to {path}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in HTTP response to {path}: {head}"))?;
    Ok((status, body.to_owned()))
}
