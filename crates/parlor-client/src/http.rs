//! REST client: one method per endpoint, JSON in and out.
//!
//! Every method returns the decoded success body, or [`ClientError::Api`] with the
//! server's [`parlor_proto::ErrorBody`] for any non-2xx status, so tests can assert on
//! error codes directly. The raw helpers ([`Http::get_raw`], [`Http::post_raw`]) skip
//! all decoding for tests that send malformed input on purpose.

use crate::error::{chain, truncate, ClientError, Result};
use crate::tls;
use parlor_proto::notify::{
    ConversationNotifications, MarkNotificationsRead, NewPushTarget, NotificationPage,
    NotificationPreferences, NotificationsRead, PushTargetList, PushTargetView, VapidKey,
};
use parlor_proto::rest::{
    AddMemberRequest, Availability, ConversationDetail, ConversationInfo, ConversationList,
    CreateGroupRequest, DirectRequest, EditRequest, History, LoginRequest, MessageView,
    PresenceList, PresenceView, ReadRequest, ReadState, Receipts, RefreshRequest, RegisterRequest,
    Role, SearchResults, SendRequest, SetRoleRequest, StatusRequest, TokenPair, UploadUsage,
    UploadView, UserView,
};
use parlor_proto::ws::Ack;
use parlor_proto::Id;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Upper bound for one request, so that a hung server fails a test instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A REST client for one server. Cloning is cheap (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct Http {
    base: Arc<str>,
    client: reqwest::Client,
}

impl Http {
    /// `base_url` is e.g. `http://127.0.0.1:8080` or `https://localhost:8443` (a trailing
    /// slash is ignored). With `root_pem`, HTTPS trusts exactly those roots; without it,
    /// reqwest's built-in web PKI roots are used.
    pub fn new(base_url: &str, root_pem: Option<&[u8]>) -> Result<Http> {
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(pem) = root_pem {
            builder = builder.use_preconfigured_tls(tls::client_config(pem)?);
        }
        let client = builder
            .build()
            .map_err(|e| ClientError::Transport(chain(&e)))?;
        Ok(Http {
            base: Arc::from(base_url.trim_end_matches('/')),
            client,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    // ---- auth ----

    /// POST /v1/auth/register (201).
    pub async fn register(&self, username: &str, password: &str) -> Result<UserView> {
        let body = RegisterRequest {
            username: username.into(),
            password: password.into(),
        };
        self.json(Method::POST, "/v1/auth/register", None, Some(&body))
            .await
    }

    /// POST /v1/auth/login.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<TokenPair> {
        let body = LoginRequest {
            username: username.into(),
            password: password.into(),
            device_name: device_name.map(str::to_owned),
        };
        self.json(Method::POST, "/v1/auth/login", None, Some(&body))
            .await
    }

    /// POST /v1/auth/refresh. The refresh token is single-use.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair> {
        let body = RefreshRequest {
            refresh_token: refresh_token.into(),
        };
        self.json(Method::POST, "/v1/auth/refresh", None, Some(&body))
            .await
    }

    /// POST /v1/auth/logout (204): revokes the device session behind `token`.
    pub async fn logout(&self, token: &str) -> Result<()> {
        self.empty(Method::POST, "/v1/auth/logout", Some(token), None::<&()>)
            .await
    }

    // ---- users ----

    /// GET /v1/me.
    pub async fn me(&self, token: &str) -> Result<UserView> {
        self.json(Method::GET, "/v1/me", Some(token), None::<&()>)
            .await
    }

    /// GET /v1/users/by-name/{username} (the name is percent-encoded).
    pub async fn user_by_name(&self, token: &str, name: &str) -> Result<UserView> {
        let path = format!("/v1/users/by-name/{}", encode_segment(name));
        self.json(Method::GET, &path, Some(token), None::<&()>)
            .await
    }

    // ---- conversations ----

    /// POST /v1/conversations/direct (200 when it already existed, 201 when created).
    pub async fn open_direct(&self, token: &str, user_id: Id) -> Result<ConversationInfo> {
        let body = DirectRequest { user_id };
        self.json(
            Method::POST,
            "/v1/conversations/direct",
            Some(token),
            Some(&body),
        )
        .await
    }

    /// POST /v1/conversations (201). The caller becomes the owner.
    pub async fn create_group(
        &self,
        token: &str,
        name: &str,
        members: &[Id],
    ) -> Result<ConversationInfo> {
        let body = CreateGroupRequest {
            name: name.into(),
            members: members.to_vec(),
        };
        self.json(Method::POST, "/v1/conversations", Some(token), Some(&body))
            .await
    }

    /// GET /v1/conversations.
    pub async fn conversations(&self, token: &str) -> Result<ConversationList> {
        self.json(Method::GET, "/v1/conversations", Some(token), None::<&()>)
            .await
    }

    /// GET /v1/conversations/{id}.
    pub async fn conversation(&self, token: &str, conv: Id) -> Result<ConversationDetail> {
        let path = format!("/v1/conversations/{conv}");
        self.json(Method::GET, &path, Some(token), None::<&()>)
            .await
    }

    /// POST /v1/conversations/{id}/members (204).
    pub async fn add_member(&self, token: &str, conv: Id, user_id: Id) -> Result<()> {
        let path = format!("/v1/conversations/{conv}/members");
        let body = AddMemberRequest { user_id };
        self.empty(Method::POST, &path, Some(token), Some(&body))
            .await
    }

    /// DELETE /v1/conversations/{id}/members/{user_id} (204).
    pub async fn remove_member(&self, token: &str, conv: Id, user_id: Id) -> Result<()> {
        let path = format!("/v1/conversations/{conv}/members/{user_id}");
        self.empty(Method::DELETE, &path, Some(token), None::<&()>)
            .await
    }

    /// PUT /v1/conversations/{id}/members/{user_id}/role (204).
    pub async fn set_role(&self, token: &str, conv: Id, user_id: Id, role: Role) -> Result<()> {
        let path = format!("/v1/conversations/{conv}/members/{user_id}/role");
        let body = SetRoleRequest { role };
        self.empty(Method::PUT, &path, Some(token), Some(&body))
            .await
    }

    /// POST /v1/conversations/{id}/leave (204).
    pub async fn leave(&self, token: &str, conv: Id) -> Result<()> {
        let path = format!("/v1/conversations/{conv}/leave");
        self.empty(Method::POST, &path, Some(token), None::<&()>)
            .await
    }

    // ---- messages ----

    /// GET /v1/conversations/{id}/messages; absent parameters are omitted from the query.
    pub async fn history(
        &self,
        token: &str,
        conv: Id,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<History> {
        let mut query = Vec::new();
        if let Some(v) = before {
            query.push(format!("before={v}"));
        }
        if let Some(v) = after {
            query.push(format!("after={v}"));
        }
        if let Some(v) = limit {
            query.push(format!("limit={v}"));
        }
        let mut path = format!("/v1/conversations/{conv}/messages");
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.json(Method::GET, &path, Some(token), None::<&()>)
            .await
    }

    /// POST /v1/conversations/{id}/messages (201). Returns the same acknowledgement the
    /// WebSocket `send` gets.
    pub async fn send(&self, token: &str, conv: Id, cid: Option<&str>, text: &str) -> Result<Ack> {
        let body = SendRequest {
            cid: cid.map(str::to_owned),
            text: text.into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        };
        self.send_request(token, conv, &body).await
    }

    /// POST /v1/conversations/{id}/messages with every option (reply, mentions).
    pub async fn send_request(&self, token: &str, conv: Id, body: &SendRequest) -> Result<Ack> {
        let path = format!("/v1/conversations/{conv}/messages");
        self.json(Method::POST, &path, Some(token), Some(body))
            .await
    }

    /// PATCH /v1/conversations/{id}/messages/{seq}.
    pub async fn edit(&self, token: &str, conv: Id, seq: u64, text: &str) -> Result<MessageView> {
        let path = format!("/v1/conversations/{conv}/messages/{seq}");
        let body = EditRequest { text: text.into() };
        self.json(Method::PATCH, &path, Some(token), Some(&body))
            .await
    }

    /// DELETE /v1/conversations/{id}/messages/{seq} (204).
    pub async fn delete_message(&self, token: &str, conv: Id, seq: u64) -> Result<()> {
        let path = format!("/v1/conversations/{conv}/messages/{seq}");
        self.empty(Method::DELETE, &path, Some(token), None::<&()>)
            .await
    }

    /// POST /v1/conversations/{id}/delivered (204).
    pub async fn mark_delivered(&self, token: &str, conv: Id, seq: u64) -> Result<()> {
        let path = format!("/v1/conversations/{conv}/delivered");
        self.empty(Method::POST, &path, Some(token), Some(&ReadRequest { seq }))
            .await
    }

    /// GET /v1/conversations/{id}/receipts.
    pub async fn receipts(&self, token: &str, conv: Id) -> Result<Receipts> {
        let path = format!("/v1/conversations/{conv}/receipts");
        self.json(Method::GET, &path, Some(token), None::<&()>)
            .await
    }

    /// GET /v1/presence?users=a,b.
    pub async fn presence(&self, token: &str, users: &[Id]) -> Result<PresenceList> {
        let list = users
            .iter()
            .map(Id::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let path = format!("/v1/presence?users={list}");
        self.json(Method::GET, &path, Some(token), None::<&()>)
            .await
    }

    /// PUT /v1/me/status.
    pub async fn set_status(
        &self,
        token: &str,
        status: Availability,
        text: Option<&str>,
    ) -> Result<PresenceView> {
        let body = StatusRequest {
            status,
            text: text.map(str::to_owned),
        };
        self.json(Method::PUT, "/v1/me/status", Some(token), Some(&body))
            .await
    }

    /// GET /v1/search with `q` and optional filters given as `(name, value)` pairs
    /// (`conv`, `sender`, `from`, `to`, `cursor`, `limit`).
    pub async fn search(
        &self,
        token: &str,
        q: &str,
        filters: &[(&str, String)],
    ) -> Result<SearchResults> {
        let mut url = format!("/v1/search?q={}", encode_segment(q));
        for (name, value) in filters {
            url.push_str(&format!("&{name}={}", encode_segment(value)));
        }
        self.json(Method::GET, &url, Some(token), None::<&()>).await
    }

    /// POST /v1/conversations/{id}/read.
    pub async fn mark_read(&self, token: &str, conv: Id, seq: u64) -> Result<ReadState> {
        let path = format!("/v1/conversations/{conv}/read");
        let body = ReadRequest { seq };
        self.json(Method::POST, &path, Some(token), Some(&body))
            .await
    }

    // ---- operations ----

    /// GET /healthz; returns the status code.
    pub async fn healthz(&self) -> Result<u16> {
        Ok(self.get_raw("/healthz", None).await?.0)
    }

    /// GET /readyz; returns the status code.
    pub async fn readyz(&self) -> Result<u16> {
        Ok(self.get_raw("/readyz", None).await?.0)
    }

    /// GET /metrics (Prometheus text format).
    pub async fn metrics(&self) -> Result<String> {
        let resp = self
            .execute(self.request(Method::GET, "/metrics", None))
            .await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(chain(&e)))?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_response(status, &bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    // ---- raw access for bad-input tests ----

    /// GET `path` (which may include a query); returns the status and body text as is.
    pub async fn get_raw(&self, path: &str, token: Option<&str>) -> Result<(u16, String)> {
        let resp = self.execute(self.request(Method::GET, path, token)).await?;
        raw(resp).await
    }

    /// POST `body` with the given content type; returns the status and body text as is.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let req = self
            .request(Method::POST, path, token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let resp = self.execute(req).await?;
        raw(resp).await
    }

    // ---- uploads ----

    /// POST /v1/uploads with the whole file as the body (201).
    pub async fn upload(
        &self,
        token: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<UploadView> {
        let path = format!("/v1/uploads?name={}", encode_segment(name));
        let req = self
            .request(Method::POST, &path, Some(token))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        decode(self.execute(req).await?, &path).await
    }

    /// POST /v1/uploads (tus creation): returns the new upload's id and offset.
    pub async fn tus_create(
        &self,
        token: &str,
        name: &str,
        content_type: &str,
        length: u64,
    ) -> Result<UploadView> {
        let req = self
            .request(Method::POST, "/v1/uploads", Some(token))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", length.to_string())
            .header(
                "Upload-Metadata",
                format!("filename {},filetype {}", b64(name), b64(content_type)),
            );
        decode(self.execute(req).await?, "/v1/uploads").await
    }

    /// HEAD /v1/uploads/{id}: the offset the server has.
    pub async fn tus_offset(&self, token: &str, id: Id) -> Result<u64> {
        let path = format!("/v1/uploads/{id}");
        let req = self
            .request(Method::HEAD, &path, Some(token))
            .header("Tus-Resumable", "1.0.0");
        let resp = self.execute(req).await?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(ClientError::from_response(status, b""));
        }
        offset_header(&resp)
    }

    /// PATCH /v1/uploads/{id} from `offset`: returns the new offset.
    pub async fn tus_patch(&self, token: &str, id: Id, offset: u64, bytes: Vec<u8>) -> Result<u64> {
        let path = format!("/v1/uploads/{id}");
        let req = self
            .request(Method::PATCH, &path, Some(token))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset.to_string())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/offset+octet-stream",
            )
            .body(bytes);
        let resp = self.execute(req).await?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = resp.bytes().await.map_err(map_reqwest)?;
            return Err(ClientError::from_response(status, &bytes));
        }
        offset_header(&resp)
    }

    /// GET /v1/uploads/{id}.
    pub async fn upload_info(&self, token: &str, id: Id) -> Result<UploadView> {
        self.json(
            Method::GET,
            &format!("/v1/uploads/{id}"),
            Some(token),
            None::<&()>,
        )
        .await
    }

    /// DELETE /v1/uploads/{id} (204).
    pub async fn delete_upload(&self, token: &str, id: Id) -> Result<()> {
        self.empty(
            Method::DELETE,
            &format!("/v1/uploads/{id}"),
            Some(token),
            None::<&()>,
        )
        .await
    }

    /// GET /v1/push/vapid: the Web Push application server key.
    pub async fn vapid_key(&self, token: &str) -> Result<VapidKey> {
        self.json(Method::GET, "/v1/push/vapid", Some(token), None::<&()>)
            .await
    }

    /// POST /v1/push/targets (201).
    pub async fn register_push_target(
        &self,
        token: &str,
        target: &NewPushTarget,
    ) -> Result<PushTargetView> {
        self.json(Method::POST, "/v1/push/targets", Some(token), Some(target))
            .await
    }

    /// GET /v1/push/targets.
    pub async fn push_targets(&self, token: &str) -> Result<PushTargetList> {
        self.json(Method::GET, "/v1/push/targets", Some(token), None::<&()>)
            .await
    }

    /// DELETE /v1/push/targets/{id} (204).
    pub async fn remove_push_target(&self, token: &str, id: Id) -> Result<()> {
        let path = format!("/v1/push/targets/{id}");
        self.empty(Method::DELETE, &path, Some(token), None::<&()>)
            .await
    }

    /// GET /v1/notifications, newest first.
    pub async fn notifications(
        &self,
        token: &str,
        before: Option<Id>,
        limit: Option<u32>,
    ) -> Result<NotificationPage> {
        let mut query = Vec::new();
        if let Some(b) = before {
            query.push(format!("before={b}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let path = if query.is_empty() {
            "/v1/notifications".to_owned()
        } else {
            format!("/v1/notifications?{}", query.join("&"))
        };
        self.json(Method::GET, &path, Some(token), None::<&()>)
            .await
    }

    /// POST /v1/notifications/read.
    pub async fn mark_notifications_read(
        &self,
        token: &str,
        body: &MarkNotificationsRead,
    ) -> Result<NotificationsRead> {
        self.json(
            Method::POST,
            "/v1/notifications/read",
            Some(token),
            Some(body),
        )
        .await
    }

    /// PUT /v1/notifications/preferences (do-not-disturb).
    pub async fn set_notification_preferences(
        &self,
        token: &str,
        prefs: &NotificationPreferences,
    ) -> Result<NotificationPreferences> {
        self.json(
            Method::PUT,
            "/v1/notifications/preferences",
            Some(token),
            Some(prefs),
        )
        .await
    }

    /// GET /v1/notifications/preferences.
    pub async fn notification_preferences(&self, token: &str) -> Result<NotificationPreferences> {
        self.json(
            Method::GET,
            "/v1/notifications/preferences",
            Some(token),
            None::<&()>,
        )
        .await
    }

    /// PUT /v1/conversations/{id}/notifications (mute).
    pub async fn set_conversation_notifications(
        &self,
        token: &str,
        conv: Id,
        settings: &ConversationNotifications,
    ) -> Result<ConversationNotifications> {
        let path = format!("/v1/conversations/{conv}/notifications");
        self.json(Method::PUT, &path, Some(token), Some(settings))
            .await
    }

    /// GET /v1/conversations/{id}/notifications.
    pub async fn conversation_notifications(
        &self,
        token: &str,
        conv: Id,
    ) -> Result<ConversationNotifications> {
        let path = format!("/v1/conversations/{conv}/notifications");
        self.json(Method::GET, &path, Some(token), None::<&()>)
            .await
    }

    /// GET /v1/uploads: storage use.
    pub async fn upload_usage(&self, token: &str) -> Result<UploadUsage> {
        self.json(Method::GET, "/v1/uploads", Some(token), None::<&()>)
            .await
    }

    /// GET of a download path (`/v1/uploads/{id}/content`, a thumbnail) with extra
    /// request headers; returns the raw response so tests can read status and headers.
    pub async fn download(
        &self,
        token: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response> {
        let mut req = self.request(Method::GET, path, Some(token));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.execute(req).await
    }

    /// GET /v1/uploads/{id}/content, all of it.
    pub async fn download_bytes(&self, token: &str, id: Id) -> Result<Vec<u8>> {
        let path = format!("/v1/uploads/{id}/content");
        let resp = self.download(token, &path, &[]).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(map_reqwest)?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_response(status, &bytes));
        }
        Ok(bytes.to_vec())
    }

    // ---- plumbing ----

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn execute(&self, req: RequestBuilder) -> Result<Response> {
        req.send().await.map_err(map_reqwest)
    }

    /// Sends a request and returns the response body bytes of a 2xx response.
    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<Vec<u8>> {
        let mut req = self.request(method, path, token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = self.execute(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(map_reqwest)?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_response(status, &bytes));
        }
        Ok(bytes.to_vec())
    }

    async fn json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<T> {
        let bytes = self.call(method, path, token, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!(
                "unexpected response body for {path}: {e}: {}",
                truncate(&String::from_utf8_lossy(&bytes), 512)
            ))
        })
    }

    async fn empty<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Result<()> {
        self.call(method, path, token, body).await.map(drop)
    }
}

async fn decode<T: DeserializeOwned>(resp: Response, path: &str) -> Result<T> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(map_reqwest)?;
    if !(200..300).contains(&status) {
        return Err(ClientError::from_response(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ClientError::Protocol(format!(
            "unexpected response body for {path}: {e}: {}",
            truncate(&String::from_utf8_lossy(&bytes), 512)
        ))
    })
}

fn offset_header(resp: &Response) -> Result<u64> {
    resp.headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClientError::Protocol("missing Upload-Offset".into()))
}

/// Base64 (standard alphabet, padded) for tus metadata, without a dependency for it.
fn b64(s: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn raw(resp: Response) -> Result<(u16, String)> {
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(map_reqwest)?;
    Ok((status, text))
}

fn map_reqwest(e: reqwest::Error) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout
    } else {
        ClientError::Transport(chain(&e))
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
