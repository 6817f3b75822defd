//! Authentication: argon2id password hashes (computed on blocking threads, bounded in
//! number), short-lived HS256 access tokens (JWT), and single-use refresh tokens that
//! are stored only as SHA-256 hashes.

use crate::config::AuthConfig;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use parlor_core::error::{Error, Result};
use parlor_core::Id;
use parlor_proto::ErrorCode;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// User id.
    sub: String,
    /// Device session id: revoking it invalidates the token before it expires.
    sid: String,
    iat: u64,
    exp: u64,
}

/// Who an access token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user: Id,
    pub device: Id,
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    argon2: Argon2<'static>,
    hashing: Arc<Semaphore>,
    /// Verified against when the username is unknown, so that a login takes as long for
    /// unknown users as for wrong passwords (no user enumeration by timing).
    dummy_hash: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    pub fn new(config: &AuthConfig, secret: &[u8]) -> anyhow::Result<Self> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_lanes,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let dummy_hash = argon2
            .hash_password(b"not a real password", &salt)
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        let mut validation = Validation::new(JwtAlgorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            argon2,
            hashing: Arc::new(Semaphore::new(config.max_concurrent_hashes.max(1))),
            dummy_hash,
            access_ttl_secs: config.access_ttl_secs,
            refresh_ttl_secs: config.refresh_ttl_secs,
        })
    }

    pub async fn hash_password(&self, password: String) -> Result<String> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| Error::unavailable())?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| {
                    tracing::error!(error = %e, "password hashing failed");
                    Error::internal()
                })
        })
        .await
        .map_err(|_| Error::internal())?
    }

    /// Verifies `password` against `hash`, or against a dummy hash when `hash` is `None`
    /// (unknown user), and answers false in that case.
    pub async fn verify_password(&self, hash: Option<String>, password: String) -> Result<bool> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| Error::unavailable())?;
        let argon2 = self.argon2.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            argon2.verify_password(password.as_bytes(), &parsed).is_ok() && known
        })
        .await
        .map_err(|_| Error::internal())
    }

    pub fn issue_access(&self, principal: Principal) -> Result<String> {
        self.issue_access_for(principal, self.access_ttl_secs)
    }

    pub fn issue_access_for(&self, principal: Principal, ttl_secs: u64) -> Result<String> {
        let now = now_secs();
        let claims = Claims {
            sub: principal.user.to_string(),
            sid: principal.device.to_string(),
            iat: now,
            exp: now + ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(JwtAlgorithm::HS256), &claims, &self.encoding).map_err(
            |e| {
                tracing::error!(error = %e, "token signing failed");
                Error::internal()
            },
        )
    }

    /// Checks signature and expiry; revocation is checked by the caller against the store.
    pub fn verify_access(&self, token: &str) -> Result<Principal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Error::new(ErrorCode::TokenExpired, "access token expired, refresh it")
                }
                _ => Error::new(ErrorCode::Unauthorized, "invalid access token"),
            })?;
        let parse = |s: &str| {
            s.parse::<Id>()
                .map_err(|_| Error::new(ErrorCode::Unauthorized, "invalid access token"))
        };
        Ok(Principal {
            user: parse(&data.claims.sub)?,
            device: parse(&data.claims.sid)?,
        })
    }

    /// A new refresh token (256 random bits, base64url) and the hash that is stored.
    pub fn new_refresh(&self) -> (String, [u8; 32]) {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash_refresh(&token);
        (token, hash)
    }

    pub fn refresh_expiry_ms(&self) -> i64 {
        ((now_secs() + self.refresh_ttl_secs) * 1000) as i64
    }
}

pub fn hash_refresh(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The JWT key: configured, or created once in the data directory.
pub fn load_or_create_secret(
    config: &AuthConfig,
    data_dir: &std::path::Path,
) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret {
        anyhow::ensure!(
            secret.len() >= 32,
            "auth.jwt_secret must be at least 32 characters"
        );
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt.key");
    if let Ok(existing) = std::fs::read(&path) {
        anyhow::ensure!(existing.len() >= 32, "{} is too short", path.display());
        return Ok(existing);
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let encoded = hex(&bytes);
    write_private(&path, encoded.as_bytes())?;
    Ok(encoded.into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data)?;
    Ok(())
}
