//! The embedded store: one SQLite database (`parlor.db`, WAL mode) in the data directory.
//!
//! Writes go to one writer thread ([`writer`]) that commits in groups; reads ([`reader`])
//! run on a pool of read-only connections ([`read_pool`]).

mod codec;
mod contacts;
#[cfg(test)]
mod message_view_tests;
mod notifications;
mod open;
#[allow(unsafe_code)]
pub mod page_cache;
mod positions;
mod read_pool;
mod reader;
mod schema;
mod search_index;
mod search_query;
mod uploads;
mod work_queue;
mod writer;

pub use work_queue::EmbeddedWorkQueue;

use async_trait::async_trait;
use futures_util::stream::StreamExt;
use parking_lot::RwLock;
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_core::notify::{
    Decisions, Mute, NewFeedItem, PushDone, PushJob, PushTarget, TargetAddress,
};
use parlor_core::ports::{Backlog, BoxFuture, Bus, NotificationStore, Store, UploadStore};
use parlor_core::uploads::{BlobRecord, Garbage, NewBlob, NewUpload, UploadRecord};
use parlor_proto::notify::NotificationView;
use parlor_proto::rest::{
    ConversationDetail, ConversationInfo, ConversationSummary, History, MessageView, Receipts,
    SearchResults, UserView,
};
use parlor_proto::{ErrorCode, Id};
use reader::{db_err, user_view, BacklogState, ReadPool};
use rusqlite::{Connection, OptionalExtension};
use search_index::SearchIndex;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use writer::{Command, Shared, Writer};

/// How far an acknowledged write has gone when its acknowledgement is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Committed to the write-ahead log (`synchronous=NORMAL`): survives a crash of the
    /// process (SIGKILL, panic, OOM kill), not a power cut or kernel crash.
    #[default]
    Process,
    /// The write-ahead log is fsynced at every group commit (`synchronous=FULL`):
    /// survives power loss, at the cost of one fsync per commit.
    Fsync,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    /// The 10-bit Snowflake machine id of this node.
    pub machine_id: u16,
    pub durability: Durability,
    /// Queued writes beyond this are refused with `unavailable` (back-pressure).
    pub write_queue: usize,
    /// Newest matches a search ranks (see `Limits::search_candidates`).
    pub search_candidates: u32,
    /// Client message ids the writer holds in memory before it indexes them a sender at
    /// a time (see `writer/client_ids.rs`).
    pub pending_client_ids: usize,
    /// New messages pending in the position-ordered tail before the oldest conversation
    /// is copied into the conversation-clustered table (see `writer/tail.rs`).
    pub pending_messages: usize,
    /// Longest the search index lets a change wait for others to apply with it (see
    /// `search_index::DEFAULT_LINGER`).
    pub search_linger: std::time::Duration,
}

impl StoreOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            data_dir: data_dir.into(),
            machine_id: 0,
            durability: Durability::Process,
            write_queue: 65_536,
            search_candidates: 300,
            pending_client_ids: writer::DEFAULT_PENDING_CLIENT_IDS,
            pending_messages: writer::DEFAULT_PENDING_MESSAGES,
            search_linger: search_index::DEFAULT_LINGER,
        }
    }
}

pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    reads: Arc<ReadPool>,
    search: Arc<SearchIndex>,
    search_candidates: u32,
    shared: Arc<Shared>,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping it stops the checkpointer thread.
    checkpointer: parking_lot::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    notify: Arc<notifications::NotifyDb>,
}

pub const DB_FILE: &str = "parlor.db";

/// How often the write-ahead log is copied back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// WAL frames (pages, 32 MiB) past which a checkpoint also restarts the log, blocking the
/// writer while it copies what the passive checkpoints have not yet copied. When writes
/// pause for the length of a passive pass, that pass copies everything and the next
/// commit starts the log over by itself; under writes without such a pause the log would
/// otherwise grow without bound (measured: 2.5 GB of WAL while seeding a million
/// messages). The writer never checkpoints itself: until 2026-12-02 it finished one
/// after every 1,000 commits when nothing was queued, and at 10,000 messages/s that
/// was a 2.6–7.3 ms stall five times a second (see BENCHMARKS, "direct").
const RESTART_AFTER_FRAMES: i64 = 8_192;

