//! Users and conversations through the admin API: thousands per second, with no password
//! hashing, so that setting up a run does not dominate it.

use anyhow::{bail, Context};
use parlor_client::Http;
use parlor_proto::admin::{
    ConversationSpec, CreateConversationsRequest, CreateUsersRequest, CreatedConversations,
    CreatedUsers, ProvisionedUser,
};
use parlor_proto::Id;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Users per admin call: small enough to stay far below the client's request timeout.
const USERS_PER_CALL: u32 = 2_000;
/// Conversation specs per call are cut so that a body stays well below the server's
/// default request body limit (1 MiB).
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Access tokens outlive any run.
const TOKEN_TTL_SECS: u64 = 7 * 86_400;

pub struct Admin {
    http: Http,
    token: String,
}

impl Admin {
    pub fn new(http: Http, token: &str) -> Admin {
        Admin {
            http,
            token: token.to_owned(),
        }
    }

    /// Creates users `{prefix}0` … `{prefix}{count - 1}`, each with an access token.
    pub async fn create_users(
        &self,
        prefix: &str,
        count: usize,
    ) -> anyhow::Result<Vec<ProvisionedUser>> {
        let count = u32::try_from(count).context("too many users")?;
        let mut users = Vec::with_capacity(count as usize);
        let mut start = 0;
        while start < count {
            let batch = USERS_PER_CALL.min(count - start);
            let request = CreateUsersRequest {
                prefix: prefix.to_owned(),
                count: batch,
                start,
                token_ttl_secs: Some(TOKEN_TTL_SECS),
            };
            let created: CreatedUsers = self.post("/v1/admin/users", &request).await?;
            if created.users.len() != batch as usize {
                bail!(
                    "asked for {batch} users, the admin API returned {}",
                    created.users.len()
                );
            }
            users.extend(created.users);
            start += batch;
        }
        Ok(users)
    }

    /// Creates the conversations in order; returns their ids in the same order.
    pub async fn create_conversations(
        &self,
        specs: Vec<ConversationSpec>,
    ) -> anyhow::Result<Vec<Id>> {
        let mut ids = Vec::with_capacity(specs.len());
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for spec in specs {
            let size = serde_json::to_vec(&spec)?.len() + 1;
            if !batch.is_empty() && batch_bytes + size > MAX_BODY_BYTES {
                ids.extend(self.conversation_batch(std::mem::take(&mut batch)).await?);
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(spec);
        }
        if !batch.is_empty() {
            ids.extend(self.conversation_batch(batch).await?);
        }
        Ok(ids)
    }

    async fn conversation_batch(&self, specs: Vec<ConversationSpec>) -> anyhow::Result<Vec<Id>> {
        let expected = specs.len();
        let request = CreateConversationsRequest {
            conversations: specs,
        };
        let created: CreatedConversations = self.post("/v1/admin/conversations", &request).await?;
        if created.ids.len() != expected {
            bail!(
                "asked for {expected} conversations, the admin API returned {}",
                created.ids.len()
            );
        }
        Ok(created.ids)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body)?;
        let (status, text) = self
            .http
            .post_raw(path, Some(&self.token), "application/json", body)
            .await
            .with_context(|| format!("POST {path}"))?;
        if !(200..300).contains(&status) {
            let hint = if status == 404 {
                " (is the admin API enabled? it needs PARLOR_ADMIN_TOKEN on the server)"
            } else {
                ""
            };
            bail!("POST {path}: HTTP {status}{hint}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("decode the answer of POST {path}"))
    }
}
