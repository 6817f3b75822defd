//! `search`: seed M messages of varied text over C conversations, wait until the search
//! index has caught up, then run Q full-text queries from several concurrent clients
//! (closed loop, like `history`). Words follow a Zipf distribution over a synthetic
//! vocabulary, as in natural text: a few words are in a large share of the messages, most
//! are rare, so the queries mix cheap rare terms and expensive common ones.

use super::{Bench, Environment};
use crate::bulk::{self, TextFn};
use crate::report::{self, Progress};
use crate::server::{CpuUse, Snapshot};
use crate::stats::{Latency, SharedHist};
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct SearchArgs {
    /// Messages to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 100)]
    pub conversations: usize,
    /// Queries to run.
    #[arg(long, default_value_t = 2_000)]
    pub queries: usize,
    /// Clients querying at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Distinct words of the vocabulary.
    #[arg(long, default_value_t = 20_000)]
    pub vocabulary: usize,
    /// Words per message.
    #[arg(long, default_value_t = 10)]
    pub words: usize,
    /// Connections seeding the messages.
    #[arg(long, default_value_t = 4)]
    pub seed_connections: usize,
    /// Sends waiting for their ack at once, per seeding connection.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
}

#[derive(Debug, Serialize)]
struct SearchReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    params: SearchArgs,
    seed_messages_acked: u64,
    seed_rate: f64,
    index_catch_up_secs: f64,
    queries_ok: u64,
    queries_failed: u64,
    mean_results: f64,
    queries_per_sec: f64,
    latency: Latency,
    latency_one_word: Latency,
    latency_two_words: Latency,
    query_server_cpu_us_per_query: Option<f64>,
    query_cpu: CpuUse,
    server_data_dir_bytes: Option<u64>,
    environment: Environment,
}

/// Pronounceable synthetic words, distinct for distinct indexes.
fn word(mut n: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ren", "dor", "ta", "vu", "sel", "po", "nix", "ber", "qua", "zu", "fen",
        "gar", "io",
    ];
    let mut w = String::new();
    loop {
        w.push_str(SYLLABLES[n % 16]);
        n /= 16;
        if n == 0 {
            break;
        }
    }
    w
}

/// Cumulative Zipf weights (exponent 1) for sampling word ranks.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    (1..=n)
        .map(|r| {
            acc += 1.0 / r as f64;
            acc
        })
        .collect()
}

fn sample(cdf: &[f64], rng: &mut StdRng) -> usize {
    let x = rng.random_range(0.0..cdf[cdf.len() - 1]);
    cdf.partition_point(|&c| c < x).min(cdf.len() - 1)
}

/// The marker word of the last message of seeder `tag`: once findable, the index has
/// caught up with everything that seeder sent.
fn marker(tag: usize) -> String {
    format!("finalmarker{tag}")
}

