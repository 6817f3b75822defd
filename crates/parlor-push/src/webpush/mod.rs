//! Web Push: an RFC 8030 push (a POST to the browser's subscription endpoint), its
//! payload encrypted to the subscription per RFC 8291 and signed for the push service
//! per RFC 8292 (VAPID).
//!
//! Every browser's push service (Mozilla's autopush, Google's FCM endpoint, Apple's, a
//! self-hosted one) speaks this one protocol, so one adapter serves all of them; the
//! only per-service state is a VAPID token per origin.

mod ece;
mod vapid;

use crate::http::ClientOptions;
use async_trait::async_trait;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use parlor_core::notify::{PushMessage, PushOutcome, PushReason, TargetAddress, MAX_ADDRESS_LEN};
use parlor_core::ports::PushProvider;
use parlor_proto::notify::PushKind;
use parlor_proto::Id;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use ring::rand::SystemRandom;
use serde::Serialize;
use std::time::Duration;

/// What the server needs to send Web Push.
#[derive(Clone)]
pub struct WebPushConfig {
    /// The VAPID key: a P-256 private key, PKCS#8 PEM ("PRIVATE KEY").
    pub vapid_key_pem: String,
    /// Who runs this server, for push services to contact: `mailto:` or an https URL.
    pub subject: String,
    pub client: ClientOptions,
    /// Accept `http://` endpoints. Only for tests: a real push service is always https.
    pub allow_http: bool,
}

impl std::fmt::Debug for WebPushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushConfig")
            .field("vapid_key_pem", &"<redacted>")
            .field("subject", &self.subject)
            .field("client", &self.client)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// A fresh VAPID key, as PKCS#8 PEM, for a deployment that has none yet.
pub fn generate_vapid_key_pem() -> anyhow::Result<String> {
    vapid::generate_key_pem()
}

pub struct WebPushProvider {
    http: reqwest::Client,
    vapid: vapid::Vapid,
    allow_http: bool,
    rng: SystemRandom,
}

impl WebPushProvider {
    pub fn new(cfg: WebPushConfig) -> anyhow::Result<Self> {
        Ok(WebPushProvider {
            http: crate::http::client(&cfg.client, false)?,
            vapid: vapid::Vapid::new(&cfg.vapid_key_pem, &cfg.subject)?,
            allow_http: cfg.allow_http,
            rng: SystemRandom::new(),
        })
    }

    /// The VAPID public key (uncompressed P-256 point, base64url without padding):
    /// browsers subscribe with it as `applicationServerKey`.
    pub fn public_key(&self) -> String {
        self.vapid.public_key().to_string()
    }
}

/// Checks a browser's `PushSubscription` before it is stored, so that a bad one is
/// refused at registration instead of failing every push later.
pub fn validate_subscription(
    endpoint: &str,
    p256dh: &str,
    auth: &str,
    allow_http: bool,
) -> Result<(), String> {
    let sub = Subscription::parse(endpoint, p256dh, auth, allow_http)?;
    if !ece::is_valid_point(&sub.p256dh) {
        return Err("p256dh is not a point on the P-256 curve".into());
    }
    Ok(())
}

struct Subscription {
    endpoint: Url,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
}

impl Subscription {
    fn parse(endpoint: &str, p256dh: &str, auth: &str, allow_http: bool) -> Result<Self, String> {
        if endpoint.len() > MAX_ADDRESS_LEN {
            return Err(format!(
                "the endpoint is longer than {MAX_ADDRESS_LEN} bytes"
            ));
        }
        let url = Url::parse(endpoint).map_err(|e| format!("the endpoint is not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            other => return Err(format!("the endpoint must be an https URL, not {other}:")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the endpoint has no host".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the endpoint must not contain a user name or password".into());
        }
        let p256dh = decode_b64url(p256dh).ok_or("p256dh is not base64url")?;
        if p256dh.len() != ece::POINT_LEN || p256dh[0] != 0x04 {
            return Err(format!(
                "p256dh must be a {}-byte uncompressed P-256 point, got {} bytes",
                ece::POINT_LEN,
                p256dh.len()
            ));
        }
        let auth = decode_b64url(auth).ok_or("auth is not base64url")?;
        if auth.len() != ece::AUTH_LEN {
            return Err(format!(
                "auth must be {} bytes, got {}",
                ece::AUTH_LEN,
                auth.len()
            ));
        }
        Ok(Subscription {
            endpoint: url,
            p256dh,
            auth,
        })
    }
}

/// Browsers hand out base64url without padding, but client code that re-encodes the
/// keys often adds padding or uses the standard alphabet; all of them mean the same bytes.
fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let normalized: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    LENIENT.decode(normalized).ok()
}

