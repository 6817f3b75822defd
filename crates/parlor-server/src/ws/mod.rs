//! The WebSocket endpoint `GET /v1/ws`. The upgrade itself checks only the per-IP
//! connection rate and, if present, an `Authorization` header; the connection proper
//! (hello, backlog, live events, sends) lives in [`connection`].

mod bucket;
mod connection;
mod inflight;

use crate::http::error::{bearer, ApiError};
use crate::state::AppState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use parlor_core::error::Error;
use parlor_proto::ErrorCode;

/// Small per-connection buffers: tungstenite would otherwise reserve 128 KiB to read, per
/// connection, idle or not. Client frames are small; bigger ones grow the buffer for
/// the time of one frame.
const READ_BUFFER: usize = 1024;
/// Frames written in one go are gathered up to this before the socket write, so a burst
/// of events or acks costs one system call, not one per frame. Allocated only once the
/// connection writes.
const WRITE_BUFFER: usize = 16 * 1024;

pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(crate::tls::ClientAddr(peer)): ConnectInfo<crate::tls::ClientAddr>,
    parts: Parts,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError(Error::new(
                ErrorCode::BadRequest,
                "expected a WebSocket upgrade",
            ))
            .into_response();
        }
    };
    if *state.shutdown.borrow() {
        return ApiError(Error::new(
            ErrorCode::Unavailable,
            "server is shutting down",
        ))
        .into_response();
    }
    if let Err(e) = state
        .rate(
            &format!("connect:ip:{}", peer.ip()),
            state.config.rate.connect_per_ip.into(),
        )
        .await
    {
        return ApiError(e).into_response();
    }
    let principal = match bearer(&parts) {
        Some(token) => match state.authenticate(token).await {
            Ok(p) => Some(p),
            Err(e) => return ApiError(e).into_response(),
        },
        None => None,
    };
    let max_frame = state.config.limits.max_frame_bytes;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_frame * 4)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| connection::run(state, Box::new(socket), principal))
}
