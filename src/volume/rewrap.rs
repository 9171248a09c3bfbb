//! Re-wrapping an unmounted volume: every file's data key and every directory's names key
//! is wrapped again under the current version of its key (rotation catch-up) or under
//! another key, without touching a single data block — O(files), not O(bytes).
//!
//! Per file the new wrap goes into the header slot with the older sequence number, so a
//! crash at any moment leaves the old or the new slot readable. Files already wrapped under
//! the target key version are skipped, so an interrupted run is resumed by running it again.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::dirmeta::DirMeta;
use super::dirnames::{DirNames, EntryName};
use super::VolumeConfig;
use crate::error::{Error, Result};
use crate::format::{FileHeader, HEADER_LEN};
use crate::keystore::hex;
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::Principal;

/// What a run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RewrapReport {
    pub files: u64,
    pub files_rewrapped: u64,
    pub directories: u64,
    pub directories_rewrapped: u64,
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

/// One run over a volume.
pub struct Rewrapper<'a> {
    pub ring: &'a KeyRing,
    pub caller: &'a Principal,
    pub config: &'a VolumeConfig,
    /// Move everything to this key id; `None`: each item stays with its own key.
    pub to_key: Option<String>,
    /// Called after each file or directory, for a progress display.
    pub progress: &'a mut dyn FnMut(&RewrapReport),
    report: RewrapReport,
    current_versions: HashMap<String, u32>,
}

impl<'a> Rewrapper<'a> {
    pub fn new(
        ring: &'a KeyRing,
        caller: &'a Principal,
        config: &'a VolumeConfig,
        to_key: Option<String>,
        progress: &'a mut dyn FnMut(&RewrapReport),
    ) -> Self {
        Rewrapper {
            ring,
            caller,
            config,
            to_key,
            progress,
            report: RewrapReport::default(),
            current_versions: HashMap::new(),
        }
    }

    /// Re-wraps everything below `start` (a backing directory), then syncs the file system.
    pub fn run(mut self, start: &Path, plain_start: &str) -> Result<RewrapReport> {
        let began = Instant::now();
        self.directory(start, plain_start);
        // One sync at the end instead of one per file: a crash before it loses only new
        // slots, and the old ones are still there.
        if let Ok(f) = std::fs::File::open(start) {
            // SAFETY: syncfs on an open descriptor.
            unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
        }
        self.report.seconds = began.elapsed().as_secs_f64();
        Ok(self.report)
    }

    fn access<'b>(&'b self, path: &'b str) -> Access<'b> {
        Access { caller: self.caller, path }
    }

    fn current_version(&mut self, key_id: &str) -> Result<u32> {
        if let Some(v) = self.current_versions.get(key_id) {
            return Ok(*v);
        }
        let v = self.ring.current_version(key_id)?;
        self.current_versions.insert(key_id.to_string(), v);
        Ok(v)
    }

    /// The key and version `wrapped_by` should move to, or `None` if it is up to date.
    fn target(&mut self, key_id: &str, version: u32) -> Result<Option<String>> {
        let key = self.to_key.clone().unwrap_or_else(|| key_id.to_string());
        let current = self.current_version(&key)?;
        Ok((key != key_id || version != current).then_some(key))
    }

    fn directory(&mut self, dir: &Path, plain: &str) {
        self.report.directories += 1;
        let names = match self.directory_keys(dir, plain) {
            Ok(n) => n,
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
                Ok(t) if t.is_dir() => self.directory(&path, &child_plain),
                Ok(t) if t.is_file() => {
                    self.report.files += 1;
                    match self.file(&path, &child_plain) {
                        Ok(true) => self.report.files_rewrapped += 1,
                        Ok(false) => {}
                        Err(e) => self.report.errors.push(format!("{child_plain}: {e}")),
                    }
                    (self.progress)(&self.report);
                }
                _ => {}
            }
        }
    }

    /// Re-wraps a directory's names key if needed; returns its names cipher.
    fn directory_keys(&mut self, dir: &Path, plain: &str) -> Result<DirNames> {
        let copies = DirMeta::load_copies(dir)?;
        let keys = DirMeta::unwrap_any(&copies, self.ring, self.access(plain), &self.config.volume_id)?;
        if let Some(target) = self.target(&keys.key_id, keys.key_version)? {
            let ctx = DirMeta::context(&self.config.volume_id, &hex(&keys.iv));
            let new_blob = self.ring.wrap_data_key(self.access(plain), &target, &ctx, &keys.names_key)?;
            let explicit = keys.explicit || self.to_key.is_some();
            DirMeta::new(&target, explicit, &keys.iv, &new_blob).save(dir)?;
            self.report.directories_rewrapped += 1;
        }
        Ok(DirNames::new(&keys.names_key, &keys.iv))
    }

    /// Re-wraps one file's data key if needed. Returns whether it was rewritten.
    fn file(&mut self, path: &Path, plain: &str) -> Result<bool> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("cannot open", e))?;
        let mut raw = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut raw, 0).map_err(|e| Error::io("cannot read the header", e))?;
        let mut header = FileHeader::parse(&raw).map_err(|e| Error::InvalidCiphertext(e.to_string()))?;
        let ctx = self.config.file_context(&header.file_id);
        let mut unwrapped = None;
        for slot in header.candidates() {
            if let Ok(found) = self.ring.decrypt_data_key(self.access(plain), &slot.blob, &ctx) {
                unwrapped = Some(found);
                break;
            }
        }
        let (data_key, wrapped_by) = unwrapped.ok_or_else(|| {
            Error::InvalidCiphertext("no header slot unwraps (tampered, or its key is unusable)".into())
        })?;
        let Some(target) = self.target(&wrapped_by.key_id, wrapped_by.key_version)? else { return Ok(false) };
        let new_blob = self.ring.wrap_data_key(self.access(plain), &target, &ctx, &data_key)?;
        let slot = header.rewrap(new_blob);
        file.write_all_at(&header.encode_slot(slot), FileHeader::slot_offset(slot) as u64)
            .map_err(|e| Error::io("cannot write the header", e))?;
        Ok(true)
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
        let stored = DirNames::new(&keys.names_key, &keys.iv).encrypt(name);
        dir = dir.join(stored.entry());
        plain = format!("{plain}{}{}", if plain.is_empty() { "" } else { "/" }, name.to_string_lossy());
        if !dir.is_dir() {
            return Err(Error::NotFound(format!("/{plain} is not a directory of this volume")));
        }
    }
    Ok(dir)
}
