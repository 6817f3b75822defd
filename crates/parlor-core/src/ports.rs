//! Ports: the narrow traits that adapters implement. Each documents the guarantee every
//! implementation must give; the shared end-to-end suite checks them.

use crate::error::Result;
use crate::model::*;
use crate::notify::{
    Decisions, Mute, NewFeedItem, PushDone, PushJob, PushMessage, PushOutcome, PushTarget,
    RecipientSettings, TargetAddress,
};
use crate::uploads::{Garbage, NewBlob, NewUpload, UploadRecord};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use parlor_proto::notify::{NotificationView, PushKind};
use parlor_proto::rest::{
    Availability, ConversationDetail, ConversationInfo, ConversationSummary, History, MessageView,
    PresenceView, Receipts, SearchResults, UserView,
};
use parlor_proto::Id;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Durable state: users, device sessions, conversations, messages and read markers.
///
/// Guarantees every implementation gives:
/// - A write's future resolves `Ok` only after the write is committed.
/// - Each committed message gets the next sequence number of its conversation (1, 2, 3, …
///   with no gap) and a sync position greater than every position committed before it.
/// - Committed events are handed to the [`Bus`] in commit order, after the commit.
/// - A message with a `(sender, cid)` already stored is not stored again; the original
///   [`Appended`] comes back with `duplicate: true`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Succeeds when the store is open and accepts writes.
    async fn ping(&self) -> Result<()>;

    /// Commits what is queued and stops accepting writes (graceful shutdown).
    async fn close(&self);

    /// Creates a user with a lower-cased, validated username; `UsernameTaken` if it exists.
    async fn create_user(&self, username: &str, password_hash: &str) -> Result<UserView>;
    async fn credentials(&self, username: &str) -> Result<Option<Credentials>>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserView>>;
    async fn user(&self, id: UserId) -> Result<Option<UserView>>;

    /// Starts a device session with a hashed refresh token.
    async fn create_session(
        &self,
        user: UserId,
        device_name: &str,
        refresh_hash: [u8; 32],
        expires_at_ms: i64,
    ) -> Result<DeviceId>;
    /// Replaces a current refresh token by a new one (single use).
    async fn rotate_refresh(
        &self,
        presented: [u8; 32],
        next: [u8; 32],
        expires_at_ms: i64,
    ) -> Result<RefreshOutcome>;
    async fn revoke_session(&self, device: DeviceId) -> Result<()>;
    /// Called on every authenticated request and connection: must be cheap.
    async fn session_revoked(&self, device: DeviceId) -> Result<bool>;

    /// The direct conversation between two distinct users, created on first request.
    /// Returns the conversation and whether it was created now.
    async fn open_direct(&self, a: UserId, b: UserId) -> Result<(ConversationInfo, bool)>;
    /// A group owned by `owner` with the given initial members (limit enforced).
    async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
        member_limit: u32,
    ) -> Result<ConversationInfo>;
    async fn change_membership(&self, command: MembershipCommand, member_limit: u32) -> Result<()>;
    /// The conversation as seen by a current member.
    async fn conversation(&self, viewer: UserId, conv: ConvId) -> Result<ConversationDetail>;
    /// The viewer's current conversations with last message and unread count, most
    /// recently active first.
    async fn conversations(&self, viewer: UserId) -> Result<Vec<ConversationSummary>>;

    /// Appends a message. The append order of calls made one after another from one task
    /// is the commit order, so a client's pipelined sends keep their order. Membership is
    /// checked atomically with the append.
    fn append_message(&self, message: NewMessage) -> BoxFuture<Result<Appended>>;

    /// History for a current or former member (a former member sees up to when they left).
    async fn history(&self, viewer: UserId, conv: ConvId, page: Page) -> Result<History>;

    /// Moves the viewer's read marker forward to `seq`; returns the marker after the call.
    async fn mark_read(&self, viewer: UserId, conv: ConvId, seq: u64) -> Result<u64>;

    /// The events visible to `user` with positions in `(since, head]`, where `head` is the
    /// newest position committed when the call starts. Pages come in ascending position
    /// order, each at most about `page` events. A caller that subscribed to the bus before
    /// this call and then drops live events with `pos <= head` sees every event exactly once.
    async fn backlog(&self, user: UserId, since: u64, page: u32) -> Result<Backlog>;

    /// The newest committed position.
    async fn head(&self) -> Result<u64>;

    /// Replaces the text of a message; only its sender may. The message keeps its `seq`;
    /// an `edited` event with a new position reaches members live and through sync.
    async fn edit_message(
        &self,
        actor: UserId,
        conv: ConvId,
        seq: u64,
        text: String,
    ) -> Result<MessageView>;
    /// Deletes a message (its sender, or an owner or admin of the group): the text is
    /// removed from the store and the search index; a tombstone keeps the `seq`.
    async fn delete_message(&self, actor: UserId, conv: ConvId, seq: u64) -> Result<()>;
    /// Moves the user's delivered marker forward; publishes a live `delivered` event.
    async fn mark_delivered(&self, user: UserId, conv: ConvId, seq: u64) -> Result<u64>;
    /// Every member's delivered and read markers, for a current member.
    async fn receipts(&self, viewer: UserId, conv: ConvId) -> Result<Receipts>;
    /// Current members of a conversation (cheap: cached).
    async fn members(&self, conv: ConvId) -> Result<Arc<[UserId]>>;
    /// Everyone who currently shares a conversation with `user` (not `user`).
    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>>;
    async fn set_last_seen(&self, user: UserId, at_ms: i64) -> Result<()>;
    async fn last_seen(&self, user: UserId) -> Result<Option<i64>>;
    /// Full-text search over the messages `viewer` may read (current conversations, and
    /// former ones up to when they left). May lag commits by a few milliseconds.
    async fn search(&self, viewer: UserId, query: SearchQuery) -> Result<SearchResults>;
}

