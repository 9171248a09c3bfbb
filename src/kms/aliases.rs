//! Aliases: friendly names (`alias/finance`) for keys, as in AWS KMS. An alias points to
//! exactly one key; a key may have many. `alias/kmsfs/` is reserved for managed keys.

use super::{require_customer_managed, Kms, Op, Principal, ALIAS_PREFIX, MANAGED_ALIAS_PREFIX};
use crate::error::{
    AccessDenied, AlreadyExists, Denial, Error, KeyStateError, NotFound, Result, StateProblem,
};
use crate::keystore::records::{self, AliasRecord, KeyRecord, KeyState};

/// AWS's limit on an alias name, prefix included.
const MAX_ALIAS_LEN: usize = 256;

/// Checks an alias name: `alias/` followed by letters, digits, `/`, `_` and `-`. Names
/// under `alias/kmsfs/` (and AWS's `alias/aws/`) are refused unless `managed` is set.
pub fn validate_alias_name(alias: &str, managed: bool) -> Result<()> {
    let Some(name) = alias.strip_prefix(ALIAS_PREFIX) else {
        return Err(Error::InvalidArgument(format!(
            "alias '{alias}' must start with '{ALIAS_PREFIX}', e.g. alias/finance"
        )));
    };
    if name.is_empty() || alias.len() > MAX_ALIAS_LEN {
        return Err(Error::InvalidArgument(format!(
            "alias '{alias}' must have a name of 1 to {} characters after '{ALIAS_PREFIX}'",
            MAX_ALIAS_LEN - ALIAS_PREFIX.len()
        )));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "/_-".contains(*c))) {
        return Err(Error::InvalidArgument(format!(
            "alias '{alias}' contains '{bad}'; use letters, digits, '/', '_' and '-'"
        )));
    }
    let reserved = alias.starts_with(MANAGED_ALIAS_PREFIX) || alias.starts_with("alias/aws/");
    if reserved && !managed {
        return Err(Error::AccessDenied(AccessDenied {
            key_id: None,
            reason: Denial::ReservedAlias { alias: alias.to_string() },
        }));
    }
    Ok(())
}

/// Inserts an alias, refusing a name that is taken.
pub(crate) fn insert_unique(op: &Op<'_>, alias: &str, key_id: &str) -> Result<()> {
    if let Some(existing) = records::load_alias(&op.tx, alias)? {
        return Err(Error::AlreadyExists(AlreadyExists::Alias {
            alias: alias.to_string(),
            target_key_id: existing.target_key_id,
        }));
    }
    records::insert_alias(&op.tx, alias, key_id, op.now)
}

/// Refuses an API caller `action` on the key an alias points to now, unless that key's
/// policy or a grant allows it.
fn authorize_current_target(op: &mut Op<'_>, caller: &Principal, key_id: &str, action: &str) -> Result<()> {
    if caller.remote.is_none() {
        return Ok(());
    }
    match records::load_key(&op.tx, key_id)? {
        Some(current) => op.authorize_admin(caller, &current, action),
        None => Ok(()),
    }
}

/// An alias may only point to a customer key that is not on its way out.
fn check_target(key: &KeyRecord) -> Result<()> {
    require_customer_managed(key, "given user aliases")?;
    if key.state.is_pending_deletion() || key.state == KeyState::Destroyed {
        return Err(Error::KeyState(KeyStateError::new(key, StateProblem::AliasTarget)));
    }
    Ok(())
}

impl Kms {
    pub fn create_alias(&mut self, caller: &Principal, alias: &str, key_ref: &str) -> Result<()> {
        self.audited(caller, "CreateAlias", |op| {
            validate_alias_name(alias, false)?;
            let key = op.key(key_ref)?;
            check_target(&key)?;
            insert_unique(op, alias, &key.key_id)
        })
    }

    /// Points an existing alias at another key.
    pub fn update_alias(&mut self, caller: &Principal, alias: &str, key_ref: &str) -> Result<()> {
        self.audited(caller, "UpdateAlias", |op| {
            validate_alias_name(alias, false)?;
            let key = op.key(key_ref)?;
            check_target(&key)?;
            let existing = records::load_alias(&op.tx, alias)?
                .ok_or_else(|| Error::NotFound(NotFound::Alias { alias: alias.to_string() }))?;
            // An API caller moves an alias only away from a key it may administer, as in AWS
            // (otherwise anyone could point another's alias at a key of their own).
            authorize_current_target(op, caller, &existing.target_key_id, "kms:UpdateAlias")?;
            records::retarget_alias(&op.tx, alias, &key.key_id, op.now)
        })
    }

    pub fn delete_alias(&mut self, caller: &Principal, alias: &str) -> Result<()> {
        self.audited(caller, "DeleteAlias", |op| {
            validate_alias_name(alias, false)?;
            let existing = records::load_alias(&op.tx, alias)?
                .ok_or_else(|| Error::NotFound(NotFound::Alias { alias: alias.to_string() }))?;
            authorize_current_target(op, caller, &existing.target_key_id, "kms:DeleteAlias")?;
            op.event.key_id = Some(existing.target_key_id);
            records::delete_alias(&op.tx, alias)
        })
    }

    /// ListAliases, optionally of one key.
    pub fn list_aliases(&mut self, caller: &Principal, key_ref: Option<&str>) -> Result<Vec<AliasRecord>> {
        self.audited(caller, "ListAliases", |op| {
            let key_id = match key_ref {
                Some(r) => Some(op.key(r)?.key_id),
                None => None,
            };
            records::list_aliases(&op.tx, key_id.as_deref())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_names() {
        assert!(validate_alias_name("alias/finance", false).is_ok());
        assert!(validate_alias_name("alias/team/finance-2_x", false).is_ok());
        assert!(validate_alias_name("finance", false).is_err());
        assert!(validate_alias_name("alias/", false).is_err());
        assert!(validate_alias_name("alias/a b", false).is_err());
        assert!(validate_alias_name("alias/kmsfs/vol", false).is_err());
        assert!(validate_alias_name("alias/kmsfs/vol", true).is_ok());
        assert!(validate_alias_name(&format!("alias/{}", "a".repeat(251)), false).is_err());
    }
}
