//! Cluster mode: N `parlor serve` nodes on real engines (PostgreSQL, a 1- or 3-server
//! NATS JetStream cluster, Redis), all on this machine.
//!
//! The engines come from `parlor_testkit::engines` (free loopback ports, mutual TLS, a
//! guard that stops them if this process dies); the nodes are spawned like the single
//! benchmark server (relaxed rate limits, admin API) plus the cluster environment of one
//! [`ClusterSpec`], each with its own name and scratch directory and the same admin
//! token, so the admin API of any node provisions for the whole cluster.

use crate::census::{Component, Kind};
use crate::pg::{Insight, PgCounters, PgFigures, PgProbe};
use crate::server::{random_token, Launch, Server};
use anyhow::{bail, Context};
use parlor_client::Http;
use parlor_testkit::engines::{ClusterSpec, EngineOptions, Engines, PgBins, PG_USER};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a node may take to answer `/readyz` with 200 after it printed its address
/// (the NATS stream, the ordered consumer, the PostgreSQL pool and the machine-id lease).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the engines are; part of the report's environment.
#[derive(Debug, Clone, Serialize)]
pub struct EnginesInfo {
    pub nodes: usize,
    pub nats_servers: usize,
    /// `fsync = on` (else off, the test kit's default; `synchronous_commit` is on).
    pub postgres_fsync: bool,
    /// `pg_stat_statements` loaded and wait events sampled (`--pg-insight`).
    pub postgres_insight: bool,
    pub postgres_version: Option<String>,
    pub nats_version: Option<String>,
    pub redis_version: Option<String>,
    pub namespace: String,
}

/// The engines of a spawned cluster and the database and namespace its nodes share.
pub struct ClusterEngines {
    /// Declared before `engines`: dropping the last spec drops the database, which
    /// needs PostgreSQL still running.
    spec: ClusterSpec,
    engines: Engines,
    pub info: EnginesInfo,
    /// Counters of PostgreSQL (`None` if the probe could not connect).
    pg: Option<PgProbe>,
    /// `http://127.0.0.1:<monitoring port>` of each NATS server.
    nats_monitors: Vec<Http>,
}

/// The engines' cumulative counters at one moment.
pub struct EngineCounters {
    pg: Option<PgCounters>,
    nats: Vec<Option<NatsCounters>>,
    insight: Option<Insight>,
}

#[derive(Debug, Clone, Copy, Default)]
struct NatsCounters {
    in_msgs: u64,
    out_msgs: u64,
    in_bytes: u64,
    out_bytes: u64,
}

/// What the engines did over a window.
#[derive(Debug, Clone, Serialize)]
pub struct EngineFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PgFigures>,
    pub nats: NatsFigures,
}

/// The NATS servers' message and byte counters (`/varz`), summed over servers: client
/// traffic and the routes between servers (stream replication, consumer deliveries).
#[derive(Debug, Clone, Serialize)]
pub struct NatsFigures {
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// (in + out bytes) per message sent by the clients of the benchmark.
    pub bytes_per_message: Option<f64>,
}

