//! PostgreSQL adapter of Parlor's [`Store`], [`UploadStore`], [`NotificationStore`] and
//! [`EventLog`] ports, for cluster mode:
//! several nodes share one PostgreSQL primary (optionally read replicas) and must
//! behave, through the ports, exactly like the embedded SQLite store.
//!
//! # Positions: global, dense, in commit order
//!
//! Every position-bearing event (message, edit, delete, membership change, read
//! marker) gets its `pos` from a single-row counter, `parlor_head`. A transaction takes
//! `UPDATE parlor_head SET pos = pos + n RETURNING pos` as LATE as possible — after its
//! row locks and checks — then inserts its rows with those positions and commits. The
//! head row's lock is held until commit, so these commits are serialized cluster-wide:
//! positions are assigned in commit order, a rolled-back transaction rolls its increment
//! back (no gap), and every position up to the committed counter is committed. So
//! `head()` is simply the committed counter, and "subscribe, read head, send backlog up
//! to head, then live events above head" stays exactly-once across nodes.
//!
//! The price is that position-bearing commits are serial; appends amortize it by group
//! commit (`writer.rs`), and the lock is held only for the inserts and the commit.
//!
//! **Lock order** (no deadlock between nodes): conversation rows (sorted by id, `FOR
//! UPDATE`) first, the head row last. Within a node a `commit` mutex is taken just
//! before the head row and released after the events are published, so one node
//! publishes in commit order; it adds no waiting, since the head row admits one such
//! transaction at a time anyway. Rule that keeps this deadlock-free: a transaction
//! never waits for that mutex while holding a lock that a transaction past its head
//! update could need (those only insert new rows and update rows of conversations they
//! locked).
//!
//! # Per-conversation seq
//!
//! `conversations.last_seq`, moved under the conversation row lock: gap-free. A
//! duplicate (same sender and client id, found in `message_cids`) consumes no seq and
//! returns the original with `duplicate: true`.
//!
//! # Publishing and the event log
//!
//! After commit, the events of the commit are published with the recipients the commit
//! saw (members under the lock). Every position-bearing event is published, even with
//! no recipient, because another node's bus subscriber orders by position and waits
//! for gaps. Each such event is also written, in the same transaction, to `event_log`
//! (a transactional outbox, see `event_log.rs`), from which a bus fills a gap left by a
//! node that died between commit and publish.
//!
//! # Ids
//!
//! Snowflake ids from a machine id leased in PostgreSQL (`lease.rs`).
//!
//! # Reads
//!
//! Backlog, head, accounts, conversations and everything in the write path read the
//! primary; history and search may read a replica (`db.rs`).
//!
//! # Layout
//! - [`schema`](crate::schema): migrations; `db`: pools; `tls`: mutual TLS;
//!   `error`: error mapping; `lease`: machine ids;
//! - `writer`: group commit of appends; `accounts`, `conversations`, `messages`: the
//!   other commands and reads; `backlog`: sync; `search`: full-text search;
//!   `event_log`: the outbox; `uploads`: upload and blob metadata (attaching is the
//!   writer's, in the append transaction); `notifications`: push targets, mutes,
//!   do-not-disturb, the feed and the push queue.

mod accounts;
mod backlog;
mod codec;
mod conversations;
mod db;
mod error;
mod event_log;
mod lease;
mod messages;
mod notifications;
mod schema;
mod search;
mod tls;
mod uploads;
mod writer;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use error::DbResult;
use futures_util::stream::StreamExt;
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_core::notify::{
    Decisions, Mute, NewFeedItem, PushDone, PushJob, PushTarget, TargetAddress,
};
use parlor_core::ports::{
    Backlog, BoxFuture, Bus, EventLog, NotificationStore, Store, UploadStore,
};
use parlor_core::uploads::{BlobRecord, Garbage, NewBlob, NewUpload, UploadRecord};
use parlor_proto::notify::NotificationView;
use parlor_proto::rest::{
    ConversationDetail, ConversationInfo, ConversationSummary, History, MessageView, Receipts,
    SearchResults, UserView,
};
use parlor_proto::{ErrorCode, Id};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use tls::tls_connector;

