//! The JSON of each operation: input members to KMS calls, results to AWS's output shapes.
//! Inputs were validated against the service model already (required members, lengths,
//! ranges, enums), so extraction here only reads.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::asymmetric_api;
use super::errors::ApiError;
use super::import_api;
use super::Service;
use crate::kms::access::GrantOptions;
use crate::kms::lifecycle::{CreateKeyOptions, DEFAULT_PENDING_WINDOW_DAYS, DEFAULT_ROTATION_PERIOD_DAYS};
use crate::kms::{EncryptionContext, KeyMetadata, Principal};

const SYMMETRIC: &str = "SYMMETRIC_DEFAULT";

type Answer = Result<Value, ApiError>;

pub fn is_data_plane(op: &str) -> bool {
    matches!(
        op,
        "Encrypt"
            | "Decrypt"
            | "ReEncrypt"
            | "GenerateDataKey"
            | "GenerateDataKeyWithoutPlaintext"
            | "GenerateRandom"
    ) || asymmetric_api::is_asymmetric_op(op)
}

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(super) fn str_of<'a>(input: &'a Value, name: &str) -> Option<&'a str> {
    input.get(name).and_then(Value::as_str)
}

pub(super) fn required<'a>(input: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    str_of(input, name).ok_or_else(|| {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

