//! Shared helpers for the integration tests: a temporary keystore and a way to run the real
//! `kmsfs` binary against it.
#![allow(dead_code)]

pub mod mount;
pub mod users;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const PASSPHRASE: &str = "correct horse battery staple";

/// A temporary directory with a keystore in it (cheap argon2 costs so tests stay fast).
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub keystore: PathBuf,
    /// Set in every command's environment (e.g. AWS credentials for a remote key service).
    pub vars: Vec<(String, String)>,
}

impl TestEnv {
    pub fn new() -> Self {
        let env = Self::without_keystore();
        env.ok(&["keystore", "init", "--argon2-memory-kib", "256", "--argon2-iterations", "1"]);
        env
    }

    pub fn without_keystore() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let keystore = dir.path().join("keystore.db");
        TestEnv { dir, keystore, vars: Vec::new() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `kmsfs` command with this environment's keystore and passphrase.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kmsfs"));
        c.args(args)
            .env("KMSFS_KEYSTORE", &self.keystore)
            .env("KMSFS_PASSPHRASE", PASSPHRASE)
            .env_remove("KMSFS_PASSPHRASE_FILE")
            .env_remove("KMSFS_CLOCK_OFFSET_SECS")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        c
    }

    /// A `kmsfs` command whose KMS clock runs `offset_secs` ahead: the test suite's binary,
    /// the only one that honours `KMSFS_CLOCK_OFFSET_SECS`.
    pub fn cmd_at(&self, offset_secs: i64, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kmsfs-test-clock"));
        c.args(args)
            .env("KMSFS_KEYSTORE", &self.keystore)
            .env("KMSFS_PASSPHRASE", PASSPHRASE)
            .env_remove("KMSFS_PASSPHRASE_FILE")
            .env("KMSFS_CLOCK_OFFSET_SECS", offset_secs.to_string())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run kmsfs")
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(self.cmd(args), stdin)
    }

    /// Runs and asserts success; returns stdout as text.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(&out, args);
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and asserts failure with `code`; returns stderr as text.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_failure(&out, args, code)
    }

    pub fn create_key(&self, alias: &str) -> String {
        self.ok(&["key", "create", "--alias", alias]).trim().to_string()
    }

    /// The customer key `alias/vol` and a volume under it in `cipher`; returns the key id.
    pub fn init_volume(&self, cipher: &Path) -> String {
        let key_id = self.create_key("alias/vol");
        self.ok(&["volume", "init", cipher.to_str().unwrap(), "--key", "alias/vol"]);
        key_id
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("valid JSON")
    }
}

pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn kmsfs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

pub fn assert_success(out: &Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "kmsfs {what:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn assert_failure(out: &Output, what: &[&str], code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "kmsfs {what:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "kmsfs {what:?} panicked: {stderr}");
    stderr
}

pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