/// Client certificate, key and the CA that signed the server's certificate (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db?sslmode=require`
    pub url: String,
    /// Read replicas for history and search (may lag); empty: the primary serves them.
    pub replica_urls: Vec<String>,
    /// Connections per pool.
    pub pool_size: usize,
    /// Hash partitions of `messages`, used when the schema is first created.
    pub partitions: u32,
    /// Some: TLS with this CA and client certificate (mutual TLS).
    pub tls: Option<TlsFiles>,
    /// Names this node in its machine-id lease.
    pub node_name: String,
    /// Newest matches a search ranks (see `Limits::search_candidates`).
    pub search_candidates: u32,
    /// Queued appends beyond this are refused with `unavailable` (back-pressure).
    pub write_queue: usize,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            replica_urls: Vec::new(),
            pool_size: 16,
            partitions: 16,
            tls: None,
            node_name: "parlor".into(),
            search_candidates: 300,
            write_queue: 65_536,
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A conversation's current members as of `roster_pos` (cached per node).
pub(crate) struct Roster {
    roster_pos: u64,
    /// Sorted: the recipients of the conversation's events.
    members: Arc<[UserId]>,
}

impl Roster {
    fn contains(&self, user: UserId) -> bool {
        self.members.binary_search(&user).is_ok()
    }
}

/// Cached member lists beyond this are all dropped (a crude bound on memory).
const MAX_ROSTERS: usize = 100_000;

/// Positions taken by a transaction; holds the node's commit mutex until published.
pub(crate) struct Positions<'a> {
    _order: tokio::sync::MutexGuard<'a, ()>,
    pub first: u64,
    count: u64,
}

impl Positions<'_> {
    pub fn last(&self) -> u64 {
        self.first + self.count.max(1) - 1
    }
}

/// What the store's parts share.
pub(crate) struct Core {
    pub db: Arc<db::Db>,
    pub bus: Arc<dyn Bus>,
    pub ids: Arc<lease::Ids>,
    commit_order: tokio::sync::Mutex<()>,
    rosters: parking_lot::Mutex<HashMap<ConvId, Arc<Roster>>>,
    pub search_candidates: u32,
}

