//! Extended attributes: `user.*` attributes are stored encrypted on the backing file;
//! `user.kmsfs.key` and `user.kmsfs.key_version` are answered by kmsfs (read-only).
//! Attributes that outgrow the backing inode move into its store
//! (`volume::xattr_store`): every user-xattr call holds [`STORE_LOCK`] so a move never
//! races a change.

use std::ffi::{CString, OsStr};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use fuser::{Errno, INodeNo};

use super::{io_errno, FsResult, KmsFs};
use crate::content::volume_cipher::XATTR_BACKING_PREFIX;
use crate::content::{FileHeader, HEADER_LEN};
use crate::kms::blob::BlobHeader;
use crate::sys::{self, Node};
use crate::volume::dirmeta::DirMeta;
use crate::volume::xattr_store::{self, Entries, POINTER};

/// Serializes user-xattr calls of the mount: a change to a store is read-modify-write, and
/// a move into a store must see every backing attribute.
static STORE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn store_lock() -> std::sync::MutexGuard<'static, ()> {
    STORE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn c_name(name: &str) -> FsResult<CString> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// Virtual, read-only xattrs kmsfs answers itself.
pub const XATTR_KEY: &str = "user.kmsfs.key";
pub const XATTR_KEY_VERSION: &str = "user.kmsfs.key_version";
/// On directories: whether the key was set there (`dir set-key`) or inherited.
pub const XATTR_KEY_EXPLICIT: &str = "user.kmsfs.key_explicit";
/// "KEY_ID VERSION" in one read (what `kmsfs rewrap` compares before and after).
pub const XATTR_WRAPPED_BY: &str = "user.kmsfs.wrapped_by";
/// On the root only: the volume's intermediate keys under remote master keys and how the
/// mount sees them now (JSON, `kms::remote::KeyReport`; `kmsfs status` reads it).
pub const XATTR_REMOTE_KEYS: &str = "user.kmsfs.remote_keys";
/// Write-only control attribute: setting it re-wraps the file's data key (or the
/// directory's names key) under the current version of its key, or under the key given as
/// the value. `kmsfs rewrap` on a live mount sets it on every file and directory.
pub const XATTR_REWRAP: &str = "user.kmsfs.rewrap";

/// Where an xattr call goes: the backing path, or the open fd of an unlinked file.
enum XTarget {
    Path(CString),
    Fd(std::sync::Arc<super::open_files::OpenFile>),
}

impl XTarget {
    fn node(&self) -> Node<'_> {
        match self {
            XTarget::Path(p) => Node::Path(p),
            XTarget::Fd(of) => Node::Fd(of.file.as_fd()),
        }
    }

    fn get(&self, name: &CString) -> FsResult<Vec<u8>> {
        sys::get_xattr(self.node(), name).map_err(io_errno)
    }

    fn set(&self, name: &CString, value: &[u8], flags: i32) -> FsResult<()> {
        sys::set_xattr(self.node(), name, value, flags).map_err(io_errno)
    }

    fn list(&self) -> FsResult<Vec<u8>> {
        sys::list_xattr(self.node()).map_err(io_errno)
    }

    fn remove(&self, name: &CString) -> FsResult<()> {
        sys::remove_xattr(self.node(), name).map_err(io_errno)
    }
}

/// setxattr(2)'s flags on a store: XATTR_CREATE fails on an existing attribute (EEXIST),
/// XATTR_REPLACE on a missing one (ENODATA), as on ext4.
fn apply_set(entries: &mut Entries, backing: &str, stored: Vec<u8>, flags: i32) -> FsResult<()> {
    let exists = entries.contains_key(backing);
    if flags & libc::XATTR_CREATE != 0 && exists {
        return Err(Errno::EEXIST);
    }
    if flags & libc::XATTR_REPLACE != 0 && !exists {
        return Err(Errno::ENODATA);
    }
    entries.insert(backing.to_string(), stored);
    Ok(())
}

impl KmsFs {
    fn xtarget(&self, ino: INodeNo) -> FsResult<(XTarget, Option<super::BPath>)> {
        let (_, path) = self.stat_ino(ino)?;
        match path {
            Some(p) => Ok((XTarget::Path(sys::c_path(&p).map_err(io_errno)?), Some(p))),
            None => Ok((XTarget::Fd(self.open_files.get(ino.0).ok_or(Errno::ENOENT)?), None)),
        }
    }