/// What the service worker receives, before encryption.
#[derive(Serialize)]
struct Payload<'a> {
    title: &'a str,
    body: &'a str,
    conv: Id,
    seq: u64,
    message: Id,
    sender: Id,
    reason: PushReason,
    badge: u64,
    ts: i64,
    tag: &'a str,
}

/// The JSON plaintext, with `body` (and if that is not enough, `title`) cut short so
/// that the encrypted push fits the 4096 bytes every push service accepts.
fn plaintext(message: &PushMessage) -> Result<Vec<u8>, String> {
    let c = &message.content;
    let encode = |title: &str, body: &str| {
        serde_json::to_vec(&Payload {
            title,
            body,
            conv: c.conv,
            seq: c.seq,
            message: c.message,
            sender: c.sender,
            reason: c.reason,
            badge: message.badge,
            ts: c.ts,
            tag: &message.collapse_key,
        })
        .map_err(|e| format!("cannot encode the payload: {e}"))
    };
    let whole = encode(&c.title, &c.body)?;
    if whole.len() <= ece::MAX_PLAINTEXT {
        return Ok(whole);
    }
    let empty = encode(&c.title, "")?;
    if empty.len() <= ece::MAX_PLAINTEXT {
        let body = longest_fit(&c.body, |b| encode(&c.title, b))?;
        return encode(&c.title, &body);
    }
    let title = longest_fit(&c.title, |t| encode(t, ""))?;
    encode(&title, "")
}

/// The longest prefix of `text` (whole characters, with an ellipsis) that `encode`
/// keeps within the plaintext limit. Longer text never encodes shorter, so a binary
/// search over the prefix length finds it.
fn longest_fit(
    text: &str,
    encode: impl Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    let cut = |n: usize| -> String {
        let mut s: String = text.chars().take(n).collect();
        s.push('…');
        s
    };
    // Every character takes at least a byte, so no prefix longer than the limit fits.
    let (mut lo, mut hi) = (0usize, text.chars().count().min(ece::MAX_PLAINTEXT));
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if encode(&cut(mid))?.len() <= ece::MAX_PLAINTEXT {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let best = cut(lo);
    if encode(&best)?.len() <= ece::MAX_PLAINTEXT {
        Ok(best)
    } else {
        Err("the push payload does not fit in 4096 bytes".into())
    }
}

/// RFC 8030 section 5.4: a topic is at most 32 characters of the base64url alphabet.
fn topic(collapse_key: &str) -> Option<String> {
    let t: String = collapse_key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    (!t.is_empty()).then_some(t)
}

fn urgency(reason: PushReason) -> &'static str {
    match reason {
        PushReason::Mention | PushReason::Reply => "high",
        PushReason::Message => "normal",
    }
}

fn outcome(status: StatusCode, retry_after: Option<Duration>, body: &str) -> PushOutcome {
    let code = status.as_u16();
    match code {
        200..=299 => PushOutcome::Sent,
        404 | 410 => PushOutcome::Gone,
        429 | 500..=599 => PushOutcome::Retry {
            after: retry_after,
            reason: format!("push service answered {code}"),
        },
        413 => PushOutcome::Failed {
            reason: "push service answered 413: payload too large".into(),
        },
        _ if body.is_empty() => PushOutcome::Failed {
            reason: format!("push service answered {code}"),
        },
        _ => PushOutcome::Failed {
            reason: format!("push service answered {code}: {body}"),
        },
    }
}

