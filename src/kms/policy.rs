//! Key policies and grants: who may use a key for what, evaluated as AWS KMS does.
//!
//! A request is denied unless a policy statement or a grant allows it, and an explicit Deny
//! in the policy always wins. Principals are Linux users: `{"User": [names], "Uid": [ids],
//! "Group": [names]}` or `"*"`. Conditions test the request's encryption context and the
//! path inside a mount (`kmsfs:Path`) with the String operators (plain, `IfExists`) and
//! `Null`, evaluated as AWS IAM does when a key is absent from the request.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{EncryptionContext, Principal};
use crate::error::{Error, Result};

/// Largest policy document accepted (AWS's limit).
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

/// Every action a policy may name.
pub const ACTIONS: &[&str] = &[
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:DescribeKey",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:RotateKeyOnDemand",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:ListKeyRotations",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:CreateGrant",
    "kms:ListGrants",
    "kms:RevokeGrant",
    "kms:RetireGrant",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:UpdateKeyDescription",
    "kms:GetKeyRotationStatus",
    "kms:ListKeyPolicies",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ListResourceTags",
    "kms:GetKeyLastUsage",
    "kms:Sign",
    "kms:Verify",
    "kms:GetPublicKey",
    "kms:GenerateMac",
    "kms:VerifyMac",
    "kms:DeriveSharedSecret",
    "kms:GenerateDataKeyPair",
    "kms:GenerateDataKeyPairWithoutPlaintext",
];

/// Operations a grant may allow (AWS grant operations), each the action `kms:<op>`.
pub const GRANT_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "DescribeKey",
    "CreateGrant",
    "RetireGrant",
    "Sign",
    "Verify",
    "GetPublicKey",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// Who a statement or grant is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrincipalSpec {
    pub anyone: bool,
    pub users: Vec<String>,
    pub uids: Vec<u32>,
    pub groups: Vec<String>,
    /// IAM principals: `arn:aws:iam::ACCOUNT:user/NAME` or `arn:aws:iam::ACCOUNT:root` (every
    /// access key of that account: there is no IAM layer to delegate to).
    pub aws: Vec<String>,
}

impl PrincipalSpec {
    pub fn matches(&self, p: &Principal) -> bool {
        self.anyone || self.matches_aws(p) || (p.is_unix() && self.matches_unix(p))
    }

    fn matches_aws(&self, p: &Principal) -> bool {
        let Some(remote) = p.remote.as_ref() else { return false };
        let Some(arn) = remote.arn.as_deref() else { return false };
        self.aws.iter().any(|a| match a.strip_suffix(":root") {
            Some(prefix) => prefix.strip_prefix("arn:aws:iam::") == Some(remote.account.as_str()),
            None => a == arn,
        })
    }

    fn matches_unix(&self, p: &Principal) -> bool {
        self.uids.contains(&p.uid)
            || self.users.contains(&p.user)
            || self
                .groups
                .iter()
                .filter_map(|g| super::principal::group_id(g))
                .any(|gid| gid == p.gid || p.groups.contains(&gid))
    }

    pub fn uses_groups(&self) -> bool {
        !self.groups.is_empty()
    }

    fn describe(&self) -> String {
        if self.anyone {
            return "*".into();
        }
        let mut parts: Vec<String> = self.users.iter().map(|u| format!("user:{u}")).collect();
        parts.extend(self.uids.iter().map(|u| format!("uid:{u}")));
        parts.extend(self.groups.iter().map(|g| format!("group:{g}")));
        parts.extend(self.aws.iter().cloned());
        parts.join(",")
    }
}

/// A condition: operator, key, accepted values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    test: Test,
    /// `...IfExists`: the condition holds when the key is absent from the request.
    if_exists: bool,
    key: String,
    values: Vec<String>,
}

/// What a condition operator compares, without its `IfExists` suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    /// The request's address is inside one of the CIDR blocks (`aws:SourceIp`).
    IpAddress,
    NotIpAddress,
    /// `Null: {"key": "true"}` holds when the key is absent, `"false"` when it is present.
    Null,
}

