//! A cheap "has anything been committed since?" for the keyring: the header of the
//! keystore's WAL index (`<keystore>-shm`).
//!
//! `PRAGMA data_version` is the authority, but asking it opens a read transaction: two
//! `fcntl` locks on the -shm file and SQLite's statement machinery, ~2-3 µs before every
//! LOOKUP, CREATE and OPEN. SQLite publishes every commit in WAL mode by rewriting the
//! WAL-index header, which it keeps twice at the start of the -shm file
//! (<https://sqlite.org/walformat.html>, "The WAL-Index Header": `iChange` counts
//! transactions, `mxFrame` and the checksums follow the WAL). A commit that has returned has
//! rewritten both copies, so if the 96 bytes read now equal those read just before the last
//! `PRAGMA data_version`, nothing was committed since and the pragma would say the same.
//! Any difference, a header being rewritten mid-read, a missing or short file: the pragma
//! is asked, as before. The file is read with `pread`, never mapped, so a -shm file that
//! shrinks cannot fault the daemon.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Both copies of the WAL-index header.
pub type Header = [u8; 96];

pub struct WalIndex(File);

impl WalIndex {
    /// The WAL index of the database at `db`, if it has one (WAL mode, opened by a
    /// connection, as the keyring's own is by then).
    pub fn open(db: &Path) -> Option<WalIndex> {
        let mut name = db.as_os_str().to_owned();
        name.push("-shm");
        File::open(name).ok().map(WalIndex)
    }

    /// The header as it is now, or `None` if it cannot be read whole.
    pub fn header(&self) -> Option<Header> {
        let mut header = [0u8; 96];
        self.0.read_exact_at(&mut header, 0).ok()?;
        Some(header)
    }
}
