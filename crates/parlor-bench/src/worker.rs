//! Worker processes: the same binary re-executed as `parlor-bench worker`, each holding a
//! share of the idle connections, because one process may have at most 20,000 open file
//! descriptors on this kind of machine.
//!
//! Protocol, one JSON object per line:
//! - The coordinator writes one [`HoldJob`] on the worker's stdin and keeps stdin open.
//! - The worker writes [`WorkerMsg`]s on stdout: `progress` while connecting, `ready` once
//!   every connection is synced or has failed, and `closed` after its stdin reached EOF
//!   (the coordinator's "stop") and it closed its connections.
//!
//! If the coordinator dies, the workers' stdin closes too, so they never linger.

use crate::conn::{self, Target, Ws};
use crate::stats;
use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Connection errors (and unexpected closes) kept per worker, to show what went wrong.
const MAX_ERRORS_KEPT: usize = 5;
/// How long a worker waits for its connections to close after "stop".
const CLOSE_ALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What one worker does: open these sessions and hold them until told to stop.
#[derive(Debug, Serialize, Deserialize)]
pub struct HoldJob {
    pub target: Target,
    pub tokens: Vec<String>,
    /// Index of this worker's first connection among all, for spreading the connections
    /// of all workers evenly over the source addresses.
    pub first_index: usize,
    /// Handshakes in progress at once in this worker.
    pub concurrency: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    Progress { open: u64, failed: u64 },
    Ready(Ready),
    Closed { dropped: u64, errors: Vec<String> },
    Fatal { error: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub open: u64,
    pub failed: u64,
    /// Wall-clock times (ns since the Unix epoch, comparable across the processes of one
    /// machine) of the first connect attempt and of the last `synced`.
    pub first_connect_unix_ns: u64,
    pub last_synced_unix_ns: u64,
    /// Connect → `synced` of each session: histogram buckets in µs (see [`stats::export`]).
    pub connect_latency: Vec<(u64, u64)>,
    pub errors: Vec<String>,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn keep_error(errors: &Mutex<Vec<String>>, error: String) {
    let mut errors = errors.lock().unwrap_or_else(PoisonError::into_inner);
    if errors.len() < MAX_ERRORS_KEPT {
        errors.push(error);
    }
}

// ---- the worker process ----

/// Entry point of `parlor-bench worker`.
pub fn run_worker_process() -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match worker_main().await {
            Ok(()) => Ok(true),
            Err(e) => {
                emit(&WorkerMsg::Fatal {
                    error: format!("{e:#}"),
                });
                Err(e)
            }
        }
    })
}

/// Writes one message line on stdout (the coordinator reads it).
fn emit(msg: &WorkerMsg) {
    let Ok(mut line) = serde_json::to_vec(msg) else {
        return;
    };
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&line).and_then(|()| out.flush());
}

async fn worker_main() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).await.context("read the job")?;
    let job: HoldJob = serde_json::from_str(&line).context("decode the job")?;

    let open = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let last_synced = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let close_errors = Arc::new(Mutex::new(Vec::new()));
    let latency = Arc::new(Mutex::new(stats::histogram()?));
    let holds: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let reporter = {
        let (open, failed) = (open.clone(), failed.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                emit(&WorkerMsg::Progress {
                    open: open.load(Ordering::Relaxed),
                    failed: failed.load(Ordering::Relaxed),
                });
            }
        })
    };

    let first_connect = unix_ns();
    let target = Arc::new(job.target);
    futures_util::stream::iter(job.tokens.into_iter().enumerate())
        .for_each_concurrent(job.concurrency.max(1), |(k, token)| {
            let target = target.clone();
            let (open, failed, dropped) = (open.clone(), failed.clone(), dropped.clone());
            let (last_synced, errors, latency) =
                (last_synced.clone(), errors.clone(), latency.clone());
            let (holds, stop_rx, close_errors) =
                (holds.clone(), stop_rx.clone(), close_errors.clone());
            async move {
                let started = Instant::now();
                let source = target.source(job.first_index + k);
                match conn::session(&target, source, &token, conn::idle_config()).await {
                    Ok((ws, _pos)) => {
                        let micros = (started.elapsed().as_micros() as u64).max(1);
                        let _ = latency
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .record(micros);
                        last_synced.fetch_max(unix_ns(), Ordering::Relaxed);
                        open.fetch_add(1, Ordering::Relaxed);
                        let handle = tokio::spawn(hold(ws, stop_rx, dropped, close_errors));
                        holds
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(handle);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        keep_error(&errors, format!("{source:?}: {e:#}"));
                    }
                }
            }
        })
        .await;
    reporter.abort();

    let connect_latency = {
        let h: &Histogram<u64> = &latency.lock().unwrap_or_else(PoisonError::into_inner);
        stats::export(h)
    };
    emit(&WorkerMsg::Ready(Ready {
        open: open.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        first_connect_unix_ns: first_connect,
        last_synced_unix_ns: last_synced.load(Ordering::Relaxed),
        connect_latency,
        errors: errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    }));

    // Hold until stdin ends (or says anything at all).
    line.clear();
    let _ = stdin.read_line(&mut line).await;
    let _ = stop_tx.send(true);
    let handles = std::mem::take(&mut *holds.lock().unwrap_or_else(PoisonError::into_inner));
    let all_closed = futures_util::future::join_all(handles);
    if tokio::time::timeout(CLOSE_ALL_TIMEOUT, all_closed)
        .await
        .is_err()
    {
        keep_error(&close_errors, "not every connection closed in time".into());
    }
    emit(&WorkerMsg::Closed {
        dropped: dropped.load(Ordering::Relaxed),
        errors: close_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    });
    Ok(())
}

