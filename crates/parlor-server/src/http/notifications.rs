//! Push targets, the in-app notification feed, mute and do-not-disturb.

use super::error::{ApiResult, Body, Caller, PathParams, QueryParams};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use parlor_core::error::Error;
use parlor_core::notify::Mute;
use parlor_core::Id;
use parlor_proto::notify::*;
use parlor_proto::ws::ServerFrame;
use parlor_proto::ErrorCode;
use serde::Deserialize;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 100;

async fn rest_rate(state: &AppState, user: Id) -> ApiResult<()> {
    state
        .rate(
            &format!("rest:user:{user}"),
            state.config.rate.rest_per_user.into(),
        )
        .await?;
    Ok(())
}

pub async fn vapid(
    State(state): State<AppState>,
    Caller(_me): Caller,
) -> ApiResult<Json<VapidKey>> {
    match &state.notifications.setup.vapid_public_key {
        Some(key) => Ok(Json(VapidKey {
            public_key: key.clone(),
        })),
        None => Err(Error::new(
            ErrorCode::ProviderNotConfigured,
            "Web Push is not configured on this server",
        )
        .into()),
    }
}

pub async fn list_targets(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> ApiResult<Json<PushTargetList>> {
    let targets = state.notifications.store.targets(me.user).await?;
    Ok(Json(PushTargetList {
        targets: targets.iter().map(|t| t.view(false)).collect(),
    }))
}

pub async fn register_target(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<NewPushTarget>,
) -> ApiResult<(StatusCode, Json<PushTargetView>)> {
    rest_rate(&state, me.user).await?;
    let address = (state.notifications.setup.validate)(req)?;
    let target = state
        .notifications
        .store
        .register_target(me.user, address)
        .await?;
    tracing::info!(user = %me.user, target = %target.id, kind = target.address.kind().as_str(), "push target registered");
    Ok((StatusCode::CREATED, Json(target.view(true))))
}

pub async fn remove_target(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(id): PathParams<Id>,
) -> ApiResult<StatusCode> {
    state.notifications.store.remove_target(me.user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    pub before: Option<Id>,
    pub limit: Option<u32>,
}

pub async fn feed(
    State(state): State<AppState>,
    Caller(me): Caller,
    QueryParams(q): QueryParams<FeedQuery>,
) -> ApiResult<Json<NotificationPage>> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::new(
            ErrorCode::InvalidPagination,
            format!("limit must be 1 to {MAX_PAGE}"),
        )
        .into());
    }
    let store = &state.notifications.store;
    let mut notifications = store.feed(me.user, q.before, limit + 1).await?;
    let more = notifications.len() > limit as usize;
    notifications.truncate(limit as usize);
    let unread = store.unread_notifications(me.user).await?;
    Ok(Json(NotificationPage {
        next_before: if more {
            notifications.last().map(|n| n.id)
        } else {
            None
        },
        notifications,
        unread,
    }))
}

pub async fn mark_read(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<MarkNotificationsRead>,
) -> ApiResult<Json<NotificationsRead>> {
    if req.ids.len() > MAX_PAGE as usize {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("at most {MAX_PAGE} ids at once; use up_to for more"),
        )
        .into());
    }
    let store = &state.notifications.store;
    let ids = store
        .mark_notifications_read(me.user, &req.ids, req.up_to)
        .await?;
    let unread = store.unread_notifications(me.user).await?;
    let answer = NotificationsRead { ids, unread };
    if !answer.ids.is_empty() {
        state
            .chat
            .publish_to_user(me.user, ServerFrame::NotificationsRead(answer.clone()));
    }
    Ok(Json(answer))
}

pub async fn preferences(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> ApiResult<Json<NotificationPreferences>> {
    let dnd = state.notifications.store.dnd(me.user).await?;
    // An ended do-not-disturb is off, whatever is still stored.
    let on = parlor_core::notify::dnd_active(dnd, crate::now_ms());
    Ok(Json(NotificationPreferences {
        do_not_disturb: on,
        until: if on { dnd.flatten() } else { None },
    }))
}

pub async fn set_preferences(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(req): Body<NotificationPreferences>,
) -> ApiResult<Json<NotificationPreferences>> {
    let dnd = req.do_not_disturb.then_some(req.until);
    state.notifications.store.set_dnd(me.user, dnd).await?;
    let on = parlor_core::notify::dnd_active(dnd, crate::now_ms());
    Ok(Json(NotificationPreferences {
        do_not_disturb: on,
        until: if on { req.until } else { None },
    }))
}

pub async fn conversation_settings(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(conv): PathParams<Id>,
) -> ApiResult<Json<ConversationNotifications>> {
    // Membership is the right to read the setting; `conversation` checks it.
    state.chat.conversation(me.user, conv).await?;
    let mute = state.notifications.store.mute(me.user, conv).await?;
    Ok(Json(view(mute.filter(|m| m.active(crate::now_ms())))))
}

pub async fn set_conversation_settings(
    State(state): State<AppState>,
    Caller(me): Caller,
    PathParams(conv): PathParams<Id>,
    Body(req): Body<ConversationNotifications>,
) -> ApiResult<Json<ConversationNotifications>> {
    // The same answer as every other conversation endpoint for unknown ids.
    state.chat.conversation(me.user, conv).await?;
    let mute = req.muted.then_some(Mute {
        until: req.until,
        mentions: req.mute_mentions,
    });
    state
        .notifications
        .store
        .set_mute(me.user, conv, mute)
        .await?;
    Ok(Json(view(mute.filter(|m| m.active(crate::now_ms())))))
}

fn view(mute: Option<Mute>) -> ConversationNotifications {
    match mute {
        Some(m) => ConversationNotifications {
            muted: true,
            until: m.until,
            mute_mentions: m.mentions,
        },
        None => ConversationNotifications::default(),
    }
}
