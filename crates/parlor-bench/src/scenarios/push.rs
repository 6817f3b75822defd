//! `push`: notification delivery, from a message's intended send time to its push
//! request arriving at the provider.
//!
//! The provider is `parlor_testkit::push::FakeProvider` (HTTPS on loopback, in this
//! process), which the spawned server trusts through `push.extra_ca_file`. One sender
//! and N recipients, each recipient with one push target on the fake (a Web Push
//! subscription with real keys, or a webhook) and one direct conversation with the
//! sender. Recipients never connect, so every message is for an offline user and should
//! be pushed. The sender writes M messages round robin over the conversations on an
//! open-loop schedule (as in [`crate::traffic`]: message *i* is due at
//! `start + i / rate` whatever the server does, and latency is measured from that time).
//!
//! Each push is matched to its message by the message id in its payload (decrypted as
//! the recipient's browser would, for Web Push) and the id the sender's ack carried.
//! A conversation gets a message every N / R seconds; a push still queued when the next
//! message of its conversation is queued is retired in favour of it (collapse, by
//! design), so a message without a push whose conversation was pushed a later message
//! counts as collapsed, and one without any later push as lost.

use super::Bench;
use crate::census::Census;
use crate::conn::{self, Ws};
use crate::report::{self, Progress};
use crate::scrape::{Histogram, Scrape};
use crate::server::CpuUse;
use crate::stats::{Latency, SharedHist};
use crate::CommonArgs;
use anyhow::{bail, Context};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use parlor_proto::admin::ConversationSpec;
use parlor_proto::notify::{NewPushTarget, WebPushKeys};
use parlor_proto::ws::ClientFrame;
use parlor_proto::Id;
use parlor_testkit::push::webpush::Browser;
use parlor_testkit::push::{FakeProvider, Recorded, Reply};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Frames written before one flush, at most.
const WRITE_BATCH: usize = 256;
/// Push targets registered at once.
const REGISTER_CONCURRENCY: usize = 32;
/// How often the drain checks whether every push arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The first intended send time lies this far after the setup.
const START_DELAY: Duration = Duration::from_millis(50);
/// Wait after the drain before the final samples.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// RFC 8291 encryption and a VAPID signature per push; decrypted here to match.
    #[value(name = "web_push")]
    WebPush,
    /// A signed JSON POST: the cheapest provider for the server.
    Webhook,
}

impl Provider {
    fn as_str(self) -> &'static str {
        match self {
            Provider::WebPush => "web_push",
            Provider::Webhook => "webhook",
        }
    }

    fn path_prefix(self) -> &'static str {
        match self {
            Provider::WebPush => "/push/r",
            Provider::Webhook => "/hook/r",
        }
    }
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct PushArgs {
    /// The push target of every recipient.
    #[arg(long, value_enum, default_value_t = Provider::WebPush)]
    pub provider: Provider,
    /// Recipients, each with one push target and one direct conversation with the
    /// sender; none of them ever connects.
    #[arg(long, default_value_t = 1000)]
    pub recipients: usize,
    /// Messages the sender sends, round robin over the conversations.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// Messages per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Bytes of message text (it is the push's body: `push.include_content` is on).
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,
    /// Seconds after the last intended send time to wait for pushes, at most.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
    /// The wait ends earlier once no push has arrived for this many seconds (and at
    /// once when every acked message was pushed).
    #[arg(long, default_value_t = 3.0)]
    pub quiet: f64,
}

/// One request as it reached the fake provider, stamped on arrival.
struct Arrival {
    at: Instant,
    path: String,
    body: Vec<u8>,
}

/// What the fake provider's responder records, besides the fake's own list: the
/// arrival time, which the fake does not keep.
#[derive(Default)]
struct Arrivals {
    list: Mutex<Vec<Arrival>>,
    count: AtomicU64,
    /// Nanoseconds after `epoch` of the latest arrival.
    last_ns: AtomicU64,
}

/// The fake provider, started before the server so that the server can trust it.
pub struct Fake {
    provider: FakeProvider,
    arrivals: Arc<Arrivals>,
    epoch: Instant,
}

