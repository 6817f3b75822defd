//! `history`: seed M messages over C conversations (pipelined sends over a few
//! connections), then read Q history pages `GET /v1/conversations/{id}/messages?before=S`
//! at random positions from several concurrent clients. This one is closed-loop on
//! purpose: each client sends its next request when the previous answer arrived, so the
//! result is the server's capacity for page reads at that concurrency.

use super::{Bench, Environment};
use crate::bulk;
use crate::report::{self, Progress};
use crate::server::{CpuUse, Snapshot};
use crate::stats::{Latency, SharedHist};
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct HistoryArgs {
    /// Messages to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 100)]
    pub conversations: usize,
    /// History pages to read.
    #[arg(long, default_value_t = 2_000)]
    pub queries: usize,
    /// Clients reading at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Messages per page (`limit`).
    #[arg(long, default_value_t = 50)]
    pub page: u32,
    /// Connections seeding the messages.
    #[arg(long, default_value_t = 4)]
    pub seed_connections: usize,
    /// Sends waiting for their ack at once, per seeding connection.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Bytes of message text.
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,
}

#[derive(Debug, Serialize)]
struct HistoryReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    params: HistoryArgs,
    seed_messages_acked: u64,
    seed_secs: f64,
    seed_rate: f64,
    seed_server_cpu_us_per_message: Option<f64>,
    seed_cpu: CpuUse,
    queries_ok: u64,
    queries_failed: u64,
    /// Pages whose messages were not exactly the expected seq range.
    wrong_pages: u64,
    query_secs: f64,
    pages_per_sec: f64,
    latency: Latency,
    query_server_cpu_secs: Option<f64>,
    query_server_cpu_us_per_page: Option<f64>,
    query_cpu: CpuUse,
    server_rss_after_seed_bytes: Option<u64>,
    server_rss_after_queries_bytes: Option<u64>,
    server_data_dir_bytes: Option<u64>,
    environment: Environment,
}

