//! `kmsfs volume init`, `kmsfs mount`, `kmsfs umount`, `kmsfs file info`.

use std::path::PathBuf;

use clap::Subcommand;

use super::output;
use super::{Global, Session};
use crate::error::{Error, KeyStateError, NotFound, Result, StateProblem};
use crate::mount::{self, control, MountRequest};

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Make an empty directory an encrypted volume (the cipher directory)
    #[command(
        after_help = "Examples:\n  kmsfs volume init ~/vault.enc\n  kmsfs volume init /srv/data.enc --key alias/data"
    )]
    Init {
        cipher_dir: PathBuf,
        /// Encrypt new files under this key [default: a new managed key alias/kmsfs/<name>]
        #[arg(long)]
        key: Option<String>,
        /// The volume's name [default: the directory's name]
        #[arg(long)]
        name: Option<String>,
        /// Where the remote key (--key ARN) is served: https://..., or http:// on loopback
        /// [default: AWS KMS in the ARN's region]
        #[arg(long, value_name = "URL")]
        kms_endpoint: Option<String>,
    },
    /// Copy a volume (a snapshot) for another key and/or another keystore
    Copy(super::copy_cmd::CopyArgs),
    /// Remove the files and directories whose key was destroyed (crypto-shredded)
    PruneShredded(super::fsck_cmd::PruneArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kmsfs mount ~/vault.enc ~/vault\n  kmsfs mount -f /srv/data.enc /data -o allow_other"
)]
pub struct MountArgs {
    pub cipher_dir: PathBuf,
    pub mountpoint: PathBuf,
    /// Stay in the foreground (logs to stderr) instead of running as a daemon
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options: allow_other, allow_root, ro, nosuid, nodev, noexec, atime, ...;
    /// writeback_cache for faster writes whose errors show at fsync/close
    #[arg(short = 'o', value_name = "OPT[,OPT...]", value_delimiter = ',')]
    pub options: Vec<String>,
    /// Re-check each remote key in use at its service every N seconds [default: 60]
    #[arg(long, value_name = "N")]
    pub kms_check_secs: Option<u64>,
    /// Keep keys already unwrapped serving for N seconds while the key service cannot be
    /// reached [default: 300]
    #[arg(long, value_name = "N")]
    pub kms_grace_secs: Option<u64>,
}

fn config_dir(cipher_dir: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(cipher_dir).unwrap_or_else(|_| cipher_dir.to_path_buf())
}

#[derive(Debug, Subcommand)]
pub enum FileCmd {
    /// Show which master key and key version protect a file on a mounted volume
    #[command(after_help = "Example:\n  kmsfs file info ~/vault/report.pdf")]
    Info { path: PathBuf },
}

pub fn run_volume(g: &Global, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Init { cipher_dir, key, name, kms_endpoint } => {
            let mut s = Session::open(g)?;
            let me = s.me.clone();
            let config = crate::volume::init_volume(
                &mut s.kms,
                &me,
                &cipher_dir,
                key.as_deref(),
                name.as_deref(),
                kms_endpoint.as_deref(),
            )?;
            let shown_key = crate::volume::remote_keys::load(&config_dir(&cipher_dir))
                .ok()
                .and_then(|t| t.into_iter().find(|r| r.id == config.default_key_id))
                .map(|r| format!("{} (remote, intermediate key {})", r.key_arn, r.id))
                .unwrap_or_else(|| config.default_key_id.clone());
            if s.json {
                output::json(&config);
            } else {
                println!(
                    "created volume '{}' in {} (files encrypted under key {shown_key})",
                    config.name,
                    cipher_dir.display(),
                );
                println!("mount it with: kmsfs mount {} MOUNTPOINT", cipher_dir.display());
            }
            Ok(())
        }
        VolumeCmd::Copy(args) => super::copy_cmd::run(g, args),
        VolumeCmd::PruneShredded(args) => super::fsck_cmd::run_prune(g, args),
    }
}

pub fn run_mount(g: &Global, args: MountArgs) -> Result<()> {
    let keystore = g.keystore_path();
    let pass = g.passphrase(false)?;
    let mut options = args.options;
    options.extend(args.kms_check_secs.map(|n| format!("kms_check_secs={n}")));
    options.extend(args.kms_grace_secs.map(|n| format!("kms_grace_secs={n}")));
    let request = MountRequest {
        cipher_dir: args.cipher_dir,
        mountpoint: args.mountpoint,
        keystore,
        foreground: args.foreground,
        options,
        word_error: super::errors::describe,
    };
    mount::mount(request, pass)
}

