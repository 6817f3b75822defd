//! VAPID (RFC 8292): the application server proves to each push service that its pushes
//! come from the key the browser subscribed with, by an ES256-signed JWT per service.

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a token is valid. RFC 8292 caps it at 24 hours; half of that leaves room
/// for clock skew between Parlor and the push service.
const VALIDITY: Duration = Duration::from_secs(12 * 3600);
/// How long a token is reused, so most pushes skip signing while every token sent still
/// has at least 11 hours to run.
const REUSE: Duration = Duration::from_secs(3600);
/// Audiences come from user-supplied endpoints; past this many the cache starts over
/// rather than grow without bound.
const MAX_CACHED: usize = 256;

const PEM_LABEL: &str = "PRIVATE KEY";

pub(crate) struct Vapid {
    key: EcdsaKeyPair,
    public_key: String,
    subject: String,
    rng: SystemRandom,
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl Vapid {
    pub(crate) fn new(key_pem: &str, subject: &str) -> anyhow::Result<Vapid> {
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            bail!("the VAPID subject must be a mailto: or https: URL, got {subject:?}");
        }
        let der = pem_decode(key_pem)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow!("the VAPID key is not a PKCS#8 P-256 private key: {e}"))?;
        let public_key = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        Ok(Vapid {
            key,
            public_key,
            subject: subject.to_string(),
            rng,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The uncompressed public point, base64url: the browser's `applicationServerKey`.
    pub(crate) fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The `Authorization` header value for a push service at origin `aud`.
    pub(crate) fn authorization(&self, aud: &str) -> anyhow::Result<String> {
        let token = self.token(aud)?;
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }

    fn token(&self, aud: &str) -> anyhow::Result<String> {
        let now = Instant::now();
        // A poisoned lock only means another send panicked mid-update; the map is
        // still a valid cache.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, made)) = cache.get(aud) {
            if now.duration_since(*made) < REUSE {
                return Ok(token.clone());
            }
        }
        let token = self.sign(aud, SystemTime::now() + VALIDITY)?;
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(aud.to_string(), (token.clone(), now));
        Ok(token)
    }

    fn sign(&self, aud: &str, expires: SystemTime) -> anyhow::Result<String> {
        let exp = expires
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs();
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({ "aud": aud, "exp": exp, "sub": self.subject });
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
        let input = format!("{header}.{claims}");
        // The FIXED algorithm gives r || s, which is the signature encoding JWS wants.
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| anyhow!("ES256 signing failed"))?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// A new P-256 key as PKCS#8 PEM.
pub(crate) fn generate_key_pem() -> anyhow::Result<String> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow!("cannot generate a P-256 key"))?;
    Ok(pem_encode(doc.as_ref()))
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    // Base64 output is ASCII, so slicing it into 64-character lines is byte-safe.
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out
}

fn pem_decode(pem: &str) -> anyhow::Result<Vec<u8>> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let Some(start) = pem.find(&begin) else {
        if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            bail!(
                "the VAPID key is a SEC1 \"EC PRIVATE KEY\"; convert it to PKCS#8 with \
                 `openssl pkcs8 -topk8 -nocrypt`"
            );
        }
        bail!("the VAPID key has no \"{begin}\" line");
    };
    let body = &pem[start + begin.len()..];
    let stop = body
        .find(&end)
        .with_context(|| format!("the VAPID key has no \"{end}\" line"))?;
    let b64: String = body[..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(b64)
        .context("the VAPID key PEM is not valid base64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn generated_keys_round_trip_through_pem() {
        let pem = generate_key_pem().expect("generate");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let a = Vapid::new(&pem, "mailto:ops@example.com").expect("load");
        let b = Vapid::new(&pem, "https://example.com/contact").expect("load again");
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(a.public_key()).expect("b64").len(),
            65
        );
    }

    #[test]
    fn bad_keys_and_subjects_are_refused() {
        let pem = generate_key_pem().expect("generate");
        assert!(Vapid::new(&pem, "ops@example.com").is_err());
        assert!(Vapid::new("not a key", "mailto:a@b").is_err());
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let err = Vapid::new(sec1, "mailto:a@b").err().expect("refused");
        assert!(err.to_string().contains("pkcs8"), "{err}");
    }

    #[test]
    fn tokens_are_signed_claims_and_are_reused_per_audience() {
        let vapid = Vapid::new(&generate_key_pem().expect("key"), "mailto:a@b").expect("load");
        let token = vapid.token("https://push.example.net").expect("token");
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let public = URL_SAFE_NO_PAD.decode(vapid.public_key()).expect("b64");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).expect("b64"))
            .expect("signature verifies");
        let claims = input.split('.').nth(1).expect("claims");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("b64")).expect("json");
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["sub"], "mailto:a@b");
        assert_eq!(
            vapid.token("https://push.example.net").expect("again"),
            token
        );
        assert_ne!(vapid.token("https://other.example").expect("other"), token);
        let header = vapid
            .authorization("https://push.example.net")
            .expect("header");
        assert_eq!(header, format!("vapid t={token}, k={}", vapid.public_key()));
    }
}
