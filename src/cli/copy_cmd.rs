//! `kmsfs volume copy`: a snapshot copy of an unmounted volume for another key and/or
//! another keystore.

use std::path::{Path, PathBuf};

use super::{output, passphrase, Global, Session, VolumeSession};
use crate::error::{Error, Result};
use crate::kms::Clock;
use crate::volume::copy::{new_config, wrap_names_key, Copier, CopyReport, KeyMap, Side};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  kmsfs volume copy ~/vault.enc /backup/vault.enc --to-key alias/backup
  kmsfs volume copy ~/vault.enc /mnt/usb/vault.enc --to-keystore /mnt/usb/keystore.db \\
      --to-key alias/offsite --to-passphrase-file /root/offsite.pass
  kmsfs volume copy ~/vault.enc /srv/vault.enc \\
      --to-key arn:aws:kms:eu-west-1:111122223333:key/... --kms-endpoint https://kms.example

Data blocks are copied as they are (holes stay holes); every wrapped key is unwrapped
with the source keystore and wrapped again for the destination. The copy gets a new
volume id and mounts with the destination keystore only. The source is only read.

With --to-keystore and no --to-key, the volume's keys must all be multi-Region keys
replicated in the destination keystore (`kmsfs key replicate`): the cipher directory is then
copied byte for byte, keeping its volume id, and no key is re-wrapped (one unwrap in the
destination proves the replicas open it). The source keystore is not opened.")]
pub struct CopyArgs {
    /// The source cipher directory (not mounted)
    pub source: PathBuf,
    /// The new cipher directory (absent or empty)
    pub destination: PathBuf,
    /// Wrap everything under this key of the destination keystore [default: each item
    /// keeps its key; with --to-keystore, only for volumes whose keys are all multi-Region
    /// keys replicated there, copied without re-wrapping]
    #[arg(long)]
    pub to_key: Option<String>,
    /// The destination keystore [default: the source's keystore]
    #[arg(long, value_name = "PATH")]
    pub to_keystore: Option<PathBuf>,
    /// The destination keystore's passphrase file [default: KMSFS_TO_PASSPHRASE, or a prompt]
    #[arg(long, env = "KMSFS_TO_PASSPHRASE_FILE", value_name = "PATH")]
    pub to_passphrase_file: Option<PathBuf>,
    /// The copy's name [default: the source volume's name]
    #[arg(long)]
    pub name: Option<String>,
    /// Where a remote --to-key (an ARN) is served: https://..., or http:// on loopback
    /// [default: AWS KMS in the ARN's region]
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
}

pub fn run(g: &Global, args: CopyArgs) -> Result<()> {
    let source = std::fs::canonicalize(&args.source).map_err(|e| Error::io(args.source.display(), e))?;
    if let Some(at) = crate::mount::mounted_at(&source) {
        return Err(Error::InvalidArgument(format!(
            "{} is mounted at {}; unmount it first (`kmsfs umount {}`) so the copy is consistent",
            source.display(),
            at.display(),
            at.display()
        )));
    }
    let destination = prepare_destination(&source, &args.destination)?;
    let other_keystore = match &args.to_keystore {
        Some(path) => {
            std::fs::canonicalize(path).map_err(|e| Error::io(path.display(), e))?
                != std::fs::canonicalize(g.keystore_path()).unwrap_or_default()
        }
        None => false,
    };
    if other_keystore && args.to_key.is_none() {
        return copy_to_replicas(g, &args, &source, &destination);
    }
    let src = VolumeSession::open(g, &source)?;
    let dst_session = match (&args.to_keystore, other_keystore) {
        (Some(path), true) => {
            let prompt = format!("Passphrase for {}: ", path.display());
            let file = args.to_passphrase_file.as_deref();
            let session = Session::open_at(
                path,
                || passphrase::obtain(file, "KMSFS_TO_PASSPHRASE", &prompt, false),
                g.json,
            )?;
            let keystore_id = session.kms.keystore().keystore_id()?;
            Some((keystore_id, session.into_ring()?))
        }
        _ => None,
    };
    let (dst_keys, dst_keystore_id) = match &dst_session {
        Some((id, keys)) => (keys, id.clone()),
        None => (&src.keys, src.config.keystore_id.clone()),
    };
    let (dst_ring, dst_me) = (&dst_keys.ring, &dst_keys.me);
    let remote_to_key = args.to_key.as_deref().filter(|k| crate::kms::remote::is_remote_key(k));
    if args.kms_endpoint.is_some() && remote_to_key.is_none() {
        return Err(Error::InvalidArgument(
            "--kms-endpoint needs --to-key naming a remote key (an ARN such as arn:aws:kms:REGION:ACCOUNT:key/ID)"
                .into(),
        ));
    }
    if let Some(url) = &args.kms_endpoint {
        crate::kms::remote::http::Endpoint::parse(url)?;
    }
    // A local --to-key is checked before anything is written.
    let local_to_key = args
        .to_key
        .as_deref()
        .filter(|_| remote_to_key.is_none())
        .map(|k| dst_ring.resolve(k))
        .transpose()?;
    let now = crate::kms::SystemClock::from_env().map_err(Error::InvalidArgument)?.now_secs();
    let src_side = Side { ring: &src.keys.ring, caller: &src.keys.me, config: &src.config };
    let mut config = new_config(&src.config, &dst_keystore_id, now);
    if let Some(name) = &args.name {
        config.name = crate::volume::alias_safe_name(name);
    }
    std::fs::create_dir_all(&destination).map_err(|e| Error::io(destination.display(), e))?;
    // The copy's own intermediate keys: their encryption context names the new volume.
    let dst_remote = crate::volume::remote_keys::open(&destination, &config, Default::default())?;
    dst_ring.attach_remote(dst_remote.clone());
    let created = crate::kms::clock::format_date(now);
    let to_key = match remote_to_key {
        Some(arn) => Some(dst_remote.intermediate_for(arn, args.kms_endpoint.as_deref(), &created)?),
        None => local_to_key,
    };
    let map = KeyMap { to_key, src_remote: src.keys.ring.remote(), dst_remote, created };
    wrap_names_key(&src_side, dst_ring, dst_me, &mut config, &map)?;
    let bar = output::Progress::spinner(g.json);
    let mut progress = |r: &CopyReport| {
        bar.show(|| format!("{} files, {} directories, {} MiB", r.files, r.directories, r.bytes_copied >> 20))
    };
    let dst_side = Side { ring: dst_ring, caller: dst_me, config: &config };
    let report = Copier::new(src_side, dst_side, &map, &mut progress).run(&source, &destination);
    bar.finish();
    if let Some((_, keys)) = dst_session {
        keys.close();
    }
    src.keys.close();
    let report = report?;
    if g.json {
        output::json(&report);
    } else {
        println!(
            "copied {} files, {} directories, {} symlinks ({} MiB of ciphertext) in {:.2} s to {}",
            report.files,
            report.directories,
            report.symlinks,
            report.bytes_copied >> 20,
            report.seconds,
            destination.display()
        );
        println!(
            "volume id {}, files wrapped under key {}",
            report.volume_id,
            dst_ring_name(&report.default_key_id, &destination)
        );
        for e in &report.errors {
            eprintln!("kmsfs: {e}");
        }
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{} item(s) could not be copied (listed above); {} is incomplete and not a volume",
            report.errors.len(),
            destination.display()
        )))
    }
}

