//! Tampering, key states, auditing and the mount's life cycle, against real mounts.

mod common;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mount::{
    errno, is_mounted, mount_count, pattern, process_alive, wait_until, MountGuard, Mounted,
};
use common::TestEnv;

const HEADER: usize = 288;
const CIPHER_BLOCK: usize = 4096 + 28;
const ENOKEY: i32 = 126;

/// Opens `path` afresh, drops its cached pages, and reads `len` bytes at `off`.
fn fresh_read(path: &Path, off: u64, len: usize) -> Result<Vec<u8>, i32> {
    let f = File::open(path).map_err(|e| errno(&e))?;
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(errno(&e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn fresh_read_all(path: &Path) -> Result<Vec<u8>, i32> {
    fresh_read(path, 0, 1 << 24)
}

/// Rewrites a backing file in place (same inode).
fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    let len = bytes.len();
    f(&mut bytes);
    assert_eq!(bytes.len(), len, "edit keeps the length");
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&bytes, 0).unwrap();
    file.sync_all().unwrap();
}

/// The daemon logged a warning that names `label` (a path on the mount).
fn assert_warned(m: &Mounted, label: &str) {
    let found = wait_until(Duration::from_secs(5), || {
        m.log_text().lines().any(|l| l.contains("WARN") && l.contains(label) && l.contains("EIO"))
    });
    assert!(found, "no warning about {label} in the daemon log:\n{}", m.log_text());
}

#[test]
fn a_flipped_bit_in_a_data_block_reads_as_eio() {
    let m = Mounted::new();
    let data = pattern(1, 3 * 4096 + 500);
    fs::write(m.path("flip.bin"), &data).unwrap();
    fs::write(m.path("control.bin"), &data).unwrap();
    edit(&m.backing_of(&m.path("flip.bin")), |b| b[HEADER + CIPHER_BLOCK + 100] ^= 0x01);
    assert_eq!(fresh_read(&m.path("flip.bin"), 4096, 4096), Err(libc::EIO), "the damaged block");
    assert_eq!(fresh_read_all(&m.path("flip.bin")), Err(libc::EIO), "the whole file");
    assert_eq!(fresh_read(&m.path("flip.bin"), 8192, 100).unwrap(), data[8192..8292], "other blocks read");
    assert_eq!(fresh_read_all(&m.path("control.bin")).unwrap(), data);
    assert_warned(&m, "/flip.bin");
}

#[test]
fn two_swapped_blocks_read_as_eio() {
    let m = Mounted::new();
    let data = pattern(2, 4 * 4096 + 10);
    fs::write(m.path("swap.bin"), &data).unwrap();
    edit(&m.backing_of(&m.path("swap.bin")), |b| {
        let (b0, b2) = (HEADER, HEADER + 2 * CIPHER_BLOCK);
        let first = b[b0..b0 + CIPHER_BLOCK].to_vec();
        b.copy_within(b2..b2 + CIPHER_BLOCK, b0);
        b[b2..b2 + CIPHER_BLOCK].copy_from_slice(&first);
    });
    assert_eq!(fresh_read(&m.path("swap.bin"), 0, 4096), Err(libc::EIO));
    assert_eq!(fresh_read(&m.path("swap.bin"), 2 * 4096, 4096), Err(libc::EIO));
    assert_eq!(fresh_read_all(&m.path("swap.bin")), Err(libc::EIO));
    assert_eq!(fresh_read(&m.path("swap.bin"), 4096, 4096).unwrap(), data[4096..8192]);
    assert_warned(&m, "/swap.bin");
}

#[test]
fn swapped_headers_of_two_files_read_as_eio() {
    let mut m = Mounted::new();
    let (a, b) = (pattern(3, 2 * 4096), pattern(4, 2 * 4096));
    fs::write(m.path("hdr_a.bin"), &a).unwrap();
    fs::write(m.path("hdr_b.bin"), &b).unwrap();
    let (ba, bb) = (m.backing_of(&m.path("hdr_a.bin")), m.backing_of(&m.path("hdr_b.bin")));
    // Unmounted, so the daemon holds no cached data key for either file.
    m.unmount();
    let (ha, hb) = (fs::read(&ba).unwrap()[..HEADER].to_vec(), fs::read(&bb).unwrap()[..HEADER].to_vec());
    edit(&ba, |bytes| bytes[..HEADER].copy_from_slice(&hb));
    edit(&bb, |bytes| bytes[..HEADER].copy_from_slice(&ha));
    m.start();
    assert_eq!(fresh_read_all(&m.path("hdr_a.bin")), Err(libc::EIO));
    assert_eq!(fresh_read_all(&m.path("hdr_b.bin")), Err(libc::EIO));
    assert_eq!(fresh_read(&m.path("hdr_a.bin"), 0, 10), Err(libc::EIO));
    assert_warned(&m, "/hdr_a.bin");
    assert_warned(&m, "/hdr_b.bin");
}

#[test]
fn truncation_at_a_block_boundary_reads_as_eio() {
    let m = Mounted::new();
    let data = pattern(5, 4 * 4096 + 1000);
    fs::write(m.path("trunc.bin"), &data).unwrap();
    let backing = m.backing_of(&m.path("trunc.bin"));
    assert_eq!(fs::metadata(&backing).unwrap().len() as usize, HEADER + 4 * CIPHER_BLOCK + 1000 + 28);
    // Two whole blocks remain: a well-formed length for a file of 8192 bytes.
    OpenOptions::new()
        .write(true)
        .open(&backing)
        .unwrap()
        .set_len((HEADER + 2 * CIPHER_BLOCK) as u64)
        .unwrap();
    assert_eq!(fresh_read_all(&m.path("trunc.bin")), Err(libc::EIO));
    assert_eq!(fresh_read(&m.path("trunc.bin"), 4096, 4096), Err(libc::EIO), "the new last block");
    assert_warned(&m, "/trunc.bin");

    // Cuts inside a block, and a torn tail shorter than a block's overhead.
    for (name, cut) in [("mid.bin", 100), ("torn.bin", 1000 + 28 - 10)] {
        fs::write(m.path(name), &data).unwrap();
        let backing = m.backing_of(&m.path(name));
        let len = fs::metadata(&backing).unwrap().len();
        OpenOptions::new().write(true).open(&backing).unwrap().set_len(len - cut).unwrap();
        assert_eq!(fresh_read_all(&m.path(name)), Err(libc::EIO), "{name}");
        assert_warned(&m, &format!("/{name}"));
    }
}

#[test]
fn truncation_to_the_bare_header_reads_as_eio() {
    // k = 0 of "288 + k * 4124": every block is cut away, the header is intact.
    let m = Mounted::new();
    fs::write(m.path("emptied.bin"), pattern(6, 3 * 4096)).unwrap();
    let backing = m.backing_of(&m.path("emptied.bin"));
    OpenOptions::new().write(true).open(&backing).unwrap().set_len(HEADER as u64).unwrap();
    assert_eq!(
        fresh_read_all(&m.path("emptied.bin")),
        Err(libc::EIO),
        "a file whose blocks were all cut off must not read as a valid empty file"
    );
    assert_warned(&m, "/emptied.bin");
}

fn open_errno(path: &Path) -> i32 {
    match File::open(path) {
        Ok(_) => 0,
        Err(e) => errno(&e),
    }
}

fn create_errno(path: &Path) -> i32 {
    match File::create(path) {
        Ok(_) => 0,
        Err(e) => errno(&e),
    }
}

#[test]
fn a_disabled_key_refuses_opens_and_creates_until_enabled() {
    let m = Mounted::new();
    fs::write(m.path("existing.txt"), b"secret").unwrap();
    fs::write(m.path("held.txt"), b"held").unwrap();
    // An open handle keeps the data key in the daemon; a second open must still be checked.
    let held = File::open(m.path("held.txt")).unwrap();
    let backing_files = m.backing_files().len();

    m.ok(&["key", "disable", "alias/vol"]);
    assert_eq!(open_errno(&m.path("existing.txt")), ENOKEY, "open of an existing file");
    assert_eq!(open_errno(&m.path("held.txt")), ENOKEY, "open of a file another handle holds open");
    assert_eq!(create_errno(&m.path("new.txt")), ENOKEY, "create");
    assert!(fs::symlink_metadata(m.path("new.txt")).is_err(), "a refused create leaves no file");
    assert_eq!(m.backing_files().len(), backing_files, "nor a backing file");
    // Metadata needs no key, nor does reading which key protects a file.
    assert_eq!(fs::metadata(m.path("existing.txt")).unwrap().len(), 6);
    let info = m.json(&["file", "info", m.path("existing.txt").to_str().unwrap()]);
    assert_eq!(info["KeyId"], m.key_id.as_str());

    m.ok(&["key", "enable", "alias/vol"]);
    assert_eq!(fs::read(m.path("existing.txt")).unwrap(), b"secret");
    assert_eq!(fs::read(m.path("held.txt")).unwrap(), b"held");
    fs::write(m.path("new.txt"), b"created").unwrap();
    assert_eq!(fs::read(m.path("new.txt")).unwrap(), b"created");
    drop(held);
}

#[test]
fn a_key_pending_deletion_refuses_opens_and_creates() {
    let m = Mounted::new();
    fs::write(m.path("doomed.txt"), b"doomed").unwrap();
    m.ok(&["key", "schedule-deletion", "alias/vol", "--pending-window-days", "7"]);
    assert_eq!(open_errno(&m.path("doomed.txt")), ENOKEY);
    assert_eq!(create_errno(&m.path("other.txt")), ENOKEY);
    m.ok(&["key", "cancel-deletion", "alias/vol"]);
    // Cancelled deletion leaves the key Disabled.
    assert_eq!(open_errno(&m.path("doomed.txt")), ENOKEY);
    m.ok(&["key", "enable", "alias/vol"]);
    assert_eq!(fs::read(m.path("doomed.txt")).unwrap(), b"doomed");
    assert_eq!(create_errno(&m.path("other.txt")), 0);
}

#[test]
fn a_destroyed_key_makes_files_unreadable_for_good() {
    let m = Mounted::new();
    fs::write(m.path("gone.txt"), b"gone").unwrap();
    let sealed: Vec<u8> = rusqlite::Connection::open(&m.env.keystore)
        .unwrap()
        .query_row("SELECT material FROM key_versions WHERE key_id = ?1", [&m.key_id], |r| r.get(0))
        .unwrap();
    m.ok(&["key", "schedule-deletion", "alias/vol", "--pending-window-days", "7"]);
    // Eight days later the key material is destroyed.
    let out = m.env.cmd_at(691_200, &["key", "purge-expired"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(m.json(&["key", "describe", &m.key_id])["KeyState"], "Destroyed");
    // Gone from the keystore's bytes too, while the mount keeps its connections open.
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", m.env.keystore.display());
        let bytes = fs::read(&file).unwrap_or_default();
        assert!(
            !sealed.windows(8).any(|piece| bytes.windows(8).any(|w| w == piece)),
            "{file} still holds bytes of the destroyed material"
        );
    }
    assert_eq!(open_errno(&m.path("gone.txt")), ENOKEY);
    assert_eq!(create_errno(&m.path("new.txt")), ENOKEY);
    // Which key it was is still visible; the size too.
    assert_eq!(fs::metadata(m.path("gone.txt")).unwrap().len(), 4);
    let info = m.json(&["file", "info", m.path("gone.txt").to_str().unwrap()]);
    assert_eq!(info["KeyId"], m.key_id.as_str());
}

/// Audit events of `operation` on `path` with `outcome`.
fn events(trail: &serde_json::Value, operation: &str, path: &str, outcome: &str) -> Vec<serde_json::Value> {
    trail
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Operation"] == operation && e["Path"] == path && e["Outcome"] == outcome)
        .cloned()
        .collect()
}

#[test]
fn file_creates_and_opens_are_audited_with_their_paths() {
    let mut m = Mounted::new();
    fs::create_dir(m.path("docs")).unwrap();
    fs::write(m.path("docs/report.txt"), b"q3 numbers").unwrap();
    // After a remount the daemon has no data key cached: the next open unwraps it.
    m.remount();
    for _ in 0..3 {
        assert_eq!(fs::read(m.path("docs/report.txt")).unwrap(), b"q3 numbers");
    }
    m.ok(&["key", "disable", "alias/vol"]);
    assert_eq!(open_errno(&m.path("docs/report.txt")), ENOKEY);
    assert_eq!(create_errno(&m.path("docs/refused.txt")), ENOKEY);
    m.ok(&["key", "enable", "alias/vol"]);

    let path = "/docs/report.txt";
    let mut trail = serde_json::Value::Null;
    let complete = wait_until(Duration::from_secs(5), || {
        trail = m.json(&["audit"]);
        !events(&trail, "GenerateDataKey", path, "Success").is_empty()
            && !events(&trail, "Decrypt", path, "Success").is_empty()
            && !events(&trail, "Decrypt", path, "Denied").is_empty()
            // Names are encrypted under the directory's key: with it disabled, the lookup
            // before the create is already refused, on the directory.
            && (!events(&trail, "GenerateDataKey", "/docs/refused.txt", "Denied").is_empty()
                || !events(&trail, "Decrypt", "/docs", "Denied").is_empty())
    });
    assert!(complete, "missing file events in the audit trail:\n{trail:#}");
    assert_eq!(events(&trail, "GenerateDataKey", path, "Success").len(), 1, "one create");
    assert_eq!(events(&trail, "Decrypt", path, "Success").len(), 3, "one Decrypt per open:\n{trail:#}");
    let created = &events(&trail, "GenerateDataKey", path, "Success")[0];
    assert_eq!(created["KeyId"], m.key_id.as_str());
    assert_eq!(created["Uid"], unsafe { libc::getuid() });
    assert!(created["Context"].as_str().unwrap().contains("kmsfs:file"), "{created}");
    let opened = &events(&trail, "Decrypt", path, "Success")[0];
    assert_eq!(opened["KeyId"], m.key_id.as_str());
    assert_eq!(opened["Context"], created["Context"], "the open unwraps the key the create made");
    let denied = &events(&trail, "Decrypt", path, "Denied")[0];
    assert!(denied["Reason"].as_str().unwrap().contains("disabled"), "{denied}");
    // Filtering by key finds them too, and the chain is intact.
    let by_key = m.json(&["audit", "--key", "alias/vol", "--operation", "GenerateDataKey"]);
    assert!(!events(&by_key, "GenerateDataKey", path, "Success").is_empty());
    assert!(m.ok(&["audit", "verify"]).contains("intact"));
}

#[test]
fn sigterm_sigint_and_sighup_unmount_cleanly_and_exit_zero() {
    let mut m = Mounted::new();
    fs::write(m.path("kept.txt"), b"kept").unwrap();
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        m.signal(sig);
        let status = m
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("daemon still running 5 s after signal {sig}:\n{}", m.log_text()));
        assert!(status.success(), "exit status after signal {sig}: {status}\n{}", m.log_text());
        assert!(!m.is_mounted(), "mount point still mounted after signal {sig}");
        m.start();
        assert_eq!(fs::read(m.path("kept.txt")).unwrap(), b"kept");
    }
}

