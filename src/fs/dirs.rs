//! Per-directory state in the mount: each directory's master key and names key, loaded from
//! its `kmsfs.dir` on first use and kept per inode. Every use checks that the key may still
//! be used, so a disabled directory key stops listing and lookups in that directory (ENOKEY)
//! while sibling directories under other keys go on working.

use std::path::Path;
use std::sync::Arc;

use fuser::{Errno, INodeNo};

use super::{kms_errno, FsResult, KmsFs};
use crate::content::names::NameCipher;
use crate::content::names::IV_LEN;
use crate::crypto;
use crate::kms::keyring::Access;
use crate::volume::dirmeta::{DirKeys, DirMeta, NoKeys};

/// A directory's keys, unwrapped.
/// (The names key itself is not kept: a re-wrap reads it again from the metadata.)
pub struct CachedDir {
    pub key_id: String,
    pub names: NameCipher,
}

impl From<DirKeys> for CachedDir {
    fn from(k: DirKeys) -> Self {
        CachedDir { names: NameCipher::new(&k.names_key, &k.iv), key_id: k.key_id }
    }
}

/// When a new directory's metadata is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MetaSync {
    /// Before the call returns.
    Now,
    /// Within `dir_sync::DELAY`, or before anything below the directory is fsynced: for a
    /// mkdir, whose directory holds nothing yet (see `dir_sync`).
    Deferred,
}

impl KmsFs {
    /// The state of directory `ino`, after checking its key is usable for `access`.
    pub(super) fn dir_state(&self, access: Access<'_>, ino: INodeNo) -> FsResult<Arc<CachedDir>> {
        let cached = self.dir_states.read().expect("dir states lock").get(&ino.0).cloned();
        if let Some(state) = cached {
            self.keyring.check_key(access, &state.key_id, "Decrypt").map_err(kms_errno)?;
            return Ok(state);
        }
        // First use of this directory: one loader at a time, so that two first uses of a
        // directory that needs repair cannot each create a different names key.
        let _loading = self.dir_loading.lock().expect("dir loading lock");
        if let Some(state) = self.dir_states.read().expect("dir states lock").get(&ino.0).cloned() {
            self.keyring.check_key(access, &state.key_id, "Decrypt").map_err(kms_errno)?;
            return Ok(state);
        }
        let dir = self.backing(ino)?;
        let keys = match DirMeta::load_keys(&dir, &self.keyring, access, &self.config.volume_id) {
            Ok(keys) => keys,
            Err(NoKeys::Missing) => return self.repair_dir_meta(access, ino, &dir),
            Err(NoKeys::Unreadable(e)) => {
                // Both copies torn: a crash during the mkdir that wrote them. Only an empty
                // directory gets new ones (repair refuses with EIO when it holds entries).
                log::warn!("{}: {e}", access.path);
                return self.repair_dir_meta(access, ino, &dir);
            }
            Err(NoKeys::Refused(e)) => {
                log::warn!("{}: {e}", access.path);
                return Err(kms_errno(e));
            }
        };
        let state = Arc::new(CachedDir::from(keys));
        self.dir_states.write().expect("dir states lock").insert(ino.0, state.clone());
        Ok(state)
    }

