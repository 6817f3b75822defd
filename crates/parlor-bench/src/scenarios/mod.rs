//! The scenarios, one per subcommand, and what they share: the server, the admin API,
//! the connection target, and the environment section of every report.

pub mod direct;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod push;
pub mod search;
pub mod sync;
pub mod uploads;

use crate::census::Census;
use crate::cluster::{ClusterEngines, EnginesInfo};
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
    /// The server, or node 1 of a cluster: its admin API provisions for the whole
    /// cluster, and the scenarios other than `direct` and `fanout` use only it.
    pub server: Server,
    pub admin: Admin,
    pub http: Http,
    /// Connections to `server`.
    pub target: Target,
    /// Nodes 2…N of a cluster (spawned, or attached with `--url a,b,c`).
    pub more_nodes: Vec<Node>,
    /// The engines of a spawned cluster.
    pub engines: Option<ClusterEngines>,
    /// Prefix of every username of this run, so that runs against a long-lived server
    /// (`--url`) never collide.
    pub run_id: String,
    pub common: CommonArgs,
}

/// One more node of a cluster.
pub struct Node {
    pub server: Server,
    pub target: Target,
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
    /// Every node's URL, node 1 first (cluster mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_urls: Vec<String>,
    /// The engines of a spawned cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<EnginesInfo>,
}

impl Bench {
    pub async fn start(common: &CommonArgs) -> anyhow::Result<Bench> {
        let (server, more, engines) = if common.cluster_nodes > 0 {
            if common.url.is_some() {
                bail!("--cluster-nodes spawns its nodes; --url attaches to running ones");
            }
            if !common.server_pid.is_empty() || common.admin_token.is_some() {
                bail!("--server-pid and --admin-token go with --url");
            }
            let bin = server_bin(common)?;
            if !bin.is_file() {
                bail!(
                    "server binary {} not found: build it (`cargo build --release -p parlor`) or pass --server-bin",
                    bin.display()
                );
            }
            let engines = ClusterEngines::launch(
                common.cluster_nodes,
                common.nats_servers,
                common.pg_fsync,
                common.pg_insight,
            )
            .await?;
            let mut nodes = match engines
                .spawn_nodes(&bin, common.cluster_nodes, &common.server_env)
                .await
            {
                Ok(nodes) => nodes,
                Err(e) => {
                    engines.stop().await;
                    return Err(e);
                }
            };
            let first = nodes.remove(0);
            (first, nodes, Some(engines))
        } else if let Some(urls) = &common.url {
            let token = common
                .admin_token
                .as_deref()
                .context("--url needs --admin-token")?;
            let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
            if !common.server_pid.is_empty() && common.server_pid.len() != urls.len() {
                bail!("--server-pid needs one pid per --url");
            }
            if common.server_pid.is_empty() {
                eprintln!("note: without --server-pid there are no server memory and CPU figures");
            }
            let mut servers: Vec<Server> = urls
                .iter()
                .enumerate()
                .map(|(k, url)| Server::attach(url, token, common.server_pid.get(k).copied()))
                .collect();
            let first = servers.remove(0);
            (first, servers, None)
        } else {
            if !common.server_pid.is_empty() || common.admin_token.is_some() {
                bail!("--server-pid and --admin-token go with --url");
            }
            let bin = server_bin(common)?;
            (
                Server::spawn(&bin, &common.server_env).await?,
                Vec::new(),
                None,
            )
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
        let mut more_nodes = Vec::with_capacity(more.len());
        for server in more {
            let target = Target::resolve(&server.url, common.source_ips).await?;
            more_nodes.push(Node { server, target });
        }
        let admin = Admin::new(http.clone(), &server.admin_token);
        Ok(Bench {
            server,
            admin,
            http,
            target,
            more_nodes,
            engines,
            run_id: run_id(),
            common: common.clone(),
        })
    }

    /// Stops the servers if the benchmark started them, then the engines.
    pub async fn finish(self) {
        self.server.shutdown().await;
        for node in self.more_nodes {
            node.server.shutdown().await;
        }
        if let Some(engines) = self.engines {
            engines.stop().await;
        }
    }

    /// Whether there are several nodes.
    pub fn is_cluster(&self) -> bool {
        !self.more_nodes.is_empty() || self.engines.is_some()
    }

    /// Where connections go, node 1 first; clients are spread over them round robin.
    pub fn targets(&self) -> Vec<Target> {
        std::iter::once(self.target.clone())
            .chain(self.more_nodes.iter().map(|n| n.target.clone()))
            .collect()
    }

    /// Every process whose CPU time the traffic scenarios account for.
    pub fn census(&self) -> Census<'_> {
        let nodes = std::iter::once(&self.server)
            .chain(self.more_nodes.iter().map(|n| &n.server))
            .collect();
        Census::new(nodes, self.engines.as_ref())
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
            node_urls: if self.is_cluster() {
                std::iter::once(&self.server)
                    .chain(self.more_nodes.iter().map(|n| &n.server))
                    .map(|s| s.url.clone())
                    .collect()
            } else {
                Vec::new()
            },
            cluster: self.engines.as_ref().map(|e| e.info.clone()),
        }
    }
}

