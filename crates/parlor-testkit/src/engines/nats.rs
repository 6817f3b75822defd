//! Throwaway NATS servers with JetStream: one server, or a cluster of several.
//!
//! Each server gets a config file written for nats-server 2.9 (Debian bookworm's
//! version): client port with TLS and `verify: true` (clients must present a certificate
//! signed by the CA), JetStream with its own `store_dir`, a monitoring `http` port used
//! for readiness, and with more than one server a `cluster` block with a shared cluster
//! name, a distinct `server_name` and explicit routes to the others.
//!
//! Routes are plain TCP on loopback: the point of the tests is the client side (nodes
//! talk TLS with client certificates), and plain routes keep cluster formation fast.
//!
//! nats-server 2.9 speaks TLS only after sending its `INFO` line in clear text (the
//! "TLS first" handshake came in 2.10); `async-nats` with `tls://` URLs handles that.

use super::certs::CertFiles;
use super::process::{log_len, log_since, EngineCommand, Supervised};
use super::{find_in_path, free_port, http_get, lock, temp_dir};
use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The cluster name in every config.
pub const NATS_CLUSTER_NAME: &str = "parlor";

/// Start-up of a whole cluster, or a restarted server rejoining, including a meta leader
/// election (NATS waits a few seconds before electing a new leader).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct NatsServer {
    name: String,
    client_port: u16,
    http_port: u16,
    conf: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    proc: Mutex<Option<Supervised>>,
}

/// One or more `nats-server` processes on `127.0.0.1`. Dropping it kills them all and
/// deletes their directories.
pub struct NatsCluster {
    bin: PathBuf,
    servers: Vec<NatsServer>,
    cleanup: PathBuf,
    _tmp: Option<TempDir>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("urls", &self.urls())
            .finish_non_exhaustive()
    }
}

impl NatsCluster {
    /// Starts `servers` servers (1, or 3 for a cluster that survives losing one) in a new
    /// temporary directory and waits until JetStream is ready on each and, for a
    /// cluster, a meta leader is elected.
    pub fn launch(servers: usize, certs: &CertFiles) -> anyhow::Result<NatsCluster> {
        let tmp = temp_dir("parlor-nats-")?;
        let dir = tmp.path().to_owned();
        NatsCluster::launch_in(&dir, servers, certs, &dir, Some(tmp))
    }

