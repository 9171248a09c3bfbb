//! The key management service: master-key lifecycle, aliases, data-key operations and the
//! audit trail, with AWS KMS semantics where they apply.
//!
//! Every public operation runs as one keystore transaction and leaves one audit event,
//! whether it succeeds or is refused (a refused operation's changes are rolled back and the
//! refusal is recorded in a transaction of its own).

pub mod access;
pub mod access_keys;
pub mod aliases;
pub mod asymmetric;
pub mod audit;
pub mod audit_writer;
pub mod aws_errors;
pub mod blob;
pub mod clock;
pub mod cloudtrail;
pub mod context;
pub mod dataops;
pub mod import;
pub mod import_wrap;
pub mod keyid;
pub mod keyring;
pub mod last_usage;
pub mod lifecycle;
pub mod metadata;
pub mod multi_region;
pub mod permits;
pub mod policy;
pub mod principal;
pub mod remote;
pub mod root_keys;
pub mod status;
pub mod tags;
pub mod usage;
mod wal_index;

use std::sync::Arc;

use rusqlite::{Connection, Transaction};

/// The states of a key, as fs and volume (which never open the keystore) name them.
pub use crate::keystore::records::KeyState;
pub use audit::{AuditEvent, AuditFilter, AuditRecord, Outcome, VerifyReport};
pub use clock::{Clock, ManualClock, SystemClock};
pub use context::EncryptionContext;
pub use dataops::DataKey;
pub use metadata::KeyMetadata;
pub use principal::Principal;

use crate::crypto::{self, SecretKey};
use crate::error::{Error, KeyStateError, NotFound, Result, StateProblem};
use crate::keystore::records::{self, KeyManager, KeyRecord};
use crate::keystore::{self, Keystore};
use audit_writer::AuditWriter;
use keyring::KeyRing;
use root_keys::RootKeys;

/// Prefix of every alias name.
pub const ALIAS_PREFIX: &str = "alias/";
/// Aliases under this prefix belong to managed keys; users cannot create or change them.
pub const MANAGED_ALIAS_PREFIX: &str = "alias/kmsfs/";

/// An unlocked keystore with its KMS logic.
pub struct Kms {
    ks: Keystore,
    keys: RootKeys,
    clock: Arc<dyn Clock>,
    housekeeping: Housekeeping,
    /// Owner of the keystore file: the principal of keys that have no stored policy.
    owner_uid: u32,
    /// Operations check and roll back instead of committing (AWS's DryRun).
    dry_run: bool,
}

/// The refusal a dry run ends with when the operation would have succeeded.
pub fn dry_run_error() -> Error {
    Error::InvalidArgument(format!(
        "{}The request would have succeeded, but the DryRun option is set.",
        aws_errors::DRY_RUN
    ))
}

/// What opening the keystore did by itself.
#[derive(Debug, Clone, Default)]
pub struct Housekeeping {
    /// Keys whose deletion window had passed, now destroyed.
    pub destroyed: Vec<String>,
    /// Keys whose automatic rotation was due, now rotated.
    pub rotated: Vec<String>,
}

/// One operation in progress: its transaction, the time it runs at, and the audit event it
/// will leave.
pub(crate) struct Op<'a> {
    pub tx: Transaction<'a>,
    pub keys: &'a RootKeys,
    pub now: i64,
    pub event: AuditEvent,
    pub owner_uid: u32,
    pub caller: &'a Principal,
}

impl<'a> Op<'a> {
    fn into_parts(self) -> (Transaction<'a>, AuditEvent) {
        (self.tx, self.event)
    }
}

impl Kms {
    /// Wraps an unlocked keystore and runs the housekeeping that is due: destroying keys
    /// whose deletion window has passed and rotating keys whose rotation date has come.
    pub fn new(ks: Keystore, root: SecretKey, clock: Arc<dyn Clock>, caller: &Principal) -> Result<Kms> {
        use std::os::unix::fs::MetadataExt;
        let owner_uid = std::fs::metadata(ks.path()).map(|m| m.uid()).unwrap_or(0);
        let keys = RootKeys::new(root);
        let mut kms =
            Kms { ks, keys, clock, housekeeping: Housekeeping::default(), owner_uid, dry_run: false };
        kms.upgrade_key_derivation(caller)?;
        kms.upgrade_managed_policies(caller)?;
        let destroyed = kms.purge_expired(caller)?;
        kms.expire_imported_material(caller)?;
        let rotated = kms.rotate_due(caller)?;
        kms.housekeeping = Housekeeping { destroyed, rotated };
        Ok(kms)
    }

