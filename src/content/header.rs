//! The file header: a fixed preamble and two slots, each able to hold the file's wrapped
//! data key.
//!
//! ```text
//! preamble (32 B): magic "KMSFS\0" | format version u16 | file id (16) | block size u32 | 0 (4)
//! slot (128 B):    sequence u64 | blob length u16 | KMS ciphertext blob | zero padding
//! ```
//! The blob (see `kms::blob`) names the master key and version and is bound by its
//! encryption context to (volume id, file id). A re-wrap writes the slot with the lower
//! sequence number and a higher sequence, then fsyncs: a crash leaves either the old or the
//! new slot intact, and readers try slots newest first, taking the first that authenticates.

use std::fmt;

pub const MAGIC: &[u8; 6] = b"KMSFS\0";
pub const FORMAT_VERSION: u16 = 1;
pub const FILE_ID_LEN: usize = 16;
pub const PREAMBLE_LEN: usize = 32;
pub const SLOT_LEN: usize = 128;
const SLOT_BLOB_MAX: usize = SLOT_LEN - 10;
/// Length of the whole header; data blocks start here.
pub const HEADER_LEN: u64 = (PREAMBLE_LEN + 2 * SLOT_LEN) as u64;

/// Why a header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    TooShort,
    BadMagic,
    UnsupportedVersion(u16),
    BadBlockSize(u32),
    NoKey,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooShort => write!(f, "the file header is truncated"),
            HeaderError::BadMagic => write!(f, "not a kmsfs file (bad magic)"),
            HeaderError::UnsupportedVersion(v) => write!(f, "unsupported file format version {v}"),
            HeaderError::BadBlockSize(b) => write!(f, "unsupported block size {b}"),
            HeaderError::NoKey => write!(f, "the header holds no wrapped data key"),
        }
    }
}

/// One wrapped copy of the data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSlot {
    /// 0 means empty.
    pub seq: u64,
    pub blob: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    pub file_id: [u8; FILE_ID_LEN],
    pub slots: [HeaderSlot; 2],
}

