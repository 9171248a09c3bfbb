//! Re-wrapping on a live mount, through control attributes: `user.kmsfs.key` on a directory
//! (`kmsfs dir set-key`) and `user.kmsfs.rewrap` on any file or directory (`kmsfs rewrap`
//! on a mount). The mount does the work itself, so its caches stay true, the caller's
//! policies and grants apply, and the audit trail names the caller.

use std::sync::Arc;

use fuser::{Errno, INodeNo};

use super::dirs::CachedDir;
use super::{kms_errno, FsResult, KmsFs};
use crate::error::Error;
use crate::kms::keyring::Access;
use crate::volume::rewrap::{open_for_rewrap, rewrap_dir, rewrap_file, rewrap_volume_key};

impl KmsFs {
    /// `setfattr -n user.kmsfs.key -v KEY DIR`: the directory's names key is re-wrapped
    /// under KEY (names stay as they are) and new files and subdirectories use KEY.
    pub(super) fn set_dir_key(&self, access: Access<'_>, ino: INodeNo, key_ref: &str) -> FsResult<()> {
        let key_id = self.resolve_target(access, "set-key", key_ref)?;
        self.rewrap_directory(access, ino, Some(&key_id), true)
    }

    /// `setfattr -n user.kmsfs.rewrap [-v KEY] PATH`: re-wraps a file's data key or a
    /// directory's names key (and at the root, the volume's names key) under the current
    /// version of its key, or under KEY.
    pub(super) fn rewrap_inode(&self, access: Access<'_>, ino: INodeNo, key_ref: &str) -> FsResult<()> {
        let to_key = match key_ref {
            "" => None,
            k => Some(self.resolve_target(access, "rewrap to", k)?),
        };
        let (meta, path) = self.stat_ino(ino)?;
        if meta.is_dir() {
            self.rewrap_directory(access, ino, to_key.as_deref(), false)?;
            if ino.0 == super::inodes::ROOT_INO {
                let _one = self.rewrap_lock.lock().expect("rewrap lock");
                rewrap_volume_key(&self.keyring, access, &self.root, to_key.as_deref())
                    .map_err(|e| self.rewrap_errno(access, e))?;
            }
            return Ok(());
        }
        if !meta.is_file() {
            return Ok(()); // symlinks and special files hold no key
        }
        // An open file's descriptor also serves an unlinked one.
        let open = self.open_files.get(ino.0).filter(|o| o.writable);
        let own;
        let file = match (&open, path) {
            (Some(open), _) => &open.file,
            (None, Some(path)) => {
                own = open_for_rewrap(&path).map_err(|e| self.rewrap_errno(access, e))?;
                &own
            }
            (None, None) => return Err(Errno::ENOENT),
        };
        let _one = self.rewrap_lock.lock().expect("rewrap lock");
        rewrap_file(&self.keyring, access, &self.config, file, to_key.as_deref())
            .map(|_| ())
            .map_err(|e| self.rewrap_errno(access, e))
    }

    fn rewrap_directory(
        &self,
        access: Access<'_>,
        ino: INodeNo,
        to_key: Option<&str>,
        mark: bool,
    ) -> FsResult<()> {
        let dir = self.backing(ino)?;
        let _one = self.rewrap_lock.lock().expect("rewrap lock");
        let (keys, written) = rewrap_dir(&self.keyring, access, &self.config.volume_id, &dir, to_key, mark)
            .map_err(|e| self.rewrap_errno(access, e))?;
        if written {
            let state = Arc::new(CachedDir::from(keys));
            self.dir_states.write().expect("dir states lock").insert(ino.0, state);
        }
        Ok(())
    }

    /// The key id a control attribute names; an unknown key is EINVAL (the CLI says so).
    fn resolve_target(&self, access: Access<'_>, what: &str, key_ref: &str) -> FsResult<String> {
        self.keyring.resolve(key_ref).map_err(|e| {
            log::info!("{}: {what} {key_ref}: {e}", access.path);
            Errno::EINVAL
        })
    }

    fn rewrap_errno(&self, access: Access<'_>, e: Error) -> Errno {
        match &e {
            Error::KeyState(_) | Error::AccessDenied(_) | Error::NotFound(_) => {
                log::info!("{}: re-wrap refused: {e}", access.path)
            }
            _ => log::warn!("{}: re-wrap failed: {e}", access.path),
        }
        kms_errno(e)
    }
}
