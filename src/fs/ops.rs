//! `fuser::Filesystem` for [`KmsFs`]: each request is a small function returning a
//! `FsResult`, and one line replies with it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use super::{io_errno, FsResult, KmsFs, TTL};

/// Largest read and write the kernel sends in one request.
const MAX_IO: u32 = 1 << 20;
/// READs this large go to a worker thread (`KmsFs::offload`): read-ahead sends 1 MiB READs,
/// a small file is read in one READ of its size.
const OFFLOAD_READ: u32 = 256 << 10;

fn cpath(path: &Path) -> FsResult<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// What a metadata change applies to: the backing file open for a handle (no path walk,
/// and the only way to an unlinked one), or the backing path.
enum Target {
    Path(CString),
    Fd(Arc<super::OpenFile>),
}

/// chmod of `path` that never follows a symlink in its last component (as gocryptfs,
/// glibc's fchmodat(AT_SYMLINK_NOFOLLOW) and qemu's 9p server do it): open it with
/// `O_PATH | O_NOFOLLOW` (needs no read permission and opens no device), check on the
/// descriptor that it is not a symlink, and chmod `/proc/self/fd/N`, which names exactly the
/// inode opened (`fchmod` does not take O_PATH descriptors). A symlink found there is left
/// alone: ELOOP.
fn chmod_nofollow(path: &CString, mode: u32) -> FsResult<()> {
    let fd = open_nofollow(path, libc::O_PATH)?;
    // SAFETY: fstat fills a zeroed stat for an open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Errno::ELOOP);
    }
    let proc_path = cpath(&proc_fd_path(&fd))?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chmod(proc_path.as_ptr(), mode) })
}

/// Opens `path` with `flags | O_NOFOLLOW | O_CLOEXEC`.
fn open_nofollow(path: &CString, flags: libc::c_int) -> FsResult<OwnedFd> {
    // SAFETY: NUL-terminated path; the descriptor returned is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io_errno(io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A backing directory opened without following a symlink in its last component, and the
/// `/proc/self/fd/N` path that names exactly that directory for path-taking APIs (read_dir,
/// read, remove_file): renaming it away and putting a symlink in its place changes nothing
/// for them.
pub(super) struct PinnedDir {
    _fd: OwnedFd,
    pub path: PathBuf,
}

pub(super) fn pin_dir(path: &Path) -> FsResult<PinnedDir> {
    let fd = open_nofollow(&cpath(path)?, libc::O_PATH | libc::O_DIRECTORY)?;
    Ok(PinnedDir { path: proc_fd_path(&fd), _fd: fd })
}

fn proc_fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Clears the set-user-ID bit, and the set-group-ID bit of a group-executable file, as the
/// kernel does when an unprivileged process writes to or truncates a file (with
/// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves it to the filesystem). A backing file system
/// does it by itself for a daemon without CAP_FSETID; this covers a daemon running as root.
fn kill_suid_sgid(fd: &impl AsRawFd) -> FsResult<()> {
    // SAFETY: fstat fills a zeroed stat for an open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    let mut kill = st.st_mode & libc::S_ISUID;
    if st.st_mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    if kill == 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    let mode = st.st_mode & 0o7777 & !kill;
    // fchmod does not take O_PATH descriptors; /proc/self/fd/N names exactly that inode.
    let path = cpath(&proc_fd_path(fd))?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })
}

