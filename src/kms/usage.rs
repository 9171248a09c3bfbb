//! Summaries read from the audit trail for the console: a key's calls per hour by outcome,
//! and the volumes whose files the trail has seen (by the `kmsfs:volume` encryption context
//! every file key carries).

use rusqlite::{params, Connection};

use super::Outcome;
use crate::error::Result;

/// (hour since the epoch, outcome, calls) for `key_id` since `since_ms`.
pub fn hourly_counts(conn: &Connection, key_id: &str, since_ms: i64) -> Result<Vec<(i64, Outcome, u64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT time_ms / 3600000, outcome, COUNT(*) FROM audit
         WHERE key_id = ?1 AND time_ms >= ?2 GROUP BY 1, 2",
    )?;
    let rows = stmt.query_map(params![key_id, since_ms], |r| {
        let outcome: String = r.get(1)?;
        let outcome = match outcome.as_str() {
            "Success" => Outcome::Success,
            "Denied" => Outcome::Denied,
            _ => Outcome::Error,
        };
        Ok((r.get::<_, i64>(0)?, outcome, r.get::<_, i64>(2)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A volume the audit trail has seen files of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSeen {
    pub volume_id: String,
    pub events: u64,
    pub users: u64,
    pub keys: u64,
    pub last_ms: i64,
    pub last_path: Option<String>,
}

/// Every volume named in the trail's encryption contexts, the most recently used first.
pub fn volumes_seen(conn: &Connection) -> Result<Vec<VolumeSeen>> {
    let mut stmt = conn.prepare_cached(
        "SELECT v, COUNT(*), COUNT(DISTINCT uid), COUNT(DISTINCT key_id), MAX(time_ms),
                (SELECT path FROM audit a2 WHERE a2.path IS NOT NULL AND a2.context LIKE '%' || v || '%'
                 ORDER BY seq DESC LIMIT 1)
         FROM (SELECT CASE WHEN json_valid(context) THEN json_extract(context, '$.\"kmsfs:volume\"') END AS v,
                      uid, key_id, time_ms
               FROM audit WHERE context LIKE '%kmsfs:volume%')
         WHERE v IS NOT NULL GROUP BY v ORDER BY MAX(time_ms) DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(VolumeSeen {
            volume_id: r.get(0)?,
            events: r.get::<_, i64>(1)? as u64,
            users: r.get::<_, i64>(2)? as u64,
            keys: r.get::<_, i64>(3)? as u64,
            last_ms: r.get(4)?,
            last_path: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
