//! Extended attributes: `user.*` attributes are stored encrypted on the backing file;
//! `user.kmsfs.key` and `user.kmsfs.key_version` are answered by kmsfs (read-only).

use std::ffi::{CString, OsStr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use fuser::{Errno, INodeNo};

use super::names::{
    XATTR_BACKING_PREFIX, XATTR_KEY, XATTR_KEY_EXPLICIT, XATTR_KEY_VERSION, XATTR_REWRAP, XATTR_WRAPPED_BY,
};
use super::{FsResult, KmsFs};
use crate::format::{FileHeader, HEADER_LEN};
use crate::kms::blob::BlobHeader;
use crate::volume::dirmeta::DirMeta;

fn cpath(path: &Path) -> FsResult<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn last_errno() -> Errno {
    Errno::from_i32(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

/// Calls an xattr syscall that fills a buffer, growing the buffer until it fits.
fn read_into(call: impl FnMut(*mut libc::c_void, usize) -> isize) -> FsResult<Vec<u8>> {
    crate::volume::os::read_growing(call).map_err(super::io_errno)
}

/// Where an xattr call goes: the backing path, or the open fd of an unlinked file.
enum XTarget {
    Path(CString),
    Fd(std::sync::Arc<super::OpenFile>),
}

impl XTarget {
    fn get(&self, name: &CString) -> FsResult<Vec<u8>> {
        read_into(|buf, len| match self {
            XTarget::Path(p) => unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf, len) },
            XTarget::Fd(of) => unsafe { libc::fgetxattr(of.file.as_raw_fd(), name.as_ptr(), buf, len) },
        })
    }

    fn set(&self, name: &CString, value: &[u8], flags: i32) -> FsResult<()> {
        let (v, n) = (value.as_ptr().cast(), value.len());
        let rc = match self {
            XTarget::Path(p) => unsafe { libc::lsetxattr(p.as_ptr(), name.as_ptr(), v, n, flags) },
            XTarget::Fd(of) => unsafe { libc::fsetxattr(of.file.as_raw_fd(), name.as_ptr(), v, n, flags) },
        };
        if rc != 0 {
            return Err(last_errno());
        }
        Ok(())
    }

    fn list(&self) -> FsResult<Vec<u8>> {
        read_into(|buf, len| match self {
            XTarget::Path(p) => unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) },
            XTarget::Fd(of) => unsafe { libc::flistxattr(of.file.as_raw_fd(), buf.cast(), len) },
        })
    }

    fn remove(&self, name: &CString) -> FsResult<()> {
        let rc = match self {
            XTarget::Path(p) => unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) },
            XTarget::Fd(of) => unsafe { libc::fremovexattr(of.file.as_raw_fd(), name.as_ptr()) },
        };
        if rc != 0 {
            return Err(last_errno());
        }
        Ok(())
    }
}

impl KmsFs {
    fn xtarget(&self, ino: INodeNo) -> FsResult<(XTarget, Option<super::BPath>)> {
        let (_, path) = self.stat_ino(ino)?;
        match path {
            Some(p) => Ok((XTarget::Path(cpath(&p)?), Some(p))),
            None => Ok((XTarget::Fd(self.open_file_of(ino.0).ok_or(Errno::ENOENT)?), None)),
        }
    }

    pub(super) fn get_xattr(&self, ino: INodeNo, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        if [XATTR_KEY, XATTR_KEY_VERSION, XATTR_KEY_EXPLICIT, XATTR_WRAPPED_BY].contains(&name) {
            let (meta, path) = self.stat_ino(ino)?;
            let path = path.ok_or(Errno::ENODATA)?;
            if meta.is_dir() {
                // A directory's key, from its metadata (no unwrap, so no key use).
                let dir = DirMeta::load(&path).ok().flatten().ok_or(Errno::EIO)?;
                let blob = dir.names_key_blob().ok_or(Errno::EIO)?;
                let wrapped_by = BlobHeader::parse(&blob).map(|(h, _)| h).map_err(|_| Errno::EIO)?;
                return match name {
                    XATTR_KEY => Ok(dir.key_id.into_bytes()),
                    XATTR_KEY_VERSION => Ok(wrapped_by.key_version.to_string().into_bytes()),
                    XATTR_WRAPPED_BY => {
                        Ok(format!("{} {}", wrapped_by.key_id, wrapped_by.key_version).into_bytes())
                    }
                    _ => Ok(dir.explicit.to_string().into_bytes()),
                };
            }
            let blob = self.file_key_blob(&path)?;
            return match name {
                XATTR_KEY => Ok(blob.key_id.into_bytes()),
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
        let stored = target.get(&CString::new(backing.clone()).map_err(|_| Errno::EINVAL)?)?;
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
        target.set(&CString::new(backing).map_err(|_| Errno::EINVAL)?, &stored, flags)
    }

    pub(super) fn list_xattr(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
        let (target, _) = self.xtarget(ino)?;
        let raw = target.list()?;
        let mut out = Vec::new();
        for backing in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let Ok(backing) = std::str::from_utf8(backing) else { continue };
            if let Some(plain) = self.names.decrypt_xattr_name(backing) {
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
        target.remove(&CString::new(self.names.encrypt_xattr_name(name)).map_err(|_| Errno::EINVAL)?)
    }

    /// Which master key and version wrap a regular file's data key (from its header alone:
    /// no unwrap, so no key use).
    fn file_key_blob(&self, path: &Path) -> FsResult<BlobHeader> {
        let file = super::files::open_noatime(path, false).map_err(super::io_errno)?;
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
