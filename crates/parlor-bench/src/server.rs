//! The server under test: spawned by the benchmark in a fresh temporary data directory, or
//! an already running one reached by URL.
//!
//! Knowing the process id is what makes the memory and CPU figures possible: RSS is
//! `VmRSS` in `/proc/<pid>/status`, CPU time is `utime + stime` (fields 14 and 15) of
//! `/proc/<pid>/stat`, in clock ticks.

use anyhow::{bail, Context};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the spawned server may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGTERM before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Every rate rule of the server, relaxed to "practically unlimited" when spawning it.
const RATE_RULES: &[&str] = &[
    "LOGIN_PER_IP",
    "LOGIN_PER_USER",
    "REGISTER_PER_IP",
    "CONNECT_PER_IP",
    "CONNECT_PER_USER",
    "FRAMES_PER_CONNECTION",
    "REST_PER_USER",
    "TYPING_PER_CONVERSATION",
    "SEARCH_PER_USER",
];
const RELAXED: &str = "100000000";

/// RSS and cumulative CPU time of the server process at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub cpu_secs: f64,
}

/// Reads one process's figures from `/proc`. Cheap to copy into progress tasks.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub pid: u32,
    /// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
    clk_tck: f64,
}

impl Probe {
    pub fn new(pid: u32) -> Probe {
        Probe {
            pid,
            clk_tck: clock_ticks(),
        }
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        let pid = self.pid;
        let rss_bytes = read_rss(pid)
            .with_context(|| format!("/proc/{pid}/status (is the server still running?)"))?;
        let stat = read_stat(pid)?;
        Ok(ProcSample {
            rss_bytes,
            cpu_secs: (stat.utime + stat.stime) as f64 / self.clk_tck,
        })
    }
}

/// The fields of `/proc/<pid>/stat` the benchmark uses; times in clock ticks.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// CPU time of children this process waited for (PostgreSQL's postmaster reaps its
    /// backends, so their time moves here when they exit).
    pub cutime: u64,
    pub cstime: u64,
}

pub fn read_stat(pid: u32) -> anyhow::Result<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces: count fields after its ')'.
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state): ppid (4) is at 1, utime (14) and stime (15) at 11
    // and 12, cutime (16) and cstime (17) at 13 and 14.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .context("malformed /proc/<pid>/stat")
    };
    Ok(Stat {
        ppid: u32::try_from(field(1)?).context("malformed ppid in /proc/<pid>/stat")?,
        utime: field(11)?,
        stime: field(12)?,
        cutime: field(13)?,
        cstime: field(14)?,
    })
}

/// `VmRSS` of a process, in bytes.
pub fn read_rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(&format!("/proc/{pid}/status"), "VmRSS:").map(|kib| kib * 1024)
}

/// `Pss` of a process in bytes (`/proc/<pid>/smaps_rollup`): its share of each page it
/// maps, so that the sum over processes sharing memory (PostgreSQL's backends and their
/// shared buffers) counts each page once.
pub fn read_pss(pid: u32) -> anyhow::Result<u64> {
    status_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:").map(|kib| kib * 1024)
}

fn status_kib(path: &str, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no {key} in {path}"))
}

pub struct Server {
    pub url: String,
    pub admin_token: String,
    pub pid: Option<u32>,
    /// Present when the process id is known.
    pub probe: Option<Probe>,
    /// The binary, when the benchmark spawned the server.
    pub bin: Option<PathBuf>,
    /// `parlor --version` of the spawned binary.
    pub version: Option<String>,
    child: Option<Mutex<Child>>,
    data_dir: Option<TempDir>,
}

/// How to spawn one `parlor serve` process.
pub struct Launch<'a> {
    /// The admin token; the nodes of a cluster share one.
    pub admin_token: String,
    /// Settings of the deployment (cluster mode), before the benchmark's own.
    pub base_env: Vec<(String, String)>,
    /// `--server-env`, applied last.
    pub extra_env: &'a [(String, String)],
    /// The node's name in cluster mode: its stderr lines are prefixed with it.
    pub node_name: Option<String>,
}

