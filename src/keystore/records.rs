//! Rows of the keystore as Rust values, and the SQL that reads and writes them.
//! No policy lives here: the KMS decides, this module persists.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{Error, Result};

/// AWS KeyState values that kmsfs uses (plus `Destroyed`, the tombstone a key leaves after
/// its deletion window so files under it are reported unrecoverable instead of unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    /// Origin EXTERNAL: no usable key material (never imported, deleted or expired).
    PendingImport,
    /// A multi-Region primary key scheduled for deletion while replicas exist: its waiting
    /// period (and deletion date) starts when the last replica is gone.
    PendingReplicaDeletion,
    Destroyed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
            KeyState::PendingReplicaDeletion => "PendingReplicaDeletion",
            KeyState::Destroyed => "Destroyed",
        }
    }

    /// Whether the key is on its way out (PendingDeletion, PendingReplicaDeletion).
    pub fn is_pending_deletion(self) -> bool {
        matches!(self, KeyState::PendingDeletion | KeyState::PendingReplicaDeletion)
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Enabled" => KeyState::Enabled,
            "Disabled" => KeyState::Disabled,
            "PendingDeletion" => KeyState::PendingDeletion,
            "PendingImport" => KeyState::PendingImport,
            "PendingReplicaDeletion" => KeyState::PendingReplicaDeletion,
            "Destroyed" => KeyState::Destroyed,
            _ => return None,
        })
    }
}

/// Who manages a key: the user (CUSTOMER) or kmsfs itself (MANAGED, like aws/ebs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum KeyManager {
    Customer,
    Managed,
}

impl KeyManager {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyManager::Customer => "CUSTOMER",
            KeyManager::Managed => "MANAGED",
        }
    }
}

/// One row of `keys`. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub created: i64,
    pub description: String,
    pub key_manager: KeyManager,
    pub origin: String,
    pub state: KeyState,
    pub deletion_date: Option<i64>,
    pub pending_window_days: Option<i64>,
    pub rotation_enabled: bool,
    pub rotation_period_days: Option<i64>,
    pub next_rotation: Option<i64>,
    pub current_version: u32,
}

const KEY_COLUMNS: &str = "key_id, created, description, key_manager, origin, state, deletion_date, \
     pending_window_days, rotation_enabled, rotation_period_days, next_rotation, current_version";

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown {what}").into(),
        )
    };
    let manager: String = row.get(3)?;
    let state: String = row.get(5)?;
    Ok(KeyRecord {
        key_id: row.get(0)?,
        created: row.get(1)?,
        description: row.get(2)?,
        key_manager: match manager.as_str() {
            "CUSTOMER" => KeyManager::Customer,
            "MANAGED" => KeyManager::Managed,
            _ => return Err(bad(3, "key manager")),
        },
        origin: row.get(4)?,
        state: KeyState::parse(&state).ok_or_else(|| bad(5, "key state"))?,
        deletion_date: row.get(6)?,
        pending_window_days: row.get(7)?,
        rotation_enabled: row.get(8)?,
        rotation_period_days: row.get(9)?,
        next_rotation: row.get(10)?,
        current_version: row.get(11)?,
    })
}

pub fn insert_key(conn: &Connection, key: &KeyRecord) -> Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            key.key_id,
            key.created,
            key.description,
            key.key_manager.as_str(),
            key.origin,
            key.state.as_str(),
            key.deletion_date,
            key.pending_window_days,
            key.rotation_enabled,
            key.rotation_period_days,
            key.next_rotation,
            key.current_version,
        ],
    )?;
    Ok(())
}

/// Writes every mutable column of `key` back.
pub fn update_key(conn: &Connection, key: &KeyRecord) -> Result<()> {
    let changed = conn.execute(
        "UPDATE keys SET description = ?2, state = ?3, deletion_date = ?4, pending_window_days = ?5,
                rotation_enabled = ?6, rotation_period_days = ?7, next_rotation = ?8,
                current_version = ?9
         WHERE key_id = ?1",
        params![
            key.key_id,
            key.description,
            key.state.as_str(),
            key.deletion_date,
            key.pending_window_days,
            key.rotation_enabled,
            key.rotation_period_days,
            key.next_rotation,
            key.current_version,
        ],
    )?;
    if changed != 1 {
        return Err(Error::not_found(format!("key {} vanished while being updated", key.key_id)));
    }
    Ok(())
}

