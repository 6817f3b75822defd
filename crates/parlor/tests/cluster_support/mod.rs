//! Helpers for the multi-node tests in `cluster.rs`: a private set of engines with three
//! Parlor nodes on them, devices that send and receive over WebSocket (and reconnect to
//! another node when theirs dies), and the checks every scenario ends with.
//!
//! # Why devices record everything
//! The guarantees under test are about *streams*: every member's stream of a conversation
//! is seq 1..N in order, each message once, and nothing acknowledged is missing. So each
//! device keeps every message event it received (live or from a reconnect's sync), every
//! ack and every error, and the test checks the whole record against history at the end.
//! Waits are bounded only so that a broken cluster fails a test instead of hanging it;
//! nothing asserts on how long anything took.

#![allow(dead_code, clippy::unwrap_used)]

use crate::support::{user, User, WAIT};
use parlor_client::proto::admin::UserNodes;
use parlor_client::proto::rest::{MessageView, PresenceView, Readiness};
use parlor_client::proto::ws::{Ack, ErrorFrame, MessageEvent, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{ClientError, Http, WsClient, WsEvent};
use parlor_testkit::{ClusterSpec, Engines, ServerOptions, TestServer};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The admin API credential every node gets (the API wants 32 characters or more).
pub const ADMIN_TOKEN: &str = "cluster-test-admin-token-0123456789abcdef";

/// Node names, by index: node `i` is `NODE_NAMES[i]`.
pub const NODE_NAMES: [&str; 3] = ["n1", "n2", "n3"];

/// Private engines (three NATS servers, Redis, PostgreSQL) and three nodes on one spec.
/// Fields drop in order: nodes first, then the spec (which drops the test's database),
/// then the engines.
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub spec: ClusterSpec,
    pub engines: Engines,
}

impl Cluster {
    /// Launches the engines and starts `n1`, `n2`, `n3` with `env` on each (plus the admin
    /// token). The nodes choose cluster mode explicitly, so `PARLOR_TEST_BACKEND` does
    /// not matter.
    pub fn start(env: &[(&str, &str)]) -> Cluster {
        tokio::task::block_in_place(|| {
            let engines = Engines::launch(3).expect("launch engines (3 NATS servers)");
            let spec = engines.spec_for_new_test().expect("database and namespace");
            let bin = Path::new(env!("CARGO_BIN_EXE_parlor"));
            // In parallel: each start waits for the node's address line, and the
            // migrations serialize themselves under an advisory lock.
            let nodes = std::thread::scope(|s| {
                let handles: Vec<_> = NODE_NAMES
                    .iter()
                    .map(|name| {
                        let mut opts = ServerOptions::cluster(&spec)
                            .with_node_name(*name)
                            .with_env("PARLOR_ADMIN_TOKEN", ADMIN_TOKEN);
                        for (k, v) in env {
                            opts = opts.with_env(*k, *v);
                        }
                        s.spawn(move || TestServer::start(bin, opts))
                    })
                    .collect();
                handles
                    .into_iter()
                    .zip(NODE_NAMES)
                    .map(|(h, name)| {
                        h.join()
                            .expect("node start thread")
                            .unwrap_or_else(|e| panic!("start node {name}: {e:#}"))
                    })
                    .collect::<Vec<_>>()
            });
            Cluster {
                nodes,
                spec,
                engines,
            }
        })
    }

    pub fn http(&self, node: usize) -> Http {
        self.nodes[node].http()
    }

    /// Every node's base URL, by index; devices reconnect through these.
    pub fn urls(&self) -> Arc<Vec<String>> {
        Arc::new(self.nodes.iter().map(|n| n.base_url().to_owned()).collect())
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, node: usize) {
        tokio::task::block_in_place(|| self.nodes[node].kill()).expect("kill node");
    }

