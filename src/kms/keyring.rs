//! The KMS as a running mount sees it: master-key versions unwrapped once and held in
//! memory, key states kept live, data-key operations audited through a batched sink.
//!
//! Liveness: before every operation the ring asks its own SQLite connection for
//! `PRAGMA data_version`, which changes when any other connection (an admin command in
//! another shell) commits. Only then are keys reloaded, so a `kmsfs key disable` that has
//! returned is honoured by the next file open, at the cost of one cheap query per open and
//! none per read or write. Within one FUSE request (`begin_request`) the question is asked
//! once: a CREATE that checks its directory's key and then generates a data key sees one
//! state of the keystore, as it would if both were one query.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{Connection, OpenFlags};

use super::access;
use super::access_keys::{self, Credential};
use super::asymmetric::{self, KeyMaterial, KeySpec, KeyUsage};
use super::audit_writer::AuditSink;
use super::blob::{self, BlobHeader};
use super::policy::{GrantRule, Policy, Request};
use super::remote::{self, RemoteKeys};
use super::root_keys::{self, RootKeys};
use super::wal_index::{self, WalIndex};
use super::{version_material, AuditEvent, Clock, EncryptionContext, Outcome, Principal};
use crate::crypto::{Cipher, SecretKey};
use crate::error::{Error, KeyStateError, NotFound, Result, StateProblem};
use crate::keystore::records::{self, KeyRecord, KeyState};

/// Who asks, and for which path (for the audit trail).
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub caller: &'a Principal,
    pub path: &'a str,
}

#[derive(Default)]
struct Cache {
    data_version: Option<i64>,
    /// The keystore's change counter at the last reload (`keystore::generation`): a commit
    /// that only appended audit events (the writer's, many per second) leaves it, and the
    /// cache, as they are.
    generation: Option<u64>,
    /// The WAL-index header read just before `data_version` was asked (`wal_index`).
    wal_header: Option<wal_index::Header>,
    keys: HashMap<String, KeyRecord>,
    aliases: HashMap<String, String>,
    material: HashMap<(String, u32), Arc<Cipher>>,
    policies: HashMap<String, Policy>,
    grants: HashMap<String, Vec<GrantRule>>,
    uses_groups: bool,
    /// Active access keys (for the API server's signature checks).
    access_keys: HashMap<String, Arc<Credential>>,
    /// Tokens of every grant, for the GrantTokens of API calls.
    grant_tokens: std::collections::HashSet<String>,
    /// Spec and usage of every key that is not symmetric, and its unsealed material.
    specs: HashMap<String, (KeySpec, KeyUsage)>,
    asymmetric: HashMap<String, Arc<KeyMaterial>>,
    /// The earliest ValidTo of each key's imported material (`import::material_expiries`):
    /// checked against the clock at every use, as nothing is committed when it passes.
    expiries: HashMap<String, i64>,
}

impl Cache {
    /// `key_id` as it stands at `now` (material past its ValidTo makes it PendingImport).
    fn key_at(&self, key_id: &str, now: i64) -> Option<KeyRecord> {
        let mut key = self.keys.get(key_id)?.clone();
        key.state = super::import::state_at(&key, self.expiries.get(key_id).copied(), now);
        Some(key)
    }
}

thread_local! {
    /// The request this thread is serving (see `begin_request`); 0 outside requests.
    static REQUEST: Cell<u64> = const { Cell::new(0) };
}

/// Request numbers, unique in the process, so that a ring's `checked_for` can only match
/// the very request it was refreshed for.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Marks the rest of the calling thread's work, until the returned guard drops, as one
/// request: every ring checks the keystore for changes once in it.
pub fn begin_request() -> RequestScope {
    REQUEST.with(|r| r.set(NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)));
    RequestScope(())
}

pub struct RequestScope(());

impl Drop for RequestScope {
    fn drop(&mut self) {
        REQUEST.with(|r| r.set(0));
    }
}

