//! The audit trail in AWS CloudTrail's record format, for log tooling that already reads
//! CloudTrail (jq one-liners, SIEM parsers): one record per audit event, field names and
//! types as in CloudTrail's KMS entries.
//!
//! What CloudTrail has no field for (the path inside a mount, the chain sequence number,
//! the reason the KMS gave) goes into `additionalEventData`. A caller that is a Unix user
//! (a mount, the command line, a socket peer) has no IAM identity: its `userIdentity` has
//! type `UnixUser`, its uid as `principalId` and an ARN of kmsfs's own
//! (`arn:kmsfs:unix::ACCOUNT:uid/N`), so a CloudTrail parser still finds every field.
//! Plaintext is never in a record: the trail does not hold any.

use serde_json::{json, Map, Value};

use super::audit::{AuditRecord, Outcome};
use super::clock::format_date;

/// Where records are placed: the keystore's account and region, and its id (which makes
/// `eventID`/`requestID` unique across keystores and stable across exports).
#[derive(Debug, Clone)]
pub struct TrailIdentity {
    pub account: String,
    pub region: String,
    pub keystore_id: String,
}

/// How `kmsfs audit --format cloudtrail` writes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON object per line (for streaming: `--follow`, journald, SIEM shippers).
    Lines,
    /// CloudTrail's log file shape: `{"Records": [...]}`.
    Records,
}

/// Operations that change nothing (CloudTrail's `readOnly`).
fn is_read_only(operation: &str) -> bool {
    matches!(
        operation,
        "Encrypt"
            | "Decrypt"
            | "ReEncrypt"
            | "GenerateDataKey"
            | "GenerateDataKeyWithoutPlaintext"
            | "GenerateRandom"
            | "DryRun"
    ) || ["Describe", "List", "Get"].iter().any(|p| operation.starts_with(p))
}

fn is_crypto(operation: &str) -> bool {
    matches!(
        operation,
        "Encrypt" | "Decrypt" | "ReEncrypt" | "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext"
    )
}

/// A version-4-shaped UUID derived from `parts` (not random: the same event exports with
/// the same id every time).
pub fn stable_uuid(parts: &[&[u8]]) -> String {
    let mut b = crate::crypto::sha256(parts);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The `eventID` of audit event `seq` of keystore `keystore_id`.
pub fn event_id(keystore_id: &str, seq: i64) -> String {
    stable_uuid(&[b"kmsfs-cloudtrail-event\0", keystore_id.as_bytes(), &seq.to_be_bytes()])
}

fn request_id(keystore_id: &str, seq: i64) -> String {
    stable_uuid(&[b"kmsfs-cloudtrail-request\0", keystore_id.as_bytes(), &seq.to_be_bytes()])
}

/// The IAM user name of an `arn:aws:iam::ACCOUNT:user/NAME`.
fn user_name_of(arn: &str) -> &str {
    arn.rsplit_once(":user/").map(|(_, n)| n).unwrap_or(arn)
}

/// Where the call came from, as CloudTrail writes it: an IP address without its port.
fn source_ip(source: Option<&str>) -> String {
    match source {
        None => "localhost".into(),
        Some(s) => match s.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip().to_string(),
            Err(_) => s.to_string(),
        },
    }
}

/// Which kmsfs component answered (CloudTrail's `userAgent` is the client's; the trail
/// keeps the component, which says as much about how the call was made).
fn user_agent(rec: &AuditRecord) -> &'static str {
    let ev = &rec.event;
    if ev.path.is_some() {
        "kmsfs-mount"
    } else if ev.source.as_deref() == Some("unix") {
        "kmsfs-serve (unix socket)"
    } else if ev.source.is_some() {
        "kmsfs-serve"
    } else {
        "kmsfs-cli"
    }
}