    /// One account per node, the one made on node `i` named after `names[i]`: accounts
    /// made anywhere live in the shared store.
    pub async fn trio(&self, names: [&'static str; 3]) -> Trio {
        let mut users = Vec::new();
        for (node, name) in names.into_iter().enumerate() {
            users.push(user(&self.http(node), name).await);
        }
        Trio {
            names,
            users: users.try_into().expect("three users"),
        }
    }

    /// A group made by `creator` through `node`.
    pub async fn group(&self, node: usize, creator: &User, name: &str, members: &[Id]) -> Id {
        self.http(node)
            .create_group(&creator.token, name, members)
            .await
            .unwrap_or_else(|e| panic!("create group {name}: {e}"))
            .id
    }

    /// The direct conversation of `opener` and `other`, opened through `node`.
    pub async fn direct(&self, node: usize, opener: &User, other: Id) -> Id {
        self.http(node)
            .open_direct(&opener.token, other)
            .await
            .expect("open direct")
            .id
    }

    /// Alice (made on n1), Bob (made on n2) and their direct conversation, opened by
    /// Alice through n1.
    pub async fn alice_and_bob(&self) -> Pair {
        let alice = user(&self.http(0), "alice").await;
        let bob = user(&self.http(1), "bob").await;
        let conv = self.direct(0, &alice, bob.id).await;
        Pair { alice, bob, conv }
    }

    /// Waits until every node's `/readyz` answers 200 again: nodes recover from an
    /// engine outage by themselves, without a restart.
    pub async fn until_all_ready(&self) {
        for node in 0..self.nodes.len() {
            let http = self.http(node);
            eventually("ready again", WAIT, || {
                let http = http.clone();
                async move { (readyz(&http).await.0 == 200).then_some(()) }
            })
            .await;
        }
    }

    /// Every node's `/readyz` answers 503 and names the store.
    pub async fn assert_store_unready_everywhere(&self) {
        for (node, name) in NODE_NAMES.iter().enumerate() {
            let (status, ready) = readyz(&self.http(node)).await;
            assert_eq!(status, 503, "{name}: {ready:?}");
            assert_ne!(
                ready.engines.get("store").map(String::as_str),
                Some("ok"),
                "{ready:?}"
            );
        }
    }
}

/// See [`Cluster::trio`].
pub struct Trio {
    pub names: [&'static str; 3],
    pub users: [User; 3],
}

impl Trio {
    /// The standard traffic: each user's device on the node the user was made on, all
    /// three sending into `room`, and the first two, who share `direct`, into it too,
    /// starting with different conversations.
    pub fn roles(
        &self,
        room: Id,
        direct: Id,
        plan: impl Fn(Vec<Id>, Vec<Id>) -> Plan,
    ) -> Vec<Role<'_>> {
        let [first, second, third] = &self.users;
        let both = || vec![room, direct];
        vec![
            (self.names[0], first, 0, plan(both(), both())),
            (self.names[1], second, 1, plan(vec![direct, room], both())),
            (self.names[2], third, 2, plan(vec![room], vec![room])),
        ]
    }
}

/// Two users with a direct conversation; see [`Cluster::alice_and_bob`].
pub struct Pair {
    pub alice: User,
    pub bob: User,
    pub conv: Id,
}

impl Pair {
    /// Alice connected to n1 and Bob to n2, both synced.
    pub async fn connect(&self, urls: &[String]) -> (WsClient, WsClient) {
        let (alice_ws, _, _) = connect_synced(&urls[0], &self.alice.token, None)
            .await
            .expect("alice on n1");
        let (bob_ws, _, _) = connect_synced(&urls[1], &self.bob.token, None)
            .await
            .expect("bob on n2");
        (alice_ws, bob_ws)
    }
}

/// Reads everything in `(0, ..)` of a conversation through REST, oldest first.
pub async fn history(http: &Http, token: &str, conv: Id) -> Vec<MessageView> {
    crate::support::full_history(http, token, conv).await
}

/// `GET /v1/admin/users/{id}/nodes`, sorted.
pub async fn registry(http: &Http, user: Id) -> Vec<String> {
    let path = format!("/v1/admin/users/{user}/nodes");
    let (status, body) = http
        .get_raw(&path, Some(ADMIN_TOKEN))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    let parsed: UserNodes =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
    assert_eq!(parsed.user, user, "{body}");
    let mut nodes = parsed.nodes;
    nodes.sort();
    nodes
}

/// `GET /readyz`: status code and body.
pub async fn readyz(http: &Http) -> (u16, Readiness) {
    let (status, body) = http.get_raw("/readyz", None).await.expect("GET /readyz");
    let parsed: Readiness =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz body ({e}): {body}"));
    (status, parsed)
}

/// The REST presence of one user, as `asker` sees it.
pub async fn presence_of(http: &Http, asker: &User, user: Id) -> Result<PresenceView, ClientError> {
    let list = http.presence(&asker.token, &[user]).await?;
    assert_eq!(list.presence.len(), 1, "{list:?}");
    Ok(list.presence[0].clone())
}

/// Polls `f` every 100 ms until it returns `Some`; fails after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = f().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "still waiting after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens a WebSocket to `url` and reads up to `synced`: the backlog and the position.
pub async fn connect_synced(
    url: &str,
    token: &str,
    since: Option<Id>,
) -> Result<(WsClient, Vec<ServerFrame>, Id), ClientError> {
    let mut ws = WsClient::connect(url, None, token, since).await?;
    let (backlog, pos) = ws.wait_synced(WAIT).await?;
    Ok((ws, backlog, pos))
}

/// The position of a state event (message, membership, read marker, edit, delete).
pub fn pos_of(frame: &ServerFrame) -> Option<u64> {
    match frame {
        ServerFrame::Message(m) => Some(m.pos.0),
        ServerFrame::Member(m) => Some(m.pos.0),
        ServerFrame::Read(r) => Some(r.pos.0),
        ServerFrame::Edited(e) => Some(e.pos.0),
        ServerFrame::Deleted(d) => Some(d.pos.0),
        _ => None,
    }
}

// ---- devices ----

/// What a device sends, and what it must end up having received.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Conversations to send into, round-robin; empty for a device that only receives.
    pub send_to: Vec<Id>,
    /// The conversations the device's user belongs to: the device is done once it has
    /// every message of each.
    pub member_of: Vec<Id>,
    /// At most this many sends waiting for their ack.
    pub window: usize,
    /// Reconnect to another node (with the last position, resending what was not
    /// acknowledged) when the connection breaks; otherwise a break is recorded and ends
    /// the device.
    pub reconnect: bool,
    /// Resend a send answered by `unavailable` (same cid, after a short pause) instead
    /// of recording the error; for store outages.
    pub retry_unavailable: bool,
}

