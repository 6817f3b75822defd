//! `parlor-bench`: a load generator that measures a Parlor server.
//!
//! By default it starts the server itself (`parlor serve` in a fresh temporary data
//! directory, admin API on, rate limits relaxed), so that it knows the server's process
//! and can read its memory and CPU time from `/proc`. It provisions users and
//! conversations through the admin API, runs one scenario, prints progress to stderr, a
//! table to stdout, and one final JSON line starting with `{"scenario":`.
//!
//! # Layout
//! - [`server`]: spawning or attaching to the server; RSS and CPU time from `/proc`.
//! - [`cluster`]: cluster mode: the engines (through `parlor-testkit`) and N nodes.
//! - [`census`]: CPU time and memory of every process of a run (nodes, engines,
//!   generator), for "where the time goes".
//! - [`pg`]: PostgreSQL's transactions, WAL, statements and wait events per window.
//! - [`scrape`]: the nodes' own latency histograms and bus counters from `/metrics`.
//! - [`provision`]: users and conversations through the admin API.
//! - [`conn`]: raw WebSocket sessions bound to chosen loopback source addresses.
//! - [`worker`]: the hidden `worker` subcommand holding connections in child processes.
//! - [`traffic`]: the open-loop sender/receiver engine of `direct` and `fanout`.
//! - [`bulk`]: pipelined "send as fast as acks allow" for `sync` and `history` seeding.
//! - [`stats`], [`report`]: histograms, tables and the JSON line.
//! - [`scenarios`]: one module per subcommand.

mod bulk;
mod census;
mod cluster;
mod conn;
mod pg;
mod provision;
mod report;
mod scenarios;
mod scrape;
mod server;
mod stats;
mod traffic;
mod worker;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "parlor-bench",
    version,
    about = "Load generator for the Parlor chat server",
    long_about = "Load generator for the Parlor chat server.\n\nBy default it spawns \
                  `parlor serve` (next to its own executable) in a fresh temporary data \
                  directory. Progress goes to stderr; a table and then one JSON line \
                  (starting with {\"scenario\":) go to stdout."
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options shared by every scenario: which server, and how to reach it.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// The `parlor` binary to spawn [default: `parlor` next to this executable].
    #[arg(long, global = true)]
    pub server_bin: Option<PathBuf>,
    /// Target an already running server (http://host:port) instead of spawning one; a
    /// comma-separated list targets the nodes of a running cluster (clients are spread
    /// over them, the first one provisions).
    #[arg(long, global = true, requires = "admin_token")]
    pub url: Option<String>,
    /// The running server's admin token (with --url; the same on every node).
    #[arg(long, global = true)]
    pub admin_token: Option<String>,
    /// The running server's process id (with --url; one per URL, comma-separated), to
    /// report its RSS and CPU time.
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Cluster mode: start PostgreSQL, NATS JetStream and Redis on this machine
    /// (parlor-testkit's engines) and this many `parlor serve` nodes on them; clients are
    /// spread over the nodes round robin. 0: one embedded server.
    #[arg(long, global = true, default_value_t = 0)]
    pub cluster_nodes: usize,
    /// NATS servers of the cluster (1, or 3 for a three-replica stream).
    #[arg(long, global = true, default_value_t = 3)]
    pub nats_servers: usize,
    /// PostgreSQL with `fsync = on` and `full_page_writes = on` (durable against an OS
    /// crash, like the embedded `durability = "fsync"`); by default off, like the test
    /// kit (a commit survives a crash of PostgreSQL, like the embedded "process").
    #[arg(long, global = true)]
    pub pg_fsync: bool,
    /// Cluster mode: load `pg_stat_statements` and sample PostgreSQL's wait events
    /// during each phase (time per statement; what the busy backends wait for).
    #[arg(long, global = true)]
    pub pg_insight: bool,
    /// Extra environment for the spawned server, e.g. `PARLOR_DURABILITY=fsync`
    /// (repeatable; applied after the benchmark's own settings).
    #[arg(long = "server-env", global = true, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub server_env: Vec<(String, String)>,
    /// How many loopback source addresses (127.0.0.2, 127.0.0.3, …) client connections
    /// are spread over, when the server is on 127.0.0.0/8.
    #[arg(long, global = true, default_value_t = 4)]
    pub source_ips: u8,
    /// Seed of every random choice (history positions), for reproducible runs.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold many authenticated, idle WebSocket sessions; memory per connection.
    Idle(scenarios::idle::IdleArgs),
    /// Pairs of users messaging each other at a fixed (open-loop) rate; latency.
    Direct(scenarios::direct::DirectArgs),
    /// Messages into groups whose members are all connected; delivery rate and latency.
    Fanout(scenarios::fanout::FanoutArgs),
    /// An offline user catches up on many messages when reconnecting.
    Sync(scenarios::sync::SyncArgs),
    /// History page reads at random positions of large conversations.
    History(scenarios::history::HistoryArgs),
    /// Full-text queries over a large seeded corpus; latency and throughput.
    Search(scenarios::search::SearchArgs),
    /// Uploads and downloads of large files from concurrent clients; throughput.
    Uploads(scenarios::uploads::UploadsArgs),
    /// Messages to offline recipients: message → push request at a fake provider.
    Push(scenarios::push::PushArgs),
    /// Internal: hold connections for the coordinator (job as JSON on stdin).
    #[command(hide = true)]
    Worker,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Worker => worker::run_worker_process(),
        scenario => run_scenario(cli.common, scenario),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "parlor-bench: the run completed with problems (see \"problems\" in the report)"
            );
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("parlor-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one scenario against a spawned or attached server. `Ok(false)`: the scenario ran
/// but found problems (failed connections, lost messages, wrong sync).
fn run_scenario(common: CommonArgs, scenario: Scenario) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut common = common;
        // The fake push provider must exist before the server, which is told to trust it.
        let mut fake = match &scenario {
            Scenario::Push(args) => Some(scenarios::push::prepare(args, &mut common).await?),
            _ => None,
        };
        let bench = scenarios::Bench::start(&common).await?;
        let outcome = match scenario {
            Scenario::Idle(args) => scenarios::idle::run(&bench, &args).await,
            Scenario::Direct(args) => scenarios::direct::run(&bench, &args).await,
            Scenario::Fanout(args) => scenarios::fanout::run(&bench, &args).await,
            Scenario::Sync(args) => scenarios::sync::run(&bench, &args).await,
            Scenario::History(args) => scenarios::history::run(&bench, &args).await,
            Scenario::Search(args) => scenarios::search::run(&bench, &args).await,
            Scenario::Uploads(args) => scenarios::uploads::run(&bench, &args).await,
            Scenario::Push(args) => scenarios::push::run(&bench, &args, fake.take()).await,
            // Handled in `main` before a runtime or server exists.
            Scenario::Worker => Ok(true),
        };
        bench.finish().await;
        outcome
    })
}
