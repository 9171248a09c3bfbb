//! `kmsfs rewrap` on unmounted and on live volumes: rotation catch-up and moving a directory
//! to another key rewrite headers and directory metadata only, survive kill -9 (of the
//! command or of the mount), and resume.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

use common::mount::Mounted;

/// The key id and version of a file on the mount.
fn key_of(m: &Mounted, rel: &str) -> (String, u64) {
    let info = m.json(&["file", "info", m.path(rel).to_str().unwrap()]);
    (info["KeyId"].as_str().unwrap().to_string(), info["KeyVersion"].as_u64().unwrap())
}

/// Every backing file's bytes after its header (the data blocks), by inode.
fn data_blocks(m: &Mounted) -> std::collections::BTreeMap<u64, Vec<u8>> {
    m.backing_files()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with("kmsfs.")))
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (fs::metadata(&p).unwrap().ino(), bytes.get(288..).unwrap_or_default().to_vec())
        })
        .collect()
}

fn populate(m: &Mounted, files: usize) {
    fs::create_dir_all(m.path("finance/q1")).unwrap();
    fs::create_dir(m.path("hr")).unwrap();
    for i in 0..files {
        fs::write(m.path(&format!("finance/q1/f{i}")), format!("finance {i}").repeat(i % 50 + 1)).unwrap();
    }
    fs::write(m.path("hr/salaries"), b"secret").unwrap();
    fs::write(m.path("top.txt"), vec![7u8; 10_000]).unwrap();
}

fn cipher(m: &Mounted) -> String {
    m.cipher().to_str().unwrap().to_string()
}

#[test]
fn rotation_catch_up_rewrites_headers_only_and_resumes_as_a_no_op() {
    let mut m = Mounted::new();
    populate(&m, 40);
    assert_eq!(key_of(&m, "top.txt").1, 1);
    m.unmount();
    let before = data_blocks(&m);
    m.ok(&["key", "rotate", "alias/vol"]);
    let report = m.json(&["rewrap", &cipher(&m)]);
    assert_eq!(report["Files"], 42);
    assert_eq!(report["FilesRewrapped"], 42);
    assert_eq!(report["DirectoriesRewrapped"], 4);
    assert_eq!(data_blocks(&m), before, "no data block may change");
    let again = m.json(&["rewrap", &cipher(&m)]);
    assert_eq!(again["FilesRewrapped"], 0, "a second run has nothing to do");
    assert_eq!(again["DirectoriesRewrapped"], 0);
    m.start();
    assert_eq!(key_of(&m, "top.txt"), (m.key_id.clone(), 2));
    assert_eq!(key_of(&m, "finance/q1/f7").1, 2);
    assert_eq!(fs::read(m.path("finance/q1/f7")).unwrap(), "finance 7".repeat(8).into_bytes());
    let audit = m.json(&["audit", "--operation", "ReEncrypt"]);
    assert!(audit.as_array().unwrap().len() >= 46, "every re-wrap is audited");
}

#[test]
fn a_directory_moves_to_another_key() {
    let mut m = Mounted::new();
    populate(&m, 10);
    let finance = m.ok(&["key", "create", "--alias", "alias/finance"]).trim().to_string();
    m.unmount();
    let out = m.ok(&["rewrap", &cipher(&m), "--path", "finance", "--to-key", "alias/finance"]);
    assert!(out.contains("10 files (10 re-wrapped)") && out.contains("no data block rewritten"), "{out}");
    m.start();
    assert_eq!(key_of(&m, "finance/q1/f3").0, finance);
    assert_eq!(key_of(&m, "hr/salaries").0, m.key_id, "outside --path nothing moves");
    let dir = m.json(&["dir", "get-key", m.path("finance/q1").to_str().unwrap()]);
    assert_eq!(dir["KeyId"], finance.as_str());
    // Proof that the finance key now protects them: disabling it closes exactly that tree.
    m.ok(&["key", "disable", "alias/finance"]);
    m.remount();
    let err = fs::read(m.path("finance/q1/f3")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(126), "ENOKEY expected: {err}");
    assert_eq!(fs::read(m.path("hr/salaries")).unwrap(), b"secret");
    m.ok(&["key", "enable", "alias/finance"]);
    assert_eq!(fs::read(m.path("finance/q1/f3")).unwrap(), "finance 3".repeat(4).into_bytes());
}

