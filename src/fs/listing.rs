//! Directory listings: a snapshot taken when a readdir starts from the beginning (the first
//! one after opendir, and again after rewinddir or seekdir to 0, so that the stream shows
//! the directory as it is then, as ext4's does), served to readdir and readdirplus.
//!
//! readdirplus answers each name with its attributes, so `ls -l`, `find` and `rm -rf` need no
//! LOOKUP round trip per entry: the kernel takes the entries as looked up (each counts as a
//! lookup for FORGET) and caches their attributes for [`TTL`].

use std::ffi::OsString;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::sync::{Arc, Mutex};

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, ReplyDirectory, ReplyDirectoryPlus, Request};

use super::{io_errno, FsResult, KmsFs, TTL};
use crate::sys::{pin_dir, PinnedDir};

/// One name in a listing.
struct Listed {
    ino: u64,
    kind: FileType,
    /// The plaintext name.
    name: OsString,
    /// The name in the backing directory (empty for "." and "..").
    stored: OsString,
}

/// A directory as opened: its entries as last listed, and the directory itself (as opened,
/// so that readdirplus stats the entries of that directory even if it is renamed meanwhile,
/// and fstat answers for it after it is removed).
pub struct DirListing {
    ino: u64,
    /// Its parent when opened, for "..".
    parent: u64,
    pub(super) dir: PinnedDir,
    /// Its names key, as checked at opendir.
    state: Arc<super::dirs::CachedDir>,
    /// The entries of the last listing (`None` before the first readdir).
    entries: Mutex<Option<Arc<Vec<Listed>>>>,
}

impl KmsFs {
    pub(super) fn do_opendir(&self, req: &Request, ino: INodeNo) -> FsResult<u64> {
        let caller = self.caller(req);
        let label = self.display_path(ino.0);
        let state = self.dir_state(Self::access(&caller, &label), ino)?;
        let path = self.backing(ino)?;
        let parent = self.inodes.parent(ino.0).unwrap_or(super::inodes::ROOT_INO);
        let dir = pin_dir(&path).map_err(io_errno)?;
        let handle = DirListing { ino: ino.0, parent, dir, state, entries: Mutex::new(None) };
        let fh = self.new_fh();
        self.dirs.lock().expect("dir handles lock").insert(fh, Arc::new(handle));
        Ok(fh)
    }

    /// The entries a readdir from `offset` serves: listed afresh when it starts from the
    /// beginning (a rewind lists again, after checking the directory's key for the caller
    /// once more, as opendir did), else those of the listing being read.
    fn listing(&self, req: &Request, dir: &DirListing, offset: u64) -> FsResult<Arc<Vec<Listed>>> {
        let mut entries = dir.entries.lock().expect("listing lock");
        if let (Some(listed), false) = (entries.as_ref(), offset == 0) {
            return Ok(listed.clone());
        }
        let state = match entries.is_some() {
            false => dir.state.clone(),
            true => {
                let caller = self.caller(req);
                let label = self.display_path(dir.ino);
                self.dir_state(Self::access(&caller, &label), INodeNo(dir.ino))?
            }
        };
        let dot = |ino, name: &str| Listed {
            ino,
            kind: FileType::Directory,
            name: name.into(),
            stored: OsString::new(),
        };
        let mut listed = vec![dot(dir.ino, "."), dot(dir.parent, "..")];
        for entry in std::fs::read_dir(&dir.dir.path).map_err(io_errno)? {
            let entry = entry.map_err(io_errno)?;
            let stored = entry.file_name();
            let Some(name) = self.plain_name(&state, &dir.dir.path, &stored) else { continue };
            let kind = entry.file_type().ok().and_then(FileType::from_std).unwrap_or(FileType::RegularFile);
            listed.push(Listed { ino: self.inodes.fuse_ino(entry.ino()), kind, name, stored });
        }
        if let Some(prefetch) = &self.prefetch {
            let files = listed.iter().filter(|e| e.kind == FileType::RegularFile).map(|e| e.stored.clone());
            prefetch.listed(dir.ino, files.collect());
        }
        let listed = Arc::new(listed);
        *entries = Some(listed.clone());
        Ok(listed)
    }

    /// The attributes of directory `ino` through a handle open on it: the only way to it
    /// once it is removed (rmdir, or replaced by a rename) while a process holds it open.
    pub(super) fn open_dir_metadata(&self, ino: u64) -> Option<std::fs::Metadata> {
        let dir = self.dirs.lock().expect("dir handles lock").values().find(|d| d.ino == ino).cloned()?;
        std::fs::metadata(&dir.dir.path).ok()
    }

    fn dir_handle(&self, fh: FileHandle) -> FsResult<Arc<DirListing>> {
        self.dirs.lock().expect("dir handles lock").get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    pub(super) fn do_readdir(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> FsResult<()> {
        let dir = self.dir_handle(fh)?;
        for (i, e) in self.listing(req, &dir, offset)?.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    /// Entries with their attributes. An entry removed since opendir is left out; every
    /// entry sent (but "." and "..", which the kernel does not look up) is remembered as one
    /// lookup, as LOOKUP would.
    pub(super) fn do_readdirplus(
        &self,
        req: &Request,
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) -> FsResult<()> {
        let dir = self.dir_handle(fh)?;
        let mut dot_attr: Option<FileAttr> = None;
        for (i, e) in self.listing(req, &dir, offset)?.iter().enumerate().skip(offset as usize) {
            let next = (i + 1) as u64;
            if e.stored.is_empty() {
                // "." or "..": the kernel takes only the name and number; any attributes do.
                let attr = match dot_attr {
                    Some(a) => a,
                    None => {
                        let meta = std::fs::metadata(&dir.dir.path).map_err(io_errno)?;
                        *dot_attr.insert(self.attr(dir.ino, &meta, None))
                    }
                };
                let attr = FileAttr { ino: INodeNo(e.ino), ..attr };
                if reply.add(INodeNo(e.ino), next, &e.name, &TTL, &attr, fuser::Generation(0)) {
                    break;
                }
                continue;
            }
            let path = dir.dir.path.join(&e.stored);
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let ino = self.inodes.fuse_ino(meta.ino());
            let attr = self.attr(ino, &meta, Some(&path));
            let generation = self.generation(&attr);
            if reply.add(INodeNo(ino), next, &e.name, &TTL, &attr, generation) {
                break;
            }
            self.inodes.remember(ino, dir.ino, &e.stored, &e.name);
        }
        Ok(())
    }
}