#[test]
fn sigterm_while_a_file_is_open_unmounts_lazily_then_exits_zero() {
    let mut m = Mounted::new();
    fs::write(m.path("open.txt"), b"still here").unwrap();
    let f = File::open(m.path("open.txt")).unwrap();
    m.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || !m.is_mounted()),
        "a busy mount is detached on SIGTERM:\n{}",
        m.log_text()
    );
    let mut buf = [0u8; 64];
    let n = f.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"still here", "an open file keeps working after a lazy unmount");
    drop(f);
    let status = m
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("daemon still running after the last file closed:\n{}", m.log_text()));
    assert!(status.success(), "{status}\n{}", m.log_text());
}

#[test]
fn background_mount_returns_when_ready_and_kmsfs_umount_unmounts() {
    let mut m = Mounted::new();
    fs::write(m.path("before.txt"), b"from the foreground mount").unwrap();
    m.unmount();
    let (cipher, mnt) = (m.cipher().to_str().unwrap().to_string(), m.mnt().to_str().unwrap().to_string());
    let mut guard = MountGuard::new(m.mnt());
    let out = m.kmsfs(&["mount", &cipher, &mnt]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "background mount failed: {stderr}");
    let pid: u32 = stderr
        .split("daemon pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {stderr:?}"));
    guard.daemon_pid = Some(pid);
    assert!(is_mounted(m.mnt()), "the mount is ready when `kmsfs mount` returns");
    assert!(process_alive(pid));
    assert_eq!(fs::read(m.path("before.txt")).unwrap(), b"from the foreground mount");
    fs::write(m.path("after.txt"), b"from the background mount").unwrap();

    // Busy: refused with a hint, and still mounted.
    let open = File::open(m.path("after.txt")).unwrap();
    let out = m.kmsfs(&["umount", &mnt]);
    assert!(!out.status.success(), "umount of a busy mount point");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot unmount"), "{out:?}");
    assert!(is_mounted(m.mnt()));
    drop(open);
    let out = m.kmsfs(&["umount", &mnt]);
    assert!(out.status.success(), "kmsfs umount: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!is_mounted(m.mnt()));
    assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)), "the daemon exits after umount");
    let out = m.kmsfs(&["umount", &mnt]);
    assert!(!out.status.success(), "umount of a mount point with nothing mounted fails");
    drop(guard);

    m.start();
    assert_eq!(fs::read(m.path("after.txt")).unwrap(), b"from the background mount");
}

