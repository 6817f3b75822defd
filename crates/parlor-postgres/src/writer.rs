//! Group commit for appends.
//!
//! `append_message` pushes onto a bounded queue synchronously (so the calls of one task
//! keep their order; a full queue answers `unavailable` at once) and one writer task per
//! node takes everything queued, up to [`MAX_BATCH`], into ONE transaction:
//!
//! 1. lock the touched conversation rows, sorted by id (`FOR UPDATE`);
//! 2. check membership under those locks, so the check is atomic with the append (the
//!    member list is cached per node and reused while `conversations.roster_pos`, which
//!    every membership change moves, has not moved);
//! 3. find duplicates: `message_cids` by `(sender, cid)`, and repeats within the batch;
//!    lock the uploads the batch attaches (`FOR UPDATE`, by id; only when it attaches
//!    any) and check each with `parlor_core::uploads::may_attach`;
//! 4. assign seqs from `conversations.last_seq`, ids from the leased generator;
//! 5. take the positions (the head row, last lock of the transaction);
//! 6. insert messages, client ids, mentions, attachment references, events
//!    (`event_log`), move `last_seq`, the senders' read markers and the attached uploads'
//!    marks — each one statement over `unnest` arrays, pipelined, the optional ones only
//!    when the batch has rows for them;
//! 7. commit, publish the batch's events, and only then answer each caller.
//!
//! A transaction that fails because of a concurrent one (a duplicate client id sent
//! through another node at the same moment: unique violation; a deadlock) is retried
//! once, then run one command at a time, so that one bad command cannot fail the
//! others. Any other failure (PostgreSQL unreachable) answers `unavailable` to the whole
//! batch — nothing is acknowledged that is not committed — and the task goes on with the
//! next batch: the pool opens new connections once the database is back.

use crate::codec::*;
use crate::error::{db_err, is_transient};
use crate::{event_log, now_ms, uploads, Core, Roster};
use futures_util::future::join_all;
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_core::uploads::{may_attach, UploadRecord};
use parlor_proto::rest::{AttachmentView, ConversationKind, MessageView};
use parlor_proto::ws::{MessageEvent, ServerFrame};
use parlor_proto::{ErrorCode, Id};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

/// Upper bound of appends per transaction; keeps the commit latency bounded under load.
pub const MAX_BATCH: usize = 4096;

pub struct Pending {
    pub message: NewMessage,
    /// The search vector, built by the caller's task before queueing.
    pub tsv: String,
    pub reply: oneshot::Sender<Result<Appended>>,
}

pub enum Command {
    Append(Pending),
    /// Commit what is queued before it, answer, stop.
    Shutdown(oneshot::Sender<()>),
}

enum Fail {
    /// Lost to a concurrent transaction: worth running again.
    Transient,
    Unavailable(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Unavailable(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_transient(&e) {
            tracing::warn!(error = %e, "append batch lost to a concurrent transaction");
            Fail::Transient
        } else {
            Fail::Unavailable(db_err(e))
        }
    }
}

pub async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<Command>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(256);
    while let Some(first) = rx.recv().await {
        let mut shutdown = None;
        match first {
            Command::Append(p) => batch.push(p),
            Command::Shutdown(reply) => shutdown = Some(reply),
        }
        while shutdown.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Command::Append(p)) => batch.push(p),
                Ok(Command::Shutdown(reply)) => shutdown = Some(reply),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            process(&core, std::mem::take(&mut batch)).await;
        }
        if let Some(reply) = shutdown {
            rx.close();
            while let Ok(command) = rx.try_recv() {
                match command {
                    Command::Append(p) => {
                        let _ = p.reply.send(Err(Error::unavailable()));
                    }
                    Command::Shutdown(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
            let _ = reply.send(());
            break;
        }
    }
    tracing::info!("postgres writer stopped");
}

async fn process(core: &Core, batch: Vec<Pending>) {
    let results = match attempt(core, &batch).await {
        Ok(results) => results,
        Err(Fail::Unavailable(e)) => vec![Err(e); batch.len()],
        Err(Fail::Transient) => match attempt(core, &batch).await {
            Ok(results) => results,
            Err(Fail::Unavailable(e)) => vec![Err(e); batch.len()],
            Err(Fail::Transient) => {
                let mut results = Vec::with_capacity(batch.len());
                for one in batch.chunks(1) {
                    let result = match attempt(core, one).await {
                        Ok(mut r) => r.pop().unwrap_or_else(|| Err(Error::internal())),
                        Err(Fail::Unavailable(e)) => Err(e),
                        Err(Fail::Transient) => Err(Error::unavailable()),
                    };
                    results.push(result);
                }
                results
            }
        },
    };
    for (pending, result) in batch.into_iter().zip(results) {
        let _ = pending.reply.send(result);
    }
}

/// A locked conversation as the batch sees it.
struct Conv {
    kind: ConversationKind,
    last_seq: u64,
    roster: Arc<Roster>,
}

enum Plan {
    Done(Result<Appended>),
    /// The k-th inserted row.
    Insert(usize),
    /// A repeat of the k-th inserted row's client id within the batch.
    SameAs(usize),
}

struct Row<'a> {
    message: &'a NewMessage,
    tsv: &'a str,
    seq: u64,
    recipients: Arc<[UserId]>,
    /// In the sender's order; with its stored JSON (`None` when there are none).
    attachments: Vec<AttachmentView>,
    attachments_json: Option<String>,
}

