//! The scenarios, one per subcommand, and what they share: the server, the admin API,
//! the connection target, and the environment section of every report.

pub mod direct;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod search;
pub mod sync;

use crate::conn::Target;
use crate::provision::Admin;
use crate::report;
use crate::server::Server;
use crate::CommonArgs;
use anyhow::{bail, Context};
use parlor_client::Http;
use parlor_proto::admin::{ConversationSpec, ProvisionedUser};
use parlor_proto::Id;
use rand::Rng;
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What every scenario runs against.
pub struct Bench {
    pub server: Server,
    pub admin: Admin,
    pub http: Http,
    pub target: Target,
    /// Prefix of every username of this run, so that runs against a long-lived server
    /// (`--url`) never collide.
    pub run_id: String,
    pub common: CommonArgs,
}

/// Where and how a run happened; part of every report.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub server_url: String,
    pub server_pid: Option<u32>,
    pub server_spawned: bool,
    pub server_bin: Option<String>,
    pub server_version: Option<String>,
    /// `--server-env` settings on top of the benchmark's own.
    pub server_env: Vec<String>,
    pub source_addresses: Vec<String>,
    pub cores: usize,
    pub unix_time: u64,
    pub generator_version: &'static str,
    pub run_id: String,
}

impl Bench {
    pub async fn start(common: &CommonArgs) -> anyhow::Result<Bench> {
        let server = match &common.url {
            Some(url) => {
                let token = common
                    .admin_token
                    .as_deref()
                    .context("--url needs --admin-token")?;
                if common.server_pid.is_none() {
                    eprintln!(
                        "note: without --server-pid there are no server memory and CPU figures"
                    );
                }
                Server::attach(url, token, common.server_pid)
            }
            None => {
                if common.server_pid.is_some() || common.admin_token.is_some() {
                    bail!("--server-pid and --admin-token go with --url");
                }
                let bin = match &common.server_bin {
                    Some(bin) => bin.clone(),
                    None => std::env::current_exe()
                        .context("locate this executable")?
                        .parent()
                        .context("this executable has no directory")?
                        .join("parlor"),
                };
                Server::spawn(&bin, &common.server_env).await?
            }
        };
        eprintln!(
            "server: {} (pid {}{})",
            server.url,
            server
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into()),
            if server.bin.is_some() {
                ", spawned"
            } else {
                ", attached"
            }
        );
        let http = Http::new(&server.url, None).context("HTTP client")?;
        let health = http
            .healthz()
            .await
            .with_context(|| format!("GET {}/healthz", server.url))?;
        if health != 200 {
            bail!("GET /healthz answered {health}");
        }
        let target = Target::resolve(&server.url, common.source_ips).await?;
        let admin = Admin::new(http.clone(), &server.admin_token);
        Ok(Bench {
            server,
            admin,
            http,
            target,
            run_id: run_id(),
            common: common.clone(),
        })
    }

    /// Stops the server if the benchmark started it.
    pub async fn finish(self) {
        self.server.shutdown().await;
    }

    /// Provisions `count` users named `{run_id}{tag}{n}`.
    pub async fn users(&self, tag: &str, count: usize) -> anyhow::Result<Vec<ProvisionedUser>> {
        let started = Instant::now();
        let users = self
            .admin
            .create_users(&format!("{}{tag}", self.run_id), count)
            .await?;
        eprintln!(
            "provisioned {} users in {:.2}s",
            report::count(count as u64),
            started.elapsed().as_secs_f64()
        );
        Ok(users)
    }

    /// `seeders` users, each with a connection, who will send `messages` messages round
    /// robin over `conversations` direct conversations; each conversation belongs to one
    /// seeder and a partner who stays offline, so seeding costs one echo per message and
    /// no fan-out. Returns the users (seeders first), the conversations and the senders.
    pub async fn seeders(
        &self,
        tag: &str,
        seeders: usize,
        conversations: usize,
        messages: usize,
    ) -> anyhow::Result<(Vec<ProvisionedUser>, Vec<Id>, Vec<crate::bulk::Sender>)> {
        let (w, c) = (seeders, conversations);
        let users = self.users(tag, w + c).await?;
        let specs = (0..c)
            .map(|k| ConversationSpec::Direct {
                members: [users[k % w].id, users[w + k].id],
            })
            .collect();
        let convs = self.conversations(specs).await?;
        let mut lists: Vec<Vec<Id>> = vec![Vec::new(); w];
        for j in 0..messages {
            let k = j % c;
            lists[k % w].push(convs[k]);
        }
        let mut senders = Vec::with_capacity(w);
        for (k, convs) in lists.into_iter().enumerate() {
            let (ws, _) = crate::conn::session(
                &self.target,
                self.target.source(k),
                &users[k].access_token,
                crate::conn::busy_config(),
            )
            .await
            .with_context(|| format!("seeder {k}"))?;
            senders.push(crate::bulk::Sender { ws, convs });
        }
        Ok((users, convs, senders))
    }

    pub async fn conversations(&self, specs: Vec<ConversationSpec>) -> anyhow::Result<Vec<Id>> {
        let started = Instant::now();
        let count = specs.len();
        let ids = self.admin.create_conversations(specs).await?;
        eprintln!(
            "provisioned {} conversations in {:.2}s",
            report::count(count as u64),
            started.elapsed().as_secs_f64()
        );
        Ok(ids)
    }

    pub fn environment(&self) -> Environment {
        Environment {
            server_url: self.server.url.clone(),
            server_pid: self.server.pid,
            server_spawned: self.server.bin.is_some(),
            server_bin: self.server.bin.as_ref().map(|b| b.display().to_string()),
            server_version: self.server.version.clone(),
            server_env: self
                .common
                .server_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            source_addresses: self.target.sources.iter().map(|a| a.to_string()).collect(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            generator_version: env!("CARGO_PKG_VERSION"),
            run_id: self.run_id.clone(),
        }
    }
}

