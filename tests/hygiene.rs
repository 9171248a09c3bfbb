//! Key hygiene of kmsfs processes, through the real binary: the mount daemon is not dumpable,
//! keeps its memory locked and has no passphrase in its environment; a keystore others can
//! read or write is refused; and no key byte, passphrase or plaintext reaches a log, the
//! audit trail, the keystore file or the cipher directory.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::mount::{walk, MountGuard, Mounted};
use common::{TestEnv, PASSPHRASE};

const NOGROUP: u32 = 65534;

/// A field of /proc/PID/status (e.g. `VmLck:`), trimmed.
fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Locked memory of a process in KiB (`VmLck`).
fn locked_kib(pid: u32) -> u64 {
    status_field(pid, "VmLck:").trim_end_matches("kB").trim().parse().expect("VmLck is a number")
}

/// The environment block of a process as the kernel shows it.
fn environ(pid: u32) -> Vec<u8> {
    // Root reads it even from a non-dumpable process (CAP_SYS_PTRACE).
    fs::read(format!("/proc/{pid}/environ")).unwrap_or_else(|e| panic!("read /proc/{pid}/environ: {e}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The daemon pid `kmsfs mount` prints: "mounted at ... (daemon pid N)".
fn daemon_pid(stderr: &str) -> u32 {
    stderr
        .split("daemon pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {stderr:?}"))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_background_daemon_is_not_dumpable_locks_its_memory_and_forgot_the_passphrase() {
    let mut m = Mounted::new();
    fs::write(m.path("before.txt"), b"kept").unwrap();
    m.unmount();
    let (cipher, mnt) = (m.cipher().to_str().unwrap().to_string(), m.mnt().to_str().unwrap().to_string());
    let mut guard = MountGuard::new(m.mnt());
    // The daemon runs as root with group nogroup, which makes dumpability visible from
    // outside even to root (see below). KMSFS_TEST_MARKER shows that its environment is read.
    let out = m
        .env
        .cmd(&["mount", &cipher, &mnt])
        .env("KMSFS_TEST_MARKER", "still-here")
        .gid(NOGROUP)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "background mount failed: {stderr}");
    let pid = daemon_pid(&stderr);
    guard.daemon_pid = Some(pid);
    assert_eq!(fs::read(m.path("before.txt")).unwrap(), b"kept", "the daemon serves the volume");

    // Not dumpable. PR_GET_DUMPABLE cannot be asked of another process, and root may ptrace
    // and read /proc/PID/mem of any process, so neither tells. What does: the kernel gives the
    // files in /proc/PID/ (all but the directory itself) to the process's effective uid and
    // gid while it is dumpable, and to root:root once it is not (fs/proc/base.c,
    // task_dump_owner). With egid 65534 the difference shows in the group.
    let gids: Vec<String> = status_field(pid, "Gid:").split_whitespace().map(str::to_string).collect();
    assert_eq!(gids[1], NOGROUP.to_string(), "the daemon's effective gid: {gids:?}");
    let dir_gid = fs::metadata(format!("/proc/{pid}")).unwrap().gid();
    assert_eq!(dir_gid, NOGROUP, "control: /proc/PID itself always shows the effective gid");
    for file in ["status", "environ", "mem", "maps"] {
        let gid = fs::metadata(format!("/proc/{pid}/{file}")).unwrap().gid();
        assert_eq!(gid, 0, "/proc/{pid}/{file} has gid {gid}: the daemon is dumpable");
    }

    // Its memory is locked (root has CAP_IPC_LOCK, so the limit allows it).
    assert!(locked_kib(pid) > 0, "VmLck of the daemon is 0");

    // The passphrase came through KMSFS_PASSPHRASE, and is gone from the environment block.
    let env = environ(pid);
    assert!(contains(&env, b"KMSFS_TEST_MARKER=still-here"), "control: the environment is readable");
    assert!(!contains(&env, PASSPHRASE.as_bytes()), "the passphrase is in /proc/{pid}/environ");

    fs::write(m.path("after.txt"), b"written").unwrap();
    assert_eq!(fs::read(m.path("after.txt")).unwrap(), b"written");
    drop(guard);
}

#[test]
fn the_foreground_daemon_forgot_the_passphrase_and_locks_its_memory() {
    let m = Mounted::new();
    let pid = m.pid();
    fs::write(m.path("a.txt"), b"a").unwrap();
    let env = environ(pid);
    assert!(contains(&env, b"KMSFS_KEYSTORE="), "control: the environment is readable");
    assert!(!contains(&env, PASSPHRASE.as_bytes()), "the passphrase is in /proc/{pid}/environ");
    assert!(locked_kib(pid) > 0, "VmLck of the daemon is 0");
    assert!(m.wait_log("memory locked"), "{}", m.log_text());
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_keystore_that_others_can_read_or_write_is_refused() {
    let env = TestEnv::new();
    let cipher = env.path("cipher");
    env.init_volume(&cipher);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let _guard = MountGuard::new(&mnt);
    let ks = env.keystore.to_str().unwrap().to_string();
    for mode in [0o640, 0o604, 0o620, 0o602, 0o660, 0o644, 0o666] {
        fs::set_permissions(&env.keystore, fs::Permissions::from_mode(mode)).unwrap();
        let before = fs::read(&env.keystore).unwrap();
        for args in [&["key", "list"][..], &["mount", cipher.to_str().unwrap(), mnt.to_str().unwrap()]] {
            let err = env.fails(args, 1);
            assert!(err.contains(&ks), "{args:?} at {mode:o}: the file is named: {err}");
            assert!(err.contains(&format!("chmod 600 {ks}")), "{args:?} at {mode:o}: the fix: {err}");
            assert!(err.contains(&format!("{mode:04o}")), "{args:?} at {mode:o}: the mode: {err}");
        }
        assert_eq!(fs::read(&env.keystore).unwrap(), before, "a refused keystore is not written");
        assert_eq!(mode_of(&env.keystore), mode, "nor chmod'ed behind the user's back");
    }
    fs::set_permissions(&env.keystore, fs::Permissions::from_mode(0o600)).unwrap();
    env.ok(&["key", "list"]);

    // Created 0600 whatever the umask, and SQLite's side files follow the main file.
    let fresh = TestEnv::without_keystore();
    let mut cmd = fresh.cmd(&["keystore", "init", "--argon2-memory-kib", "256", "--argon2-iterations", "1"]);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    common::assert_success(&out, &["keystore", "init"]);
    assert_eq!(mode_of(&fresh.keystore), 0o600);
    fresh.create_key("alias/x");
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", fresh.keystore.display()));
        if side.exists() {
            assert_eq!(mode_of(&side) & 0o077, 0, "{} is {:o}", side.display(), mode_of(&side));
        }
    }
}

/// Runs a command with RUST_LOG=debug, asserts success, keeps its stdout and stderr in
/// `outputs`, and returns stdout.
fn run_logged(
    env: &TestEnv,
    outputs: &mut Vec<(String, Vec<u8>)>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Vec<u8> {
    let mut cmd = env.cmd(args);
    cmd.env("RUST_LOG", "debug");
    let out = match stdin {
        Some(bytes) => common::run_with_stdin(cmd, bytes),
        None => cmd.output().unwrap(),
    };
    common::assert_success(&out, args);
    outputs.push((format!("stderr of {args:?}"), out.stderr));
    outputs.push((format!("stdout of {args:?}"), out.stdout.clone()));
    out.stdout
}

#[test]
fn no_key_bytes_passphrase_or_plaintext_in_logs_audit_keystore_or_cipher_dir() {
    let mut m = Mounted::with_log_level(&[], "debug");
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    // A data key whose plaintext goes to a file only.
    let (dk_file, blob_file) = (m.env.path("dk.key"), m.env.path("dk.blob"));
    let (dk_arg, blob_arg) = (dk_file.to_str().unwrap(), blob_file.to_str().unwrap());
    run_logged(
        &m.env,
        &mut outputs,
        &["generate-data-key", "--key", "alias/vol", "--plaintext-out", dk_arg, "--out", blob_arg],
        None,
    );
    let data_key = fs::read(&dk_file).unwrap();
    assert_eq!(data_key.len(), 32);

    // A small secret through Encrypt.
    let secret = format!("SECRET-MARKER-{}", random_hex());
    let sealed = run_logged(
        &m.env,
        &mut outputs,
        &["encrypt", "--key", "alias/vol", "--context", "app=test"],
        Some(secret.as_bytes()),
    );
    assert!(!sealed.is_empty());

    // A file through the mount: created, appended, renamed, chmod'ed, read cold after a remount.
    let marker = format!("PLAINTEXT-MARKER-{}", random_hex());
    let content = marker.repeat(400); // ~12 KiB: several blocks
    fs::write(m.path("notes.txt"), &content).unwrap();
    fs::OpenOptions::new().append(true).open(m.path("notes.txt")).unwrap();
    fs::rename(m.path("notes.txt"), m.path("kept.txt")).unwrap();
    fs::set_permissions(m.path("kept.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    m.remount();
    assert_eq!(fs::read_to_string(m.path("kept.txt")).unwrap(), content);
    run_logged(&m.env, &mut outputs, &["file", "info", m.path("kept.txt").to_str().unwrap()], None);
    m.unmount(); // flushes the audit writer and the log

    for args in [
        &["--json", "audit"][..],
        &["audit"],
        &["audit", "verify"],
        &["--json", "key", "list"],
        &["--json", "key", "describe", "alias/vol"],
        &["--json", "keystore", "info"],
        &["--json", "status"],
    ] {
        run_logged(&m.env, &mut outputs, args, None);
    }

    let mut haystacks = outputs;
    let log = m.log_text();
    assert!(log.contains("DEBUG"), "control: the daemon logged at debug level:\n{log}");
    haystacks.push(("the mount log (RUST_LOG=debug)".into(), log.into_bytes()));
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", m.env.keystore.display()));
        if let Ok(bytes) = fs::read(&path) {
            haystacks.push((format!("keystore file {}", path.display()), bytes));
        }
    }
    walk(m.cipher(), &mut |path, meta| {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        haystacks.push((format!("cipher name {}", path.display()), name.into_bytes()));
        if meta.is_file() {
            haystacks.push((format!("cipher file {}", path.display()), fs::read(path).unwrap()));
        }
    });
    assert!(haystacks.iter().any(|(what, _)| what.starts_with("cipher file")), "the walk found files");

    let b64 = |engine: &base64::engine::GeneralPurpose| engine.encode(&data_key).into_bytes();
    let hex: String = data_key.iter().map(|b| format!("{b:02x}")).collect();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("the data key's bytes", data_key.clone()),
        ("the data key in hex", hex.clone().into_bytes()),
        ("the data key in upper-case hex", hex.to_uppercase().into_bytes()),
        ("the data key in base64", b64(&base64::engine::general_purpose::STANDARD)),
        ("the data key in base64 without padding", b64(&base64::engine::general_purpose::STANDARD_NO_PAD)),
        ("the data key in base64url", b64(&base64::engine::general_purpose::URL_SAFE_NO_PAD)),
        ("the encrypted secret", secret.into_bytes()),
        ("the file's plaintext", marker.into_bytes()),
        ("the passphrase", PASSPHRASE.as_bytes().to_vec()),
    ];
    for (what, haystack) in &haystacks {
        for (needle_name, needle) in &needles {
            assert!(!contains(haystack, needle), "{needle_name} appears in {what}");
        }
    }
}

/// Where the keystore lives matters as much as its mode: a keystore owned by another user,
/// in a directory others may write (sticky or not), or with side files open to others, is
/// refused with the problem and the fix named, and nothing is written.
#[test]
fn a_keystore_others_could_replace_or_whose_side_files_are_open_is_refused() {
    let env = TestEnv::new();
    env.create_key("alias/placed");
    let ks = env.keystore.clone();
    let dir = env.dir.path().to_path_buf();
    let refused = |what: &str, needles: &[&str]| {
        let before = fs::read(&ks).unwrap();
        let err = env.fails(&["key", "list"], 1);
        for needle in needles {
            assert!(err.contains(needle), "{what}: the message names '{needle}': {err}");
        }
        assert_eq!(fs::read(&ks).unwrap(), before, "{what}: a refused keystore is not written");
    };

    // The file owned by another user (root runs the test; uid 1001 is someone else).
    std::os::unix::fs::lchown(&ks, Some(1001), None).unwrap();
    refused("owner", &["owned by uid 1001", &format!("chown 0 {}", ks.display())]);
    std::os::unix::fs::lchown(&ks, Some(0), None).unwrap();
    env.ok(&["key", "list"]);

    // Its directory writable by others, with and without the sticky bit, or owned by another.
    let dir_mode = fs::metadata(&dir).unwrap().mode() & 0o7777;
    for mode in [0o777, 0o1777, 0o770, 0o1730] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        refused(
            &format!("directory {mode:o}"),
            &["writable by group or others", &format!("chmod go-w {}", dir.display())],
        );
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(dir_mode)).unwrap();
    std::os::unix::fs::lchown(&dir, Some(1001), None).unwrap();
    refused("directory owner", &["its directory", "owned by uid 1001"]);
    std::os::unix::fs::lchown(&dir, Some(0), None).unwrap();

    // A directory above it writable by others: refused without the sticky bit only.
    let outer = tempfile::tempdir().unwrap();
    let inner = outer.path().join("inner");
    fs::create_dir(&inner).unwrap();
    let moved = inner.join("keystore.db");
    fs::copy(&ks, &moved).unwrap();
    fs::set_permissions(&moved, fs::Permissions::from_mode(0o600)).unwrap();
    let list_at = |path: &Path| env.cmd(&["key", "list"]).env("KMSFS_KEYSTORE", path).output().unwrap();
    fs::set_permissions(outer.path(), fs::Permissions::from_mode(0o1777)).unwrap();
    common::assert_success(&list_at(&moved), &["key", "list", "under a sticky directory"]);
    fs::set_permissions(outer.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let out = list_at(&moved);
    let err = common::assert_failure(&out, &["key", "list", "under a 0777 directory"], 1);
    assert!(err.contains("above it") && err.contains("writable by group or others"), "{err}");

    // Side files open to others, or owned by another user.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", ks.display()));
        fs::write(&side, b"").unwrap();
        fs::set_permissions(&side, fs::Permissions::from_mode(0o644)).unwrap();
        refused(suffix, &[&format!("{} is accessible by group or others", side.display()), "chmod 600"]);
        fs::set_permissions(&side, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(&side, Some(1001), None).unwrap();
        refused(suffix, &[&format!("{} is owned by uid 1001", side.display())]);
        fs::remove_file(&side).unwrap();
    }
    env.ok(&["key", "list"]);
}
