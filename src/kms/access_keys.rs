//! Access keys for the API server: an id and a secret that an AWS SDK signs requests with
//! (SigV4), each belonging to an IAM-style user `arn:aws:iam::ACCOUNT:user/NAME` and
//! optionally acting as a Unix uid. The secret is shown once, at creation, and stored sealed
//! by the root key (the server needs it back to recompute signatures).

use std::collections::HashMap;

use rusqlite::{params, Connection};
use zeroize::Zeroizing;

use super::policy::valid_iam_user_name;
use super::{Kms, Principal};
use crate::crypto::{self, SecretKey};
use crate::error::{Error, Result};

/// An access key's public facts (IAM's AccessKeyMetadata, plus the uid it acts as).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKeyInfo {
    pub user_name: String,
    pub access_key_id: String,
    pub status: String,
    #[serde(serialize_with = "iso_date")]
    pub create_date: i64,
    pub uid: Option<u32>,
}

fn iso_date<S: serde::Serializer>(secs: &i64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&super::clock::format_date(*secs))
}

/// A new access key with its secret, which is never shown again. (No `Debug`.)
pub struct NewAccessKey {
    pub info: AccessKeyInfo,
    pub secret: Zeroizing<String>,
}

/// An active access key as the server checks signatures with it. (No `Debug`.)
pub struct Credential {
    pub access_key_id: String,
    pub user_name: String,
    pub uid: Option<u32>,
    pub secret: Zeroizing<String>,
}

const ID_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// `AKIA` and 16 base32 characters, as AWS's long-term access key ids.
fn new_access_key_id() -> String {
    let bytes = crypto::random_bytes::<16>();
    let tail: String = bytes.iter().map(|b| ID_ALPHABET[usize::from(b & 31)] as char).collect();
    format!("AKIA{tail}")
}

/// 40 characters of base64, like AWS secret access keys.
fn new_secret() -> Zeroizing<String> {
    use base64::Engine;
    let bytes = Zeroizing::new(crypto::random_bytes::<30>());
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&bytes[..]))
}

fn secret_aad(access_key_id: &str) -> Vec<u8> {
    [b"kmsfs-access-key\0".as_slice(), access_key_id.as_bytes()].concat()
}

impl Kms {
    /// CreateAccessKey for `user` (optionally acting as Unix `uid`).
    pub fn create_access_key(
        &mut self,
        caller: &Principal,
        user: &str,
        uid: Option<u32>,
    ) -> Result<NewAccessKey> {
        if !valid_iam_user_name(user) {
            return Err(Error::InvalidArgument(format!(
                "user name '{user}' must be 1-64 letters, digits or +=,.@_- (as in IAM)"
            )));
        }
        if uid == Some(super::principal::NO_UID) {
            return Err(Error::InvalidArgument(format!("uid {} is reserved", super::principal::NO_UID)));
        }
        self.audited(caller, "CreateAccessKey", |op| {
            let id = new_access_key_id();
            let secret = new_secret();
            let sealed = crypto::seal(op.root, &secret_aad(&id), secret.as_bytes());
            op.tx.execute(
                "INSERT INTO access_keys (access_key_id, user_name, uid, secret_wrapped, status, created)
                 VALUES (?1, ?2, ?3, ?4, 'Active', ?5)",
                params![id, user, uid, sealed, op.now],
            )?;
            op.event.reason = format!("access key {id} for user {user}");
            let info = AccessKeyInfo {
                user_name: user.to_string(),
                access_key_id: id,
                status: "Active".into(),
                create_date: op.now,
                uid,
            };
            Ok(NewAccessKey { info, secret })
        })
    }

    pub fn list_access_keys(&mut self, caller: &Principal) -> Result<Vec<AccessKeyInfo>> {
        self.audited(caller, "ListAccessKeys", |op| list(&op.tx))
    }

    /// UpdateAccessKey: `active` false makes the server refuse the key at its next request.
    pub fn set_access_key_active(&mut self, caller: &Principal, id: &str, active: bool) -> Result<()> {
        self.audited(caller, "UpdateAccessKey", |op| {
            let status = if active { "Active" } else { "Inactive" };
            let n = op.tx.execute(
                "UPDATE access_keys SET status = ?2 WHERE access_key_id = ?1",
                params![id, status],
            )?;
            if n == 0 {
                return Err(unknown(id));
            }
            op.event.reason = format!("access key {id} {status}");
            Ok(())
        })
    }

    pub fn delete_access_key(&mut self, caller: &Principal, id: &str) -> Result<()> {
        self.audited(caller, "DeleteAccessKey", |op| {
            if op.tx.execute("DELETE FROM access_keys WHERE access_key_id = ?1", [id])? == 0 {
                return Err(unknown(id));
            }
            op.event.reason = format!("access key {id} deleted");
            Ok(())
        })
    }
}

fn unknown(id: &str) -> Error {
    Error::NotFound(crate::error::NotFound::Other(format!(
        "no access key {id} (see `kmsfs access-key list`)"
    )))
}

fn list(conn: &Connection) -> Result<Vec<AccessKeyInfo>> {
    let mut stmt = conn.prepare(
        "SELECT user_name, access_key_id, status, created, uid FROM access_keys ORDER BY user_name, created",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AccessKeyInfo {
            user_name: r.get(0)?,
            access_key_id: r.get(1)?,
            status: r.get(2)?,
            create_date: r.get(3)?,
            uid: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every active access key with its secret unsealed (for the server's key ring).
pub fn load_active(
    conn: &Connection,
    root: &SecretKey,
) -> Result<HashMap<String, std::sync::Arc<Credential>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT access_key_id, user_name, uid, secret_wrapped FROM access_keys WHERE status = 'Active'",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<u32>>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, user_name, uid, sealed) = row?;
        let plain = crypto::open(root, &secret_aad(&id), &sealed).map_err(|_| {
            Error::CorruptMaterial(format!("the secret of access key {id} does not authenticate"))
        })?;
        let secret = Zeroizing::new(
            String::from_utf8(plain.to_vec())
                .map_err(|_| Error::CorruptMaterial(format!("the secret of access key {id} is not text")))?,
        );
        out.insert(id.clone(), std::sync::Arc::new(Credential { access_key_id: id, user_name, uid, secret }));
    }
    Ok(out)
}
