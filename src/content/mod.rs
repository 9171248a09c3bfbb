//! File content and names as they are stored in the cipher directory: the file header and
//! block layout, the engine that reads and writes plaintext ranges block by block, and the
//! ciphers for entry names, symlink targets and extended attributes.
//!
//! This layer knows keys only as ciphers handed to it: where a key comes from (the key ring,
//! a volume's config, a directory's metadata) is the business of the layers above. The
//! mount (`fs`) and the offline walks (`volume::fsck`, `volume::rewrap`, `volume::copy`)
//! all read and write content through it.

pub mod blocks;
pub mod crypt_file;
pub mod header;
pub mod names;
pub mod volume_cipher;

pub use blocks::*;
pub use crypt_file::{CryptFile, FileKey, LastBlock};
pub use header::{FileHeader, HeaderSlot, FILE_ID_LEN, HEADER_LEN};
