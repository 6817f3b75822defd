//! Apple Push Notification service, token-based, over HTTP/2 (APNs accepts nothing
//! else).
//!
//! # Provider token
//! A JWT signed ES256 with the team's `.p8` key: header `{"alg":"ES256","kid":key_id}`,
//! claims `{"iss":team_id,"iat":now}`. APNs refuses tokens older than an hour and
//! answers `TooManyProviderTokenUpdates` to a provider that mints them more often than
//! every 20 minutes, so one token is reused for 50 minutes. `403 ExpiredProviderToken`
//! (a clock that drifted, a token that outlived a sleep) drops it and asks for a retry,
//! which signs a new one.
//!
//! # Request
//! `POST /3/device/<token>` with `apns-push-type: alert`, `apns-priority` 10 for a
//! mention or a reply and 5 (delivered when the device sees fit) otherwise, and an
//! `apns-id` derived from the push id: a resend after a crash carries the same id, so
//! Apple's logs and the device can tell it is the same notification.
//!
//! # Answers
//! 200 sent; 410 (`Unregistered`, `ExpiredToken`) and 400 `BadDeviceToken` /
//! `DeviceTokenNotForTopic` gone; 403 `ExpiredProviderToken`, 429 and 5xx retry;
//! anything else failed with Apple's `reason`.

use crate::http::ClientOptions;
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parlor_core::notify::{PushMessage, PushOutcome, PushReason, TargetAddress};
use parlor_core::ports::PushProvider;
use parlor_proto::notify::PushKind;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const DEFAULT_BASE_URL: &str = "https://api.push.apple.com";
/// Between Apple's 20-minute floor on refreshes and its one-hour ceiling on age.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);
/// Apple's limit on `apns-collapse-id`.
const MAX_COLLAPSE_ID: usize = 64;
const MIN_TOKEN_BYTES: usize = 16;
const MAX_TOKEN_BYTES: usize = 200;

#[derive(Clone, Default)]
pub struct ApnsConfig {
    /// The `.p8` signing key (PKCS#8 PEM, P-256).
    pub key_pem: String,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id.
    pub topic: String,
    /// Default [`DEFAULT_BASE_URL`] (production; the sandbox is
    /// `https://api.sandbox.push.apple.com`).
    pub base_url: Option<String>,
    pub client: ClientOptions,
}

// The key is a secret: never print it.
impl std::fmt::Debug for ApnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsConfig")
            .field("key_pem", &"<redacted>")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("base_url", &self.base_url)
            .field("client", &self.client)
            .finish()
    }
}

struct ProviderToken {
    jwt: String,
    minted: Instant,
}

pub struct ApnsProvider {
    http: reqwest::Client,
    base: String,
    topic: String,
    key_id: String,
    team_id: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    token: Mutex<Option<ProviderToken>>,
}

/// Checks a device token before it is stored: hex, whole bytes, 16 to 200 bytes (Apple's
/// are 32 today and documented as possibly growing).
pub fn validate_token(token: &str) -> Result<(), String> {
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("APNs token must be hexadecimal".into());
    }
    if !token.len().is_multiple_of(2) {
        return Err("APNs token has an odd number of hex digits".into());
    }
    let bytes = token.len() / 2;
    if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&bytes) {
        return Err(format!(
            "APNs token is {bytes} bytes; expected {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES}"
        ));
    }
    Ok(())
}

