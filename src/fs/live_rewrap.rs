//! Re-wrapping on a live mount, through control attributes: `user.kmsfs.key` on a directory
//! (`kmsfs dir set-key`) and `user.kmsfs.rewrap` on any file or directory (`kmsfs rewrap`
//! on a mount). The mount does the work itself, so its caches stay true, the caller's
//! policies and grants apply, and the audit trail names the caller.

use std::sync::Arc;

use fuser::{Errno, INodeNo};

use super::dirs::CachedDir;
use super::{kms_errno, FsResult, KmsFs};
use crate::error::{AccessDenied, Denial, Error};
use crate::kms::keyring::Access;
use crate::volume::rewrap::{open_for_rewrap, rewrap_dir, rewrap_file, rewrap_volume_key};

impl KmsFs {
    /// `setfattr -n user.kmsfs.key -v KEY DIR`: the directory's names key is re-wrapped
    /// under KEY (names stay as they are) and new files and subdirectories use KEY.
    pub(super) fn set_dir_key(&self, access: Access<'_>, ino: INodeNo, key_ref: &str) -> FsResult<()> {
        let key_id = self.resolve_target(access, "set-key", key_ref)?;
        self.require_owner(access, ino, "SetDirectoryKey", &key_id)?;
        self.rewrap_directory(access, ino, Some(&key_id), true)
    }

    /// Only the owner of a file or directory, or root, may choose which key protects it:
    /// whoever may merely write a shared directory must not move it (and so everything later
    /// created in it) to a key of their choosing. A refusal is EACCES and audited.
    fn require_owner(&self, access: Access<'_>, ino: INodeNo, operation: &str, key_id: &str) -> FsResult<()> {
        use std::os::unix::fs::MetadataExt;
        let (meta, _) = self.stat_ino(ino)?;
        let uid = access.caller.uid;
        if uid == 0 || uid == meta.uid() {
            return Ok(());
        }
        let e = Error::AccessDenied(AccessDenied {
            key_id: Some(key_id.to_string()),
            reason: Denial::NotOwner { owner_uid: meta.uid(), path: access.path.to_string() },
        });
        log::info!("{}: {e}", access.path);
        self.keyring.record_refusal(access, operation, Some(key_id), &e);
        Err(Errno::EACCES)
    }

    /// `setfattr -n user.kmsfs.rewrap [-v KEY] PATH`: re-wraps a file's data key or a
    /// directory's names key (and at the root, the volume's names key) under the current
    /// version of its key, or under KEY.
    pub(super) fn rewrap_inode(&self, access: Access<'_>, ino: INodeNo, key_ref: &str) -> FsResult<()> {
        let to_key = match key_ref {
            "" => None,
            k => Some(self.resolve_target(access, "rewrap to", k)?),
        };
        if let Some(key_id) = &to_key {
            self.require_owner(access, ino, "ReEncrypt", key_id)?;
        }
        let (meta, path) = self.stat_ino(ino)?;
        if meta.is_dir() {
            self.rewrap_directory(access, ino, to_key.as_deref(), false)?;
            if ino.0 == super::inodes::ROOT_INO {
                let _one = self.rewrap_lock.lock().expect("rewrap lock");
                rewrap_volume_key(&self.keyring, access, &self.root, to_key.as_deref())
                    .map_err(|e| self.rewrap_errno(access, e))?;
                // The whole volume catching up with rotation: the intermediate keys are
                // re-wrapped at their services (ReEncrypt), the files under them are not.
                if let (None, Some(remote)) = (&to_key, self.keyring.remote()) {
                    let done = remote.rewrap_all().map_err(|e| self.rewrap_errno(access, e))?;
                    if done > 0 {
                        log::info!(
                            "{}: {done} intermediate key(s) re-wrapped at their key services",
                            access.path
                        );
                    }
                }
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
            .map_err(|e| self.rewrap_errno(access, e))?;
        // Handles still open keep the data key, but the next open is a use of the new key.
        if let (Some(key_id), Some(open)) = (&to_key, self.open_files.get(ino.0)) {
            open.rewrapped_under(key_id);
        }
        Ok(())
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

    /// The key id a control attribute names (for a remote key's ARN, a new intermediate
    /// key under it); an unknown key is EINVAL (the CLI says so), a remote refusal its errno.
    fn resolve_target(&self, access: Access<'_>, what: &str, key_ref: &str) -> FsResult<String> {
        self.keyring.assign(key_ref).map_err(|e| {
            log::info!("{}: {what} {key_ref}: {e}", access.path);
            match e {
                Error::NotFound(_) | Error::InvalidArgument(_) => Errno::EINVAL,
                other => kms_errno(other),
            }
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
