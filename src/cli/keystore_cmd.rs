//! `kmsfs keystore init|passwd|info`.

use std::path::PathBuf;

use clap::Subcommand;

use super::output;
use super::passphrase;
use super::{Global, Session};
use crate::crypto::KdfParams;
use crate::error::Result;
use crate::keystore::Keystore;
use crate::kms::clock::format_date;

#[derive(Debug, Subcommand)]
pub enum KeystoreCmd {
    /// Create a new keystore protected by a passphrase
    #[command(
        after_help = "Example:\n  KMSFS_PASSPHRASE_FILE=~/.kmsfs-pass kmsfs keystore init --account-id 111122223333 --region eu-west-1"
    )]
    Init {
        #[command(flatten)]
        kdf: KdfArgs,
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Change the AWS account id and region the keystore answers as (key ARNs change)
    #[command(
        after_help = "Example:\n  kmsfs keystore set-identity --account-id 111122223333 --region eu-west-1"
    )]
    SetIdentity {
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Change the keystore passphrase (and optionally the argon2 costs)
    #[command(after_help = "Example:\n  kmsfs keystore passwd --new-passphrase-file ~/.kmsfs-new-pass")]
    Passwd {
        /// Read the new passphrase from this file instead of KMSFS_NEW_PASSPHRASE or a prompt
        #[arg(long, value_name = "PATH")]
        new_passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
    },
    /// Show the keystore's location, id, schema version and argon2 costs
    #[command(after_help = "Example:\n  kmsfs keystore info --json")]
    Info,
}

/// The AWS identity of the keystore: key ARNs are arn:aws:kms:REGION:ACCOUNT:key/ID.
#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    /// 12-digit AWS account id [default: derived from the keystore id]
    #[arg(long, value_name = "ID")]
    pub account_id: Option<String>,
    /// AWS region name [default: us-east-1]
    #[arg(long, value_name = "NAME")]
    pub region: Option<String>,
}

impl IdentityArgs {
    fn validate(&self) -> Result<()> {
        if let Some(a) = &self.account_id {
            crate::keystore::validate_account_id(a)?;
        }
        if let Some(r) = &self.region {
            crate::keystore::validate_region(r)?;
        }
        Ok(())
    }
}

/// argon2id costs for a new passphrase (defaults: 64 MiB, 3 passes, 1 lane).
#[derive(Debug, clap::Args)]
pub struct KdfArgs {
    /// argon2id memory in KiB
    #[arg(long, value_name = "KIB")]
    pub argon2_memory_kib: Option<u32>,
    /// argon2id passes over memory
    #[arg(long, value_name = "N")]
    pub argon2_iterations: Option<u32>,
    /// argon2id lanes
    #[arg(long, value_name = "N")]
    pub argon2_parallelism: Option<u32>,
}

impl KdfArgs {
    fn params(&self) -> KdfParams {
        let d = KdfParams::default();
        KdfParams {
            memory_kib: self.argon2_memory_kib.unwrap_or(d.memory_kib),
            iterations: self.argon2_iterations.unwrap_or(d.iterations),
            parallelism: self.argon2_parallelism.unwrap_or(d.parallelism),
        }
    }
}

pub fn run(g: &Global, cmd: KeystoreCmd) -> Result<()> {
    match cmd {
        KeystoreCmd::Init { kdf, identity } => {
            let path = g.keystore_path();
            let params = kdf.params();
            params.validate().map_err(crate::Error::InvalidArgument)?;
            identity.validate()?;
            if path.exists() {
                // Say so before asking for a passphrase that would be thrown away.
                return Err(crate::keystore::already_exists(&path));
            }
            let pass = g.passphrase(true)?;
            let (mut ks, _root) = Keystore::create(&path, &pass, params)?;
            ks.set_identity(identity.account_id.as_deref(), identity.region.as_deref())?;
            if g.json {
                output::json(&ks.info()?);
            } else {
                println!("created keystore {} (id {})", path.display(), ks.keystore_id()?);
            }
            Ok(())
        }
        KeystoreCmd::Passwd { new_passphrase_file, kdf } => {
            let mut session = Session::open(g)?;
            let new = passphrase::obtain(
                new_passphrase_file.as_deref(),
                "KMSFS_NEW_PASSPHRASE",
                "New passphrase: ",
                true,
            )?;
            let me = session.me.clone();
            session.kms.change_passphrase(&me, &new, kdf.params())?;
            if !g.json {
                println!("passphrase changed for {}", g.keystore_path().display());
            }
            Ok(())
        }
        KeystoreCmd::SetIdentity { identity } => {
            identity.validate()?;
            if identity.account_id.is_none() && identity.region.is_none() {
                return Err(crate::Error::InvalidArgument("give --account-id, --region or both".into()));
            }
            let mut session = Session::open(g)?;
            let me = session.me.clone();
            session.kms.set_identity(&me, identity.account_id.as_deref(), identity.region.as_deref())?;
            let ks = session.kms.keystore();
            if !g.json {
                println!(
                    "keystore {} is account {} in {}",
                    g.keystore_path().display(),
                    ks.account_id()?,
                    ks.region()?
                );
            }
            Ok(())
        }
        KeystoreCmd::Info => {
            let session = Session::open(g)?;
            let info = session.kms.keystore().info()?;
            if g.json {
                output::json(&info);
            } else {
                output::fields(&[
                    ("Path", info.path.display().to_string()),
                    ("KeystoreId", info.keystore_id),
                    ("AccountId", info.account_id),
                    ("Region", info.region),
                    ("SchemaVersion", info.schema_version.to_string()),
                    ("Created", format_date(info.created)),
                    (
                        "Argon2id",
                        format!(
                            "{} KiB, {} passes, {} lanes",
                            info.kdf.memory_kib, info.kdf.iterations, info.kdf.parallelism
                        ),
                    ),
                    ("Keys", info.key_count.to_string()),
                    ("Aliases", info.alias_count.to_string()),
                    ("AuditEvents", info.audit_events.to_string()),
                ]);
            }
            Ok(())
        }
    }
}
