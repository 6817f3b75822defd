//! Firebase Cloud Messaging, HTTP v1 API (`projects.messages.send`).
//!
//! # Authentication
//! The OAuth 2.0 service-account flow (RFC 7523 JWT bearer grant): a JWT signed RS256
//! with the service account's key (`kid` = `private_key_id`; `iss` = `client_email`,
//! `scope` = the firebase.messaging scope, `aud` = `token_uri`, one hour of validity) is
//! exchanged at the token endpoint for an access token. The token is cached until a
//! minute before it expires; one exchange runs at a time, so a burst of pushes after
//! expiry costs one exchange, not one per push. A 401 on a send drops the token and the
//! send is tried once more with a fresh one (Google can revoke tokens early).
//!
//! # Answers
//! FCM puts its specific reason in `error.details[]`, in the entry of type
//! `google.firebase.fcm.v1.FcmError` (`errorCode`); the HTTP status is the fallback:
//!
//! | answer | outcome |
//! | --- | --- |
//! | 200 | sent |
//! | `UNREGISTERED` (404) | gone |
//! | `SENDER_ID_MISMATCH` (403) | gone: the token belongs to another Firebase project, it will never work here |
//! | `INVALID_ARGUMENT` (400) naming the token | gone |
//! | `INVALID_ARGUMENT` (400) otherwise | failed |
//! | `QUOTA_EXCEEDED` (429), `UNAVAILABLE` (503), `INTERNAL` (500), any 5xx | retry, after `Retry-After` |
//! | anything else (`THIRD_PARTY_AUTH_ERROR`, 403 `PERMISSION_DENIED`, …) | failed |
//!
//! "Naming the token" is decided from the details, because a 400 is also what a
//! malformed message gets and that must not delete a good registration: the request is
//! taken to blame the token when a `google.rpc.BadRequest` detail has a field violation
//! on `message.token`, or when the error message speaks of the registration token (FCM
//! answers "The registration token is not a valid FCM registration token" without field
//! violations for some malformed tokens).
//!
//! A failed token exchange is a retry when the token endpoint is unreachable, times out
//! or answers 429/5xx, and a failure when it refuses the grant (400/401, e.g.
//! `invalid_grant` for a revoked key or a skewed clock): retrying cannot fix that.

use crate::http::ClientOptions;
use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parlor_core::notify::{PushMessage, PushOutcome, PushReason, TargetAddress};
use parlor_core::ports::PushProvider;
use parlor_proto::notify::PushKind;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google accepts assertions valid for at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Refresh this long before the access token expires, so no send carries a token that
/// expires in flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Longest registration token accepted; FCM's are about 160 characters today.
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Clone, Default)]
pub struct FcmConfig {
    /// The service account key file (JSON) as downloaded from the Firebase console.
    pub service_account_json: String,
    /// Default [`DEFAULT_BASE_URL`].
    pub base_url: Option<String>,
    /// Where to exchange the assertion; default the service account's `token_uri`.
    pub token_url: Option<String>,
    pub client: ClientOptions,
}

// The service account JSON holds a private key: never print it.
impl std::fmt::Debug for FcmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmConfig")
            .field("service_account_json", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("token_url", &self.token_url)
            .field("client", &self.client)
            .finish()
    }
}

#[derive(Deserialize)]
struct ServiceAccountKey {
    project_id: String,
    client_email: String,
    private_key: String,
    private_key_id: String,
    token_uri: String,
}

struct AccessToken {
    value: String,
    refresh_at: Instant,
}