impl ClusterEngines {
    /// Starts the engines (blocking work, on a blocking thread) and creates the
    /// database and namespace of the run.
    pub async fn launch(
        nodes: usize,
        nats_servers: usize,
        postgres_fsync: bool,
        postgres_insight: bool,
    ) -> anyhow::Result<ClusterEngines> {
        if !(1..=3).contains(&nats_servers) {
            bail!("--nats-servers must be 1, 2 or 3");
        }
        let started = Instant::now();
        let (engines, spec) = tokio::task::spawn_blocking(move || {
            let engines = Engines::launch_with(EngineOptions {
                nats_servers,
                postgres_fsync,
            })?;
            // The default (1 GB) lets the WAL of a few benchmark phases pile up before a
            // checkpoint recycles it; on a shared machine's disk that matters more than
            // the extra checkpoints (one per ~150,000 direct messages at ~1.7 KB each).
            engines
                .postgres
                .psql("postgres", "ALTER SYSTEM SET max_wal_size = '256MB'")
                .context("set max_wal_size")?;
            engines
                .postgres
                .psql("postgres", "SELECT pg_reload_conf()")
                .context("reload PostgreSQL's settings")?;
            if postgres_insight {
                // The library must be loaded at server start: set it, then restart
                // (before any node connects).
                engines
                    .postgres
                    .psql(
                        "postgres",
                        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
                    )
                    .context("enable pg_stat_statements")?;
                engines.postgres.restart().context("restart PostgreSQL")?;
                // Planning time too (known once the library is loaded): with custom
                // plans (the first executions of each prepared statement, or whenever
                // PostgreSQL finds them cheaper) it is paid on every execution and is
                // not part of the execution time.
                engines
                    .postgres
                    .psql(
                        "postgres",
                        "ALTER SYSTEM SET pg_stat_statements.track_planning = on",
                    )
                    .context("enable planning statistics")?;
                engines
                    .postgres
                    .psql("postgres", "SELECT pg_reload_conf()")
                    .context("reload PostgreSQL's settings")?;
            }
            let spec = engines.spec_for_new_test()?;
            anyhow::Ok((engines, spec))
        })
        .await
        .context("engine start-up thread")??;
        eprintln!(
            "engines: PostgreSQL (port {}, fsync {}), {nats_servers} NATS server(s) ({}), Redis ({}) started in {:.1}s",
            engines.postgres.port(),
            if postgres_fsync { "on" } else { "off" },
            engines.nats.urls(),
            engines.redis.url(),
            started.elapsed().as_secs_f64()
        );
        let pg = match PgProbe::connect(
            engines.postgres.socket_dir(),
            engines.postgres.port(),
            PG_USER,
            &spec.namespace,
            postgres_insight,
        )
        .await
        {
            Ok(probe) => Some(probe),
            Err(e) => {
                eprintln!("warning: no PostgreSQL figures: {e:#}");
                None
            }
        };
        let mut nats_monitors = Vec::new();
        for i in 0..engines.nats.len() {
            let port = engines.nats.http_port(i)?;
            nats_monitors.push(Http::new(&format!("http://127.0.0.1:{port}"), None)?);
        }
        let info = EnginesInfo {
            nodes,
            nats_servers,
            postgres_fsync,
            postgres_insight,
            postgres_version: PgBins::find().and_then(|b| version_line(&b.postgres)),
            nats_version: version_line(Path::new("nats-server")),
            redis_version: version_line(Path::new("redis-server")),
            namespace: spec.namespace.clone(),
        };
        Ok(ClusterEngines {
            spec,
            engines,
            info,
            pg,
            nats_monitors,
        })
    }

