//! File handles (name_to_handle_at / open_by_handle_at, and so NFS export): FUSE's export
//! support. A handle holds the FUSE node id (the backing inode number) and the generation;
//! when the kernel no longer knows the node it asks for `LOOKUP(node, ".")`, and for a
//! directory's parent `LOOKUP(node, "..")` (ordinary path lookups never send these names).
//!
//! The generation comes from the backing object's birth time (statx btime), so a handle
//! still names the same object after a remount, and a number the backing file system hands
//! to a new object after the old one was removed gets another generation: the handle of the
//! removed one answers ESTALE. Where the backing file system has no birth time, the inode
//! table's generation serves (handles then work within one mount).
//!
//! A node the inode table does not know (evicted, or after a remount) is found by its
//! number: a walk of the cipher directory by directory entries (`d_ino`, no stat per entry),
//! then its path is connected from the root down, each name decrypted with its directory's
//! key under the caller's permissions. The objects on that path stay in the table for the
//! rest of the mount (a path is walked through its parents, and the kernel sends no FORGET
//! for lookups it did not make), so each is searched for once.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use fuser::{Errno, FileAttr, INodeNo, Request};

use super::inodes::ROOT_INO;
use super::{io_errno, FsResult, KmsFs};
use crate::content::names::{classify, BackingEntry};

/// The generation for an object born at `crtime` (its backing birth time): a 32-bit value
/// (the kernel keeps 32 bits of it in the inode and in a handle), never 0.
pub fn generation_from_birth(crtime: std::time::SystemTime) -> Option<u64> {
    let born = crtime.duration_since(UNIX_EPOCH).ok().filter(|d| !d.is_zero())?;
    let nanos = born.as_secs().wrapping_mul(1_000_000_000).wrapping_add(born.subsec_nanos() as u64);
    let mixed = nanos.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Some(((mixed >> 32) as u32).max(1) as u64)
}

impl KmsFs {
    /// LOOKUP of "." or "..": the node itself, or its parent (a directory's).
    pub(super) fn lookup_by_handle(&self, req: &Request, ino: INodeNo, name: &OsStr) -> FsResult<FileAttr> {
        if self.inodes.path(ino.0).is_none() {
            self.connect(req, ino.0)?;
        }
        let wanted = match name.as_encoded_bytes() {
            b"." => ino.0,
            _ => self.inodes.parent(ino.0).unwrap_or(ROOT_INO),
        };
        let rel = self.inodes.path(wanted).ok_or(Errno::ESTALE)?;
        let path = self.root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).map_err(io_errno)?;
        if self.inodes.fuse_ino(meta.ino()) != wanted {
            return Err(Errno::ESTALE); // the name now holds another object
        }
        self.inodes.looked_up(wanted);
        Ok(self.attr(wanted, &meta, Some(&path)))
    }

    /// Finds backing inode `ino` in the cipher directory and records its path in the inode
    /// table: ENOENT (the kernel answers ESTALE) if it is gone.
    fn connect(&self, req: &Request, ino: u64) -> FsResult<()> {
        let found = self.find_backing(self.inodes.fuse_ino(ino)).ok_or(Errno::ENOENT)?;
        let caller = self.caller(req);
        let mut parent = ROOT_INO;
        let mut rel = PathBuf::new();
        for stored in found.iter() {
            let dir = self.root.join(&rel);
            rel.push(stored);
            let label = self.display_path(parent);
            let state = self.dir_state(Self::access(&caller, &label), INodeNo(parent))?;
            let plain = self.plain_name(&state, &dir, stored).ok_or(Errno::ENOENT)?;
            let meta = std::fs::symlink_metadata(self.root.join(&rel)).map_err(io_errno)?;
            let child = self.inodes.fuse_ino(meta.ino());
            self.inodes.pin(child, parent, stored, &plain);
            parent = child;
        }
        Ok(())
    }

    /// The path (relative to the cipher directory) of a user entry with backing inode
    /// number `st_ino`, breadth first; kmsfs's own entries are not looked into.
    fn find_backing(&self, st_ino: u64) -> Option<PathBuf> {
        let mut queue = VecDeque::from([PathBuf::new()]);
        while let Some(rel) = queue.pop_front() {
            let Ok(entries) = std::fs::read_dir(self.root.join(&rel)) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if matches!(classify(&name), BackingEntry::Internal) {
                    continue;
                }
                if entry.ino() == st_ino {
                    return Some(rel.join(name));
                }
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(rel.join(name));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn generations_fit_32_bits_and_tell_births_apart() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let g = generation_from_birth(t).unwrap();
        assert!(g != 0 && g <= u32::MAX as u64);
        assert_eq!(generation_from_birth(t), Some(g), "stable");
        assert_ne!(generation_from_birth(t + Duration::from_nanos(1)), Some(g));
        assert_eq!(generation_from_birth(UNIX_EPOCH), None, "no birth time");
    }
}