impl Core {
    /// Takes `count` positions on the head row. Call after every other lock and check
    /// of the transaction.
    pub async fn take_positions(&self, tx: &Transaction<'_>, count: u64) -> Result<Positions<'_>> {
        let order = self.commit_order.lock().await;
        let stmt = tx
            .prepare_cached("UPDATE parlor_head SET pos = pos + $1 WHERE id RETURNING pos")
            .await
            .db()?;
        let end: i64 = tx.query_one(&stmt, &[&(count as i64)]).await.db()?.get(0);
        Ok(Positions {
            _order: order,
            first: (end as u64 + 1).saturating_sub(count),
            count,
        })
    }

    /// Commits, then publishes `events` (in position order), then lets the next
    /// transaction of this node publish.
    pub async fn commit(
        &self,
        tx: Transaction<'_>,
        positions: Positions<'_>,
        events: Vec<Event>,
    ) -> Result<()> {
        tx.commit().await.db()?;
        if !events.is_empty() {
            self.bus.publish(Arc::from(events));
        }
        drop(positions);
        Ok(())
    }

    pub async fn head(&self) -> Result<u64> {
        let client = self.db.primary().await?;
        let stmt = client
            .prepare_cached("SELECT pos FROM parlor_head")
            .await
            .db()?;
        let pos: i64 = client.query_one(&stmt, &[]).await.db()?.get(0);
        Ok(pos as u64)
    }

    fn roster(&self, conv: ConvId, roster_pos: u64) -> Option<Arc<Roster>> {
        self.rosters
            .lock()
            .get(&conv)
            .filter(|r| r.roster_pos == roster_pos)
            .cloned()
    }

    fn remember_roster(
        &self,
        conv: ConvId,
        roster_pos: u64,
        mut members: Vec<UserId>,
    ) -> Arc<Roster> {
        members.sort_unstable();
        members.dedup();
        let roster = Arc::new(Roster {
            roster_pos,
            members: members.into(),
        });
        let mut rosters = self.rosters.lock();
        if rosters.len() >= MAX_ROSTERS {
            rosters.clear();
        }
        rosters.insert(conv, Arc::clone(&roster));
        roster
    }

    pub fn forget_roster(&self, conv: ConvId) {
        self.rosters.lock().remove(&conv);
    }
}

pub struct PgStore {
    core: Arc<Core>,
    lease: Arc<lease::Lease>,
    queue: mpsc::Sender<writer::Command>,
    closed: AtomicBool,
    writer: parking_lot::Mutex<Option<JoinHandle<()>>>,
    background: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl PgStore {
    /// Connects, applies migrations, leases a machine id and starts the writer.
    /// Committed events are published to `bus`.
    pub async fn connect(options: PgOptions, bus: Arc<dyn Bus>) -> anyhow::Result<Arc<PgStore>> {
        let db = Arc::new(db::Db::new(&options)?);
        let mut client = db.primary_checked().await?;
        schema::migrate(&mut client, options.partitions).await?;
        drop(client);
        let lease = lease::Lease::acquire(Arc::clone(&db), &options.node_name).await?;
        let core = Arc::new(Core {
            db,
            bus,
            ids: Arc::clone(&lease.ids),
            commit_order: tokio::sync::Mutex::new(()),
            rosters: parking_lot::Mutex::new(HashMap::new()),
            search_candidates: options.search_candidates,
        });
        let (queue, rx) = mpsc::channel(options.write_queue.max(1));
        let writer = tokio::spawn(writer::run(Arc::clone(&core), rx));
        let background = vec![
            tokio::spawn(Arc::clone(&lease).maintain()),
            tokio::spawn(event_log::prune_forever(Arc::clone(&core))),
        ];
        Ok(Arc::new(PgStore {
            core,
            lease,
            queue,
            closed: AtomicBool::new(false),
            writer: parking_lot::Mutex::new(Some(writer)),
            background: parking_lot::Mutex::new(background),
        }))
    }

    /// The leased Snowflake machine id (the latest one, if the lease was ever lost).
    pub fn machine_id(&self) -> u16 {
        self.core.ids.machine_id()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in self.background.lock().drain(..) {
            task.abort();
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) || !self.core.ids.held() {
            return Err(Error::unavailable());
        }
        let client = self.core.db.primary().await?;
        client.simple_query("SELECT 1").await.db()?;
        Ok(())
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.queue.send(writer::Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let writer = self.writer.lock().take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        let tasks: Vec<JoinHandle<()>> = self.background.lock().drain(..).collect();
        for task in tasks {
            task.abort();
        }
        self.lease.release().await;
        tracing::info!("postgres store closed");
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserView> {
        accounts::create_user(&self.core, username, password_hash).await
    }

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>> {
        accounts::credentials(&self.core, username).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserView>> {
        accounts::user_by_name(&self.core, username).await
    }

    async fn user(&self, id: UserId) -> Result<Option<UserView>> {
        accounts::user(&self.core, id).await
    }

    async fn create_session(
        &self,
        user: UserId,
        device_name: &str,
        refresh_hash: [u8; 32],
        expires_at_ms: i64,
    ) -> Result<DeviceId> {
        accounts::create_session(&self.core, user, device_name, refresh_hash, expires_at_ms).await
    }

    async fn rotate_refresh(
        &self,
        presented: [u8; 32],
        next: [u8; 32],
        expires_at_ms: i64,
    ) -> Result<RefreshOutcome> {
        accounts::rotate_refresh(&self.core, presented, next, expires_at_ms).await
    }

    async fn revoke_session(&self, device: DeviceId) -> Result<()> {
        accounts::revoke_session(&self.core, device).await
    }

    async fn session_revoked(&self, device: DeviceId) -> Result<bool> {
        accounts::session_revoked(&self.core, device).await
    }

    async fn open_direct(&self, a: UserId, b: UserId) -> Result<(ConversationInfo, bool)> {
        conversations::open_direct(&self.core, a, b).await
    }

    async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        member_limit: u32,
    ) -> Result<ConversationInfo> {
        conversations::create_group(&self.core, owner, name, members, member_limit).await
    }

    async fn change_membership(&self, command: MembershipCommand, member_limit: u32) -> Result<()> {
        conversations::change_membership(&self.core, command, member_limit).await
    }

    async fn conversation(&self, viewer: UserId, conv: ConvId) -> Result<ConversationDetail> {
        conversations::conversation(&self.core, viewer, conv).await
    }

    async fn conversations(&self, viewer: UserId) -> Result<Vec<ConversationSummary>> {
        conversations::conversations(&self.core, viewer).await
    }

    fn append_message(&self, message: NewMessage) -> BoxFuture<Result<Appended>> {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(Error::unavailable())));
        }
        let (reply, rx) = oneshot::channel();
        let tsv = search::tsvector(&message.text);
        // try_send keeps the call synchronous, which is what preserves the caller's order.
        if let Err(e) = self
            .queue
            .try_send(writer::Command::Append(writer::Pending {
                message,
                tsv,
                reply,
            }))
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
        messages::history(&self.core, viewer, conv, page).await
    }

