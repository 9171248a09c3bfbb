//! Sidecars of long symlink targets: a stored target (base64url of the sealed target) longer
//! than a backing symlink holds lives in `kmsfs.targets/<name>` at the top of the cipher
//! directory, `name` being base64url of its SHA-256, and the backing symlink points at
//! `kmsfs.target.<name>` (see `content::volume_cipher::StoredTarget`).
//!
//! One directory for the whole volume, not a file beside each symlink: a symlink renamed into
//! another directory, or given a second name with link(2), keeps pointing at its sidecar, so
//! a rename stays one rename. Crash safety as for long names: the sidecar is written
//! atomically before the symlink appears and removed after its last name goes, so a crash
//! leaves at most a sidecar no symlink names, which `fsck --repair` removes. A sidecar is
//! never changed, and a reader checks that its content hashes to its name.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::content::volume_cipher::{sidecar_name, target_sidecar, VolumeCipher};
use crate::error::{Error, Result};

/// The directory of target sidecars, at the top of the cipher directory.
pub const TARGETS_DIR: &str = "kmsfs.targets";
/// Longest sidecar read: a stored target of a 4095-byte target is 5,498 bytes.
const SIDECAR_MAX: u64 = 8192;

/// Where sidecar `name` of the volume at `root` lives.
pub fn sidecar_path(root: &Path, name: &str) -> PathBuf {
    root.join(TARGETS_DIR).join(name)
}

/// Writes the sidecar `name` holding `stored` (atomically, and durably, before the symlink
/// that names it is made).
pub fn write(root: &Path, name: &str, stored: &[u8]) -> Result<()> {
    let dir = root.join(TARGETS_DIR);
    if !dir.is_dir() {
        match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o755).create(&dir) {
            Ok(()) => std::fs::File::open(root)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("cannot sync {}", root.display()), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("cannot create {}", dir.display()), e)),
        }
    }
    super::write_atomically(&sidecar_path(root, name), stored, 0o644)
}

/// The stored target in sidecar `name`, if it is there and holds what its name says.
pub fn read(root: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let file = crate::sys::open_noatime(&sidecar_path(root, name), false)?;
    let mut stored = Vec::new();
    file.take(SIDECAR_MAX + 1).read_to_end(&mut stored)?;
    if stored.len() as u64 > SIDECAR_MAX || sidecar_name(&stored) != name {
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(stored)
}

/// The plaintext target of a backing symlink whose own target is `link_text` (in the volume
/// at `root`): decrypted from the link itself or from the sidecar it names. `None` if it
/// does not authenticate or its sidecar is missing or damaged.
pub fn resolve(cipher: &VolumeCipher, root: &Path, link_text: &OsStr) -> Option<OsString> {
    match target_sidecar(link_text) {
        None => cipher.decrypt_target(link_text),
        Some(name) => {
            let stored = read(root, name).ok()?;
            cipher.decrypt_target(OsStr::new(std::str::from_utf8(&stored).ok()?))
        }
    }
}

/// Removes sidecar `name` (its last symlink is gone); a missing one is no error.
pub fn remove(root: &Path, name: &str) {
    let _ = std::fs::remove_file(sidecar_path(root, name));
}

/// The sidecar the backing symlink at `path` names, if it is a symlink naming one.
pub fn sidecar_of_link(path: &Path) -> Option<String> {
    let text = std::fs::read_link(path).ok()?;
    target_sidecar(text.as_os_str()).map(str::to_string)
}

/// The names of all sidecars (and leftovers) in the volume at `root`.
pub fn list(root: &Path) -> Vec<OsString> {
    match std::fs::read_dir(root.join(TARGETS_DIR)) {
        Ok(entries) => entries.flatten().map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::volume_cipher::StoredTarget;
    use crate::crypto::SecretKey;

    #[test]
    fn a_long_target_round_trips_through_its_sidecar_and_a_changed_one_does_not() {
        let root = tempfile::tempdir().unwrap();
        let cipher = VolumeCipher::new(&SecretKey::random());
        let target = "t/".repeat(2047);
        let stored = cipher.store_target(OsStr::new(&target));
        let StoredTarget::Sidecar { name, stored: bytes } = &stored else { panic!("a sidecar") };
        write(root.path(), name, bytes.as_bytes()).unwrap();
        let link = stored.link_text();
        assert_eq!(resolve(&cipher, root.path(), &link).unwrap(), target.as_str());
        // Another sidecar's content under this name: refused.
        let other = cipher.encrypt_target(OsStr::new(&"u/".repeat(2047)));
        std::fs::write(sidecar_path(root.path(), name), other.as_encoded_bytes()).unwrap();
        assert!(resolve(&cipher, root.path(), &link).is_none());
        remove(root.path(), name);
        assert!(resolve(&cipher, root.path(), &link).is_none());
        assert!(list(root.path()).is_empty());
    }
}