/// Starts the fake provider and adds the server settings that make it reachable: its
/// certificate trusted, webhooks to loopback allowed. They go before the caller's
/// `--server-env`, which may override them.
pub async fn prepare(args: &PushArgs, common: &mut CommonArgs) -> anyhow::Result<Fake> {
    if common.url.is_some() {
        bail!(
            "push needs a server it spawns: the fake provider's certificate is made at run \
             time, and a running server would not trust it"
        );
    }
    if common.cluster_nodes > 0 && args.provider == Provider::WebPush {
        bail!(
            "--provider web_push in cluster mode needs one VAPID key shared by the nodes, \
             which the benchmark does not make; use --provider webhook"
        );
    }
    let provider = FakeProvider::start()
        .await
        .context("start the fake provider")?;
    let arrivals = Arc::new(Arrivals::default());
    let epoch = Instant::now();
    {
        let arrivals = Arc::clone(&arrivals);
        provider.respond(move |r: &Recorded| {
            let at = Instant::now();
            arrivals.last_ns.fetch_max(
                at.duration_since(epoch).as_nanos() as u64,
                Ordering::Relaxed,
            );
            arrivals
                .list
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arrival {
                    at,
                    path: r.path.clone(),
                    body: r.body.to_vec(),
                });
            arrivals.count.fetch_add(1, Ordering::Relaxed);
            Reply::status(201)
        });
    }
    let ours = [
        (
            "PARLOR_PUSH__EXTRA_CA_FILE".to_owned(),
            provider.ca_file().display().to_string(),
        ),
        (
            "PARLOR_PUSH__WEBHOOK__ALLOW_PRIVATE".to_owned(),
            "true".to_owned(),
        ),
    ];
    let mut env = Vec::from(ours);
    env.append(&mut common.server_env);
    common.server_env = env;
    Ok(Fake {
        provider,
        arrivals,
        epoch,
    })
}

/// The sender's side of the run, shared with its reader task.
struct Sends {
    /// Intended time of message 0.
    start: Instant,
    ns_per_message: f64,
    written: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    last_write_ns: AtomicU64,
    /// The id the ack gave message `i`; 0 until acked.
    ids: Vec<AtomicU64>,
    ack_latency: SharedHist,
    send_lag: SharedHist,
    error_codes: Mutex<BTreeMap<String, u64>>,
    lost_connection: Mutex<Option<String>>,
}

impl Sends {
    fn intended(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.ns_per_message) as u64)
    }

    /// The first ack of message `index` gives it its id (a repeated ack changes nothing).
    fn on_ack(&self, index: usize, id: Id, now: Instant) {
        let Some(slot) = self.ids.get(index) else {
            return;
        };
        if slot.swap(id.0, Ordering::Relaxed) == 0 {
            self.acked.fetch_add(1, Ordering::Relaxed);
            self.ack_latency.record_ns(
                now.saturating_duration_since(self.intended(index as u64))
                    .as_nanos() as u64,
            );
        }
    }
}

#[derive(Debug, Serialize)]
struct PushReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    params: PushArgs,
    /// Seconds between two messages of one conversation (N / R): a push slower than
    /// this can be collapsed with the next message's.
    conversation_interval_secs: f64,
    written: u64,
    acked: u64,
    /// Sends answered with an `error` frame.
    failed: u64,
    unacked: u64,
    /// Requests the fake provider received.
    pushes_received: u64,
    /// Acked messages with at least one push.
    pushed_messages: u64,
    /// Acked messages without a push whose conversation was pushed a later message.
    collapsed: u64,
    /// Acked messages without a push and no later push in their conversation.
    lost: u64,
    /// Pushes beyond the first for one message.
    duplicates: u64,
    /// Pushes that could not be read or matched to a message of this run.
    unmatched: u64,
    /// Pushes that reached a recipient other than the message's.
    misrouted: u64,
    /// Messages per second written (written / (last write − start)).
    send_rate: f64,
    /// Pushes per second (received / (last arrival − start)).
    push_rate: f64,
    /// Intended send time → push request arrived at the provider (first push of each
    /// message).
    latency: Latency,
    /// Intended send time → ack at the sender.
    ack_latency: Latency,
    /// Intended send time → written to the socket: the generator's own lateness.
    send_lag: Latency,
    /// From the last intended send time to the last push.
    drain_secs: f64,
    /// Server CPU and RSS: every node's together in cluster mode.
    server_cpu_secs: Option<f64>,
    server_cpu_cores: Option<f64>,
    /// Server CPU over pushes received (when pushes collapsed, the server still
    /// handled every message, so this overstates the cost of one push).
    server_cpu_us_per_push: Option<f64>,
    server_rss_bytes: Option<u64>,
    /// Cores busy: the server, the engines (cluster mode), this generator (which also
    /// runs the fake provider) and everything else.
    cpu: CpuUse,
    /// The server's `parlor_push_latency_seconds` over the run: message timestamp →
    /// first attempt handed to the provider (bucket bounds, not exact quantiles).
    server_push_latency: Histogram,
    /// The server's `parlor_pushes_total` for this provider over the run, by outcome.
    server_pushes: BTreeMap<String, u64>,
    error_codes: BTreeMap<String, u64>,
    environment: super::Environment,
}