pub struct FcmProvider {
    http: reqwest::Client,
    send_url: String,
    token_url: String,
    audience: String,
    client_email: String,
    key_id: String,
    key: RsaKeyPair,
    rng: SystemRandom,
    /// Held across an exchange: that is what makes refreshes one at a time.
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

/// Checks a registration token before it is stored: FCM documents no format, so only
/// what could never be a token (or would break the request) is refused.
pub fn validate_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("empty FCM token".into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("FCM token longer than {MAX_TOKEN_LEN} bytes"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("FCM token must be printable ASCII without spaces".into());
    }
    Ok(())
}

impl FcmProvider {
    pub fn new(cfg: FcmConfig) -> anyhow::Result<Self> {
        let account: ServiceAccountKey = serde_json::from_str(&cfg.service_account_json)
            .context("service account JSON lacks project_id, client_email, private_key, private_key_id or token_uri")?;
        // The project id goes into the request path: refuse anything that could change it.
        if account.project_id.is_empty()
            || !account
                .project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
        {
            bail!(
                "service account project_id {:?} is not a Google Cloud project id",
                account.project_id
            );
        }
        let der = crate::http::pem_pkcs8(&account.private_key)
            .context("service account private_key is not a PKCS#8 PEM key")?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow!("service account private_key is not a usable RSA key: {e}"))?;
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/')
            .to_string();
        Ok(FcmProvider {
            http: crate::http::client(&cfg.client, false)?,
            send_url: format!("{base}/v1/projects/{}/messages:send", account.project_id),
            token_url: cfg.token_url.unwrap_or_else(|| account.token_uri.clone()),
            audience: account.token_uri,
            client_email: account.client_email,
            key_id: account.private_key_id,
            key,
            rng: SystemRandom::new(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn assertion(&self) -> anyhow::Result<String> {
        let iat = crate::http::unix_now();
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.key_id});
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.audience,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| anyhow!("RSA signing failed"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// The cached access token, or a fresh one.
    async fn access_token(&self) -> Result<String, PushOutcome> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.value.clone());
        }
        let fresh = self.exchange().await?;
        let value = fresh.value.clone();
        *slot = Some(fresh);
        Ok(value)
    }

    /// Forgets `used` unless another send already replaced it.
    async fn drop_token(&self, used: &str) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == used) {
            *slot = None;
        }
    }

    async fn exchange(&self) -> Result<AccessToken, PushOutcome> {
        let assertion = self.assertion().map_err(|e| PushOutcome::Failed {
            reason: format!("FCM assertion: {e}"),
        })?;
        let started = Instant::now();
        let response = self
            .http
            .post(&self.token_url)
            .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|e| {
                let reason = format!("FCM token exchange: {}", crate::http::describe(e));
                tracing::warn!(%reason, "FCM token exchange did not complete");
                PushOutcome::Retry {
                    after: None,
                    reason,
                }
            })?;
        let status = response.status().as_u16();
        let after = crate::http::retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        if status != 200 {
            // Token endpoints answer RFC 6749 errors: {"error", "error_description"}.
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .map(|v| {
                    let code = v["error"].as_str().unwrap_or("unknown error");
                    match v["error_description"].as_str() {
                        Some(d) => format!("{code}: {d}"),
                        None => code.to_string(),
                    }
                })
                .unwrap_or_else(|| "no error body".into());
            let reason = format!("FCM token exchange answered {status} ({detail})");
            tracing::warn!(status, %detail, "FCM token exchange refused");
            return Err(if status == 429 || status >= 500 {
                PushOutcome::Retry { after, reason }
            } else {
                PushOutcome::Failed { reason }
            });
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: u64,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            tracing::warn!(error = %e, "FCM token endpoint answered 200 without a token");
            PushOutcome::Retry {
                after: None,
                reason: format!("FCM token exchange: unreadable answer: {e}"),
            }
        })?;
        tracing::debug!(expires_in = answer.expires_in, "FCM access token obtained");
        let lifetime = Duration::from_secs(answer.expires_in).saturating_sub(REFRESH_MARGIN);
        Ok(AccessToken {
            value: answer.access_token,
            refresh_at: started + lifetime,
        })
    }

    async fn post(&self, access_token: &str, body: &Value) -> Result<Answer, PushOutcome> {
        let response = self
            .http
            .post(&self.send_url)
            .bearer_auth(access_token)
            .json(body)
            .send()
            .await
            .map_err(|e| PushOutcome::Retry {
                after: None,
                reason: format!("FCM send: {}", crate::http::describe(e)),
            })?;
        let status = response.status().as_u16();
        let after = crate::http::retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        Ok(Answer {
            status,
            after,
            body: body.to_vec(),
        })
    }
}

struct Answer {
    status: u16,
    after: Option<Duration>,
    body: Vec<u8>,
}

#[async_trait]
impl PushProvider for FcmProvider {
    fn kind(&self) -> PushKind {
        PushKind::Fcm
    }

    async fn send(&self, target: &TargetAddress, message: &PushMessage) -> PushOutcome {
        let TargetAddress::Fcm { token } = target else {
            return PushOutcome::Failed {
                reason: format!("not an FCM target ({})", target.kind().as_str()),
            };
        };
        if let Err(reason) = validate_token(token) {
            return PushOutcome::Failed { reason };
        }
        let body = message_body(token, message);
        let outcome = async {
            let access = self.access_token().await?;
            let answer = self.post(&access, &body).await?;
            if answer.status != 401 {
                return Ok(answer);
            }
            tracing::debug!("FCM refused the access token; refreshing once");
            self.drop_token(&access).await;
            let access = self.access_token().await?;
            self.post(&access, &body).await
        }
        .await
        .map(|answer| classify(answer.status, answer.after, &answer.body))
        .unwrap_or_else(|outcome| outcome);
        log_outcome(token, message, &outcome);
        outcome
    }
}

