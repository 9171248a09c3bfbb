//! Multi-Region keys: one key id and the same material (every version) in several keystores,
//! each keystore being a region (docs/MULTI_REGION.md).
//!
//! Every keystore that holds a member of the set keeps the whole configuration in its
//! `multi_region` row: the primary's region, every region, and an epoch raised by each change
//! of them, so that two keystores that disagree keep the newer one when they meet.
//! Shared between the members, as in AWS: the id, the material, the key spec and usage, the
//! rotation settings (the primary rotates; replicas receive its versions at the next sync).
//! Each member's own: description, policy, grants, aliases, tags and state.
//!
//! Material moves only between two unlocked keystores in one process: it is unsealed with
//! the source keystore's versions key into zeroizing memory and sealed at once with the
//! destination's, inside the destination's transaction. It is never written or sent in the
//! clear.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension};
use zeroize::Zeroizing;

use super::asymmetric::{self, KeySpec, KeyUsage};
use super::aws_errors::UNSUPPORTED;
use super::policy::{Decision, Policy, Request};
use super::root_keys::{self, RootKeys};
use super::{keyid, version_aad, version_bytes, EncryptionContext, Kms, Op, Principal};
use crate::crypto;
use crate::error::{AlreadyExists, Error, KeyStateError, NotFound, Result, StateProblem};
use crate::keystore::{self, records, records::KeyManager, records::KeyRecord, records::KeyState};

/// The configuration every member of a multi-Region key keeps.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultiRegionConfig {
    pub primary_region: String,
    /// Every region holding a member, the primary's included.
    pub regions: BTreeSet<String>,
    #[serde(skip)]
    pub epoch: i64,
}

impl MultiRegionConfig {
    /// The regions of the replicas.
    pub fn replica_regions(&self) -> impl Iterator<Item = &str> {
        self.regions.iter().map(String::as_str).filter(|r| *r != self.primary_region)
    }

    fn has_replicas(&self) -> bool {
        self.replica_regions().next().is_some()
    }
}

