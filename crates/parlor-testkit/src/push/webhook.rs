//! The check a webhook receiver makes, written from the scheme documented in
//! `parlor_push::webhook` (not from its code): `X-Parlor-Signature: v1=<hex>` is
//! HMAC-SHA256 keyed with the secret string's bytes over `<X-Parlor-Timestamp>.<body>`.

use super::fcm::{hex_decode, unix_now};
use super::Recorded;
use anyhow::{ensure, Context};
use ring::hmac;

/// Verifies the signature of a recorded webhook delivery with `secret`, and that its
/// timestamp is within `max_skew_secs` of now.
pub fn verify_signature(
    request: &Recorded,
    secret: &str,
    max_skew_secs: u64,
) -> anyhow::Result<()> {
    let timestamp = request
        .header("x-parlor-timestamp")
        .context("no X-Parlor-Timestamp")?;
    let ts: i64 = timestamp
        .parse()
        .context("X-Parlor-Timestamp is not decimal seconds")?;
    ensure!(
        (ts - unix_now()).unsigned_abs() <= max_skew_secs,
        "timestamp {ts} is more than {max_skew_secs} s from now"
    );
    let signature = request
        .header("x-parlor-signature")
        .context("no X-Parlor-Signature")?;
    let hex = signature
        .strip_prefix("v1=")
        .context("signature is not `v1=<hex>`")?;
    ensure!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "signature is not lowercase hex"
    );
    let tag = hex_decode(hex)?;
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + request.body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(&request.body);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, &signed, &tag).map_err(|_| anyhow::anyhow!("signature does not verify"))
}
