//! Key policies and grants in the KMS: PutKeyPolicy/GetKeyPolicy, CreateGrant/ListGrants/
//! RetireGrant/RevokeGrant, and the authorization check every cryptographic operation makes.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::aws_errors::GRANT_TOKEN_ERROR;
use super::policy::{self, Decision, GrantRule, Policy, Request};
use super::{keyid, require_customer_managed, require_enabled, EncryptionContext, Kms, Op, Principal};
use crate::crypto;
use crate::encoding::hex;
use crate::error::{AccessDenied, Denial, Error, NotFound, Result};
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
        context_equals: g.context_equals,
        expires: g.expires,
    })
}

/// The policy's answer to `request` on key `key_id` (`policy` `None`: it has no usable
/// one), with the denial worded once: the statement or grant that allowed it, for the
/// audit trail, or AccessDenied.
fn decide(
    key_id: &str,
    policy: Option<&Policy>,
    grants: &[GrantRule],
    request: &Request<'_>,
) -> Result<String> {
    let decision = match policy {
        Some(policy) => policy.decide(grants, request),
        None => Decision::Deny("the key has no usable policy".into()),
    };
    match decision {
        Decision::Allow(why) => Ok(why),
        Decision::Deny(why) => Err(Error::AccessDenied(AccessDenied {
            key_id: Some(key_id.to_string()),
            reason: Denial::Policy { action: request.action.to_string(), why },
        })),
    }
}

/// The one authorization decision of kmsfs for a use of a key, for the KMS API and the
/// mount alike: `key` must be Enabled, and its policy or one of its grants must allow the
/// request. Returns the statement or grant that allowed it, for the audit trail.
pub(crate) fn authorize(
    key: &KeyRecord,
    policy: Option<&Policy>,
    grants: &[GrantRule],
    request: &Request<'_>,
) -> Result<String> {
    // Authorization first: a caller the key is not for learns nothing of its state.
    let why = decide(&key.key_id, policy, grants, request)?;
    require_enabled(key)?;
    Ok(why)
}

/// The decision on an administrative `action` (`kms:DisableKey`) on key `key_id` in any
/// state, from the stored policy and grants: how API callers administer keys, and what the
/// console asks before it offers an action, so both decide alike.
pub(crate) fn authorize_admin(
    conn: &Connection,
    owner_uid: u32,
    now: i64,
    caller: &Principal,
    key_id: &str,
    action: &str,
) -> Result<String> {
    let policy = effective_policy(conn, key_id, owner_uid)?;
    let grants = grant_rules(conn, key_id)?;
    let ctx = EncryptionContext::new();
    let request = Request { caller, action, context: &ctx, path: None, now };
    decide(key_id, Some(&policy), &grants, &request)
}

impl Op<'_> {
    /// Refuses an administrative `action` on `key` (any state) unless its policy or a grant
    /// allows it for the caller.
    pub(crate) fn authorize_admin(
        &mut self,
        caller: &Principal,
        key: &KeyRecord,
        action: &str,
    ) -> Result<()> {
        authorize_admin(&self.tx, self.owner_uid, self.now, caller, &key.key_id, action).map(drop)
    }

    /// Refuses `action` on `key` unless it is Enabled and its policy or a grant allows it for
    /// the caller. Through the KMS API the path, if any, comes from the encryption context.
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
        let why = authorize(key, Some(&policy), &grants, &request)?;
        self.event.reason = format!("allowed by {why}");
        Ok(())
    }
}

/// Removes `grant` if the caller is its grantee or its retiring principal.
fn retire(op: &mut Op<'_>, caller: &Principal, grant: &GrantRecord) -> Result<()> {
    op.event.key_id = Some(grant.key_id.clone());
    let retiring = grant.retiring_principal.as_deref().is_some_and(|p| caller.arn() == Some(p));
    // Through the API a grantee retires only a grant that gives it RetireGrant, as in AWS;
    // at the command line (the keystore's administrator) being the grantee is enough.
    let grantee = policy::parse_grantee(&grant.grantee)?.matches(caller)
        && (caller.remote.is_none() || grant.operations.iter().any(|o| o == "RetireGrant"));
    if !retiring && !grantee {
        return Err(Error::AccessDenied(AccessDenied {
            key_id: Some(grant.key_id.clone()),
            reason: Denial::NotGrantee { grant_id: grant.grant_id.clone(), grantee: grant.grantee.clone() },
        }));
    }
    records::delete_grant(&op.tx, &grant.grant_id)?;
    Ok(())
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
    /// An IAM principal that may retire the grant besides its grantee.
    pub retiring_principal: Option<String>,
    /// `constraints` are the exact encryption context (EncryptionContextEquals).
    pub context_equals: bool,
}

impl Kms {
    pub fn get_key_policy(&mut self, caller: &Principal, key_ref: &str) -> Result<String> {
        let owner = self.owner_uid;
        self.audited(caller, "GetKeyPolicy", |op| {
            let key = op.key(key_ref)?;
            Ok(records::load_policy(&op.tx, &key.key_id)?.unwrap_or_else(|| Policy::default_for_owner(owner)))
        })
    }

    /// PutKeyPolicy as AWS does it: unless `bypass_lockout_check`, a policy that would not
    /// let the caller change it again is refused (MalformedPolicyDocumentException).
    pub fn put_key_policy_checked(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        text: &str,
        bypass_lockout_check: bool,
    ) -> Result<()> {
        self.audited(caller, "PutKeyPolicy", |op| {
            let key = op.key(key_ref)?;
            require_customer_managed(&key, "re-policied")?;
            let policy = Policy::parse(text)?;
            let ctx = EncryptionContext::new();
            let request =
                Request { caller, action: "kms:PutKeyPolicy", context: &ctx, path: None, now: op.now };
            if !bypass_lockout_check && matches!(policy.decide(&[], &request), Decision::Deny(_)) {
                return Err(Error::MalformedPolicy(
                    "the policy would not allow you to update the key policy in the future (set \
                     BypassPolicyLockoutSafetyCheck to put it anyway)"
                        .into(),
                ));
            }
            records::store_policy(&op.tx, &key.key_id, text)
        })
    }

