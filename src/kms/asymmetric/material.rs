//! The key material of asymmetric and HMAC keys, and the cryptography done with it, all by
//! the system OpenSSL (constant-time RSA, every curve kmsfs offers, HMAC).
//!
//! Private keys are kept as OpenSSL keys (whose private numbers OpenSSL clears when it
//! frees them) and are serialized only as PKCS#8 DER into zeroized buffers, to be sealed by
//! the root key. HMAC keys are zeroized bytes. Nothing here returns a private key to a
//! caller of the service: only `to_pkcs8` (for sealing) and data key pairs, which are made
//! for the caller, serialize one.

use openssl::bn::BigNumContext;
use openssl::ec::{Asn1Flag, EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use zeroize::Zeroizing;

use super::spec::{oaep_max_plaintext, Curve, Digest, KeySpec, Scheme, SigningAlgorithm};
use crate::error::{Error, Result};

/// A key's secret: a private key or HMAC key bytes. (No `Debug`: it is secret.)
pub enum KeyMaterial {
    Private(PKey<Private>),
    Hmac(Zeroizing<Vec<u8>>),
}

fn ssl_err(what: &str, e: openssl::error::ErrorStack) -> Error {
    Error::Io(format!("OpenSSL failed to {what}: {e}"))
}

fn nid(curve: Curve) -> Nid {
    match curve {
        Curve::P256 => Nid::X9_62_PRIME256V1,
        Curve::P384 => Nid::SECP384R1,
        Curve::P521 => Nid::SECP521R1,
        Curve::Secp256k1 => Nid::SECP256K1,
        Curve::Ed25519 => Nid::UNDEF,
    }
}

/// A fresh private key of `spec` (RSA or ECC).
pub fn generate_private(spec: KeySpec) -> Result<PKey<Private>> {
    let gen = |what| move |e| ssl_err(what, e);
    match spec {
        KeySpec::Rsa(bits) => {
            let rsa = Rsa::generate(bits).map_err(gen("generate an RSA key"))?;
            PKey::from_rsa(rsa).map_err(gen("wrap an RSA key"))
        }
        KeySpec::Ecc(Curve::Ed25519) => PKey::generate_ed25519().map_err(gen("generate an Ed25519 key")),
        KeySpec::Ecc(curve) => {
            let mut group = EcGroup::from_curve_name(nid(curve)).map_err(gen("load a curve"))?;
            // Named curves in every encoding, as AWS's public keys have them.
            group.set_asn1_flag(Asn1Flag::NAMED_CURVE);
            let key = EcKey::generate(&group).map_err(gen("generate an EC key"))?;
            PKey::from_ec_key(key).map_err(gen("wrap an EC key"))
        }
        other => Err(Error::InvalidArgument(format!("{} keys have no key pair", other.as_str()))),
    }
}

impl KeyMaterial {
    /// Fresh material for a key of `spec`.
    pub fn generate(spec: KeySpec) -> Result<KeyMaterial> {
        match spec.hmac_key_len() {
            Some(len) => {
                let mut bytes = Zeroizing::new(vec![0u8; len]);
                crate::crypto::fill_random(&mut bytes);
                Ok(KeyMaterial::Hmac(bytes))
            }
            None => Ok(KeyMaterial::Private(generate_private(spec)?)),
        }
    }

    /// The stored form: PKCS#8 DER of a private key, or the HMAC key bytes.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        match self {
            KeyMaterial::Private(pkey) => to_pkcs8(pkey),
            KeyMaterial::Hmac(bytes) => Ok(bytes.clone()),
        }
    }

    /// Material of a key of `spec` from its stored form.
    pub fn from_bytes(spec: KeySpec, bytes: &[u8]) -> Result<KeyMaterial> {
        if let Some(len) = spec.hmac_key_len() {
            if bytes.len() != len {
                return Err(Error::CorruptMaterial(format!("an {} key is not {len} bytes", spec.as_str())));
            }
            return Ok(KeyMaterial::Hmac(Zeroizing::new(bytes.to_vec())));
        }
        let pkey = PKey::private_key_from_pkcs8(bytes).map_err(|_| {
            Error::CorruptMaterial(format!("a stored {} private key does not parse", spec.as_str()))
        })?;
        Ok(KeyMaterial::Private(pkey))
    }

    /// Whether this material is a key of `spec` (type, size, curve): an imported private key
    /// that parses may still be of another kind.
    pub fn matches_spec(&self, spec: KeySpec) -> bool {
        match (self, spec) {
            (KeyMaterial::Hmac(bytes), KeySpec::Hmac(_)) => spec.hmac_key_len() == Some(bytes.len()),
            (KeyMaterial::Private(pkey), KeySpec::Rsa(bits)) => pkey.id() == Id::RSA && pkey.bits() == bits,
            (KeyMaterial::Private(pkey), KeySpec::Ecc(Curve::Ed25519)) => pkey.id() == Id::ED25519,
            (KeyMaterial::Private(pkey), KeySpec::Ecc(curve)) => {
                pkey.ec_key().ok().and_then(|k| k.group().curve_name()).is_some_and(|n| n == nid(curve))
            }
            _ => false,
        }
    }

    fn private(&self) -> Result<&PKey<Private>> {
        match self {
            KeyMaterial::Private(p) => Ok(p),
            KeyMaterial::Hmac(_) => Err(Error::InvalidArgument("an HMAC key has no key pair".into())),
        }
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Result<Vec<u8>> {
        self.private()?.public_key_to_der().map_err(|e| ssl_err("encode a public key", e))
    }

    /// Signs a message (`is_digest`: already hashed with the algorithm's digest).
    pub fn sign(&self, alg: SigningAlgorithm, message: &[u8], is_digest: bool) -> Result<Vec<u8>> {
        let pkey = self.private()?;
        let err = |e| ssl_err("sign", e);
        if alg.scheme == Scheme::Ed25519 {
            let mut signer = Signer::new_without_digest(pkey).map_err(err)?;
            return signer.sign_oneshot_to_vec(message).map_err(err);
        }
        let digest = digest_of(alg.digest, message, is_digest)?;
        let mut ctx = PkeyCtx::new(pkey).map_err(err)?;
        ctx.sign_init().map_err(err)?;
        configure(&mut ctx, alg)?;
        let mut sig = Vec::new();
        ctx.sign_to_vec(&digest, &mut sig).map_err(err)?;
        Ok(sig)
    }

    /// Whether `signature` is valid for the message under this key's public key.
    pub fn verify(
        &self,
        alg: SigningAlgorithm,
        message: &[u8],
        is_digest: bool,
        signature: &[u8],
    ) -> Result<bool> {
        verify_with(self.private()?, alg, message, is_digest, signature)
    }

    /// RSA-OAEP decryption with `digest` for OAEP and MGF1.
    pub fn rsa_decrypt(&self, digest: Digest, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let pkey = self.private()?;
        let bad = || Error::InvalidCiphertext("the ciphertext does not decrypt under this RSA key".into());
        let mut ctx = PkeyCtx::new(pkey).map_err(|e| ssl_err("decrypt", e))?;
        ctx.decrypt_init().map_err(|e| ssl_err("decrypt", e))?;
        oaep(&mut ctx, digest)?;
        let mut out = Zeroizing::new(Vec::new());
        ctx.decrypt_to_vec(ciphertext, &mut out).map_err(|_| bad())?;
        Ok(out)
    }

    /// RSA-OAEP encryption under this key's public key, within AWS's plaintext limits.
    pub fn rsa_encrypt(&self, digest: Digest, plaintext: &[u8]) -> Result<Vec<u8>> {
        let pkey = self.private()?;
        let bits = pkey.bits();
        let max = oaep_max_plaintext(bits, digest);
        if plaintext.len() > max {
            return Err(Error::InvalidArgument(format!(
                "the plaintext is {} bytes; RSA_{bits} with OAEP and SHA-{} takes at most {max}",
                plaintext.len(),
                if digest == Digest::Sha1 { 1 } else { 256 }
            )));
        }
        let mut ctx = PkeyCtx::new(pkey).map_err(|e| ssl_err("encrypt", e))?;
        ctx.encrypt_init().map_err(|e| ssl_err("encrypt", e))?;
        oaep(&mut ctx, digest)?;
        let mut out = Vec::new();
        ctx.encrypt_to_vec(plaintext, &mut out).map_err(|e| ssl_err("encrypt", e))?;
        Ok(out)
    }

    /// HMAC of `message` with this key.
    pub fn mac(&self, digest: Digest, message: &[u8]) -> Result<Vec<u8>> {
        let KeyMaterial::Hmac(key) = self else {
            return Err(Error::InvalidArgument("only an HMAC key makes MACs".into()));
        };
        let err = |e| ssl_err("compute an HMAC", e);
        let pkey = PKey::hmac(key).map_err(err)?;
        let mut signer = Signer::new(digest.md(), &pkey).map_err(err)?;
        signer.update(message).map_err(err)?;
        signer.sign_to_vec().map_err(err)
    }

    /// Whether `mac` is this key's HMAC of `message` (compared in constant time).
    pub fn verify_mac(&self, digest: Digest, message: &[u8], mac: &[u8]) -> Result<bool> {
        let expected = self.mac(digest, message)?;
        Ok(expected.len() == mac.len() && openssl::memcmp::eq(&expected, mac))
    }

    /// ECDH with the peer's public key (DER SubjectPublicKeyInfo) on this key's curve:
    /// the shared secret Z (the x coordinate), as AWS returns it.
    pub fn derive_shared_secret(&self, peer_der: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let pkey = self.private()?;
        let invalid = |why: &str| Error::InvalidArgument(format!("the PublicKey is not valid: {why}"));
        let peer =
            PKey::public_key_from_der(peer_der).map_err(|_| invalid("not a DER SubjectPublicKeyInfo"))?;
        if peer.id() != Id::EC {
            return Err(invalid("not an elliptic-curve key"));
        }
        let (mine, theirs) = (pkey.ec_key(), peer.ec_key());
        let (Ok(mine), Ok(theirs)) = (mine, theirs) else { return Err(invalid("not an elliptic-curve key")) };
        if mine.group().curve_name() != theirs.group().curve_name() {
            return Err(invalid("it is on another curve than the KMS key"));
        }
        let mut bn = BigNumContext::new().map_err(|e| ssl_err("check a point", e))?;
        let on_curve = theirs.public_key().is_on_curve(theirs.group(), &mut bn).unwrap_or(false);
        if !on_curve || theirs.check_key().is_err() {
            return Err(invalid("the point is not on the curve"));
        }
        let mut deriver = openssl::derive::Deriver::new(pkey).map_err(|e| ssl_err("derive", e))?;
        deriver.set_peer(&peer).map_err(|_| invalid("ECDH refused it"))?;
        deriver.derive_to_vec().map(Zeroizing::new).map_err(|_| invalid("ECDH refused it"))
    }
}

