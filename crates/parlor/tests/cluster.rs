//! Cluster mode with three nodes, end to end: each test launches its own engines (three
//! NATS JetStream servers with R3 streams, Redis, PostgreSQL, all with mutual TLS) and
//! three `parlor` nodes on them, so it can kill any of them. The nodes choose cluster
//! mode explicitly; `PARLOR_TEST_BACKEND` does not matter here.
//!
//! What is checked is what `docs/cluster.md` promises: messages cross nodes in strict
//! per-conversation order, exactly once; a device resumes on any node from its last
//! position; presence, typing and the connection registry span nodes; and losing a chat
//! node, a NATS server, Redis or PostgreSQL for a while loses nothing acknowledged.
//! Waits are bounded only so that a broken cluster fails instead of hanging; nothing
//! asserts that anything was fast.

#![allow(clippy::unwrap_used)]

mod cluster_support;
mod support;

use cluster_support::*;
use parlor_client::proto::rest::{MessageView, PresenceView};
use parlor_client::proto::ws::{Ack, ClientFrame, MemberChange, ServerFrame, TypingEvent};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{ClientError, Http, WsClient};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::{pipeline, second_device, user, Outgoing, User, WAIT};
use tokio::time::Instant;

/// Presence settings of the presence tests: a 2 s grace period, a 200 ms expiry tick.
const GRACE_MS: u64 = 2_000;
const PRESENCE_ENV: [(&str, &str); 2] = [
    ("PARLOR_PRESENCE__GRACE_SECS", "2"),
    ("PARLOR_PRESENCE__TICK_MS", "200"),
];
/// Generous bound for presence to converge (documented: grace + tick, 2.2 s here).
const PRESENCE_BOUND: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The same user on another device (its own login, so its own device session).
async fn device_of(cluster: &Cluster, node: usize, u: &User, name: &str) -> User {
    User {
        token: second_device(&cluster.http(node), u, name).await,
        ..u.clone()
    }
}

/// Waits until `asker`, asking through `http`, sees `user` online.
async fn until_online(what: &str, http: &Http, asker: &User, user: Id) {
    eventually(what, PRESENCE_BOUND, || async {
        presence_of(http, asker, user)
            .await
            .ok()?
            .online
            .then_some(())
    })
    .await;
}

/// Skips frames until the next presence event of `user`; returns the frames before it.
async fn next_presence(ws: &mut WsClient, user: Id) -> (Vec<ServerFrame>, PresenceView) {
    frames_until(ws, PRESENCE_BOUND, |f| match f {
        ServerFrame::Presence(p) if p.user == user => Some(p.clone()),
        _ => None,
    })
    .await
}

fn typing_of(frame: &ServerFrame) -> Option<TypingEvent> {
    match frame {
        ServerFrame::Typing(t) => Some(t.clone()),
        _ => None,
    }
}

async fn typing(ws: &mut WsClient, conv: Id, on: bool) {
    ws.send_frame(&ClientFrame::Typing { conv, typing: on })
        .await
        .expect("typing frame");
}

/// Skips frames until `f` matches, for at most `limit`; returns the frames before it.
async fn frames_until<T>(
    ws: &mut WsClient,
    limit: Duration,
    mut f: impl FnMut(&ServerFrame) -> Option<T>,
) -> (Vec<ServerFrame>, T) {
    let deadline = Instant::now() + limit;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next_frame(left).await {
            Ok(frame) => {
                if let Some(found) = f(&frame) {
                    return (before, found);
                }
                before.push(frame);
            }
            Err(e) => panic!("waiting for a frame (after {before:?}): {e}"),
        }
    }
}

/// Scenario 1: three members, each on a different node (and one of them with a second
/// device on a third), pipeline concurrently into a direct and a group conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_nodes_get_every_conversation_in_seq_order_exactly_once() {
    const PER_SENDER: usize = 60;
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let trio = cluster.trio(["alice", "bob", "carol"]).await;
    let [alice, bob, carol] = &trio.users;
    let alice_phone = device_of(&cluster, 2, alice, "phone").await;
    let direct = cluster.direct(1, bob, alice.id).await;
    let room = cluster.group(2, carol, "room", &[alice.id, bob.id]).await;

    let mut roles = trio.roles(room, direct, Plan::new);
    let phone = Plan::receiver(vec![room, direct]);
    roles.push(("alice-phone", &alice_phone, 2, phone));
    let traffic = Traffic::connect(&urls, roles).await;
    traffic.until_acked("senders", PER_SENDER).await;
    let (devices, histories) = traffic
        .finish(&cluster.http(0), &[(room, alice), (direct, alice)])
        .await;

    check_traffic(&devices, &histories);
    check_sends_kept_order(&devices);
    // Each node stamps ids with its own leased machine id: one per sender's node, and
    // three different ones.
    let machine = |id: Id| (id.0 >> 12) & 0x3ff;
    let mut machines = Vec::new();
    for d in devices.iter().filter(|d| !d.sent.is_empty()) {
        let ids: HashSet<u64> = d.acks.values().map(|a| machine(a.id)).collect();
        assert_eq!(ids.len(), 1, "{}: machine ids {ids:?}", d.label);
        machines.extend(ids);
    }
    let distinct: HashSet<u64> = machines.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "machine ids of n1, n2, n3: {machines:?}");
    // Every node serves the same history, and the same newest page.
    for (node, name) in NODE_NAMES.iter().enumerate().skip(1) {
        for (conv, h) in &histories {
            let other = history(&cluster.http(node), &bob.token, *conv).await;
            assert_eq!(&other, h, "history of {conv} on {name}");
        }
    }
    for (conv, h) in &histories {
        check_latest_page(&cluster, &[0, 1, 2], &bob.token, *conv, h).await;
    }
    let total: usize = histories.values().map(Vec::len).sum();
    eprintln!("cross-node chat: {total} messages, every stream exact");
}

