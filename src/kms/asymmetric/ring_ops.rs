//! The operations of asymmetric and HMAC keys on the API server's key ring: each resolves
//! the key, checks its state and the caller's permission like every data-plane call, checks
//! the key's usage and algorithm, and leaves one audit event.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::material::{generate_private, to_pkcs8, KeyMaterial};
use super::spec::{mac_digest, oaep_digest, KeySpec, KeyUsage, SigningAlgorithm};
use super::{wrong_usage, PublicKeyInfo};
use crate::error::{Error, Result};
use crate::keystore::records::KeyRecord;
use crate::kms::aws_errors::{INVALID_KEY_USAGE, INVALID_MAC, INVALID_SIGNATURE, UNSUPPORTED};
use crate::kms::blob::{self, BlobHeader};
use crate::kms::keyring::KeyRing;
use crate::kms::{AuditEvent, EncryptionContext, Principal};

/// A key ready for one use: its id, spec, material, and the permission that allowed it.
struct Usable {
    key_id: String,
    spec: KeySpec,
    material: Arc<KeyMaterial>,
    why: String,
}

/// What GenerateDataKeyPair returns. (No `Debug`: it holds a private key.)
pub struct DataKeyPair {
    pub key_id: String,
    /// PKCS#8 DER; `None` for GenerateDataKeyPairWithoutPlaintext.
    pub private_plaintext: Option<Zeroizing<Vec<u8>>>,
    /// The private key sealed under the symmetric key, as a Decrypt blob.
    pub private_blob: Vec<u8>,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
}

impl KeyRing {
    /// Resolves `key_ref`, records it in `event`, and authorizes `action` on it for the
    /// caller. Returns the key and why it was allowed.
    fn permitted_key(
        &self,
        caller: &Principal,
        key_ref: &str,
        action: &str,
        ctx: &EncryptionContext,
        event: &mut AuditEvent,
    ) -> Result<(KeyRecord, String)> {
        let key_id = self.resolve(key_ref)?;
        event.key_id = Some(key_id.clone());
        self.permitted_at(caller, None, &key_id, action, ctx)
    }

    /// Resolves, authorizes and checks the usage of a key for `operation`.
    fn usable(
        &self,
        caller: &Principal,
        key_ref: &str,
        operation: &str,
        usage: KeyUsage,
        event: &mut AuditEvent,
    ) -> Result<Usable> {
        let action = format!("kms:{operation}");
        let (key, why) = self.permitted_key(caller, key_ref, &action, &EncryptionContext::new(), event)?;
        let key_id = key.key_id.clone();
        match self.asymmetric(&key)? {
            Some((spec, have, material)) if have == usage => Ok(Usable { key_id, spec, material, why }),
            Some((spec, have, _)) => Err(wrong_usage(&key_id, spec, have, operation)),
            None => Err(wrong_usage(&key_id, KeySpec::Symmetric, KeyUsage::EncryptDecrypt, operation)),
        }
    }

    fn audited_op<T>(
        &self,
        caller: &Principal,
        operation: &str,
        key_ref: &str,
        body: impl FnOnce(&mut AuditEvent) -> Result<(T, String)>,
    ) -> Result<T> {
        self.api_audited(caller, operation, Some(key_ref), &EncryptionContext::new(), body)
    }

    /// One audited use of a key with a named algorithm, the shape of Sign, Verify, RSA
    /// Encrypt/Decrypt, GenerateMac and VerifyMac: the key must be usable for `operation`,
    /// `pick` turns `algorithm` into what the key's spec offers under that name (or refuses
    /// it), the audit event names the algorithm, and `body` does the work. Returns the key
    /// id and what `body` returned.
    fn with_algorithm<A, T>(
        &self,
        caller: &Principal,
        key_ref: &str,
        (operation, usage): (&str, KeyUsage),
        algorithm: &str,
        pick: impl FnOnce(KeySpec) -> Result<A>,
        body: impl FnOnce(&Usable, A) -> Result<T>,
    ) -> Result<(String, T)> {
        self.audited_op(caller, operation, key_ref, |event| {
            let key = self.usable(caller, key_ref, operation, usage, event)?;
            let alg = pick(key.spec)?;
            event.reason = algorithm.to_string();
            let out = body(&key, alg)?;
            Ok(((key.key_id, out), key.why))
        })
    }