/// Runs a `kmsfs` command that must fail with `needle` in its message (and `code`, if given).
fn fails(env: &TestEnv, args: &[&str], pass: Option<&str>, needle: &str, code: Option<i32>) {
    let mut cmd = env.cmd(args);
    if let Some(p) = pass {
        cmd.env("KMSFS_PASSPHRASE", p);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    if let Some(code) = code {
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    }
    assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn mount_errors_are_clear_and_leave_nothing_mounted() {
    let mut m = Mounted::new();
    let (cipher, mnt) = (m.cipher().to_str().unwrap().to_string(), m.mnt().to_str().unwrap().to_string());

    // Already mounted: refused, and still exactly one mount there.
    let _guard = MountGuard::new(m.mnt());
    fails(&m.env, &["mount", &cipher, &mnt], None, "already a mount point", None);
    fails(&m.env, &["mount", "-f", &cipher, &mnt], None, "already a mount point", None);
    assert_eq!(mount_count(m.mnt()), 1);
    m.unmount();

    let other_mnt = m.env.path("other-mnt");
    fs::create_dir(&other_mnt).unwrap();
    let _other_guard = MountGuard::new(&other_mnt);
    let other = other_mnt.to_str().unwrap();
    let not_volume = m.env.path("not-a-volume");
    fs::create_dir(&not_volume).unwrap();
    fails(&m.env, &["mount", not_volume.to_str().unwrap(), other], None, "not a kmsfs volume", Some(5));
    let missing = m.env.path("missing-mnt");
    fails(&m.env, &["mount", &cipher, missing.to_str().unwrap()], None, "mount point", None);
    assert!(!missing.exists());
    fails(&m.env, &["mount", &cipher, other], Some("wrong passphrase!"), "wrong passphrase", Some(3));
    fails(&m.env, &["mount", &cipher, other, "-o", "bogus"], None, "unknown mount option 'bogus'", None);
    let inside = m.cipher().join("inside");
    fs::create_dir(&inside).unwrap();
    fails(&m.env, &["mount", &cipher, inside.to_str().unwrap()], None, "inside the cipher directory", None);
    fs::remove_dir(&inside).unwrap();
    let stranger = TestEnv::new();
    let other_keystore = stranger.keystore.to_str().unwrap();
    fails(
        &m.env,
        &["--keystore", other_keystore, "mount", &cipher, other],
        None,
        "belongs to keystore",
        None,
    );
    let file_mnt = m.env.path("file-mnt");
    fs::write(&file_mnt, b"").unwrap();
    fails(&m.env, &["mount", &cipher, file_mnt.to_str().unwrap()], None, "not a directory", None);
    for p in [m.mnt(), other_mnt.as_path(), not_volume.as_path(), file_mnt.as_path()] {
        assert!(!is_mounted(p), "{} is mounted after a refused mount", p.display());
    }
    // After all that, the volume still mounts.
    m.start();
    fs::write(m.path("ok.txt"), b"ok").unwrap();
}

#[test]
fn allow_other_admits_other_users_under_unix_permissions() {
    const NOBODY: u32 = 65534;
    let as_nobody =
        |args: &[&str]| Command::new(args[0]).args(&args[1..]).uid(NOBODY).gid(NOBODY).output().unwrap();
    let open_up = |m: &Mounted| {
        // The temp dir is 0700; other users need to reach the mount point.
        fs::set_permissions(m.env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    };

    let m = Mounted::new();
    open_up(&m);
    fs::write(m.path("public.txt"), b"public").unwrap();
    let out = as_nobody(&["cat", m.path("public.txt").to_str().unwrap()]);
    assert!(!out.status.success(), "without allow_other another user is refused");
    drop(m);

    let m = Mounted::with_options(&["allow_other"]);
    open_up(&m);
    // The key's default policy admits only its creator (the dual permission model); let
    // every user use it, so that Unix permissions are what this test looks at.
    let policy = m.env.path("open-policy.json");
    fs::write(&policy, r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}]}"#)
        .unwrap();
    m.ok(&["policy", "put", "alias/vol", policy.to_str().unwrap()]);
    fs::write(m.path("public.txt"), b"public").unwrap();
    fs::write(m.path("private.txt"), b"private").unwrap();
    fs::set_permissions(m.path("private.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_nobody(&["cat", m.path("public.txt").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"public");
    let out = as_nobody(&["cat", m.path("private.txt").to_str().unwrap()]);
    assert!(!out.status.success(), "default_permissions: mode 0600 keeps others out");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody(&["touch", m.path("root-owned-dir-file").to_str().unwrap()]);
    assert!(!out.status.success(), "the root directory is not writable by others");
    // In a world-writable directory, another user's new file belongs to that user.
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    let theirs = m.path("shared/theirs.txt");
    let out = as_nobody(&["sh", "-c", &format!("echo mine > '{}'", theirs.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta = fs::metadata(&theirs).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
    assert_eq!(fs::read(&theirs).unwrap(), b"mine\n");
    let backing = fs::metadata(m.backing_of(&theirs)).unwrap();
    assert_eq!(backing.uid(), NOBODY, "the backing file belongs to the creator too");
}

/// Metadata of `path` that a followed chmod, chown or utimes would change.
fn owner_mode_mtime(path: &Path) -> (u32, u32, u32, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime(), m.mtime_nsec())
}

fn set_times(path: &Path, secs: i64) -> i32 {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let t = libc::timespec { tv_sec: secs, tv_nsec: 0 };
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) };
    if rc == 0 {
        0
    } else {
        common::mount::last_errno()
    }
}

#[test]
fn setattr_never_follows_a_symlink_planted_in_the_cipher_directory() {
    // A writer of the cipher directory (a user whose backing directory the root daemon
    // chowned to them) replaces a backing file with a symlink to a file outside. The root
    // daemon must not chmod, chown or touch that file when the plaintext file is changed.
    let m = Mounted::new();
    let outside = m.env.path("outside.txt");
    fs::write(&outside, b"not in the volume").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
    let before = owner_mode_mtime(&outside);
    // Sixteen files, each with a symlink beside its backing file to swap it with.
    let names: Vec<String> = (0..16).map(|i| format!("victim{i}.txt")).collect();
    let mut pairs = Vec::new();
    for name in &names {
        fs::write(m.path(name), b"inside").unwrap();
        let backing = m.backing_of(&m.path(name));
        let link = backing.with_file_name(format!("{}-link", backing.file_name().unwrap().to_str().unwrap()));
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        pairs.push((backing, link));
    }
    let exchange = |a: &Path, b: &Path| {
        let (a, b) = (
            std::ffi::CString::new(a.to_str().unwrap()).unwrap(),
            std::ffi::CString::new(b.to_str().unwrap()).unwrap(),
        );
        let rc = unsafe {
            libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
        };
        assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
    };

    // Replaced while the mount is idle: whatever the answers, the outside file is untouched.
    let (backing, link) = &pairs[0];
    exchange(backing, link);
    assert!(fs::symlink_metadata(backing).unwrap().file_type().is_symlink());
    let _ = fs::set_permissions(m.path(&names[0]), fs::Permissions::from_mode(0o777));
    let _ = std::os::unix::fs::chown(m.path(&names[0]), Some(65534), Some(65534));
    let _ = set_times(&m.path(&names[0]), 1_000_000);
    assert_eq!(owner_mode_mtime(&outside), before, "chmod/chown/utimes went through the symlink");
    exchange(backing, link);

    // The symlink put in place for an instant, again and again, while chmod runs: now and
    // then the daemon's stat sees the file and its chmod the link. A chmod by path follows the
    // link in that window (this caught the old code in 4 runs of 4). Short pulses, because a
    // stat that sees the link is answered with a symlink's attributes, which the kernel takes
    // as a changed inode, and several files for the same reason: such a name is unusable until
    // its entry times out.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, pairs) = (stop.clone(), pairs.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64; // rounds of link-in, link-out over every file
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (backing, link) in &pairs {
                    exchange(backing, link);
                    exchange(backing, link);
                }
                swaps += 1;
            }
            swaps
        })
    };
    let started = std::time::Instant::now();
    let (mut chmods, mut succeeded) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(3) {
        let mode = if chmods % 2 == 0 { 0o640 } else { 0o644 };
        let name = &names[chmods as usize % names.len()];
        if fs::set_permissions(m.path(name), fs::Permissions::from_mode(mode)).is_ok() {
            succeeded += 1;
        }
        chmods += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert_eq!(
        owner_mode_mtime(&outside),
        before,
        "a chmod through the mount changed the file outside ({chmods} chmods, {succeeded} succeeded, \
         {swaps} swaps)"
    );
    for (backing, link) in &pairs {
        assert!(fs::symlink_metadata(backing).unwrap().is_file());
        fs::remove_file(link).unwrap();
    }
    // The volume still works, and the file's own mode can be set (once the kernel's entry
    // for a name it saw change type has timed out).
    assert!(wait_until(kmsfs::fs::TTL + Duration::from_secs(5), || {
        fs::set_permissions(m.path(&names[0]), fs::Permissions::from_mode(0o604)).is_ok()
    }));
    assert_eq!(fs::metadata(m.path(&names[0])).unwrap().mode() & 0o777, 0o604);
    assert_eq!(fs::read(m.path(&names[0])).unwrap(), b"inside");
}

