//! Webhooks: each push is an HTTPS POST of a small JSON document, signed so the
//! receiver can tell it came from this server and was not replayed.
//!
//! # The request
//! ```text
//! POST <url>
//! Content-Type: application/json
//! X-Parlor-Delivery: <push id>          the same on every resend of one push
//! X-Parlor-Timestamp: <unix seconds>    when this attempt was signed
//! X-Parlor-Signature: v1=<hex>
//!
//! {"id":"<push id>","type":"notification","reason":"message|mention|reply",
//!  "conv":"<id>","seq":<n>,"message":"<id>","sender":"<id>",
//!  "title":"…","body":"…","badge":<n>,"ts":<ms since the epoch>}
//! ```
//! Ids are decimal strings (they exceed what a JSON number holds exactly in many
//! languages); `seq`, `badge` and `ts` are numbers.
//!
//! # Verifying the signature
//! `<hex>` is the lowercase hexadecimal HMAC-SHA256 where
//! - the **key** is the webhook secret exactly as shown when the webhook was registered
//!   (64 hex characters), taken as its ASCII bytes: it is *not* hex-decoded first;
//! - the **message** is the `X-Parlor-Timestamp` value, one `.`, then the raw request
//!   body bytes as received (verify before parsing: re-serialized JSON differs).
//!
//! A receiver should compare in constant time, refuse timestamps more than a few minutes
//! from its clock (a captured request cannot be replayed later), and treat
//! `X-Parlor-Delivery` as an idempotency key (a push whose answer was lost is sent
//! again). The `v1=` prefix names this scheme so another can be added beside it.
//!
//! # Answers
//! 2xx sent; 410 gone (the receiver asks to be removed); 408, 429, 5xx, timeouts and
//! connection errors retry (after `Retry-After`); any other status, redirects included
//! (they are not followed: a redirect would let a public URL reach a private one), fails.
//!
//! # Private addresses
//! Unless `allow_private`, a webhook may not reach loopback, private, link-local,
//! unique-local, carrier-grade NAT, unspecified, broadcast, multicast or reserved
//! addresses, so that registering a URL cannot make the server probe its own network
//! (SSRF). [`validate_url`] refuses such IP literals and `localhost` names up front;
//! at send time what counts is where the name resolves *when the connection is made*:
//! the client's DNS resolver is replaced by one that fails the lookup when any address
//! of the name is private, so a name that resolved to a public address when checked and
//! to a private one when used (DNS rebinding) is refused too, and there is no second
//! lookup to race. IP literals never reach a resolver, so send checks them itself. The
//! client ignores proxy settings: through a proxy, the resolved address would be the
//! proxy's and the check would prove nothing.

use crate::http::ClientOptions;
use async_trait::async_trait;
use parlor_core::notify::{PushMessage, PushOutcome, PushReason, TargetAddress};
use parlor_core::ports::PushProvider;
use parlor_proto::notify::PushKind;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Longest webhook URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Clone, Default)]
pub struct WebhookConfig {
    /// Let webhooks reach private and loopback addresses (a trusted network, tests).
    pub allow_private: bool,
    /// Accept `http://` URLs (unencrypted, so the payload and signature are readable on
    /// the way; for local integrations only).
    pub allow_http: bool,
    pub client: ClientOptions,
}

pub struct WebhookProvider {
    http: reqwest::Client,
    cfg: WebhookConfig,
}

/// A new webhook secret: 32 random bytes, hex-encoded. The hex string itself is the HMAC
/// key (see the module documentation).
pub fn generate_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("system random number generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a webhook URL at registration: absolute `https` (`http` only with
/// `allow_http`), at most [`MAX_URL_LEN`] bytes, no user or password, and unless
/// `allow_private` no private IP literal nor `localhost` name.
pub fn validate_url(url: &str, cfg: &WebhookConfig) -> Result<(), String> {
    let parsed = check_url(url, cfg)?;
    if !cfg.allow_private {
        // The URL parser lower-cases names; a trailing dot names the same host.
        let name = parsed.host_str().unwrap_or("").trim_end_matches('.');
        if name == "localhost" || name.ends_with(".localhost") {
            return Err("webhook URL must not name localhost".into());
        }
    }
    Ok(())
}

/// The checks that hold at send time as well as at registration. Names are left to the
/// resolver (see the module documentation): what `localhost` means is what it resolves to.
fn check_url(url: &str, cfg: &WebhookConfig) -> Result<Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("webhook URL longer than {MAX_URL_LEN} bytes"));
    }
    let parsed = Url::parse(url).map_err(|e| format!("webhook URL is not an absolute URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if cfg.allow_http => {}
        "http" => return Err("webhook URL must be https".into()),
        other => return Err(format!("webhook URL scheme {other:?} is not https")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("webhook URL must not carry a user name or password".into());
    }
    let host = match parsed.host_str() {
        None | Some("") => return Err("webhook URL has no host".into()),
        Some(h) => h,
    };
    // The parser has already turned every numeric spelling of an address (0x7f.1,
    // 2130706433, …) into its canonical form, brackets around IPv6.
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<IpAddr>()
        .ok();
    if let Some(ip) = ip.filter(|ip| !cfg.allow_private && is_private(*ip)) {
        return Err(format!("webhook URL points at a private address ({ip})"));
    }
    Ok(parsed)
}

/// Addresses a webhook may not reach without `allow_private`.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (seg[0] & 0xffc0) == 0xfec0 // site local (deprecated) fec0::/10
                // IPv4-compatible ::a.b.c.d (deprecated) and NAT64 64:ff9b::/96 embed an
                // IPv4 address that some stacks still route to.
                || (seg[..6] == [0; 6] && private_v4(embedded_v4(v6)))
                || (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && private_v4(embedded_v4(v6)))
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let o = v6.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0 // "this network" 0.0.0.0/8
        || (a == 100 && (b & 0xc0) == 64) // carrier-grade NAT 100.64.0.0/10
        || a >= 240 // reserved 240.0.0.0/4
}

