//! Where the time goes: CPU time and memory of every process of the system under test,
//! sampled from `/proc` before and after a measured window.
//!
//! A component is one `parlor serve` node, PostgreSQL (the postmaster and every process
//! whose parent it is: backends, WAL writer, checkpointer…), one `nats-server`, Redis, or
//! the generator itself. PostgreSQL starts a backend per connection and reaps it when it
//! ends, and the kernel then adds the backend's CPU time to the postmaster's `cutime` and
//! `cstime`; counting those fields for the whole tree keeps the total right when a
//! backend ends inside the window.
//!
//! Memory is `VmRSS` for single processes and the sum of `Pss` for a tree: PostgreSQL's
//! backends all map the shared buffers, which a sum of RSS would count once per backend.

use crate::cluster::{ClusterEngines, EngineCounters, EngineFigures};
use crate::report;
use crate::scrape::Scrape;
use crate::server::{clock_ticks, read_pss, read_rss, read_stat, CpuUse, Probe, Server, Snapshot};
use parlor_client::Http;
use serde::Serialize;

/// What a component is; the report sums CPU time by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A `parlor serve` process.
    Node,
    Postgres,
    Nats,
    Redis,
    Generator,
}

impl Kind {
    /// PostgreSQL, NATS and Redis: what cluster mode adds to the nodes.
    pub fn is_engine(self) -> bool {
        matches!(self, Kind::Postgres | Kind::Nats | Kind::Redis)
    }
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// One process.
    Process(u32),
    /// A process and its direct children (PostgreSQL's postmaster and backends).
    Tree(u32),
}

/// One process (or process tree) whose CPU time and memory are sampled.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub kind: Kind,
    source: Source,
}

impl Component {
    pub fn process(name: impl Into<String>, kind: Kind, pid: u32) -> Component {
        Component {
            name: name.into(),
            kind,
            source: Source::Process(pid),
        }
    }

    pub fn tree(name: impl Into<String>, kind: Kind, root: u32) -> Component {
        Component {
            name: name.into(),
            kind,
            source: Source::Tree(root),
        }
    }

    fn sample(&self, clk_tck: f64) -> anyhow::Result<Usage> {
        match self.source {
            Source::Process(pid) => {
                let s = Probe::new(pid).sample()?;
                Ok(Usage {
                    cpu_secs: s.cpu_secs,
                    memory_bytes: s.rss_bytes,
                    processes: 1,
                })
            }
            Source::Tree(root) => sample_tree(root, clk_tck),
        }
    }
}

/// CPU time (cumulative) and memory of a component at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_secs: f64,
    pub memory_bytes: u64,
    pub processes: u32,
}

fn sample_tree(root: u32, clk_tck: f64) -> anyhow::Result<Usage> {
    let all = |s: crate::server::Stat| s.utime + s.stime + s.cutime + s.cstime;
    let mut ticks = all(read_stat(root)?);
    let memory = |pid: u32| read_pss(pid).or_else(|_| read_rss(pid)).unwrap_or(0);
    let mut memory_bytes = memory(root);
    let mut processes = 1;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == root {
            continue;
        }
        // A process may end between the directory listing and the read: skip it (its
        // time is in the postmaster's cutime by then, if it was a backend).
        match read_stat(pid) {
            Ok(stat) if stat.ppid == root => {
                ticks += all(stat);
                memory_bytes += memory(pid);
                processes += 1;
            }
            _ => {}
        }
    }
    Ok(Usage {
        cpu_secs: ticks as f64 / clk_tck,
        memory_bytes,
        processes,
    })
}

/// Every component of a run, and the nodes (to check they are alive).
pub struct Census<'a> {
    nodes: Vec<&'a Server>,
    /// The engines of a spawned cluster, for their own counters.
    engines: Option<&'a ClusterEngines>,
    components: Vec<Component>,
    clk_tck: f64,
}

/// Every component's usage at one moment, and the machine-wide snapshot.
pub struct CensusSample {
    snapshot: Snapshot,
    usage: Vec<Option<Usage>>,
}

/// One component's share of a window.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentUse {
    pub name: String,
    pub kind: Kind,
    /// Processes at the end of the window (PostgreSQL: postmaster + children).
    pub processes: Option<u32>,
    pub cpu_secs: Option<f64>,
    /// CPU time / wall time: 1.0 is one core fully busy.
    pub cores: Option<f64>,
    pub us_per_message: Option<f64>,
    pub us_per_delivery: Option<f64>,
    /// At the end of the window: `VmRSS`, or for PostgreSQL the sum of `Pss`.
    pub memory_bytes: Option<u64>,
}