    /// Creates the metadata of a new directory `dir` (inode `ino`) under `key_id`, its key
    /// inherited (not set on it with `dir set-key`).
    pub(super) fn create_dir_meta(
        &self,
        access: Access<'_>,
        ino: u64,
        dir: &Path,
        key_id: &str,
        sync: MetaSync,
    ) -> FsResult<Arc<CachedDir>> {
        let iv = crypto::random_bytes::<{ IV_LEN }>();
        let iv_hex = crate::encoding::hex(&iv);
        let ctx = DirMeta::context(&self.config.volume_id, &iv_hex);
        let (names_key, blob) = self.keyring.generate_data_key(access, key_id, &ctx).map_err(kms_errno)?;
        let unsynced = DirMeta::new(key_id, false, &iv, &blob).save_new(dir).map_err(|e| {
            log::warn!("{}: cannot write directory metadata: {e}", access.path);
            kms_errno(e) // EIO, or ENOSPC/EDQUOT when out of space
        })?;
        match (&self.dir_sync, sync) {
            (Some(dir_sync), MetaSync::Deferred) => dir_sync.defer(ino, unsynced),
            _ => unsynced.sync(),
        }
        .map_err(|e| {
            log::warn!("{}: cannot write directory metadata: {e}", access.path);
            super::io_errno(e)
        })?;
        let state =
            Arc::new(CachedDir { key_id: key_id.to_string(), names: NameCipher::new(&names_key, &iv) });
        self.dir_states.write().expect("dir states lock").insert(ino, state.clone());
        Ok(state)
    }

    /// Makes durable the metadata still waiting after a mkdir of `ino` (if a directory) and
    /// of the directories above it: called before an fsync of `ino` is answered, so that
    /// nothing a program made durable depends on a names key that is not.
    pub(super) fn sync_new_dirs_above(&self, ino: u64) -> FsResult<()> {
        let Some(dir_sync) = &self.dir_sync else { return Ok(()) };
        let mut chain = vec![ino];
        while let Some(parent) = chain.last().and_then(|&i| self.inodes.parent(i)) {
            if chain.contains(&parent) || chain.len() > 4096 {
                break; // no cycle is expected; never loop on one
            }
            chain.push(parent);
        }
        dir_sync.sync(chain).map_err(|e| {
            log::warn!("cannot make new directory metadata durable: {e}");
            super::io_errno(e)
        })
    }

    /// A directory without (readable) metadata: its creation was interrupted (kill -9 between
    /// mkdir and the metadata write, or during it). If it holds nothing, give it fresh
    /// metadata under its parent's key; otherwise its names cannot be read, and only this
    /// directory reports EIO.
    fn repair_dir_meta(&self, access: Access<'_>, ino: INodeNo, dir: &Path) -> FsResult<Arc<CachedDir>> {
        if self.options.read_only {
            log::warn!("{}: directory metadata is missing; a read-only mount cannot repair it", access.path);
            return Err(Errno::EIO);
        }
        let holds_entries =
            std::fs::read_dir(dir).map_err(super::io_errno)?.filter_map(|e| e.ok()).any(|e| {
                !matches!(
                    crate::content::names::classify(&e.file_name()),
                    crate::content::names::BackingEntry::Internal
                )
            });
        if holds_entries || ino.0 == super::inodes::ROOT_INO {
            log::warn!(
                "{}: directory metadata is missing or damaged and the directory is not empty; answering EIO",
                access.path
            );
            return Err(Errno::EIO);
        }
        let parent = self.inodes.parent(ino.0).ok_or(Errno::EIO)?;
        let key_id = self.parent_key(access, INodeNo(parent))?;
        log::warn!(
            "{}: directory metadata was missing or torn (interrupted mkdir); recreated it",
            access.path
        );
        self.create_dir_meta(access, ino.0, dir, &key_id, MetaSync::Now)
    }

    /// The key of directory `parent`, loading it if needed. Called with the loading lock
    /// held, so it must not take it again: the parent is cached already (it was looked up
    /// before its child), else its metadata is read directly.
    fn parent_key(&self, access: Access<'_>, parent: INodeNo) -> FsResult<String> {
        if let Some(state) = self.dir_states.read().expect("dir states lock").get(&parent.0) {
            return Ok(state.key_id.clone());
        }
        match DirMeta::load_keys(&self.backing(parent)?, &self.keyring, access, &self.config.volume_id) {
            Ok(keys) => Ok(keys.key_id),
            Err(NoKeys::Missing | NoKeys::Unreadable(_)) => Err(Errno::EIO),
            Err(NoKeys::Refused(e)) => Err(kms_errno(e)),
        }
    }
}
