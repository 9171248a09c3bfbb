//! Runs the README's walkthrough exactly as written (the shell block between the
//! `walkthrough:start` and `walkthrough:end` markers), with `kmsfs` on PATH and HOME in a
//! temporary directory, and checks what a reader is told to expect.

mod common;

use std::path::Path;
use std::process::Command;

use common::mount::MountGuard;

fn walkthrough() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("<!-- walkthrough:start -->").expect("start marker");
    let end = readme.find("<!-- walkthrough:end -->").expect("end marker");
    let block = &readme[start..end];
    let body = block.split_once("```sh\n").expect("a sh block").1;
    body.rsplit_once("```").expect("the block's end").0.to_string()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let script = walkthrough();
    assert!(script.lines().count() > 20, "the walkthrough is there: {script}");
    let home = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kmsfs")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let _unmount = MountGuard::new(&home.path().join("kmsfs-demo/vault"));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("HOME", home.path())
        .env("PATH", path)
        .env_remove("KMSFS_KEYSTORE")
        .env_remove("KMSFS_PASSPHRASE")
        .env_remove("KMSFS_PASSPHRASE_FILE")
        .current_dir(home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the walkthrough failed:\n{stdout}\n{stderr}");
    // What the comments promise.
    assert!(stdout.contains("refused while alias/finance is disabled"), "{stdout}");
    assert!(stderr.contains("Required key not available"), "{stderr}");
    assert_eq!(stdout.matches("q3 numbers").count(), 1, "read once the key is enabled again: {stdout}");
    assert!(stdout.contains("hello"));
    let countdown = stdout.contains("deletes in 7 days") || stdout.contains("deletes in 6 days 23 hours");
    assert!(countdown, "status shows the countdown: {stdout}");
    assert!(stdout.contains("kmsfs-demo/vault.enc  vault-enc"), "status lists the mount: {stdout}");
    assert!(stdout.contains("clean"), "fsck at the end: {stdout}");
    assert!(!stdout.contains("hello.txt"), "ls of the cipher dir shows no plaintext names");
    assert!(!stdout.contains("correct horse"), "the passphrase is never printed");
}