pub(crate) fn load(conn: &Connection, key_id: &str) -> Result<Option<MultiRegionConfig>> {
    let row: Option<(String, String, i64)> = conn
        .query_row(
            "SELECT primary_region, regions, epoch FROM multi_region WHERE key_id = ?1",
            [key_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((primary_region, regions, epoch)) = row else { return Ok(None) };
    let regions: BTreeSet<String> = serde_json::from_str(&regions).map_err(|e| {
        Error::CorruptMaterial(format!("the multi-Region configuration of key {key_id} is damaged: {e}"))
    })?;
    Ok(Some(MultiRegionConfig { primary_region, regions, epoch }))
}

fn store(conn: &Connection, key_id: &str, cfg: &MultiRegionConfig) -> Result<()> {
    conn.execute(
        "INSERT INTO multi_region (key_id, primary_region, regions, epoch) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key_id) DO UPDATE SET primary_region = excluded.primary_region,
             regions = excluded.regions, epoch = excluded.epoch",
        rusqlite::params![
            key_id,
            cfg.primary_region,
            serde_json::to_string(&cfg.regions).expect("a set of strings serializes"),
            cfg.epoch
        ],
    )?;
    Ok(())
}

/// The ids of every multi-Region key this keystore holds.
fn all_ids(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT key_id FROM multi_region ORDER BY key_id")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The region this keystore answers as.
fn region_of(conn: &Connection) -> Result<String> {
    keystore::get_meta(conn, "region")?
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| Error::CorruptMaterial("the keystore's region is missing".into()))
}

/// Refuses to move a keystore holding members of multi-Region keys to another region or
/// account: the configurations name it by its region, and the set shares one account.
pub(crate) fn require_identity_unchanged(
    conn: &Connection,
    account: Option<&str>,
    region: Option<&str>,
) -> Result<()> {
    let count: i64 = conn.query_row("SELECT count(*) FROM multi_region", [], |r| r.get(0))?;
    if count == 0 {
        return Ok(());
    }
    let current_account = keystore::get_meta(conn, "account_id")?.and_then(|v| String::from_utf8(v).ok());
    let moves_region = region.is_some_and(|r| r != region_of(conn).unwrap_or_default());
    let moves_account = account.is_some_and(|a| Some(a) != current_account.as_deref());
    if moves_region || moves_account {
        return Err(Error::InvalidArgument(format!(
            "{UNSUPPORTED}this keystore holds {count} multi-Region keys, whose configurations name its \
             region and account; they cannot change"
        )));
    }
    Ok(())
}

/// Whether `key_id` is a replica here (it then takes its versions and rotation settings from
/// its primary, and neither rotates nor changes its rotation by itself).
pub(crate) fn is_replica(conn: &Connection, key_id: &str) -> Result<bool> {
    Ok(match load(conn, key_id)? {
        Some(cfg) => cfg.primary_region != region_of(conn)?,
        None => false,
    })
}

/// Refuses what only a primary (or a single-Region key) may do to a replica.
pub(crate) fn require_not_replica(conn: &Connection, key_id: &str, what: &str) -> Result<()> {
    match load(conn, key_id)? {
        Some(cfg) if cfg.primary_region != region_of(conn)? => Err(Error::InvalidArgument(format!(
            "{UNSUPPORTED}key {key_id} is a multi-Region replica; {what} on its primary in {}",
            cfg.primary_region
        ))),
        _ => Ok(()),
    }
}

/// Whether `key_id` is a multi-Region primary here that still has replicas: ScheduleKeyDeletion
/// then leaves it PendingReplicaDeletion.
pub(crate) fn is_primary_with_replicas(conn: &Connection, key_id: &str) -> Result<bool> {
    Ok(match load(conn, key_id)? {
        Some(cfg) => cfg.primary_region == region_of(conn)? && cfg.has_replicas(),
        None => false,
    })
}

/// What a member hands another: the shared properties and every version's material,
/// unsealed (zeroized on drop).
struct Image {
    key: KeyRecord,
    spec: (KeySpec, KeyUsage),
    versions: Vec<(records::VersionRecord, Zeroizing<Vec<u8>>)>,
}

impl Image {
    fn read(conn: &Connection, keys: &RootKeys, key: &KeyRecord) -> Result<Image> {
        let versions_key = keys.versions(root_keys::is_derived(conn)?);
        let mut versions = Vec::new();
        for v in records::list_versions(conn, &key.key_id)? {
            if v.material_present {
                let material = version_bytes(conn, versions_key, &key.key_id, v.version)?;
                versions.push((v, material));
            }
        }
        Ok(Image { key: key.clone(), spec: asymmetric::load_spec(conn, &key.key_id)?, versions })
    }

    /// Adds the versions `op`'s keystore lacks, sealed under its versions key. Returns how many.
    fn add_missing_versions(&self, op: &Op<'_>) -> Result<usize> {
        let have: BTreeSet<u32> =
            records::list_versions(&op.tx, &self.key.key_id)?.into_iter().map(|v| v.version).collect();
        let versions_key = op.keys.versions(root_keys::is_derived(&op.tx)?);
        let mut added = 0;
        for (v, material) in self.versions.iter().filter(|(v, _)| !have.contains(&v.version)) {
            let sealed = crypto::seal(versions_key, &version_aad(&self.key.key_id, v.version), material);
            records::insert_version(
                &op.tx,
                &self.key.key_id,
                v.version,
                v.created,
                &v.rotation_type,
                &sealed,
            )?;
            added += 1;
        }
        Ok(added)
    }

    /// The shared properties onto a member's record.
    fn share_into(&self, key: &mut KeyRecord) {
        key.current_version = key.current_version.max(self.key.current_version);
        key.rotation_enabled = self.key.rotation_enabled;
        key.rotation_period_days = self.key.rotation_period_days;
        key.next_rotation = self.key.next_rotation;
    }
}

/// Options of ReplicateKey: the replica's own properties.
#[derive(Debug, Clone, Default)]
pub struct ReplicateOptions {
    pub description: String,
    /// The replica's key policy [default: the default policy for its creator].
    pub policy: Option<String>,
    pub tags: Vec<(String, String)>,
    pub bypass_policy_lockout_check: bool,
}

/// What a sync did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SyncReport {
    /// Keys whose members met.
    pub keys: Vec<String>,
    /// Versions that reached a member that lacked them.
    pub versions_copied: usize,
    /// Replicas found destroyed, taken out of the configuration.
    pub replicas_removed: Vec<String>,
    /// Primaries whose deletion waiting period began (their last replica is gone).
    pub deletions_started: Vec<String>,
}

fn unsupported(what: String) -> Error {
    Error::InvalidArgument(format!("{UNSUPPORTED}{what}"))
}

impl Op<'_> {
    /// The multi-Region configuration of `key`, which must be the primary here.
    fn primary_config(&self, key: &KeyRecord, operation: &str) -> Result<MultiRegionConfig> {
        let cfg = load(&self.tx, &key.key_id)?.ok_or_else(|| {
            unsupported(format!(
                "key {} is a single-Region key; {operation} takes a multi-Region primary key (CreateKey MultiRegion)",
                key.key_id
            ))
        })?;
        let here = region_of(&self.tx)?;
        if cfg.primary_region != here {
            return Err(unsupported(format!(
                "key {} is a multi-Region replica in {here}; {operation} takes its primary, in {}",
                key.key_id, cfg.primary_region
            )));
        }
        Ok(cfg)
    }
}

