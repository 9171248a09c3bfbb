//! The FUSE frontend: maps kernel requests onto the backing (cipher) directory.
//!
//! `fs` never touches SQLite or master keys: it asks the [`KeyRing`] for a file's data key
//! and gets back a key or an error that maps to an errno (ENOKEY for a key's state, EACCES
//! for a policy, EIO for tampering).

mod dir_sync;
mod dirs;
mod filesystem;
mod handles;
pub mod inodes;
pub mod linger;
mod listing;
mod live_rewrap;
mod node;
mod node_dir_ops;
mod node_open_create;
mod open_files;
mod prefetch;
mod trash;
mod workers;
pub mod xattr;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, Request};

use crate::content;
use crate::content::names::{self, EntryName, StoredName};
use crate::content::volume_cipher::VolumeCipher;
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::Principal;
use crate::sys;
use crate::volume::VolumeConfig;
use inodes::InodeTable;
use listing::DirListing;
use open_files::OpenFiles;
use std::os::fd::AsFd;

/// How long the kernel may cache attributes and names. Every change made through the mount
/// updates or invalidates the kernel's copy itself, so this bounds only how long a change
/// made beside the mount (in the cipher directory itself, which is not supported while
/// mounted) can go unseen, and how long a name already looked up stays visible to `stat`
/// after its directory's key is disabled: opens, creates and listings are refused at once.
/// Not short, because every expiry costs a LOOKUP round trip per name when the name is used
/// again (gocryptfs uses 1 s, securefs 30 s): 10 s covers the gap between a listing and the
/// use of its names in `find | xargs cat`, `rm -rf` and `ls -l`, which readdirplus answers
/// with attributes, and bounds how long a name seen to change type underneath the mount
/// stays unusable.
pub const TTL: Duration = Duration::from_secs(10);

pub type FsResult<T> = Result<T, Errno>;

/// Threads for large READs and fsyncs (`workers`): read-ahead READs sent together decrypt
/// on both cores, and one fsync waiting on the disk leaves a thread for the next READ.
const IO_THREADS: usize = 2;

/// Mount-time choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsOptions {
    /// Mounted `ro`. A later `mount -o remount,rw` is the kernel's to do; see
    /// [`KmsFs::check_writable`].
    pub read_only: bool,
    /// `-o writeback_cache`: the kernel gathers writes in its page cache and sends them at
    /// writeback, close and fsync (faster small-file and streaming writes), at a price: a
    /// write that runs out of space or fails is reported by the close or fsync after it, not
    /// by the write itself, and a daemon killed before a close loses what was not yet sent.
    pub writeback_cache: bool,
}

pub struct KmsFs {
    root: PathBuf,
    config: VolumeConfig,
    keyring: Arc<KeyRing>,
    names: VolumeCipher,
    inodes: InodeTable,
    /// Open files by inode (a backing fd and data key each) and their handles.
    open_files: OpenFiles,
    dirs: Mutex<HashMap<u64, Arc<DirListing>>>,
    /// Each directory's key and names key, by inode.
    dir_states: RwLock<HashMap<u64, Arc<dirs::CachedDir>>>,
    /// Held while a directory's state is loaded (or repaired) for the first time.
    dir_loading: Mutex<()>,
    /// Held while a header or directory metadata is re-wrapped (`kmsfs rewrap`, `dir set-key`).
    rewrap_lock: Mutex<()>,
    /// The cipher directory, opened once, for walking paths too long for one syscall.
    root_fd: Arc<std::os::fd::OwnedFd>,
    /// Descriptors of deep directories (backing path over SHORT_PATH), by inode. A
    /// descriptor follows its directory through renames, so entries stay valid until the
    /// kernel forgets the inode or the directory is removed.
    deep_dirs: Mutex<HashMap<u64, Arc<std::os::fd::OwnedFd>>>,
    next_fh: AtomicU64,
    /// The daemon's effective uid and gid: what the backing file system gives new objects.
    /// Running as root (e.g. with allow_other), new objects are given to the caller.
    daemon_ids: (u32, u32),
    options: FsOptions,
    /// Whether the mount is read-only now (it starts as `options.read_only`; a remount
    /// changes it).
    read_only: std::sync::atomic::AtomicBool,
    /// Asks whether the mount's superblock is read-only now (the mount table; `None`: it
    /// cannot tell). Set by the mount, which knows where it is mounted.
    read_only_probe: Option<Box<dyn Fn() -> Option<bool> + Send + Sync>>,
    /// What the kernel agreed to at INIT.
    kernel: KernelFeatures,
    /// Where removed entries go to be removed for good in the background (`None` when
    /// mounted read-only, or if it cannot be created: then removals are direct).
    trash: Option<trash::Trash>,
    /// Reads the next files of a directory ahead while they are opened in listing order.
    prefetch: Option<prefetch::Prefetcher>,
    /// fsyncs new directories' metadata shortly after their mkdir (`None`: if its thread
    /// cannot be started, mkdir fsyncs it before returning).
    dir_sync: Option<dir_sync::DeferredSync>,
    /// Polls for the next request after each reply (see `linger`).
    linger: Arc<linger::Linger>,
    /// Large READs and fsyncs, off the dispatching thread (`None`: they run on it).
    workers: Option<workers::Workers>,
    /// Whether the volume may hold an xattr store (one existed at mount, or one was written
    /// since). While it holds none, removing a name need not look for a store to remove
    /// with it: one getxattr less per unlink.
    xattr_stores: std::sync::atomic::AtomicBool,
}