/// The operators besides `Null`; each also exists with the `IfExists` suffix.
const STRING_OPERATORS: &[(&str, Test)] = &[
    ("StringEquals", Test::StringEquals),
    ("StringNotEquals", Test::StringNotEquals),
    ("StringEqualsIgnoreCase", Test::StringEqualsIgnoreCase),
    ("StringNotEqualsIgnoreCase", Test::StringNotEqualsIgnoreCase),
    ("StringLike", Test::StringLike),
    ("StringNotLike", Test::StringNotLike),
    ("IpAddress", Test::IpAddress),
    ("NotIpAddress", Test::NotIpAddress),
];

/// The operator named `name`, and whether it is an `...IfExists` form.
fn parse_operator(name: &str) -> Option<(Test, bool)> {
    if name == "Null" {
        return Some((Test::Null, false));
    }
    let (base, if_exists) = match name.strip_suffix("IfExists") {
        Some(base) => (base, true),
        None => (name, false),
    };
    STRING_OPERATORS.iter().find(|(n, _)| *n == base).map(|&(_, test)| (test, if_exists))
}

fn operator_names() -> String {
    let names: Vec<&str> = STRING_OPERATORS.iter().map(|(n, _)| *n).collect();
    format!("{}, each also with IfExists, or Null", names.join(", "))
}

/// Condition keys about the caller rather than the encryption context.
const CALLER_KEYS: &[&str] = &["kmsfs:Path", "kms:CallerAccount", "aws:PrincipalArn", "aws:SourceIp"];

impl Condition {
    /// As AWS IAM evaluates it: a key absent from the request makes a positive operator
    /// false and a negated one (`...Not...`) true; `...IfExists` makes any operator true
    /// then; `Null` tests only presence. Several values: the key matches any of them (for a
    /// negated operator: none of them).
    fn holds(&self, request: &Request<'_>) -> bool {
        let actual = request.value(&self.key);
        let Some(actual) = actual.as_deref() else {
            return match self.test {
                Test::Null => self.values.iter().any(|v| v == "true"),
                _ => self.if_exists || self.test.negated(),
            };
        };
        let matches = |v: &String| match self.test {
            Test::StringEquals | Test::StringNotEquals => v == actual,
            Test::StringEqualsIgnoreCase | Test::StringNotEqualsIgnoreCase => {
                v.to_lowercase() == actual.to_lowercase()
            }
            Test::StringLike | Test::StringNotLike => glob(v, actual),
            Test::IpAddress | Test::NotIpAddress => cidr_contains(v, actual),
            Test::Null => v == "false",
        };
        let any = self.values.iter().any(matches);
        if self.test.negated() {
            !any
        } else {
            any
        }
    }
}

impl Test {
    fn negated(self) -> bool {
        matches!(
            self,
            Test::StringNotEquals
                | Test::StringNotEqualsIgnoreCase
                | Test::StringNotLike
                | Test::NotIpAddress
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    sid: String,
    effect: Effect,
    principal: PrincipalSpec,
    actions: Vec<String>,
    conditions: Vec<Condition>,
}

/// A parsed, validated key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// A grant as evaluation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRule {
    pub grant_id: String,
    pub grantee: PrincipalSpec,
    pub operations: Vec<String>,
    /// Encryption-context pairs (values may use `*`) the request must carry.
    pub constraints: BTreeMap<String, String>,
    /// The request's encryption context must be exactly `constraints` (literal values).
    pub context_equals: bool,
    pub expires: Option<i64>,
}

/// What is being asked.
pub struct Request<'a> {
    pub caller: &'a Principal,
    pub action: &'a str,
    pub context: &'a EncryptionContext,
    pub path: Option<&'a str>,
    pub now: i64,
}