/// Scenario 2: presence and typing cross nodes; a node killed with SIGKILL takes its
/// users offline after the grace period, and the registry forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_typing_and_the_registry_span_nodes_and_a_killed_node_goes_offline() {
    let mut cluster = Cluster::start(&PRESENCE_ENV);
    let urls = cluster.urls();
    let Pair { alice, bob, conv } = cluster.alice_and_bob().await;

    let (mut alice_ws, _, _) = connect_synced(&urls[0], &alice.token, None)
        .await
        .expect("alice connects to n1");
    let bob_connected_ms = now_ms();
    let (mut bob_ws, _, _) = connect_synced(&urls[1], &bob.token, None)
        .await
        .expect("bob connects to n2");

    // Alice (n1) sees Bob (n2) come online; the REST view on n3 agrees.
    let (_, online) = next_presence(&mut alice_ws, bob.id).await;
    assert!(online.online, "first presence of bob: {online:?}");
    let seen = presence_of(&cluster.http(2), &alice, bob.id)
        .await
        .expect("presence query on n3");
    assert!(seen.online, "{seen:?}");

    // The registry knows who is where, asked on any node.
    assert_eq!(registry(&cluster.http(2), bob.id).await, ["n2"]);
    assert_eq!(registry(&cluster.http(1), alice.id).await, ["n1"]);

    // Typing crosses nodes both ways.
    typing(&mut bob_ws, conv, true).await;
    let (_, t) = frames_until(&mut alice_ws, WAIT, typing_of).await;
    assert_eq!((t.conv, t.user, t.typing), (conv, bob.id, true), "{t:?}");
    typing(&mut alice_ws, conv, true).await;
    let (_, t) = frames_until(&mut bob_ws, WAIT, typing_of).await;
    assert_eq!((t.conv, t.user, t.typing), (conv, alice.id, true), "{t:?}");

    // SIGKILL node 2: nobody cleans up after it.
    let killed = Instant::now();
    let killed_ms = now_ms();
    cluster.kill(1);
    drop(bob_ws);
    let (before, gone) = next_presence(&mut alice_ws, bob.id).await;
    let gone_after = killed.elapsed();
    let gone_ms = now_ms();
    assert!(
        !gone.online,
        "expected bob offline, got {gone:?} after {before:?}"
    );
    let last_seen = gone.last_seen.expect("offline presence carries last_seen");
    // Bob was last vouched for by his node while it ran...
    assert!(
        (bob_connected_ms..=killed_ms).contains(&last_seen),
        "last_seen {last_seen} outside [{bob_connected_ms} (connect), {killed_ms} (kill)]"
    );
    // ...and is announced offline only once the grace period after that has passed.
    assert!(
        gone_ms >= last_seen + GRACE_MS as i64,
        "offline announced {} ms after last_seen, before the {GRACE_MS} ms grace period",
        gone_ms - last_seen
    );
    // Node 2 vouched for him five times per grace period until it died, so the earliest
    // correct announcement is one heartbeat short of the grace period after the kill.
    let heartbeat = Duration::from_millis(GRACE_MS / 5);
    assert!(
        gone_after + heartbeat + Duration::from_millis(100) >= Duration::from_millis(GRACE_MS),
        "offline announced {gone_after:?} after the kill, before the grace period"
    );
    eprintln!("bob went offline {gone_after:?} after node 2 was killed");

    // The registry forgets the dead node by itself: its entry carries the same deadline
    // as the online entry, so by the time Bob is announced offline it has lapsed. REST
    // presence agrees.
    assert_eq!(
        registry(&cluster.http(0), bob.id).await,
        Vec::<String>::new(),
        "registry of a user announced offline"
    );
    let seen = presence_of(&cluster.http(2), &alice, bob.id)
        .await
        .expect("presence query on n3");
    assert!(!seen.online, "{seen:?}");
    assert_eq!(registry(&cluster.http(2), alice.id).await, ["n1"]);

    // Bob comes back on node 3: online again, registered there, typing still crosses.
    let (mut bob_ws, _, _) = connect_synced(&urls[2], &bob.token, None)
        .await
        .expect("bob connects to n3");
    let (_, back) = next_presence(&mut alice_ws, bob.id).await;
    assert!(back.online, "{back:?}");
    assert_eq!(registry(&cluster.http(0), bob.id).await, ["n3"]);
    typing(&mut bob_ws, conv, true).await;
    let (_, t) = frames_until(&mut alice_ws, WAIT, typing_of).await;
    assert_eq!((t.conv, t.user), (conv, bob.id), "{t:?}");
}

