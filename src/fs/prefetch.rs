//! Read-ahead across the files of a directory.
//!
//! `cat *`, `cp -r`, `tar c` and `grep -r` open the files of a directory one after the
//! other, in the order the listing gave them. Each open of a file whose blocks are not in
//! the page cache waits for the disk twice over: for its header (the open needs the data key)
//! and for its data. When opens follow the listing order, a background thread asks the
//! kernel to start reading the next few files' first blocks (`posix_fadvise(WILLNEED)`), so
//! the disk works while the request round trips go on. A directory opened out of order, or
//! one file at a time, costs nothing but the bookkeeping of its listing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};

/// How many files ahead of the one opened are read ahead.
const AHEAD: usize = 16;
/// How much of each file (header and first blocks).
const BYTES: i64 = 128 * 1024;
/// Listings remembered (the most recent directories listed).
const LISTINGS: usize = 512;
/// Files waiting to be read ahead; beyond that, read-ahead is skipped, never waited for.
const QUEUE: usize = 256;

/// The regular files of one directory listing, in listing order.
struct Listing {
    files: Vec<OsString>,
    position: HashMap<OsString, usize>,
    /// The position of the last file opened, and how far read-ahead has been asked for.
    cursor: Mutex<(Option<usize>, usize)>,
}

pub struct Prefetcher {
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
    queue: SyncSender<PathBuf>,
}

impl Prefetcher {
    pub fn start() -> std::io::Result<Prefetcher> {
        let (queue, rx) = sync_channel::<PathBuf>(QUEUE);
        std::thread::Builder::new().name("kmsfs-prefetch".into()).spawn(move || {
            for path in rx {
                read_ahead(&path);
            }
        })?;
        Ok(Prefetcher { listings: Mutex::new(HashMap::new()), queue })
    }

    /// Remembers the regular files of directory `dir`, as just listed.
    pub fn listed(&self, dir: u64, files: Vec<OsString>) {
        if files.len() < 2 {
            return;
        }
        let position = files.iter().enumerate().map(|(i, f)| (f.clone(), i)).collect();
        let listing = Arc::new(Listing { files, position, cursor: Mutex::new((None, 0)) });
        let mut listings = self.listings.lock().expect("listings lock");
        if listings.len() >= LISTINGS {
            listings.clear(); // bounded; the next listings refill it
        }
        listings.insert(dir, listing);
    }

    /// File `stored` of directory `dir` (backing path `dir_path`) is being opened: if it
    /// follows the last one opened there, read the next ones ahead.
    pub fn opening(&self, dir: u64, dir_path: &std::path::Path, stored: &std::ffi::OsStr) {
        let Some(listing) = self.listings.lock().expect("listings lock").get(&dir).cloned() else { return };
        let Some(&pos) = listing.position.get(stored) else { return };
        let (from, to) = {
            let mut cursor = listing.cursor.lock().expect("listing cursor lock");
            let sequential = cursor.0.is_some_and(|last| pos == last + 1);
            cursor.0 = Some(pos);
            if !sequential {
                return;
            }
            let from = cursor.1.max(pos + 1);
            let to = (pos + 1 + AHEAD).min(listing.files.len());
            cursor.1 = cursor.1.max(to);
            (from, to)
        };
        for name in listing.files.get(from..to).unwrap_or_default() {
            if self.queue.try_send(dir_path.join(name)).is_err() {
                break; // the thread is behind: skip rather than wait
            }
        }
    }

    /// Forgets a directory's listing (it was removed).
    pub fn forget(&self, dir: u64) {
        self.listings.lock().expect("listings lock").remove(&dir);
    }
}

fn read_ahead(path: &std::path::Path) {
    // O_NONBLOCK: should a FIFO have taken the file's place, the open must not hang.
    let Ok(file) = crate::sys::open_noatime_with(path, false, libc::O_NONBLOCK) else { return };
    crate::sys::read_ahead(&file, BYTES);
}