#[test]
fn refusals_are_clear() {
    let mut m = Mounted::new();
    m.unmount();
    let out = m.kmsfs(&["rewrap", &cipher(&m), "--path", "no/such/dir"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory of this volume"));
    let out = m.kmsfs(&["rewrap", &cipher(&m), "--to-key", "alias/missing"]);
    assert_eq!(out.status.code(), Some(5));
    let out = m.kmsfs(&["rewrap", m.env.dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "not a volume");
}

#[test]
fn kill_9_during_rewrap_leaves_every_file_readable_and_a_rerun_finishes() {
    let mut m = Mounted::new();
    populate(&m, 600);
    let expected: Vec<Vec<u8>> =
        (0..600).map(|i| format!("finance {i}").repeat(i % 50 + 1).into_bytes()).collect();
    m.unmount();
    m.ok(&["key", "rotate", "alias/vol"]);
    for delay_ms in [30u64, 120, 300] {
        let mut child =
            m.env.cmd(&["rewrap", &cipher(&m)]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }
    m.start();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(&fs::read(m.path(&format!("finance/q1/f{i}"))).unwrap(), want, "file {i} after kill -9");
    }
    m.unmount();
    let report = m.json(&["rewrap", &cipher(&m)]);
    assert!(report["Errors"].as_array().unwrap().is_empty(), "{report}");
    let again = m.json(&["rewrap", &cipher(&m)]);
    assert_eq!(again["FilesRewrapped"], 0, "the rerun finished the job");
    m.start();
    assert_eq!(key_of(&m, "finance/q1/f599").1, 2);
    assert_eq!(fs::read(m.path("finance/q1/f599")).unwrap(), expected[599]);
}

/// How many of a backing file's two header slots hold a wrap.
fn used_slots(backing: &std::path::Path) -> usize {
    let bytes = fs::read(backing).unwrap();
    [32usize, 160].iter().filter(|&&at| bytes[at..at + 8] != [0u8; 8]).count()
}

#[test]
fn a_file_moved_to_another_key_answers_to_that_key_only() {
    let mut m = Mounted::new();
    populate(&m, 5);
    m.ok(&["key", "create", "--alias", "alias/finance"]);
    m.unmount();
    m.ok(&["rewrap", &cipher(&m), "--path", "finance", "--to-key", "alias/finance"]);
    m.start();
    let backing = m.backing_of(&m.path("finance/q1/f2"));
    assert_eq!(used_slots(&backing), 1, "the wrap under the old key is gone");
    assert_eq!(used_slots(&m.backing_of(&m.path("hr/salaries"))), 1);
    // With the new key disabled the file is closed, even though the volume key still works.
    m.ok(&["key", "disable", "alias/finance"]);
    m.remount();
    let err = fs::read(m.path("finance/q1/f2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOKEY), "{err}");
    m.ok(&["key", "enable", "alias/finance"]);
    assert_eq!(fs::read(m.path("finance/q1/f2")).unwrap(), "finance 2".repeat(3).into_bytes());
}

#[test]
fn a_live_mount_catches_up_with_rotation_without_a_passphrase() {
    let m = Mounted::new();
    populate(&m, 40);
    let before = data_blocks(&m);
    m.ok(&["key", "rotate", "alias/vol"]);
    // The mount does the work: the command needs neither keystore nor passphrase.
    let out = m
        .env
        .cmd(&["--json", "rewrap", m.mnt().to_str().unwrap()])
        .env_remove("KMSFS_PASSPHRASE")
        .env("KMSFS_KEYSTORE", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["Live"], true);
    assert_eq!(report["Files"], 42);
    assert_eq!(report["FilesRewrapped"], 42);
    assert_eq!(report["DirectoriesRewrapped"], 4);
    assert_eq!(data_blocks(&m), before, "no data block may change");
    assert_eq!(key_of(&m, "finance/q1/f7"), (m.key_id.clone(), 2));
    assert_eq!(fs::read(m.path("finance/q1/f7")).unwrap(), "finance 7".repeat(8).into_bytes());
    // The cipher directory of a mounted volume is re-wrapped through its mount.
    let out = m.kmsfs(&["--json", "rewrap", &cipher(&m)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-wrapping through the mount"));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["FilesRewrapped"], 0, "a second run has nothing to do");
    assert_eq!(again["DirectoriesRewrapped"], 0);
    // The volume's own names key moved too: symlinks and xattrs still read after a remount.
    std::os::unix::fs::symlink("top.txt", m.path("link")).unwrap();
    let mut m = m;
    m.remount();
    assert_eq!(fs::read_link(m.path("link")).unwrap(), std::path::Path::new("top.txt"));
}

#[test]
fn a_live_directory_moves_to_another_key_and_new_files_follow() {
    let m = Mounted::new();
    populate(&m, 10);
    let finance = m.ok(&["key", "create", "--alias", "alias/finance"]).trim().to_string();
    let f3 = fs::File::open(m.path("finance/q1/f3")).unwrap(); // open during the move
    let out = m.ok(&["rewrap", m.mnt().to_str().unwrap(), "--path", "finance", "--to-key", "alias/finance"]);
    assert!(out.contains("10 files (10 re-wrapped)") && out.contains("through the mount"), "{out}");
    drop(f3);
    assert_eq!(key_of(&m, "finance/q1/f3").0, finance);
    assert_eq!(key_of(&m, "hr/salaries").0, m.key_id, "outside --path nothing moves");
    let top = m.json(&["dir", "get-key", m.path("finance").to_str().unwrap()]);
    assert_eq!((top["KeyId"].as_str(), top["Explicit"].as_bool()), (Some(finance.as_str()), Some(true)));
    let below = m.json(&["dir", "get-key", m.path("finance/q1").to_str().unwrap()]);
    assert_eq!((below["KeyId"].as_str(), below["Explicit"].as_bool()), (Some(finance.as_str()), Some(false)));
    // The mount's cached directory state moved too: a new file takes the new key at once.
    fs::write(m.path("finance/q1/new"), b"after the move").unwrap();
    assert_eq!(key_of(&m, "finance/q1/new").0, finance);
    assert_eq!(used_slots(&m.backing_of(&m.path("finance/q1/f3"))), 1);
    for i in 0..10 {
        let want = format!("finance {i}").repeat(i % 50 + 1).into_bytes();
        assert_eq!(fs::read(m.path(&format!("finance/q1/f{i}"))).unwrap(), want);
    }
    // Refusals are per item and clear: an unknown key, a disabled key.
    let out = m.kmsfs(&["rewrap", m.mnt().to_str().unwrap(), "--to-key", "alias/missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key"), "{out:?}");
    m.ok(&["key", "disable", "alias/finance"]);
    let out = m.kmsfs(&["rewrap", m.mnt().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("disabled, pending deletion or destroyed"),
        "{out:?}"
    );
}

#[test]
fn kill_9_of_the_mount_during_a_live_rewrap_loses_nothing() {
    let mut m = Mounted::new();
    populate(&m, 600);
    let expected: Vec<Vec<u8>> =
        (0..600).map(|i| format!("finance {i}").repeat(i % 50 + 1).into_bytes()).collect();
    m.ok(&["key", "create", "--alias", "alias/finance"]);
    let mnt = m.mnt().to_str().unwrap().to_string();
    for delay_ms in [40u64, 150] {
        let mut child = m
            .env
            .cmd(&["rewrap", &mnt, "--path", "finance", "--to-key", "alias/finance"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        m.kill_daemon();
        let _ = child.wait();
        m.restart_after_crash();
        for (i, want) in expected.iter().enumerate() {
            let got = fs::read(m.path(&format!("finance/q1/f{i}")));
            assert_eq!(&got.unwrap(), want, "file {i} after kill -9 at {delay_ms} ms");
        }
    }
    let report = m.json(&["rewrap", &mnt, "--path", "finance", "--to-key", "alias/finance"]);
    assert!(report["Errors"].as_array().unwrap().is_empty(), "{report}");
    let again = m.json(&["rewrap", &mnt, "--path", "finance", "--to-key", "alias/finance"]);
    assert_eq!(again["FilesRewrapped"], 0, "the rerun finished the job");
    assert_eq!(key_of(&m, "finance/q1/f599").0, key_of(&m, "finance/q1/f0").0);
    assert_eq!(fs::read(m.path("finance/q1/f599")).unwrap(), expected[599]);
}
