//! DescribeKey and ListKeys: a key's public facts in AWS KeyMetadata shape.

use super::clock::format_date;
use super::{Kms, Principal};
use crate::error::Result;
use crate::keystore::records::{self, KeyManager, KeyRecord, KeyState};

/// The JSON shape of `kmsfs key describe --json`, field names as in AWS KeyMetadata.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    pub key_id: String,
    pub creation_date: String,
    pub enabled: bool,
    pub key_state: KeyState,
    pub key_manager: KeyManager,
    pub origin: String,
    pub description: String,
    pub key_spec: &'static str,
    pub key_usage: &'static str,
    pub deletion_date: Option<String>,
    pub pending_deletion_window_in_days: Option<i64>,
    pub key_rotation_enabled: bool,
    pub rotation_period_in_days: Option<i64>,
    pub next_rotation_date: Option<String>,
    pub current_key_version: u32,
    pub aliases: Vec<String>,
    /// Keys with imported material (Origin EXTERNAL): of the current material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key_material_id: Option<String>,
    #[serde(skip)]
    pub valid_to_secs: Option<i64>,
    /// Primary region and every region of a multi-Region key; absent for a single-Region key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<super::multi_region::MultiRegionConfig>,
    /// The same dates as unix seconds (the API answers with numbers).
    #[serde(skip)]
    pub created_secs: i64,
    #[serde(skip)]
    pub deletion_secs: Option<i64>,
    #[serde(skip)]
    pub next_rotation_secs: Option<i64>,
}

impl KeyMetadata {
    fn from_record(key: KeyRecord, aliases: Vec<String>) -> Self {
        KeyMetadata {
            created_secs: key.created,
            deletion_secs: key.deletion_date,
            next_rotation_secs: key.next_rotation,
            creation_date: format_date(key.created),
            enabled: key.state == KeyState::Enabled,
            key_state: key.state,
            key_manager: key.key_manager,
            origin: key.origin,
            description: key.description,
            key_spec: "SYMMETRIC_DEFAULT",
            key_usage: "ENCRYPT_DECRYPT",
            deletion_date: key.deletion_date.map(format_date),
            pending_deletion_window_in_days: key.pending_window_days,
            key_rotation_enabled: key.rotation_enabled,
            rotation_period_in_days: key.rotation_period_days,
            next_rotation_date: key.next_rotation.map(format_date),
            current_key_version: key.current_version,
            aliases,
            expiration_model: None,
            valid_to: None,
            current_key_material_id: None,
            valid_to_secs: None,
            multi_region: None,
            key_id: key.key_id,
        }
    }
}

pub(super) fn with_aliases(conn: &rusqlite::Connection, key: KeyRecord) -> Result<KeyMetadata> {
    let aliases = records::list_aliases(conn, Some(&key.key_id))?.into_iter().map(|a| a.alias_name).collect();
    let (spec, usage) = super::asymmetric::load_spec(conn, &key.key_id)?;
    let current = key.current_version;
    let imported = super::import::is_external(&key)
        .then(|| super::import::load_materials(conn, &key.key_id))
        .transpose()?
        .and_then(|materials| materials.into_iter().find(|m| m.version == current && m.imported));
    let mut meta = KeyMetadata::from_record(key, aliases);
    if let Some(m) = imported {
        meta.valid_to = m.valid_to.map(format_date);
        meta.valid_to_secs = m.valid_to;
        meta.expiration_model = Some(m.expiration_model);
        meta.current_key_material_id = Some(m.key_material_id);
    }
    meta.key_spec = spec.as_str();
    meta.key_usage = usage.as_str();
    meta.multi_region = super::multi_region::describe(conn, &meta.key_id)?;
    Ok(meta)
}

impl Kms {
    pub fn describe_key(&mut self, caller: &Principal, key_ref: &str) -> Result<KeyMetadata> {
        self.audited(caller, "DescribeKey", |op| {
            let key = op.key(key_ref)?;
            with_aliases(&op.tx, key)
        })
    }

    /// The metadata of a key an operation just created or changed, for its answer; not
    /// audited again (the operation was).
    pub fn metadata_after(&self, key_id: &str) -> Result<KeyMetadata> {
        let key = records::load_key(self.keystore().conn(), key_id)?.ok_or_else(|| {
            crate::Error::NotFound(crate::error::NotFound::Key { key_id: key_id.to_string() })
        })?;
        with_aliases(self.keystore().conn(), key)
    }

    pub fn list_keys(&mut self, caller: &Principal) -> Result<Vec<KeyMetadata>> {
        self.audited(caller, "ListKeys", |op| {
            records::list_keys(&op.tx)?.into_iter().map(|k| with_aliases(&op.tx, k)).collect()
        })
    }
}