/// `b` and five random lowercase letters or digits: a valid username prefix.
fn run_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut id = String::from("b");
    for _ in 0..5 {
        id.push(char::from(CHARS[rng.random_range(0..CHARS.len())]));
    }
    id
}

/// Seconds given on the command line as a duration.
pub fn secs(v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("invalid duration {v}"))
}

/// The figure, or `n/a` when the server's process is unknown.
pub fn cpu_us(v: Option<f64>) -> String {
    report::or_na(v, |v| format!("{v:.1} µs"))
}

pub fn rss(v: Option<u64>) -> String {
    report::or_na(v, report::bytes)
}

/// The figures of traffic phases (one column per phase).
pub fn print_phases(title: &str, phases: &[crate::traffic::PhaseResult], per_member: bool) {
    use crate::stats::Latency;
    let headers: Vec<String> = phases
        .iter()
        .map(|p| format!("{}/s", report::count(p.offered_rate.round() as u64)))
        .collect();
    let mut header: Vec<&str> = vec!["figure"];
    header.extend(headers.iter().map(String::as_str));
    let mut table = report::Table::new(title, &header);
    let mut row = |name: &str, f: &dyn Fn(&crate::traffic::PhaseResult) -> String| {
        let mut cells = vec![name.to_owned()];
        cells.extend(phases.iter().map(f));
        table.row(cells);
    };
    let lat = |l: &Latency, pick: fn(&Latency) -> f64| {
        if l.count == 0 {
            "-".to_owned()
        } else {
            report::ms(pick(l))
        }
    };
    row("offered rate (messages)", &|p| {
        report::per_sec(p.offered_rate)
    });
    row("sent (written)", &|p| report::count(p.written));
    row("acked", &|p| report::count(p.acked));
    row("failed (error frames)", &|p| report::count(p.failed));
    row("unacked after grace", &|p| report::count(p.unacked));
    row("deliveries", &|p| report::count(p.deliveries));
    row("lost (acked, not delivered)", &|p| report::count(p.lost));
    row("duplicates", &|p| report::count(p.duplicates));
    row("achieved send rate", &|p| report::per_sec(p.send_rate));
    row("achieved delivery rate", &|p| {
        report::per_sec(p.delivery_rate)
    });
    row("latency p50", &|p| lat(&p.latency, |l| l.p50_ms));
    row("latency p99", &|p| lat(&p.latency, |l| l.p99_ms));
    row("latency p99.9", &|p| lat(&p.latency, |l| l.p999_ms));
    row("latency max", &|p| lat(&p.latency, |l| l.max_ms));
    if per_member {
        row("last member p50", &|p| {
            lat(&p.last_member_latency, |l| l.p50_ms)
        });
        row("last member p99", &|p| {
            lat(&p.last_member_latency, |l| l.p99_ms)
        });
        row("last member max", &|p| {
            lat(&p.last_member_latency, |l| l.max_ms)
        });
    }
    row("ack latency p50", &|p| lat(&p.ack_latency, |l| l.p50_ms));
    row("ack latency p99", &|p| lat(&p.ack_latency, |l| l.p99_ms));
    row("generator send lag p99", &|p| {
        lat(&p.send_lag, |l| l.p99_ms)
    });
    row("generator send lag max", &|p| {
        lat(&p.send_lag, |l| l.max_ms)
    });
    row("drain after schedule", &|p| report::secs(p.drain_secs));
    row("server CPU", &|p| {
        report::or_na(p.server_cpu_secs, report::secs)
    });
    row("server CPU (cores busy)", &|p| {
        report::or_na(p.server_cpu_cores, |c| format!("{c:.2}"))
    });
    row("server CPU per message", &|p| {
        cpu_us(p.server_cpu_us_per_message)
    });
    if per_member {
        row("server CPU per delivery", &|p| {
            cpu_us(p.server_cpu_us_per_delivery)
        });
    }
    row("server RSS at end", &|p| rss(p.server_rss_bytes));
    row("generator CPU (cores busy)", &|p| {
        report::or_na(p.cpu.generator_cores, |c| format!("{c:.2}"))
    });
    row("other processes' CPU (cores)", &|p| {
        report::or_na(p.cpu.others_cores, |c| format!("{c:.2}"))
    });
    row("seq anomalies", &|p| report::count(p.seq_anomalies));
    row("connections lost", &|p| report::count(p.connections_lost));
    table.print();
}

