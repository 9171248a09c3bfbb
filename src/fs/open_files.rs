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

/// EFBIG for a file that would end at `offset + len` past the largest size a file can have
/// (as ext4 answers a write, truncate or copy_file_range beyond its limit).
fn check_file_size(offset: u64, len: u64) -> FsResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= crate::content::blocks::MAX_PLAINTEXT_SIZE => Ok(()),
        _ => Err(Errno::EFBIG),
    }
}

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
    /// The master key that wraps the file now: `key.key_id` until a live re-wrap moves it
    /// (`rewrapped_under`). Every further open is authorized against this one.
    wrapped_by: Mutex<String>,
}

impl OpenFile {
    pub fn new(file: File, writable: bool, key: FileKey, label: String) -> Self {
        let wrapped_by = Mutex::new(key.key_id.clone());
        OpenFile {
            file,
            writable,
            key,
            lock: RwLock::new(()),
            label,
            last_block: Mutex::new(None),
            wrapped_by,
        }
    }

    /// The master key that wraps the file now.
    pub fn wrapped_by(&self) -> String {
        self.wrapped_by.lock().expect("wrapped-by lock").clone()
    }

    /// Records that the mount re-wrapped the file under `key_id`.
    pub fn rewrapped_under(&self, key_id: &str) {
        *self.wrapped_by.lock().expect("wrapped-by lock") = key_id.to_string();
    }

