//! Asymmetric (RSA, ECC) and HMAC KMS keys: their specs and usages, their material, and
//! the operations only they have (Sign, Verify, GetPublicKey, RSA Encrypt/Decrypt,
//! GenerateMac, VerifyMac, DeriveSharedSecret), plus GenerateDataKeyPair, which makes a key
//! pair under a symmetric key.
//!
//! Such a key has exactly one version (AWS does not rotate them): its private key (PKCS#8
//! DER) or HMAC key is sealed by the root key in `key_versions` like a symmetric version's
//! material, and destroyed with it when the deletion window ends. Its spec and usage live in
//! `key_specs`; a key without a row there is SYMMETRIC_DEFAULT / ENCRYPT_DECRYPT.

pub mod material;
pub mod ring_ops;
pub mod spec;

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

pub use material::KeyMaterial;
pub use spec::{KeySpec, KeyUsage};

use super::aws_errors::{INVALID_KEY_USAGE, UNSUPPORTED};
use super::{Kms, Principal};
use crate::error::{Error, Result};

/// Records the spec and usage of a new key (nothing for a symmetric key).
pub(crate) fn save_spec(conn: &Connection, key_id: &str, spec: KeySpec, usage: KeyUsage) -> Result<()> {
    if spec.is_symmetric() {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO key_specs (key_id, key_spec, key_usage) VALUES (?1, ?2, ?3)",
        params![key_id, spec.as_str(), usage.as_str()],
    )?;
    Ok(())
}

fn parse_row(key_id: &str, spec: &str, usage: &str) -> Result<(KeySpec, KeyUsage)> {
    match (KeySpec::parse(spec), KeyUsage::parse(usage)) {
        (Some(s), Some(u)) => Ok((s, u)),
        _ => Err(Error::CorruptMaterial(format!("key {key_id} has an unknown spec {spec} / usage {usage}"))),
    }
}

/// The spec and usage of `key_id`.
pub(crate) fn load_spec(conn: &Connection, key_id: &str) -> Result<(KeySpec, KeyUsage)> {
    let row: Option<(String, String)> = conn
        .query_row("SELECT key_spec, key_usage FROM key_specs WHERE key_id = ?1", [key_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        None => Ok((KeySpec::Symmetric, KeyUsage::EncryptDecrypt)),
        Some((s, u)) => parse_row(key_id, &s, &u),
    }
}

/// The spec and usage of every key that is not symmetric.
pub(crate) fn load_all_specs(conn: &Connection) -> Result<HashMap<String, (KeySpec, KeyUsage)>> {
    let mut stmt = conn.prepare("SELECT key_id, key_spec, key_usage FROM key_specs")?;
    let rows =
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, s, u) = row?;
        let parsed = parse_row(&id, &s, &u)?;
        out.insert(id, parsed);
    }
    Ok(out)
}

/// Refuses an operation a key's usage (or spec) does not allow: InvalidKeyUsageException.
pub(crate) fn wrong_usage(key_id: &str, spec: KeySpec, usage: KeyUsage, operation: &str) -> Error {
    Error::InvalidArgument(format!(
        "{INVALID_KEY_USAGE}key {key_id} is a {} key with KeyUsage {}; it cannot be used for {operation}",
        spec.as_str(),
        usage.as_str()
    ))
}

/// Refuses rotation of a key that is not symmetric (UnsupportedOperationException, as AWS).
pub(crate) fn require_rotatable(conn: &Connection, key_id: &str) -> Result<()> {
    let (spec, _) = load_spec(conn, key_id)?;
    if spec.is_symmetric() {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{UNSUPPORTED}key {key_id} is a {} key; only symmetric encryption keys rotate",
        spec.as_str()
    )))
}

/// Refuses symmetric encryption with a key that is not a symmetric encryption key.
pub(crate) fn require_symmetric(conn: &Connection, key_id: &str, operation: &str) -> Result<()> {
    let (spec, usage) = load_spec(conn, key_id)?;
    if spec.is_symmetric() {
        return Ok(());
    }
    Err(wrong_usage(key_id, spec, usage, operation))
}

