//! `kmsfs volume copy --to-keystore` of a volume whose keys are all multi-Region keys
//! replicated in the destination keystore: the cipher directory is copied byte for byte and
//! only `kmsfs.volume`'s keystore id changes. No header is re-wrapped: the wrapped keys name
//! the keys by id and version and are bound to the volume id (kept), never to a keystore, so
//! the replicas open them as they are. Key work is one unwrap (the volume's names key, through
//! the destination's ring, proving the replicas open it) whatever the number of files.
//!
//! The walk reads each file's header and each directory's metadata to learn which keys and
//! versions the volume uses (no unwrap), and refuses before copying anything if one is a
//! single-Region key, has no replica there, or lacks a version there (sync first).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dirmeta::{DirMeta, DIR_META};
use super::lock::LOCK_NAME;
use super::{VolumeConfig, CONFIG_NAME};
use crate::content::header::MAGIC;
use crate::content::{FileHeader, HEADER_LEN};
use crate::error::{Error, NotFound, Result};
use crate::kms::blob::BlobHeader;
use crate::kms::keyid;
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::Principal;
use crate::sys;

/// Every key the volume's wrapped keys name, with the highest version used of each.
pub type KeysUsed = BTreeMap<String, u32>;

#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AsIsReport {
    pub volume_id: String,
    /// The keys the copy's wrapped keys name (all multi-Region).
    pub keys: Vec<String>,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes_copied: u64,
    /// Wrapped keys re-wrapped: none.
    pub headers_rewrapped: u64,
    pub seconds: f64,
}

fn note(keys: &mut KeysUsed, blob: &[u8]) {
    if let Ok((h, _)) = BlobHeader::parse(blob) {
        let v = keys.entry(h.key_id).or_insert(0);
        *v = (*v).max(h.key_version);
    }
}

/// The keys (and versions) the volume in `cipher_dir` uses, read from its config, every
/// directory's metadata and every file's header; nothing is unwrapped.
pub fn keys_used(cipher_dir: &Path, config: &VolumeConfig) -> Result<KeysUsed> {
    let mut keys = KeysUsed::new();
    note(&mut keys, &config.names_key_blob()?);
    scan(cipher_dir, &mut keys)?;
    Ok(keys)
}

fn scan(dir: &Path, keys: &mut KeysUsed) -> Result<()> {
    for meta in DirMeta::load_copies(dir)? {
        keys.entry(meta.key_id.clone()).or_insert(0);
        if let Some(blob) = meta.names_key_blob() {
            note(keys, &blob);
        }
    }
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))? {
        let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
        let kind = entry.file_type().map_err(|e| Error::io(entry.path().display(), e))?;
        if kind.is_dir() {
            scan(&entry.path(), keys)?;
        } else if kind.is_file() {
            let f =
                sys::open_noatime(&entry.path(), false).map_err(|e| Error::io(entry.path().display(), e))?;
            let mut head = vec![0u8; HEADER_LEN as usize];
            if f.read_exact_at(&mut head, 0).is_ok() && head.starts_with(MAGIC) {
                if let Ok(header) = FileHeader::parse(&head) {
                    for slot in header.candidates() {
                        note(keys, &slot.blob);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Refuses a destination where the volume would not open: a key that is single-Region, has
/// no replica there, or lacks a version; then opens the names key through `ring` once.
pub fn check_destination(
    ring: &KeyRing,
    caller: &Principal,
    config: &VolumeConfig,
    keys: &KeysUsed,
) -> Result<()> {
    for (key_id, version) in keys {
        if !keyid::is_mrk_id(key_id) {
            return Err(Error::InvalidArgument(format!(
                "key {key_id} is a single-Region key, which the other keystore cannot hold: copy with \
                 --to-key KEY, which re-wraps every file's key for the destination"
            )));
        }
        let current = ring.current_version(key_id).map_err(|_| {
            Error::NotFound(NotFound::Other(format!(
                "multi-Region key {key_id} has no replica in the destination keystore; \
                 `kmsfs key replicate {key_id} --replica-keystore ...` first"
            )))
        })?;
        if current < *version {
            return Err(Error::InvalidArgument(format!(
                "the replica of key {key_id} has versions up to {current}, the volume uses version \
                 {version}: `kmsfs key sync --replica-keystore ...` first"
            )));
        }
    }
    config.unwrap_names_key(ring, Access { caller, path: "/" })?;
    Ok(())
}

/// Copies the cipher directory `src` into the empty `dst` byte for byte (holes stay holes,
/// hard links stay linked), then writes `config` (the source's, naming the destination
/// keystore) last, so a cut-short copy is not a volume.
pub fn copy(src: &Path, dst: &Path, config: &VolumeConfig, keys: &KeysUsed) -> Result<AsIsReport> {
    let began = Instant::now();
    let mut copier = Tree { links: HashMap::new(), report: AsIsReport::default() };
    copier.directory(src, dst, true)?;
    config.save(dst)?;
    sys::sync_filesystem(dst);
    let mut report = copier.report;
    report.volume_id = config.volume_id.clone();
    report.keys = keys.keys().cloned().collect();
    report.seconds = began.elapsed().as_secs_f64();
    Ok(report)
}

struct Tree {
    links: HashMap<(u64, u64), PathBuf>,
    report: AsIsReport,
}

impl Tree {
    fn directory(&mut self, src: &Path, dst: &Path, top: bool) -> Result<()> {
        self.report.directories += 1;
        let mut entries: Vec<_> =
            std::fs::read_dir(src).map_err(|e| Error::io(src.display(), e))?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            // The lock belongs to the source's mounts; the config is written last.
            if top && (name == LOCK_NAME || name == CONFIG_NAME) {
                continue;
            }
            let (from, to) = (src.join(&name), dst.join(&name));
            self.entry(&from, &to, name == DIR_META).map_err(|e| match e {
                Error::Io(msg) => Error::Io(format!("{}: {msg}", from.display())),
                other => other,
            })?;
        }
        super::copy::copy_attributes(src, dst)
            .map_err(|e| Error::io(format!("{}: attributes", src.display()), e))
    }

    fn entry(&mut self, src: &Path, dst: &Path, bookkeeping: bool) -> Result<()> {
        let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io("stat", e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(dst).map_err(|e| Error::io("mkdir", e))?;
            return self.directory(src, dst, false);
        }
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                return std::fs::hard_link(first, dst).map_err(|e| Error::io("link", e));
            }
            self.links.insert((meta.dev(), meta.ino()), dst.to_path_buf());
        }
        if kind.is_file() {
            if !bookkeeping {
                self.report.files += 1;
            }
            let from = sys::open_noatime(src, false).map_err(|e| Error::io("open", e))?;
            let to = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(dst)
                .map_err(|e| Error::io("create", e))?;
            let len = meta.len();
            self.report.bytes_copied +=
                sys::copy_sparse(&from, &to, 0, len).map_err(|e| Error::io("copy", e))?;
            to.set_len(len).map_err(|e| Error::io("set length", e))?;
        } else if kind.is_symlink() {
            self.report.symlinks += 1;
            let target = std::fs::read_link(src).map_err(|e| Error::io("readlink", e))?;
            std::os::unix::fs::symlink(target, dst).map_err(|e| Error::io("symlink", e))?;
        } else {
            sys::c_path(dst)
                .and_then(|path| sys::mknod(&path, meta.mode(), meta.rdev()))
                .map_err(|e| Error::io("mknod", e))?;
        }
        super::copy::copy_attributes(src, dst).map_err(|e| Error::io("attributes", e))
    }
}