    /// What opening the keystore did by itself (destroyed and rotated keys).
    pub fn housekeeping(&self) -> &Housekeeping {
        &self.housekeeping
    }

    pub fn keystore(&self) -> &Keystore {
        &self.ks
    }

    pub(crate) fn keystore_mut(&mut self) -> &mut Keystore {
        &mut self.ks
    }

    pub fn root_key(&self) -> &SecretKey {
        self.keys.root()
    }

    /// Gives managed keys whose stored policy is the old default, which let everyone re-wrap
    /// (and so move directories onto or off them), the current one.
    fn upgrade_managed_policies(&mut self, caller: &Principal) -> Result<()> {
        let old = policy::Policy::legacy_managed_default();
        let count: i64 = self.ks.conn().query_row(
            "SELECT count(*) FROM keys WHERE key_manager = 'MANAGED' AND policy = ?1",
            [&old],
            |r| r.get(0),
        )?;
        if count == 0 {
            return Ok(());
        }
        let new = policy::Policy::managed_default(self.owner_uid);
        self.audited(caller, "PutKeyPolicy", |op| {
            op.tx.execute(
                "UPDATE keys SET policy = ?1 WHERE key_manager = 'MANAGED' AND policy = ?2",
                [&new, &old],
            )?;
            op.event.reason = format!(
                "{count} managed keys: kms:ReEncrypt* only for uid {}, no longer for everyone",
                op.owner_uid
            );
            Ok(())
        })
    }