/// A backing file emptied by someone who can write the cipher directory is given a fresh
/// header only by an open for writing, and never through a second hard link: a read-only
/// open, or a link to another file of the attacker's choosing, writes nothing.
#[test]
fn an_empty_backing_file_gets_a_header_only_from_an_open_for_writing_with_one_link() {
    let mut m = Mounted::new();
    fs::write(m.path("emptied.txt"), b"x").unwrap();
    fs::write(m.path("linked.txt"), b"y").unwrap();
    let emptied = m.backing_of(&m.path("emptied.txt"));
    let linked = m.backing_of(&m.path("linked.txt"));
    m.unmount();
    OpenOptions::new().write(true).open(&emptied).unwrap().set_len(0).unwrap();
    OpenOptions::new().write(true).open(&linked).unwrap().set_len(0).unwrap();
    // A second name for linked.txt's inode, outside the volume, as an attacker's target.
    let outside = m.env.path("victim");
    fs::hard_link(&linked, &outside).unwrap();
    m.start();

    assert_eq!(open_errno(&m.path("emptied.txt")), libc::EIO, "a read-only open does not repair");
    assert_eq!(fs::metadata(&emptied).unwrap().len(), 0, "and writes nothing");
    let w = OpenOptions::new().write(true).open(m.path("linked.txt")).map_err(|e| e.raw_os_error());
    assert_eq!(w.err(), Some(Some(libc::EIO)), "a file with two links is not repaired");
    assert_eq!(fs::metadata(&outside).unwrap().len(), 0, "nothing written through the link");

    fs::write(m.path("emptied.txt"), b"rewritten").unwrap();
    assert_eq!(fs::read(m.path("emptied.txt")).unwrap(), b"rewritten", "an open for writing repairs");
}

