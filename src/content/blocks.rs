//! The block layout of one encrypted file (see docs/FORMAT.md).
//!
//! ```text
//! [ preamble 32 B ][ header slot A 128 B ][ header slot B 128 B ][ block 0 ][ block 1 ] ...
//! ```
//! A block is `nonce(12) || ciphertext(≤4096) || tag(16)`, sealed with the file's data key
//! and AAD = `file id || block index (u64 BE) || last-block flag`. Only the last block may be
//! shorter than 4096 plaintext bytes, and only the last block carries the flag, so cutting
//! a file at a block boundary makes its new last block fail to authenticate.
//!
//! The plaintext size is derived from the cipher file's length; a block that is all zero
//! bytes on disk (and is not the last block) is a hole and reads as zeros, so sparse files
//! stay sparse. An empty file holds one sealed empty last block, so a file cut down to its
//! bare header is detected too.

use super::header::{FILE_ID_LEN, HEADER_LEN};
use crate::crypto::{AuthError, Cipher, NONCE_LEN, SEAL_OVERHEAD};

/// Plaintext bytes per block.
pub const BLOCK_SIZE: u64 = 4096;
/// Bytes a full block occupies on disk.
pub const CIPHER_BLOCK_SIZE: u64 = BLOCK_SIZE + SEAL_OVERHEAD as u64;

/// Plaintext size of a file whose cipher file is `cipher_len` bytes long. A tail too short
/// to be a block (a torn write) is ignored here; reading the block before it will then fail
/// its last-block check and report the damage.
pub fn plaintext_size(cipher_len: u64) -> u64 {
    if cipher_len <= HEADER_LEN {
        return 0;
    }
    let body = cipher_len - HEADER_LEN;
    let full = body / CIPHER_BLOCK_SIZE;
    let rest = body % CIPHER_BLOCK_SIZE;
    full * BLOCK_SIZE + rest.saturating_sub(SEAL_OVERHEAD as u64)
}

/// Cipher file length for a plaintext of `size` bytes.
pub fn cipher_size(size: u64) -> u64 {
    if size == 0 {
        return HEADER_LEN + SEAL_OVERHEAD as u64; // the empty last block
    }
    let full = size / BLOCK_SIZE;
    let rest = size % BLOCK_SIZE;
    HEADER_LEN + full * CIPHER_BLOCK_SIZE + if rest > 0 { rest + SEAL_OVERHEAD as u64 } else { 0 }
}

/// Offset of block `index` in the cipher file.
pub fn block_offset(index: u64) -> u64 {
    HEADER_LEN + index * CIPHER_BLOCK_SIZE
}

/// Number of blocks of a plaintext of `size` bytes.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// The additional data of one block.
#[inline]
pub fn block_aad(file_id: &[u8; FILE_ID_LEN], index: u64, last: bool) -> [u8; FILE_ID_LEN + 9] {
    let mut aad = [0u8; FILE_ID_LEN + 9];
    aad[..FILE_ID_LEN].copy_from_slice(file_id);
    aad[FILE_ID_LEN..FILE_ID_LEN + 8].copy_from_slice(&index.to_be_bytes());
    aad[FILE_ID_LEN + 8] = last as u8;
    aad
}

/// Seals one block's plaintext into `out` (exactly `plain.len() + SEAL_OVERHEAD` bytes).
pub fn seal_block(
    cipher: &Cipher,
    file_id: &[u8; FILE_ID_LEN],
    index: u64,
    last: bool,
    plain: &[u8],
    out: &mut [u8],
) {
    debug_assert!(plain.len() as u64 <= BLOCK_SIZE && (!plain.is_empty() || (index == 0 && last)));
    cipher.seal_into(&block_aad(file_id, index, last), plain, out);
}