/// A push payload (webhook body, or decrypted Web Push body): the message id is all
/// that is needed to match it.
#[derive(Deserialize)]
struct Payload {
    message: String,
}

/// The fields of a server frame the sender looks at.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    cid: Option<&'a str>,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
}

pub async fn run(bench: &Bench, args: &PushArgs, fake: Option<Fake>) -> anyhow::Result<bool> {
    let fake = fake.context("internal: the fake provider was not started")?;
    let n = args.recipients;
    let m = args.messages;
    if n == 0 || m == 0 || !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--recipients, --messages and --rate must be positive");
    }
    let users = bench.users("p", n + 1).await?;
    let sender = &users[0];
    let recipients = &users[1..];
    let specs = recipients
        .iter()
        .map(|r| ConversationSpec::Direct {
            members: [sender.id, r.id],
        })
        .collect();
    let convs = bench.conversations(specs).await?;
    let browsers = register_targets(bench, &fake, args.provider, recipients).await?;

    let (ws, _) = conn::session(
        &bench.target,
        bench.target.source(0),
        &sender.access_token,
        conn::busy_config(),
    )
    .await
    .context("connect the sender")?;
    let (mut sink, stream) = ws.split();
    let count = usize::try_from(m).context("too many messages")?;
    // Every node's figures in cluster mode: any node may send any push.
    let census = bench.census();
    let scrape_before = scrape_nodes(bench, &census).await;
    let sample_before = census.sample();
    let received_before = fake.arrivals.count.load(Ordering::Relaxed);
    let sends = Arc::new(Sends {
        start: Instant::now() + START_DELAY,
        ns_per_message: 1e9 / args.rate,
        written: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        last_write_ns: AtomicU64::new(0),
        ids: (0..count).map(|_| AtomicU64::new(0)).collect(),
        ack_latency: SharedHist::new()?,
        send_lag: SharedHist::new()?,
        error_codes: Mutex::new(BTreeMap::new()),
        lost_connection: Mutex::new(None),
    });
    let reader = tokio::spawn(read_answers(stream, Arc::clone(&sends)));
    let progress = {
        let (sends, arrivals) = (Arc::clone(&sends), Arc::clone(&fake.arrivals));
        Progress::start(move || {
            let t = Instant::now().saturating_duration_since(sends.start);
            format!(
                "push: t={:.0}s written {} acked {} failed {} pushes {}",
                t.as_secs_f64(),
                sends.written.load(Ordering::Relaxed),
                sends.acked.load(Ordering::Relaxed),
                sends.failed.load(Ordering::Relaxed),
                arrivals.count.load(Ordering::Relaxed),
            )
        })
    };

    // The schedule: message i is due at start + i / rate, into conversation i % N.
    let text = crate::traffic::filler(args.text_bytes);
    let mut i = 0u64;
    let mut last_check = Instant::now();
    let mut batch: Vec<u64> = Vec::with_capacity(WRITE_BATCH);
    while i < m {
        let now = Instant::now();
        let due = if now < sends.start {
            0
        } else {
            ((now.duration_since(sends.start).as_nanos() as f64 / sends.ns_per_message) as u64 + 1)
                .min(m)
        };
        while i < due {
            let frame = ClientFrame::Send {
                cid: i.to_string(),
                conv: convs[(i % n as u64) as usize],
                text: text.clone(),
                reply_to: None,
                mentions: Vec::new(),
                mention_all: false,
                attachments: Vec::new(),
            };
            sink.feed(Message::text(serde_json::to_string(&frame)?))
                .await
                .context("write to the sender's connection")?;
            batch.push(i);
            i += 1;
            if batch.len() >= WRITE_BATCH {
                flush(&mut sink, &sends, &mut batch).await?;
            }
        }
        flush(&mut sink, &sends, &mut batch).await?;
        if i >= m {
            break;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            census.check_alive()?;
            last_check = Instant::now();
        }
        tokio::time::sleep_until(sends.intended(i).into()).await;
    }

    // Drain: until every acked message was pushed, nothing arrived for `quiet`, or the
    // deadline.
    let schedule_end = sends.intended(m - 1);
    let deadline = schedule_end + super::secs(args.drain)?;
    let quiet = super::secs(args.quiet)?;
    loop {
        let now = Instant::now();
        let acked = sends.acked.load(Ordering::Relaxed);
        let answered = acked + sends.failed.load(Ordering::Relaxed);
        let received = fake.arrivals.count.load(Ordering::Relaxed) - received_before;
        if answered >= m && received >= acked {
            break;
        }
        let last = fake.epoch + Duration::from_nanos(fake.arrivals.last_ns.load(Ordering::Relaxed));
        if now >= deadline || (now >= schedule_end + quiet && now.duration_since(last) >= quiet) {
            break;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            census.check_alive()?;
            last_check = Instant::now();
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    // The server records a push's outcome after the provider answered: a moment more
    // lets the last ones into its counters and CPU time.
    tokio::time::sleep(SETTLE).await;
    let sample_after = census.sample();
    let cpu = Census::cpu_use(&sample_before, &sample_after);
    let end = Instant::now();
    drop(progress);
    let scrape_after = scrape_nodes(bench, &census).await;
    let _ = sink.close().await;
    reader.abort();

    let arrivals: Vec<Arrival> = std::mem::take(
        &mut *fake
            .arrivals
            .list
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if args.provider == Provider::WebPush {
        eprintln!("decrypting {} pushes", report::count(arrivals.len() as u64));
    }
    let matched = match_pushes(&sends, &arrivals, args.provider, &browsers, n)?;
    let recorded_by_fake = fake.provider.requests().len();

    let written = sends.written.load(Ordering::Relaxed);
    let acked = sends.acked.load(Ordering::Relaxed);
    let failed = sends.failed.load(Ordering::Relaxed);
    let received = arrivals.len() as u64;
    let since_start = |t: Instant| t.saturating_duration_since(sends.start).as_secs_f64();
    let last_arrival = arrivals.iter().map(|a| a.at).max();
    let nodes_after = sample_after.nodes(&census);
    let server_cpu = match (sample_before.nodes(&census), nodes_after) {
        (Some(a), Some(b)) => Some(b.0 - a.0),
        _ => None,
    };
    let wall = end.saturating_duration_since(sends.start).as_secs_f64();
    let mut delta = Scrape::default();
    for (b, a) in scrape_before.iter().zip(&scrape_after) {
        delta.add(&a.delta(b));
    }
    let server_pushes = ["sent", "retried", "failed", "pruned"]
        .iter()
        .map(|outcome| {
            let series = format!(
                "parlor_pushes_total{{outcome=\"{outcome}\",provider=\"{}\"}}",
                args.provider.as_str()
            );
            ((*outcome).to_owned(), delta.get(&series).round() as u64)
        })
        .collect();

    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if let Some(reason) = sends
        .lost_connection
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    {
        problems.push(format!("the sender's connection was lost: {reason}"));
    }
    if matched.lost > 0 {
        problems.push(format!(
            "{} acked messages were never pushed (and no later message of their \
             conversation was)",
            matched.lost
        ));
    }
    if matched.duplicates > 0 {
        problems.push(format!("{} duplicate pushes", matched.duplicates));
    }
    if matched.unmatched > 0 {
        problems.push(format!(
            "{} pushes could not be matched to a message of this run",
            matched.unmatched
        ));
    }
    if matched.misrouted > 0 {
        problems.push(format!(
            "{} pushes reached the wrong recipient",
            matched.misrouted
        ));
    }
    let error_codes = sends
        .error_codes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if !error_codes.is_empty() {
        problems.push(format!("sends answered with errors {error_codes:?}"));
    }
    if recorded_by_fake != arrivals.len() {
        warnings.push(format!(
            "the fake provider recorded {recorded_by_fake} requests, its responder saw {}",
            arrivals.len()
        ));
    }
    if matched.collapsed > 0 {
        warnings.push(format!(
            "{} messages collapsed into a later push of their conversation: pushes took \
             longer than the {:.3} s between two messages of a conversation (use more \
             --recipients or a lower --rate to measure without collapse)",
            matched.collapsed,
            n as f64 / args.rate
        ));
    }
    let unacked = m.saturating_sub(acked + failed);
    if unacked > 0 {
        warnings.push(format!("{unacked} of {m} sends unacknowledged at the end"));
    }
    if let Some(others) = cpu.others_cores {
        if others > 0.25 {
            warnings.push(format!(
                "other processes kept {others:.2} cores busy: the figures are disturbed"
            ));
        }
    }
    let send_lag = sends.send_lag.summary();
    if send_lag.p99_ms > 10.0 {
        warnings.push(format!(
            "sends were written late (send lag p99 {:.1} ms); the latencies include that delay",
            send_lag.p99_ms
        ));
    }

    let report = PushReport {
        scenario: "push",
        ok: problems.is_empty(),
        problems,
        warnings,
        params: args.clone(),
        conversation_interval_secs: report::round3(n as f64 / args.rate),
        written,
        acked,
        failed,
        unacked,
        pushes_received: received,
        pushed_messages: matched.pushed,
        collapsed: matched.collapsed,
        lost: matched.lost,
        duplicates: matched.duplicates,
        unmatched: matched.unmatched,
        misrouted: matched.misrouted,
        send_rate: report::round3(
            report::ratio(
                written as f64,
                sends.last_write_ns.load(Ordering::Relaxed) as f64 / 1e9,
            )
            .unwrap_or(0.0),
        ),
        push_rate: report::round3(
            last_arrival
                .and_then(|t| report::ratio(received as f64, since_start(t)))
                .unwrap_or(0.0),
        ),
        latency: matched.latency,
        ack_latency: sends.ack_latency.summary(),
        send_lag,
        drain_secs: report::round3(
            last_arrival
                .map(|t| t.saturating_duration_since(schedule_end).as_secs_f64())
                .unwrap_or(0.0),
        ),
        server_cpu_secs: server_cpu.map(report::round3),
        server_cpu_cores: server_cpu
            .and_then(|c| report::ratio(c, wall))
            .map(report::round3),
        server_cpu_us_per_push: server_cpu
            .and_then(|c| report::ratio(c * 1e6, received as f64))
            .map(report::round3),
        server_rss_bytes: nodes_after.map(|n| n.1),
        cpu,
        server_push_latency: delta.histogram("parlor_push_latency_seconds"),
        server_pushes,
        error_codes,
        environment: bench.environment(),
    };
    print_report(&report);
    super::print_notes(&report.problems, &report.warnings);
    report::print_json(&report)?;
    Ok(report.ok)
}

/// Every node's `/metrics` (the census scrapes them in cluster mode; with one server,
/// that server's).
async fn scrape_nodes(bench: &Bench, census: &Census<'_>) -> Vec<Scrape> {
    match census.scrape().await {
        Some(all) => all,
        None => vec![Scrape::take(&bench.http).await],
    }
}

/// Registers one push target per recipient on the fake provider; for Web Push, returns
/// each recipient's browser (its keys decrypt that recipient's pushes).
async fn register_targets(
    bench: &Bench,
    fake: &Fake,
    provider: Provider,
    recipients: &[parlor_proto::admin::ProvisionedUser],
) -> anyhow::Result<Vec<Browser>> {
    let started = Instant::now();
    let base = fake.provider.url();
    let browsers = match provider {
        Provider::WebPush => recipients
            .iter()
            .map(|_| Browser::new())
            .collect::<anyhow::Result<Vec<_>>>()?,
        Provider::Webhook => Vec::new(),
    };
    let targets: Vec<NewPushTarget> = (0..recipients.len())
        .map(|k| {
            let url = format!("{base}{}{k}", provider.path_prefix());
            match browsers.get(k) {
                Some(browser) => NewPushTarget::WebPush {
                    endpoint: url,
                    keys: WebPushKeys {
                        p256dh: browser.p256dh(),
                        auth: browser.auth(),
                    },
                },
                None => NewPushTarget::Webhook { url },
            }
        })
        .collect();
    let results: Vec<anyhow::Result<()>> =
        futures_util::stream::iter(recipients.iter().zip(&targets).enumerate())
            .map(|(k, (user, target))| async move {
                bench
                    .http
                    .register_push_target(&user.access_token, target)
                    .await
                    .map(|_| ())
                    .with_context(|| format!("register the push target of recipient {k}"))
            })
            .buffer_unordered(REGISTER_CONCURRENCY)
            .collect()
            .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    eprintln!(
        "registered {} {} targets in {:.2}s",
        report::count(recipients.len() as u64),
        provider.as_str(),
        started.elapsed().as_secs_f64()
    );
    Ok(browsers)
}

/// Flushes the fed frames and records their send lag.
async fn flush(
    sink: &mut futures_util::stream::SplitSink<Ws, Message>,
    sends: &Sends,
    batch: &mut Vec<u64>,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    sink.flush()
        .await
        .context("write to the sender's connection")?;
    let now = Instant::now();
    for i in batch.drain(..) {
        sends.written.fetch_add(1, Ordering::Relaxed);
        sends
            .send_lag
            .record_ns(now.saturating_duration_since(sends.intended(i)).as_nanos() as u64);
    }
    sends.last_write_ns.fetch_max(
        now.saturating_duration_since(sends.start).as_nanos() as u64,
        Ordering::Relaxed,
    );
    Ok(())
}

/// Reads the sender's connection: acks give each message its id; the echoes of its
/// own messages are ignored.
async fn read_answers(mut stream: SplitStream<Ws>, sends: Arc<Sends>) {
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => {
                *sends
                    .lost_connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(format!(
                    "closed by the server: {}",
                    frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default()
                ));
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                *sends
                    .lost_connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(format!("read: {e}"));
                return;
            }
        };
        let now = Instant::now();
        let Ok(answer) = serde_json::from_str::<Answer<'_>>(&text) else {
            continue;
        };
        let Some(index) = answer
            .cid
            .and_then(|c| c.parse::<usize>().ok())
            .filter(|&i| i < sends.ids.len())
        else {
            continue;
        };
        match (answer.kind, answer.id) {
            ("ack", Some(id)) => sends.on_ack(index, id, now),
            ("error", _) => {
                sends.failed.fetch_add(1, Ordering::Relaxed);
                *sends
                    .error_codes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(answer.code.unwrap_or("unknown").to_owned())
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    *sends
        .lost_connection
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some("connection ended".to_owned());
}

struct Matched {
    pushed: u64,
    collapsed: u64,
    lost: u64,
    duplicates: u64,
    unmatched: u64,
    misrouted: u64,
    latency: Latency,
}

/// Reads every push, finds its message by id and its recipient by path, and sorts the
/// acked messages into pushed, collapsed and lost.
fn match_pushes(
    sends: &Sends,
    arrivals: &[Arrival],
    provider: Provider,
    browsers: &[Browser],
    recipients: usize,
) -> anyhow::Result<Matched> {
    let index_of: HashMap<u64, usize> = sends
        .ids
        .iter()
        .enumerate()
        .filter_map(|(i, id)| {
            let id = id.load(Ordering::Relaxed);
            (id != 0).then_some((id, i))
        })
        .collect();
    let latency = SharedHist::new()?;
    let mut pushes = vec![0u32; sends.ids.len()];
    let (mut unmatched, mut misrouted) = (0u64, 0u64);
    for arrival in arrivals {
        let Some(recipient) = arrival
            .path
            .strip_prefix(provider.path_prefix())
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|&k| k < recipients)
        else {
            unmatched += 1;
            continue;
        };
        let plain = match browsers.get(recipient) {
            Some(browser) => match browser.decrypt(&arrival.body) {
                Ok(plain) => plain,
                Err(_) => {
                    unmatched += 1;
                    continue;
                }
            },
            None => arrival.body.clone(),
        };
        let Some(index) = serde_json::from_slice::<Payload>(&plain)
            .ok()
            .and_then(|p| p.message.parse::<u64>().ok())
            .and_then(|id| index_of.get(&id).copied())
        else {
            unmatched += 1;
            continue;
        };
        if index % recipients != recipient {
            misrouted += 1;
            continue;
        }
        pushes[index] += 1;
        if pushes[index] == 1 {
            latency.record_ns(
                arrival
                    .at
                    .saturating_duration_since(sends.intended(index as u64))
                    .as_nanos() as u64,
            );
        }
    }
    // From the last message back: whether a later message of the conversation was
    // pushed decides between collapsed and lost.
    let mut later_pushed = vec![false; recipients];
    let (mut pushed, mut collapsed, mut lost, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    for (i, &count) in pushes.iter().enumerate().rev() {
        let conv = i % recipients;
        if count > 0 {
            pushed += 1;
            duplicates += u64::from(count - 1);
            later_pushed[conv] = true;
        } else if sends.ids[i].load(Ordering::Relaxed) != 0 {
            if later_pushed[conv] {
                collapsed += 1;
            } else {
                lost += 1;
            }
        }
    }
    Ok(Matched {
        pushed,
        collapsed,
        lost,
        duplicates,
        unmatched,
        misrouted,
        latency: latency.summary(),
    })
}

fn print_report(r: &PushReport) {
    let lat = |l: &Latency, v: f64| {
        if l.count == 0 {
            "-".to_owned()
        } else {
            report::ms(v)
        }
    };
    let le = |v: Option<f64>| report::or_na(v, |v| format!("≤ {v} ms"));
    let cores = |v: Option<f64>| report::or_na(v, |v| format!("{v:.2}"));
    let rows: Vec<(&str, String)> = vec![
        ("offered rate (messages)", report::per_sec(r.params.rate)),
        (
            "interval per conversation",
            report::secs(r.conversation_interval_secs),
        ),
        ("sent (written)", report::count(r.written)),
        ("acked", report::count(r.acked)),
        ("failed (error frames)", report::count(r.failed)),
        ("unacked at the end", report::count(r.unacked)),
        ("pushes received", report::count(r.pushes_received)),
        ("messages pushed", report::count(r.pushed_messages)),
        ("collapsed (by design)", report::count(r.collapsed)),
        ("lost", report::count(r.lost)),
        ("duplicates", report::count(r.duplicates)),
        (
            "unmatched / misrouted",
            format!("{} / {}", r.unmatched, r.misrouted),
        ),
        ("achieved send rate", report::per_sec(r.send_rate)),
        ("achieved push rate", report::per_sec(r.push_rate)),
        ("push latency p50", lat(&r.latency, r.latency.p50_ms)),
        ("push latency p90", lat(&r.latency, r.latency.p90_ms)),
        ("push latency p99", lat(&r.latency, r.latency.p99_ms)),
        ("push latency p99.9", lat(&r.latency, r.latency.p999_ms)),
        ("push latency max", lat(&r.latency, r.latency.max_ms)),
        ("ack latency p50", lat(&r.ack_latency, r.ack_latency.p50_ms)),
        ("ack latency p99", lat(&r.ack_latency, r.ack_latency.p99_ms)),
        (
            "generator send lag p99",
            lat(&r.send_lag, r.send_lag.p99_ms),
        ),
        (
            "server: commit → request mean",
            report::or_na(r.server_push_latency.mean_ms, |v| format!("{v:.3} ms")),
        ),
        (
            "server: commit → request p50 / p99",
            format!(
                "{} / {}",
                le(r.server_push_latency.p50_ms_at_most),
                le(r.server_push_latency.p99_ms_at_most)
            ),
        ),
        (
            "server: pushes sent / retried / failed",
            format!(
                "{} / {} / {}",
                report::count(r.server_pushes.get("sent").copied().unwrap_or(0)),
                report::count(r.server_pushes.get("retried").copied().unwrap_or(0)),
                report::count(r.server_pushes.get("failed").copied().unwrap_or(0)),
            ),
        ),
        ("drain after schedule", report::secs(r.drain_secs)),
        ("server CPU", report::or_na(r.server_cpu_secs, report::secs)),
        ("server CPU (cores busy)", cores(r.server_cpu_cores)),
        (
            "server CPU per push",
            super::cpu_us(r.server_cpu_us_per_push),
        ),
        ("server RSS at end", super::rss(r.server_rss_bytes)),
        ("generator CPU (cores busy)", cores(r.cpu.generator_cores)),
        ("other processes' CPU (cores)", cores(r.cpu.others_cores)),
    ];
    report::print_figures(
        &format!(
            "push: {} recipients offline, {} targets, {} messages at {}, {} B text",
            report::count(r.params.recipients as u64),
            r.params.provider.as_str(),
            report::count(r.params.messages),
            report::per_sec(r.params.rate),
            r.params.text_bytes
        ),
        &rows,
    );
}