/// Refuses to make or move replicas of a key on its way out.
fn require_live(key: &KeyRecord) -> Result<()> {
    match key.state {
        KeyState::Enabled | KeyState::Disabled => Ok(()),
        _ => Err(Error::KeyState(KeyStateError::new(key, StateProblem::NotEnabled))),
    }
}

impl Kms {
    /// The region and account this keystore answers as, and its id.
    fn identity(&self) -> Result<(String, String, String)> {
        let ks = self.keystore();
        Ok((ks.region()?, ks.account_id()?, ks.keystore_id()?))
    }

    /// Refuses a peer that cannot hold members of this keystore's multi-Region keys.
    fn check_peer(&self, peer: &Kms) -> Result<(String, String)> {
        let (here, account, id) = self.identity()?;
        let (there, peer_account, peer_id) = peer.identity()?;
        if id == peer_id {
            return Err(Error::InvalidArgument(format!(
                "{} is this keystore itself; replicas live in another keystore (another region)",
                peer.keystore().path().display()
            )));
        }
        if account != peer_account {
            return Err(unsupported(format!(
                "the keystore of region {there} answers as account {peer_account}, this one as {account}: \
                 a multi-Region key stays in one account (`kmsfs keystore set-identity --account-id`)"
            )));
        }
        if here == there {
            return Err(Error::InvalidArgument(format!(
                "the other keystore is in region {here} too; a replica goes to another region \
                 (`kmsfs keystore set-identity --region`)"
            )));
        }
        Ok((here, there))
    }

    /// ReplicateKey: a replica of the multi-Region primary `key_ref` in `replica`'s keystore,
    /// with the same id, material (every version), spec and rotation settings, and its own
    /// description, policy and tags. The replica is committed in its keystore first, then the
    /// primary's configuration; a failure before that leaves neither changed. Returns the key id.
    pub fn replicate_key(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        replica: &mut Kms,
        opts: &ReplicateOptions,
    ) -> Result<String> {
        let checked = self.check_peer(replica);
        self.audited(caller, "ReplicateKey", |op| {
            let key = op.key(key_ref)?;
            let (_, there) = checked?;
            let mut cfg = op.primary_config(&key, "ReplicateKey")?;
            require_live(&key)?;
            if key.origin != "KMSFS" {
                // Imported material is the customer's to bring into each region; not built.
                return Err(unsupported(format!(
                    "key {} has {} key material; only keys whose material kmsfs made are replicated",
                    key.key_id, key.origin
                )));
            }
            if cfg.regions.contains(&there) {
                return Err(Error::AlreadyExists(AlreadyExists::Replica {
                    key_id: key.key_id,
                    region: there,
                }));
            }
            let image = Image::read(&op.tx, op.keys, &key)?;
            cfg.regions.insert(there.clone());
            cfg.epoch += 1;
            replica.receive_replica(caller, &image, &cfg, opts)?;
            store(&op.tx, &key.key_id, &cfg)?;
            op.event.reason = format!("replica in region {there}");
            Ok(key.key_id)
        })
    }

