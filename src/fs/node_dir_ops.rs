//! Requests that change a directory's entries: MKDIR, MKNOD, SYMLINK, UNLINK, RMDIR,
//! RENAME. Each entry name is encrypted under its directory's names key.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use fuser::{Errno, FileAttr, INodeNo, RenameFlags, Request};

use super::dirs::MetaSync;
use super::{creation_mode, io_errno, kms_errno, FsResult, KmsFs};
use crate::content::names::{classify, BackingEntry};
use crate::content::volume_cipher::{StoredTarget, TARGET_MAX};
use crate::sys::{self, pin_dir, PinnedDir};
use crate::volume::{link_targets, xattr_store};

impl KmsFs {
    pub(super) fn do_mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        let c = self.child(req, parent, name)?;
        self.write_sidecar(&c.path, &c.stored)?;
        let mode = creation_mode(mode, umask);
        if let Err(e) = std::fs::DirBuilder::new().mode(mode).create(&*c.path) {
            self.remove_sidecar_if_unused(&c);
            return Err(io_errno(e));
        }
        let made = (|| {
            self.chown_new(req, &c.path, libc::S_IFDIR | mode)?;
            let ino = self.inodes.fuse_ino(std::fs::symlink_metadata(&*c.path).map_err(io_errno)?.ino());
            let caller = self.caller(req);
            let label = self.display_child(parent, name);
            self.create_dir_meta(
                Self::access(&caller, &label),
                ino,
                &c.path,
                &c.dir.key_id,
                MetaSync::Deferred,
            )
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&*c.path);
            self.remove_sidecar(&c.path, &c.stored);
            return Err(e);
        }
        self.new_entry(parent, &c.stored, name, &c.path)
    }

    pub(super) fn do_mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        let c = self.child(req, parent, name)?;
        let (kind, mode) = (mode & libc::S_IFMT, creation_mode(mode, umask));
        if kind == libc::S_IFREG {
            self.create_backing_file(req, &c, mode, &self.display_child(parent, name))?;
        } else {
            self.write_sidecar(&c.path, &c.stored)?;
            let made = sys::c_path(&c.path).and_then(|p| sys::mknod(&p, kind | mode, rdev.into()));
            if let Err(e) = made.map_err(io_errno) {
                self.remove_sidecar_if_unused(&c);
                return Err(e);
            }
            self.chown_new(req, &c.path, kind | mode)?;
        }
        self.new_entry(parent, &c.stored, name, &c.path)
    }

    pub(super) fn do_symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> FsResult<FileAttr> {
        self.check_writable()?;
        if target.as_os_str().len() > TARGET_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let c = self.child(req, parent, name)?;
        // A target too long for a backing symlink goes into its sidecar first, so the
        // symlink never appears without it.
        let stored = self.names.store_target(target.as_os_str());
        let sidecar = match &stored {
            StoredTarget::Sidecar { name, stored } => {
                link_targets::write(&self.root, name, stored.as_bytes()).map_err(kms_errno)?;
                Some(name.as_str())
            }
            StoredTarget::Inline(_) => None,
        };
        let drop_sidecar = || sidecar.into_iter().for_each(|n| link_targets::remove(&self.root, n));
        if let Err(e) = self.write_sidecar(&c.path, &c.stored) {
            drop_sidecar();
            return Err(e);
        }
        if let Err(e) = std::os::unix::fs::symlink(stored.link_text(), &*c.path) {
            self.remove_sidecar_if_unused(&c);
            drop_sidecar();
            return Err(io_errno(e));
        }
        self.chown_new(req, &c.path, libc::S_IFLNK | 0o777)?;
        self.new_entry(parent, &c.stored, name, &c.path)
    }

    pub(super) fn do_unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, dir: bool) -> FsResult<()> {
        self.check_writable()?;
        let c = self.child(req, parent, name)?;
        let meta = std::fs::symlink_metadata(&*c.path).map_err(io_errno)?;
        let ino = self.inodes.fuse_ino(meta.ino());
        // The sidecar of a long target goes after the symlink's last name.
        let target_sidecar = (meta.file_type().is_symlink() && meta.nlink() == 1)
            .then(|| link_targets::sidecar_of_link(&c.path))
            .flatten();
        let xattr_store = self.store_dropped_with(&c.path, &meta, ino);
        if dir {
            self.remove_backing_dir(&c.path, &meta)?;
            self.dir_states.write().expect("dir states lock").remove(&ino);
            self.forget_cached(ino);
            if let Some(prefetch) = &self.prefetch {
                prefetch.forget(ino);
            }
        } else if meta.is_dir() {
            return Err(Errno::EISDIR);
        } else if meta.nlink() > 1 || self.open_files.get(ino).is_some() {
            // Another name or an open handle keeps the blocks, so there is no freeing to
            // defer; and the link count must drop now: a trash link would show as one link
            // too many to fstat on the open handle and to stat of the other names.
            std::fs::remove_file(&*c.path).map_err(io_errno)?;
        } else {
            self.discard(&c.path)?;
        }
        self.remove_sidecar(&c.path, &c.stored);
        if let Some(sidecar) = target_sidecar {
            link_targets::remove(&self.root, &sidecar);
        }
        if let Some(id) = xattr_store {
            xattr_store::remove(&self.root, &id);
        }
        self.inodes.unlinked(ino, parent.0, c.stored.entry());
        Ok(())
    }

    /// The xattr store that goes with the name at `path` (of the inode `meta`), if that name
    /// is the inode's last and no handle keeps it open. One kept by an open handle, or by
    /// a crash, is an orphan `fsck --repair` removes.
    fn store_dropped_with(&self, path: &Path, meta: &std::fs::Metadata, ino: u64) -> Option<String> {
        let last = if meta.is_dir() { true } else { meta.is_file() && meta.nlink() == 1 };
        let may_have_store = self.xattr_stores.load(std::sync::atomic::Ordering::SeqCst);
        (may_have_store && last && self.open_files.get(ino).is_none())
            .then(|| xattr_store::pointer_of(path))
            .flatten()
    }

    /// rmdir of a backing directory that holds only kmsfs's own files (its metadata): into
    /// the trash with them if there is one (the kernel holds the directory locked, so no
    /// entry can appear in it through the mount meanwhile). Without a trash the metadata is
    /// removed first, and put back if the final rmdir fails (an entry appeared meanwhile).
    fn remove_backing_dir(&self, path: &Path, meta: &std::fs::Metadata) -> FsResult<()> {
        if !meta.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if self.trash.is_some() {
            internal_entries(&pin_dir(path).map_err(io_errno)?)?;
            return self.discard(path);
        }
        let saved = empty_out(path)?;
        std::fs::remove_dir(path).map_err(|e| {
            restore(saved);
            io_errno(e)
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> FsResult<()> {
        self.check_writable()?;
        // Names are encrypted per directory: the moved entry gets the name encrypted under
        // the destination directory's names key. Its content key stays.
        let from = self.child(req, parent, name)?;
        let to = self.child(req, newparent, newname)?;
        let moved = std::fs::symlink_metadata(&*from.path).map_err(io_errno)?;
        let replaced = std::fs::symlink_metadata(&*to.path).ok();
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        // A directory may replace an empty directory; the backing one still holds its
        // metadata, which goes first (and comes back if the rename fails).
        let replaces_dir = !exchange
            && !flags.contains(RenameFlags::RENAME_NOREPLACE)
            && moved.is_dir()
            && replaced.as_ref().is_some_and(|m| m.is_dir() && m.ino() != moved.ino());
        // A symlink replaced with its last name takes the sidecar of its long target along.
        let replaced_target = replaced
            .as_ref()
            .filter(|m| !exchange && m.file_type().is_symlink() && m.nlink() == 1 && m.ino() != moved.ino())
            .and_then(|_| link_targets::sidecar_of_link(&to.path));
        let replaced_store = replaced
            .as_ref()
            .filter(|m| !exchange && m.ino() != moved.ino())
            .and_then(|m| self.store_dropped_with(&to.path, m, self.inodes.fuse_ino(m.ino())));
        let saved = if replaces_dir { Some(empty_out(&to.path)?) } else { None };
        self.write_sidecar(&to.path, &to.stored)?;
        let (c_from, c_to) =
            (sys::c_path(&from.path).map_err(io_errno)?, sys::c_path(&to.path).map_err(io_errno)?);
        if let Err(e) = sys::rename2(&c_from, &c_to, flags.bits()).map_err(io_errno) {
            if let Some(saved) = saved {
                restore(saved);
            }
            if replaced.is_none() {
                self.remove_sidecar(&to.path, &to.stored);
            }
            return Err(e);
        }
        // RENAME_WHITEOUT leaves a whiteout (a 0:0 character device) under the old name,
        // which then still needs its long-name sidecar.
        let whiteout = flags.contains(RenameFlags::RENAME_WHITEOUT);
        if !exchange && !whiteout && *from.path != *to.path {
            self.remove_sidecar(&from.path, &from.stored);
        }
        if let Some(sidecar) = replaced_target {
            link_targets::remove(&self.root, &sidecar);
        }
        if let Some(id) = replaced_store {
            xattr_store::remove(&self.root, &id);
        }
        let moved_ino = self.inodes.fuse_ino(moved.ino());
        let src = (parent.0, from.stored.entry());
        let dst = (newparent.0, to.stored.entry());
        if let Some(other) = replaced.filter(|m| m.ino() != moved.ino()) {
            let other_ino = self.inodes.fuse_ino(other.ino());
            if exchange {
                self.inodes.renamed(other_ino, dst, (src.0, src.1, name));
            } else {
                self.inodes.unlinked(other_ino, dst.0, dst.1);
                self.dir_states.write().expect("dir states lock").remove(&other_ino);
            }
        }
        self.inodes.renamed(moved_ino, src, (dst.0, dst.1, newname));
        Ok(())
    }
}

/// Removes kmsfs's own files from a backing directory that holds no user entry (else
/// ENOTEMPTY) and returns them, to be put back if what follows fails. Works on the directory
/// as opened, so a symlink swapped in for it cannot send the reads and removals elsewhere.
fn empty_out(path: &Path) -> FsResult<Emptied> {
    let dir = pin_dir(path).map_err(io_errno)?;
    let saved: Vec<_> = internal_entries(&dir)?
        .into_iter()
        .map(|n| {
            let bytes = crate::sys::open_noatime(&dir.path.join(&n), false)
                .and_then(|mut f| {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut bytes).map(|_| bytes)
                })
                .unwrap_or_default();
            (n, bytes)
        })
        .collect();
    for (name, _) in &saved {
        let _ = std::fs::remove_file(dir.path.join(name));
    }
    Ok(Emptied { dir, saved })
}

/// The names in a backing directory (as opened), all of them kmsfs's own; ENOTEMPTY if it
/// holds a user entry.
fn internal_entries(dir: &PinnedDir) -> FsResult<Vec<OsString>> {
    let mut internal = Vec::new();
    for entry in std::fs::read_dir(&dir.path).map_err(io_errno)? {
        let name = entry.map_err(io_errno)?.file_name();
        match classify(&name) {
            BackingEntry::Internal => internal.push(name),
            _ => return Err(Errno::ENOTEMPTY),
        }
    }
    Ok(internal)
}

/// What [`empty_out`] removed, and from which directory (as opened).
struct Emptied {
    dir: PinnedDir,
    saved: Vec<(OsString, Vec<u8>)>,
}

/// Puts back what [`empty_out`] removed, into the same directory.
fn restore(emptied: Emptied) {
    for (name, bytes) in emptied.saved {
        let _ = crate::volume::write_atomically(&emptied.dir.path.join(name), &bytes, 0o644);
    }
}
