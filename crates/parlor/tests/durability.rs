//! Durability and history: nothing acknowledged is lost when the process is killed,
//! retries after a crash never duplicate, SIGTERM shuts down gracefully, and history
//! pages and membership bounds behave as documented.

#![allow(clippy::unwrap_used)]

mod support;

use parlor_client::proto::rest::MessageView;
use parlor_client::proto::ws::{Ack, ServerFrame};
use parlor_client::proto::{ErrorCode, Id};
use parlor_client::{WsClient, WsEvent};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// What one sender tried and what was acknowledged before the server died.
#[derive(Default)]
struct Outcome {
    /// Every send written (or about to be written) to the socket: cid -> (conv, text).
    attempted: Vec<(String, Id, String)>,
    acked: HashMap<String, Ack>,
}

/// Pipelines sends into `convs` until the connection breaks; counts acks in `total`.
async fn send_until_killed(
    mut ws: WsClient,
    s: usize,
    convs: Vec<Id>,
    total: Arc<AtomicUsize>,
) -> Outcome {
    const WINDOW: usize = 32;
    let mut out = Outcome::default();
    let mut k = 0;
    loop {
        while out.attempted.len() - out.acked.len() < WINDOW {
            let cid = format!("s{s}-{k}");
            let conv = convs[k % convs.len()];
            let text = format!("sender {s} message {k}");
            k += 1;
            // Recorded first: a send that fails to go out may still have reached the server.
            out.attempted.push((cid.clone(), conv, text.clone()));
            if ws.send_message(conv, &cid, &text).await.is_err() {
                return out;
            }
        }
        match ws.next_frame(WAIT).await {
            Ok(ServerFrame::Ack(a)) => {
                assert!(!a.duplicate);
                out.acked.insert(a.cid.clone(), a);
                total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ServerFrame::Error(e)) => panic!("send failed before the kill: {e:?}"),
            Ok(_) => {}
            Err(e) if is_disconnect(&e) => return out,
            Err(e) => panic!("unexpected client error: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_traffic_loses_no_acknowledged_message_and_retries_never_duplicate() {
    kill_mid_traffic_then_retry_everything(&[]).await;
}

/// The same with the writer holding at most 16 client ids in memory: most ids have moved
/// to the index table before the kill, the newest are reloaded from the messages above
/// the last written floor, and a retry must find either kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_client_ids_mostly_indexed_still_never_duplicates() {
    kill_mid_traffic_then_retry_everything(&[("PARLOR_LIMITS__PENDING_CLIENT_IDS", "16")]).await;
}

/// The same with a long message tail: many messages are only in `message_tail` when the
/// process dies (the test kit's default is 4), and the writer reloads them as pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_many_messages_pending_in_the_tail_loses_none() {
    kill_mid_traffic_then_retry_everything(&[("PARLOR_LIMITS__PENDING_MESSAGES", "300")]).await;
}

async fn kill_mid_traffic_then_retry_everything(env: &[(&str, &str)]) {
    const SENDERS: usize = 3;
    let mut server = start(env);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let senders = users(&http, "sender", SENDERS).await;
    let ids: Vec<Id> = senders.iter().map(|u| u.id).collect();
    let convs: Vec<Id> = vec![
        http.create_group(&owner.token, "one", &ids)
            .await
            .unwrap()
            .id,
        http.create_group(&owner.token, "two", &ids)
            .await
            .unwrap()
            .id,
    ];

    let total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (s, u) in senders.iter().enumerate() {
        let (ws, _) = live(&server, &u.token).await;
        tasks.push(tokio::spawn(send_until_killed(
            ws,
            s,
            convs.clone(),
            Arc::clone(&total),
        )));
    }
    // Kill while the senders are in full flow.
    let deadline = tokio::time::Instant::now() + WAIT;
    while total.load(Ordering::Relaxed) < 1500 {
        assert!(tokio::time::Instant::now() < deadline, "senders stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill(&mut server);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let acked: usize = outcomes.iter().map(|o| o.acked.len()).sum();
    let attempted: usize = outcomes.iter().map(|o| o.attempted.len()).sum();
    eprintln!("killed with {acked} acknowledged of {attempted} attempted sends");

    restart(&mut server);
    let http = server.http();

    // Every acknowledged message is there, with its id and seq; seqs have no gap.
    let check_history = |history: &[MessageView], conv: Id| {
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=history.len() as u64).collect::<Vec<_>>(),
            "gap in {conv}"
        );
        let cids: HashSet<&str> = history.iter().map(|m| m.cid.as_deref().unwrap()).collect();
        assert_eq!(cids.len(), history.len(), "duplicate cid in {conv}");
    };
    let mut stored: HashMap<(Id, String), MessageView> = HashMap::new();
    for &conv in &convs {
        let history = full_history(&http, &owner.token, conv).await;
        check_history(&history, conv);
        for m in history {
            stored.insert((m.sender, m.cid.clone().unwrap()), m);
        }
    }
    for (s, o) in outcomes.iter().enumerate() {
        let sender = senders[s].id;
        for (cid, a) in &o.acked {
            let m = stored
                .get(&(sender, cid.clone()))
                .unwrap_or_else(|| panic!("acknowledged message {cid} lost"));
            assert_eq!(
                (m.id, m.seq, m.conv, m.ts),
                (a.id, a.seq, a.conv, a.ts),
                "{cid}"
            );
        }
        let tried: HashSet<&str> = o.attempted.iter().map(|(c, _, _)| c.as_str()).collect();
        for (stored_sender, cid) in stored.keys() {
            if *stored_sender == sender {
                assert!(tried.contains(cid.as_str()), "stored {cid} was never sent");
            }
        }
    }

    // Retry every unacknowledged send with its cid: at most one message each.
    let mut first_retry: HashMap<(Id, String), Ack> = HashMap::new();
    for (s, o) in outcomes.iter().enumerate() {
        let sender = &senders[s];
        let (mut ws, _) = live(&server, &sender.token).await;
        let retries: Vec<Outgoing> = o
            .attempted
            .iter()
            .filter(|(cid, _, _)| !o.acked.contains_key(cid))
            .map(|(cid, conv, text)| Outgoing {
                conv: *conv,
                cid: cid.clone(),
                text: text.clone(),
            })
            .collect();
        let mut seen = Vec::new();
        let acks = pipeline(&mut ws, &retries, 64, &mut seen).await;
        let committed_unacked = acks.values().filter(|a| a.duplicate).count();
        eprintln!(
            "sender {s}: {} unacknowledged retried, {committed_unacked} of them had been committed",
            acks.len()
        );
        for (cid, a) in acks {
            let key = (sender.id, cid);
            match stored.get(&key) {
                // Committed before the kill but not acknowledged: the original comes back.
                Some(m) => {
                    assert!(a.duplicate, "{key:?}");
                    assert_eq!((a.id, a.seq), (m.id, m.seq));
                }
                None => assert!(!a.duplicate, "{key:?}"),
            }
            first_retry.insert(key, a);
        }
        // Retrying everything once more (acknowledged or not) creates nothing.
        let all: Vec<Outgoing> = o
            .attempted
            .iter()
            .map(|(cid, conv, text)| Outgoing {
                conv: *conv,
                cid: cid.clone(),
                text: text.clone(),
            })
            .collect();
        let again = pipeline(&mut ws, &all, 64, &mut seen).await;
        for (cid, a) in again {
            assert!(a.duplicate, "{cid}");
            let original = o
                .acked
                .get(&cid)
                .or_else(|| first_retry.get(&(sender.id, cid.clone())));
            assert_eq!(a.id, original.unwrap().id, "{cid}");
        }
    }

    let mut final_count = 0;
    for &conv in &convs {
        let history = full_history(&http, &owner.token, conv).await;
        check_history(&history, conv);
        final_count += history.len();
    }
    assert_eq!(
        final_count, attempted,
        "every attempted send is stored exactly once"
    );
}

async fn wait_close_code(ws: &mut WsClient) -> Option<u16> {
    loop {
        match ws.next(WAIT).await {
            Ok(WsEvent::Closed { code, .. }) => return code,
            Ok(WsEvent::Frame(_)) => {}
            Err(e) => panic!("waiting for the close frame: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_exits_successfully_and_keeps_all_data() {
    let mut server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let carol = user(&http, "carol").await;
    let room = http
        .create_group(&alice.token, "room", &[bob.id, carol.id])
        .await
        .unwrap()
        .id;
    let direct = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&server, &alice.token).await;
    let (mut b, _) = live(&server, &bob.token).await;
    let sends: Vec<Outgoing> = (0..120)
        .map(|i| Outgoing {
            conv: if i % 4 == 0 { direct } else { room },
            cid: format!("m{i}"),
            text: format!("message {i}"),
        })
        .collect();
    let mut seen = Vec::new();
    pipeline(&mut a, &sends, 32, &mut seen).await;
    http.mark_read(&bob.token, room, 10).await.unwrap();
    http.leave(&carol.token, room).await.unwrap();

    let snapshot = |http: parlor_client::Http| {
        let (alice, bob, carol) = (alice.clone(), bob.clone(), carol.clone());
        async move {
            let mut out = Vec::new();
            for u in [&alice, &bob, &carol] {
                out.push(format!("{:?}", http.conversations(&u.token).await.unwrap()));
                for conv in [room, direct] {
                    let h = http.history(&u.token, conv, None, None, Some(200)).await;
                    out.push(format!("{:?}", h.map_err(|e| e.code())));
                }
            }
            out
        }
    };
    let before = snapshot(http.clone()).await;

    server.send_sigterm().unwrap();
    assert_eq!(wait_close_code(&mut a).await, Some(1001));
    assert_eq!(wait_close_code(&mut b).await, Some(1001));
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)))
        .unwrap()
        .expect("the server did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");

    restart(&mut server);
    let after = snapshot(server.http()).await;
    assert_eq!(before, after);
    assert_eq!(
        full_history(&server.http(), &bob.token, room).await.len(),
        90
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_with_before_after_and_limit_and_reports_has_more() {
    let server = start(&[("PARLOR_LIMITS__HISTORY_MAX_PAGE", "20")]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&server, &alice.token).await;
    let sends: Vec<Outgoing> = (1..=50)
        .map(|i| Outgoing {
            conv,
            cid: format!("m{i}"),
            text: format!("message {i}"),
        })
        .collect();
    let mut seen = Vec::new();
    pipeline(&mut a, &sends, 50, &mut seen).await;
    let t = &bob.token;

    let page = |before: Option<u64>, after: Option<u64>, limit: Option<u32>| {
        let http = http.clone();
        async move {
            let h = http.history(t, conv, before, after, limit).await.unwrap();
            for m in &h.messages {
                assert_eq!(m.text, format!("message {}", m.seq));
            }
            (
                h.messages.iter().map(|m| m.seq).collect::<Vec<u64>>(),
                h.has_more,
            )
        }
    };
    let range = |a: u64, b: u64| (a..=b).collect::<Vec<u64>>();

    // Latest page by default; the default size is capped by the configured maximum.
    assert_eq!(page(None, None, None).await, (range(31, 50), true));
    assert_eq!(page(None, None, Some(10)).await, (range(41, 50), true));
    assert_eq!(page(None, None, Some(20)).await, (range(31, 50), true));
    // Backwards.
    assert_eq!(page(Some(41), None, Some(10)).await, (range(31, 40), true));
    assert_eq!(page(Some(11), None, Some(10)).await, (range(1, 10), false));
    assert_eq!(page(Some(5), None, Some(10)).await, (range(1, 4), false));
    assert_eq!(page(Some(1), None, Some(10)).await, (vec![], false));
    // Forwards.
    assert_eq!(page(None, Some(0), Some(10)).await, (range(1, 10), true));
    assert_eq!(page(None, Some(40), Some(10)).await, (range(41, 50), false));
    assert_eq!(page(None, Some(45), Some(10)).await, (range(46, 50), false));
    assert_eq!(page(None, Some(50), Some(10)).await, (vec![], false));
    assert_eq!(page(None, Some(1000), Some(10)).await, (vec![], false));

    // A page larger than the configured maximum is refused, as are both bounds at once.
    for (before, after, limit) in [
        (None, None, Some(21)),
        (None, None, Some(0)),
        (Some(10), Some(5), Some(5)),
    ] {
        let err = http
            .history(t, conv, before, after, limit)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidPagination),
            "{before:?} {after:?} {limit:?}"
        );
    }

    // Walking backwards from the latest page visits every message once.
    let (mut seqs, mut more) = page(None, None, Some(7)).await;
    while more {
        let (older, m) = page(Some(seqs[0]), None, Some(7)).await;
        seqs.splice(0..0, older);
        more = m;
    }
    assert_eq!(seqs, range(1, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_readable_only_by_members() {
    let server = start(&[]);
    let http = server.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let eve = user(&http, "eve").await;
    let direct = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let room = http
        .create_group(&alice.token, "room", &[bob.id])
        .await
        .unwrap()
        .id;
    for conv in [direct, room] {
        http.send(&alice.token, conv, Some(&format!("m{conv}")), "secret")
            .await
            .unwrap();
        assert_eq!(full_history(&http, &bob.token, conv).await.len(), 1);
        for (before, after) in [(None, None), (Some(5), None), (None, Some(0))] {
            let err = http
                .history(&eve.token, conv, before, after, None)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::NotMember));
            assert_eq!(err.status(), Some(403));
        }
    }
    let err = http
        .history(&eve.token, Id(123_456_789), None, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_who_left_or_was_removed_sees_history_only_up_to_that_point() {
    let server = start(&[]);
    let http = server.http();
    let owner = user(&http, "owner").await;
    let leaver = user(&http, "leaver").await;
    let removed = user(&http, "removed").await;
    let room = http
        .create_group(&owner.token, "room", &[leaver.id, removed.id])
        .await
        .unwrap()
        .id;
    let send = |cid: String| {
        let http = http.clone();
        let token = owner.token.clone();
        async move { http.send(&token, room, Some(&cid), &cid).await.unwrap() }
    };
    for i in 1..=5 {
        send(format!("a{i}")).await;
    }
    http.leave(&leaver.token, room).await.unwrap();
    for i in 6..=8 {
        send(format!("b{i}")).await;
    }
    http.remove_member(&owner.token, room, removed.id)
        .await
        .unwrap();
    for i in 9..=12 {
        send(format!("c{i}")).await;
    }

    let seqs = |h: &[MessageView]| h.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&full_history(&http, &leaver.token, room).await),
        (1..=5).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&full_history(&http, &removed.token, room).await),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&full_history(&http, &owner.token, room).await),
        (1..=12).collect::<Vec<_>>()
    );
    // The latest page, and pages past the end, stop where they left.
    let latest = http
        .history(&leaver.token, room, None, None, Some(3))
        .await
        .unwrap();
    assert_eq!(
        (seqs(&latest.messages), latest.has_more),
        (vec![3, 4, 5], true)
    );
    let past = http
        .history(&leaver.token, room, None, Some(5), None)
        .await
        .unwrap();
    assert_eq!((seqs(&past.messages), past.has_more), (vec![], false));
    let before = http
        .history(&removed.token, room, Some(12), None, Some(5))
        .await
        .unwrap();
    assert_eq!(
        (seqs(&before.messages), before.has_more),
        (vec![4, 5, 6, 7, 8], true)
    );
    // And they can no longer send.
    let err = http
        .send(&leaver.token, room, Some("late"), "hi")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotMember));
}

/// The embedded store holds its files for one process (SQLite's `unix-excl`): a second
/// server started on the same data directory exits with a clear error instead of
/// writing beside the first, and the first goes on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let opts = parlor_testkit::ServerOptions::default().with_embedded();
    let first = tokio::task::block_in_place(|| parlor_testkit::TestServer::start(bin(), opts))
        .expect("start parlor");
    let http = first.http();
    let alice = user(&http, "alice").await;
    let bob = user(&http, "bob").await;
    let conv = http.open_direct(&alice.token, bob.id).await.unwrap().id;
    let (mut a, _) = live(&first, &alice.token).await;
    send(&mut a, conv, "before", "before the second server").await;

    let second = tokio::process::Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(first.data_dir())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let second = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second server neither started nor gave up")
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "exit status {}", second.status);
    assert!(
        stderr.contains("is a Parlor server already running on this data directory?"),
        "unexpected start-up failure: {stderr}"
    );

    send(&mut a, conv, "after", "after the second server gave up").await;
    let texts: Vec<String> = full_history(&http, &bob.token, conv)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(
        texts,
        [
            "before the second server",
            "after the second server gave up"
        ]
    );
}
