//! Open files: one backing fd and one data key per inode, shared by all its handles and
//! zeroized when the last handle closes; and the handles themselves, which carry what an
//! open() allowed (write, append) and do the writes.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, RwLock};

use fuser::Errno;

use super::{io_errno, FsResult};
use crate::content::{CryptFile, FileKey, LastBlock};
use crate::sys;

/// An inode with open handles.
pub struct OpenFile {
    pub file: File,
    pub writable: bool,
    pub key: FileKey,
    /// Readers share, writers (and truncate) exclude: block read-modify-write must not
    /// interleave.
    lock: RwLock<()>,
    /// The path at open time, for log messages.
    label: String,
    /// The last block as last written through this open file (`crypt_file::LastBlock`).
    last_block: Mutex<Option<LastBlock>>,
}

impl OpenFile {
    pub fn new(file: File, writable: bool, key: FileKey, label: String) -> Self {
        OpenFile { file, writable, key, lock: RwLock::new(()), label, last_block: Mutex::new(None) }
    }

    fn crypt(&self) -> CryptFile<'_> {
        CryptFile { last_block: Some(&self.last_block), ..self.key.crypt(&self.file, &self.label) }
    }

    /// A READ of `size` bytes at `offset`, under the file's shared lock.
    pub fn read_at(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let _guard = self.lock.read().expect("file lock");
        self.crypt().read_at(offset, size as usize).map_err(io_errno)
    }

    /// Sets the plaintext size (truncate, O_TRUNC); EACCES if the backing file could only be
    /// opened read-only. With `kill_privs`, set-ID bits go as for a write.
    pub fn truncate(&self, size: u64, kill_privs: bool) -> FsResult<()> {
        if !self.writable {
            return Err(Errno::EACCES);
        }
        let _guard = self.lock.write().expect("file lock");
        self.crypt().set_len(size).map_err(io_errno)?;
        if kill_privs {
            kill_suid_sgid(&self.file)?;
        }
        Ok(())
    }
}

/// One open() of a file.
#[derive(Clone)]
pub struct Handle {
    pub ino: u64,
    pub open: Arc<OpenFile>,
    write: bool,
    /// Writes go to the end of the file whatever their offset (O_APPEND, applied here when
    /// the kernel does not).
    append: bool,
}

impl Handle {
    /// A WRITE through this handle.
    pub fn write(&self, offset: u64, data: &[u8], kill_privs: bool) -> FsResult<u32> {
        if !self.write {
            return Err(Errno::EBADF);
        }
        let of = &self.open;
        let _guard = of.lock.write().expect("file lock");
        if kill_privs {
            kill_suid_sgid(&of.file)?;
        }
        let crypt = of.crypt();
        // O_APPEND: the end as it is now, not as the kernel last saw it (another process
        // may have appended meanwhile).
        let offset = if self.append { crypt.plaintext_len().map_err(io_errno)? } else { offset };
        crypt.write_at(offset, data).map_err(io_errno)?;
        Ok(data.len() as u32)
    }

    /// fallocate: mode 0 grows the file to `offset + length` (with a hole: blocks are
    /// encrypted, so there is nothing to reserve ahead of them); KEEP_SIZE has nothing to do.
    pub fn fallocate(&self, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        if !self.write {
            return Err(Errno::EBADF);
        }
        match mode {
            0 => {
                let of = &self.open;
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
}

/// Clears the set-user-ID bit, and the set-group-ID bit of a group-executable file, as the
/// kernel does when an unprivileged process writes to or truncates a file (with
/// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves it to the filesystem). A backing file system
/// does it by itself for a daemon without CAP_FSETID; this covers a daemon running as root.
pub(super) fn kill_suid_sgid(fd: &impl std::os::fd::AsRawFd) -> FsResult<()> {
    let st = sys::fstat(fd).map_err(io_errno)?;
    let mut kill = st.st_mode & libc::S_ISUID;
    if st.st_mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    if kill == 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    sys::chmod_opened(fd, st.st_mode & 0o7777 & !kill).map_err(io_errno)
}

/// The open files of the mount by inode, each with the number of references to it (handles,
/// and requests that open the file for a moment), and the handles by number.
#[derive(Default)]
pub struct OpenFiles {
    files: Mutex<HashMap<u64, (Arc<OpenFile>, usize)>>,
    handles: RwLock<HashMap<u64, Handle>>,
}

impl OpenFiles {
    /// A new reference to `ino`'s open file, if it has one.
    pub fn acquire(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let mut map = self.files.lock().expect("open files lock");
        map.get_mut(&ino).map(|(of, n)| {
            *n += 1;
            of.clone()
        })
    }

    /// Adds `fresh` as `ino`'s open file and returns a reference to it; if another request
    /// opened the inode meanwhile, `fresh` is dropped (its key zeroized) and the reference
    /// is to that one.
    pub fn insert(&self, ino: u64, fresh: OpenFile) -> Arc<OpenFile> {
        let mut map = self.files.lock().expect("open files lock");
        let (of, n) = map.entry(ino).or_insert_with(|| (Arc::new(fresh), 0));
        *n += 1;
        of.clone()
    }

    /// Drops one reference; the last one closes the fd and zeroizes the data key.
    pub fn release(&self, ino: u64) {
        let mut map = self.files.lock().expect("open files lock");
        if let Some((_, n)) = map.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ino);
            }
        }
    }

    /// `ino`'s open file if some handle has it open, without taking a reference (for
    /// attributes through its descriptor, also of unlinked files).
    pub fn get(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("open files lock").get(&ino).map(|(of, _)| of.clone())
    }

    /// Registers handle `fh` of a reference taken with `acquire` or `insert`.
    pub fn add_handle(&self, fh: u64, ino: u64, open: Arc<OpenFile>, write: bool, append: bool) {
        self.handles.write().expect("handles lock").insert(fh, Handle { ino, open, write, append });
    }

    pub fn handle(&self, fh: u64) -> FsResult<Handle> {
        self.handles.read().expect("handles lock").get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// RELEASE: the handle goes, and with it its reference to the open file.
    pub fn close_handle(&self, fh: u64) {
        let removed = self.handles.write().expect("handles lock").remove(&fh);
        if let Some(h) = removed {
            self.release(h.ino);
        }
    }
}
