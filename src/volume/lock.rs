//! One mount per volume: a mount holds an exclusive `flock` on `kmsfs.lock` in the cipher
//! directory for as long as it serves the volume.
//!
//! Why refuse a second mount rather than share: each mount caches directory keys, names and
//! attributes, and nothing tells one mount what another changed beneath it, so a rename
//! through one would stay unseen (or go stale) through the other, and two mounts creating or
//! repairing the same directory's metadata could overwrite each other's names key. The lock
//! is the kernel's: it goes with the last descriptor of the daemon, so a daemon killed (or a
//! machine crashed) leaves no stale lock behind, and a `flock` over NFS is a real byte-range
//! lock on the server (Linux emulates it with `fcntl` locks there).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// The lock file at the top of a cipher directory (a `kmsfs.` name: never a user entry).
pub const LOCK_NAME: &str = "kmsfs.lock";

/// A held volume lock; released when dropped (or when the process dies).
pub struct VolumeLock {
    file: File,
}

/// How long a mount waits for an unmounted daemon that is still exiting to let go of the lock.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl VolumeLock {
    /// Takes the lock of `cipher_dir`, or says who holds it. A cipher directory where the lock
    /// file cannot be created (read-only media, no write permission) is served unlocked:
    /// `None`, since a mount that cannot write there cannot change what another one sees
    /// either.
    pub fn acquire(cipher_dir: &Path) -> Result<Option<VolumeLock>> {
        let path = cipher_dir.join(LOCK_NAME);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) => {
                // An existing lock file can still be locked through a read-only descriptor.
                match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
                    Ok(f) => f,
                    Err(_) => {
                        log::info!(
                            "{}: cannot create {LOCK_NAME} ({e}); mounting without the lock",
                            cipher_dir.display()
                        );
                        return Ok(None);
                    }
                }
            }
            Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
        };
        let try_lock = || {
            crate::sys::try_lock_exclusive(&file)
                .map_err(|e| Error::io(format!("cannot lock {}", path.display()), e))
        };
        let mut locked = try_lock()?;
        // A daemon whose mount is already gone from the mount table (just unmounted) still
        // holds the lock while it flushes its audit trail and exits: wait for it, a little.
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while !locked
            && crate::mounts::mounted_at(cipher_dir).is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
            locked = try_lock()?;
        }
        if !locked {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            let owner = owner.trim();
            let by = if owner.is_empty() { String::new() } else { format!(" by kmsfs pid {owner}") };
            let at = crate::mounts::mounted_at(cipher_dir)
                .map(|m| format!(" at {}", m.display()))
                .unwrap_or_default();
            return Err(Error::InvalidArgument(format!(
                "volume {} is already mounted{at}{by}; a second mount would not see the first one's \
                 changes (unmount it first, or use the mount that is there)",
                cipher_dir.display()
            )));
        }
        let mut lock = VolumeLock { file };
        lock.record_owner();
        Ok(Some(lock))
    }

    /// Writes this process's pid into the lock file, for the message a second mount gets
    /// (again by the daemon after it forked). Best effort: the lock is the flock, not this.
    pub fn record_owner(&mut self) {
        let pid = std::process::id();
        let _ = self.file.set_len(0);
        let _ = std::os::unix::fs::FileExt::write_all_at(&self.file, format!("{pid}\n").as_bytes(), 0);
        let _ = self.file.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = VolumeLock::acquire(dir.path()).unwrap().expect("lock taken");
        let err = VolumeLock::acquire(dir.path()).err().expect("second lock refused").to_string();
        assert!(err.contains("already mounted"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        assert!(VolumeLock::acquire(dir.path()).unwrap().is_some(), "free again once dropped");
    }
}
