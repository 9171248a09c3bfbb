//! The system calls kmsfs makes on backing files that the standard library does not wrap,
//! each behind a safe signature: this is the one module of `fs` and `volume` work that holds
//! `unsafe` (gocryptfs keeps the same in internal/syscallcompat).
//!
//! Everything here works on backing paths that a writer of the cipher directory may have
//! changed underneath: nothing follows a symlink in the last component of a path.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A path as the C calls take it; a NUL byte inside is EINVAL.
pub fn c_path(path: &Path) -> io::Result<CString> {
    c_bytes(path.as_os_str().as_bytes())
}

/// A name or path given as bytes (an xattr name), as the C calls take it.
pub fn c_bytes(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `rc` of a call that returns 0 or -1 with errno.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a metadata call applies to: a backing path (never followed in its last component),
/// or an open descriptor (no path walk, and the only way to an unlinked file).
#[derive(Clone, Copy)]
pub enum Node<'a> {
    Path(&'a CStr),
    Fd(BorrowedFd<'a>),
}

/// Opens `name` relative to `dir` (`None`: the working directory, or an absolute `name`) with
/// `flags | O_NOFOLLOW | O_CLOEXEC`.
fn open_at(dir: Option<BorrowedFd<'_>>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `dirfd` is open (or AT_FDCWD) and `name` NUL-terminated.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` with `flags | O_NOFOLLOW | O_CLOEXEC`.
pub fn open_nofollow(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    open_at(None, path, flags)
}

/// Opens directory `name` (a relative path) inside `dir` for path walking only (O_PATH),
/// never following a symlink in its last component.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(Some(dir), &c_bytes(name.as_bytes())?, libc::O_PATH | libc::O_DIRECTORY)
}

/// The `/proc/self/fd/N` path that names exactly the object `fd` was opened on, for calls
/// that take a path (and for `fchmod`, which does not take O_PATH descriptors).
pub fn proc_fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A backing directory opened without following a symlink in its last component, and the
/// `/proc/self/fd/N` path that names exactly that directory for path-taking APIs (read_dir,
/// read, remove_file): renaming it away and putting a symlink in its place changes nothing
/// for them.
pub struct PinnedDir {
    _fd: OwnedFd,
    pub path: PathBuf,
}

pub fn pin_dir(path: &Path) -> io::Result<PinnedDir> {
    let fd = open_nofollow(&c_path(path)?, libc::O_PATH | libc::O_DIRECTORY)?;
    Ok(PinnedDir { path: proc_fd_path(&fd), _fd: fd })
}

/// Opens a backing file without updating its access time: kmsfs's own reads (headers,
/// read-modify-write of blocks) are not the user's reads. Never follows a symlink.
/// O_NOATIME needs ownership (or CAP_FOWNER), so it is dropped when refused.
pub fn open_noatime(path: &Path, write: bool) -> io::Result<File> {
    open_noatime_with(path, write, 0)
}

/// [`open_noatime`] with more open flags (`flags`, e.g. O_NONBLOCK).
pub fn open_noatime_with(path: &Path, write: bool, flags: i32) -> io::Result<File> {
    let open = |extra: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | flags | extra)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
}

/// Creates `path` for writing, failing if anything (a file, a symlink) is there already:
/// `O_CREAT | O_EXCL | O_NOFOLLOW`.
pub fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills a zeroed stat for an open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// chmod of exactly the inode `fd` was opened on (also an O_PATH descriptor, which `fchmod`
/// does not take), through `/proc/self/fd/N`.
pub fn chmod_opened(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    let path = c_path(&proc_fd_path(fd))?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })
}

/// chmod of `path` that never follows a symlink in its last component (as gocryptfs,
/// glibc's fchmodat(AT_SYMLINK_NOFOLLOW) and qemu's 9p server do it): open it with
/// `O_PATH | O_NOFOLLOW` (needs no read permission and opens no device), check on the
/// descriptor that it is not a symlink, and chmod `/proc/self/fd/N`, which names exactly the
/// inode opened. A symlink found there is left alone: ELOOP.
pub fn chmod_nofollow(path: &CStr, mode: u32) -> io::Result<()> {
    let fd = open_nofollow(path, libc::O_PATH)?;
    if fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    chmod_opened(&fd, mode)
}

/// chmod of a node: through its descriptor, or by path without following a symlink.
pub fn chmod(node: Node<'_>, mode: u32) -> io::Result<()> {
    match node {
        Node::Path(p) => chmod_nofollow(p, mode),
        // SAFETY: an open descriptor.
        Node::Fd(fd) => check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }),
    }
}

