//! The open-loop traffic engine of `direct` and `fanout`.
//!
//! Every message has an *intended* send time, `start + i / rate`, fixed before the run.
//! A scheduler hands each message to its sender's connection when that time comes,
//! whether or not earlier messages were acknowledged, and the latency of a delivery is
//! `receipt time − intended time`. A server that stalls therefore shows its full delay
//! in the figures (no coordinated omission). The generator's own lateness is reported
//! separately as `send_lag` (intended time → written to the socket), so that a slow
//! generator is visible rather than hidden.
//!
//! The client message id carries `phase.index.intended_ns`: the receiving connection
//! needs nothing else to attribute a delivery. All connections live in this process and
//! share one monotonic clock (`epoch`).

use crate::census::{Census, CensusSample, ComponentUse};
use crate::cluster::EngineFigures;
use crate::conn::{self, Incoming, Target, Ws};
use crate::report::{self, Progress};
use crate::scrape::{NodeFigures, Scrape};
use crate::server::CpuUse;
use crate::stats::{Latency, SharedHist};
use anyhow::Context;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parlor_proto::ws::ClientFrame;
use parlor_proto::Id;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Above this, connections must be spread over worker processes (see `idle`).
pub const MAX_CONNECTIONS_IN_PROCESS: usize = 15_000;
/// Handshakes in progress at once while connecting the members.
const CONNECT_CONCURRENCY: usize = 64;
/// Frames written before one flush, at most.
const WRITE_BATCH: usize = 256;
/// How often the drain after the schedule checks whether everything arrived.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The first intended send time lies this far after the phase is set up.
const START_DELAY: Duration = Duration::from_millis(50);

const ACKED: u8 = 1;
const FAILED: u8 = 2;

/// One connected user.
pub struct Member {
    pub user: Id,
    pub token: String,
}

/// Who sends what, and how many deliveries each message should produce.
pub struct Plan {
    pub members: Vec<Member>,
    /// Message `i` is sent by member `routes[i % len].0` into conversation
    /// `routes[i % len].1`.
    pub routes: Vec<(usize, Id)>,
    /// Deliveries each message should produce, not counting the echo to its sender.
    pub recipients: u32,
    pub text_bytes: usize,
}

/// One rate step.
#[derive(Debug, Clone, Copy)]
pub struct PhaseSpec {
    pub rate: f64,
    pub duration: Duration,
    /// How long after the last intended send time to wait for acks and deliveries.
    pub grace: Duration,
}

/// The figures of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Messages per second the schedule asked for.
    pub offered_rate: f64,
    pub duration_secs: f64,
    pub scheduled: u64,
    /// Written to the socket by the generator.
    pub written: u64,
    pub acked: u64,
    /// Answered with an `error` frame.
    pub failed: u64,
    /// Neither acked nor failed by the end of the grace period.
    pub unacked: u64,
    /// Deliveries to recipients (each recipient of each message at most once; the echo
    /// to the sender's own connection is not counted).
    pub deliveries: u64,
    /// Deliveries acked messages should have produced.
    pub expected_deliveries: u64,
    /// Deliveries of acked messages still missing after the grace period.
    pub lost: u64,
    /// Messages that reached every recipient.
    pub fully_delivered: u64,
    /// Messages delivered although their sender never got the ack.
    pub delivered_without_ack: u64,
    pub duplicates: u64,
    /// Copies delivered to the sender's own connection.
    pub echoes: u64,
    /// Messages per second actually written (written / (last write − start)).
    pub send_rate: f64,
    /// Deliveries per second achieved (deliveries / (last delivery − start)).
    pub delivery_rate: f64,
    /// Intended send time → receipt, every recipient of every message.
    pub latency: Latency,
    /// Intended send time → receipt by the last recipient of each message.
    pub last_member_latency: Latency,
    /// Intended send time → ack at the sender.
    pub ack_latency: Latency,
    /// Intended send time → written to the socket: the generator's own lateness.
    pub send_lag: Latency,
    /// From the last intended send time until everything arrived (or the grace ended).
    pub drain_secs: f64,
    /// Server CPU time during the phase (setup excluded), and per unit of work.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU time / wall time: 1.0 is one core fully busy.
    pub server_cpu_cores: Option<f64>,
    pub server_cpu_us_per_message: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// CPU use over the phase: server, generator, and everything else on the machine.
    pub cpu: CpuUse,
    /// Every process's share (cluster mode: each node, PostgreSQL, each NATS server,
    /// Redis, the generator); the `server_*` figures above are the nodes together.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentUse>,
    /// The nodes' own histograms and bus counters over the phase, summed over nodes
    /// (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_figures: Option<NodeFigures>,
    /// What PostgreSQL and NATS did (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engines: Option<EngineFigures>,
    /// `error` frames by code.
    pub error_codes: BTreeMap<String, u64>,
    /// Messages whose per-conversation `seq` did not follow the previous one on some
    /// connection (a gap, a repeat or a reordering).
    pub seq_anomalies: u64,
    /// Connections that ended during the phase.
    pub connections_lost: u64,
    /// Frames of an earlier phase that arrived during this one.
    pub stale_frames: u64,
}