pub struct KeyRing {
    conn: Mutex<Connection>,
    /// Owner of the keystore file: the principal of keys without a stored policy.
    owner_uid: u32,
    keys: RootKeys,
    cache: RwLock<Cache>,
    audit: AuditSink,
    clock: Arc<dyn Clock>,
    /// The request (`begin_request`) this ring last checked the keystore in.
    checked_for: AtomicU64,
    /// The keystore's WAL index, to skip `PRAGMA data_version` when nothing was committed.
    wal_index: Option<WalIndex>,
    /// Volumes' intermediate keys under remote master keys (`kms::remote`): key ids the
    /// ring serves from there instead of the keystore. The first is the volume the ring
    /// serves (where `assign` makes new ones); `volume copy` adds its destination's.
    remote: RwLock<Vec<RemoteKeys>>,
    /// Outside requests, how long a look at the keystore stays good (0: every call looks).
    check_every_us: u64,
    /// When the ring last looked, in microseconds since `started`.
    last_check_us: AtomicU64,
    started: std::time::Instant,
}

impl KeyRing {
    /// Opens a read connection of its own to the keystore at `path` and loads every key.
    pub fn open(path: &Path, root: SecretKey, clock: Arc<dyn Clock>, audit: AuditSink) -> Result<KeyRing> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        use std::os::unix::fs::MetadataExt;
        let owner_uid = std::fs::metadata(path).map(|m| m.uid()).unwrap_or(0);
        let cache = RwLock::new(Cache::default());
        let checked_for = AtomicU64::new(0);
        let mut ring = KeyRing {
            conn: Mutex::new(conn),
            owner_uid,
            keys: RootKeys::new(root),
            cache,
            audit,
            clock,
            checked_for,
            wal_index: None,
            remote: RwLock::new(Vec::new()),
            check_every_us: 0,
            last_check_us: AtomicU64::new(0),
            started: std::time::Instant::now(),
        };
        ring.refresh()?;
        // Opened after the first query: by then the connection has opened the WAL index.
        ring.wal_index = WalIndex::open(path);
        Ok(ring)
    }

    /// Puts a volume's remote keys behind this ring (the first attached is the ring's own
    /// volume's).
    pub fn attach_remote(&self, keys: RemoteKeys) {
        self.remote.write().expect("keyring remote lock").push(keys);
    }

    /// The remote keys of the volume this ring serves, if it was given any.
    pub fn remote(&self) -> Option<RemoteKeys> {
        self.remote.read().expect("keyring remote lock").first().cloned()
    }

    /// The remote keys `key_id` is one of, if any.
    fn remote_for(&self, key_id: &str) -> Option<RemoteKeys> {
        let all = self.remote.read().expect("keyring remote lock");
        if all.is_empty() {
            return None;
        }
        all.iter().find(|r| r.knows(key_id)).cloned()
    }

    /// How a key is named to people and in the audit trail: the remote key's ARN for an
    /// intermediate key, else the key id.
    pub fn key_name(&self, key_id: &str) -> String {
        self.remote_for(key_id).and_then(|r| r.arn(key_id)).unwrap_or_else(|| key_id.to_string())
    }

    /// The key id new data is to be protected by when a caller names `key_ref` (`dir
    /// set-key`, `rewrap --to-key`): a key of the keystore, or, for a remote key's ARN, the
    /// volume's intermediate key under it (made and recorded in the key table if new).
    pub fn assign(&self, key_ref: &str) -> Result<String> {
        if !remote::is_remote_key(key_ref) {
            return self.resolve(key_ref);
        }
        let keys = self.remote().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{key_ref} is a remote key, but this volume has no key table for one"
            ))
        })?;
        keys.intermediate_for(key_ref, None, &crate::kms::clock::format_date(self.clock.now_secs()))
    }

    /// A remote intermediate key, if `key_id` is one, with why it may serve (its ARN).
    fn remote_cipher(&self, key_id: &str) -> Option<Result<(Arc<Cipher>, String)>> {
        let keys = self.remote_for(key_id)?;
        Some(keys.cipher(key_id).map(|c| (c, format!("remote key {}", self.key_name(key_id)))))
    }

    /// Lets a look at the keystore stand for `every` (the API server: its own audit writer
    /// commits hundreds of times a second, and each commit would send every request to
    /// SQLite; a change made elsewhere is still seen within `every`).
    pub fn set_check_interval(&mut self, every: std::time::Duration) {
        self.check_every_us = every.as_micros() as u64;
    }

    /// Reloads keys if another connection committed since the last look (once per request).
    fn refresh(&self) -> Result<()> {
        let request = REQUEST.with(Cell::get);
        if request != 0 && self.checked_for.load(Ordering::Relaxed) == request {
            return Ok(());
        }
        let now_us = self.started.elapsed().as_micros() as u64;
        if self.check_every_us > 0
            && now_us.saturating_sub(self.last_check_us.load(Ordering::Relaxed)) < self.check_every_us
        {
            return Ok(());
        }
        self.reload_if_changed()?;
        self.last_check_us.store(now_us, Ordering::Relaxed);
        if request != 0 {
            self.checked_for.store(request, Ordering::Relaxed);
        }
        Ok(())
    }

    fn reload_if_changed(&self) -> Result<()> {
        let conn = self.conn.lock().expect("keyring connection lock");
        // Read before the pragma, so that the header kept is never newer than the version.
        let wal_header = self.wal_index.as_ref().and_then(WalIndex::header);
        if wal_header.is_some() && self.cache.read().expect("keyring cache lock").wal_header == wal_header {
            return Ok(());
        }
        // A cached statement: this runs before every key use, and parsing it each time cost
        // more than running it.
        let version: i64 = conn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?;
        if self.cache.read().expect("keyring cache lock").data_version == Some(version) {
            self.cache.write().expect("keyring cache lock").wal_header = wal_header;
            return Ok(());
        }
        // Read before the keys, so that a change committed in between shows as a newer
        // generation at the next look, never as an older one.
        let generation = crate::keystore::generation(&conn)?;
        if self.cache.read().expect("keyring cache lock").generation == Some(generation) {
            let mut cache = self.cache.write().expect("keyring cache lock");
            cache.data_version = Some(version);
            cache.wal_header = wal_header;
            return Ok(());
        }
        let mut cache = self.cache.write().expect("keyring cache lock");
        let keys = records::list_keys(&conn)?;
        let versions_key = self.keys.versions(root_keys::is_derived(&conn)?);
        let mut old_material = std::mem::take(&mut cache.material);
        let mut material = HashMap::new();
        let specs = asymmetric::load_all_specs(&conn)?;
        let mut old_asym = std::mem::take(&mut cache.asymmetric);
        let mut asym = HashMap::new();
        // Only what the keystore still holds is kept: material of destroyed keys, and
        // imported material deleted or expired, leaves memory too (dropped with the old maps).
        for key in keys.iter().filter(|k| k.state != KeyState::Destroyed) {
            let versions = records::list_versions(&conn, &key.key_id)?;
            if let Some(&(spec, _)) = specs.get(&key.key_id) {
                if !versions.iter().any(|v| v.version == key.current_version && v.material_present) {
                    continue; // imported material not there (yet, or any more)
                }
                let loaded = match old_asym.remove(&key.key_id) {
                    Some(m) => m,
                    None => {
                        let bytes =
                            super::version_bytes(&conn, versions_key, &key.key_id, key.current_version)?;
                        Arc::new(KeyMaterial::from_bytes(spec, &bytes)?)
                    }
                };
                asym.insert(key.key_id.clone(), loaded);
                continue;
            }
            for v in versions.iter().filter(|v| v.material_present) {
                let slot = (key.key_id.clone(), v.version);
                let cipher = match old_material.remove(&slot) {
                    Some(c) => c,
                    None => Arc::new(version_material(&conn, versions_key, &key.key_id, v.version)?.cipher()),
                };
                material.insert(slot, cipher);
            }
        }
        drop((old_material, old_asym));
        cache.expiries = super::import::material_expiries(&conn)?;
        cache.aliases = records::list_aliases(&conn, None)?
            .into_iter()
            .map(|a| (a.alias_name, a.target_key_id))
            .collect();
        cache.policies.clear();
        cache.grants.clear();
        for key in &keys {
            match access::effective_policy(&conn, &key.key_id, self.owner_uid) {
                Ok(policy) => {
                    cache.policies.insert(key.key_id.clone(), policy);
                }
                Err(e) => log::error!("{e}; the key is refused until its policy is fixed"),
            }
            let rules: Vec<GrantRule> = records::list_grants(&conn, Some(&key.key_id))?
                .iter()
                .filter_map(|g| access::rule_of(g).ok())
                .collect();
            cache.grants.insert(key.key_id.clone(), rules);
        }
        cache.uses_groups = cache.policies.values().any(Policy::uses_groups)
            || cache.grants.values().flatten().any(|g| g.grantee.uses_groups());
        cache.access_keys = access_keys::load_active(&conn, self.keys.access_keys())?;
        cache.grant_tokens = records::list_grants(&conn, None)?.into_iter().map(|g| g.token).collect();
        cache.keys = keys.into_iter().map(|k| (k.key_id.clone(), k)).collect();
        cache.material = material;
        cache.specs = specs;
        cache.asymmetric = asym;
        cache.data_version = Some(version);
        cache.generation = Some(generation);
        cache.wal_header = wal_header;
        Ok(())
    }

    /// The key id a key id or alias names, as the keystore says now.
    pub fn resolve(&self, key_ref: &str) -> Result<String> {
        if self.remote_for(key_ref).is_some() {
            return Ok(key_ref.to_string());
        }
        self.refresh()?;
        let cache = self.cache.read().expect("keyring cache lock");
        let id = cache.aliases.get(key_ref).cloned().unwrap_or_else(|| key_ref.to_string());
        if cache.keys.contains_key(&id) {
            Ok(id)
        } else {
            Err(Error::NotFound(NotFound::KeyRef(key_ref.to_string())))
        }
    }

    /// Refreshes, then asks [`access::authorize`] whether `key_id` may serve `action` for the
    /// caller, from the cached policy and grants; the path is the one inside the mount.
    /// Returns the key and why it was allowed.
    fn permitted(
        &self,
        access: Access<'_>,
        key_id: &str,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<(KeyRecord, String)> {
        self.permitted_at(access.caller, Some(access.path), key_id, action, ctx)
    }

    pub(crate) fn permitted_at(
        &self,
        caller: &Principal,
        path: Option<&str>,
        key_id: &str,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<(KeyRecord, String)> {
        self.refresh()?;
        let cache = self.cache.read().expect("keyring cache lock");
        let now = self.clock.now_secs();
        let key = cache
            .key_at(key_id, now)
            .ok_or_else(|| Error::NotFound(NotFound::Key { key_id: key_id.to_string() }))?;
        let request = Request { caller, action, context: ctx, path, now };
        let grants = cache.grants.get(key_id).map(Vec::as_slice).unwrap_or(&[]);
        let why = access::authorize(&key, cache.policies.get(key_id), grants, &request)?;
        Ok((key, why))
    }

    /// The current version of `key_id`, as the keystore says now.
    pub fn current_version(&self, key_id: &str) -> Result<u32> {
        if self.remote_for(key_id).is_some() {
            // An intermediate key has one version; the remote key's rotation is the
            // service's (`RemoteKeys::rewrap_all`).
            return Ok(1);
        }
        self.refresh()?;
        let cache = self.cache.read().expect("keyring cache lock");
        cache
            .keys
            .get(key_id)
            .map(|k| k.current_version)
            .ok_or_else(|| Error::NotFound(NotFound::KeyRef(key_id.to_string())))
    }

    /// The state of `key_id` as the keystore says now (`None`: no such key here).
    pub fn key_state(&self, key_id: &str) -> Option<KeyState> {
        if let Some(keys) = self.remote_for(key_id) {
            return keys.state(key_id);
        }
        self.refresh().ok()?;
        let now = self.clock.now_secs();
        self.cache.read().expect("keyring cache lock").key_at(key_id, now).map(|k| k.state)
    }

    /// Whether any policy or grant names groups, so callers' groups must be known. Asked
    /// before the request's key checks, so it refreshes first: the first request after a
    /// policy or grant that introduces groups must be evaluated with the caller's groups.
    /// If the keystore cannot be read the key checks fail anyway; groups are then looked up.
    pub fn uses_groups(&self) -> bool {
        self.refresh().is_err() || self.cache.read().expect("keyring cache lock").uses_groups
    }

    /// The spec, usage and material of a key that is not symmetric (`None`: symmetric).
    pub(crate) fn asymmetric(
        &self,
        key: &KeyRecord,
    ) -> Result<Option<(KeySpec, KeyUsage, Arc<KeyMaterial>)>> {
        self.refresh()?;
        let cache = self.cache.read().expect("keyring cache lock");
        let Some(&(spec, usage)) = cache.specs.get(&key.key_id) else { return Ok(None) };
        let material = cache.asymmetric.get(&key.key_id).cloned().ok_or_else(|| {
            Error::KeyState(KeyStateError::new(
                key,
                StateProblem::VersionUnavailable { version: key.current_version },
            ))
        })?;
        Ok(Some((spec, usage, material)))
    }

    /// The spec and usage of `key_id` as the keystore says now.
    pub fn key_spec(&self, key_id: &str) -> Result<(KeySpec, KeyUsage)> {
        self.refresh()?;
        let cache = self.cache.read().expect("keyring cache lock");
        Ok(cache.specs.get(key_id).copied().unwrap_or_default())
    }

    pub(crate) fn material(&self, key: &KeyRecord, version: u32) -> Result<Arc<Cipher>> {
        let cache = self.cache.read().expect("keyring cache lock");
        if let Some(&(spec, usage)) = cache.specs.get(&key.key_id) {
            return Err(asymmetric::wrong_usage(&key.key_id, spec, usage, "symmetric encryption"));
        }
        cache.material.get(&(key.key_id.clone(), version)).cloned().ok_or_else(|| {
            Error::KeyState(KeyStateError::new(key, StateProblem::VersionUnavailable { version }))
        })
    }

    /// GenerateDataKey for a new file under `key_id`, audited.
    pub fn generate_data_key(
        &self,
        access: Access<'_>,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(SecretKey, Vec<u8>)> {
        self.audited(access, "GenerateDataKey", Some(key_id), ctx, || {
            let (cipher, version, why) = self.sealing_key(access, key_id, "kms:GenerateDataKey", ctx)?;
            let data_key = SecretKey::random();
            let header = BlobHeader { key_id: key_id.to_string(), key_version: version };
            let wrapped = blob::seal(&cipher, &header, &ctx.encode(), data_key.as_bytes());
            Ok(((data_key, wrapped), why))
        })
    }

    /// Decrypt of a wrapped data key, audited. Returns the key, and which master key and
    /// version wrapped it.
    pub fn decrypt_data_key(
        &self,
        access: Access<'_>,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(SecretKey, BlobHeader)> {
        let parsed = BlobHeader::parse(wrapped);
        let key_id = parsed.as_ref().ok().map(|(h, _)| h.key_id.clone());
        self.audited(access, "Decrypt", key_id.as_deref(), ctx, || {
            let (header, sealed) = parsed?;
            let (cipher, why) = match self.remote_cipher(&header.key_id) {
                Some(found) => found?,
                None => {
                    let (key, why) = self.permitted(access, &header.key_id, "kms:Decrypt", ctx)?;
                    (self.material(&key, header.key_version)?, why)
                }
            };
            let plain = blob::open(&cipher, &header, &ctx.encode(), sealed)?;
            let key = SecretKey::from_slice(&plain).ok_or_else(|| {
                Error::InvalidCiphertext("the wrapped data key has the wrong length".into())
            })?;
            Ok(((key, header), why))
        })
    }

    /// Checks that `key_id` is usable, auditing only a refusal: for the frequent uses of a
    /// key already unwrapped and audited once (lookups and listings in a directory).
    pub fn check_key(&self, access: Access<'_>, key_id: &str, operation: &str) -> Result<()> {
        let action = format!("kms:{operation}");
        let ctx = EncryptionContext::new();
        let checked = match self.remote_cipher(key_id) {
            Some(found) => found.map(|_| ()),
            None => self.permitted(access, key_id, &action, &ctx).map(|_| ()),
        };
        checked.inspect_err(|e| {
            let mut event = AuditEvent::new(access.caller, operation, self.clock.now_ms());
            event.key_id = Some(self.key_name(key_id));
            event.path = Some(access.path.to_string());
            event.fail(e);
            self.audit.record(event);
        })
    }

    /// Audits a refusal decided outside the ring (who may change a directory's key).
    pub fn record_refusal(&self, access: Access<'_>, operation: &str, key_id: Option<&str>, error: &Error) {
        let mut event = AuditEvent::new(access.caller, operation, self.clock.now_ms());
        event.key_id = key_id.map(str::to_string);
        event.path = Some(access.path.to_string());
        event.outcome = Outcome::of_error(error);
        event.reason = error.to_string();
        self.audit.record(event);
    }

    /// The policy checks of moving a wrapped key from `from_key` to `to_key` beyond the
    /// unwrap (kms:Decrypt) and the wrap (kms:ReEncryptTo), as AWS KMS's ReEncrypt and
    /// GenerateDataKey ask them: kms:ReEncryptFrom on the old key, kms:GenerateDataKey on the
    /// new one (new files will be created under it). Refusals are audited.
    pub fn check_move(&self, access: Access<'_>, from_key: &str, to_key: &str) -> Result<()> {
        self.check_key(access, from_key, "ReEncryptFrom")?;
        self.check_key(access, to_key, "GenerateDataKey")
    }

    /// Wraps an existing data key under the current version of `key_id` (a directory moved
    /// to another key keeps its names key), audited as ReEncrypt.
    pub fn wrap_data_key(
        &self,
        access: Access<'_>,
        key_id: &str,
        ctx: &EncryptionContext,
        data_key: &SecretKey,
    ) -> Result<Vec<u8>> {
        self.audited(access, "ReEncrypt", Some(key_id), ctx, || {
            let (cipher, version, why) = self.sealing_key(access, key_id, "kms:ReEncryptTo", ctx)?;
            let header = BlobHeader { key_id: key_id.to_string(), key_version: version };
            Ok((blob::seal(&cipher, &header, &ctx.encode(), data_key.as_bytes()), why))
        })
    }

    /// Checks, and audits, a use of `key_id` whose data key is already in memory (a file
    /// opened again while another handle has it open).
    pub fn authorize_cached(&self, access: Access<'_>, key_id: &str, ctx: &EncryptionContext) -> Result<()> {
        self.audited(access, "Decrypt", Some(key_id), ctx, || match self.remote_cipher(key_id) {
            Some(found) => found.map(|(_, why)| ((), why)),
            None => self.permitted(access, key_id, "kms:Decrypt", ctx).map(|(_, why)| ((), why)),
        })
    }

    /// The key version new wraps under `key_id` use, after the check of `action`: the
    /// current version of a keystore key, or a remote intermediate key (version 1).
    fn sealing_key(
        &self,
        access: Access<'_>,
        key_id: &str,
        action: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Arc<Cipher>, u32, String)> {
        if let Some(found) = self.remote_cipher(key_id) {
            let (cipher, why) = found?;
            return Ok((cipher, 1, why));
        }
        let (key, why) = self.permitted(access, key_id, action, ctx)?;
        Ok((self.material(&key, key.current_version)?, key.current_version, why))
    }

    fn audited<T>(
        &self,
        access: Access<'_>,
        operation: &str,
        key_id: Option<&str>,
        ctx: &EncryptionContext,
        body: impl FnOnce() -> Result<(T, String)>,
    ) -> Result<T> {
        let mut event = AuditEvent::new(access.caller, operation, self.clock.now_ms());
        event.key_id = key_id.map(|k| self.key_name(k));
        event.path = Some(access.path.to_string());
        event.context = ctx.to_audit_string();
        self.record_outcome(event, |_| body())
    }

    /// Runs `body`, writes its outcome into `event` (on success "allowed by WHY" after any
    /// reason the body noted, on failure the error) and sends the event to the audit sink.
    fn record_outcome<T>(
        &self,
        mut event: AuditEvent,
        body: impl FnOnce(&mut AuditEvent) -> Result<(T, String)>,
    ) -> Result<T> {
        let result = match body(&mut event) {
            Ok((value, why)) => {
                event.reason = if event.reason.is_empty() {
                    format!("allowed by {why}")
                } else {
                    format!("{} (allowed by {why})", event.reason)
                };
                Ok(value)
            }
            Err(e) => {
                event.fail(&e);
                Err(e)
            }
        };
        self.audit.record(event);
        result
    }
}

/// The data plane of the API server: the same keys, policies, grants and blobs as the
/// mount's, without a keystore transaction per call (audit events go through the sink).
impl KeyRing {
    /// The active access key `id`, as the keystore says now.
    pub fn credential(&self, id: &str) -> Result<Option<Arc<Credential>>> {
        self.refresh()?;
        Ok(self.cache.read().expect("keyring cache lock").access_keys.get(id).cloned())
    }

    /// Refuses grant tokens this keystore did not issue (or whose grant is gone). A valid
    /// token adds nothing: a grant takes effect as soon as it is committed.
    pub fn check_grant_tokens(&self, tokens: &[&str]) -> Result<()> {
        self.refresh()?;
        let cache = self.cache.read().expect("keyring cache lock");
        match tokens.iter().find(|t| !cache.grant_tokens.contains(**t)) {
            None => Ok(()),
            Some(_) => {
                Err(Error::InvalidArgument(format!("{}is not valid", super::aws_errors::GRANT_TOKEN_ERROR)))
            }
        }
    }

    /// Encrypt of up to 4096 bytes under the current version of `key_ref`. Returns the key
    /// id and the blob.
    pub fn encrypt(
        &self,
        caller: &Principal,
        key_ref: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(String, Vec<u8>)> {
        self.api_audited(caller, "Encrypt", Some(key_ref), ctx, |event| {
            let key_id = self.resolve(key_ref)?;
            event.key_id = Some(key_id.clone());
            if plaintext.len() > super::dataops::MAX_PLAINTEXT {
                return Err(Error::InvalidArgument(format!(
                    "the plaintext is {} bytes; Encrypt takes at most {}",
                    plaintext.len(),
                    super::dataops::MAX_PLAINTEXT
                )));
            }
            let (key, why) = self.permitted_at(caller, None, &key_id, "kms:Encrypt", ctx)?;
            let cipher = self.material(&key, key.current_version)?;
            let header = BlobHeader { key_id: key_id.clone(), key_version: key.current_version };
            Ok(((key_id, blob::seal(&cipher, &header, &ctx.encode(), plaintext)), why))
        })
    }

    /// Decrypt of any blob: the blob names its key. With `expected` (a key id or alias), a
    /// blob of another key is refused before anything is decrypted (IncorrectKeyException).
    pub fn decrypt(
        &self,
        caller: &Principal,
        blob_bytes: &[u8],
        ctx: &EncryptionContext,
        expected: Option<&str>,
    ) -> Result<(String, zeroize::Zeroizing<Vec<u8>>)> {
        self.api_audited(caller, "Decrypt", None, ctx, |event| {
            let (header, sealed) = BlobHeader::parse(blob_bytes)?;
            event.key_id = Some(header.key_id.clone());
            if let Some(expected) = expected {
                super::dataops::require_key(&header.key_id, expected, self.resolve(expected)?)?;
            }
            let (key, why) = self.permitted_at(caller, None, &header.key_id, "kms:Decrypt", ctx)?;
            let cipher = self.material(&key, header.key_version)?;
            let plain = blob::open(&cipher, &header, &ctx.encode(), sealed)?;
            Ok(((header.key_id, plain), why))
        })
    }

    /// GenerateDataKey (`with_plaintext`) or GenerateDataKeyWithoutPlaintext: `len` random
    /// bytes, returned wrapped (and in plaintext). Returns key id, plaintext, blob.
    pub fn generate_data_key_of(
        &self,
        caller: &Principal,
        key_ref: &str,
        ctx: &EncryptionContext,
        len: usize,
        with_plaintext: bool,
    ) -> Result<(String, zeroize::Zeroizing<Vec<u8>>, Vec<u8>)> {
        let operation = if with_plaintext { "GenerateDataKey" } else { "GenerateDataKeyWithoutPlaintext" };
        self.api_audited(caller, operation, Some(key_ref), ctx, |event| {
            let key_id = self.resolve(key_ref)?;
            event.key_id = Some(key_id.clone());
            let (key, why) = self.permitted_at(caller, None, &key_id, &format!("kms:{operation}"), ctx)?;
            let cipher = self.material(&key, key.current_version)?;
            let mut plain = zeroize::Zeroizing::new(vec![0u8; len]);
            crate::crypto::fill_random(&mut plain);
            let header = BlobHeader { key_id: key_id.clone(), key_version: key.current_version };
            let wrapped = blob::seal(&cipher, &header, &ctx.encode(), &plain);
            Ok(((key_id, plain, wrapped), why))
        })
    }

    /// ReEncrypt: opens `blob_bytes` and seals its plaintext under `dest_ref`'s current
    /// version, without the plaintext leaving the service. Returns (source key, dest key, blob).
    pub fn re_encrypt(
        &self,
        caller: &Principal,
        blob_bytes: &[u8],
        source_ctx: &EncryptionContext,
        source_expected: Option<&str>,
        dest_ref: &str,
        dest_ctx: &EncryptionContext,
    ) -> Result<(String, String, Vec<u8>)> {
        self.api_audited(caller, "ReEncrypt", None, source_ctx, |event| {
            let (header, sealed) = BlobHeader::parse(blob_bytes)?;
            event.key_id = Some(header.key_id.clone());
            if let Some(expected) = source_expected {
                super::dataops::require_key(&header.key_id, expected, self.resolve(expected)?)?;
            }
            let (source, why_from) =
                self.permitted_at(caller, None, &header.key_id, "kms:ReEncryptFrom", source_ctx)?;
            let dest_id = self.resolve(dest_ref)?;
            let (dest, why_to) = self.permitted_at(caller, None, &dest_id, "kms:ReEncryptTo", dest_ctx)?;
            let cipher = self.material(&source, header.key_version)?;
            let plain = blob::open(&cipher, &header, &source_ctx.encode(), sealed)?;
            let dest_cipher = self.material(&dest, dest.current_version)?;
            let dest_header = BlobHeader { key_id: dest_id.clone(), key_version: dest.current_version };
            let out = blob::seal(&dest_cipher, &dest_header, &dest_ctx.encode(), &plain);
            event.reason = format!("to key {dest_id}");
            Ok(((header.key_id, dest_id, out), format!("{why_from}; {why_to}")))
        })
    }

    /// AWS's DryRun of a cryptographic operation: checks each (key, action) as the operation
    /// would, audits the call, and ends with the refusal or `dry_run_error()`.
    pub fn dry_run(
        &self,
        caller: &Principal,
        operation: &str,
        checks: &[(&str, &str)],
        ctx: &EncryptionContext,
    ) -> Result<()> {
        self.api_audited(caller, operation, None, ctx, |event| {
            for (key_ref, action) in checks {
                let key_id = self.resolve(key_ref)?;
                event.key_id.get_or_insert(key_id.clone());
                self.permitted_at(caller, None, &key_id, action, ctx)?;
            }
            Err::<((), String), _>(super::dry_run_error())
        })
    }

    /// Records one API call that ends before reaching a key (a refused signature, bad input).
    pub fn record(&self, event: AuditEvent) {
        self.audit.record(event);
    }

    /// Calls `done(committed)` once every event this ring recorded so far is in the keystore.
    pub fn audit_barrier(&self, done: Box<dyn FnOnce(bool) + Send>) {
        self.audit.barrier(done);
    }

    pub(crate) fn api_audited<T>(
        &self,
        caller: &Principal,
        operation: &str,
        key_ref: Option<&str>,
        ctx: &EncryptionContext,
        body: impl FnOnce(&mut AuditEvent) -> Result<(T, String)>,
    ) -> Result<T> {
        let mut event = AuditEvent::new(caller, operation, self.clock.now_ms());
        event.key_id = key_ref.map(str::to_string);
        event.context = ctx.to_audit_string();
        self.record_outcome(event, body)
    }
}
