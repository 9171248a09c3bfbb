//! `kmsfs fsck` and `kmsfs volume prune-shredded` on real volumes: each kind of damage is
//! reported precisely, `--repair` fixes what is safe and nothing else, and crypto-shredded
//! files are reported and pruned.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::mount::Mounted;
use serde_json::Value;

fn cipher(m: &Mounted) -> String {
    m.cipher().to_str().unwrap().to_string()
}

/// Runs `kmsfs --json fsck ARGS...`; returns the exit code and the report.
fn fsck(m: &Mounted, extra: &[&str]) -> (i32, Value) {
    let c = cipher(m);
    let mut args = vec!["--json", "fsck", &c];
    args.extend_from_slice(extra);
    let out = m.kmsfs(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck output: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), report)
}

/// The (path, status) pairs of everything that is not ok.
fn problems(report: &Value) -> Vec<(String, String)> {
    report["Items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["Status"] != "ok")
        .map(|i| (i["Path"].as_str().unwrap().to_string(), i["Status"].as_str().unwrap().to_string()))
        .collect()
}

fn detail_of(report: &Value, path: &str) -> String {
    let item = report["Items"].as_array().unwrap().iter().find(|i| i["Path"] == path);
    item.map(|i| i["Detail"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

fn populate(m: &Mounted) {
    fs::create_dir_all(m.path("docs/deep")).unwrap();
    fs::write(m.path("docs/big"), common::mount::pattern(1, 20_000)).unwrap();
    fs::write(m.path("docs/deep/small"), b"small").unwrap();
    fs::write(m.path("docs/empty"), b"").unwrap();
    fs::write(m.path(&"n".repeat(200)), b"long name").unwrap();
    std::os::unix::fs::symlink("docs/big", m.path("link")).unwrap();
}

fn flip(path: &Path, at: u64) {
    let f = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

#[test]
fn a_clean_volume_is_clean_and_every_file_is_listed() {
    let mut m = Mounted::new();
    populate(&m);
    // A mounted volume can be checked, not repaired.
    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 0, "{report}");
    let out = m.kmsfs(&["fsck", &cipher(&m), "--repair"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unmount it first"));
    m.unmount();
    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["Files"], 4);
    assert_eq!(report["Directories"], 3);
    assert_eq!(report["Symlinks"], 1);
    assert_eq!(report["BytesChecked"], 20_000 + 5 + 9);
    assert!(problems(&report).is_empty(), "{report}");
    let text = m.ok(&["fsck", &cipher(&m)]);
    assert!(text.contains("4 files") && text.contains("clean"), "{text}");
}

#[test]
fn tampering_is_reported_with_its_block_and_never_repaired_away() {
    let mut m = Mounted::new();
    populate(&m);
    let big = m.backing_of(&m.path("docs/big"));
    let small = m.backing_of(&m.path("docs/deep/small"));
    m.unmount();
    flip(&big, 288 + 4124 + 100); // inside block 1
    let small_len = fs::metadata(&small).unwrap().len();
    fs::OpenOptions::new().write(true).open(&small).unwrap().set_len(small_len + 3).unwrap();
    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 8);
    let found = problems(&report);
    assert!(found.contains(&("/docs/big".into(), "tampered".into())), "{found:?}");
    assert!(detail_of(&report, "/docs/big").contains("block 1 (bytes 4096..8192)"), "{report}");
    assert!(found.contains(&("/docs/deep/small".into(), "tampered".into())), "{found:?}");
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(report["ProblemsRemaining"], 2);
    let (code, after) = fsck(&m, &["--repair", "--force"]);
    assert_eq!(code, 8, "tampered files are kept: their other blocks still read");
    assert!(big.exists() && small.exists());
    assert_eq!(after["Repaired"], 0);
    let out = m.kmsfs(&["fsck", &cipher(&m)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 problem(s) remain"), "{stderr}");
}

#[test]
fn repair_fixes_leftovers_of_interrupted_operations() {
    let mut m = Mounted::new();
    populate(&m);
    let small = m.backing_of(&m.path("docs/deep/small"));
    let empty = m.backing_of(&m.path("docs/empty"));
    let deep = small.parent().unwrap().to_path_buf();
    m.unmount();
    // A rotation re-wrap whose newest slot was torn: the older slot still unwraps.
    m.ok(&["key", "rotate", "alias/vol"]);
    m.ok(&["rewrap", &cipher(&m)]);
    let header = fs::read(&small).unwrap();
    let newest = if header[32..40] > header[160..168] { 32 } else { 160 };
    flip(&small, newest as u64 + 40);
    fs::remove_file(deep.join("kmsfs.dir.bak")).unwrap();
    fs::write(deep.join(".kmsfs.dir.tmp-999-0"), b"half").unwrap();
    fs::write(m.cipher().join(format!("kmsfs.long.{}.name", "ab".repeat(32))), b"orphan").unwrap();
    fs::OpenOptions::new().write(true).open(&empty).unwrap().set_len(0).unwrap();
    fs::write(m.cipher().join("README.backup-tool"), b"not ours").unwrap();

    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 8);
    let mut found: Vec<String> = problems(&report).into_iter().map(|(_, s)| s).collect();
    found.sort();
    assert_eq!(
        found,
        [
            "interrupted-rewrap",
            "metadata-copy-damaged",
            "missing-header",
            "name-damaged",
            "orphan-sidecar",
            "temp-file"
        ],
        "{report}"
    );
    let (code, report) = fsck(&m, &["--repair"]);
    assert_eq!(code, 8, "the foreign file remains: {report}");
    assert_eq!(report["Repaired"], 5);
    let left: Vec<_> = report["Items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["Status"] != "ok" && i["Action"].is_null())
        .collect();
    assert_eq!(left.len(), 1, "{report}");
    assert_eq!(left[0]["Path"], "/<README.backup-tool>");
    assert!(m.cipher().join("README.backup-tool").exists(), "an entry that is not kmsfs's is left alone");
    fs::remove_file(m.cipher().join("README.backup-tool")).unwrap();
    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 0, "clean after repair: {report}");
    m.start();
    assert_eq!(fs::read(m.path("docs/deep/small")).unwrap(), b"small");
    assert_eq!(fs::read(m.path("docs/empty")).unwrap(), b"");
    assert_eq!(fs::read(m.path("docs/big")).unwrap(), common::mount::pattern(1, 20_000));
}

/// A new directory's backup metadata copy is never fsynced; a power loss before writeback
/// can leave it torn. The directory stays readable and writable, and fsck --repair rewrites it.
#[test]
fn a_backup_copy_torn_by_a_crash_is_read_past_and_repaired() {
    let mut m = Mounted::new();
    fs::create_dir(m.path("fresh")).unwrap();
    fs::write(m.path("fresh/kept"), b"kept").unwrap();
    let dir = m.backing_of(&m.path("fresh"));
    m.unmount();
    let primary = fs::read(dir.join("kmsfs.dir")).unwrap();
    for torn in [&b""[..], &primary[..primary.len() / 3]] {
        fs::write(dir.join("kmsfs.dir.bak"), torn).unwrap();
        m.start();
        assert_eq!(fs::read(m.path("fresh/kept")).unwrap(), b"kept");
        fs::write(m.path("fresh/new"), b"new").unwrap();
        m.unmount();
        let (code, report) = fsck(&m, &[]);
        assert_eq!(code, 8, "{report}");
        assert_eq!(
            problems(&report).into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
            ["metadata-copy-damaged"],
            "{report}"
        );
        let (code, report) = fsck(&m, &["--repair"]);
        assert_eq!(code, 0, "{report}");
        assert_eq!(fs::read(dir.join("kmsfs.dir.bak")).unwrap(), primary, "the backup is the primary again");
    }
}

#[test]
fn key_states_are_reported_and_destroyed_keys_are_pruned() {
    let mut m = Mounted::new();
    populate(&m);
    m.ok(&["key", "create", "--alias", "alias/old"]);
    m.ok(&["key", "create", "--alias", "alias/paused"]);
    fs::create_dir(m.path("old")).unwrap();
    fs::create_dir(m.path("paused")).unwrap();
    m.ok(&["dir", "set-key", m.path("old").to_str().unwrap(), "alias/old"]);
    m.ok(&["dir", "set-key", m.path("paused").to_str().unwrap(), "alias/paused"]);
    fs::create_dir(m.path("old/sub")).unwrap();
    fs::write(m.path("old/sub/a"), b"a").unwrap();
    fs::write(m.path("paused/b"), b"b").unwrap();
    // A file under the old key in a directory whose key lives on.
    fs::write(m.path("docs/moved"), b"c").unwrap();
    m.ok(&["rewrap", m.mnt().to_str().unwrap(), "--path", "docs/moved", "--to-key", "alias/old"]);
    m.unmount();
    m.ok(&["key", "disable", "alias/paused"]);
    m.ok(&["key", "schedule-deletion", "alias/old", "--pending-window-days", "7"]);
    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 8);
    let found = problems(&report);
    assert!(found.contains(&("/old".into(), "key-pending-deletion".into())), "{found:?}");
    assert!(found.contains(&("/paused".into(), "key-disabled".into())), "{found:?}");
    // Eight days later the old key is destroyed: its files are unrecoverable.
    let later = |args: &[&str]| m.env.cmd_at(691_200, args).output().unwrap();
    let c = cipher(&m);
    let report: Value = serde_json::from_slice(&later(&["--json", "fsck", &c]).stdout).unwrap();
    let found = problems(&report);
    assert!(found.contains(&("/old".into(), "key-destroyed".into())), "{found:?}");
    assert!(found.contains(&("/docs/moved".into(), "key-destroyed".into())), "{found:?}");
    let dry = String::from_utf8(later(&["volume", "prune-shredded", &c, "--dry-run"]).stdout).unwrap();
    assert!(dry.contains("2 crypto-shredded item(s) would be removed"), "{dry}");
    let old_dir = m.cipher().read_dir().unwrap().count();
    let out = later(&["volume", "prune-shredded", &c]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 crypto-shredded item(s) removed"));
    assert_eq!(m.cipher().read_dir().unwrap().count(), old_dir - 1, "the /old tree is gone");
    m.ok(&["key", "enable", "alias/paused"]);
    let report: Value = serde_json::from_slice(&later(&["--json", "fsck", &c]).stdout).unwrap();
    assert!(problems(&report).is_empty(), "{report}");
    m.start();
    assert!(!m.path("old").exists() && !m.path("docs/moved").exists());
    assert_eq!(fs::read(m.path("paused/b")).unwrap(), b"b");
    assert_eq!(fs::read(m.path("docs/big")).unwrap(), common::mount::pattern(1, 20_000));
}

#[test]
fn unreadable_files_go_only_with_force() {
    let mut m = Mounted::new();
    populate(&m);
    let small = m.backing_of(&m.path("docs/deep/small"));
    m.unmount();
    let f = fs::OpenOptions::new().write(true).open(&small).unwrap();
    f.write_all_at(&[0x55; 100], 40).unwrap(); // both slots' blobs garbled
    f.write_all_at(&[0x55; 100], 170).unwrap();
    let (code, report) = fsck(&m, &["--repair"]);
    assert_eq!(code, 8);
    assert_eq!(problems(&report), vec![("/docs/deep/small".to_string(), "header-damaged".to_string())]);
    assert!(small.exists(), "--repair alone never deletes");
    let (code, report) = fsck(&m, &["--repair", "--force"]);
    assert_eq!(code, 0, "{report}");
    assert!(!small.exists());
}

/// The volume's own directories of long symlink targets and xattr stores: an entry nothing
/// names and the temporary file of an interrupted write are reported as leftovers, and
/// `--repair` removes them and nothing that is named.
#[test]
fn leftovers_among_long_targets_and_xattr_stores_are_reported_and_repaired() {
    let mut m = Mounted::new();
    let target = "t/".repeat(2000);
    std::os::unix::fs::symlink(&target, m.path("long")).unwrap();
    m.unmount();
    let (targets, stores) = (m.cipher().join("kmsfs.targets"), m.cipher().join("kmsfs.xattrs"));
    let named: Vec<_> = fs::read_dir(&targets).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(named.len(), 1, "the long target's sidecar: {named:?}");
    fs::create_dir_all(&stores).unwrap();
    let orphan_target = "cd".repeat(32);
    fs::write(targets.join(&orphan_target), b"nobody names me").unwrap();
    fs::write(targets.join(".x.tmp-1-2"), b"half").unwrap();
    fs::write(stores.join("0123456789abcdef0123456789abcdef"), b"nobody names me").unwrap();
    fs::write(stores.join(".y.tmp-3-4"), b"half").unwrap();

    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 8, "{report}");
    let mut found = problems(&report);
    found.sort();
    assert_eq!(
        found,
        [
            ("/kmsfs.targets/.x.tmp-1-2".to_string(), "temp-file".to_string()),
            (format!("/kmsfs.targets/{orphan_target}"), "orphan-sidecar".to_string()),
            ("/kmsfs.xattrs/.y.tmp-3-4".to_string(), "temp-file".to_string()),
            ("/kmsfs.xattrs/0123456789abcdef0123456789abcdef".to_string(), "orphan-sidecar".to_string()),
        ],
        "{report}"
    );
    let (code, report) = fsck(&m, &["--repair"]);
    assert_eq!(code, 0, "everything found was a leftover: {report}");
    assert_eq!(report["Repaired"], 4, "{report}");
    let left: Vec<_> = fs::read_dir(&targets).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(left, named, "the named sidecar stays");
    assert_eq!(fs::read_dir(&stores).unwrap().count(), 0);
    let (code, report) = fsck(&m, &[]);
    assert_eq!(code, 0, "clean after repair: {report}");
    m.start();
    assert_eq!(fs::read_link(m.path("long")).unwrap().to_str().unwrap(), target);
}