    /// Moves a keystore made before per-purpose keys to them (`root_keys`), in one
    /// transaction with its audit event. Not through `audited`: a failure must not append an
    /// event under the new audit key to a chain that has not switched to it.
    fn upgrade_key_derivation(&mut self, caller: &Principal) -> Result<()> {
        if root_keys::is_derived(self.ks.conn())? {
            return Ok(());
        }
        let mut event = AuditEvent::new(caller, "UpgradeKeyDerivation", self.clock.now_ms());
        let tx = self.ks.write_tx()?;
        let head = audit::head_seq(&tx)?;
        if let Some(resealed) = root_keys::upgrade(&tx, &self.keys, head)? {
            event.reason = format!(
                "{resealed} key versions re-sealed under a key derived for that purpose; audit events \
                 after {head} are MACed with a key derived for the audit chain"
            );
            audit::append(&tx, self.keys.audit(), std::slice::from_ref(&event))?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Turns this KMS into the key ring of a mount (or of a walk over many files): the KMS,
    /// with its write connection, goes to the thread that appends the ring's audit events,
    /// and the ring reads the same keystore, already opened and checked here, through a
    /// read-only connection of its own.
    pub fn into_key_ring(self, me: Principal) -> Result<(KeyRing, AuditWriter)> {
        let (path, root, clock) =
            (self.ks.path().to_path_buf(), self.keys.root().clone(), Arc::clone(&self.clock));
        let (sink, writer) =
            AuditWriter::spawn(self, me).map_err(|e| Error::io("cannot start the audit writer", e))?;
        Ok((KeyRing::open(&path, root, clock, sink)?, writer))
    }

    pub fn now_secs(&self) -> i64 {
        self.clock.now_secs()
    }

    /// Runs `body` as one audited transaction (see the module comment).
    pub(crate) fn audited<T>(
        &mut self,
        caller: &Principal,
        operation: &str,
        body: impl FnOnce(&mut Op<'_>) -> Result<T>,
    ) -> Result<T> {
        // No operation sees imported key material past its ValidTo.
        self.expire_imported_material(caller)?;
        let now_ms = self.clock.now_ms();
        let event = AuditEvent::new(caller, operation, now_ms);
        let tx = self.ks.write_tx()?;
        let mut op = Op {
            tx,
            keys: &self.keys,
            now: now_ms.div_euclid(1000),
            event,
            owner_uid: self.owner_uid,
            caller,
        };
        let changes_before = op.tx.total_changes();
        let result = body(&mut op);
        let (tx, mut event) = op.into_parts();
        let result = match result {
            Ok(_) if self.dry_run => {
                tx.rollback()?;
                let err = dry_run_error();
                event.fail(&err);
                Err((err, event))
            }
            Ok(value) => {
                if tx.total_changes() != changes_before {
                    keystore::bump_generation(&tx)?;
                }
                audit::append(&tx, self.keys.audit(), std::slice::from_ref(&event))?;
                tx.commit()?;
                Ok(value)
            }
            Err(err) => {
                tx.rollback()?;
                event.fail(&err);
                Err((err, event))
            }
        };
        // The refusal is recorded in a transaction of its own, after the rollback.
        match result {
            Ok(value) => Ok(value),
            Err((err, event)) => {
                self.append_audit(&[event])?;
                Err(err)
            }
        }
    }

    /// Runs `f` as AWS's DryRun: every check, nothing kept; a call that would have succeeded
    /// ends with `dry_run_error()`.
    pub fn dry_run<T>(&mut self, f: impl FnOnce(&mut Kms) -> Result<T>) -> Result<T> {
        self.dry_run = true;
        let result = f(self);
        self.dry_run = false;
        result
    }

    /// Protects the root key with a new passphrase. Keys, their versions and the audit
    /// chain are untouched: they hang off the root key, not the passphrase.
    pub fn change_passphrase(
        &mut self,
        caller: &Principal,
        new_passphrase: &[u8],
        kdf: crypto::KdfParams,
    ) -> Result<()> {
        self.audited(caller, "ChangePassphrase", |op| {
            let keystore_id = keystore::get_meta(&op.tx, "keystore_id")?
                .and_then(|v| String::from_utf8(v).ok())
                .ok_or_else(|| Error::CorruptMaterial("the keystore id is missing".into()))?;
            keystore::store_wrapped_root(&op.tx, &keystore_id, op.keys.root(), new_passphrase, kdf)
        })
    }

    /// Sets the account id and region the keystore answers as (audited).
    pub fn set_identity(
        &mut self,
        caller: &Principal,
        account_id: Option<&str>,
        region: Option<&str>,
    ) -> Result<()> {
        if let Some(a) = account_id {
            keystore::validate_account_id(a)?;
        }
        if let Some(r) = region {
            keystore::validate_region(r)?;
        }
        self.audited(caller, "SetIdentity", |op| {
            multi_region::require_identity_unchanged(&op.tx, account_id, region)?;
            if let Some(a) = account_id {
                keystore::set_meta(&op.tx, "account_id", a.as_bytes())?;
            }
            if let Some(r) = region {
                keystore::set_meta(&op.tx, "region", r.as_bytes())?;
            }
            op.event.reason = format!("account {account_id:?}, region {region:?}");
            Ok(())
        })
    }

    /// Appends events produced elsewhere (the mount's batched audit writer).
    pub fn append_audit(&mut self, events: &[AuditEvent]) -> Result<()> {
        let tx = self.ks.write_tx()?;
        audit::append(&tx, self.keys.audit(), events)?;
        tx.commit()?;
        Ok(())
    }

    /// Audit events matching `filter` (reading the trail is not itself audited).
    pub fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        audit::query(self.ks.conn(), filter)
    }

    /// Checks the whole audit chain.
    pub fn verify_audit(&self) -> Result<VerifyReport> {
        audit::verify(self.ks.conn(), &self.keys)
    }

    /// Resolves a key id or alias to its key id without auditing (for filters and display).
    pub fn resolve_key_id(&self, key_ref: &str) -> Result<String> {
        resolve(self.ks.conn(), key_ref).map(|k| k.key_id)
    }
}

/// Finds the key named by `key_ref`: a key id or `alias/NAME`.
pub(crate) fn resolve(conn: &Connection, key_ref: &str) -> Result<KeyRecord> {
    if key_ref.starts_with(ALIAS_PREFIX) {
        let alias = records::load_alias(conn, key_ref)?
            .ok_or_else(|| Error::NotFound(NotFound::Alias { alias: key_ref.to_string() }))?;
        return records::load_key(conn, &alias.target_key_id)?.ok_or_else(|| {
            Error::NotFound(NotFound::AliasTarget { alias: key_ref.to_string(), key_id: alias.target_key_id })
        });
    }
    records::load_key(conn, key_ref)?.ok_or_else(|| Error::NotFound(NotFound::KeyRef(key_ref.to_string())))
}

/// Refuses cryptographic use of a key that is not Enabled, naming the key and its state.
pub(crate) fn require_enabled(key: &KeyRecord) -> Result<()> {
    match key.state {
        KeyState::Enabled => Ok(()),
        _ => Err(Error::KeyState(KeyStateError::new(key, StateProblem::NotEnabled))),
    }
}

/// Refuses changes (tags, description, grants) to a key on its way out, as AWS does.
pub(crate) fn require_not_deleted(key: &KeyRecord) -> Result<()> {
    match key.state {
        KeyState::PendingDeletion | KeyState::PendingReplicaDeletion | KeyState::Destroyed => Err(
            Error::KeyState(crate::error::KeyStateError::new(key, crate::error::StateProblem::NotEnabled)),
        ),
        _ => Ok(()),
    }
}

/// Refuses changes to a managed key, which only kmsfs itself administers.
pub(crate) fn require_customer_managed(key: &KeyRecord, action: &str) -> Result<()> {
    if key.key_manager == KeyManager::Managed {
        return Err(Error::managed_key(&key.key_id, action));
    }
    Ok(())
}

/// Additional data binding a sealed key version to its key id and version number.
pub(crate) fn version_aad(key_id: &str, version: u32) -> Vec<u8> {
    [b"kmsfs-key-version\0".as_slice(), key_id.as_bytes(), &version.to_be_bytes()].concat()
}

/// Generates fresh material for `version` of `key_id` and stores it sealed by the versions key
/// (derived from the root key).
pub(crate) fn add_version(op: &Op<'_>, key_id: &str, version: u32, rotation_type: &str) -> Result<()> {
    let material = SecretKey::random();
    add_version_with(op, key_id, version, rotation_type, material.as_bytes())
}

/// Stores `material` (a symmetric key, a PKCS#8 private key or an HMAC key) as `version`
/// of `key_id`, sealed by the versions key.
pub(crate) fn add_version_with(
    op: &Op<'_>,
    key_id: &str,
    version: u32,
    rotation_type: &str,
    material: &[u8],
) -> Result<()> {
    let sealed = crypto::seal(op.keys.versions(true), &version_aad(key_id, version), material);
    records::insert_version(&op.tx, key_id, version, op.now, rotation_type, &sealed)
}

/// Unseals one version's material. A missing or destroyed version is refused with the
/// reason.
pub(crate) fn version_material(
    conn: &Connection,
    root: &SecretKey,
    key_id: &str,
    version: u32,
) -> Result<SecretKey> {
    let plain = version_bytes(conn, root, key_id, version)?;
    SecretKey::from_slice(&plain).ok_or_else(|| {
        Error::CorruptMaterial(format!("the material of key {key_id} version {version} has the wrong length"))
    })
}

/// Unseals one version's material bytes, whatever kind of key it belongs to.
pub(crate) fn version_bytes(
    conn: &Connection,
    root: &SecretKey,
    key_id: &str,
    version: u32,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let sealed = match records::load_sealed_material(conn, key_id, version)? {
        None => {
            return Err(Error::InvalidCiphertext(format!(
                "the ciphertext names version {version} of key {key_id}, which does not exist"
            )))
        }
        Some(None) => {
            let key = records::load_key(conn, key_id)?
                .ok_or_else(|| Error::NotFound(NotFound::Key { key_id: key_id.to_string() }))?;
            return Err(Error::KeyState(KeyStateError::new(
                &key,
                StateProblem::VersionDestroyed { version },
            )));
        }
        Some(Some(sealed)) => sealed,
    };
    crypto::open(root, &version_aad(key_id, version), &sealed).map_err(|_| {
        Error::CorruptMaterial(format!(
            "the material of key {key_id} version {version} does not authenticate"
        ))
    })
}