/// The start of an error body, for a reason a person can read: bounded, one line.
async fn body_start(mut response: reqwest::Response) -> String {
    const KEEP: usize = 200;
    let mut bytes = Vec::new();
    while bytes.len() < KEEP * 4 {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(KEEP)
        .collect::<String>()
        .trim()
        .to_string()
}

impl WebPushProvider {
    async fn push(&self, sub: &Subscription, message: &PushMessage) -> PushOutcome {
        let plaintext = match plaintext(message) {
            Ok(p) => p,
            Err(reason) => return PushOutcome::Failed { reason },
        };
        let body = match ece::encrypt(&sub.p256dh, &sub.auth, &plaintext, &self.rng) {
            Ok(b) => b,
            Err(e) => {
                return PushOutcome::Failed {
                    reason: e.to_string(),
                }
            }
        };
        let aud = sub.endpoint.origin().ascii_serialization();
        let authorization = match self.vapid.authorization(&aud) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign a VAPID token");
                return PushOutcome::Retry {
                    after: None,
                    reason: format!("VAPID signing failed: {e}"),
                };
            }
        };
        let mut request = self
            .http
            .post(sub.endpoint.clone())
            .header("TTL", message.ttl_secs.to_string())
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("Urgency", urgency(message.content.reason))
            .header(AUTHORIZATION, authorization)
            .body(body);
        if let Some(topic) = topic(&message.collapse_key) {
            request = request.header("Topic", topic);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let reason = crate::http::unreachable(e);
                let push = message.id;
                tracing::warn!(%push, service = %aud, %reason, "web push not delivered");
                return PushOutcome::Retry {
                    after: None,
                    reason,
                };
            }
        };
        let status = response.status();
        let after = crate::http::retry_after(response.headers());
        let body = if status.is_success() {
            String::new()
        } else {
            body_start(response).await
        };
        let outcome = outcome(status, after, &body);
        let (push, status) = (message.id, status.as_u16());
        match &outcome {
            PushOutcome::Sent => tracing::debug!(%push, service = %aud, status, "web push sent"),
            PushOutcome::Gone => {
                tracing::debug!(%push, service = %aud, status, "web push subscription gone")
            }
            PushOutcome::Retry { .. } | PushOutcome::Failed { .. } => {
                tracing::warn!(%push, service = %aud, status, ?outcome, "web push refused")
            }
        }
        outcome
    }
}

#[async_trait]
impl PushProvider for WebPushProvider {
    fn kind(&self) -> PushKind {
        PushKind::WebPush
    }