impl Request<'_> {
    fn value(&self, key: &str) -> Option<String> {
        if key == "kmsfs:Path" {
            return self.path.map(str::to_string);
        }
        let remote = self.caller.remote.as_deref();
        match key {
            "kms:CallerAccount" => return remote.map(|r| r.account.clone()),
            "aws:PrincipalArn" => return remote.and_then(|r| r.arn.clone()),
            // The address without its port (IAM's aws:SourceIp); a socket peer has none.
            "aws:SourceIp" => {
                return remote
                    .and_then(|r| r.source.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.ip().to_string())
            }
            _ => {}
        }
        key.strip_prefix("kms:EncryptionContext:").and_then(|k| self.context.get(k)).map(str::to_string)
    }
}

/// The outcome, with the reason the audit trail records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Deny(String),
}

impl Policy {
    /// The policy a new customer key gets: its creator may do everything.
    pub fn default_for_owner(uid: u32) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "Enable the key owner",
                "Effect": "Allow",
                "Principal": { "Uid": [uid] },
                "Action": "kms:*",
                "Resource": "*"
            }]
        }))
        .expect("static JSON")
    }

    /// The policy of a key created through the API: the creating IAM principal and the
    /// keystore owner (its administrator) may do everything.
    pub fn default_for_api_creator(owner_uid: u32, creator_arn: &str) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Enable the key creator",
                    "Effect": "Allow",
                    "Principal": { "AWS": creator_arn },
                    "Action": "kms:*",
                    "Resource": "*"
                },
                {
                    "Sid": "Enable the keystore administrator",
                    "Effect": "Allow",
                    "Principal": { "Uid": [owner_uid] },
                    "Action": "kms:*",
                    "Resource": "*"
                }
            ]
        }))
        .expect("static JSON")
    }

    /// The policy of a managed (volume) key: every user may use it through the volume, where
    /// Unix permissions decide; only its creator (the keystore's administrator) may re-wrap
    /// under or away from it, so no user can move a directory onto it or off it; nobody
    /// administers it but kmsfs.
    pub fn managed_default(creator_uid: u32) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "Allow use through kmsfs volumes",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
                "Resource": "*"
            }, {
                "Sid": "Allow re-wrapping by the key's creator",
                "Effect": "Allow",
                "Principal": { "Uid": [creator_uid] },
                "Action": "kms:ReEncrypt*",
                "Resource": "*"
            }]
        }))
        .expect("static JSON")
    }

    /// The managed-key policy of keystores made before [`Policy::managed_default`] stopped
    /// giving `kms:ReEncrypt*` to everyone; such stored policies are replaced on open.
    pub fn legacy_managed_default() -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "Allow use through kmsfs volumes",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"],
                "Resource": "*"
            }]
        }))
        .expect("static JSON")
    }

    /// Parses and validates a policy document; errors name the line or the field.
    pub fn parse(text: &str) -> Result<Policy> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(Error::LimitExceeded(format!(
                "the policy is {} bytes; the limit is {MAX_POLICY_BYTES}",
                text.len()
            )));
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            Error::MalformedPolicy(format!(
                "the policy is not valid JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ))
        })?;
        let bad = |field: &str, why: String| Error::MalformedPolicy(format!("policy field {field}: {why}"));
        let obj = doc.as_object().ok_or_else(|| bad("(top level)", "must be an object".into()))?;
        for key in obj.keys() {
            if !["Version", "Id", "Statement"].contains(&key.as_str()) {
                return Err(bad(key, "unknown field (expected Version, Id, Statement)".into()));
            }
        }
        if let Some(v) = obj.get("Version") {
            if !v.is_string() {
                return Err(bad("Version", "must be a string such as \"2012-10-17\"".into()));
            }
        }
        let statements = match obj.get("Statement") {
            Some(Value::Array(items)) => items.clone(),
            Some(single @ Value::Object(_)) => vec![single.clone()],
            _ => return Err(bad("Statement", "must be a list of statements".into())),
        };
        if statements.is_empty() {
            return Err(bad("Statement", "must hold at least one statement".into()));
        }
        let statements = statements
            .iter()
            .enumerate()
            .map(|(i, s)| parse_statement(s, &format!("Statement[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Policy { statements })
    }

    /// Whether any statement names groups (so callers' groups must be looked up).
    pub fn uses_groups(&self) -> bool {
        self.statements.iter().any(|s| s.principal.uses_groups())
    }

    /// Evaluates `request` against this policy and `grants`: explicit Deny wins, then any
    /// Allow, else deny.
    pub fn decide(&self, grants: &[GrantRule], request: &Request<'_>) -> Decision {
        let applies = |s: &&Statement| {
            s.principal.matches(request.caller)
                && s.actions.iter().any(|a| action_matches(a, request.action))
                && s.conditions.iter().all(|c| c.holds(request))
        };
        if let Some(deny) = self.statements.iter().filter(|s| s.effect == Effect::Deny).find(applies) {
            return Decision::Deny(format!(
                "explicit Deny in policy statement '{}' for {} on {}",
                deny.sid,
                who(request.caller),
                request.action
            ));
        }
        if let Some(allow) = self.statements.iter().filter(|s| s.effect == Effect::Allow).find(applies) {
            return Decision::Allow(format!("policy statement '{}'", allow.sid));
        }
        let op = request.action.trim_start_matches("kms:");
        let granted = grants.iter().find(|g| {
            g.expires.is_none_or(|t| t > request.now)
                && g.grantee.matches(request.caller)
                && g.operations.iter().any(|o| o == op)
                && if g.context_equals {
                    request.context.0 == g.constraints
                } else {
                    g.constraints.iter().all(|(k, v)| {
                        let actual = if k == "kmsfs:Path" { request.path } else { request.context.get(k) };
                        actual.is_some_and(|a| glob(v, a))
                    })
                }
        });
        match granted {
            Some(g) => Decision::Allow(format!("grant {}", g.grant_id)),
            None => Decision::Deny(format!(
                "no policy statement or grant allows {} for {}",
                request.action,
                who(request.caller)
            )),
        }
    }
}

fn who(p: &Principal) -> String {
    format!("user {} (uid {})", p.user, p.uid)
}

fn parse_statement(v: &Value, at: &str) -> Result<Statement> {
    let bad = |field: &str, why: String| Error::MalformedPolicy(format!("policy field {at}.{field}: {why}"));
    let obj = v
        .as_object()
        .ok_or_else(|| Error::MalformedPolicy(format!("policy field {at}: must be an object")))?;
    for key in obj.keys() {
        if !["Sid", "Effect", "Principal", "Action", "Resource", "Condition"].contains(&key.as_str()) {
            return Err(bad(
                key,
                "unknown field (expected Sid, Effect, Principal, Action, Resource, Condition)".into(),
            ));
        }
    }
    let sid = match obj.get("Sid") {
        None => at.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("Sid", "must be a string".into())),
    };
    let effect = match obj.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        Some(other) => return Err(bad("Effect", format!("must be Allow or Deny, not '{other}'"))),
        None => return Err(bad("Effect", "is required (Allow or Deny)".into())),
    };
    let principal =
        parse_principal(obj.get("Principal").ok_or_else(|| bad("Principal", "is required".into()))?)
            .map_err(|why| bad("Principal", why))?;
    let actions = strings(obj.get("Action").ok_or_else(|| bad("Action", "is required".into()))?)
        .map_err(|why| bad("Action", why))?;
    for action in &actions {
        if !ACTIONS.iter().any(|known| action_matches(action, known)) {
            return Err(bad(
                "Action",
                format!("unknown action '{action}' (e.g. kms:Decrypt, kms:GenerateDataKey, kms:*)"),
            ));
        }
    }
    let mut conditions = Vec::new();
    if let Some(cond) = obj.get("Condition") {
        let cond = cond.as_object().ok_or_else(|| bad("Condition", "must be an object".into()))?;
        for (operator, tests) in cond {
            let (test, if_exists) = parse_operator(operator).ok_or_else(|| {
                bad("Condition", format!("unknown operator '{operator}' (use {})", operator_names()))
            })?;
            let tests = tests
                .as_object()
                .ok_or_else(|| bad(&format!("Condition.{operator}"), "must be an object".into()))?;
            for (key, values) in tests {
                if operator.ends_with("IpAddress") {
                    if key != "aws:SourceIp" {
                        return Err(bad(
                            &format!("Condition.{operator}"),
                            format!("{operator} tests aws:SourceIp, not '{key}'"),
                        ));
                    }
                    for v in
                        strings(values).map_err(|why| bad(&format!("Condition.{operator}.{key}"), why))?
                    {
                        if parse_cidr(&v).is_none() {
                            return Err(bad(
                                &format!("Condition.{operator}.{key}"),
                                format!("'{v}' is not an address or CIDR block"),
                            ));
                        }
                    }
                }
                if !CALLER_KEYS.contains(&key.as_str()) && !key.starts_with("kms:EncryptionContext:") {
                    return Err(bad(
                        &format!("Condition.{operator}"),
                        format!(
                            "unknown condition key '{key}' (use kmsfs:Path, kms:EncryptionContext:KEY, kms:CallerAccount, aws:PrincipalArn or aws:SourceIp)"
                        ),
                    ));
                }
                let at = format!("Condition.{operator}.{key}");
                let values = if test == Test::Null { null_values(values) } else { strings(values) }
                    .map_err(|why| bad(&at, why))?;
                conditions.push(Condition { test, if_exists, key: key.clone(), values });
            }
        }
    }
    Ok(Statement { sid, effect, principal, actions, conditions })
}

