//! Stress: parallel extract/verify/delete loops with flat daemon memory, and key
//! administration running against the keystore while the mount is busy.
//!
//! `KMSFS_STRESS_SECS` (default 30) sets how long the extract loop runs; the admin test runs
//! a third of that.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mount::Mounted;
use common::TestEnv;

fn stress_secs() -> u64 {
    std::env::var("KMSFS_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30)
}

/// Every regular file under `dir` by relative path, with its SHA-256.
fn checksums(dir: &Path) -> BTreeMap<PathBuf, [u8; 32]> {
    let mut out = BTreeMap::new();
    common::mount::walk(dir, &mut |p, m| {
        if m.is_file() {
            let bytes = fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), kmsfs::crypto::sha256(&[&bytes]));
        }
    });
    out
}

/// The daemon's resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn parallel_extract_verify_delete_loops_keep_memory_flat() {
    const WORKERS: usize = 3;
    let m = Mounted::new();
    // The source tree: this repository's src/, as a tar file and extracted once off the mount.
    let tar = m.env.path("src.tar");
    run(Command::new("tar").arg("-C").arg(env!("CARGO_MANIFEST_DIR")).arg("-cf").arg(&tar).arg("src"));
    let reference_dir = m.env.path("reference");
    fs::create_dir(&reference_dir).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&reference_dir));
    let reference = checksums(&reference_dir);
    assert!(reference.len() > 20, "the source tree is too small: {} files", reference.len());

    let deadline = Instant::now() + Duration::from_secs(stress_secs());
    let rounds = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|k| {
            let (dir, tar, reference) = (m.path(&format!("w{k}")), tar.clone(), reference.clone());
            let (rounds, failed) = (rounds.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut mine = 0;
                while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                    let result = std::panic::catch_unwind(|| {
                        fs::create_dir(&dir).unwrap();
                        run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&dir));
                        let got = checksums(&dir);
                        assert!(got == reference, "worker {k}, round {mine}: the extracted tree differs");
                        run(Command::new("rm").arg("-rf").arg(&dir));
                        assert!(!dir.exists(), "rm -rf left {}", dir.display());
                    });
                    if let Err(e) = result {
                        failed.store(true, Ordering::Relaxed);
                        std::panic::resume_unwind(e);
                    }
                    mine += 1;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                mine
            })
        })
        .collect();
    // Memory after the first round of every worker, the baseline.
    assert!(
        common::mount::wait_until(Duration::from_secs(60), || rounds.load(Ordering::Relaxed) >= WORKERS
            || failed.load(Ordering::Relaxed)),
        "the first rounds took more than 60 s"
    );
    let baseline = rss_kib(m.pid());
    let done: Vec<usize> = workers.into_iter().map(|w| w.join().expect("a worker failed")).collect();
    let end = rss_kib(m.pid());
    eprintln!(
        "rounds per worker {done:?}; daemon RSS {baseline} KiB after the first rounds, {end} KiB at the end"
    );
    assert!(done.iter().all(|&n| n >= 2), "too few rounds: {done:?}");
    assert!(
        end * 2 <= baseline * 3,
        "daemon memory grew from {baseline} KiB to {end} KiB over {} rounds",
        done.iter().sum::<usize>()
    );
    assert_eq!(fs::read_dir(m.mnt()).unwrap().count(), 0, "every tree was removed");
}

/// `kmsfs --json audit --operation OP`, counted.
fn count(env: &TestEnv, operation: &str) -> usize {
    env.json(&["audit", "--operation", operation]).as_array().unwrap().len()
}