impl ApnsProvider {
    pub fn new(cfg: ApnsConfig) -> anyhow::Result<Self> {
        for (what, value) in [
            ("key_id", &cfg.key_id),
            ("team_id", &cfg.team_id),
            ("topic", &cfg.topic),
        ] {
            // They end up in headers and the JWT: refuse what would break either.
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                bail!("APNs {what} must be non-empty printable ASCII");
            }
        }
        let der = crate::http::pem_pkcs8(&cfg.key_pem)
            .context("APNs key is not a PKCS#8 PEM (.p8) key")?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow!("APNs key is not a usable P-256 key: {e}"))?;
        Ok(ApnsProvider {
            // APNs speaks only HTTP/2; reqwest then offers just `h2` in ALPN.
            http: crate::http::client(&cfg.client, true)?,
            base: cfg
                .base_url
                .as_deref()
                .unwrap_or(DEFAULT_BASE_URL)
                .trim_end_matches('/')
                .to_string(),
            topic: cfg.topic,
            key_id: cfg.key_id,
            team_id: cfg.team_id,
            key,
            rng,
            token: Mutex::new(None),
        })
    }

    fn provider_token(&self) -> anyhow::Result<String> {
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = slot.as_ref().filter(|t| t.minted.elapsed() < TOKEN_REUSE) {
            return Ok(t.jwt.clone());
        }
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let claims = json!({"iss": self.team_id, "iat": crate::http::unix_now()});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow!("ECDSA signing failed"))?;
        let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
        tracing::debug!(key_id = %self.key_id, "APNs provider token minted");
        *slot = Some(ProviderToken {
            jwt: jwt.clone(),
            minted: Instant::now(),
        });
        Ok(jwt)
    }

    /// Forgets `used` unless another send already replaced it.
    fn drop_token(&self, used: &str) {
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|t| t.jwt == used) {
            *slot = None;
        }
    }

    async fn deliver(&self, token: &str, message: &PushMessage) -> PushOutcome {
        let jwt = match self.provider_token() {
            Ok(jwt) => jwt,
            Err(e) => {
                return PushOutcome::Failed {
                    reason: format!("APNs provider token: {e}"),
                }
            }
        };
        let c = &message.content;
        let urgent = matches!(c.reason, PushReason::Mention | PushReason::Reply);
        let expiration = crate::http::unix_now().saturating_add(u64::from(message.ttl_secs));
        let response = self
            .http
            .post(format!("{}/3/device/{token}", self.base))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", if urgent { "10" } else { "5" })
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", collapse_id(&message.collapse_key))
            .header("apns-id", apns_id(message.id.0))
            .header("content-type", "application/json")
            .body(payload(message).to_string())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return PushOutcome::Retry {
                    after: None,
                    reason: format!("APNs: {}", crate::http::describe(e)),
                }
            }
        };
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        let reason = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default();
        let described = if reason.is_empty() {
            format!("APNs answered {status}")
        } else {
            format!("APNs answered {status} {reason}")
        };
        match (status, reason.as_str()) {
            (200, _) => PushOutcome::Sent,
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => PushOutcome::Gone,
            (403, "ExpiredProviderToken") => {
                self.drop_token(&jwt);
                PushOutcome::Retry {
                    after: None,
                    reason: described,
                }
            }
            (429 | 500..=599, _) => PushOutcome::Retry {
                after: None,
                reason: described,
            },
            _ => PushOutcome::Failed { reason: described },
        }
    }
}

#[async_trait]
impl PushProvider for ApnsProvider {
    fn kind(&self) -> PushKind {
        PushKind::Apns
    }

    async fn send(&self, target: &TargetAddress, message: &PushMessage) -> PushOutcome {
        let TargetAddress::Apns { token } = target else {
            return PushOutcome::Failed {
                reason: format!("not an APNs target ({})", target.kind().as_str()),
            };
        };
        if let Err(reason) = validate_token(token) {
            return PushOutcome::Failed { reason };
        }
        let outcome = self.deliver(token, message).await;
        let tail = &token[token.len().saturating_sub(8)..];
        match &outcome {
            PushOutcome::Sent => {
                tracing::debug!(push = %message.id, token = %tail, "APNs push sent")
            }
            PushOutcome::Gone => {
                tracing::debug!(push = %message.id, token = %tail, "APNs token no longer valid")
            }
            PushOutcome::Retry { reason, .. } => {
                tracing::debug!(push = %message.id, token = %tail, %reason, "APNs push to retry")
            }
            PushOutcome::Failed { reason } => {
                tracing::warn!(push = %message.id, token = %tail, %reason, "APNs push failed")
            }
        }
        outcome
    }
}

/// The notification JSON: `aps` for the system, Parlor's ids beside it for the app.
fn payload(message: &PushMessage) -> Value {
    let c = &message.content;
    json!({
        "aps": {
            "alert": {"title": c.title, "body": c.body},
            "badge": message.badge,
            "sound": "default",
            "thread-id": message.collapse_key,
        },
        "conv": c.conv.to_string(),
        "seq": c.seq.to_string(),
        "message": c.message.to_string(),
        "sender": c.sender.to_string(),
        "reason": match c.reason {
            PushReason::Message => "message",
            PushReason::Mention => "mention",
            PushReason::Reply => "reply",
        },
    })
}

/// Parlor's collapse keys are short; one that outgrew Apple's 64 bytes is replaced by
/// its SHA-256 in hex (64 characters), which still collapses the same pushes together.
fn collapse_id(key: &str) -> String {
    if key.len() <= MAX_COLLAPSE_ID {
        return key.to_string();
    }
    hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
}

/// A UUID (version 8, RFC 9562: application-defined) from the push id's SHA-256, so the
/// same push always gets the same `apns-id`, and ids of different pushes do not reveal
/// how they relate.
pub fn apns_id(push_id: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"parlor apns-id\0");
    ctx.update(&push_id.to_be_bytes());
    let digest = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