    /// Sign: a signature of `message` (or of the digest it is, with `is_digest`).
    pub fn sign(
        &self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        message: &[u8],
        is_digest: bool,
    ) -> Result<(String, Vec<u8>)> {
        let pick = |spec| signing_algorithm(algorithm, spec, is_digest);
        self.with_algorithm(caller, key_ref, ("Sign", KeyUsage::SignVerify), algorithm, pick, |key, alg| {
            key.material.sign(alg, message, is_digest)
        })
    }

    /// Verify: Ok if `signature` is valid, KMSInvalidSignatureException if not.
    pub fn verify(
        &self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        message: &[u8],
        is_digest: bool,
        signature: &[u8],
    ) -> Result<String> {
        let pick = |spec| signing_algorithm(algorithm, spec, is_digest);
        let usage = KeyUsage::SignVerify;
        let (key_id, ()) =
            self.with_algorithm(caller, key_ref, ("Verify", usage), algorithm, pick, |key, alg| {
                let valid = key.material.verify(alg, message, is_digest, signature)?;
                valid_or(valid, || {
                    format!(
                        "{INVALID_SIGNATURE}the signature does not verify with key {} and {algorithm}",
                        key.key_id
                    )
                })
            })?;
        Ok(key_id)
    }

    /// GetPublicKey: the DER SubjectPublicKeyInfo of an RSA or ECC key.
    pub fn get_public_key(&self, caller: &Principal, key_ref: &str) -> Result<PublicKeyInfo> {
        self.audited_op(caller, "GetPublicKey", key_ref, |event| {
            let ctx = EncryptionContext::new();
            let (key, why) = self.permitted_key(caller, key_ref, "kms:GetPublicKey", &ctx, event)?;
            let key_id = key.key_id.clone();
            let Some((spec, usage, material)) = self.asymmetric(&key)?.filter(|(s, _, _)| s.is_asymmetric())
            else {
                let (spec, _) = self.key_spec(&key_id)?;
                return Err(Error::InvalidArgument(format!(
                    "{UNSUPPORTED}key {key_id} is a {} key; only RSA and ECC keys have a public key",
                    spec.as_str()
                )));
            };
            let public_key = material.public_key_der()?;
            Ok((PublicKeyInfo { key_id, key_spec: spec, key_usage: usage, public_key }, why))
        })
    }

    /// Encrypt with an RSA ENCRYPT_DECRYPT key (RSAES_OAEP_SHA_1 / _256).
    pub fn rsa_encrypt(
        &self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        plaintext: &[u8],
    ) -> Result<(String, Vec<u8>)> {
        let pick = |spec| rsa_algorithm(algorithm, spec);
        self.with_algorithm(
            caller,
            key_ref,
            ("Encrypt", KeyUsage::EncryptDecrypt),
            algorithm,
            pick,
            |key, digest| key.material.rsa_encrypt(digest, plaintext),
        )
    }

    /// Decrypt with an RSA ENCRYPT_DECRYPT key.
    pub fn rsa_decrypt(
        &self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        ciphertext: &[u8],
    ) -> Result<(String, Zeroizing<Vec<u8>>)> {
        let pick = |spec| rsa_algorithm(algorithm, spec);
        self.with_algorithm(
            caller,
            key_ref,
            ("Decrypt", KeyUsage::EncryptDecrypt),
            algorithm,
            pick,
            |key, digest| key.material.rsa_decrypt(digest, ciphertext),
        )
    }

    /// GenerateMac with an HMAC key.
    pub fn generate_mac(
        &self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        message: &[u8],
    ) -> Result<(String, Vec<u8>)> {
        let pick = |spec| mac_algorithm(algorithm, spec);
        let usage = KeyUsage::GenerateVerifyMac;
        self.with_algorithm(caller, key_ref, ("GenerateMac", usage), algorithm, pick, |key, digest| {
            key.material.mac(digest, message)
        })
    }

    /// VerifyMac: Ok if `mac` is right, KMSInvalidMacException if not.
    pub fn verify_mac(
        &self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        message: &[u8],
        mac: &[u8],
    ) -> Result<String> {
        let pick = |spec| mac_algorithm(algorithm, spec);
        let usage = KeyUsage::GenerateVerifyMac;
        let (key_id, ()) =
            self.with_algorithm(caller, key_ref, ("VerifyMac", usage), algorithm, pick, |key, digest| {
                let valid = key.material.verify_mac(digest, message, mac)?;
                valid_or(valid, || format!("{INVALID_MAC}the MAC does not verify with key {}", key.key_id))
            })?;
        Ok(key_id)
    }