/// Kernel features that change what the filesystem must do itself.
#[derive(Debug, Clone, Copy, Default)]
struct KernelFeatures {
    /// Writes gather in the kernel's page cache and arrive as large WRITEs at writeback, at
    /// offsets the kernel chose: the kernel applies O_APPEND itself.
    writeback_cache: bool,
    /// The kernel leaves clearing set-user-ID and set-group-ID bits on write and truncate to
    /// the filesystem (FUSE_HANDLE_KILLPRIV_V2), and so need not ask for
    /// `security.capability` (a GETXATTR round trip) before every write.
    kill_privs: bool,
}

impl KmsFs {
    pub fn new(
        root: PathBuf,
        config: VolumeConfig,
        keyring: Arc<KeyRing>,
        names: VolumeCipher,
        options: FsOptions,
    ) -> std::io::Result<KmsFs> {
        // Every object is created with the mode its caller asked for, less the caller's umask
        // (`creation_mode`); the umask of whoever started the mount (a unit file, fstab, a
        // script under umask 077) must not take more away.
        crate::sys::clear_umask();
        let root_meta = std::fs::metadata(&root)?;
        let root_fd = Arc::new(std::fs::File::open(&root)?.into());
        let trash = match options.read_only {
            true => None,
            false => trash::Trash::open(&root)
                .inspect_err(|e| log::warn!("no background removal ({e}); removing files directly"))
                .ok(),
        };
        let xattr_stores = !crate::volume::xattr_store::list(&root).is_empty();
        Ok(KmsFs {
            xattr_stores: std::sync::atomic::AtomicBool::new(xattr_stores),
            dir_states: RwLock::new(HashMap::new()),
            dir_loading: Mutex::new(()),
            rewrap_lock: Mutex::new(()),
            deep_dirs: Mutex::new(HashMap::new()),
            root_fd,
            inodes: InodeTable::new(root_meta.ino()),
            root,
            config,
            keyring,
            names,
            open_files: OpenFiles::default(),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            daemon_ids: crate::sys::effective_ids(),
            read_only: std::sync::atomic::AtomicBool::new(options.read_only),
            read_only_probe: None,
            options,
            kernel: KernelFeatures::default(),
            trash,
            prefetch: prefetch::Prefetcher::start()
                .inspect_err(|e| log::warn!("no read-ahead across files ({e})"))
                .ok(),
            dir_sync: dir_sync::DeferredSync::start()
                .inspect_err(|e| log::warn!("mkdir fsyncs its metadata itself ({e})"))
                .ok(),
            linger: Arc::new(linger::Linger::new()),
            workers: workers::Workers::start(IO_THREADS)
                .inspect_err(|e| log::warn!("large reads and fsyncs run on the dispatching thread ({e})"))
                .ok(),
        })
    }

    /// What every request handler starts with: the keystore is checked for changes at most
    /// once in the request, and once the handler has replied (the guard drops), the
    /// dispatcher polls for the next request.
    fn begin_request(&self) -> (crate::kms::keyring::RequestScope, linger::AfterReply<'_>) {
        (crate::kms::keyring::begin_request(), self.linger.after_reply())
    }

    /// What the mount attaches the FUSE device to, once it has one (see `linger`).
    pub fn linger(&self) -> Arc<linger::Linger> {
        self.linger.clone()
    }