struct Phase {
    id: u32,
    start_ns: u64,
    count: u64,
    recipients: u32,
    received: Vec<AtomicU32>,
    flags: Vec<AtomicU8>,
    /// Handed to a connection's writer by the scheduler.
    scheduled: AtomicU64,
    written: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    echoes: AtomicU64,
    last_write_ns: AtomicU64,
    last_delivery_ns: AtomicU64,
    latency: SharedHist,
    last_member: SharedHist,
    ack_latency: SharedHist,
    send_lag: SharedHist,
    error_codes: Mutex<BTreeMap<String, u64>>,
}

impl Phase {
    fn new(id: u32, start_ns: u64, count: u64, recipients: u32) -> anyhow::Result<Phase> {
        let n = usize::try_from(count).context("too many messages")?;
        Ok(Phase {
            id,
            start_ns,
            count,
            recipients,
            received: (0..n).map(|_| AtomicU32::new(0)).collect(),
            flags: (0..n).map(|_| AtomicU8::new(0)).collect(),
            scheduled: AtomicU64::new(0),
            written: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
            last_write_ns: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            latency: SharedHist::new()?,
            last_member: SharedHist::new()?,
            ack_latency: SharedHist::new()?,
            send_lag: SharedHist::new()?,
            error_codes: Mutex::new(BTreeMap::new()),
        })
    }

    fn on_delivery(&self, index: usize, intended_ns: u64, now_ns: u64) {
        let Some(slot) = self.received.get(index) else {
            return;
        };
        let n = slot.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.recipients {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_ns.fetch_max(now_ns, Ordering::Relaxed);
        let latency = now_ns.saturating_sub(intended_ns);
        self.latency.record_ns(latency);
        if n == self.recipients {
            self.last_member.record_ns(latency);
        }
    }

    fn on_ack(&self, index: usize, intended_ns: u64, now_ns: u64) {
        let Some(flags) = self.flags.get(index) else {
            return;
        };
        if flags.fetch_or(ACKED, Ordering::Relaxed) & ACKED == 0 {
            self.acked.fetch_add(1, Ordering::Relaxed);
            self.ack_latency
                .record_ns(now_ns.saturating_sub(intended_ns));
        }
    }

    fn on_error(&self, index: usize, code: &str) {
        let Some(flags) = self.flags.get(index) else {
            return;
        };
        if flags.fetch_or(FAILED, Ordering::Relaxed) & FAILED == 0 {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        *self
            .error_codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code.to_owned())
            .or_default() += 1;
    }

    /// Every message acked or failed, and every acked one delivered everywhere.
    fn settled(&self) -> bool {
        let acked = self.acked.load(Ordering::Relaxed);
        acked + self.failed.load(Ordering::Relaxed) >= self.count
            && self.deliveries.load(Ordering::Relaxed) >= acked * u64::from(self.recipients)
    }
}

/// Counters over the whole run; phases report their differences.
#[derive(Default)]
struct Counters {
    seq_anomalies: AtomicU64,
    connections_lost: AtomicU64,
    stale_frames: AtomicU64,
    foreign_frames: AtomicU64,
}

struct Shared {
    epoch: Instant,
    current: RwLock<Arc<Phase>>,
    current_id: AtomicU32,
    counters: Counters,
    /// Set when the engine closes its connections: closes are expected from then on.
    closing: AtomicBool,
    lost_reasons: Mutex<Vec<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn current(&self) -> Arc<Phase> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The phase `id`, if it is the current one (refreshing the caller's cached copy).
    fn phase<'a>(&self, cached: &'a mut Arc<Phase>, id: u32) -> Option<&'a Arc<Phase>> {
        if cached.id != id {
            if self.current_id.load(Ordering::Acquire) != id {
                return None;
            }
            *cached = self.current();
        }
        (cached.id == id).then_some(cached)
    }

