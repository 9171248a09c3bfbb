//! Small system-call helpers for work on backing files, shared by the mount and the
//! offline walks (rewrap, copy).

use std::path::Path;

/// Calls a syscall that fills a buffer (getxattr, listxattr and friends) first to learn
/// the size, then with a buffer of that size plus slack for a value that grows meanwhile.
pub fn read_growing(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> std::io::Result<Vec<u8>> {
    let needed = call(std::ptr::null_mut(), 0);
    if needed < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; needed as usize + 256];
    let got = call(buf.as_mut_ptr().cast(), buf.len());
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    Ok(buf)
}

/// Flushes the whole file system holding `path` (one `syncfs` after a walk, instead of an
/// fsync per file). Best effort: a failure only means the kernel writes back later.
pub fn sync_filesystem(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        // SAFETY: syncfs on a descriptor this function owns.
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    }
}