/// Who is online. Ephemeral: a restart forgets it (last-seen times are stored).
///
/// Guarantee: a user is online while any device is connected and for the grace period
/// after the last one disconnects; `expire` reports each transition to offline once.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A device connected; the new presence if the user just came online.
    async fn connect(&self, user: UserId) -> Result<Option<PresenceView>>;
    async fn disconnect(&self, user: UserId, now_ms: i64) -> Result<()>;
    /// Changes that no call caused: users whose grace period ended by `now_ms`
    /// (offline), and, for a shared presence engine, users it lost and got back while
    /// connected (online again, e.g. after the engine restarted empty).
    async fn expire(&self, now_ms: i64) -> Result<Vec<PresenceView>>;
    async fn set_status(
        &self,
        user: UserId,
        status: Availability,
        text: Option<String>,
    ) -> Result<PresenceView>;
    /// Presence as far as this port knows; `last_seen` may be missing for users it has
    /// not seen since it started.
    async fn get(&self, user: UserId) -> Result<PresenceView>;
    /// The nodes holding connections of `user` right now (the connection registry). A
    /// single-node presence answers with its own node name or nothing.
    async fn nodes(&self, user: UserId) -> Result<Vec<String>>;
}

/// A user's missed events, see [`Store::backlog`].
pub struct Backlog {
    pub head: u64,
    pub pages: BoxStream<'static, Result<Vec<Event>>>,
}

/// Carries committed events to every node's connections.
///
/// Guarantee: events published in one order are received by every subscriber in that
/// order, each once, at least while the subscriber keeps up. The in-process bus never
/// drops; a subscriber that falls behind a bounded bus must re-read from the store.
pub trait Bus: Send + Sync + 'static {
    fn publish(&self, events: Arc<[Event]>);
    fn subscribe(&self) -> BoxStream<'static, Arc<[Event]>>;
}

/// Committed events by position, for a bus that must fill a gap in what it received
/// (an event committed by a node that died before publishing it).
///
/// Guarantee: `events_after(p, n)` returns the committed events with positions `p + 1`,
/// `p + 2`, … in order, with their recipients as the commit saw them, up to `n` of them
/// and never beyond [`Store::head`]; positions are dense, so a short answer means the
/// head was reached.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Event>>;
    async fn head(&self) -> Result<u64>;
}

/// A cache of each conversation's newest history page, shared by the nodes of a cluster
/// so that the most common history read (opening a conversation) skips the database.
///
/// Guarantee: `get` never returns a page older than the last `bump` that completed
/// before it. Implementations get this with a version per conversation: `put` stores a
/// page only if the version it was read under is still current. An implementation that
/// cannot reach its engine answers `None`/does nothing (the store answers instead).
#[async_trait]
pub trait RecentCache: Send + Sync + 'static {
    /// The newest page of `conv` (at most [`RECENT_PAGE`] messages), if cached
    /// and current.
    async fn get(&self, conv: ConvId) -> Option<History>;
    /// The current version of `conv`, to read the store under and hand to `put`.
    async fn version(&self, conv: ConvId) -> Option<u64>;
    async fn put(&self, conv: ConvId, version: u64, page: &History);
    /// `conv`'s messages changed (a send, edit or delete was committed).
    async fn bump(&self, conv: ConvId);
}

/// Messages per cached page.
pub const RECENT_PAGE: u32 = 50;

/// Token-bucket rate limits keyed by strings such as `login:ip:127.0.0.1`.
///
/// The embedded limiter counts per process; the Redis one counts across the cluster. A
/// limiter whose engine is unreachable lets requests through (and logs it): rate limits
/// protect the service, they must not take it down.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one token for `key`, or says how long to wait for one.
    async fn check(&self, key: &str, rule: RateRule) -> Result<(), Duration>;
}