    pub(super) fn get_xattr(&self, ino: INodeNo, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        if name == XATTR_REMOTE_KEYS {
            if ino.0 != super::inodes::ROOT_INO {
                return Err(Errno::ENODATA);
            }
            let report = self.keyring.remote().map(|r| r.report()).unwrap_or_default();
            return serde_json::to_vec(&report).map_err(|_| Errno::EIO);
        }
        if [XATTR_KEY, XATTR_KEY_VERSION, XATTR_KEY_EXPLICIT, XATTR_WRAPPED_BY].contains(&name) {
            let (meta, path) = self.stat_ino(ino)?;
            let path = path.ok_or(Errno::ENODATA)?;
            if meta.is_dir() {
                // A directory's key, from its metadata (no unwrap, so no key use).
                let dir = DirMeta::load(&path).ok().flatten().ok_or(Errno::EIO)?;
                let blob = dir.names_key_blob().ok_or(Errno::EIO)?;
                let wrapped_by = BlobHeader::parse(&blob).map(|(h, _)| h).map_err(|_| Errno::EIO)?;
                return match name {
                    XATTR_KEY => Ok(self.keyring.key_name(&dir.key_id).into_bytes()),
                    XATTR_KEY_VERSION => Ok(wrapped_by.key_version.to_string().into_bytes()),
                    XATTR_WRAPPED_BY => {
                        Ok(format!("{} {}", wrapped_by.key_id, wrapped_by.key_version).into_bytes())
                    }
                    _ => Ok(dir.explicit.to_string().into_bytes()),
                };
            }
            let blob = self.file_key_blob(&path)?;
            return match name {
                XATTR_KEY => Ok(self.keyring.key_name(&blob.key_id).into_bytes()),
                XATTR_KEY_VERSION => Ok(blob.key_version.to_string().into_bytes()),
                XATTR_WRAPPED_BY => Ok(format!("{} {}", blob.key_id, blob.key_version).into_bytes()),
                _ => Err(Errno::ENODATA),
            };
        }
        if !name.starts_with("user.") {
            // security.*, system.posix_acl_* and trusted.*: kmsfs supports none of these
            // namespaces (setxattr refuses them too). ENOTSUP, not ENODATA: `ls -l` and
            // libacl remember "not supported" for the whole file system and stop asking,
            // where ENODATA would cost two GETXATTR round trips per file listed.
            return Err(Errno::ENOTSUP);
        }
        let (target, _) = self.xtarget(ino)?;
        let backing = self.names.encrypt_xattr_name(name);
        let _lock = store_lock();
        let stored = match self.store(&target)?.1 {
            Some(entries) => entries.get(&backing).cloned().ok_or(Errno::ENODATA)?,
            None => target.get(&c_name(&backing)?)?,
        };
        self.names.decrypt_xattr_value(&backing, &stored).ok_or_else(|| {
            log::warn!("{}: xattr {name} does not authenticate; answering EIO", self.display_path(ino.0));
            Errno::EIO
        })
    }

    pub(super) fn set_xattr(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.check_writable()?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name == XATTR_KEY && self.stat_ino(ino)?.0.is_dir() {
            // `kmsfs dir set-key` / `setfattr -n user.kmsfs.key -v alias/finance DIR`
            let key_ref = std::str::from_utf8(value).map_err(|_| Errno::EINVAL)?.trim();
            let caller = self.caller(req);
            let label = self.display_path(ino.0);
            return self.set_dir_key(Self::access(&caller, &label), ino, key_ref);
        }
        if name == XATTR_REWRAP {
            // `kmsfs rewrap` on a live mount: empty value = current version of its own key.
            let key_ref = std::str::from_utf8(value).map_err(|_| Errno::EINVAL)?.trim();
            let caller = self.caller(req);
            let label = self.display_path(ino.0);
            return self.rewrap_inode(Self::access(&caller, &label), ino, key_ref);
        }
        if name.starts_with(XATTR_BACKING_PREFIX) {
            return Err(Errno::EPERM); // kmsfs's own namespace
        }
        if !name.starts_with("user.") {
            return Err(Errno::ENOTSUP);
        }
        let (target, _) = self.xtarget(ino)?;
        let backing = self.names.encrypt_xattr_name(name);
        let stored = self.names.encrypt_xattr_value(&backing, value);
        let _lock = store_lock();
        let (id, store) = self.store(&target)?;
        if let (Some(id), Some(mut entries)) = (&id, store) {
            apply_set(&mut entries, &backing, stored, flags)?;
            return self.write_store(id, &entries);
        }
        // The pointer goes on with the inode's first attribute, while there is room for it.
        let id = match id {
            Some(id) => Some(id),
            None => {
                let id = xattr_store::new_id();
                target.set(&c_name(POINTER)?, id.as_bytes(), libc::XATTR_CREATE).ok().map(|()| id)
            }
        };
        match target.set(&c_name(&backing)?, &stored, flags) {
            // The inode holds no more (or this one is too long for a backing xattr).
            Err(e) if id.is_some() && [Errno::ENOSPC, Errno::E2BIG, Errno::ERANGE].contains(&e) => {
                self.move_into_store(&target, id.as_deref().unwrap_or_default(), &backing, stored, flags)
            }
            other => other,
        }
    }