    async fn mark_read(&self, viewer: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        messages::mark_read(&self.core, viewer, conv, seq).await
    }

    async fn backlog(&self, user: UserId, since: u64, page: u32) -> Result<Backlog> {
        let head = self.core.head().await?;
        let state =
            backlog::BacklogState::start(Arc::clone(&self.core), user, since, head, page).await?;
        let pages = futures_util::stream::unfold(state, |mut state| async move {
            state.next_page().await.map(|page| (page, state))
        })
        .boxed();
        Ok(Backlog { head, pages })
    }

    async fn head(&self) -> Result<u64> {
        self.core.head().await
    }

    async fn edit_message(
        &self,
        actor: UserId,
        conv: ConvId,
        seq: u64,
        text: String,
    ) -> Result<MessageView> {
        messages::edit(&self.core, actor, conv, seq, text).await
    }

    async fn delete_message(&self, actor: UserId, conv: ConvId, seq: u64) -> Result<()> {
        messages::delete(&self.core, actor, conv, seq).await
    }

    async fn mark_delivered(&self, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        messages::mark_delivered(&self.core, user, conv, seq).await
    }

    async fn receipts(&self, viewer: UserId, conv: ConvId) -> Result<Receipts> {
        messages::receipts(&self.core, viewer, conv).await
    }