fn parse_principal(v: &Value) -> std::result::Result<PrincipalSpec, String> {
    match v {
        Value::String(s) if s == "*" => Ok(PrincipalSpec { anyone: true, ..Default::default() }),
        Value::Object(map) => {
            let mut spec = PrincipalSpec::default();
            for (kind, values) in map {
                match kind.as_str() {
                    "User" => spec.users = strings(values)?,
                    "Group" => spec.groups = strings(values)?,
                    "Uid" => {
                        let items = match values {
                            Value::Array(a) => a.clone(),
                            other => vec![other.clone()],
                        };
                        for item in items {
                            let uid = item
                                .as_u64()
                                .or_else(|| item.as_str().and_then(|s| s.parse().ok()))
                                .filter(|&u| u <= u32::MAX as u64)
                                .ok_or_else(|| format!("Uid values must be numbers, not {item}"))?;
                            spec.uids.push(uid as u32);
                        }
                    }
                    "AWS" if values == "*" => spec.anyone = true,
                    "AWS" => {
                        for v in strings(values)? {
                            if v == "*" {
                                spec.anyone = true;
                            } else {
                                spec.aws.push(normalize_iam_principal(&v)?);
                            }
                        }
                    }
                    other => {
                        return Err(format!(
                            "unknown principal type '{other}' (use AWS, User, Group, Uid or \"*\")"
                        ))
                    }
                }
            }
            if spec == PrincipalSpec::default() {
                return Err("names nobody".into());
            }
            Ok(spec)
        }
        _ => Err("must be \"*\" or an object such as {\"User\": [\"alice\"]}".into()),
    }
}

