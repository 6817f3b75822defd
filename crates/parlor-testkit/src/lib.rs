//! Test support for end-to-end tests that run the real `parlor` binary.
//!
//! # Why
//! End-to-end tests should exercise exactly what ships: the binary, its command line,
//! its on-disk data and its real sockets, not an in-process router. [`TestServer`] starts
//! the binary on a free port in a throwaway directory, finds the address from the one
//! line the server prints, and can kill, gracefully stop and restart it on the same data
//! to test durability. TLS tests get a certificate generated at run time, so no key
//! material is ever checked in.
//!
//! Cluster mode needs PostgreSQL, Redis and NATS: [`engines`] starts real ones with
//! mutual TLS, and `PARLOR_TEST_BACKEND=cluster` runs the behavioural suite on them (see
//! [`default_backend`]).
//!
//! Everything here works from `#[tokio::test(flavor = "multi_thread")]` tests. Process
//! control ([`TestServer::start`], [`TestServer::terminate`], ...) is synchronous and
//! blocks the calling thread briefly; the client calls are async.

pub mod engines;
pub mod push;
pub mod s3;
mod server;

pub use engines::{
    engines_available, missing_engines, shared_engines, ClusterSpec, Engines, BACKEND_ENV,
};
pub use s3::{s3s_fs_available, S3Server};
pub use server::{
    cluster_env, default_backend, parlor_bin, relaxed_rate_limits, Backend, ServerOptions,
    TestServer, RELAXED_RATE_RULES,
};

use anyhow::Context;
use parlor_client::proto::rest::{TokenPair, UserView};
use parlor_client::Http;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub use parlor_client;

/// The password [`user`] registers with.
pub const PASSWORD: &str = "correct horse battery";

/// Registers `name` with [`PASSWORD`] and logs in (no device name).
pub async fn user(http: &Http, name: &str) -> anyhow::Result<(UserView, TokenPair)> {
    let user = http
        .register(name, PASSWORD)
        .await
        .with_context(|| format!("register {name}"))?;
    let tokens = http
        .login(name, PASSWORD, None)
        .await
        .with_context(|| format!("login {name}"))?;
    Ok((user, tokens))
}

/// A valid, unique username: the prefix (lower-cased, reduced to `a-z`, `0-9`, `_`) plus
/// `_` and a suffix unique within the process and unlikely to repeat across processes.
/// At most 32 characters.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        splitmix(nanos ^ (u64::from(std::process::id()) << 32)) % 36u64.pow(5)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("{:0>5}{}", base36(seed), base36(n));

    let mut head: String = prefix
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .skip_while(|c| *c == '_')
        .collect();
    if head.is_empty() {
        head.push('u');
    }
    head.truncate(32usize.saturating_sub(suffix.len() + 1).max(1));
    format!("{head}_{suffix}")
}

/// Writes a fresh self-signed certificate for `localhost` and `127.0.0.1` into `dir`
/// (`cert.pem`, `key.pem`); returns both paths and the certificate PEM, which clients
/// use as their only trusted root.
pub fn self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, Vec<u8>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .context("generate self-signed certificate")?;
    let cert_pem = cert.pem();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &cert_pem)
        .with_context(|| format!("write {}", cert_path.display()))?;
    std::fs::write(&key_path, signing_key.serialize_pem())
        .with_context(|| format!("write {}", key_path.display()))?;
    Ok((cert_path, key_path, cert_pem.into_bytes()))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let long = "A Very-Long Prefix That Exceeds The Limit By Far";
        let names: Vec<String> = ["alice", "", "__x", long, "Ünïcode"]
            .iter()
            .map(|p| unique_name(p))
            .collect();
        for n in &names {
            assert!((3..=32).contains(&n.len()), "{n}");
            assert!(n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert!(n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()));
        }
        assert!(names[0].starts_with("alice_"));
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len());
    }

    #[test]
    fn self_signed_writes_pem_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (cert, key, pem) = self_signed(dir.path())?;
        assert!(std::fs::read_to_string(cert)?.contains("BEGIN CERTIFICATE"));
        assert!(std::fs::read_to_string(key)?.contains("PRIVATE KEY"));
        assert!(parlor_client::tls::client_config(&pem).is_ok());
        Ok(())
    }
}
