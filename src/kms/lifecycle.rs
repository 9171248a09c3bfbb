//! Master-key lifecycle: create, enable/disable, rotation, scheduled deletion and
//! crypto-shredding. Follows AWS KMS: a disabled key keeps its material, a key pending
//! deletion can be saved until its date, after which its material is gone for good.

use super::asymmetric::{self, KeyMaterial, KeySpec, KeyUsage};
use super::import;
use super::multi_region;
use super::{
    add_version, aliases::validate_alias_name, keyid, require_customer_managed, require_enabled, resolve,
    Kms, Op, Principal, MANAGED_ALIAS_PREFIX,
};
use crate::error::{Error, KeyStateError, Result, StateProblem};
use crate::keystore::records::{self, KeyManager, KeyRecord, KeyState, VersionRecord};

pub const DAY_SECS: i64 = 86_400;
/// AWS's limits for ScheduleKeyDeletion's PendingWindowInDays.
pub const PENDING_WINDOW_DAYS: std::ops::RangeInclusive<i64> = 7..=30;
pub const DEFAULT_PENDING_WINDOW_DAYS: i64 = 30;
/// AWS's limits for EnableKeyRotation's RotationPeriodInDays.
pub const ROTATION_PERIOD_DAYS: std::ops::RangeInclusive<i64> = 90..=2560;
pub const DEFAULT_ROTATION_PERIOD_DAYS: i64 = 365;

/// Options of CreateKey.
#[derive(Debug, Clone, Default)]
pub struct CreateKeyOptions {
    pub alias: Option<String>,
    pub description: String,
    /// A key policy to start with instead of the default one (validated first).
    pub policy: Option<String>,
    /// Tags (key, value) to start with.
    pub tags: Vec<(String, String)>,
    /// SYMMETRIC_DEFAULT unless asked otherwise; the usage must fit the spec.
    pub key_spec: KeySpec,
    pub key_usage: KeyUsage,
    /// Origin EXTERNAL: the key starts PendingImport, without material (`kms::import`).
    pub origin_external: bool,
    /// A multi-Region primary key (id `mrk-...`), which ReplicateKey copies to other keystores.
    pub multi_region: bool,
}