    async fn send(&self, target: &TargetAddress, message: &PushMessage) -> PushOutcome {
        let TargetAddress::WebPush {
            endpoint,
            p256dh,
            auth,
        } = target
        else {
            return PushOutcome::Failed {
                reason: format!(
                    "the web push provider cannot send to a {} target",
                    target.kind().as_str()
                ),
            };
        };
        // Targets were checked when registered, but `allow_http` or the rules may have
        // changed since; a stored target that no longer passes is not pushed to.
        match Subscription::parse(endpoint, p256dh, auth, self.allow_http) {
            Ok(sub) => self.push(&sub, message).await,
            Err(reason) => PushOutcome::Failed { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor_core::notify::PushContent;

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    fn message(title: &str, body: &str) -> PushMessage {
        PushMessage {
            id: Id(1),
            content: PushContent {
                conv: Id(123_456),
                seq: 7,
                message: Id(u64::MAX),
                sender: Id(42),
                reason: PushReason::Reply,
                title: title.into(),
                body: body.into(),
                ts: 1_700_000_000_000,
            },
            badge: 3,
            collapse_key: "c123456".into(),
            ttl_secs: 60,
        }
    }

    #[test]
    fn base64_accepts_padding_and_either_alphabet() {
        assert_eq!(decode_b64url("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_b64url("-_8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_b64url("+/8=").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_b64url(" +/8 ").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_b64url("a"), None);
        assert_eq!(decode_b64url("ab$d"), None);
        let padded = format!("{AUTH}==");
        assert_eq!(decode_b64url(&padded), decode_b64url(AUTH));
    }

    #[test]
    fn good_subscriptions_pass() {
        validate_subscription("https://push.example.net/wpush/v2/abc", P256DH, AUTH, false)
            .expect("valid");
        validate_subscription("http://127.0.0.1:8080/p", P256DH, AUTH, true).expect("http ok");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let long = format!("https://push.example.net/{}", "a".repeat(MAX_ADDRESS_LEN));
        for endpoint in [
            "push.example.net/abc",
            "http://push.example.net/abc",
            "ftp://push.example.net/abc",
            "https://user:pw@push.example.net/abc",
            "https://user@push.example.net/abc",
            "https://",
            long.as_str(),
            "",
        ] {
            let err = validate_subscription(endpoint, P256DH, AUTH, false).expect_err(endpoint);
            assert!(err.contains("endpoint"), "{endpoint}: {err}");
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        let mut off_curve = decode_b64url(P256DH).expect("b64");
        off_curve[40] ^= 0x40;
        let off_curve = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(off_curve);
        let ep = "https://push.example.net/abc";
        let err = validate_subscription(ep, &off_curve, AUTH, false).expect_err("off curve");
        assert!(err.contains("curve"), "{err}");
        let err = validate_subscription(ep, &P256DH[..60], AUTH, false).expect_err("short");
        assert!(err.contains("65-byte"), "{err}");
        let compressed = format!("A{}", &P256DH[1..44]);
        assert!(validate_subscription(ep, &compressed, AUTH, false).is_err());
        assert!(validate_subscription(ep, "not*base64", AUTH, false).is_err());
        let err = validate_subscription(ep, P256DH, "AAAA", false).expect_err("auth");
        assert!(err.contains("auth must be 16 bytes"), "{err}");
    }

    #[test]
    fn payload_has_every_field_with_ids_as_strings() {
        let json: serde_json::Value =
            serde_json::from_slice(&plaintext(&message("Ann in Team", "hello")).expect("fits"))
                .expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "title": "Ann in Team", "body": "hello", "conv": "123456", "seq": 7,
                "message": u64::MAX.to_string(), "sender": "42", "reason": "reply",
                "badge": 3, "ts": 1_700_000_000_000i64, "tag": "c123456"
            })
        );
    }

    #[test]
    fn long_bodies_and_titles_are_cut_to_fit() {
        let body = "\u{1}é\"".repeat(5000);
        let p = plaintext(&message("Ann", &body)).expect("fits");
        assert!(p.len() <= ece::MAX_PLAINTEXT && p.len() > ece::MAX_PLAINTEXT - 12);
        let json: serde_json::Value = serde_json::from_slice(&p).expect("json");
        let cut = json["body"].as_str().expect("body");
        assert!(cut.ends_with('…') && body.starts_with(cut.trim_end_matches('…')));

        let title = "t".repeat(10_000);
        let p = plaintext(&message(&title, "hello")).expect("fits");
        let json: serde_json::Value = serde_json::from_slice(&p).expect("json");
        assert_eq!(json["body"], "");
        assert!(json["title"].as_str().expect("title").ends_with('…'));
    }

    #[test]
    fn topics_use_only_the_base64url_alphabet() {
        assert_eq!(topic("c123456").as_deref(), Some("c123456"));
        assert_eq!(topic("a b/c+d").as_deref(), Some("abcd"));
        assert_eq!(topic(&"x".repeat(40)).map(|t| t.len()), Some(32));
        assert_eq!(topic("€!"), None);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let with = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::RETRY_AFTER,
                v.parse().expect("header value"),
            );
            crate::http::retry_after(&h)
        };
        assert_eq!(with("7"), Some(Duration::from_secs(7)));
        assert_eq!(with("999999999"), Some(Duration::from_secs(24 * 3600)));
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let got = with(&soon).expect("a date");
        assert!(got > Duration::from_secs(80) && got <= Duration::from_secs(90));
        assert_eq!(with("soon"), None);
        assert_eq!(
            crate::http::retry_after(&reqwest::header::HeaderMap::new()),
            None
        );
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let s = |c| StatusCode::from_u16(c).expect("status");
        assert_eq!(outcome(s(201), None, ""), PushOutcome::Sent);
        assert_eq!(outcome(s(410), None, ""), PushOutcome::Gone);
        assert_eq!(outcome(s(404), None, ""), PushOutcome::Gone);
        let after = Some(Duration::from_secs(7));
        assert!(
            matches!(outcome(s(503), after, ""), PushOutcome::Retry { after: a, .. } if a == after)
        );
        assert!(matches!(
            outcome(s(429), None, ""),
            PushOutcome::Retry { after: None, .. }
        ));
        assert!(matches!(
            outcome(s(413), None, ""),
            PushOutcome::Failed { .. }
        ));
        let PushOutcome::Failed { reason } = outcome(s(401), None, "bad jwt") else {
            panic!("401 is a failure");
        };
        assert_eq!(reason, "push service answered 401: bad jwt");
    }
}