/// Scenario 3: a device offline while messages arrive (sent through nodes 1 and 3)
/// reconnects to node 3 with its last position and gets everything once, in order, then
/// `synced`, then live events, while another member keeps sending through the seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_resumes_on_another_node_exactly_once_then_live() {
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let [alice, bob, carol] = cluster.trio(["alice", "bob", "carol"]).await.users;
    let dave = user(&cluster.http(0), "dave").await;
    let direct = cluster.direct(0, &alice, bob.id).await;
    let room = cluster.group(2, &carol, "room", &[alice.id, bob.id]).await;
    let batch = |who: &str, convs: &[Id], from: usize, n: usize| -> Vec<Outgoing> {
        (from..from + n)
            .map(|k| Outgoing {
                conv: convs[k % convs.len()],
                cid: format!("{who}-{k}"),
                text: format!("{who} message {k}"),
            })
            .collect()
    };

    let (mut alice_ws, _, _) = connect_synced(&urls[0], &alice.token, None)
        .await
        .expect("alice on n1");
    let (mut carol_ws, _, _) = connect_synced(&urls[2], &carol.token, None)
        .await
        .expect("carol on n3");

    // Bob is online on node 2 for the first few messages, then goes away.
    let (mut bob_ws, _, _) = connect_synced(&urls[1], &bob.token, None)
        .await
        .expect("bob on n2");
    let mut seen = Vec::new();
    pipeline(
        &mut alice_ws,
        &batch("alice", &[room, direct], 0, 4),
        4,
        &mut seen,
    )
    .await;
    let mut bob_stream: Vec<ServerFrame> = Vec::new();
    let mut last_pos = 0u64;
    while bob_stream
        .iter()
        .filter(|f| matches!(f, ServerFrame::Message(_)))
        .count()
        < 4
    {
        let frame = bob_ws.next_frame(WAIT).await.expect("bob's live events");
        if let Some(pos) = pos_of(&frame) {
            last_pos = pos;
            bob_stream.push(frame);
        }
    }
    bob_ws.close().await.expect("bob disconnects");

    // While he is away: messages through nodes 1 and 3, and a membership change.
    let mut acks: HashMap<String, Ack> = HashMap::new();
    acks.extend(
        pipeline(
            &mut alice_ws,
            &batch("alice", &[room, direct], 4, 40),
            8,
            &mut seen,
        )
        .await,
    );
    acks.extend(pipeline(&mut carol_ws, &batch("carol", &[room], 0, 40), 8, &mut seen).await);
    cluster
        .http(2)
        .add_member(&carol.token, room, dave.id)
        .await
        .expect("add dave");

    // Bob reconnects to node 3 while Alice keeps sending through node 1.
    let seam = tokio::spawn(async move {
        let mut seen = Vec::new();
        let acks = pipeline(
            &mut alice_ws,
            &batch("alice", &[room, direct], 44, 40),
            4,
            &mut seen,
        )
        .await;
        (alice_ws, acks)
    });
    let mut ws = WsClient::connect(&urls[2], None, &bob.token, Some(Id(last_pos)))
        .await
        .expect("bob reconnects to n3");
    let (backlog, synced) = ws.wait_synced(WAIT).await.expect("bob's sync");
    let (_alice_ws, seam_acks) = seam.await.expect("seam sender");

    // The backlog: state events after `since`, in increasing position, up to `synced`.
    let positions: Vec<u64> = backlog.iter().filter_map(pos_of).collect();
    assert_eq!(
        positions.len(),
        backlog
            .iter()
            .filter(|f| !matches!(f, ServerFrame::Presence(_) | ServerFrame::Typing(_)))
            .count(),
        "unexpected frames in the backlog: {backlog:?}"
    );
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "backlog out of position order: {positions:?}"
    );
    assert!(
        positions.iter().all(|&p| p > last_pos && p <= synced.0),
        "backlog outside ({last_pos}, {}]: {positions:?}",
        synced.0
    );
    assert!(
        backlog.iter().any(|f| matches!(
            f,
            ServerFrame::Member(m) if m.user == dave.id && m.change == MemberChange::Added
        )),
        "dave's membership change is missing from the backlog"
    );
    // Everything acknowledged before Bob said hello is in it (live events up to
    // `synced` are skipped, so nothing else could bring them).
    let in_backlog: HashSet<&str> = backlog
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => m.message.cid.as_deref(),
            _ => None,
        })
        .collect();
    for cid in acks.keys() {
        assert!(
            in_backlog.contains(cid.as_str()),
            "{cid} missing from the backlog"
        );
    }
    bob_stream.extend(backlog);
    acks.extend(seam_acks);

    // Then live events, all after `synced`, until Bob has every message.
    let histories: HashMap<Id, Vec<MessageView>> = HashMap::from([
        (room, history(&cluster.http(0), &alice.token, room).await),
        (
            direct,
            history(&cluster.http(0), &alice.token, direct).await,
        ),
    ]);
    let total: usize = histories.values().map(Vec::len).sum();
    assert_eq!(total, 124, "every acknowledged message is stored");
    let count = |s: &[ServerFrame]| {
        s.iter()
            .filter(|f| matches!(f, ServerFrame::Message(_)))
            .count()
    };
    while count(&bob_stream) < total {
        let frame = ws
            .next_frame(WAIT)
            .await
            .unwrap_or_else(|e| panic!("bob has {} of {total} messages: {e}", count(&bob_stream)));
        if let Some(pos) = pos_of(&frame) {
            assert!(
                pos > synced.0,
                "live event at {pos}, not after synced {}",
                synced.0
            );
            bob_stream.push(frame);
        }
    }

    for (conv, h) in &histories {
        check_history(&format!("{conv}"), h);
        let seqs: Vec<u64> = bob_stream
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Message(m) if m.message.conv == *conv => Some(m.message.seq),
                _ => None,
            })
            .collect();
        let want: Vec<u64> = (1..=h.len() as u64).collect();
        assert_eq!(seqs, want, "bob's stream of {conv}: once each, in order");
    }
    for (cid, ack) in &acks {
        let m = &histories[&ack.conv][(ack.seq - 1) as usize];
        assert_eq!(
            (m.id, m.cid.as_deref()),
            (ack.id, Some(cid.as_str())),
            "{cid}"
        );
    }
    // A message after the catch-up still arrives live.
    let mut carol_seen = Vec::new();
    pipeline(
        &mut carol_ws,
        &batch("carol", &[room], 40, 1),
        1,
        &mut carol_seen,
    )
    .await;
    let (_, last) = frames_until(&mut ws, WAIT, |f| match f {
        ServerFrame::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (
            last.message.conv,
            last.message.seq,
            last.message.cid.as_deref()
        ),
        (room, histories[&room].len() as u64 + 1, Some("carol-40"))
    );
}