/// A blob the model leaves optional but the operation needs.
pub(super) fn required_blob(input: &Value, name: &str) -> Result<Vec<u8>, ApiError> {
    blob(input, name)?.ok_or_else(|| {
        let mut c = name.chars();
        let member: String = c.next().map(|f| f.to_ascii_lowercase().to_string() + c.as_str()).unwrap_or_default();
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

pub(super) fn blob(input: &Value, name: &str) -> Result<Option<Vec<u8>>, ApiError> {
    match str_of(input, name) {
        None => Ok(None),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|_| ApiError::client("SerializationException", format!("{name} is not valid base64"))),
    }
}

pub(super) fn context(input: &Value, name: &str) -> Result<EncryptionContext, ApiError> {
    let mut ctx = EncryptionContext::new();
    if let Some(map) = input.get(name).and_then(Value::as_object) {
        for (k, v) in map {
            let v =
                v.as_str().ok_or_else(|| ApiError::validation(format!("{name} values must be strings")))?;
            ctx.0.insert(k.clone(), v.to_string());
        }
    }
    Ok(ctx)
}

fn int(input: &Value, name: &str) -> Option<i64> {
    input.get(name).and_then(Value::as_i64)
}

fn check_algorithm(input: &Value, name: &str) -> Result<(), ApiError> {
    match str_of(input, name) {
        None | Some(SYMMETRIC) => Ok(()),
        Some(other) => Err(ApiError::client(
            "InvalidKeyUsageException",
            format!("{other} is not a valid encryption algorithm for a symmetric key; use SYMMETRIC_DEFAULT"),
        )),
    }
}

impl Service {
    /// A KeyId as AWS takes it (key id, key ARN, alias name, alias ARN) as the KMS names it.
    pub(super) fn key_ref(&self, id: &str) -> Result<String, ApiError> {
        let Some(rest) = id.strip_prefix("arn:") else { return Ok(id.to_string()) };
        let fields: Vec<&str> = rest.splitn(5, ':').collect();
        let not_found = || ApiError::client("NotFoundException", format!("Invalid arn {id}"));
        if fields.len() != 5 || fields[0] != "aws" || fields[1] != "kms" {
            return Err(not_found());
        }
        if fields[2] != self.region || fields[3] != self.account {
            return Err(ApiError::client(
                "NotFoundException",
                format!(
                    "{id} is not in this key service's account {} and region {}",
                    self.account, self.region
                ),
            ));
        }
        let resource = fields[4];
        if let Some(key_id) = resource.strip_prefix("key/") {
            Ok(key_id.to_string())
        } else if resource.starts_with("alias/") {
            Ok(resource.to_string())
        } else {
            Err(not_found())
        }
    }

    fn key_metadata(&self, m: &KeyMetadata) -> Value {
        self.key_metadata_in(m, &self.region)
    }

    /// The ARN of `key_id` in `region` (multi-Region keys' members; same account).
    fn key_arn_in(&self, key_id: &str, region: &str) -> String {
        format!("arn:aws:kms:{region}:{}:key/{key_id}", self.account)
    }

    /// KeyMetadata of a key held in `region` (this server's, or a peer's).
    fn key_metadata_in(&self, m: &KeyMetadata, region: &str) -> Value {
        let mut v = json!({
            "AWSAccountId": self.account,
            "KeyId": m.key_id,
            "Arn": self.key_arn_in(&m.key_id, region),
            "CreationDate": m.created_secs,
            "Enabled": m.enabled,
            "Description": m.description,
            "KeyUsage": m.key_usage,
            "KeyState": m.key_state.as_str(),
            "Origin": if m.origin == "KMSFS" { "AWS_KMS" } else { m.origin.as_str() },
            "KeyManager": if m.key_manager.as_str() == "MANAGED" { "AWS" } else { "CUSTOMER" },
            "CustomerMasterKeySpec": m.key_spec,
            "KeySpec": m.key_spec,
            "MultiRegion": m.multi_region.is_some(),
        });
        if let Some(cfg) = &m.multi_region {
            let member = |r: &str| json!({"Arn": self.key_arn_in(&m.key_id, r), "Region": r});
            v["MultiRegionConfiguration"] = json!({
                "MultiRegionKeyType": if cfg.primary_region == region { "PRIMARY" } else { "REPLICA" },
                "PrimaryKey": member(&cfg.primary_region),
                "ReplicaKeys": cfg.replica_regions().map(member).collect::<Vec<_>>(),
            });
        }
        asymmetric_api::add_algorithms(&mut v, m.key_spec, m.key_usage);
        import_api::add_metadata(&mut v, m);
        if let Some(d) = m.deletion_secs {
            v["DeletionDate"] = json!(d);
        }
        if let Some(days) = m.pending_deletion_window_in_days {
            v["PendingDeletionWindowInDays"] = json!(days);
        }
        v
    }
}

pub(super) fn grant_tokens(input: &Value) -> Vec<&str> {
    input
        .get("GrantTokens")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// AWS's wording for a number outside the range the operation (not the model) allows.
fn out_of_range(member: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> Result<(), ApiError> {
    let constraint = if value < *range.start() {
        format!("greater than or equal to {}", range.start())
    } else if value > *range.end() {
        format!("less than or equal to {}", range.end())
    } else {
        return Ok(());
    };
    Err(ApiError::validation(format!(
        "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: Member must have value {constraint}"
    )))
}

/// Encrypt, Decrypt, ReEncrypt, GenerateDataKey*, GenerateRandom: through the key ring.
pub fn data_plane(svc: &Service, caller: &Principal, op: &str, input: &Value) -> Answer {
    let ring = &svc.ring;
    ring.check_grant_tokens(&grant_tokens(input)).map_err(ApiError::unaudited)?;
    if dry_run(input) {
        return data_plane_dry_run(svc, caller, op, input);
    }
    if let Some(answer) = asymmetric_api::data_plane(svc, caller, op, input) {
        return answer;
    }
    match op {
        "Encrypt" => {
            check_algorithm(input, "EncryptionAlgorithm")?;
            let key = svc.key_ref(required(input, "KeyId")?)?;
            let plaintext = zeroize::Zeroizing::new(blob(input, "Plaintext")?.unwrap_or_default());
            let (key_id, ciphertext) =
                ring.encrypt(caller, &key, &plaintext, &context(input, "EncryptionContext")?)?;
            Ok(
                json!({"CiphertextBlob": b64(&ciphertext), "KeyId": svc.key_arn(&key_id), "EncryptionAlgorithm": SYMMETRIC}),
            )
        }
        "Decrypt" => {
            check_algorithm(input, "EncryptionAlgorithm")?;
            let blob_bytes = required_blob(input, "CiphertextBlob")?;
            let expected = str_of(input, "KeyId").map(|k| svc.key_ref(k)).transpose()?;
            let ctx = context(input, "EncryptionContext")?;
            let (key_id, plaintext) = ring.decrypt(caller, &blob_bytes, &ctx, expected.as_deref())?;
            Ok(
                json!({"KeyId": svc.key_arn(&key_id), "Plaintext": b64(&plaintext), "EncryptionAlgorithm": SYMMETRIC}),
            )
        }
        "ReEncrypt" => {
            check_algorithm(input, "SourceEncryptionAlgorithm")?;
            check_algorithm(input, "DestinationEncryptionAlgorithm")?;
            let blob_bytes = required_blob(input, "CiphertextBlob")?;
            let source = str_of(input, "SourceKeyId").map(|k| svc.key_ref(k)).transpose()?;
            let dest = svc.key_ref(required(input, "DestinationKeyId")?)?;
            let (from, to, out) = ring.re_encrypt(
                caller,
                &blob_bytes,
                &context(input, "SourceEncryptionContext")?,
                source.as_deref(),
                &dest,
                &context(input, "DestinationEncryptionContext")?,
            )?;
            Ok(json!({
                "CiphertextBlob": b64(&out),
                "SourceKeyId": svc.key_arn(&from),
                "KeyId": svc.key_arn(&to),
                "SourceEncryptionAlgorithm": SYMMETRIC,
                "DestinationEncryptionAlgorithm": SYMMETRIC,
            }))
        }
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            let key = svc.key_ref(required(input, "KeyId")?)?;
            let len = match (str_of(input, "KeySpec"), int(input, "NumberOfBytes")) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::validation(
                        "Please specify either number of bytes or key spec, not both.",
                    ))
                }
                (None, None) => {
                    return Err(ApiError::validation("Please specify either number of bytes or key spec."))
                }
                (Some("AES_128"), None) => 16,
                (Some(_), None) => 32,
                (None, Some(n)) => n as usize,
            };
            let with_plaintext = op == "GenerateDataKey";
            let (key_id, plaintext, wrapped) = ring.generate_data_key_of(
                caller,
                &key,
                &context(input, "EncryptionContext")?,
                len,
                with_plaintext,
            )?;
            let mut out = json!({"CiphertextBlob": b64(&wrapped), "KeyId": svc.key_arn(&key_id)});
            if with_plaintext {
                out["Plaintext"] = json!(b64(&plaintext));
            }
            Ok(out)
        }
        "GenerateRandom" => {
            let n = int(input, "NumberOfBytes").unwrap_or(32) as usize;
            let mut bytes = zeroize::Zeroizing::new(vec![0u8; n]);
            crate::crypto::fill_random(&mut bytes);
            let mut event = crate::kms::AuditEvent::new(caller, "GenerateRandom", svc.clock.now_ms());
            event.reason = format!("{n} bytes");
            ring.record(event);
            Ok(json!({"Plaintext": b64(&bytes)}))
        }
        _ => Err(ApiError::client("UnknownOperationException", "")),
    }
}

