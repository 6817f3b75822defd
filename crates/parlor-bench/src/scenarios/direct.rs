//! `direct`: P pairs of users, each pair with a direct conversation and both users
//! connected; messages go back and forth on an open-loop schedule at a total rate R (see
//! [`crate::traffic`]). Several rates may run in sequence on the same setup.

use super::{Bench, Environment};
use crate::report;
use crate::traffic::{Member, PhaseResult, PhaseSpec, Plan, Traffic};
use anyhow::bail;
use parlor_proto::admin::ConversationSpec;
use serde::Serialize;

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct DirectArgs {
    /// Messages per second over all pairs.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Several rates in sequence on the same setup, e.g. `1000,10000,50000` (overrides
    /// --rate).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Pairs of users (each pair: one direct conversation, two connections).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Seconds of sending per rate.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait after the last send for acks and deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Bytes of message text.
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,
    /// Seconds of traffic at the (first) rate before the measured phases, not reported
    /// (caches, prepared statements, JetStream consumers and PostgreSQL's relations
    /// warm up); its deliveries are still checked.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Cluster mode: seconds of measuring every process with the connections open and
    /// no traffic, before the first phase (0: none).
    #[arg(long, default_value_t = 5.0)]
    pub baseline: f64,
}

#[derive(Debug, Serialize)]
struct DirectReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    params: DirectArgs,
    connections: usize,
    /// Nodes the connections are spread over (1: one server).
    nodes: usize,
    /// Pairs whose two users are connected to different nodes. (In cluster mode every
    /// event goes through the broker to every node, the sender's included, so this
    /// changes which node delivers, not the path.)
    pairs_across_nodes: f64,
    /// Cluster mode: every process's cores with the connections open and no traffic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    baseline: Vec<crate::census::ComponentUse>,
    runs: Vec<PhaseResult>,
    environment: Environment,
}

pub async fn run(bench: &Bench, args: &DirectArgs) -> anyhow::Result<bool> {
    let p = args.pairs;
    if p == 0 {
        bail!("--pairs must be positive");
    }
    let rates = if args.rates.is_empty() {
        vec![args.rate]
    } else {
        args.rates.clone()
    };
    let users = bench.users("d", 2 * p).await?;
    let specs = (0..p)
        .map(|k| ConversationSpec::Direct {
            members: [users[k].id, users[p + k].id],
        })
        .collect();
    let convs = bench.conversations(specs).await?;
    // Message i goes to pair i % P; the first P go a→b, the next P b→a, and so on.
    let routes = (0..2 * p).map(|m| (m, convs[m % p])).collect();
    let members = users
        .into_iter()
        .map(|u| Member {
            user: u.id,
            token: u.access_token,
        })
        .collect();
    let plan = Plan {
        members,
        routes,
        recipients: 1,
        text_bytes: args.text_bytes,
    };
    let targets = bench.targets();
    let mut traffic = Traffic::connect(&targets, plan).await?;
    let node_of = traffic.node_of();
    let across = (0..p).filter(|&k| node_of[k] != node_of[p + k]).count();
    let pairs_across_nodes = report::round3(across as f64 / p as f64);
    if targets.len() > 1 {
        eprintln!(
            "{} connections over {} nodes round robin; {across} of {p} pairs span two nodes",
            2 * p,
            targets.len()
        );
    }
    let census = bench.census();
    let baseline = super::baseline(&census, args.baseline).await?;
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if args.warmup > 0.0 {
        let spec = PhaseSpec {
            rate: rates[0],
            duration: super::secs(args.warmup)?,
            grace: super::secs(args.grace)?,
        };
        let warmup = traffic.run_phase(spec, &census, "warm-up").await?;
        let mut ignored = Vec::new();
        super::judge_phase("warm-up", &warmup, &mut problems, &mut ignored);
    }
    for rate in rates {
        let label = format!("direct {}/s", report::count(rate.round() as u64));
        let spec = PhaseSpec {
            rate,
            duration: super::secs(args.duration)?,
            grace: super::secs(args.grace)?,
        };
        let result = traffic.run_phase(spec, &census, &label).await?;
        eprintln!(
            "{label}: delivered {} of {} at {}, p50 {:.3} ms p99 {:.3} ms",
            report::count(result.deliveries),
            report::count(result.scheduled),
            report::per_sec(result.delivery_rate),
            result.latency.p50_ms,
            result.latency.p99_ms
        );
        super::judge_phase(&label, &result, &mut problems, &mut warnings);
        runs.push(result);
    }
    problems.extend(
        traffic
            .lost_reasons()
            .into_iter()
            .map(|r| format!("connection lost: {r}")),
    );
    if traffic.foreign_frames() > 0 {
        warnings.push(format!("{} unexpected frames", traffic.foreign_frames()));
    }
    traffic.close().await;
    let report = DirectReport {
        scenario: "direct",
        ok: problems.is_empty(),
        problems,
        warnings,
        params: args.clone(),
        connections: 2 * p,
        nodes: targets.len(),
        pairs_across_nodes,
        baseline,
        runs,
        environment: bench.environment(),
    };
    let spread = if report.nodes > 1 {
        format!(
            " over {} nodes ({:.0}% of pairs across nodes)",
            report.nodes,
            report.pairs_across_nodes * 100.0
        )
    } else {
        String::new()
    };
    super::print_phases(
        &format!(
            "direct: {} pairs ({} connections{spread}), {} s per rate, {} B text",
            report::count(p as u64),
            report::count(2 * p as u64),
            args.duration,
            args.text_bytes
        ),
        &report.runs,
        false,
    );
    super::print_baseline(&report.baseline);
    super::print_notes(&report.problems, &report.warnings);
    report::print_json(&report)?;
    Ok(report.ok)
}
