//! Re-wrapping: a file's data key, a directory's names key or the volume's names key is
//! wrapped again under the current version of its key (rotation catch-up) or under another
//! key, without touching a single data block — O(files), not O(bytes).
//!
//! The per-item functions here are shared by the offline walker ([`Rewrapper`], for an
//! unmounted volume) and by the mount (the `user.kmsfs.rewrap` control attribute, for a
//! live volume), so both make the same crash-safe writes:
//! - a file's new wrap goes into the header slot that is *not* the one that unwrapped, so
//!   a crash at any moment leaves the old or the new slot readable;
//! - a directory's metadata is replaced copy by copy, each atomically.
//!
//! Items already wrapped under the target key version are skipped, so an interrupted run is
//! resumed by running it again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dirmeta::{DirKeys, DirMeta};
use super::file_keys::unwrap_header;
use super::VolumeConfig;
use crate::content::names::{EntryName, NameCipher};
use crate::content::FileHeader;
use crate::encoding::hex;
use crate::error::{Error, Result};
use crate::kms::blob::BlobHeader;
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::Principal;

/// The key a wrap by `key_id` at `version` should move to, or `None` if it is up to date:
/// `to_key` if given, else the current version of its own key.
pub fn target_key(
    ring: &KeyRing,
    to_key: Option<&str>,
    key_id: &str,
    version: u32,
) -> Result<Option<String>> {
    let key = to_key.unwrap_or(key_id);
    let current = ring.current_version(key)?;
    Ok((key != key_id || version != current).then(|| key.to_string()))
}

/// Re-wraps one file's data key if it is not under the target (or if its newest slot is
/// damaged). `file` is the backing file, opened read-write. Returns whether it was written.
///
/// Within the same key the new wrap goes into the other slot and the old one stays as a
/// fallback. Moving to another key clears the old slot in the same write (both slots share
/// the header's first sector), so that destroying the new key really shreds the file and
/// the old key's policy no longer applies to it.
pub fn rewrap_file(
    ring: &KeyRing,
    access: Access<'_>,
    config: &VolumeConfig,
    file: &File,
    to_key: Option<&str>,
) -> Result<bool> {
    let mut found = unwrap_header(ring, access, config, file)?;
    let by = &found.wrapped_by;
    let target = match target_key(ring, to_key, &by.key_id, by.key_version)? {
        Some(key) => key,
        // Up to date, but the newer slot does not unwrap: rewrite it so that both are good.
        None if !found.newest => by.key_id.clone(),
        None => return Ok(false),
    };
    if target != by.key_id {
        ring.check_move(access, &by.key_id, &target)?;
    }
    let ctx = config.file_context(&found.header.file_id);
    let new_blob = ring.wrap_data_key(access, &target, &ctx, &found.data_key)?;
    let slot = found.header.rewrap(found.slot, new_blob);
    let (offset, bytes) = if target != by.key_id {
        found.header.clear_slot(found.slot);
        (FileHeader::slot_offset(0), found.header.encode_slots().to_vec())
    } else {
        (FileHeader::slot_offset(slot), found.header.encode_slot(slot).to_vec())
    };
    file.write_all_at(&bytes, offset as u64).map_err(|e| Error::io("cannot write the header", e))?;
    Ok(true)
}

/// Opens a backing file for [`rewrap_file`].
pub fn open_for_rewrap(path: &Path) -> Result<File> {
    crate::sys::open_noatime(path, true).map_err(|e| Error::io("cannot open", e))
}

/// Re-wraps a directory's names key if it is not under the target; `mark_explicit` records
/// that the key was chosen for this directory (`dir set-key`). Returns the directory's keys
/// as they now are, and whether its metadata was written.
pub fn rewrap_dir(
    ring: &KeyRing,
    access: Access<'_>,
    volume_id: &str,
    dir: &Path,
    to_key: Option<&str>,
    mark_explicit: bool,
) -> Result<(DirKeys, bool)> {
    let copies = DirMeta::load_copies(dir)?;
    let mut keys = DirMeta::unwrap_any(&copies, ring, access, volume_id)?;
    let target = target_key(ring, to_key, &keys.key_id, keys.key_version)?;
    let explicit = keys.explicit || mark_explicit;
    if target.is_none() && explicit == keys.explicit {
        return Ok((keys, false));
    }
    let key = target.unwrap_or_else(|| keys.key_id.clone());
    if key != keys.key_id {
        ring.check_move(access, &keys.key_id, &key)?;
    }
    let ctx = DirMeta::context(volume_id, &hex(&keys.iv));
    let blob = ring.wrap_data_key(access, &key, &ctx, &keys.names_key)?;
    DirMeta::new(&key, explicit, &keys.iv, &blob).save(dir)?;
    keys.key_version = BlobHeader::parse(&blob)?.0.key_version;
    keys.key_id = key;
    keys.explicit = explicit;
    Ok((keys, true))
}

/// Re-wraps the volume's own names key (symlink targets, xattrs) in `kmsfs.volume`. Moving
/// it to another key makes that key the volume's default key too. Returns whether the
/// configuration was written.
pub fn rewrap_volume_key(
    ring: &KeyRing,
    access: Access<'_>,
    cipher_dir: &Path,
    to_key: Option<&str>,
) -> Result<bool> {
    let mut config = VolumeConfig::load(cipher_dir)?;
    let (names_key, wrapped_by) = config.unwrap_names_key(ring, access)?;
    let Some(target) = target_key(ring, to_key, &wrapped_by.key_id, wrapped_by.key_version)? else {
        return Ok(false);
    };
    if target != wrapped_by.key_id {
        ring.check_move(access, &wrapped_by.key_id, &target)?;
    }
    let wrapped = ring.wrap_data_key(access, &target, &config.names_context(), &names_key)?;
    config.set_names_key_blob(&wrapped);
    if to_key.is_some() {
        config.default_key_id = target;
    }
    config.save(cipher_dir)?;
    Ok(true)
}