    /// The replica side of ReplicateKey, in this keystore's own audited transaction.
    fn receive_replica(
        &mut self,
        caller: &Principal,
        image: &Image,
        cfg: &MultiRegionConfig,
        opts: &ReplicateOptions,
    ) -> Result<()> {
        self.audited(caller, "ReplicateKey", |op| {
            let key_id = &image.key.key_id;
            op.event.key_id = Some(key_id.clone());
            let here = region_of(&op.tx)?;
            if records::load_key(&op.tx, key_id)?.is_some() {
                return Err(Error::AlreadyExists(AlreadyExists::Replica {
                    key_id: key_id.clone(),
                    region: here,
                }));
            }
            super::tags::validate(&opts.tags)?;
            if let Some(text) = &opts.policy {
                let policy = Policy::parse(text)?;
                let ctx = EncryptionContext::new();
                let request =
                    Request { caller, action: "kms:PutKeyPolicy", context: &ctx, path: None, now: op.now };
                if !opts.bypass_policy_lockout_check
                    && matches!(policy.decide(&[], &request), Decision::Deny(_))
                {
                    return Err(Error::MalformedPolicy(
                        "the replica's policy would not allow you to update it in the future (set \
                         BypassPolicyLockoutSafetyCheck to put it anyway)"
                            .into(),
                    ));
                }
            }
            let mut key = KeyRecord {
                key_id: key_id.clone(),
                created: op.now,
                description: opts.description.clone(),
                key_manager: KeyManager::Customer,
                origin: image.key.origin.clone(),
                state: KeyState::Enabled,
                deletion_date: None,
                pending_window_days: None,
                rotation_enabled: false,
                rotation_period_days: None,
                next_rotation: None,
                current_version: 0,
            };
            image.share_into(&mut key);
            records::insert_key(&op.tx, &key)?;
            let policy = match (&opts.policy, op.event.principal_arn.clone()) {
                (Some(text), _) => text.clone(),
                (None, Some(arn)) => Policy::default_for_api_creator(op.owner_uid, &arn),
                (None, None) => Policy::default_for_owner(op.event.uid),
            };
            records::store_policy(&op.tx, key_id, &policy)?;
            image.add_missing_versions(op)?;
            asymmetric::save_spec(&op.tx, key_id, image.spec.0, image.spec.1)?;
            super::tags::put(&op.tx, key_id, &opts.tags)?;
            store(&op.tx, key_id, cfg)?;
            op.event.reason = format!("replica of the primary in {}", cfg.primary_region);
            Ok(())
        })
    }

    /// UpdatePrimaryRegion: the replica in `new_primary`'s keystore becomes the primary and
    /// this key a replica. The new primary receives every version first (it rotates from now
    /// on), then both configurations change; the other replicas learn it at their next sync.
    pub fn update_primary_region(
        &mut self,
        caller: &Principal,
        key_ref: &str,
        new_primary: &mut Kms,
    ) -> Result<()> {
        let checked = self.check_peer(new_primary);
        self.audited(caller, "UpdatePrimaryRegion", |op| {
            let key = op.key(key_ref)?;
            let (_, there) = checked?;
            let mut cfg = op.primary_config(&key, "UpdatePrimaryRegion")?;
            require_live(&key)?;
            if !cfg.regions.contains(&there) {
                return Err(Error::NotFound(NotFound::Other(format!(
                    "key {} has no replica in region {there}; ReplicateKey it there first",
                    key.key_id
                ))));
            }
            let image = Image::read(&op.tx, op.keys, &key)?;
            cfg.primary_region = there.clone();
            cfg.epoch += 1;
            new_primary.apply(caller, "UpdatePrimaryRegion", &image, &cfg)?;
            store(&op.tx, &key.key_id, &cfg)?;
            op.event.reason = format!("primary moved to {there}");
            Ok(())
        })
    }