    fn crypt(&self) -> CryptFile<'_> {
        CryptFile { last_block: Some(&self.last_block), ..self.key.crypt(&self.file, &self.label) }
    }

    /// Allocates the backing space of plaintext range `offset..offset + length` (what
    /// fallocate promises: later writes there do not run out of space), without changing
    /// the backing size; the range reads as it did (unwritten space reads as zeros, a hole).
    /// Past the free space it answers ENOSPC and allocates nothing, as ext4 does. Called with
    /// the file's write lock held.
    fn reserve(&self, offset: u64, length: u64) -> FsResult<()> {
        use crate::content::{block_offset, cipher_size, BLOCK_SIZE};
        let start = block_offset(offset / BLOCK_SIZE);
        let end = cipher_size(offset + length);
        let backing_len = self.file.metadata().map_err(io_errno)?.len();
        // What lies past the backing end is surely unallocated: if that alone does not fit,
        // refuse before allocating any of it.
        let growth = end.saturating_sub(start.max(backing_len));
        if growth > sys::available_bytes(&self.file).map_err(io_errno)? {
            return Err(Errno::ENOSPC);
        }
        match sys::fallocate(&self.file, libc::FALLOC_FL_KEEP_SIZE, start, end - start) {
            Ok(()) => Ok(()),
            // A backing file system that cannot allocate ahead: the range stays a hole.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            Err(e) => {
                // Space taken past the end before the file system ran out goes back (nothing
                // before the end is touched: it may hold data).
                if end > backing_len {
                    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                    let from = start.max(backing_len);
                    let _ = sys::fallocate(&self.file, punch, from, end - from);
                }
                Err(io_errno(e))
            }
        }
    }

    /// A READ of `size` bytes at `offset`, under the file's shared lock.
    pub fn read_at(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let _guard = self.lock.read().expect("file lock");
        self.crypt().read_at(offset, size as usize).map_err(io_errno)
    }

    /// Sets the plaintext size (truncate, O_TRUNC); EACCES if the backing file could only be
    /// opened read-only. With `kill_privs`, set-ID bits go as for a write.
    pub fn truncate(&self, size: u64, kill_privs: Option<&Unprivileged>) -> FsResult<()> {
        if !self.writable {
            return Err(Errno::EACCES);
        }
        check_file_size(size, 0)?;
        let _guard = self.lock.write().expect("file lock");
        self.crypt().set_len(size).map_err(io_errno)?;
        if let Some(writer) = kill_privs {
            kill_suid_sgid(&self.file, writer)?;
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
    pub fn write(&self, offset: u64, data: &[u8], kill_privs: Option<&Unprivileged>) -> FsResult<u32> {
        if !self.write {
            return Err(Errno::EBADF);
        }
        check_file_size(offset, data.len() as u64)?;
        let of = &self.open;
        let _guard = of.lock.write().expect("file lock");
        if let Some(writer) = kill_privs {
            kill_suid_sgid(&of.file, writer)?;
        }
        let crypt = of.crypt();
        // O_APPEND: the end as it is now, not as the kernel last saw it (another process
        // may have appended meanwhile).
        let offset = if self.append { crypt.plaintext_len().map_err(io_errno)? } else { offset };
        crypt.write_at(offset, data).map_err(io_errno)?;
        Ok(data.len() as u32)
    }

    /// fallocate. Mode 0 grows the file to `offset + length` and KEEP_SIZE keeps its size,
    /// both reserving the backing space of the range (`OpenFile::reserve`: ENOSPC past the
    /// free space, with nothing allocated). PUNCH_HOLE (always with KEEP_SIZE) and ZERO_RANGE
    /// make the range read as zeros, freeing its whole blocks (`CryptFile::zero_range`);
    /// ZERO_RANGE without KEEP_SIZE then grows the file to the end of the range, like mode 0.
    /// ZERO_RANGE frees rather than reserves. Other modes (COLLAPSE_RANGE and INSERT_RANGE,
    /// which the kernel does not pass on to FUSE anyway) would shift blocks whose index is
    /// part of their authentication: EOPNOTSUPP. With `kill_privs`, set-ID bits go as for a
    /// write (ext4 clears them on fallocate too).
    pub fn fallocate(
        &self,
        offset: u64,
        length: u64,
        mode: i32,
        kill_privs: Option<&Unprivileged>,
    ) -> FsResult<()> {
        if !self.write {
            return Err(Errno::EBADF);
        }
        check_file_size(offset, length)?;
        const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | KEEP_SIZE;
        const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let (zero, grow) = match mode {
            0 | KEEP_SIZE => (false, mode == 0),
            PUNCH_HOLE => (true, false),
            ZERO_RANGE => (true, true),
            m if m == ZERO_RANGE | KEEP_SIZE => (true, false),
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let of = &self.open;
        let _guard = of.lock.write().expect("file lock");
        if let Some(writer) = kill_privs {
            kill_suid_sgid(&of.file, writer)?;
        }
        let crypt = of.crypt();
        if zero {
            crypt.zero_range(offset, length).map_err(io_errno)?;
        } else {
            of.reserve(offset, length)?;
        }
        let end = offset.saturating_add(length);
        if grow && end > crypt.plaintext_len().map_err(io_errno)? {
            crypt.set_len(end).map_err(io_errno)?;
        }
        Ok(())
    }
}

/// A writer without CAP_FSETID, for whom the kernel leaves the clearing of set-ID bits to the
/// filesystem (FUSE_HANDLE_KILLPRIV_V2): its groups decide a set-group-ID bit.
pub struct Unprivileged {
    pub gid: u32,
    /// Whose supplementary groups count (read only when they matter).
    pub pid: u32,
}

impl Unprivileged {
    fn in_group(&self, gid: u32) -> bool {
        gid == self.gid || super::process_groups(self.pid).contains(&gid)
    }
}

/// Clears set-ID bits as the kernel does when a process without CAP_FSETID writes to or
/// truncates a regular file (`setattr_should_drop_suidgid`): the set-user-ID bit always, the
/// set-group-ID bit if the file is group-executable or the writer is not in its group. A
/// backing file system does it by itself for a daemon without CAP_FSETID; this covers a
/// daemon running as root.
pub(super) fn kill_suid_sgid(fd: &impl std::os::fd::AsRawFd, writer: &Unprivileged) -> FsResult<()> {
    let st = sys::fstat(fd).map_err(io_errno)?;
    let mut kill = st.st_mode & libc::S_ISUID;
    if st.st_mode & libc::S_ISGID != 0 && (st.st_mode & libc::S_IXGRP != 0 || !writer.in_group(st.st_gid)) {
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

    /// Drops one reference; the last one closes the fd and zeroizes the data key (once the
    /// open file returned, if it is the last, is dropped too).
    pub fn release(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let mut map = self.files.lock().expect("open files lock");
        let (_, n) = map.get_mut(&ino)?;
        *n -= 1;
        if *n == 0 {
            return map.remove(&ino).map(|(of, _)| of);
        }
        None
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

    /// RELEASE: the handle goes, and with it its reference to the open file (returned if
    /// it was the last).
    pub fn close_handle(&self, fh: u64) -> Option<Arc<OpenFile>> {
        let removed = self.handles.write().expect("handles lock").remove(&fh);
        removed.and_then(|h| self.release(h.ino))
    }
}