/// Seals consecutive blocks (`first`, `first + 1`, ...) one after another into `out`
/// (exactly their lengths plus `SEAL_OVERHEAD` each), with one `getrandom` for all their
/// nonces. Block `last_of_file`, if among them, is sealed as the file's last.
pub fn seal_blocks(
    cipher: &Cipher,
    file_id: &[u8; FILE_ID_LEN],
    first: u64,
    blocks: &[Vec<u8>],
    last_of_file: u64,
    out: &mut [u8],
) {
    let mut nonces = vec![[0u8; NONCE_LEN]; blocks.len()];
    crate::crypto::fill_random(nonces.as_flattened_mut());
    let mut pos = 0;
    for (i, (plain, nonce)) in blocks.iter().zip(&nonces).enumerate() {
        let index = first + i as u64;
        let last = index == last_of_file;
        debug_assert!(plain.len() as u64 <= BLOCK_SIZE && (!plain.is_empty() || (index == 0 && last)));
        let n = plain.len() + SEAL_OVERHEAD;
        cipher.seal_into_with(nonce, &block_aad(file_id, index, last), plain, &mut out[pos..pos + n]);
        pos += n;
    }
}

/// Opens one block from disk into `out` (exactly the plaintext length). An all-zero block
/// that is not the last one is a hole and yields zeros.
pub fn open_block(
    cipher: &Cipher,
    file_id: &[u8; FILE_ID_LEN],
    index: u64,
    last: bool,
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), AuthError> {
    if !last && is_hole(sealed) {
        out.fill(0);
        return Ok(());
    }
    cipher.open_into(&block_aad(file_id, index, last), sealed, out)
}

/// Whether a block on disk is unwritten (all zeros). A real sealed block is never all zero:
/// its 16-byte tag would have to be zero too.
pub fn is_hole(sealed: &[u8]) -> bool {
    // Compare in word-sized chunks; this runs over every block read.
    let (prefix, words, suffix) = unsafe { sealed.align_to::<u64>() };
    prefix.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && suffix.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    #[test]
    fn sizes_round_trip() {
        for size in [0, 1, 4095, 4096, 4097, 8192, 10_000, 1 << 30] {
            assert_eq!(plaintext_size(cipher_size(size)), size, "size {size}");
        }
        assert_eq!(cipher_size(1), HEADER_LEN + 1 + SEAL_OVERHEAD as u64);
        assert_eq!(cipher_size(0), HEADER_LEN + SEAL_OVERHEAD as u64);
        assert_eq!(plaintext_size(HEADER_LEN), 0);
        // A torn tail no longer than the overhead adds nothing.
        assert_eq!(plaintext_size(cipher_size(4096) + 10), 4096);
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(4097), 2);
    }

    #[test]
    fn blocks_bind_index_file_and_last_flag() {
        let key = SecretKey::random().cipher();
        let id = [7u8; FILE_ID_LEN];
        let mut sealed = vec![0u8; 100 + SEAL_OVERHEAD];
        seal_block(&key, &id, 3, true, &[1u8; 100], &mut sealed);
        let mut out = [0u8; 100];
        assert!(open_block(&key, &id, 3, true, &sealed, &mut out).is_ok());
        assert_eq!(out, [1u8; 100]);
        assert!(open_block(&key, &id, 4, true, &sealed, &mut out).is_err());
        assert!(open_block(&key, &id, 3, false, &sealed, &mut out).is_err());
        assert!(open_block(&key, &[8u8; FILE_ID_LEN], 3, true, &sealed, &mut out).is_err());
    }

    #[test]
    fn zero_blocks_are_holes_unless_last() {
        let key = SecretKey::random().cipher();
        let id = [1u8; FILE_ID_LEN];
        let zeros = vec![0u8; CIPHER_BLOCK_SIZE as usize];
        let mut out = vec![9u8; BLOCK_SIZE as usize];
        assert!(open_block(&key, &id, 0, false, &zeros, &mut out).is_ok());
        assert!(out.iter().all(|&b| b == 0));
        assert!(open_block(&key, &id, 0, true, &zeros, &mut out).is_err());
    }
}