pub async fn run(bench: &Bench, args: &HistoryArgs) -> anyhow::Result<bool> {
    let (m, c, w) = (args.messages, args.conversations, args.seed_connections);
    if m == 0 || c == 0 || w == 0 || args.concurrency == 0 || args.page == 0 {
        bail!("--messages, --conversations, --seed-connections, --concurrency and --page must be positive");
    }
    let (users, convs, senders) = bench.seeders("h", w, c, m).await?;
    let seed_before = bench.server.sample_or_warn();
    let seed_snapshot = Snapshot::take(&bench.server);
    let seeded = bulk::send_all(
        senders,
        bulk::filler_text(args.text_bytes),
        args.window,
        "history: seeding",
    )
    .await?;
    let seed_after = bench.server.sample_or_warn();
    let seed_load = CpuUse::between(&seed_snapshot, &Snapshot::take(&bench.server));
    eprintln!(
        "history: seeded {} messages in {:.2}s ({})",
        report::count(seeded.acked),
        seeded.elapsed_secs,
        report::per_sec(seeded.rate())
    );
    let mut problems = seeded.problems();
    bench.server.check_alive()?;

    // The queries, fixed up front from the seed: (conversation index, before).
    let mut rng = StdRng::seed_from_u64(bench.common.seed);
    let mut queries = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let k = rng.random_range(0..c);
        let last = seeded.seqs.get(&convs[k]).map(|(_, hi)| *hi).unwrap_or(0);
        if last == 0 {
            bail!("conversation {} has no messages", convs[k]);
        }
        queries.push((k, rng.random_range(2..=last + 1)));
    }
    let queries = Arc::new(queries);
    let tokens: Arc<Vec<String>> =
        Arc::new(users[..w].iter().map(|u| u.access_token.clone()).collect());
    let convs = Arc::new(convs);
    let latency = Arc::new(SharedHist::new()?);
    let next = Arc::new(AtomicU64::new(0));
    let done_ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let before = bench.server.sample_or_warn();
    let snapshot = Snapshot::take(&bench.server);
    let started = Instant::now();
    let progress = {
        let done_ok = done_ok.clone();
        let total = args.queries;
        Progress::start(move || {
            let done = done_ok.load(Ordering::Relaxed);
            format!(
                "history: {}/{} pages ({})",
                report::count(done),
                report::count(total as u64),
                report::per_sec(done as f64 / started.elapsed().as_secs_f64())
            )
        })
    };
    let page = args.page;
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (http, queries, tokens, convs) = (
                bench.http.clone(),
                queries.clone(),
                tokens.clone(),
                convs.clone(),
            );
            let (latency, next, done_ok, failed, wrong, errors) = (
                latency.clone(),
                next.clone(),
                done_ok.clone(),
                failed.clone(),
                wrong.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let q = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&(k, before)) = queries.get(q) else {
                        break;
                    };
                    let t0 = Instant::now();
                    let result = http
                        .history(
                            &tokens[k % tokens.len()],
                            convs[k],
                            Some(before),
                            None,
                            Some(page),
                        )
                        .await;
                    latency.record_ns(t0.elapsed().as_nanos() as u64);
                    match result {
                        Ok(history) => {
                            done_ok.fetch_add(1, Ordering::Relaxed);
                            let n = u64::from(page).min(before - 1);
                            let seqs: Vec<u64> = history.messages.iter().map(|m| m.seq).collect();
                            let expected: Vec<u64> = (before - n..before).collect();
                            if seqs != expected {
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut errors = errors.lock().unwrap_or_else(PoisonError::into_inner);
                            if errors.len() < 10 {
                                errors.push(format!("query: {e}"));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.context("query task")?;
    }
    let query_secs = started.elapsed().as_secs_f64();
    drop(progress);
    let after = bench.server.sample_or_warn();
    let query_load = CpuUse::between(&snapshot, &Snapshot::take(&bench.server));

    let (queries_ok, queries_failed, wrong_pages) = (
        done_ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    if queries_failed > 0 {
        problems.push(format!("{queries_failed} queries failed"));
        problems.extend(
            errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
    }
    if wrong_pages > 0 {
        problems.push(format!(
            "{wrong_pages} pages did not hold the expected messages"
        ));
    }
    let cpu =
        |a: Option<crate::server::ProcSample>, b: Option<crate::server::ProcSample>| match (a, b) {
            (Some(a), Some(b)) => Some(b.cpu_secs - a.cpu_secs),
            _ => None,
        };
    let seed_cpu = cpu(seed_before, seed_after);
    let query_cpu = cpu(before, after);
    let report = HistoryReport {
        scenario: "history",
        ok: problems.is_empty(),
        problems,
        params: args.clone(),
        seed_messages_acked: seeded.acked,
        seed_secs: report::round3(seeded.elapsed_secs),
        seed_rate: report::round3(seeded.rate()),
        seed_server_cpu_us_per_message: seed_cpu
            .and_then(|c| report::ratio(c * 1e6, seeded.acked as f64))
            .map(report::round3),
        seed_cpu: seed_load,
        queries_ok,
        queries_failed,
        wrong_pages,
        query_secs: report::round3(query_secs),
        pages_per_sec: report::round3(report::ratio(queries_ok as f64, query_secs).unwrap_or(0.0)),
        latency: latency.summary(),
        query_server_cpu_secs: query_cpu.map(report::round3),
        query_server_cpu_us_per_page: query_cpu
            .and_then(|c| report::ratio(c * 1e6, queries_ok as f64))
            .map(report::round3),
        query_cpu: query_load,
        server_rss_after_seed_bytes: seed_after.map(|s| s.rss_bytes),
        server_rss_after_queries_bytes: after.map(|s| s.rss_bytes),
        server_data_dir_bytes: bench.server.data_dir_bytes(),
        environment: bench.environment(),
    };
    let l = &report.latency;
    report::print_figures(
        &format!(
            "history: {} messages over {} conversations; {} pages of {} at concurrency {}",
            report::count(m as u64),
            c,
            report::count(args.queries as u64),
            args.page,
            args.concurrency
        ),
        &[
            ("seeded (acked)", report::count(report.seed_messages_acked)),
            (
                "seeding rate (pipelined sends)",
                format!(
                    "{} over {}",
                    report::per_sec(report.seed_rate),
                    report::secs(report.seed_secs)
                ),
            ),
            (
                "server CPU per seeded message",
                super::cpu_us(report.seed_server_cpu_us_per_message),
            ),
            ("cores busy while seeding", report.seed_cpu.describe()),
            ("pages read", report::count(report.queries_ok)),
            ("pages failed", report::count(report.queries_failed)),
            ("wrong pages", report::count(report.wrong_pages)),
            ("page rate", report::per_sec(report.pages_per_sec)),
            ("latency p50", report::ms(l.p50_ms)),
            ("latency p90", report::ms(l.p90_ms)),
            ("latency p99", report::ms(l.p99_ms)),
            ("latency max", report::ms(l.max_ms)),
            (
                "server CPU per page",
                super::cpu_us(report.query_server_cpu_us_per_page),
            ),
            ("cores busy during queries", report.query_cpu.describe()),
            (
                "server RSS after seeding",
                super::rss(report.server_rss_after_seed_bytes),
            ),
            (
                "server RSS after queries",
                super::rss(report.server_rss_after_queries_bytes),
            ),
            (
                "server data directory",
                report::or_na(report.server_data_dir_bytes, report::bytes),
            ),
        ],
    );
    super::print_notes(&report.problems, &[]);
    report::print_json(&report)?;
    Ok(report.ok)
}