/// The public facts of a key pair for GetPublicKey.
pub struct PublicKeyInfo {
    pub key_id: String,
    pub key_spec: KeySpec,
    pub key_usage: KeyUsage,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
}

impl Kms {
    /// GetPublicKey at the command line: the public key of an RSA or ECC key (audited).
    pub fn get_public_key(&mut self, caller: &Principal, key_ref: &str) -> Result<PublicKeyInfo> {
        self.audited(caller, "GetPublicKey", |op| {
            let key = op.key(key_ref)?;
            // Authorization first: a caller the key is not for learns nothing of its state.
            op.authorize(caller, &key, "kms:GetPublicKey", &Default::default())?;
            super::require_enabled(&key)?;
            let (spec, usage) = load_spec(&op.tx, &key.key_id)?;
            if !spec.is_asymmetric() {
                return Err(Error::InvalidArgument(format!(
                    "{UNSUPPORTED}key {} is a {} key; only RSA and ECC keys have a public key",
                    key.key_id,
                    spec.as_str()
                )));
            }
            let bytes =
                super::version_bytes(&op.tx, op.keys.versions(true), &key.key_id, key.current_version)?;
            let public_key = KeyMaterial::from_bytes(spec, &bytes)?.public_key_der()?;
            Ok(PublicKeyInfo { key_id: key.key_id, key_spec: spec, key_usage: usage, public_key })
        })
    }
}

impl Kms {
    /// Runs `body` with the material of a key of `usage`, after the checks every use makes
    /// (authorization, then state, then usage), as one audited `operation`.
    fn with_material<T>(
        &mut self,
        caller: &Principal,
        operation: &str,
        key_ref: &str,
        usage: KeyUsage,
        body: impl FnOnce(KeySpec, &KeyMaterial) -> Result<T>,
    ) -> Result<T> {
        self.audited(caller, operation, |op| {
            let key = op.key(key_ref)?;
            op.authorize(caller, &key, &format!("kms:{operation}"), &Default::default())?;
            super::require_enabled(&key)?;
            let (spec, have) = load_spec(&op.tx, &key.key_id)?;
            if spec.is_symmetric() || have != usage {
                return Err(wrong_usage(&key.key_id, spec, have, operation));
            }
            let bytes =
                super::version_bytes(&op.tx, op.keys.versions(true), &key.key_id, key.current_version)?;
            body(spec, &KeyMaterial::from_bytes(spec, &bytes)?)
        })
    }

    /// Sign at the command line (`kmsfs sign`).
    pub fn sign(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        message: &[u8],
        is_digest: bool,
    ) -> Result<Vec<u8>> {
        check_message_len(message)?;
        self.with_material(caller, "Sign", key_ref, KeyUsage::SignVerify, |spec, material| {
            material.sign(spec::SigningAlgorithm::for_key(algorithm, spec)?, message, is_digest)
        })
    }

    /// Verify at the command line (`kmsfs verify`): Ok only for a valid signature.
    pub fn verify(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        message: &[u8],
        is_digest: bool,
        signature: &[u8],
    ) -> Result<()> {
        check_message_len(message)?;
        self.with_material(caller, "Verify", key_ref, KeyUsage::SignVerify, |spec, material| {
            let alg = spec::SigningAlgorithm::for_key(algorithm, spec)?;
            if material.verify(alg, message, is_digest, signature)? {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{}the signature does not verify with {algorithm}",
                    super::aws_errors::INVALID_SIGNATURE
                )))
            }
        })
    }
}

/// AWS's limit for a message to sign, verify or MAC.
pub const MAX_MESSAGE: usize = 4096;

fn check_message_len(message: &[u8]) -> Result<()> {
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(Error::InvalidArgument(format!(
            "the message is {} bytes; a signed message is 1 to {MAX_MESSAGE} bytes (sign a digest of a larger one with --digest)",
            message.len()
        )));
    }
    Ok(())
}
