//! Reading and writing plaintext ranges of one encrypted backing file, block by block.
//!
//! Callers hold the file's lock: shared for [`CryptFile::read_at`], exclusive for the
//! writers. Partial blocks are read, modified and resealed; the last block carries the
//! last-block flag, so a write past the end reseals the old last block without it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use super::blocks::{
    self, block_count, block_offset, cipher_size, plaintext_size, BLOCK_SIZE, CIPHER_BLOCK_SIZE,
};
use super::header::FILE_ID_LEN;
use crate::crypto::{Cipher, SEAL_OVERHEAD};

const B: usize = BLOCK_SIZE as usize;
const CB: usize = CIPHER_BLOCK_SIZE as usize;

/// The data key of one file, with what binds it: the file id (in every block's AAD) and the
/// key it is wrapped under (for the policy checks of later uses).
pub struct FileKey {
    pub file_id: [u8; FILE_ID_LEN],
    pub cipher: Cipher,
    pub key_id: String,
}

impl FileKey {
    /// `file` read and written with this key, keeping no copy of its last block (an open
    /// file of the mount adds its own, see [`LastBlock`]).
    pub fn crypt<'a>(&'a self, file: &'a File, label: &'a str) -> CryptFile<'a> {
        CryptFile { file, cipher: &self.cipher, file_id: &self.file_id, label, last_block: None }
    }
}

/// A backing file with its data key.
pub struct CryptFile<'a> {
    pub file: &'a File,
    pub cipher: &'a Cipher,
    pub file_id: &'a [u8; FILE_ID_LEN],
    /// For log messages: which file failed its checks.
    pub label: &'a str,
    /// The open file's copy of its last block, if it keeps one (`LastBlock`).
    pub last_block: Option<&'a Mutex<Option<LastBlock>>>,
}

/// The last block of a file as this daemon last wrote it. A program writing a file from
/// start to end (tar, cp) appends to the partial block it wrote last: with this copy that
/// block is neither read back nor decrypted again, for the roll-back copy or for the merge.
/// Every write of blocks drops it first and sets it again only when it wrote the file's last
/// block, and it is used only while the backing file still has the length it had then.
pub struct LastBlock {
    /// The backing file's length right after the write.
    len: u64,
    index: u64,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

/// What [`CryptFile::verify`] found wrong with a file's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The backing length is not that of whole blocks: cut or extended.
    Length(u64),
    /// Block `index` (plaintext bytes `start..end`) does not authenticate or cannot be read.
    Block { index: u64, start: u64, end: u64 },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Length(len) => {
                write!(f, "length {len} is not a whole number of blocks (cut or extended)")
            }
            Damage::Block { index, start, end } => {
                write!(f, "block {index} (bytes {start}..{end}) does not authenticate")
            }
        }
    }
}

/// Blocks [`CryptFile::verify`] reads at a time.
const VERIFY_BATCH: u64 = 64;

/// Authentication failed: tampering or corruption. Logged, then answered with EIO.
fn tampered(label: &str, index: u64, why: &str) -> io::Error {
    log::warn!("integrity check failed in {label}, block {index}: {why}; answering EIO");
    io::Error::from_raw_os_error(libc::EIO)
}

