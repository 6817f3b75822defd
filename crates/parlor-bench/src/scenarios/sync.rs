//! `sync`: user U is offline while others send M messages into C conversations U belongs
//! to; then U reconnects with `since` and the scenario times connect → `synced`, and
//! checks that U received exactly the M messages, in increasing `pos`, with consecutive
//! `seq` per conversation.

use super::{Bench, Environment};
use crate::bulk::{self, Sender};
use crate::conn::{self, Incoming};
use crate::report;
use crate::server::{CpuUse, Snapshot};
use anyhow::{bail, Context};
use futures_util::StreamExt;
use parlor_proto::admin::ConversationSpec;
use parlor_proto::Id;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for the whole catch-up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct SyncArgs {
    /// Messages U misses.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Conversations they are spread over (one sender each).
    #[arg(long, default_value_t = 50)]
    pub conversations: usize,
    /// Sends waiting for their ack at once, per sender connection.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Bytes of message text.
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,
}

#[derive(Debug, Serialize)]
struct SyncReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    params: SyncArgs,
    seed_messages_acked: u64,
    seed_secs: f64,
    seed_rate: f64,
    seed_server_cpu_us_per_message: Option<f64>,
    seed_cpu: CpuUse,
    /// Connect (TCP) → `synced`.
    catch_up_secs: f64,
    /// Connect → first event.
    first_event_secs: Option<f64>,
    events_per_sec: f64,
    message_events: u64,
    other_events: u64,
    /// Message events whose pos was not above the previous event's.
    pos_order_violations: u64,
    /// Message events whose seq did not follow the previous one of its conversation.
    seq_violations: u64,
    /// Conversations that did not end at their last acknowledged seq.
    incomplete_conversations: u64,
    catch_up_server_cpu_secs: Option<f64>,
    catch_up_server_cpu_us_per_event: Option<f64>,
    catch_up_cpu: CpuUse,
    server_rss_after_bytes: Option<u64>,
    server_data_dir_bytes: Option<u64>,
    environment: Environment,
}

