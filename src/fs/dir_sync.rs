//! New directories' metadata made durable shortly after mkdir, not during it.
//!
//! A directory's names key lives in its metadata (`kmsfs.dir`): entries made in the directory
//! are unreadable without it, so the metadata must reach the disk before any of them can.
//! mkdir used to fsync it before returning; where every fsync is a disk cache flush (ext4
//! without a journal, as on the benchmark machines) that was 1.2-1.7 ms per mkdir, 8.8 s of
//! an untar of the kernel tree against securefs's 0.6 s for all its mkdirs. Now mkdir writes
//! both copies and hands the primary and the directory, still open, to this queue, which
//! fsyncs them
//! - before an FSYNC or FSYNCDIR at or below the directory is answered (what a program makes
//!   durable is readable after a power loss: its directories' keys went down first),
//! - in the background within [`DELAY`] otherwise, all that wait in one pass,
//! - and all of them when the mount ends.
//!
//! A daemon that is killed loses nothing (the copies are in the page cache). A power loss in
//! the [`DELAY`] after a mkdir, with nothing below the directory fsynced, can leave the
//! metadata torn: the directory's entries, none of which was made durable, are then
//! unreadable (fsck reports the directory) where on ext4 they could have vanished.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::volume::dirmeta::Unsynced;

/// How long a new directory's metadata may wait for its fsync.
pub const DELAY: Duration = Duration::from_millis(500);

/// Directories waiting beyond which a mkdir fsyncs its own metadata: each holds two files
/// open, and the daemon keeps the usual limit of 1024 descriptors. An untar makes ~40
/// directories in half a second.
const MOST_WAITING: usize = 128;

pub struct DeferredSync {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signals the worker: something is waiting, or the mount is ending.
    wake: Condvar,
    /// Held by the worker while it fsyncs what it took, so that `sync` can wait for those.
    syncing: Mutex<()>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<u64, Unsynced>,
    stopping: bool,
}

impl DeferredSync {
    pub fn start() -> std::io::Result<DeferredSync> {
        let shared = Arc::new(Shared::default());
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new().name("kmsfs-dirsync".into()).spawn(move || shared.run())?
        };
        Ok(DeferredSync { shared, worker: Mutex::new(Some(worker)) })
    }

    /// Directory inode `ino`'s new metadata waits for its fsync; synced here and now when too
    /// many wait already.
    pub fn defer(&self, ino: u64, files: Unsynced) -> std::io::Result<()> {
        let mut state = self.shared.state.lock().expect("dirsync lock");
        if state.waiting.len() >= MOST_WAITING {
            drop(state);
            return files.sync();
        }
        if state.waiting.is_empty() {
            self.shared.wake.notify_one(); // the worker sleeps until something waits
        }
        state.waiting.insert(ino, files);
        Ok(())
    }

    /// Makes the metadata of these directories durable, if it is still waiting (callers pass
    /// a file's or directory's ancestors, nearest first, before fsyncing it). Returns once every fsync of
    /// theirs, here or on the worker, has finished.
    pub fn sync(&self, dirs: impl IntoIterator<Item = u64>) -> std::io::Result<()> {
        let dirs: Vec<u64> = dirs.into_iter().collect();
        self.sync_waiting(&dirs)?;
        // Some may have been on the worker: wait for its pass. One that failed there is back
        // in the map, and is retried here so that its error reaches the caller.
        drop(self.shared.syncing.lock().expect("dirsync syncing lock"));
        self.sync_waiting(&dirs)
    }

    /// fsyncs those of `dirs` that are waiting, outermost first (a directory's own entry is
    /// made durable by its parent's fsync). One that fails waits again.
    fn sync_waiting(&self, dirs: &[u64]) -> std::io::Result<()> {
        let taken: Vec<(u64, Unsynced)> = {
            let mut state = self.shared.state.lock().expect("dirsync lock");
            dirs.iter().filter_map(|ino| state.waiting.remove_entry(ino)).collect()
        };
        let mut result = Ok(());
        for (ino, files) in taken.into_iter().rev() {
            if let Err(e) = files.sync() {
                self.shared.state.lock().expect("dirsync lock").waiting.insert(ino, files);
                result = result.and(Err(e));
            }
        }
        result
    }
}

impl Shared {
    fn run(&self) {
        loop {
            // The `syncing` guard is taken before the directories leave the map and held until
            // their fsyncs are done: a `sync` that finds its directory gone waits for it.
            let (due, stopping, syncing) = {
                let mut state = self.state.lock().expect("dirsync lock");
                while state.waiting.is_empty() && !state.stopping {
                    state = self.wake.wait(state).expect("dirsync lock");
                }
                // The first of a burst of mkdirs woke us: let the burst gather for DELAY, then
                // take all of it (so none waits longer than DELAY). Until the deadline, wakes
                // (a mkdir after an fsync emptied the map, or a spurious one) change nothing.
                let deadline = Instant::now() + DELAY;
                while !state.stopping {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = self.wake.wait_timeout(state, left).expect("dirsync lock").0;
                }
                let syncing = self.syncing.lock().expect("dirsync syncing lock");
                let due: Vec<(u64, Unsynced)> = state.waiting.drain().collect();
                (due, state.stopping, syncing)
            };
            for (ino, files) in due {
                if let Err(e) = files.sync() {
                    log::warn!("cannot make new directory metadata durable: {e}");
                    if !stopping {
                        // Waits again: the next pass, or an fsync below it, retries it.
                        self.state.lock().expect("dirsync lock").waiting.insert(ino, files);
                    }
                }
            }
            drop(syncing);
            if stopping {
                return;
            }
        }
    }
}

impl Drop for DeferredSync {
    /// Makes every waiting directory's metadata durable before the daemon exits.
    fn drop(&mut self) {
        self.shared.state.lock().expect("dirsync lock").stopping = true;
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.lock().expect("dirsync worker lock").take() {
            let _ = worker.join();
        }
    }
}