    /// DeriveSharedSecret: ECDH of a KEY_AGREEMENT key with the peer's public key.
    pub fn derive_shared_secret(
        &self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        peer_public_key: &[u8],
    ) -> Result<(String, Zeroizing<Vec<u8>>)> {
        self.audited_op(caller, "DeriveSharedSecret", key_ref, |event| {
            let key = self.usable(caller, key_ref, "DeriveSharedSecret", KeyUsage::KeyAgreement, event)?;
            if algorithm != "ECDH" {
                return Err(Error::InvalidArgument(format!(
                    "{INVALID_KEY_USAGE}the key agreement algorithm {algorithm} is not ECDH"
                )));
            }
            Ok(((key.key_id, key.material.derive_shared_secret(peer_public_key)?), key.why))
        })
    }

    /// GenerateDataKeyPair(WithoutPlaintext): a fresh key pair of `pair_spec` whose private
    /// key is sealed under the symmetric key `key_ref` with `ctx`.
    pub fn generate_data_key_pair(
        &self,
        caller: &Principal,
        key_ref: &str,
        pair_spec: KeySpec,
        ctx: &EncryptionContext,
        with_plaintext: bool,
    ) -> Result<DataKeyPair> {
        let operation =
            if with_plaintext { "GenerateDataKeyPair" } else { "GenerateDataKeyPairWithoutPlaintext" };
        self.api_audited(caller, operation, Some(key_ref), ctx, |event| {
            let (key, why) = self.permitted_key(caller, key_ref, &format!("kms:{operation}"), ctx, event)?;
            let key_id = key.key_id.clone();
            event.reason = pair_spec.as_str().to_string();
            let cipher = self.material(&key, key.current_version)?;
            let private = generate_private(pair_spec)?;
            let der = to_pkcs8(&private)?;
            let public_key = private.public_key_to_der().map_err(|e| Error::Io(format!("OpenSSL: {e}")))?;
            let header = BlobHeader { key_id: key_id.clone(), key_version: key.current_version };
            let private_blob = blob::seal(&cipher, &header, &ctx.encode(), &der);
            let private_plaintext = with_plaintext.then_some(der);
            Ok((DataKeyPair { key_id, private_plaintext, private_blob, public_key }, why))
        })
    }
}

/// Ok for a signature or MAC that verified; else the refusal `why` words (its prefix names
/// the AWS exception).
fn valid_or(valid: bool, why: impl FnOnce() -> String) -> Result<()> {
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(why()))
    }
}

fn signing_algorithm(name: &str, spec: KeySpec, is_digest: bool) -> Result<SigningAlgorithm> {
    let alg = SigningAlgorithm::for_key(name, spec)?;
    if is_digest && alg.scheme == super::spec::Scheme::Ed25519 {
        return Err(Error::InvalidArgument(format!(
            "{name} signs RAW messages only; for DIGEST AWS uses ED25519_PH_SHA_512, which kmsfs does not offer"
        )));
    }
    Ok(alg)
}

fn rsa_algorithm(name: &str, spec: KeySpec) -> Result<super::spec::Digest> {
    match (spec, oaep_digest(name)) {
        (KeySpec::Rsa(_), Some(d)) => Ok(d),
        _ => Err(Error::InvalidArgument(format!(
            "{INVALID_KEY_USAGE}the encryption algorithm {name} is not compatible with a {} key; \
             it offers RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256",
            spec.as_str()
        ))),
    }
}

fn mac_algorithm(name: &str, spec: KeySpec) -> Result<super::spec::Digest> {
    let (_, offered) = spec.algorithms(KeyUsage::GenerateVerifyMac);
    match mac_digest(name) {
        Some(d) if offered.contains(&name) => Ok(d),
        _ => Err(Error::InvalidArgument(format!(
            "{INVALID_KEY_USAGE}the MAC algorithm {name} is not compatible with a {} key; it offers {}",
            spec.as_str(),
            offered.join(", ")
        ))),
    }
}
