//! Per-directory metadata: which master key protects a directory's new files and names, and
//! the directory's names key (wrapped by that master key) with its IV.
//!
//! Stored twice in every backing directory, `kmsfs.dir` and `kmsfs.dir.bak`, each written
//! atomically (temp file, fsync, rename, fsync of the directory). A crash cannot tear either
//! (gocryptfs has seen a torn `gocryptfs.diriv` make a whole directory unreadable),
//! and damage to one copy (a truncated file) is survived by reading the other.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::write_atomically;
use crate::content::names::IV_LEN;
use crate::encoding::hex;
use crate::error::{Error, Result};
use crate::kms::EncryptionContext;

pub const DIR_META: &str = "kmsfs.dir";
pub const DIR_META_BACKUP: &str = "kmsfs.dir.bak";

/// One metadata copy as found on disk.
enum Copy {
    Absent,
    Damaged,
    Parsed(DirMeta),
}

/// Why a directory's keys could not be loaded (`DirMeta::load_keys`).
#[derive(Debug)]
pub enum NoKeys {
    /// Neither copy exists: a directory whose creation was interrupted (the caller may
    /// repair it).
    Missing,
    /// No copy can be read or parsed (the caller may repair an empty directory).
    Unreadable(Error),
    /// The copies there did not unwrap: the key's state or policy refused, or both copies
    /// fail to authenticate.
    Refused(Error),
}

/// Why one metadata copy gave no keys.
enum CopyRefused {
    /// The key's state or policy refuses: the other copy names the same key, so this is final.
    Final(Error),
    /// This copy cannot be used (logged); the other may be.
    Unusable(Error),
}

