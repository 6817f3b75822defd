//! A Google service account made at run time, and the checks Google's token endpoint
//! makes on a JWT bearer assertion (RFC 7523), so FCM tests can play the token endpoint.
//!
//! ring cannot generate RSA keys, so OpenSSL makes the key (and exports its public half);
//! the assertion is checked with ring's verification API, so nothing here shares code
//! with the adapter's signing.

use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};
use std::sync::Mutex;

/// The scope the FCM HTTP v1 API requires.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

pub struct ServiceAccount {
    pub client_email: String,
    pub private_key_id: String,
    private_key_pem: String,
    /// PKCS#1 `RSAPublicKey`, as ring's RSA verification takes it.
    public_key_der: Vec<u8>,
    /// Every `token_uri` handed out by [`ServiceAccount::json`]: the assertion's
    /// audience must be one of them.
    token_uris: Mutex<Vec<String>>,
}

impl ServiceAccount {
    /// A fresh RSA 2048 key with random ids.
    pub fn generate() -> anyhow::Result<ServiceAccount> {
        let rsa = openssl::rsa::Rsa::generate(2048).context("generate RSA key")?;
        let public_key_der = rsa.public_key_to_der_pkcs1()?;
        let private_key_pem =
            String::from_utf8(openssl::pkey::PKey::from_rsa(rsa)?.private_key_to_pem_pkcs8()?)?;
        Ok(ServiceAccount {
            client_email: format!(
                "push-{}@parlor-test.iam.gserviceaccount.com",
                random_hex(4)?
            ),
            private_key_id: random_hex(20)?,
            private_key_pem,
            public_key_der,
            token_uris: Mutex::new(Vec::new()),
        })
    }

    /// The key file as the Google Cloud console downloads it.
    pub fn json(&self, token_uri: &str, project_id: &str) -> String {
        if let Ok(mut uris) = self.token_uris.lock() {
            uris.push(token_uri.to_string());
        }
        json!({
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": self.private_key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        })
        .to_string()
    }

    /// Checks a token request's form body: the grant type, then the assertion's RS256
    /// signature against this account's public key, its header and its claims. Returns
    /// the claims.
    pub fn verify_assertion(&self, form_body: &[u8]) -> anyhow::Result<Value> {
        let mut grant_type = None;
        let mut assertion = None;
        for (name, value) in form_urlencoded::parse(form_body) {
            let slot = match name.as_ref() {
                "grant_type" => &mut grant_type,
                "assertion" => &mut assertion,
                other => bail!("unexpected form field {other:?}"),
            };
            ensure!(slot.is_none(), "form field {name:?} given twice");
            *slot = Some(value.into_owned());
        }
        ensure!(
            grant_type.as_deref() == Some(JWT_BEARER_GRANT),
            "grant_type is {grant_type:?}"
        );
        let jwt = assertion.context("no assertion")?;
        let (header, claims) = verify_jwt(&jwt, |input, signature| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.public_key_der)
                .verify(input, signature)
                .map_err(|_| anyhow::anyhow!("RS256 signature does not verify"))
        })?;
        ensure!(header["alg"] == "RS256", "alg is {}", header["alg"]);
        ensure!(header["typ"] == "JWT", "typ is {}", header["typ"]);
        ensure!(
            header["kid"] == self.private_key_id.as_str(),
            "kid is {}",
            header["kid"]
        );
        ensure!(
            claims["iss"] == self.client_email.as_str(),
            "iss is {}",
            claims["iss"]
        );
        let scope = claims["scope"].as_str().context("no scope")?;
        ensure!(
            scope.split(' ').any(|s| s == FCM_SCOPE),
            "scope {scope:?} lacks {FCM_SCOPE}"
        );
        let aud = claims["aud"].as_str().context("no aud")?;
        let known = self
            .token_uris
            .lock()
            .map(|u| u.iter().any(|t| t == aud))
            .unwrap_or(false);
        ensure!(known, "aud {aud:?} is not the account's token_uri");
        let iat = claims["iat"].as_i64().context("iat is not an integer")?;
        let exp = claims["exp"].as_i64().context("exp is not an integer")?;
        let now = unix_now();
        // Google accepts a little clock skew, and at most an hour of validity.
        ensure!(
            (now - 300..=now + 60).contains(&iat),
            "iat {iat} is far from now ({now})"
        );
        ensure!(
            exp > iat && exp - iat <= 3600,
            "exp {exp} is not within an hour after iat {iat}"
        );
        Ok(claims)
    }
}

// The helpers below are shared with the APNs and webhook verifiers (`super::fcm::…`).

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn hex_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .context("not hex")
        })
        .collect()
}

/// Splits a compact JWS, checks its signature with `verify` over `header.claims`, and
/// returns the decoded header and claims.
pub(crate) fn verify_jwt(
    jwt: &str,
    verify: impl FnOnce(&[u8], &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<(Value, Value)> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a compact JWS (three dot-separated parts)");
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .context("signature is not base64url")?;
    let signed_len = header.len() + 1 + claims.len();
    verify(&jwt.as_bytes()[..signed_len], &signature)?;
    let decode = |part: &str, what: &str| -> anyhow::Result<Value> {
        let raw = URL_SAFE_NO_PAD
            .decode(part)
            .with_context(|| format!("{what} is not base64url"))?;
        serde_json::from_slice(&raw).with_context(|| format!("{what} is not JSON"))
    };
    Ok((decode(header, "header")?, decode(claims, "claims")?))
}