/// `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateRule {
    pub burst: u32,
    pub per_second: f64,
}

/// Upload metadata: who uploaded what, how far each upload has come, the blob each
/// complete one is stored as, and which messages carry it. Implemented by each store on
/// the same database as messages, because attaching an upload to a message must be
/// atomic with the append (see [`Store::append_message`]), and garbage collection must
/// never remove an upload that a commit is attaching.
///
/// Guarantees every implementation gives:
/// - A blob row exists only while at least one upload uses it, except between
///   [`UploadStore::collect_garbage`] removing it and the caller deleting its objects;
///   a later upload of the same bytes then gets a new blob (a new key), so it never
///   shares an object that is being deleted.
/// - `advance_upload` moves an offset only from the value the caller names
///   (compare-and-set), so two concurrent writers of one upload cannot both succeed.
/// - Appending a message with attachments checks, under the append's lock, that each
///   upload is ready and the sender's, stores its [`parlor_proto::rest::AttachmentView`]
///   with the message, and marks it attached; deleting the message drops the reference.
#[async_trait]
pub trait UploadStore: Send + Sync + 'static {
    /// Creates an upload, unless the owner's uploads (every state) plus `length` would
    /// exceed `quota` bytes (`QuotaExceeded`).
    async fn create_upload(&self, upload: NewUpload, quota: u64) -> Result<UploadRecord>;
    async fn upload(&self, id: Id) -> Result<Option<UploadRecord>>;
    /// Records that the part starting at `from` holds bytes `from..to`. `Conflict` unless
    /// the upload is still receiving at offset `from` and `to` stays within its length.
    async fn advance_upload(&self, id: Id, from: u64, to: u64) -> Result<UploadRecord>;
    /// The blob already holding this content, if any.
    async fn blob_by_sha(&self, sha256: &str) -> Result<Option<crate::uploads::BlobRecord>>;
    /// Makes a fully received upload ready on the blob of its content: the existing blob
    /// with `blob.sha256` if there is one, else a new blob from `blob`. Returns the ready
    /// upload and whether `blob` was used (if not, the caller deletes what it wrote at
    /// `blob.key`).
    async fn complete_upload(&self, id: Id, blob: NewBlob) -> Result<(UploadRecord, bool)>;
    /// Deletes an upload no message carries (its owner gave up on it, or its content was
    /// refused). `Conflict` when a message carries it.
    async fn delete_upload(&self, id: Id) -> Result<Garbage>;
    /// Whether `viewer` may download the upload: its uploader, or anyone who can read a
    /// message that carries it (a current member, or a former one up to when they left).
    async fn may_download(&self, viewer: UserId, id: Id) -> Result<bool>;
    /// Bytes counted against the owner's quota (every upload they have, in any state).
    async fn usage(&self, owner: UserId) -> Result<u64>;
    /// Removes uploads never attached and created before `unattached_before_ms`, uploads
    /// that were attached but whose messages are all deleted, and blobs no upload uses.
    /// Returns the objects (parts, blobs, thumbnails) the caller must delete.
    async fn collect_garbage(&self, unattached_before_ms: i64) -> Result<Garbage>;
}

/// Bytes from or to object storage.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// What [`BlobStore::put`] stored.
#[derive(Debug)]
pub struct Written {
    pub bytes: u64,
    /// Set when the body stopped with an error (a client cut the connection): the
    /// object then holds the `bytes` that arrived before it.
    pub cut: Option<std::io::Error>,
}

/// Object storage for upload bytes: a flat namespace of immutable objects.
///
/// Implementations: the local filesystem under the data directory (embedded default)
/// and any S3-compatible service (cluster mode, or by configuration). Both stream: no
/// call holds a whole object in memory.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores everything `body` yields under `key`, replacing an object already there.
    /// If the body fails part-way, what arrived before the failure is stored all the
    /// same and reported in [`Written::cut`], so a resumable upload continues from
    /// there. `Err` only when storage itself failed (then nothing is stored).
    async fn put(&self, key: &str, body: ByteStream) -> Result<Written>;
    /// `range` within the object, or all of it. `NotFound` when there is no such object.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream>;
    /// Copies an object within the store (server-side where the service can).
    async fn copy(&self, from: &str, to: &str) -> Result<()>;
    /// Deletes an object; deleting one that does not exist succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Succeeds when the storage answers.
    async fn ping(&self) -> Result<()>;
}