type Pipelined<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

async fn attempt(core: &Core, items: &[Pending]) -> Result<Vec<Result<Appended>>, Fail> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await?;

    // 1. Conversation rows, locked in id order (the cluster-wide lock order).
    let mut conv_ids: Vec<i64> = items.iter().map(|p| sql_id(p.message.conv)).collect();
    conv_ids.sort_unstable();
    conv_ids.dedup();
    let stmt = tx
        .prepare_cached(
            "SELECT id, kind, last_seq, roster_pos FROM conversations
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .await?;
    let rows = tx.query(&stmt, &[&conv_ids]).await?;

    // 2. Member lists: cached ones are current while roster_pos has not moved.
    let mut convs: HashMap<ConvId, Conv> = HashMap::with_capacity(rows.len());
    let mut stale: Vec<(i64, i16, i64, u64)> = Vec::new();
    for r in &rows {
        let (id, kind, last_seq, roster_pos): (i64, i16, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let conv = Id(id as u64);
        match core.roster(conv, roster_pos as u64) {
            Some(roster) => {
                convs.insert(
                    conv,
                    Conv {
                        kind: kind_from_code(kind),
                        last_seq: last_seq as u64,
                        roster,
                    },
                );
            }
            None => stale.push((id, kind, last_seq, roster_pos as u64)),
        }
    }
    if !stale.is_empty() {
        let ids: Vec<i64> = stale.iter().map(|s| s.0).collect();
        let stmt = tx
            .prepare_cached(
                "SELECT conv_id, user_id FROM members WHERE conv_id = ANY($1) AND left_pos IS NULL",
            )
            .await?;
        let mut members: HashMap<i64, Vec<UserId>> = HashMap::new();
        for r in tx.query(&stmt, &[&ids]).await? {
            members
                .entry(r.get::<_, i64>(0))
                .or_default()
                .push(id_at(&r, 1));
        }
        for (id, kind, last_seq, roster_pos) in stale {
            let roster = core.remember_roster(
                Id(id as u64),
                roster_pos,
                members.remove(&id).unwrap_or_default(),
            );
            convs.insert(
                Id(id as u64),
                Conv {
                    kind: kind_from_code(kind),
                    last_seq: last_seq as u64,
                    roster,
                },
            );
        }
    }

    // 3. Client ids already stored (by any node, in any conversation).
    let (mut senders, mut cids) = (Vec::new(), Vec::new());
    for p in items {
        if let Some(cid) = &p.message.cid {
            senders.push(sql_id(p.message.sender));
            cids.push(cid.as_str());
        }
    }
    let mut originals: HashMap<(UserId, String), Appended> = HashMap::new();
    if !cids.is_empty() {
        let stmt = tx
            .prepare_cached(
                "SELECT c.sender, c.cid, c.id, c.conv_id, c.seq, c.pos, c.created_at
                 FROM message_cids c JOIN unnest($1::bigint[], $2::text[]) AS v(sender, cid)
                   ON c.sender = v.sender AND c.cid = v.cid",
            )
            .await?;
        for r in tx.query(&stmt, &[&senders, &cids]).await? {
            originals.insert(
                (id_at(&r, 0), r.get(1)),
                Appended {
                    id: id_at(&r, 2),
                    conv: id_at(&r, 3),
                    seq: r.get::<_, i64>(4) as u64,
                    pos: r.get::<_, i64>(5) as u64,
                    ts: r.get(6),
                    duplicate: true,
                },
            );
        }
    }

    // 3b. Uploads the batch attaches, locked so that no deletion or collection removes
    //     one between the check and the commit. A batch without attachments skips this.
    let mut wanted: Vec<i64> = items
        .iter()
        .flat_map(|p| p.message.attachments.iter().map(|id| sql_id(*id)))
        .collect();
    let mut attachable: HashMap<Id, UploadRecord> = HashMap::new();
    if !wanted.is_empty() {
        wanted.sort_unstable();
        wanted.dedup();
        attachable = uploads::load_many(&tx, &wanted, true).await?;
    }

    // 4. Each command in order: checks, duplicates, seqs.
    let mut plans = Vec::with_capacity(items.len());
    let mut inserts: Vec<Row<'_>> = Vec::new();
    let mut in_batch: HashMap<(UserId, &str), usize> = HashMap::new();
    for p in items {
        let m = &p.message;
        let key = m.cid.as_deref().map(|c| (m.sender, c));
        let repeat = |originals: &HashMap<(UserId, String), Appended>,
                      in_batch: &HashMap<(UserId, &str), usize>|
         -> Option<Plan> {
            let (sender, cid) = key?;
            if let Some(original) = originals.get(&(sender, cid.to_owned())) {
                return Some(Plan::Done(Ok(original.clone())));
            }
            in_batch.get(&(sender, cid)).map(|&k| Plan::SameAs(k))
        };
        let Some(conv) = convs.get_mut(&m.conv) else {
            plans
                .push(repeat(&originals, &in_batch).unwrap_or_else(|| {
                    Plan::Done(Err(Error::not_found("conversation not found")))
                }));
            continue;
        };
        if !conv.roster.contains(m.sender) {
            // A late retry of a stored message still gets its acknowledgement, even if
            // the sender has left since.
            plans.push(
                repeat(&originals, &in_batch)
                    .unwrap_or_else(|| Plan::Done(Err(Error::not_member()))),
            );
            continue;
        }
        if let Some(target) = m.reply_to {
            if target == 0 || target > conv.last_seq {
                plans.push(Plan::Done(Err(Error::new(
                    ErrorCode::BadRequest,
                    "reply_to names no message of this conversation",
                ))));
                continue;
            }
        }
        if let Some(stranger) = m.mentions.iter().find(|u| !conv.roster.contains(**u)) {
            plans.push(Plan::Done(Err(Error::new(
                ErrorCode::BadRequest,
                format!("mentioned user {stranger} is not a member"),
            ))));
            continue;
        }
        if m.mention_all && conv.kind != ConversationKind::Group {
            plans.push(Plan::Done(Err(Error::new(
                ErrorCode::BadRequest,
                "@all is only for groups",
            ))));
            continue;
        }
        // Checked before duplicates, as the embedded store does.
        let attachments: Result<Vec<AttachmentView>> = m
            .attachments
            .iter()
            .map(|&id| may_attach(m.sender, id, attachable.get(&id)))
            .collect();
        let (attachments, attachments_json) =
            match attachments.and_then(|a| encode_attachments(&a).map(|json| (a, json))) {
                Ok(checked) => checked,
                Err(e) => {
                    plans.push(Plan::Done(Err(e)));
                    continue;
                }
            };
        if let Some(plan) = repeat(&originals, &in_batch) {
            plans.push(plan);
            continue;
        }
        conv.last_seq += 1;
        if let Some(key) = key {
            in_batch.insert(key, inserts.len());
        }
        plans.push(Plan::Insert(inserts.len()));
        inserts.push(Row {
            message: m,
            tsv: &p.tsv,
            seq: conv.last_seq,
            recipients: Arc::clone(&conv.roster.members),
            attachments,
            attachments_json,
        });
    }
    if inserts.is_empty() {
        drop(tx);
        return Ok(finish(plans, &[], &[], 0, 0));
    }
    let ids = match core.ids.next_ids(inserts.len()) {
        Ok(ids) => ids,
        Err(e) => {
            // No lease: nothing new can be stored, answers that need no id still go.
            let plans = plans
                .into_iter()
                .map(|plan| match plan {
                    Plan::Insert(_) | Plan::SameAs(_) => Plan::Done(Err(e.clone())),
                    done => done,
                })
                .collect();
            drop(tx);
            return Ok(finish(plans, &[], &[], 0, 0));
        }
    };
    let ts = now_ms();

    // 5. Positions, last.
    let positions = core.take_positions(&tx, inserts.len() as u64).await?;
    let first = positions.first;

    // 6. Everything in one pipelined round of statements.
    let n = inserts.len();
    let mut events = Vec::with_capacity(n);
    let (mut m_conv, mut m_seq, mut m_id, mut m_pos, mut m_sender) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut m_cid, mut m_body, mut m_reply, mut m_mentions, mut m_all, mut m_tsv) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut m_attachments: Vec<Option<&str>> = Vec::with_capacity(n);
    let (mut a_upload, mut a_conv, mut a_seq) = (Vec::new(), Vec::new(), Vec::new());
    let (mut c_sender, mut c_cid, mut c_conv, mut c_seq, mut c_id, mut c_pos) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut x_user, mut x_conv, mut x_seq) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_seqs: HashMap<i64, i64> = HashMap::new();
    let mut sender_reads: HashMap<(i64, i64), i64> = HashMap::new();
    for (k, row) in inserts.iter().enumerate() {
        let m = row.message;
        let pos = first + k as u64;
        let (conv, seq, sender) = (sql_id(m.conv), clamp(row.seq), sql_id(m.sender));
        m_conv.push(conv);
        m_seq.push(seq);
        m_id.push(ids[k] as i64);
        m_pos.push(clamp(pos));
        m_sender.push(sender);
        m_cid.push(m.cid.as_deref());
        m_body.push(m.text.as_bytes());
        m_reply.push(m.reply_to.map(clamp));
        m_mentions.push((!m.mentions.is_empty()).then(|| {
            m.mentions
                .iter()
                .map(|u| u.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        }));
        m_all.push(m.mention_all);
        m_tsv.push(row.tsv);
        m_attachments.push(row.attachments_json.as_deref());
        for upload in &m.attachments {
            a_upload.push(sql_id(*upload));
            a_conv.push(conv);
            a_seq.push(seq);
        }
        if let Some(cid) = &m.cid {
            c_sender.push(sender);
            c_cid.push(cid.as_str());
            c_conv.push(conv);
            c_seq.push(seq);
            c_id.push(ids[k] as i64);
            c_pos.push(clamp(pos));
        }
        let mut mentioned: HashSet<UserId> = HashSet::new();
        for user in &m.mentions {
            if mentioned.insert(*user) {
                x_user.push(sql_id(*user));
                x_conv.push(conv);
                x_seq.push(seq);
            }
        }
        last_seqs.insert(conv, seq);
        let read = sender_reads.entry((conv, sender)).or_insert(seq);
        *read = (*read).max(seq);
        events.push(Event {
            pos,
            recipients: Arc::clone(&row.recipients),
            frame: ServerFrame::Message(MessageEvent {
                pos: Id(pos),
                message: MessageView {
                    conv: m.conv,
                    id: Id(ids[k]),
                    seq: row.seq,
                    sender: m.sender,
                    text: m.text.clone(),
                    ts,
                    cid: m.cid.clone(),
                    reply_to: m.reply_to,
                    mentions: m.mentions.clone(),
                    mention_all: m.mention_all,
                    edited_at: None,
                    deleted: false,
                    attachments: row.attachments.clone(),
                },
            }),
        });
    }
    let (l_conv, l_seq): (Vec<i64>, Vec<i64>) = last_seqs.into_iter().unzip();
    let (mut r_conv, mut r_user, mut r_seq) = (Vec::new(), Vec::new(), Vec::new());
    for ((conv, user), seq) in sender_reads {
        r_conv.push(conv);
        r_user.push(user);
        r_seq.push(seq);
    }
    let (e_pos, e_conv, e_body) = event_log::columns(&events)?;

    let insert_messages = tx
        .prepare_cached(
            "INSERT INTO messages (conv_id, seq, id, pos, sender, cid, body, created_at, reply_to,
                                   mentions, mention_all, tsv, attachments)
             SELECT v.conv_id, v.seq, v.id, v.pos, v.sender, v.cid, v.body, $12, v.reply_to,
                    string_to_array(v.mentions, ' ')::bigint[], v.mention_all, v.tsv::tsvector,
                    v.attachments
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::bytea[], $8::bigint[], $9::text[], $10::bool[], $11::text[],
                         $13::text[])
               AS v(conv_id, seq, id, pos, sender, cid, body, reply_to, mentions, mention_all, tsv,
                    attachments)",
        )
        .await?;
    let insert_cids = tx
        .prepare_cached(
            "INSERT INTO message_cids (sender, cid, conv_id, seq, id, pos, created_at)
             SELECT v.*, $7 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[],
                                        $5::bigint[], $6::bigint[])
               AS v(sender, cid, conv_id, seq, id, pos)",
        )
        .await?;
    let insert_mentions = tx
        .prepare_cached(
            "INSERT INTO mentions (user_id, conv_id, seq)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING",
        )
        .await?;
    let update_last_seq = tx
        .prepare_cached(
            "UPDATE conversations c SET last_seq = v.seq
             FROM unnest($1::bigint[], $2::bigint[]) AS v(id, seq) WHERE c.id = v.id",
        )
        .await?;
    // Sending implies having read the conversation up to one's own message.
    let update_reads = tx
        .prepare_cached(
            "UPDATE members m SET read_seq = GREATEST(m.read_seq, v.seq)
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(conv_id, user_id, seq)
             WHERE m.conv_id = v.conv_id AND m.user_id = v.user_id",
        )
        .await?;
    let insert_events = tx.prepare_cached(event_log::INSERT).await?;
    // Prepared only by batches that attach something, so the others pay nothing.
    let mut attached: Vec<i64> = Vec::new();
    let attach = if a_upload.is_empty() {
        None
    } else {
        attached.clone_from(&a_upload);
        attached.sort_unstable();
        attached.dedup();
        let insert_refs = tx
            .prepare_cached(
                "INSERT INTO attachment_refs (upload_id, conv_id, seq)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING",
            )
            .await?;
        // Attached now: never-attached uploads expire, and one carried again is no
        // longer a candidate for collection (see `uploads.rs`).
        let mark_uploads = tx
            .prepare_cached(
                "UPDATE uploads SET attached_at = COALESCE(attached_at, $2), detached_at = NULL
                 WHERE id = ANY($1)",
            )
            .await?;
        Some((insert_refs, mark_uploads))
    };
    type Params<'p> = [&'p (dyn tokio_postgres::types::ToSql + Sync)];
    let p_messages: &Params<'_> = &[
        &m_conv,
        &m_seq,
        &m_id,
        &m_pos,
        &m_sender,
        &m_cid,
        &m_body,
        &m_reply,
        &m_mentions,
        &m_all,
        &m_tsv,
        &ts,
        &m_attachments,
    ];
    let p_last: &Params<'_> = &[&l_conv, &l_seq];
    let p_reads: &Params<'_> = &[&r_conv, &r_user, &r_seq];
    let p_events: &Params<'_> = &[&e_pos, &e_conv, &e_body];
    let p_cids: &Params<'_> = &[&c_sender, &c_cid, &c_conv, &c_seq, &c_id, &c_pos, &ts];
    let p_mentions: &Params<'_> = &[&x_user, &x_conv, &x_seq];
    let p_refs: &Params<'_> = &[&a_upload, &a_conv, &a_seq];
    let p_marks: &Params<'_> = &[&attached, &ts];
    let mut statements: Vec<Pipelined<'_>> = vec![
        Box::pin(tx.execute(&insert_messages, p_messages)),
        Box::pin(tx.execute(&update_last_seq, p_last)),
        Box::pin(tx.execute(&update_reads, p_reads)),
        Box::pin(tx.execute(&insert_events, p_events)),
    ];
    if !c_cid.is_empty() {
        statements.push(Box::pin(tx.execute(&insert_cids, p_cids)));
    }
    if !x_user.is_empty() {
        statements.push(Box::pin(tx.execute(&insert_mentions, p_mentions)));
    }
    if let Some((insert_refs, mark_uploads)) = &attach {
        statements.push(Box::pin(tx.execute(insert_refs, p_refs)));
        statements.push(Box::pin(tx.execute(mark_uploads, p_marks)));
    }
    // Once one statement fails the rest report an aborted transaction: the first real
    // cause decides whether the batch is worth retrying.
    let outcomes = join_all(statements).await;
    let aborted =
        |e: &tokio_postgres::Error| e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION);
    let mut errors: Vec<tokio_postgres::Error> =
        outcomes.into_iter().filter_map(|o| o.err()).collect();
    errors.sort_by_key(aborted);
    if let Some(cause) = errors.into_iter().next() {
        return Err(cause.into());
    }

    // 7. Commit, publish, answer.
    core.commit(tx, positions, events).await?;
    Ok(finish(plans, &inserts, &ids, first, ts))
}

fn finish(
    plans: Vec<Plan>,
    inserts: &[Row<'_>],
    ids: &[u64],
    first: u64,
    ts: i64,
) -> Vec<Result<Appended>> {
    let appended = |k: usize, duplicate: bool| -> Result<Appended> {
        let (Some(row), Some(id)) = (inserts.get(k), ids.get(k)) else {
            return Err(Error::internal());
        };
        Ok(Appended {
            id: Id(*id),
            conv: row.message.conv,
            seq: row.seq,
            pos: first + k as u64,
            ts,
            duplicate,
        })
    };
    plans
        .into_iter()
        .map(|plan| match plan {
            Plan::Done(result) => result,
            Plan::Insert(k) => appended(k, false),
            Plan::SameAs(k) => appended(k, true),
        })
        .collect()
}
