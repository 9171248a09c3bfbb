//! Batched audit writes for the mount: filesystem threads hand events to a channel, and one
//! background thread appends them to the keystore in a transaction per batch, so no file
//! open waits for an SQLite commit. The same thread runs the keystore's housekeeping
//! (deletion windows, automatic rotation) while a mount stays up for days.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{AuditEvent, Kms, Principal};

/// How often a long-running mount destroys expired keys and rotates due ones.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);
/// Largest batch written in one transaction.
const MAX_BATCH: usize = 4096;
/// How long a batch gathers events after its first one: at most ~50 commits (each an
/// fsync of the WAL) per second however busy the mount, at the price of losing at most
/// this much of the trail in a crash.
const GATHER: Duration = Duration::from_millis(20);

/// What goes down the writer's channel. (Events are the common message: boxing them would
/// cost an allocation each.)
#[allow(clippy::large_enum_variant)]
enum Message {
    Event(AuditEvent),
    /// Called once every event sent before it is committed (or failed to be).
    Barrier(Box<dyn FnOnce(bool) + Send>),
}

/// Where the mount sends audit events. Cheap to clone; sending never blocks.
#[derive(Clone)]
pub struct AuditSink {
    tx: Sender<Message>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSink")
    }
}

impl AuditSink {
    pub fn record(&self, event: AuditEvent) {
        if self.tx.send(Message::Event(event)).is_err() {
            log::error!("audit writer has stopped; an audit event was lost");
        }
    }

    /// Calls `done(committed)` once every event recorded before this call is in the
    /// keystore: the API server answers a call only then, so an answered call is audited.
    /// A barrier ends the writer's gathering window at once; callers waiting together
    /// share one commit.
    pub fn barrier(&self, done: Box<dyn FnOnce(bool) + Send>) {
        if let Err(mpsc::SendError(Message::Barrier(done))) = self.tx.send(Message::Barrier(done)) {
            log::error!("audit writer has stopped");
            done(false);
        }
    }
}

/// The background writer; [`AuditWriter::finish`] waits until every event sent before the
/// last sink was dropped is written.
pub struct AuditWriter {
    thread: JoinHandle<()>,
}

impl AuditWriter {
    /// Starts the writer thread, which owns `kms` (its own keystore connection).
    pub fn spawn(kms: Kms, caller: Principal) -> std::io::Result<(AuditSink, AuditWriter)> {
        Self::spawn_gathering(kms, caller, GATHER)
    }

    /// Like `spawn`, gathering each batch for `gather` after its first event.
    pub fn spawn_gathering(
        kms: Kms,
        caller: Principal,
        gather: Duration,
    ) -> std::io::Result<(AuditSink, AuditWriter)> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kmsfs-audit".into())
            .spawn(move || run(kms, caller, rx, gather))?;
        Ok((AuditSink { tx }, AuditWriter { thread }))
    }

    /// Waits for the writer to drain. Every sink must have been dropped first.
    pub fn finish(self) {
        if self.thread.join().is_err() {
            log::error!("the audit writer thread panicked");
        }
    }
}

fn run(mut kms: Kms, caller: Principal, rx: Receiver<Message>, gather: Duration) {
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
    loop {
        let wait = next_housekeeping.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                housekeeping(&mut kms, &caller);
                next_housekeeping = Instant::now() + HOUSEKEEPING_EVERY;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Sleep through the gathering window instead of waiting on the channel: a sender
        // wakes the receiver only while it waits, so a busy mount costs this thread two
        // wake-ups per batch rather than one per event (a context switch per file created,
        // on machines with two cores). The API server gathers nothing: its callers wait
        // for the commit (barriers), and those arriving during one commit share the next.
        if !gather.is_zero() {
            std::thread::sleep(gather);
        }
        let mut batch = Vec::new();
        let mut barriers = Vec::new();
        match first {
            Message::Event(event) => batch.push(event),
            Message::Barrier(done) => barriers.push(done),
        }
        let mut disconnected = false;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Message::Event(event)) => batch.push(event),
                Ok(Message::Barrier(done)) => barriers.push(done),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        let committed = match kms.append_audit(&batch) {
            Ok(()) => true,
            Err(e) => {
                log::error!("cannot write {} audit event(s) to the keystore: {e}", batch.len());
                false
            }
        };
        for done in barriers {
            done(committed);
        }
        if disconnected {
            return;
        }
    }
}

fn housekeeping(kms: &mut Kms, caller: &Principal) {
    match kms.purge_expired(caller) {
        Ok(ids) => {
            ids.iter().for_each(|id| log::warn!("key {id} reached its deletion date and was destroyed"))
        }
        Err(e) => log::error!("destroying expired keys failed: {e}"),
    }
    match kms.expire_imported_material(caller) {
        Ok(ids) => ids.iter().for_each(|id| log::warn!("the imported key material of key {id} expired")),
        Err(e) => log::error!("deleting expired imported key material failed: {e}"),
    }
    match kms.rotate_due(caller) {
        Ok(ids) => ids.iter().for_each(|id| log::info!("key {id} rotated automatically")),
        Err(e) => log::error!("automatic key rotation failed: {e}"),
    }
}