/// What a run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RewrapReport {
    pub files: u64,
    pub files_rewrapped: u64,
    pub directories: u64,
    pub directories_rewrapped: u64,
    /// Whether the volume's own names key was re-wrapped (runs over the whole volume).
    pub volume_key_rewrapped: bool,
    /// Whether the run went through a live mount.
    pub live: bool,
    /// Intermediate keys re-wrapped at their remote key service (`kms::remote`).
    pub intermediate_keys_rewrapped: u64,
    pub errors: Vec<String>,
    pub seconds: f64,
}

impl RewrapReport {
    pub fn files_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.files as f64 / self.seconds
        } else {
            self.files as f64
        }
    }
}

/// One run over an unmounted volume.
pub struct Rewrapper<'a> {
    pub ring: &'a KeyRing,
    pub caller: &'a Principal,
    pub config: &'a VolumeConfig,
    /// Move everything to this key id; `None`: each item stays with its own key.
    pub to_key: Option<String>,
    /// Called after each file or directory, for a progress display.
    pub progress: &'a mut dyn FnMut(&RewrapReport),
    report: RewrapReport,
}

impl<'a> Rewrapper<'a> {
    pub fn new(
        ring: &'a KeyRing,
        caller: &'a Principal,
        config: &'a VolumeConfig,
        to_key: Option<String>,
        progress: &'a mut dyn FnMut(&RewrapReport),
    ) -> Self {
        Rewrapper { ring, caller, config, to_key, progress, report: RewrapReport::default() }
    }

    /// Re-wraps everything below `start` (a backing directory; the volume key too when it
    /// is the cipher directory itself), then syncs the file system.
    pub fn run(mut self, cipher_dir: &Path, start: &Path, plain_start: &str) -> Result<RewrapReport> {
        let began = Instant::now();
        if start == cipher_dir {
            let access = Access { caller: self.caller, path: "/" };
            match rewrap_volume_key(self.ring, access, cipher_dir, self.to_key.as_deref()) {
                Ok(done) => self.report.volume_key_rewrapped = done,
                Err(e) => self.report.errors.push(format!("volume names key: {e}")),
            }
        }
        self.directory(start, plain_start, true);
        // One sync at the end instead of one per file: a crash before it loses only new
        // slots, and the old ones are still there.
        crate::sys::sync_filesystem(start);
        self.report.seconds = began.elapsed().as_secs_f64();
        Ok(self.report)
    }

    fn directory(&mut self, dir: &Path, plain: &str, top: bool) {
        self.report.directories += 1;
        let access = Access { caller: self.caller, path: plain };
        // Moving a tree to a key marks its top directory as set there; below, the key is
        // inherited as if the tree had been created under it.
        let mark = top && self.to_key.is_some();
        let names =
            match rewrap_dir(self.ring, access, &self.config.volume_id, dir, self.to_key.as_deref(), mark) {
                Ok((keys, written)) => {
                    self.report.directories_rewrapped += written as u64;
                    NameCipher::new(&keys.names_key, &keys.iv)
                }
                Err(e) => {
                    self.report.errors.push(format!("{plain}: {e}"));
                    return;
                }
            };
        (self.progress)(&self.report);
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.report.errors.push(format!("{plain}: {e}"));
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let plain_name = match names.entry_name(dir, &name) {
                EntryName::Plain(n) => n,
                EntryName::Internal => continue,
                EntryName::Undecryptable => {
                    self.report.errors.push(format!("{plain}: entry {name:?} does not decrypt"));
                    continue;
                }
            };
            let child_plain = format!("{}/{}", plain.trim_end_matches('/'), plain_name.to_string_lossy());
            let path = dir.join(&name);
            match entry.file_type() {
                Ok(t) if t.is_dir() => self.directory(&path, &child_plain, false),
                Ok(t) if t.is_file() => {
                    self.report.files += 1;
                    let access = Access { caller: self.caller, path: &child_plain };
                    let result = open_for_rewrap(&path).and_then(|f| {
                        rewrap_file(self.ring, access, self.config, &f, self.to_key.as_deref())
                    });
                    match result {
                        Ok(written) => self.report.files_rewrapped += written as u64,
                        Err(e) => self.report.errors.push(format!("{child_plain}: {e}")),
                    }
                    (self.progress)(&self.report);
                }
                _ => {}
            }
        }
    }
}

/// The backing directory of plaintext path `rel` (like "finance/2026") in a volume.
pub fn resolve_dir(
    ring: &KeyRing,
    caller: &Principal,
    config: &VolumeConfig,
    cipher_dir: &Path,
    rel: &Path,
) -> Result<PathBuf> {
    let mut dir = cipher_dir.to_path_buf();
    let mut plain = String::new();
    for part in rel.components() {
        let std::path::Component::Normal(name) = part else { continue };
        let label = format!("/{plain}");
        let keys = DirMeta::unwrap_any(
            &DirMeta::load_copies(&dir)?,
            ring,
            Access { caller, path: &label },
            &config.volume_id,
        )?;
        let stored = NameCipher::new(&keys.names_key, &keys.iv).encrypt(name);
        dir = dir.join(stored.entry());
        plain = format!("{plain}{}{}", if plain.is_empty() { "" } else { "/" }, name.to_string_lossy());
        if !dir.is_dir() {
            return Err(Error::not_found(format!("/{plain} is not a directory of this volume")));
        }
    }
    Ok(dir)
}