fn dry_run(input: &Value) -> bool {
    input.get("DryRun").and_then(Value::as_bool) == Some(true)
}

/// The key a blob names (for checks made without opening it).
fn blob_key(input: &Value) -> Result<String, ApiError> {
    let bytes = required_blob(input, "CiphertextBlob")?;
    let (header, _) = crate::kms::blob::BlobHeader::parse(&bytes).map_err(ApiError::unaudited)?;
    Ok(header.key_id)
}

/// DryRun of a cryptographic operation: the checks it would make, nothing done.
fn data_plane_dry_run(svc: &Service, caller: &Principal, op: &str, input: &Value) -> Answer {
    let (checks, ctx_field): (Vec<(String, String)>, &str) = match op {
        "Encrypt" | "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            (vec![(svc.key_ref(required(input, "KeyId")?)?, format!("kms:{op}"))], "EncryptionContext")
        }
        "Decrypt" => {
            let key = match str_of(input, "KeyId") {
                Some(k) => svc.key_ref(k)?,
                None => blob_key(input)?,
            };
            (vec![(key, "kms:Decrypt".into())], "EncryptionContext")
        }
        "ReEncrypt" => (
            vec![
                (blob_key(input)?, "kms:ReEncryptFrom".into()),
                (svc.key_ref(required(input, "DestinationKeyId")?)?, "kms:ReEncryptTo".into()),
            ],
            "SourceEncryptionContext",
        ),
        "Sign"
        | "Verify"
        | "GenerateMac"
        | "VerifyMac"
        | "DeriveSharedSecret"
        | "GenerateDataKeyPair"
        | "GenerateDataKeyPairWithoutPlaintext" => {
            (vec![(svc.key_ref(required(input, "KeyId")?)?, format!("kms:{op}"))], "EncryptionContext")
        }
        _ => return Err(ApiError::validation(format!("{op} takes no DryRun"))),
    };
    let checks: Vec<(&str, &str)> = checks.iter().map(|(k, a)| (k.as_str(), a.as_str())).collect();
    svc.ring.dry_run(caller, op, &checks, &context(input, ctx_field)?)?;
    Err(ApiError::internal("a dry run ended without its answer"))
}