/// Copies the write-ahead log into the database file from a thread of its own. SQLite
/// would otherwise do it inside whichever commit crosses the threshold, with an fsync,
/// stalling every message of that batch. PASSIVE never waits for the writer or readers;
/// RESTART, used only when the log is very large, blocks the writer while it runs.
fn checkpointer(path: &Path) -> anyhow::Result<std::sync::mpsc::Sender<()>> {
    let conn = open::read_write(path)?;
    conn.busy_handler(Some(retry_soon))?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("parlor-store-checkpointer".into())
        .spawn(move || {
            let checkpoint = |mode: &str| {
                let sql = format!("PRAGMA wal_checkpoint({mode})");
                let frames = conn.query_row(&sql, [], |r| r.get::<_, i64>(1));
                if let Err(e) = &frames {
                    tracing::warn!(error = %e, mode, "checkpoint failed");
                }
                frames.ok()
            };
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if checkpoint("PASSIVE").is_some_and(|frames| frames > RESTART_AFTER_FRAMES) {
                    // One more passive pass right away, so that the pass that blocks
                    // the writer has only the few milliseconds of log written during it
                    // left to copy, not the 50 since the last one.
                    checkpoint("PASSIVE");
                    checkpoint("RESTART");
                }
            }
        })?;
    Ok(stop)
}

/// Busy handler of the writer and the checkpointer, which wait for each other's locks
/// (a RESTART checkpoint holds the write lock for a few milliseconds): retry every
/// 100 µs, for up to 5 s. SQLite's own `busy_timeout` sleeps 1, 2, 5, 10 ms and so on
/// between tries, so a writer blocked for 6 ms resumed after 8 and one blocked for
/// 11 ms after 18, every message of its batch waiting with it.
fn retry_soon(attempt: i32) -> bool {
    const PAUSE: std::time::Duration = std::time::Duration::from_micros(100);
    std::thread::sleep(PAUSE);
    attempt < 50_000
}

