//! Open files: one backing fd and one data key per inode, shared by all its handles and
//! zeroized when the last handle closes.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use fuser::{Errno, INodeNo, Request};

use super::crypt_file::{CryptFile, LastBlock};
use super::{io_errno, kms_errno, FsResult, KmsFs};
use crate::crypto::{self, Cipher};
use crate::format::{FileHeader, FILE_ID_LEN};
use crate::kms::keyring::Access;
use crate::volume::rewrap::unwrap_header;
use crate::Error;

/// The data key of one file.
pub struct FileKey {
    pub file_id: [u8; FILE_ID_LEN],
    pub cipher: Cipher,
    pub key_id: String,
}

impl FileKey {
    /// `file` read and written with this key, keeping no copy of its last block (only an
    /// `OpenFile` keeps one, see `OpenFile::crypt`).
    fn crypt<'a>(&'a self, file: &'a File, label: &'a str) -> CryptFile<'a> {
        CryptFile { file, cipher: &self.cipher, file_id: &self.file_id, label, last_block: None }
    }
}

/// An inode with open handles.
pub struct OpenFile {
    pub file: File,
    pub writable: bool,
    pub key: FileKey,
    /// Readers share, writers (and truncate) exclude: block read-modify-write must not
    /// interleave.
    pub lock: RwLock<()>,
    /// The path at open time, for log messages.
    pub label: String,
    /// The last block as last written through this open file (`crypt_file::LastBlock`).
    pub last_block: Mutex<Option<LastBlock>>,
}

impl OpenFile {
    pub fn crypt(&self) -> CryptFile<'_> {
        CryptFile { last_block: Some(&self.last_block), ..self.key.crypt(&self.file, &self.label) }
    }

    /// A READ of `size` bytes at `offset`, under the file's shared lock.
    pub fn read_at(&self, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let _guard = self.lock.read().expect("file lock");
        self.crypt().read_at(offset, size as usize).map_err(io_errno)
    }
}

/// One open() of a file.
pub struct Handle {
    pub ino: u64,
    pub open: Arc<OpenFile>,
    pub write: bool,
    pub append: bool,
}

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

pub(super) use crate::volume::open_noatime;

impl KmsFs {
    /// The shared open state of `ino`, loading its key if no handle has it yet. Every call
    /// is a key use: the key's state is checked and the access audited.
    pub(super) fn acquire_open_file(&self, req: &Request, ino: INodeNo) -> FsResult<Arc<OpenFile>> {
        let caller = self.caller(req);
        let label = self.display_path(ino.0);
        let access = Self::access(&caller, &label);
        let existing = {
            let mut map = self.open_files.lock().expect("open files lock");
            map.get_mut(&ino.0).map(|(of, n)| {
                *n += 1;
                of.clone()
            })
        };
        if let Some(of) = existing {
            let ctx = self.config.file_context(&of.key.file_id);
            if let Err(e) = self.keyring.authorize_cached(access, &of.key.key_id, &ctx) {
                self.release_open_file(ino.0);
                return Err(kms_errno(e));
            }
            return Ok(of);
        }
        let path = self.backing(ino)?;
        self.read_siblings_ahead(ino.0, &path);
        let (file, writable) = open_backing(&path)?;
        let key = self.load_key(ino, &file, writable, access)?;
        let fresh = Arc::new(OpenFile {
            file,
            writable,
            key,
            lock: RwLock::new(()),
            label,
            last_block: Mutex::new(None),
        });
        let mut map = self.open_files.lock().expect("open files lock");
        let (of, n) = map.entry(ino.0).or_insert_with(|| (fresh, 0));
        *n += 1;
        Ok(of.clone())
    }

    /// Tells the read-ahead which file of its directory is being opened.
    fn read_siblings_ahead(&self, ino: u64, path: &super::BPath) {
        let (Some(prefetch), true) = (&self.prefetch, path.is_direct()) else { return };
        if let (Some((dir, stored)), Some(dir_path)) = (self.inodes.first_name(ino), path.parent()) {
            prefetch.opening(dir, dir_path, &stored);
        }
    }

    /// Drops one reference; the last one closes the fd and zeroizes the data key.
    pub(super) fn release_open_file(&self, ino: u64) {
        let mut map = self.open_files.lock().expect("open files lock");
        if let Some((_, n)) = map.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ino);
            }
        }
    }

    /// Reads the header and unwraps the data key, newest slot first.
    fn load_key(&self, ino: INodeNo, file: &File, writable: bool, access: Access<'_>) -> FsResult<FileKey> {
        if file.metadata().map_err(io_errno)?.len() == 0 {
            // Created but never given a header (a crash right after create): a new, empty file.
            if !writable {
                log::warn!("{} has no header and cannot be repaired read-only; answering EIO", access.path);
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
        let cipher = found.data_key.cipher();
        let key = FileKey { file_id: found.header.file_id, cipher, key_id: found.wrapped_by.key_id };
        // The kernel never asks to read a file whose size is 0, so a file cut down to its bare
        // header (or to anything shorter than the empty block) is caught here, at open.
        let crypt = key.crypt(file, access.path);
        if crypt.plaintext_len().map_err(io_errno)? == 0 {
            crypt.check_empty().map_err(io_errno)?;
        }
        Ok(key)
    }

    /// Gives a new file its data key under `key_id` and writes its header.
    pub(super) fn write_new_header(
        &self,
        file: &File,
        access: Access<'_>,
        key_id: &str,
    ) -> FsResult<FileKey> {
        let file_id = crypto::random_bytes::<FILE_ID_LEN>();
        let ctx = self.config.file_context(&file_id);
        let (data_key, wrapped) = self.keyring.generate_data_key(access, key_id, &ctx).map_err(kms_errno)?;
        let (blob_header, _) = crate::kms::blob::BlobHeader::parse(&wrapped).map_err(kms_errno)?;
        let key = FileKey { file_id, cipher: data_key.cipher(), key_id: blob_header.key_id };
        key.crypt(file, access.path)
            .init_new(&FileHeader::new(file_id, wrapped).encode())
            .map_err(io_errno)?;
        Ok(key)
    }

    /// Registers a handle and returns its number.
    pub(super) fn add_handle(&self, ino: u64, open: Arc<OpenFile>, write: bool, append: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().expect("handles lock").insert(fh, super::Handle { ino, open, write, append });
        fh
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<(Arc<OpenFile>, bool, bool)> {
        let handles = self.handles.read().expect("handles lock");
        let h = handles.get(&fh).ok_or(Errno::EBADF)?;
        Ok((h.open.clone(), h.write, h.append))
    }

    /// The open state of `ino` if some handle has it open (for attributes of unlinked files).
    pub(super) fn open_file_of(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.open_files.lock().expect("open files lock").get(&ino).map(|(of, _)| of.clone())
    }

    /// Creates a regular file with its header; returns the backing file.
    pub(super) fn create_backing_file(
        &self,
        req: &Request,
        c: &super::Child,
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
            self.chown_new(req, &c.path)?;
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

    /// Metadata of an inode: through an open handle if one exists (the file may be
    /// unlinked), else by path.
    pub(super) fn stat_ino(&self, ino: INodeNo) -> FsResult<(std::fs::Metadata, Option<super::BPath>)> {
        match self.backing(ino) {
            Ok(path) => {
                let meta = std::fs::symlink_metadata(&*path).map_err(io_errno)?;
                Ok((meta, Some(path)))
            }
            Err(e) => match self.open_file_of(ino.0) {
                Some(of) => Ok((of.file.metadata().map_err(io_errno)?, None)),
                None => Err(e),
            },
        }
    }
}
