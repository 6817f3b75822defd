//! `uploads`: F files of S MiB uploaded by C concurrent clients (one request each, or
//! tus in chunks), then every file downloaded again and checked. Closed-loop, like
//! `history`: the result is the server's capacity at that concurrency. Each file's
//! first bytes differ, so deduplication never skips work.

use super::Bench;
use crate::report::{self, Progress};
use crate::server::{CpuUse, Snapshot};
use crate::stats::{Latency, SharedHist};
use anyhow::{bail, Context};
use parlor_proto::Id;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct UploadsArgs {
    /// Files to upload.
    #[arg(long, default_value_t = 64)]
    pub files: usize,
    /// Size of each file, in MiB.
    #[arg(long, default_value_t = 8)]
    pub size_mib: usize,
    /// Clients uploading (then downloading) at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Upload through tus in chunks of this many MiB; 0 sends each file in one request.
    #[arg(long, default_value_t = 0)]
    pub tus_chunk_mib: usize,
}

#[derive(Debug, Serialize)]
struct Phase {
    files_ok: u64,
    files_failed: u64,
    secs: f64,
    mib_per_sec: f64,
    /// Per file, request start to the last byte answered.
    latency: Latency,
    server_cpu_secs: Option<f64>,
    server_cpu_ms_per_mib: Option<f64>,
    cpu: CpuUse,
    server_rss_after_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct UploadsReport {
    scenario: &'static str,
    ok: bool,
    problems: Vec<String>,
    params: UploadsArgs,
    upload: Phase,
    download: Phase,
    server_rss_before_bytes: Option<u64>,
    environment: super::Environment,
}

/// The same pseudo-random bytes every run; file `i` differs in its first eight.
fn content(size: usize, i: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let n = out.len().min(8);
    out[..n].copy_from_slice(&(i as u64).to_le_bytes()[..n]);
    out
}

struct Shared {
    latency: SharedHist,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    ids: Mutex<Vec<Option<Id>>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < 10 {
            errors.push(what);
        }
    }
}

pub async fn run(bench: &Bench, args: &UploadsArgs) -> anyhow::Result<bool> {
    if args.files == 0 || args.size_mib == 0 || args.concurrency == 0 {
        bail!("--files, --size-mib and --concurrency must be positive");
    }
    let size = args.size_mib * 1024 * 1024;
    let users = bench.users("up", args.concurrency).await?;
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| u.access_token.clone()).collect());
    let rss_before = bench.server.sample_or_warn().map(|s| s.rss_bytes);
    let mut problems = Vec::new();

    let up = Arc::new(Shared {
        latency: SharedHist::new()?,
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        ids: Mutex::new(vec![None; args.files]),
    });
    let upload = phase(bench, args, "upload", Arc::clone(&up), {
        let (http, tokens, chunk) = (bench.http.clone(), tokens.clone(), args.tus_chunk_mib);
        move |client, i, shared| {
            let (http, tokens) = (http.clone(), tokens.clone());
            async move {
                let token = &tokens[client];
                let bytes = content(size, i);
                let name = format!("file-{i}.bin");
                let result = if chunk == 0 {
                    http.upload(token, &name, "application/octet-stream", bytes)
                        .await
                        .map(|v| v.id)
                } else {
                    tus(&http, token, &name, bytes, chunk * 1024 * 1024).await
                };
                match result {
                    Ok(id) => {
                        shared.ids.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(id);
                        true
                    }
                    Err(e) => {
                        shared.fail(format!("upload {i}: {e}"));
                        false
                    }
                }
            }
        }
    })
    .await?;

    let ids = Arc::new(
        up.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    );
    let down = Arc::new(Shared {
        latency: SharedHist::new()?,
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        ids: Mutex::new(Vec::new()),
    });
    let download = phase(bench, args, "download", Arc::clone(&down), {
        let (http, tokens, ids) = (bench.http.clone(), tokens.clone(), ids.clone());
        move |client, i, shared| {
            let (http, tokens, ids) = (http.clone(), tokens.clone(), ids.clone());
            async move {
                let Some(id) = ids[i] else {
                    return false;
                };
                match http.download_bytes(&tokens[client], id).await {
                    Ok(bytes) if bytes == content(size, i) => true,
                    Ok(bytes) => {
                        shared.fail(format!("download {i}: {} bytes differ", bytes.len()));
                        false
                    }
                    Err(e) => {
                        shared.fail(format!("download {i}: {e}"));
                        false
                    }
                }
            }
        }
    })
    .await?;
    for (name, shared) in [("upload", &up), ("download", &down)] {
        let failed = shared.failed.load(Ordering::Relaxed);
        if failed > 0 {
            problems.push(format!("{failed} {name}s failed"));
            problems.extend(
                shared
                    .errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .cloned(),
            );
        }
    }

    let report = UploadsReport {
        scenario: "uploads",
        ok: problems.is_empty(),
        problems,
        params: args.clone(),
        upload,
        download,
        server_rss_before_bytes: rss_before,
        environment: bench.environment(),
    };
    let mut rows: Vec<(&str, String)> = Vec::new();
    for (label, p) in [("upload", &report.upload), ("download", &report.download)] {
        rows.push((
            label,
            format!("{} files, {} failed", p.files_ok, p.files_failed),
        ));
        rows.push(("  throughput", format!("{:.1} MiB/s", p.mib_per_sec)));
        rows.push(("  per-file latency p50", report::ms(p.latency.p50_ms)));
        rows.push(("  per-file latency p99", report::ms(p.latency.p99_ms)));
        rows.push((
            "  server CPU per MiB",
            report::or_na(p.server_cpu_ms_per_mib, |v| format!("{v:.2} ms")),
        ));
        rows.push(("  cores busy", p.cpu.describe()));
        rows.push(("  server RSS after", super::rss(p.server_rss_after_bytes)));
    }
    rows.push((
        "server RSS before",
        super::rss(report.server_rss_before_bytes),
    ));
    report::print_figures(
        &format!(
            "uploads: {} files of {} MiB, {} clients, {}",
            args.files,
            args.size_mib,
            args.concurrency,
            if args.tus_chunk_mib == 0 {
                "one request per file".to_owned()
            } else {
                format!("tus in {} MiB chunks", args.tus_chunk_mib)
            }
        ),
        &rows,
    );
    super::print_notes(&report.problems, &[]);
    report::print_json(&report)?;
    Ok(report.ok)
}

