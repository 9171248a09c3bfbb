//! The inode table: which backing path each inode the kernel knows stands for.
//!
//! Inode numbers are the backing files' own (`st_ino`), so they are stable while mounted
//! and hard links share one; only the cipher directory's root is renumbered to FUSE's root
//! inode 1 (and an inode that happens to be 1 takes the root's number instead). An inode
//! keeps every (parent, name) the kernel looked it up under, so a hard link stays reachable
//! after another of its names is removed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

pub const ROOT_INO: u64 = 1;

/// One name of an inode: its directory, the name stored there (encrypted), and the
/// plaintext name (for audit paths and log messages).
#[derive(Debug, Clone)]
struct Name {
    parent: u64,
    stored: OsString,
    plain: OsString,
}

#[derive(Debug, Default)]
struct Inode {
    names: Vec<Name>,
    /// The kernel's lookup count: the entry goes when it drops to zero.
    lookups: u64,
    /// FUSE generation: (inode number, generation) must name one object for the kernel.
    generation: u64,
    /// Kept for the rest of the mount (see `pin`).
    pinned: bool,
}

pub struct InodeTable {
    backing_root_ino: u64,
    inner: RwLock<HashMap<u64, Inode>>,
    next_generation: AtomicU64,
}

impl InodeTable {
    pub fn new(backing_root_ino: u64) -> Self {
        let mut map = HashMap::new();
        map.insert(ROOT_INO, Inode { names: Vec::new(), lookups: 1, generation: 0, pinned: true });
        InodeTable { backing_root_ino, inner: RwLock::new(map), next_generation: AtomicU64::new(1) }
    }

    /// This mount just created a backing object numbered `ino`. Backing file systems hand a
    /// removed object's number to the next new one, and the kernel may still hold the removed
    /// one under that number (a directory someone has open or is in): the new object then
    /// gets a new generation, so the kernel takes it for a new inode instead of reviving the
    /// removed one (a removed directory refuses every create in it with ENOENT). The names
    /// recorded for the number are the removed object's: they go now, not when the thread
    /// removing it gets round to `unlinked` (until then they would lead to a path that is
    /// gone: ENOENT for the new object).
    pub fn created(&self, ino: u64) {
        let mut map = self.inner.write().expect("inode table lock");
        if let Some(node) = map.get_mut(&ino) {
            node.generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            node.names.clear();
        }
    }

    /// The generation to report with `ino`.
    pub fn generation(&self, ino: u64) -> u64 {
        self.inner.read().expect("inode table lock").get(&ino).map_or(0, |n| n.generation)
    }