#[test]
fn admin_commands_during_a_busy_mount_never_hit_a_locked_database_or_lose_audit_rows() {
    let mut m = Mounted::new();
    m.ok(&["key", "create", "--alias", "alias/other"]);
    let policy = m.env.path("policy.json");
    fs::write(&policy, r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}]}"#)
        .unwrap();
    let ops = ["RotateKeyOnDemand", "DisableKey", "EnableKey", "PutKeyPolicy"];
    let before: Vec<usize> = ops.iter().map(|op| count(&m.env, op)).collect();
    fs::create_dir(m.path("load")).unwrap();

    let deadline = Instant::now() + Duration::from_secs((stress_secs() / 3).max(5));
    // The workload: file creates (each one audited as GenerateDataKey) and reads.
    let load_dir = m.path("load");
    let load = std::thread::spawn(move || {
        let mut created = 0;
        while Instant::now() < deadline {
            let path = load_dir.join(format!("f{created}"));
            fs::write(&path, format!("file {created}").repeat(100)).unwrap();
            created += 1;
            assert_eq!(fs::read(&path).unwrap(), format!("file {}", created - 1).repeat(100).into_bytes());
        }
        created
    });
    // Two admin threads on a key the workload does not use, and audit reads.
    let (keystore, passphrase) = (m.env.keystore.clone(), common::PASSPHRASE);
    let policy_path = policy.to_str().unwrap().to_string();
    let admin = |script: Vec<Vec<String>>| {
        let keystore = keystore.clone();
        std::thread::spawn(move || {
            let mut done: BTreeMap<String, usize> = BTreeMap::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let args = &script[i % script.len()];
                i += 1;
                let out = Command::new(env!("CARGO_BIN_EXE_kmsfs"))
                    .args(args)
                    .env("KMSFS_KEYSTORE", &keystore)
                    .env("KMSFS_PASSPHRASE", passphrase)
                    .env_remove("KMSFS_CLOCK_OFFSET_SECS")
                    .output()
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    out.status.success(),
                    "kmsfs {args:?} failed during the workload ({:?}): {stderr}",
                    out.status.code()
                );
                let busy = stderr.contains("database is locked") || stderr.contains("busy");
                assert!(!busy, "kmsfs {args:?}: {stderr}");
                *done.entry(args.join(" ")).or_default() += 1;
            }
            done
        })
    };
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let a = admin(vec![
        words("key rotate alias/other"),
        words("key disable alias/other"),
        words("key enable alias/other"),
        vec!["policy".into(), "put".into(), "alias/other".into(), policy_path.clone()],
    ]);
    let b = admin(vec![
        words("--json audit --limit 50"),
        words("--json key list"),
        words("audit verify"),
        words("key describe alias/other"),
        words("key rotations alias/other"),
    ]);
    let created = load.join().expect("the workload failed");
    let a = a.join().expect("an admin thread failed");
    let b = b.join().expect("an admin thread failed");
    eprintln!("{created} files created; admin commands {a:?} {b:?}");
    assert!(created > 50 && a.values().all(|&n| n >= 2), "too little happened: {created} files, {a:?}");

    // Mount events are written in batches, the last ones at unmount.
    let status = m.unmount();
    assert!(status.success(), "{status}\n{}", m.log_text());
    let log = m.log_text();
    // ("memory locked" is the daemon's mlockall notice, not a database lock.)
    let busy = log.contains("database is locked") || log.contains("SQLITE_BUSY");
    assert!(!log.contains("ERROR") && !busy, "the daemon logged errors:\n{log}");
    let n = |cmd: &str| a.get(cmd).copied().unwrap_or(0);
    let expected = [
        n("key rotate alias/other"),
        n("key disable alias/other"),
        n("key enable alias/other"),
        n(&format!("policy put alias/other {policy_path}")),
    ];
    for (k, op) in ops.iter().enumerate() {
        assert_eq!(count(&m.env, op) - before[k], expected[k], "{op} events");
    }
    let creates = m
        .json(&["audit", "--operation", "GenerateDataKey"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["Outcome"] == "Success" && e["Path"].as_str().is_some_and(|p| p.starts_with("/load/f")))
        .count();
    assert_eq!(creates, created, "one GenerateDataKey event per file created");
    assert!(m.ok(&["audit", "verify"]).contains("intact"));
}

#[test]
fn a_directory_that_takes_the_number_of_a_removed_open_one_works() {
    // ext4 hands a removed directory's inode number to the next new directory at once, and
    // the mount reports backing inode numbers. The kernel still holds the removed directory
    // (open here, as a shell's working directory would be): the new one must not be taken
    // for it, since a removed directory refuses every create in it (ENOENT). Found by the
    // extract loop above, where `tar` failed now and then with "Cannot utime".
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new();
    let mut reused = 0;
    for round in 0..5 {
        let old = m.path(&format!("old{round}"));
        fs::create_dir(&old).unwrap();
        let number = fs::metadata(&old).unwrap().ino();
        let held = fs::File::open(&old).unwrap();
        fs::remove_dir(&old).unwrap();
        for k in 0..20 {
            let new = m.path(&format!("new{round}-{k}"));
            fs::create_dir(&new).unwrap();
            fs::write(new.join("file"), b"inside")
                .unwrap_or_else(|e| panic!("create in {}: {e}", new.display()));
            assert_eq!(fs::read(new.join("file")).unwrap(), b"inside");
            assert_eq!(fs::read_dir(&new).unwrap().count(), 1);
            if fs::metadata(&new).unwrap().ino() == number {
                reused += 1;
                break;
            }
        }
        drop(held);
    }
    if reused == 0 {
        eprintln!("note: the backing file system never reused an inode number; nothing was tested");
    }
}
