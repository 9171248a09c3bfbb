//! Mounting through mount(8), as /etc/fstab does at boot: `mount -a -T FSTAB` and
//! `mount -t fuse.kmsfs` with /sbin/mount.fuse.kmsfs installed (a symlink to this build's
//! binary, removed again by a guard), and fuse3's mount.fuse3 running `kmsfs CIPHERDIR
//! MOUNTPOINT -o OPTS`. Every mount is taken down by a guard, also when a test fails.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::mount::{is_mounted, mount_count, pattern, process_alive, wait_until, walk, MountGuard};
use common::{TestEnv, PASSPHRASE};

/// Where mount(8) looks for the helper of type `fuse.kmsfs`.
const HELPER: &str = "/sbin/mount.fuse.kmsfs";
/// Held while a test has its helper installed, so that concurrent tests (also of other
/// checkouts) never use or remove each other's.
const HELPER_LOCK: &str = "/tmp/kmsfs-mount-helper.lock";

/// /sbin/mount.fuse.kmsfs -> this build's kmsfs while it lives; puts back a symlink that was
/// there before.
struct HelperInstall {
    _lock: File,
    previous: Option<PathBuf>,
}

impl HelperInstall {
    fn new() -> Self {
        let lock = OpenOptions::new().create(true).append(true).open(HELPER_LOCK).expect("open helper lock");
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "flock {HELPER_LOCK}: {e}");
        }
        let previous = match fs::symlink_metadata(HELPER) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(HELPER).unwrap();
                fs::remove_file(HELPER).unwrap();
                Some(target)
            }
            Ok(_) => panic!("{HELPER} exists and is not a symlink; not replacing it"),
            Err(_) => None,
        };
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kmsfs"), HELPER)
            .unwrap_or_else(|e| panic!("install {HELPER} (tests run as root): {e}"));
        HelperInstall { _lock: lock, previous }
    }
}

impl Drop for HelperInstall {
    fn drop(&mut self) {
        if fs::read_link(HELPER).is_ok_and(|t| t == Path::new(env!("CARGO_BIN_EXE_kmsfs"))) {
            let _ = fs::remove_file(HELPER);
        }
        if let Some(previous) = &self.previous {
            let _ = std::os::unix::fs::symlink(previous, HELPER);
        }
    }
}

/// A keystore with key `alias/vol`, a volume under it, an empty mount point and a
/// passphrase file (0600).
struct Volume {
    env: TestEnv,
    cipher: PathBuf,
    mnt: PathBuf,
    pass_file: PathBuf,
}

impl Volume {
    fn new() -> Self {
        let env = TestEnv::new();
        let cipher = env.path("cipher");
        env.init_volume(&cipher);
        let mnt = env.path("mnt");
        fs::create_dir(&mnt).unwrap();
        let pass_file = env.path("passphrase");
        write_secret(&pass_file, &format!("{PASSPHRASE}\n"));
        // mountinfo lists canonical paths.
        let (cipher, mnt) = (fs::canonicalize(cipher).unwrap(), fs::canonicalize(mnt).unwrap());
        Volume { env, cipher, mnt, pass_file }
    }

    /// `keystore=...,passphrase_file=...` plus `extra`.
    fn options(&self, pass_file: &Path, extra: &str) -> String {
        let mut o =
            format!("keystore={},passphrase_file={}", self.env.keystore.display(), pass_file.display());
        if !extra.is_empty() {
            o = format!("{o},{extra}");
        }
        o
    }

    /// An fstab with one line for this volume.
    fn fstab(&self, options: &str) -> PathBuf {
        let path = self.env.path("fstab");
        let line = format!("{} {} fuse.kmsfs {options} 0 0", self.cipher.display(), self.mnt.display());
        fs::write(&path, format!("# written by tests/boot_mount.rs\n{line}\n")).unwrap();
        path
    }

    fn cipher(&self) -> &str {
        self.cipher.to_str().unwrap()
    }

    fn mnt(&self) -> &str {
        self.mnt.to_str().unwrap()
    }
}

