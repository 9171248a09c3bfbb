//! `kmsfs volume init`, `kmsfs mount`, `kmsfs umount`, `kmsfs file info`.

use std::path::PathBuf;

use clap::Subcommand;

use super::output;
use super::{Global, Session};
use crate::error::{Error, Result};
use crate::mount::{self, MountRequest};

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
    },
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
    /// Mount options: allow_other, allow_root, ro, nosuid, nodev, noexec, noatime, ...
    #[arg(short = 'o', value_name = "OPT[,OPT...]", value_delimiter = ',')]
    pub options: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum FileCmd {
    /// Show which master key and key version protect a file on a mounted volume
    #[command(after_help = "Example:\n  kmsfs file info ~/vault/report.pdf")]
    Info { path: PathBuf },
}

pub fn run_volume(g: &Global, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Init { cipher_dir, key, name } => {
            let mut s = Session::open(g)?;
            let me = s.me.clone();
            let config =
                crate::volume::init_volume(&mut s.kms, &me, &cipher_dir, key.as_deref(), name.as_deref())?;
            if s.json {
                output::json(&config);
            } else {
                println!(
                    "created volume '{}' in {} (files encrypted under key {})",
                    config.name,
                    cipher_dir.display(),
                    config.default_key_id
                );
                println!("mount it with: kmsfs mount {} MOUNTPOINT", cipher_dir.display());
            }
            Ok(())
        }
    }
}

pub fn run_mount(g: &Global, args: MountArgs) -> Result<()> {
    let keystore = g.keystore_path();
    let pass = g.passphrase(false)?;
    let request = MountRequest {
        cipher_dir: args.cipher_dir,
        mountpoint: args.mountpoint,
        keystore,
        foreground: args.foreground,
        options: args.options,
    };
    mount::mount(request, &pass)
}

pub fn run_file(g: &Global, cmd: FileCmd) -> Result<()> {
    let FileCmd::Info { path } = cmd;
    require_kmsfs(&path)?;
    let read = |name: &str| -> Result<String> {
        xattr_get(&path, name).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Error::InvalidArgument(format!(
                "{} is not a regular file on a mounted kmsfs volume",
                path.display()
            )),
            _ => Error::io(path.display(), e),
        })
    };
    let key_id = read("user.kmsfs.key")?;
    let version = read("user.kmsfs.key_version")?;
    if g.json {
        output::json(
            &serde_json::json!({ "Path": path, "KeyId": key_id, "KeyVersion": version.parse::<u32>().ok() }),
        );
    } else {
        output::fields(&[("Path", path.display().to_string()), ("KeyId", key_id), ("KeyVersion", version)]);
    }
    Ok(())
}

