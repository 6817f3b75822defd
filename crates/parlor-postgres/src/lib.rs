//! PostgreSQL adapter of the store port (placeholder until the adapter lands: `connect`
//! refuses to start, so cluster mode fails clearly instead of half-working).

use parlor_core::error::Result;
use parlor_core::model::*;
use parlor_core::ports::{Backlog, BoxFuture, Bus, EventLog, Store};
use parlor_proto::rest::{
    ConversationDetail, ConversationInfo, ConversationSummary, History, MessageView, Receipts,
    SearchResults, UserView,
};
use std::path::PathBuf;
use std::sync::Arc;

pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub struct PgOptions {
    pub url: String,
    pub replica_urls: Vec<String>,
    pub pool_size: usize,
    pub partitions: u32,
    pub tls: Option<TlsFiles>,
    pub node_name: String,
    pub search_candidates: u32,
    pub write_queue: usize,
}

pub enum PgStore {}

impl PgStore {
    pub async fn connect(_options: PgOptions, _bus: Arc<dyn Bus>) -> anyhow::Result<Arc<PgStore>> {
        anyhow::bail!("the PostgreSQL store is not built yet")
    }

    pub fn machine_id(&self) -> u16 {
        match *self {}
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        match *self {}
    }
    async fn close(&self) {
        match *self {}
    }
    async fn create_user(&self, _username: &str, _password_hash: &str) -> Result<UserView> {
        match *self {}
    }
    async fn credentials(&self, _username: &str) -> Result<Option<Credentials>> {
        match *self {}
    }
    async fn user_by_name(&self, _username: &str) -> Result<Option<UserView>> {
        match *self {}
    }
    async fn user(&self, _id: UserId) -> Result<Option<UserView>> {
        match *self {}
    }
    async fn create_session(
        &self,
        _user: UserId,
        _device_name: &str,
        _refresh_hash: [u8; 32],
        _expires_at_ms: i64,
    ) -> Result<DeviceId> {
        match *self {}
    }
    async fn rotate_refresh(
        &self,
        _presented: [u8; 32],
        _next: [u8; 32],
        _expires_at_ms: i64,
    ) -> Result<RefreshOutcome> {
        match *self {}
    }
    async fn revoke_session(&self, _device: DeviceId) -> Result<()> {
        match *self {}
    }
    async fn session_revoked(&self, _device: DeviceId) -> Result<bool> {
        match *self {}
    }
    async fn open_direct(&self, _a: UserId, _b: UserId) -> Result<(ConversationInfo, bool)> {
        match *self {}
    }
    async fn create_group(
        &self,
        _owner: UserId,
        _name: &str,
        _members: &[UserId],
        _member_limit: u32,
    ) -> Result<ConversationInfo> {
        match *self {}
    }
    async fn change_membership(
        &self,
        _command: MembershipCommand,
        _member_limit: u32,
    ) -> Result<()> {
        match *self {}
    }
    async fn conversation(&self, _viewer: UserId, _conv: ConvId) -> Result<ConversationDetail> {
        match *self {}
    }
    async fn conversations(&self, _viewer: UserId) -> Result<Vec<ConversationSummary>> {
        match *self {}
    }
    fn append_message(&self, _message: NewMessage) -> BoxFuture<Result<Appended>> {
        match *self {}
    }
    async fn history(&self, _viewer: UserId, _conv: ConvId, _page: Page) -> Result<History> {
        match *self {}
    }
    async fn mark_read(&self, _viewer: UserId, _conv: ConvId, _seq: u64) -> Result<u64> {
        match *self {}
    }
    async fn backlog(&self, _user: UserId, _since: u64, _page: u32) -> Result<Backlog> {
        match *self {}
    }
    async fn head(&self) -> Result<u64> {
        match *self {}
    }
    async fn edit_message(
        &self,
        _actor: UserId,
        _conv: ConvId,
        _seq: u64,
        _text: String,
    ) -> Result<MessageView> {
        match *self {}
    }
    async fn delete_message(&self, _actor: UserId, _conv: ConvId, _seq: u64) -> Result<()> {
        match *self {}
    }
    async fn mark_delivered(&self, _user: UserId, _conv: ConvId, _seq: u64) -> Result<u64> {
        match *self {}
    }
    async fn receipts(&self, _viewer: UserId, _conv: ConvId) -> Result<Receipts> {
        match *self {}
    }
    async fn members(&self, _conv: ConvId) -> Result<Arc<[UserId]>> {
        match *self {}
    }
    async fn contacts(&self, _user: UserId) -> Result<Vec<UserId>> {
        match *self {}
    }
    async fn set_last_seen(&self, _user: UserId, _at_ms: i64) -> Result<()> {
        match *self {}
    }
    async fn last_seen(&self, _user: UserId) -> Result<Option<i64>> {
        match *self {}
    }
    async fn search(&self, _viewer: UserId, _query: SearchQuery) -> Result<SearchResults> {
        match *self {}
    }
}

#[async_trait::async_trait]
impl EventLog for PgStore {
    async fn events_after(&self, _after: u64, _limit: u32) -> Result<Vec<Event>> {
        match *self {}
    }
    async fn head(&self) -> Result<u64> {
        match *self {}
    }
}
