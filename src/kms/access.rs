//! Key policies and grants in the KMS: PutKeyPolicy/GetKeyPolicy, CreateGrant/ListGrants/
//! RetireGrant/RevokeGrant, and the authorization check every cryptographic operation makes.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::policy::{self, Decision, GrantRule, Policy, Request};
use super::{keyid, require_customer_managed, EncryptionContext, Kms, Op, Principal};
use crate::crypto;
use crate::encoding::hex;
use crate::error::{Error, Result};
use crate::keystore::records::{self, GrantRecord, KeyRecord};

/// The policy in force for a key: its stored document, or the keystore owner's default.
pub fn effective_policy(conn: &Connection, key_id: &str, owner_uid: u32) -> Result<Policy> {
    match records::load_policy(conn, key_id)? {
        Some(text) => Policy::parse(&text).map_err(|e| {
            Error::CorruptMaterial(format!("the stored policy of key {key_id} is invalid: {e}"))
        }),
        None => Policy::parse(&Policy::default_for_owner(owner_uid)),
    }
}

/// The grants of a key in the form evaluation needs.
pub fn grant_rules(conn: &Connection, key_id: &str) -> Result<Vec<GrantRule>> {
    records::list_grants(conn, Some(key_id))?.iter().map(rule_of).collect()
}

pub fn rule_of(g: &GrantRecord) -> Result<GrantRule> {
    Ok(GrantRule {
        grant_id: g.grant_id.clone(),
        grantee: policy::parse_grantee(&g.grantee)?,
        operations: g.operations.clone(),
        constraints: g.constraints.clone(),
        expires: g.expires,
    })
}

impl Op<'_> {
    /// Refuses `action` on `key` unless its policy or a grant allows it for the caller.
    pub(crate) fn authorize(
        &mut self,
        caller: &Principal,
        key: &KeyRecord,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<()> {
        let policy = effective_policy(&self.tx, &key.key_id, self.owner_uid)?;
        let grants = grant_rules(&self.tx, &key.key_id)?;
        let request = Request { caller, action, context: ctx, path: ctx.get("kmsfs:Path"), now: self.now };
        match policy.decide(&grants, &request) {
            Decision::Allow(why) => {
                self.event.reason = format!("allowed by {why}");
                Ok(())
            }
            Decision::Deny(why) => Err(Error::AccessDenied(format!("key {}: {why}", key.key_id))),
        }
    }
}

/// Options of CreateGrant.
#[derive(Debug, Clone, Default)]
pub struct GrantOptions {
    pub grantee: String,
    pub operations: Vec<String>,
    pub constraints: BTreeMap<String, String>,
    /// Unix seconds.
    pub expires: Option<i64>,
    pub name: String,
}

impl Kms {
    pub fn get_key_policy(&mut self, caller: &Principal, key_ref: &str) -> Result<String> {
        let owner = self.owner_uid;
        self.audited(caller, "GetKeyPolicy", |op| {
            let key = op.key(key_ref)?;
            Ok(records::load_policy(&op.tx, &key.key_id)?.unwrap_or_else(|| Policy::default_for_owner(owner)))
        })
    }

    /// PutKeyPolicy: validated first; a refused policy leaves the old one in place.
    pub fn put_key_policy(&mut self, caller: &Principal, key_ref: &str, text: &str) -> Result<()> {
        self.audited(caller, "PutKeyPolicy", |op| {
            let key = op.key(key_ref)?;
            require_customer_managed(&key, "re-policied")?;
            Policy::parse(text)?;
            records::store_policy(&op.tx, &key.key_id, text)
        })
    }

    /// CreateGrant. Returns (grant id, grant token).
    pub fn create_grant(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        opts: &GrantOptions,
    ) -> Result<(String, String)> {
        self.audited(caller, "CreateGrant", |op| {
            let key = op.key(key_ref)?;
            require_customer_managed(&key, "given grants")?;
            let grantee = policy::parse_grantee(&opts.grantee)?;
            if opts.operations.is_empty() {
                return Err(Error::InvalidArgument("a grant needs at least one operation".into()));
            }
            for o in &opts.operations {
                if !policy::GRANT_OPERATIONS.contains(&o.as_str()) {
                    return Err(Error::InvalidArgument(format!(
                        "unknown grant operation '{o}' (use {})",
                        policy::GRANT_OPERATIONS.join(", ")
                    )));
                }
            }
            if opts.expires.is_some_and(|t| t <= op.now) {
                return Err(Error::InvalidArgument("the grant's expiry is in the past".into()));
            }
            let grant = GrantRecord {
                grant_id: keyid::new_key_id().replace('-', ""),
                key_id: key.key_id.clone(),
                name: opts.name.clone(),
                grantee: policy::grantee_text(&grantee),
                operations: opts.operations.clone(),
                constraints: opts.constraints.clone(),
                created: op.now,
                expires: opts.expires,
                token: hex(&crypto::random_bytes::<24>()),
            };
            records::insert_grant(&op.tx, &grant)?;
            op.event.reason =
                format!("grant {} to {} for {}", grant.grant_id, grant.grantee, grant.operations.join(","));
            Ok((grant.grant_id, grant.token))
        })
    }

    pub fn list_grants(&mut self, caller: &Principal, key_ref: &str) -> Result<Vec<GrantRecord>> {
        self.audited(caller, "ListGrants", |op| {
            let key = op.key(key_ref)?;
            records::list_grants(&op.tx, Some(&key.key_id))
        })
    }

    /// RetireGrant: by the grantee, naming the grant by id or token.
    pub fn retire_grant(&mut self, caller: &Principal, id_or_token: &str) -> Result<()> {
        self.audited(caller, "RetireGrant", |op| {
            let grant = records::list_grants(&op.tx, None)?
                .into_iter()
                .find(|g| g.grant_id == id_or_token || crypto::ct_eq(g.token.as_bytes(), id_or_token.as_bytes()))
                .ok_or_else(|| Error::NotFound("no grant with that id or token".into()))?;
            op.event.key_id = Some(grant.key_id.clone());
            if !policy::parse_grantee(&grant.grantee)?.matches(caller) {
                return Err(Error::AccessDenied(format!(
                    "only the grantee ({}) retires grant {}; an administrator revokes it with `kmsfs grant revoke`",
                    grant.grantee, grant.grant_id
                )));
            }
            records::delete_grant(&op.tx, &grant.grant_id)?;
            Ok(())
        })
    }

    /// RevokeGrant: by an administrator (the passphrase holder).
    pub fn revoke_grant(&mut self, caller: &Principal, key_ref: &str, grant_id: &str) -> Result<()> {
        self.audited(caller, "RevokeGrant", |op| {
            let key = op.key(key_ref)?;
            let known =
                records::list_grants(&op.tx, Some(&key.key_id))?.iter().any(|g| g.grant_id == grant_id);
            if !known || !records::delete_grant(&op.tx, grant_id)? {
                return Err(Error::NotFound(format!("key {} has no grant {grant_id}", key.key_id)));
            }
            Ok(())
        })
    }
}