/// Notification state: push targets, mute and do-not-disturb settings, the in-app feed,
/// and the queue of pushes to send. Implemented by each store on its own database, so
/// that recording a message's decisions is one transaction.
///
/// Guarantees every implementation gives:
/// - `record` is idempotent per message: a feed item is unique per (user, message) and a
///   queued push per (message, target), so a redelivered event adds nothing.
/// - A push marked sent is never handed out by `claim_pushes` again; a claimed push whose
///   lease ran out (its node died mid-send) is handed out again, with the same id.
/// - `claim_pushes` hands out only the newest due push of each (target, conversation)
///   and retires the older ones: pushes of one conversation collapse in the queue as they
///   do on the device.
/// - Removing a target removes its queued pushes.
#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// Registers a target for `user`. Registering an address already registered (by
    /// anyone: a device that changed hands) moves it to `user` with the new keys and keeps
    /// its id. `Conflict` past [`crate::notify::MAX_TARGETS_PER_USER`].
    async fn register_target(&self, user: UserId, address: TargetAddress) -> Result<PushTarget>;
    async fn targets(&self, user: UserId) -> Result<Vec<PushTarget>>;
    /// `NotFound` unless the target is the user's.
    async fn remove_target(&self, user: UserId, id: Id) -> Result<()>;
    /// The provider said the target is gone: remove it whoever owns it.
    async fn prune_target(&self, id: Id) -> Result<()>;

    /// `NotMember` unless the user is a member of `conv`. `None` unmutes.
    async fn set_mute(&self, user: UserId, conv: ConvId, mute: Option<Mute>) -> Result<()>;
    async fn mute(&self, user: UserId, conv: ConvId) -> Result<Option<Mute>>;
    /// `Some(until)` turns do-not-disturb on (`until: None`: until turned off).
    async fn set_dnd(&self, user: UserId, dnd: Option<Option<i64>>) -> Result<()>;
    async fn dnd(&self, user: UserId) -> Result<Option<Option<i64>>>;
    /// For each of `users`: their mute of `conv` and their stored do-not-disturb, in
    /// the order given. One round trip for a whole group.
    async fn settings(&self, conv: ConvId, users: &[UserId]) -> Result<Vec<RecipientSettings>>;

    /// Records one message's feed items and pushes (one queued push per target each
    /// user has now). Returns the feed items that were new.
    async fn record(&self, decisions: Decisions, now_ms: i64) -> Result<Vec<NewFeedItem>>;
    /// Newest first, older than `before` when given.
    async fn feed(
        &self,
        user: UserId,
        before: Option<Id>,
        limit: u32,
    ) -> Result<Vec<NotificationView>>;
    async fn unread_notifications(&self, user: UserId) -> Result<u64>;
    /// Marks `ids` (the user's only) and, with `up_to`, every notification up to it as
    /// read. Returns the ids that changed.
    async fn mark_notifications_read(
        &self,
        user: UserId,
        ids: &[Id],
        up_to: Option<Id>,
    ) -> Result<Vec<Id>>;
    /// Unread messages over the user's conversations, from their read markers (the badge).
    async fn unread_messages(&self, user: UserId) -> Result<u64>;

    /// Claims up to `limit` due pushes for `lease_ms` (see the collapse guarantee above).
    async fn claim_pushes(&self, now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushJob>>;
    async fn finish_push(&self, id: Id, done: PushDone) -> Result<()>;
    /// Earliest time a queued push becomes due (for the sender's sleep), if any is queued.
    async fn next_push_due(&self) -> Result<Option<i64>>;
}

/// One push provider (Web Push, FCM, APNs, webhook): turns a [`PushMessage`] into the
/// provider's request. Never returns an error: every failure is a [`PushOutcome`].
#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    fn kind(&self) -> PushKind;
    async fn send(&self, target: &TargetAddress, message: &PushMessage) -> PushOutcome;
}

/// A batch of committed events from a durable queue, to acknowledge once handled.
pub struct WorkItem {
    /// Shared with the bus batch it came from where possible: no copy per consumer.
    pub events: Arc<[Event]>,
    pub ack: Box<dyn WorkAck>,
}

#[async_trait]
pub trait WorkAck: Send {
    /// Handled: not delivered again, except after a crash that came before the queue
    /// recorded the acknowledgement (an implementation may record it a little later;
    /// handlers are idempotent).
    async fn ack(self: Box<Self>) -> Result<()>;
    /// Failed transiently: deliver it again after `delay`.
    async fn retry_after(self: Box<Self>, delay: Duration) -> Result<()>;
}

/// Committed events for background work that must survive restarts (notifications).
///
/// Guarantee: every event committed after the queue was first bound is delivered at
/// least once, in position order within a conversation, and again after a restart
/// until acknowledged. Handlers must be idempotent. In cluster mode the nodes bound to
/// one queue share its work (a JetStream durable consumer); the embedded queue keeps its
/// cursor in the store.
#[async_trait]
pub trait WorkQueue: Send + 'static {
    /// The next batch; `None` when the queue is closed for good.
    async fn next(&mut self) -> Option<Result<WorkItem>>;
}