pub async fn run(bench: &Bench, args: &SearchArgs) -> anyhow::Result<bool> {
    let (m, c, w) = (args.messages, args.conversations, args.seed_connections);
    if m == 0
        || c == 0
        || w == 0
        || args.concurrency == 0
        || args.vocabulary == 0
        || args.words == 0
    {
        bail!("every count must be positive");
    }
    let (users, _, senders) = bench.seeders("s", w, c, m).await?;
    let last: Vec<usize> = senders
        .iter()
        .map(|s| s.convs.len().saturating_sub(1))
        .collect();
    let cdf = Arc::new(zipf_cdf(args.vocabulary));
    let (seed, words) = (bench.common.seed, args.words);
    let text: TextFn = {
        let cdf = cdf.clone();
        Arc::new(move |tag, k| {
            let mut rng = StdRng::seed_from_u64(seed ^ ((tag as u64) << 40) ^ k as u64);
            let mut text: Vec<String> = (0..words).map(|_| word(sample(&cdf, &mut rng))).collect();
            if k == last[tag] {
                text.push(marker(tag));
            }
            text.join(" ")
        })
    };
    let seeded = bulk::send_all(senders, text, args.window, "search: seeding").await?;
    let mut problems = seeded.problems();
    bench.server.check_alive()?;

    // The index trails commits; measure how long it takes to hold everything.
    let caught_up = Instant::now();
    for (tag, user) in users[..w].iter().enumerate() {
        loop {
            let found = bench
                .http
                .search(&user.access_token, &marker(tag), &[])
                .await?;
            if !found.results.is_empty() {
                break;
            }
            if caught_up.elapsed() > Duration::from_secs(600) {
                bail!("the search index did not catch up within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let index_catch_up_secs = caught_up.elapsed().as_secs_f64();
    eprintln!("search: index caught up {index_catch_up_secs:.2}s after the last acknowledgement");

    let mut rng = StdRng::seed_from_u64(bench.common.seed.wrapping_add(7));
    let queries: Arc<Vec<(usize, String, bool)>> = Arc::new(
        (0..args.queries)
            .map(|_| {
                let two = rng.random_bool(0.25);
                let q = if two {
                    format!(
                        "{} {}",
                        word(sample(&cdf, &mut rng)),
                        word(sample(&cdf, &mut rng))
                    )
                } else {
                    word(sample(&cdf, &mut rng))
                };
                (rng.random_range(0..w), q, two)
            })
            .collect(),
    );
    let tokens: Arc<Vec<String>> =
        Arc::new(users[..w].iter().map(|u| u.access_token.clone()).collect());
    let (all, one, two) = (
        Arc::new(SharedHist::new()?),
        Arc::new(SharedHist::new()?),
        Arc::new(SharedHist::new()?),
    );
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let results = Arc::new(AtomicU64::new(0));
    let before = bench.server.sample_or_warn();
    let snapshot = Snapshot::take(&bench.server);
    let started = Instant::now();
    let progress = {
        let (ok, total) = (ok.clone(), args.queries);
        Progress::start(move || {
            let done = ok.load(Ordering::Relaxed);
            format!(
                "search: {}/{} queries ({})",
                report::count(done),
                report::count(total as u64),
                report::per_sec(done as f64 / started.elapsed().as_secs_f64())
            )
        })
    };
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (http, queries, tokens) = (bench.http.clone(), queries.clone(), tokens.clone());
            let (all, one, two) = (all.clone(), one.clone(), two.clone());
            let (next, ok, failed, results) =
                (next.clone(), ok.clone(), failed.clone(), results.clone());
            tokio::spawn(async move {
                while let Some((k, q, is_two)) =
                    queries.get(next.fetch_add(1, Ordering::Relaxed) as usize)
                {
                    let t0 = Instant::now();
                    let answer = http.search(&tokens[*k], q, &[]).await;
                    let ns = t0.elapsed().as_nanos() as u64;
                    all.record_ns(ns);
                    if *is_two {
                        two.record_ns(ns)
                    } else {
                        one.record_ns(ns)
                    }
                    match answer {
                        Ok(found) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            results.fetch_add(found.results.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.context("query task")?;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(progress);
    let after = bench.server.sample_or_warn();
    let query_cpu = CpuUse::between(&snapshot, &Snapshot::take(&bench.server));
    let (queries_ok, queries_failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if queries_failed > 0 {
        problems.push(format!("{queries_failed} queries failed"));
    }
    let cpu = match (before, after) {
        (Some(a), Some(b)) => {
            report::ratio((b.cpu_secs - a.cpu_secs) * 1e6, queries_ok as f64).map(report::round3)
        }
        _ => None,
    };
    let report = SearchReport {
        scenario: "search",
        ok: problems.is_empty(),
        problems,
        params: args.clone(),
        seed_messages_acked: seeded.acked,
        seed_rate: report::round3(seeded.rate()),
        index_catch_up_secs: report::round3(index_catch_up_secs),
        queries_ok,
        queries_failed,
        mean_results: report::round3(
            report::ratio(results.load(Ordering::Relaxed) as f64, queries_ok as f64).unwrap_or(0.0),
        ),
        queries_per_sec: report::round3(report::ratio(queries_ok as f64, secs).unwrap_or(0.0)),
        latency: all.summary(),
        latency_one_word: one.summary(),
        latency_two_words: two.summary(),
        query_server_cpu_us_per_query: cpu,
        query_cpu,
        server_data_dir_bytes: bench.server.data_dir_bytes(),
        environment: bench.environment(),
    };
    let (l, l1, l2) = (
        &report.latency,
        &report.latency_one_word,
        &report.latency_two_words,
    );
    report::print_figures(
        &format!(
            "search: {} messages over {} conversations, {} queries at concurrency {}",
            report::count(m as u64),
            c,
            report::count(args.queries as u64),
            args.concurrency
        ),
        &[
            ("seeded (acked)", report::count(report.seed_messages_acked)),
            ("seeding rate", report::per_sec(report.seed_rate)),
            (
                "index caught up after the last ack",
                report::secs(report.index_catch_up_secs),
            ),
            (
                "queries ok / failed",
                format!("{} / {}", report.queries_ok, report.queries_failed),
            ),
            (
                "results per query (mean, page of 50)",
                format!("{:.1}", report.mean_results),
            ),
            ("query rate", report::per_sec(report.queries_per_sec)),
            (
                "latency p50 / p99 / max (all)",
                format!(
                    "{} / {} / {}",
                    report::ms(l.p50_ms),
                    report::ms(l.p99_ms),
                    report::ms(l.max_ms)
                ),
            ),
            (
                "latency p50 / p99 (one word)",
                format!("{} / {}", report::ms(l1.p50_ms), report::ms(l1.p99_ms)),
            ),
            (
                "latency p50 / p99 (two words)",
                format!("{} / {}", report::ms(l2.p50_ms), report::ms(l2.p99_ms)),
            ),
            (
                "server CPU per query",
                super::cpu_us(report.query_server_cpu_us_per_query),
            ),
            ("cores busy during queries", report.query_cpu.describe()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_zipf_favours_low_ranks() {
        let words: std::collections::HashSet<String> = (0..5000).map(word).collect();
        assert_eq!(words.len(), 5000);
        let cdf = zipf_cdf(1000);
        let mut rng = StdRng::seed_from_u64(1);
        let low = (0..10_000).filter(|_| sample(&cdf, &mut rng) < 10).count();
        assert!(low > 3000, "{low}");
    }
}