/// Paging for list operations: Marker is the index of the next item, as text.
fn page(items: Vec<Value>, input: &Value, field: &str) -> Answer {
    let limit = int(input, "Limit").unwrap_or(100).clamp(1, 1000) as usize;
    let start = match str_of(input, "Marker") {
        None => 0,
        Some(m) => m.parse::<usize>().ok().filter(|&i| i <= items.len()).ok_or_else(|| {
            ApiError::client("InvalidMarkerException", format!("the marker '{m}' is not valid"))
        })?,
    };
    let end = (start + limit).min(items.len());
    let mut out = Map::new();
    out.insert(field.into(), Value::Array(items[start..end].to_vec()));
    out.insert("Truncated".into(), json!(end < items.len()));
    if end < items.len() {
        out.insert("NextMarker".into(), json!(end.to_string()));
    }
    Ok(Value::Object(out))
}

fn tags_json(tags: Vec<(String, String)>) -> Vec<Value> {
    tags.into_iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect()
}

fn tags_of(input: &Value) -> Vec<(String, String)> {
    input
        .get("Tags")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(|t| Some((str_of(t, "TagKey")?.to_string(), str_of(t, "TagValue")?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn unsupported(what: String) -> ApiError {
    ApiError::client("UnsupportedOperationException", what)
}

/// Every other operation: through `Kms`, one keystore transaction and audit event each.
pub fn control_plane(svc: &Service, caller: &Principal, op: &str, input: &Value) -> Answer {
    let mut kms = svc.kms.lock().map_err(|_| ApiError::internal("the control plane lock is poisoned"))?;
    if dry_run(input) {
        return kms.dry_run(|kms| Ok(control(svc, kms, caller, op, input)))?;
    }
    control(svc, &mut kms, caller, op, input)
}

fn control(svc: &Service, kms: &mut crate::kms::Kms, caller: &Principal, op: &str, input: &Value) -> Answer {
    let key = || -> Result<String, ApiError> { svc.key_ref(required(input, "KeyId")?) };
    if let Some(answer) = import_api::control(svc, kms, caller, op, input) {
        return answer;
    }
    match op {
        "CreateKey" => {
            let (key_spec, key_usage) = asymmetric_api::create_key_spec(input)?;
            let origin_external = str_of(input, "Origin") == Some("EXTERNAL");
            if let Some(v) = str_of(input, "Origin").filter(|v| !matches!(*v, "AWS_KMS" | "EXTERNAL")) {
                return Err(unsupported(format!(
                    "Origin {v} is not supported: kmsfs keys are AWS_KMS or EXTERNAL"
                )));
            }
            if input.get("CustomKeyStoreId").is_some() || input.get("XksKeyId").is_some() {
                return Err(unsupported("custom key stores are not supported".into()));
            }
            let opts = CreateKeyOptions {
                alias: None,
                description: str_of(input, "Description").unwrap_or("").to_string(),
                policy: str_of(input, "Policy").map(str::to_string),
                tags: tags_of(input),
                key_spec,
                key_usage,
                origin_external,
                multi_region: input.get("MultiRegion").and_then(Value::as_bool) == Some(true),
            };
            let key_id = kms.create_key(caller, &opts)?;
            Ok(json!({"KeyMetadata": svc.key_metadata(&kms.metadata_after(&key_id)?)}))
        }
        "DescribeKey" => Ok(json!({"KeyMetadata": svc.key_metadata(&kms.describe_key(caller, &key()?)?)})),
        "ListKeys" => {
            let keys: Vec<Value> = kms
                .list_keys(caller)?
                .into_iter()
                .filter(|k| k.key_state.as_str() != "Destroyed")
                .map(|k| json!({"KeyId": k.key_id, "KeyArn": svc.key_arn(&k.key_id)}))
                .collect();
            page(keys, input, "Keys")
        }
        "EnableKey" => kms.enable_key(caller, &key()?).map(|_| json!({})).map_err(Into::into),
        "DisableKey" => kms.disable_key(caller, &key()?).map(|_| json!({})).map_err(Into::into),
        "ScheduleKeyDeletion" => {
            let days = int(input, "PendingWindowInDays").unwrap_or(DEFAULT_PENDING_WINDOW_DAYS);
            out_of_range("pendingWindowInDays", days, crate::kms::lifecycle::PENDING_WINDOW_DAYS)?;
            let key_id = key()?;
            kms.schedule_key_deletion(caller, &key_id, days)?;
            let m = kms.metadata_after(&kms.resolve_key_id(&key_id)?)?;
            // A multi-Region primary with replicas has no date yet (PendingReplicaDeletion).
            let mut out = json!({
                "KeyId": svc.key_arn(&m.key_id),
                "KeyState": m.key_state.as_str(),
                "PendingWindowInDays": days,
            });
            if let Some(date) = m.deletion_secs {
                out["DeletionDate"] = json!(date);
            }
            Ok(out)
        }
        "CancelKeyDeletion" => {
            let key_id = key()?;
            kms.cancel_key_deletion(caller, &key_id)?;
            Ok(json!({"KeyId": svc.key_arn(&kms.resolve_key_id(&key_id)?)}))
        }
        "EnableKeyRotation" => {
            let days = int(input, "RotationPeriodInDays").unwrap_or(DEFAULT_ROTATION_PERIOD_DAYS);
            kms.enable_key_rotation(caller, &key()?, days)?;
            Ok(json!({}))
        }
        "DisableKeyRotation" => {
            kms.disable_key_rotation(caller, &key()?).map(|_| json!({})).map_err(Into::into)
        }
        "GetKeyRotationStatus" => {
            let m = kms.describe_key(caller, &key()?)?;
            let mut out =
                json!({"KeyRotationEnabled": m.key_rotation_enabled, "KeyId": svc.key_arn(&m.key_id)});
            if let Some(days) = m.rotation_period_in_days.filter(|_| m.key_rotation_enabled) {
                out["RotationPeriodInDays"] = json!(days);
            }
            if let Some(next) = m.next_rotation_secs {
                out["NextRotationDate"] = json!(next);
            }
            Ok(out)
        }
        "RotateKeyOnDemand" => {
            let key_id = key()?;
            kms.rotate_key(caller, &key_id)?;
            Ok(json!({"KeyId": svc.key_arn(&kms.resolve_key_id(&key_id)?)}))
        }
        "GetKeyLastUsage" => {
            let usage = kms.key_last_usage(caller, &key()?)?;
            let mut out = json!({
                "KeyId": usage.key_id,
                "TrackingStartDate": usage.key_created,
                "KeyCreationDate": usage.key_created,
            });
            if let Some((operation, ms)) = usage.last {
                out["KeyLastUsage"] = json!({"Operation": operation, "Timestamp": ms as f64 / 1000.0});
            }
            Ok(out)
        }
        "ListKeyRotations" => {
            let key_id = key()?;
            let versions = kms.list_key_versions(caller, &key_id)?;
            let resolved = kms.resolve_key_id(&key_id)?;
            let rotations =
                import_api::rotation_entries(kms, &svc.key_arn(&resolved), &resolved, versions, input)?;
            page(rotations, input, "Rotations")
        }
        "UpdateKeyDescription" => {
            kms.update_key_description(caller, &key()?, required(input, "Description")?)?;
            Ok(json!({}))
        }
        "CreateAlias" => {
            kms.create_alias(
                caller,
                required(input, "AliasName")?,
                &svc.key_ref(required(input, "TargetKeyId")?)?,
            )?;
            Ok(json!({}))
        }
        "UpdateAlias" => {
            kms.update_alias(
                caller,
                required(input, "AliasName")?,
                &svc.key_ref(required(input, "TargetKeyId")?)?,
            )?;
            Ok(json!({}))
        }
        "DeleteAlias" => {
            kms.delete_alias(caller, required(input, "AliasName")?).map(|_| json!({})).map_err(Into::into)
        }
        "ListAliases" => {
            let key_id = str_of(input, "KeyId").map(|k| svc.key_ref(k)).transpose()?;
            let aliases: Vec<Value> = kms
                .list_aliases(caller, key_id.as_deref())?
                .into_iter()
                .map(|a| {
                    json!({
                        "AliasName": a.alias_name,
                        "AliasArn": svc.alias_arn(&a.alias_name),
                        "TargetKeyId": a.target_key_id,
                        "CreationDate": a.creation_date,
                        "LastUpdatedDate": a.last_updated_date,
                    })
                })
                .collect();
            page(aliases, input, "Aliases")
        }
        "GetKeyPolicy" => {
            let name = str_of(input, "PolicyName").unwrap_or("default");
            if name != "default" {
                return Err(ApiError::client(
                    "NotFoundException",
                    format!("no policy named {name}; keys have 'default'"),
                ));
            }
            Ok(json!({"Policy": kms.get_key_policy(caller, &key()?)?, "PolicyName": "default"}))
        }
        "PutKeyPolicy" => {
            let name = str_of(input, "PolicyName").unwrap_or("default");
            if name != "default" {
                return Err(ApiError::validation(format!("PolicyName must be 'default', not '{name}'")));
            }
            let bypass = input.get("BypassPolicyLockoutSafetyCheck").and_then(Value::as_bool) == Some(true);
            kms.put_key_policy_checked(caller, &key()?, required(input, "Policy")?, bypass)?;
            Ok(json!({}))
        }
        "ListKeyPolicies" => {
            // The policy itself is not read: answered from the key's existence and the caller's right.
            kms.get_key_policy(caller, &key()?)?;
            Ok(json!({"PolicyNames": ["default"], "Truncated": false}))
        }
        "CreateGrant" => create_grant(svc, kms, caller, input),
        "ListGrants" => {
            let grants = kms.list_grants(caller, &key()?)?;
            let wanted_id = str_of(input, "GrantId");
            let wanted_grantee = str_of(input, "GranteePrincipal");
            let items: Vec<Value> = grants
                .into_iter()
                .filter(|g| wanted_id.is_none_or(|id| g.grant_id == id))
                .filter(|g| wanted_grantee.is_none_or(|p| g.grantee == p))
                .map(|g| grant_json(svc, &g))
                .collect();
            page(items, input, "Grants")
        }
        "RetireGrant" => {
            match (str_of(input, "GrantToken"), str_of(input, "KeyId"), str_of(input, "GrantId")) {
                (Some(token), _, _) => kms.retire_grant_by_token(caller, token)?,
                (None, Some(key_id), Some(grant_id)) => {
                    kms.retire_grant_of_key(caller, &svc.key_ref(key_id)?, grant_id)?
                }
                _ => return Err(ApiError::validation("give GrantToken, or KeyId and GrantId")),
            }
            Ok(json!({}))
        }
        "ListRetirableGrants" => {
            let grants = kms.list_retirable_grants(caller, required(input, "RetiringPrincipal")?)?;
            page(grants.iter().map(|g| grant_json(svc, g)).collect(), input, "Grants")
        }
        "RevokeGrant" => {
            kms.revoke_grant(caller, &key()?, required(input, "GrantId")?)?;
            Ok(json!({}))
        }
        "TagResource" => kms.tag_key(caller, &key()?, &tags_of(input)).map(|_| json!({})).map_err(Into::into),
        "UntagResource" => {
            let keys: Vec<String> = input
                .get("TagKeys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            kms.untag_key(caller, &key()?, &keys).map(|_| json!({})).map_err(Into::into)
        }
        "ListResourceTags" => page(tags_json(kms.list_key_tags(caller, &key()?)?), input, "Tags"),
        "ReplicateKey" => replicate_key(svc, kms, caller, input),
        "UpdatePrimaryRegion" => {
            let key_id = key()?;
            let mut peer = peer_kms(svc, required(input, "PrimaryRegion")?)?;
            kms.update_primary_region(caller, &key_id, &mut peer)?;
            Ok(json!({}))
        }
        other => Err(unsupported(format!("{other} is not supported by kmsfs"))),
    }
}

/// The keystore of `region`, one of the server's `--peer`s, locked (after the server's own
/// control plane: every caller takes the two locks in that order).
fn peer_kms<'a>(
    svc: &'a Service,
    region: &str,
) -> Result<std::sync::MutexGuard<'a, crate::kms::Kms>, ApiError> {
    // The service model's pattern for RegionType, which the model validation leaves to us.
    if crate::keystore::validate_region(region).is_err() {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{region}' at 'region' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: ^([a-z]+-){{2,3}}\\d+$"
        )));
    }
    if region == svc.region {
        return Err(ApiError::validation(format!(
            "{region} is this key service's own region; name another region"
        )));
    }
    let peer = svc.peers.get(region).ok_or_else(|| {
        unsupported(format!(
            "region {region} is not known to this key service (start kmsfs serve with --peer {region}=PATH)"
        ))
    })?;
    peer.lock().map_err(|_| ApiError::internal("a peer's control plane lock is poisoned"))
}

