//! Running in the background, and unmounting cleanly on SIGINT/SIGTERM/SIGHUP.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use super::{serve, Prepared};
use crate::error::{Error, Result};

/// Forks; the child serves the volume and tells the parent through a pipe whether the mount
/// came up; the parent returns then. Must run while the process has a single thread.
pub(super) fn run_in_background(prepared: Prepared) -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("cannot create a pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mountpoint = prepared.mountpoint.clone();
    // SAFETY: the process is single-threaded here (no mount, no writer thread yet).
    match unsafe { libc::fork() } {
        -1 => Err(Error::io("cannot fork", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            detach();
            super::syslog::init(log::LevelFilter::Info);
            let mut pipe = std::fs::File::from(write_end);
            // The closure owns the pipe, so the parent sees EOF right after the answer.
            let code = match serve(prepared, move |ready| {
                let msg = match ready {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("error: {e}"),
                };
                let _ = pipe.write_all(msg.as_bytes());
            }) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    1
                }
            };
            std::process::exit(code);
        }
        child => {
            drop(write_end);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            if answer == "ok" {
                eprintln!("kmsfs: mounted at {} (daemon pid {child})", mountpoint.display());
                Ok(())
            } else if let Some(e) = answer.strip_prefix("error: ") {
                Err(Error::Io(e.to_string()))
            } else {
                Err(Error::Io(
                    "the kmsfs daemon exited before the mount was ready; run with -f to see why".into(),
                ))
            }
        }
    }
}

/// Leaves the terminal's session and points stdio at /dev/null.
fn detach() {
    // SAFETY: plain syscalls on descriptors 0-2 and a freshly opened /dev/null.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// Blocks the termination signals in this thread and every thread it starts later, so
/// they can be taken by [`unmount_on_signal`] instead of killing the process mid-write.
pub(super) fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask with it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for a termination signal on a thread of its own, then unmounts, which ends the
/// session loop. If the mount is busy, falls back to a lazy unmount.
pub(super) fn unmount_on_signal(signals: libc::sigset_t, mountpoint: PathBuf) {
    let spawned = std::thread::Builder::new().name("kmsfs-signals".into()).spawn(move || {
        let mut sig = 0;
        // SAFETY: `signals` is a valid set, `sig` a valid out-parameter.
        if unsafe { libc::sigwait(&signals, &mut sig) } != 0 {
            return;
        }
        log::info!("signal {sig}: unmounting {}", mountpoint.display());
        // Not fuser's SessionUnmounter: with auto_unmount it only closes fusermount's
        // socket, and fusermount then sees a live filesystem and leaves it mounted.
        if let Err(e) = super::umount(&mountpoint) {
            log::warn!("{e}; unmounting lazily");
            let _ = std::process::Command::new("fusermount3").arg("-uz").arg(&mountpoint).status();
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot watch for signals ({e}); unmount with `kmsfs umount`");
    }
}
