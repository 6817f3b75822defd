//! The HTTPS client every adapter uses: rustls with the web's roots, plus the extra
//! roots a deployment (or a test) names, and bounded timeouts so that a stuck provider
//! holds a push for seconds, not forever.

use std::time::Duration;

/// Extra settings shared by every provider's client.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// PEM certificates to trust besides the system's (a private provider, a test).
    pub extra_roots_pem: Option<Vec<u8>>,
    /// Whole-request timeout; default 10 s.
    pub timeout: Option<Duration>,
}

pub fn client(options: &ClientOptions, http2_only: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = builder(options)?;
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    Ok(builder.build()?)
}

/// The settings every client shares, for an adapter that adds its own (a resolver).
pub fn builder(options: &ClientOptions) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout.unwrap_or(Duration::from_secs(10)))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("parlor/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &options.extra_roots_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// `Retry-After` in seconds or as an HTTP date, capped at a day (a provider's mistake
/// must not park a push for weeks).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let after = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(after.min(Duration::from_secs(24 * 3600)))
}

/// A transport error with its causes, without the request URL: URLs carry device
/// tokens, subscription secrets or a receiver's credentials, which must stay out of
/// logs and stored reasons.
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The reason of a push whose service could not be reached.
pub fn unreachable(error: reqwest::Error) -> String {
    format!("push service unreachable: {}", describe(error))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The DER inside a PKCS#8 `PRIVATE KEY` PEM block (the form of a `.p8` key and of a
/// service account's `private_key`).
pub fn pem_pkcs8(pem: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem.find(BEGIN).context("no BEGIN PRIVATE KEY line")? + BEGIN.len();
    let len = pem[start..].find(END).context("no END PRIVATE KEY line")?;
    let b64: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}
