//! Encryption of the non-content parts of a file: symlink targets and extended attributes,
//! under the volume's names key (not a directory's: a symlink renamed into another directory
//! must stay readable without being rewritten).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

use crate::crypto::{Cipher, SecretKey};

/// Prefix of the backing xattr names that carry encrypted user xattrs.
pub const XATTR_BACKING_PREFIX: &str = "user.kmsfs.";

/// Longest symlink target: PATH_MAX - 1 bytes, what symlink(2) takes.
pub const TARGET_MAX: usize = libc::PATH_MAX as usize - 1;
/// The backing target of a symlink whose stored target is too long for a backing symlink:
/// this prefix and the name of the sidecar that holds it. Stored targets are base64url, which
/// has no '.', so no stored target starts like this.
pub const TARGET_SIDECAR_PREFIX: &str = "kmsfs.target.";

/// How a symlink target is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredTarget {
    /// The stored target is the backing symlink's own target.
    Inline(OsString),
    /// The stored target (longer than a backing symlink holds) goes into the sidecar `name`
    /// (`sidecar_name(stored)`); the backing symlink points at `TARGET_SIDECAR_PREFIX` + name.
    Sidecar { name: String, stored: String },
}

impl StoredTarget {
    /// What the backing symlink points at.
    pub fn link_text(&self) -> OsString {
        match self {
            StoredTarget::Inline(stored) => stored.clone(),
            StoredTarget::Sidecar { name, .. } => OsString::from(format!("{TARGET_SIDECAR_PREFIX}{name}")),
        }
    }
}

/// The name of the sidecar holding `stored`: base64url of its SHA-256, so a reader can tell
/// that a sidecar holds what the symlink that names it was given.
pub fn sidecar_name(stored: &[u8]) -> String {
    B64.encode(crate::crypto::sha256(&[stored]))
}

/// The sidecar a backing symlink's target names, if it names one (a well-formed name only:
/// 43 base64url characters).
pub fn target_sidecar(link_text: &OsStr) -> Option<&str> {
    let name = link_text.to_str()?.strip_prefix(TARGET_SIDECAR_PREFIX)?;
    let well_formed =
        name.len() == 43 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(name)
}
/// The symlink-target and extended-attribute cipher under a volume's names key.
pub struct VolumeCipher {
    cipher: Cipher,
}

impl VolumeCipher {
    pub fn new(key: &SecretKey) -> Self {
        VolumeCipher { cipher: key.cipher() }
    }

    /// Encrypts a symlink target (random nonce) to the text stored as the backing target.
    pub fn encrypt_target(&self, target: &OsStr) -> OsString {
        let sealed = self.cipher.seal(b"kmsfs-symlink", target.as_bytes());
        OsString::from(B64.encode(sealed))
    }

    /// Encrypts a symlink target and says where it goes: into the backing symlink if it
    /// fits there (PATH_MAX - 1 bytes), else into a sidecar.
    pub fn store_target(&self, target: &OsStr) -> StoredTarget {
        let stored = self.encrypt_target(target);
        if stored.len() <= TARGET_MAX {
            return StoredTarget::Inline(stored);
        }
        let stored = stored.into_string().expect("base64 is ASCII");
        StoredTarget::Sidecar { name: sidecar_name(stored.as_bytes()), stored }
    }

    pub fn decrypt_target(&self, stored: &OsStr) -> Option<OsString> {
        let sealed = B64.decode(stored.as_bytes()).ok()?;
        let plain = self.cipher.open(b"kmsfs-symlink", &sealed).ok()?;
        Some(OsString::from_vec(plain.to_vec()))
    }

    /// The backing name of user xattr `user.NAME`: deterministic (so it can be looked up),
    /// using AES-GCM-SIV with a fixed nonce, whose synthetic IV leaks only equality.
    pub fn encrypt_xattr_name(&self, name: &str) -> String {
        let mut sealed = self.cipher.seal_deterministic(b"kmsfs-xattr-name", name.as_bytes());
        let text = B64.encode(&sealed);
        sealed.fill(0);
        format!("{XATTR_BACKING_PREFIX}{text}")
    }

    pub fn decrypt_xattr_name(&self, backing: &str) -> Option<String> {
        let encoded = backing.strip_prefix(XATTR_BACKING_PREFIX)?;
        let sealed = B64.decode(encoded).ok()?;
        let plain = self.cipher.open_deterministic(b"kmsfs-xattr-name", &sealed).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }

    /// Encrypts an xattr value, bound to its (encrypted) name.
    pub fn encrypt_xattr_value(&self, backing_name: &str, value: &[u8]) -> Vec<u8> {
        self.cipher.seal(backing_name.as_bytes(), value)
    }

    pub fn decrypt_xattr_value(&self, backing_name: &str, stored: &[u8]) -> Option<Vec<u8>> {
        self.cipher.open(backing_name.as_bytes(), stored).ok().map(|v| v.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_xattrs_round_trip() {
        let n = VolumeCipher::new(&SecretKey::random());
        let stored = n.encrypt_target(OsStr::new("../some/where"));
        assert!(!stored.to_string_lossy().contains("some"));
        assert_eq!(n.decrypt_target(&stored).unwrap(), "../some/where");
        let a = n.encrypt_xattr_name("user.comment");
        assert_eq!(a, n.encrypt_xattr_name("user.comment"), "deterministic");
        assert!(!a.contains("comment"));
        assert_eq!(n.decrypt_xattr_name(&a).unwrap(), "user.comment");
        let v = n.encrypt_xattr_value(&a, b"hello");
        assert_eq!(n.decrypt_xattr_value(&a, &v).unwrap(), b"hello");
        assert!(n.decrypt_xattr_value(&n.encrypt_xattr_name("user.other"), &v).is_none());
    }

    #[test]
    fn targets_too_long_for_a_backing_symlink_go_to_a_named_sidecar() {
        let n = VolumeCipher::new(&SecretKey::random());
        // (3043 + 28) bytes sealed are 4095 in base64url: the longest that stays inline.
        assert!(matches!(n.store_target(OsStr::new(&"a".repeat(3043))), StoredTarget::Inline(_)));
        let StoredTarget::Sidecar { name, stored } = n.store_target(OsStr::new(&"a".repeat(3044))) else {
            panic!("3044 bytes need a sidecar")
        };
        assert_eq!(stored.len(), 4096);
        assert_eq!(name, sidecar_name(stored.as_bytes()));
        let link = StoredTarget::Sidecar { name: name.clone(), stored: stored.clone() }.link_text();
        assert_eq!(target_sidecar(&link), Some(name.as_str()));
        assert_eq!(n.decrypt_target(OsStr::new(&stored)).unwrap(), "a".repeat(3044).as_str());
        // Inline targets and malformed names name no sidecar.
        assert_eq!(target_sidecar(&n.encrypt_target(OsStr::new("x"))), None);
        assert_eq!(target_sidecar(OsStr::new("kmsfs.target.../../etc/passwd")), None);
    }
}
