//! The mount table: which file systems, and which kmsfs volumes, are mounted where, as
//! /proc/self/mountinfo shows them to this process. A leaf: the CLI, the mount, the volume
//! lock and the console all ask it, so it sits below them all.

use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo.
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The mount source (for kmsfs: `kmsfs:<cipher dir>`).
    pub source: String,
    /// The `major:minor` of its device (for a FUSE mount, its entry in /sys/class/bdi).
    pub device: String,
    /// Whether its superblock is read-only (`ro` in the super options).
    pub read_only: bool,
}

/// The mounts this process sees.
pub fn mount_table() -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let fields: Vec<&str> = fields.split(' ').collect();
            let mut rest = rest.split(' ');
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: rest.next()?.to_string(),
                source: unescape(rest.next()?),
                read_only: rest.next().is_some_and(|o| o.split(',').any(|o| o == "ro")),
                device: fields.get(2)?.to_string(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a cipher directory is mounted by kmsfs now (its fsname is `kmsfs:<dir>`).
pub fn mounted_at(cipher_dir: &Path) -> Option<PathBuf> {
    kmsfs_mounts().into_iter().find(|m| m.cipher_dir == cipher_dir).map(|m| m.mount_point)
}

/// A mounted kmsfs volume, as the mount table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsfsMount {
    pub mount_point: PathBuf,
    pub cipher_dir: PathBuf,
}

/// Every kmsfs volume mounted now (that this process can see), in mount-table order.
pub fn kmsfs_mounts() -> Vec<KmsfsMount> {
    mount_table()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse"))
        .filter_map(|m| {
            let cipher_dir = PathBuf::from(m.source.strip_prefix("kmsfs:")?);
            Some(KmsfsMount { mount_point: m.mount_point, cipher_dir })
        })
        .collect()
}

/// Whether `cipher_dir` is mounted by kmsfs at `mountpoint` (both canonical).
pub fn is_mounted_at(cipher_dir: &Path, mountpoint: &Path) -> bool {
    kmsfs_mounts().iter().any(|m| m.cipher_dir == cipher_dir && m.mount_point == mountpoint)
}

/// Whether `path` is the root of a mount.
pub fn is_mount_point(path: &Path) -> bool {
    mount_table().iter().any(|m| m.mount_point == path)
}

/// Whether `path` lies on a kmsfs mount (the innermost mount containing it is kmsfs).
pub fn is_on_kmsfs(path: &Path) -> bool {
    mount_table()
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .is_some_and(|m| m.fstype == "fuse.kmsfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/tmp/with\\040space\\134x"), "/tmp/with space\\x");
        assert_eq!(unescape("plain"), "plain");
        assert!(mount_table().iter().any(|m| m.mount_point == Path::new("/")));
    }
}