/// Keeps one session open: reading answers the server's pings (tungstenite flushes the
/// pong on the next read). A close by the server counts as dropped.
async fn hold(
    mut ws: Ws,
    mut stop: watch::Receiver<bool>,
    dropped: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => {
                conn::close(ws).await;
                return;
            }
            msg = ws.next() => {
                let reason = match msg {
                    Some(Ok(Message::Close(frame))) => format!(
                        "closed by the server: {}",
                        frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default()
                    ),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => format!("connection error: {e}"),
                    None => "connection ended".to_owned(),
                };
                dropped.fetch_add(1, Ordering::Relaxed);
                keep_error(&errors, reason);
                return;
            }
        }
    }
}

// ---- the coordinator's side ----

enum Event {
    Msg(WorkerMsg),
    Exited,
}

/// The running workers of one scenario.
pub struct Pool {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    progress: Arc<Mutex<Vec<(u64, u64)>>>,
}

/// What the workers reported after "stop".
pub struct Stopped {
    pub dropped: u64,
    pub errors: Vec<String>,
}

impl Pool {
    /// Starts one worker process per job (this executable, `worker` subcommand).
    pub async fn spawn(jobs: Vec<HoldJob>) -> anyhow::Result<Pool> {
        let exe = std::env::current_exe().context("locate this executable")?;
        let (tx, events) = mpsc::unbounded_channel();
        let progress = Arc::new(Mutex::new(vec![(0, 0); jobs.len()]));
        let mut pool = Pool {
            children: Vec::new(),
            stdins: Vec::new(),
            events,
            progress: progress.clone(),
        };
        for (index, job) in jobs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawn worker {} ({})", index, exe.display()))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_vec(job)?;
            line.push(b'\n');
            stdin.write_all(&line).await.context("send the job")?;
            stdin.flush().await?;
            let (tx, progress) = (tx.clone(), progress.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<WorkerMsg>(&line) {
                        Ok(WorkerMsg::Progress { open, failed }) => {
                            progress.lock().unwrap_or_else(PoisonError::into_inner)[index] =
                                (open, failed);
                        }
                        Ok(msg) => {
                            let _ = tx.send((index, Event::Msg(msg)));
                        }
                        Err(_) => eprintln!("worker {index}: {line}"),
                    }
                }
                let _ = tx.send((index, Event::Exited));
            });
            pool.children.push(child);
            pool.stdins.push(stdin);
        }
        Ok(pool)
    }

    /// A reader of the connections open and failed so far, over all workers.
    pub fn progress_reader(&self) -> impl Fn() -> (u64, u64) + Send + 'static {
        let progress = self.progress.clone();
        move || {
            progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .fold((0, 0), |(o, f), (wo, wf)| (o + wo, f + wf))
        }
    }

    /// Waits until every worker has reported `ready`.
    pub async fn wait_ready(&mut self) -> anyhow::Result<Vec<Ready>> {
        let mut ready: Vec<Option<Ready>> = vec![None; self.children.len()];
        while ready.iter().any(Option::is_none) {
            let (index, event) = self
                .events
                .recv()
                .await
                .ok_or_else(|| anyhow!("worker channel closed"))?;
            match event {
                Event::Msg(WorkerMsg::Ready(r)) => {
                    // Ready also means "done connecting": its counts are final.
                    self.progress.lock().unwrap_or_else(PoisonError::into_inner)[index] =
                        (r.open, r.failed);
                    ready[index] = Some(r);
                }
                Event::Msg(WorkerMsg::Fatal { error }) => bail!("worker {index} failed: {error}"),
                Event::Msg(_) => {}
                Event::Exited => bail!("worker {index} exited before it was ready"),
            }
        }
        Ok(ready.into_iter().flatten().collect())
    }

    /// Tells every worker to close its connections (EOF on stdin) and collects their
    /// final reports.
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        self.stdins.clear();
        let mut stopped = Stopped {
            dropped: 0,
            errors: Vec::new(),
        };
        let mut done = vec![false; self.children.len()];
        while done.iter().any(|d| !d) {
            let Some((index, event)) = self.events.recv().await else {
                break;
            };
            match event {
                Event::Msg(WorkerMsg::Closed { dropped, errors }) => {
                    stopped.dropped += dropped;
                    stopped
                        .errors
                        .extend(errors.into_iter().map(|e| format!("worker {index}: {e}")));
                    done[index] = true;
                }
                Event::Msg(WorkerMsg::Fatal { error }) => {
                    stopped
                        .errors
                        .push(format!("worker {index} failed: {error}"));
                    done[index] = true;
                }
                Event::Msg(_) => {}
                Event::Exited => {
                    if !done[index] {
                        stopped
                            .errors
                            .push(format!("worker {index} exited without its final report"));
                        done[index] = true;
                    }
                }
            }
        }
        for child in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        Ok(stopped)
    }
}
