use super::error::{ApiResult, Body, Caller, PathParams, QueryParams};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use parlor_core::chat::{Draft, SearchRequest};
use parlor_core::Id;
use parlor_proto::rest::*;
use parlor_proto::ws::Ack;
use serde::Deserialize;

pub async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> ApiResult<Json<ConversationList>> {
    let conversations = state.chat.conversations(me.user).await?;
    Ok(Json(ConversationList { conversations }))
}

pub async fn open_direct(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<DirectRequest>,
) -> ApiResult<(StatusCode, Json<ConversationInfo>)> {
    state
        .rate(
            &format!("rest:user:{}", me.user),
            state.config.rate.rest_per_user.into(),
        )
        .await?;
    let (info, created) = state.chat.open_direct(me.user, req.user_id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

pub async fn create_group(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<ConversationInfo>)> {
    state
        .rate(
            &format!("rest:user:{}", me.user),
            state.config.rate.rest_per_user.into(),
        )
        .await?;
    let info = state
        .chat
        .create_group(me.user, &req.name, &req.members)
        .await?;
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

pub async fn leave(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
) -> ApiResult<StatusCode> {
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
    Ok(Json(
        state
            .chat
            .history(me.user, id, q.before, q.after, q.limit)
            .await?,
    ))
}

/// Sending over REST, for bots and integrations; same rules and guarantees as WebSocket.
pub async fn send(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    Body(req): Body<SendRequest>,
) -> ApiResult<(StatusCode, Json<Ack>)> {
    state
        .rate(
            &format!("rest:user:{}", me.user),
            state.config.rate.rest_per_user.into(),
        )
        .await?;
    let cid = req.cid.clone();
    let draft = Draft {
        cid: req.cid,
        text: req.text,
        reply_to: req.reply_to,
        mentions: req.mentions,
        mention_all: req.mention_all,
        attachments: req.attachments,
    };
    let appended = state.chat.send(me.user, id, draft)?.await?;
    let status = if appended.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
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

pub async fn edit(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams((id, seq)): PathParams<(Id, u64)>,
    Body(req): Body<EditRequest>,
) -> ApiResult<Json<MessageView>> {
    state
        .rate(
            &format!("rest:user:{}", me.user),
            state.config.rate.rest_per_user.into(),
        )
        .await?;
    Ok(Json(state.chat.edit(me.user, id, seq, req.text).await?))
}

pub async fn delete_message(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams((id, seq)): PathParams<(Id, u64)>,
) -> ApiResult<StatusCode> {
    state
        .rate(
            &format!("rest:user:{}", me.user),
            state.config.rate.rest_per_user.into(),
        )
        .await?;
    state.chat.delete(me.user, id, seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn receipts(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
) -> ApiResult<Json<Receipts>> {
    Ok(Json(state.chat.receipts(me.user, id).await?))
}

pub async fn mark_delivered(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
    Body(req): Body<ReadRequest>,
) -> ApiResult<StatusCode> {
    state.chat.mark_delivered(me.user, id, req.seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct SearchParams {
    q: String,
    conv: Option<Id>,
    sender: Option<Id>,
    from: Option<i64>,
    to: Option<i64>,
    cursor: Option<String>,
    limit: Option<u32>,
}

pub async fn search(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(p): QueryParams<SearchParams>,
) -> ApiResult<Json<SearchResults>> {
    state
        .rate(
            &format!("search:user:{}", me.user),
            state.config.rate.search_per_user.into(),
        )
        .await?;
    let request = SearchRequest {
        q: &p.q,
        conv: p.conv,
        sender: p.sender,
        from: p.from,
        to: p.to,
        cursor: p.cursor.as_deref(),
        limit: p.limit,
    };
    Ok(Json(state.chat.search(me.user, request).await?))
}
