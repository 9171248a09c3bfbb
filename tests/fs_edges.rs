//! Edges of the filesystem that a broad POSIX test suite finds, each checked against what
//! ext4 does (where the machine allows, against a plain directory beside the mount).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::mount::{is_mounted, wait_until, MountGuard, Mounted};

/// `kmsfs mount CIPHER MNT` in the background with the fixture's keystore.
fn mount_again(m: &Mounted, mnt: &Path) -> std::process::Output {
    m.env.cmd(&["mount", m.cipher().to_str().unwrap(), mnt.to_str().unwrap()]).output().unwrap()
}

/// A second mount of a mounted volume would not see the first one's changes (a rename
/// through one stays unseen through the other): it is refused with a message naming the
/// mount there. The lock is the kernel's: a daemon killed with SIGKILL leaves none behind.
#[test]
fn a_second_mount_of_a_mounted_volume_is_refused_and_a_crash_leaves_no_lock() {
    let mut m = Mounted::new();
    let second = m.env.path("second");
    fs::create_dir(&second).unwrap();
    let _guard = MountGuard::new(&second);

    let out = mount_again(&m, &second);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "second mount: {stderr}");
    assert!(stderr.contains("already mounted at") && stderr.contains(m.mnt().to_str().unwrap()), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", m.pid())), "names the daemon: {stderr}");
    assert!(!is_mounted(&second));
    fs::write(m.path("still.txt"), b"the first mount serves on").unwrap();

    m.kill_daemon();
    m.restart_after_crash();
    assert_eq!(fs::read(m.path("still.txt")).unwrap(), b"the first mount serves on");

    m.unmount();
    let out = mount_again(&m, &second);
    assert!(out.status.success(), "mount after unmount: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(second.join("still.txt")).unwrap(), b"the first mount serves on");
    assert!(Command::new("fusermount3").arg("-u").arg(&second).status().unwrap().success());
    assert!(wait_until(std::time::Duration::from_secs(3), || !is_mounted(&second)));
}
