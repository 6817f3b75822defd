//! The far end of a Web Push: a browser's subscription keys, the decryption a browser
//! does on arrival, and the check a push service does of the VAPID header.
//!
//! Everything here deliberately uses other people's code: Mozilla's `ece` crate (the
//! RFC 8188/8291 implementation in Firefox) decrypts, and OpenSSL verifies the ES256
//! signature. Parlor's adapter is built on ring with its own derivation, so a mistake
//! there cannot be mirrored here and pass unnoticed.

use super::{FakeProvider, Recorded};
use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;

/// A subscribed browser: its P-256 key pair and auth secret, made at run time.
pub struct Browser {
    keys: ece::EcKeyComponents,
    auth: Vec<u8>,
}

impl Browser {
    pub fn new() -> anyhow::Result<Browser> {
        let (pair, auth) = ece::generate_keypair_and_auth_secret()
            .context("generate a browser's subscription keys")?;
        Ok(Browser {
            keys: pair.raw_components().context("export the browser key")?,
            auth: auth.to_vec(),
        })
    }

    /// A browser with given keys (raw private scalar, uncompressed public point, auth
    /// secret), for checking this decryption itself against published examples.
    pub fn from_raw(private: &[u8], public: &[u8], auth: &[u8]) -> anyhow::Result<Browser> {
        // `ece::decrypt` panics on a key it cannot import, so the pair is checked here,
        // where a bad one is an error instead.
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let mut ctx = BigNumContext::new()?;
        let point = EcPoint::from_bytes(&group, public, &mut ctx)?;
        let scalar = BigNum::from_slice(private)?;
        let key = EcKey::from_private_components(&group, &scalar, &point)?;
        key.check_key().context("the key pair does not match")?;
        ensure!(auth.len() == 16, "an auth secret is 16 bytes");
        Ok(Browser {
            keys: ece::EcKeyComponents::new(private, public),
            auth: auth.to_vec(),
        })
    }

    /// The subscription's `p256dh` key, base64url as browsers give it.
    pub fn p256dh(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.keys.public_key())
    }

    /// The subscription's `auth` secret, base64url.
    pub fn auth(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.auth)
    }

    /// An endpoint on the fake push service; its path is what the service records.
    pub fn endpoint(provider: &FakeProvider, name: &str) -> String {
        format!("{}/push/{name}", provider.url())
    }

    /// Opens an `aes128gcm` Web Push body as the browser would.
    pub fn decrypt(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        ece::decrypt(&self.keys, &self.auth, body).context("decrypt the push body")
    }
}

/// Checks the VAPID header of a push request the way a push service would, with OpenSSL:
/// the key named in `k` must be `expected_public_key`, the ES256 signature must verify
/// with it, `aud` must be `expected_aud`, `exp` in the future and at most 24 hours away,
/// and `sub` present. Returns the claims.
pub fn verify_vapid(
    request: &Recorded,
    expected_public_key: &str,
    expected_aud: &str,
) -> anyhow::Result<serde_json::Value> {
    let header = request
        .header("authorization")
        .context("no Authorization header")?;
    let (scheme, params) = header
        .split_once(' ')
        .context("Authorization has no parameters")?;
    ensure!(
        scheme.eq_ignore_ascii_case("vapid"),
        "Authorization scheme is {scheme:?}, not vapid"
    );
    let (mut token, mut key) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.trim()),
            Some(("k", v)) => key = Some(v.trim()),
            _ => bail!("unexpected Authorization parameter {param:?}"),
        }
    }
    let token = token.context("Authorization has no t=")?;
    let key = key.context("Authorization has no k=")?;
    ensure!(
        key == expected_public_key,
        "k= is {key}, expected {expected_public_key}"
    );

    let mut parts = token.split('.');
    let (Some(head), Some(claims), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("the token is not a three-part JWS");
    };
    let head: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head)?)?;
    ensure!(head["alg"] == "ES256", "JWS alg is {}", head["alg"]);
    ensure!(head["typ"] == "JWT", "JWS typ is {}", head["typ"]);

    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .context("signature is not base64url")?;
    ensure!(
        sig.len() == 64,
        "an ES256 signature is 64 bytes, got {}",
        sig.len()
    );
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&sig[..32])?,
        BigNum::from_slice(&sig[32..])?,
    )?;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let mut ctx = BigNumContext::new()?;
    let point = EcPoint::from_bytes(&group, &URL_SAFE_NO_PAD.decode(key)?, &mut ctx)
        .context("k= is not a P-256 point")?;
    let public = EcKey::from_public_key(&group, &point)?;
    let signed = &token[..token.rfind('.').context("no signature")?];
    let digest = openssl::sha::sha256(signed.as_bytes());
    ensure!(
        sig.verify(&digest, &public)?,
        "the VAPID signature does not verify"
    );

    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims)?)?;
    ensure!(
        claims["aud"] == expected_aud,
        "aud is {}, expected {expected_aud}",
        claims["aud"]
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let exp = claims["exp"].as_u64().context("exp is not a number")?;
    ensure!(exp > now, "exp {exp} is in the past (now {now})");
    ensure!(exp <= now + 24 * 3600, "exp {exp} is more than 24 h away");
    ensure!(
        claims["sub"].as_str().is_some_and(|s| !s.is_empty()),
        "no sub claim"
    );
    Ok(claims)
}
