//! The audit trail: an append-only, hash-chained log of every KMS operation.
//!
//! Row `n` carries `mac_n = HMAC-SHA256(audit_key, mac_{n-1} || encode(n, event))`, with
//! `mac_0` all zeros, and the keystore's meta table keeps the head (last seq and mac). The
//! audit key is derived from the root key (`root_keys`), so without the passphrase nobody can forge a
//! consistent chain: `verify` finds an edited, inserted or deleted row, and a cut-off tail.

use rusqlite::{params, Connection, Row};

use super::principal::Principal;
use super::root_keys::{self, RootKeys};
use crate::crypto::{self, SecretKey};
use crate::error::{Error, Result};
use crate::keystore::{get_meta, set_meta};

const MAC_LEN: usize = 32;
const HEAD_META: &str = "audit_head";

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Outcome {
    /// Done.
    Success,
    /// Refused by a key's state, a policy or a grant.
    Denied,
    /// Failed for another reason (bad input, unknown key, tampered ciphertext).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "Success",
            Outcome::Denied => "Denied",
            Outcome::Error => "Error",
        }
    }

    /// The outcome a stored word names; `None` for any other word.
    fn parse(s: &str) -> Option<Self> {
        match s {
            "Success" => Some(Outcome::Success),
            "Denied" => Some(Outcome::Denied),
            "Error" => Some(Outcome::Error),
            _ => None,
        }
    }

    /// The outcome an error stands for.
    pub fn of_error(err: &Error) -> Self {
        match err {
            Error::KeyState(_) | Error::AccessDenied(_) => Outcome::Denied,
            _ => Outcome::Error,
        }
    }
}

/// One audited operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuditEvent {
    #[serde(serialize_with = "serialize_time")]
    pub time_ms: i64,
    pub uid: u32,
    pub user: String,
    pub pid: Option<u32>,
    pub operation: String,
    pub key_id: Option<String>,
    pub outcome: Outcome,
    pub reason: String,
    /// The encryption context as JSON, or empty.
    pub context: String,
    /// The path inside a mount, for filesystem operations.
    pub path: Option<String>,
    /// An API caller's IAM principal ARN.
    pub principal_arn: Option<String>,
    /// The access key an API call was signed with.
    pub access_key_id: Option<String>,
    /// Where an API call came from: `IP:PORT` or `unix`.
    pub source: Option<String>,
    /// The AWS error name of a failed operation.
    pub error_code: Option<String>,
}

fn serialize_time<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::clock::format_time_ms(*ms))
}

impl AuditEvent {
    pub fn new(caller: &Principal, operation: &str, time_ms: i64) -> Self {
        AuditEvent {
            time_ms,
            uid: caller.uid,
            user: caller.user.clone(),
            pid: caller.pid,
            operation: operation.to_string(),
            key_id: None,
            outcome: Outcome::Success,
            reason: String::new(),
            context: String::new(),
            path: None,
            principal_arn: caller.remote.as_ref().and_then(|r| r.arn.clone()),
            access_key_id: caller.remote.as_ref().and_then(|r| r.access_key_id.clone()),
            source: caller.remote.as_ref().map(|r| r.source.clone()),
            error_code: None,
        }
    }

    /// Records how `err` ended the operation: outcome, AWS error name and message.
    pub fn fail(&mut self, err: &Error) {
        self.outcome = Outcome::of_error(err);
        self.error_code = Some(super::aws_errors::error_name(err).to_string());
        self.reason = err.to_string();
    }

    /// The bytes the MAC covers: every field, length-prefixed, after the sequence number.
    fn encode(&self, seq: i64) -> Vec<u8> {
        self.encode_with_outcome(seq, self.outcome.as_str())
    }

