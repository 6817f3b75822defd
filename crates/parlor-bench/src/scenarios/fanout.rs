//! `fanout`: K groups of G members, every member connected once; messages go into the
//! groups on an open-loop schedule at a total rate R, sent by the members in turn. Each
//! message is delivered to the G − 1 other members; the report gives deliveries per
//! second, latency to each member and to the last member of each message, and the
//! server's CPU time per delivery.

use super::{Bench, Environment};
use crate::report;
use crate::traffic::{Member, PhaseResult, PhaseSpec, Plan, Traffic};
use anyhow::bail;
use parlor_proto::admin::ConversationSpec;
use serde::Serialize;

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    /// Members per group, the owner included.
    #[arg(long, default_value_t = 100)]
    pub group_size: usize,
    /// Number of groups.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Messages per second into all groups together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
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
struct FanoutReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    params: FanoutArgs,
    connections: usize,
    recipients_per_message: usize,
    /// Nodes the connections are spread over (1: one server).
    nodes: usize,
    /// Share of deliveries to a member on another node than the sender's. (In cluster
    /// mode every event reaches every node through the broker anyway.)
    deliveries_across_nodes: f64,
    /// Cluster mode: every process's cores with the connections open and no traffic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    baseline: Vec<crate::census::ComponentUse>,
    run: PhaseResult,
    environment: Environment,
}

pub async fn run(bench: &Bench, args: &FanoutArgs) -> anyhow::Result<bool> {
    let (g, k) = (args.group_size, args.groups);
    if g < 2 || k == 0 {
        bail!("--group-size must be at least 2 and --groups at least 1");
    }
    let users = bench.users("f", g * k).await?;
    let specs = (0..k)
        .map(|group| ConversationSpec::Group {
            name: format!("bench group {group}"),
            owner: users[group * g].id,
            members: users[group * g + 1..(group + 1) * g]
                .iter()
                .map(|u| u.id)
                .collect(),
        })
        .collect();
    let convs = bench.conversations(specs).await?;
    // Message j goes to group j % K, sent by member (j / K) % G of that group.
    let routes = (0..g * k)
        .map(|j| {
            let group = j % k;
            let member = (j / k) % g;
            (group * g + member, convs[group])
        })
        .collect();
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
        recipients: u32::try_from(g - 1)?,
        text_bytes: args.text_bytes,
    };
    let targets = bench.targets();
    let mut traffic = Traffic::connect(&targets, plan).await?;
    let deliveries_across_nodes = across_nodes(traffic.node_of(), g, k);
    if targets.len() > 1 {
        eprintln!(
            "{} connections over {} nodes round robin; {:.0}% of deliveries cross nodes",
            g * k,
            targets.len(),
            deliveries_across_nodes * 100.0
        );
    }
    let census = bench.census();
    let baseline = super::baseline(&census, args.baseline).await?;
    let label = format!(
        "fanout {g}×{k} at {}/s",
        report::count(args.rate.round() as u64)
    );
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if args.warmup > 0.0 {
        let spec = PhaseSpec {
            rate: args.rate,
            duration: super::secs(args.warmup)?,
            grace: super::secs(args.grace)?,
        };
        let warmup = traffic.run_phase(spec, &census, "warm-up").await?;
        let mut ignored = Vec::new();
        super::judge_phase("warm-up", &warmup, &mut problems, &mut ignored);
    }
    let spec = PhaseSpec {
        rate: args.rate,
        duration: super::secs(args.duration)?,
        grace: super::secs(args.grace)?,
    };
    let run = traffic.run_phase(spec, &census, &label).await?;
    super::judge_phase(&label, &run, &mut problems, &mut warnings);
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
    let report = FanoutReport {
        scenario: "fanout",
        ok: problems.is_empty(),
        problems,
        warnings,
        params: args.clone(),
        connections: g * k,
        recipients_per_message: g - 1,
        nodes: targets.len(),
        deliveries_across_nodes,
        baseline,
        run,
        environment: bench.environment(),
    };
    let spread = if report.nodes > 1 {
        format!(
            " over {} nodes, {:.0}% of deliveries across nodes",
            report.nodes,
            report.deliveries_across_nodes * 100.0
        )
    } else {
        String::new()
    };
    super::print_phases(
        &format!(
            "fanout: {k} group(s) of {g} ({} connections{spread}, {} deliveries per message), {} s, {} B text",
            report::count((g * k) as u64),
            g - 1,
            args.duration,
            args.text_bytes
        ),
        std::slice::from_ref(&report.run),
        true,
    );
    super::print_baseline(&report.baseline);
    super::print_notes(&report.problems, &report.warnings);
    report::print_json(&report)?;
    Ok(report.ok)
}

/// The share of deliveries whose recipient is on another node than the sender, every
/// member sending equally often (as the routes do): group `j` holds members
/// `j * g .. (j + 1) * g`, and `node_of[m]` is member `m`'s node.
fn across_nodes(node_of: &[usize], g: usize, k: usize) -> f64 {
    let mut across = 0usize;
    let mut total = 0usize;
    for group in 0..k {
        let members = &node_of[group * g..(group + 1) * g];
        for (i, sender) in members.iter().enumerate() {
            for (j, recipient) in members.iter().enumerate() {
                if i != j {
                    total += 1;
                    across += usize::from(sender != recipient);
                }
            }
        }
    }
    report::round3(report::ratio(across as f64, total as f64).unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::across_nodes;

    #[test]
    fn share_across_nodes() {
        // One node: nothing crosses.
        assert_eq!(across_nodes(&[0, 0, 0], 3, 1), 0.0);
        // Three members on three nodes: everything crosses.
        assert_eq!(across_nodes(&[0, 1, 2], 3, 1), 1.0);
        // Round robin over 3 nodes, 6 members: each has 1 of 5 others on its node.
        assert_eq!(across_nodes(&[0, 1, 2, 0, 1, 2], 6, 1), 0.8);
    }
}