pub async fn run(bench: &Bench, args: &SyncArgs) -> anyhow::Result<bool> {
    let (m, c) = (args.messages, args.conversations);
    if m == 0 || c == 0 {
        bail!("--messages and --conversations must be positive");
    }
    let users = bench.users("s", c + 1).await?;
    let u = &users[0];
    let specs = users[1..]
        .iter()
        .map(|s| ConversationSpec::Direct {
            members: [u.id, s.id],
        })
        .collect();
    let convs = bench.conversations(specs).await?;

    // U connects once to learn its position, then goes offline.
    let (ws, since) = conn::session(
        &bench.target,
        bench.target.source(0),
        &u.access_token,
        conn::busy_config(),
    )
    .await
    .context("first session of U")?;
    conn::close(ws).await;
    eprintln!("sync: U synced at pos {since} and went offline");

    let mut senders = Vec::with_capacity(c);
    for (k, s) in users[1..].iter().enumerate() {
        let (ws, _) = conn::session(
            &bench.target,
            bench.target.source(k + 1),
            &s.access_token,
            conn::busy_config(),
        )
        .await
        .with_context(|| format!("sender {k}"))?;
        // Message j goes to conversation j % C.
        let count = m / c + usize::from(k < m % c);
        senders.push(Sender {
            ws,
            convs: vec![convs[k]; count],
        });
    }
    let seed_before = bench.server.sample_or_warn();
    let seed_snapshot = Snapshot::take(&bench.server);
    let seeded = bulk::send_all(
        senders,
        bulk::filler_text(args.text_bytes),
        args.window,
        "sync: seeding",
    )
    .await?;
    let seed_after = bench.server.sample_or_warn();
    let seed_load = CpuUse::between(&seed_snapshot, &Snapshot::take(&bench.server));
    eprintln!(
        "sync: seeded {} messages in {:.2}s ({})",
        report::count(seeded.acked),
        seeded.elapsed_secs,
        report::per_sec(seeded.rate())
    );
    let mut problems = seeded.problems();
    // Let the server finish the echo deliveries of the seeding before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    bench.server.check_alive()?;

    let before = bench.server.sample_or_warn();
    let snapshot = Snapshot::take(&bench.server);
    let catch_up = tokio::time::timeout(
        CATCH_UP_TIMEOUT,
        catch_up(bench, &u.access_token, since, &seeded.seqs),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no synced within {}s", CATCH_UP_TIMEOUT.as_secs()))??;
    let after = bench.server.sample_or_warn();
    let catch_up_load = CpuUse::between(&snapshot, &Snapshot::take(&bench.server));

    if catch_up.message_events != seeded.acked {
        problems.push(format!(
            "U received {} message events, {} messages were acknowledged",
            catch_up.message_events, seeded.acked
        ));
    }
    if catch_up.pos_violations > 0 {
        problems.push(format!(
            "{} events out of pos order",
            catch_up.pos_violations
        ));
    }
    if catch_up.seq_violations > 0 {
        problems.push(format!("{} seq gaps or repeats", catch_up.seq_violations));
    }
    if catch_up.incomplete > 0 {
        problems.push(format!("{} conversations incomplete", catch_up.incomplete));
    }
    let cpu =
        |a: Option<crate::server::ProcSample>, b: Option<crate::server::ProcSample>| match (a, b) {
            (Some(a), Some(b)) => Some(b.cpu_secs - a.cpu_secs),
            _ => None,
        };
    let seed_cpu = cpu(seed_before, seed_after);
    let catch_cpu = cpu(before, after);
    let events = catch_up.message_events + catch_up.other_events;
    let report = SyncReport {
        scenario: "sync",
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
        catch_up_secs: report::round3(catch_up.secs),
        first_event_secs: catch_up.first_event_secs.map(report::round3),
        events_per_sec: report::round3(report::ratio(events as f64, catch_up.secs).unwrap_or(0.0)),
        message_events: catch_up.message_events,
        other_events: catch_up.other_events,
        pos_order_violations: catch_up.pos_violations,
        seq_violations: catch_up.seq_violations,
        incomplete_conversations: catch_up.incomplete,
        catch_up_server_cpu_secs: catch_cpu.map(report::round3),
        catch_up_server_cpu_us_per_event: catch_cpu
            .and_then(|c| report::ratio(c * 1e6, events as f64))
            .map(report::round3),
        catch_up_cpu: catch_up_load,
        server_rss_after_bytes: after.map(|s| s.rss_bytes),
        server_data_dir_bytes: bench.server.data_dir_bytes(),
        environment: bench.environment(),
    };
    report::print_figures(
        &format!(
            "sync: {} messages over {} conversations, then catch-up",
            report::count(m as u64),
            c
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
            (
                "catch-up: connect → synced",
                report::secs(report.catch_up_secs),
            ),
            (
                "catch-up: connect → first event",
                report::or_na(report.first_event_secs, report::secs),
            ),
            ("catch-up rate", report::per_sec(report.events_per_sec)),
            (
                "message events received",
                report::count(report.message_events),
            ),
            ("other events received", report::count(report.other_events)),
            (
                "pos order violations",
                report::count(report.pos_order_violations),
            ),
            ("seq gaps / repeats", report::count(report.seq_violations)),
            (
                "incomplete conversations",
                report::count(report.incomplete_conversations),
            ),
            (
                "server CPU for catch-up",
                report::or_na(report.catch_up_server_cpu_secs, report::secs),
            ),
            (
                "server CPU per event",
                super::cpu_us(report.catch_up_server_cpu_us_per_event),
            ),
            ("cores busy during catch-up", report.catch_up_cpu.describe()),
            (
                "server RSS after",
                super::rss(report.server_rss_after_bytes),
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

struct CatchUp {
    secs: f64,
    first_event_secs: Option<f64>,
    message_events: u64,
    other_events: u64,
    pos_violations: u64,
    seq_violations: u64,
    incomplete: u64,
}

/// Reconnects U with `since` and reads everything up to `synced`, checking the order.
async fn catch_up(
    bench: &Bench,
    token: &str,
    since: Id,
    acked: &HashMap<Id, (u64, u64)>,
) -> anyhow::Result<CatchUp> {
    let started = Instant::now();
    let mut ws = conn::open(&bench.target, bench.target.source(0), conn::busy_config()).await?;
    conn::hello(&mut ws, token, Some(since)).await?;
    let mut out = CatchUp {
        secs: 0.0,
        first_event_secs: None,
        message_events: 0,
        other_events: 0,
        pos_violations: 0,
        seq_violations: 0,
        incomplete: 0,
    };
    let mut last_pos = since.0;
    // Per conversation: the seq expected next (the first acknowledged one to begin with).
    let mut next_seq: HashMap<Id, u64> = acked.iter().map(|(conv, (lo, _))| (*conv, *lo)).collect();
    loop {
        let text = match ws.next().await {
            None => bail!("connection ended before synced"),
            Some(Err(e)) => bail!("read: {e}"),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!(
                "closed before synced: {}",
                frame
                    .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                    .unwrap_or_default()
            ),
            Some(Ok(_)) => continue,
        };
        let frame = Incoming::parse(&text).with_context(|| format!("unparseable frame: {text}"))?;
        if frame.kind == "synced" {
            out.secs = started.elapsed().as_secs_f64();
            break;
        }
        out.first_event_secs
            .get_or_insert_with(|| started.elapsed().as_secs_f64());
        if let Some(pos) = frame.pos {
            if pos.0 <= last_pos {
                out.pos_violations += 1;
            }
            last_pos = last_pos.max(pos.0);
        }
        if frame.kind != "message" {
            out.other_events += 1;
            continue;
        }
        out.message_events += 1;
        if let (Some(conv), Some(seq)) = (frame.conv, frame.seq) {
            let expected = next_seq.entry(conv).or_insert(seq);
            if seq != *expected {
                out.seq_violations += 1;
            }
            *expected = seq + 1;
        }
    }
    for (conv, (_, hi)) in acked {
        if next_seq.get(conv).copied() != Some(hi + 1) {
            out.incomplete += 1;
        }
    }
    conn::close(ws).await;
    Ok(out)
}