/// One audit event as a CloudTrail record.
pub fn record(id: &TrailIdentity, rec: &AuditRecord) -> Value {
    let ev = &rec.event;
    let account = &id.account;
    let user_identity = match &ev.principal_arn {
        Some(arn) => {
            let mut u = json!({
                "type": "IAMUser",
                "principalId": stable_principal_id(arn),
                "arn": arn,
                "accountId": account,
                "userName": user_name_of(arn),
            });
            if let Some(k) = &ev.access_key_id {
                u["accessKeyId"] = json!(k);
            }
            u
        }
        None => {
            let mut u = json!({
                "type": "UnixUser",
                "principalId": ev.uid.to_string(),
                "arn": format!("arn:kmsfs:unix::{account}:uid/{}", ev.uid),
                "accountId": account,
                "userName": ev.user,
                "uid": ev.uid,
            });
            if let Some(k) = &ev.access_key_id {
                u["accessKeyId"] = json!(k);
            }
            if let Some(pid) = ev.pid {
                u["pid"] = json!(pid);
            }
            u
        }
    };
    let key_arn = ev.key_id.as_ref().map(|k| format!("arn:aws:kms:{}:{account}:key/{k}", id.region));
    let mut params = Map::new();
    if let Some(arn) = &key_arn {
        params.insert("keyId".into(), json!(arn));
    }
    if !ev.context.is_empty() {
        let ctx = serde_json::from_str::<Value>(&ev.context).unwrap_or_else(|_| json!(ev.context));
        params.insert("encryptionContext".into(), ctx);
    }
    if is_crypto(&ev.operation) {
        params.insert("encryptionAlgorithm".into(), json!("SYMMETRIC_DEFAULT"));
    }
    let mut extra = Map::new();
    extra.insert("kmsfsSequence".into(), json!(rec.seq));
    extra.insert("kmsfsOutcome".into(), json!(ev.outcome.as_str()));
    if let Some(p) = &ev.path {
        extra.insert("path".into(), json!(p));
    }
    if !ev.reason.is_empty() && ev.outcome == Outcome::Success {
        extra.insert("reason".into(), json!(ev.reason));
    }
    let mut out = json!({
        "eventVersion": "1.11",
        "userIdentity": user_identity,
        "eventTime": format_date(ev.time_ms.div_euclid(1000)),
        "eventSource": "kms.amazonaws.com",
        "eventName": ev.operation,
        "awsRegion": id.region,
        "sourceIPAddress": source_ip(ev.source.as_deref()),
        "userAgent": user_agent(rec),
        "requestParameters": if params.is_empty() { Value::Null } else { Value::Object(params) },
        "responseElements": Value::Null,
        "additionalEventData": Value::Object(extra),
        "requestID": request_id(&id.keystore_id, rec.seq),
        "eventID": event_id(&id.keystore_id, rec.seq),
        "readOnly": is_read_only(&ev.operation),
        "resources": match &key_arn {
            Some(arn) => json!([{"accountId": account, "type": "AWS::KMS::Key", "ARN": arn}]),
            None => json!([]),
        },
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": account,
        "eventCategory": "Management",
    });
    if ev.outcome != Outcome::Success {
        let code = ev.error_code.clone().unwrap_or_else(|| match ev.outcome {
            Outcome::Denied => "AccessDeniedException".into(),
            _ => "KMSInternalException".into(),
        });
        out["errorCode"] = json!(code);
        out["errorMessage"] = json!(ev.reason);
    }
    out
}

/// An IAM-style unique id (`AIDA` and 17 characters) for a user ARN, stable per ARN.
fn stable_principal_id(arn: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = crate::crypto::sha256(&[b"kmsfs-principal-id\0", arn.as_bytes()]);
    let tail: String = h[..17].iter().map(|b| ALPHABET[usize::from(b & 31)] as char).collect();
    format!("AIDA{tail}")
}

/// Writes `records` in `layout` (Records: the whole `{"Records": [...]}` object).
pub fn write(
    out: &mut impl std::io::Write,
    id: &TrailIdentity,
    records: &[AuditRecord],
    layout: Layout,
) -> std::io::Result<()> {
    match layout {
        Layout::Lines => {
            for r in records {
                writeln!(out, "{}", record(id, r))?;
            }
        }
        Layout::Records => {
            let all: Vec<Value> = records.iter().map(|r| record(id, r)).collect();
            writeln!(out, "{}", json!({ "Records": all }))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::{AuditEvent, Principal};

    fn identity() -> TrailIdentity {
        TrailIdentity {
            account: "111122223333".into(),
            region: "eu-west-1".into(),
            keystore_id: "ks1".into(),
        }
    }

    #[test]
    fn ids_are_stable_uuids_distinct_per_event() {
        let a = event_id("ks1", 1);
        assert_eq!(a, event_id("ks1", 1));
        assert_ne!(a, event_id("ks1", 2));
        assert_ne!(a, event_id("ks2", 1));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_mount_decrypt_names_the_unix_user_and_the_key() {
        let p = Principal::from_ids(1000, 1000, vec![], Some(42));
        let mut ev = AuditEvent::new(&p, "Decrypt", 86_400_000);
        ev.key_id = Some("k1".into());
        ev.path = Some("/finance/q3.txt".into());
        ev.context = r#"{"kmsfs:volume":"v1"}"#.into();
        let r = record(&identity(), &AuditRecord { seq: 7, event: ev });
        assert_eq!(r["userIdentity"]["type"], "UnixUser");
        assert_eq!(r["userIdentity"]["principalId"], "1000");
        assert_eq!(r["eventTime"], "1970-01-02T00:00:00Z");
        assert_eq!(r["requestParameters"]["keyId"], "arn:aws:kms:eu-west-1:111122223333:key/k1");
        assert_eq!(r["requestParameters"]["encryptionContext"]["kmsfs:volume"], "v1");
        assert_eq!(r["resources"][0]["type"], "AWS::KMS::Key");
        assert_eq!(r["additionalEventData"]["path"], "/finance/q3.txt");
        assert_eq!(r["readOnly"], true);
        assert!(r.get("errorCode").is_none());
    }

    #[test]
    fn a_denied_call_carries_its_error() {
        let p = Principal::from_ids(0, 0, vec![], None);
        let mut ev = AuditEvent::new(&p, "DisableKey", 0);
        ev.outcome = Outcome::Denied;
        ev.reason = "no statement allows it".into();
        let r = record(&identity(), &AuditRecord { seq: 1, event: ev });
        assert_eq!(r["errorCode"], "AccessDeniedException");
        assert_eq!(r["errorMessage"], "no statement allows it");
        assert_eq!(r["readOnly"], false);
        assert_eq!(r["requestParameters"], Value::Null);
    }
}