pub fn load_key(conn: &Connection, key_id: &str) -> Result<Option<KeyRecord>> {
    Ok(conn
        .query_row(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = ?1"), [key_id], key_from_row)
        .optional()?)
}

pub fn list_keys(conn: &Connection) -> Result<Vec<KeyRecord>> {
    let mut stmt = conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created, key_id"))?;
    let rows = stmt.query_map([], key_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Keys whose automatic rotation is due at `now`. Only Enabled keys rotate, as in AWS; a
/// key enabled again after its date passed rotates at the next check.
pub fn keys_due_for_rotation(conn: &Connection, now: i64) -> Result<Vec<KeyRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {KEY_COLUMNS} FROM keys
         WHERE state = 'Enabled' AND rotation_enabled = 1 AND next_rotation <= ?1"
    ))?;
    let rows = stmt.query_map([now], key_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Keys whose pending-deletion window has ended at `now`.
pub fn keys_due_for_destruction(conn: &Connection, now: i64) -> Result<Vec<KeyRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE state = 'PendingDeletion' AND deletion_date <= ?1"
    ))?;
    let rows = stmt.query_map([now], key_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One row of `key_versions`, without its material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VersionRecord {
    pub version: u32,
    pub created: i64,
    pub rotation_type: String,
    pub material_present: bool,
}

pub fn insert_version(
    conn: &Connection,
    key_id: &str,
    version: u32,
    created: i64,
    rotation_type: &str,
    sealed_material: &[u8],
) -> Result<()> {
    conn.execute(
        "INSERT INTO key_versions (key_id, version, created, rotation_type, material)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key_id, version, created, rotation_type, sealed_material],
    )?;
    Ok(())
}

/// The sealed material of one version: `None` if there is no such version, `Some(None)` if
/// it was destroyed.
pub fn load_sealed_material(
    conn: &Connection,
    key_id: &str,
    version: u32,
) -> Result<Option<Option<Vec<u8>>>> {
    Ok(conn
        .query_row(
            "SELECT material FROM key_versions WHERE key_id = ?1 AND version = ?2",
            params![key_id, version],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn list_versions(conn: &Connection, key_id: &str) -> Result<Vec<VersionRecord>> {
    let mut stmt = conn.prepare(
        "SELECT version, created, rotation_type, material IS NOT NULL
         FROM key_versions WHERE key_id = ?1 ORDER BY version",
    )?;
    let rows = stmt.query_map([key_id], |r| {
        Ok(VersionRecord {
            version: r.get(0)?,
            created: r.get(1)?,
            rotation_type: r.get(2)?,
            material_present: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Crypto-shredding: erases every version's material of `key_id` (secure_delete is on, so
/// SQLite overwrites the freed bytes).
pub fn destroy_material(conn: &Connection, key_id: &str) -> Result<()> {
    conn.execute("UPDATE key_versions SET material = NULL WHERE key_id = ?1", [key_id])?;
    Ok(())
}

/// One row of `aliases`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasRecord {
    pub alias_name: String,
    pub target_key_id: String,
    pub creation_date: i64,
    pub last_updated_date: i64,
}

pub fn insert_alias(conn: &Connection, alias: &str, key_id: &str, now: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO aliases (alias_name, key_id, created, updated) VALUES (?1, ?2, ?3, ?3)",
        params![alias, key_id, now],
    )?;
    Ok(())
}

pub fn retarget_alias(conn: &Connection, alias: &str, key_id: &str, now: i64) -> Result<()> {
    conn.execute(
        "UPDATE aliases SET key_id = ?2, updated = ?3 WHERE alias_name = ?1",
        params![alias, key_id, now],
    )?;
    Ok(())
}

pub fn delete_alias(conn: &Connection, alias: &str) -> Result<()> {
    conn.execute("DELETE FROM aliases WHERE alias_name = ?1", [alias])?;
    Ok(())
}

pub fn delete_aliases_of_key(conn: &Connection, key_id: &str) -> Result<()> {
    conn.execute("DELETE FROM aliases WHERE key_id = ?1", [key_id])?;
    Ok(())
}

pub fn load_alias(conn: &Connection, alias: &str) -> Result<Option<AliasRecord>> {
    Ok(conn
        .query_row(
            "SELECT alias_name, key_id, created, updated FROM aliases WHERE alias_name = ?1",
            [alias],
            alias_from_row,
        )
        .optional()?)
}

/// Every alias, or those of one key.
pub fn list_aliases(conn: &Connection, key_id: Option<&str>) -> Result<Vec<AliasRecord>> {
    let mut stmt = conn.prepare(
        "SELECT alias_name, key_id, created, updated FROM aliases
         WHERE ?1 IS NULL OR key_id = ?1 ORDER BY alias_name",
    )?;
    let rows = stmt.query_map([key_id], alias_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn alias_from_row(r: &Row<'_>) -> rusqlite::Result<AliasRecord> {
    Ok(AliasRecord {
        alias_name: r.get(0)?,
        target_key_id: r.get(1)?,
        creation_date: r.get(2)?,
        last_updated_date: r.get(3)?,
    })
}

/// A key's policy document, if one was stored.
pub fn load_policy(conn: &Connection, key_id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT policy FROM keys WHERE key_id = ?1", [key_id], |r| r.get(0))
        .optional()?
        .flatten())
}

pub fn store_policy(conn: &Connection, key_id: &str, policy: &str) -> Result<()> {
    conn.execute("UPDATE keys SET policy = ?2 WHERE key_id = ?1", params![key_id, policy])?;
    Ok(())
}

/// One row of `grants`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GrantRecord {
    pub grant_id: String,
    pub key_id: String,
    pub name: String,
    pub grantee: String,
    pub operations: Vec<String>,
    pub constraints: std::collections::BTreeMap<String, String>,
    pub created: i64,
    pub expires: Option<i64>,
    #[serde(skip)]
    pub token: String,
    /// Who besides the grantee may retire it.
    pub retiring_principal: Option<String>,
    /// The constraints are the whole encryption context (EncryptionContextEquals), not a
    /// subset of it.
    pub context_equals: bool,
}

pub fn insert_grant(conn: &Connection, g: &GrantRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO grants (grant_id, key_id, name, grantee, operations, constraints, created, expires, token,
                             retiring_principal, context_equals)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            g.grant_id,
            g.key_id,
            g.name,
            g.grantee,
            g.operations.join(","),
            serde_json::to_string(&g.constraints).expect("map serializes"),
            g.created,
            g.expires,
            g.token,
            g.retiring_principal,
            g.context_equals,
        ],
    )?;
    Ok(())
}

/// Grants of one key, or of every key.
pub fn list_grants(conn: &Connection, key_id: Option<&str>) -> Result<Vec<GrantRecord>> {
    let mut stmt = conn.prepare(
        "SELECT grant_id, key_id, name, grantee, operations, constraints, created, expires, token,
                retiring_principal, context_equals
         FROM grants WHERE ?1 IS NULL OR key_id = ?1 ORDER BY created, grant_id",
    )?;
    let rows = stmt.query_map([key_id], |r| {
        let ops: String = r.get(4)?;
        let constraints: String = r.get(5)?;
        Ok(GrantRecord {
            grant_id: r.get(0)?,
            key_id: r.get(1)?,
            name: r.get(2)?,
            grantee: r.get(3)?,
            operations: ops.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            constraints: serde_json::from_str(&constraints).unwrap_or_default(),
            created: r.get(6)?,
            expires: r.get(7)?,
            token: r.get(8)?,
            retiring_principal: r.get(9)?,
            context_equals: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn delete_grant(conn: &Connection, grant_id: &str) -> Result<bool> {
    Ok(conn.execute("DELETE FROM grants WHERE grant_id = ?1", [grant_id])? == 1)
}