impl FileHeader {
    /// A header for a new file, its key in slot A.
    pub fn new(file_id: [u8; FILE_ID_LEN], blob: Vec<u8>) -> Self {
        assert!(blob.len() <= SLOT_BLOB_MAX, "wrapped key too large for a header slot");
        FileHeader { file_id, slots: [HeaderSlot { seq: 1, blob }, HeaderSlot { seq: 0, blob: Vec::new() }] }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..6].copy_from_slice(MAGIC);
        out[6..8].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[8..24].copy_from_slice(&self.file_id);
        out[24..28].copy_from_slice(&(super::BLOCK_SIZE as u32).to_be_bytes());
        for i in 0..2 {
            out[Self::slot_offset(i)..][..SLOT_LEN].copy_from_slice(&self.encode_slot(i));
        }
        out
    }

    /// Byte offset of slot `i` in the file.
    pub fn slot_offset(i: usize) -> usize {
        PREAMBLE_LEN + i * SLOT_LEN
    }

    /// The bytes of slot `i` alone, for a re-wrap that rewrites only that slot.
    pub fn encode_slot(&self, i: usize) -> [u8; SLOT_LEN] {
        let slot = &self.slots[i];
        let mut out = [0u8; SLOT_LEN];
        if slot.seq == 0 {
            return out;
        }
        out[..8].copy_from_slice(&slot.seq.to_be_bytes());
        out[8..10].copy_from_slice(&(slot.blob.len() as u16).to_be_bytes());
        out[10..10 + slot.blob.len()].copy_from_slice(&slot.blob);
        out
    }

    /// Both slots' bytes, contiguous from `slot_offset(0)`: one write replaces both.
    pub fn encode_slots(&self) -> [u8; 2 * SLOT_LEN] {
        let mut out = [0u8; 2 * SLOT_LEN];
        out[..SLOT_LEN].copy_from_slice(&self.encode_slot(0));
        out[SLOT_LEN..].copy_from_slice(&self.encode_slot(1));
        out
    }

    /// Empties slot `i` (its wrap is superseded by a wrap under another key).
    pub fn clear_slot(&mut self, i: usize) {
        self.slots[i] = HeaderSlot { seq: 0, blob: Vec::new() };
    }

    pub fn parse(bytes: &[u8]) -> Result<FileHeader, HeaderError> {
        if bytes.len() < HEADER_LEN as usize {
            return Err(HeaderError::TooShort);
        }
        if &bytes[..6] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_be_bytes([bytes[6], bytes[7]]);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let block_size = u32::from_be_bytes(bytes[24..28].try_into().expect("4 bytes"));
        if block_size as u64 != super::BLOCK_SIZE {
            return Err(HeaderError::BadBlockSize(block_size));
        }
        let file_id: [u8; FILE_ID_LEN] = bytes[8..24].try_into().expect("16 bytes");
        let slot = |i: usize| {
            let raw = &bytes[Self::slot_offset(i)..][..SLOT_LEN];
            let seq = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
            let len = u16::from_be_bytes([raw[8], raw[9]]) as usize;
            if seq == 0 || len == 0 || len > SLOT_BLOB_MAX {
                // Empty, or torn beyond use: the other slot must serve.
                return HeaderSlot { seq: 0, blob: Vec::new() };
            }
            HeaderSlot { seq, blob: raw[10..10 + len].to_vec() }
        };
        let header = FileHeader { file_id, slots: [slot(0), slot(1)] };
        if header.candidates().is_empty() {
            return Err(HeaderError::NoKey);
        }
        Ok(header)
    }

    /// The non-empty slots, newest first: the order in which to try unwrapping.
    pub fn candidates(&self) -> Vec<&HeaderSlot> {
        self.slot_order().into_iter().map(|i| &self.slots[i]).collect()
    }

    /// Indices of the non-empty slots, newest first.
    pub fn slot_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..2).filter(|&i| self.slots[i].seq != 0).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.slots[i].seq));
        order
    }

    /// Puts `blob` into the slot other than `keep` (the one known to unwrap) with the next
    /// sequence number; returns that slot's index so the caller writes only it. A crash
    /// while that slot is written leaves `keep` intact, even when the slot being replaced
    /// was the newer one and damaged.
    pub fn rewrap(&mut self, keep: usize, blob: Vec<u8>) -> usize {
        assert!(blob.len() <= SLOT_BLOB_MAX, "wrapped key too large for a header slot");
        let target = 1 - keep;
        let seq = self.slots[0].seq.max(self.slots[1].seq) + 1;
        self.slots[target] = HeaderSlot { seq, blob };
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rewrap_alternates_slots() {
        let mut h = FileHeader::new([3; FILE_ID_LEN], vec![1; 82]);
        let parsed = FileHeader::parse(&h.encode()).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(h.rewrap(0, vec![2; 82]), 1);
        assert_eq!(h.candidates()[0].blob, vec![2; 82]);
        assert_eq!(h.slot_order(), vec![1, 0]);
        assert_eq!(h.rewrap(1, vec![3; 82]), 0);
        assert_eq!(h.candidates()[0].seq, 3);
        assert_eq!(FileHeader::parse(&h.encode()).unwrap(), h);
        // Moving to another key: the new slot alone remains.
        let keep = h.slot_order()[0];
        let new = h.rewrap(keep, vec![4; 82]);
        h.clear_slot(keep);
        let mut bytes = h.encode();
        bytes[FileHeader::slot_offset(0)..][..2 * SLOT_LEN].copy_from_slice(&h.encode_slots());
        let parsed = FileHeader::parse(&bytes).unwrap();
        assert_eq!(parsed.slot_order(), vec![new]);
        assert_eq!(parsed.candidates()[0].blob, vec![4; 82]);
    }

    #[test]
    fn damaged_headers_are_refused() {
        let h = FileHeader::new([3; FILE_ID_LEN], vec![1; 82]);
        let good = h.encode();
        assert_eq!(FileHeader::parse(&good[..100]), Err(HeaderError::TooShort));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(FileHeader::parse(&bad), Err(HeaderError::BadMagic));
        let mut bad = good;
        bad[7] = 9;
        assert_eq!(FileHeader::parse(&bad), Err(HeaderError::UnsupportedVersion(9)));
        let mut bad = good;
        bad[FileHeader::slot_offset(0)..][..SLOT_LEN].fill(0);
        assert_eq!(FileHeader::parse(&bad), Err(HeaderError::NoKey));
        // A torn slot length falls back to the other slot.
        let mut two = h.clone();
        two.rewrap(0, vec![5; 82]);
        let mut torn = two.encode();
        torn[FileHeader::slot_offset(1) + 8] = 0xff;
        let parsed = FileHeader::parse(&torn).unwrap();
        assert_eq!(parsed.candidates().len(), 1);
        assert_eq!(parsed.candidates()[0].blob, vec![1; 82]);
    }
}
