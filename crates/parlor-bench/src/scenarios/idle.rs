//! `idle`: open N authenticated sessions (each waits for `synced`), hold them, and measure
//! what they cost the server: connect rate, memory per connection, CPU while idle.
//!
//! The connections are held by worker processes (see [`crate::worker`]) so that N can
//! exceed one process's file descriptor limit.

use super::{rss, Bench, Environment};
use crate::conn;
use crate::report::{self, Progress};
use crate::server::ProcSample;
use crate::stats::{self, Latency};
use crate::worker::{HoldJob, Pool};
use anyhow::bail;
use serde::Serialize;
use std::time::Duration;

/// Connections one worker holds by default.
const PER_WORKER: usize = 9_000;
/// One process may have 20,000 file descriptors; leave room for everything else.
const MAX_PER_WORKER: usize = 19_000;

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct IdleArgs {
    /// Sessions to open.
    #[arg(long, default_value_t = 19_000)]
    pub connections: usize,
    /// Worker processes holding them [default: ceil(connections / 9000)].
    #[arg(long)]
    pub workers: Option<usize>,
    /// How long to hold them once all are synced.
    #[arg(long, default_value_t = 10)]
    pub hold_secs: u64,
    /// Handshakes in progress at once, per worker.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    params: IdleArgs,
    workers: usize,
    connections_synced: u64,
    connections_failed: u64,
    /// Sessions per second, from the first connect attempt to the last `synced`.
    connect_rate: f64,
    connect_secs: f64,
    /// Connect → `synced` of each session.
    connect_latency: Latency,
    /// `TcpExtListenOverflows` increase while connecting: SYNs dropped because a listen
    /// queue was full (each costs the client a 1 s retransmission). Machine-wide counter.
    listen_overflows_during_connect: Option<u64>,
    server_rss_before_bytes: Option<u64>,
    server_rss_synced_bytes: Option<u64>,
    /// At the end of the hold.
    server_rss_with_connections_bytes: Option<u64>,
    server_rss_peak_bytes: Option<u64>,
    /// (RSS with connections − RSS before) / connections.
    server_bytes_per_connection: Option<f64>,
    /// A few seconds after every connection closed.
    server_rss_after_close_bytes: Option<u64>,
    server_cpu_connect_secs: Option<f64>,
    server_cpu_us_per_connect: Option<f64>,
    server_cpu_hold_secs: Option<f64>,
    /// Connections the server closed while they were held.
    dropped_during_hold: u64,
    environment: Environment,
}

