//! One WebSocket connection, one task.
//!
//! 1. The first frame must be `hello` (token unless the upgrade carried one, and the sync
//!    position `since`).
//! 2. The connection registers with the hub *before* reading the backlog, then sends the
//!    backlog up to the store's head, then `synced`; live events at or below that head are
//!    skipped, so nothing is lost or doubled at the seam.
//! 3. Then one loop serves incoming frames, commit acknowledgements, live events, pings
//!    and shutdown. Sends are pipelined: up to `ws.max_inflight` wait for their commit
//!    while the connection keeps reading.

use super::bucket::Bucket;
use super::inflight::Inflight;
use crate::auth::Principal;
use crate::hub::{Outbox, Registration};
use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt, StreamExt};
use parlor_core::chat::Draft;
use parlor_core::error::Error;
use parlor_core::model::Appended;
use parlor_core::Id;
use parlor_proto::close;
use parlor_proto::ws::{Ack, ClientFrame, ErrorFrame, ServerFrame};
use parlor_proto::ErrorCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Consecutive rate-limited frames after which a flooding client is disconnected.
const FLOOD_CLOSE_AFTER: u32 = 100;

/// Why the loop ended; decides the close frame.
enum End {
    ClientGone,
    Close(u16, String),
}

/// A pipelined request's outcome, written when it completes.
enum Done {
    Sent {
        cid: String,
        started: Instant,
        result: Result<Appended, Error>,
    },
    Failed {
        cid: Option<String>,
        error: Error,
    },
    Nothing,
}

/// Serves one upgraded connection. Each phase other than the live loop is boxed, so
/// that the task of an idle connection holds only the live loop's state (memory per
/// connection is what limits how many a node can hold).
///
/// The socket comes boxed: an async fn keeps its arguments for its whole life, and a
/// `WebSocket` (368 bytes) would sit there unused beside the one in [`Connection`].
pub async fn run(state: AppState, socket: Box<WebSocket>, pre_auth: Option<Principal>) {
    let Some((socket, principal, since)) = Box::pin(handshake(&state, socket, pre_auth)).await
    else {
        return;
    };
    state.live_connections.fetch_add(1, Ordering::AcqRel);
    state.metrics.connections_open.inc();
    state.metrics.connections_total.inc();
    let registration = state.hub.register(principal.user);
    let id = registration.id;
    if let Err(e) = Box::pin(state.chat.device_connected(principal.user)).await {
        tracing::warn!(error = %e, "presence update failed");
    }
    let mut connection = Connection {
        frames: Bucket::new(state.config.rate.frames_per_connection),
        state: state.clone(),
        socket,
        principal,
        registration,
        last_sent: 0,
        inflight: Inflight::default(),
        flood: 0,
        write_timeout: Duration::from_secs(state.config.ws.idle_timeout_secs.max(1)),
    };
    let end = connection.serve(since).await;
    state.hub.unregister(principal.user, id);
    if let Err(e) = Box::pin(
        state
            .chat
            .device_disconnected(principal.user, crate::now_ms()),
    )
    .await
    {
        tracing::warn!(error = %e, "presence update failed");
    }
    state.metrics.connections_open.dec();
    match end {
        End::ClientGone => {}
        End::Close(code, reason) => Box::pin(close(connection.socket, code, &reason)).await,
    }
    tracing::debug!(user = %principal.user, device = %principal.device, "connection closed");
    state.connection_closed();
}

