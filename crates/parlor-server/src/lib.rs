//! Parlor's server: HTTP and WebSocket transport, authentication, rate limits, TLS and
//! metrics around the domain core.
//!
//! # Layout
//! - [`backends`]: the adapters behind the ports (embedded or cluster).
//! - [`config`]: configuration (defaults, TOML file, `PARLOR_*` variables).
//! - [`auth`]: password hashing, access and refresh tokens.
//! - [`http`]: REST endpoints and the error body every one of them returns.
//! - `ws`: the WebSocket endpoint and the per-connection task.
//! - [`hub`]: this node's connections and the dispatcher from the bus to them.
//! - [`metrics`]: Prometheus metrics.
//! - [`tls`]: rustls listener.
//! - [`state`]: what handlers share.
//! - [`uploads`]: the upload service (resumable receiving, completion, media, GC).
//! - [`notify`]: the notifier loop and the push sender.
//!
//! Architecture invariant: only this crate knows HTTP and WebSocket; the core never sees a
//! socket, and this crate reaches storage only through the core's ports.

pub mod auth;
pub mod backends;
pub mod config;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod notify;
pub mod state;
pub mod tls;
pub mod uploads;
mod ws;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::state::{AppState, Inner};
use parlor_core::Chat;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How long shutdown waits for WebSocket connections to finish their close handshake.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the server until `shutdown` completes, then shuts down gracefully: stops
/// accepting, closes WebSockets with 1001, and flushes the store.
/// `on_listening` receives the bound base URL (e.g. `http://127.0.0.1:8080`).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(&str),
) -> anyhow::Result<()> {
    // Both ring and aws-lc-rs may be linked through dependencies; pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let backends::Backends {
        store,
        bus,
        presence,
        limiter,
        recent,
        probes,
        cluster_stats,
        upload_store,
        blobs,
        notifications,
        bind_queue,
    } = backends::build(&config).await?;
    let secret = auth::load_or_create_secret(&config.auth, &config.data_dir)?;
    let auth = auth::Auth::new(&config.auth, &secret)?;
    let metrics = Arc::new(Metrics::new()?);
    if let Some(stats) = cluster_stats {
        metrics.watch_cluster(stats);
    }
    let hub = Arc::new(Hub::new(config.ws.outbox));
    let dispatcher = tokio::spawn(hub::dispatch(
        Arc::clone(&bus),
        Arc::clone(&hub),
        Arc::clone(&metrics),
    ));
    let pinger = tokio::spawn(hub::ping_sweeps(
        Arc::clone(&hub),
        Duration::from_secs(config.ws.ping_interval_secs),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let scratch = config.data_dir.join("tmp");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", scratch.display()))?;
    let uploads = Arc::new(uploads::Uploads::new(
        upload_store,
        blobs,
        config.uploads.clone(),
        scratch,
        Arc::clone(&metrics),
    ));
    let upload_gc = tokio::spawn(Arc::clone(&uploads).run_gc(stop_rx.clone()));

    let notifications = Arc::new(notify::Notifications {
        store: notifications,
        setup: backends::push_setup(&config)?,
        wake: Arc::new(Notify::new()),
    });
    let notifier = {
        let hub = Arc::clone(&hub);
        parlor_core::notifier::Notifier::new(
            Arc::clone(&store),
            Arc::clone(&notifications.store),
            Arc::clone(&presence),
            Arc::clone(&bus),
            Arc::new(move |user| hub.is_connected(user)),
            parlor_core::notifier::NotifierOptions {
                include_content: config.push.include_content,
                max_push_age_ms: i64::from(config.push.ttl_secs) * 1000,
            },
        )
    };
    let notify_tasks =
        notifications.start(&config.push, notifier, bind_queue, Arc::clone(&metrics));
    let store_port = Arc::clone(&store);
    let state = AppState {
        inner: Arc::new(Inner {
            chat: {
                let chat = Chat::new(store_port, presence, Arc::clone(&bus), config.limits());
                match recent {
                    Some(cache) => chat.with_recent_cache(cache),
                    None => chat,
                }
            },
            auth,
            hub,
            limiter,
            uploads,
            notifications,
            probes,
            metrics,
            shutdown: stop_rx.clone(),
            live_connections: AtomicUsize::new(0),
            connections_closed: Notify::new(),
            config: config.clone(),
        }),
    };
    let presence_ticker = tokio::spawn(expire_presence(state.clone()));
    let app = http::router(state.clone()).into_make_service_with_connect_info::<tls::ClientAddr>();
    let listener = bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr()?;

    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    let hub = Arc::clone(&state.hub);
    let graceful = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
        tracing::info!("shutting down");
        hub.close_all();
    };

    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let listener = tls::TlsListener::new(listener, tls::acceptor(cert, key)?)?;
            let url = format!("https://{local}");
            tracing::info!(%url, data_dir = %config.data_dir.display(), "parlor listening");
            on_listening(&url);
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await?;
        }
        _ => {
            let listener = tls::PlainListener(listener);
            let url = format!("http://{local}");
            tracing::info!(%url, data_dir = %config.data_dir.display(), "parlor listening");
            on_listening(&url);
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await?;
        }
    }

    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while state.live_connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        let notified = state.connections_closed.notified();
        let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
    }
    presence_ticker.abort();
    pinger.abort();
    upload_gc.abort();
    for task in notify_tasks {
        task.abort();
    }
    // Everyone whose devices were just disconnected goes offline now, so that their
    // last-seen time is stored before the store closes (the grace period would end
    // after the process).
    let grace_ms = (config.presence.grace_secs * 1000) as i64;
    if let Err(e) = state.chat.expire_presence(now_ms() + grace_ms).await {
        tracing::warn!(error = %e, "storing last-seen times at shutdown failed");
    }
    store.close().await;
    dispatcher.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Announces users whose grace period has ended as offline, once per tick.
async fn expire_presence(state: AppState) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(state.config.presence.tick_ms.max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.chat.expire_presence(now_ms()).await {
            tracing::warn!(error = %e, "presence expiry failed");
        }
    }
}

/// A listening socket with a deep accept queue: the default of 128 drops connection
/// attempts when thousands of clients reconnect at once (after a restart, say), and each
/// dropped SYN costs its client a one-second retransmission delay.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
