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
    let mut traffic = Traffic::connect(&bench.target, plan).await?;
    let label = format!(
        "fanout {g}×{k} at {}/s",
        report::count(args.rate.round() as u64)
    );
    let spec = PhaseSpec {
        rate: args.rate,
        duration: super::secs(args.duration)?,
        grace: super::secs(args.grace)?,
    };
    let run = traffic.run_phase(spec, &bench.server, &label).await?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
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
        run,
        environment: bench.environment(),
    };
    super::print_phases(
        &format!(
            "fanout: {k} group(s) of {g} ({} connections, {} deliveries per message), {} s, {} B text",
            report::count((g * k) as u64),
            g - 1,
            args.duration,
            args.text_bytes
        ),
        std::slice::from_ref(&report.run),
        true,
    );
    super::print_notes(&report.problems, &report.warnings);
    report::print_json(&report)?;
    Ok(report.ok)
}
