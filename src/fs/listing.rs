//! Directory listings: a snapshot taken at opendir, served to readdir and readdirplus.
//!
//! readdirplus answers each name with its attributes, so `ls -l`, `find` and `rm -rf` need no
//! LOOKUP round trip per entry: the kernel takes the entries as looked up (each counts as a
//! lookup for FORGET) and caches their attributes for [`TTL`].

use std::ffi::OsString;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::sync::Arc;

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

/// A directory as opened: its entries when opendir ran, and the directory itself (as opened,
/// so that readdirplus stats the entries of that directory even if it is renamed meanwhile).
pub struct DirListing {
    ino: u64,
    dir: PinnedDir,
    entries: Vec<Listed>,
}

impl KmsFs {
    pub(super) fn do_opendir(&self, req: &Request, ino: INodeNo) -> FsResult<u64> {
        let caller = self.caller(req);
        let label = self.display_path(ino.0);
        let state = self.dir_state(Self::access(&caller, &label), ino)?;
        let path = self.backing(ino)?;
        let parent = self.inodes.parent(ino.0).unwrap_or(super::inodes::ROOT_INO);
        let dot = |ino, name: &str| Listed {
            ino,
            kind: FileType::Directory,
            name: name.into(),
            stored: OsString::new(),
        };
        let mut entries = vec![dot(ino.0, "."), dot(parent, "..")];
        let dir = pin_dir(&path).map_err(io_errno)?;
        for entry in std::fs::read_dir(&dir.path).map_err(io_errno)? {
            let entry = entry.map_err(io_errno)?;
            let stored = entry.file_name();
            let Some(name) = self.plain_name(&state, &path, &stored) else { continue };
            let kind = entry.file_type().ok().and_then(FileType::from_std).unwrap_or(FileType::RegularFile);
            entries.push(Listed { ino: self.inodes.fuse_ino(entry.ino()), kind, name, stored });
        }
        if let Some(prefetch) = &self.prefetch {
            let files = entries.iter().filter(|e| e.kind == FileType::RegularFile).map(|e| e.stored.clone());
            prefetch.listed(ino.0, files.collect());
        }
        let fh = self.new_fh();
        self.dirs
            .lock()
            .expect("dir handles lock")
            .insert(fh, Arc::new(DirListing { ino: ino.0, dir, entries }));
        Ok(fh)
    }

    fn dir_handle(&self, fh: FileHandle) -> FsResult<Arc<DirListing>> {
        self.dirs.lock().expect("dir handles lock").get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    pub(super) fn do_readdir(&self, fh: FileHandle, offset: u64, reply: &mut ReplyDirectory) -> FsResult<()> {
        let dir = self.dir_handle(fh)?;
        for (i, e) in dir.entries.iter().enumerate().skip(offset as usize) {
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
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) -> FsResult<()> {
        let dir = self.dir_handle(fh)?;
        let mut dot_attr: Option<FileAttr> = None;
        for (i, e) in dir.entries.iter().enumerate().skip(offset as usize) {
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
            let generation = fuser::Generation(self.inodes.generation(ino));
            if reply.add(INodeNo(ino), next, &e.name, &TTL, &attr, generation) {
                break;
            }
            self.inodes.remember(ino, dir.ino, &e.stored, &e.name);
        }
        Ok(())
    }
}
