//! The ciphertext blob returned by Encrypt and GenerateDataKey.
//!
//! ```text
//! offset  size  field
//! 0       1     format tag 'K'
//! 1       1     blob version (1)
//! 2       16    master key id (raw UUID bytes)
//! 18      4     master key version, u32 big-endian
//! 22      12    AEAD nonce                      \
//! 34      n     ciphertext                       > sealed under that key version
//! 34+n    16    AEAD tag                        /
//! ```
//! AAD = "kmsfs-blob\0" || bytes 0..22 || encoded encryption context. The header names the
//! key and version, so decryption never tries keys in turn, and is itself authenticated, so
//! a blob cannot be redirected to another key or version.

use super::keyid::{self, KEY_ID_BYTES};
use crate::crypto::SEAL_OVERHEAD;
use crate::error::{Error, Result};

const TAG: u8 = b'K';
const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 2 + KEY_ID_BYTES + 4;

/// Length of a blob that wraps a 32-byte data key.
pub const DATA_KEY_BLOB_LEN: usize = HEADER_LEN + SEAL_OVERHEAD + crate::crypto::KEY_LEN;

/// The public part of a blob: which key version sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_id: String,
    pub key_version: u32,
}

impl BlobHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = TAG;
        out[1] = VERSION;
        out[2..18].copy_from_slice(&keyid::to_bytes(&self.key_id).expect("key ids are UUIDs"));
        out[18..22].copy_from_slice(&self.key_version.to_be_bytes());
        out
    }

    /// Splits a blob into its header and sealed part.
    pub fn parse(blob: &[u8]) -> Result<(BlobHeader, &[u8])> {
        let invalid = |why: &str| Error::InvalidCiphertext(format!("not a kmsfs ciphertext blob: {why}"));
        if blob.len() < HEADER_LEN + SEAL_OVERHEAD {
            return Err(invalid("too short"));
        }
        if blob[0] != TAG {
            return Err(invalid("wrong format tag"));
        }
        if blob[1] != VERSION {
            return Err(invalid(&format!("unsupported blob version {}", blob[1])));
        }
        let id: [u8; KEY_ID_BYTES] = blob[2..18].try_into().expect("slice of 16");
        let version = u32::from_be_bytes(blob[18..22].try_into().expect("slice of 4"));
        Ok((BlobHeader { key_id: keyid::from_bytes(&id), key_version: version }, &blob[HEADER_LEN..]))
    }

    pub fn aad(&self, encoded_context: &[u8]) -> Vec<u8> {
        [b"kmsfs-blob\0".as_slice(), &self.encode(), encoded_context].concat()
    }
}

/// Seals `plaintext` under one master-key version into a complete blob.
pub fn seal(
    cipher: &crate::crypto::Cipher,
    header: &BlobHeader,
    context: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut blob = Vec::with_capacity(HEADER_LEN + SEAL_OVERHEAD + plaintext.len());
    blob.extend_from_slice(&header.encode());
    blob.extend_from_slice(&cipher.seal(&header.aad(context), plaintext));
    blob
}

/// Opens the sealed part of a blob whose header was parsed already.
pub fn open(
    cipher: &crate::crypto::Cipher,
    header: &BlobHeader,
    context: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    cipher.open(&header.aad(context), sealed).map_err(|_| {
        Error::InvalidCiphertext(
            "the ciphertext does not authenticate: it was altered, or the encryption context \
             differs from the one it was encrypted with"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = BlobHeader { key_id: keyid::new_key_id(), key_version: 7 };
        let mut blob = h.encode().to_vec();
        blob.extend_from_slice(&[0u8; SEAL_OVERHEAD]);
        let (parsed, rest) = BlobHeader::parse(&blob).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(rest.len(), SEAL_OVERHEAD);
        assert!(BlobHeader::parse(&blob[..10]).is_err());
        blob[1] = 9;
        assert!(BlobHeader::parse(&blob).is_err());
    }
}