pub async fn run(bench: &Bench, args: &IdleArgs) -> anyhow::Result<bool> {
    let n = args.connections;
    if n == 0 {
        bail!("--connections must be positive");
    }
    let workers = args.workers.unwrap_or(n.div_ceil(PER_WORKER)).clamp(1, n);
    let per_worker = n.div_ceil(workers);
    if per_worker > MAX_PER_WORKER {
        bail!(
            "{per_worker} connections per worker exceeds the per-process limit \
             (~{MAX_PER_WORKER}); use more --workers"
        );
    }
    let users = bench.users("i", n).await?;
    // Let the provisioning writes settle before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = bench.server.sample_or_warn();

    let tokens: Vec<String> = users.into_iter().map(|u| u.access_token).collect();
    let jobs: Vec<HoldJob> = tokens
        .chunks(per_worker)
        .enumerate()
        .map(|(w, chunk)| HoldJob {
            target: bench.target.clone(),
            tokens: chunk.to_vec(),
            first_index: w * per_worker,
            concurrency: args.connect_concurrency,
        })
        .collect();
    let workers = jobs.len();
    eprintln!(
        "idle: opening {} sessions from {workers} worker processes over {} source addresses",
        report::count(n as u64),
        bench.target.sources.len().max(1)
    );
    let overflows_before = conn::listen_overflows();
    let mut pool = Pool::spawn(jobs).await?;
    let ready = {
        let progress = pool.progress_reader();
        let probe = bench.server.probe;
        let _progress = Progress::start(move || {
            let (open, failed) = progress();
            let rss = probe
                .and_then(|p| p.sample().ok())
                .map(|s| report::bytes(s.rss_bytes))
                .unwrap_or_else(|| "n/a".into());
            format!(
                "idle: {}/{} synced, {failed} failed, server RSS {rss}",
                report::count(open),
                report::count(n as u64)
            )
        });
        pool.wait_ready().await?
    };
    let synced_sample = bench.server.sample_or_warn();
    let listen_overflows = match (overflows_before, conn::listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };

    let mut latency = stats::histogram()?;
    let mut problems = Vec::new();
    let (mut open, mut failed) = (0u64, 0u64);
    let mut first = u64::MAX;
    let mut last = 0u64;
    for r in &ready {
        open += r.open;
        failed += r.failed;
        first = first.min(r.first_connect_unix_ns);
        last = last.max(r.last_synced_unix_ns);
        stats::import(&mut latency, &r.connect_latency);
        problems.extend(r.errors.iter().map(|e| format!("connect failed: {e}")));
    }
    if failed > 0 {
        problems.insert(0, format!("{failed} of {n} connections failed"));
    }
    let connect_secs = last.saturating_sub(first) as f64 / 1e9;
    let connect_rate = report::ratio(open as f64, connect_secs).unwrap_or(0.0);
    eprintln!(
        "idle: {open} sessions synced in {connect_secs:.2}s ({}); holding {}s",
        report::per_sec(connect_rate),
        args.hold_secs
    );

    let mut peak = synced_sample.map(|s| s.rss_bytes);
    for left in (0..args.hold_secs).rev() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bench.server.check_alive()?;
        if let Some(s) = bench.server.sample_or_warn() {
            peak = peak.max(Some(s.rss_bytes));
            eprintln!(
                "idle: holding {open} sessions, {left}s left, server RSS {}",
                report::bytes(s.rss_bytes)
            );
        }
    }
    let held = bench.server.sample_or_warn();
    let stopped = pool.stop().await?;
    if stopped.dropped > 0 {
        problems.push(format!(
            "{} connections were closed by the server during the hold",
            stopped.dropped
        ));
    }
    problems.extend(stopped.errors);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_close = bench.server.sample_or_warn();

    let rss_of = |s: Option<ProcSample>| s.map(|s| s.rss_bytes);
    let cpu_between = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) => Some(report::round3(b.cpu_secs - a.cpu_secs)),
        _ => None,
    };
    let per_connection = match (before, held) {
        (Some(b), Some(h)) if open > 0 => Some(report::round3(
            (h.rss_bytes as f64 - b.rss_bytes as f64) / open as f64,
        )),
        _ => None,
    };
    let connect_cpu = cpu_between(before, synced_sample);
    let report = IdleReport {
        scenario: "idle",
        ok: problems.is_empty(),
        problems,
        params: args.clone(),
        workers,
        connections_synced: open,
        connections_failed: failed,
        connect_rate: report::round3(connect_rate),
        connect_secs: report::round3(connect_secs),
        connect_latency: Latency::of(&latency),
        listen_overflows_during_connect: listen_overflows,
        server_rss_before_bytes: rss_of(before),
        server_rss_synced_bytes: rss_of(synced_sample),
        server_rss_with_connections_bytes: rss_of(held),
        server_rss_peak_bytes: peak,
        server_bytes_per_connection: per_connection,
        server_rss_after_close_bytes: rss_of(after_close),
        server_cpu_connect_secs: connect_cpu,
        server_cpu_us_per_connect: connect_cpu
            .and_then(|c| report::ratio(c * 1e6, open as f64))
            .map(report::round3),
        server_cpu_hold_secs: cpu_between(synced_sample, held),
        dropped_during_hold: stopped.dropped,
        environment: bench.environment(),
    };
    print_table(&report);
    report::print_json(&report)?;
    Ok(report.ok)
}

fn print_table(r: &IdleReport) {
    let l = &r.connect_latency;
    report::print_figures(
        &format!(
            "idle: {} sessions, {} workers, hold {}s",
            report::count(r.params.connections as u64),
            r.workers,
            r.params.hold_secs
        ),
        &[
            ("sessions synced", report::count(r.connections_synced)),
            ("sessions failed", report::count(r.connections_failed)),
            (
                "connect rate (first connect → last synced)",
                format!(
                    "{} over {}",
                    report::per_sec(r.connect_rate),
                    report::secs(r.connect_secs)
                ),
            ),
            (
                "connect → synced p50 / p99 / max",
                format!(
                    "{} / {} / {}",
                    report::ms(l.p50_ms),
                    report::ms(l.p99_ms),
                    report::ms(l.max_ms)
                ),
            ),
            (
                "listen queue overflows while connecting (machine-wide)",
                report::or_na(r.listen_overflows_during_connect, report::count),
            ),
            ("server RSS before", rss(r.server_rss_before_bytes)),
            ("server RSS when all synced", rss(r.server_rss_synced_bytes)),
            (
                "server RSS with sessions (end of hold)",
                rss(r.server_rss_with_connections_bytes),
            ),
            ("server RSS peak", rss(r.server_rss_peak_bytes)),
            (
                "server memory per session",
                report::or_na(r.server_bytes_per_connection, |b| {
                    format!("{:.0} bytes ({:.1} KiB)", b, b / 1024.0)
                }),
            ),
            (
                "server RSS after close",
                rss(r.server_rss_after_close_bytes),
            ),
            (
                "server CPU to connect all",
                report::or_na(r.server_cpu_connect_secs, report::secs),
            ),
            (
                "server CPU per connect",
                super::cpu_us(r.server_cpu_us_per_connect),
            ),
            (
                "server CPU during the hold",
                report::or_na(r.server_cpu_hold_secs, report::secs),
            ),
            (
                "dropped during the hold",
                report::count(r.dropped_during_hold),
            ),
        ],
    );
    for p in &r.problems {
        println!("  problem: {p}");
    }
}