    async fn members(&self, conv: ConvId) -> Result<Arc<[UserId]>> {
        conversations::members(&self.core, conv).await
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>> {
        conversations::contacts(&self.core, user).await
    }

    async fn set_last_seen(&self, user: UserId, at_ms: i64) -> Result<()> {
        accounts::set_last_seen(&self.core, user, at_ms).await
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<i64>> {
        accounts::last_seen(&self.core, user).await
    }

    async fn search(&self, viewer: UserId, query: SearchQuery) -> Result<SearchResults> {
        search::search(&self.core, viewer, query).await
    }
}

#[async_trait]
impl UploadStore for PgStore {
    async fn create_upload(&self, upload: NewUpload, quota: u64) -> Result<UploadRecord> {
        uploads::create_upload(&self.core, upload, quota).await
    }

    async fn upload(&self, id: Id) -> Result<Option<UploadRecord>> {
        uploads::upload(&self.core, id).await
    }

    async fn advance_upload(&self, id: Id, from: u64, to: u64) -> Result<UploadRecord> {
        uploads::advance_upload(&self.core, id, from, to).await
    }

    async fn blob_by_sha(&self, sha256: &str) -> Result<Option<BlobRecord>> {
        uploads::blob_by_sha(&self.core, sha256).await
    }

    async fn complete_upload(&self, id: Id, blob: NewBlob) -> Result<(UploadRecord, bool)> {
        uploads::complete_upload(&self.core, id, blob).await
    }

    async fn delete_upload(&self, id: Id) -> Result<Garbage> {
        uploads::delete_upload(&self.core, id).await
    }

    async fn may_download(&self, viewer: UserId, id: Id) -> Result<bool> {
        uploads::may_download(&self.core, viewer, id).await
    }

    async fn usage(&self, owner: UserId) -> Result<u64> {
        uploads::usage(&self.core, owner).await
    }

    async fn collect_garbage(&self, unattached_before_ms: i64) -> Result<Garbage> {
        uploads::collect_garbage(&self.core, unattached_before_ms).await
    }
}

#[async_trait]
impl NotificationStore for PgStore {
    async fn register_target(&self, user: UserId, address: TargetAddress) -> Result<PushTarget> {
        notifications::register_target(&self.core, user, address).await
    }

    async fn targets(&self, user: UserId) -> Result<Vec<PushTarget>> {
        notifications::targets(&self.core, user).await
    }

    async fn remove_target(&self, user: UserId, id: Id) -> Result<()> {
        notifications::remove_target(&self.core, user, id).await
    }

    async fn prune_target(&self, id: Id) -> Result<()> {
        notifications::prune_target(&self.core, id).await
    }

    async fn set_mute(&self, user: UserId, conv: ConvId, mute: Option<Mute>) -> Result<()> {
        notifications::set_mute(&self.core, user, conv, mute).await
    }

    async fn mute(&self, user: UserId, conv: ConvId) -> Result<Option<Mute>> {
        notifications::mute(&self.core, user, conv).await
    }

    async fn set_dnd(&self, user: UserId, dnd: Option<Option<i64>>) -> Result<()> {
        notifications::set_dnd(&self.core, user, dnd).await
    }

    async fn dnd(&self, user: UserId) -> Result<Option<Option<i64>>> {
        notifications::dnd(&self.core, user).await
    }

    async fn settings(
        &self,
        conv: ConvId,
        users: &[UserId],
    ) -> Result<Vec<parlor_core::notify::RecipientSettings>> {
        notifications::settings(&self.core, conv, users).await
    }

    async fn record(&self, decisions: Decisions, now_ms: i64) -> Result<Vec<NewFeedItem>> {
        notifications::record(&self.core, decisions, now_ms).await
    }

    async fn feed(
        &self,
        user: UserId,
        before: Option<Id>,
        limit: u32,
    ) -> Result<Vec<NotificationView>> {
        notifications::feed(&self.core, user, before, limit).await
    }

    async fn unread_notifications(&self, user: UserId) -> Result<u64> {
        notifications::unread_notifications(&self.core, user).await
    }

    async fn mark_notifications_read(
        &self,
        user: UserId,
        ids: &[Id],
        up_to: Option<Id>,
    ) -> Result<Vec<Id>> {
        notifications::mark_notifications_read(&self.core, user, ids, up_to).await
    }

    async fn unread_messages(&self, user: UserId) -> Result<u64> {
        notifications::unread_messages(&self.core, user).await
    }

    async fn claim_pushes(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushJob>> {
        notifications::claim_pushes(&self.core, now_ms, lease_ms, limit).await
    }

    async fn finish_push(&self, id: Id, done: PushDone) -> Result<()> {
        notifications::finish_push(&self.core, id, done).await
    }

    async fn next_push_due(&self) -> Result<Option<i64>> {
        notifications::next_push_due(&self.core).await
    }
}

#[async_trait]
impl EventLog for PgStore {
    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>> {
        event_log::events_after(&self.core, after, limit).await
    }

    async fn head(&self) -> Result<u64> {
        self.core.head().await
    }
}
