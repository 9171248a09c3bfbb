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

/// Where the mount sends audit events. Cheap to clone; sending never blocks.
#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: Sender<AuditEvent>,
}

impl AuditSink {
    pub fn record(&self, event: AuditEvent) {
        if self.tx.send(event).is_err() {
            log::error!("audit writer has stopped; an audit event was lost");
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
        let (tx, rx) = mpsc::channel();
        let thread =
            std::thread::Builder::new().name("kmsfs-audit".into()).spawn(move || run(kms, caller, rx))?;
        Ok((AuditSink { tx }, AuditWriter { thread }))
    }

    /// Waits for the writer to drain. Every sink must have been dropped first.
    pub fn finish(self) {
        if self.thread.join().is_err() {
            log::error!("the audit writer thread panicked");
        }
    }
}

fn run(mut kms: Kms, caller: Principal, rx: Receiver<AuditEvent>) {
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
        // on machines with two cores).
        std::thread::sleep(GATHER);
        let mut batch = vec![first];
        let mut disconnected = false;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        if let Err(e) = kms.append_audit(&batch) {
            log::error!("cannot write {} audit event(s) to the keystore: {e}", batch.len());
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
    match kms.rotate_due(caller) {
        Ok(ids) => ids.iter().for_each(|id| log::info!("key {id} rotated automatically")),
        Err(e) => log::error!("automatic key rotation failed: {e}"),
    }
}
