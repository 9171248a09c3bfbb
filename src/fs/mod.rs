//! The FUSE frontend: maps kernel requests onto the backing (cipher) directory.
//!
//! `fs` never touches SQLite or master keys: it asks the [`KeyRing`] for a file's data key
//! and gets back a key or an error that maps to an errno (ENOKEY for a key's state, EACCES
//! for a policy, EIO for tampering).

pub mod crypt_file;
mod files;
pub mod inodes;
pub mod names;
mod ops;
mod xattr;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, Request};

use crate::format;
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::Principal;
use crate::volume::{VolumeConfig, CONFIG_NAME};
use files::{DirHandle, Handle, OpenFile};
use inodes::{InodeTable, ROOT_INO};
use names::NameCipher;

/// How long the kernel may cache attributes and names. Short, because admin commands and
/// other processes may change the backing directory underneath.
pub const TTL: Duration = Duration::from_secs(1);

pub type FsResult<T> = Result<T, Errno>;

/// Mount-time choices.
#[derive(Debug, Clone, Default)]
pub struct FsOptions {
    pub read_only: bool,
}

pub struct KmsFs {
    root: PathBuf,
    config: VolumeConfig,
    keyring: Arc<KeyRing>,
    names: NameCipher,
    inodes: InodeTable,
    /// One entry per inode with open handles: its backing fd and data key.
    open_files: Mutex<HashMap<u64, (Arc<OpenFile>, usize)>>,
    handles: RwLock<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    /// Running as root (e.g. with allow_other): new files belong to the caller.
    chown_to_caller: bool,
    options: FsOptions,
}

impl KmsFs {
    pub fn new(
        root: PathBuf,
        config: VolumeConfig,
        keyring: Arc<KeyRing>,
        names: NameCipher,
        options: FsOptions,
    ) -> std::io::Result<KmsFs> {
        let root_meta = std::fs::metadata(&root)?;
        Ok(KmsFs {
            inodes: InodeTable::new(root_meta.ino()),
            root,
            config,
            keyring,
            names,
            open_files: Mutex::new(HashMap::new()),
            handles: RwLock::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            chown_to_caller: unsafe { libc::geteuid() } == 0,
            options,
        })
    }

    /// The principal behind a request.
    fn caller(req: &Request) -> Principal {
        Principal::from_ids(req.uid(), req.gid(), Vec::new(), Some(req.pid()))
    }

    /// Backing path (relative to the cipher dir) of an inode.
    fn rel_path(&self, ino: INodeNo) -> FsResult<PathBuf> {
        self.inodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    /// The name a plaintext name is stored under in a backing directory.
    fn backing_name(&self, parent: INodeNo, name: &OsStr) -> FsResult<OsString> {
        if parent.0 == ROOT_INO && name == CONFIG_NAME {
            return Err(Errno::EPERM); // the volume's own configuration file
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(name.to_os_string())
    }

    /// The plaintext name of a backing directory entry, or `None` for kmsfs's own files.
    fn plain_name(&self, parent: u64, backing: &OsStr) -> Option<OsString> {
        if parent == ROOT_INO && backing == CONFIG_NAME {
            return None;
        }
        Some(backing.to_os_string())
    }

    /// Backing path and stored name of `name` in directory `parent`.
    fn child(&self, parent: INodeNo, name: &OsStr) -> FsResult<(PathBuf, OsString)> {
        let stored = self.backing_name(parent, name)?;
        Ok((self.root.join(self.rel_path(parent)?).join(&stored), stored))
    }

    /// The path a person would recognise, for the audit trail and logs.
    fn display_path(&self, ino: u64) -> String {
        match self.inodes.path(ino) {
            Some(p) => format!("/{}", p.display()),
            None => format!("<inode {ino}, unlinked>"),
        }
    }

    fn access<'a>(caller: &'a Principal, path: &'a str) -> Access<'a> {
        Access { caller, path }
    }

    /// Attributes as the mount shows them: sizes are plaintext sizes.
    fn attr(&self, ino: u64, meta: &Metadata, backing_path: Option<&Path>) -> FileAttr {
        let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
        let size = match kind {
            FileType::RegularFile => format::plaintext_size(meta.len()),
            FileType::Symlink => backing_path
                .and_then(|p| std::fs::read_link(p).ok())
                .and_then(|t| self.names.decrypt_target(t.as_os_str()))
                .map(|t| t.len() as u64)
                .unwrap_or(0),
            _ => meta.len(),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: format::BLOCK_SIZE as u32,
            flags: 0,
        }
    }

    /// Looks up a backing path, remembers it under (parent, stored name), returns its attr.
    fn entry(&self, parent: INodeNo, stored: &OsStr, path: &Path) -> FsResult<FileAttr> {
        let meta = std::fs::symlink_metadata(path).map_err(io_errno)?;
        let ino = self.inodes.fuse_ino(meta.ino());
        self.inodes.remember(ino, parent.0, stored);
        Ok(self.attr(ino, &meta, Some(path)))
    }

    /// Gives a new backing object to the calling user when the daemon runs as root.
    /// In a setgid directory the group is the directory's (which the backing filesystem
    /// already gave it), as POSIX says.
    fn chown_new(&self, req: &Request, path: &Path) -> FsResult<()> {
        if self.chown_to_caller {
            let setgid_parent = path
                .parent()
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.mode() & libc::S_ISGID != 0);
            let gid = (!setgid_parent).then(|| req.gid());
            std::os::unix::fs::lchown(path, Some(req.uid()), gid).map_err(io_errno)?;
        }
        Ok(())
    }

    fn check_writable(&self) -> FsResult<()> {
        if self.options.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

pub fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

pub fn kms_errno(e: crate::Error) -> Errno {
    Errno::from_i32(e.errno())
}
