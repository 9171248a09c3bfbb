//! `kmsfs key replicate | sync | update-primary-region`: multi-Region keys between this
//! keystore and another region's (docs/MULTI_REGION.md).

use std::path::{Path, PathBuf};

use super::{output, passphrase, Session};
use crate::error::{Error, Result};
use crate::kms::multi_region::ReplicateOptions;

/// The other region's keystore.
#[derive(Debug, clap::Args)]
pub struct ReplicaKeystore {
    /// The other region's keystore file
    #[arg(long, value_name = "PATH")]
    pub replica_keystore: PathBuf,
    /// Its passphrase file [default: KMSFS_REPLICA_PASSPHRASE, or a prompt]
    #[arg(long, env = "KMSFS_REPLICA_PASSPHRASE_FILE", value_name = "PATH")]
    pub replica_passphrase_file: Option<PathBuf>,
}

impl ReplicaKeystore {
    fn open(&self, json: bool) -> Result<Session> {
        let prompt = format!("Passphrase for {}: ", self.replica_keystore.display());
        let file = self.replica_passphrase_file.as_deref();
        Session::open_at(
            &self.replica_keystore,
            || passphrase::obtain(file, "KMSFS_REPLICA_PASSPHRASE", &prompt, false),
            json,
        )
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  kmsfs key create --multi-region --alias alias/orders
  kmsfs key replicate alias/orders --replica-keystore /srv/west.db --replica-passphrase-file west.pass

The replica has the key's id, material (every version) and rotation settings, and its own
description, policy, aliases, tags and state. Both keystores must answer as one account and
two regions (`kmsfs keystore set-identity`).")]
pub struct ReplicateArgs {
    /// The multi-Region primary key (id or alias)
    pub key: String,
    #[command(flatten)]
    pub replica: ReplicaKeystore,
    /// The replica's description
    #[arg(long, default_value = "")]
    pub description: String,
    /// The replica's key policy (JSON file) [default: the default policy]
    #[arg(long, value_name = "FILE")]
    pub policy_file: Option<PathBuf>,
    /// A tag of the replica, KEY=VALUE; repeatable
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  kmsfs key sync --replica-keystore /srv/west.db

Rotations of primaries reach their replicas; replicas destroyed there leave their primary's
configuration, and a primary waiting for them (PendingReplicaDeletion) starts its own
deletion window. A running `kmsfs serve --peer` does this by itself.")]
pub struct SyncArgs {
    #[command(flatten)]
    pub replica: ReplicaKeystore,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Example:
  kmsfs key update-primary-region alias/orders --replica-keystore /srv/west.db

The replica in that keystore's region becomes the primary (it rotates from now on); this key
becomes a replica. Other replicas learn it at their next sync.")]
pub struct UpdatePrimaryArgs {
    /// The current primary key (id or alias)
    pub key: String,
    #[command(flatten)]
    pub replica: ReplicaKeystore,
}

fn parse_tags(tags: &[String]) -> Result<Vec<(String, String)>> {
    tags.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::InvalidArgument(format!("--tag '{t}' must be KEY=VALUE")))
        })
        .collect()
}

pub fn replicate(s: &mut Session, args: ReplicateArgs) -> Result<()> {
    let policy = args
        .policy_file
        .as_ref()
        .map(|p| std::fs::read_to_string(p).map_err(|e| Error::io(format!("cannot read {}", p.display()), e)))
        .transpose()?;
    let opts = ReplicateOptions {
        description: args.description,
        policy,
        tags: parse_tags(&args.tags)?,
        bypass_policy_lockout_check: true,
    };
    let mut replica = args.replica.open(s.json)?;
    let key_id = s.kms.replicate_key(&s.me, &args.key, &mut replica.kms, &opts)?;
    let region = replica.kms.keystore().region()?;
    if s.json {
        output::json(&replica.kms.metadata_after(&key_id)?);
    } else {
        println!("key {key_id} replicated to region {region} ({})", args.replica.replica_keystore.display());
    }
    Ok(())
}

pub fn sync(s: &mut Session, args: SyncArgs) -> Result<()> {
    let mut peer = args.replica.open(s.json)?;
    let report = s.kms.sync_with(&s.me, &mut peer.kms)?;
    if s.json {
        output::json(&report);
    } else {
        println!(
            "{} multi-Region keys in sync with region {}; {} versions copied",
            report.keys.len(),
            peer.kms.keystore().region()?,
            report.versions_copied
        );
        for r in &report.replicas_removed {
            println!("replica {r} is deleted; removed from its key");
        }
        for k in &report.deletions_started {
            println!("key {k}: its last replica is deleted, its own deletion window has begun");
        }
    }
    Ok(())
}

pub fn update_primary_region(s: &mut Session, args: UpdatePrimaryArgs) -> Result<()> {
    let mut peer = args.replica.open(s.json)?;
    s.kms.update_primary_region(&s.me, &args.key, &mut peer.kms)?;
    let region = peer.kms.keystore().region()?;
    if s.json {
        let key_id = s.kms.resolve_key_id(&args.key)?;
        output::json(&s.kms.metadata_after(&key_id)?);
    } else {
        println!("the primary of key {} is now in region {region}", args.key);
    }
    Ok(())
}

/// How `kmsfs serve --peer` unlocks a peer keystore: with its `--peer-passphrase-file`, else
/// the passphrase of `KMSFS_REPLICA_PASSPHRASE` (or one prompt), the same for every peer
/// without a file.
pub fn peer_unlocker(json: bool) -> impl FnMut(&Path, Option<&Path>) -> Result<crate::kms::Kms> {
    let mut shared: Option<passphrase::Passphrase> = None;
    move |path, file| {
        let pass = match file {
            Some(file) => passphrase::from_file(file)?,
            None => {
                if shared.is_none() {
                    let prompt = "Passphrase of the peer keystores: ";
                    shared = Some(passphrase::obtain(None, "KMSFS_REPLICA_PASSPHRASE", prompt, false)?);
                }
                shared.clone().expect("obtained above")
            }
        };
        Ok(Session::open_at(path, || Ok(pass), json)?.kms)
    }
}