/// Reads `hello`, authenticates, and applies the per-user connection rate; on failure
/// the socket is closed with the matching code and `None` comes back.
async fn handshake(
    state: &AppState,
    socket: Box<WebSocket>,
    pre_auth: Option<Principal>,
) -> Option<(WebSocket, Principal, Option<Id>)> {
    let mut socket = *socket;
    let hello_timeout = Duration::from_secs(state.config.ws.hello_timeout_secs);
    let (token, since) = match tokio::time::timeout(hello_timeout, socket.recv()).await {
        Err(_) => {
            close(
                socket,
                close::HELLO_TIMEOUT,
                "hello_timeout: no hello frame in time",
            )
            .await;
            return None;
        }
        Ok(None) | Ok(Some(Err(_))) => return None,
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Hello { token, since }) => (token, since),
            _ => {
                close(
                    socket,
                    close::PROTOCOL,
                    "malformed_frame: the first frame must be hello",
                )
                .await;
                return None;
            }
        },
        Ok(Some(Ok(_))) => {
            close(
                socket,
                close::PROTOCOL,
                "malformed_frame: the first frame must be hello",
            )
            .await;
            return None;
        }
    };
    let principal = match (pre_auth, token) {
        (Some(p), _) => p,
        (None, Some(token)) => match state.authenticate(&token).await {
            Ok(p) => p,
            Err(e) => {
                state.metrics.error(e.code);
                // Only a bad token means "log in again"; a store that cannot check the
                // session right now means "come back later, token and all".
                let code = match e.code {
                    ErrorCode::Unavailable | ErrorCode::Internal => close::UNAVAILABLE,
                    _ => close::UNAUTHORIZED,
                };
                close(socket, code, &format!("{}: {}", e.code, e.message)).await;
                return None;
            }
        },
        (None, None) => {
            close(socket, close::UNAUTHORIZED, "unauthorized: missing token").await;
            return None;
        }
    };
    if let Err(e) = state
        .rate(
            &format!("connect:user:{}", principal.user),
            state.config.rate.connect_per_user.into(),
        )
        .await
    {
        state.metrics.error(e.code);
        {
            close(
                socket,
                close::RATE_LIMITED,
                "rate_limited: too many connections",
            )
            .await;
            return None;
        }
    }
    Some((socket, principal, since))
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

struct Connection {
    state: AppState,
    socket: WebSocket,
    principal: Principal,
    registration: Registration,
    /// Highest position written to this client; live events at or below it are skipped.
    last_sent: u64,
    inflight: Inflight<Done>,
    frames: Bucket,
    flood: u32,
    /// Longest a single write to the client may block (the idle timeout).
    write_timeout: Duration,
}

type Step = Result<(), End>;

/// Bounds one write to the client. A write that cannot complete for `limit` means the
/// client has read nothing for that long (it stopped reading, or vanished without a FIN):
/// it is treated as gone. Without this bound such a client would block its connection
/// task forever in the write, and the idle check in the loop would never run again.
async fn bounded(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Step {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientGone),
        Err(_) => {
            tracing::debug!("write to client timed out, dropping the connection");
            Err(End::ClientGone)
        }
    }
}