/// PKCS#8 DER of a private key, in a zeroized buffer.
pub fn to_pkcs8(pkey: &PKey<Private>) -> Result<Zeroizing<Vec<u8>>> {
    pkey.private_key_to_pkcs8().map(Zeroizing::new).map_err(|e| ssl_err("encode a private key", e))
}

/// The digest to sign: the message hashed, or, for a DIGEST, the message itself if it has
/// the digest's exact length (ValidationException otherwise, as AWS).
fn digest_of(digest: Digest, message: &[u8], is_digest: bool) -> Result<Zeroizing<Vec<u8>>> {
    if is_digest {
        if message.len() != digest.size() {
            return Err(Error::InvalidArgument(format!(
                "Digest is invalid length for algorithm: the message is {} bytes, the digest {}",
                message.len(),
                digest.size()
            )));
        }
        return Ok(Zeroizing::new(message.to_vec()));
    }
    let hashed = openssl::hash::hash(digest.md(), message).map_err(|e| ssl_err("hash", e))?;
    Ok(Zeroizing::new(hashed.to_vec()))
}

fn configure<T>(ctx: &mut PkeyCtx<T>, alg: SigningAlgorithm) -> Result<()> {
    let err = |e| ssl_err("set up a signature", e);
    let md = openssl::md::Md::fetch(None, md_name(alg.digest), None).map_err(err)?;
    match alg.scheme {
        Scheme::Pkcs1v15 => ctx.set_rsa_padding(Padding::PKCS1).map_err(err)?,
        Scheme::Pss => {
            ctx.set_rsa_padding(Padding::PKCS1_PSS).map_err(err)?;
            ctx.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).map_err(err)?;
            ctx.set_rsa_mgf1_md(&md).map_err(err)?;
        }
        Scheme::Ecdsa | Scheme::Ed25519 => {}
    }
    ctx.set_signature_md(&md).map_err(err)
}

