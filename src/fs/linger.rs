//! Keeps the one thread that reads FUSE requests polling for the next request for a moment
//! after each reply, instead of going to sleep in read(2) at once.
//!
//! A program such as tar waits for each reply before it sends its next request, and most of
//! such a round trip went to waking threads up: the kernel woke a daemon thread asleep on
//! the other core, then the daemon woke the program. A dispatcher that is still polling when
//! the next request arrives takes it without being woken, and the kernel, finding no thread
//! asleep on the device, wakes none. It works only with one reading thread: any other thread
//! asleep in read(2) would be woken for the request all the same. Requests that take long
//! (large READs, fsync) go to `workers` so that one thread is enough.
//!
//! The poll is bounded (`BUDGET`), yields the core to anything else runnable on it, and is
//! off on a machine with one core, where it would only delay the program it waits for.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long the dispatcher polls after a reply. Between the requests of a program working
/// through files (tar, cp -r, rm -r) the gap is mostly a few to tens of microseconds; a gap
/// longer than this costs the program one wake-up, as before, and the daemon this much CPU.
pub const BUDGET: Duration = Duration::from_micros(100);

pub struct Linger {
    /// The FUSE device the dispatcher reads, once mounted (-1 before).
    device: AtomicI32,
    budget: Duration,
}

impl Linger {
    pub fn new() -> Linger {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Linger { device: AtomicI32::new(-1), budget: if cores > 1 { BUDGET } else { Duration::ZERO } }
    }

    /// Starts polling `device` after replies (the descriptor the dispatching thread reads).
    pub fn attach(&self, device: RawFd) {
        self.device.store(device, Ordering::Relaxed);
    }

    /// A guard that polls when dropped: created first thing in a request's handler, it
    /// polls once the handler has replied.
    pub fn after_reply(&self) -> AfterReply<'_> {
        AfterReply(self)
    }

    /// Returns when a request is waiting on the device, or after the budget.
    fn wait_for_next(&self) {
        let fd = self.device.load(Ordering::Relaxed);
        if fd < 0 || self.budget.is_zero() {
            return;
        }
        let start = Instant::now();
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: one valid pollfd; a zero timeout never blocks. A closed device
            // (unmount) reports POLLERR, which ends the loop like a request would.
            let ready = unsafe { libc::poll(&mut poll, 1, 0) };
            if ready != 0 || start.elapsed() >= self.budget {
                return;
            }
            // SAFETY: no arguments; lets any other task runnable on this core go first.
            unsafe { libc::sched_yield() };
        }
    }
}

impl Default for Linger {
    fn default() -> Self {
        Linger::new()
    }
}

pub struct AfterReply<'a>(&'a Linger);

impl Drop for AfterReply<'_> {
    fn drop(&mut self) {
        self.0.wait_for_next();
    }
}
