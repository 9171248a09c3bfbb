//! The keystore at a glance, for `kmsfs status`: every key, the keys pending deletion with
//! the time left before their material is destroyed, and the grants that expire soon.
//! Data only; the command line prints it.

use std::path::PathBuf;

use serde::Serialize;

use super::clock::format_date;
use super::lifecycle::DAY_SECS;
use super::metadata::{with_aliases, KeyMetadata};
use super::{Kms, Principal};
use crate::error::Result;
use crate::keystore::records::{self, KeyState};

/// Grants that end within this many seconds count as expiring soon (7 days).
pub const EXPIRING_SOON_SECS: i64 = 7 * DAY_SECS;

/// The whole picture, read in one transaction (so counts and lists agree).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    /// The time everything below is relative to (the KMS clock).
    pub time: String,
    pub keystore: KeystoreSummary,
    /// Every key, Destroyed tombstones included, as `kmsfs key list --json` shows them.
    pub keys: Vec<KeyMetadata>,
    /// Keys pending deletion, the soonest first.
    pub pending_deletions: Vec<PendingDeletion>,
    /// Grants still live that end within the horizon asked for, the soonest first.
    pub expiring_grants: Vec<ExpiringGrant>,
    /// Imported key material that expires within `MATERIAL_EXPIRING_SOON_SECS`, the soonest
    /// first: when it does, its key becomes PendingImport.
    pub expiring_key_material: Vec<super::import::ExpiringMaterial>,
}

/// Imported material that expires within this many seconds is warned of (30 days).
pub const MATERIAL_EXPIRING_SOON_SECS: i64 = 30 * DAY_SECS;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeystoreSummary {
    pub path: PathBuf,
    pub keystore_id: String,
    pub key_count: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PendingDeletion {
    pub key_id: String,
    pub aliases: Vec<String>,
    pub deletion_date: String,
    pub pending_deletion_window_in_days: Option<i64>,
    /// Seconds until the material is destroyed (0 once due).
    pub seconds_remaining: i64,
    /// Whole days until then, rounded down.
    pub days_remaining: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExpiringGrant {
    pub grant_id: String,
    pub key_id: String,
    pub key_aliases: Vec<String>,
    pub grantee: String,
    pub operations: Vec<String>,
    pub name: String,
    pub expires: String,
    /// Seconds until the grant stops allowing anything.
    pub seconds_remaining: i64,
}

/// Whether a volume's default key can be used now, as far as the keystore tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeKey {
    pub aliases: Vec<String>,
    /// None when the key is not in this keystore.
    pub key_state: Option<KeyState>,
    pub usable: bool,
    /// Why it is not usable (None when it is).
    pub problem: Option<String>,
}

impl Kms {
    /// Every key with its aliases, the pending deletions with their countdown, and the live
    /// grants ending within `expiring_within_secs`. One audited read (ListKeys).
    pub fn status(&mut self, caller: &Principal, expiring_within_secs: i64) -> Result<Status> {
        let path = self.keystore().path().to_path_buf();
        let keystore_id = self.keystore().keystore_id()?;
        self.audited(caller, "ListKeys", |op| {
            op.event.reason = "kmsfs status: keys, aliases, pending deletions and grants".into();
            let now = op.now;
            let mut keys = Vec::new();
            let mut pending_deletions = Vec::new();
            for record in records::list_keys(&op.tx)? {
                let deletion =
                    (record.state == KeyState::PendingDeletion).then_some(record.deletion_date).flatten();
                let meta = with_aliases(&op.tx, record)?;
                if let Some(date) = deletion {
                    let seconds_remaining = (date - now).max(0);
                    pending_deletions.push(PendingDeletion {
                        key_id: meta.key_id.clone(),
                        aliases: meta.aliases.clone(),
                        deletion_date: format_date(date),
                        pending_deletion_window_in_days: meta.pending_deletion_window_in_days,
                        seconds_remaining,
                        days_remaining: seconds_remaining / DAY_SECS,
                    });
                }
                keys.push(meta);
            }
            pending_deletions
                .sort_by(|a, b| (a.seconds_remaining, &a.key_id).cmp(&(b.seconds_remaining, &b.key_id)));

            let mut expiring = Vec::new();
            for grant in records::list_grants(&op.tx, None)? {
                let Some(expires) = grant.expires else { continue };
                let left = expires - now;
                // A grant of a destroyed key allows nothing whenever it ends.
                let key = keys.iter().find(|k| k.key_id == grant.key_id);
                if left <= 0
                    || left > expiring_within_secs
                    || key.is_some_and(|k| k.key_state == KeyState::Destroyed)
                {
                    continue;
                }
                expiring.push((expires, grant, key.map(|k| k.aliases.clone()).unwrap_or_default()));
            }
            expiring.sort_by(|a, b| (a.0, &a.1.grant_id).cmp(&(b.0, &b.1.grant_id)));
            let expiring_grants = expiring
                .into_iter()
                .map(|(expires, g, key_aliases)| ExpiringGrant {
                    grant_id: g.grant_id,
                    key_id: g.key_id,
                    key_aliases,
                    grantee: g.grantee,
                    operations: g.operations,
                    name: g.name,
                    expires: format_date(expires),
                    seconds_remaining: expires - now,
                })
                .collect();
            Ok(Status {
                time: format_date(now),
                keystore: KeystoreSummary { path, keystore_id, key_count: keys.len() },
                keys,
                pending_deletions,
                expiring_grants,
                expiring_key_material: super::import::expiring(&op.tx, now, MATERIAL_EXPIRING_SOON_SECS)?,
            })
        })
    }
}

impl Status {
    /// Whether the key a volume encrypts new files under is usable: the volume must belong
    /// to this keystore and the key must be Enabled. (Whether a given user may use it is
    /// up to the key's policy and grants, checked at each open.)
    pub fn volume_key(&self, volume_keystore_id: &str, key_id: &str) -> VolumeKey {
        if volume_keystore_id != self.keystore.keystore_id {
            return VolumeKey {
                aliases: Vec::new(),
                key_state: None,
                usable: false,
                problem: Some(format!("the volume belongs to keystore {volume_keystore_id}, not this one")),
            };
        }
        match self.keys.iter().find(|k| k.key_id == key_id) {
            None => VolumeKey {
                aliases: Vec::new(),
                key_state: None,
                usable: false,
                problem: Some(format!("key {key_id} is not in this keystore")),
            },
            Some(k) => VolumeKey {
                aliases: k.aliases.clone(),
                key_state: Some(k.key_state),
                usable: k.key_state == KeyState::Enabled,
                problem: (k.key_state != KeyState::Enabled)
                    .then(|| format!("key is {}", k.key_state.as_str())),
            },
        }
    }
}
