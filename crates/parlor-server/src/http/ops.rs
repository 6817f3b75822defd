use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use parlor_proto::rest::Health;

pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready when the store answers a write round trip.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let shutting_down = *state.shutdown.borrow();
    match state.chat.store().ping().await {
        Ok(()) if !shutting_down => (
            StatusCode::OK,
            Json(Health {
                status: "ready".into(),
            }),
        ),
        Ok(()) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "shutting down".into(),
            }),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: format!("store: {}", e.message),
            }),
        ),
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