impl Connection {
    async fn serve(&mut self, since: Option<Id>) -> End {
        let head = match since {
            Some(since) => match Box::pin(self.catch_up(since.0)).await {
                Ok(head) => head,
                Err(end) => return end,
            },
            None => match self.state.chat.store().head().await {
                Ok(head) => head,
                Err(e) => {
                    return End::Close(close::UNAVAILABLE, format!("{}: {}", e.code, e.message))
                }
            },
        };
        self.last_sent = head;
        if let Err(end) = Box::pin(self.write(&ServerFrame::Synced { pos: Id(head) })).await {
            return end;
        }
        let config = &self.state.config.ws;
        let idle_timeout = Duration::from_secs(config.idle_timeout_secs);
        let max_inflight = config.max_inflight;
        let outbox = Arc::clone(&self.registration.outbox);
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                incoming = self.socket.recv(), if self.inflight.len() < max_inflight => {
                    last_heard = Instant::now();
                    match incoming {
                        None => Err(End::ClientGone),
                        Some(Err(e)) => Err(protocol_error(&e.to_string())),
                        // Boxed, like the other handlers below: an idle connection's task
                        // then holds none of their state, only while they run.
                        Some(Ok(message)) => Box::pin(self.on_message(message)).await,
                    }
                }
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => Box::pin(self.on_done(done)).await,
                _ = outbox.ready() => Box::pin(self.on_outbox_signal(&outbox, last_heard, idle_timeout)).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// The outbox was signalled: shutting down, events to forward, or this connection's
    /// turn in the hub's ping sweep (`hub::ping_sweeps`), which is also when the idle
    /// timeout is checked. Both come through the outbox: no timer or watch per connection.
    async fn on_outbox_signal(
        &mut self,
        outbox: &Outbox,
        last_heard: Instant,
        idle_timeout: Duration,
    ) -> Step {
        if outbox.closing() {
            return Err(End::Close(1001, "server shutting down".into()));
        }
        self.forward().await?;
        if !outbox.take_ping() {
            return Ok(());
        }
        if last_heard.elapsed() > idle_timeout {
            return Err(End::Close(
                1001,
                "idle_timeout: no traffic from client".into(),
            ));
        }
        self.feed(Message::Ping(Default::default())).await?;
        self.flush().await
    }

    /// Sends everything after `since` up to the store's head; returns the head.
    async fn catch_up(&mut self, since: u64) -> Result<u64, End> {
        let backlog = self
            .state
            .chat
            .backlog(self.principal.user, since)
            .await
            .map_err(|e| End::Close(close::UNAVAILABLE, format!("{}: {}", e.code, e.message)))?;
        let mut pages = backlog.pages;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                End::Close(close::UNAVAILABLE, format!("{}: {}", e.code, e.message))
            })?;
            for event in &page {
                let text = parlor_proto::frame_json::encode(&event.frame)
                    .map_err(|_| End::Close(close::UNAVAILABLE, "internal".into()))?;
                if matches!(event.frame, ServerFrame::Message(_)) {
                    self.state.metrics.messages_delivered.inc();
                }
                self.feed(Message::Text(text.into())).await?;
            }
            self.flush().await?;
        }
        // A position from the future (another server, a wiped data dir) is clamped to
        // the head: the client gets everything from now on rather than nothing.
        Ok(backlog.head)
    }

    /// Writes everything queued for this connection, then flushes once.
    async fn forward(&mut self) -> Step {
        self.queue_outbox().await?;
        self.flush().await
    }

    /// Buffers everything queued for this connection; it leaves with the next flush.
    async fn queue_outbox(&mut self) -> Step {
        while let Some(outgoing) = self.registration.outbox.pop() {
            if self
                .registration
                .outbox
                .overflowed
                .swap(false, Ordering::AcqRel)
            {
                // Events were dropped for us after the ones already queued: re-read them.
                self.last_sent = Box::pin(self.catch_up(self.last_sent)).await?;
            }
            if outgoing.pos == 0 || outgoing.pos > self.last_sent {
                if outgoing.pos != 0 {
                    self.last_sent = outgoing.pos;
                }
                if outgoing.is_message {
                    self.state.metrics.messages_delivered.inc();
                }
                self.feed(Message::Text(outgoing.text)).await?;
            }
        }
        Ok(())
    }

    /// Buffers a frame; it leaves with the next flush.
    async fn queue(&mut self, frame: &ServerFrame) -> Step {
        let text = encode(frame)?;
        self.feed(Message::Text(text)).await
    }

    /// Buffers one frame. The sink nearly always has room, and then this completes at
    /// once; only when it has none is the wait bounded by [`bounded`]. Setting up that
    /// timeout for every frame read the clock each time and made every handler's future
    /// bigger: the handlers are boxed per frame, and above 1,032 bytes a box misses
    /// glibc's per-thread cache (`perf` put 10% of the runtime's samples at 60,000
    /// messages/s in those allocations).
    async fn feed(&mut self, message: Message) -> Step {
        let ready = std::future::poll_fn(|cx| Poll::Ready(self.socket.poll_ready_unpin(cx))).await;
        match ready {
            Poll::Ready(Ok(())) => self
                .socket
                .start_send_unpin(message)
                .map_err(|_| End::ClientGone),
            Poll::Ready(Err(_)) => Err(End::ClientGone),
            Poll::Pending => Box::pin(bounded(self.write_timeout, self.socket.feed(message))).await,
        }
    }

    /// Writes what is buffered; like [`Self::feed`], bounded only when it cannot finish
    /// at once.
    async fn flush(&mut self) -> Step {
        let done = std::future::poll_fn(|cx| Poll::Ready(self.socket.poll_flush_unpin(cx))).await;
        match done {
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(_)) => Err(End::ClientGone),
            Poll::Pending => Box::pin(bounded(self.write_timeout, self.socket.flush())).await,
        }
    }

    async fn write(&mut self, frame: &ServerFrame) -> Step {
        self.queue(frame).await?;
        self.flush().await
    }

    async fn write_error(&mut self, error: &Error, cid: Option<String>) -> Step {
        self.queue_error(error, cid).await?;
        self.flush().await
    }

    async fn queue_error(&mut self, error: &Error, cid: Option<String>) -> Step {
        let text = self.error_text(error, cid)?;
        self.feed(Message::Text(text)).await
    }

    fn error_text(&self, error: &Error, cid: Option<String>) -> Result<Utf8Bytes, End> {
        self.state.metrics.error(error.code);
        encode(&ServerFrame::Error(ErrorFrame {
            code: error.code,
            message: error.message.to_string(),
            cid,
            retry_after_ms: error.retry_after_ms,
        }))
    }

    async fn on_message(&mut self, message: Message) -> Step {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let error = Error::new(
                    ErrorCode::UnknownFrame,
                    "binary frames are not supported; send JSON text",
                );
                return Box::pin(self.write_error(&error, None)).await;
            }
            Message::Close(_) => return Err(End::ClientGone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        if let Err(wait_ms) = self.frames.take() {
            self.flood += 1;
            if self.flood > FLOOD_CLOSE_AFTER {
                return Err(End::Close(
                    close::RATE_LIMITED,
                    "rate_limited: flood".into(),
                ));
            }
            return Box::pin(self.write_error(&Error::rate_limited(wait_ms), None)).await;
        }
        self.flood = 0;
        let frame = match serde_json::from_str::<ClientFrame>(&text) {
            Ok(frame) => frame,
            Err(e) => return Box::pin(self.write_error(&parse_error(&e), None)).await,
        };
        match frame {
            ClientFrame::Hello { .. } => {
                let error = Error::new(
                    ErrorCode::BadRequest,
                    "already authenticated; hello is only the first frame",
                );
                Box::pin(self.write_error(&error, None)).await
            }
            ClientFrame::Send {
                cid,
                conv,
                text,
                reply_to,
                mentions,
                mention_all,
                attachments,
            } => {
                let started = Instant::now();
                let draft = Draft {
                    cid: Some(cid.clone()),
                    text,
                    reply_to,
                    mentions,
                    mention_all,
                    attachments,
                };
                match self.state.chat.send(self.principal.user, conv, draft) {
                    Ok(commit) => {
                        self.inflight.push(Box::pin(async move {
                            let result = commit.await;
                            Done::Sent {
                                cid,
                                started,
                                result,
                            }
                        }));
                        Ok(())
                    }
                    Err(error) => Box::pin(self.write_error(&error, Some(cid))).await,
                }
            }
            ClientFrame::Read { conv, seq } => {
                self.spawn_request(None, move |state, user| async move {
                    state.chat.mark_read(user, conv, seq).await.map(drop)
                });
                Ok(())
            }
            ClientFrame::Delivered { conv, seq } => {
                self.spawn_request(None, move |state, user| async move {
                    state.chat.mark_delivered(user, conv, seq).await.map(drop)
                });
                Ok(())
            }
            ClientFrame::Edit {
                cid,
                conv,
                seq,
                text,
            } => {
                self.spawn_request(cid, move |state, user| async move {
                    state.chat.edit(user, conv, seq, text).await.map(drop)
                });
                Ok(())
            }
            ClientFrame::Delete { cid, conv, seq } => {
                self.spawn_request(cid, move |state, user| async move {
                    state.chat.delete(user, conv, seq).await
                });
                Ok(())
            }
            ClientFrame::Typing { conv, typing } => {
                let key = format!("typing:{}:{conv}", self.principal.user);
                let rule = self.state.config.rate.typing_per_conversation.into();
                if let Err(error) = Box::pin(self.state.rate(&key, rule)).await {
                    return Box::pin(self.write_error(&error, None)).await;
                }
                self.spawn_request(None, move |state, user| async move {
                    state.chat.typing(user, conv, typing).await
                });
                Ok(())
            }
            ClientFrame::Status { status, text } => {
                self.spawn_request(None, move |state, user| async move {
                    state.chat.set_status(user, status, text).await.map(drop)
                });
                Ok(())
            }
        }
    }

    /// Runs a request whose only visible outcome is an event (or an error frame) while
    /// the connection keeps serving.
    fn spawn_request<F, Fut>(&mut self, cid: Option<String>, request: F)
    where
        F: FnOnce(AppState, Id) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        let state = self.state.clone();
        let user = self.principal.user;
        self.inflight.push(Box::pin(async move {
            match request(state, user).await {
                Ok(()) => Done::Nothing,
                Err(error) => Done::Failed { cid, error },
            }
        }));
    }

    /// Answers a completed request, and every other one already complete, with one flush:
    /// pipelined sends commit in groups, so their acks are ready together.
    async fn on_done(&mut self, done: Done) -> Step {
        let mut next = Some(done);
        while let Some(done) = next {
            if let Some(text) = self.answer(done)? {
                self.feed(Message::Text(text)).await?;
            }
            next = self.inflight.next().now_or_never().flatten();
        }
        // A sender's own message usually reaches its outbox as its commit completes:
        // the echo then leaves in the same write as the ack.
        self.queue_outbox().await?;
        self.flush().await
    }

    /// The frame that answers a completed request, if any. Built and encoded here, not
    /// in an async fn: the request's outcome would otherwise be kept in the handler's
    /// future across the write, which is allocated for every batch of answers.
    fn answer(&self, done: Done) -> Result<Option<Utf8Bytes>, End> {
        match done {
            Done::Nothing => Ok(None),
            Done::Failed { cid, error } => self.error_text(&error, cid).map(Some),
            Done::Sent {
                cid,
                started,
                result,
            } => match result {
                Ok(appended) => {
                    self.state
                        .metrics
                        .ack_latency
                        .observe(started.elapsed().as_secs_f64());
                    encode(&ServerFrame::Ack(Ack {
                        cid,
                        conv: appended.conv,
                        id: appended.id,
                        seq: appended.seq,
                        pos: Id(appended.pos),
                        ts: appended.ts,
                        duplicate: appended.duplicate,
                    }))
                    .map(Some)
                }
                Err(error) => self.error_text(&error, Some(cid)).map(Some),
            },
        }
    }
}

