//! Presence, rate limits and the history cache shared by two nodes, against a real Redis
//! with mutual TLS.

use parlor_core::ports::{Presence, RateLimiter, RateRule};
use parlor_proto::Id;
use parlor_redis::{connection, RedisOptions, RedisPresence, RedisRateLimiter, TlsFiles};
use parlor_testkit::engines::{CertFiles, Certs, Redis};
use std::sync::Arc;
use std::time::Duration;

const GRACE_MS: i64 = 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn options(redis: &Redis, certs: &CertFiles, node: &str) -> RedisOptions {
    RedisOptions {
        url: redis.url(),
        namespace: "presence_test".into(),
        tls: Some(TlsFiles {
            ca_file: certs.ca_file.clone(),
            cert_file: Some(certs.client_cert_file.clone()),
            key_file: Some(certs.client_key_file.clone()),
        }),
        node_name: node.into(),
    }
}

async fn start(redis: &Redis, certs: &CertFiles, node: &str) -> Arc<RedisPresence> {
    let options = options(redis, certs, node);
    let conn = connection::connect(&options).await.expect("redis");
    RedisPresence::start(conn, &options, GRACE_MS)
}

struct Setup {
    _dir: tempfile::TempDir,
    certs: CertFiles,
    redis: Redis,
}

fn setup() -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = Certs::get()
        .and_then(|c| c.write_to(dir.path()))
        .expect("certificates");
    let redis = Redis::launch(&certs).expect("redis-server");
    Setup {
        _dir: dir,
        certs,
        redis,
    }
}

/// Polls `expire` on the nodes until one reports something. Errors count as nothing yet:
/// right after Redis restarts, the first call on a connection fails and reconnects.
async fn next_change(
    nodes: &[&Arc<RedisPresence>],
    within: Duration,
) -> Vec<parlor_proto::rest::PresenceView> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut all = Vec::new();
        for node in nodes {
            if let Ok(changes) = node.expire(now_ms()).await {
                all.extend(changes);
            }
        }
        if !all.is_empty() || tokio::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_is_online_across_nodes_and_goes_offline_once_after_the_grace() {
    let s = setup();
    let a = start(&s.redis, &s.certs, "a").await;
    let b = start(&s.redis, &s.certs, "b").await;
    let user = Id(42);

    assert!(
        a.connect(user).await.expect("connect").is_some(),
        "came online"
    );
    assert!(
        b.connect(user).await.expect("connect").is_none(),
        "already online"
    );
    let mut nodes = b.nodes(user).await.expect("registry");
    nodes.sort();
    assert_eq!(nodes, vec!["a".to_string(), "b".to_string()]);
    assert!(a.get(user).await.expect("get").online);

    let left_at = now_ms();
    a.disconnect(user, left_at).await.expect("disconnect");
    assert_eq!(
        b.nodes(user).await.expect("registry"),
        vec!["b".to_string()]
    );
    assert!(
        next_change(&[&a, &b], Duration::from_millis(2500))
            .await
            .is_empty(),
        "still connected on b"
    );
    let left_at = now_ms();
    b.disconnect(user, left_at).await.expect("disconnect");
    let changes = next_change(&[&a, &b], Duration::from_secs(5)).await;
    assert_eq!(changes.len(), 1, "reported once across nodes: {changes:?}");
    assert!(!changes[0].online);
    assert_eq!(changes[0].last_seen, Some(left_at));
    assert!(!a.get(user).await.expect("get").online);
    assert!(b.nodes(user).await.expect("registry").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_users_go_offline_by_themselves() {
    let s = setup();
    let a = start(&s.redis, &s.certs, "a").await;
    let b = start(&s.redis, &s.certs, "b").await;
    let user = Id(7);
    assert!(a.connect(user).await.expect("connect").is_some());
    // Node a dies: no disconnect, its heartbeat stops.
    drop(a);
    let changes = next_change(&[&b], Duration::from_secs(5)).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(!changes[0].online);
    assert!(b.nodes(user).await.expect("registry").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_rebuilds_itself_after_redis_restarts_empty() {
    let s = setup();
    let a = start(&s.redis, &s.certs, "a").await;
    let user = Id(9);
    assert!(a.connect(user).await.expect("connect").is_some());
    s.redis.restart().expect("restart redis");
    // The next heartbeat (grace / 5) restores the entry and reports the user online.
    let changes = next_change(&[&a], Duration::from_secs(5)).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].online);
    assert!(a.get(user).await.expect("get").online);
    assert_eq!(
        a.nodes(user).await.expect("registry"),
        vec!["a".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_shared_by_nodes_and_fail_open() {
    let s = setup();
    let conn_a = connection::connect(&options(&s.redis, &s.certs, "a"))
        .await
        .expect("redis");
    let conn_b = connection::connect(&options(&s.redis, &s.certs, "b"))
        .await
        .expect("redis");
    let a = RedisRateLimiter::new(conn_a, &options(&s.redis, &s.certs, "a"));
    let b = RedisRateLimiter::new(conn_b, &options(&s.redis, &s.certs, "b"));
    let rule = RateRule {
        burst: 3,
        per_second: 0.1,
    };
    assert!(a.check("k", rule).await.is_ok());
    assert!(b.check("k", rule).await.is_ok());
    assert!(a.check("k", rule).await.is_ok());
    let wait = b
        .check("k", rule)
        .await
        .expect_err("fourth request, on either node");
    assert!(wait > Duration::from_secs(5), "{wait:?}");
    assert!(a.check("other", rule).await.is_ok(), "keys are separate");

    s.redis.kill().expect("kill redis");
    assert!(a.check("k", rule).await.is_ok(), "fails open");
    assert!(a.failed_open.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_page_is_never_served_after_a_bump() {
    use parlor_core::ports::RecentCache;
    use parlor_proto::rest::History;
    use parlor_redis::RedisRecentCache;

    let s = setup();
    let options = options(&s.redis, &s.certs, "a");
    let conn = connection::connect(&options).await.expect("redis");
    let cache = RedisRecentCache::new(conn, &options);
    let conv = Id(5);
    let page = |has_more| History {
        messages: Vec::new(),
        has_more,
    };

    assert!(cache.get(conv).await.is_none(), "nothing cached yet");
    let v0 = cache.version(conv).await.expect("version");
    cache.put(conv, v0, &page(true)).await;
    assert_eq!(cache.get(conv).await.map(|h| h.has_more), Some(true));

    // A page read under an old version and stored after a bump is refused …
    let v1 = cache.version(conv).await.expect("version");
    cache.bump(conv).await;
    assert!(cache.get(conv).await.is_none(), "bumped: stale");
    cache.put(conv, v1, &page(false)).await;
    assert!(
        cache.get(conv).await.is_none(),
        "read before the bump: refused"
    );
    // … one read after it is kept.
    let v2 = cache.version(conv).await.expect("version");
    assert!(v2 > v1);
    cache.put(conv, v2, &page(false)).await;
    assert_eq!(cache.get(conv).await.map(|h| h.has_more), Some(false));

    // Redis restarting empty loses pages and versions together.
    s.redis.restart().expect("restart redis");
    for _ in 0..50 {
        if cache.version(conv).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cache.get(conv).await.is_none());
}