    /// PutKeyPolicy by the keystore's administrator: validated first; a refused policy
    /// leaves the old one in place.
    pub fn put_key_policy(&mut self, caller: &Principal, key_ref: &str, text: &str) -> Result<()> {
        self.put_key_policy_checked(caller, key_ref, text, true)
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
            super::require_not_deleted(&key)?;
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
            let retiring = opts
                .retiring_principal
                .as_deref()
                .map(|p| policy::normalize_iam_principal(p).map_err(Error::InvalidArgument))
                .transpose()?;
            let grantee_text = policy::grantee_text(&grantee);
            // CreateGrant is idempotent by name: the same grant asked for again is the one
            // that exists (AWS answers with its id and a token).
            if !opts.name.is_empty() {
                let same = records::list_grants(&op.tx, Some(&key.key_id))?.into_iter().find(|g| {
                    g.name == opts.name
                        && g.grantee == grantee_text
                        && g.operations == opts.operations
                        && g.constraints == opts.constraints
                        && g.context_equals == opts.context_equals
                        && g.retiring_principal == retiring
                });
                if let Some(g) = same {
                    op.event.reason = format!("grant {} exists under the name {}", g.grant_id, g.name);
                    return Ok((g.grant_id, g.token));
                }
            }
            let grant = GrantRecord {
                grant_id: keyid::new_key_id().replace('-', ""),
                key_id: key.key_id.clone(),
                name: opts.name.clone(),
                grantee: grantee_text,
                operations: opts.operations.clone(),
                constraints: opts.constraints.clone(),
                created: op.now,
                expires: opts.expires,
                token: hex(&crypto::random_bytes::<24>()),
                retiring_principal: retiring,
                context_equals: opts.context_equals,
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

    /// RetireGrant: by the grantee or the retiring principal, naming the grant by id or token.
    pub fn retire_grant(&mut self, caller: &Principal, id_or_token: &str) -> Result<()> {
        self.audited(caller, "RetireGrant", |op| {
            let grant = records::list_grants(&op.tx, None)?
                .into_iter()
                .find(|g| {
                    g.grant_id == id_or_token || crypto::ct_eq(g.token.as_bytes(), id_or_token.as_bytes())
                })
                .ok_or(Error::NotFound(NotFound::Grant { key_id: None, grant: None }))?;
            retire(op, caller, &grant)
        })
    }

    /// RetireGrant with a grant token (AWS's InvalidGrantTokenException for an unknown one).
    pub fn retire_grant_by_token(&mut self, caller: &Principal, token: &str) -> Result<()> {
        self.audited(caller, "RetireGrant", |op| {
            let grant = records::list_grants(&op.tx, None)?
                .into_iter()
                .find(|g| crypto::ct_eq(g.token.as_bytes(), token.as_bytes()))
                .ok_or_else(|| Error::InvalidArgument(format!("{GRANT_TOKEN_ERROR}is not valid")))?;
            retire(op, caller, &grant)
        })
    }

    /// RetireGrant with a key and a grant id.
    pub fn retire_grant_of_key(&mut self, caller: &Principal, key_ref: &str, grant_id: &str) -> Result<()> {
        self.audited(caller, "RetireGrant", |op| {
            op.event.key_id = Some(key_ref.to_string());
            let key = super::resolve(&op.tx, key_ref)?;
            op.event.key_id = Some(key.key_id.clone());
            let grant = records::list_grants(&op.tx, Some(&key.key_id))?
                .into_iter()
                .find(|g| g.grant_id == grant_id)
                .ok_or_else(|| {
                    Error::NotFound(NotFound::Grant {
                        key_id: Some(key.key_id.clone()),
                        grant: Some(grant_id.into()),
                    })
                })?;
            retire(op, caller, &grant)
        })
    }

    /// ListRetirableGrants: the grants `principal` may retire.
    pub fn list_retirable_grants(&mut self, caller: &Principal, principal: &str) -> Result<Vec<GrantRecord>> {
        self.audited(caller, "ListRetirableGrants", |op| {
            let principal = policy::normalize_iam_principal(principal).map_err(Error::InvalidArgument)?;
            Ok(records::list_grants(&op.tx, None)?
                .into_iter()
                .filter(|g| g.retiring_principal.as_deref() == Some(principal.as_str()))
                .collect())
        })
    }

    /// Whether `token` is a grant token this keystore issued (GrantTokens of an API call).
    pub fn is_grant_token(&self, token: &str) -> Result<bool> {
        Ok(records::list_grants(self.keystore().conn(), None)?
            .iter()
            .any(|g| crypto::ct_eq(g.token.as_bytes(), token.as_bytes())))
    }

    /// RevokeGrant: by an administrator (the passphrase holder).
    pub fn revoke_grant(&mut self, caller: &Principal, key_ref: &str, grant_id: &str) -> Result<()> {
        self.audited(caller, "RevokeGrant", |op| {
            let key = op.key(key_ref)?;
            let known =
                records::list_grants(&op.tx, Some(&key.key_id))?.iter().any(|g| g.grant_id == grant_id);
            if !known || !records::delete_grant(&op.tx, grant_id)? {
                return Err(Error::NotFound(NotFound::Grant {
                    key_id: Some(key.key_id),
                    grant: Some(grant_id.to_string()),
                }));
            }
            Ok(())
        })
    }
}
