//! The mount's read-ahead. A FUSE mount's backing-device info starts with the kernel's
//! default read-ahead (128 KiB) and the INIT reply's `max_readahead` can only lower it, so
//! sequential reads reach the daemon as 128 KiB READs however large the reader's requests.
//! Root may raise the device's `read_ahead_kb` in sysfs: then a `dd bs=1M` arrives as 1 MiB
//! READs, an eighth of the round trips (docs/PERFORMANCE.md).

use std::path::Path;

/// Sets the read-ahead of the FUSE mount at `mountpoint` (canonical) to `kib`; a daemon
/// that may not (not root) keeps the kernel's default, which only costs speed.
pub fn raise(mountpoint: &Path, kib: u32) {
    // mountinfo lists mounts oldest first; the newest at a path is the one just made.
    let newest = super::mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == mountpoint && m.fstype.starts_with("fuse"));
    let Some(mount) = newest else {
        log::debug!("no FUSE mount at {} in mountinfo; read-ahead left as is", mountpoint.display());
        return;
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", mount.device);
    match std::fs::write(&knob, kib.to_string()) {
        Ok(()) => log::debug!("read-ahead of {} set to {kib} KiB", mountpoint.display()),
        Err(e) => log::debug!("cannot raise the read-ahead ({knob}: {e}); the kernel's default stays"),
    }
}