/// The values of a `Null` test: `"true"`/`"false"` (or JSON booleans), as text.
fn null_values(v: &Value) -> std::result::Result<Vec<String>, String> {
    let items = match v {
        Value::Array(items) if !items.is_empty() => items.clone(),
        Value::Array(_) => return Err("must be \"true\" or \"false\"".into()),
        other => vec![other.clone()],
    };
    items
        .iter()
        .map(|i| match i {
            Value::Bool(b) => Ok(b.to_string()),
            Value::String(s) if s == "true" || s == "false" => Ok(s.clone()),
            other => Err(format!("must be \"true\" or \"false\", not {other}")),
        })
        .collect()
}

/// An IAM principal as a policy may name it: an account id (its root), the account root
/// ARN, or a user ARN; returned as an ARN.
pub fn normalize_iam_principal(text: &str) -> std::result::Result<String, String> {
    let is_account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    if is_account(text) {
        return Ok(format!("arn:aws:iam::{text}:root"));
    }
    let bad = || {
        format!("'{text}' is not an IAM principal (arn:aws:iam::ACCOUNT:user/NAME, arn:aws:iam::ACCOUNT:root or an account id)")
    };
    let rest = text.strip_prefix("arn:aws:iam::").ok_or_else(bad)?;
    let (account, resource) = rest.split_once(':').ok_or_else(bad)?;
    if !is_account(account) {
        return Err(bad());
    }
    match resource.strip_prefix("user/") {
        _ if resource == "root" => Ok(text.to_string()),
        Some(name) if valid_iam_user_name(name) => Ok(text.to_string()),
        _ => Err(bad()),
    }
}

