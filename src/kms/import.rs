//! Imported key material (Origin EXTERNAL, "bring your own key"), as AWS KMS does it:
//! GetParametersForImport hands out a fresh RSA wrapping key and an import token,
//! ImportKeyMaterial takes the material wrapped for it, DeleteImportedKeyMaterial and the
//! material's expiry take it away again (the key becomes PendingImport) until the same
//! material is imported once more. See docs/KEY_IMPORT.md.
//!
//! Storage: each imported version is a `key_versions` row like any other (sealed by the
//! versions key; NULL while deleted or expired) plus an `imported_material` row that outlives
//! the material: its KeyMaterialId (which proves a re-import brings the same bytes), its
//! expiration and description. Wrapping keys live in `import_wrapping_keys`, their private
//! halves sealed by the import key (derived from the root key), until their token expires.

use openssl::pkey::PKey;
use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use super::asymmetric::{self, KeyMaterial, KeySpec};
use super::aws_errors::{EXPIRED_IMPORT_TOKEN, INCORRECT_KEY_MATERIAL, INVALID_IMPORT_TOKEN, UNSUPPORTED};
use super::clock::format_date;
use super::import_wrap::{self, WrappingAlgorithm, WrappingKeySpec};
use super::lifecycle::DAY_SECS;
use super::{audit, AuditEvent, Kms, Op, Principal};
use crate::crypto::{self, SecretKey};
use crate::encoding::hex;
use crate::error::{Error, KeyStateError, Result, StateProblem};
use crate::keystore::records::{self, KeyRecord, KeyState};

/// `keys.origin` of a key whose material is imported.
pub const ORIGIN_EXTERNAL: &str = "EXTERNAL";
/// How long a wrapping key and its import token can be used (AWS: 24 hours).
pub const TOKEN_VALIDITY_SECS: i64 = DAY_SECS;
/// The furthest ValidTo can lie ahead of the import (AWS: 365 days).
pub const MAX_VALID_TO_SECS: i64 = 365 * DAY_SECS;

pub const EXPIRES: &str = "KEY_MATERIAL_EXPIRES";
pub const DOES_NOT_EXPIRE: &str = "KEY_MATERIAL_DOES_NOT_EXPIRE";

const TOKEN_AAD: &[u8] = b"kmsfs-import-token\0";
const TOKEN_FORMAT: u8 = 1;

/// What GetParametersForImport answers.
pub struct ImportParameters {
    pub key_id: String,
    /// DER SubjectPublicKeyInfo of the RSA wrapping key.
    pub public_key: Vec<u8>,
    pub import_token: Vec<u8>,
    /// Unix seconds after which the token and wrapping key are refused.
    pub parameters_valid_to: i64,
}

/// AWS's ImportType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportType {
    NewKeyMaterial,
    ExistingKeyMaterial,
}

impl ImportType {
    pub fn parse(name: &str) -> Result<ImportType> {
        match name {
            "NEW_KEY_MATERIAL" => Ok(ImportType::NewKeyMaterial),
            "EXISTING_KEY_MATERIAL" => Ok(ImportType::ExistingKeyMaterial),
            _ => Err(Error::InvalidArgument(format!(
                "ImportType must be NEW_KEY_MATERIAL or EXISTING_KEY_MATERIAL, not {name}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImportType::NewKeyMaterial => "NEW_KEY_MATERIAL",
            ImportType::ExistingKeyMaterial => "EXISTING_KEY_MATERIAL",
        }
    }
}

/// One ImportKeyMaterial request, as the caller gave it (checked here, at the KMS's time).
pub struct ImportRequest<'a> {
    pub encrypted_material: &'a [u8],
    pub import_token: &'a [u8],
    /// ExpirationModel (None: KEY_MATERIAL_EXPIRES, AWS's default).
    pub expiration_model: Option<&'a str>,
    /// ValidTo, unix seconds.
    pub valid_to: Option<i64>,
    pub import_type: Option<ImportType>,
    pub key_material_id: Option<&'a str>,
    pub description: Option<&'a str>,
}

/// One imported version of a key: what stays when its material is gone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MaterialRecord {
    pub version: u32,
    pub key_material_id: String,
    pub expiration_model: String,
    /// Unix seconds.
    pub valid_to: Option<i64>,
    pub description: String,
    /// IMPORTED (the material is here) or PENDING_IMPORT (deleted or expired).
    pub imported: bool,
}

/// A key's imported material that expires soon (for `kmsfs status`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExpiringMaterial {
    pub key_id: String,
    pub key_material_id: String,
    pub valid_to: String,
    pub seconds_remaining: i64,
}

