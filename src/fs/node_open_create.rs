//! OPEN and CREATE: a file's data key is unwrapped once per inode (or made, for a new file)
//! and shared by every handle through the open-file table.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use fuser::{Errno, FileAttr, FopenFlags, INodeNo, OpenAccMode, OpenFlags, Request};

use super::open_files::OpenFile;
use super::{creation_mode, io_errno, kms_errno, BPath, Child, FsResult, KmsFs};
use crate::content::FileKey;
use crate::kms::keyring::Access;
use crate::sys::open_noatime;
use crate::volume::file_keys::{new_file_key, unwrap_header};
use crate::Error;

/// Opens a backing file read-write if possible (so every handle can share it), else
/// read-only. Also on a read-only mount: the kernel sends no write for it, and a file kept
/// open across `mount -o remount,rw` can then be written.
fn open_backing(path: &Path) -> FsResult<(File, bool)> {
    match open_noatime(path, true) {
        Ok(f) => return Ok((f, true)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)) => {}
        Err(e) => return Err(io_errno(e)),
    }
    Ok((open_noatime(path, false).map_err(io_errno)?, false))
}

impl KmsFs {
    pub(super) fn do_open(&self, req: &Request, ino: INodeNo, flags: OpenFlags) -> FsResult<u64> {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if write {
            self.check_writable()?;
        }
        let of = self.acquire_open_file(req, ino, write)?;
        let result = match (write, flags.0 & libc::O_TRUNC != 0) {
            (true, _) if !of.writable => Err(Errno::EACCES),
            (true, true) => of.truncate(0, self.kills_privs_for(req).as_ref()),
            _ => Ok(()),
        };
        match result {
            Ok(()) => Ok(self.add_handle(ino.0, of, write, self.appends(flags.0))),
            Err(e) => {
                self.open_files.release(ino.0);
                Err(e)
            }
        }
    }

    pub(super) fn do_create(
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
            self.create_backing_file(req, &c, creation_mode(mode, umask), &self.display_child(parent, name))?;
        let meta = file.metadata().map_err(io_errno)?;
        let ino = self.inodes.fuse_ino(meta.ino());
        self.inodes.created(ino);
        self.inodes.remember(ino, parent.0, c.stored.entry(), name);
        let attr = self.attr(ino, &meta, None);
        let of = self.open_files.insert(ino, OpenFile::new(file, true, key, self.display_path(ino)));
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        Ok((attr, self.add_handle(ino, of, write, self.appends(flags))))
    }