    /// The principal behind a request. Its supplementary groups are read from
    /// /proc/PID/status only when some policy or grant names a group.
    fn caller(&self, req: &Request) -> Principal {
        let groups = if self.keyring.uses_groups() { process_groups(req.pid()) } else { Vec::new() };
        Principal::from_ids(req.uid(), req.gid(), groups, Some(req.pid()))
    }

    /// Backing path (relative to the cipher dir) of an inode.
    fn rel_path(&self, ino: INodeNo) -> FsResult<PathBuf> {
        self.inodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    /// The backing path of an inode. Paths too long for one syscall (the encrypted names of
    /// a deep tree exceed PATH_MAX long before the plaintext path does) are reached through
    /// a descriptor of their directory, opened component by component.
    fn backing(&self, ino: INodeNo) -> FsResult<BPath> {
        let rel = self.rel_path(ino)?;
        let full = self.root.join(&rel);
        if full.as_os_str().len() < SHORT_PATH {
            return Ok(BPath { path: full, _dir: None });
        }
        let last = rel.file_name().ok_or(Errno::ENOENT)?;
        let dir = self.dir_fd(self.inodes.parent(ino.0).ok_or(Errno::ENOENT)?)?;
        let fd_path = sys::proc_fd_path(&*dir).join(last);
        Ok(BPath { path: fd_path, _dir: Some(dir) })
    }

    /// An O_PATH descriptor of directory `ino`: by path when short, else relative to its
    /// parent's descriptor (cached, so a deep tree costs one openat per new level, not one
    /// per level per operation).
    fn dir_fd(&self, ino: u64) -> FsResult<Arc<std::os::fd::OwnedFd>> {
        if ino == inodes::ROOT_INO {
            return Ok(self.root_fd.clone());
        }
        if let Some(fd) = self.deep_dirs.lock().expect("deep dirs lock").get(&ino) {
            return Ok(fd.clone());
        }
        let rel = self.inodes.path(ino).ok_or(Errno::ENOENT)?;
        let fd = if self.root.join(&rel).as_os_str().len() < SHORT_PATH {
            sys::open_dir_at(self.root_fd.as_fd(), rel.as_os_str())
        } else {
            let parent = self.dir_fd(self.inodes.parent(ino).ok_or(Errno::ENOENT)?)?;
            sys::open_dir_at(parent.as_fd(), rel.file_name().ok_or(Errno::ENOENT)?)
        }
        .map_err(io_errno)?;
        let fd = Arc::new(fd);
        let mut cache = self.deep_dirs.lock().expect("deep dirs lock");
        if cache.len() >= MAX_DEEP_DIRS {
            cache.clear(); // bounded: descriptors are a limited resource
        }
        cache.insert(ino, fd.clone());
        Ok(fd)
    }

    /// A new handle number (of a file or a directory).
    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops what is cached about an inode the kernel forgot or that was removed.
    fn forget_cached(&self, ino: u64) {
        self.deep_dirs.lock().expect("deep dirs lock").remove(&ino);
    }

    /// The plaintext name of a backing directory entry in `dir`, or `None` for kmsfs's own
    /// files and for names that do not decrypt.
    fn plain_name(&self, state: &dirs::CachedDir, dir: &Path, backing: &OsStr) -> Option<OsString> {
        match state.names.entry_name(dir, backing) {
            EntryName::Plain(name) => Some(name),
            EntryName::Internal => None,
            EntryName::Undecryptable => {
                log::warn!("{}: entry {backing:?} does not decrypt; hiding it", dir.display());
                None
            }
        }
    }

    /// Backing path and stored name of `name` in directory `parent`, after checking the
    /// directory's key may be used by the caller.
    fn child(&self, req: &Request, parent: INodeNo, name: &OsStr) -> FsResult<Child> {
        if name.len() > names::NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let caller = self.caller(req);
        let label = self.display_path(parent.0);
        let dir = self.dir_state(Self::access(&caller, &label), parent)?;
        let stored = dir.names.encrypt(name);
        Ok(Child { path: self.backing(parent)?.join(stored.entry()), stored, dir })
    }

    /// Writes the sidecar of a long name before its entry appears.
    fn write_sidecar(&self, entry_path: &Path, stored: &StoredName) -> FsResult<()> {
        if let (Some(sidecar), StoredName::Long { full, .. }) = (stored.sidecar(), stored) {
            let path = entry_path.with_file_name(sidecar);
            crate::volume::write_atomically(&path, full.as_bytes(), 0o644).map_err(|e| {
                log::warn!("cannot write {}: {e}", path.display());
                kms_errno(e) // EIO, or ENOSPC/EDQUOT when out of space
            })?;
        }
        Ok(())
    }

    /// Removes the sidecar of a long name whose entry is gone.
    fn remove_sidecar(&self, entry_path: &Path, stored: &StoredName) {
        if let Some(sidecar) = stored.sidecar() {
            let _ = std::fs::remove_file(entry_path.with_file_name(sidecar));
        }
    }

    /// Removes the sidecar written for an entry that then failed to appear, unless another
    /// entry of that name exists (then the sidecar is its own).
    fn remove_sidecar_if_unused(&self, c: &Child) {
        if std::fs::symlink_metadata(&*c.path).is_err() {
            self.remove_sidecar(&c.path, &c.stored);
        }
    }

    /// The plaintext path of `name` in directory `parent`, for audit and logs.
    fn display_child(&self, parent: INodeNo, name: &OsStr) -> String {
        let dir = self.display_path(parent.0);
        format!("{}/{}", dir.trim_end_matches('/'), name.to_string_lossy())
    }

    /// The path a person would recognise, for the audit trail and logs.
    fn display_path(&self, ino: u64) -> String {
        match self.inodes.plain_path(ino) {
            Some(p) => format!("/{}", p.display()),
            None => format!("<inode {ino}, unlinked>"),
        }
    }

    fn access<'a>(caller: &'a Principal, path: &'a str) -> Access<'a> {
        Access { caller, path }
    }

    /// The plaintext target of the backing symlink at `path` (from its sidecar if it is
    /// long); `None` if it does not authenticate.
    fn symlink_target(&self, path: &Path) -> Option<OsString> {
        let text = std::fs::read_link(path).ok()?;
        crate::volume::link_targets::resolve(&self.names, &self.root, text.as_os_str())
    }

    /// Attributes as the mount shows them: sizes are plaintext sizes.
    fn attr(&self, ino: u64, meta: &Metadata, backing_path: Option<&Path>) -> FileAttr {
        let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
        let size = match kind {
            FileType::RegularFile => content::plaintext_size(meta.len()),
            FileType::Symlink => {
                backing_path.and_then(|p| self.symlink_target(p)).map(|t| t.len() as u64).unwrap_or(0)
            }
            _ => meta.len(),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            // The backing birth time, where there is one: it gives the generation (`handles`).
            crtime: meta.created().unwrap_or(UNIX_EPOCH),
            kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: content::BLOCK_SIZE as u32,
            flags: 0,
        }
    }

    /// Looks up a backing path, remembers it under (parent, stored name), returns its attr.
    fn entry(&self, parent: INodeNo, stored: &StoredName, plain: &OsStr, path: &Path) -> FsResult<FileAttr> {
        let meta = std::fs::symlink_metadata(path).map_err(io_errno)?;
        let ino = self.inodes.fuse_ino(meta.ino());
        self.inodes.remember(ino, parent.0, stored.entry(), plain);
        Ok(self.attr(ino, &meta, Some(path)))
    }

    /// `entry` for an object this request has just created (see `InodeTable::created`).
    fn new_entry(
        &self,
        parent: INodeNo,
        stored: &StoredName,
        plain: &OsStr,
        path: &Path,
    ) -> FsResult<FileAttr> {
        let meta = std::fs::symlink_metadata(path).map_err(io_errno)?;
        self.inodes.created(self.inodes.fuse_ino(meta.ino()));
        self.entry(parent, stored, plain, path)
    }

    /// Gives a new backing object to the calling user when the daemon runs as root.
    /// In a setgid directory the group is the directory's (which the backing filesystem
    /// already gave it), as POSIX says.
    ///
    /// A chown clears the set-user-ID and set-group-ID bits of a non-directory, but the
    /// caller created it with them (the kernel has already removed a set-group-ID bit the
    /// caller may not have): `mode` is put back then.
    fn chown_new(&self, req: &Request, path: &Path, mode: u32) -> FsResult<()> {
        // A caller with the daemon's own ids (root untarring as root) has the owner and group
        // the backing file system gave the object already, including a setgid parent's group.
        let (uid, gid) = self.daemon_ids;
        let callers_already = req.uid() == uid && req.gid() == gid;
        if uid == 0 && !callers_already {
            let setgid_parent = path
                .parent()
                .and_then(|p| std::fs::metadata(p).ok())
                .is_some_and(|m| m.mode() & libc::S_ISGID != 0);
            let gid = (!setgid_parent).then(|| req.gid());
            std::os::unix::fs::lchown(path, Some(req.uid()), gid).map_err(io_errno)?;
            let set_id = mode & (libc::S_ISUID | libc::S_ISGID) != 0;
            if set_id && mode & libc::S_IFMT != libc::S_IFDIR && mode & libc::S_IFMT != libc::S_IFLNK {
                let p = crate::sys::c_path(path).map_err(io_errno)?;
                crate::sys::chmod_nofollow(&p, mode & 0o7777).map_err(io_errno)?;
            }
        }
        Ok(())
    }

    /// Removes a backing file, or (only with a trash) an emptied directory: into the trash
    /// if there is one, else at once.
    fn discard(&self, path: &Path) -> FsResult<()> {
        match &self.trash {
            Some(trash) => trash.put(path),
            None => std::fs::remove_file(path),
        }
        .map_err(io_errno)
    }

    /// Runs `op`; if it runs out of space while removed files are still being freed in the
    /// background, waits for that and runs it once more (XFS does the same with its
    /// background inode freeing). `op` must leave nothing behind when it fails, as every
    /// request here does.
    fn with_space<T>(&self, op: impl Fn() -> FsResult<T>) -> FsResult<T> {
        match op() {
            Err(e) if e == Errno::ENOSPC || e == Errno::EDQUOT => match &self.trash {
                Some(trash) if trash.busy() => {
                    trash.wait_empty();
                    op()
                }
                _ => Err(e),
            },
            other => other,
        }
    }

    /// Waits until removed files have been freed (before `statfs`, so `df` after `rm` is true).
    fn settle_removals(&self) {
        if let Some(trash) = &self.trash {
            trash.wait_empty();
        }
    }

    /// Tells the filesystem how to learn whether its mount is read-only now (after
    /// `mount -o remount,ro` or `remount,rw`).
    pub fn set_read_only_probe(&mut self, probe: impl Fn() -> Option<bool> + Send + Sync + 'static) {
        self.read_only_probe = Some(Box::new(probe));
    }

    /// Before a request that changes the volume. The kernel sends none while the mount's
    /// superblock is read-only, so one arriving on a mount that was read-only means it has
    /// been remounted read-write; the mount table confirms it.
    fn check_writable(&self) -> FsResult<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.read_only.load(Relaxed) {
            return Ok(());
        }
        if self.read_only_probe.as_ref().and_then(|probe| probe()) == Some(true) {
            return Err(Errno::EROFS);
        }
        log::info!("the mount is read-write now");
        self.read_only.store(false, Relaxed);
        Ok(())
    }