impl Plan {
    /// Sends into `send_to` with eight sends in flight, and neither reconnects nor
    /// retries: a break or an error is recorded for the checks to find.
    pub fn new(send_to: Vec<Id>, member_of: Vec<Id>) -> Plan {
        Plan {
            send_to,
            member_of,
            window: 8,
            reconnect: false,
            retry_unavailable: false,
        }
    }

    /// Only receives.
    pub fn receiver(member_of: Vec<Id>) -> Plan {
        Plan::new(Vec::new(), member_of)
    }

    /// For a scenario that kills the device's node.
    pub fn reconnecting(self) -> Plan {
        Plan {
            reconnect: true,
            ..self
        }
    }

    /// For a scenario that takes the store away.
    pub fn retrying_unavailable(self) -> Plan {
        Plan {
            retry_unavailable: true,
            ..self
        }
    }
}

/// One send as written to the socket (first attempt).
#[derive(Debug, Clone)]
pub struct Sent {
    pub cid: String,
    pub conv: Id,
    pub text: String,
}

/// A message event and how it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub event: MessageEvent,
    /// Index into [`Device::connections`].
    pub conn: usize,
    /// Read from the store by a reconnect's sync (before `synced`), not live.
    pub backlog: bool,
}

/// One WebSocket connection of a device.
#[derive(Debug, Clone)]
pub struct Conn {
    pub node: usize,
    /// The `since` presented in `hello`.
    pub since: Option<u64>,
    /// The `synced` position.
    pub synced: u64,
}

/// A shared view of a running device for the test's control loop.
#[derive(Debug, Default)]
pub struct Progress {
    /// Distinct acknowledged sends so far.
    pub acked: AtomicUsize,
    /// Connections opened so far (1 + reconnects).
    pub connections: AtomicUsize,
    /// `unavailable` answers retried so far.
    pub unavailable: AtomicUsize,
}

/// What the test tells running devices.
#[derive(Debug)]
pub struct Control {
    stop: watch::Sender<bool>,
    totals: watch::Sender<Option<HashMap<Id, usize>>>,
    done_rx: mpsc::UnboundedReceiver<String>,
    done_tx: mpsc::UnboundedSender<String>,
}

impl Default for Control {
    fn default() -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Control {
            stop: watch::channel(false).0,
            totals: watch::channel(None).0,
            done_rx,
            done_tx,
        }
    }
}

