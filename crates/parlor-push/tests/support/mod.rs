//! What the provider tests share: a push to send, and a client that trusts the fake.
#![allow(dead_code)]

use parlor_core::notify::{PushContent, PushMessage, PushReason};
use parlor_proto::Id;
use parlor_push::http::ClientOptions;
use parlor_testkit::push::FakeProvider;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(5);

pub fn client(provider: &FakeProvider) -> ClientOptions {
    ClientOptions {
        extra_roots_pem: Some(provider.ca_pem().to_vec()),
        timeout: Some(Duration::from_secs(5)),
    }
}

/// Push `id` of message 900 from user 7 in conversation 42, ids large enough that a
/// JSON number would lose them.
pub fn message(id: u64, reason: PushReason) -> PushMessage {
    PushMessage {
        id: Id(id),
        content: PushContent {
            conv: Id(42),
            seq: 17,
            message: Id(9_007_199_254_740_993),
            sender: Id(7),
            reason,
            title: "Ada in Engines".into(),
            body: "the analytical one, \"quoted\" ✓".into(),
            ts: 1_700_000_000_123,
        },
        badge: 3,
        collapse_key: "c42".into(),
        ttl_secs: 86_400,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