    /// Brings this keystore's member of `image`'s key up to the configuration `cfg` and the
    /// shared properties of `image` (missing versions, rotation settings). Returns the
    /// versions added.
    fn apply(
        &mut self,
        caller: &Principal,
        operation: &str,
        image: &Image,
        cfg: &MultiRegionConfig,
    ) -> Result<usize> {
        self.audited(caller, operation, |op| {
            let key_id = &image.key.key_id;
            op.event.key_id = Some(key_id.clone());
            let mut key = records::load_key(&op.tx, key_id)?
                .ok_or_else(|| Error::NotFound(NotFound::Key { key_id: key_id.clone() }))?;
            if key.state == KeyState::Destroyed {
                return Err(Error::KeyState(KeyStateError::new(&key, StateProblem::NotEnabled)));
            }
            let added = image.add_missing_versions(op)?;
            image.share_into(&mut key);
            records::update_key(&op.tx, &key)?;
            store(&op.tx, key_id, cfg)?;
            op.event.reason = format!("{added} versions received; primary in {}", cfg.primary_region);
            Ok(added)
        })
    }

    /// Stores a newer configuration, and starts the deletion window of a primary
    /// PendingReplicaDeletion whose replicas are all gone.
    fn settle(&mut self, caller: &Principal, key_id: &str, cfg: &MultiRegionConfig) -> Result<bool> {
        self.audited(caller, "SynchronizeMultiRegionKey", |op| {
            op.event.key_id = Some(key_id.to_string());
            store(&op.tx, key_id, cfg)?;
            let Some(mut key) = records::load_key(&op.tx, key_id)? else { return Ok(false) };
            let here = region_of(&op.tx)?;
            if key.state == KeyState::PendingReplicaDeletion
                && cfg.primary_region == here
                && !cfg.has_replicas()
            {
                let days = key.pending_window_days.unwrap_or(super::lifecycle::DEFAULT_PENDING_WINDOW_DAYS);
                key.state = KeyState::PendingDeletion;
                key.deletion_date = Some(op.now + days * super::lifecycle::DAY_SECS);
                records::update_key(&op.tx, &key)?;
                op.event.reason = format!("the last replica is deleted: deletion in {days} days");
                return Ok(true);
            }
            op.event.reason = format!("configuration epoch {}", cfg.epoch);
            Ok(false)
        })
    }