fn open_writer_connection(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let mut conn = open::read_write(path)?;
    conn.busy_handler(Some(retry_soon))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Process => "NORMAL",
        Durability::Fsync => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    // Checkpoints run on their own thread (see `checkpointer`), never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // After a restart the log file is cut back to this size instead of staying as large
    // as it ever grew.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

impl SqliteStore {
    /// Binds the durable work queue `name` (see [`EmbeddedWorkQueue`]); `bus` must be the
    /// bus this store publishes to.
    pub async fn work_queue(&self, name: &str, bus: &dyn Bus) -> Result<EmbeddedWorkQueue> {
        let live = bus.subscribe();
        let head = self.shared.head.load(Ordering::Acquire);
        EmbeddedWorkQueue::bind(
            name,
            Arc::clone(&self.notify),
            Arc::clone(&self.reads),
            live,
            head,
        )
        .await
    }

    /// Opens (creating if needed) the database under `options.data_dir` and starts the
    /// writer thread. Committed events are published to `bus`.
    pub fn open(options: StoreOptions, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        page_cache::install();
        std::fs::create_dir_all(&options.data_dir).map_err(|e| {
            anyhow::anyhow!(format!(
                "cannot create data dir {}: {e}",
                options.data_dir.display()
            ))
        })?;
        let path = options.data_dir.join(DB_FILE);
        let conn = open_writer_connection(&path, options.durability).map_err(|e| {
            if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
                anyhow::anyhow!(
                    "cannot open {}: another process holds it (is a Parlor server already \
                     running on this data directory?)",
                    path.display()
                )
            } else {
                anyhow::anyhow!("cannot open {}: {e}", path.display())
            }
        })?;
        let revoked: HashSet<u64> = {
            let mut stmt = conn.prepare("SELECT id FROM sessions WHERE revoked = 1")?;
            let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
            rows.filter_map(|r| r.ok()).map(|v| v as u64).collect()
        };
        let shared = Arc::new(Shared {
            head: AtomicU64::new(0),
            revoked: RwLock::new(revoked),
            members: RwLock::new(std::collections::HashMap::new()),
            contacts: contacts::ContactsCache::default(),
        });
        let search = SearchIndex::open(&options.data_dir, &conn, options.search_linger)?;
        let writer = Writer::new(
            conn,
            options.machine_id,
            Arc::clone(&shared),
            bus,
            Some(Arc::clone(&search)),
            options.pending_client_ids,
            options.pending_messages,
        )
        .map_err(|e| anyhow::anyhow!(format!("cannot start writer: {e}")))?;
        let (tx, rx) = mpsc::channel(options.write_queue.max(1));
        let handle = std::thread::Builder::new()
            .name("parlor-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| anyhow::anyhow!(format!("cannot spawn writer: {e}")))?;
        let path_for_checkpoints = path.clone();
        let notify = Arc::new(notifications::NotifyDb::open(&options.data_dir)?);
        Ok(SqliteStore {
            commands: tx,
            reads: Arc::new(ReadPool::new(path.clone())),
            search,
            search_candidates: options.search_candidates,
            shared,
            writer: parking_lot::Mutex::new(Some(handle)),
            checkpointer: parking_lot::Mutex::new(Some(checkpointer(&path_for_checkpoints)?)),
            notify,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::unavailable())?;
        rx.await.map_err(|_| Error::unavailable())?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.call(Command::Ping).await
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.checkpointer.lock().take();
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserView> {
        let (username, password_hash) = (username.to_owned(), password_hash.to_owned());
        self.call(|reply| Command::CreateUser {
            username,
            password_hash,
            reply,
        })
        .await
    }

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>> {
        let username = username.to_owned();
        self.reads
            .run(move |conn| {
                conn.prepare_cached(
                    "SELECT id, username, password_hash FROM users WHERE username = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([username], |r| {
                        Ok(Credentials {
                            user: Id(r.get::<_, i64>(0)? as u64),
                            username: r.get(1)?,
                            password_hash: r.get(2)?,
                        })
                    })
                    .optional()
                })
                .map_err(db_err)
            })
            .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserView>> {
        let username = username.to_owned();
        self.reads
            .run(move |conn| {
                conn.prepare_cached("SELECT id, username FROM users WHERE username = ?1")
                    .and_then(|mut s| s.query_row([username], user_view).optional())
                    .map_err(db_err)
            })
            .await
    }

    async fn user(&self, id: UserId) -> Result<Option<UserView>> {
        self.reads
            .run(move |conn| {
                conn.prepare_cached("SELECT id, username FROM users WHERE id = ?1")
                    .and_then(|mut s| s.query_row([id.0 as i64], user_view).optional())
                    .map_err(db_err)
            })
            .await
    }

    async fn create_session(
        &self,
        user: UserId,
        device_name: &str,
        refresh_hash: [u8; 32],
        expires_at_ms: i64,
    ) -> Result<DeviceId> {
        let device_name = device_name.to_owned();
        self.call(|reply| Command::CreateSession {
            user,
            device_name,
            refresh_hash,
            expires_at: expires_at_ms,
            reply,
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        presented: [u8; 32],
        next: [u8; 32],
        expires_at_ms: i64,
    ) -> Result<RefreshOutcome> {
        self.call(|reply| Command::RotateRefresh {
            presented,
            next,
            expires_at: expires_at_ms,
            reply,
        })
        .await
    }

    async fn revoke_session(&self, device: DeviceId) -> Result<()> {
        self.call(|reply| Command::RevokeSession { device, reply })
            .await
    }

    async fn session_revoked(&self, device: DeviceId) -> Result<bool> {
        Ok(self.shared.revoked.read().contains(&device.0))
    }

    async fn open_direct(&self, a: UserId, b: UserId) -> Result<(ConversationInfo, bool)> {
        self.call(|reply| Command::OpenDirect { a, b, reply }).await
    }

    async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        member_limit: u32,
    ) -> Result<ConversationInfo> {
        let (name, members) = (name.to_owned(), members.to_vec());
        self.call(|reply| Command::CreateGroup {
            owner,
            name,
            members,
            limit: member_limit,
            reply,
        })
        .await
    }

    async fn change_membership(&self, command: MembershipCommand, member_limit: u32) -> Result<()> {
        self.call(|reply| Command::Membership {
            command,
            limit: member_limit,
            reply,
        })
        .await
    }

    async fn conversation(&self, viewer: UserId, conv: ConvId) -> Result<ConversationDetail> {
        self.reads
            .run(move |conn| reader::conversation(conn, viewer, conv))
            .await
    }

    async fn conversations(&self, viewer: UserId) -> Result<Vec<ConversationSummary>> {
        self.reads
            .run(move |conn| reader::conversations(conn, viewer))
            .await
    }

    fn append_message(&self, message: NewMessage) -> BoxFuture<Result<Appended>> {
        let (tx, rx) = oneshot::channel();
        // try_send keeps the call synchronous, which is what preserves the caller's order.
        if let Err(e) = self
            .commands
            .try_send(Command::Append { message, reply: tx })
        {
            let error = match e {
                mpsc::error::TrySendError::Full(_) => {
                    Error::new(ErrorCode::Unavailable, "server busy, retry later")
                }
                mpsc::error::TrySendError::Closed(_) => Error::unavailable(),
            };
            return Box::pin(std::future::ready(Err(error)));
        }
        Box::pin(async move { rx.await.map_err(|_| Error::unavailable())? })
    }

    async fn history(&self, viewer: UserId, conv: ConvId, page: Page) -> Result<History> {
        self.reads
            .run(move |conn| reader::history(conn, viewer, conv, page))
            .await
    }

    async fn mark_read(&self, viewer: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        self.call(|reply| Command::MarkRead {
            user: viewer,
            conv,
            seq,
            reply,
        })
        .await
    }

    async fn backlog(&self, user: UserId, since: u64, page: u32) -> Result<Backlog> {
        let head = self.shared.head.load(Ordering::Acquire);
        let state = BacklogState::start(Arc::clone(&self.reads), user, since, head, page).await?;
        let pages = futures_util::stream::unfold(state, |mut state| async move {
            state.next_page().await.map(|page| (page, state))
        })
        .boxed();
        Ok(Backlog { head, pages })
    }

    async fn head(&self) -> Result<u64> {
        Ok(self.shared.head.load(Ordering::Acquire))
    }

    async fn edit_message(
        &self,
        actor: UserId,
        conv: ConvId,
        seq: u64,
        text: String,
    ) -> Result<MessageView> {
        self.call(|reply| Command::Edit {
            actor,
            conv,
            seq,
            text,
            reply,
        })
        .await
    }

    async fn delete_message(&self, actor: UserId, conv: ConvId, seq: u64) -> Result<()> {
        self.call(|reply| Command::Delete {
            actor,
            conv,
            seq,
            reply,
        })
        .await
    }

    async fn mark_delivered(&self, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        self.call(|reply| Command::Delivered {
            user,
            conv,
            seq,
            reply,
        })
        .await
    }

    async fn receipts(&self, viewer: UserId, conv: ConvId) -> Result<Receipts> {
        self.reads
            .run(move |conn| reader::receipts(conn, viewer, conv))
            .await
    }

    async fn members(&self, conv: ConvId) -> Result<Arc<[UserId]>> {
        if let Some(members) = self.shared.members.read().get(&conv) {
            return Ok(Arc::clone(members));
        }
        self.reads
            .run(move |conn| reader::members(conn, conv))
            .await
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>> {
        let cache = &self.shared.contacts;
        if let Some(contacts) = cache.get(user) {
            return Ok(contacts.to_vec());
        }
        let generation = cache.generation();
        let contacts: Arc<[UserId]> = self
            .reads
            .run_quick(move |conn| reader::contacts(conn, user))
            .await?
            .into();
        cache.insert(user, generation, Arc::clone(&contacts));
        Ok(contacts.to_vec())
    }

    async fn set_last_seen(&self, user: UserId, at_ms: i64) -> Result<()> {
        self.call(|reply| Command::SetLastSeen {
            user,
            at: at_ms,
            reply,
        })
        .await
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<i64>> {
        self.reads
            .run(move |conn| reader::last_seen(conn, user))
            .await
    }

    async fn search(&self, viewer: UserId, query: SearchQuery) -> Result<SearchResults> {
        let search = Arc::clone(&self.search);
        let candidates = self.search_candidates;
        self.reads
            .run(move |conn| {
                let visible = search_query::searchable(conn, viewer, query.conv)?;
                if visible.is_empty() {
                    return Ok(SearchResults {
                        results: Vec::new(),
                        next_cursor: None,
                    });
                }
                search.with_reader(|index| {
                    search_query::search(conn, index, &visible, &query, candidates)
                })
            })
            .await
    }
}

#[async_trait]
impl UploadStore for SqliteStore {
    async fn create_upload(&self, upload: NewUpload, quota: u64) -> Result<UploadRecord> {
        self.call(|reply| Command::CreateUpload {
            upload,
            quota,
            reply,
        })
        .await
    }

    async fn upload(&self, id: Id) -> Result<Option<UploadRecord>> {
        self.reads
            .run(move |conn| uploads::load_upload(conn, id).map_err(reader::db_err))
            .await
    }

    async fn advance_upload(&self, id: Id, from: u64, to: u64) -> Result<UploadRecord> {
        self.call(|reply| Command::AdvanceUpload {
            id,
            from,
            to,
            reply,
        })
        .await
    }

    async fn blob_by_sha(&self, sha256: &str) -> Result<Option<BlobRecord>> {
        let sha256 = sha256.to_owned();
        self.reads
            .run(move |conn| uploads::blob_by_sha(conn, &sha256).map_err(reader::db_err))
            .await
    }

    async fn complete_upload(&self, id: Id, blob: NewBlob) -> Result<(UploadRecord, bool)> {
        self.call(|reply| Command::CompleteUpload { id, blob, reply })
            .await
    }

    async fn delete_upload(&self, id: Id) -> Result<Garbage> {
        self.call(|reply| Command::DeleteUpload { id, reply }).await
    }

    async fn may_download(&self, viewer: UserId, id: Id) -> Result<bool> {
        self.reads
            .run(move |conn| uploads::may_download(conn, viewer, id).map_err(reader::db_err))
            .await
    }

    async fn usage(&self, owner: UserId) -> Result<u64> {
        self.reads
            .run(move |conn| uploads::usage(conn, owner).map_err(reader::db_err))
            .await
    }

    async fn collect_garbage(&self, unattached_before_ms: i64) -> Result<Garbage> {
        self.call(|reply| Command::CollectGarbage {
            unattached_before_ms,
            reply,
        })
        .await
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl NotificationStore for SqliteStore {
    async fn register_target(&self, user: UserId, address: TargetAddress) -> Result<PushTarget> {
        self.notify
            .try_run(move |conn| notifications::register_target(conn, user, &address, now_ms()))
            .await
    }

    async fn targets(&self, user: UserId) -> Result<Vec<PushTarget>> {
        self.notify
            .run(move |conn| notifications::targets(conn, user))
            .await
    }

    async fn remove_target(&self, user: UserId, id: Id) -> Result<()> {
        let deleted = self
            .notify
            .run(move |conn| notifications::delete_target(conn, id, Some(user)))
            .await?;
        if deleted {
            Ok(())
        } else {
            Err(Error::not_found("push target not found"))
        }
    }

    async fn prune_target(&self, id: Id) -> Result<()> {
        self.notify
            .run(move |conn| notifications::delete_target(conn, id, None))
            .await
            .map(|_| ())
    }

    async fn set_mute(&self, user: UserId, conv: ConvId, mute: Option<Mute>) -> Result<()> {
        if !notifications::is_member(&self.reads, user, conv).await? {
            return Err(Error::new(
                ErrorCode::NotMember,
                "not a member of this conversation",
            ));
        }
        self.notify
            .run(move |conn| notifications::set_mute(conn, user, conv, mute))
            .await
    }

    async fn mute(&self, user: UserId, conv: ConvId) -> Result<Option<Mute>> {
        self.notify
            .run(move |conn| notifications::mute(conn, user, conv))
            .await
    }

    async fn set_dnd(&self, user: UserId, dnd: Option<Option<i64>>) -> Result<()> {
        self.notify
            .run(move |conn| notifications::set_dnd(conn, user, dnd))
            .await
    }

    async fn dnd(&self, user: UserId) -> Result<Option<Option<i64>>> {
        self.notify
            .run(move |conn| notifications::dnd(conn, user))
            .await
    }

    async fn settings(
        &self,
        conv: ConvId,
        users: &[UserId],
    ) -> Result<Vec<parlor_core::notify::RecipientSettings>> {
        let users = users.to_vec();
        self.notify
            .run(move |conn| notifications::settings(conn, conv, &users))
            .await
    }

    async fn record(&self, decisions: Decisions, now_ms: i64) -> Result<Vec<NewFeedItem>> {
        self.notify
            .run(move |conn| notifications::record(conn, &decisions, now_ms))
            .await
    }

    async fn feed(
        &self,
        user: UserId,
        before: Option<Id>,
        limit: u32,
    ) -> Result<Vec<NotificationView>> {
        self.notify
            .run(move |conn| notifications::feed(conn, user, before, limit))
            .await
    }

    async fn unread_notifications(&self, user: UserId) -> Result<u64> {
        self.notify
            .run(move |conn| notifications::unread_notifications(conn, user))
            .await
    }

    async fn mark_notifications_read(
        &self,
        user: UserId,
        ids: &[Id],
        up_to: Option<Id>,
    ) -> Result<Vec<Id>> {
        let ids = ids.to_vec();
        self.notify
            .run(move |conn| notifications::mark_read(conn, user, &ids, up_to))
            .await
    }

    async fn unread_messages(&self, user: UserId) -> Result<u64> {
        notifications::unread_messages(&self.reads, user).await
    }

    async fn claim_pushes(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushJob>> {
        self.notify
            .try_run(move |conn| notifications::claim(conn, now_ms, lease_ms, limit))
            .await
    }

    async fn finish_push(&self, id: Id, done: PushDone) -> Result<()> {
        self.notify
            .run(move |conn| notifications::finish(conn, id, done))
            .await
    }

    async fn next_push_due(&self) -> Result<Option<i64>> {
        self.notify.run(notifications::next_due_mut).await
    }
}