/// Operations that authorize each key they use themselves, from more than the action:
/// ReEncryptFrom/ReEncryptTo and the caller's encryption context, or (CreateGrant) the grant
/// being given, which a grantee's own grant must cover.
const SELF_AUTHORIZING: &[&str] =
    &["Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "CreateGrant"];

impl Op<'_> {
    /// Resolves `key_ref` and records the key in this operation's audit event.
    pub(crate) fn key(&mut self, key_ref: &str) -> Result<KeyRecord> {
        self.event.key_id = Some(key_ref.to_string());
        let key = resolve(&self.tx, key_ref)?;
        self.event.key_id = Some(key.key_id.clone());
        // An API caller needs the key policy's (or a grant's) leave for administration
        // too; the passphrase holder at the command line is the keystore's administrator.
        if self.caller.remote.is_some() && !SELF_AUTHORIZING.contains(&self.event.operation.as_str()) {
            let action = format!("kms:{}", self.event.operation);
            let caller = self.caller;
            self.authorize_admin(caller, &key, &action)?;
        }
        Ok(key)
    }

    /// Inserts a new key with its first version.
    fn insert_new_key(&mut self, manager: KeyManager, description: &str) -> Result<KeyRecord> {
        self.insert_new_key_of(manager, description, KeySpec::Symmetric, KeyUsage::EncryptDecrypt, false)
    }

    /// Inserts a new key of `spec` with its only (asymmetric, HMAC) or first version.
    fn insert_new_key_of(
        &mut self,
        manager: KeyManager,
        description: &str,
        spec: KeySpec,
        usage: KeyUsage,
        external: bool,
    ) -> Result<KeyRecord> {
        self.insert_new_key_as(keyid::new_key_id(), manager, description, spec, usage, external)
    }

    /// [`Op::insert_new_key_of`] under a given id (a multi-Region key's `mrk-...`).
    fn insert_new_key_as(
        &mut self,
        key_id: String,
        manager: KeyManager,
        description: &str,
        spec: KeySpec,
        usage: KeyUsage,
        external: bool,
    ) -> Result<KeyRecord> {
        let managed = manager == KeyManager::Managed;
        let key = KeyRecord {
            key_id,
            created: self.now,
            description: description.to_string(),
            key_manager: manager,
            origin: if external { import::ORIGIN_EXTERNAL.into() } else { "KMSFS".into() },
            state: if external { KeyState::PendingImport } else { KeyState::Enabled },
            deletion_date: None,
            pending_window_days: None,
            // Managed keys rotate yearly, like AWS managed keys; customer keys opt in.
            rotation_enabled: managed,
            rotation_period_days: managed.then_some(DEFAULT_ROTATION_PERIOD_DAYS),
            next_rotation: managed.then_some(self.now + DEFAULT_ROTATION_PERIOD_DAYS * DAY_SECS),
            current_version: 1,
        };
        records::insert_key(&self.tx, &key)?;
        // The default key policy: the creator may do everything with a customer key; a
        // managed key may be used by everyone through a volume (Unix permissions decide) and
        // re-wrapped by its creator only.
        let policy = if managed {
            super::policy::Policy::managed_default(self.event.uid)
        } else if let Some(arn) = self.event.principal_arn.clone() {
            // An API caller: it and the keystore's administrators, as for a CLI-created key.
            super::policy::Policy::default_for_api_creator(self.owner_uid, &arn)
        } else {
            super::policy::Policy::default_for_owner(self.event.uid)
        };
        records::store_policy(&self.tx, &key.key_id, &policy)?;
        if external {
            // Its first version arrives with ImportKeyMaterial.
            asymmetric::save_spec(&self.tx, &key.key_id, spec, usage)?;
        } else if spec.is_symmetric() {
            add_version(self, &key.key_id, 1, "INITIAL")?;
        } else {
            let material = KeyMaterial::generate(spec)?;
            super::add_version_with(self, &key.key_id, 1, "INITIAL", &material.to_bytes()?)?;
            asymmetric::save_spec(&self.tx, &key.key_id, spec, usage)?;
        }
        self.event.key_id = Some(key.key_id.clone());
        Ok(key)
    }

    /// RotateKeyOnDemand of a key with imported material: the material imported with
    /// NEW_KEY_MATERIAL (the version after the current) becomes current.
    fn rotate_to_imported(&mut self, key: &mut KeyRecord) -> Result<()> {
        let next = key.current_version + 1;
        let pending = import::load_materials(&self.tx, &key.key_id)?
            .into_iter()
            .any(|m| m.version == next && m.imported);
        if !pending {
            return Err(Error::InvalidArgument(format!(
                "{}key {} has imported key material: import new key material (ImportType NEW_KEY_MATERIAL) \
                 before RotateKeyOnDemand",
                super::aws_errors::UNSUPPORTED,
                key.key_id
            )));
        }
        self.tx.execute(
            "UPDATE key_versions SET created = ?3, rotation_type = 'ON_DEMAND' WHERE key_id = ?1 AND version = ?2",
            rusqlite::params![key.key_id, next, self.now],
        )?;
        key.current_version = next;
        records::update_key(&self.tx, key)
    }

    /// Makes a new current version; older versions stay for decryption.
    fn rotate(&mut self, key: &mut KeyRecord, rotation_type: &str) -> Result<()> {
        let version = key.current_version + 1;
        add_version(self, &key.key_id, version, rotation_type)?;
        key.current_version = version;
        if rotation_type == "AUTOMATIC" {
            let period = key.rotation_period_days.unwrap_or(DEFAULT_ROTATION_PERIOD_DAYS);
            key.next_rotation = Some(self.now + period * DAY_SECS);
        }
        records::update_key(&self.tx, key)
    }
}

/// Refuses automatic rotation of a key with imported material: kmsfs cannot make new
/// material for it (AWS: on-demand rotation after importing new material only).
fn require_kmsfs_material(key: &KeyRecord) -> Result<()> {
    if import::is_external(key) {
        return Err(Error::InvalidArgument(format!(
            "{}key {} has imported key material (Origin EXTERNAL): it never rotates automatically; import \
             new material (ImportType NEW_KEY_MATERIAL) and call RotateKeyOnDemand",
            super::aws_errors::UNSUPPORTED,
            key.key_id
        )));
    }
    Ok(())
}

