//! An independent POSIX conformance suite on a mount: pjdfstest (the Rust port of the
//! FreeBSD/Linux test suite, crates.io `pjdfstest`, installed by scripts/install-deps.sh),
//! run as root on a volume mounted with `-o allow_other` whose key lets everyone through.
//! The suite switches users itself (seteuid to nobody and to daemon) and covers chmod,
//! chown, link, mkdir, mkfifo, mknod, open, rename, rmdir, symlink, truncate, ftruncate,
//! unlink, utimensat and posix_fallocate. Every case it runs must pass, as on ext4.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::mount::Mounted;
use common::users::share_with_everyone;

/// The suite's settings: the optional features ext4 has, and the two users it switches to.
const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["daemon", "daemon"]]
"#;

/// The pjdfstest binary: `KMSFS_PJDFSTEST`, else on PATH, else in cargo's bin directory.
fn pjdfstest() -> PathBuf {
    if let Some(p) = std::env::var_os("KMSFS_PJDFSTEST") {
        return p.into();
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    let path_dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    path_dirs.into_iter().chain(cargo_bin).map(|d| d.join("pjdfstest")).find(|p| p.is_file()).unwrap_or_else(
        || panic!("pjdfstest is not installed: run scripts/install-deps.sh (cargo install pjdfstest)"),
    )
}

#[test]
fn pjdfstest_finds_no_failure_on_a_shared_mount() {
    // Started under umask 077, as from a careful admin's shell: what the suite creates must
    // still get the modes it asks for.
    let m = Mounted::with_daemon_umask(&["allow_other"], 0o077);
    share_with_everyone(&m);
    let config = m.env.path("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // A second file system for the EXDEV cases: the test's own temporary directory.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(pjdfstest())
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(m.mnt())
        .arg("-s")
        .arg(other.path())
        .output()
        .expect("run pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.trim_end().ends_with("FAILED")).collect();
    let summary = stdout.lines().find(|l| l.starts_with("Summary:")).unwrap_or("no summary");
    eprintln!("pjdfstest: {summary}");
    assert!(
        out.status.success() && failed.is_empty() && summary.contains(" 0 failed"),
        "pjdfstest failed ({}): {summary}\n{}\n--- output ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        failed.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}
