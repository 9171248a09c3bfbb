//! The client side of a mounted volume's control attributes: `user.kmsfs.key`,
//! `user.kmsfs.key_version`, `user.kmsfs.key_explicit` (read), and `user.kmsfs.key` on a
//! directory / `user.kmsfs.rewrap` (write). Admin commands that work on a live mount go
//! through these, so the mount applies the caller's policies and keeps its caches true.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use crate::sys::{self, Node};
use crate::volume::rewrap::RewrapReport;

pub use crate::fs::xattr::{
    XATTR_KEY as KEY, XATTR_KEY_EXPLICIT as KEY_EXPLICIT, XATTR_KEY_VERSION as KEY_VERSION,
    XATTR_REMOTE_KEYS as REMOTE_KEYS, XATTR_REWRAP as REWRAP, XATTR_WRAPPED_BY as WRAPPED_BY,
};

/// Reads attribute `name` of `path` (not following a final symlink).
pub fn get(path: &Path, name: &str) -> std::io::Result<String> {
    let value = sys::get_xattr(Node::Path(&sys::c_path(path)?), &sys::c_bytes(name.as_bytes())?)?;
    Ok(String::from_utf8_lossy(&value).into_owned())
}

/// Sets attribute `name` of `path` (not following a final symlink).
pub fn set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    sys::set_xattr(Node::Path(&sys::c_path(path)?), &sys::c_bytes(name.as_bytes())?, value, 0)
}

/// What an errno from a control attribute means, for a person.
pub fn explain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOKEY) => "its key is disabled, pending deletion or destroyed".into(),
        Some(libc::EACCES) => "access denied (key policy, grants or file permissions)".into(),
        Some(libc::EIO) => "damaged or tampered (run `kmsfs fsck` on the cipher directory)".into(),
        Some(libc::EINVAL) => "unknown key".into(),
        _ => e.to_string(),
    }
}

/// Which key and version wrap `path`'s key ("KEY_ID VERSION"), as the mount reports it.
fn wrapped_by(path: &Path) -> std::io::Result<String> {
    get(path, WRAPPED_BY)
}

/// `kmsfs rewrap` on a live mount: asks the mount to re-wrap every directory and file
/// below `start` (a directory on the mount), or the file `start`. With `to_key`, `start` is set to that key
/// (as `kmsfs dir set-key`) and everything below moves to it. Stays on this mount.
pub fn rewrap_live(
    start: &Path,
    to_key: Option<&str>,
    progress: &mut dyn FnMut(&RewrapReport),
) -> RewrapReport {
    let began = Instant::now();
    let mut walk = LiveRewrap { to_key, progress, report: RewrapReport { live: true, ..Default::default() } };
    match std::fs::symlink_metadata(start) {
        Ok(meta) if meta.is_dir() => walk.directory(start, meta.dev(), true),
        Ok(meta) if meta.is_file() => {
            walk.report.files = 1;
            match walk.item(start, false) {
                Ok(changed) => walk.report.files_rewrapped = changed as u64,
                Err(e) => walk.report.errors.push(e),
            }
        }
        Ok(_) => walk.report.errors.push(format!("{}: not a file or directory", start.display())),
        Err(e) => walk.report.errors.push(format!("{}: {e}", start.display())),
    }
    // At the mount's root without a new key, the mount re-wrapped every intermediate key
    // too (the root's re-wrap does that); elsewhere the attribute is absent.
    if to_key.is_none() && walk.report.errors.is_empty() {
        walk.report.intermediate_keys_rewrapped = remote_keys(start).map_or(0, |keys| keys.len() as u64);
    }
    walk.report.seconds = began.elapsed().as_secs_f64();
    walk.report
}

/// The intermediate keys of the volume mounted with its root at `root`, as the mount sees
/// them; `None` when `root` is not a kmsfs mount's root.
pub fn remote_keys(root: &Path) -> Option<Vec<crate::kms::remote::KeyReport>> {
    serde_json::from_str(&get(root, REMOTE_KEYS).ok()?).ok()
}

struct LiveRewrap<'a> {
    to_key: Option<&'a str>,
    progress: &'a mut dyn FnMut(&RewrapReport),
    report: RewrapReport,
}

impl LiveRewrap<'_> {
    /// Re-wraps one item; returns whether its wrap changed.
    fn item(&mut self, path: &Path, top: bool) -> Result<bool, String> {
        let fail = |e: std::io::Error| format!("{}: {}", path.display(), explain(&e));
        let before = wrapped_by(path).map_err(fail)?;
        match (top, self.to_key) {
            (true, Some(key)) => set(path, KEY, key.as_bytes()),
            _ => set(path, REWRAP, self.to_key.unwrap_or("").as_bytes()),
        }
        .map_err(fail)?;
        Ok(wrapped_by(path).map_err(fail)? != before)
    }

    fn directory(&mut self, dir: &Path, dev: u64, top: bool) {
        self.report.directories += 1;
        match self.item(dir, top) {
            Ok(changed) => self.report.directories_rewrapped += changed as u64,
            Err(e) => {
                // A directory whose key cannot be used cannot be listed either.
                self.report.errors.push(e);
                return;
            }
        }
        (self.progress)(&self.report);
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.report.errors.push(format!("{}: {}", dir.display(), explain(&e)));
                return;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.report.errors.push(format!("{}: {}", dir.display(), explain(&e)));
                    continue;
                }
            };
            let path = entry.path();
            match entry.file_type() {
                // Another file system mounted inside the volume is not the volume's.
                Ok(t) if t.is_dir() && std::fs::symlink_metadata(&path).is_ok_and(|m| m.dev() == dev) => {
                    self.directory(&path, dev, false)
                }
                Ok(t) if t.is_file() => {
                    self.report.files += 1;
                    match self.item(&path, false) {
                        Ok(changed) => self.report.files_rewrapped += changed as u64,
                        Err(e) => self.report.errors.push(e),
                    }
                    (self.progress)(&self.report);
                }
                _ => {}
            }
        }
    }
}
