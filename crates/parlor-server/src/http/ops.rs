use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use parlor_proto::rest::{Health, Readiness};

pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready when the store answers a write round trip and every other engine (cluster
/// mode: NATS, Redis) answers a ping. The body names each engine's state.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut engines = std::collections::BTreeMap::new();
    let mut ready = !*state.shutdown.borrow();
    match state.chat.store().ping().await {
        Ok(()) => {
            engines.insert("store".to_string(), "ok".to_string());
        }
        Err(e) => {
            ready = false;
            engines.insert("store".to_string(), e.message.to_string());
        }
    }
    for (name, probe) in &state.probes {
        let outcome = probe().await;
        ready &= outcome.is_ok();
        engines.insert(
            name.to_string(),
            outcome.err().unwrap_or_else(|| "ok".to_string()),
        );
    }
    let status = if *state.shutdown.borrow() {
        "shutting down"
    } else if ready {
        "ready"
    } else {
        "unavailable"
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            status: status.into(),
            engines,
        }),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
