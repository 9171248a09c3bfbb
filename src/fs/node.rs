//! Requests on one node: LOOKUP, GETATTR, SETATTR, READLINK, LINK, STATFS.

use std::ffi::{CString, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileHandle, INodeNo, Request, TimeOrNow};

use super::open_files::{kill_suid_sgid, OpenFile};
use super::{io_errno, BPath, FsResult, KmsFs};
use crate::sys::{self, Node};

/// What a metadata change applies to: the backing file open for a handle (no path walk,
/// and the only way to an unlinked one), or the backing path.
enum Target {
    Path(CString),
    Fd(Arc<OpenFile>),
}

impl Target {
    fn node(&self) -> Node<'_> {
        match self {
            Target::Path(p) => Node::Path(p),
            Target::Fd(of) => Node::Fd(of.file.as_fd()),
        }
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(TimeOrNow::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => libc::timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                libc::timespec { tv_sec: sec, tv_nsec: nsec }
            }
        },
    }
}

impl KmsFs {
    /// Whether this filesystem must clear set-ID bits for `req` (the kernel's test is
    /// CAP_FSETID; the caller's uid stands in for it here).
    pub(super) fn kills_privs_for(&self, req: &Request) -> bool {
        self.kernel.kill_privs && req.uid() != 0
    }

    pub(super) fn do_lookup(&self, req: &Request, parent: INodeNo, name: &OsStr) -> FsResult<FileAttr> {
        let c = self.child(req, parent, name)?;
        self.entry(parent, &c.stored, name, &c.path)
    }

    pub(super) fn do_getattr(&self, ino: INodeNo) -> FsResult<FileAttr> {
        // An open file is asked through its descriptor (the one all its handles share): one
        // fstat instead of a walk of the whole backing path (GETATTR and SETATTR mostly come
        // while a program has the file open: tar's fchown, fchmod and futimens of every file
        // it writes).
        if let Some(of) = self.open_files.get(ino.0) {
            let meta = of.file.metadata().map_err(io_errno)?;
            return Ok(self.attr(ino.0, &meta, None));
        }
        let (meta, path) = self.stat_ino(ino)?;
        Ok(self.attr(ino.0, &meta, path.as_deref()))
    }

    /// Metadata of an inode: through an open handle if one exists (the file may be
    /// unlinked), else by path.
    pub(super) fn stat_ino(&self, ino: INodeNo) -> FsResult<(std::fs::Metadata, Option<BPath>)> {
        match self.backing(ino) {
            Ok(path) => {
                let meta = std::fs::symlink_metadata(&*path).map_err(io_errno)?;
                Ok((meta, Some(path)))
            }
            Err(e) => match self.open_files.get(ino.0) {
                Some(of) => Ok((of.file.metadata().map_err(io_errno)?, None)),
                None => Err(e),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        // Only regular files are ever open, so an open one needs no stat to tell.
        let (is_symlink, target) = match self.open_files.get(ino.0) {
            Some(of) => (false, Target::Fd(of)),
            None => match self.stat_ino(ino)? {
                (meta, Some(path)) => {
                    (meta.file_type().is_symlink(), Target::Path(sys::c_path(&path).map_err(io_errno)?))
                }
                // Opened (and unlinked) since the first look.
                (_, None) => (false, Target::Fd(self.open_files.get(ino.0).ok_or(Errno::ENOENT)?)),
            },
        };
        if let Some(size) = size {
            self.truncate(req, ino, fh, size)?;
        }
        if size.is_some() && self.kills_privs_for(req) {
            match &target {
                Target::Path(p) => kill_suid_sgid(&sys::open_nofollow(p, libc::O_PATH).map_err(io_errno)?)?,
                Target::Fd(of) => kill_suid_sgid(&of.file)?,
            }
        }
        // None of these follows a symlink in the last component of the backing path, which a
        // writer of the cipher directory may put there after the stat above: chmod goes
        // through an O_PATH descriptor, chown is lchown, utimensat has AT_SYMLINK_NOFOLLOW.
        if let Some(mode) = mode.filter(|_| !is_symlink) {
            sys::chmod(target.node(), mode & 0o7777).map_err(io_errno)?;
        }
        if uid.is_some() || gid.is_some() {
            sys::chown(target.node(), uid, gid).map_err(io_errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            sys::set_times(target.node(), &[timespec(atime), timespec(mtime)]).map_err(io_errno)?;
        }
        self.do_getattr(ino)
    }

    /// Sets a file's plaintext size, through a handle if given, else through a temporary
    /// open (which is a key use, checked and audited like any open).
    fn truncate(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> FsResult<()> {
        if let Some(h) = fh.and_then(|fh| self.open_files.handle(fh.0).ok()) {
            return h.open.truncate(size, false);
        }
        let of = self.acquire_open_file(req, ino)?;
        let result = of.truncate(size, false);
        self.open_files.release(ino.0);
        result
    }

    pub(super) fn do_readlink(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
        let path = self.backing(ino)?;
        let stored = std::fs::read_link(&*path).map_err(io_errno)?;
        match self.names.decrypt_target(stored.as_os_str()) {
            Some(t) => Ok(t.as_bytes().to_vec()),
            None => {
                log::warn!(
                    "{}: symlink target does not authenticate; answering EIO",
                    self.display_path(ino.0)
                );
                Err(Errno::EIO)
            }
        }
    }

    pub(super) fn do_link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        let existing = self.backing(ino)?;
        let c = self.child(req, newparent, newname)?;
        self.write_sidecar(&c.path, &c.stored)?;
        if let Err(e) = std::fs::hard_link(&*existing, &*c.path) {
            self.remove_sidecar_if_unused(&c);
            return Err(io_errno(e));
        }
        self.entry(newparent, &c.stored, newname, &c.path)
    }

    pub(super) fn do_statfs(&self) -> FsResult<libc::statvfs> {
        self.settle_removals();
        sys::c_path(&self.root).and_then(|c| sys::statvfs(&c)).map_err(io_errno)
    }
}
