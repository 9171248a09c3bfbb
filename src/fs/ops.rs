//! `fuser::Filesystem` for [`KmsFs`]: each request is a small function returning a
//! `FsResult`, and one line replies with it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::files::DirHandle;
use super::inodes::ROOT_INO;
use super::{io_errno, FsResult, KmsFs, TTL};

const GEN: Generation = Generation(0);
/// Largest read and write the kernel sends in one request.
const MAX_IO: u32 = 1 << 20;

fn cpath(path: &Path) -> FsResult<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// What a metadata change applies to: the backing path, or the open fd of an unlinked file.
enum Target {
    Path(CString),
    Fd(Arc<super::OpenFile>),
}

fn check(rc: libc::c_int) -> FsResult<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io_errno(io::Error::last_os_error()))
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
    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> FsResult<FileAttr> {
        let (path, stored) =
            self.child(parent, name).map_err(|e| if e == Errno::EPERM { Errno::ENOENT } else { e })?;
        self.entry(parent, &stored, &path)
    }

    fn do_getattr(&self, ino: INodeNo, fh: Option<FileHandle>) -> FsResult<FileAttr> {
        if let Some(fh) = fh {
            if let Ok((of, _, _)) = self.handle(fh.0) {
                let meta = of.file.metadata().map_err(io_errno)?;
                return Ok(self.attr(ino.0, &meta, None));
            }
        }
        let (meta, path) = self.stat_ino(ino)?;
        Ok(self.attr(ino.0, &meta, path.as_deref()))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
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
        let (meta, path) = self.stat_ino(ino)?;
        // An unlinked file that is still open has no path: work through its open fd.
        let target = match path.as_deref() {
            Some(p) => Target::Path(cpath(p)?),
            None => Target::Fd(self.open_file_of(ino.0).ok_or(Errno::ENOENT)?),
        };
        if let Some(size) = size {
            self.truncate(req, ino, fh, size)?;
        }
        if let Some(mode) = mode.filter(|_| !meta.file_type().is_symlink()) {
            check(match &target {
                Target::Path(p) => unsafe { libc::chmod(p.as_ptr(), mode & 0o7777) },
                Target::Fd(of) => unsafe { libc::fchmod(of.file.as_raw_fd(), mode & 0o7777) },
            })?;
        }
        if uid.is_some() || gid.is_some() {
            let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
            check(match &target {
                Target::Path(p) => unsafe { libc::lchown(p.as_ptr(), u, g) },
                Target::Fd(of) => unsafe { libc::fchown(of.file.as_raw_fd(), u, g) },
            })?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [timespec(atime), timespec(mtime)];
            check(match &target {
                Target::Path(p) => unsafe {
                    libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                },
                Target::Fd(of) => unsafe { libc::futimens(of.file.as_raw_fd(), times.as_ptr()) },
            })?;
        }
        self.do_getattr(ino, fh)
    }

    /// Sets a file's plaintext size, through a handle if given, else through a temporary
    /// open (which is a key use, checked and audited like any open).
    fn truncate(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> FsResult<()> {
        let from_handle = fh.and_then(|fh| self.handle(fh.0).ok()).map(|(of, _, _)| of);
        let (of, temporary) = match from_handle {
            Some(of) => (of, false),
            None => (self.acquire_open_file(req, ino)?, true),
        };
        let result = if of.writable {
            let _guard = of.lock.write().expect("file lock");
            of.crypt().set_len(size).map_err(io_errno)
        } else {
            Err(Errno::EACCES)
        };
        if temporary {
            self.release_open_file(ino.0);
        }
        result
    }

    fn do_open(&self, req: &Request, ino: INodeNo, flags: OpenFlags) -> FsResult<u64> {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if write {
            self.check_writable()?;
        }
        let of = self.acquire_open_file(req, ino)?;
        let result = (|| {
            if write && !of.writable {
                return Err(Errno::EACCES);
            }
            if write && flags.0 & libc::O_TRUNC != 0 {
                let _guard = of.lock.write().expect("file lock");
                of.crypt().set_len(0).map_err(io_errno)?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(self.add_handle(ino.0, of, write, flags.0 & libc::O_APPEND != 0)),
            Err(e) => {
                self.release_open_file(ino.0);
                Err(e)
            }
        }
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(FileAttr, u64)> {
        self.check_writable()?;
        let (path, stored) = self.child(parent, name)?;
        let (file, key) = self.create_backing_file(req, &path, mode & !umask)?;
        let meta = file.metadata().map_err(io_errno)?;
        let ino = self.inodes.fuse_ino(meta.ino());
        self.inodes.remember(ino, parent.0, &stored);
        let attr = self.attr(ino, &meta, None);
        let label = self.display_path(ino);
        let fresh = Arc::new(super::OpenFile { file, writable: true, key, lock: Default::default(), label });
        let of = {
            let mut map = self.open_files.lock().expect("open files lock");
            let (of, n) = map.entry(ino).or_insert_with(|| (fresh, 0));
            *n += 1;
            of.clone()
        };
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        Ok((attr, self.add_handle(ino, of, write, flags & libc::O_APPEND != 0)))
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let (of, _, _) = self.handle(fh.0)?;
        let _guard = of.lock.read().expect("file lock");
        of.crypt().read_at(offset, size as usize).map_err(io_errno)
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> FsResult<u32> {
        let (of, write, append) = self.handle(fh.0)?;
        if !write {
            return Err(Errno::EBADF);
        }
        let _guard = of.lock.write().expect("file lock");
        let crypt = of.crypt();
        // O_APPEND: the end as it is now, not as the kernel last saw it (another process
        // may have appended meanwhile).
        let offset = if append { crypt.plaintext_len().map_err(io_errno)? } else { offset };
        crypt.write_at(offset, data).map_err(io_errno)?;
        Ok(data.len() as u32)
    }

    fn do_release(&self, fh: FileHandle) {
        let removed = self.handles.write().expect("handles lock").remove(&fh.0);
        if let Some(h) = removed {
            self.release_open_file(h.ino);
        }
    }

    fn do_fsync(&self, fh: FileHandle, datasync: bool) -> FsResult<()> {
        let (of, _, _) = self.handle(fh.0)?;
        if datasync { of.file.sync_data() } else { of.file.sync_all() }.map_err(io_errno)
    }

    fn do_fallocate(&self, fh: FileHandle, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let (of, write, _) = self.handle(fh.0)?;
        if !write {
            return Err(Errno::EBADF);
        }
        match mode {
            0 => {
                let _guard = of.lock.write().expect("file lock");
                let crypt = of.crypt();
                if offset + length > crypt.plaintext_len().map_err(io_errno)? {
                    crypt.set_len(offset + length).map_err(io_errno)?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::ENOTSUP),
        }
    }

    fn do_mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        let (path, stored) = self.child(parent, name)?;
        std::fs::DirBuilder::new().mode(mode & !umask & 0o7777).create(&path).map_err(io_errno)?;
        self.chown_new(req, &path)?;
        self.entry(parent, &stored, &path)
    }

    fn do_mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        let (path, stored) = self.child(parent, name)?;
        if mode & libc::S_IFMT == libc::S_IFREG {
            self.create_backing_file(req, &path, mode & !umask)?;
        } else {
            let c = cpath(&path)?;
            check(unsafe { libc::mknod(c.as_ptr(), mode & !umask, rdev as libc::dev_t) })?;
            self.chown_new(req, &path)?;
        }
        self.entry(parent, &stored, &path)
    }

    fn do_symlink(&self, req: &Request, parent: INodeNo, name: &OsStr, target: &Path) -> FsResult<FileAttr> {
        self.check_writable()?;
        let (path, stored) = self.child(parent, name)?;
        let encrypted = self.names.encrypt_target(target.as_os_str());
        if encrypted.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        std::os::unix::fs::symlink(&encrypted, &path).map_err(io_errno)?;
        self.chown_new(req, &path)?;
        self.entry(parent, &stored, &path)
    }

    fn do_readlink(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
        let path = self.root.join(self.rel_path(ino)?);
        let stored = std::fs::read_link(&path).map_err(io_errno)?;
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

    fn do_unlink(&self, parent: INodeNo, name: &OsStr, dir: bool) -> FsResult<()> {
        self.check_writable()?;
        let (path, stored) = self.child(parent, name)?;
        let meta = std::fs::symlink_metadata(&path).map_err(io_errno)?;
        if dir { std::fs::remove_dir(&path) } else { std::fs::remove_file(&path) }.map_err(io_errno)?;
        self.inodes.unlinked(self.inodes.fuse_ino(meta.ino()), parent.0, &stored);
        Ok(())
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.check_writable()?;
        let (from, from_name) = self.child(parent, name)?;
        let (to, to_name) = self.child(newparent, newname)?;
        let moved = std::fs::symlink_metadata(&from).map_err(io_errno)?;
        let replaced = std::fs::symlink_metadata(&to).ok();
        let (c_from, c_to) = (cpath(&from)?, cpath(&to)?);
        check(unsafe {
            libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), flags.bits())
        })?;
        let moved_ino = self.inodes.fuse_ino(moved.ino());
        let src = (parent.0, from_name.as_os_str());
        let dst = (newparent.0, to_name.as_os_str());
        if let Some(other) = replaced.filter(|m| m.ino() != moved.ino()) {
            let other_ino = self.inodes.fuse_ino(other.ino());
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                self.inodes.renamed(other_ino, dst, src);
            } else {
                self.inodes.unlinked(other_ino, dst.0, dst.1);
            }
        }
        self.inodes.renamed(moved_ino, src, dst);
        Ok(())
    }

    fn do_link(&self, ino: INodeNo, newparent: INodeNo, newname: &OsStr) -> FsResult<FileAttr> {
        self.check_writable()?;
        let existing = self.root.join(self.rel_path(ino)?);
        let (path, stored) = self.child(newparent, newname)?;
        std::fs::hard_link(&existing, &path).map_err(io_errno)?;
        self.entry(newparent, &stored, &path)
    }

    fn do_opendir(&self, ino: INodeNo) -> FsResult<u64> {
        let path = self.root.join(self.rel_path(ino)?);
        let mut entries =
            vec![(ino.0, FileType::Directory, ".".into()), (ROOT_INO, FileType::Directory, "..".into())];
        for entry in std::fs::read_dir(&path).map_err(io_errno)? {
            let entry = entry.map_err(io_errno)?;
            let Some(name) = self.plain_name(ino.0, &entry.file_name()) else { continue };
            let kind = entry.file_type().ok().and_then(FileType::from_std).unwrap_or(FileType::RegularFile);
            entries.push((self.inodes.fuse_ino(entry.ino()), kind, name));
        }
        let fh = self.next_fh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dirs.lock().expect("dir handles lock").insert(fh, Arc::new(DirHandle { entries }));
        Ok(fh)
    }

    fn do_readdir(&self, fh: FileHandle, offset: u64, reply: &mut ReplyDirectory) -> FsResult<()> {
        let dir = self.dirs.lock().expect("dir handles lock").get(&fh.0).cloned().ok_or(Errno::EBADF)?;
        for (i, (ino, kind, name)) in dir.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        Ok(())
    }

    fn do_statfs(&self) -> FsResult<libc::statvfs> {
        let c = cpath(&self.root)?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
        Ok(st)
    }
}

/// Replies with a result: `$ok` turns the value into the reply.
macro_rules! reply {
    ($reply:expr, $result:expr, |$v:pat_param| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply!(reply, self.do_lookup(parent, name), |a| reply.entry(&TTL, &a, GEN));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        reply!(reply, self.do_getattr(ino, fh), |a| reply.attr(&TTL, &a));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.do_setattr(req, ino, mode, uid, gid, size, atime, mtime, fh);
        reply!(reply, result, |a| reply.attr(&TTL, &a));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        reply!(reply, self.do_readlink(ino), |t| reply.data(&t));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply!(reply, self.do_mknod(req, parent, name, mode, umask, rdev), |a| reply.entry(&TTL, &a, GEN));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        reply!(reply, self.do_mkdir(req, parent, name, mode, umask), |a| reply.entry(&TTL, &a, GEN));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply!(reply, self.do_unlink(parent, name, false), |_| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply!(reply, self.do_unlink(parent, name, true), |_| reply.ok());
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        reply!(reply, self.do_symlink(req, parent, link_name, target), |a| reply.entry(&TTL, &a, GEN));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply!(reply, self.do_rename(parent, name, newparent, newname, flags), |_| reply.ok());
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        reply!(reply, self.do_link(ino, newparent, newname), |a| reply.entry(&TTL, &a, GEN));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        reply!(reply, self.do_open(req, ino, flags), |fh| reply.opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply!(reply, self.do_read(fh, offset, size), |d| reply.data(&d));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply!(reply, self.do_write(fh, offset, data), |n| reply.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        reply!(reply, self.do_fsync(fh, datasync), |_| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply!(reply, self.do_opendir(ino), |fh| reply.opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.do_readdir(fh, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().expect("dir handles lock").remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let result = self.rel_path(ino).and_then(|rel| {
            std::fs::File::open(self.root.join(rel)).and_then(|d| d.sync_all()).map_err(io_errno)
        });
        reply!(reply, result, |_| reply.ok());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply!(reply, self.do_statfs(), |st| reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            255,
            st.f_frsize as u32
        ));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply!(reply, self.set_xattr(ino, name, value, flags), |_| reply.ok());
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(self.get_xattr(ino, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.list_xattr(ino), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply!(reply, self.remove_xattr(ino, name), |_| reply.ok());
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        reply!(reply, self.do_create(req, parent, name, mode, umask, flags), |(attr, fh)| reply.created(
            &TTL,
            &attr,
            GEN,
            FileHandle(fh),
            FopenFlags::empty()
        ));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply!(reply, self.do_fallocate(fh, offset, length, mode), |_| reply.ok());
    }
}

/// The xattr protocol: size 0 asks for the length; a too-small buffer is ERANGE.
fn reply_xattr(result: FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}