impl CryptFile<'_> {
    pub fn plaintext_len(&self) -> io::Result<u64> {
        Ok(plaintext_size(self.file.metadata()?.len()))
    }

    /// Writes a just-created (zero-length) file's `header` and its sealed empty last block
    /// with one call: nothing to cut, so no truncate either.
    pub fn init_new(&self, header: &[u8]) -> io::Result<()> {
        debug_assert_eq!(header.len() as u64, block_offset(0));
        let mut bytes = header.to_vec();
        bytes.resize(header.len() + SEAL_OVERHEAD, 0);
        blocks::seal_block(self.cipher, self.file_id, 0, true, &[], &mut bytes[header.len()..]);
        self.file.write_all_at(&bytes, 0)
    }

    /// Gives a file that has just got its header its empty last block.
    pub fn init_empty(&self) -> io::Result<()> {
        self.write_blocks(0, &[Vec::new()], 0)?;
        self.file.set_len(cipher_size(0))
    }

    /// An empty file must hold exactly its sealed empty last block: a file cut down to its
    /// header (or to any length between) is damage, not an empty file.
    pub fn check_empty(&self) -> io::Result<()> {
        let mut sealed = [0u8; SEAL_OVERHEAD];
        if self.file.metadata()?.len() != cipher_size(0)
            || self.file.read_exact_at(&mut sealed, block_offset(0)).is_err()
        {
            return Err(tampered(self.label, 0, "the file has no last block (cut short)"));
        }
        blocks::open_block(self.cipher, self.file_id, 0, true, &sealed, &mut [])
            .map_err(|_| tampered(self.label, 0, "the empty last block does not authenticate"))
    }

    /// Reads up to `len` bytes at `offset`; fewer at the end of the file.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let size = self.plaintext_len()?;
        if size == 0 {
            self.check_empty()?;
        }
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = size.min(offset + len as u64);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let mut plain = self.read_blocks(first, last, size)?;
        // Cut to the range asked for in place: no second buffer of up to 1 MiB per read.
        let skip = (offset - first * BLOCK_SIZE) as usize;
        plain.truncate(skip + (end - offset) as usize);
        plain.drain(..skip);
        Ok(plain)
    }

    /// Decrypts blocks `first..=last` of a file of plaintext size `size`.
    fn read_blocks(&self, first: u64, last: u64, size: u64) -> io::Result<Vec<u8>> {
        let last_of_file = block_count(size) - 1;
        let plain_end = size.min((last + 1) * BLOCK_SIZE);
        let cipher_end = cipher_size(plain_end);
        let start = block_offset(first);
        let mut sealed = vec![0u8; (cipher_end - start) as usize];
        self.file.read_exact_at(&mut sealed, start).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                tampered(self.label, first, "the file is shorter than its blocks")
            } else {
                e
            }
        })?;
        let mut plain = vec![0u8; (plain_end - first * BLOCK_SIZE) as usize];
        self.open_blocks(first, last_of_file, &sealed, &mut plain)
            .map_err(|index| tampered(self.label, index, "block does not authenticate"))?;
        Ok(plain)
    }

    /// Decrypts the consecutive sealed blocks `sealed` (the first is block `first`) into
    /// `plain`; on failure, the index of the block that does not authenticate.
    fn open_blocks(&self, first: u64, last_of_file: u64, sealed: &[u8], plain: &mut [u8]) -> Result<(), u64> {
        for (i, (sealed_block, plain_block)) in sealed.chunks(CB).zip(plain.chunks_mut(B)).enumerate() {
            let index = first + i as u64;
            blocks::open_block(
                self.cipher,
                self.file_id,
                index,
                index == last_of_file,
                sealed_block,
                plain_block,
            )
            .map_err(|_| index)?;
        }
        Ok(())
    }

    /// Checks that the file (of backing length `len`) is whole blocks and that every block
    /// authenticates (`kmsfs fsck`), reading a batch of blocks at a time; returns the
    /// plaintext bytes checked. Logs nothing: the caller reports. A block that cannot be
    /// read counts as damaged.
    pub fn verify(&self, len: u64) -> Result<u64, Damage> {
        let size = plaintext_size(len);
        if cipher_size(size) != len {
            return Err(Damage::Length(len));
        }
        let damaged = |index: u64| {
            let start = index * BLOCK_SIZE;
            Damage::Block { index, start, end: size.min(start + BLOCK_SIZE) }
        };
        if size == 0 {
            let mut sealed = [0u8; SEAL_OVERHEAD];
            let ok = self.file.read_exact_at(&mut sealed, block_offset(0)).is_ok()
                && blocks::open_block(self.cipher, self.file_id, 0, true, &sealed, &mut []).is_ok();
            return if ok { Ok(0) } else { Err(damaged(0)) };
        }
        let last_of_file = block_count(size) - 1;
        let mut sealed = vec![0u8; (VERIFY_BATCH * CIPHER_BLOCK_SIZE) as usize];
        let mut plain = vec![0u8; (VERIFY_BATCH * BLOCK_SIZE) as usize];
        let mut first = 0;
        while first <= last_of_file {
            let last = last_of_file.min(first + VERIFY_BATCH - 1);
            let plain_end = size.min((last + 1) * BLOCK_SIZE);
            let sealed_len = (cipher_size(plain_end) - block_offset(first)) as usize;
            let plain_len = (plain_end - first * BLOCK_SIZE) as usize;
            if self.file.read_exact_at(&mut sealed[..sealed_len], block_offset(first)).is_err() {
                return Err(damaged(first));
            }
            if let Err(index) =
                self.open_blocks(first, last_of_file, &sealed[..sealed_len], &mut plain[..plain_len])
            {
                return Err(damaged(index));
            }
            first = last + 1;
        }
        Ok(size)
    }

    /// The plaintext of block `index` as it is now (empty past the end).
    fn existing_block(&self, index: u64, size: u64, known: Option<&LastBlock>) -> io::Result<Vec<u8>> {
        if index >= block_count(size) {
            return Ok(Vec::new());
        }
        match known {
            Some(last) if last.index == index => Ok(last.plain.clone()),
            _ => self.read_blocks(index, index, size),
        }
    }

    /// Takes the kept copy of the last block if the file (backing length `len`) is as it
    /// left it.
    fn take_last_block(&self, len: u64) -> Option<LastBlock> {
        let kept = self.last_block?.lock().expect("last block lock").take()?;
        (kept.len == len).then_some(kept)
    }

    /// Seals `blocks` (consecutive, starting at `first`) and writes them with one call.
    fn write_blocks(&self, first: u64, blocks: &[Vec<u8>], last_of_file: u64) -> io::Result<()> {
        let total: usize = blocks.iter().map(|b| b.len() + SEAL_OVERHEAD).sum();
        let mut out = vec![0u8; total];
        blocks::seal_blocks(self.cipher, self.file_id, first, blocks, last_of_file, &mut out);
        // The kept copy is dropped before the write and kept again only if it succeeded.
        let mut kept = self.last_block.map(|kept| kept.lock().expect("last block lock"));
        if let Some(kept) = kept.as_mut() {
            **kept = None;
        }
        self.file.write_all_at(&out, block_offset(first))?;
        let (plain, index) = (blocks.last().expect("at least one block"), first + blocks.len() as u64 - 1);
        if let (Some(kept), true) = (kept.as_mut(), index == last_of_file) {
            let sealed = out[total - plain.len() - SEAL_OVERHEAD..].to_vec();
            **kept = Some(LastBlock {
                len: block_offset(first) + total as u64,
                index,
                plain: plain.clone(),
                sealed,
            });
        }
        Ok(())
    }

    /// Before the file grows with blocks from `next` on, its last block (if it lies before
    /// `next`) is padded to a full block and resealed without the last-block flag.
    fn retire_last_block(&self, size: u64, next: u64, known: Option<&LastBlock>) -> io::Result<()> {
        if size == 0 {
            // The empty last block becomes a full block of zeros (if block 0 is not about to
            // be written anyway), else it would read as a damaged block 0.
            return if next > 0 { self.write_blocks(0, &[vec![0u8; B]], next) } else { Ok(()) };
        }
        let old_last = block_count(size) - 1;
        if old_last >= next {
            return Ok(());
        }
        let mut block = self.existing_block(old_last, size, known)?;
        block.resize(B, 0);
        self.write_blocks(old_last, &[block], next)
    }

    /// Runs `grow`, which makes a file of backing length `len` longer. If it fails (ENOSPC,
    /// say) after writing part of its blocks, the file is put back to its old length and last
    /// block, byte for byte: a write that ran out of space must not leave a torn tail that
    /// makes the file read as EIO.
    fn growing(
        &self,
        len: u64,
        known: Option<&LastBlock>,
        grow: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let size = plaintext_size(len);
        let at = block_offset(block_count(size).max(1) - 1).min(len);
        let tail = match known {
            Some(last) if block_offset(last.index) == at => Some(last.sealed.clone()),
            _ => {
                let mut tail = vec![0u8; (len - at) as usize];
                self.file.read_exact_at(&mut tail, at).ok().map(|_| tail)
            }
        };
        let result = grow();
        if let (Err(e), Some(tail)) = (&result, tail) {
            if let Err(r) = self.file.set_len(len).and_then(|_| self.file.write_all_at(&tail, at)) {
                log::warn!(
                    "{}: a write failed ({e}) and its old end could not be put back ({r})",
                    self.label
                );
            }
        }
        result
    }

    /// Writes `data` at `offset`, growing the file (with holes) as needed.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let len = self.file.metadata()?.len();
        let size = plaintext_size(len);
        let known = self.take_last_block(len);
        let known = known.as_ref();
        if offset + data.len() as u64 > size {
            return self.growing(len, known, || self.write_range(size, offset, data, known));
        }
        self.write_range(size, offset, data, known)
    }

    fn write_range(&self, size: u64, offset: u64, data: &[u8], known: Option<&LastBlock>) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let new_size = size.max(end);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let new_last = (new_size - 1) / BLOCK_SIZE;
        self.retire_last_block(size, first, known)?;
        let mut blocks = Vec::with_capacity((last - first + 1) as usize);
        for index in first..=last {
            let block_start = index * BLOCK_SIZE;
            let block_len = (new_size.min(block_start + BLOCK_SIZE) - block_start) as usize;
            let lo = offset.max(block_start);
            let hi = end.min(block_start + BLOCK_SIZE);
            let covers_block = lo == block_start && hi - block_start >= block_len as u64;
            let mut block = if covers_block {
                Vec::with_capacity(block_len)
            } else {
                self.existing_block(index, size, known)?
            };
            block.resize(block_len, 0);
            let src = &data[(lo - offset) as usize..(hi - offset) as usize];
            block[(lo - block_start) as usize..(hi - block_start) as usize].copy_from_slice(src);
            blocks.push(block);
        }
        self.write_blocks(first, &blocks, new_last)
    }

    /// Sets the plaintext size: cuts (resealing the new last block) or extends with a hole.
    pub fn set_len(&self, new_size: u64) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        let size = plaintext_size(len);
        if new_size == size {
            return Ok(());
        }
        if new_size == 0 {
            return self.init_empty();
        }
        let new_last = (new_size - 1) / BLOCK_SIZE;
        let keep = (new_size - new_last * BLOCK_SIZE) as usize;
        if new_size < size {
            let mut block = self.existing_block(new_last, size, None)?;
            block.truncate(keep);
            self.write_blocks(new_last, &[block], new_last)?;
            return self.file.set_len(cipher_size(new_size));
        }
        // Growing: the old last block loses its flag, the new last block is zeros.
        self.growing(len, None, || {
            self.retire_last_block(size, new_last, None)?;
            let mut block = if block_count(size) == new_last + 1 {
                self.existing_block(new_last, size, None)?
            } else {
                Vec::new()
            };
            block.resize(keep, 0);
            self.write_blocks(new_last, &[block], new_last)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::HEADER_LEN;
    use crate::crypto::SecretKey;

    struct Fixture {
        file: File,
        cipher: Cipher,
        id: [u8; FILE_ID_LEN],
        model: Vec<u8>,
        /// As an open file keeps it, so that every test also runs the kept-block paths.
        last: Mutex<Option<LastBlock>>,
    }

    impl Fixture {
        fn new() -> Self {
            let file = tempfile::tempfile().unwrap();
            file.set_len(HEADER_LEN).unwrap();
            let f = Fixture {
                file,
                cipher: SecretKey::random().cipher(),
                id: [9; FILE_ID_LEN],
                model: Vec::new(),
                last: Mutex::new(None),
            };
            f.cf().init_empty().unwrap();
            f
        }
        fn cf(&self) -> CryptFile<'_> {
            let last_block = Some(&self.last);
            CryptFile { file: &self.file, cipher: &self.cipher, file_id: &self.id, label: "test", last_block }
        }
        fn write(&mut self, offset: usize, data: &[u8]) {
            self.cf().write_at(offset as u64, data).unwrap();
            if self.model.len() < offset + data.len() {
                self.model.resize(offset + data.len(), 0);
            }
            self.model[offset..offset + data.len()].copy_from_slice(data);
            self.check();
        }
        fn truncate(&mut self, len: usize) {
            self.cf().set_len(len as u64).unwrap();
            self.model.resize(len, 0);
            self.check();
        }
        fn check(&self) {
            let cf = self.cf();
            assert_eq!(cf.plaintext_len().unwrap(), self.model.len() as u64);
            assert_eq!(cf.read_at(0, self.model.len() + 10).unwrap(), self.model);
            assert_eq!(self.file.metadata().unwrap().len(), cipher_size(self.model.len() as u64));
        }
    }

    #[test]
    fn writes_truncates_and_holes_match_a_plain_model() {
        let mut f = Fixture::new();
        f.write(0, b"hello");
        f.write(3, &[7u8; 5000]);
        f.write(20_000, b"after a hole");
        f.write(4096, &[1u8; 4096]);
        f.truncate(9000);
        f.truncate(30_000);
        f.write(8191, b"xy");
        f.truncate(4096);
        f.truncate(1);
        f.truncate(0);
        f.write(12_288, b"z");
        assert_eq!(f.cf().read_at(12_000, 1000).unwrap().len(), 289);
    }

    #[test]
    fn pseudo_random_operations_match_the_model() {
        let mut f = Fixture::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        for _ in 0..300 {
            if next(5) == 0 {
                let len = next(40_000) as usize;
                f.truncate(len);
            } else {
                let off = next(40_000) as usize;
                let len = 1 + next(9000) as usize;
                let byte = next(255) as u8;
                f.write(off, &vec![byte; len]);
            }
        }
    }

    #[test]
    fn a_kept_last_block_is_not_used_once_the_length_changed_beneath_it() {
        let mut f = Fixture::new();
        // Keeps block 1 (1,904 bytes of ones).
        f.write(0, &[1u8; 6000]);
        // Cut through a view without the kept copy (as nothing in the daemon does): the next
        // write must merge with the block as it is on disk now, where bytes 5000..5500 read
        // as zeros (the kept copy has ones there).
        let bare = CryptFile { last_block: None, ..f.cf() };
        bare.set_len(5000).unwrap();
        f.model.truncate(5000);
        f.write(5500, &[2u8; 2000]);
        // The copy kept by that write is used by the next.
        f.write(7500, &[3u8; 10]);
    }

    #[test]
    fn cutting_to_the_bare_header_is_detected() {
        let mut f = Fixture::new();
        f.check();
        f.write(0, b"data");
        f.file.set_len(HEADER_LEN).unwrap();
        assert_eq!(f.cf().read_at(0, 10).unwrap_err().raw_os_error(), Some(libc::EIO));
    }

    #[test]
    fn cutting_at_a_block_boundary_is_detected() {
        let mut f = Fixture::new();
        f.write(0, &[5u8; 3 * 4096]);
        f.file.set_len(block_offset(2)).unwrap();
        let err = f.cf().read_at(0, 4096 * 3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }
}