fn replicate_key(svc: &Service, kms: &mut crate::kms::Kms, caller: &Principal, input: &Value) -> Answer {
    let key_id = svc.key_ref(required(input, "KeyId")?)?;
    let region = required(input, "ReplicaRegion")?;
    let mut replica = peer_kms(svc, region)?;
    let opts = crate::kms::multi_region::ReplicateOptions {
        description: str_of(input, "Description").unwrap_or("").to_string(),
        policy: str_of(input, "Policy").map(str::to_string),
        tags: tags_of(input),
        bypass_policy_lockout_check: input.get("BypassPolicyLockoutSafetyCheck").and_then(Value::as_bool)
            == Some(true),
    };
    let id = kms.replicate_key(caller, &key_id, &mut replica, &opts)?;
    let meta = replica.metadata_after(&id)?;
    let conn = replica.keystore().conn();
    let policy = crate::keystore::records::load_policy(conn, &id)?.unwrap_or_default();
    let tags = crate::kms::tags::list(conn, &id)?;
    Ok(json!({
        "ReplicaKeyMetadata": svc.key_metadata_in(&meta, region),
        "ReplicaPolicy": policy,
        "ReplicaTags": tags_json(tags),
    }))
}

fn grant_json(svc: &Service, g: &crate::keystore::records::GrantRecord) -> Value {
    let mut v = json!({
        "KeyId": svc.key_arn(&g.key_id),
        "GrantId": g.grant_id,
        "Name": g.name,
        "CreationDate": g.created,
        "GranteePrincipal": g.grantee,
        "IssuingAccount": format!("arn:aws:iam::{}:root", svc.account),
        "Operations": g.operations,
    });
    if let Some(p) = &g.retiring_principal {
        v["RetiringPrincipal"] = json!(p);
    }
    if !g.constraints.is_empty() || g.context_equals {
        let kind = if g.context_equals { "EncryptionContextEquals" } else { "EncryptionContextSubset" };
        v["Constraints"] = json!({ kind: g.constraints });
    }
    v
}