impl Kms {
    /// CreateKey: a customer-managed key, optionally with an alias. Returns the key id.
    pub fn create_key(&mut self, caller: &Principal, opts: &CreateKeyOptions) -> Result<String> {
        self.audited(caller, "CreateKey", |op| {
            if let Some(text) = &opts.policy {
                super::policy::Policy::parse(text)?;
            }
            super::tags::validate(&opts.tags)?;
            opts.key_spec.check_usage(opts.key_usage)?;
            if opts.multi_region && opts.origin_external {
                return Err(Error::InvalidArgument(format!(
                    "{}multi-Region keys with imported key material are not supported",
                    super::aws_errors::UNSUPPORTED
                )));
            }
            let key_id = if opts.multi_region { keyid::new_mrk_id() } else { keyid::new_key_id() };
            let key = op.insert_new_key_as(
                key_id,
                KeyManager::Customer,
                &opts.description,
                opts.key_spec,
                opts.key_usage,
                opts.origin_external,
            )?;
            if opts.multi_region {
                super::multi_region::create_primary(&op.tx, &key.key_id)?;
            }
            if !opts.key_spec.is_symmetric() {
                op.event.reason = format!("{} {}", opts.key_spec.as_str(), opts.key_usage.as_str());
            }
            if opts.origin_external {
                op.event.reason = format!("{} Origin EXTERNAL", op.event.reason).trim_start().to_string();
            }
            if let Some(text) = &opts.policy {
                records::store_policy(&op.tx, &key.key_id, text)?;
            }
            super::tags::put(&op.tx, &key.key_id, &opts.tags)?;
            if let Some(alias) = &opts.alias {
                validate_alias_name(alias, false)?;
                super::aliases::insert_unique(op, alias, &key.key_id)?;
            }
            Ok(key.key_id)
        })
    }

    /// Creates a key that kmsfs manages (one per volume), aliased `alias/kmsfs/<name>`.
    pub fn create_managed_key(
        &mut self,
        caller: &Principal,
        name: &str,
        description: &str,
    ) -> Result<String> {
        let alias = format!("{MANAGED_ALIAS_PREFIX}{name}");
        validate_alias_name(&alias, true)?;
        self.audited(caller, "CreateKey", |op| {
            let key = op.insert_new_key(KeyManager::Managed, description)?;
            super::aliases::insert_unique(op, &alias, &key.key_id)?;
            Ok(key.key_id)
        })
    }

    /// UpdateKeyDescription.
    pub fn update_key_description(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        description: &str,
    ) -> Result<()> {
        self.audited(caller, "UpdateKeyDescription", |op| {
            let mut key = op.key(key_ref)?;
            require_customer_managed(&key, "re-described")?;
            super::require_not_deleted(&key)?;
            if key.state == KeyState::Destroyed {
                return Err(Error::KeyState(KeyStateError::new(&key, StateProblem::NotEnabled)));
            }
            key.description = description.to_string();
            records::update_key(&op.tx, &key)
        })
    }

    pub fn enable_key(&mut self, caller: &Principal, key_ref: &str) -> Result<()> {
        self.audited(caller, "EnableKey", |op| {
            let mut key = op.key(key_ref)?;
            require_customer_managed(&key, "enabled or disabled")?;
            match key.state {
                KeyState::Enabled => Ok(()),
                KeyState::Disabled => {
                    key.state = KeyState::Enabled;
                    records::update_key(&op.tx, &key)
                }
                _ => require_enabled(&key),
            }
        })
    }

    pub fn disable_key(&mut self, caller: &Principal, key_ref: &str) -> Result<()> {
        self.audited(caller, "DisableKey", |op| {
            let mut key = op.key(key_ref)?;
            require_customer_managed(&key, "enabled or disabled")?;
            match key.state {
                KeyState::Disabled => Ok(()),
                KeyState::Enabled => {
                    key.state = KeyState::Disabled;
                    records::update_key(&op.tx, &key)
                }
                _ => require_enabled(&key),
            }
        })
    }

