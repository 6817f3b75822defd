//! The single writer thread. Every write of the store is a [`Command`] on one channel; the
//! thread takes whatever is queued (up to [`MAX_BATCH`]), runs it in one transaction and
//! commits once (group commit), then answers each command and publishes the batch's
//! events to the bus, in commit order. One writer means sequence numbers and positions
//! are assigned without locks and are gap-free by construction.

use super::codec::{change_code, role_code, role_from_code};
use super::contacts::ContactsCache;
use super::search_index::{IndexOp, SearchIndex};
use parking_lot::RwLock;
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_core::ports::Bus;
use parlor_core::rules::membership;
use parlor_core::snowflake::Snowflake;
use parlor_proto::rest::{ConversationInfo, ConversationKind, MessageView, Role, UserView};
use parlor_proto::ws::{
    DeletedEvent, DeliveredEvent, EditedEvent, MemberChange, MemberEvent, MessageEvent, ReadEvent,
    ServerFrame,
};
use parlor_proto::{ErrorCode, Id};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

mod accounts;
mod client_ids;
mod conversations;
mod messages;
mod tail;
mod uploads;

/// Upper bound of commands per transaction; keeps the commit latency bounded under load.
pub const MAX_BATCH: usize = 4096;
pub use client_ids::DEFAULT_TARGET as DEFAULT_PENDING_CLIENT_IDS;
pub use tail::DEFAULT_TARGET as DEFAULT_PENDING_MESSAGES;

type Reply<T> = oneshot::Sender<Result<T>>;

pub enum Command {
    Ping(Reply<()>),
    /// Commit what is queued, answer, then stop: later commands fail with `unavailable`.
    Shutdown(Reply<()>),
    CreateUser {
        username: String,
        password_hash: String,
        reply: Reply<UserView>,
    },
    CreateSession {
        user: UserId,
        device_name: String,
        refresh_hash: [u8; 32],
        expires_at: i64,
        reply: Reply<DeviceId>,
    },
    RotateRefresh {
        presented: [u8; 32],
        next: [u8; 32],
        expires_at: i64,
        reply: Reply<RefreshOutcome>,
    },
    RevokeSession {
        device: DeviceId,
        reply: Reply<()>,
    },
    OpenDirect {
        a: UserId,
        b: UserId,
        reply: Reply<(ConversationInfo, bool)>,
    },
    CreateGroup {
        owner: UserId,
        name: String,
        members: Vec<UserId>,
        limit: u32,
        reply: Reply<ConversationInfo>,
    },
    Membership {
        command: MembershipCommand,
        limit: u32,
        reply: Reply<()>,
    },
    MarkRead {
        user: UserId,
        conv: ConvId,
        seq: u64,
        reply: Reply<u64>,
    },
    Append {
        message: NewMessage,
        reply: Reply<Appended>,
    },
    Edit {
        actor: UserId,
        conv: ConvId,
        seq: u64,
        text: String,
        reply: Reply<MessageView>,
    },
    Delete {
        actor: UserId,
        conv: ConvId,
        seq: u64,
        reply: Reply<()>,
    },
    Delivered {
        user: UserId,
        conv: ConvId,
        seq: u64,
        reply: Reply<u64>,
    },
    SetLastSeen {
        user: UserId,
        at: i64,
        reply: Reply<()>,
    },
    CreateUpload {
        upload: parlor_core::uploads::NewUpload,
        quota: u64,
        reply: Reply<parlor_core::uploads::UploadRecord>,
    },
    AdvanceUpload {
        id: Id,
        from: u64,
        to: u64,
        reply: Reply<parlor_core::uploads::UploadRecord>,
    },
    CompleteUpload {
        id: Id,
        blob: parlor_core::uploads::NewBlob,
        reply: Reply<(parlor_core::uploads::UploadRecord, bool)>,
    },
    DeleteUpload {
        id: Id,
        reply: Reply<parlor_core::uploads::Garbage>,
    },
    CollectGarbage {
        unattached_before_ms: i64,
        reply: Reply<parlor_core::uploads::Garbage>,
    },
}

/// What the writer remembers about a conversation so that a send needs one INSERT.
struct ConvState {
    info: ConversationInfo,
    last_seq: u64,
    roles: HashMap<UserId, Role>,
    /// Current members, shared by every event of the conversation until membership changes.
    recipients: Arc<[UserId]>,
}

impl ConvState {
    fn refresh_recipients(&mut self) {
        let mut users: Vec<UserId> = self.roles.keys().copied().collect();
        users.sort_unstable();
        self.recipients = users.into();
    }
}