    /// Whether the daemon must not write to the cipher directory by itself now (repairs):
    /// asked of the mount table, since a read-only remount sends no request to tell.
    fn read_only_now(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match self.read_only_probe.as_ref().and_then(|probe| probe()) {
            Some(ro) => {
                self.read_only.store(ro, Relaxed);
                ro
            }
            None => self.read_only.load(Relaxed),
        }
    }
}

/// A name in a directory: where it is stored, how, and the directory's keys.
struct Child {
    path: BPath,
    stored: StoredName,
    dir: Arc<dirs::CachedDir>,
}

/// The supplementary groups of a process (the `Groups:` line of /proc/PID/status).
fn process_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        })
        .unwrap_or_default()
}

/// Most deep-directory descriptors kept open at once.
const MAX_DEEP_DIRS: usize = 4096;

/// Longest backing path used directly; longer ones go through a directory descriptor.
const SHORT_PATH: usize = 3500;

/// A backing path, with the directory descriptor it may go through kept open.
pub struct BPath {
    path: PathBuf,
    _dir: Option<Arc<std::os::fd::OwnedFd>>,
}

impl BPath {
    /// Whether the path names its object directly, not through a directory descriptor
    /// (which is valid only while this value lives).
    fn is_direct(&self) -> bool {
        self._dir.is_none()
    }

    fn join(&self, name: impl AsRef<Path>) -> BPath {
        BPath { path: self.path.join(name), _dir: self._dir.clone() }
    }
}

impl std::ops::Deref for BPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// The mode of a new object: what the caller asked for less the caller's umask (FUSE passes
/// both; the kernel has applied the umask already unless the filesystem asked it not to,
/// and applying it twice changes nothing). The daemon's own umask is 0 (`KmsFs::new`).
fn creation_mode(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

pub fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

pub fn kms_errno(e: crate::Error) -> Errno {
    Errno::from_i32(e.errno())
}
