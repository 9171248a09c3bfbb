//! The only module that knows which ciphers kmsfs uses.
//!
//! * AEAD: AES-256-GCM-SIV (RFC 8452) with a 96-bit random nonce. GCM-SIV is nonce-misuse
//!   resistant, so even a repeated random nonce leaks only equality of identical messages.
//! * Passphrase KDF: argon2id.
//! * MAC / hash: HMAC-SHA-256 and SHA-256 (audit chain, name hashing).
//!
//! Key material lives in [`SecretKey`], which zeroizes on drop and never prints itself.

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Length of every symmetric key kmsfs handles (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the random AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the AEAD authentication tag.
pub const TAG_LEN: usize = 16;
/// What [`seal`] adds to a plaintext: nonce in front, tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Authentication failed: the ciphertext, its associated data or the key is not the one
/// it was sealed with. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AuthError;

/// A 256-bit secret key, zeroized on drop. `Debug` never shows the bytes.
#[derive(Clone, Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut key = SecretKey([0; KEY_LEN]);
        fill_random(&mut key.0);
        key
    }

    /// Takes a key from a byte slice; `None` unless it is exactly [`KEY_LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(SecretKey(array))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An AEAD instance for many operations under this key (the key schedule is computed
    /// once). The cipher zeroizes its round keys on drop (`aes`'s zeroize feature, checked
    /// by tests/key_memory.rs).
    pub fn cipher(&self) -> Cipher {
        Cipher(Box::new(Aes256GcmSiv::new((&self.0).into())))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// An expanded AES-256-GCM-SIV key, ready to seal and open.
pub struct Cipher(Box<Aes256GcmSiv>);

impl Cipher {
    /// Seals `plaintext`; returns `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plaintext.len() + SEAL_OVERHEAD];
        self.seal_into(aad, plaintext, &mut out);
        out
    }

    /// Seals `plaintext` into `out`, which must be exactly `plaintext.len() + SEAL_OVERHEAD`
    /// bytes, laid out as `nonce || ciphertext || tag`. No allocation: the block path uses it.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut [u8]) {
        self.seal_into_with(&random_bytes(), aad, plaintext, out);
    }

    /// [`Cipher::seal_into`] with the nonce given, for a caller that draws the nonces of many
    /// blocks with one `getrandom` (a system call per 4 KiB block was ~3 % of a write's
    /// CPU). The nonce must be fresh random bytes, as `seal_into`'s are.
    pub fn seal_into_with(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8], out: &mut [u8]) {
        assert_eq!(out.len(), plaintext.len() + SEAL_OVERHEAD, "seal_into: wrong buffer size");
        let (nonce_out, rest) = out.split_at_mut(NONCE_LEN);
        nonce_out.copy_from_slice(nonce);
        let (body, tag_out) = rest.split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let nonce = Nonce::from(*nonce);
        let tag = self
            .0
            .encrypt_inout_detached(&nonce, aad, body.into())
            .expect("AES-GCM-SIV accepts messages up to 64 GiB");
        tag_out.copy_from_slice(&tag);
    }

    /// Opens `nonce || ciphertext || tag`; returns the plaintext.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let len = sealed.len().checked_sub(SEAL_OVERHEAD).ok_or(AuthError)?;
        let mut out = Zeroizing::new(vec![0u8; len]);
        self.open_into(aad, sealed, &mut out)?;
        Ok(out)
    }

    /// Opens `nonce || ciphertext || tag` into `out` (exactly the plaintext length).
    /// On failure `out` is zeroed, so no unauthenticated byte can escape.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<(), AuthError> {
        if sealed.len() != out.len() + SEAL_OVERHEAD {
            return Err(AuthError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(out.len());
        out.copy_from_slice(body);
        let nonce = Nonce::try_from(nonce).map_err(|_| AuthError)?;
        let tag = Tag::try_from(tag).map_err(|_| AuthError)?;
        if self.0.decrypt_inout_detached(&nonce, aad, (&mut *out).into(), &tag).is_err() {
            out.zeroize();
            return Err(AuthError);
        }
        Ok(())
    }
}