/// IAM's rule for user names: 1-64 of letters, digits and `+=,.@_-`.
pub fn valid_iam_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

/// A string or a list of strings.
fn strings(v: &Value) -> std::result::Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(|| format!("expected strings, found {i}")))
            .collect(),
        _ => Err("must be a string or a non-empty list of strings".into()),
    }
}

/// `kms:*`, `kms:ReEncrypt*` and exact names.
fn action_matches(pattern: &str, action: &str) -> bool {
    glob(pattern, action)
}

/// Glob with `*` (any run) and `?` (one character), as IAM's StringLike.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `203.0.113.0/24`, `2001:db8::/32` or a single address.
fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u32)> {
    let (addr, bits) = match text.split_once('/') {
        Some((a, b)) => (a.parse::<std::net::IpAddr>().ok()?, b.parse::<u32>().ok()?),
        None => {
            let a: std::net::IpAddr = text.parse().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

/// Whether address `ip` is inside `cidr` (IAM's IpAddress operator).
fn cidr_contains(cidr: &str, ip: &str) -> bool {
    use std::net::IpAddr;
    let (Some((net, bits)), Ok(ip)) = (parse_cidr(cidr), ip.parse::<IpAddr>()) else { return false };
    let prefix = |bytes: &[u8], bits: u32| -> Vec<u8> {
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let keep = bits.saturating_sub(8 * i as u32).min(8);
                if keep == 0 {
                    0
                } else {
                    b & (0xffu8 << (8 - keep))
                }
            })
            .collect()
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => prefix(&n.octets(), bits) == prefix(&i.octets(), bits),
        (IpAddr::V6(n), IpAddr::V6(i)) => prefix(&n.octets(), bits) == prefix(&i.octets(), bits),
        _ => false,
    }
}

/// Parses `user:NAME`, `group:NAME` or `uid:N`.
pub fn parse_grantee(text: &str) -> Result<PrincipalSpec> {
    if text.starts_with("arn:") {
        let arn = normalize_iam_principal(text).map_err(Error::InvalidArgument)?;
        return Ok(PrincipalSpec { aws: vec![arn], ..Default::default() });
    }
    let bad = || Error::InvalidArgument(format!("grantee '{text}' must be user:NAME, group:NAME or uid:N"));
    let (kind, value) = text.split_once(':').ok_or_else(bad)?;
    if value.is_empty() {
        return Err(bad());
    }
    let mut spec = PrincipalSpec::default();
    match kind {
        "user" => spec.users.push(value.to_string()),
        "group" => spec.groups.push(value.to_string()),
        "uid" => spec.uids.push(value.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    }
    Ok(spec)
}

/// The text form of a grantee, as stored.
pub fn grantee_text(spec: &PrincipalSpec) -> String {
    spec.describe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, uid: u32, gid: u32) -> Principal {
        Principal { uid, gid, groups: vec![gid], user: name.into(), pid: None, remote: None }
    }

    fn decide(policy: &Policy, grants: &[GrantRule], who: &Principal, action: &str, path: &str) -> bool {
        let ctx = EncryptionContext::new().with("app", "web");
        let req = Request { caller: who, action, context: &ctx, path: Some(path), now: 100 };
        matches!(policy.decide(grants, &req), Decision::Allow(_))
    }

    #[test]
    fn deny_wins_and_nothing_is_allowed_by_default() {
        let policy = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[
                {"Sid":"a","Effect":"Allow","Principal":{"Group":["0"]},"Action":"kms:*"},
                {"Sid":"d","Effect":"Deny","Principal":{"User":["alice"]},"Action":"kms:Decrypt"},
                {"Sid":"p","Effect":"Allow","Principal":"*","Action":"kms:GenerateDataKey*",
                 "Condition":{"StringLike":{"kmsfs:Path":"/finance/*"}}}]}"#,
        )
        .unwrap();
        let alice = user("alice", 1001, 0);
        let bob = user("bob", 1002, 1002);
        assert!(!decide(&policy, &[], &alice, "kms:Decrypt", "/x"), "explicit deny beats the group allow");
        assert!(decide(&policy, &[], &alice, "kms:Encrypt", "/x"));
        assert!(!decide(&policy, &[], &bob, "kms:Decrypt", "/x"));
        assert!(decide(&policy, &[], &bob, "kms:GenerateDataKey", "/finance/q1.xls"));
        assert!(!decide(&policy, &[], &bob, "kms:GenerateDataKey", "/hr/x"));
        let grant = GrantRule {
            grant_id: "g1".into(),
            grantee: parse_grantee("user:bob").unwrap(),
            operations: vec!["Decrypt".into()],
            constraints: [("app".to_string(), "w*".to_string())].into(),
            context_equals: false,
            expires: Some(200),
        };
        assert!(decide(&policy, std::slice::from_ref(&grant), &bob, "kms:Decrypt", "/x"));
        let expired = GrantRule { expires: Some(50), ..grant.clone() };
        assert!(!decide(&policy, &[expired], &bob, "kms:Decrypt", "/x"));
        let other_ctx = GrantRule { constraints: [("app".to_string(), "db".to_string())].into(), ..grant };
        assert!(!decide(&policy, &[other_ctx], &bob, "kms:Decrypt", "/x"));
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let err = |text: &str| Policy::parse(text).unwrap_err().to_string();
        assert!(err("{").contains("line 1"));
        assert!(err(r#"{"Statement":[{"Effect":"Permit","Principal":"*","Action":"kms:Decrypt"}]}"#)
            .contains("Statement[0].Effect"));
        assert!(err(r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:Frobnicate"}]}"#)
            .contains("kms:Frobnicate"));
        assert!(err(r#"{"Statement":[{"Effect":"Allow","Principal":{"Robot":["x"]},"Action":"kms:*"}]}"#)
            .contains("Robot"));
        assert!(err(r#"{"Statement":[]}"#).contains("at least one"));
        assert!(err(&format!("{{\"Id\":\"{}\"}}", "x".repeat(MAX_POLICY_BYTES))).contains("limit"));
        assert!(Policy::parse(&Policy::default_for_owner(0)).is_ok());
        assert!(Policy::parse(&Policy::managed_default(0)).is_ok());
    }

    /// AWS IAM's documented results ("IAM JSON policy elements: Condition operators"): a key
    /// absent from the request makes a positive operator false and a negated one true,
    /// `...IfExists` is true when the key is absent, `Null` tests presence only. Each row:
    /// operator, policy value, then whether the condition holds when the request's `dept` is
    /// `finance`, is `hr`, and is absent. An Allow with the condition allows exactly when it
    /// holds; a Deny with it (beside an unconditional Allow) refuses exactly when it holds.
    #[test]
    fn conditions_evaluate_as_aws_iam_for_present_and_absent_keys() {
        let table: &[(&str, &str, [bool; 3])] = &[
            ("StringEquals", r#""finance""#, [true, false, false]),
            ("StringNotEquals", r#""finance""#, [false, true, true]),
            ("StringEqualsIgnoreCase", r#""FINANCE""#, [true, false, false]),
            ("StringNotEqualsIgnoreCase", r#""FINANCE""#, [false, true, true]),
            ("StringLike", r#""fin*""#, [true, false, false]),
            ("StringNotLike", r#""fin*""#, [false, true, true]),
            ("StringEqualsIfExists", r#""finance""#, [true, false, true]),
            ("StringNotEqualsIfExists", r#""finance""#, [false, true, true]),
            ("StringEqualsIgnoreCaseIfExists", r#""FINANCE""#, [true, false, true]),
            ("StringNotEqualsIgnoreCaseIfExists", r#""FINANCE""#, [false, true, true]),
            ("StringLikeIfExists", r#""fin*""#, [true, false, true]),
            ("StringNotLikeIfExists", r#""fin*""#, [false, true, true]),
            ("StringNotEquals", r#"["finance", "hr"]"#, [false, false, true]),
            ("StringEquals", r#"["finance", "hr"]"#, [true, true, false]),
            ("Null", r#""true""#, [false, false, true]),
            ("Null", r#""false""#, [true, true, false]),
            ("Null", "true", [false, false, true]),
        ];
        let who = user("alice", 1001, 1001);
        let contexts = [
            EncryptionContext::new().with("dept", "finance"),
            EncryptionContext::new().with("dept", "hr"),
            EncryptionContext::new().with("other", "x"),
        ];
        for &(operator, value, expected) in table {
            let condition = format!(r#"{{"{operator}": {{"kms:EncryptionContext:dept": {value}}}}}"#);
            let allow = Policy::parse(&format!(
                r#"{{"Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {condition}}}]}}"#
            ))
            .unwrap();
            let deny = Policy::parse(&format!(
                r#"{{"Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}},
                    {{"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Condition": {condition}}}]}}"#
            ))
            .unwrap();
            for (ctx, holds) in contexts.iter().zip(expected) {
                let req = Request { caller: &who, action: "kms:Decrypt", context: ctx, path: None, now: 0 };
                let allowed = |p: &Policy| matches!(p.decide(&[], &req), Decision::Allow(_));
                assert_eq!(allowed(&allow), holds, "Allow with {condition}, context {ctx:?}");
                assert_eq!(allowed(&deny), !holds, "Deny with {condition}, context {ctx:?}");
            }
        }
    }

    /// What the mount asks at a lookup carries no encryption context: a Deny on a negated
    /// context condition refuses it (it failed open before).
    #[test]
    fn negated_deny_refuses_a_request_without_context() {
        let policy = Policy::parse(
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"},
                {"Effect": "Deny", "Principal": {"User": ["bob"]}, "Action": "kms:*",
                 "Condition": {"StringNotEquals": {"kms:EncryptionContext:dept": "public"}}}]}"#,
        )
        .unwrap();
        let bob = user("bob", 1002, 1002);
        let empty = EncryptionContext::new();
        let req = Request { caller: &bob, action: "kms:Decrypt", context: &empty, path: Some("/x"), now: 0 };
        assert!(matches!(policy.decide(&[], &req), Decision::Deny(_)));
    }

    #[test]
    fn bad_condition_operators_are_named() {
        let err = |cond: &str| {
            Policy::parse(&format!(
                r#"{{"Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {cond}}}]}}"#
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(err(r#"{"NullIfExists": {"kmsfs:Path": "true"}}"#).contains("NullIfExists"));
        assert!(err(r#"{"Null": {"kmsfs:Path": "maybe"}}"#).contains("Condition.Null.kmsfs:Path"));
        assert!(err(r#"{"StringLikeIfExist": {"kmsfs:Path": "x"}}"#).contains("IfExists"));
    }

    #[test]
    fn cidr_blocks() {
        assert!(cidr_contains("127.0.0.0/8", "127.0.0.1"));
        assert!(cidr_contains("127.0.0.1/32", "127.0.0.1"));
        assert!(!cidr_contains("10.0.0.0/8", "127.0.0.1"));
        assert!(cidr_contains("0.0.0.0/0", "192.0.2.1"));
        assert!(cidr_contains("2001:db8::/32", "2001:db8::1"));
        assert!(!cidr_contains("2001:db8::/32", "127.0.0.1"));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }

    #[test]
    fn globbing() {
        assert!(glob("kms:*", "kms:Decrypt"));
        assert!(glob("/finance/*", "/finance/a/b"));
        assert!(!glob("/finance/*", "/finance"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("kms:ReEncrypt*", "kms:Decrypt"));
    }
}