/// Directory metadata and long-name sidecars replaced, by someone who can write the cipher
/// directory, with a FIFO, a symlink to /dev/zero or an oversized file: the mount neither
/// blocks nor reads without end. That directory answers EIO (logged), the rest keeps serving.
#[test]
fn a_fifo_or_dev_zero_in_place_of_directory_metadata_or_a_sidecar_does_not_hang_the_mount() {
    let mut m = Mounted::new();
    for d in ["fifo", "zero", "big", "fine"] {
        fs::create_dir(m.path(d)).unwrap();
        fs::write(m.path(&format!("{d}/f.txt")), b"data").unwrap();
    }
    let long = "l".repeat(200);
    fs::write(m.path(&format!("fine/{long}")), b"long").unwrap();
    let dirs: Vec<_> = ["fifo", "zero", "big", "fine"].iter().map(|d| m.backing_of(&m.path(d))).collect();
    m.unmount();
    let mkfifo = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    for name in ["kmsfs.dir", "kmsfs.dir.bak"] {
        fs::remove_file(dirs[0].join(name)).unwrap();
        mkfifo(&dirs[0].join(name));
        fs::remove_file(dirs[1].join(name)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dirs[1].join(name)).unwrap();
        fs::write(dirs[2].join(name), vec![b' '; 1 << 20]).unwrap();
    }
    let sidecar = fs::read_dir(&dirs[3])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".name"))
        .expect("the long name's sidecar");
    fs::remove_file(&sidecar).unwrap();
    mkfifo(&sidecar);
    m.start();

    let ls = |dir: &str| Command::new("timeout").args(["10", "ls"]).arg(m.path(dir)).output().unwrap();
    for d in ["fifo", "zero", "big"] {
        let out = ls(d);
        assert_ne!(out.status.code(), Some(124), "listing {d} hung");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Input/output error"), "{d}: {out:?}");
    }
    let out = ls("fine");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("f.txt"));
    assert_eq!(fs::read(m.path("fine/f.txt")).unwrap(), b"data", "the mount keeps serving");
    assert!(m.wait_log("is refused"), "the refusal is logged");
}