fn write_secret(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs a mount tool without any kmsfs setting in its environment: everything must come
/// from the command line or the fstab line, as at boot.
fn run(program: &str, args: &[&str], guard: &mut MountGuard) -> Output {
    let out = Command::new(program)
        .args(args)
        .env_remove("KMSFS_KEYSTORE")
        .env_remove("KMSFS_PASSPHRASE")
        .env_remove("KMSFS_PASSPHRASE_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(PASSPHRASE), "the passphrase appears in the output: {stderr}");
    assert!(!stderr.contains("panicked"), "{program} {args:?}: {stderr}");
    if let Some(pid) = daemon_pid(&stderr) {
        guard.daemon_pid = Some(pid);
    }
    out
}

fn mount(args: &[&str], guard: &mut MountGuard) -> Output {
    run("mount", args, guard)
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts failure with `code` and `needle` on stderr.
fn assert_fails(out: &Output, what: &str, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: expected exit {code}; stderr: {stderr}");
    assert!(stderr.contains(needle), "{what}: stderr lacks '{needle}': {stderr}");
}

/// "kmsfs: mounted at ... (daemon pid N)"
fn daemon_pid(stderr: &str) -> Option<u32> {
    let rest = &stderr[stderr.find("(daemon pid ")? + "(daemon pid ".len()..];
    rest[..rest.find(')')?].parse().ok()
}

/// The mountinfo line of the mount at `mnt`.
fn mountinfo_line(mnt: &Path) -> String {
    let wanted = format!(" {} ", mnt.display());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(&wanted))
        .unwrap_or_else(|| panic!("{} is not in mountinfo", mnt.display()))
        .to_string()
}

/// The mount as kmsfs shows it: type fuse.kmsfs from this cipher directory, and kmsfs's own
/// options never passed on to the kernel.
fn assert_kmsfs_mount(v: &Volume) -> String {
    assert!(is_mounted(&v.mnt), "{} is not mounted", v.mnt.display());
    let line = mountinfo_line(&v.mnt);
    assert!(line.contains(&format!(" - fuse.kmsfs kmsfs:{} ", v.cipher.display())), "{line}");
    assert!(!line.contains("keystore") && !line.contains("passphrase"), "kmsfs options leaked: {line}");
    line
}

/// Writes a file through the mount, reads it back, and finds neither its name nor its
/// content in the cipher directory.
fn assert_round_trip_encrypted(v: &Volume, name: &str) {
    let mut data = pattern(7, 20_000);
    data.extend_from_slice(b"PLAINTEXT-MARKER-boot-mount");
    fs::write(v.mnt.join(name), &data).unwrap();
    assert_eq!(fs::read(v.mnt.join(name)).unwrap(), data);
    let mut backing = 0;
    walk(&v.cipher, &mut |p, m| {
        assert!(!p.to_string_lossy().contains(name), "plaintext name in the cipher dir: {}", p.display());
        if m.is_file() {
            let bytes = fs::read(p).unwrap();
            assert!(
                !bytes.windows(27).any(|w| w == b"PLAINTEXT-MARKER-boot-mount"),
                "plaintext in {}",
                p.display()
            );
            if bytes.len() > data.len() {
                backing += 1;
            }
        }
    });
    assert_eq!(backing, 1, "one backing file holds the encrypted data");
}

/// `umount MOUNTPOINT` (retried briefly: a process another test is spawning may hold a
/// descriptor into the mount until it execs), then the daemon exits.
fn umount(mnt: &Path, guard: &MountGuard) {
    let unmounted = wait_until(Duration::from_secs(3), || {
        Command::new("umount").arg(mnt).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    });
    assert!(unmounted, "umount {} failed", mnt.display());
    assert!(!is_mounted(mnt));
    if let Some(pid) = guard.daemon_pid {
        assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)), "the daemon exits after umount");
    }
}

