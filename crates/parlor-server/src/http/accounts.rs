use super::error::{ApiResult, Body, Caller, PathParams};
use crate::auth::{hash_refresh, Principal};
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use parlor_core::error::Error;
use parlor_core::model::RefreshOutcome;
use parlor_core::{rules, Id};
use parlor_proto::rest::{LoginRequest, RefreshRequest, RegisterRequest, TokenPair, UserView};
use parlor_proto::ErrorCode;

pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(crate::tls::ClientAddr(peer)): ConnectInfo<crate::tls::ClientAddr>,
    Body(req): Body<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    state
        .rate(
            &format!("register:ip:{}", peer.ip()),
            state.config.rate.register_per_ip.into(),
        )
        .await?;
    let username = rules::username(&req.username)?;
    rules::password(&req.password)?;
    if state.chat.store().user_by_name(&username).await?.is_some() {
        return Err(Error::new(ErrorCode::UsernameTaken, "username is already taken").into());
    }
    let hash = state.auth.hash_password(req.password).await?;
    let user = state.chat.store().create_user(&username, &hash).await?;
    tracing::info!(user = %user.id, "user registered");
    Ok((StatusCode::CREATED, Json(user)))
}

async fn issue(
    state: &AppState,
    user: UserView,
    device: Id,
    refresh_token: String,
) -> ApiResult<Json<TokenPair>> {
    let access_token = state.auth.issue_access(Principal {
        user: user.id,
        device,
    })?;
    Ok(Json(TokenPair {
        access_token,
        expires_in: state.auth.access_ttl_secs,
        refresh_token,
        user,
        device_id: device,
    }))
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(crate::tls::ClientAddr(peer)): ConnectInfo<crate::tls::ClientAddr>,
    Body(req): Body<LoginRequest>,
) -> ApiResult<Json<TokenPair>> {
    state
        .rate(
            &format!("login:ip:{}", peer.ip()),
            state.config.rate.login_per_ip.into(),
        )
        .await?;
    let username = req.username.trim().to_ascii_lowercase();
    state
        .rate(
            &format!("login:user:{username}"),
            state.config.rate.login_per_user.into(),
        )
        .await?;
    let credentials = match rules::username(&username) {
        Ok(name) => state.chat.store().credentials(&name).await?,
        Err(_) => None,
    };
    let hash = credentials.as_ref().map(|c| c.password_hash.clone());
    if req.password.len() > 1024 || !state.auth.verify_password(hash, req.password).await? {
        return Err(Error::new(ErrorCode::InvalidCredentials, "wrong username or password").into());
    }
    let Some(credentials) = credentials else {
        return Err(Error::new(ErrorCode::InvalidCredentials, "wrong username or password").into());
    };
    let (refresh_token, refresh_hash) = state.auth.new_refresh();
    let device_name = rules::device_name(req.device_name.as_deref());
    let device = state
        .chat
        .store()
        .create_session(
            credentials.user,
            &device_name,
            refresh_hash,
            state.auth.refresh_expiry_ms(),
        )
        .await?;
    tracing::info!(user = %credentials.user, device = %device, "login");
    let user = UserView {
        id: credentials.user,
        username: credentials.username,
    };
    issue(&state, user, device, refresh_token).await
}

pub async fn refresh(
    State(state): State<AppState>,
    ConnectInfo(crate::tls::ClientAddr(peer)): ConnectInfo<crate::tls::ClientAddr>,
    Body(req): Body<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    state
        .rate(
            &format!("login:ip:{}", peer.ip()),
            state.config.rate.login_per_ip.into(),
        )
        .await?;
    let presented = hash_refresh(&req.refresh_token);
    let (refresh_token, next) = state.auth.new_refresh();
    let outcome = state
        .chat
        .store()
        .rotate_refresh(presented, next, state.auth.refresh_expiry_ms())
        .await?;
    match outcome {
        RefreshOutcome::Rotated { user, device } => {
            let user = state
                .chat
                .store()
                .user(user)
                .await?
                .ok_or_else(|| Error::new(ErrorCode::Unauthorized, "user no longer exists"))?;
            issue(&state, user, device, refresh_token).await
        }
        RefreshOutcome::Reused { device } => {
            tracing::warn!(device = %device, "refresh token reused, session revoked");
            Err(Error::new(
                ErrorCode::TokenRevoked,
                "refresh token was already used; session revoked",
            )
            .into())
        }
        RefreshOutcome::Invalid => Err(Error::new(
            ErrorCode::Unauthorized,
            "unknown, expired or revoked refresh token",
        )
        .into()),
    }
}

pub async fn logout(State(state): State<AppState>, Caller(me): Caller) -> ApiResult<StatusCode> {
    state.chat.store().revoke_session(me.device).await?;
    tracing::info!(user = %me.user, device = %me.device, "logout");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn me(State(state): State<AppState>, Caller(me): Caller) -> ApiResult<Json<UserView>> {
    let user = state
        .chat
        .store()
        .user(me.user)
        .await?
        .ok_or_else(|| Error::not_found("user not found"))?;
    Ok(Json(user))
}

pub async fn user_by_name(
    State(state): State<AppState>,
    Caller(_): Caller,
    PathParams(username): PathParams<String>,
) -> ApiResult<Json<UserView>> {
    let user = state
        .chat
        .store()
        .user_by_name(&username.trim().to_ascii_lowercase())
        .await?
        .ok_or_else(|| Error::not_found("user not found"))?;
    Ok(Json(user))
}

pub async fn user(
    State(state): State<AppState>,
    Caller(_): Caller,
    PathParams(id): PathParams<Id>,
) -> ApiResult<Json<UserView>> {
    let user = state
        .chat
        .store()
        .user(id)
        .await?
        .ok_or_else(|| Error::not_found("user not found"))?;
    Ok(Json(user))
}

#[derive(serde::Deserialize)]
pub struct PresenceParams {
    /// Comma-separated user ids.
    users: String,
}

pub async fn presence(
    State(state): State<AppState>,
    Caller(_): Caller,
    super::error::QueryParams(p): super::error::QueryParams<PresenceParams>,
) -> ApiResult<Json<parlor_proto::rest::PresenceList>> {
    let users = p
        .users
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(|u| u.trim().parse::<Id>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Error::new(ErrorCode::BadRequest, "users must be comma-separated ids"))?;
    let presence = state.chat.presence(&users).await?;
    Ok(Json(parlor_proto::rest::PresenceList { presence }))
}

pub async fn set_status(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<parlor_proto::rest::StatusRequest>,
) -> ApiResult<Json<parlor_proto::rest::PresenceView>> {
    Ok(Json(
        state.chat.set_status(me.user, req.status, req.text).await?,
    ))
}