    /// The engines' counters now; with `--pg-insight` this also starts sampling.
    pub async fn counters(&self) -> EngineCounters {
        let pg = match &self.pg {
            Some(probe) => match probe.counters().await {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("warning: {e:#}");
                    None
                }
            },
            None => None,
        };
        let mut nats = Vec::with_capacity(self.nats_monitors.len());
        for http in &self.nats_monitors {
            nats.push(varz(http).await);
        }
        let insight = match &self.pg {
            Some(probe) => probe.start_insight().await,
            None => None,
        };
        EngineCounters { pg, nats, insight }
    }

    /// What the engines did since `before`.
    pub async fn figures(&self, before: EngineCounters, messages: u64) -> EngineFigures {
        let postgres = match (&self.pg, before.pg) {
            (Some(probe), Some(counters)) => {
                match probe.figures(counters, before.insight, messages).await {
                    Ok(f) => Some(f),
                    Err(e) => {
                        eprintln!("warning: {e:#}");
                        None
                    }
                }
            }
            _ => None,
        };
        let mut total = NatsCounters::default();
        for (http, before) in self.nats_monitors.iter().zip(&before.nats) {
            if let (Some(b), Some(a)) = (before, varz(http).await) {
                total.in_msgs += a.in_msgs.saturating_sub(b.in_msgs);
                total.out_msgs += a.out_msgs.saturating_sub(b.out_msgs);
                total.in_bytes += a.in_bytes.saturating_sub(b.in_bytes);
                total.out_bytes += a.out_bytes.saturating_sub(b.out_bytes);
            }
        }
        EngineFigures {
            postgres,
            nats: NatsFigures {
                in_msgs: total.in_msgs,
                out_msgs: total.out_msgs,
                in_bytes: total.in_bytes,
                out_bytes: total.out_bytes,
                bytes_per_message: crate::report::ratio(
                    (total.in_bytes + total.out_bytes) as f64,
                    messages as f64,
                )
                .map(crate::report::round3),
            },
        }
    }

    /// Spawns `count` nodes on these engines, one after the other (the first applies
    /// the schema), and waits until each answers `/readyz` with 200.
    pub async fn spawn_nodes(
        &self,
        bin: &Path,
        count: usize,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Vec<Server>> {
        let admin_token = random_token(40);
        let mut nodes = Vec::with_capacity(count);
        for k in 1..=count {
            let name = format!("node{k}");
            let node = Server::launch(
                bin,
                Launch {
                    admin_token: admin_token.clone(),
                    base_env: self.spec.env(&format!("bench-{name}")),
                    extra_env,
                    node_name: Some(name.clone()),
                },
            )
            .await
            .with_context(|| format!("start {name}"))?;
            wait_ready(&node.url)
                .await
                .with_context(|| format!("{name} at {}", node.url))?;
            eprintln!(
                "{name}: {} (pid {})",
                node.url,
                node.pid.map(|p| p.to_string()).unwrap_or_default()
            );
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// The engines' processes as census components.
    pub fn components(&self) -> Vec<Component> {
        let mut out = Vec::new();
        match self.engines.postgres.pid() {
            Some(pid) => out.push(Component::tree("postgres", Kind::Postgres, pid)),
            None => eprintln!("warning: PostgreSQL's pid is unknown: its CPU time is missing"),
        }
        for i in 0..self.engines.nats.len() {
            match self.engines.nats.pid(i) {
                Some(pid) => out.push(Component::process(
                    format!("nats{}", i + 1),
                    Kind::Nats,
                    pid,
                )),
                None => eprintln!("warning: NATS server {i} is not running"),
            }
        }
        match self.engines.redis.pid() {
            Some(pid) => out.push(Component::process("redis", Kind::Redis, pid)),
            None => eprintln!("warning: Redis's pid is unknown: its CPU time is missing"),
        }
        out
    }

    /// Drops the database and stops the engines (blocking work, on a blocking thread).
    pub async fn stop(mut self) {
        // The probe's connection first, so that dropping the database does not end it
        // with an error.
        drop(self.pg.take());
        let stopped = tokio::task::spawn_blocking(move || drop(self)).await;
        if let Err(e) = stopped {
            eprintln!("warning: stopping the engines failed: {e}");
        }
    }
}

/// A NATS server's message and byte counters from its monitoring port.
async fn varz(http: &Http) -> Option<NatsCounters> {
    let (status, body) = http.get_raw("/varz", None).await.ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let n = |key: &str| v.get(key).and_then(serde_json::Value::as_u64);
    Some(NatsCounters {
        in_msgs: n("in_msgs")?,
        out_msgs: n("out_msgs")?,
        in_bytes: n("in_bytes")?,
        out_bytes: n("out_bytes")?,
    })
}

/// Polls `/readyz` until 200.
async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let http = Http::new(url, None).context("HTTP client")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let status = http.readyz().await;
        if matches!(status, Ok(200)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "not ready within {}s (last answer: {status:?})",
                READY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first line of `bin --version`.
fn version_line(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}