    /// The flags of an OPEN or CREATE reply for a handle opened with `flags`.
    ///
    /// Without the write-back cache every WRITE has been answered before close(2) returns
    /// and FLUSH has nothing to do (locks are the kernel's own: kmsfs does not ask for
    /// FUSE_POSIX_LOCKS), so FOPEN_NOFLUSH spares one round trip per close. With it, FLUSH
    /// is what makes the kernel write dirty pages back at close, so it stays.
    ///
    /// A handle that cannot read (tar, cp, dd and shell redirections create their files
    /// write-only) gets FOPEN_DIRECT_IO: each write(2) becomes one WRITE, instead of one
    /// per page-cache folio it touches (tar's 10 KiB records straddle folios: 1.7 WRITEs
    /// per file against 1.4 write calls), and the kernel no longer asks for
    /// `security.capability` before a new file's first write (a direct write leaves
    /// set-ID clearing to the daemon, which it does for HANDLE_KILLPRIV_V2 already, and
    /// no kmsfs file can carry that attribute: `security.*` is not supported). Errors are
    /// still those of the write itself. Such a handle cannot be mmapped (a mapping needs
    /// read access), so the page cache is never needed for it; what it writes is not
    /// kept there for a later reader (the kernel drops any cached pages a direct write
    /// overlaps), which costs a later read of the file one READ (a file's last, partial
    /// page was never kept anyway). Not with the write-back cache, whose point is the
    /// page cache.
    pub(super) fn open_flags(&self, flags: i32) -> FopenFlags {
        if self.kernel.writeback_cache {
            FopenFlags::empty()
        } else if flags & libc::O_ACCMODE == libc::O_WRONLY {
            FopenFlags::FOPEN_NOFLUSH | FopenFlags::FOPEN_DIRECT_IO
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

    /// Registers a handle of a reference to `open` and returns its number.
    fn add_handle(&self, ino: u64, open: Arc<OpenFile>, write: bool, append: bool) -> u64 {
        let fh = self.new_fh();
        self.open_files.add_handle(fh, ino, open, write, append);
        fh
    }

    /// The shared open state of `ino`, loading its key if no handle has it yet. Every call
    /// is a key use: the key's state is checked and the access audited. `to_write`: the
    /// caller asked to write (only then may a file without a header be given one).
    pub(super) fn acquire_open_file(
        &self,
        req: &Request,
        ino: INodeNo,
        to_write: bool,
    ) -> FsResult<Arc<OpenFile>> {
        let caller = self.caller(req);
        let label = self.display_path(ino.0);
        let access = Self::access(&caller, &label);
        if let Some(of) = self.open_files.acquire(ino.0) {
            let ctx = self.config.file_context(&of.key.file_id);
            // Against the key that wraps the file now, which a live re-wrap may have changed.
            if let Err(e) = self.keyring.authorize_cached(access, &of.wrapped_by(), &ctx) {
                self.open_files.release(ino.0);
                return Err(kms_errno(e));
            }
            return Ok(of);
        }
        let path = self.backing(ino)?;
        self.read_siblings_ahead(ino.0, &path);
        let (file, writable) = open_backing(&path)?;
        let key = self.load_key(ino, &file, writable && to_write, access)?;
        Ok(self.open_files.insert(ino.0, OpenFile::new(file, writable, key, label)))
    }

    /// Tells the read-ahead which file of its directory is being opened.
    fn read_siblings_ahead(&self, ino: u64, path: &BPath) {
        let (Some(prefetch), true) = (&self.prefetch, path.is_direct()) else { return };
        if let (Some((dir, stored)), Some(dir_path)) = (self.inodes.first_name(ino), path.parent()) {
            prefetch.opening(dir, dir_path, &stored);
        }
    }

    /// Reads the header and unwraps the data key, newest slot first. `may_repair`: the open
    /// is for writing, through a descriptor that can write.
    fn load_key(&self, ino: INodeNo, file: &File, may_repair: bool, access: Access<'_>) -> FsResult<FileKey> {
        let meta = file.metadata().map_err(io_errno)?;
        if meta.len() == 0 {
            // Created but never given a header (a crash right after create): a new, empty file,
            // given its header by the next open for writing. Never by a read-only open (the
            // daemon, often root, would write where the caller asked to read), and never
            // through a hard link or anything but a regular file: a user who can write the
            // cipher directory could otherwise point that write at a file of someone else's.
            if !may_repair || !meta.is_file() || meta.nlink() != 1 {
                log::warn!(
                    "{} has no header; it is given one only by an open for writing of a regular \
                     file with one link; answering EIO",
                    access.path
                );
                return Err(Errno::EIO);
            }
            // It gets the key of its directory, as at create.
            let parent = self.inodes.parent(ino.0).ok_or(Errno::EIO)?;
            let key_id = self.dir_state(access, INodeNo(parent))?.key_id.clone();
            return self.write_new_header(file, access, &key_id);
        }
        let found = match unwrap_header(&self.keyring, access, &self.config, file) {
            // The header may have been read while a re-wrap was writing it: read it again
            // once that write is done.
            Err(Error::InvalidCiphertext(_)) => {
                let _settled = self.rewrap_lock.lock().expect("rewrap lock");
                unwrap_header(&self.keyring, access, &self.config, file)
            }
            other => other,
        };
        let found = found.map_err(|e| {
            if let Error::InvalidCiphertext(why) = &e {
                log::warn!("{}: {why}; answering EIO", access.path);
            }
            kms_errno(e)
        })?;
        let key = found.into_file_key();
        // The kernel never asks to read a file whose size is 0, so a file cut down to its bare
        // header (or to anything shorter than the empty block) is caught here, at open.
        let crypt = key.crypt(file, access.path);
        if crypt.plaintext_len().map_err(io_errno)? == 0 {
            crypt.check_empty().map_err(io_errno)?;
        }
        Ok(key)
    }

    /// Gives a new file its data key under `key_id` and writes its header.
    fn write_new_header(&self, file: &File, access: Access<'_>, key_id: &str) -> FsResult<FileKey> {
        let (key, header) = new_file_key(&self.keyring, access, &self.config, key_id).map_err(kms_errno)?;
        key.crypt(file, access.path).init_new(&header.encode()).map_err(io_errno)?;
        Ok(key)
    }

    /// Creates a regular file of `mode` (see `creation_mode`) with its header; returns the
    /// backing file.
    pub(super) fn create_backing_file(
        &self,
        req: &Request,
        c: &Child,
        mode: u32,
        label: &str,
    ) -> FsResult<(File, FileKey)> {
        self.write_sidecar(&c.path, &c.stored)?;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            // O_NOATIME as for every backing file (`open_noatime`): the daemon's own reads of
            // the last block before each append would otherwise dirty the inode. The new
            // file is the daemon's, so the flag is never refused.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOATIME)
            .open(&*c.path);
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                self.remove_sidecar_if_unused(c);
                return Err(io_errno(e));
            }
        };
        let made = (|| {
            self.chown_new(req, &c.path, libc::S_IFREG | mode)?;
            let caller = self.caller(req);
            // New files take the key of the directory they are created in.
            self.write_new_header(&file, Self::access(&caller, label), &c.dir.key_id)
        })();
        match made {
            Ok(key) => Ok((file, key)),
            Err(e) => {
                let _ = std::fs::remove_file(&*c.path);
                self.remove_sidecar(&c.path, &c.stored);
                Err(e)
            }
        }
    }
}