impl Control {
    /// Devices stop sending new messages, wait for their outstanding acks and report.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until `n` devices reported that all their sends are settled.
    pub async fn settled(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT * 2;
        for _ in 0..n {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("device channel closed"),
                Err(_) => panic!("devices did not settle their sends in time"),
            }
        }
    }

    /// Tells devices how many messages each conversation has: they read until they
    /// have all of them (or give up after a long silence) and return.
    pub fn expect_totals(&self, totals: HashMap<Id, usize>) {
        self.totals.send_replace(Some(totals));
    }
}

/// A device: one user's client, connected to one node at a time.
#[derive(Debug)]
pub struct Device {
    pub label: String,
    pub user: User,
    /// The node of the current (or last) connection.
    pub node: usize,
    pub connections: Vec<Conn>,
    /// Highest position of a state event handled (or of `synced`): what a reconnect
    /// presents as `since`.
    pub last_pos: u64,
    pub received: Vec<Received>,
    /// First attempts, in order.
    pub sent: Vec<Sent>,
    /// cid -> the first ack for it.
    pub acks: HashMap<String, Ack>,
    /// Acks for a cid that already had one (must never happen: a retry is only sent
    /// for a cid without an ack).
    pub extra_acks: Vec<Ack>,
    /// cids resent after a reconnect.
    pub resent: Vec<String>,
    /// `unavailable` answers that were retried (with [`Plan::retry_unavailable`]).
    pub unavailable: Vec<ErrorFrame>,
    pub errors: Vec<ErrorFrame>,
    /// How each connection ended, when it ended before the device was done.
    pub disconnects: Vec<String>,
    /// Connection breaks on a device that must not reconnect, and failures to reconnect.
    pub breaks: Vec<String>,
    /// Set when the device gave up waiting for messages.
    pub gave_up: Option<String>,
    /// [`Plan::member_of`] of the plan it ran: the streams the checks compare.
    pub member_of: Vec<Id>,
    ws: Option<WsClient>,
    progress: Arc<Progress>,
}

impl Device {
    /// Connects `user` to `node` for live events and waits for `synced`.
    pub async fn connect(label: &str, user: &User, urls: &[String], node: usize) -> Device {
        let (ws, backlog, pos) = connect_synced(&urls[node], &user.token, None)
            .await
            .unwrap_or_else(|e| panic!("{label}: connect to {}: {e}", NODE_NAMES[node]));
        assert!(
            backlog.iter().all(|f| pos_of(f).is_none()),
            "{label}: a connection without since got a backlog: {backlog:?}"
        );
        let progress = Arc::new(Progress::default());
        progress.connections.store(1, Ordering::Relaxed);
        Device {
            label: label.to_owned(),
            user: user.clone(),
            node,
            connections: vec![Conn {
                node,
                since: None,
                synced: pos.0,
            }],
            last_pos: pos.0,
            received: Vec::new(),
            sent: Vec::new(),
            acks: HashMap::new(),
            extra_acks: Vec::new(),
            resent: Vec::new(),
            unavailable: Vec::new(),
            errors: Vec::new(),
            disconnects: Vec::new(),
            breaks: Vec::new(),
            gave_up: None,
            member_of: Vec::new(),
            ws: Some(ws),
            progress,
        }
    }

    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Runs the device on its own task: sends (per `plan`) until [`Control::stop`],
    /// settles, then reads until it has every message of [`Control::expect_totals`].
    pub fn spawn(
        mut self,
        plan: Plan,
        urls: Arc<Vec<String>>,
        control: &Control,
    ) -> JoinHandle<Device> {
        self.member_of = plan.member_of.clone();
        let stop = control.stop.subscribe();
        let totals = control.totals.subscribe();
        let done = control.done_tx.clone();
        tokio::spawn(self.run(plan, urls, stop, totals, done))
    }

    fn unsettled(&self, failed: &HashSet<String>) -> usize {
        self.sent.len() - self.acks.len() - failed.len()
    }

    fn have_all(&self, plan: &Plan, totals: &HashMap<Id, usize>) -> bool {
        plan.member_of.iter().all(|conv| {
            let want = totals.get(conv).copied().unwrap_or(0);
            let got: HashSet<u64> = self
                .received
                .iter()
                .filter(|r| r.event.message.conv == *conv)
                .map(|r| r.event.message.seq)
                .collect();
            got.len() >= want
        })
    }