/// chown of a node (`None` leaves that id), never following a symlink (lchown).
pub fn chown(node: Node<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: a NUL-terminated path or an open descriptor, and plain integers.
    check(match node {
        Node::Path(p) => unsafe { libc::lchown(p.as_ptr(), u, g) },
        Node::Fd(fd) => unsafe { libc::fchown(fd.as_raw_fd(), u, g) },
    })
}

/// Sets access and modification times (UTIME_OMIT / UTIME_NOW allowed); a symlink's own.
pub fn set_times(node: Node<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path or an open descriptor, and two timespecs.
    check(match node {
        Node::Path(p) => unsafe {
            libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
        },
        Node::Fd(fd) => unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) },
    })
}

/// Calls a syscall that fills a buffer (getxattr, listxattr and friends) first to learn
/// the size, then with a buffer of that size plus slack for a value that grows meanwhile.
fn read_growing(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    let needed = call(std::ptr::null_mut(), 0);
    if needed < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; needed as usize + 256];
    let got = call(buf.as_mut_ptr().cast(), buf.len());
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

/// The value of extended attribute `name` (a symlink's own, not its target's).
pub fn get_xattr(node: Node<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    // SAFETY: NUL-terminated strings or an open descriptor, and a buffer of the length passed.
    read_growing(|buf, len| match node {
        Node::Path(p) => unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf, len) },
        Node::Fd(fd) => unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf, len) },
    })
}

/// The NUL-separated names of a node's extended attributes.
pub fn list_xattr(node: Node<'_>) -> io::Result<Vec<u8>> {
    // SAFETY: as in `get_xattr`.
    read_growing(|buf, len| match node {
        Node::Path(p) => unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) },
        Node::Fd(fd) => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) },
    })
}

pub fn set_xattr(node: Node<'_>, name: &CStr, value: &[u8], flags: i32) -> io::Result<()> {
    let (v, n) = (value.as_ptr().cast(), value.len());
    // SAFETY: NUL-terminated strings or an open descriptor, and a value of the length passed.
    check(match node {
        Node::Path(p) => unsafe { libc::lsetxattr(p.as_ptr(), name.as_ptr(), v, n, flags) },
        Node::Fd(fd) => unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), v, n, flags) },
    })
}

pub fn remove_xattr(node: Node<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: NUL-terminated strings or an open descriptor.
    check(match node {
        Node::Path(p) => unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) },
        Node::Fd(fd) => unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) },
    })
}

/// Creates a device node, FIFO or socket.
pub fn mknod(path: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: NUL-terminated path and plain integers.
    check(unsafe { libc::mknod(path.as_ptr(), mode, rdev as libc::dev_t) })
}

/// renameat2(2) with its flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
pub fn rename2(from: &CStr, to: &CStr, flags: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated paths.
    check(unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) })
}

pub fn statvfs(path: &CStr) -> io::Result<libc::statvfs> {
    // SAFETY: statvfs fills a zeroed struct for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st)
}

/// fsync of a directory (its entries), opened without following a symlink.
pub fn fsync_dir(path: &CStr) -> io::Result<()> {
    let dir = open_nofollow(path, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: an open descriptor.
    check(unsafe { libc::fsync(dir.as_raw_fd()) })
}

/// Asks the kernel to read the first `len` bytes of `file` into the page cache.
pub fn read_ahead(file: &File, len: i64) {
    // SAFETY: an open descriptor; advice only, whatever the result.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, len, libc::POSIX_FADV_WILLNEED) };
}

/// Copies `from[start..len]` to the same offsets of `to`, skipping holes (`SEEK_DATA`,
/// `SEEK_HOLE`, `copy_file_range`); returns the number of bytes copied.
pub fn copy_sparse(from: &File, to: &File, start: u64, len: u64) -> io::Result<u64> {
    let (src, dst) = (from.as_raw_fd(), to.as_raw_fd());
    let mut copied = 0;
    let mut at = start as i64;
    while (at as u64) < len {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(src, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src, data, libc::SEEK_HOLE) }.min(len as i64);
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = (hole - off_in) as usize;
            // SAFETY: valid descriptors and offsets owned by this function.
            let n = unsafe { libc::copy_file_range(src, &mut off_in, dst, &mut off_out, want, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            copied += n as u64;
        }
        at = hole;
    }
    Ok(copied)
}

/// Flushes the whole file system holding `path` (one `syncfs` after a walk, instead of an
/// fsync per file). Best effort: a failure only means the kernel writes back later.
pub fn sync_filesystem(path: &Path) {
    if let Ok(f) = File::open(path) {
        // SAFETY: syncfs on a descriptor this function owns.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

/// The effective uid and gid of this process (as root, the mount gives new backing objects
/// to their callers and a copy keeps owners).
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: neither call can fail or touches memory.
    unsafe { (libc::geteuid(), libc::getegid()) }
}
