//! Tags on keys: TagResource, UntagResource, ListResourceTags, with AWS's limits.

use rusqlite::{params, Connection};

use super::aws_errors::TAG_ERROR;
use super::{Kms, Principal};
use crate::error::{Error, Result};

/// AWS's limits: 50 tags per key, keys of 1-128 and values of 0-256 characters, no `aws:`
/// prefix (reserved).
pub const MAX_TAGS: usize = 50;

pub fn validate(tags: &[(String, String)]) -> Result<()> {
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(Error::InvalidArgument(format!(
                "{TAG_ERROR}'{k}': keys are 1-128 and values 0-256 characters"
            )));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(Error::InvalidArgument(format!("{TAG_ERROR}'{k}': the aws: prefix is reserved")));
        }
    }
    Ok(())
}

/// Sets `tags` on a key (a tag key given again takes the new value).
pub(crate) fn put(conn: &Connection, key_id: &str, tags: &[(String, String)]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO tags (key_id, tag_key, tag_value) VALUES (?1, ?2, ?3)
         ON CONFLICT(key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
    )?;
    for (k, v) in tags {
        stmt.execute(params![key_id, k, v])?;
    }
    let count: i64 = conn.query_row("SELECT count(*) FROM tags WHERE key_id = ?1", [key_id], |r| r.get(0))?;
    if count as usize > MAX_TAGS {
        return Err(Error::LimitExceeded(format!(
            "key {key_id} would have {count} tags; the limit is {MAX_TAGS}"
        )));
    }
    Ok(())
}

pub fn list(conn: &Connection, key_id: &str) -> Result<Vec<(String, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT tag_key, tag_value FROM tags WHERE key_id = ?1 ORDER BY tag_key")?;
    let rows = stmt.query_map([key_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Kms {
    pub fn tag_key(&mut self, caller: &Principal, key_ref: &str, tags: &[(String, String)]) -> Result<()> {
        self.audited(caller, "TagResource", |op| {
            validate(tags)?;
            let key = op.key(key_ref)?;
            super::require_customer_managed(&key, "tagged")?;
            super::require_not_deleted(&key)?;
            put(&op.tx, &key.key_id, tags)
        })
    }

    pub fn untag_key(&mut self, caller: &Principal, key_ref: &str, tag_keys: &[String]) -> Result<()> {
        self.audited(caller, "UntagResource", |op| {
            let key = op.key(key_ref)?;
            super::require_customer_managed(&key, "untagged")?;
            super::require_not_deleted(&key)?;
            for k in tag_keys {
                op.tx
                    .execute("DELETE FROM tags WHERE key_id = ?1 AND tag_key = ?2", params![key.key_id, k])?;
            }
            Ok(())
        })
    }

    pub fn list_key_tags(&mut self, caller: &Principal, key_ref: &str) -> Result<Vec<(String, String)>> {
        self.audited(caller, "ListResourceTags", |op| {
            let key = op.key(key_ref)?;
            list(&op.tx, &key.key_id)
        })
    }
}