fn log_outcome(token: &str, message: &PushMessage, outcome: &PushOutcome) {
    let tail = token_tail(token);
    match outcome {
        PushOutcome::Sent => tracing::debug!(push = %message.id, token = %tail, "FCM push sent"),
        PushOutcome::Gone => {
            tracing::debug!(push = %message.id, token = %tail, "FCM token no longer registered")
        }
        PushOutcome::Retry { reason, .. } => {
            tracing::debug!(push = %message.id, token = %tail, %reason, "FCM push to retry")
        }
        PushOutcome::Failed { reason } => {
            tracing::warn!(push = %message.id, token = %tail, %reason, "FCM push failed")
        }
    }
}

/// The `messages:send` request body.
fn message_body(token: &str, message: &PushMessage) -> Value {
    let c = &message.content;
    let urgent = matches!(c.reason, PushReason::Mention | PushReason::Reply);
    let badge = i32::try_from(message.badge).unwrap_or(i32::MAX);
    json!({
        "message": {
            "token": token,
            "notification": {"title": c.title, "body": c.body},
            // FCM data values must be strings.
            "data": {
                "conv": c.conv.to_string(),
                "seq": c.seq.to_string(),
                "message": c.message.to_string(),
                "sender": c.sender.to_string(),
                "reason": reason_str(c.reason),
                "badge": message.badge.to_string(),
                "ts": c.ts.to_string(),
            },
            "android": {
                "collapse_key": message.collapse_key,
                "priority": if urgent { "HIGH" } else { "NORMAL" },
                "ttl": format!("{}s", message.ttl_secs),
                "notification": {
                    "tag": message.collapse_key,
                    "notification_count": badge,
                },
            },
            "apns": {
                "headers": {
                    "apns-collapse-id": message.collapse_key,
                    "apns-priority": if urgent { "10" } else { "5" },
                },
                "payload": {"aps": {"badge": badge, "thread-id": message.collapse_key}},
            },
        }
    })
}

fn reason_str(reason: PushReason) -> &'static str {
    match reason {
        PushReason::Message => "message",
        PushReason::Mention => "mention",
        PushReason::Reply => "reply",
    }
}

/// Maps a `messages:send` answer other than 401 (see the module documentation).
fn classify(status: u16, after: Option<Duration>, body: &[u8]) -> PushOutcome {
    if (200..300).contains(&status) {
        return PushOutcome::Sent;
    }
    let error = serde_json::from_slice::<Value>(body)
        .map(|v| v["error"].clone())
        .unwrap_or(Value::Null);
    let details = error["details"].as_array().cloned().unwrap_or_default();
    let of_type = |suffix: &'static str| {
        details
            .iter()
            .filter(move |d| d["@type"].as_str().is_some_and(|t| t.ends_with(suffix)))
    };
    let error_code = of_type("google.firebase.fcm.v1.FcmError")
        .find_map(|d| d["errorCode"].as_str())
        .or_else(|| error["status"].as_str())
        .unwrap_or("")
        .to_string();
    let message = error["message"].as_str().unwrap_or("").to_string();
    let reason = if error_code.is_empty() {
        format!("FCM answered {status}")
    } else if message.is_empty() {
        format!("FCM answered {status} {error_code}")
    } else {
        format!("FCM answered {status} {error_code}: {message}")
    };
    match error_code.as_str() {
        "UNREGISTERED" | "SENDER_ID_MISMATCH" => return PushOutcome::Gone,
        "INVALID_ARGUMENT" => {
            let on_token = of_type("google.rpc.BadRequest").any(|d| {
                d["fieldViolations"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|f| f["field"] == "message.token"))
            });
            let names_token = message.to_ascii_lowercase().contains("registration token");
            return if on_token || names_token {
                PushOutcome::Gone
            } else {
                PushOutcome::Failed { reason }
            };
        }
        "QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL" => {
            return PushOutcome::Retry { after, reason }
        }
        _ => {}
    }
    match status {
        404 => PushOutcome::Gone,
        429 | 500..=599 => PushOutcome::Retry { after, reason },
        _ => PushOutcome::Failed { reason },
    }
}

/// The end of a token, enough to tell devices apart in a log without leaking the token.
fn token_tail(token: &str) -> &str {
    let start = token.len().saturating_sub(8);
    token.get(start..).unwrap_or("")
}