async fn tus(
    http: &parlor_client::Http,
    token: &str,
    name: &str,
    bytes: Vec<u8>,
    chunk: usize,
) -> parlor_client::Result<Id> {
    let created = http
        .tus_create(token, name, "application/octet-stream", bytes.len() as u64)
        .await?;
    let mut offset = 0u64;
    for part in bytes.chunks(chunk) {
        offset = http
            .tus_patch(token, created.id, offset, part.to_vec())
            .await?;
    }
    Ok(created.id)
}

/// Runs `one(client, file index, shared)` over every file from `concurrency` clients,
/// each taking the next file; file `i` belongs to client `i % concurrency`.
async fn phase<F, Fut>(
    bench: &Bench,
    args: &UploadsArgs,
    label: &'static str,
    shared: Arc<Shared>,
    one: F,
) -> anyhow::Result<Phase>
where
    F: Fn(usize, usize, Arc<Shared>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let before = bench.server.sample_or_warn();
    let snapshot = Snapshot::take(&bench.server);
    let started = Instant::now();
    let size_mib = args.size_mib as f64;
    let total = args.files as u64;
    let progress = {
        let shared = shared.clone();
        Progress::start(move || {
            let done = shared.ok.load(Ordering::Relaxed);
            format!(
                "{label}: {}/{} files ({:.1} MiB/s)",
                done,
                total,
                done as f64 * size_mib / started.elapsed().as_secs_f64()
            )
        })
    };
    let files = args.files;
    let clients = args.concurrency;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (shared, one) = (shared.clone(), one.clone());
            tokio::spawn(async move {
                // Client c takes files c, c + C, c + 2C, …: each uploads its own files and
                // later downloads them with its own token.
                let mut i = client;
                while i < files {
                    let t0 = Instant::now();
                    if one(client, i, shared.clone()).await {
                        shared.latency.record_ns(t0.elapsed().as_nanos() as u64);
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    i += clients;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.context("transfer task")?;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(progress);
    let after = bench.server.sample_or_warn();
    let cpu = CpuUse::between(&snapshot, &Snapshot::take(&bench.server));
    let ok = shared.ok.load(Ordering::Relaxed);
    let server_cpu = match (before, after) {
        (Some(a), Some(b)) => Some(b.cpu_secs - a.cpu_secs),
        _ => None,
    };
    let mib = ok as f64 * size_mib;
    Ok(Phase {
        files_ok: ok,
        files_failed: shared.failed.load(Ordering::Relaxed),
        secs: report::round3(secs),
        mib_per_sec: report::round3(report::ratio(mib, secs).unwrap_or(0.0)),
        latency: shared.latency.summary(),
        server_cpu_secs: server_cpu.map(report::round3),
        server_cpu_ms_per_mib: server_cpu
            .and_then(|c| report::ratio(c * 1e3, mib))
            .map(report::round3),
        cpu,
        server_rss_after_bytes: after.map(|s| s.rss_bytes),
    })
}
