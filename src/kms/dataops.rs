//! Cryptographic operations: Encrypt/Decrypt of small secrets, GenerateDataKey (with and
//! without plaintext) and ReEncrypt, each bound to an encryption context.

use zeroize::Zeroizing;

use super::blob::{self, BlobHeader};
use super::{version_material, EncryptionContext, Kms, Op, Principal};
use crate::crypto::SecretKey;
use crate::error::{Error, NotFound, Result};
use crate::keystore::records::KeyRecord;

/// The largest plaintext Encrypt takes, as in AWS KMS.
pub const MAX_PLAINTEXT: usize = 4096;

/// A fresh data key: its plaintext (zeroized on drop) and the same key wrapped by a master
/// key version.
#[derive(Debug)]
pub struct DataKey {
    pub key_id: String,
    pub key_version: u32,
    pub plaintext: SecretKey,
    pub ciphertext_blob: Vec<u8>,
}

/// What Decrypt returns. (No `Debug`: it holds plaintext.)
pub struct Decrypted {
    pub key_id: String,
    pub key_version: u32,
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl Op<'_> {
    /// Seals `plaintext` under the current version of `key`.
    fn seal_under(
        &mut self,
        caller: &Principal,
        action: &str,
        key: &KeyRecord,
        ctx: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<(u32, Vec<u8>)> {
        self.event.context = ctx.to_audit_string();
        self.authorize(caller, key, action, ctx)?;
        super::asymmetric::require_symmetric(&self.tx, &key.key_id, &self.event.operation)?;
        let version = key.current_version;
        let material = version_material(&self.tx, self.keys.versions(true), &key.key_id, version)?;
        let header = BlobHeader { key_id: key.key_id.clone(), key_version: version };
        Ok((version, blob::seal(&material.cipher(), &header, &ctx.encode(), plaintext)))
    }

    /// Opens a blob; the key it names must exist and be Enabled.
    fn open_blob(
        &mut self,
        caller: &Principal,
        action: &str,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Decrypted> {
        self.event.context = ctx.to_audit_string();
        let (header, sealed) = BlobHeader::parse(blob)?;
        let key = self.key(&header.key_id).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(NotFound::CiphertextKey { key_id: header.key_id.clone() }),
            other => other,
        })?;
        self.authorize(caller, &key, action, ctx)?;
        let material = version_material(&self.tx, self.keys.versions(true), &key.key_id, header.key_version)?;
        let plaintext = blob::open(&material.cipher(), &header, &ctx.encode(), sealed)?;
        Ok(Decrypted { key_id: key.key_id, key_version: header.key_version, plaintext })
    }
}

fn check_expected_key(op: &mut Op<'_>, expected: Option<&str>, actual: &str) -> Result<()> {
    match expected {
        Some(expected) => require_key(actual, expected, super::resolve(&op.tx, expected)?.key_id),
        None => Ok(()),
    }
}

/// Decrypt's `KeyId`: a ciphertext under `actual` is refused (IncorrectKeyException) when the
/// caller named `expected`, which resolves to another key.
pub(crate) fn require_key(actual: &str, expected: &str, expected_key_id: String) -> Result<()> {
    if expected_key_id == actual {
        return Ok(());
    }
    Err(Error::IncorrectKey { actual: actual.to_string(), expected: expected.to_string(), expected_key_id })
}

impl Kms {
    /// Encrypt: seals up to 4096 bytes under the key's current version.
    pub fn encrypt(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>> {
        self.audited(caller, "Encrypt", |op| {
            let key = op.key(key_ref)?;
            if plaintext.len() > MAX_PLAINTEXT {
                // The pointer to data keys is part of the refusal (the library's callers
                // see it too), not a command-line hint.
                return Err(Error::LimitExceeded(format!(
                    "the plaintext is {} bytes; encrypt takes at most {MAX_PLAINTEXT}. \
                     For larger data use a data key (`kmsfs generate-data-key`)",
                    plaintext.len()
                )));
            }
            Ok(op.seal_under(caller, "kms:Encrypt", &key, ctx, plaintext)?.1)
        })
    }

    /// Decrypt: the blob names its key and version. With `expected_key`, a blob of another
    /// key is refused (AWS IncorrectKeyException).
    pub fn decrypt(
        &mut self,
        caller: &Principal,
        blob: &[u8],
        ctx: &EncryptionContext,
        expected_key: Option<&str>,
    ) -> Result<Decrypted> {
        self.audited(caller, "Decrypt", |op| {
            let out = op.open_blob(caller, "kms:Decrypt", blob, ctx)?;
            check_expected_key(op, expected_key, &out.key_id)?;
            Ok(out)
        })
    }

    /// GenerateDataKey: a random 256-bit key, returned in plaintext and wrapped.
    pub fn generate_data_key(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        ctx: &EncryptionContext,
    ) -> Result<DataKey> {
        self.audited(caller, "GenerateDataKey", |op| {
            generate(op, caller, "kms:GenerateDataKey", key_ref, ctx)
        })
    }

    /// GenerateDataKeyWithoutPlaintext: only the wrapped key leaves the KMS.
    pub fn generate_data_key_without_plaintext(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        ctx: &EncryptionContext,
    ) -> Result<(String, u32, Vec<u8>)> {
        self.audited(caller, "GenerateDataKeyWithoutPlaintext", |op| {
            let dk = generate(op, caller, "kms:GenerateDataKeyWithoutPlaintext", key_ref, ctx)?;
            Ok((dk.key_id, dk.key_version, dk.ciphertext_blob))
        })
    }

    /// ReEncrypt: opens a blob and seals its plaintext again under the current version of
    /// `dest_key` (or of its own key, for rotation catch-up), without it leaving the KMS.
    pub fn re_encrypt(
        &mut self,
        caller: &Principal,
        blob: &[u8],
        source_ctx: &EncryptionContext,
        dest_key: Option<&str>,
        dest_ctx: &EncryptionContext,
    ) -> Result<Vec<u8>> {
        self.audited(caller, "ReEncrypt", |op| {
            let opened = op.open_blob(caller, "kms:ReEncryptFrom", blob, source_ctx)?;
            let dest = op.key(dest_key.unwrap_or(&opened.key_id))?;
            Ok(op.seal_under(caller, "kms:ReEncryptTo", &dest, dest_ctx, &opened.plaintext)?.1)
        })
    }
}

fn generate(
    op: &mut Op<'_>,
    caller: &Principal,
    action: &str,
    key_ref: &str,
    ctx: &EncryptionContext,
) -> Result<DataKey> {
    let key = op.key(key_ref)?;
    let plaintext = SecretKey::random();
    let (key_version, ciphertext_blob) = op.seal_under(caller, action, &key, ctx, plaintext.as_bytes())?;
    Ok(DataKey { key_id: key.key_id, key_version, plaintext, ciphertext_blob })
}