/// State shared between the writer and the readers.
pub struct Shared {
    /// Newest committed position; readers bound their backlog by it.
    pub head: AtomicU64,
    /// Revoked device sessions, checked on every authenticated request without I/O.
    pub revoked: RwLock<HashSet<u64>>,
    /// Current members of the conversations the writer has loaded. Only the writer
    /// inserts, so a reader can never put back a list older than the writer's.
    pub members: RwLock<HashMap<ConvId, Arc<[UserId]>>>,
    /// Filled by readers; the writer invalidates it after each commit that changed
    /// membership.
    pub contacts: ContactsCache,
}

pub struct Writer {
    conn: Connection,
    ids: Snowflake,
    pos: u64,
    convs: HashMap<ConvId, ConvState>,
    shared: Arc<Shared>,
    bus: Arc<dyn Bus>,
    // Per-batch buffers, reused across batches.
    events: Vec<Event>,
    replies: Vec<Box<dyn FnOnce(bool) + Send>>,
    sender_reads: HashMap<(ConvId, UserId), u64>,
    cids: client_ids::PendingCids,
    tail: tail::Tail,
    stopping: bool,
    search: Option<Arc<SearchIndex>>,
    index_ops: Vec<(u64, IndexOp)>,
    /// Users whose contacts this batch changed (members, before and after, of every
    /// conversation whose membership it touched).
    contacts_changed: Vec<UserId>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn db_err(e: rusqlite::Error) -> Error {
    tracing::error!(error = %e, "store write failed");
    Error::unavailable()
}

impl Writer {
    pub fn new(
        conn: Connection,
        machine: u16,
        shared: Arc<Shared>,
        bus: Arc<dyn Bus>,
        search: Option<Arc<SearchIndex>>,
        pending_client_ids: usize,
        pending_messages: usize,
    ) -> rusqlite::Result<Self> {
        let mut ids = Snowflake::new(machine);
        let pos: u64 = conn.query_row(
            // Each conversation's newest message holds its highest position (see
            // `positions.rs`), so this reads one row per conversation, not every message.
            "SELECT MAX(COALESCE((SELECT MAX((SELECT pos FROM messages m WHERE m.conv_id = c.id
                                              ORDER BY m.seq DESC LIMIT 1)) FROM conversations c), 0),
                        COALESCE((SELECT MAX(pos) FROM message_tail), 0),
                        COALESCE((SELECT MAX(pos) FROM member_events), 0),
                        COALESCE((SELECT MAX(pos) FROM message_changes), 0),
                        COALESCE((SELECT MAX(read_pos) FROM members), 0))",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;
        for sql in [
            "SELECT MAX(id) FROM users",
            "SELECT MAX(id) FROM conversations",
            "SELECT MAX(id) FROM sessions",
        ] {
            if let Some(max) = conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))? {
                ids.observe(max as u64);
            }
        }
        let max_msg: Option<i64> =
            conn.query_row("SELECT MAX(id) FROM messages", [], |r| r.get(0))?;
        if let Some(max) = max_msg {
            ids.observe(max as u64);
        }
        shared.head.store(pos, Ordering::Release);
        let cids = client_ids::PendingCids::load(&conn, pending_client_ids)?;
        if cids.len() > 0 {
            tracing::info!(
                ids = cids.len(),
                "reloaded client message ids not yet indexed"
            );
        }
        let tail = tail::Tail::load(&conn, pending_messages)?;
        if tail.pending() > 0 {
            tracing::info!(
                messages = tail.pending(),
                "reloaded messages not yet copied from the tail"
            );
        }
        Ok(Writer {
            tail,
            conn,
            ids,
            pos,
            convs: HashMap::new(),
            shared,
            bus,
            events: Vec::new(),
            replies: Vec::new(),
            sender_reads: HashMap::new(),
            cids,
            stopping: false,
            search,
            index_ops: Vec::new(),
            contacts_changed: Vec::new(),
        })
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(256);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.execute_batch(&mut batch);
            if self.stopping {
                break;
            }
        }
        // Shutdown requested or every sender gone: leave a compact database behind, with
        // every message in `message_rows` and every client id indexed, so that the next
        // start has nothing to reload.
        let pos = self.pos;
        let indexed = self.conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            self.tail
                .copy_all(&self.conn, pos)
                .and_then(|()| self.cids.write_all(&self.conn, pos))
                .and_then(|()| self.conn.execute_batch("COMMIT"))
        });
        match indexed {
            Ok(()) => self.cids.committed(),
            Err(e) => {
                tracing::warn!(error = %e, "indexing client ids at shutdown failed");
                let _ = self.conn.execute_batch("ROLLBACK");
            }
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "final checkpoint failed");
        }
        tracing::info!("store writer stopped");
    }

    fn execute_batch(&mut self, batch: &mut Vec<Command>) {
        let start_pos = self.pos;
        let began = self.conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = began {
            tracing::error!(error = %e, "cannot begin write transaction");
            for command in batch.drain(..) {
                self.answer_without_commit(command);
            }
            return;
        }
        for command in batch.drain(..) {
            self.execute(command);
        }
        let pos = self.pos;
        let committed = self
            .flush_sender_reads()
            .and_then(|()| self.tail.copy_due(&self.conn, pos))
            .and_then(|()| self.cids.write_due(&self.conn, pos))
            .and_then(|()| self.conn.execute_batch("COMMIT"));
        let ok = match committed {
            Ok(()) => {
                self.cids.committed();
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed, batch rolled back");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.cids.rolled_back(start_pos);
                self.tail.reload(&self.conn);
                self.pos = start_pos;
                self.convs.clear();
                self.shared.members.write().clear();
                self.events.clear();
                self.index_ops.clear();
                false
            }
        };
        if !self.contacts_changed.is_empty() {
            self.shared
                .contacts
                .invalidate(self.contacts_changed.drain(..));
        }
        if ok {
            self.shared.head.store(self.pos, Ordering::Release);
            if !self.events.is_empty() {
                let events: Arc<[Event]> = self.events.drain(..).collect();
                self.bus.publish(events);
            }
            if let Some(search) = &self.search {
                search.feed(std::mem::take(&mut self.index_ops));
            }
        }
        for reply in self.replies.drain(..) {
            reply(ok);
        }
    }

    fn answer_without_commit(&mut self, command: Command) {
        fn fail<T>(reply: Reply<T>) {
            let _ = reply.send(Err(Error::unavailable()));
        }
        match command {
            Command::Ping(reply) | Command::Shutdown(reply) => fail(reply),
            Command::CreateUser { reply, .. } => fail(reply),
            Command::CreateSession { reply, .. } => fail(reply),
            Command::RotateRefresh { reply, .. } => fail(reply),
            Command::RevokeSession { reply, .. } => fail(reply),
            Command::OpenDirect { reply, .. } => fail(reply),
            Command::CreateGroup { reply, .. } => fail(reply),
            Command::Membership { reply, .. } => fail(reply),
            Command::MarkRead { reply, .. } => fail(reply),
            Command::Append { reply, .. } => fail(reply),
            Command::Edit { reply, .. } => fail(reply),
            Command::Delete { reply, .. } | Command::SetLastSeen { reply, .. } => fail(reply),
            Command::Delivered { reply, .. } => fail(reply),
            Command::CreateUpload { reply, .. } | Command::AdvanceUpload { reply, .. } => {
                fail(reply)
            }
            Command::CompleteUpload { reply, .. } => fail(reply),
            Command::DeleteUpload { reply, .. } | Command::CollectGarbage { reply, .. } => {
                fail(reply)
            }
        }
    }

    fn execute(&mut self, command: Command) {
        match command {
            Command::CreateUpload {
                upload,
                quota,
                reply,
            } => {
                let result = self.savepoint(|w| w.create_upload(upload, quota));
                self.finish(reply, result)
            }
            Command::AdvanceUpload {
                id,
                from,
                to,
                reply,
            } => {
                let result = self.savepoint(|w| w.advance_upload(id, from, to));
                self.finish(reply, result)
            }
            Command::CompleteUpload { id, blob, reply } => {
                let result = self.savepoint(|w| w.complete_upload(id, blob));
                self.finish(reply, result)
            }
            Command::DeleteUpload { id, reply } => {
                let result = self.savepoint(|w| w.delete_upload(id));
                self.finish(reply, result)
            }
            Command::CollectGarbage {
                unattached_before_ms,
                reply,
            } => {
                let result = self.savepoint(|w| w.collect_garbage(unattached_before_ms));
                self.finish(reply, result)
            }
            Command::Ping(reply) => self.finish(reply, Ok(())),
            Command::Shutdown(reply) => {
                self.stopping = true;
                self.finish(reply, Ok(()))
            }
            Command::CreateUser {
                username,
                password_hash,
                reply,
            } => {
                let result = self.savepoint(|w| w.create_user(username, &password_hash));
                self.finish(reply, result)
            }
            Command::CreateSession {
                user,
                device_name,
                refresh_hash,
                expires_at,
                reply,
            } => {
                let result = self.create_session(user, &device_name, refresh_hash, expires_at);
                self.finish(reply, result)
            }
            Command::RotateRefresh {
                presented,
                next,
                expires_at,
                reply,
            } => {
                let result = self.savepoint(|w| w.rotate_refresh(presented, next, expires_at));
                self.finish(reply, result)
            }
            Command::RevokeSession { device, reply } => {
                let result = self.revoke(device);
                self.finish(reply, result)
            }
            Command::OpenDirect { a, b, reply } => {
                let result = self.savepoint(|w| w.open_direct(a, b));
                self.finish(reply, result)
            }
            Command::CreateGroup {
                owner,
                name,
                members,
                limit,
                reply,
            } => {
                let result = self.savepoint(|w| w.create_group(owner, name, &members, limit));
                self.finish(reply, result)
            }
            Command::Membership {
                command,
                limit,
                reply,
            } => {
                let conv = match &command {
                    MembershipCommand::Add { conv, .. }
                    | MembershipCommand::Remove { conv, .. }
                    | MembershipCommand::Leave { conv, .. }
                    | MembershipCommand::SetRole { conv, .. } => *conv,
                };
                let result = self.savepoint(|w| w.membership(command, limit));
                if result.is_err() {
                    // The cached state may be ahead of the rolled-back rows.
                    self.convs.remove(&conv);
                }
                self.finish(reply, result)
            }
            Command::MarkRead {
                user,
                conv,
                seq,
                reply,
            } => {
                let result = self.mark_read(user, conv, seq);
                self.finish(reply, result)
            }
            Command::Append { message, reply } => {
                // Plain messages skip the savepoint: every check precedes their one write.
                let result = if message.attachments.is_empty() {
                    self.append(message)
                } else {
                    self.savepoint(|w| w.append(message))
                };
                self.finish(reply, result)
            }
            Command::Edit {
                actor,
                conv,
                seq,
                text,
                reply,
            } => {
                let result = self
                    .copy_conv(conv)
                    .and_then(|()| self.savepoint(|w| w.edit(actor, conv, seq, text)));
                self.finish(reply, result)
            }
            Command::Delete {
                actor,
                conv,
                seq,
                reply,
            } => {
                let result = self
                    .copy_conv(conv)
                    .and_then(|()| self.savepoint(|w| w.delete(actor, conv, seq)));
                self.finish(reply, result)
            }
            Command::Delivered {
                user,
                conv,
                seq,
                reply,
            } => {
                let result = self.delivered(user, conv, seq);
                self.finish(reply, result)
            }
            Command::SetLastSeen { user, at, reply } => {
                let result = self
                    .conn
                    .prepare_cached("UPDATE users SET last_seen = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![user.0 as i64, at]))
                    .map(|_| ())
                    .map_err(db_err);
                self.finish(reply, result)
            }
        }
    }

    /// Queues the answer; it is sent after the commit, or replaced by `unavailable` if the
    /// commit fails, so nothing is acknowledged that is not stored.
    fn finish<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T>) {
        self.replies.push(Box::new(move |committed| {
            let result = if committed {
                result
            } else {
                Err(Error::unavailable())
            };
            let _ = reply.send(result);
        }));
    }

    /// Runs a multi-statement command so that its failure leaves no partial write and
    /// no event behind.
    fn savepoint<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("SAVEPOINT cmd").map_err(db_err)?;
        let (pos, events) = (self.pos, self.events.len());
        let result = f(self);
        let end = if result.is_ok() {
            "RELEASE cmd"
        } else {
            self.pos = pos;
            self.events.truncate(events);
            "ROLLBACK TO cmd; RELEASE cmd"
        };
        self.conn.execute_batch(end).map_err(db_err)?;
        result
    }

    /// Edits and deletes update `message_rows` only, so the conversation's tail rows are
    /// copied first, outside the command's savepoint (see `tail.rs`).
    fn copy_conv(&mut self, conv: ConvId) -> Result<()> {
        self.tail
            .copy_conv(&self.conn, conv.0 as i64)
            .map_err(db_err)
    }

    fn next_pos(&mut self) -> u64 {
        self.pos += 1;
        self.pos
    }
}

fn sorted<'a>(users: impl Iterator<Item = &'a UserId>) -> Arc<[UserId]> {
    let mut v: Vec<UserId> = users.copied().collect();
    v.sort_unstable();
    v.into()
}