fn md_name(d: Digest) -> &'static str {
    match d {
        Digest::Sha1 => "SHA1",
        Digest::Sha224 => "SHA224",
        Digest::Sha256 => "SHA256",
        Digest::Sha384 => "SHA384",
        Digest::Sha512 => "SHA512",
    }
}

fn oaep<T>(ctx: &mut PkeyCtx<T>, digest: Digest) -> Result<()> {
    let err = |e| ssl_err("set up RSA-OAEP", e);
    let md = openssl::md::Md::fetch(None, md_name(digest), None).map_err(err)?;
    ctx.set_rsa_padding(Padding::PKCS1_OAEP).map_err(err)?;
    ctx.set_rsa_oaep_md(&md).map_err(err)?;
    ctx.set_rsa_mgf1_md(&md).map_err(err)
}

/// Verifies a signature with a public key (a malformed signature is simply invalid).
pub fn verify_with<T: HasPublic>(
    public: &PKeyRef<T>,
    alg: SigningAlgorithm,
    message: &[u8],
    is_digest: bool,
    signature: &[u8],
) -> Result<bool> {
    let err = |e| ssl_err("verify", e);
    if alg.scheme == Scheme::Ed25519 {
        let mut verifier = Verifier::new_without_digest(public).map_err(err)?;
        return Ok(verifier.verify_oneshot(signature, message).unwrap_or(false));
    }
    let digest = digest_of(alg.digest, message, is_digest)?;
    let mut ctx = PkeyCtx::new(public).map_err(err)?;
    ctx.verify_init().map_err(err)?;
    configure(&mut ctx, alg)?;
    Ok(ctx.verify(&digest, signature).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::super::spec::SigningAlgorithm;
    use super::*;

    #[test]
    fn every_signing_algorithm_signs_and_verifies_and_a_flipped_bit_fails() {
        for spec in [
            KeySpec::Rsa(2048),
            KeySpec::Ecc(Curve::P256),
            KeySpec::Ecc(Curve::P384),
            KeySpec::Ecc(Curve::P521),
            KeySpec::Ecc(Curve::Secp256k1),
            KeySpec::Ecc(Curve::Ed25519),
        ] {
            let key = KeyMaterial::generate(spec).unwrap();
            let again = KeyMaterial::from_bytes(spec, &key.to_bytes().unwrap()).unwrap();
            for name in spec.signing_algorithms() {
                let alg = SigningAlgorithm::parse(name).unwrap();
                let mut sig = key.sign(alg, b"message", false).unwrap();
                assert!(again.verify(alg, b"message", false, &sig).unwrap(), "{name}");
                assert!(!again.verify(alg, b"messagE", false, &sig).unwrap(), "{name}");
                let last = sig.len() - 1;
                sig[last] ^= 1;
                assert!(!again.verify(alg, b"message", false, &sig).unwrap(), "{name}");
            }
        }
    }

    #[test]
    fn a_digest_must_have_the_digests_length() {
        let key = KeyMaterial::generate(KeySpec::Ecc(Curve::P256)).unwrap();
        let alg = SigningAlgorithm::parse("ECDSA_SHA_256").unwrap();
        assert!(key.sign(alg, &[7u8; 31], true).is_err());
        let sig = key.sign(alg, &[7u8; 32], true).unwrap();
        assert!(key.verify(alg, &[7u8; 32], true, &sig).unwrap());
    }

    #[test]
    fn rsa_oaep_round_trips_within_the_limit() {
        let key = KeyMaterial::generate(KeySpec::Rsa(2048)).unwrap();
        for (digest, max) in [(Digest::Sha1, 214), (Digest::Sha256, 190)] {
            let ct = key.rsa_encrypt(digest, &vec![1u8; max]).unwrap();
            assert_eq!(&key.rsa_decrypt(digest, &ct).unwrap()[..], &vec![1u8; max][..]);
            assert!(key.rsa_encrypt(digest, &vec![1u8; max + 1]).is_err());
        }
    }

    #[test]
    fn ecdh_agrees_and_refuses_another_curve() {
        let a = KeyMaterial::generate(KeySpec::Ecc(Curve::P256)).unwrap();
        let b = KeyMaterial::generate(KeySpec::Ecc(Curve::P256)).unwrap();
        let other = KeyMaterial::generate(KeySpec::Ecc(Curve::P384)).unwrap();
        let ab = a.derive_shared_secret(&b.public_key_der().unwrap()).unwrap();
        let ba = b.derive_shared_secret(&a.public_key_der().unwrap()).unwrap();
        assert_eq!(&ab[..], &ba[..]);
        assert_eq!(ab.len(), 32);
        assert!(a.derive_shared_secret(&other.public_key_der().unwrap()).is_err());
        assert!(a.derive_shared_secret(b"not der").is_err());
    }

    #[test]
    fn hmac_verifies_and_a_flipped_bit_fails() {
        let key = KeyMaterial::generate(KeySpec::Hmac(224)).unwrap();
        let mut mac = key.mac(Digest::Sha224, b"m").unwrap();
        assert_eq!(mac.len(), 28);
        assert!(key.verify_mac(Digest::Sha224, b"m", &mac).unwrap());
        mac[0] ^= 0x80;
        assert!(!key.verify_mac(Digest::Sha224, b"m", &mac).unwrap());
    }

    /// The other direction of interoperability: what the `openssl` tool signs with a key's
    /// PKCS#8 form (as GenerateDataKeyPair hands it out) verifies here.
    #[test]
    fn signatures_made_by_the_openssl_tool_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (key_path, msg, sig) = (dir.path().join("k.der"), dir.path().join("m"), dir.path().join("s"));
        std::fs::write(&msg, b"signed by openssl").unwrap();
        for (spec, alg, args) in [
            (KeySpec::Rsa(2048), "RSASSA_PKCS1_V1_5_SHA_256", &["dgst", "-sha256"][..]),
            (
                KeySpec::Rsa(2048),
                "RSASSA_PSS_SHA_512",
                &["dgst", "-sha512", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
                    [..],
            ),
            (KeySpec::Ecc(Curve::P384), "ECDSA_SHA_384", &["dgst", "-sha384"][..]),
            (KeySpec::Ecc(Curve::Secp256k1), "ECDSA_SHA_256", &["dgst", "-sha256"][..]),
            (KeySpec::Ecc(Curve::Ed25519), "ED25519_SHA_512", &["pkeyutl", "-rawin"][..]),
        ] {
            let key = KeyMaterial::generate(spec).unwrap();
            std::fs::write(&key_path, &*key.to_bytes().unwrap()).unwrap();
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(args).arg("-keyform").arg("DER");
            if args[0] == "dgst" {
                cmd.arg("-sign").arg(&key_path).arg("-out").arg(&sig).arg(&msg);
            } else {
                cmd.arg("-sign").arg("-inkey").arg(&key_path).arg("-in").arg(&msg).arg("-out").arg(&sig);
            }
            let out = cmd.output().expect("the openssl tool (scripts/install-deps.sh installs it)");
            assert!(out.status.success(), "{alg}: {}", String::from_utf8_lossy(&out.stderr));
            let alg = SigningAlgorithm::parse(alg).unwrap();
            let signature = std::fs::read(&sig).unwrap();
            assert!(key.verify(alg, b"signed by openssl", false, &signature).unwrap(), "{}", alg.name);
            assert!(!key.verify(alg, b"signed by openssl!", false, &signature).unwrap(), "{}", alg.name);
        }
    }
}
