use super::error::{ApiResult, Body, Caller, PathParams, QueryParams};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use parlor_core::Id;
use parlor_proto::rest::*;
use parlor_proto::ws::Ack;
use serde::Deserialize;

pub async fn list(State(state): State<AppState>, Caller(me): Caller) -> ApiResult<Json<ConversationList>> {
    let conversations = state.chat.conversations(me.user).await?;
    Ok(Json(ConversationList { conversations }))
}

pub async fn open_direct(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<DirectRequest>,
) -> ApiResult<(StatusCode, Json<ConversationInfo>)> {
    state.rate(&format!("rest:user:{}", me.user), state.config.rate.rest_per_user.into())?;
    let (info, created) = state.chat.open_direct(me.user, req.user_id).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(info)))
}

pub async fn create_group(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<ConversationInfo>)> {
    state.rate(&format!("rest:user:{}", me.user), state.config.rate.rest_per_user.into())?;
    let info = state.chat.create_group(me.user, &req.name, &req.members).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn detail(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
) -> ApiResult<Json<ConversationDetail>> {
    Ok(Json(state.chat.conversation(me.user, id).await?))
}

pub async fn add_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    Body(req): Body<AddMemberRequest>,
) -> ApiResult<StatusCode> {
    state.chat.add_member(me.user, id, req.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams((id, user)): PathParams<(Id, Id)>,
) -> ApiResult<StatusCode> {
    state.chat.remove_member(me.user, id, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_role(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams((id, user)): PathParams<(Id, Id)>,
    Body(req): Body<SetRoleRequest>,
) -> ApiResult<StatusCode> {
    state.chat.set_role(me.user, id, user, req.role).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn leave(State(state): State<AppState>, Caller(me): Caller, PathParams(id): PathParams<Id>) -> ApiResult<StatusCode> {
    state.chat.leave(me.user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

pub async fn history(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> ApiResult<Json<History>> {
    Ok(Json(state.chat.history(me.user, id, q.before, q.after, q.limit).await?))
}

/// Sending over REST, for bots and integrations; same rules and guarantees as WebSocket.
pub async fn send(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    Body(req): Body<SendRequest>,
) -> ApiResult<(StatusCode, Json<Ack>)> {
    state.rate(&format!("rest:user:{}", me.user), state.config.rate.rest_per_user.into())?;
    let cid = req.cid.clone();
    let appended = state.chat.send(me.user, id, req.cid, req.text)?.await?;
    let status = if appended.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((
        status,
        Json(Ack {
            cid: cid.unwrap_or_default(),
            conv: appended.conv,
            id: appended.id,
            seq: appended.seq,
            pos: Id(appended.pos),
            ts: appended.ts,
            duplicate: appended.duplicate,
        }),
    ))
}

pub async fn mark_read(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    Body(req): Body<ReadRequest>,
) -> ApiResult<Json<ReadState>> {
    let read_seq = state.chat.mark_read(me.user, id, req.seq).await?;
    Ok(Json(ReadState { conv: id, read_seq }))
}