/// The AWS KeyMaterialId of `material` in `key_id`: a function of both (so the same bytes in
/// another key get another id), and a hash of 256-bit-strong secrets, so it reveals nothing
/// of them.
pub fn material_id(key_id: &str, material: &[u8]) -> String {
    hex(&crypto::sha256(&[b"kmsfs key material id\0", key_id.as_bytes(), b"\0", material]))
}

pub(crate) fn is_external(key: &KeyRecord) -> bool {
    key.origin == ORIGIN_EXTERNAL
}

fn unsupported_unless_external(key: &KeyRecord, operation: &str) -> Result<()> {
    if is_external(key) {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{UNSUPPORTED}{operation} needs a key with Origin EXTERNAL; key {} has its material from kmsfs",
        key.key_id
    )))
}

fn state_error(key: &KeyRecord, problem: StateProblem) -> Error {
    Error::KeyState(KeyStateError::new(key, problem))
}

fn incorrect(msg: String) -> Error {
    Error::InvalidArgument(format!("{INCORRECT_KEY_MATERIAL}{msg}"))
}

/// Every imported version of `key_id`, oldest first.
pub(crate) fn load_materials(conn: &Connection, key_id: &str) -> Result<Vec<MaterialRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.version, m.material_id, m.expiration_model, m.valid_to, m.description,
                v.material IS NOT NULL
         FROM imported_material m JOIN key_versions v ON v.key_id = m.key_id AND v.version = m.version
         WHERE m.key_id = ?1 ORDER BY m.version",
    )?;
    let rows = stmt.query_map([key_id], |r| {
        Ok(MaterialRecord {
            version: r.get(0)?,
            key_material_id: r.get(1)?,
            expiration_model: r.get(2)?,
            valid_to: r.get(3)?,
            description: r.get(4)?,
            imported: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// For each key, the earliest ValidTo of the material it has now and needs (current and
/// older versions): from that time on the key is PendingImport, whether or not anyone has
/// deleted the material yet. The key ring checks it at every use.
pub(crate) fn material_expiries(conn: &Connection) -> Result<std::collections::HashMap<String, i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.key_id, min(m.valid_to)
         FROM imported_material m
         JOIN key_versions v ON v.key_id = m.key_id AND v.version = m.version
         JOIN keys k ON k.key_id = m.key_id
         WHERE m.valid_to IS NOT NULL AND v.material IS NOT NULL AND m.version <= k.current_version
         GROUP BY m.key_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `key` as it stands at `now`, given the earliest expiry of its material: an Enabled or
/// Disabled key whose material has expired is PendingImport.
pub(crate) fn state_at(key: &KeyRecord, expires: Option<i64>, now: i64) -> KeyState {
    match (key.state, expires) {
        (KeyState::Enabled | KeyState::Disabled, Some(t)) if t <= now => KeyState::PendingImport,
        (state, _) => state,
    }
}

/// Whether every version the key needs (current and older) has its material.
fn complete(materials: &[MaterialRecord], current: u32) -> bool {
    !materials.is_empty() && materials.iter().filter(|m| m.version <= current).all(|m| m.imported)
}

/// The state a CancelKeyDeletion leaves an imported key in: Disabled as for any key, unless
/// material it needs is missing.
pub(crate) fn state_after_cancel(conn: &Connection, key: &KeyRecord) -> Result<KeyState> {
    if !is_external(key) || complete(&load_materials(conn, &key.key_id)?, key.current_version) {
        return Ok(KeyState::Disabled);
    }
    Ok(KeyState::PendingImport)
}

/// Checks ExpirationModel and ValidTo against `now`; returns the ValidTo to store.
fn expiration(model: Option<&str>, valid_to: Option<i64>, now: i64) -> Result<Option<i64>> {
    match (model.unwrap_or(EXPIRES), valid_to) {
        (EXPIRES, None) => Err(Error::InvalidArgument(
            "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES".into(),
        )),
        (EXPIRES, Some(t)) if t <= now => Err(Error::InvalidArgument(format!(
            "ValidTo ({}) must be a future date and time",
            format_date(t)
        ))),
        (EXPIRES, Some(t)) if t > now + MAX_VALID_TO_SECS => Err(Error::InvalidArgument(format!(
            "ValidTo ({}) must be no more than 365 days from the request date",
            format_date(t)
        ))),
        (EXPIRES, Some(t)) => Ok(Some(t)),
        (DOES_NOT_EXPIRE, None) => Ok(None),
        (DOES_NOT_EXPIRE, Some(_)) => Err(Error::InvalidArgument(
            "ValidTo must not be set when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE".into(),
        )),
        (other, _) => Err(Error::InvalidArgument(format!(
            "ExpirationModel must be KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE, not {other}"
        ))),
    }
}

/// What the import token carries, sealed by the import key: which wrapping key, for which
/// KMS key, until when. Sealing (AEAD) makes a token from another keystore, an edited token
/// or a made-up one fail to open.
#[derive(Debug)]
struct Token {
    token_id: [u8; 16],
    expires: i64,
    key_id: String,
}

impl Token {
    fn seal(&self, key: &SecretKey) -> Vec<u8> {
        let mut payload = vec![TOKEN_FORMAT];
        payload.extend_from_slice(&self.token_id);
        payload.extend_from_slice(&self.expires.to_be_bytes());
        payload.extend_from_slice(self.key_id.as_bytes());
        crypto::seal(key, TOKEN_AAD, &payload)
    }

    fn open(key: &SecretKey, sealed: &[u8]) -> Result<Token> {
        let invalid = || {
            Error::InvalidArgument(format!(
                "{INVALID_IMPORT_TOKEN}the import token was not issued by this key service, or was altered"
            ))
        };
        let payload = crypto::open(key, TOKEN_AAD, sealed).map_err(|_| invalid())?;
        if payload.len() < 1 + 16 + 8 || payload[0] != TOKEN_FORMAT {
            return Err(invalid());
        }
        let token_id: [u8; 16] = payload[1..17].try_into().expect("16 bytes");
        let expires = i64::from_be_bytes(payload[17..25].try_into().expect("8 bytes"));
        let key_id = String::from_utf8(payload[25..].to_vec()).map_err(|_| invalid())?;
        Ok(Token { token_id, expires, key_id })
    }
}

fn wrapping_aad(token_id: &str, key_id: &str) -> Vec<u8> {
    [b"kmsfs-import-wrapping-key\0".as_slice(), token_id.as_bytes(), b"\0", key_id.as_bytes()].concat()
}

/// Refuses material that cannot be a key of `spec`: a symmetric key is 32 bytes, an HMAC
/// key as long as its spec says, an asymmetric key a PKCS#8 private key of its type and size.
fn check_material(key_id: &str, spec: KeySpec, material: &[u8]) -> Result<()> {
    let what = spec.as_str();
    if spec.is_symmetric() {
        if material.len() != 32 {
            return Err(incorrect(format!(
                "key material for a SYMMETRIC_DEFAULT key is 32 bytes (256 bits), not {}",
                material.len()
            )));
        }
        return Ok(());
    }
    let parsed = KeyMaterial::from_bytes(spec, material)
        .map_err(|_| incorrect(format!("the key material is not a {what} key (key {key_id})")))?;
    if !parsed.matches_spec(spec) {
        return Err(incorrect(format!("the key material is not a {what} key (key {key_id})")));
    }
    Ok(())
}

impl Op<'_> {
    /// Takes `version`'s material away (DeleteImportedKeyMaterial, expiry): a version pending
    /// rotation goes altogether; any other loses its material and the key becomes
    /// PendingImport (a key pending deletion keeps that state, as in AWS).
    fn drop_material(&mut self, key: &mut KeyRecord, version: u32) -> Result<()> {
        // Outstanding import parameters go too: a captured ImportKeyMaterial request cannot
        // bring the material back; the owner asks for new parameters.
        self.tx.execute("DELETE FROM import_wrapping_keys WHERE key_id = ?1", [&key.key_id])?;
        if version > key.current_version {
            self.tx.execute(
                "DELETE FROM imported_material WHERE key_id = ?1 AND version = ?2",
                params![key.key_id, version],
            )?;
            self.tx.execute(
                "DELETE FROM key_versions WHERE key_id = ?1 AND version = ?2",
                params![key.key_id, version],
            )?;
            return Ok(());
        }
        self.tx.execute(
            "UPDATE key_versions SET material = NULL WHERE key_id = ?1 AND version = ?2",
            params![key.key_id, version],
        )?;
        if matches!(key.state, KeyState::Enabled | KeyState::Disabled) {
            key.state = KeyState::PendingImport;
        }
        records::update_key(&self.tx, key)
    }
}

impl Kms {
    /// GetParametersForImport: a fresh RSA wrapping key for `key_ref` (its private half sealed
    /// in the keystore) and the token that names it, both valid for 24 hours.
    pub fn get_parameters_for_import(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        algorithm: &str,
        wrapping_spec: &str,
    ) -> Result<ImportParameters> {
        let parsed =
            WrappingAlgorithm::parse(algorithm).and_then(|a| Ok((a, WrappingKeySpec::parse(wrapping_spec)?)));
        // RSA key generation takes up to seconds (RSA_4096): done before the write lock.
        let private = match &parsed {
            Ok((_, spec)) => Some(spec.generate()?),
            Err(_) => None,
        };
        self.audited(caller, "GetParametersForImport", |op| {
            let key = op.key(key_ref)?;
            let (alg, spec) = parsed?;
            let private = private.expect("generated when the parameters parse");
            unsupported_unless_external(&key, "GetParametersForImport")?;
            if matches!(key.state, KeyState::PendingDeletion | KeyState::Destroyed) {
                return Err(state_error(&key, StateProblem::NotEnabled));
            }
            // Wrapping keys whose tokens have expired are of no use to anyone.
            op.tx.execute("DELETE FROM import_wrapping_keys WHERE expires <= ?1", [op.now])?;
            let token = Token {
                token_id: crypto::random_bytes::<16>(),
                expires: op.now + TOKEN_VALIDITY_SECS,
                key_id: key.key_id.clone(),
            };
            let token_hex = hex(&token.token_id);
            let pkcs8 = asymmetric::material::to_pkcs8(&private)?;
            let sealed = crypto::seal(op.keys.import(), &wrapping_aad(&token_hex, &key.key_id), &pkcs8);
            op.tx.execute(
                "INSERT INTO import_wrapping_keys
                     (token_id, key_id, algorithm, wrapping_spec, created, expires, private_sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![token_hex, key.key_id, alg.as_str(), spec.as_str(), op.now, token.expires, sealed],
            )?;
            op.event.reason = format!(
                "{} wrapping key for {}, valid until {}",
                spec.as_str(),
                alg.as_str(),
                format_date(token.expires)
            );
            let public_key = private
                .public_key_to_der()
                .map_err(|e| Error::Io(format!("OpenSSL failed to encode a public key: {e}")))?;
            Ok(ImportParameters {
                key_id: key.key_id,
                public_key,
                import_token: token.seal(op.keys.import()),
                parameters_valid_to: token.expires,
            })
        })
    }

    /// ImportKeyMaterial. Returns the key id and the KeyMaterialId of what was imported.
    pub fn import_key_material(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        req: &ImportRequest<'_>,
    ) -> Result<(String, String)> {
        self.audited(caller, "ImportKeyMaterial", |op| {
            let mut key = op.key(key_ref)?;
            unsupported_unless_external(&key, "ImportKeyMaterial")?;
            if !matches!(key.state, KeyState::Enabled | KeyState::PendingImport) {
                return Err(state_error(&key, StateProblem::NotEnabled));
            }
            let valid_to = expiration(req.expiration_model, req.valid_to, op.now)?;
            let (material, token_hex) = unwrap_for(op, &key, req)?;
            let (spec, _) = asymmetric::load_spec(&op.tx, &key.key_id)?;
            check_material(&key.key_id, spec, &material)?;
            let id = material_id(&key.key_id, &material);
            let materials = load_materials(&op.tx, &key.key_id)?;
            let import_type = req.import_type.unwrap_or(if materials.is_empty() {
                ImportType::NewKeyMaterial
            } else {
                ImportType::ExistingKeyMaterial
            });
            let model = if valid_to.is_some() { EXPIRES } else { DOES_NOT_EXPIRE };
            let version = match import_type {
                ImportType::NewKeyMaterial => {
                    new_material(&mut key, spec, &materials, &id, req.key_material_id)?
                }
                ImportType::ExistingKeyMaterial => {
                    existing_material(&key, &materials, &id, req.key_material_id)?
                }
            };
            let sealed =
                crypto::seal(op.keys.versions(true), &super::version_aad(&key.key_id, version), &material);
            let exists = materials.iter().any(|m| m.version == version);
            if exists {
                op.tx.execute(
                    "UPDATE key_versions SET material = ?3 WHERE key_id = ?1 AND version = ?2",
                    params![key.key_id, version, sealed],
                )?;
                op.tx.execute(
                    "UPDATE imported_material SET expiration_model = ?3, valid_to = ?4,
                         description = coalesce(?5, description)
                     WHERE key_id = ?1 AND version = ?2",
                    params![key.key_id, version, model, valid_to, req.description],
                )?;
            } else {
                let rotation_type = if version == 1 { "INITIAL" } else { "ON_DEMAND" };
                records::insert_version(&op.tx, &key.key_id, version, op.now, rotation_type, &sealed)?;
                op.tx.execute(
                    "INSERT INTO imported_material
                         (key_id, version, material_id, expiration_model, valid_to, description)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![key.key_id, version, id, model, valid_to, req.description.unwrap_or("")],
                )?;
                if !spec.is_symmetric() {
                    // Asymmetric and HMAC keys have one version, which the ring reads as current.
                    key.current_version = version;
                }
            }
            if key.state == KeyState::PendingImport
                && complete(&load_materials(&op.tx, &key.key_id)?, key.current_version)
            {
                key.state = KeyState::Enabled;
            }
            records::update_key(&op.tx, &key)?;
            // A token is good for one import: a captured request cannot be replayed.
            op.tx.execute("DELETE FROM import_wrapping_keys WHERE token_id = ?1", [&token_hex])?;
            op.event.reason = format!(
                "{} version {version} ({}), {}",
                import_type.as_str(),
                &id[..16],
                valid_to.map_or("does not expire".to_string(), |t| format!("valid to {}", format_date(t)))
            );
            Ok((key.key_id.clone(), id))
        })
    }

    /// DeleteImportedKeyMaterial: the current material (or the one `material_id` names) is
    /// erased at once. Returns the key id and the KeyMaterialId deleted.
    pub fn delete_imported_key_material(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        material_id: Option<&str>,
    ) -> Result<(String, String)> {
        let result = self.audited(caller, "DeleteImportedKeyMaterial", |op| {
            let mut key = op.key(key_ref)?;
            unsupported_unless_external(&key, "DeleteImportedKeyMaterial")?;
            if key.state == KeyState::Destroyed {
                return Err(state_error(&key, StateProblem::NotEnabled));
            }
            let materials = load_materials(&op.tx, &key.key_id)?;
            let target = match material_id {
                Some(id) => materials.iter().find(|m| m.key_material_id == id).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "key {} has no key material with KeyMaterialId {id}",
                        key.key_id
                    ))
                })?,
                None => match materials.iter().find(|m| m.version == key.current_version) {
                    Some(m) => m,
                    None => return Err(state_error(&key, StateProblem::NotEnabled)),
                },
            };
            if !target.imported {
                return Err(state_error(&key, StateProblem::NotEnabled));
            }
            let (version, id) = (target.version, target.key_material_id.clone());
            op.drop_material(&mut key, version)?;
            op.event.reason = format!("version {version} ({}) deleted", &id[..16]);
            Ok((key.key_id.clone(), id))
        })?;
        self.erase_destroyed_pages(true)?;
        Ok(result)
    }

    /// Deletes every imported material whose ValidTo has passed, each in a transaction of its
    /// own with its audit event. Not through `audited`: it runs first thing in every
    /// operation (a DryRun included, whose changes are rolled back), so the keystore never
    /// answers with material that has expired. Returns the keys affected.
    pub fn expire_imported_material(&mut self, caller: &Principal) -> Result<Vec<String>> {
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let due: Vec<(String, u32, i64)> = {
            let mut stmt = self.ks.conn().prepare_cached(
                "SELECT m.key_id, m.version, m.valid_to FROM imported_material m
                 JOIN key_versions v ON v.key_id = m.key_id AND v.version = m.version
                 WHERE m.valid_to <= ?1 AND v.material IS NOT NULL ORDER BY m.valid_to",
            )?;
            let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut affected = Vec::new();
        for (key_id, version, valid_to) in due {
            let mut event = AuditEvent::new(caller, "DeleteImportedKeyMaterial", now_ms);
            event.key_id = Some(key_id.clone());
            event.reason =
                format!("version {version}: the key material expired (ValidTo {})", format_date(valid_to));
            let tx = self.ks.write_tx()?;
            let mut op = Op { tx, keys: &self.keys, now, event, owner_uid: self.owner_uid, caller };
            let Some(mut key) = records::load_key(&op.tx, &key_id)? else { continue };
            let still_there = load_materials(&op.tx, &key_id)?
                .iter()
                .any(|m| m.version == version && m.imported && m.valid_to.is_some_and(|t| t <= now));
            if !still_there {
                continue; // another process expired (or re-imported) it meanwhile
            }
            op.drop_material(&mut key, version)?;
            let (tx, event) = op.into_parts();
            crate::keystore::bump_generation(&tx)?;
            audit::append(&tx, self.keys.audit(), std::slice::from_ref(&event))?;
            tx.commit()?;
            log::warn!("the imported key material of key {key_id} expired; the key is pending import");
            affected.push(key_id);
        }
        self.erase_destroyed_pages(true)?;
        Ok(affected)
    }

    /// The imported versions of `key_id` (for the answer of an operation that was audited).
    pub fn imported_materials(&self, key_id: &str) -> Result<Vec<MaterialRecord>> {
        load_materials(self.ks.conn(), key_id)
    }
}

/// Imported material present at `now` that expires within `within_secs`, the soonest first.
pub(crate) fn expiring(conn: &Connection, now: i64, within_secs: i64) -> Result<Vec<ExpiringMaterial>> {
    let mut stmt = conn.prepare(
        "SELECT m.key_id, m.material_id, m.valid_to FROM imported_material m
         JOIN key_versions v ON v.key_id = m.key_id AND v.version = m.version
         WHERE m.valid_to IS NOT NULL AND m.valid_to <= ?1 AND v.material IS NOT NULL
         ORDER BY m.valid_to",
    )?;
    let rows = stmt.query_map([now + within_secs], |r| {
        let valid_to: i64 = r.get(2)?;
        Ok(ExpiringMaterial {
            key_id: r.get(0)?,
            key_material_id: r.get(1)?,
            valid_to: format_date(valid_to),
            seconds_remaining: (valid_to - now).max(0),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Opens the token, finds its wrapping key and unwraps the material with it. Returns the
/// material and the token's id.
fn unwrap_for(op: &Op<'_>, key: &KeyRecord, req: &ImportRequest<'_>) -> Result<(Zeroizing<Vec<u8>>, String)> {
    let token = Token::open(op.keys.import(), req.import_token)?;
    if token.key_id != key.key_id {
        return Err(Error::InvalidArgument(format!(
            "{INVALID_IMPORT_TOKEN}the import token was issued for another key, not {}",
            key.key_id
        )));
    }
    if token.expires <= op.now {
        return Err(Error::InvalidArgument(format!(
            "{EXPIRED_IMPORT_TOKEN}the import token expired {}; call GetParametersForImport again",
            format_date(token.expires)
        )));
    }
    let token_hex = hex(&token.token_id);
    let row: Option<(String, Vec<u8>)> = op
        .tx
        .query_row(
            "SELECT algorithm, private_sealed FROM import_wrapping_keys WHERE token_id = ?1 AND key_id = ?2",
            params![token_hex, key.key_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (algorithm, sealed) = row.ok_or_else(|| {
        Error::InvalidArgument(format!("{INVALID_IMPORT_TOKEN}the wrapping key of this import token is gone"))
    })?;
    let pkcs8 = crypto::open(op.keys.import(), &wrapping_aad(&token_hex, &key.key_id), &sealed)
        .map_err(|_| Error::CorruptMaterial("a stored import wrapping key does not authenticate".into()))?;
    let private = PKey::private_key_from_pkcs8(&pkcs8)
        .map_err(|_| Error::CorruptMaterial("a stored import wrapping key does not parse".into()))?;
    let material =
        import_wrap::unwrap(WrappingAlgorithm::parse(&algorithm)?, &private, req.encrypted_material)?;
    Ok((material, token_hex))
}

/// The version NEW_KEY_MATERIAL goes to: the first, or (symmetric keys) the one pending
/// rotation after the current.
fn new_material(
    key: &mut KeyRecord,
    spec: KeySpec,
    materials: &[MaterialRecord],
    id: &str,
    given_id: Option<&str>,
) -> Result<u32> {
    if given_id.is_some() {
        return Err(Error::InvalidArgument(
            "KeyMaterialId cannot be given with ImportType NEW_KEY_MATERIAL: kmsfs assigns it".into(),
        ));
    }
    if let Some(m) = materials.iter().find(|m| m.key_material_id == id) {
        return Err(incorrect(format!(
            "this key material is already version {} of key {} (KeyMaterialId {id}); re-import it with \
             ImportType EXISTING_KEY_MATERIAL",
            m.version, key.key_id
        )));
    }
    if materials.is_empty() {
        key.current_version = 1;
        return Ok(1);
    }
    if !spec.is_symmetric() {
        return Err(incorrect(format!(
            "key {} is a {} key: its key material cannot change after the first import",
            key.key_id,
            spec.as_str()
        )));
    }
    if key.state != KeyState::Enabled {
        return Err(state_error(key, StateProblem::NotEnabled));
    }
    if materials.iter().any(|m| m.version > key.current_version) {
        return Err(state_error(key, StateProblem::MaterialPendingRotation));
    }
    Ok(key.current_version + 1)
}

/// The version EXISTING_KEY_MATERIAL restores: the one whose KeyMaterialId the material has.
fn existing_material(
    key: &KeyRecord,
    materials: &[MaterialRecord],
    id: &str,
    given_id: Option<&str>,
) -> Result<u32> {
    if materials.is_empty() {
        return Err(incorrect(format!(
            "no key material was ever imported into key {}: import it with ImportType NEW_KEY_MATERIAL",
            key.key_id
        )));
    }
    if let Some(given) = given_id {
        if given != id {
            return Err(incorrect(format!(
                "the key material is not the material with KeyMaterialId {given}"
            )));
        }
    }
    materials.iter().find(|m| m.key_material_id == id).map(|m| m.version).ok_or_else(|| {
        incorrect(format!(
            "the key material is not the key material previously imported into key {}",
            key.key_id
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_to_must_lie_ahead_and_within_a_year() {
        let now = 1_000_000;
        assert!(expiration(None, None, now).unwrap_err().to_string().contains("ValidTo is required"));
        assert!(expiration(Some(EXPIRES), Some(now), now).unwrap_err().to_string().contains("future"));
        assert!(expiration(Some(EXPIRES), Some(now + MAX_VALID_TO_SECS + 1), now)
            .unwrap_err()
            .to_string()
            .contains("365 days"));
        assert_eq!(
            expiration(Some(EXPIRES), Some(now + MAX_VALID_TO_SECS), now).unwrap(),
            Some(now + MAX_VALID_TO_SECS)
        );
        assert_eq!(expiration(Some(DOES_NOT_EXPIRE), None, now).unwrap(), None);
        assert!(expiration(Some(DOES_NOT_EXPIRE), Some(now + 5), now).is_err());
    }

    #[test]
    fn a_token_from_another_root_key_or_edited_does_not_open() {
        let (k1, k2) = (SecretKey::random(), SecretKey::random());
        let token = Token { token_id: [3; 16], expires: 42, key_id: "k".into() };
        let sealed = token.seal(&k1);
        let opened = Token::open(&k1, &sealed).unwrap();
        assert_eq!((opened.token_id, opened.expires, opened.key_id.as_str()), ([3; 16], 42, "k"));
        assert!(Token::open(&k2, &sealed).unwrap_err().to_string().starts_with(INVALID_IMPORT_TOKEN));
        let mut edited = sealed.clone();
        edited[sealed.len() / 2] ^= 1;
        assert!(Token::open(&k1, &edited).is_err());
    }

    #[test]
    fn material_ids_depend_on_key_and_material() {
        let a = material_id("k1", &[1; 32]);
        assert_eq!(a.len(), 64);
        assert_ne!(a, material_id("k2", &[1; 32]));
        assert_ne!(a, material_id("k1", &[2; 32]));
        assert_eq!(a, material_id("k1", &[1; 32]));
    }
}
