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
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout.unwrap_or(Duration::from_secs(10)))
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("parlor/", env!("CARGO_PKG_VERSION")));
    if http2_only {
        builder = builder.http2_prior_knowledge();
    }
    if let Some(pem) = &options.extra_roots_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}