/// EFBIG for a file that would end at `offset + len` past the largest size a file can have
/// (as ext4 answers a write, truncate or copy_file_range beyond its limit).
fn check_file_size(offset: u64, len: u64) -> FsResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= crate::format::MAX_PLAINTEXT_SIZE => Ok(()),
        _ => Err(Errno::EFBIG),
    }
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
    /// Whether this filesystem must clear set-ID bits for `req` (the kernel's test is
    /// CAP_FSETID; the caller's uid stands in for it here).
    fn kills_privs_for(&self, req: &Request) -> bool {
        self.kernel.kill_privs && req.uid() != 0
    }

    fn do_lookup(&self, req: &Request, parent: INodeNo, name: &OsStr) -> FsResult<FileAttr> {
        let c = self.child(req, parent, name)?;
        self.entry(parent, &c.stored, name, &c.path)
    }

    fn do_getattr(&self, ino: INodeNo) -> FsResult<FileAttr> {
        // An open file is asked through its descriptor (the one all its handles share): one
        // fstat instead of a walk of the whole backing path (GETATTR and SETATTR mostly come
        // while a program has the file open: tar's fchown, fchmod and futimens of every file
        // it writes).
        if let Some(of) = self.open_file_of(ino.0) {
            let meta = of.file.metadata().map_err(io_errno)?;
            return Ok(self.attr(ino.0, &meta, None));
        }
        match self.stat_ino(ino) {
            Ok((meta, path)) => Ok(self.attr(ino.0, &meta, path.as_deref())),
            // A directory removed while open (rmdir, or replaced by a rename) answers through
            // the handle, with no link left, as on ext4 (the backing one may still wait in the
            // trash).
            Err(e) => match self.open_dir_metadata(ino.0) {
                Some(meta) => Ok(FileAttr { nlink: 0, ..self.attr(ino.0, &meta, None) }),
                None => Err(e),
            },
        }
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
        // Only regular files are ever open, so an open one needs no stat to tell.
        let (is_symlink, target) = match self.open_file_of(ino.0) {
            Some(of) => (false, Target::Fd(of)),
            None => match self.stat_ino(ino)? {
                (meta, Some(path)) => (meta.file_type().is_symlink(), Target::Path(cpath(&path)?)),
                // Opened (and unlinked) since the first look.
                (_, None) => (false, Target::Fd(self.open_file_of(ino.0).ok_or(Errno::ENOENT)?)),
            },
        };
        if let Some(size) = size {
            self.truncate(req, ino, fh, size)?;
        }
        if size.is_some() && self.kills_privs_for(req) {
            match &target {
                Target::Path(p) => kill_suid_sgid(&open_nofollow(p, libc::O_PATH)?)?,
                Target::Fd(of) => kill_suid_sgid(&of.file)?,
            }
        }
        // None of these follows a symlink in the last component of the backing path, which a
        // writer of the cipher directory may put there after the stat above: chmod goes
        // through an O_PATH descriptor, chown is lchown, utimensat has AT_SYMLINK_NOFOLLOW.
        if let Some(mode) = mode.filter(|_| !is_symlink) {
            match &target {
                Target::Path(p) => chmod_nofollow(p, mode & 0o7777)?,
                Target::Fd(of) => check(unsafe { libc::fchmod(of.file.as_raw_fd(), mode & 0o7777) })?,
            }
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
        self.do_getattr(ino)
    }

    /// Sets a file's plaintext size, through a handle if given, else through a temporary
    /// open (which is a key use, checked and audited like any open).
    fn truncate(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, size: u64) -> FsResult<()> {
        let from_handle = fh.and_then(|fh| self.handle(fh.0).ok()).map(|(of, _, _)| of);
        check_file_size(size, 0)?;
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
                if self.kills_privs_for(req) {
                    kill_suid_sgid(&of.file)?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(self.add_handle(ino.0, of, write, self.appends(flags.0))),
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
        let c = self.child(req, parent, name)?;
        let (file, key) =
            self.create_backing_file(req, &c, mode & !umask, &self.display_child(parent, name))?;
        let meta = file.metadata().map_err(io_errno)?;
        let ino = self.inodes.fuse_ino(meta.ino());
        self.inodes.created(ino);
        self.inodes.remember(ino, parent.0, c.stored.entry(), name);
        let attr = self.attr(ino, &meta, None);
        let label = self.display_path(ino);
        let fresh = Arc::new(super::OpenFile {
            file,
            writable: true,
            key,
            lock: Default::default(),
            label,
            last_block: Default::default(),
        });
        let of = {
            let mut map = self.open_files.lock().expect("open files lock");
            let (of, n) = map.entry(ino).or_insert_with(|| (fresh, 0));
            *n += 1;
            of.clone()
        };
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        Ok((attr, self.add_handle(ino, of, write, self.appends(flags))))
    }

    /// The flags of every OPEN and CREATE reply. Without the write-back cache every WRITE
    /// has been answered before close(2) returns and FLUSH has nothing to do (locks are the
    /// kernel's own: kmsfs does not ask for FUSE_POSIX_LOCKS), so FOPEN_NOFLUSH spares one
    /// round trip per close. With it, FLUSH is what makes the kernel write dirty pages back
    /// at close, so it stays.
    fn open_flags(&self) -> FopenFlags {
        if self.kernel.writeback_cache {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        }
    }

    /// Whether writes through a handle opened with `flags` go to the end of the file
    /// whatever their offset. Not with the write-back cache: the kernel has applied O_APPEND
    /// already, and a WRITE at writeback carries data of any handle.
    fn appends(&self, flags: i32) -> bool {
        flags & libc::O_APPEND != 0 && !self.kernel.writeback_cache
    }

    /// Runs `job` on a worker thread, or on this one without workers.
    fn offload(&self, job: impl FnOnce() + Send + 'static) {
        match &self.workers {
            Some(workers) => workers.run(job),
            None => job(),
        }
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8], kill_privs: bool) -> FsResult<u32> {
        let (of, write, append) = self.handle(fh.0)?;
        if !write {
            return Err(Errno::EBADF);
        }
        check_file_size(offset, data.len() as u64)?;
        let _guard = of.lock.write().expect("file lock");
        if kill_privs {
            kill_suid_sgid(&of.file)?;
        }
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

    fn do_fallocate(&self, fh: FileHandle, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        let (of, write, _) = self.handle(fh.0)?;
        if !write {
            return Err(Errno::EBADF);
        }
        check_file_size(offset, length)?;
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
        let c = self.child(req, parent, name)?;
        self.write_sidecar(&c.path, &c.stored)?;
        if let Err(e) = std::fs::DirBuilder::new().mode(mode & !umask & 0o7777).create(&*c.path) {
            self.remove_sidecar_if_unused(&c);
            return Err(io_errno(e));
        }
        let made = (|| {
            self.chown_new(req, &c.path)?;
            let ino = self.inodes.fuse_ino(std::fs::symlink_metadata(&*c.path).map_err(io_errno)?.ino());
            let caller = self.caller(req);
            let label = self.display_child(parent, name);
            self.create_dir_meta(Self::access(&caller, &label), ino, &c.path, &c.dir.key_id, false, true)
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&*c.path);
            self.remove_sidecar(&c.path, &c.stored);
            return Err(e);
        }
        self.new_entry(parent, &c.stored, name, &c.path)
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
        let c = self.child(req, parent, name)?;
        if mode & libc::S_IFMT == libc::S_IFREG {
            self.create_backing_file(req, &c, mode & !umask, &self.display_child(parent, name))?;
        } else {
            self.write_sidecar(&c.path, &c.stored)?;
            let p = cpath(&c.path)?;
            if let Err(e) = check(unsafe { libc::mknod(p.as_ptr(), mode & !umask, rdev as libc::dev_t) }) {
                self.remove_sidecar_if_unused(&c);
                return Err(e);
            }
            self.chown_new(req, &c.path)?;
        }
        self.new_entry(parent, &c.stored, name, &c.path)
    }

    fn do_symlink(&self, req: &Request, parent: INodeNo, name: &OsStr, target: &Path) -> FsResult<FileAttr> {
        self.check_writable()?;
        let c = self.child(req, parent, name)?;
        let encrypted = self.names.encrypt_target(target.as_os_str());
        if encrypted.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        self.write_sidecar(&c.path, &c.stored)?;
        if let Err(e) = std::os::unix::fs::symlink(&encrypted, &*c.path) {
            self.remove_sidecar_if_unused(&c);
            return Err(io_errno(e));
        }
        self.chown_new(req, &c.path)?;
        self.new_entry(parent, &c.stored, name, &c.path)
    }

    fn do_readlink(&self, ino: INodeNo) -> FsResult<Vec<u8>> {
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

    fn do_unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, dir: bool) -> FsResult<()> {
        self.check_writable()?;
        let c = self.child(req, parent, name)?;
        let meta = std::fs::symlink_metadata(&*c.path).map_err(io_errno)?;
        let ino = self.inodes.fuse_ino(meta.ino());
        if dir {
            self.remove_backing_dir(&c.path, &meta)?;
            self.dir_states.write().expect("dir states lock").remove(&ino);
            self.forget_cached(ino);
            if let Some(prefetch) = &self.prefetch {
                prefetch.forget(ino);
            }
        } else if meta.is_dir() {
            return Err(Errno::EISDIR);
        } else if meta.nlink() > 1 || self.open_file_of(ino).is_some() {
            // Another name or an open handle keeps the blocks, so there is no freeing to
            // defer; and the link count must drop now: a trash link would show as one link
            // too many to fstat on the open handle and to stat of the other names.
            std::fs::remove_file(&*c.path).map_err(io_errno)?;
        } else {
            self.discard(&c.path)?;
        }
        self.remove_sidecar(&c.path, &c.stored);
        self.inodes.unlinked(ino, parent.0, c.stored.entry());
        Ok(())
    }

    /// rmdir of a backing directory that holds only kmsfs's own files (its metadata): into
    /// the trash with them if there is one (the kernel holds the directory locked, so no
    /// entry can appear in it through the mount meanwhile). Without a trash the metadata is
    /// removed first, and put back if the final rmdir fails (an entry appeared meanwhile).
    fn remove_backing_dir(&self, path: &Path, meta: &std::fs::Metadata) -> FsResult<()> {
        if !meta.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if self.trash.is_some() {
            internal_entries(&pin_dir(path)?)?;
            return self.discard(path);
        }
        let saved = empty_out(path)?;
        std::fs::remove_dir(path).map_err(|e| {
            restore(saved);
            io_errno(e)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn do_rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.check_writable()?;
        // Names are encrypted per directory: the moved entry gets the name encrypted under
        // the destination directory's names key. Its content key stays.
        let from = self.child(req, parent, name)?;
        let to = self.child(req, newparent, newname)?;
        let moved = std::fs::symlink_metadata(&*from.path).map_err(io_errno)?;
        let replaced = std::fs::symlink_metadata(&*to.path).ok();
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        // A directory may replace an empty directory; the backing one still holds its
        // metadata, which goes first (and comes back if the rename fails).
        let replaces_dir = !exchange
            && !flags.contains(RenameFlags::RENAME_NOREPLACE)
            && moved.is_dir()
            && replaced.as_ref().is_some_and(|m| m.is_dir() && m.ino() != moved.ino());
        let saved = if replaces_dir { Some(empty_out(&to.path)?) } else { None };
        self.write_sidecar(&to.path, &to.stored)?;
        let (c_from, c_to) = (cpath(&from.path)?, cpath(&to.path)?);
        if let Err(e) = check(unsafe {
            libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), flags.bits())
        }) {
            if let Some(saved) = saved {
                restore(saved);
            }
            if replaced.is_none() {
                self.remove_sidecar(&to.path, &to.stored);
            }
            return Err(e);
        }
        // RENAME_WHITEOUT leaves a whiteout (a 0:0 character device) under the old name,
        // which then still needs its long-name sidecar.
        let whiteout = flags.contains(RenameFlags::RENAME_WHITEOUT);
        if !exchange && !whiteout && *from.path != *to.path {
            self.remove_sidecar(&from.path, &from.stored);
        }
        let moved_ino = self.inodes.fuse_ino(moved.ino());
        let src = (parent.0, from.stored.entry());
        let dst = (newparent.0, to.stored.entry());
        if let Some(other) = replaced.filter(|m| m.ino() != moved.ino()) {
            let other_ino = self.inodes.fuse_ino(other.ino());
            if exchange {
                self.inodes.renamed(other_ino, dst, (src.0, src.1, name));
            } else {
                self.inodes.unlinked(other_ino, dst.0, dst.1);
                self.dir_states.write().expect("dir states lock").remove(&other_ino);
            }
        }
        self.inodes.renamed(moved_ino, src, (dst.0, dst.1, newname));
        Ok(())
    }

    fn do_link(
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

    fn do_statfs(&self) -> FsResult<libc::statvfs> {
        self.settle_removals();
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

impl KmsFs {
    fn generation(&self, attr: &FileAttr) -> Generation {
        Generation(self.inodes.generation(attr.ino.0))
    }

    fn reply_entry(&self, reply: ReplyEntry, result: FsResult<FileAttr>) {
        reply!(reply, result, |a| reply.entry(&TTL, &a, self.generation(&a)));
    }
}

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // Each saves round trips where the kernel offers it: listings that carry attributes
        // (no LOOKUP per entry); lookups in one directory not serialised; symlink targets
        // kept in the page cache (a symlink's target never changes in place); with
        // HANDLE_KILLPRIV_V2 no GETXATTR of `security.capability` before every write (this
        // filesystem clears set-ID bits itself, see `kill_suid_sgid`). The write-back cache,
        // when asked for (`FsOptions::writeback_cache`), gathers small writes into large
        // WRITEs sent in parallel and spares the GETATTR that an invalidated size costs
        // before every setattr.
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.options.writeback_cache {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let granted = wanted & config.capabilities();
        let _ = config.add_capabilities(granted);
        self.kernel = super::KernelFeatures {
            writeback_cache: granted.contains(InitFlags::FUSE_WRITEBACK_CACHE),
            kill_privs: granted.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2),
        };
        log::debug!("kernel features: {:?}", self.kernel);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _request = self.begin_request();
        self.reply_entry(reply, self.do_lookup(req, parent, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // No `begin_request`: nothing waits on a FORGET, so there is no next request to poll
        // for, and BATCH_FORGET (after `drop_caches`, thousands of inodes) calls this once
        // per inode, which would poll after each.
        if self.inodes.forget(ino.0, nlookup) {
            self.forget_cached(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _request = self.begin_request();
        reply!(reply, self.do_getattr(ino), |a| reply.attr(&TTL, &a));
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
        let _request = self.begin_request();
        let result = self.with_space(|| self.do_setattr(req, ino, mode, uid, gid, size, atime, mtime, fh));
        reply!(reply, result, |a| reply.attr(&TTL, &a));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _request = self.begin_request();
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
        let _request = self.begin_request();
        self.reply_entry(reply, self.with_space(|| self.do_mknod(req, parent, name, mode, umask, rdev)));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _request = self.begin_request();
        self.reply_entry(reply, self.with_space(|| self.do_mkdir(req, parent, name, mode, umask)));
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.begin_request();
        reply!(reply, self.do_unlink(req, parent, name, false), |_| reply.ok());
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.begin_request();
        reply!(reply, self.do_unlink(req, parent, name, true), |_| reply.ok());
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _request = self.begin_request();
        self.reply_entry(reply, self.with_space(|| self.do_symlink(req, parent, link_name, target)));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin_request();
        let result = self.with_space(|| self.do_rename(req, parent, name, newparent, newname, flags));
        reply!(reply, result, |_| reply.ok());
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _request = self.begin_request();
        self.reply_entry(reply, self.with_space(|| self.do_link(req, ino, newparent, newname)));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _request = self.begin_request();
        reply!(reply, self.do_open(req, ino, flags), |fh| reply.opened(FileHandle(fh), self.open_flags()));
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
        let _request = self.begin_request();
        let of = match self.handle(fh.0) {
            Ok((of, _, _)) => of,
            Err(e) => return reply.error(e),
        };
        let read = move || reply!(reply, of.read_at(offset, size), |d| reply.data(&d));
        // Small READs (a small file's whole content) are answered here: handing one over
        // would cost a thread wake-up, more than decrypting it.
        if size >= OFFLOAD_READ {
            self.offload(read);
        } else {
            read();
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _request = self.begin_request();
        let kill_privs = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let result = self.with_space(|| self.do_write(fh, offset, data, kill_privs));
        reply!(reply, result, |n| reply.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin_request();
        // Nothing to do here, but answered: with the write-back cache the kernel writes a
        // file's dirty pages at close only on the way to sending FLUSH, so a close that
        // returned has handed every byte to the daemon (a killed daemon loses nothing
        // closed). ENOSYS would save this round trip and lose that. Without the write-back
        // cache the kernel does not send FLUSH at all (FOPEN_NOFLUSH, see `open_flags`).
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
        let _request = self.begin_request();
        self.do_release(fh);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _request = self.begin_request();
        let of = match self.sync_new_dirs_above(ino.0).and_then(|()| self.handle(fh.0)) {
            Ok((of, _, _)) => of,
            Err(e) => return reply.error(e),
        };
        self.offload(move || {
            let synced = if datasync { of.file.sync_data() } else { of.file.sync_all() };
            reply!(reply, synced.map_err(io_errno), |_| reply.ok());
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _request = self.begin_request();
        reply!(reply, self.do_opendir(req, ino), |fh| reply.opened(FileHandle(fh), FopenFlags::empty()));
    }

    fn readdir(&self, req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _request = self.begin_request();
        match self.do_readdir(req, fh, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _request = self.begin_request();
        match self.do_readdirplus(req, fh, offset, &mut reply) {
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
        let _request = self.begin_request();
        self.dirs.lock().expect("dir handles lock").remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _request = self.begin_request();
        let path =
            match self.sync_new_dirs_above(ino.0).and_then(|()| self.backing(ino)).and_then(|p| cpath(&p)) {
                Ok(path) => path,
                Err(e) => return reply.error(e),
            };
        self.offload(move || {
            let synced = open_nofollow(&path, libc::O_RDONLY | libc::O_DIRECTORY)
                .and_then(|dir| check(unsafe { libc::fsync(dir.as_raw_fd()) }));
            reply!(reply, synced, |_| reply.ok());
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _request = self.begin_request();
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
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin_request();
        reply!(reply, self.with_space(|| self.set_xattr(req, ino, name, value, flags)), |_| reply.ok());
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _request = self.begin_request();
        reply_xattr(self.get_xattr(ino, name), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _request = self.begin_request();
        reply_xattr(self.list_xattr(ino), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _request = self.begin_request();
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
        let _request = self.begin_request();
        let result = self.with_space(|| self.do_create(req, parent, name, mode, umask, flags));
        reply!(reply, result, |(attr, fh)| reply.created(
            &TTL,
            &attr,
            self.generation(&attr),
            FileHandle(fh),
            self.open_flags()
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
        let _request = self.begin_request();
        reply!(reply, self.with_space(|| self.do_fallocate(fh, offset, length, mode)), |_| reply.ok());
    }
}

/// Removes kmsfs's own files from a backing directory that holds no user entry (else
/// ENOTEMPTY) and returns them, to be put back if what follows fails. Works on the directory
/// as opened, so a symlink swapped in for it cannot send the reads and removals elsewhere.
fn empty_out(path: &Path) -> FsResult<Emptied> {
    let dir = pin_dir(path)?;
    let saved: Vec<_> = internal_entries(&dir)?
        .into_iter()
        .map(|n| {
            let bytes = crate::volume::open_noatime(&dir.path.join(&n), false)
                .and_then(|mut f| {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
                })
                .unwrap_or_default();
            (n, bytes)
        })
        .collect();
    for (name, _) in &saved {
        let _ = std::fs::remove_file(dir.path.join(name));
    }
    Ok(Emptied { dir, saved })
}

/// The names in a backing directory (as opened), all of them kmsfs's own; ENOTEMPTY if it
/// holds a user entry.
fn internal_entries(dir: &PinnedDir) -> FsResult<Vec<std::ffi::OsString>> {
    let mut internal = Vec::new();
    for entry in std::fs::read_dir(&dir.path).map_err(io_errno)? {
        let name = entry.map_err(io_errno)?.file_name();
        match crate::volume::dirnames::classify(&name) {
            crate::volume::dirnames::BackingEntry::Internal => internal.push(name),
            _ => return Err(Errno::ENOTEMPTY),
        }
    }
    Ok(internal)
}

/// What [`empty_out`] removed, and from which directory (as opened).
struct Emptied {
    dir: PinnedDir,
    saved: Vec<(std::ffi::OsString, Vec<u8>)>,
}

/// Puts back what [`empty_out`] removed, into the same directory.
fn restore(emptied: Emptied) {
    for (name, bytes) in emptied.saved {
        let _ = crate::volume::write_atomically(&emptied.dir.path.join(name), &bytes, 0o644);
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