fn create_grant(svc: &Service, kms: &mut crate::kms::Kms, caller: &Principal, input: &Value) -> Answer {
    let key_id = svc.key_ref(required(input, "KeyId")?)?;
    let operations: Vec<String> = input
        .get("Operations")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|o| o.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut constraints = std::collections::BTreeMap::new();
    let mut context_equals = false;
    if let Some(c) = input.get("Constraints") {
        let (equals, subset) = (c.get("EncryptionContextEquals"), c.get("EncryptionContextSubset"));
        if equals.is_some() && subset.is_some() {
            return Err(ApiError::validation(
                "give EncryptionContextEquals or EncryptionContextSubset in a grant's Constraints, not both",
            ));
        }
        context_equals = equals.is_some();
        if let Some(map) = equals.or(subset).and_then(Value::as_object) {
            for (k, v) in map {
                constraints.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
        }
    }
    svc.ring.check_grant_tokens(&grant_tokens(input)).map_err(ApiError::unaudited)?;
    let opts = GrantOptions {
        grantee: required(input, "GranteePrincipal")?.to_string(),
        operations,
        constraints,
        expires: None,
        name: str_of(input, "Name").unwrap_or("").to_string(),
        retiring_principal: str_of(input, "RetiringPrincipal").map(str::to_string),
        context_equals,
    };
    let (grant_id, token) = kms.create_grant(caller, &key_id, &opts)?;
    Ok(json!({"GrantId": grant_id, "GrantToken": token}))
}