impl Server {
    /// Spawns `bin serve --listen 127.0.0.1:0 --data-dir <temp>` with the admin API on
    /// and rate limits relaxed, and waits for `parlor listening on <url>` on its stdout.
    pub async fn spawn(bin: &Path, extra_env: &[(String, String)]) -> anyhow::Result<Server> {
        Server::launch(
            bin,
            Launch {
                admin_token: random_token(40),
                base_env: Vec::new(),
                extra_env,
                node_name: None,
            },
        )
        .await
    }

    /// [`Server::spawn`] with every option (cluster nodes).
    pub async fn launch(bin: &Path, launch: Launch<'_>) -> anyhow::Result<Server> {
        if !bin.is_file() {
            bail!(
                "server binary {} not found: build it (`cargo build --release -p parlor`) or pass --server-bin",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("parlor-bench-")
            .tempdir()
            .context("create temporary data directory")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("create {}", data_dir.display()))?;
        let admin_token = launch.admin_token;

        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir);
        // Only the settings below reach the server: nothing inherited from the shell
        // (a stray PARLOR_CONFIG or limit) can change what is measured.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PARLOR_") {
                cmd.env_remove(&key);
            }
        }
        for (key, value) in &launch.base_env {
            cmd.env(key, value);
        }
        cmd.env("PARLOR_ADMIN_TOKEN", &admin_token)
            .env("PARLOR_WS__MAX_INFLIGHT", "1024")
            // The `uploads` scenario moves gigabytes through a few users.
            .env("PARLOR_UPLOADS__QUOTA_BYTES", "1099511627776")
            .env("PARLOR_UPLOADS__MAX_BYTES", "1099511627776")
            .env("RUST_LOG", "warn");
        for rule in RATE_RULES {
            cmd.env(format!("PARLOR_RATE__{rule}__BURST"), RELAXED)
                .env(format!("PARLOR_RATE__{rule}__PER_SECOND"), RELAXED);
        }
        for (key, value) in launch.extra_env {
            cmd.env(key, value);
        }
        // A cluster node's log lines are piped and prefixed with its name, so that a
        // warning says which of the nodes sharing this terminal wrote it.
        let stderr = if launch.node_name.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id();
        if let (Some(name), Some(stderr)) = (launch.node_name.clone(), child.stderr.take()) {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{name}] {line}");
                }
            });
        }
        let stdout = child.stdout.take().context("server stdout not captured")?;
        let mut lines = BufReader::new(stdout).lines();
        let waited = tokio::time::timeout(STARTUP_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("parlor listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("the server exited before printing its listening line")
        })
        .await;
        let url = match waited {
            Ok(Ok(url)) => url,
            Ok(Err(e)) => {
                let status = child.wait().await.ok();
                return Err(e.context(format!("server exit status: {status:?}")));
            }
            Err(_) => bail!(
                "the server printed no listening line within {}s",
                STARTUP_TIMEOUT.as_secs()
            ),
        };
        // Keep draining stdout so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server {
            url,
            admin_token,
            pid,
            probe: pid.map(Probe::new),
            bin: Some(bin.to_owned()),
            version: version_of(bin),
            child: Some(Mutex::new(child)),
            data_dir: Some(dir),
        })
    }

    /// A server someone else started. Without `pid` there are no RSS and CPU figures.
    pub fn attach(url: &str, admin_token: &str, pid: Option<u32>) -> Server {
        Server {
            url: url.trim_end_matches('/').to_owned(),
            admin_token: admin_token.to_owned(),
            pid,
            probe: pid.map(Probe::new),
            bin: None,
            version: None,
            child: None,
            data_dir: None,
        }
    }

    /// Reads the server's RSS and CPU time; `None` when its process id is unknown.
    pub fn sample(&self) -> anyhow::Result<Option<ProcSample>> {
        self.probe.as_ref().map(Probe::sample).transpose()
    }

    /// Like [`Server::sample`], but a failure is reported on stderr and yields `None`, for
    /// figures that are nice to have.
    pub fn sample_or_warn(&self) -> Option<ProcSample> {
        match self.sample() {
            Ok(sample) => sample,
            Err(e) => {
                eprintln!("warning: cannot sample the server process: {e:#}");
                None
            }
        }
    }

    /// Fails when the spawned server has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        if let Some(child) = &self.child {
            let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(status) = child.try_wait().context("poll the server process")? {
                bail!("the server exited during the run: {status}");
            }
        }
        Ok(())
    }

    /// Bytes under the spawned server's data directory.
    pub fn data_dir_bytes(&self) -> Option<u64> {
        self.data_dir.as_ref().map(|d| dir_size(d.path()))
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL after a timeout) and removes its data
    /// directory. An attached server is left alone.
    pub async fn shutdown(self) {
        let Some(child) = self.child else { return };
        let mut child = child.into_inner().unwrap_or_else(PoisonError::into_inner);
        if let Some(pid) = self.pid {
            // SIGTERM lets the server shut down gracefully; `kill` avoids unsafe libc calls.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if !status.success() => {
                eprintln!("note: the server exited with {status} after SIGTERM");
            }
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "warning: the server did not exit within {}s of SIGTERM; killing it",
                    SHUTDOWN_TIMEOUT.as_secs()
                );
                let _ = child.kill().await;
            }
        }
        drop(self.data_dir);
    }
}

