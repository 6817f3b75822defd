//! Push provider adapters, one per [`parlor_core::ports::PushProvider`]:
//!
//! - [`webpush`]: RFC 8030 push services, payload encryption per RFC 8291 (aes128gcm),
//!   VAPID per RFC 8292.
//! - [`fcm`]: Firebase Cloud Messaging HTTP v1, with the OAuth 2.0 service-account token
//!   exchange.
//! - [`apns`]: Apple Push Notification service over HTTP/2 with an ES256 provider token.
//! - [`webhook`]: an HTTP POST signed with HMAC-SHA256, for integrations.
//!
//! Each adapter maps the provider's answers onto [`parlor_core::notify::PushOutcome`]:
//! sent, gone (remove the target), retry (transient), failed (permanent). None of them
//! retries by itself; the server's push sender owns retries and backoff.

pub mod apns;
pub mod fcm;
pub mod http;
pub mod webhook;
pub mod webpush;