impl Cipher {
    /// Deterministic AEAD: AES-GCM-SIV with an all-zero nonce; returns `ciphertext || tag`.
    /// Equal inputs give equal outputs (needed to look names up) and nothing else leaks:
    /// GCM-SIV derives its synthetic IV from the message, which is what it is built for.
    pub fn seal_deterministic(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plaintext.len() + TAG_LEN];
        let (body, tag_out) = out.split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::default(), aad, body.into())
            .expect("AES-GCM-SIV accepts messages up to 64 GiB");
        tag_out.copy_from_slice(&tag);
        out
    }

    /// Opens the output of [`Cipher::seal_deterministic`].
    pub fn open_deterministic(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        let len = sealed.len().checked_sub(TAG_LEN).ok_or(AuthError)?;
        let mut out = Zeroizing::new(sealed[..len].to_vec());
        let tag = Tag::try_from(&sealed[len..]).map_err(|_| AuthError)?;
        self.0
            .decrypt_inout_detached(&Nonce::default(), aad, out.as_mut_slice().into(), &tag)
            .map_err(|_| AuthError)?;
        Ok(out)
    }
}

/// One-shot seal under `key` (see [`Cipher::seal`]).
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    key.cipher().seal(aad, plaintext)
}

/// One-shot open under `key` (see [`Cipher::open`]).
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    key.cipher().open(aad, sealed)
}

/// Fills `buf` from the operating system's CSPRNG. Failure of the CSPRNG is not something
/// an encryption tool may paper over, so it aborts loudly.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// `N` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill_random(&mut out);
    out
}

/// Cost parameters of argon2id, stored beside the salt in the keystore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a quarter second on the reference machine, in line
    /// with the OWASP recommendation for argon2id.
    fn default() -> Self {
        KdfParams { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

impl KdfParams {
    /// Upper bounds: far above any sensible cost (minutes on a fast machine), low enough
    /// that a keystore edited to absurd costs is refused instead of hanging every command.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    pub const MAX_ITERATIONS: u32 = 100;
    pub const MAX_PARALLELISM: u32 = 64;

    /// Checks the parameters against argon2's own limits and kmsfs's upper bounds, with a
    /// readable message.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(format!(
                "argon2 parameters out of range ({self:?}; at most {} KiB, {} iterations, {} lanes)",
                Self::MAX_MEMORY_KIB,
                Self::MAX_ITERATIONS,
                Self::MAX_PARALLELISM
            ));
        }
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(KEY_LEN))
            .map(|_| ())
            .map_err(|e| format!("invalid argon2 parameters ({self:?}): {e}"))
    }
}

/// Derives a key from a passphrase with argon2id.
pub fn derive_key(passphrase: &[u8], salt: &[u8], params: KdfParams) -> Result<SecretKey, String> {
    params.validate()?;
    let argon_params =
        argon2::Params::new(params.memory_kib, params.iterations, params.parallelism, Some(KEY_LEN))
            .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon.hash_password_into(passphrase, salt, out.as_mut()).map_err(|e| format!("argon2id failed: {e}"))?;
    Ok(SecretKey(*out))
}

/// HMAC-SHA-256 of the concatenation of `parts` (each part is already unambiguous).
pub fn hmac_sha256(key: &SecretKey, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key.as_bytes()).expect("HMAC takes any key size");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Derives an independent key for one purpose from `key` with HKDF-SHA-256 (RFC 5869):
/// `key` is the input key material, `label` the info, no salt (the input is already a
/// uniformly random key). Different labels give unrelated keys, so one key never serves two
/// primitives.
pub fn hkdf_subkey(key: &SecretKey, label: &str) -> SecretKey {
    let mut out = SecretKey([0; KEY_LEN]);
    hkdf::Hkdf::<Sha256>::new(None, key.as_bytes())
        .expand(label.as_bytes(), &mut out.0)
        .expect("HKDF-SHA-256 yields 32 bytes");
    out
}