    /// RotateKeyOnDemand. Returns the new current version.
    pub fn rotate_key(&mut self, caller: &Principal, key_ref: &str) -> Result<u32> {
        self.audited(caller, "RotateKeyOnDemand", |op| {
            let mut key = op.key(key_ref)?;
            require_customer_managed(&key, "rotated on demand (it rotates yearly by itself)")?;
            asymmetric::require_rotatable(&op.tx, &key.key_id)?;
            multi_region::require_not_replica(&op.tx, &key.key_id, "rotate it")?;
            require_enabled(&key)?;
            if import::is_external(&key) {
                op.rotate_to_imported(&mut key)?;
            } else {
                op.rotate(&mut key, "ON_DEMAND")?;
            }
            Ok(key.current_version)
        })
    }

    /// EnableKeyRotation with a period in days (90..=2560). Returns the next rotation date.
    pub fn enable_key_rotation(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        period_days: i64,
    ) -> Result<i64> {
        self.audited(caller, "EnableKeyRotation", |op| {
            let mut key = op.key(key_ref)?;
            asymmetric::require_rotatable(&op.tx, &key.key_id)?;
            require_kmsfs_material(&key)?;
            multi_region::require_not_replica(&op.tx, &key.key_id, "set its rotation")?;
            if !ROTATION_PERIOD_DAYS.contains(&period_days) {
                return Err(Error::InvalidArgument(format!(
                    "the rotation period must be between {} and {} days, not {period_days}",
                    ROTATION_PERIOD_DAYS.start(),
                    ROTATION_PERIOD_DAYS.end()
                )));
            }
            require_customer_managed(&key, "given another rotation schedule")?;
            require_enabled(&key)?;
            let next = op.now + period_days * DAY_SECS;
            key.rotation_enabled = true;
            key.rotation_period_days = Some(period_days);
            key.next_rotation = Some(next);
            records::update_key(&op.tx, &key)?;
            Ok(next)
        })
    }

    pub fn disable_key_rotation(&mut self, caller: &Principal, key_ref: &str) -> Result<()> {
        self.audited(caller, "DisableKeyRotation", |op| {
            let mut key = op.key(key_ref)?;
            require_customer_managed(&key, "kept from rotating")?;
            asymmetric::require_rotatable(&op.tx, &key.key_id)?;
            require_kmsfs_material(&key)?;
            multi_region::require_not_replica(&op.tx, &key.key_id, "set its rotation")?;
            require_enabled(&key)?;
            key.rotation_enabled = false;
            key.next_rotation = None;
            records::update_key(&op.tx, &key)
        })
    }

    /// ListKeyRotations: every version of the key, oldest first.
    pub fn list_key_versions(&mut self, caller: &Principal, key_ref: &str) -> Result<Vec<VersionRecord>> {
        self.audited(caller, "ListKeyRotations", |op| {
            let key = op.key(key_ref)?;
            records::list_versions(&op.tx, &key.key_id)
        })
    }

