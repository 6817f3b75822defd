//! The single writer thread. Every write of the store is a [`Command`] on one channel; the
//! thread takes whatever is queued (up to [`MAX_BATCH`]), runs it in one transaction and
//! commits once (group commit), then answers each command and publishes the batch's
//! events to the bus, in commit order. One writer means sequence numbers and positions
//! are assigned without locks and are gap-free by construction.

use super::codec::{change_code, role_code, role_from_code};
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

/// Upper bound of commands per transaction; keeps the commit latency bounded under load.
pub const MAX_BATCH: usize = 4096;
/// Commits after which the writer, when it next has nothing queued, completes a
/// checkpoint itself (see [`Writer::finish_checkpoint`]).
const CHECKPOINT_AFTER_COMMITS: u32 = 1000;

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
    stopping: bool,
    commits_since_checkpoint: u32,
    search: Option<Arc<SearchIndex>>,
    index_ops: Vec<(u64, IndexOp)>,
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
    ) -> rusqlite::Result<Self> {
        let mut ids = Snowflake::new(machine);
        let pos: u64 = conn.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(pos) FROM messages), 0),
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
        Ok(Writer {
            conn,
            ids,
            pos,
            convs: HashMap::new(),
            shared,
            bus,
            events: Vec::new(),
            replies: Vec::new(),
            sender_reads: HashMap::new(),
            stopping: false,
            commits_since_checkpoint: 0,
            search,
            index_ops: Vec::new(),
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
            self.commits_since_checkpoint += 1;
            if self.commits_since_checkpoint >= CHECKPOINT_AFTER_COMMITS && rx.is_empty() {
                self.finish_checkpoint();
            }
        }
        // Shutdown requested or every sender gone: leave a compact database behind.
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "final checkpoint failed");
        }
        tracing::info!("store writer stopped");
    }

    /// The checkpointer thread copies the log into the database as it grows, but under
    /// continuous writes it never finishes between two commits, and the log can only
    /// start over once a checkpoint has finished. When the writer is idle, it finishes
    /// one: little is left to copy, and the next commit then restarts the log.
    fn finish_checkpoint(&mut self) {
        self.commits_since_checkpoint = 0;
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "checkpoint failed");
        }
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
        let committed = self
            .flush_sender_reads()
            .and_then(|()| self.conn.execute_batch("COMMIT"));
        let ok = match committed {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "commit failed, batch rolled back");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.pos = start_pos;
                self.convs.clear();
                self.shared.members.write().clear();
                self.events.clear();
                self.index_ops.clear();
                false
            }
        };
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
        }
    }

    fn execute(&mut self, command: Command) {
        match command {
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
                let result = self.append(message);
                self.finish(reply, result)
            }
            Command::Edit {
                actor,
                conv,
                seq,
                text,
                reply,
            } => {
                let result = self.savepoint(|w| w.edit(actor, conv, seq, text));
                self.finish(reply, result)
            }
            Command::Delete {
                actor,
                conv,
                seq,
                reply,
            } => {
                let result = self.savepoint(|w| w.delete(actor, conv, seq));
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

    fn next_pos(&mut self) -> u64 {
        self.pos += 1;
        self.pos
    }

    fn create_user(&mut self, username: String, password_hash: &str) -> Result<UserView> {
        let id = self.ids.next_id(now_ms());
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO users (id, username, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(username) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id as i64, username, password_hash, now_ms()]))
            .map_err(db_err)?;
        if inserted == 0 {
            return Err(Error::new(
                ErrorCode::UsernameTaken,
                "username is already taken",
            ));
        }
        Ok(UserView {
            id: Id(id),
            username,
        })
    }

    fn create_session(
        &mut self,
        user: UserId,
        device_name: &str,
        hash: [u8; 32],
        expires_at: i64,
    ) -> Result<DeviceId> {
        let id = self.ids.next_id(now_ms());
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id, user_id, device_name, refresh_hash, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params![id as i64, user.0 as i64, device_name, &hash[..], expires_at, now_ms()]))
            .map_err(db_err)?;
        Ok(Id(id))
    }

    fn rotate_refresh(
        &mut self,
        presented: [u8; 32],
        next: [u8; 32],
        expires_at: i64,
    ) -> Result<RefreshOutcome> {
        let current: Option<(i64, i64, i64, bool)> = self
            .conn
            .query_row(
                "SELECT id, user_id, expires_at, revoked FROM sessions WHERE refresh_hash = ?1",
                [&presented[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db_err)?;
        if let Some((id, user, expires, revoked)) = current {
            if revoked || expires <= now_ms() {
                return Ok(RefreshOutcome::Invalid);
            }
            self.conn
                .execute(
                    "UPDATE sessions SET previous_hash = refresh_hash, refresh_hash = ?2, expires_at = ?3 WHERE id = ?1",
                    params![id, &next[..], expires_at],
                )
                .map_err(db_err)?;
            return Ok(RefreshOutcome::Rotated {
                user: Id(user as u64),
                device: Id(id as u64),
            });
        }
        let reused: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM sessions WHERE previous_hash = ?1",
                [&presented[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        match reused {
            Some(id) => {
                self.revoke(Id(id as u64))?;
                Ok(RefreshOutcome::Reused {
                    device: Id(id as u64),
                })
            }
            None => Ok(RefreshOutcome::Invalid),
        }
    }

    fn revoke(&mut self, device: DeviceId) -> Result<()> {
        self.conn
            .execute(
                "UPDATE sessions SET revoked = 1 WHERE id = ?1",
                [device.0 as i64],
            )
            .map_err(db_err)?;
        // Visible to readers before the commit: revocation errs on the safe side.
        self.shared.revoked.write().insert(device.0);
        Ok(())
    }

    fn user_exists(&self, user: UserId) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
            .and_then(|mut s| s.exists([user.0 as i64]))
            .map_err(db_err)
    }

    /// Loads (or returns the cached) state of a conversation; `None` if it does not exist.
    fn conv(&mut self, conv: ConvId) -> Result<Option<&mut ConvState>> {
        if !self.convs.contains_key(&conv) {
            let row: Option<(i64, Option<String>, i64)> = self
                .conn
                .prepare_cached("SELECT kind, name, created_at FROM conversations WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([conv.0 as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(db_err)?;
            let Some((kind, name, created_at)) = row else {
                return Ok(None);
            };
            let mut roles = HashMap::new();
            {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT user_id, role FROM members WHERE conv_id = ?1 AND left_pos IS NULL",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([conv.0 as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .map_err(db_err)?;
                for row in rows {
                    let (user, role) = row.map_err(db_err)?;
                    roles.insert(Id(user as u64), role_from_code(role));
                }
            }
            let last_seq: i64 = self
                .conn
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conv_id = ?1")
                .and_then(|mut s| s.query_row([conv.0 as i64], |r| r.get(0)))
                .map_err(db_err)?;
            let mut state = ConvState {
                info: ConversationInfo {
                    id: conv,
                    kind: if kind == 0 {
                        ConversationKind::Direct
                    } else {
                        ConversationKind::Group
                    },
                    name,
                    created_at,
                },
                last_seq: last_seq as u64,
                roles,
                recipients: Arc::from(Vec::new()),
            };
            state.refresh_recipients();
            self.shared
                .members
                .write()
                .insert(conv, Arc::clone(&state.recipients));
            self.convs.insert(conv, state);
        }
        Ok(self.convs.get_mut(&conv))
    }

    fn member_event(
        &mut self,
        conv: &ConversationInfo,
        user: UserId,
        change: MemberChange,
        actor: UserId,
        role: Option<Role>,
        recipients: Arc<[UserId]>,
    ) -> Result<u64> {
        let pos = self.next_pos();
        let ts = now_ms();
        self.conn
            .prepare_cached(
                "INSERT INTO member_events (pos, conv_id, user_id, change, actor, role, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    pos as i64,
                    conv.id.0 as i64,
                    user.0 as i64,
                    change_code(change),
                    actor.0 as i64,
                    role.map(role_code),
                    ts
                ])
            })
            .map_err(db_err)?;
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Member(MemberEvent {
                pos: Id(pos),
                conv: conv.id,
                user,
                change,
                by: actor,
                ts,
                role,
                conversation: conv.clone(),
            }),
        });
        Ok(pos)
    }

    fn insert_member(
        &mut self,
        conv: ConvId,
        user: UserId,
        role: Role,
        joined_pos: u64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO members (conv_id, user_id, role, joined_pos) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(conv_id, user_id) DO UPDATE SET
                    role = excluded.role, joined_pos = excluded.joined_pos, left_pos = NULL, left_seq = NULL",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, user.0 as i64, role_code(role), joined_pos as i64]))
            .map_err(db_err)?;
        Ok(())
    }

    fn create_conversation(
        &mut self,
        kind: ConversationKind,
        name: Option<String>,
        direct_key: Option<String>,
        members: &[(UserId, Role)],
        actor: UserId,
    ) -> Result<ConversationInfo> {
        let now = now_ms();
        let id = Id(self.ids.next_id(now));
        let info = ConversationInfo {
            id,
            kind,
            name,
            created_at: now,
        };
        self.conn
            .execute(
                "INSERT INTO conversations (id, kind, name, direct_key, member_count, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id.0 as i64,
                    i64::from(kind == ConversationKind::Group),
                    info.name,
                    direct_key,
                    members.len() as i64,
                    now
                ],
            )
            .map_err(db_err)?;
        for &(user, role) in members {
            // Each new member learns about the conversation through their own event; the
            // others see the member list in the conversation itself.
            let pos = self.member_event(
                &info,
                user,
                MemberChange::Added,
                actor,
                Some(role),
                Arc::from(vec![user]),
            )?;
            self.insert_member(id, user, role, pos)?;
        }
        let mut state = ConvState {
            info: info.clone(),
            last_seq: 0,
            roles: members.iter().copied().collect(),
            recipients: Arc::from(Vec::new()),
        };
        state.refresh_recipients();
        self.shared
            .members
            .write()
            .insert(id, Arc::clone(&state.recipients));
        self.convs.insert(id, state);
        Ok(info)
    }

    fn open_direct(&mut self, a: UserId, b: UserId) -> Result<(ConversationInfo, bool)> {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let key = format!("{lo}:{hi}");
        let existing: Option<i64> = self
            .conn
            .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")
            .and_then(|mut s| s.query_row([&key], |r| r.get(0)).optional())
            .map_err(db_err)?;
        if let Some(id) = existing {
            let info = self
                .conv(Id(id as u64))?
                .map(|s| s.info.clone())
                .ok_or_else(|| Error::not_found("conversation not found"))?;
            return Ok((info, false));
        }
        if !self.user_exists(b)? || !self.user_exists(a)? {
            return Err(Error::not_found("user not found"));
        }
        let info = self.create_conversation(
            ConversationKind::Direct,
            None,
            Some(key),
            &[(lo, Role::Member), (hi, Role::Member)],
            a,
        )?;
        Ok((info, true))
    }

    fn create_group(
        &mut self,
        owner: UserId,
        name: String,
        members: &[UserId],
        limit: u32,
    ) -> Result<ConversationInfo> {
        membership::within_limit(1, members.len() as u32, limit)?;
        let mut all = Vec::with_capacity(members.len() + 1);
        all.push((owner, Role::Owner));
        for &user in members {
            if !self.user_exists(user)? {
                return Err(Error::not_found("user not found"));
            }
            all.push((user, Role::Member));
        }
        self.create_conversation(ConversationKind::Group, Some(name), None, &all, owner)
    }

    fn set_member_count(&mut self, conv: ConvId, count: usize) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE conversations SET member_count = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![conv.0 as i64, count as i64]))
            .map_err(db_err)?;
        Ok(())
    }

    fn membership(&mut self, command: MembershipCommand, limit: u32) -> Result<()> {
        let conv_id = match &command {
            MembershipCommand::Add { conv, .. }
            | MembershipCommand::Remove { conv, .. }
            | MembershipCommand::Leave { conv, .. }
            | MembershipCommand::SetRole { conv, .. } => *conv,
        };
        let state = self
            .conv(conv_id)?
            .ok_or_else(|| Error::not_found("conversation not found"))?;
        if state.info.kind == ConversationKind::Direct {
            return Err(Error::forbidden("direct conversations have fixed members"));
        }
        let info = state.info.clone();
        let roles = state.roles.clone();
        let last_seq = state.last_seq;
        let role_of = |user: UserId| roles.get(&user).copied();
        match command {
            MembershipCommand::Add { actor, user, .. } => {
                let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
                membership::can_add(actor_role)?;
                if role_of(user).is_some() {
                    return Ok(());
                }
                if !self.user_exists(user)? {
                    return Err(Error::not_found("user not found"));
                }
                membership::within_limit(roles.len() as u32, 1, limit)?;
                let mut after = roles;
                after.insert(user, Role::Member);
                let recipients = sorted(after.keys());
                let pos = self.member_event(
                    &info,
                    user,
                    MemberChange::Added,
                    actor,
                    Some(Role::Member),
                    recipients,
                )?;
                self.insert_member(conv_id, user, Role::Member, pos)?;
                self.set_member_count(conv_id, after.len())?;
                self.store_roles(conv_id, after);
            }
            MembershipCommand::Remove { actor, user, .. } => {
                let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
                let target = role_of(user).ok_or_else(|| Error::not_found("not a member"))?;
                membership::can_remove(actor_role, target)?;
                self.depart(&info, roles, user, actor, MemberChange::Removed, last_seq)?;
            }
            MembershipCommand::Leave { user, .. } => {
                let role = role_of(user).ok_or_else(Error::not_member)?;
                let mut remaining = roles.clone();
                remaining.remove(&user);
                self.depart(&info, roles, user, user, MemberChange::Left, last_seq)?;
                if role == Role::Owner {
                    self.hand_over_ownership(&info, remaining, user)?;
                }
            }
            MembershipCommand::SetRole {
                actor, user, role, ..
            } => {
                let actor_role = role_of(actor).ok_or_else(Error::not_member)?;
                let target = role_of(user).ok_or_else(|| Error::not_found("not a member"))?;
                membership::can_set_role(actor_role, target, role)?;
                if target == role {
                    return Ok(());
                }
                self.change_role(&info, roles, user, role, actor)?;
            }
        }
        Ok(())
    }

    fn store_roles(&mut self, conv: ConvId, roles: HashMap<UserId, Role>) {
        if let Some(state) = self.convs.get_mut(&conv) {
            state.roles = roles;
            state.refresh_recipients();
            self.shared
                .members
                .write()
                .insert(conv, Arc::clone(&state.recipients));
        }
    }

    fn depart(
        &mut self,
        info: &ConversationInfo,
        roles: HashMap<UserId, Role>,
        user: UserId,
        actor: UserId,
        change: MemberChange,
        last_seq: u64,
    ) -> Result<()> {
        // The departing member is among the recipients: they must learn they are out.
        let recipients = sorted(roles.keys());
        let pos = self.member_event(info, user, change, actor, None, recipients)?;
        self.conn
            .prepare_cached("UPDATE members SET left_pos = ?3, left_seq = ?4 WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![info.id.0 as i64, user.0 as i64, pos as i64, last_seq as i64]))
            .map_err(db_err)?;
        let mut after = roles;
        after.remove(&user);
        self.set_member_count(info.id, after.len())?;
        self.store_roles(info.id, after);
        Ok(())
    }

    fn change_role(
        &mut self,
        info: &ConversationInfo,
        roles: HashMap<UserId, Role>,
        user: UserId,
        role: Role,
        actor: UserId,
    ) -> Result<()> {
        let recipients = sorted(roles.keys());
        self.member_event(
            info,
            user,
            MemberChange::Role,
            actor,
            Some(role),
            recipients,
        )?;
        self.conn
            .prepare_cached("UPDATE members SET role = ?3 WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![info.id.0 as i64, user.0 as i64, role_code(role)]))
            .map_err(db_err)?;
        let mut after = roles;
        after.insert(user, role);
        self.store_roles(info.id, after);
        Ok(())
    }

    /// A group never stays without an owner while it has members: the longest-standing
    /// admin takes over, or else the longest-standing member.
    fn hand_over_ownership(
        &mut self,
        info: &ConversationInfo,
        remaining: HashMap<UserId, Role>,
        former: UserId,
    ) -> Result<()> {
        if remaining.is_empty() {
            return Ok(());
        }
        let next: Option<i64> = self
            .conn
            .query_row(
                "SELECT user_id FROM members WHERE conv_id = ?1 AND left_pos IS NULL ORDER BY role, joined_pos LIMIT 1",
                [info.id.0 as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if let Some(next) = next {
            self.change_role(info, remaining, Id(next as u64), Role::Owner, former)?;
        }
        Ok(())
    }

    fn mark_read(&mut self, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        let state = self
            .conv(conv)?
            .ok_or_else(|| Error::not_found("conversation not found"))?;
        if !state.roles.contains_key(&user) {
            return Err(Error::not_member());
        }
        if seq > state.last_seq {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "cannot mark read beyond the last message",
            ));
        }
        self.flush_sender_reads().map_err(db_err)?;
        let current: i64 = self
            .conn
            .prepare_cached("SELECT read_seq FROM members WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.query_row(params![conv.0 as i64, user.0 as i64], |r| r.get(0)))
            .map_err(db_err)?;
        if seq <= current as u64 {
            return Ok(current as u64);
        }
        let pos = self.next_pos();
        self.conn
            .prepare_cached("UPDATE members SET read_seq = ?3, read_pos = ?4 WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![conv.0 as i64, user.0 as i64, seq as i64, pos as i64]))
            .map_err(db_err)?;
        let recipients = self
            .convs
            .get(&conv)
            .map(|s| Arc::clone(&s.recipients))
            .unwrap_or_else(|| Arc::from(vec![user]));
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Read(ReadEvent {
                pos: Id(pos),
                conv,
                user,
                seq,
            }),
        });
        Ok(seq)
    }

    fn original(&self, sender: UserId, cid: &str) -> Result<Option<Appended>> {
        self.conn
            .prepare_cached("SELECT id, conv_id, seq, pos, created_at FROM messages WHERE sender = ?1 AND cid = ?2")
            .and_then(|mut s| {
                s.query_row(params![sender.0 as i64, cid], |r| {
                    Ok(Appended {
                        id: Id(r.get::<_, i64>(0)? as u64),
                        conv: Id(r.get::<_, i64>(1)? as u64),
                        seq: r.get::<_, i64>(2)? as u64,
                        pos: r.get::<_, i64>(3)? as u64,
                        ts: r.get(4)?,
                        duplicate: true,
                    })
                })
                .optional()
            })
            .map_err(db_err)
    }

    fn append(&mut self, message: NewMessage) -> Result<Appended> {
        let NewMessage {
            conv,
            sender,
            cid,
            text,
            reply_to,
            mentions,
            mention_all,
        } = message;
        let is_member =
            matches!(self.conv(conv)?, Some(state) if state.roles.contains_key(&sender));
        if !is_member {
            // A late retry of a stored message still gets its acknowledgement, even if
            // the sender has left since.
            if let Some(cid) = &cid {
                if let Some(original) = self.original(sender, cid)? {
                    return Ok(original);
                }
            }
            return Err(match self.convs.contains_key(&conv) {
                true => Error::not_member(),
                false => Error::not_found("conversation not found"),
            });
        }
        let Some(state) = self.convs.get(&conv) else {
            return Err(Error::internal());
        };
        // Everything is checked before the first write, so a refused message leaves
        // nothing behind without needing a savepoint on this hot path.
        if let Some(target) = reply_to {
            if target == 0 || target > state.last_seq {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    "reply_to names no message of this conversation",
                ));
            }
        }
        if let Some(stranger) = mentions.iter().find(|u| !state.roles.contains_key(u)) {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("mentioned user {stranger} is not a member"),
            ));
        }
        if mention_all && state.info.kind != ConversationKind::Group {
            return Err(Error::new(ErrorCode::BadRequest, "@all is only for groups"));
        }
        let seq = state.last_seq + 1;
        let recipients = Arc::clone(&state.recipients);
        let ts = now_ms();
        let id = self.ids.next_id(ts);
        let pos = self.pos + 1;
        let mention_list = (!mentions.is_empty()).then(|| {
            mentions
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        });
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO messages (conv_id, seq, id, pos, sender, cid, body, created_at, reply_to, mentions, mention_all)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT(sender, cid) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    conv.0 as i64,
                    seq as i64,
                    id as i64,
                    pos as i64,
                    sender.0 as i64,
                    cid,
                    text,
                    ts,
                    reply_to.map(|r| r as i64),
                    mention_list,
                    mention_all
                ])
            })
            .map_err(db_err)?;
        if inserted == 0 {
            let cid = cid.as_deref().unwrap_or_default();
            return self.original(sender, cid)?.ok_or_else(Error::internal);
        }
        if !mentions.is_empty() {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO mentions (user_id, conv_id, seq) VALUES (?1, ?2, ?3)",
                )
                .map_err(db_err)?;
            for user in &mentions {
                stmt.execute(params![user.0 as i64, conv.0 as i64, seq as i64])
                    .map_err(db_err)?;
            }
        }
        self.pos = pos;
        if let Some(state) = self.convs.get_mut(&conv) {
            state.last_seq = seq;
        }
        self.sender_reads.insert((conv, sender), seq);
        if self.search.is_some() {
            self.index_ops.push((
                pos,
                IndexOp::Upsert {
                    id,
                    conv: conv.0,
                    seq,
                    sender: sender.0,
                    ts,
                    text: text.clone(),
                },
            ));
        }
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Message(MessageEvent {
                pos: Id(pos),
                message: MessageView {
                    conv,
                    id: Id(id),
                    seq,
                    sender,
                    text,
                    ts,
                    cid,
                    reply_to,
                    mentions,
                    mention_all,
                    edited_at: None,
                    deleted: false,
                },
            }),
        });
        Ok(Appended {
            id: Id(id),
            conv,
            seq,
            pos,
            ts,
            duplicate: false,
        })
    }

    /// The stored message `seq` of `conv`: (id, sender, deleted).
    fn message_row(&self, conv: ConvId, seq: u64) -> Result<Option<(u64, UserId, bool)>> {
        self.conn
            .prepare_cached(
                "SELECT id, sender, deleted FROM messages WHERE conv_id = ?1 AND seq = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![conv.0 as i64, seq as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        Id(r.get::<_, i64>(1)? as u64),
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()
            })
            .map_err(db_err)
    }

    fn record_change(
        &mut self,
        conv: ConvId,
        seq: u64,
        kind: i64,
        actor: UserId,
        at: i64,
    ) -> Result<u64> {
        let pos = self.next_pos();
        self.conn
            .prepare_cached(
                "INSERT INTO message_changes (pos, conv_id, seq, kind, actor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| s.execute(params![pos as i64, conv.0 as i64, seq as i64, kind, actor.0 as i64, at]))
            .map_err(db_err)?;
        Ok(pos)
    }

    fn member_state(
        &mut self,
        user: UserId,
        conv: ConvId,
    ) -> Result<(Role, Arc<[UserId]>, ConversationKind)> {
        let state = self
            .conv(conv)?
            .ok_or_else(|| Error::not_found("conversation not found"))?;
        let role = *state.roles.get(&user).ok_or_else(Error::not_member)?;
        Ok((role, Arc::clone(&state.recipients), state.info.kind))
    }

    fn edit(&mut self, actor: UserId, conv: ConvId, seq: u64, text: String) -> Result<MessageView> {
        let (_, recipients, _) = self.member_state(actor, conv)?;
        let (id, sender, deleted) = self
            .message_row(conv, seq)?
            .ok_or_else(|| Error::not_found("message not found"))?;
        if sender != actor {
            return Err(Error::forbidden("only the sender can edit a message"));
        }
        if deleted {
            return Err(Error::new(
                ErrorCode::Conflict,
                "a deleted message cannot be edited",
            ));
        }
        let at = now_ms();
        self.conn
            .prepare_cached(
                "UPDATE messages SET body = ?3, edited_at = ?4 WHERE conv_id = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, seq as i64, text, at]))
            .map_err(db_err)?;
        let pos = self.record_change(conv, seq, 0, actor, at)?;
        let view =
            super::reader::message_by_seq(&self.conn, conv, seq)?.ok_or_else(Error::internal)?;
        if self.search.is_some() {
            self.index_ops.push((
                pos,
                IndexOp::Upsert {
                    id,
                    conv: conv.0,
                    seq,
                    sender: sender.0,
                    ts: view.ts,
                    text: text.clone(),
                },
            ));
        }
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Edited(EditedEvent {
                pos: Id(pos),
                conv,
                seq,
                id: Id(id),
                text,
                edited_at: at,
                by: actor,
            }),
        });
        Ok(view)
    }

    fn delete(&mut self, actor: UserId, conv: ConvId, seq: u64) -> Result<()> {
        let (role, recipients, kind) = self.member_state(actor, conv)?;
        let (id, sender, deleted) = self
            .message_row(conv, seq)?
            .ok_or_else(|| Error::not_found("message not found"))?;
        let moderator =
            kind == ConversationKind::Group && matches!(role, Role::Owner | Role::Admin);
        if sender != actor && !moderator {
            return Err(Error::forbidden(
                "only the sender, or a group's owner and admins, can delete a message",
            ));
        }
        if deleted {
            return Ok(());
        }
        let at = now_ms();
        let mentioned: Option<String> = self
            .conn
            .prepare_cached("SELECT mentions FROM messages WHERE conv_id = ?1 AND seq = ?2")
            .and_then(|mut s| s.query_row(params![conv.0 as i64, seq as i64], |r| r.get(0)))
            .map_err(db_err)?;
        for user in mentioned
            .iter()
            .flat_map(|m| m.split(' '))
            .filter_map(|u| u.parse::<i64>().ok())
        {
            self.conn
                .prepare_cached(
                    "DELETE FROM mentions WHERE user_id = ?1 AND conv_id = ?2 AND seq = ?3",
                )
                .and_then(|mut s| s.execute(params![user, conv.0 as i64, seq as i64]))
                .map_err(db_err)?;
        }
        // The text leaves the store: a tombstone keeps only who and when.
        self.conn
            .prepare_cached(
                "UPDATE messages SET body = '', mentions = NULL, mention_all = 0, reply_to = NULL, deleted = 1
                 WHERE conv_id = ?1 AND seq = ?2",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, seq as i64]))
            .map_err(db_err)?;

        let pos = self.record_change(conv, seq, 1, actor, at)?;
        if self.search.is_some() {
            self.index_ops.push((pos, IndexOp::Remove { id }));
        }
        self.events.push(Event {
            pos,
            recipients,
            frame: ServerFrame::Deleted(DeletedEvent {
                pos: Id(pos),
                conv,
                seq,
                id: Id(id),
                by: actor,
                ts: at,
            }),
        });
        Ok(())
    }

    fn delivered(&mut self, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        let (_, recipients, _) = self.member_state(user, conv)?;
        let last_seq = self.convs.get(&conv).map_or(0, |s| s.last_seq);
        if seq > last_seq {
            return Err(Error::new(
                ErrorCode::BadRequest,
                "cannot mark delivered beyond the last message",
            ));
        }
        let current: i64 = self
            .conn
            .prepare_cached("SELECT delivered_seq FROM members WHERE conv_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.query_row(params![conv.0 as i64, user.0 as i64], |r| r.get(0)))
            .map_err(db_err)?;
        if seq <= current as u64 {
            return Ok(current as u64);
        }
        self.conn
            .prepare_cached(
                "UPDATE members SET delivered_seq = ?3 WHERE conv_id = ?1 AND user_id = ?2",
            )
            .and_then(|mut s| s.execute(params![conv.0 as i64, user.0 as i64, seq as i64]))
            .map_err(db_err)?;
        // Delivery markers are live-only: the current values are in `receipts`.
        self.events.push(Event {
            pos: 0,
            recipients,
            frame: ServerFrame::Delivered(DeliveredEvent { conv, user, seq }),
        });
        Ok(seq)
    }

    /// Sending implies having read the conversation up to one's own message; written once
    /// per batch and (conversation, sender), not once per message.
    fn flush_sender_reads(&mut self) -> rusqlite::Result<()> {
        if self.sender_reads.is_empty() {
            return Ok(());
        }
        let mut stmt = self.conn.prepare_cached(
            "UPDATE members SET read_seq = MAX(read_seq, ?3) WHERE conv_id = ?1 AND user_id = ?2",
        )?;
        for ((conv, user), seq) in self.sender_reads.drain() {
            stmt.execute(params![conv.0 as i64, user.0 as i64, seq as i64])?;
        }
        Ok(())
    }
}

fn sorted<'a>(users: impl Iterator<Item = &'a UserId>) -> Arc<[UserId]> {
    let mut v: Vec<UserId> = users.copied().collect();
    v.sort_unstable();
    v.into()
}