/// The subkey derivation of keystores made before [`hkdf_subkey`]: HMAC-SHA-256 keyed with
/// `key` itself. Kept only to verify audit events MACed before such a keystore's upgrade.
pub fn legacy_hmac_subkey(key: &SecretKey, label: &str) -> SecretKey {
    let mut bytes = hmac_sha256(key, &[b"kmsfs-subkey\0", label.as_bytes()]);
    let sub = SecretKey(bytes);
    bytes.zeroize();
    sub
}

/// Constant-time comparison, for MACs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let key = SecretKey::random();
        let sealed = seal(&key, b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(&open(&key, b"aad", &sealed).unwrap()[..], b"hello");
        assert_eq!(open(&key, b"other", &sealed), Err(AuthError));
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert_eq!(open(&key, b"aad", &tampered), Err(AuthError));
        assert_eq!(open(&SecretKey::random(), b"aad", &sealed), Err(AuthError));
        assert_eq!(open(&key, b"aad", &sealed[..10]), Err(AuthError));
    }

    #[test]
    fn fresh_nonce_per_seal() {
        let key = SecretKey::random();
        assert_ne!(seal(&key, b"", b"same"), seal(&key, b"", b"same"));
    }

    #[test]
    fn failed_open_leaves_no_plaintext() {
        let key = SecretKey::random();
        let mut sealed = seal(&key, b"", &[7u8; 64]);
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        let mut out = [0xAAu8; 64];
        assert!(key.cipher().open_into(b"", &sealed, &mut out).is_err());
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn kdf_depends_on_passphrase_and_salt() {
        let params = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        let a = derive_key(b"pw", b"saltsaltsaltsalt", params).unwrap();
        let b = derive_key(b"pw", b"saltsaltsaltsalt", params).unwrap();
        let c = derive_key(b"pw2", b"saltsaltsaltsalt", params).unwrap();
        let d = derive_key(b"pw", b"SALTsaltsaltsalt", params).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_ne!(a.as_bytes(), c.as_bytes());
        assert_ne!(a.as_bytes(), d.as_bytes());
        assert!(KdfParams { memory_kib: 1, iterations: 1, parallelism: 1 }.validate().is_err());
    }

    /// Compiles only while every type that holds key material or state derived from it wipes
    /// itself on drop, which `aes`, `sha2` and `block-buffer` do only with their zeroize
    /// features. An HMAC-SHA-256 state is two SHA-256 cores (the key's inner and outer pads
    /// absorbed) and a block buffer; `Hmac` itself has no marker trait. POLYVAL wipes itself
    /// under its own feature with no trait to show it. tests/key_memory.rs checks the AES
    /// schedule in freed memory.
    #[test]
    fn every_key_holding_type_zeroizes_on_drop() {
        fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroizes_on_drop::<aes::Aes256>();
        zeroizes_on_drop::<<Sha256 as sha2::digest::block_api::EagerHash>::Core>();
        zeroizes_on_drop::<Sha256>();
        zeroizes_on_drop::<SecretKey>();
    }

    #[test]
    fn hkdf_subkeys_match_rfc_5869_and_differ_by_label() {
        // RFC 5869 has no vector with an empty salt and a 32-byte input; check the
        // construction directly: PRK = HMAC(zeros, IKM), OKM = HMAC(PRK, info || 0x01).
        let root = SecretKey::from_slice(&[0x0b; 32]).unwrap();
        let prk =
            <Hmac<Sha256>>::new_from_slice(&[0u8; 32]).unwrap().chain_update(root.as_bytes()).finalize();
        let prk = SecretKey::from_slice(&prk.into_bytes()).unwrap();
        let okm = hmac_sha256(&prk, &[b"label", &[1]]);
        assert_eq!(hkdf_subkey(&root, "label").as_bytes(), &okm);
        assert_ne!(hkdf_subkey(&root, "a").as_bytes(), hkdf_subkey(&root, "b").as_bytes());
        assert_ne!(hkdf_subkey(&root, "a").as_bytes(), root.as_bytes());
    }

    #[test]
    fn debug_does_not_show_key_bytes() {
        let key = SecretKey::from_slice(&[0x41; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "SecretKey(<redacted>)");
    }
}