pub fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `sysconf(_SC_CLK_TCK)` through `getconf` (the workspace denies unsafe code); it is 100
/// on every Linux this runs on, which is also the fallback.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

fn version_of(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|s| !s.is_empty())
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_size(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Busy CPU time of the whole machine, all cores together, in seconds: the first line of
/// `/proc/stat` (user + nice + system + irq + softirq + steal, in clock ticks).
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Some(busy as f64 / clock_ticks())
}

/// CPU counters of the server, of this process and of the whole machine at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    at: std::time::Instant,
    server: Option<f64>,
    /// PostgreSQL, NATS and Redis together, in cluster mode.
    engines: Option<f64>,
    generator: Option<f64>,
    machine: Option<f64>,
}

impl Snapshot {
    pub fn take(server: &Server) -> Snapshot {
        Snapshot::of(
            server
                .probe
                .and_then(|p| p.sample().ok())
                .map(|s| s.cpu_secs),
            None,
        )
    }

    /// CPU seconds of the server (all nodes) and of the engines, sampled by the caller;
    /// the generator and the machine are read here.
    pub fn of(server: Option<f64>, engines: Option<f64>) -> Snapshot {
        Snapshot {
            at: std::time::Instant::now(),
            server,
            engines,
            generator: Probe::new(std::process::id())
                .sample()
                .ok()
                .map(|s| s.cpu_secs),
            machine: machine_busy_secs(),
        }
    }
}

/// Who kept the machine's cores busy between two snapshots, in cores (1.0 = one core
/// fully busy). `others` is everything else on the machine (e.g. other test suites):
/// when it is high, the figures of the run are disturbed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub wall_secs: f64,
    pub server_cores: Option<f64>,
    /// PostgreSQL, NATS and Redis together (cluster mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engines_cores: Option<f64>,
    pub generator_cores: Option<f64>,
    pub others_cores: Option<f64>,
}

impl CpuUse {
    pub fn between(a: &Snapshot, b: &Snapshot) -> CpuUse {
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let cores = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if wall > 0.0 => Some(((y - x) / wall * 100.0).round() / 100.0),
            _ => None,
        };
        let server = cores(a.server, b.server);
        let engines = cores(a.engines, b.engines);
        let generator = cores(a.generator, b.generator);
        let machine = cores(a.machine, b.machine);
        let others = match (machine, server, generator) {
            (Some(m), Some(s), Some(g)) => {
                let e = engines.unwrap_or(0.0);
                Some((((m - s - e - g) * 100.0).round() / 100.0).max(0.0))
            }
            _ => None,
        };
        CpuUse {
            wall_secs: (wall * 1000.0).round() / 1000.0,
            server_cores: server,
            engines_cores: engines,
            generator_cores: generator,
            others_cores: others,
        }
    }

    /// `server 0.52 / generator 0.80 / others 0.40` (cores; engines too in cluster mode).
    pub fn describe(&self) -> String {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "n/a".into());
        let engines = self
            .engines_cores
            .map(|e| format!(" / engines {e:.2}"))
            .unwrap_or_default();
        format!(
            "server {}{engines} / generator {} / others {}",
            f(self.server_cores),
            f(self.generator_cores),
            f(self.others_cores)
        )
    }
}
