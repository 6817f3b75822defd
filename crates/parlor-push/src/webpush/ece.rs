//! Message encryption for Web Push: RFC 8291 key derivation over the `aes128gcm`
//! content coding of RFC 8188, always as a single record.
//!
//! The derivation is split from the key agreement so that the published example of
//! RFC 8291 (whose sender key ring cannot import) checks every step after the ECDH.

use anyhow::{anyhow, ensure};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// The record size written in the header. Push services need not accept bodies over
/// 4096 bytes, so one record of at most this size always carries the whole message.
pub(crate) const RECORD_SIZE: usize = 4096;
const SALT_LEN: usize = 16;
/// An uncompressed P-256 point, which RFC 8291 requires for both keys.
pub(crate) const POINT_LEN: usize = 65;
pub(crate) const AUTH_LEN: usize = 16;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = SALT_LEN + 4 + 1 + POINT_LEN;
/// The longest plaintext whose encrypted body (header, delimiter and tag included) is
/// at most [`RECORD_SIZE`] bytes.
pub(crate) const MAX_PLAINTEXT: usize = RECORD_SIZE - HEADER_LEN - 1 - TAG_LEN;

/// Encrypts `plaintext` to a subscription with a fresh sender key and salt.
pub(crate) fn encrypt(
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    rng: &SystemRandom,
) -> anyhow::Result<Vec<u8>> {
    let private = EphemeralPrivateKey::generate(&ECDH_P256, rng)
        .map_err(|_| anyhow!("cannot generate an ephemeral key"))?;
    let public = private
        .compute_public_key()
        .map_err(|_| anyhow!("cannot compute the ephemeral public key"))?;
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt)
        .map_err(|_| anyhow!("no randomness for the salt"))?;
    let peer = UnparsedPublicKey::new(&ECDH_P256, ua_public);
    // The shared secret stays inside the closure: ring zeroes it on return, so only
    // the derived content key leaves.
    agree_ephemeral(private, &peer, |secret| {
        seal(secret, ua_public, public.as_ref(), auth, &salt, plaintext)
    })
    .map_err(|_| anyhow!("the subscription key p256dh is not a valid P-256 point"))?
}

/// Whether `point` is a public key ring would agree with: on the curve, not infinity.
pub(crate) fn is_valid_point(point: &[u8]) -> bool {
    let rng = SystemRandom::new();
    let Ok(private) = EphemeralPrivateKey::generate(&ECDH_P256, &rng) else {
        return false;
    };
    agree_ephemeral(private, &UnparsedPublicKey::new(&ECDH_P256, point), |_| ()).is_ok()
}

/// The body for one push, given the outcome of the key agreement.
pub(crate) fn seal(
    ecdh_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    auth: &[u8],
    salt: &[u8; SALT_LEN],
    plaintext: &[u8],
) -> anyhow::Result<Vec<u8>> {
    ensure!(
        plaintext.len() <= MAX_PLAINTEXT,
        "payload of {} bytes exceeds {MAX_PLAINTEXT}",
        plaintext.len()
    );
    ensure!(
        as_public.len() == POINT_LEN,
        "sender key is not an uncompressed point"
    );
    let ikm = input_keying_material(ecdh_secret, auth, ua_public, as_public)?;
    let (cek, nonce) = content_keys(&ikm, salt)?;

    let mut body = Vec::with_capacity(HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&(RECORD_SIZE as u32).to_be_bytes());
    body.push(POINT_LEN as u8);
    body.extend_from_slice(as_public);

    // A single record is also the last one: delimiter 0x02, no padding. The nonce is
    // used as derived, since the XOR with record sequence number 0 leaves it unchanged.
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| anyhow!("bad content key length"))?,
    );
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .map_err(|_| anyhow!("AES-GCM encryption failed"))?;
    body.extend_from_slice(&record);
    Ok(body)
}

/// RFC 8291 section 3.4: IKM = HKDF(salt = auth secret, ikm = ECDH secret,
/// info = "WebPush: info" 0x00 ua_public as_public, L = 32).
fn input_keying_material(
    ecdh_secret: &[u8],
    auth: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
) -> anyhow::Result<[u8; 32]> {
    let prk = Salt::new(HKDF_SHA256, auth).extract(ecdh_secret);
    let mut ikm = [0u8; 32];
    prk.expand(&[b"WebPush: info\0", ua_public, as_public], Len(32))
        .and_then(|okm| okm.fill(&mut ikm))
        .map_err(|_| anyhow!("HKDF expansion failed"))?;
    Ok(ikm)
}