impl<'a> Census<'a> {
    /// The nodes (those with a known process id become components `node1`, `node2`…, or
    /// `server` when there is one), then the engines' processes, then the generator.
    pub fn new(nodes: Vec<&'a Server>, engines: Option<&'a ClusterEngines>) -> Census<'a> {
        let single = nodes.len() == 1;
        let mut components: Vec<Component> = nodes
            .iter()
            .enumerate()
            .filter_map(|(k, server)| {
                let name = if single {
                    "server".to_owned()
                } else {
                    format!("node{}", k + 1)
                };
                server
                    .pid
                    .map(|pid| Component::process(name, Kind::Node, pid))
            })
            .collect();
        components.extend(engines.map(ClusterEngines::components).unwrap_or_default());
        components.push(Component::process(
            "generator",
            Kind::Generator,
            std::process::id(),
        ));
        Census {
            nodes,
            engines,
            components,
            clk_tck: clock_ticks(),
        }
    }

    pub fn nodes(&self) -> &[&'a Server] {
        &self.nodes
    }

    /// Whether the engines are part of the census (cluster mode).
    pub fn has_engines(&self) -> bool {
        self.components.iter().any(|c| c.kind.is_engine())
    }

    /// Every node's `/metrics`, in cluster mode (several nodes or engines); `None` with
    /// one embedded server, whose report stays as it was.
    pub async fn scrape(&self) -> Option<Vec<Scrape>> {
        if !(self.has_engines() || self.nodes.len() > 1) {
            return None;
        }
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let scrape = match Http::new(&node.url, None) {
                Ok(http) => Scrape::take(&http).await,
                Err(e) => {
                    eprintln!("warning: HTTP client for {}: {e}", node.url);
                    Scrape::default()
                }
            };
            out.push(scrape);
        }
        Some(out)
    }

    pub fn sample(&self) -> CensusSample {
        let usage: Vec<Option<Usage>> = self
            .components
            .iter()
            .map(|c| match c.sample(self.clk_tck) {
                Ok(u) => Some(u),
                Err(e) => {
                    eprintln!("warning: cannot sample {}: {e:#}", c.name);
                    None
                }
            })
            .collect();
        let sum = |pick: fn(Kind) -> bool| -> Option<f64> {
            let mut any = false;
            let mut total = 0.0;
            for (c, u) in self.components.iter().zip(&usage) {
                if pick(c.kind) {
                    // One unreadable component makes the sum meaningless.
                    total += u.as_ref()?.cpu_secs;
                    any = true;
                }
            }
            any.then_some(total)
        };
        let server = sum(|k| k == Kind::Node);
        let engines = sum(Kind::is_engine);
        CensusSample {
            snapshot: Snapshot::of(server, engines),
            usage,
        }
    }

    /// Fails when a spawned node has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            node.check_alive()?;
        }
        Ok(())
    }

    /// Each component's CPU time over the window between `a` and `b`, per message and
    /// per delivery.
    pub fn between(
        &self,
        a: &CensusSample,
        b: &CensusSample,
        messages: u64,
        deliveries: u64,
    ) -> Vec<ComponentUse> {
        let wall = CpuUse::between(&a.snapshot, &b.snapshot).wall_secs;
        self.components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (x, y) = (a.usage[i], b.usage[i]);
                let cpu = match (x, y) {
                    (Some(x), Some(y)) => Some((y.cpu_secs - x.cpu_secs).max(0.0)),
                    _ => None,
                };
                let per = |n: u64| {
                    cpu.and_then(|c| report::ratio(c * 1e6, n as f64))
                        .map(report::round3)
                };
                ComponentUse {
                    name: c.name.clone(),
                    kind: c.kind,
                    processes: y.map(|u| u.processes),
                    cpu_secs: cpu.map(report::round3),
                    cores: cpu.and_then(|c| report::ratio(c, wall)).map(report::round3),
                    us_per_message: per(messages),
                    us_per_delivery: per(deliveries),
                    memory_bytes: y.map(|u| u.memory_bytes),
                }
            })
            .collect()
    }

    /// The engines' counters (cluster mode).
    pub async fn engine_counters(&self) -> Option<EngineCounters> {
        match self.engines {
            Some(engines) => Some(engines.counters().await),
            None => None,
        }
    }

    /// What the engines did since `before`, per message of the window.
    pub async fn engine_figures(
        &self,
        before: Option<EngineCounters>,
        messages: u64,
    ) -> Option<EngineFigures> {
        match (self.engines, before) {
            (Some(engines), Some(before)) => Some(engines.figures(before, messages).await),
            _ => None,
        }
    }

    /// Each component's cores over `window` with nothing else going on (connections
    /// open, no traffic): the background the per-message figures include (heartbeats,
    /// presence refreshes, lease renewals, the broker's own chatter).
    pub async fn baseline(&self, window: std::time::Duration) -> Vec<ComponentUse> {
        let before = self.sample();
        tokio::time::sleep(window).await;
        let after = self.sample();
        self.between(&before, &after, 0, 0)
    }

    pub fn cpu_use(a: &CensusSample, b: &CensusSample) -> CpuUse {
        CpuUse::between(&a.snapshot, &b.snapshot)
    }
}

impl CensusSample {
    /// CPU seconds and memory of the nodes together, when every node is known.
    pub fn nodes(&self, census: &Census<'_>) -> Option<(f64, u64)> {
        let mut any = false;
        let (mut cpu, mut memory) = (0.0, 0);
        for (c, u) in census.components.iter().zip(&self.usage) {
            if c.kind == Kind::Node {
                let u = u.as_ref()?;
                cpu += u.cpu_secs;
                memory += u.memory_bytes;
                any = true;
            }
        }
        any.then_some((cpu, memory))
    }
}