    /// The FUSE inode number for a backing `st_ino`.
    pub fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.backing_root_ino {
            ROOT_INO
        } else if st_ino == ROOT_INO {
            self.backing_root_ino
        } else {
            st_ino
        }
    }

    /// Records one more lookup of `ino` under (parent, stored name).
    pub fn remember(&self, ino: u64, parent: u64, stored: &OsStr, plain: &OsStr) {
        let mut map = self.inner.write().expect("inode table lock");
        let node = map.entry(ino).or_default();
        node.lookups += 1;
        if ino != ROOT_INO && !node.names.iter().any(|n| n.parent == parent && n.stored == stored) {
            node.names.push(Name { parent, stored: stored.to_os_string(), plain: plain.to_os_string() });
        }
    }

    /// Records one more lookup of `ino` by the kernel under a name it already has.
    pub fn looked_up(&self, ino: u64) {
        if let Some(node) = self.inner.write().expect("inode table lock").get_mut(&ino) {
            node.lookups += 1;
        }
    }

    /// Records a name of `ino` that the kernel did not look up (a directory on the path of
    /// an object found by its file handle), and keeps it for the rest of the mount: paths are
    /// walked through parents, and the kernel sends no FORGET for a lookup it never made.
    pub fn pin(&self, ino: u64, parent: u64, stored: &OsStr, plain: &OsStr) {
        let mut map = self.inner.write().expect("inode table lock");
        let node = map.entry(ino).or_default();
        if !node.pinned {
            node.pinned = true;
            node.lookups += 1;
        }
        if ino != ROOT_INO && !node.names.iter().any(|n| n.parent == parent && n.stored == stored) {
            node.names.push(Name { parent, stored: stored.to_os_string(), plain: plain.to_os_string() });
        }
    }

    /// The kernel forgot `n` lookups of `ino`. Returns whether the inode is gone.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT_INO {
            return false;
        }
        let mut map = self.inner.write().expect("inode table lock");
        if let Some(node) = map.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 {
                map.remove(&ino);
                return true;
            }
        }
        false
    }

    /// The backing path of `ino` relative to the cipher directory ("" for the root), or
    /// `None` if the inode is unknown or has no name left (unlinked while open).
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        self.walk(ino, |n| &n.stored)
    }

    /// The plaintext path of `ino` below the mount point ("" for the root).
    pub fn plain_path(&self, ino: u64) -> Option<PathBuf> {
        self.walk(ino, |n| &n.plain)
    }

    fn walk(&self, ino: u64, part: impl Fn(&Name) -> &OsString) -> Option<PathBuf> {
        let map = self.inner.read().expect("inode table lock");
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut current = ino;
        while current != ROOT_INO {
            let name = map.get(&current)?.names.first()?;
            parts.push(part(name));
            current = name.parent;
            if parts.len() > 4096 {
                return None; // a cycle would be a bug; refuse rather than spin
            }
        }
        Some(parts.iter().rev().collect())
    }

    /// The directory `ino` was (first) looked up in, and its name there (as stored).
    pub fn first_name(&self, ino: u64) -> Option<(u64, OsString)> {
        let map = self.inner.read().expect("inode table lock");
        map.get(&ino)?.names.first().map(|n| (n.parent, n.stored.clone()))
    }

    /// The directory `ino` was (first) looked up in.
    pub fn parent(&self, ino: u64) -> Option<u64> {
        let map = self.inner.read().expect("inode table lock");
        map.get(&ino)?.names.first().map(|n| n.parent)
    }

    /// A name was removed from the backing directory.
    pub fn unlinked(&self, ino: u64, parent: u64, stored: &OsStr) {
        let mut map = self.inner.write().expect("inode table lock");
        if let Some(node) = map.get_mut(&ino) {
            node.names.retain(|n| !(n.parent == parent && n.stored == stored));
        }
    }

    /// A name was renamed in the backing directory: `from` is (parent, stored), `to` is
    /// (parent, stored, plain).
    pub fn renamed(&self, ino: u64, from: (u64, &OsStr), to: (u64, &OsStr, &OsStr)) {
        let mut map = self.inner.write().expect("inode table lock");
        if let Some(node) = map.get_mut(&ino) {
            node.names.retain(|n| {
                !((n.parent == from.0 && n.stored == from.1) || (n.parent == to.0 && n.stored == to.1))
            });
            node.names
                .insert(0, Name { parent: to.0, stored: to.1.to_os_string(), plain: to.2.to_os_string() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_survive_unlinking_one_hard_link() {
        let t = InodeTable::new(500);
        assert_eq!(t.fuse_ino(500), ROOT_INO);
        assert_eq!(t.fuse_ino(1), 500);
        let n = OsStr::new;
        t.remember(10, ROOT_INO, n("dir"), n("Dir"));
        t.remember(11, 10, n("a"), n("A"));
        t.remember(11, ROOT_INO, n("link"), n("Link"));
        assert_eq!(t.path(11).unwrap(), PathBuf::from("dir/a"));
        assert_eq!(t.plain_path(11).unwrap(), PathBuf::from("Dir/A"));
        assert_eq!(t.parent(11), Some(10));
        t.unlinked(11, 10, n("a"));
        assert_eq!(t.path(11).unwrap(), PathBuf::from("link"));
        t.renamed(10, (ROOT_INO, n("dir")), (ROOT_INO, n("d2"), n("D2")));
        t.remember(12, 10, n("b"), n("B"));
        assert_eq!(t.path(12).unwrap(), PathBuf::from("d2/b"));
        assert_eq!(t.plain_path(12).unwrap(), PathBuf::from("D2/B"));
        t.unlinked(11, ROOT_INO, n("link"));
        assert_eq!(t.path(11), None);
        t.forget(12, 1);
        assert_eq!(t.path(12), None);
        assert_eq!(t.path(ROOT_INO).unwrap(), PathBuf::from(""));
    }

    #[test]
    fn a_number_reused_while_the_kernel_holds_it_gets_a_new_generation() {
        let t = InodeTable::new(500);
        let n = OsStr::new;
        t.created(20); // a new object nobody knew: nothing to tell apart
        t.remember(20, ROOT_INO, n("old"), n("Old"));
        assert_eq!(t.generation(20), 0);
        // Removed (the kernel still holds it), and the number handed to a new object before
        // the thread that removed the old one has updated the table.
        t.created(20);
        t.remember(20, ROOT_INO, n("new"), n("New"));
        let g = t.generation(20);
        assert_ne!(g, 0);
        assert_eq!(t.path(20).unwrap(), PathBuf::from("new"));
        t.unlinked(20, ROOT_INO, n("old"));
        assert_eq!(t.path(20).unwrap(), PathBuf::from("new"));
        t.remember(20, ROOT_INO, n("new"), n("New")); // later lookups keep it
        assert_eq!(t.generation(20), g);
        assert!(!t.forget(20, 2));
        assert!(t.forget(20, 1));
    }
}