/// Scenario 4: SIGKILL a chat node while senders on all three nodes pipeline; its devices
/// reconnect elsewhere with their last position and resend what was not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_chat_node_mid_traffic_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let trio = cluster.trio(["a", "b", "c"]).await;
    let [a, b, c] = &trio.users;
    let d = user(&cluster.http(1), "d").await;
    let c_tablet = device_of(&cluster, 1, c, "tablet").await;
    let room = cluster.group(0, a, "room", &[b.id, c.id, d.id]).await;
    let direct = cluster.direct(1, b, a.id).await;

    // Devices of the killed node must move to another.
    let plan = |send_to, member_of| Plan::new(send_to, member_of).reconnecting();
    let mut roles = trio.roles(room, direct, plan);
    // Node 2 (index 1) holds b, d and c's tablet.
    roles.push(("d", &d, 1, plan(vec![room], vec![room])));
    roles.push(("c-tablet", &c_tablet, 1, plan(vec![], vec![room])));
    let traffic = Traffic::connect(&urls, roles).await;

    traffic.until_acked("before the kill", 40).await;
    cluster.kill(1);
    // Everyone keeps sending; node 2's devices only after they moved.
    traffic.until_more_acked("after the kill", 40).await;
    let (devices, histories) = traffic
        .finish(&cluster.http(0), &[(room, a), (direct, a)])
        .await;

    check_traffic(&devices, &histories);
    for (conv, h) in &histories {
        check_latest_page(&cluster, &[0, 2], &a.token, *conv, h).await;
    }
    for dev in &devices {
        let moved = ["b", "d", "c-tablet"].contains(&dev.label.as_str());
        assert_eq!(
            dev.connections.len(),
            if moved { 2 } else { 1 },
            "{}: connections {:?}",
            dev.label,
            dev.connections
        );
        if moved {
            assert_ne!(dev.connections[1].node, 1, "{}", dev.label);
        }
        eprintln!(
            "{}: {} sent, {} resent after reconnecting ({} of them already stored), \
             {} received ({} from sync)",
            dev.label,
            dev.sent.len(),
            dev.resent.len(),
            dev.resent.iter().filter(|c| dev.acks[*c].duplicate).count(),
            dev.received.len(),
            dev.received.iter().filter(|r| r.backlog).count()
        );
    }

    // Node 2 comes back on the same spec (it kept nothing of its own). A device resuming
    // there from its last position gets nothing twice, and what it sends gets a fresh,
    // larger id (machine-id lease) and reaches the other nodes.
    tokio::task::block_in_place(|| cluster.nodes[1].restart()).expect("restart node 2");
    let last_pos = devices.iter().find(|d| d.label == "b").unwrap().last_pos;
    let (mut b_ws, backlog, _) =
        connect_synced(cluster.nodes[1].base_url(), &b.token, Some(Id(last_pos)))
            .await
            .expect("b resumes on the restarted node 2");
    assert!(
        backlog.iter().all(|f| pos_of(f).is_none()),
        "b already had everything: {backlog:?}"
    );
    let (mut a_ws, _, _) = connect_synced(&urls[0], &a.token, None)
        .await
        .expect("a on n1");
    let after = Outgoing {
        conv: room,
        cid: "b-after-restart".into(),
        text: "back on node 2".into(),
    };
    let ack = pipeline(&mut b_ws, &[after], 1, &mut Vec::new())
        .await
        .remove("b-after-restart")
        .unwrap();
    let room_history = &histories[&room];
    assert_eq!(ack.seq, room_history.len() as u64 + 1);
    let newest = room_history.iter().map(|m| m.id.0).max().unwrap();
    assert!(ack.id.0 > newest, "id {} after {newest}", ack.id);
    let (_, m) = frames_until(&mut a_ws, WAIT, |f| match f {
        ServerFrame::Message(m) if m.message.conv == room => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!((m.message.id, m.message.seq), (ack.id, ack.seq));
}

/// The NATS server leading this test's events stream, as claimed by the leader itself
/// (followers may still name a dead one), and the replicas it reports: (name, current).
fn stream_leader(cluster: &Cluster) -> Option<(usize, Vec<(String, bool)>)> {
    let nats = &cluster.engines.nats;
    let stream = format!("{}_EVENTS", cluster.spec.namespace.to_uppercase());
    tokio::task::block_in_place(|| {
        (0..nats.len()).filter(|&i| nats.is_up(i)).find_map(|i| {
            let jsz = nats.monitor(i, "/jsz?accounts=true&streams=true").ok()?;
            let detail = jsz["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .find(|s| s["name"].as_str() == Some(stream.as_str()))?;
            let info = &detail["cluster"];
            if info["leader"].as_str()? != nats.server_name(i).ok()? {
                return None;
            }
            let replicas = info["replicas"]
                .as_array()?
                .iter()
                .filter_map(|r| Some((r["name"].as_str()?.to_owned(), r["current"].as_bool()?)))
                .collect();
            Some((i, replicas))
        })
    })
}

/// Scenario 5: SIGKILL one of the three NATS servers (the meta leader) during traffic,
/// then restart it: nothing acknowledged is lost or doubled, it rejoins, and traffic
/// keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_nats_server_mid_traffic_loses_nothing_and_it_rejoins() {
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let trio = cluster.trio(["a", "b", "c"]).await;
    let [a, b, c] = &trio.users;
    let room = cluster.group(2, c, "room", &[a.id, b.id]).await;
    let direct = cluster.direct(0, a, b.id).await;
    let traffic = Traffic::connect(&urls, trio.roles(room, direct, Plan::new)).await;

    traffic.until_acked("before the kill", 30).await;
    let nats = &cluster.engines.nats;
    // The stream leader: losing it makes JetStream elect another, and publishes fail
    // meanwhile (subscribers then read the event log).
    let (victim, _) = stream_leader(&cluster).expect("the events stream has a leader");
    let victim_name = nats.server_name(victim).unwrap().to_owned();
    tokio::task::block_in_place(|| nats.kill(victim)).expect("kill a NATS server");
    let at_kill = traffic.acked();
    // Traffic goes on through the election and after it, on two servers.
    eventually(
        "a new stream leader on the two servers left",
        WAIT,
        || async {
            stream_leader(&cluster)
                .map(|(i, _)| i)
                .filter(|&i| i != victim)
        },
    )
    .await;
    traffic
        .until_acked_since("with a NATS server down", &at_kill, 40)
        .await;

    tokio::task::block_in_place(|| nats.start(victim)).expect("restart the NATS server");
    // It is routed to both others, a meta leader exists, and the stream leader counts
    // it as a current replica again.
    let routes = tokio::task::block_in_place(|| nats.monitor(victim, "/routez")).expect("/routez")
        ["num_routes"]
        .as_u64();
    assert_eq!(routes, Some(2), "routes of the restarted server");
    assert!(tokio::task::block_in_place(|| nats.meta_leader()).is_some());
    eventually(
        "the restarted server is a current replica",
        WAIT,
        || async {
            let (_, replicas) = stream_leader(&cluster)?;
            replicas
                .iter()
                .any(|(name, current)| *name == victim_name && *current)
                .then_some(())
        },
    )
    .await;
    traffic.until_more_acked("after the restart", 40).await;

    let (devices, histories) = traffic
        .finish(&cluster.http(1), &[(room, a), (direct, a)])
        .await;
    check_traffic(&devices, &histories);
    check_sends_kept_order(&devices);
}

/// Beyond scenario 5: two of the three NATS servers down, so JetStream has no quorum and
/// no publish succeeds. `docs/cluster.md` promises that delivery then falls back to the
/// store's event log and nothing is lost; and once both are back, the bus carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_nats_quorum_falls_back_to_the_event_log() {
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let users = cluster.trio(["a", "b", "c"]).await.users;
    let [a, b, c] = &users;
    let room = cluster.group(1, b, "room", &[a.id, c.id]).await;

    let traffic = Traffic::start(&urls, room_senders(&urls, &users, room).await);
    traffic.until_acked("before the kill", 30).await;

    // The stream leader and one more: one server left, no quorum.
    let nats = &cluster.engines.nats;
    let (leader, _) = stream_leader(&cluster).expect("the events stream has a leader");
    let other = (leader + 1) % nats.len();
    for i in [leader, other] {
        tokio::task::block_in_place(|| nats.kill(i)).expect("kill a NATS server");
    }
    traffic.until_more_acked("without a NATS quorum", 60).await;

    for i in [leader, other] {
        tokio::task::block_in_place(|| nats.start(i)).expect("restart a NATS server");
    }
    traffic.until_more_acked("with the quorum back", 40).await;

    let (devices, histories) = traffic.finish(&cluster.http(2), &[(room, a)]).await;
    check_traffic(&devices, &histories);
    check_sends_kept_order(&devices);
}