pub fn run_file(g: &Global, cmd: FileCmd) -> Result<()> {
    let FileCmd::Info { path } = cmd;
    require_kmsfs(&path)?;
    if !std::fs::metadata(&path).map_err(|e| Error::io(path.display(), e))?.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a regular file (for a directory: `kmsfs dir get-key`)",
            path.display()
        )));
    }
    let read = |name: &str| -> Result<String> {
        control::get(&path, name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Error::InvalidArgument(format!(
                "{} is not a regular file on a mounted kmsfs volume",
                path.display()
            )),
            _ => Error::io(path.display(), e),
        })
    };
    let key_id = read(control::KEY)?;
    let version = read(control::KEY_VERSION)?;
    if g.json {
        output::json(
            &serde_json::json!({ "Path": path, "KeyId": key_id, "KeyVersion": version.parse::<u32>().ok() }),
        );
    } else {
        output::fields(&[("Path", path.display().to_string()), ("KeyId", key_id), ("KeyVersion", version)]);
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum DirCmd {
    /// Protect a directory of a mounted volume (its names, new files and new
    /// subdirectories) with KEY
    #[command(after_help = "Example:\n  kmsfs dir set-key ~/vault/finance alias/finance")]
    SetKey { path: PathBuf, key: String },
    /// Show which key protects a directory of a mounted volume
    #[command(after_help = "Example:\n  kmsfs dir get-key ~/vault/finance --json")]
    GetKey { path: PathBuf },
}

pub fn run_dir(g: &Global, cmd: DirCmd) -> Result<()> {
    match cmd {
        DirCmd::SetKey { path, key } => {
            require_dir(&path)?;
            control::set(&path, control::KEY, key.as_bytes()).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => Error::NotFound(NotFound::KeyRef(key.clone())),
                Some(libc::ENOKEY) => Error::KeyState(KeyStateError {
                    key_id: key.clone(),
                    state: None,
                    deletion_date: None,
                    problem: StateProblem::UnusableOnMount,
                }),
                Some(libc::ENOTSUP) => not_on_kmsfs(&path),
                _ => Error::io(path.display(), e),
            })?;
            let key_id = read_key(&path, control::KEY)?;
            if g.json {
                output::json(&serde_json::json!({ "Path": path, "KeyId": key_id, "Explicit": true }));
            } else {
                println!("{} is now protected by key {key_id}", path.display());
                println!(
                    "new files and subdirectories created below it use this key; existing files and \
                     subdirectories keep their keys until re-wrapped"
                );
            }
            Ok(())
        }
        DirCmd::GetKey { path } => {
            require_dir(&path)?;
            let key_id = read_key(&path, control::KEY)?;
            let explicit = read_key(&path, control::KEY_EXPLICIT)? == "true";
            if g.json {
                output::json(&serde_json::json!({ "Path": path, "KeyId": key_id, "Explicit": explicit }));
            } else {
                let how = if explicit { "set on this directory" } else { "inherited" };
                output::fields(&[
                    ("Path", path.display().to_string()),
                    ("KeyId", key_id),
                    ("Source", how.into()),
                ]);
            }
            Ok(())
        }
    }
}

fn require_dir(path: &std::path::Path) -> Result<()> {
    if !std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?.is_dir() {
        return Err(Error::InvalidArgument(format!("{} is not a directory", path.display())));
    }
    require_kmsfs(path)
}

/// Refuses paths outside a kmsfs mount, where `user.kmsfs.key` would be an ordinary xattr.
fn require_kmsfs(path: &std::path::Path) -> Result<()> {
    let full = std::fs::canonicalize(path).map_err(|e| Error::io(path.display(), e))?;
    if crate::mount::is_on_kmsfs(&full) {
        Ok(())
    } else {
        Err(not_on_kmsfs(path))
    }
}

fn not_on_kmsfs(path: &std::path::Path) -> Error {
    Error::InvalidArgument(format!("{} is not on a mounted kmsfs volume", path.display()))
}

fn read_key(path: &std::path::Path, name: &str) -> Result<String> {
    control::get(path, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => not_on_kmsfs(path),
        _ => Error::io(path.display(), e),
    })
}