/// RFC 8188 section 2.2: the content encryption key and the nonce from the salt.
fn content_keys(ikm: &[u8; 32], salt: &[u8; SALT_LEN]) -> anyhow::Result<([u8; 16], [u8; 12])> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(&[b"Content-Encoding: aes128gcm\0"], Len(16))
        .and_then(|okm| okm.fill(&mut cek))
        .map_err(|_| anyhow!("HKDF expansion failed"))?;
    prk.expand(&[b"Content-Encoding: nonce\0"], Len(12))
        .and_then(|okm| okm.fill(&mut nonce))
        .map_err(|_| anyhow!("HKDF expansion failed"))?;
    Ok((cek, nonce))
}

/// An output length for ring's HKDF, which takes it as a key type.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).expect("test vector is base64url")
    }

    // RFC 8291 Appendix A. ring cannot import the sender's private key, so the vector
    // is entered at the ECDH secret the RFC lists; everything after it is checked.
    const PLAINTEXT: &[u8] = b"When I grow up, I want to be a watermelon";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const ECDH_SECRET: &str = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs";
    const IKM: &str = "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg";
    const CEK: &str = "oIhVW04MRdy2XN9CiKLxTg";
    const NONCE: &str = "4h_95klXJ5E_qnoN";
    const BODY: &str = concat!(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
        "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT",
        "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
    );

    fn salt() -> [u8; SALT_LEN] {
        b64(SALT).try_into().expect("16-byte salt")
    }

    #[test]
    fn derivation_matches_rfc_8291_intermediate_values() {
        let ikm = input_keying_material(
            &b64(ECDH_SECRET),
            &b64(AUTH),
            &b64(UA_PUBLIC),
            &b64(AS_PUBLIC),
        )
        .expect("ikm");
        assert_eq!(URL_SAFE_NO_PAD.encode(ikm), IKM);
        let (cek, nonce) = content_keys(&ikm, &salt()).expect("content keys");
        assert_eq!(URL_SAFE_NO_PAD.encode(cek), CEK);
        assert_eq!(URL_SAFE_NO_PAD.encode(nonce), NONCE);
    }

    #[test]
    fn body_matches_rfc_8291_example() {
        let body = seal(
            &b64(ECDH_SECRET),
            &b64(UA_PUBLIC),
            &b64(AS_PUBLIC),
            &b64(AUTH),
            &salt(),
            PLAINTEXT,
        )
        .expect("seal");
        assert_eq!(URL_SAFE_NO_PAD.encode(body), BODY);
    }

    #[test]
    fn largest_plaintext_fills_exactly_one_record() {
        let plaintext = vec![b'x'; MAX_PLAINTEXT];
        let body = encrypt(
            &b64(UA_PUBLIC),
            &b64(AUTH),
            &plaintext,
            &SystemRandom::new(),
        )
        .expect("encrypt");
        assert_eq!(body.len(), RECORD_SIZE);
        assert!(encrypt(
            &b64(UA_PUBLIC),
            &b64(AUTH),
            &[plaintext, vec![b'x']].concat(),
            &SystemRandom::new()
        )
        .is_err());
    }

    #[test]
    fn each_push_has_its_own_salt_and_key() {
        let rng = SystemRandom::new();
        let a = encrypt(&b64(UA_PUBLIC), &b64(AUTH), PLAINTEXT, &rng).expect("a");
        let b = encrypt(&b64(UA_PUBLIC), &b64(AUTH), PLAINTEXT, &rng).expect("b");
        assert_ne!(a[..SALT_LEN], b[..SALT_LEN]);
        assert_ne!(a[21..HEADER_LEN], b[21..HEADER_LEN]);
        assert_eq!(a.len(), HEADER_LEN + PLAINTEXT.len() + 1 + TAG_LEN);
    }

    #[test]
    fn points_off_the_curve_are_refused() {
        assert!(is_valid_point(&b64(UA_PUBLIC)));
        let mut bent = b64(UA_PUBLIC);
        bent[64] ^= 1;
        assert!(!is_valid_point(&bent));
        assert!(!is_valid_point(&bent[..33]));
        assert!(encrypt(&bent, &b64(AUTH), PLAINTEXT, &SystemRandom::new()).is_err());
    }
}