    /// The inode's store id (from its pointer) and, if the store exists, its entries.
    fn store(&self, target: &XTarget) -> FsResult<(Option<String>, Option<Entries>)> {
        let id = match target.get(&c_name(POINTER)?) {
            Ok(raw) => {
                String::from_utf8(raw).ok().filter(|id| xattr_store::valid_id(id)).ok_or(Errno::EIO)?
            }
            Err(Errno::ENODATA) => return Ok((None, None)),
            Err(e) => return Err(e),
        };
        let entries = xattr_store::read(&self.root, &id).map_err(|e| {
            log::warn!("xattr store {id} cannot be read: {e}");
            Errno::EIO
        })?;
        Ok((Some(id), entries))
    }

    fn write_store(&self, id: &str, entries: &Entries) -> FsResult<()> {
        let list_len: usize =
            entries.keys().map(|n| self.names.decrypt_xattr_name(n).map_or(0, |p| p.len() + 1)).sum();
        let size: usize = entries.iter().map(|(n, v)| n.len() + v.len() + 6).sum();
        if list_len > xattr_store::LIST_MAX || size > xattr_store::STORE_MAX {
            return Err(Errno::ENOSPC);
        }
        self.xattr_stores.store(true, std::sync::atomic::Ordering::SeqCst);
        xattr_store::write(&self.root, id, entries).map_err(|e| {
            log::warn!("xattr store {id} cannot be written: {e}");
            Errno::EIO
        })
    }

    /// Moves every backing attribute, with this change, into store `id`: the store is written
    /// whole first (the commit point), the backing copies go after, so a crash anywhere
    /// leaves every attribute old or new.
    fn move_into_store(
        &self,
        target: &XTarget,
        id: &str,
        backing: &str,
        stored: Vec<u8>,
        flags: i32,
    ) -> FsResult<()> {
        let mut entries = Entries::new();
        for name in self.backing_names(target)? {
            entries.insert(name.clone(), target.get(&c_name(&name)?)?);
        }
        apply_set(&mut entries, backing, stored, flags)?;
        self.write_store(id, &entries)?;
        for name in entries.keys().filter(|n| *n != backing) {
            let _ = target.remove(&c_name(name)?);
        }
        Ok(())
    }

    /// The backing xattrs that are encrypted user attributes.
    fn backing_names(&self, target: &XTarget) -> FsResult<Vec<String>> {
        let raw = target.list()?;
        Ok(raw
            .split(|&b| b == 0)
            .filter_map(|n| std::str::from_utf8(n).ok())
            .filter(|n| self.names.decrypt_xattr_name(n).is_some())
            .map(str::to_string)
            .collect())
    }

    pub(super) fn list_xattr(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
        let (target, _) = self.xtarget(ino)?;
        let _lock = store_lock();
        let names = match self.store(&target)?.1 {
            Some(entries) => entries.into_keys().collect(),
            None => self.backing_names(&target)?,
        };
        let mut out = Vec::new();
        for backing in names {
            if let Some(plain) = self.names.decrypt_xattr_name(&backing) {
                out.extend_from_slice(plain.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    pub(super) fn remove_xattr(&self, ino: INodeNo, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        if !name.starts_with("user.") || name.starts_with(XATTR_BACKING_PREFIX) {
            return Err(Errno::ENODATA);
        }
        let (target, _) = self.xtarget(ino)?;
        let backing = self.names.encrypt_xattr_name(name);
        let _lock = store_lock();
        match self.store(&target)? {
            (Some(id), Some(mut entries)) => {
                entries.remove(&backing).ok_or(Errno::ENODATA)?;
                self.write_store(&id, &entries)
            }
            _ => target.remove(&c_name(&backing)?),
        }
    }

    /// At the last close of a file with no name left, its xattr store goes (an unlink while
    /// it was open left it).
    pub(super) fn drop_store_if_unlinked(&self, last: &super::open_files::OpenFile) {
        if sys::fstat(&last.file).is_ok_and(|st| st.st_nlink == 0) {
            let _lock = store_lock();
            let Ok(name) = c_name(POINTER) else { return };
            if let Ok(id) = sys::get_xattr(Node::Fd(last.file.as_fd()), &name) {
                xattr_store::remove(&self.root, &String::from_utf8_lossy(&id));
            }
        }
    }

    /// Which master key and version wrap a regular file's data key (from its header alone:
    /// no unwrap, so no key use).
    fn file_key_blob(&self, path: &Path) -> FsResult<BlobHeader> {
        let file = sys::open_noatime(path, false).map_err(io_errno)?;
        if !file.metadata().map_err(super::io_errno)?.is_file() {
            return Err(Errno::ENODATA);
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut raw, 0).map_err(|_| Errno::EIO)?;
        let header = FileHeader::parse(&raw).map_err(|_| Errno::EIO)?;
        let newest = header.candidates()[0];
        BlobHeader::parse(&newest.blob).map(|(h, _)| h).map_err(|_| Errno::EIO)
    }
}
