//! GetKeyLastUsage: the last successful cryptographic use of a key, read from the audit
//! trail (which records every use, so tracking starts when the key was created).

use rusqlite::OptionalExtension;

use super::{Kms, Principal};
use crate::error::Result;

/// Operations that count as a use of a key (AWS's KeyLastUsageTrackingOperation).
const TRACKED: &[&str] =
    &["Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext"];

/// What GetKeyLastUsage answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastUsage {
    pub key_id: String,
    pub key_created: i64,
    /// (operation, unix milliseconds) of the last successful use.
    pub last: Option<(String, i64)>,
}

impl Kms {
    pub fn key_last_usage(&mut self, caller: &Principal, key_ref: &str) -> Result<LastUsage> {
        self.audited(caller, "GetKeyLastUsage", |op| {
            let key = op.key(key_ref)?;
            let placeholders = TRACKED.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(",");
            let last = op
                .tx
                .query_row(
                    &format!(
                        "SELECT operation, time_ms FROM audit
                         WHERE key_id = ?1 AND outcome = 'Success' AND operation IN ({placeholders})
                         ORDER BY seq DESC LIMIT 1"
                    ),
                    [&key.key_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(LastUsage { key_id: key.key_id, key_created: key.created, last })
        })
    }
}