    fn connection_lost(&self, reason: String) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        self.counters
            .connections_lost
            .fetch_add(1, Ordering::Relaxed);
        let mut reasons = self
            .lost_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if reasons.len() < 10 {
            reasons.push(reason);
        }
    }
}

struct Outgoing {
    text: String,
    intended_ns: u64,
    phase: Arc<Phase>,
}

struct Connection {
    tx: mpsc::UnboundedSender<Outgoing>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

/// All members connected, ready to run phases.
pub struct Traffic {
    shared: Arc<Shared>,
    connections: Vec<Connection>,
    /// The node (index into the targets) each member is connected to.
    node_of: Vec<usize>,
    routes: Vec<(usize, Id)>,
    recipients: u32,
    text: String,
    next_phase: u32,
}

impl Traffic {
    /// Connects every member (one session each) and starts its reader and writer.
    /// Member `k` connects to `targets[k % targets.len()]` (round robin over the nodes
    /// of a cluster, as a load balancer without stickiness would).
    pub async fn connect(targets: &[Target], plan: Plan) -> anyhow::Result<Traffic> {
        anyhow::ensure!(!targets.is_empty(), "no server to connect to");
        anyhow::ensure!(
            plan.members.len() <= MAX_CONNECTIONS_IN_PROCESS,
            "{} connections in one process is too many (at most {MAX_CONNECTIONS_IN_PROCESS}); \
             use fewer users, or the idle scenario, which spreads connections over workers",
            plan.members.len()
        );
        anyhow::ensure!(!plan.routes.is_empty(), "no routes");
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            current: RwLock::new(Arc::new(Phase::new(0, 0, 0, 0)?)),
            current_id: AtomicU32::new(0),
            counters: Counters::default(),
            closing: AtomicBool::new(false),
            lost_reasons: Mutex::new(Vec::new()),
        });
        let total = plan.members.len();
        let opened = Arc::new(AtomicU64::new(0));
        let _progress = {
            let opened = opened.clone();
            Progress::start(move || {
                format!(
                    "connecting: {}/{total} sessions synced",
                    opened.load(Ordering::Relaxed)
                )
            })
        };
        let sessions: Vec<anyhow::Result<(Ws, Id)>> =
            futures_util::stream::iter(plan.members.iter().enumerate())
                .map(|(k, member)| {
                    let opened = opened.clone();
                    let target = &targets[k % targets.len()];
                    async move {
                        let session = conn::session(
                            target,
                            target.source(k / targets.len()),
                            &member.token,
                            conn::busy_config(),
                        )
                        .await
                        .with_context(|| format!("connect member {k}"));
                        opened.fetch_add(1, Ordering::Relaxed);
                        session
                    }
                })
                .buffered(CONNECT_CONCURRENCY)
                .collect()
                .await;
        let mut connections = Vec::with_capacity(total);
        for (session, member) in sessions.into_iter().zip(&plan.members) {
            let (ws, _pos) = session?;
            let (sink, stream) = ws.split();
            let (tx, rx) = mpsc::unbounded_channel();
            connections.push(Connection {
                tx,
                writer: tokio::spawn(writer(sink, rx, shared.clone())),
                reader: tokio::spawn(reader(stream, member.user, shared.clone())),
            });
        }
        Ok(Traffic {
            shared,
            connections,
            node_of: (0..total).map(|k| k % targets.len()).collect(),
            routes: plan.routes,
            recipients: plan.recipients,
            text: filler(plan.text_bytes),
            next_phase: 1,
        })
    }

    /// Runs one open-loop phase and waits (at most the grace period) for its acks and
    /// deliveries.
    pub async fn run_phase(
        &mut self,
        spec: PhaseSpec,
        census: &Census<'_>,
        label: &str,
    ) -> anyhow::Result<PhaseResult> {
        anyhow::ensure!(spec.rate > 0.0, "the rate must be positive");
        let id = self.next_phase;
        self.next_phase += 1;
        let count = (spec.rate * spec.duration.as_secs_f64()).round().max(1.0) as u64;
        let shared = self.shared.clone();
        let start_ns = shared.now_ns() + START_DELAY.as_nanos() as u64;
        let phase = Arc::new(Phase::new(id, start_ns, count, self.recipients)?);
        *shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = phase.clone();
        shared.current_id.store(id, Ordering::Release);
        let counters_before = self.counters();
        let scrape_before = census.scrape().await;
        let engines_before = census.engine_counters().await;
        let sample_before = census.sample();

        let progress = {
            let (phase, shared, label) = (phase.clone(), shared.clone(), label.to_owned());
            Progress::start(move || {
                let t = shared.now_ns().saturating_sub(phase.start_ns) as f64 / 1e9;
                format!(
                    "{label}: t={t:.0}s scheduled {} written {} acked {} failed {} deliveries {} lost connections {}",
                    phase.scheduled.load(Ordering::Relaxed),
                    phase.written.load(Ordering::Relaxed),
                    phase.acked.load(Ordering::Relaxed),
                    phase.failed.load(Ordering::Relaxed),
                    phase.deliveries.load(Ordering::Relaxed),
                    shared.counters.connections_lost.load(Ordering::Relaxed),
                )
            })
        };

        // The schedule runs on a thread of its own: tokio's timers fire on a millisecond
        // wheel, which made every message up to a millisecond late at low rates (and
        // that lateness counts as latency); a thread's sleep wakes within tens of µs.
        let ticker = Ticker {
            start_ns,
            ns_per_message: 1e9 / spec.rate,
            count,
            phase_id: id,
            routes: self.routes.clone(),
            senders: self.connections.iter().map(|c| c.tx.clone()).collect(),
            text: self.text.clone(),
            phase: phase.clone(),
            shared: shared.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let stop = ticker.stop.clone();
        let intended = ticker.intended_fn();
        let mut schedule = tokio::task::spawn_blocking(move || ticker.run());
        let mut last_check = Instant::now();
        loop {
            tokio::select! {
                done = &mut schedule => {
                    done.context("the schedule thread failed")??;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if last_check.elapsed() >= Duration::from_secs(1) {
                if let Err(e) = census.check_alive() {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                last_check = Instant::now();
            }
        }

        // Drain: wait for every ack and delivery, at most the grace period.
        let schedule_end_ns = intended(count - 1);
        let deadline = shared.epoch + Duration::from_nanos(schedule_end_ns) + spec.grace;
        while !phase.settled() && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
            if last_check.elapsed() >= Duration::from_secs(1) {
                census.check_alive()?;
                last_check = Instant::now();
            }
        }
        let end_ns = shared.now_ns();
        let sample_after = census.sample();
        drop(progress);
        let scrape_after = census.scrape().await;
        let engines = census
            .engine_figures(engines_before, phase.acked.load(Ordering::Relaxed))
            .await;
        let counters_after = self.counters();
        let node_figures = match (scrape_before, scrape_after) {
            (Some(before), Some(after)) => {
                let mut total = Scrape::default();
                for (b, a) in before.iter().zip(&after) {
                    total.add(&a.delta(b));
                }
                Some(total.figures())
            }
            _ => None,
        };
        Ok(result(
            &phase,
            spec,
            PhaseEnd {
                end_ns,
                schedule_end_ns,
                census,
                samples: (sample_before, sample_after),
                counters: (counters_before, counters_after),
                node_figures,
                engines,
            },
        ))
    }

    /// The node (index into the targets given to [`Traffic::connect`]) of each member.
    pub fn node_of(&self) -> &[usize] {
        &self.node_of
    }

    fn counters(&self) -> [u64; 3] {
        let c = &self.shared.counters;
        [
            c.seq_anomalies.load(Ordering::Relaxed),
            c.connections_lost.load(Ordering::Relaxed),
            c.stale_frames.load(Ordering::Relaxed),
        ]
    }
}

/// What was measured around a phase, besides the phase's own counters.
struct PhaseEnd<'a, 'b> {
    end_ns: u64,
    schedule_end_ns: u64,
    census: &'a Census<'b>,
    samples: (CensusSample, CensusSample),
    /// Run-wide counters (see [`Traffic::counters`]) before and after.
    counters: ([u64; 3], [u64; 3]),
    node_figures: Option<NodeFigures>,
    engines: Option<EngineFigures>,
}

fn result(phase: &Phase, spec: PhaseSpec, end: PhaseEnd<'_, '_>) -> PhaseResult {
    let PhaseEnd {
        end_ns,
        schedule_end_ns,
        census,
        samples,
        counters,
        node_figures,
        engines,
    } = end;
    let recipients = u64::from(phase.recipients);
    let (mut lost, mut fully, mut without_ack) = (0u64, 0u64, 0u64);
    for (flags, received) in phase.flags.iter().zip(&phase.received) {
        let flags = flags.load(Ordering::Relaxed);
        let received = u64::from(received.load(Ordering::Relaxed)).min(recipients);
        if flags & ACKED != 0 {
            lost += recipients - received;
        } else if received > 0 {
            without_ack += 1;
        }
        if received == recipients {
            fully += 1;
        }
    }
    let acked = phase.acked.load(Ordering::Relaxed);
    let failed = phase.failed.load(Ordering::Relaxed);
    let written = phase.written.load(Ordering::Relaxed);
    let deliveries = phase.deliveries.load(Ordering::Relaxed);
    let elapsed = |ns: u64| ns.saturating_sub(phase.start_ns) as f64 / 1e9;
    let wall = elapsed(end_ns);
    let nodes_before = samples.0.nodes(census);
    let nodes_after = samples.1.nodes(census);
    let cpu = match (nodes_before, nodes_after) {
        (Some(a), Some(b)) => Some(b.0 - a.0),
        _ => None,
    };
    let cpu_use = Census::cpu_use(&samples.0, &samples.1);
    // Every component's share, in cluster mode only: with one embedded server the
    // server and generator rows already say it all.
    let components = if census.has_engines() || census.nodes().len() > 1 {
        census.between(
            &samples.0,
            &samples.1,
            phase.acked.load(Ordering::Relaxed),
            phase.deliveries.load(Ordering::Relaxed),
        )
    } else {
        Vec::new()
    };
    let per = |n: u64| {
        cpu.and_then(|c| report::ratio(c * 1e6, n as f64))
            .map(report::round3)
    };
    PhaseResult {
        offered_rate: spec.rate,
        duration_secs: spec.duration.as_secs_f64(),
        scheduled: phase.count,
        written,
        acked,
        failed,
        unacked: phase.count.saturating_sub(acked + failed),
        deliveries,
        expected_deliveries: acked * recipients,
        lost,
        fully_delivered: fully,
        delivered_without_ack: without_ack,
        duplicates: phase.duplicates.load(Ordering::Relaxed),
        echoes: phase.echoes.load(Ordering::Relaxed),
        send_rate: report::round3(
            report::ratio(
                written as f64,
                elapsed(phase.last_write_ns.load(Ordering::Relaxed)),
            )
            .unwrap_or(0.0),
        ),
        delivery_rate: report::round3(
            report::ratio(
                deliveries as f64,
                elapsed(phase.last_delivery_ns.load(Ordering::Relaxed)),
            )
            .unwrap_or(0.0),
        ),
        latency: phase.latency.summary(),
        last_member_latency: phase.last_member.summary(),
        ack_latency: phase.ack_latency.summary(),
        send_lag: phase.send_lag.summary(),
        drain_secs: report::round3(end_ns.saturating_sub(schedule_end_ns) as f64 / 1e9),
        server_cpu_secs: cpu.map(report::round3),
        server_cpu_cores: cpu.and_then(|c| report::ratio(c, wall)).map(report::round3),
        server_cpu_us_per_message: per(acked),
        server_cpu_us_per_delivery: per(deliveries),
        server_rss_bytes: nodes_after.map(|n| n.1),
        cpu: cpu_use,
        components,
        node_figures,
        engines,
        error_codes: phase
            .error_codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        seq_anomalies: counters.1[0] - counters.0[0],
        connections_lost: counters.1[1] - counters.0[1],
        stale_frames: counters.1[2] - counters.0[2],
    }
}

impl Traffic {
    /// Why connections were lost (the first few), for the problems list.
    pub fn lost_reasons(&self) -> Vec<String> {
        self.shared
            .lost_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Frames with a message id the engine did not make (should be none).
    pub fn foreign_frames(&self) -> u64 {
        self.shared.counters.foreign_frames.load(Ordering::Relaxed)
    }

    /// Closes every connection (writers send a close frame; readers see the server's).
    pub async fn close(self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let mut tasks = Vec::with_capacity(self.connections.len() * 2);
        for connection in self.connections {
            drop(connection.tx);
            tasks.push(connection.writer);
            tasks.push(connection.reader);
        }
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            for abort in aborts {
                abort.abort();
            }
        }
    }
}

/// The ticker sleeps at least this long: at high rates it then hands over a few
/// messages per wake-up instead of waking for each (the generator shares the cores with
/// the server). A message it hands over late counts that lateness as latency.
const MIN_TICK: Duration = Duration::from_micros(100);

/// Hands each message of a phase to its sender's connection at its intended time.
struct Ticker {
    start_ns: u64,
    ns_per_message: f64,
    count: u64,
    phase_id: u32,
    routes: Vec<(usize, Id)>,
    senders: Vec<mpsc::UnboundedSender<Outgoing>>,
    text: String,
    phase: Arc<Phase>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Ticker {
    /// Message i is due at start + i / rate.
    fn intended_fn(&self) -> impl Fn(u64) -> u64 {
        let (start_ns, ns_per_message) = (self.start_ns, self.ns_per_message);
        move |i| start_ns + (i as f64 * ns_per_message) as u64
    }

    fn run(self) -> anyhow::Result<()> {
        let intended = self.intended_fn();
        let mut i = 0u64;
        while i < self.count && !self.stop.load(Ordering::Relaxed) {
            let now = self.shared.now_ns();
            let due = if now < self.start_ns {
                0
            } else {
                (((now - self.start_ns) as f64 / self.ns_per_message) as u64 + 1).min(self.count)
            };
            while i < due {
                let (member, conv) = self.routes[(i % self.routes.len() as u64) as usize];
                let t = intended(i);
                let frame = ClientFrame::Send {
                    // Zero-padded so that each sender's ids increase, like the time-ordered
                    // ids a client should make (the store then skips a lookup per send).
                    cid: format!("{:04}.{i:012}.{t}", self.phase_id),
                    conv,
                    text: self.text.clone(),
                    reply_to: None,
                    mentions: Vec::new(),
                    mention_all: false,
                    attachments: Vec::new(),
                };
                let out = Outgoing {
                    text: serde_json::to_string(&frame)?,
                    intended_ns: t,
                    phase: self.phase.clone(),
                };
                // A closed channel means the connection is gone (already counted as lost);
                // the message then stays unacked.
                let _ = self.senders[member].send(out);
                i += 1;
            }
            self.phase.scheduled.store(i, Ordering::Relaxed);
            if i < self.count {
                let wait = intended(i).saturating_sub(self.shared.now_ns());
                std::thread::sleep(Duration::from_nanos(wait).max(MIN_TICK));
            }
        }
        Ok(())
    }
}

/// Writes queued frames, flushing after each batch, and records the send lag.
async fn writer(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut batch: Vec<(u64, Arc<Phase>)> = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next.take() {
            if let Err(e) = sink.feed(Message::text(out.text)).await {
                shared.connection_lost(format!("write: {e}"));
                return;
            }
            batch.push((out.intended_ns, out.phase));
            if batch.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = sink.flush().await {
            shared.connection_lost(format!("write: {e}"));
            return;
        }
        let now = shared.now_ns();
        for (intended, phase) in batch.drain(..) {
            phase.written.fetch_add(1, Ordering::Relaxed);
            phase.last_write_ns.fetch_max(now, Ordering::Relaxed);
            phase.send_lag.record_ns(now.saturating_sub(intended));
        }
    }
    let _ = sink.close().await;
}

/// Reads every frame of one connection and attributes acks, errors and deliveries.
async fn reader(mut stream: SplitStream<Ws>, me: Id, shared: Arc<Shared>) {
    let mut cached = shared.current();
    let mut last_seq: HashMap<Id, u64> = HashMap::new();
    let counters = &shared.counters;
    while let Some(msg) = stream.next().await {
        let text = match msg {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => {
                shared.connection_lost(format!(
                    "closed by the server: {}",
                    frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default()
                ));
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                shared.connection_lost(format!("read: {e}"));
                return;
            }
        };
        let now = shared.now_ns();
        let Some(frame) = Incoming::parse(&text) else {
            counters.foreign_frames.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if frame.kind == "message" {
            if let (Some(conv), Some(seq)) = (frame.conv, frame.seq) {
                if let Some(prev) = last_seq.insert(conv, seq) {
                    if seq != prev + 1 {
                        counters.seq_anomalies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if !matches!(frame.kind, "message" | "ack" | "error") {
            continue;
        }
        let Some((phase_id, index, intended)) = frame.cid.and_then(parse_cid) else {
            counters.foreign_frames.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(phase) = shared.phase(&mut cached, phase_id) else {
            counters.stale_frames.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match frame.kind {
            "message" if frame.sender == Some(me) => {
                phase.echoes.fetch_add(1, Ordering::Relaxed);
            }
            "message" => phase.on_delivery(index, intended, now),
            "ack" => phase.on_ack(index, intended, now),
            _ => phase.on_error(index, frame.code.unwrap_or("unknown")),
        }
    }
    shared.connection_lost("connection ended".to_owned());
}

/// `phase.index.intended_ns`.
fn parse_cid(cid: &str) -> Option<(u32, usize, u64)> {
    let mut parts = cid.splitn(3, '.');
    let phase = parts.next()?.parse().ok()?;
    let index = parts.next()?.parse().ok()?;
    let intended = parts.next()?.parse().ok()?;
    Some((phase, index, intended))
}

/// Message text of exactly `bytes` ASCII bytes (at least one).
pub fn filler(bytes: usize) -> String {
    const PATTERN: &str = "parlor load test message ";
    PATTERN.chars().cycle().take(bytes.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_round_trip() {
        assert_eq!(parse_cid("3.17.123456789"), Some((3, 17, 123_456_789)));
        assert_eq!(
            parse_cid("0003.000000000017.123456789"),
            Some((3, 17, 123_456_789))
        );
        assert_eq!(parse_cid("x.1.2"), None);
        assert_eq!(parse_cid("1.2"), None);
    }

    #[test]
    fn filler_has_the_requested_size() {
        assert_eq!(filler(0).len(), 1);
        assert_eq!(filler(64).len(), 64);
        assert!(!filler(5).trim().is_empty());
    }
}