/// The destination must be absent or empty, and neither inside the source nor around it.
fn prepare_destination(source: &Path, destination: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(destination).map_err(|e| Error::io(destination.display(), e))?;
    let resolved = std::fs::canonicalize(&absolute).unwrap_or(absolute);
    if resolved.starts_with(source) || source.starts_with(&resolved) {
        return Err(Error::InvalidArgument(format!(
            "{} and {} overlap; copy to a directory outside the volume",
            source.display(),
            resolved.display()
        )));
    }
    if let Ok(mut entries) = std::fs::read_dir(&resolved) {
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!("{} is not empty", resolved.display())));
        }
    }
    Ok(resolved)
}

/// The copy of a volume whose keys are multi-Region keys replicated in the destination
/// keystore: bytes as they are, the config naming the destination keystore.
fn copy_to_replicas(g: &Global, args: &CopyArgs, source: &Path, destination: &Path) -> Result<()> {
    use crate::volume::copy_as_is;
    let path = args.to_keystore.as_deref().expect("called with --to-keystore");
    let config = crate::volume::VolumeConfig::load(source)?;
    let keys = copy_as_is::keys_used(source, &config)?;
    if let Some(single) = keys.keys().find(|k| !crate::kms::keyid::is_mrk_id(k)) {
        return Err(Error::InvalidArgument(format!(
            "--to-key is required with --to-keystore: the volume uses key {single}, a single-Region key, \
             which does not exist in another keystore (only multi-Region keys replicated there do)"
        )));
    }
    let prompt = format!("Passphrase for {}: ", path.display());
    let file = args.to_passphrase_file.as_deref();
    let session =
        Session::open_at(path, || passphrase::obtain(file, "KMSFS_TO_PASSPHRASE", &prompt, false), g.json)?;
    let mut to_config = config.clone();
    to_config.keystore_id = session.kms.keystore().keystore_id()?;
    if let Some(name) = &args.name {
        to_config.name = crate::volume::alias_safe_name(name);
    }
    let keys_ring = session.into_ring()?;
    let checked = copy_as_is::check_destination(&keys_ring.ring, &keys_ring.me, &config, &keys);
    keys_ring.close();
    checked?;
    std::fs::create_dir_all(destination).map_err(|e| Error::io(destination.display(), e))?;
    let report = copy_as_is::copy(source, destination, &to_config, &keys)?;
    if g.json {
        output::json(&report);
    } else {
        println!(
            "copied {} files, {} directories, {} symlinks ({} MiB) in {:.2} s to {} as they are: \
             keys {} are multi-Region keys replicated there, no key re-wrapped",
            report.files,
            report.directories,
            report.symlinks,
            report.bytes_copied >> 20,
            report.seconds,
            destination.display(),
            report.keys.join(", ")
        );
    }
    Ok(())
}

/// The copy's default key as people know it: a remote key's ARN for an intermediate key.
fn dst_ring_name(key_id: &str, destination: &Path) -> String {
    crate::volume::remote_keys::load(destination)
        .ok()
        .and_then(|t| t.into_iter().find(|r| r.id == key_id))
        .map(|r| format!("{} (remote, intermediate key {key_id})", r.key_arn))
        .unwrap_or_else(|| key_id.to_string())
}