    /// Brings the members of every multi-Region key held both here and in `peer` together:
    /// the newer configuration wins; the primary's versions and rotation settings reach the
    /// replica; a destroyed replica leaves the configuration, and a primary waiting for its
    /// replicas' deletion begins its own waiting period when none is left.
    pub fn sync_with(&mut self, caller: &Principal, peer: &mut Kms) -> Result<SyncReport> {
        let (here, there) = self.check_peer(peer)?;
        let mut ids: BTreeSet<String> = all_ids(self.keystore().conn())?.into_iter().collect();
        ids.extend(all_ids(peer.keystore().conn())?);
        let mut report = SyncReport::default();
        for key_id in ids {
            let mine = load(self.keystore().conn(), &key_id)?;
            let theirs = load(peer.keystore().conn(), &key_id)?;
            let (Some(mine), Some(theirs)) = (mine, theirs) else { continue };
            let mut cfg = if theirs.epoch > mine.epoch { theirs } else { mine };
            let (src, dst): (&mut Kms, &mut Kms) = if cfg.primary_region == here {
                (&mut *self, &mut *peer)
            } else if cfg.primary_region == there {
                (&mut *peer, &mut *self)
            } else {
                // Neither holds the primary: only the configuration travels.
                self.settle(caller, &key_id, &cfg)?;
                peer.settle(caller, &key_id, &cfg)?;
                report.keys.push(key_id);
                continue;
            };
            let (Some(primary), Some(replica)) = (
                records::load_key(src.keystore().conn(), &key_id)?,
                records::load_key(dst.keystore().conn(), &key_id)?,
            ) else {
                continue;
            };
            let replica_region = dst.keystore().region()?;
            if replica.state == KeyState::Destroyed {
                if cfg.regions.remove(&replica_region) {
                    cfg.epoch += 1;
                    report.replicas_removed.push(format!("{key_id} in {replica_region}"));
                }
                if needs_settling(dst.keystore().conn(), &key_id, &cfg)? {
                    dst.settle(caller, &key_id, &cfg)?;
                }
            } else if primary.state != KeyState::Destroyed
                && behind(src.keystore().conn(), dst.keystore().conn(), &primary, &cfg)?
            {
                let image = Image::read(src.keystore().conn(), &src.keys, &primary)?;
                report.versions_copied += dst.apply(caller, "SynchronizeMultiRegionKey", &image, &cfg)?;
            }
            if needs_settling(src.keystore().conn(), &key_id, &cfg)? && src.settle(caller, &key_id, &cfg)? {
                report.deletions_started.push(key_id.clone());
            }
            report.keys.push(key_id);
        }
        Ok(report)
    }
}

/// Whether the member in `dst` lacks a version, the rotation settings or the configuration of
/// the primary `primary` (read in `src`): a sync that finds nothing to do writes nothing.
fn behind(src: &Connection, dst: &Connection, primary: &KeyRecord, cfg: &MultiRegionConfig) -> Result<bool> {
    let Some(member) = records::load_key(dst, &primary.key_id)? else { return Ok(false) };
    let have: BTreeSet<u32> =
        records::list_versions(dst, &primary.key_id)?.into_iter().map(|v| v.version).collect();
    let missing = records::list_versions(src, &primary.key_id)?
        .into_iter()
        .any(|v| v.material_present && !have.contains(&v.version));
    let rotation_differs = (member.rotation_enabled, member.rotation_period_days, member.next_rotation)
        != (primary.rotation_enabled, primary.rotation_period_days, primary.next_rotation);
    Ok(missing
        || rotation_differs
        || member.current_version < primary.current_version
        || load(dst, &primary.key_id)?.as_ref() != Some(cfg))
}

/// Whether [`Kms::settle`] has something to write: a newer configuration, or a primary whose
/// last replica is gone while it waits for them.
fn needs_settling(conn: &Connection, key_id: &str, cfg: &MultiRegionConfig) -> Result<bool> {
    if load(conn, key_id)?.as_ref() != Some(cfg) {
        return Ok(true);
    }
    let waiting =
        records::load_key(conn, key_id)?.is_some_and(|k| k.state == KeyState::PendingReplicaDeletion);
    Ok(waiting && cfg.primary_region == region_of(conn)? && !cfg.has_replicas())
}

/// The multi-Region facts of a key for DescribeKey (`None`: a single-Region key).
pub(crate) fn describe(conn: &Connection, key_id: &str) -> Result<Option<MultiRegionConfig>> {
    if !keyid::is_mrk_id(key_id) {
        return Ok(None);
    }
    load(conn, key_id)
}

/// Creates the configuration of a new multi-Region primary key.
pub(crate) fn create_primary(conn: &Connection, key_id: &str) -> Result<()> {
    let here = region_of(conn)?;
    store(
        conn,
        key_id,
        &MultiRegionConfig { regions: BTreeSet::from([here.clone()]), primary_region: here, epoch: 1 },
    )
}
