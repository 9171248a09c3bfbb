//! The ciphertext blob returned by Encrypt and GenerateDataKey.
//!
//! ```text
//! offset  size  field
//! 0       1     format tag 'K'
//! 1       1     blob version: 1 (the key id is a UUID) or 2 (a multi-Region key id)
//! 2       16    master key id (raw bytes of the UUID, or of the 32 hex digits after `mrk-`)
//! 18      4     master key version, u32 big-endian
//! 22      12    AEAD nonce                      \
//! 34      n     ciphertext                       > sealed under that key version
//! 34+n    16    AEAD tag                        /
//! ```
//! AAD = "kmsfs-blob\0" || bytes 0..22 || encoded encryption context. The header names the
//! key and version, so decryption never tries keys in turn, and is itself authenticated, so
//! a blob cannot be redirected to another key or version. Nothing in it names the keystore:
//! a multi-Region key's replicas hold the same id, versions and material, so a blob made in
//! one region opens in every other (docs/MULTI_REGION.md).

use super::keyid::{self, KEY_ID_BYTES};
use crate::crypto::SEAL_OVERHEAD;
use crate::error::{Error, Result};

const TAG: u8 = b'K';
const VERSION: u8 = 1;
/// The blob version whose key id is a multi-Region key's (`mrk-` + the 16 bytes in hex).
const VERSION_MRK: u8 = 2;
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
        let (version, id) = match keyid::mrk_to_bytes(&self.key_id) {
            Some(id) => (VERSION_MRK, id),
            None => (VERSION, keyid::to_bytes(&self.key_id).expect("key ids are UUIDs or mrk ids")),
        };
        out[1] = version;
        out[2..18].copy_from_slice(&id);
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
        let id: [u8; KEY_ID_BYTES] = blob[2..18].try_into().expect("slice of 16");
        let key_id = match blob[1] {
            VERSION => keyid::from_bytes(&id),
            VERSION_MRK => keyid::mrk_from_bytes(&id),
            other => return Err(invalid(&format!("unsupported blob version {other}"))),
        };
        let version = u32::from_be_bytes(blob[18..22].try_into().expect("slice of 4"));
        Ok((BlobHeader { key_id, key_version: version }, &blob[HEADER_LEN..]))
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

    #[test]
    fn a_multi_region_key_id_round_trips_in_the_same_header_length() {
        let h = BlobHeader { key_id: keyid::new_mrk_id(), key_version: 3 };
        let encoded = h.encode();
        assert_eq!(encoded[1], VERSION_MRK);
        let mut blob = encoded.to_vec();
        blob.extend_from_slice(&[0u8; SEAL_OVERHEAD]);
        assert_eq!(BlobHeader::parse(&blob).unwrap().0, h);
        // The same 16 bytes read as a UUID blob name another key: the AAD covers the byte.
        blob[1] = VERSION;
        assert_ne!(BlobHeader::parse(&blob).unwrap().0.key_id, h.key_id);
    }
}
