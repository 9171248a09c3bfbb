//! The data key of one file: unwrapped from its header's slots, or made for a new file.
//! The one path to a file's key for the mount, fsck, rewrap and copy.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::VolumeConfig;
use crate::content::{FileHeader, FileKey, FILE_ID_LEN, HEADER_LEN};
use crate::crypto::{self, SecretKey};
use crate::error::{Error, Result};
use crate::kms::blob::BlobHeader;
use crate::kms::keyring::{Access, KeyRing};

/// A file's header with its data key unwrapped from the newest slot that allows it.
pub struct UnwrappedHeader {
    pub header: FileHeader,
    pub data_key: SecretKey,
    pub wrapped_by: BlobHeader,
    /// Index of the slot that unwrapped.
    pub slot: usize,
    /// Whether that slot is the newest (false: the newer slot is damaged or unusable).
    pub newest: bool,
}

impl UnwrappedHeader {
    /// The key to read and write the file's blocks with.
    pub fn into_file_key(self) -> FileKey {
        FileKey {
            file_id: self.header.file_id,
            cipher: self.data_key.cipher(),
            key_id: self.wrapped_by.key_id,
        }
    }
}

/// Reads a backing file's header and unwraps its data key from the newest slot. The older
/// slot is tried only when the newest is damaged (torn by a crash mid-write, or names no
/// known key): a refusal by key state or policy is final, so the older slot of a file that
/// was moved to another key can never serve to get around the new key.
pub fn unwrap_header(
    ring: &KeyRing,
    access: Access<'_>,
    config: &VolumeConfig,
    file: &File,
) -> Result<UnwrappedHeader> {
    let mut raw = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut raw, 0).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::InvalidCiphertext("the file header is truncated".into()),
        _ => Error::io("cannot read the header", e),
    })?;
    let header = FileHeader::parse(&raw).map_err(|e| Error::InvalidCiphertext(e.to_string()))?;
    let ctx = config.file_context(&header.file_id);
    let mut first_error = None;
    for (rank, slot) in header.slot_order().into_iter().enumerate() {
        match ring.decrypt_data_key(access, &header.slots[slot].blob, &ctx) {
            Ok((data_key, wrapped_by)) => {
                return Ok(UnwrappedHeader { header, data_key, wrapped_by, slot, newest: rank == 0 })
            }
            Err(e @ (Error::KeyState(_) | Error::AccessDenied(_))) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error
        .unwrap_or_else(|| Error::InvalidCiphertext("the header holds no wrapped data key".into())))
}

/// A data key for a new file under `key_id` (from the key ring, bound to this volume and a
/// new file id), and the header that holds it wrapped. The caller writes them with
/// [`crate::content::CryptFile::init_new`].
pub fn new_file_key(
    ring: &KeyRing,
    access: Access<'_>,
    config: &VolumeConfig,
    key_id: &str,
) -> Result<(FileKey, FileHeader)> {
    let file_id = crypto::random_bytes::<FILE_ID_LEN>();
    let ctx = config.file_context(&file_id);
    let (data_key, wrapped) = ring.generate_data_key(access, key_id, &ctx)?;
    let (blob_header, _) = BlobHeader::parse(&wrapped)?;
    let key = FileKey { file_id, cipher: data_key.cipher(), key_id: blob_header.key_id };
    Ok((key, FileHeader::new(file_id, wrapped)))
}