    pub(crate) fn launch_in(
        dir: &Path,
        servers: usize,
        certs: &CertFiles,
        cleanup: &Path,
        tmp: Option<TempDir>,
    ) -> anyhow::Result<NatsCluster> {
        if servers == 0 {
            bail!("a NATS cluster needs at least one server");
        }
        let bin = find_in_path("nats-server")
            .ok_or_else(|| anyhow!("nats-server not found in PATH: apt-get install nats-server"))?;
        let mut ports = Vec::with_capacity(servers);
        for _ in 0..servers {
            let cluster_port = if servers > 1 {
                Some(free_port()?)
            } else {
                None
            };
            ports.push((free_port()?, cluster_port, free_port()?));
        }
        let mut list = Vec::with_capacity(servers);
        for (i, &(client_port, cluster_port, http_port)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let server_dir = dir.join(&name);
            std::fs::create_dir_all(&server_dir)
                .with_context(|| format!("create {}", server_dir.display()))?;
            let routes: Vec<u16> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, p)| p.1)
                .collect();
            let conf = config(
                &name,
                client_port,
                http_port,
                &server_dir.join("jetstream"),
                certs,
                cluster_port.map(|p| (p, routes.as_slice())),
            )?;
            let conf_path = server_dir.join("nats.conf");
            std::fs::write(&conf_path, conf)
                .with_context(|| format!("write {}", conf_path.display()))?;
            list.push(NatsServer {
                name,
                client_port,
                http_port,
                conf: conf_path,
                log: server_dir.join("nats.log"),
                dir: server_dir,
                proc: Mutex::new(None),
            });
        }
        let cluster = NatsCluster {
            bin,
            servers: list,
            cleanup: cleanup.to_owned(),
            _tmp: tmp,
        };
        for i in 0..servers {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(None)?;
        Ok(cluster)
    }

    /// Number of servers, running or not.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// `tls://127.0.0.1:P1,tls://127.0.0.1:P2,...`, every server's client URL.
    pub fn urls(&self) -> String {
        (0..self.servers.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `tls://127.0.0.1:P` of server `i`.
    pub fn url(&self, i: usize) -> String {
        self.servers
            .get(i)
            .map(|s| format!("tls://127.0.0.1:{}", s.client_port))
            .unwrap_or_default()
    }

    /// `n0`, `n1`, ...: the `server_name` of server `i`.
    pub fn server_name(&self, i: usize) -> anyhow::Result<&str> {
        Ok(&self.server(i)?.name)
    }

    pub fn client_port(&self, i: usize) -> anyhow::Result<u16> {
        Ok(self.server(i)?.client_port)
    }

    /// The monitoring port of server `i` (`/varz`, `/jsz`, `/routez`, `/healthz`).
    pub fn http_port(&self, i: usize) -> anyhow::Result<u16> {
        Ok(self.server(i)?.http_port)
    }

    pub fn log_file(&self, i: usize) -> anyhow::Result<&Path> {
        Ok(&self.server(i)?.log)
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        let s = self.servers.get(i)?;
        lock(&s.proc)
            .as_mut()
            .and_then(|p| p.is_running().then(|| p.pid()))
    }

    /// Whether server `i`'s process runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.servers
            .get(i)
            .is_some_and(|s| lock(&s.proc).as_mut().is_some_and(|p| p.is_running()))
    }

    /// GET `path` on server `i`'s monitoring port, parsed as JSON.
    pub fn monitor(&self, i: usize, path: &str) -> anyhow::Result<serde_json::Value> {
        let port = self.http_port(i)?;
        let (status, body) = http_get(port, path)?;
        if status != 200 {
            bail!(
                "GET {path} on {}: HTTP {status}: {body}",
                self.servers[i].name
            );
        }
        serde_json::from_str(&body).with_context(|| format!("parse {path}: {body}"))
    }

    /// The JetStream meta leader, as claimed by the leader itself: followers keep naming
    /// a dead leader until the next election, so only a running server reporting itself
    /// counts. A single server has no meta group and is its own leader once JetStream
    /// is up.
    pub fn meta_leader(&self) -> Option<String> {
        if self.servers.len() == 1 {
            return (self.is_up(0) && self.healthy(0)).then(|| self.servers[0].name.clone());
        }
        (0..self.servers.len())
            .filter(|&i| self.is_up(i))
            .find_map(|i| {
                let jsz = self.monitor(i, "/jsz").ok()?;
                let leader = jsz.get("meta_cluster")?.get("leader")?.as_str()?;
                (leader == self.servers[i].name).then(|| leader.to_owned())
            })
    }

    /// The index of [`NatsCluster::meta_leader`].
    pub fn meta_leader_index(&self) -> Option<usize> {
        let name = self.meta_leader()?;
        self.servers.iter().position(|s| s.name == name)
    }

    /// SIGKILL server `i` and wait until it is gone.
    pub fn kill(&self, i: usize) -> anyhow::Result<()> {
        let server = self.server(i)?;
        if let Some(mut p) = lock(&server.proc).take() {
            p.kill()
                .with_context(|| format!("kill nats-server {}", server.name))?;
        }
        Ok(())
    }

    /// Starts server `i` again with the same ports and store directory (nothing happens
    /// if it runs) and waits until it has rejoined: JetStream healthy, routes to every
    /// other running server, and a meta leader.
    pub fn start(&self, i: usize) -> anyhow::Result<()> {
        if self.is_up(i) {
            return Ok(());
        }
        self.spawn(i)?;
        self.wait_ready(Some(i))
    }

    /// [`NatsCluster::kill`] then [`NatsCluster::start`].
    pub fn restart(&self, i: usize) -> anyhow::Result<()> {
        self.kill(i)?;
        self.start(i)
    }

    fn server(&self, i: usize) -> anyhow::Result<&NatsServer> {
        self.servers
            .get(i)
            .ok_or_else(|| anyhow!("no NATS server {i} (cluster of {})", self.servers.len()))
    }

    fn spawn(&self, i: usize) -> anyhow::Result<()> {
        let server = self.server(i)?;
        let p = Supervised::spawn(EngineCommand {
            name: "nats",
            program: &self.bin,
            args: vec!["-c".into(), server.conf.clone().into()],
            run_as: None,
            cwd: &server.dir,
            log: &server.log,
            stop_signal: "KILL",
            cleanup: Some(&self.cleanup),
        })?;
        *lock(&server.proc) = Some(p);
        Ok(())
    }

    fn healthy(&self, i: usize) -> bool {
        let Ok(port) = self.http_port(i) else {
            return false;
        };
        // In a cluster /healthz also requires contact with the meta leader.
        matches!(http_get(port, "/healthz"), Ok((200, _)))
    }

    fn routes(&self, i: usize) -> usize {
        self.monitor(i, "/routez")
            .ok()
            .and_then(|v| v.get("num_routes")?.as_u64())
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// How many peers server `i`'s JetStream meta group knows (1 for a single server).
    fn meta_peers(&self, i: usize) -> usize {
        if self.servers.len() == 1 {
            return 1;
        }
        self.monitor(i, "/jsz")
            .ok()
            .and_then(|v| v.get("meta_cluster")?.get("cluster_size")?.as_u64())
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Waits until `only` (or every server) is healthy with routes to all other running
    /// servers and a meta group that knows every server, and a meta leader exists.
    /// Routes and a leader alone are not enough: a server can report both while its
    /// meta group still counts one peer short, and a client that asks it then sees a
    /// smaller cluster than was launched.
    fn wait_ready(&self, only: Option<usize>) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let offsets: Vec<u64> = self.servers.iter().map(|s| log_len(&s.log)).collect();
        let targets: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.servers.len()).collect(),
        };
        loop {
            for &i in &targets {
                if !self.is_up(i) {
                    let s = &self.servers[i];
                    bail!(
                        "nats-server {} exited during start-up; log:\n{}",
                        s.name,
                        log_since(&s.log, offsets[i].min(log_len(&s.log)), 4000)
                    );
                }
            }
            let peers = (0..self.servers.len()).filter(|&j| self.is_up(j)).count();
            let ready = targets.iter().all(|&i| {
                self.healthy(i)
                    && self.routes(i) + 1 >= peers
                    && self.meta_peers(i) >= self.servers.len()
            }) && self.meta_leader().is_some();
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = targets
                    .iter()
                    .map(|&i| {
                        let s = &self.servers[i];
                        format!("--- {}:\n{}", s.name, log_since(&s.log, offsets[i], 2000))
                    })
                    .collect();
                bail!(
                    "NATS not ready within {}s (healthy, routed, full meta group, meta leader); logs:\n{}",
                    READY_TIMEOUT.as_secs(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// One server's config file. Strings are quoted so paths need no escaping beyond
/// rejecting quotes and backslashes.
fn config(
    name: &str,
    client_port: u16,
    http_port: u16,
    store_dir: &Path,
    certs: &CertFiles,
    cluster: Option<(u16, &[u16])>,
) -> anyhow::Result<String> {
    let q = |p: &Path| -> anyhow::Result<String> {
        let s = p
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))?;
        if s.contains(['"', '\\']) {
            bail!("path with a quote or backslash: {s}");
        }
        Ok(format!("\"{s}\""))
    };
    let mut conf = format!(
        "server_name: \"{name}\"\n\
         listen: \"127.0.0.1:{client_port}\"\n\
         http: \"127.0.0.1:{http_port}\"\n\
         jetstream {{\n  store_dir: {store}\n}}\n\
         tls {{\n  cert_file: {cert}\n  key_file: {key}\n  ca_file: {ca}\n  verify: true\n  timeout: 5\n}}\n",
        store = q(store_dir)?,
        cert = q(&certs.server_cert_file)?,
        key = q(&certs.server_key_file)?,
        ca = q(&certs.ca_file)?,
    );
    if let Some((cluster_port, routes)) = cluster {
        // 2.9's parser wants commas between array elements.
        let routes = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        conf.push_str(&format!(
            "cluster {{\n  name: \"{NATS_CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{routes}]\n}}\n"
        ));
    }
    Ok(conf)
}
