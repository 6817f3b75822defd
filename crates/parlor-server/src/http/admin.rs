//! The admin API: bulk provisioning for load tests and scripts. Enabled only when
//! `admin_token` is configured; it then requires `Authorization: Bearer <admin_token>`.
//! Provisioned users get no password hash (they cannot log in with a password), so real
//! logins keep their full argon2id cost.

use super::error::{bearer, ApiError, ApiResult, Body};
use crate::auth::Principal;
use crate::state::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use parlor_core::error::Error;
use parlor_core::rules;
use parlor_proto::admin::*;
use parlor_proto::ErrorCode;

/// Stored instead of a password hash: it never parses as one, so password login fails.
const NO_PASSWORD: &str = "!provisioned";
const MAX_USERS_PER_CALL: u32 = 100_000;
const MAX_CONVERSATIONS_PER_CALL: usize = 100_000;
/// Writes kept in flight at once; the store commits them in groups.
const CONCURRENCY: usize = 2048;

pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.config.admin_token else {
            return Err(ApiError(Error::new(
                ErrorCode::NotFound,
                "no such endpoint",
            )));
        };
        match bearer(parts) {
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(Admin),
            Some(_) => Err(ApiError(Error::forbidden("wrong admin credential"))),
            None => Err(ApiError(Error::new(
                ErrorCode::Unauthorized,
                "missing admin credential",
            ))),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn create_users(
    State(state): State<AppState>,
    _: Admin,
    Body(req): Body<CreateUsersRequest>,
) -> ApiResult<(StatusCode, Json<CreatedUsers>)> {
    if req.count == 0 || req.count > MAX_USERS_PER_CALL {
        return Err(Error::new(ErrorCode::BadRequest, "count must be 1-100000").into());
    }
    let ttl = req.token_ttl_secs.unwrap_or(86_400);
    let names = (req.start..req.start.saturating_add(req.count))
        .map(|n| rules::username(&format!("{}{n}", req.prefix)))
        .collect::<Result<Vec<_>, _>>()?;
    let users: Vec<ProvisionedUser> = stream::iter(names)
        .map(|name| {
            let state = state.clone();
            async move {
                let store = state.chat.store();
                let user = store.create_user(&name, NO_PASSWORD).await?;
                let (refresh_token, refresh_hash) = state.auth.new_refresh();
                let device = store
                    .create_session(
                        user.id,
                        "provisioned",
                        refresh_hash,
                        state.auth.refresh_expiry_ms(),
                    )
                    .await?;
                let access_token = state.auth.issue_access_for(
                    Principal {
                        user: user.id,
                        device,
                    },
                    ttl,
                )?;
                Ok::<_, Error>(ProvisionedUser {
                    id: user.id,
                    username: user.username,
                    device_id: device,
                    access_token,
                    refresh_token,
                })
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    tracing::info!(count = users.len(), "users provisioned");
    Ok((StatusCode::CREATED, Json(CreatedUsers { users })))
}

pub async fn create_conversations(
    State(state): State<AppState>,
    _: Admin,
    Body(req): Body<CreateConversationsRequest>,
) -> ApiResult<(StatusCode, Json<CreatedConversations>)> {
    if req.conversations.len() > MAX_CONVERSATIONS_PER_CALL {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "at most 100000 conversations per call",
        )
        .into());
    }
    let ids = stream::iter(req.conversations)
        .map(|spec| {
            let state = state.clone();
            async move {
                match spec {
                    ConversationSpec::Direct { members: [a, b] } => {
                        state.chat.open_direct(a, b).await.map(|(info, _)| info.id)
                    }
                    ConversationSpec::Group {
                        name,
                        owner,
                        members,
                    } => state
                        .chat
                        .create_group(owner, &name, &members)
                        .await
                        .map(|info| info.id),
                }
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedConversations { ids })))
}

/// Where a user's connections are: the connection registry, for operators and tests.
pub async fn user_nodes(
    State(state): State<AppState>,
    _: Admin,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<UserNodes>> {
    let user = id
        .parse::<u64>()
        .map(parlor_proto::Id)
        .map_err(|_| ApiError(Error::new(ErrorCode::BadRequest, "invalid user id")))?;
    let nodes = state.chat.presence_nodes(user).await?;
    Ok(Json(UserNodes { user, nodes }))
}