    /// ScheduleKeyDeletion. Returns the deletion date (unix seconds).
    pub fn schedule_key_deletion(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        window_days: i64,
    ) -> Result<i64> {
        self.audited(caller, "ScheduleKeyDeletion", |op| {
            let mut key = op.key(key_ref)?;
            if !PENDING_WINDOW_DAYS.contains(&window_days) {
                return Err(Error::InvalidArgument(format!(
                    "the pending window must be between {} and {} days (got {window_days})",
                    PENDING_WINDOW_DAYS.start(),
                    PENDING_WINDOW_DAYS.end()
                )));
            }
            require_customer_managed(&key, "scheduled for deletion")?;
            match key.state {
                KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport => {}
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                    return Err(Error::KeyState(KeyStateError::new(
                        &key,
                        StateProblem::AlreadyPendingDeletion,
                    )))
                }
                KeyState::Destroyed => require_enabled(&key)?,
            }
            let date = op.now + window_days * DAY_SECS;
            // A multi-Region primary with replicas waits for them; its window starts when the
            // last is deleted (AWS's PendingReplicaDeletion).
            if multi_region::is_primary_with_replicas(&op.tx, &key.key_id)? {
                key.state = KeyState::PendingReplicaDeletion;
                key.deletion_date = None;
            } else {
                key.state = KeyState::PendingDeletion;
                key.deletion_date = Some(date);
            }
            key.pending_window_days = Some(window_days);
            records::update_key(&op.tx, &key)?;
            Ok(date)
        })
    }

    /// CancelKeyDeletion: the key returns to Disabled, as in AWS.
    pub fn cancel_key_deletion(&mut self, caller: &Principal, key_ref: &str) -> Result<()> {
        self.audited(caller, "CancelKeyDeletion", |op| {
            let mut key = op.key(key_ref)?;
            match key.state {
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                    key.state = import::state_after_cancel(&op.tx, &key)?;
                    key.deletion_date = None;
                    key.pending_window_days = None;
                    records::update_key(&op.tx, &key)
                }
                KeyState::Destroyed => require_enabled(&key),
                _ => Err(Error::KeyState(KeyStateError::new(&key, StateProblem::NotPendingDeletion))),
            }
        })
    }

    /// Destroys every key whose deletion window has passed: its material is erased, its
    /// aliases removed, and a `Destroyed` tombstone stays so its ciphertexts are reported
    /// unrecoverable. Returns the destroyed key ids.
    pub fn purge_expired(&mut self, caller: &Principal) -> Result<Vec<String>> {
        let due = records::keys_due_for_destruction(self.keystore().conn(), self.now_secs())?;
        let mut destroyed = Vec::new();
        for key in due {
            self.audited(caller, "DeleteKey", |op| {
                let mut key = op.key(&key.key_id)?;
                if key.state != KeyState::PendingDeletion {
                    return Ok(()); // another process got there first
                }
                records::destroy_material(&op.tx, &key.key_id)?;
                records::delete_aliases_of_key(&op.tx, &key.key_id)?;
                op.tx.execute("DELETE FROM import_wrapping_keys WHERE key_id = ?1", [&key.key_id])?;
                key.state = KeyState::Destroyed;
                records::update_key(&op.tx, &key)?;
                op.event.reason = "pending deletion window ended; key material destroyed".into();
                Ok(())
            })?;
            destroyed.push(key.key_id);
        }
        self.erase_destroyed_pages(!destroyed.is_empty())?;
        Ok(destroyed)
    }

    /// After a destruction, and at every later open and housekeeping until it succeeds,
    /// truncates the keystore's write-ahead log, whose older frames still hold the destroyed
    /// material (secure_delete has zeroed it in the newest page images already).
    pub(super) fn erase_destroyed_pages(&mut self, destroyed_now: bool) -> Result<()> {
        if !destroyed_now && !self.keystore().erase_pending()? {
            return Ok(());
        }
        let done = self.keystore().truncate_wal()?;
        if !done {
            log::warn!(
                "destroyed key material may remain in {}-wal while another process reads an older \
                 snapshot; the next kmsfs command (or a mount's hourly housekeeping) erases it",
                self.keystore().path().display()
            );
        }
        let pending = self.keystore().erase_pending()?;
        if done && pending {
            self.keystore_mut().set_erase_pending(false)?;
        } else if !done && !pending {
            self.keystore_mut().set_erase_pending(true)?;
        }
        Ok(())
    }

    /// Rotates every key whose automatic rotation date has come. Returns their ids.
    pub fn rotate_due(&mut self, caller: &Principal) -> Result<Vec<String>> {
        let due = records::keys_due_for_rotation(self.keystore().conn(), self.now_secs())?;
        let mut rotated = Vec::new();
        for key in due {
            // A multi-Region replica's primary rotates; the version arrives at the next sync.
            if multi_region::is_replica(self.keystore().conn(), &key.key_id)? {
                continue;
            }
            self.audited(caller, "RotateKey", |op| {
                let mut key = op.key(&key.key_id)?;
                if !(key.rotation_enabled && key.next_rotation.is_some_and(|t| t <= op.now)) {
                    return Ok(()); // another process rotated it meanwhile
                }

                op.rotate(&mut key, "AUTOMATIC")?;
                op.event.reason = format!("automatic rotation to version {}", key.current_version);
                Ok(())
            })?;
            rotated.push(key.key_id);
        }
        Ok(rotated)
    }
}