fn both_damaged(dir: &Path) -> Error {
    Error::InvalidCiphertext(format!("both metadata copies of {} are damaged", dir.display()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirMeta {
    pub format: String,
    pub version: u32,
    /// Master key of this directory: new files, subdirectories and this directory's names.
    pub key_id: String,
    /// Whether the key was set on this directory (`kmsfs dir set-key`) rather than inherited.
    pub explicit: bool,
    /// Per-directory IV (hex): the same name encrypts differently in different directories.
    pub iv: String,
    /// The directory's names key, a KMS blob (base64) under `key_id`.
    pub names_key: String,
}

impl DirMeta {
    pub fn new(key_id: &str, explicit: bool, iv: &[u8; IV_LEN], names_key_blob: &[u8]) -> Self {
        DirMeta {
            format: "kmsfs-dir".into(),
            version: 1,
            key_id: key_id.to_string(),
            explicit,
            iv: hex(iv),
            names_key: B64.encode(names_key_blob),
        }
    }

    pub fn iv_bytes(&self) -> Option<[u8; IV_LEN]> {
        let raw: Vec<u8> = (0..self.iv.len())
            .step_by(2)
            .map(|i| self.iv.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<_>>()?;
        raw.try_into().ok()
    }

    pub fn names_key_blob(&self) -> Option<Vec<u8>> {
        B64.decode(&self.names_key).ok()
    }

    /// The encryption context the names key is bound to: this volume, this directory.
    pub fn context(volume_id: &str, iv_hex: &str) -> EncryptionContext {
        EncryptionContext::new()
            .with("kmsfs:volume", volume_id)
            .with("kmsfs:dir", iv_hex)
            .with("kmsfs:purpose", "names")
    }

    /// Parses one metadata copy; `None` if it is not well-formed.
    pub fn parse(text: &str) -> Option<DirMeta> {
        let meta: DirMeta = serde_json::from_str(text).ok()?;
        (meta.format == "kmsfs-dir"
            && meta.version == 1
            && meta.iv_bytes().is_some()
            && meta.names_key_blob().is_some())
        .then_some(meta)
    }

    /// Reads a directory's metadata from the primary copy, else the backup. `Ok(None)` if
    /// neither exists (a directory whose creation was interrupted); an error if copies exist
    /// but none is readable.
    pub fn load(dir: &Path) -> Result<Option<DirMeta>> {
        Ok(Self::load_copies(dir)?.into_iter().next())
    }

    /// Every copy that parses, primary first. Empty if neither exists (a directory whose
    /// creation was interrupted); an error if copies exist but none parses. Callers that
    /// unwrap the names key try the next copy when one does not authenticate.
    pub fn load_copies(dir: &Path) -> Result<Vec<DirMeta>> {
        let mut seen = false;
        let mut copies = Vec::new();
        for name in [DIR_META, DIR_META_BACKUP] {
            match Self::read_copy(dir, name)? {
                Copy::Absent => {}
                Copy::Damaged => seen = true,
                Copy::Parsed(meta) => {
                    seen = true;
                    copies.push(meta);
                }
            }
        }
        if seen && copies.is_empty() {
            return Err(both_damaged(dir));
        }
        Ok(copies)
    }

    /// The names key and key of directory `dir` from the first copy that parses and
    /// unwraps. Unlike [`DirMeta::load_copies`] followed by [`DirMeta::unwrap_any`], the
    /// backup is read only when the primary is missing, damaged or does not unwrap: a
    /// directory's first use (every directory of a cold `ls -lR`) waits for one small file,
    /// not two.
    pub fn load_keys(
        dir: &Path,
        ring: &crate::kms::keyring::KeyRing,
        access: crate::kms::keyring::Access<'_>,
        volume_id: &str,
    ) -> std::result::Result<DirKeys, NoKeys> {
        let (mut seen, mut read_error, mut unwrap_error) = (false, None, None);
        for (i, name) in [DIR_META, DIR_META_BACKUP].into_iter().enumerate() {
            let meta = match Self::read_copy(dir, name) {
                Ok(Copy::Parsed(meta)) => meta,
                Ok(Copy::Absent) => continue,
                Ok(Copy::Damaged) => {
                    seen = true;
                    continue;
                }
                Err(e) => {
                    log::warn!("{e}; trying the other copy");
                    read_error = Some(e);
                    continue;
                }
            };
            match meta.unwrap_copy(i, ring, access, volume_id) {
                Ok(keys) => return Ok(keys),
                Err(CopyRefused::Final(e)) => return Err(NoKeys::Refused(e)),
                Err(CopyRefused::Unusable(e)) => unwrap_error = Some(e),
            }
        }
        Err(match (unwrap_error, read_error) {
            (Some(e), _) => NoKeys::Refused(e),
            (None, Some(e)) => NoKeys::Unreadable(e),
            (None, None) if seen => NoKeys::Unreadable(both_damaged(dir)),
            (None, None) => NoKeys::Missing,
        })
    }

    /// One copy: absent, damaged (logged), or parsed.
    fn read_copy(dir: &Path, name: &str) -> Result<Copy> {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => Ok(match Self::parse(&text) {
                Some(meta) => Copy::Parsed(meta),
                None => {
                    log::warn!("{}/{name} is damaged; trying the other copy", dir.display());
                    Copy::Damaged
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Copy::Absent),
            Err(e) => Err(Error::io(format!("cannot read {}/{name}", dir.display()), e)),
        }
    }

    /// Writes both copies, each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("metadata serializes");
        write_atomically(&dir.join(DIR_META), text.as_bytes(), 0o644)?;
        write_atomically(&dir.join(DIR_META_BACKUP), text.as_bytes(), 0o644)
    }

    /// Writes both copies into a directory that has none (a new one): each created with
    /// O_EXCL. Nothing is replaced, so there is no old content to keep, and no temp-and-rename
    /// as in [`DirMeta::save`] (four fsyncs, each a disk cache flush where the backing ext4
    /// has no journal). Returns the primary and the directory, open, for the caller to fsync
    /// before any entry of the directory can be made durable (`fs::dir_sync`): then a power
    /// loss never leaves such entries without their names key. The backup is left to the
    /// kernel's writeback; a power loss before that can tear it, which the mount reads past
    /// (the primary authenticates) and `fsck --repair` rewrites. A crash during this call
    /// leaves an empty directory with missing or torn copies, which the mount recreates on
    /// first use. Falls back to [`DirMeta::save`] (durable already) if a copy exists.
    pub fn save_new(&self, dir: &Path) -> Result<Unsynced> {
        use std::io::Write;
        let text = serde_json::to_string_pretty(self).expect("metadata serializes");
        let failed = |path: &Path, e| Error::io(format!("cannot write {}", path.display()), e);
        let mut primary = None;
        for name in [DIR_META, DIR_META_BACKUP] {
            let path = dir.join(name);
            let mut f = match crate::sys::create_exclusive(&path, 0o644) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return self.save(dir).map(|()| Unsynced { files: Vec::new() })
                }
                Err(e) => return Err(failed(&path, e)),
            };
            f.write_all(text.as_bytes()).map_err(|e| failed(&path, e))?;
            primary.get_or_insert(f);
        }
        let dir_file =
            std::fs::File::open(dir).map_err(|e| Error::io(format!("cannot open {}", dir.display()), e))?;
        Ok(Unsynced { files: primary.into_iter().chain([dir_file]).collect() })
    }
}

/// A new directory's primary metadata copy and the directory itself, open, written but not
/// yet fsynced (see [`DirMeta::save_new`]).
pub struct Unsynced {
    pub files: Vec<std::fs::File>,
}

impl Unsynced {
    /// fsyncs the files in order: the metadata copy, then the directory that names it.
    pub fn sync(&self) -> std::io::Result<()> {
        self.files.iter().try_for_each(std::fs::File::sync_all)
    }
}

/// A directory's keys, unwrapped from one of its metadata copies.
pub struct DirKeys {
    /// The master key that wraps the names key, as the authenticated blob says.
    pub key_id: String,
    pub key_version: u32,
    pub explicit: bool,
    pub iv: [u8; IV_LEN],
    pub names_key: crate::crypto::SecretKey,
}

impl DirMeta {
    /// Unwraps this copy's names key. The key id is taken from the authenticated blob, not
    /// from the JSON beside it: a copy whose `key_id` was edited is refused.
    pub fn unwrap(
        &self,
        ring: &crate::kms::keyring::KeyRing,
        access: crate::kms::keyring::Access<'_>,
        volume_id: &str,
    ) -> Result<DirKeys> {
        let iv = self
            .iv_bytes()
            .ok_or_else(|| Error::InvalidCiphertext("the directory IV is malformed".into()))?;
        let blob = self
            .names_key_blob()
            .ok_or_else(|| Error::InvalidCiphertext("the directory names key is malformed".into()))?;
        let ctx = Self::context(volume_id, &self.iv);
        let (names_key, wrapped_by) = ring.decrypt_data_key(access, &blob, &ctx)?;
        if wrapped_by.key_id != self.key_id {
            return Err(Error::InvalidCiphertext(format!(
                "directory metadata names key {} but its names key is wrapped by {}",
                self.key_id, wrapped_by.key_id
            )));
        }
        Ok(DirKeys {
            key_id: wrapped_by.key_id,
            key_version: wrapped_by.key_version,
            explicit: self.explicit,
            iv,
            names_key,
        })
    }

    /// Unwraps the first copy that authenticates. A refusal by key state or policy is
    /// returned at once: the other copy names the same key.
    pub fn unwrap_any(
        copies: &[DirMeta],
        ring: &crate::kms::keyring::KeyRing,
        access: crate::kms::keyring::Access<'_>,
        volume_id: &str,
    ) -> Result<DirKeys> {
        let mut last = Error::InvalidCiphertext(format!("{} has no directory metadata", access.path));
        for (i, meta) in copies.iter().enumerate() {
            match meta.unwrap_copy(i, ring, access, volume_id) {
                Ok(keys) => return Ok(keys),
                Err(CopyRefused::Final(e)) => return Err(e),
                Err(CopyRefused::Unusable(e)) => last = e,
            }
        }
        Err(last)
    }

    /// Unwraps copy number `i` (from 0).
    fn unwrap_copy(
        &self,
        i: usize,
        ring: &crate::kms::keyring::KeyRing,
        access: crate::kms::keyring::Access<'_>,
        volume_id: &str,
    ) -> std::result::Result<DirKeys, CopyRefused> {
        self.unwrap(ring, access, volume_id).map_err(|e| match e {
            Error::KeyState(_) | Error::AccessDenied(_) => CopyRefused::Final(e),
            e => {
                log::warn!("{}: metadata copy {} cannot be used ({e})", access.path, i + 1);
                CopyRefused::Unusable(e)
            }
        })
    }
}