    /// [`AuditEvent::encode`] with the outcome as stored text, so that verification covers
    /// the very word in the row, not what it was parsed to.
    fn encode_with_outcome(&self, seq: i64, outcome: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.uid.to_be_bytes());
        out.extend_from_slice(&self.pid.map(i64::from).unwrap_or(-1).to_be_bytes());
        let texts = [
            Some(self.user.as_str()),
            Some(self.operation.as_str()),
            self.key_id.as_deref(),
            Some(outcome),
            Some(self.reason.as_str()),
            Some(self.context.as_str()),
            self.path.as_deref(),
        ];
        let put = |out: &mut Vec<u8>, text: Option<&str>| match text {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&(t.len() as u32).to_be_bytes());
                out.extend_from_slice(t.as_bytes());
            }
        };
        for text in texts {
            put(&mut out, text);
        }
        // Fields added with the API server are covered only when one is set, so events
        // written before them keep their MACs.
        let api = [
            self.principal_arn.as_deref(),
            self.access_key_id.as_deref(),
            self.source.as_deref(),
            self.error_code.as_deref(),
        ];
        if api.iter().any(Option::is_some) {
            out.push(2);
            for text in api {
                put(&mut out, text);
            }
        }
        out
    }
}

/// A stored event with its place in the chain.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Which events `kmsfs audit` shows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub key_id: Option<String>,
    pub since_ms: Option<i64>,
    pub operation: Option<String>,
    pub outcome: Option<Outcome>,
    pub uid: Option<u32>,
    pub principal_arn: Option<String>,
    pub access_key_id: Option<String>,
    /// `IP`, `IP:PORT` or `unix`: an address matches with or without its port.
    pub source: Option<String>,
    pub error_code: Option<String>,
    /// The newest N, still shown oldest first.
    pub limit: Option<usize>,
    /// Only events before this time (unix milliseconds).
    pub until_ms: Option<i64>,
    /// Only events after this sequence number (for following the trail).
    pub after_seq: Option<i64>,
    /// Only events older than this sequence number (for paging back).
    pub before_seq: Option<i64>,
}

/// The sequence number of the last event in the chain (0: none).
pub(crate) fn head_seq(conn: &Connection) -> Result<i64> {
    Ok(read_head(conn)?.0)
}

/// Events up to this sequence number were MACed with the audit key of keystores made before
/// per-purpose keys (`root_keys`); every event of a keystore not yet upgraded was.
fn legacy_until(conn: &Connection) -> Result<i64> {
    if !root_keys::is_derived(conn)? {
        return Ok(i64::MAX);
    }
    Ok(get_meta(conn, root_keys::AUDIT_LEGACY_UNTIL)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

fn read_head(conn: &Connection) -> Result<(i64, [u8; MAC_LEN])> {
    match get_meta(conn, HEAD_META)? {
        None => Ok((0, [0; MAC_LEN])),
        Some(raw) if raw.len() == 8 + MAC_LEN => {
            let seq = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
            Ok((seq, raw[8..].try_into().expect("32 bytes")))
        }
        Some(_) => Err(Error::InvalidArgument("the audit head in the keystore is malformed".into())),
    }
}

/// Appends `events` to the chain inside the caller's transaction.
pub fn append(conn: &Connection, key: &SecretKey, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (mut seq, mut mac) = read_head(conn)?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO audit (seq, time_ms, uid, user, pid, operation, key_id, outcome, reason, context, path, mac,
                            principal_arn, access_key_id, source, error_code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?;
    for ev in events {
        seq += 1;
        mac = crypto::hmac_sha256(key, &[&mac, &ev.encode(seq)]);
        stmt.execute(params![
            seq,
            ev.time_ms,
            ev.uid,
            ev.user,
            ev.pid,
            ev.operation,
            ev.key_id,
            ev.outcome.as_str(),
            ev.reason,
            ev.context,
            ev.path,
            &mac[..],
            ev.principal_arn,
            ev.access_key_id,
            ev.source,
            ev.error_code,
        ])?;
    }
    let head = [&seq.to_be_bytes()[..], &mac[..]].concat();
    set_meta(conn, HEAD_META, &head)
}

const COLUMNS: &str =
    "seq, time_ms, uid, user, pid, operation, key_id, outcome, reason, context, path, mac, \
                       principal_arn, access_key_id, source, error_code";

/// A row as an event, its stored MAC and its outcome word as stored (an unknown word is
/// shown as `Error`; `verify` checks the word itself).
fn record_from_row(r: &Row<'_>) -> rusqlite::Result<(AuditRecord, Vec<u8>, String)> {
    let outcome: String = r.get(7)?;
    Ok((
        AuditRecord {
            seq: r.get(0)?,
            event: AuditEvent {
                time_ms: r.get(1)?,
                uid: r.get(2)?,
                user: r.get(3)?,
                pid: r.get(4)?,
                operation: r.get(5)?,
                key_id: r.get(6)?,
                outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Error),
                reason: r.get(8)?,
                context: r.get(9)?,
                path: r.get(10)?,
                principal_arn: r.get(12)?,
                access_key_id: r.get(13)?,
                source: r.get(14)?,
                error_code: r.get(15)?,
            },
        },
        r.get(11)?,
        outcome,
    ))
}

/// Events matching `filter`, oldest first.
pub fn query(conn: &Connection, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM audit
         WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR time_ms >= ?2)
           AND (?3 IS NULL OR operation = ?3 COLLATE NOCASE) AND (?4 IS NULL OR outcome = ?4)
           AND (?5 IS NULL OR uid = ?5) AND (?7 IS NULL OR principal_arn = ?7)
           AND (?8 IS NULL OR access_key_id = ?8)
           AND (?9 IS NULL OR source = ?9 OR source LIKE ?9 || ':%' OR source LIKE '[' || ?9 || ']:%')
           AND (?10 IS NULL OR error_code = ?10)
           AND (?11 IS NULL OR time_ms < ?11) AND (?12 IS NULL OR seq > ?12)
           AND (?13 IS NULL OR seq < ?13)
         ORDER BY seq DESC LIMIT ?6"
    ))?;
    let limit = filter.limit.map(|l| l as i64).unwrap_or(-1);
    let rows = stmt.query_map(
        params![
            filter.key_id,
            filter.since_ms,
            filter.operation,
            filter.outcome.map(Outcome::as_str),
            filter.uid,
            limit,
            filter.principal_arn,
            filter.access_key_id,
            filter.source,
            filter.error_code,
            filter.until_ms,
            filter.after_seq,
            filter.before_seq,
        ],
        |r| record_from_row(r).map(|(rec, _, _)| rec),
    )?;
    let mut out: Vec<AuditRecord> = rows.collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

