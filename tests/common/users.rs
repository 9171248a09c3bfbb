//! Running test code as another user, the way the kernel sees a process of that user: a
//! thread of its own whose file-system ids (fsuid/fsgid, what FUSE requests carry and what
//! permission checks use) are the user's, with no supplementary groups, no file
//! capabilities (a root thread that changes its fsuid loses CAP_FSETID, CAP_DAC_OVERRIDE,
//! CAP_FOWNER and CAP_CHOWN) and its own umask (after `unshare(CLONE_FS)` the thread has its
//! own cwd and umask). Only that thread changes: the test process and its other threads
//! stay root with their umask.

use std::io;

/// nobody / nogroup.
pub const NOBODY: (u32, u32) = (65534, 65534);

/// Runs `f` as `uid`/`gid` with umask `umask` on a thread of its own and returns what it
/// returns (a panic in `f` is the caller's panic).
pub fn as_user<T: Send>(uid: u32, gid: u32, umask: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(move || {
            become_user(uid, gid, umask).unwrap_or_else(|e| panic!("cannot become uid {uid}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `f` as root with umask `umask` on a thread of its own.
pub fn as_root<T: Send>(umask: u32, f: impl FnOnce() -> T + Send) -> T {
    as_user(0, 0, umask, f)
}

fn become_user(uid: u32, gid: u32, umask: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on this thread's own credentials and fs_struct. setgroups is
    // called directly: glibc's wrapper would change every thread of the process.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::umask(umask as libc::mode_t);
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        // setfsuid returns the previous value and never fails loudly: ask again.
        if libc::setfsuid(u32::MAX) as u32 != uid || libc::setfsgid(u32::MAX) as u32 != gid {
            return Err(io::Error::other("setfsuid/setfsgid did not take"));
        }
    }
    Ok(())
}

/// A key policy: root administers the key, everyone may use it.
pub const EVERYONE_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "admin", "Effect": "Allow", "Principal": {"Uid": [0]}, "Action": "kms:*"},
    {"Sid": "everyone", "Effect": "Allow", "Principal": "*",
     "Action": ["kms:Decrypt", "kms:GenerateDataKey*"]}
  ]
}"#;

/// Lets every user reach `m` (mounted with `-o allow_other`) under Unix permissions alone:
/// the test's temporary directory becomes traversable and the volume key's policy lets
/// everyone use it.
pub fn share_with_everyone(m: &super::mount::Mounted) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(m.env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = m.env.path("policy.json");
    std::fs::write(&policy, EVERYONE_POLICY).unwrap();
    m.ok(&["policy", "put", "alias/vol", policy.to_str().unwrap()]);
}
