//! The passphrase's Argon2id in a short-lived child process, for the long-running server.
//!
//! The KDF's work area is its memory cost (64 MiB by default): computed in the daemon it
//! would stay the daemon's peak resident set for its whole life, far above what serving
//! needs. A child forked for the derivation holds that memory instead; it sends the 32-byte
//! key back over a pipe and exits, and the system takes its memory back. The passphrase and
//! the key never leave the two processes (the pipe is anonymous, the child is undumpable as
//! its parent is, and it zeroizes its copy of the key before it exits).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use zeroize::Zeroizing;

use crate::crypto::{self, KdfParams, SecretKey, KEY_LEN};

/// `crypto::derive_key`, computed in a child process when this process has one thread
/// (else in-process: a fork beside other threads could copy a lock one of them holds, such
/// as the allocator's, and the child would hang on it). If the child cannot be had (no
/// pipe, no fork, it died), the key is derived in-process after a warning: the unlock
/// matters more than where its memory is counted.
pub fn derive_key(passphrase: &[u8], salt: &[u8], params: KdfParams) -> Result<SecretKey, String> {
    if !single_threaded() {
        return crypto::derive_key(passphrase, salt, params);
    }
    params.validate()?;
    match in_child(passphrase, salt, params) {
        Ok(derived) => derived,
        Err(why) => {
            log::warn!("{why}; deriving the passphrase key in the server process");
            crypto::derive_key(passphrase, salt, params)
        }
    }
}

/// The derivation's own result, or why the child could not give one.
fn in_child(passphrase: &[u8], salt: &[u8], params: KdfParams) -> Result<Result<SecretKey, String>, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot make a pipe for the key derivation: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: both descriptors are new and owned here alone.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process has one thread (checked above), so the child starts from a
    // consistent copy of it; the child only derives, writes and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("cannot fork for the key derivation: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(read_end);
        child(passphrase, salt, params, std::fs::File::from(write_end));
    }
    drop(write_end);
    let mut answer = Zeroizing::new(Vec::with_capacity(1 + KEY_LEN));
    let read = std::fs::File::from(read_end).read_to_end(&mut answer);
    let status = wait(pid)?;
    read.map_err(|e| format!("cannot read the derived key from the child process: {e}"))?;
    match (status, answer.split_first()) {
        (0, Some((0, key))) => SecretKey::from_slice(key)
            .map(Ok)
            .ok_or_else(|| "the key derivation process sent a key of the wrong length".to_string()),
        (0, Some((1, message))) => Ok(Err(String::from_utf8_lossy(message).into_owned())),
        _ => Err(format!("the key derivation process failed (wait status {status})")),
    }
}

/// The child's whole life: derive, send `0` and the key (or `1` and the error), exit
/// without running the parent's destructors or atexit handlers.
fn child(passphrase: &[u8], salt: &[u8], params: KdfParams, mut out: std::fs::File) -> ! {
    let result = std::panic::catch_unwind(|| crypto::derive_key(passphrase, salt, params));
    let code = match result {
        Ok(Ok(key)) => {
            let mut msg = Zeroizing::new(vec![0u8]);
            msg.extend_from_slice(key.as_bytes());
            drop(key);
            i32::from(out.write_all(&msg).is_err())
        }
        Ok(Err(e)) => {
            let _ = out.write_all(&[&[1u8][..], e.as_bytes()].concat());
            0
        }
        Err(_) => 2,
    };
    drop(out);
    // SAFETY: _exit ends the child at once, which is all that is left to do.
    unsafe { libc::_exit(code) }
}

/// Waits for the child; its wait status (0: exited with 0).
fn wait(pid: libc::pid_t) -> Result<i32, String> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing its status into `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("cannot wait for the key derivation process: {e}"));
        }
    }
}

/// Whether this process has exactly one thread (Linux: /proc/self/task).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").map(|d| d.count() == 1).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_as_in_process() {
        // The test harness runs threads, so this takes the in-process path; the child path is
        // exercised by `kmsfs serve` (tests/api_server.rs checks the server's peak memory).
        let params = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
        let a = derive_key(b"pass", b"0123456789abcdef", params).unwrap();
        let b = crypto::derive_key(b"pass", b"0123456789abcdef", params).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
    }
}
