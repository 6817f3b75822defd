//! Pipelined sending as fast as the acks come back, to seed messages for `sync` and
//! `history`. Each connection keeps at most `window` sends waiting for their ack (the
//! server itself reads no further than `ws.max_inflight` pending sends per connection).

use crate::conn::{self, Incoming, Ws};
use crate::report::{self, Progress};
use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use parlor_proto::ws::ClientFrame;
use parlor_proto::Id;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// One connection and the conversation of each message it sends, in order.
pub struct Sender {
    pub ws: Ws,
    pub convs: Vec<Id>,
}

#[derive(Debug, Default)]
pub struct BulkOutcome {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub elapsed_secs: f64,
    /// Per conversation: the lowest and highest acknowledged `seq`.
    pub seqs: HashMap<Id, (u64, u64)>,
    /// The highest acknowledged sync position.
    pub max_pos: u64,
    /// The first few errors.
    pub errors: Vec<String>,
}

impl BulkOutcome {
    pub fn rate(&self) -> f64 {
        report::ratio(self.acked as f64, self.elapsed_secs).unwrap_or(0.0)
    }

    /// What went wrong while seeding, for a scenario's report: the count of failed
    /// sends first, then the first errors.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.acked != self.sent {
            problems.push(format!(
                "seeding: {} of {} sends failed",
                self.sent - self.acked,
                self.sent
            ));
        }
        problems.extend(self.errors.iter().map(|e| format!("seeding: {e}")));
        problems
    }
}

struct SenderOutcome {
    acked: u64,
    failed: u64,
    seqs: HashMap<Id, (u64, u64)>,
    max_pos: u64,
    errors: Vec<String>,
}

/// Sends every message of every sender, pipelined, and waits for all answers. The
/// connections are closed afterwards.
/// The text of message `k` of sender `tag`.
pub type TextFn = Arc<dyn Fn(usize, usize) -> String + Send + Sync>;

/// Every message the same filler of `bytes` bytes.
pub fn filler_text(bytes: usize) -> TextFn {
    let text: Arc<str> = Arc::from(crate::traffic::filler(bytes));
    Arc::new(move |_, _| text.to_string())
}

pub async fn send_all(
    senders: Vec<Sender>,
    text: TextFn,
    window: usize,
    label: &str,
) -> anyhow::Result<BulkOutcome> {
    let total: u64 = senders.iter().map(|s| s.convs.len() as u64).sum();
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let _progress = {
        let (acked, label) = (acked.clone(), label.to_owned());
        Progress::start(move || {
            let done = acked.load(Ordering::Relaxed);
            format!(
                "{label}: {}/{} acked ({})",
                report::count(done),
                report::count(total),
                report::per_sec(done as f64 / started.elapsed().as_secs_f64())
            )
        })
    };
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(tag, sender)| {
            tokio::spawn(run_sender(
                sender,
                tag,
                text.clone(),
                window.max(1),
                acked.clone(),
            ))
        })
        .collect();
    let mut outcome = BulkOutcome {
        sent: total,
        ..BulkOutcome::default()
    };
    for task in tasks {
        let one = task.await.map_err(|e| anyhow!("sender task: {e}"))??;
        outcome.acked += one.acked;
        outcome.failed += one.failed;
        outcome.max_pos = outcome.max_pos.max(one.max_pos);
        for (conv, (lo, hi)) in one.seqs {
            let entry = outcome.seqs.entry(conv).or_insert((lo, hi));
            entry.0 = entry.0.min(lo);
            entry.1 = entry.1.max(hi);
        }
        for e in one.errors {
            if outcome.errors.len() < 10 {
                outcome.errors.push(e);
            }
        }
    }
    outcome.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(outcome)
}

async fn run_sender(
    sender: Sender,
    tag: usize,
    text: TextFn,
    window: usize,
    acked_total: Arc<AtomicU64>,
) -> anyhow::Result<SenderOutcome> {
    let (mut sink, mut stream) = sender.ws.split();
    let total = sender.convs.len() as u64;
    let permits = Semaphore::new(window);
    let writer = async {
        for (k, conv) in sender.convs.iter().enumerate() {
            let permit = match permits.try_acquire() {
                Ok(permit) => permit,
                Err(_) => {
                    // The window is full: push out what is buffered, then wait for acks.
                    sink.flush().await?;
                    permits.acquire().await?
                }
            };
            permit.forget();
            let frame = ClientFrame::Send {
                cid: format!("s{tag}.{k}"),
                conv: *conv,
                text: text(tag, k),
                reply_to: None,
                mentions: Vec::new(),
                mention_all: false,
                attachments: Vec::new(),
            };
            sink.feed(Message::text(serde_json::to_string(&frame)?))
                .await?;
        }
        sink.flush().await?;
        Ok::<(), anyhow::Error>(())
    };
    let reader = async {
        let mut out = SenderOutcome {
            acked: 0,
            failed: 0,
            seqs: HashMap::new(),
            max_pos: 0,
            errors: Vec::new(),
        };
        while out.acked + out.failed < total {
            let text = match stream.next().await {
                None => bail!("connection ended after {} acks", out.acked),
                Some(Err(e)) => bail!("read after {} acks: {e}", out.acked),
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => bail!(
                    "closed by the server after {} acks: {}",
                    out.acked,
                    frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default()
                ),
                Some(Ok(_)) => continue,
            };
            let Some(frame) = Incoming::parse(&text) else {
                continue;
            };
            match frame.kind {
                "ack" => {
                    out.acked += 1;
                    acked_total.fetch_add(1, Ordering::Relaxed);
                    permits.add_permits(1);
                    if let (Some(conv), Some(seq)) = (frame.conv, frame.seq) {
                        let entry = out.seqs.entry(conv).or_insert((seq, seq));
                        entry.0 = entry.0.min(seq);
                        entry.1 = entry.1.max(seq);
                    }
                    if let Some(pos) = frame.pos {
                        out.max_pos = out.max_pos.max(pos.0);
                    }
                }
                "error" if frame.cid.is_some() => {
                    out.failed += 1;
                    permits.add_permits(1);
                    if out.errors.len() < 10 {
                        out.errors.push(text.to_string());
                    }
                }
                _ => {}
            }
        }
        Ok::<SenderOutcome, anyhow::Error>(out)
    };
    let ((), outcome) = tokio::try_join!(writer, reader)?;
    if let Ok(ws) = sink.reunite(stream) {
        conn::close(ws).await;
    }
    Ok(outcome)
}
