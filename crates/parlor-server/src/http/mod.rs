//! The REST API and operational endpoints. Handlers validate nothing themselves beyond
//! parsing: they call the chat service (domain rules) or the auth module.

mod accounts;
mod admin;
mod conversations;
pub mod error;
mod notifications;
mod ops;
mod uploads;
mod web;

use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use error::ApiError;
use parlor_core::error::Error;
use parlor_proto::ErrorCode;

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/", get(web::index))
        .route("/app/{*path}", get(web::asset))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/auth/register", post(accounts::register))
        .route("/v1/auth/login", post(accounts::login))
        .route("/v1/auth/refresh", post(accounts::refresh))
        .route("/v1/auth/logout", post(accounts::logout))
        .route("/v1/me", get(accounts::me))
        .route("/v1/users/by-name/{username}", get(accounts::user_by_name))
        .route("/v1/users/{id}", get(accounts::user))
        .route(
            "/v1/conversations",
            get(conversations::list).post(conversations::create_group),
        )
        .route("/v1/conversations/direct", post(conversations::open_direct))
        .route("/v1/conversations/{id}", get(conversations::detail))
        .route(
            "/v1/conversations/{id}/members",
            post(conversations::add_member),
        )
        .route(
            "/v1/conversations/{id}/members/{user}",
            delete(conversations::remove_member),
        )
        .route(
            "/v1/conversations/{id}/members/{user}/role",
            put(conversations::set_role),
        )
        .route("/v1/conversations/{id}/leave", post(conversations::leave))
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::history).post(conversations::send),
        )
        .route(
            "/v1/conversations/{id}/read",
            post(conversations::mark_read),
        )
        .route(
            "/v1/conversations/{id}/delivered",
            post(conversations::mark_delivered),
        )
        .route(
            "/v1/conversations/{id}/receipts",
            get(conversations::receipts),
        )
        .route(
            "/v1/conversations/{id}/messages/{seq}",
            patch(conversations::edit).delete(conversations::delete_message),
        )
        .route(
            "/v1/uploads",
            post(uploads::create)
                .get(uploads::usage)
                .options(uploads::options),
        )
        .route(
            "/v1/uploads/{id}",
            get(uploads::info)
                .head(uploads::head)
                .patch(uploads::patch)
                .delete(uploads::terminate),
        )
        .route("/v1/uploads/{id}/content", get(uploads::content))
        .route(
            "/v1/uploads/{id}/thumbnails/{size}",
            get(uploads::thumbnail),
        )
        .route(
            "/v1/conversations/{id}/notifications",
            get(notifications::conversation_settings).put(notifications::set_conversation_settings),
        )
        .route("/v1/push/vapid", get(notifications::vapid))
        .route(
            "/v1/push/targets",
            get(notifications::list_targets).post(notifications::register_target),
        )
        .route(
            "/v1/push/targets/{id}",
            delete(notifications::remove_target),
        )
        .route("/v1/notifications", get(notifications::feed))
        .route("/v1/notifications/read", post(notifications::mark_read))
        .route(
            "/v1/notifications/preferences",
            get(notifications::preferences).put(notifications::set_preferences),
        )
        .route("/v1/search", get(conversations::search))
        .route("/v1/presence", get(accounts::presence))
        .route("/v1/me/status", put(accounts::set_status))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/admin/users", post(admin::create_users))
        .route("/v1/admin/conversations", post(admin::create_conversations))
        .route("/v1/admin/users/{id}/nodes", get(admin::user_nodes))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_errors))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError(Error::new(ErrorCode::NotFound, "no such endpoint"))
}

async fn method_not_allowed() -> ApiError {
    ApiError(Error::new(
        ErrorCode::BadRequest,
        "method not allowed on this endpoint",
    ))
}

async fn count_errors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        state.metrics.error(*code);
    }
    response
}