#[test]
fn an_fstab_line_mounts_with_mount_a() {
    let _helper = HelperInstall::new();
    let v = Volume::new();
    let mut guard = MountGuard::new(&v.mnt);
    let fstab = v.fstab(&v.options(&v.pass_file, "allow_other"));
    let fstab = fstab.to_str().unwrap();

    let out = mount(&["-a", "-T", fstab], &mut guard);
    assert_ok(&out, "mount -a -T");
    assert!(guard.daemon_pid.is_some(), "the daemon runs in the background: {out:?}");
    let line = assert_kmsfs_mount(&v);
    assert!(line.contains("allow_other"), "{line}");
    assert_round_trip_encrypted(&v, "report.txt");

    // Running `mount -a` again (after editing fstab, say) leaves the volume mounted once.
    let out = mount(&["-a", "-T", fstab], &mut guard);
    assert_ok(&out, "mount -a -T, again");
    assert_eq!(mount_count(&v.mnt), 1);

    umount(&v.mnt, &guard);
}

#[test]
fn a_wrong_passphrase_file_fails_mount_a_and_mounts_nothing() {
    let _helper = HelperInstall::new();
    let v = Volume::new();
    let mut guard = MountGuard::new(&v.mnt);
    let wrong = v.env.path("wrong-passphrase");
    write_secret(&wrong, "not the passphrase\n");
    let fstab = v.fstab(&v.options(&wrong, "allow_other"));

    let out = mount(&["-a", "-T", fstab.to_str().unwrap()], &mut guard);
    assert!(!out.status.success(), "mount -a with a wrong passphrase succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong passphrase for keystore"), "{stderr}");
    assert!(stderr.contains(v.cipher()), "the message names the volume: {stderr}");
    assert!(!stderr.contains("not the passphrase"), "the passphrase tried appears: {stderr}");
    assert!(!is_mounted(&v.mnt));
    assert!(guard.daemon_pid.is_none());
}

