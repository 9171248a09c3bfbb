//! The keys derived from the root key, one per purpose, and the upgrade of keystores made
//! when the root key itself both sealed master-key versions (AES-GCM-SIV) and keyed the audit
//! MAC (HMAC).
//!
//! HKDF-SHA-256 with the root key as input and a label per purpose:
//! - [`VERSIONS_LABEL`]: the AES-256-GCM-SIV key that seals every master-key version;
//! - [`AUDIT_LABEL`]: the HMAC-SHA-256 key of the audit chain;
//! - [`ACCESS_KEYS_LABEL`]: the AES-256-GCM-SIV key that seals API access keys' secrets;
//! - [`IMPORT_LABEL`]: the AES-256-GCM-SIV key that seals import tokens and the private halves
//!   of import wrapping keys (`kms::import`).
//!
//! The root key is used for nothing else. The keystore's `key_derivation` meta row says which
//! scheme it uses (absent: the old one); opening an old keystore with its passphrase upgrades
//! it in one transaction: every version is re-sealed under the derived key, and the audit
//! events so far keep their MACs under the old audit key, up to the sequence number recorded
//! in `audit_legacy_until` (`audit::verify` checks each event under the key of its time).

use rusqlite::Connection;

use super::{version_aad, version_material};
use crate::crypto::{self, SecretKey};
use crate::error::Result;
use crate::keystore::{self, get_meta, set_meta};

pub const VERSIONS_LABEL: &str = "kmsfs 1 master-key versions";
pub const AUDIT_LABEL: &str = "kmsfs 1 audit chain";
pub const ACCESS_KEYS_LABEL: &str = "kmsfs 1 access-key secrets";
pub const IMPORT_LABEL: &str = "kmsfs 1 key import";

/// Meta row: the audit events up to this sequence number are MACed with the old audit key.
pub const AUDIT_LEGACY_UNTIL: &str = "audit_legacy_until";

/// The root key and what is derived from it.
pub struct RootKeys {
    root: SecretKey,
    versions: SecretKey,
    audit: SecretKey,
    legacy_audit: SecretKey,
    access_keys: SecretKey,
    import: SecretKey,
}

impl RootKeys {
    pub fn new(root: SecretKey) -> RootKeys {
        RootKeys {
            versions: crypto::hkdf_subkey(&root, VERSIONS_LABEL),
            audit: crypto::hkdf_subkey(&root, AUDIT_LABEL),
            access_keys: crypto::hkdf_subkey(&root, ACCESS_KEYS_LABEL),
            import: crypto::hkdf_subkey(&root, IMPORT_LABEL),
            legacy_audit: crypto::legacy_hmac_subkey(&root, "audit-chain"),
            root,
        }
    }

    /// The root key itself: only to wrap it under a new passphrase.
    pub fn root(&self) -> &SecretKey {
        &self.root
    }

    /// The key master-key versions are sealed under, in a keystore of `derived` scheme.
    pub fn versions(&self, derived: bool) -> &SecretKey {
        if derived {
            &self.versions
        } else {
            &self.root
        }
    }

    /// The key new audit events are MACed with.
    pub fn audit(&self) -> &SecretKey {
        &self.audit
    }

    /// The key API access keys' secrets are sealed under.
    pub fn access_keys(&self) -> &SecretKey {
        &self.access_keys
    }

    /// The key import tokens and import wrapping keys are sealed under.
    pub fn import(&self) -> &SecretKey {
        &self.import
    }

    /// The key of audit events written before the keystore's upgrade.
    pub fn legacy_audit(&self) -> &SecretKey {
        &self.legacy_audit
    }
}

/// Whether the keystore uses the derived keys (it was made or upgraded by this kmsfs).
pub fn is_derived(conn: &Connection) -> Result<bool> {
    Ok(get_meta(conn, keystore::KEY_DERIVATION)?.as_deref() == Some(keystore::KEY_DERIVATION_HKDF.as_bytes()))
}

/// Upgrades an old keystore inside the caller's write transaction: re-seals every version
/// under the derived key and records where the audit chain changes keys. Returns the number
/// of versions re-sealed, or `None` if the keystore was already upgraded.
pub fn upgrade(conn: &Connection, keys: &RootKeys, audit_head_seq: i64) -> Result<Option<usize>> {
    if is_derived(conn)? {
        return Ok(None);
    }
    let sealed: Vec<(String, u32)> = {
        let mut stmt = conn.prepare("SELECT key_id, version FROM key_versions WHERE material IS NOT NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for (key_id, version) in &sealed {
        let material = version_material(conn, keys.versions(false), key_id, *version)?;
        let resealed = crypto::seal(keys.versions(true), &version_aad(key_id, *version), material.as_bytes());
        conn.execute(
            "UPDATE key_versions SET material = ?3 WHERE key_id = ?1 AND version = ?2",
            rusqlite::params![key_id, version, resealed],
        )?;
    }
    set_meta(conn, AUDIT_LEGACY_UNTIL, audit_head_seq.to_string().as_bytes())?;
    set_meta(conn, keystore::KEY_DERIVATION, keystore::KEY_DERIVATION_HKDF.as_bytes())?;
    Ok(Some(sealed.len()))
}