/// What `kmsfs audit verify` found.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyReport {
    pub events: i64,
    pub intact: bool,
    pub problems: Vec<String>,
}

/// Walks the whole chain and reports every place where it does not hold.
pub fn verify(conn: &Connection, keys: &RootKeys) -> Result<VerifyReport> {
    // The rows and the head from one snapshot (one read transaction): an event appended in
    // between, by a mount or another command, must not look like a cut tail.
    let snapshot = conn.unchecked_transaction()?;
    let conn: &Connection = &snapshot;
    let mut problems = Vec::new();
    let legacy_until = legacy_until(conn)?;
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut prev_mac = [0u8; MAC_LEN];
    let mut expected_seq = 1i64;
    let mut count = 0i64;
    while let Some(row) = rows.next()? {
        count += 1;
        let (rec, stored_mac, outcome) = match record_from_row(row) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("a row cannot be read ({e})"));
                continue;
            }
        };
        if rec.seq != expected_seq {
            problems.push(format!("events {expected_seq}..{} are missing (deleted rows)", rec.seq - 1));
        }
        if Outcome::parse(&outcome).is_none() {
            problems.push(format!("event {} has an unknown outcome '{outcome}' (edited)", rec.seq));
        }
        let key = if rec.seq <= legacy_until { keys.legacy_audit() } else { keys.audit() };
        let mac = crypto::hmac_sha256(key, &[&prev_mac, &rec.event.encode_with_outcome(rec.seq, &outcome)]);
        if !crypto::ct_eq(&mac, &stored_mac) {
            problems.push(format!(
                "event {} does not match its chain MAC (edited, inserted, or a preceding event was removed)",
                rec.seq
            ));
        }
        // Continue from the stored MAC so one edited row is reported once, not forever after.
        prev_mac = stored_mac.as_slice().try_into().unwrap_or([0; MAC_LEN]);
        expected_seq = rec.seq + 1;
    }
    let (head_seq, head_mac) = read_head(conn)?;
    if head_seq != expected_seq - 1 || (head_seq > 0 && !crypto::ct_eq(&head_mac, &prev_mac)) {
        problems.push(format!(
            "the chain ends at event {} but the keystore recorded event {head_seq} as the last (events removed from the end)",
            expected_seq - 1
        ));
    }
    Ok(VerifyReport { events: count, intact: problems.is_empty(), problems })
}
