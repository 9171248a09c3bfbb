//! Encrypted entry names, per directory.
//!
//! A name is sealed deterministically (AES-GCM-SIV, fixed nonce; the synthetic IV makes it a
//! deterministic AEAD that leaks only equality) under the directory's names key, with the
//! directory's IV as additional data, and stored base64url. An encoded name longer than the
//! backing filesystem's 255 bytes is stored as `kmsfs.long.<sha256 of it>`, with the full
//! encoded name in the sidecar `kmsfs.long.<hash>.name`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

use crate::crypto::{self, Cipher, SecretKey};

/// Bytes of a directory's IV, which separates equal names in different directories.
pub const IV_LEN: usize = 16;

/// Longest name the backing filesystem takes.
pub const NAME_MAX: usize = 255;
pub const LONG_PREFIX: &str = "kmsfs.long.";
pub const SIDECAR_SUFFIX: &str = ".name";

/// How a plaintext name is stored in its backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredName {
    /// The encoded encrypted name is the backing name.
    Short(OsString),
    /// The backing name is a hash; `full` goes into the sidecar.
    Long { entry: OsString, full: String },
}

impl StoredName {
    pub fn entry(&self) -> &OsStr {
        match self {
            StoredName::Short(n) => n,
            StoredName::Long { entry, .. } => entry,
        }
    }

    /// The sidecar's name, for long names.
    pub fn sidecar(&self) -> Option<OsString> {
        match self {
            StoredName::Short(_) => None,
            StoredName::Long { entry, .. } => Some(sidecar_of(entry)),
        }
    }
}

pub fn sidecar_of(entry: &OsStr) -> OsString {
    let mut s = entry.to_os_string();
    s.push(SIDECAR_SUFFIX);
    s
}

/// What a backing directory entry is.
pub enum BackingEntry<'a> {
    /// A user's entry with a short name: decrypt it.
    Short(&'a str),
    /// A user's entry with a long name: read its sidecar.
    Long(&'a OsStr),
    /// kmsfs bookkeeping (metadata, sidecars, temp files, the volume config).
    Internal,
}

pub fn classify(name: &OsStr) -> BackingEntry<'_> {
    let bytes = name.as_bytes();
    if bytes.starts_with(LONG_PREFIX.as_bytes()) && !bytes.ends_with(SIDECAR_SUFFIX.as_bytes()) {
        return BackingEntry::Long(name);
    }
    if bytes.starts_with(b"kmsfs.") || bytes.starts_with(b".") {
        return BackingEntry::Internal;
    }
    match name.to_str() {
        Some(s) => BackingEntry::Short(s),
        None => BackingEntry::Internal,
    }
}

/// What a backing directory entry means to its directory.
pub enum EntryName {
    /// kmsfs bookkeeping: never shown.
    Internal,
    Plain(OsString),
    /// A user entry whose name does not authenticate (tampered, or a damaged sidecar).
    Undecryptable,
}

/// The entry-name cipher of one directory: its names key and IV.
pub struct NameCipher {
    cipher: Cipher,
    aad: Vec<u8>,
}

impl NameCipher {
    pub fn new(key: &SecretKey, iv: &[u8; IV_LEN]) -> Self {
        NameCipher { cipher: key.cipher(), aad: [b"kmsfs-name\0".as_slice(), iv].concat() }
    }

    pub fn encrypt(&self, plain: &OsStr) -> StoredName {
        let sealed = self.cipher.seal_deterministic(&self.aad, plain.as_bytes());
        let encoded = B64.encode(sealed);
        if encoded.len() <= NAME_MAX {
            return StoredName::Short(OsString::from(encoded));
        }
        let hash = B64.encode(crypto::sha256(&[encoded.as_bytes()]));
        StoredName::Long { entry: OsString::from(format!("{LONG_PREFIX}{hash}")), full: encoded }
    }

    /// The plaintext name of backing entry `backing` in backing directory `dir` (a long
    /// name is read from its sidecar).
    pub fn entry_name(&self, dir: &std::path::Path, backing: &OsStr) -> EntryName {
        let plain = match classify(backing) {
            BackingEntry::Internal => return EntryName::Internal,
            BackingEntry::Short(encoded) => self.decrypt(encoded),
            BackingEntry::Long(entry) => {
                std::fs::read_to_string(dir.join(sidecar_of(entry))).ok().and_then(|full| self.decrypt(&full))
            }
        };
        plain.map_or(EntryName::Undecryptable, EntryName::Plain)
    }

    /// The plaintext of an encoded name, or `None` if it does not authenticate.
    pub fn decrypt(&self, encoded: &str) -> Option<OsString> {
        let sealed = B64.decode(encoded.trim()).ok()?;
        let plain = self.cipher.open_deterministic(&self.aad, &sealed).ok()?;
        Some(OsString::from_vec(plain.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_per_directory_and_long_names_hash() {
        let key = SecretKey::random();
        let a = NameCipher::new(&key, &[1; IV_LEN]);
        let b = NameCipher::new(&key, &[2; IV_LEN]);
        let short = a.encrypt(OsStr::new("report.pdf"));
        assert_eq!(short, a.encrypt(OsStr::new("report.pdf")));
        assert_ne!(short, b.encrypt(OsStr::new("report.pdf")), "the IV separates directories");
        let StoredName::Short(enc) = &short else { panic!("short name expected") };
        assert!(!enc.to_string_lossy().contains("report"));
        assert_eq!(a.decrypt(enc.to_str().unwrap()).unwrap(), "report.pdf");
        assert!(b.decrypt(enc.to_str().unwrap()).is_none());

        let long_name = "é".repeat(127); // 254 bytes
        let long = a.encrypt(OsStr::new(&long_name));
        let StoredName::Long { entry, full } = &long else { panic!("long name expected") };
        assert!(entry.len() <= NAME_MAX);
        assert_eq!(a.decrypt(full).unwrap(), long_name.as_str());
        assert!(matches!(classify(entry), BackingEntry::Long(_)));
        assert!(matches!(classify(&long.sidecar().unwrap()), BackingEntry::Internal));
        assert!(matches!(classify(OsStr::new("kmsfs.dir")), BackingEntry::Internal));
        assert!(matches!(classify(OsStr::new(".kmsfs.dir.tmp-1-2")), BackingEntry::Internal));
        // The longest short name: 175 bytes of plaintext encode to 255 characters.
        assert!(matches!(a.encrypt(OsStr::new(&"x".repeat(175))), StoredName::Short(_)));
        assert!(matches!(a.encrypt(OsStr::new(&"x".repeat(176))), StoredName::Long { .. }));
    }
}