/// `--server-bin`, or `parlor` next to this executable.
fn server_bin(common: &CommonArgs) -> anyhow::Result<std::path::PathBuf> {
    match &common.server_bin {
        Some(bin) => Ok(bin.clone()),
        None => Ok(std::env::current_exe()
            .context("locate this executable")?
            .parent()
            .context("this executable has no directory")?
            .join("parlor")),
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
    print_components(phases, &headers, per_member);
}

/// Cluster mode: every process's cores over `secs` of open, idle connections; nothing
/// with one server (its report stays as it was) or when `secs` is 0.
pub async fn baseline(
    census: &Census<'_>,
    secs: f64,
) -> anyhow::Result<Vec<crate::census::ComponentUse>> {
    if secs <= 0.0 || !census.has_engines() {
        return Ok(Vec::new());
    }
    eprintln!("baseline: {secs} s with the connections open and no traffic");
    Ok(census.baseline(self::secs(secs)?).await)
}

pub fn print_baseline(baseline: &[crate::census::ComponentUse]) {
    if baseline.is_empty() {
        return;
    }
    let mut table = report::Table::new(
        "baseline: cores busy with the connections open and no traffic",
        &["process", "cores"],
    );
    for c in baseline {
        table.row(vec![
            c.name.clone(),
            report::or_na(c.cores, |v| format!("{v:.3}")),
        ]);
    }
    let total: f64 = baseline.iter().filter_map(|c| c.cores).sum();
    table.row(vec!["= everything".into(), format!("{total:.3}")]);
    table.print();
}

/// Cluster mode: where the time went (every process's CPU per message or delivery, its
/// cores and memory), and the nodes' own latency split and bus counters.
fn print_components(phases: &[crate::traffic::PhaseResult], headers: &[String], per_member: bool) {
    use crate::census::Kind;
    let Some(first) = phases.iter().find(|p| !p.components.is_empty()) else {
        return;
    };
    let names: Vec<(String, Kind)> = first
        .components
        .iter()
        .map(|c| (c.name.clone(), c.kind))
        .collect();
    let mut header: Vec<&str> = vec!["process"];
    header.extend(headers.iter().map(String::as_str));
    let unit = if per_member { "delivery" } else { "message" };
    let per = |c: &crate::census::ComponentUse| {
        if per_member {
            c.us_per_delivery
        } else {
            c.us_per_message
        }
    };
    let cell = |p: &crate::traffic::PhaseResult,
                name: &str,
                f: &dyn Fn(&crate::census::ComponentUse) -> String| {
        p.components
            .iter()
            .find(|c| c.name == name)
            .map(f)
            .unwrap_or_else(|| "-".to_owned())
    };
    // Sum of the components of some kinds, per message or delivery.
    let total = |p: &crate::traffic::PhaseResult, pick: &dyn Fn(Kind) -> bool| -> String {
        let values: Option<Vec<f64>> = p
            .components
            .iter()
            .filter(|c| pick(c.kind))
            .map(per)
            .collect();
        report::or_na(values.map(|v| v.iter().sum::<f64>()), |v| format!("{v:.1}"))
    };

    let mut table = report::Table::new(format!("where the time goes: CPU µs per {unit}"), &header);
    for (name, _) in &names {
        let mut cells = vec![name.clone()];
        cells.extend(
            phases
                .iter()
                .map(|p| cell(p, name, &|c| report::or_na(per(c), |v| format!("{v:.1}")))),
        );
        table.row(cells);
    }
    let sums: [(&str, &dyn Fn(Kind) -> bool); 4] = [
        ("= nodes", &|k| k == Kind::Node),
        ("= engines", &Kind::is_engine),
        ("= system (nodes + engines)", &|k| k != Kind::Generator),
        ("= everything", &|_| true),
    ];
    for (label, pick) in sums {
        let mut cells = vec![label.to_owned()];
        cells.extend(phases.iter().map(|p| total(p, pick)));
        table.row(cells);
    }
    table.print();

    let mut table = report::Table::new("cores busy and memory at the end", &header);
    for (name, _) in &names {
        let mut cells = vec![format!("{name} cores")];
        cells.extend(
            phases
                .iter()
                .map(|p| cell(p, name, &|c| report::or_na(c.cores, |v| format!("{v:.2}")))),
        );
        table.row(cells);
    }
    for (name, kind) in &names {
        let what = if *kind == Kind::Postgres {
            "PSS"
        } else {
            "RSS"
        };
        let mut cells = vec![format!("{name} {what}")];
        cells.extend(phases.iter().map(|p| {
            cell(p, name, &|c| {
                let procs = match c.processes {
                    Some(n) if n > 1 => format!(" ({n} proc)"),
                    _ => String::new(),
                };
                format!("{}{procs}", report::or_na(c.memory_bytes, report::bytes))
            })
        }));
        table.row(cells);
    }
    table.print();

    if phases.iter().any(|p| p.node_figures.is_some()) {
        let mut table = report::Table::new(
            "the nodes' own figures (all nodes; histogram bounds, not exact quantiles)",
            &header,
        );
        let mut row = |name: &str, f: &dyn Fn(&crate::scrape::NodeFigures) -> String| {
            let mut cells = vec![name.to_owned()];
            cells.extend(
                phases
                    .iter()
                    .map(|p| p.node_figures.as_ref().map(f).unwrap_or_else(|| "-".into())),
            );
            table.row(cells);
        };
        let ms = |v: Option<f64>| report::or_na(v, |v| format!("{v:.3} ms"));
        let le = |v: Option<f64>| report::or_na(v, |v| format!("≤ {v} ms"));
        row("send → ack mean", &|f| ms(f.send_to_ack.mean_ms));
        row("send → ack p50 / p99", &|f| {
            format!(
                "{} / {}",
                le(f.send_to_ack.p50_ms_at_most),
                le(f.send_to_ack.p99_ms_at_most)
            )
        });
        row("timestamp → hand-off mean", &|f| {
            ms(f.timestamp_to_handoff.mean_ms)
        });
        row("timestamp → hand-off p50 / p99", &|f| {
            format!(
                "{} / {}",
                le(f.timestamp_to_handoff.p50_ms_at_most),
                le(f.timestamp_to_handoff.p99_ms_at_most)
            )
        });
        row("events from the bus (all nodes)", &|f| {
            report::count(f.events_from_bus)
        });
        row("JetStream messages published", &|f| {
            report::count(f.bus_published)
        });
        row("publish failures", &|f| {
            report::count(f.bus_publish_failures)
        });
        row("events gap-filled from PostgreSQL", &|f| {
            report::count(f.bus_gap_filled_events)
        });
        row("outbox overflows", &|f| report::count(f.outbox_overflows));
        table.print();
    }
    print_engines(phases, &header);
}

/// Cluster mode: PostgreSQL's transactions and WAL, the NATS servers' traffic, and with
/// `--pg-insight` what PostgreSQL's backends were doing and its costliest statements.
fn print_engines(phases: &[crate::traffic::PhaseResult], header: &[&str]) {
    if phases.iter().all(|p| p.engines.is_none()) {
        return;
    }
    let mut table = report::Table::new("the engines' own counters", header);
    let mut row = |name: &str, f: &dyn Fn(&crate::cluster::EngineFigures) -> String| {
        let mut cells = vec![name.to_owned()];
        cells.extend(
            phases
                .iter()
                .map(|p| p.engines.as_ref().map(f).unwrap_or_else(|| "-".into())),
        );
        table.row(cells);
    };
    let pg = |f: &crate::cluster::EngineFigures, g: &dyn Fn(&crate::pg::PgFigures) -> String| {
        f.postgres.as_ref().map(g).unwrap_or_else(|| "n/a".into())
    };
    row("PostgreSQL write transactions", &|f| {
        pg(f, &|p| report::count(p.write_transactions.max(0) as u64))
    });
    row("messages per transaction", &|f| {
        pg(f, &|p| {
            report::or_na(p.messages_per_transaction, |v| format!("{v:.2}"))
        })
    });
    row("WAL bytes per message", &|f| {
        pg(f, &|p| {
            report::or_na(p.wal_bytes_per_message, |v| format!("{v:.0}"))
        })
    });
    row("NATS messages in / out (all servers)", &|f| {
        format!(
            "{} / {}",
            report::count(f.nats.in_msgs),
            report::count(f.nats.out_msgs)
        )
    });
    row("NATS bytes in + out per message", &|f| {
        report::or_na(f.nats.bytes_per_message, |v| format!("{v:.0}"))
    });
    table.print();

    for (p, label) in phases.iter().zip(header.iter().skip(1)) {
        let Some(figures) = p.engines.as_ref().and_then(|e| e.postgres.as_ref()) else {
            continue;
        };
        if !figures.active_backends.is_empty() {
            let mut table = report::Table::new(
                format!("{label}: PostgreSQL client backends busy, on average, by wait event"),
                &["state", "backends"],
            );
            for share in &figures.active_backends {
                table.row(vec![share.what.clone(), format!("{:.3}", share.backends)]);
            }
            table.print();
        }
        if !figures.statements.is_empty() {
            let mut table = report::Table::new(
                format!("{label}: PostgreSQL statements by time inside them (wall time, planning + execution)"),
                &["statement", "calls", "exec total", "exec mean", "planning (n)", "µs/message"],
            );
            for st in &figures.statements {
                table.row(vec![
                    st.query.clone(),
                    report::count(st.calls.max(0) as u64),
                    format!("{:.1} ms", st.total_ms),
                    format!("{:.3} ms", st.mean_ms),
                    format!("{:.1} ms ({})", st.plan_ms, st.plans),
                    report::or_na(st.us_per_message, |v| format!("{v:.1}")),
                ]);
            }
            table.print();
        }
    }
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
