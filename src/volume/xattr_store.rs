//! Extended-attribute stores: the user xattrs of a file or directory that outgrew what the
//! backing file system keeps on one inode (ext4 keeps all of an inode's xattrs in one block,
//! and an encrypted name and value are longer than the plain ones) live in
//! `kmsfs.xattrs/<id>` at the top of the cipher directory.
//!
//! The inode carries the small backing xattr [`POINTER`] holding `<id>` from its first user
//! xattr on (set while there is still room), so the store belongs to the inode: hard links
//! share it and a rename leaves it alone. While `kmsfs.xattrs/<id>` does not exist the
//! inode's backing xattrs are its attributes; once it exists the store alone is. Moving
//! into a store writes the store whole with every attribute (atomically: temp + fsync +
//! rename), which is the one commit point, and only then removes the backing copies, so a
//! crash leaves every attribute old or new. A change to a store is again one atomic
//! replace. A store no inode names (its last link removed while a crash or an open handle
//! kept it) is an orphan `fsck --repair` removes.
//!
//! The entries are the backing name and sealed value exactly as they would be as backing
//! xattrs (under the volume's names key, each value bound to its encrypted name), so moving
//! them needs no crypto, a volume copy copies the file as it is, and re-wrapping the names
//! key changes nothing here.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The directory of xattr stores, at the top of the cipher directory.
pub const STORES_DIR: &str = "kmsfs.xattrs";
/// The backing xattr naming an inode's store. Not an encrypted name (those are base64url of
/// at least 17 bytes), and user xattrs under `user.kmsfs.` are refused, so nobody else sets it.
pub const POINTER: &str = "user.kmsfs.store";
/// Largest store read or written: 1,000 attributes of 64 KiB each would be 64 MiB, far more
/// than a reader should buffer; the filled bytes (names and sealed values) are capped here.
pub const STORE_MAX: usize = 8 << 20;
/// The names of one inode's attributes, listed, fit in what listxattr(2) can return.
pub const LIST_MAX: usize = 65536;

const MAGIC: &[u8; 8] = b"KMSFSXA1";

/// An inode's attributes: (backing name, sealed value), sorted by name.
pub type Entries = std::collections::BTreeMap<String, Vec<u8>>;

/// A fresh store id (32 hex digits).
pub fn new_id() -> String {
    crate::encoding::hex(&crate::crypto::random_bytes::<16>())
}

/// Whether `id` is one [`new_id`] could have made (so a hostile pointer cannot name a path).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub fn store_path(root: &Path, id: &str) -> PathBuf {
    root.join(STORES_DIR).join(id)
}

/// The serialized form: magic, count, then (u16 name length, name, u32 value length, value).
pub fn encode(entries: &Entries) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.iter().map(|(n, v)| n.len() + v.len() + 6).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (name, value) in entries {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

pub fn decode(bytes: &[u8]) -> Option<Entries> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (count, mut rest) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?);
    let mut entries = Entries::new();
    for _ in 0..count {
        let (len, r) = rest.split_at_checked(2)?;
        let (name, r) = r.split_at_checked(u16::from_le_bytes(len.try_into().ok()?) as usize)?;
        let (len, r) = r.split_at_checked(4)?;
        let (value, r) = r.split_at_checked(u32::from_le_bytes(len.try_into().ok()?) as usize)?;
        entries.insert(String::from_utf8(name.to_vec()).ok()?, value.to_vec());
        rest = r;
    }
    rest.is_empty().then_some(entries)
}

/// The entries of store `id`: `Ok(None)` if there is no such store (the inode's backing
/// xattrs are its attributes). Opened without following a symlink or blocking on a FIFO,
/// a regular file only, read up to the cap: a planted store answers EIO, never a hang.
pub fn read(root: &Path, id: &str) -> std::io::Result<Option<Entries>> {
    let eio = || std::io::Error::from_raw_os_error(libc::EIO);
    if !valid_id(id) {
        return Err(eio());
    }
    let file = match crate::sys::open_noatime_with(&store_path(root, id), false, libc::O_NONBLOCK) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Err(eio());
    }
    let mut bytes = Vec::new();
    file.take(STORE_MAX as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > STORE_MAX {
        return Err(eio());
    }
    decode(&bytes).map(Some).ok_or_else(eio)
}

/// Writes store `id` (atomically and durably: this is the commit point of every change).
pub fn write(root: &Path, id: &str, entries: &Entries) -> Result<()> {
    let dir = root.join(STORES_DIR);
    if !dir.is_dir() {
        match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir) {
            Ok(()) => std::fs::File::open(root)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("cannot sync {}", root.display()), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("cannot create {}", dir.display()), e)),
        }
    }
    super::write_atomically(&store_path(root, id), &encode(entries), 0o600)
}

/// Removes store `id` (its inode is gone); a missing one is no error.
pub fn remove(root: &Path, id: &str) {
    if valid_id(id) {
        let _ = std::fs::remove_file(store_path(root, id));
    }
}

/// The store id the backing inode at `path` names, if any (no symlink is followed:
/// user xattrs live only on regular files and directories).
pub fn pointer_of(path: &Path) -> Option<String> {
    let c = crate::sys::c_path(path).ok()?;
    let name = std::ffi::CString::new(POINTER).ok()?;
    let raw = crate::sys::get_xattr(crate::sys::Node::Path(&c), &name).ok()?;
    String::from_utf8(raw).ok().filter(|id| valid_id(id))
}

/// The names of all stores (and leftovers) in the volume at `root`.
pub fn list(root: &Path) -> Vec<std::ffi::OsString> {
    match std::fs::read_dir(root.join(STORES_DIR)) {
        Ok(entries) => entries.flatten().map(|e| e.file_name()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_truncated_or_padded_store_does_not_decode() {
        let mut entries = Entries::new();
        entries.insert("user.kmsfs.a".into(), vec![1, 2, 3]);
        entries.insert("user.kmsfs.b".into(), vec![0; 70000]);
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(&[bytes.as_slice(), b"x"].concat()).is_none());
        let root = tempfile::tempdir().unwrap();
        let id = new_id();
        assert!(read(root.path(), &id).unwrap().is_none());
        write(root.path(), &id, &entries).unwrap();
        assert_eq!(read(root.path(), &id).unwrap().unwrap(), entries);
        assert!(read(root.path(), "../../etc/passwd").is_err());
        remove(root.path(), &id);
        assert!(read(root.path(), &id).unwrap().is_none());
    }
}
