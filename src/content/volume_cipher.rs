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
}