fn xattr_get(path: &std::path::Path, name: &str) -> std::io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let c_name = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` has the length passed.
    let n = unsafe { libc::getxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[derive(Debug, Subcommand)]
pub enum DirCmd {
    /// Protect a directory of a mounted volume (its names, new files and new
    /// subdirectories) with KEY
    #[command(after_help = "Example:\n  kmsfs dir set-key ~/vault/finance alias/finance")]
    SetKey { path: PathBuf, key: String },
    /// Show which key protects a directory of a mounted volume
    GetKey { path: PathBuf },
}

pub fn run_dir(g: &Global, cmd: DirCmd) -> Result<()> {
    match cmd {
        DirCmd::SetKey { path, key } => {
            require_dir(&path)?;
            xattr_set(&path, "user.kmsfs.key", key.as_bytes()).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => Error::NotFound(format!("unknown key '{key}' (see `kmsfs key list`)")),
                Some(libc::ENOKEY) => Error::KeyState(format!(
                    "a key involved is not usable (disabled or pending deletion): the directory's current key, or {key}"
                )),
                Some(libc::ENOTSUP) => not_on_kmsfs(&path),
                _ => Error::io(path.display(), e),
            })?;
            let key_id = read_key(&path, "user.kmsfs.key")?;
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
            let key_id = read_key(&path, "user.kmsfs.key")?;
            let explicit = read_key(&path, "user.kmsfs.key_explicit")? == "true";
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
    xattr_get(path, name).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => not_on_kmsfs(path),
        _ => Error::io(path.display(), e),
    })
}

fn xattr_set(path: &std::path::Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: NUL-terminated strings and a value slice of the length passed.
    let rc =
        unsafe { libc::setxattr(c_path.as_ptr(), c_name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kmsfs rewrap ~/vault.enc                               # catch up with key rotation\n  kmsfs rewrap ~/vault.enc --path finance --to-key alias/finance"
)]
pub struct RewrapArgs {
    /// The cipher directory (the volume must not be mounted)
    pub cipher_dir: PathBuf,
    /// Only this directory (a path inside the volume, e.g. finance/2026) and what is below it
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Move every file and directory below PATH to this key [default: each keeps its key and
    /// moves to the key's current version]
    #[arg(long)]
    pub to_key: Option<String>,
}

/// `kmsfs rewrap`: every data key and names key under the current key version or another
/// key, without rewriting data.
pub fn run_rewrap(g: &Global, args: RewrapArgs) -> Result<()> {
    use std::io::IsTerminal;
    use std::sync::Arc;

    use crate::kms::audit_writer::AuditWriter;
    use crate::kms::keyring::KeyRing;
    use crate::volume::rewrap::{resolve_dir, Rewrapper};

    let cipher_dir = std::fs::canonicalize(&args.cipher_dir)
        .map_err(|e| Error::io(format!("cipher directory {}", args.cipher_dir.display()), e))?;
    let config = crate::volume::VolumeConfig::load(&cipher_dir)?;
    if crate::mount::is_mounted_cipher_dir(&cipher_dir) {
        return Err(Error::InvalidArgument(format!(
            "{} is mounted; unmount it first (kmsfs rewrap works on unmounted volumes)",
            cipher_dir.display()
        )));
    }
    let Session { kms, me, json } = Session::open(g)?;
    if kms.keystore().keystore_id()? != config.keystore_id {
        return Err(Error::InvalidArgument(format!(
            "volume {} belongs to keystore {}, not to {}",
            cipher_dir.display(),
            config.keystore_id,
            g.keystore_path().display()
        )));
    }
    let to_key = args.to_key.as_deref().map(|k| kms.resolve_key_id(k)).transpose()?;
    let (root, clock) = (kms.root_key().clone(), Arc::clone(kms.clock()));
    let (sink, writer) = AuditWriter::spawn(kms, me.clone()).map_err(|e| Error::io("audit writer", e))?;
    let ring = KeyRing::open(&g.keystore_path(), root, clock, sink)?;
    let rel = args.path.clone().unwrap_or_default();
    let start = resolve_dir(&ring, &me, &config, &cipher_dir, &rel)?;
    let bar = if std::io::stderr().is_terminal() && !json {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .expect("valid progress template"),
        );
        Some(bar)
    } else {
        None
    };
    let mut progress = |r: &crate::volume::rewrap::RewrapReport| {
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{} files, {} re-wrapped, {} directories",
                r.files, r.files_rewrapped, r.directories
            ));
            bar.tick();
        }
    };
    let plain_start = format!("/{}", rel.display());
    let report = Rewrapper::new(&ring, &me, &config, to_key, &mut progress).run(&start, &plain_start)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    drop(ring);
    writer.finish();
    if json {
        output::json(&report);
    } else {
        println!(
            "{} files ({} re-wrapped) and {} directories ({} re-wrapped) in {:.2} s: {:.0} files/s; no data block rewritten",
            report.files,
            report.files_rewrapped,
            report.directories,
            report.directories_rewrapped,
            report.seconds,
            report.files_per_second()
        );
        for e in &report.errors {
            eprintln!("kmsfs: {e}");
        }
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{} item(s) could not be re-wrapped (listed above); run again once fixed",
            report.errors.len()
        )))
    }
}