#[test]
fn mount_t_fuse_kmsfs_takes_fstab_options_and_ro() {
    let _helper = HelperInstall::new();
    let v = Volume::new();
    let mut guard = MountGuard::new(&v.mnt);
    // What fstab lines carry besides kmsfs's own options: mount(8) drops x-* and comment=,
    // and kmsfs ignores the rest.
    let generic = "defaults,nofail,_netdev,x-systemd.requires=local-fs.target,comment=kmsfs,noatime";
    let out = mount(
        &["-t", "fuse.kmsfs", v.cipher(), v.mnt(), "-o", &v.options(&v.pass_file, generic)],
        &mut guard,
    );
    assert_ok(&out, "mount -t fuse.kmsfs");
    assert_kmsfs_mount(&v);
    fs::write(v.mnt.join("kept.txt"), b"written read-write").unwrap();
    umount(&v.mnt, &guard);

    let out =
        mount(&["-t", "fuse.kmsfs", v.cipher(), v.mnt(), "-o", &v.options(&v.pass_file, "ro")], &mut guard);
    assert_ok(&out, "mount -t fuse.kmsfs -o ro");
    let line = assert_kmsfs_mount(&v);
    assert!(line.split(' ').nth(5).is_some_and(|o| o.split(',').any(|o| o == "ro")), "{line}");
    assert_eq!(fs::read(v.mnt.join("kept.txt")).unwrap(), b"written read-write");
    let err = fs::write(v.mnt.join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    umount(&v.mnt, &guard);
}

#[test]
fn mount_errors_are_clear_and_mount_nothing() {
    let _helper = HelperInstall::new();
    let v = Volume::new();
    let mut guard = MountGuard::new(&v.mnt);
    let (cipher, mnt) = (v.cipher(), v.mnt());
    let pass = v.pass_file.to_str().unwrap();

    let missing = v.env.path("no-keystore.db");
    let opts = format!("keystore={},passphrase_file={pass}", missing.display());
    let out = mount(&["-t", "fuse.kmsfs", cipher, mnt, "-o", &opts], &mut guard);
    assert_fails(&out, "missing keystore", 32, &format!("no keystore at {}", missing.display()));

    // An unknown option is refused before the passphrase (wrong here) is even tried.
    let wrong = v.env.path("wrong-passphrase");
    write_secret(&wrong, "not the passphrase\n");
    let out = mount(&["-t", "fuse.kmsfs", cipher, mnt, "-o", &v.options(&wrong, "bogus")], &mut guard);
    assert_fails(&out, "unknown option", 1, "unknown mount option 'bogus'");

    let opts = format!("keystore={}", v.env.keystore.display());
    let out = mount(&["-t", "fuse.kmsfs", cipher, mnt, "-o", &opts], &mut guard);
    assert_fails(&out, "no passphrase", 32, "add passphrase_file=PATH");

    let out = mount(&["-t", "fuse.kmsfs", cipher, mnt, "-o", &v.options(&wrong, "")], &mut guard);
    assert_fails(&out, "wrong passphrase", 32, "wrong passphrase for keystore");

    let not_volume = v.env.path("not-a-volume");
    fs::create_dir(&not_volume).unwrap();
    let out = mount(
        &["-t", "fuse.kmsfs", not_volume.to_str().unwrap(), mnt, "-o", &v.options(&v.pass_file, "")],
        &mut guard,
    );
    assert_fails(&out, "not a volume", 32, "not a kmsfs volume");

    // -f (fake) checks everything and mounts nothing.
    let out = mount(&["-f", "-t", "fuse.kmsfs", cipher, mnt, "-o", &v.options(&v.pass_file, "")], &mut guard);
    assert_ok(&out, "mount -f");
    assert!(!is_mounted(&v.mnt));
    assert!(guard.daemon_pid.is_none(), "no daemon was started");
}

/// Without /sbin/mount.fuse.kmsfs, mount(8) runs `mount.fuse3 CIPHERDIR MOUNTPOINT -o OPTS
/// -t fuse.kmsfs`, which runs `kmsfs CIPHERDIR MOUNTPOINT -o OPTS` from mount's PATH
/// (/usr/local/bin with scripts/install.sh). Run mount.fuse3 as mount(8) would, with this
/// build's kmsfs first on the PATH, so nothing needs installing.
#[test]
fn mount_fuse3_runs_kmsfs_as_its_subtype_program() {
    let v = Volume::new();
    let mut guard = MountGuard::new(&v.mnt);
    let mount_fuse3 = ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mount.fuse3 (package fuse3) is installed");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kmsfs")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    // mount.fuse3 itself takes nofail and _netdev, and adds dev,suid unless told nodev,nosuid.
    let opts = v.options(&v.pass_file, "allow_other,nofail,_netdev,nodev,nosuid");
    let out = Command::new(mount_fuse3)
        .args([v.cipher(), v.mnt(), "-o", &opts, "-t", "fuse.kmsfs"])
        .env("PATH", path)
        .env_remove("KMSFS_KEYSTORE")
        .env_remove("KMSFS_PASSPHRASE")
        .env_remove("KMSFS_PASSPHRASE_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run mount.fuse3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    guard.daemon_pid = daemon_pid(&stderr);
    assert_ok(&out, "mount.fuse3");
    let line = assert_kmsfs_mount(&v);
    let mount_flags = line.split(' ').nth(5).unwrap();
    assert!(mount_flags.contains("nosuid") && mount_flags.contains("nodev"), "{line}");
    assert_round_trip_encrypted(&v, "via-mount-fuse3.txt");
    umount(&v.mnt, &guard);
}

/// Whether the mount at `mnt` is read-only (its per-mount flags and its superblock).
fn mounted_read_only(mnt: &Path) -> (bool, bool) {
    let line = mountinfo_line(mnt);
    let ro = |field: &str| field.split(',').any(|o| o == "ro");
    let per_mount = line.split(' ').nth(5).is_some_and(ro);
    let superblock = line.split(" - ").nth(1).and_then(|rest| rest.split(' ').nth(2)).is_some_and(ro);
    (per_mount, superblock)
}

/// `mount -o remount,ro MOUNTPOINT` and back, as for ext4: mount(8) runs the helper with the
/// mount's options and `remount`; refused (busy) while a file is open for writing; then reads
/// go on and writes answer EROFS; after `remount,rw` a file kept open (read-only) across both
/// remounts is opened for writing and written, and the per-mount flags stay as they were.
#[test]
fn mount_o_remount_ro_and_rw_through_the_helper() {
    let _helper = HelperInstall::new();
    let v = Volume::new();
    let mut guard = MountGuard::new(&v.mnt);
    let out = mount(
        &["-t", "fuse.kmsfs", v.cipher(), v.mnt(), "-o", &v.options(&v.pass_file, "nodev")],
        &mut guard,
    );
    assert_ok(&out, "mount -t fuse.kmsfs");
    fs::write(v.mnt.join("before.txt"), b"written before").unwrap();

    let writer = OpenOptions::new().write(true).open(v.mnt.join("before.txt")).unwrap();
    let out = mount(&["-o", "remount,ro", v.mnt()], &mut guard);
    assert_fails(&out, "remount,ro with a file open for writing", 32, "busy");
    assert_eq!(mounted_read_only(&v.mnt), (false, false));
    drop(writer);

    let kept = File::open(v.mnt.join("before.txt")).unwrap();
    let out = mount(&["-o", "remount,ro", v.mnt()], &mut guard);
    assert_ok(&out, "mount -o remount,ro");
    assert_eq!(mounted_read_only(&v.mnt), (true, true), "{}", mountinfo_line(&v.mnt));
    assert!(mountinfo_line(&v.mnt).split(' ').nth(5).unwrap().contains("nodev"), "flags kept");
    assert_eq!(fs::read(v.mnt.join("before.txt")).unwrap(), b"written before");
    for (what, err) in [
        ("create", fs::write(v.mnt.join("new.txt"), b"x").unwrap_err()),
        ("mkdir", fs::create_dir(v.mnt.join("dir")).unwrap_err()),
        ("unlink", fs::remove_file(v.mnt.join("before.txt")).unwrap_err()),
        ("open for writing", OpenOptions::new().write(true).open(v.mnt.join("before.txt")).unwrap_err()),
    ] {
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    }

    let out = mount(&["-o", "remount,rw", v.mnt()], &mut guard);
    assert_ok(&out, "mount -o remount,rw");
    assert_eq!(mounted_read_only(&v.mnt), (false, false), "{}", mountinfo_line(&v.mnt));
    fs::write(v.mnt.join("after.txt"), b"written after").unwrap();
    let writer = OpenOptions::new().write(true).open(v.mnt.join("before.txt")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&writer, b"WRITTEN", 0).unwrap();
    drop((writer, kept));
    assert_eq!(fs::read(v.mnt.join("before.txt")).unwrap(), b"WRITTEN before");
    assert_eq!(fs::read(v.mnt.join("after.txt")).unwrap(), b"written after");

    // Remounting something that is not a kmsfs mount is refused, and changes nothing.
    let other = v.env.path("not-mounted");
    fs::create_dir(&other).unwrap();
    let out = Command::new(HELPER)
        .args(["kmsfs:/x", other.to_str().unwrap(), "-o", "remount,ro"])
        .output()
        .unwrap();
    assert_fails(&out, "helper remount of a plain directory", 32, "not a mounted kmsfs volume");
    umount(&v.mnt, &guard);
}

/// A volume mounted `ro` and remounted read-write takes writes: the daemon, started
/// read-only, follows the mount.
#[test]
fn a_volume_mounted_ro_is_writable_after_remount_rw() {
    let _helper = HelperInstall::new();
    let v = Volume::new();
    let mut guard = MountGuard::new(&v.mnt);
    let out =
        mount(&["-t", "fuse.kmsfs", v.cipher(), v.mnt(), "-o", &v.options(&v.pass_file, "ro")], &mut guard);
    assert_ok(&out, "mount -o ro");
    let err = fs::write(v.mnt.join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    let out = mount(&["-o", "remount,rw", v.mnt()], &mut guard);
    assert_ok(&out, "mount -o remount,rw");
    fs::write(v.mnt.join("new.txt"), b"written after remount").unwrap();
    fs::create_dir(v.mnt.join("dir")).unwrap();
    fs::rename(v.mnt.join("new.txt"), v.mnt.join("dir/moved.txt")).unwrap();
    assert_eq!(fs::read(v.mnt.join("dir/moved.txt")).unwrap(), b"written after remount");
    umount(&v.mnt, &guard);
}