/// Correctness problems (the run fails) and overload signs (reported only) of a phase.
pub fn judge_phase(
    label: &str,
    p: &crate::traffic::PhaseResult,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    if p.lost > 0 {
        problems.push(format!(
            "{label}: {} acked deliveries never arrived",
            p.lost
        ));
    }
    if p.duplicates > 0 {
        problems.push(format!("{label}: {} duplicate deliveries", p.duplicates));
    }
    if p.seq_anomalies > 0 {
        problems.push(format!("{label}: {} seq anomalies", p.seq_anomalies));
    }
    if p.connections_lost > 0 {
        problems.push(format!("{label}: {} connections lost", p.connections_lost));
    }
    // `unavailable` (write queue full) and `rate_limited` are the server shedding load
    // as documented; any other error code is a failure.
    let (overload, other): (Vec<_>, Vec<_>) = p
        .error_codes
        .iter()
        .partition(|(code, _)| matches!(code.as_str(), "unavailable" | "rate_limited"));
    if !overload.is_empty() {
        warnings.push(format!(
            "{label}: the server shed load: {} sends refused {overload:?}",
            overload.iter().map(|(_, n)| **n).sum::<u64>()
        ));
    }
    if !other.is_empty() {
        problems.push(format!("{label}: sends answered with errors {other:?}"));
    }
    if let Some(others) = p.cpu.others_cores {
        if others > 0.25 {
            warnings.push(format!(
                "{label}: other processes kept {others:.2} cores busy: the figures are disturbed"
            ));
        }
    }
    if p.unacked > 0 {
        warnings.push(format!(
            "{label}: {} of {} sends unacknowledged at the end of the grace period (overload?)",
            p.unacked, p.scheduled
        ));
    }
    if p.send_lag.p99_ms > 10.0 {
        warnings.push(format!(
            "{label}: sends were written late (send lag p99 {:.1} ms; a busy generator or \
             TCP backpressure from the server); the latencies include that delay",
            p.send_lag.p99_ms
        ));
    }
}

pub fn print_notes(problems: &[String], warnings: &[String]) {
    for p in problems {
        println!("  problem: {p}");
    }
    for w in warnings {
        println!("  warning: {w}");
    }
    if !problems.is_empty() || !warnings.is_empty() {
        println!();
    }
}
