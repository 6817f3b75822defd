//! An APNs signing key made at run time (what Apple's developer portal hands out as a
//! `.p8` file), and the checks APNs makes on a provider token, so APNs tests can play
//! the service.
//!
//! The token is checked with ring's ECDSA verification API and the key's public half,
//! so nothing here shares code with the adapter's signing.

use super::fcm::{random_hex, unix_now, verify_jwt};
use anyhow::{ensure, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::Value;

pub struct ApnsKey {
    /// The 10-character key id Apple assigns (the JWT `kid`).
    pub key_id: String,
    /// The 10-character team id (the JWT `iss`).
    pub team_id: String,
    pkcs8: Vec<u8>,
    /// Uncompressed P-256 point.
    public_key: Vec<u8>,
}

impl ApnsKey {
    pub fn generate() -> anyhow::Result<ApnsKey> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generate P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("parse generated key: {e}"))?;
        Ok(ApnsKey {
            key_id: apple_id()?,
            team_id: apple_id()?,
            public_key: pair.public_key().as_ref().to_vec(),
            pkcs8: pkcs8.as_ref().to_vec(),
        })
    }

    /// The key as a `.p8` file holds it: PKCS#8 PEM.
    pub fn pem(&self) -> String {
        let b64 = STANDARD.encode(&self.pkcs8);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// Checks an `authorization` header: `bearer <JWT>`, the JWT signed ES256 by this
    /// key, `kid` this key's id, `iss` the team, `iat` within the last hour (APNs refuses
    /// older tokens). Returns the claims.
    pub fn verify_provider_token(&self, authorization: &str) -> anyhow::Result<Value> {
        let (scheme, jwt) = authorization
            .split_once(' ')
            .context("authorization is not `<scheme> <token>`")?;
        ensure!(
            scheme.eq_ignore_ascii_case("bearer"),
            "scheme is {scheme:?}"
        );
        let (header, claims) = verify_jwt(jwt, |input, signature| {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
                .verify(input, signature)
                .map_err(|_| anyhow::anyhow!("ES256 signature does not verify"))
        })?;
        ensure!(header["alg"] == "ES256", "alg is {}", header["alg"]);
        ensure!(
            header["kid"] == self.key_id.as_str(),
            "kid is {}",
            header["kid"]
        );
        ensure!(
            claims["iss"] == self.team_id.as_str(),
            "iss is {}",
            claims["iss"]
        );
        let iat = claims["iat"].as_i64().context("iat is not an integer")?;
        let now = unix_now();
        ensure!(
            (now - 3600..=now + 60).contains(&iat),
            "iat {iat} is not within the last hour (now {now})"
        );
        Ok(claims)
    }
}

/// Apple's key and team ids are ten upper-case letters and digits.
fn apple_id() -> anyhow::Result<String> {
    Ok(random_hex(5)?.to_ascii_uppercase())
}