fn encode(frame: &ServerFrame) -> Result<Utf8Bytes, End> {
    parlor_proto::frame_json::encode(frame)
        .map(Utf8Bytes::from)
        .map_err(|_| End::Close(close::UNAVAILABLE, "internal".into()))
}

/// JSON that does not parse is `malformed_frame`; valid JSON with an unknown `type` is
/// `unknown_frame`.
fn parse_error(e: &serde_json::Error) -> Error {
    let detail = e.to_string();
    if e.is_data() && detail.contains("unknown variant") {
        return Error::new(ErrorCode::UnknownFrame, detail);
    }
    Error::new(ErrorCode::MalformedFrame, detail)
}

/// Transport-level violations end the connection with the matching standard close code.
fn protocol_error(detail: &str) -> End {
    if detail.contains("Space limit exceeded")
        || detail.contains("too long")
        || detail.contains("too big")
    {
        End::Close(
            1009,
            "payload_too_large: frame exceeds the size limit".into(),
        )
    } else if detail.to_ascii_lowercase().contains("utf-8") {
        End::Close(
            1007,
            "malformed_frame: invalid UTF-8 in a text frame".into(),
        )
    } else {
        End::ClientGone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_of<A, B, C, F>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn handler_future<'a, A: 'a, B, F: 'a>(_: impl FnOnce(&'a mut A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn signal_future<'a, A: 'a, B: 'a, C, D, F: 'a>(
        _: impl FnOnce(&'a mut A, &'a B, C, D) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// The handlers of incoming frames and completed sends are boxed each time they run.
    /// glibc serves allocations up to 1,032 bytes from a per-thread cache; bigger ones
    /// take its general path, where `perf` put 10% of the runtime's samples at 60,000
    /// messages/s when these were 1,112 and 1,048 bytes (docs/BENCHMARKS.md, "direct",
    /// eleventh session). Measured 560, 488 and 400 bytes with Rust 1.95.
    #[test]
    fn per_frame_handlers_stay_within_the_allocator_cache() {
        let on_message = handler_future(Connection::on_message);
        let on_done = handler_future(Connection::on_done);
        assert!(on_message <= 900, "on_message future is {on_message} bytes");
        assert!(on_done <= 900, "on_done future is {on_done} bytes");
        let on_outbox = signal_future(Connection::on_outbox_signal);
        assert!(
            on_outbox <= 900,
            "on_outbox_signal future is {on_outbox} bytes"
        );
    }

    /// An idle connection's memory is mostly its task, whose size is this future's: a
    /// guard against a change that parks a large value in the connection's long-lived
    /// state (docs/BENCHMARKS.md, idle). Measured 1,032 bytes with Rust 1.95.
    #[test]
    fn an_idle_connection_task_stays_small() {
        let run_future = future_of(run);
        assert!(
            run_future <= 1_200,
            "connection future is {run_future} bytes"
        );
    }
}