/// Scenario 6: Redis goes away and comes back empty. Messages keep flowing throughout;
/// presence and the registry rebuild themselves from the nodes' heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_empty_rebuilds_presence_and_loses_no_message() {
    let cluster = Cluster::start(&PRESENCE_ENV);
    let urls = cluster.urls();
    let users = cluster.trio(["a", "b", "c"]).await.users;
    let [a, b, c] = &users;
    let room = cluster.group(0, a, "room", &[b.id, c.id]).await;
    // REST sends go to a conversation of their own, so the devices' records stay exact.
    let side = cluster.group(0, a, "side", &[c.id]).await;

    let devices = room_senders(&urls, &users, room).await;
    for (i, u) in users.iter().enumerate() {
        let before = "everyone online before the restart";
        until_online(before, &cluster.http((i + 1) % 3), a, u.id).await;
        assert_eq!(registry(&cluster.http(0), u.id).await, [NODE_NAMES[i]]);
    }
    let traffic = Traffic::start(&urls, devices);
    traffic.until_acked("before the outage", 20).await;

    let redis = &cluster.engines.redis;
    tokio::task::block_in_place(|| redis.kill()).expect("kill redis");
    let at_kill = traffic.acked();
    // While Redis is away: presence says it cannot answer, readiness names Redis, and
    // messages (WebSocket and REST, whose rate limit fails open) and new connections
    // keep working.
    let err = presence_of(&cluster.http(0), a, b.id).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(503), Some(ErrorCode::Unavailable)),
        "presence without Redis: {err}"
    );
    let (status, ready) = readyz(&cluster.http(1)).await;
    assert_eq!(status, 503, "{ready:?}");
    assert_ne!(
        ready.engines.get("redis").map(String::as_str),
        Some("ok"),
        "{ready:?}"
    );
    assert_eq!(
        ready.engines.get("store").map(String::as_str),
        Some("ok"),
        "{ready:?}"
    );
    let mut rest_acks = Vec::new();
    for k in 0..2 {
        let ack = cluster
            .http(2)
            .send(
                &c.token,
                side,
                Some(&format!("rest-{k}")),
                "sent while Redis is down",
            )
            .await
            .expect("REST send without Redis");
        rest_acks.push(ack);
    }
    let (mut late, _, _) = connect_synced(&urls[2], &a.token, None)
        .await
        .expect("a new connection without Redis");
    traffic
        .until_acked_since("while Redis is down", &at_kill, 10)
        .await;

    tokio::task::block_in_place(|| redis.start()).expect("start redis (empty)");
    // Within a heartbeat or so every connected user is back, on the right node.
    for (i, u) in users.iter().enumerate() {
        let rebuilt = "presence rebuilt after the restart";
        until_online(rebuilt, &cluster.http((i + 2) % 3), b, u.id).await;
        let want: Vec<String> = if i == 0 {
            // a also has the connection opened on node 3 during the outage.
            vec!["n1".into(), "n3".into()]
        } else {
            vec![NODE_NAMES[i].to_owned()]
        };
        eventually("registry rebuilt after the restart", PRESENCE_BOUND, || {
            let http = cluster.http(0);
            let want = want.clone();
            let id = u.id;
            async move { (registry(&http, id).await == want).then_some(()) }
        })
        .await;
    }
    eventually("ready again", WAIT, || async {
        (readyz(&cluster.http(1)).await.0 == 200).then_some(())
    })
    .await;
    traffic.until_more_acked("after the restart", 30).await;

    let (devices, histories) = traffic.finish(&cluster.http(2), &[(room, a)]).await;
    check_traffic(&devices, &histories);
    check_latest_page(&cluster, &[0, 1, 2], &b.token, room, &histories[&room]).await;
    check_sends_kept_order(&devices);
    let side_history = history(&cluster.http(0), &a.token, side).await;
    check_history("side", &side_history);
    let stored: Vec<(Id, u64)> = side_history.iter().map(|m| (m.id, m.seq)).collect();
    let acked: Vec<(Id, u64)> = rest_acks.iter().map(|a| (a.id, a.seq)).collect();
    assert_eq!(stored, acked, "REST sends made while Redis was down");
    check_latest_page(&cluster, &[0, 1, 2], &c.token, side, &side_history).await;
    // The connection opened during the outage still works: it gets new messages live.
    let ack = cluster
        .http(0)
        .send(&c.token, side, Some("after"), "after the restart")
        .await
        .expect("REST send after the restart");
    let (_, m) = frames_until(&mut late, WAIT, |f| match f {
        ServerFrame::Message(m) if m.message.conv == side => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(m.message.id, ack.id);
}

/// Scenario 7: PostgreSQL stops for a while. Sends answer `unavailable` (503 over
/// REST), nothing unstored is acknowledged, `/readyz` names the store, and once it is
/// back the same nodes serve again by themselves; retries with the same cid store each
/// message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_unavailable_and_service_resumes_by_itself() {
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let pair = cluster.alice_and_bob().await;
    let (mut alice_ws, mut bob_ws) = pair.connect(&urls).await;
    let Pair { alice, bob, conv } = pair;
    let mut acks: HashMap<String, Ack> = HashMap::new();
    let mut seen = Vec::new();
    let before = Outgoing {
        conv,
        cid: "before".into(),
        text: "before the outage".into(),
    };
    acks.extend(pipeline(&mut alice_ws, &[before], 1, &mut seen).await);

    let pg = &cluster.engines.postgres;
    tokio::task::block_in_place(|| pg.stop()).expect("stop PostgreSQL");

    // WebSocket sends: each answered by `unavailable` for its cid (or, if it made it in
    // before the stop, an ack, which is then checked against history).
    let down: Vec<String> = (0..3).map(|k| format!("down-{k}")).collect();
    for cid in &down {
        alice_ws
            .send_message(conv, cid, &format!("{cid} text"))
            .await
            .expect("send frame");
    }
    let mut failed: Vec<String> = Vec::new();
    while failed.len() + down.iter().filter(|c| acks.contains_key(*c)).count() < down.len() {
        match alice_ws
            .next_frame(WAIT)
            .await
            .expect("answer during the outage")
        {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                assert!(!e.message.trim().is_empty(), "{e:?}");
                let cid = e.cid.clone().expect("the error names its send");
                assert!(down.contains(&cid), "{e:?}");
                failed.push(cid);
            }
            ServerFrame::Ack(a) => {
                acks.insert(a.cid.clone(), a);
            }
            _ => {}
        }
    }
    assert!(
        !failed.is_empty(),
        "no send failed with the store stopped: {acks:?}"
    );
    // REST: 503 with the same code.
    let err = cluster
        .http(1)
        .send(&bob.token, conv, Some("rest-down"), "over REST")
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(503), Some(ErrorCode::Unavailable)),
        "{err}"
    );
    // Every node's readiness names the store.
    cluster.assert_store_unready_everywhere().await;

    tokio::task::block_in_place(|| pg.start()).expect("start PostgreSQL");

    // Retries with the same cids succeed once the nodes reconnect by themselves.
    let deadline = Instant::now() + WAIT;
    for cid in &failed {
        loop {
            alice_ws
                .send_message(conv, cid, &format!("{cid} text"))
                .await
                .expect("resend frame");
            let answer = alice_ws
                .wait_for(WAIT, |f| match f {
                    ServerFrame::Ack(a) if &a.cid == cid => Some(Ok(a.clone())),
                    ServerFrame::Error(e) if e.cid.as_ref() == Some(cid) => Some(Err(e.clone())),
                    _ => None,
                })
                .await
                .expect("answer to a retry");
            match answer {
                Ok(a) => {
                    acks.insert(a.cid.clone(), a);
                    break;
                }
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                    assert!(Instant::now() < deadline, "still unavailable: {e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let rest_ack = loop {
        match cluster
            .http(1)
            .send(&bob.token, conv, Some("rest-down"), "over REST")
            .await
        {
            Ok(a) => break a,
            Err(e @ ClientError::Api { status: 503, .. }) => {
                assert!(Instant::now() < deadline, "REST still unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("REST retry: {e}"),
        }
    };
    cluster.until_all_ready().await;

    // Every acknowledged message is stored once; nothing else is.
    let h = history(&cluster.http(2), &alice.token, conv).await;
    check_history("direct", &h);
    let mut want: HashSet<String> = acks.keys().cloned().collect();
    want.insert("rest-down".into());
    let got: HashSet<String> = h.iter().filter_map(|m| m.cid.clone()).collect();
    assert_eq!(got, want, "stored cids");
    assert_eq!(h.len(), 1 + down.len() + 1);
    for a in acks.values().chain([&rest_ack]) {
        let m = &h[(a.seq - 1) as usize];
        assert_eq!((m.id, m.cid.as_deref()), (a.id, Some(a.cid.as_str())));
    }
    // Bob, connected to node 2 throughout, got each message once, in order.
    let mut bob_seqs = Vec::new();
    while bob_seqs.len() < h.len() {
        let frame = bob_ws
            .next_frame(WAIT)
            .await
            .unwrap_or_else(|e| panic!("bob has seqs {bob_seqs:?} of {}: {e}", h.len()));
        if let ServerFrame::Message(m) = frame {
            bob_seqs.push(m.message.seq);
        }
    }
    assert_eq!(bob_seqs, (1..=h.len() as u64).collect::<Vec<_>>());
}

/// Sends `cid` on `ws` until it is acknowledged, retrying (same cid) while the answer is
/// `unavailable`; fails after `limit`. Other frames read meanwhile go to `seen`.
async fn send_until_acked(
    ws: &mut WsClient,
    conv: Id,
    cid: &str,
    limit: Duration,
    seen: &mut Vec<ServerFrame>,
) -> Ack {
    let deadline = Instant::now() + limit;
    loop {
        ws.send_message(conv, cid, &format!("{cid} text"))
            .await
            .expect("send frame");
        let error = loop {
            match ws.next_frame(WAIT).await {
                Ok(ServerFrame::Ack(a)) if a.cid == cid => return a,
                Ok(ServerFrame::Error(e)) if e.cid.as_deref() == Some(cid) => break e,
                Ok(other) => seen.push(other),
                Err(e) => panic!("answer to {cid}: {e}"),
            }
        };
        assert_eq!(error.code, ErrorCode::Unavailable, "{cid}: {error:?}");
        assert!(
            Instant::now() < deadline,
            "{cid} still unavailable: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Scenario 7, longer: PostgreSQL stays away past the nodes' machine-id leases (30 s,
/// which a node trusts for 25 s after its last renewal). When it is back, the same
/// nodes must lease ids again by themselves (distinct ones, ids still increasing) and
/// serve sends, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_away_longer_than_the_id_lease_resumes_by_itself() {
    /// Longer than the lease (`parlor-postgres` `LEASE_TTL`, 30 s).
    const OUTAGE: Duration = Duration::from_secs(32);
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let pair = cluster.alice_and_bob().await;
    let (mut alice_ws, mut bob_ws) = pair.connect(&urls).await;
    let Pair { alice, conv, .. } = pair;
    let (mut alice_seen, mut bob_seen) = (Vec::new(), Vec::new());
    let before = [
        send_until_acked(&mut alice_ws, conv, "alice-before", WAIT, &mut alice_seen).await,
        send_until_acked(&mut bob_ws, conv, "bob-before", WAIT, &mut bob_seen).await,
    ];

    let pg = &cluster.engines.postgres;
    tokio::task::block_in_place(|| pg.stop()).expect("stop PostgreSQL");
    alice_ws
        .send_message(conv, "alice-during", "during")
        .await
        .expect("send frame");
    let e = loop {
        match alice_ws
            .next_frame(WAIT)
            .await
            .expect("answer during the outage")
        {
            ServerFrame::Error(e) => break e,
            ServerFrame::Ack(a) => panic!("acknowledged with the store stopped: {a:?}"),
            other => alice_seen.push(other),
        }
    };
    assert_eq!(
        (e.code, e.cid.as_deref()),
        (ErrorCode::Unavailable, Some("alice-during"))
    );
    // Connections stay open meanwhile (the idle timeout is 50 s; nothing to read).
    tokio::time::sleep(OUTAGE).await;
    tokio::task::block_in_place(|| pg.start()).expect("start PostgreSQL");

    let after = [
        send_until_acked(&mut alice_ws, conv, "alice-during", WAIT, &mut alice_seen).await,
        send_until_acked(&mut bob_ws, conv, "bob-after", WAIT, &mut bob_seen).await,
    ];
    cluster.until_all_ready().await;
    let machine = |a: &Ack| (a.id.0 >> 12) & 0x3ff;
    assert_ne!(
        machine(&after[0]),
        machine(&after[1]),
        "n1 and n2 stamp ids with the same machine id after re-leasing: {after:?}"
    );
    let newest_before = before.iter().map(|a| a.id.0).max().unwrap();
    for a in &after {
        assert!(a.id.0 > newest_before, "{a:?} not after {before:?}");
        assert!(!a.duplicate, "{a:?}");
    }

    let h = history(&cluster.http(2), &alice.token, conv).await;
    check_history("direct", &h);
    let cids: Vec<&str> = h.iter().filter_map(|m| m.cid.as_deref()).collect();
    assert_eq!(
        cids,
        ["alice-before", "bob-before", "alice-during", "bob-after"]
    );
    for a in before.iter().chain(&after) {
        assert_eq!(h[(a.seq - 1) as usize].id, a.id, "{a:?}");
    }
    // Both live connections, kept through the outage, got every message once, in order.
    for (who, ws, seen) in [
        ("alice", &mut alice_ws, alice_seen),
        ("bob", &mut bob_ws, bob_seen),
    ] {
        let mut seqs: Vec<u64> = seen
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Message(m) => Some(m.message.seq),
                _ => None,
            })
            .collect();
        while seqs.len() < h.len() {
            match ws.next_frame(WAIT).await {
                Ok(ServerFrame::Message(m)) => seqs.push(m.message.seq),
                Ok(_) => {}
                Err(e) => panic!("{who} has seqs {seqs:?} of {}: {e}", h.len()),
            }
        }
        assert_eq!(seqs, [1, 2, 3, 4], "{who}");
    }
}

/// Scenario 7, the hard way: PostgreSQL is SIGKILLed while senders on all three nodes
/// pipeline, so commits are cut off mid-flight. Every send answered `unavailable` is
/// retried with its cid until the store is back; in the end every acknowledged message
/// is stored exactly once and every member's stream is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_traffic_acknowledges_only_what_it_stored() {
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let [a, b, c] = cluster.trio(["a", "b", "c"]).await.users;
    let room = cluster.group(0, &a, "room", &[b.id, c.id]).await;
    let direct = cluster.direct(2, &c, a.id).await;

    let both = || vec![room, direct];
    // The kill cuts commits off mid-flight: only a retry with the same cid settles them.
    let plan = |send_to, member_of| Plan::new(send_to, member_of).retrying_unavailable();
    let traffic = Traffic::connect(
        &urls,
        vec![
            ("a", &a, 0, plan(both(), both())),
            ("b", &b, 1, plan(vec![room], vec![room])),
            ("c", &c, 2, plan(vec![direct, room], both())),
        ],
    )
    .await;
    traffic.until_acked("before the kill", 30).await;

    let pg = &cluster.engines.postgres;
    tokio::task::block_in_place(|| pg.kill()).expect("kill PostgreSQL");
    // Every sender has met the outage.
    eventually(
        "every sender is told the store is unavailable",
        WAIT,
        || async {
            traffic
                .progress()
                .iter()
                .all(|p| p.unavailable.load(Ordering::Relaxed) > 0)
                .then_some(())
        },
    )
    .await;
    cluster.assert_store_unready_everywhere().await;

    tokio::task::block_in_place(|| pg.start()).expect("start PostgreSQL");
    traffic
        .until_more_acked("after the store is back", 40)
        .await;
    cluster.until_all_ready().await;

    let (devices, histories) = traffic
        .finish(&cluster.http(1), &[(room, &a), (direct, &a)])
        .await;
    check_traffic(&devices, &histories);
    for dev in &devices {
        assert!(
            dev.unavailable
                .iter()
                .all(|e| e.cid.is_some() && !e.message.trim().is_empty()),
            "{}: {:?}",
            dev.label,
            dev.unavailable
        );
        let duplicates = dev.acks.values().filter(|a| a.duplicate).count();
        eprintln!(
            "{}: {} sent, {} unavailable answers retried, {} acks for retries of stored sends",
            dev.label,
            dev.sent.len(),
            dev.unavailable.len(),
            duplicates
        );
    }
}

/// A device (re)connecting while PostgreSQL is away must be told to come back later,
/// not that its token is bad: `docs/protocol.md` reserves close code 4001 for
/// `unauthorized` / `token_expired` / `token_revoked`, and a client that gets 4001
/// drops its token and makes the user log in again. The store being unavailable while
/// reading the backlog closes with 1011; checking the session in `hello` is the same
/// store call and should close the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_during_a_postgres_outage_is_retryable_not_unauthorized() {
    let cluster = Cluster::start(&[]);
    let urls = cluster.urls();
    let alice = user(&cluster.http(0), "alice").await;
    let (_, _, pos) = connect_synced(&urls[1], &alice.token, None)
        .await
        .expect("connect before the outage");

    let pg = &cluster.engines.postgres;
    tokio::task::block_in_place(|| pg.stop()).expect("stop PostgreSQL");
    for since in [Some(pos), None] {
        let mut ws = WsClient::connect(&urls[2], None, &alice.token, since)
            .await
            .expect("WebSocket upgrade");
        let event = ws.next(WAIT).await.expect("an answer to hello");
        match event {
            parlor_client::WsEvent::Closed { code, reason } => {
                assert_ne!(
                    code,
                    Some(4001),
                    "since {since:?}: closed as unauthorized: {reason}"
                );
                // 1011 as for the backlog, or 1013 ("try again later").
                assert!(
                    matches!(code, Some(1011 | 1013)),
                    "since {since:?}: closed with {code:?}: {reason}"
                );
                assert!(
                    reason.starts_with("unavailable"),
                    "since {since:?}: {reason}"
                );
            }
            other => panic!("since {since:?}: expected a close, got {other:?}"),
        }
    }
    tokio::task::block_in_place(|| pg.start()).expect("start PostgreSQL");
    // The same token works once the store is back: it was never bad.
    eventually("connect after the outage", WAIT, || async {
        connect_synced(&urls[2], &alice.token, Some(pos))
            .await
            .ok()
            .map(drop)
    })
    .await;
}

/// Uploads keep their parts in the shared object storage, so an upload begun on a node
/// that dies completes on another, and a member on a third node downloads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_begun_on_a_killed_node_completes_on_another() {
    let s3 =
        tokio::task::block_in_place(parlor_testkit::s3::S3Server::start).expect("start s3s-fs");
    let env = [
        ("PARLOR_UPLOADS__STORAGE", "s3".to_string()),
        ("PARLOR_UPLOADS__S3__ENDPOINT", s3.endpoint.clone()),
        ("PARLOR_UPLOADS__S3__BUCKET", s3.bucket.clone()),
        ("PARLOR_UPLOADS__S3__ACCESS_KEY_ID", s3.access_key.clone()),
        (
            "PARLOR_UPLOADS__S3__SECRET_ACCESS_KEY",
            s3.secret_key.clone(),
        ),
        ("PARLOR_UPLOADS__S3__ALLOW_HTTP", "true".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut cluster = Cluster::start(&env);
    let alice = user(&cluster.http(0), "alice").await;
    let bob = user(&cluster.http(2), "bob").await;
    let conv = cluster.direct(1, &alice, bob.id).await;

    // A picture of a few hundred kilobytes, sent in two halves.
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(1200, 800, |x, y| {
        image::Rgb([
            (x * 7 % 251) as u8,
            (y * 3 % 241) as u8,
            ((x ^ y) % 239) as u8,
        ])
    })
    .write_to(&mut png, image::ImageFormat::Png)
    .unwrap();
    let png = png.into_inner();
    let half = png.len() / 2;
    let created = cluster
        .http(0)
        .tus_create(&alice.token, "view.png", "image/png", png.len() as u64)
        .await
        .unwrap();
    let offset = cluster
        .http(0)
        .tus_patch(&alice.token, created.id, 0, png[..half].to_vec())
        .await
        .unwrap();
    assert_eq!(offset, half as u64);
    cluster.kill(0);

    let n2 = cluster.http(1);
    assert_eq!(
        n2.tus_offset(&alice.token, created.id).await.unwrap(),
        half as u64
    );
    let end = n2
        .tus_patch(&alice.token, created.id, half as u64, png[half..].to_vec())
        .await
        .unwrap();
    assert_eq!(end, png.len() as u64);
    let ready = n2.upload_info(&alice.token, created.id).await.unwrap();
    let attachment = ready.attachment.expect("ready upload");
    assert_eq!(
        (attachment.width, attachment.height),
        (Some(1200), Some(800))
    );
    assert_eq!(attachment.thumbnails.len(), 2);
    n2.send_request(
        &alice.token,
        conv,
        &parlor_client::proto::rest::SendRequest {
            cid: Some("pic".into()),
            text: "the view".into(),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: vec![created.id],
        },
    )
    .await
    .unwrap();

    let n3 = cluster.http(2);
    assert_eq!(
        n3.download_bytes(&bob.token, created.id).await.unwrap(),
        png
    );
    let thumb = n3
        .download(
            &bob.token,
            &format!("/v1/uploads/{}/thumbnails/medium", created.id),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(thumb.status(), 200);
    let messages = history(&n3, &bob.token, conv).await;
    assert_eq!(
        messages.last().map(|m| m.attachments.clone()),
        Some(vec![attachment])
    );
    drop(cluster);
    drop(s3);
}

/// Pushes in a cluster: the nodes share one JetStream durable consumer for notification
/// work and claim queued pushes from PostgreSQL, so each push leaves the cluster once
/// (not once per node), and work goes on when a node dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_leaves_the_cluster_once_even_when_a_node_dies() {
    use parlor_client::proto::notify::{NewPushTarget, WebPushKeys};
    use parlor_testkit::push::webpush::Browser;
    use parlor_testkit::push::FakeProvider;

    let push = FakeProvider::start().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let vapid = keys.path().join("vapid.pem");
    std::fs::write(
        &vapid,
        parlor_push::webpush::generate_vapid_key_pem().unwrap(),
    )
    .unwrap();
    let ca = push.ca_file().display().to_string();
    let vapid = vapid.display().to_string();
    let mut cluster = Cluster::start(&[
        ("PARLOR_PUSH__EXTRA_CA_FILE", ca.as_str()),
        ("PARLOR_PUSH__WEB_PUSH__VAPID_KEY_FILE", vapid.as_str()),
        ("PARLOR_PUSH__LEASE_SECS", "2"),
    ]);
    let alice = user(&cluster.http(0), "alice").await;
    let mut people = Vec::new();
    for i in 0..6 {
        let http = cluster.http(i % 3);
        let u = user(&http, &format!("p{i}")).await;
        let browser = Browser::new().unwrap();
        let name = parlor_testkit::unique_name("sub");
        http.register_push_target(
            &u.token,
            &NewPushTarget::WebPush {
                endpoint: Browser::endpoint(&push, &name),
                keys: WebPushKeys {
                    p256dh: browser.p256dh(),
                    auth: browser.auth(),
                },
            },
        )
        .await
        .unwrap();
        let conv = cluster.direct(0, &alice, u.id).await;
        people.push((u, browser, format!("/push/{name}"), conv));
    }
    let arrived = |push: &FakeProvider, path: &str| {
        push.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .count()
    };
    for (u, _, path, conv) in &people[..3] {
        cluster
            .http(0)
            .send(&alice.token, *conv, None, &format!("hi {}", u.name))
            .await
            .unwrap();
        eventually("the push through n1", WAIT, || async {
            (arrived(&push, path) > 0).then_some(())
        })
        .await;
    }
    // Let n1 record those pushes as sent before it dies: one still in flight at the kill
    // would be sent again after its lease (same id and collapse key, by design), and
    // this test counts requests.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(0);
    for (u, _, _, conv) in &people[3..] {
        cluster
            .http(1)
            .send(&alice.token, *conv, None, &format!("hi {}", u.name))
            .await
            .unwrap();
    }
    eventually("every push, with n1 dead", WAIT, || async {
        people
            .iter()
            .all(|(_, _, path, _)| arrived(&push, path) > 0)
            .then_some(())
    })
    .await;
    // Room for a second copy from another node or a redelivery (leases are 2 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (u, browser, path, _) in &people {
        let requests: Vec<_> = push
            .requests()
            .into_iter()
            .filter(|r| r.path == *path)
            .collect();
        assert_eq!(
            requests.len(),
            1,
            "{} got {} pushes",
            u.name,
            requests.len()
        );
        let payload: serde_json::Value =
            serde_json::from_slice(&browser.decrypt(&requests[0].body).unwrap()).unwrap();
        assert_eq!(payload["body"], format!("hi {}", u.name).as_str());
    }
}
