//! `fuser::Filesystem` for [`KmsFs`]: each request is a small function returning a
//! `FsResult` (in `node`, `node_dir_ops`, `node_open_create`, `listing`, `xattr`, or on the
//! open file's handle), and one line here replies with it.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::open_files::Unprivileged;
use super::{io_errno, FsResult, KmsFs, TTL};
use crate::sys;

/// Largest read and write the kernel sends in one request.
const MAX_IO: u32 = 1 << 20;
/// READs this large go to a worker thread (`KmsFs::offload`): read-ahead sends 1 MiB READs,
/// a small file is read in one READ of its size.
const OFFLOAD_READ: u32 = 256 << 10;

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
    /// Runs `job` on a worker thread, or on this one without workers.
    fn offload(&self, job: impl FnOnce() + Send + 'static) {
        match &self.workers {
            Some(workers) => workers.run(job),
            None => job(),
        }
    }

    /// The generation of an object: from its birth time (stable across remounts, see
    /// `handles`), else the inode table's.
    pub(super) fn generation(&self, attr: &FileAttr) -> Generation {
        Generation(
            super::handles::generation_from_birth(attr.crtime)
                .unwrap_or_else(|| self.inodes.generation(attr.ino.0)),
        )
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
        // before every setattr. EXPORT_SUPPORT makes file handles (and NFS export) work for
        // nodes the kernel has forgotten: it asks for them by LOOKUP of "." and ".."
        // (`handles`).
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_EXPORT_SUPPORT;
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
        reply!(reply, self.do_open(req, ino, flags), |fh| reply
            .opened(FileHandle(fh), self.open_flags(flags.0)));
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
        let of = match self.open_files.handle(fh.0) {
            Ok(h) => h.open,
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
        req: &Request,
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
        // The kernel sets the flag for a writer without CAP_FSETID.
        let kill_privs = write_flags
            .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            .then(|| Unprivileged { gid: req.gid(), pid: req.pid() });
        let result =
            self.with_space(|| self.open_files.handle(fh.0)?.write(offset, data, kill_privs.as_ref()));
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
        if let Some(last) = self.open_files.close_handle(fh.0) {
            self.drop_store_if_unlinked(&last);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _request = self.begin_request();
        let of = match self.sync_new_dirs_above(ino.0).and_then(|()| self.open_files.handle(fh.0)) {
            Ok(h) => h.open,
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
        let path = self
            .sync_new_dirs_above(ino.0)
            .and_then(|()| self.backing(ino))
            .and_then(|p| sys::c_path(&p).map_err(io_errno));
        let path = match path {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        self.offload(move || reply!(reply, sys::fsync_dir(&path).map_err(io_errno), |_| reply.ok()));
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
            self.open_flags(flags)
        ));
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _request = self.begin_request();
        // The kernel leaves set-ID bits on fallocate to the filesystem as on write.
        let kill_privs = self.kills_privs_for(req);
        let result = self.with_space(|| {
            self.open_files.handle(fh.0)?.fallocate(offset, length, mode, kill_privs.as_ref())
        });
        reply!(reply, result, |_| reply.ok());
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