    async fn run(
        mut self,
        plan: Plan,
        urls: Arc<Vec<String>>,
        stop: watch::Receiver<bool>,
        totals: watch::Receiver<Option<HashMap<Id, usize>>>,
        done: mpsc::UnboundedSender<String>,
    ) -> Device {
        let mut k = 0usize;
        let mut failed: HashSet<String> = HashSet::new();
        // Sends answered `unavailable`, to be resent at the given time.
        let mut retry: VecDeque<(Instant, String)> = VecDeque::new();
        let mut settled = false;
        let mut last_progress = Instant::now();
        loop {
            let stopping = *stop.borrow();
            let mut broken = false;
            while retry.front().is_some_and(|(at, _)| *at <= Instant::now()) {
                let (_, cid) = retry.pop_front().expect("a due retry");
                let s = self
                    .sent
                    .iter()
                    .find(|s| s.cid == cid)
                    .cloned()
                    .expect("a retried send was sent");
                let ws = self.ws.as_mut().expect("connected");
                if ws.send_message(s.conv, &s.cid, &s.text).await.is_err() {
                    broken = true;
                    break;
                }
            }
            if !broken && !stopping && !plan.send_to.is_empty() {
                while self.unsettled(&failed) < plan.window {
                    let conv = plan.send_to[k % plan.send_to.len()];
                    let sent = Sent {
                        cid: format!("{}-{k}", self.label),
                        conv,
                        text: format!("{} message {k}", self.label),
                    };
                    k += 1;
                    // Recorded first: a send that fails to go out may still have
                    // reached the server, and is resent with its cid after a reconnect.
                    self.sent.push(sent.clone());
                    let ws = self.ws.as_mut().expect("connected");
                    if ws
                        .send_message(sent.conv, &sent.cid, &sent.text)
                        .await
                        .is_err()
                    {
                        broken = true;
                        break;
                    }
                }
            }
            if stopping && !settled && !broken && self.unsettled(&failed) == 0 {
                settled = true;
                let _ = done.send(self.label.clone());
            }
            if settled {
                if let Some(totals) = totals.borrow().as_ref() {
                    if self.have_all(&plan, totals) {
                        break;
                    }
                }
            }
            if !broken {
                let ws = self.ws.as_mut().expect("connected");
                match ws.next(Duration::from_millis(100)).await {
                    Ok(WsEvent::Frame(ServerFrame::Error(e)))
                        if plan.retry_unavailable && e.code == ErrorCode::Unavailable =>
                    {
                        last_progress = Instant::now();
                        if let Some(cid) = e.cid.clone() {
                            retry.push_back((Instant::now() + Duration::from_millis(200), cid));
                        }
                        self.unavailable.push(e);
                        self.progress.unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(WsEvent::Frame(frame)) => {
                        last_progress = Instant::now();
                        self.handle(frame, false, &mut failed);
                    }
                    Ok(WsEvent::Closed { code, reason }) => {
                        broken = true;
                        self.disconnects
                            .push(format!("closed ({code:?}): {reason}"));
                    }
                    Err(ClientError::Timeout) => {}
                    Err(e @ (ClientError::Closed { .. } | ClientError::Transport(_))) => {
                        broken = true;
                        self.disconnects.push(e.to_string());
                    }
                    Err(e) => panic!("{}: unexpected client error: {e}", self.label),
                }
            }
            if broken {
                if !plan.reconnect {
                    self.breaks.push(format!(
                        "connection to {} broke on a device that does not reconnect: {:?}",
                        NODE_NAMES[self.node], self.disconnects
                    ));
                    return self.finish(settled, &done);
                }
                // The reconnect resends everything without an ack, pending retries too.
                retry.clear();
                if let Err(e) = self.reconnect(&urls, &mut failed).await {
                    self.breaks.push(e);
                    return self.finish(settled, &done);
                }
                last_progress = Instant::now();
            }
            if last_progress.elapsed() > WAIT {
                self.gave_up = Some(format!(
                    "nothing arrived for {WAIT:?} (settled: {settled}, unsettled sends: {})",
                    self.unsettled(&failed)
                ));
                return self.finish(settled, &done);
            }
        }
        self.ws = None;
        self
    }

    /// Ends a device that cannot go on; it still reports, so the test does not wait on it.
    fn finish(mut self, settled: bool, done: &mpsc::UnboundedSender<String>) -> Device {
        if !settled {
            let _ = done.send(self.label.clone());
        }
        self.ws = None;
        self
    }

    fn handle(&mut self, frame: ServerFrame, backlog: bool, failed: &mut HashSet<String>) {
        if let Some(pos) = pos_of(&frame) {
            self.last_pos = self.last_pos.max(pos);
        }
        match frame {
            ServerFrame::Message(event) => self.received.push(Received {
                event,
                conn: self.connections.len() - 1,
                backlog,
            }),
            ServerFrame::Ack(ack) => {
                if self.acks.contains_key(&ack.cid) {
                    self.extra_acks.push(ack);
                } else {
                    failed.remove(&ack.cid);
                    self.acks.insert(ack.cid.clone(), ack);
                    self.progress.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            ServerFrame::Error(error) => {
                if let Some(cid) = &error.cid {
                    if !self.acks.contains_key(cid) {
                        failed.insert(cid.clone());
                    }
                }
                self.errors.push(error);
            }
            _ => {}
        }
    }

    /// Connects to the next live node with the last position, reads the backlog, and
    /// resends every send without an ack, in the original order, with its cid.
    async fn reconnect(
        &mut self,
        urls: &[String],
        failed: &mut HashSet<String>,
    ) -> Result<(), String> {
        self.ws = None;
        let deadline = Instant::now() + WAIT;
        let mut attempt = 0;
        let (ws, backlog, pos, node) = loop {
            // Another node first; the old one last (it may have been restarted).
            let node = (self.node + 1 + attempt % urls.len()) % urls.len();
            attempt += 1;
            let since = Id(self.last_pos);
            match connect_synced(&urls[node], &self.user.token, Some(since)).await {
                Ok((ws, backlog, pos)) => break (ws, backlog, pos, node),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("{}: cannot reconnect: {e}", self.label));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.connections.push(Conn {
            node,
            since: Some(self.last_pos),
            synced: pos.0,
        });
        self.progress.connections.fetch_add(1, Ordering::Relaxed);
        self.node = node;
        for frame in backlog {
            self.handle(frame, true, failed);
        }
        self.last_pos = self.last_pos.max(pos.0);
        let mut ws = ws;
        let retry: Vec<Sent> = self
            .sent
            .iter()
            .filter(|s| !self.acks.contains_key(&s.cid))
            .cloned()
            .collect();
        for s in retry {
            failed.remove(&s.cid);
            self.resent.push(s.cid.clone());
            ws.send_message(s.conv, &s.cid, &s.text)
                .await
                .map_err(|e| format!("{}: resend {} failed: {e}", self.label, s.cid))?;
        }
        self.ws = Some(ws);
        Ok(())
    }

    /// This device's message events of one conversation, in arrival order.
    pub fn stream(&self, conv: Id) -> Vec<&Received> {
        self.received
            .iter()
            .filter(|r| r.event.message.conv == conv)
            .collect()
    }
}

// ---- checks ----

/// Asserts that a conversation's history is seq 1..N with one message per (sender, cid).
pub fn check_history(what: &str, history: &[MessageView]) {
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    let want: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(seqs, want, "{what}: history is not seq 1..N");
    let mut keys = HashSet::new();
    for m in history {
        let cid = m.cid.clone().unwrap_or_default();
        assert!(
            keys.insert((m.sender, cid.clone())),
            "{what}: ({}, {cid}) stored twice",
            m.sender
        );
    }
}

/// Asserts that a device's stream of `conv` is exactly `history` (seq 1..N, in order,
/// each once, same id, sender, text and cid).
pub fn check_stream(device: &Device, conv: Id, history: &[MessageView]) {
    let stream = device.stream(conv);
    let seqs: Vec<u64> = stream.iter().map(|r| r.event.message.seq).collect();
    let want: Vec<u64> = (1..=history.len() as u64).collect();
    if seqs != want {
        let mut seen = BTreeMap::new();
        for s in &seqs {
            *seen.entry(*s).or_insert(0) += 1;
        }
        let dup: Vec<u64> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(s, _)| *s)
            .collect();
        let missing: Vec<u64> = want
            .iter()
            .filter(|s| !seen.contains_key(s))
            .copied()
            .collect();
        let out_of_order = seqs.windows(2).filter(|w| w[1] <= w[0]).count();
        panic!(
            "{} ({}): stream of {conv} is not seq 1..{}: {} events, duplicated {dup:?}, \
             missing {missing:?}, {out_of_order} out of order; connections {:?}; \
             gave up: {:?}; breaks: {:?}",
            device.label,
            device.user.name,
            history.len(),
            seqs.len(),
            device.connections,
            device.gave_up,
            device.breaks,
        );
    }
    for (r, m) in stream.iter().zip(history) {
        let e = &r.event.message;
        assert_eq!(
            (e.id, e.sender, &e.text, &e.cid),
            (m.id, m.sender, &m.text, &m.cid),
            "{}: event of seq {} differs from history",
            device.label,
            m.seq
        );
    }
}

/// Every send of every device settled (acked, with no error), each ack matches the stored
/// message, and history holds exactly the acknowledged messages.
pub fn check_acks(devices: &[Device], histories: &HashMap<Id, Vec<MessageView>>) {
    let mut stored: HashMap<(Id, String), &MessageView> = HashMap::new();
    for history in histories.values() {
        for m in history {
            stored.insert((m.sender, m.cid.clone().unwrap_or_default()), m);
        }
    }
    let mut acked: HashSet<(Id, String)> = HashSet::new();
    for d in devices {
        assert!(
            d.errors.is_empty(),
            "{}: error frames: {:?}",
            d.label,
            d.errors
        );
        assert!(
            d.extra_acks.is_empty(),
            "{}: more than one ack for a cid: {:?}",
            d.label,
            d.extra_acks
        );
        for s in &d.sent {
            let ack = d
                .acks
                .get(&s.cid)
                .unwrap_or_else(|| panic!("{}: {} never acknowledged", d.label, s.cid));
            let m = stored
                .get(&(d.user.id, s.cid.clone()))
                .unwrap_or_else(|| panic!("{}: acknowledged {} is not stored", d.label, s.cid));
            assert_eq!(
                (m.conv, m.id, m.seq, &m.text),
                (ack.conv, ack.id, ack.seq, &s.text),
                "{}: ack of {} differs from the stored message",
                d.label,
                s.cid
            );
            acked.insert((d.user.id, s.cid.clone()));
        }
    }
    for key in stored.keys() {
        assert!(
            acked.contains(key),
            "stored message {key:?} was never acknowledged to anyone"
        );
    }
}

/// What every traffic scenario ends with: each history is seq 1..N with nothing stored
/// twice, every send settled as the stored message, no device broke off, and each
/// device's stream of each of its conversations is exactly the history.
pub fn check_traffic(devices: &[Device], histories: &HashMap<Id, Vec<MessageView>>) {
    for (conv, h) in histories {
        check_history(&format!("{conv}"), h);
    }
    check_acks(devices, histories);
    for d in devices {
        assert!(d.breaks.is_empty(), "{}: {:?}", d.label, d.breaks);
        // A device that never ran a plan would have no streams to compare.
        assert!(!d.member_of.is_empty(), "{}: member of nothing", d.label);
        for conv in &d.member_of {
            check_stream(d, *conv, &histories[conv]);
        }
    }
}

/// Each device's sends to a conversation were stored in the order it first wrote them:
/// sends of one connection keep their order. (Not so once a device resends after a
/// reconnect or an `unavailable`.)
pub fn check_sends_kept_order(devices: &[Device]) {
    for device in devices {
        for &conv in &device.member_of {
            let seqs: Vec<u64> = device
                .sent
                .iter()
                .filter(|s| s.conv == conv)
                .map(|s| device.acks[&s.cid].seq)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{}: pipelined sends to {conv} were stored out of order: {seqs:?}",
                device.label
            );
        }
    }
}

/// Device `u{i}` of `users[i]` connected to node `i`, each to send into `room`, its only
/// conversation; not started yet.
pub async fn room_senders(urls: &[String], users: &[User], room: Id) -> Vec<(Device, Plan)> {
    let mut devices = Vec::new();
    for (node, user) in users.iter().enumerate() {
        let device = Device::connect(&format!("u{node}"), user, urls, node).await;
        devices.push((device, Plan::new(vec![room], vec![room])));
    }
    devices
}

/// A device to connect for [`Traffic::connect`]: label, user, node, plan.
pub type Role<'a> = (&'a str, &'a User, usize, Plan);

/// Devices running their [`Plan`]s, and the test's hold on them.
pub struct Traffic {
    control: Control,
    tasks: Vec<JoinHandle<Device>>,
    progress: Vec<Arc<Progress>>,
    /// Which devices send: only they make progress to wait for.
    sends: Vec<bool>,
}

impl Traffic {
    /// Spawns connected devices, each running its plan.
    pub fn start(urls: &Arc<Vec<String>>, devices: Vec<(Device, Plan)>) -> Traffic {
        let control = Control::default();
        let progress = devices.iter().map(|(d, _)| d.progress()).collect();
        let sends = devices.iter().map(|(_, p)| !p.send_to.is_empty()).collect();
        let tasks = devices
            .into_iter()
            .map(|(d, p)| d.spawn(p, Arc::clone(urls), &control))
            .collect();
        Traffic {
            control,
            tasks,
            progress,
            sends,
        }
    }

    /// Connects one device per `(label, user, node, plan)`, in order, and starts them.
    pub async fn connect(urls: &Arc<Vec<String>>, roles: Vec<Role<'_>>) -> Traffic {
        let mut devices = Vec::new();
        for (label, user, node, plan) in roles {
            devices.push((Device::connect(label, user, urls, node).await, plan));
        }
        Traffic::start(urls, devices)
    }

    pub fn progress(&self) -> &[Arc<Progress>] {
        &self.progress
    }

    /// Acknowledged sends so far, per device.
    pub fn acked(&self) -> Vec<usize> {
        self.progress
            .iter()
            .map(|p| p.acked.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every sending device has `n` sends acknowledged.
    pub async fn until_acked(&self, what: &str, n: usize) {
        let none = vec![0; self.progress.len()];
        self.until_acked_since(what, &none, n).await;
    }

    /// Waits until every sending device has `n` more sends acknowledged than now.
    pub async fn until_more_acked(&self, what: &str, n: usize) {
        let now = self.acked();
        self.until_acked_since(what, &now, n).await;
    }

    /// Waits until every sending device has `n` more sends acknowledged than at `since`
    /// (an earlier [`Traffic::acked`]): traffic flows in the phase the test is in.
    pub async fn until_acked_since(&self, what: &str, since: &[usize], n: usize) {
        assert_eq!(since.len(), self.progress.len(), "{what}: {since:?}");
        until_progress(what, &self.progress, |acked| {
            acked
                .iter()
                .zip(since)
                .zip(&self.sends)
                .all(|((&now, &before), &sends)| !sends || now >= before + n)
        })
        .await;
    }

    /// Stops the devices, waits for them to settle, reads every conversation's history
    /// from `http` (as the reader given for it), hands the totals to the devices and
    /// collects them.
    pub async fn finish(
        mut self,
        http: &Http,
        readers: &[(Id, &User)],
    ) -> (Vec<Device>, HashMap<Id, Vec<MessageView>>) {
        self.control.stop();
        self.control.settled(self.tasks.len()).await;
        let mut histories = HashMap::new();
        for (conv, reader) in readers {
            histories.insert(*conv, history(http, &reader.token, *conv).await);
        }
        self.control
            .expect_totals(histories.iter().map(|(c, h)| (*c, h.len())).collect());
        let mut devices = Vec::new();
        for t in self.tasks {
            devices.push(t.await.expect("device task"));
        }
        (devices, histories)
    }
}

/// Waits until `pred` holds for the devices' progress.
pub async fn until_progress(
    what: &str,
    progress: &[Arc<Progress>],
    pred: impl Fn(&[usize]) -> bool,
) {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let acked: Vec<usize> = progress
            .iter()
            .map(|p| p.acked.load(Ordering::Relaxed))
            .collect();
        if pred(&acked) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: traffic stalled, acks per device {acked:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The newest page of `conv` (no bound: served through the shared history cache in
/// cluster mode) equals the tail of `history` on each of `nodes`, asked twice so that the
/// second answer can come from the cache.
pub async fn check_latest_page(
    cluster: &Cluster,
    nodes: &[usize],
    token: &str,
    conv: Id,
    history: &[MessageView],
) {
    let tail = &history[history.len().saturating_sub(50)..];
    for &node in nodes {
        for round in 0..2 {
            let page = cluster
                .http(node)
                .history(token, conv, None, None, None)
                .await
                .unwrap_or_else(|e| panic!("latest page of {conv} on {}: {e}", NODE_NAMES[node]));
            assert_eq!(
                page.messages, tail,
                "latest page of {conv} on {} (read {round})",
                NODE_NAMES[node]
            );
            assert_eq!(
                page.has_more,
                history.len() > 50,
                "{conv} on {}",
                NODE_NAMES[node]
            );
        }
    }
}
