//! Bodies of the admin API (`/v1/admin/*`), used by load generators and provisioning
//! scripts to set up many users and conversations in seconds.

use crate::ids::Id;
use serde::{Deserialize, Serialize};

/// Creates users `{prefix}{start}` … `{prefix}{start + count - 1}`, each with one device
/// session and an access token. They have no password: they cannot log in, only use the
/// tokens issued here (and refresh them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUsersRequest {
    pub prefix: String,
    pub count: u32,
    #[serde(default)]
    pub start: u32,
    /// Access token lifetime; default one day, so long benchmarks need no refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionedUser {
    pub id: Id,
    pub username: String,
    pub device_id: Id,
    pub access_token: String,
    pub refresh_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedUsers {
    pub users: Vec<ProvisionedUser>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConversationSpec {
    Direct {
        members: [Id; 2],
    },
    Group {
        name: String,
        owner: Id,
        members: Vec<Id>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConversationsRequest {
    pub conversations: Vec<ConversationSpec>,
}

/// Conversation ids in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedConversations {
    pub ids: Vec<Id>,
}

/// `GET /v1/admin/users/{id}/nodes`: the nodes holding the user's connections, from the
/// connection registry (cluster mode), or `["local"]` / `[]` on a single node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNodes {
    pub user: Id,
    pub nodes: Vec<String>,
}
