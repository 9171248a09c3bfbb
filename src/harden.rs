//! Process-level protection of the key material a kmsfs process holds: no core dumps and no
//! inspection by other users (non-dumpable), and memory kept out of swap (mlockall).
//! Passphrases leave the environment in `cli::passphrase::take_from_environment`.
//!
//! A leaf module like `crypto`: plain syscalls, no knowledge of keys or volumes.

/// Makes this process non-dumpable and sets its core-size limit to 0.
///
/// Non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`) means: no core dump is written on a crash (with
/// the default `fs.suid_dumpable = 0`), only a process with CAP_SYS_PTRACE may ptrace it or
/// read `/proc/PID/{mem,environ,maps}`, and the kernel makes root the owner of the files in
/// `/proc/PID/` (except the directory itself). The flag survives `fork` (so the mount daemon
/// has it) and is reset by `execve` (so fusermount3 and other children are unaffected). The
/// process itself keeps full access to its own `/proc/self`, which the deep-path code uses.
///
/// Called first thing in `main`, before a passphrase is read or a key unwrapped.
pub fn make_undumpable() {
    // SAFETY: plain syscalls with constant arguments and a local struct.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_CORE, &mut limit) == 0 {
            limit.rlim_cur = 0;
            libc::setrlimit(libc::RLIMIT_CORE, &limit);
        }
    }
}

/// CAP_IPC_LOCK, the capability that lifts RLIMIT_MEMLOCK.
const CAP_IPC_LOCK: u32 = 14;

/// Locks the process's memory so that no page holding a key (root key, master-key versions,
/// names keys, the data keys of open files, their expanded AES round keys) is written to swap:
/// `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`.
///
/// `MCL_ONFAULT` locks pages when they are first touched instead of populating every mapping
/// at once, so thread stacks, reserved malloc arenas and unused parts of the binary do not
/// become resident: the resident set stays what it would be without locking.
///
/// Done only when the limit cannot bite: with CAP_IPC_LOCK (root) or an unlimited
/// RLIMIT_MEMLOCK. With a finite limit, `MCL_FUTURE` makes every later mapping that would
/// exceed it fail (the limit counts mapped, not resident, bytes: a malloc arena alone reserves
/// 64 MiB), so a daemon could start and then fail allocations mid-request. Then nothing is
/// locked and the reason is returned, for a warning; this is never an error.
pub fn lock_memory() -> Result<(), String> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    let unlimited = limit.rlim_cur == libc::RLIM_INFINITY;
    if !unlimited && !has_capability(CAP_IPC_LOCK) {
        return Err(format!(
            "memory not locked: RLIMIT_MEMLOCK is {} KiB and the process lacks CAP_IPC_LOCK, so keys \
             could be written to swap (raise the limit: `ulimit -l unlimited`, or LimitMEMLOCK=infinity \
             in a systemd unit; or mount as root)",
            limit.rlim_cur / 1024
        ));
    }
    // SAFETY: plain syscall with constant flags.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("memory not locked: mlockall failed ({e}); keys could be written to swap"));
    }
    Ok(())
}

/// Whether capability `cap` is in this process's effective set (`CapEff` in /proc/self/status).
fn has_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << cap) != 0)
}