/// Why a connection was refused by [`GuardedResolver`]; found again in the error chain
/// to tell a refusal (failed) from a DNS outage (retry).
#[derive(Debug)]
struct PrivateAddress {
    name: String,
    ip: IpAddr,
}

impl std::fmt::Display for PrivateAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves to a private address ({})",
            self.name, self.ip
        )
    }
}

impl std::error::Error for PrivateAddress {}

/// The system resolver, refusing names with any private address (see the module
/// documentation). All of them, not only the first: the connector tries every address.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| is_private(a.ip())) {
                return Err(Box::new(PrivateAddress { ip: bad.ip(), name })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The shared client with the guarded resolver, and no proxy (a proxy would resolve
/// names itself and make the guard meaningless).
fn guarded_client(options: &ClientOptions) -> anyhow::Result<reqwest::Client> {
    Ok(crate::http::builder(options)?
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver))
        .build()?)
}

impl WebhookProvider {
    pub fn new(cfg: WebhookConfig) -> anyhow::Result<Self> {
        let http = if cfg.allow_private {
            crate::http::client(&cfg.client, false)?
        } else {
            guarded_client(&cfg.client)?
        };
        Ok(WebhookProvider { http, cfg })
    }

    async fn deliver(&self, url: &str, secret: &str, message: &PushMessage) -> PushOutcome {
        let url = match check_url(url, &self.cfg) {
            Ok(u) => u,
            Err(reason) => return PushOutcome::Failed { reason },
        };
        if secret.is_empty() {
            return PushOutcome::Failed {
                reason: "webhook target has no secret".into(),
            };
        }
        let body = body(message).to_string();
        let timestamp = crate::http::unix_now().to_string();
        let signature = sign(secret, &timestamp, body.as_bytes());
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-parlor-delivery", message.id.to_string())
            .header("x-parlor-timestamp", &timestamp)
            .header("x-parlor-signature", format!("v1={signature}"))
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return transport_outcome(e),
        };
        let status = response.status().as_u16();
        let after = crate::http::retry_after(response.headers());
        let reason = format!("webhook answered {status}");
        match status {
            200..=299 => PushOutcome::Sent,
            410 => PushOutcome::Gone,
            408 | 429 | 500..=599 => PushOutcome::Retry { after, reason },
            300..=399 => PushOutcome::Failed {
                reason: format!("{reason}: redirects are not followed"),
            },
            _ => PushOutcome::Failed { reason },
        }
    }
}

fn transport_outcome(error: reqwest::Error) -> PushOutcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<PrivateAddress>() {
            return PushOutcome::Failed {
                reason: format!("webhook refused: {refused}"),
            };
        }
        source = e.source();
    }
    PushOutcome::Retry {
        after: None,
        reason: format!("webhook: {}", crate::http::describe(error)),
    }
}

/// The signature described in the module documentation, in lowercase hex.
fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn body(message: &PushMessage) -> serde_json::Value {
    let c = &message.content;
    json!({
        "id": message.id.to_string(),
        "type": "notification",
        "reason": match c.reason {
            PushReason::Message => "message",
            PushReason::Mention => "mention",
            PushReason::Reply => "reply",
        },
        "conv": c.conv.to_string(),
        "seq": c.seq,
        "message": c.message.to_string(),
        "sender": c.sender.to_string(),
        "title": c.title,
        "body": c.body,
        "badge": message.badge,
        "ts": c.ts,
    })
}

#[async_trait]
impl PushProvider for WebhookProvider {
    fn kind(&self) -> PushKind {
        PushKind::Webhook
    }

    async fn send(&self, target: &TargetAddress, message: &PushMessage) -> PushOutcome {
        let TargetAddress::Webhook { url, secret } = target else {
            return PushOutcome::Failed {
                reason: format!("not a webhook target ({})", target.kind().as_str()),
            };
        };
        let outcome = self.deliver(url, secret, message).await;
        // The URL may carry a token in its path or query: log only where it goes.
        let host = Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        match &outcome {
            PushOutcome::Sent => tracing::debug!(push = %message.id, %host, "webhook delivered"),
            PushOutcome::Gone => {
                tracing::debug!(push = %message.id, %host, "webhook asks to be removed")
            }
            PushOutcome::Retry { reason, .. } => {
                tracing::debug!(push = %message.id, %host, %reason, "webhook to retry")
            }
            PushOutcome::Failed { reason } => {
                tracing::warn!(push = %message.id, %host, %reason, "webhook failed")
            }
        }
        outcome
    }
}
