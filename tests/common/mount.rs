//! A mounted kmsfs volume for the filesystem tests: a keystore with the customer key
//! `alias/vol`, a volume under it, and `kmsfs mount -f` running as a child process whose
//! log goes to a file the tests can read. Dropping the fixture unmounts and reaps the child,
//! also when the test panicked.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::TestEnv;

/// How long a mount may take to come up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to exit after its mount is gone.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Mounted {
    pub env: TestEnv,
    /// Key id of `alias/vol`, the volume's key.
    pub key_id: String,
    cipher: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    options: Vec<String>,
    /// RUST_LOG of the daemon.
    rust_log: String,
    /// The umask the daemon is started with (`None`: this process's).
    daemon_umask: Option<u32>,
    child: Option<Child>,
}

impl Mounted {
    pub fn new() -> Self {
        Self::with_options(&[])
    }

    /// Mounts with `-o OPT,...` (e.g. `allow_other`).
    pub fn with_options(options: &[&str]) -> Self {
        Self::build(options, None, "info")
    }

    /// Mounts with `-o OPT,...` and the daemon's RUST_LOG set to `level` (e.g. `debug`).
    pub fn with_log_level(options: &[&str], level: &str) -> Self {
        Self::build(options, None, level)
    }

    /// Mounts with `-o OPT,...`, the daemon started under `umask` (as from a shell, a unit
    /// file or a script with that umask).
    pub fn with_daemon_umask(options: &[&str], umask: u32) -> Self {
        let mut m = Self::prepare(options, None, "info");
        m.daemon_umask = Some(umask);
        m.start();
        m
    }

    /// Mounts a volume whose cipher directory is `parent/cipher` (e.g. on a small tmpfs), with
    /// the keystore, mount point and log in the usual temporary directory.
    pub fn with_cipher_parent(parent: &Path) -> Self {
        Self::build(&[], Some(parent), "info")
    }

    fn build(options: &[&str], cipher_parent: Option<&Path>, level: &str) -> Self {
        let mut m = Self::prepare(options, cipher_parent, level);
        m.start();
        m
    }

    /// A volume ready to mount (not yet mounted).
    fn prepare(options: &[&str], cipher_parent: Option<&Path>, level: &str) -> Self {
        let env = TestEnv::new();
        let cipher = cipher_parent.map(|p| p.join("cipher")).unwrap_or_else(|| env.path("cipher"));
        let key_id = env.init_volume(&cipher);
        Self::unstarted(env, &cipher, key_id, options, level)
    }

    /// Mounts the volume already made in `cipher` (e.g. under a remote key), with the mount
    /// point `mnt` and the log `mount.log` in `env`'s directory.
    pub fn of_volume(env: TestEnv, cipher: &Path, key_id: String, options: &[&str], level: &str) -> Self {
        let mut m = Self::unstarted(env, cipher, key_id, options, level);
        m.start();
        m
    }

    /// The volume in `cipher`, ready to mount (not yet mounted).
    fn unstarted(env: TestEnv, cipher: &Path, key_id: String, options: &[&str], level: &str) -> Self {
        let mnt = env.path("mnt");
        std::fs::create_dir(&mnt).unwrap();
        // mountinfo lists canonical paths.
        let mnt = std::fs::canonicalize(&mnt).unwrap();
        let cipher = std::fs::canonicalize(cipher).unwrap();
        let log = env.path("mount.log");
        Mounted {
            env,
            key_id,
            cipher,
            mnt,
            log,
            options: options.iter().map(|s| s.to_string()).collect(),
            rust_log: level.to_string(),
            daemon_umask: None,
            child: None,
        }
    }

    /// Starts `kmsfs mount -f` and waits until the mount point is in mountinfo.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open mount log");
        let (cipher, mnt) = (self.cipher.to_str().unwrap(), self.mnt.to_str().unwrap());
        let joined = self.options.join(",");
        let mut args = vec!["mount", "-f", cipher, mnt];
        if !joined.is_empty() {
            args.extend(["-o", joined.as_str()]);
        }
        let mut cmd = self.env.cmd(&args);
        if let Some(umask) = self.daemon_umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(umask as libc::mode_t);
                    Ok(())
                })
            };
        }
        let child = cmd
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn kmsfs mount");
        self.child = Some(child);
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_mounted(&self.mnt) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("kmsfs mount exited ({status}) before the mount was ready:\n{}", self.log_text());
            }
            // Drop unmounts and reaps the child.
            assert!(
                Instant::now() < deadline,
                "mount not ready after {MOUNT_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts with `fusermount3 -u` and returns the daemon's exit status. Retries for a
    /// while on EBUSY: a process another test is spawning right now holds copies of this
    /// process's descriptors until it execs.
    pub fn unmount(&mut self) -> ExitStatus {
        let mut last_error = String::new();
        let unmounted = wait_until(Duration::from_secs(3), || {
            let out = Command::new("fusermount3").arg("-u").arg(&self.mnt).output().expect("run fusermount3");
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(unmounted, "fusermount3 -u {} failed: {last_error}", self.mnt.display());
        self.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| panic!("daemon still running:\n{}", self.log_text()))
    }

    /// Unmounts and mounts again: every cache (kernel and daemon) starts cold.
    pub fn remount(&mut self) {
        let status = self.unmount();
        assert!(status.success(), "daemon exited with {status}:\n{}", self.log_text());
        self.start();
    }

    /// Mounts the same volume again with other `-o` options (`m` must be unmounted).
    pub fn remount_with(mut m: Mounted, options: &[&str]) -> Mounted {
        assert!(m.child.is_none(), "unmount first");
        m.options = options.iter().map(|s| s.to_string()).collect();
        m.start();
        m
    }

    /// The daemon's pid (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Sends `sig` to the daemon (this child only, by pid).
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Kills the daemon with SIGKILL, as a crash would (no unmount, no cleanup), and reaps it.
    pub fn kill_daemon(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| panic!("daemon still running after SIGKILL"))
    }

    /// Mounts again after the daemon died: waits for auto_unmount to take the dead mount
    /// away, unmounts it with `fusermount3 -u` (lazily if need be) where it stays, then
    /// starts a new daemon. Descriptors into the dead mount must be closed first.
    pub fn restart_after_crash(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        if !wait_until(Duration::from_secs(3), || !is_mounted(&self.mnt)) {
            for args in [["-u"], ["-uz"]] {
                if is_mounted(&self.mnt) {
                    let _ =
                        Command::new("fusermount3").args(args).arg(&self.mnt).stderr(Stdio::null()).status();
                }
            }
        }
        assert!(!is_mounted(&self.mnt), "the dead mount at {} stays mounted", self.mnt.display());
        self.start();
    }

    /// Waits up to `timeout` for the daemon to exit; reaps it and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("wait for kmsfs") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    pub fn cipher(&self) -> &Path {
        &self.cipher
    }

    /// `rel` inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }

    /// Everything the daemon has logged so far (stdout and stderr, across remounts).
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits up to 5 s until the log contains `needle`; returns whether it did.
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(5), || self.log_text().contains(needle))
    }

    /// Runs an admin command against the mount's keystore.
    pub fn kmsfs(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    /// Runs an admin command, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.env.ok(args)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        self.env.json(args)
    }

    /// The backing file of a file on the mount, found by inode number (the mount shows the
    /// backing files' own inode numbers), so this does not depend on how names are stored.
    pub fn backing_of(&self, on_mount: &Path) -> PathBuf {
        let ino = std::fs::symlink_metadata(on_mount)
            .unwrap_or_else(|e| panic!("stat {}: {e}", on_mount.display()))
            .ino();
        find_ino(&self.cipher, ino)
            .unwrap_or_else(|| panic!("no backing file with inode {ino} for {}", on_mount.display()))
    }

    /// Every regular file in the cipher directory (recursively).
    pub fn backing_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.cipher, &mut |p, m| {
            if m.is_file() {
                out.push(p.to_path_buf())
            }
        });
        out
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let quiet = |args: &[&str]| {
                Command::new("fusermount3")
                    .args(args)
                    .arg(&self.mnt)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            };
            if !wait_until(Duration::from_secs(1), || quiet(&["-u"])) {
                quiet(&["-uz"]);
            }
        }
        if self.wait_exit(EXIT_TIMEOUT).is_none() {
            if let Some(mut child) = self.child.take() {
                // Child::kill signals this child's pid only.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Whether `path` is a mount point: field 5 of a line of /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    mount_count(path) > 0
}

/// How many mounts sit on `path`.
pub fn mount_count(path: &Path) -> usize {
    let wanted = escape_mountinfo(&path.to_string_lossy());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        .count()
}

fn escape_mountinfo(s: &str) -> String {
    s.replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The errno of an I/O error (0 if it has none).
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// The errno of the last failed libc call.
pub fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Deterministic, non-repeating test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Opens `path` read-only.
pub fn open_ro(path: &Path) -> File {
    File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn find_ino(dir: &Path, ino: u64) -> Option<PathBuf> {
    let mut found = None;
    walk(dir, &mut |p, m| {
        if found.is_none() && m.ino() == ino {
            found = Some(p.to_path_buf());
        }
    });
    found
}

/// Calls `f` on every entry under `dir` (not following symlinks).
pub fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        f(&path, &meta);
        if meta.is_dir() {
            walk(&path, f);
        }
    }
}

/// Unmounts `path` on drop if something is mounted there (for mounts a test makes itself,
/// e.g. a background `kmsfs mount`, whose daemon then exits on its own), and kills the
/// daemon pid it was told about if that is still alive after 5 s.
pub struct MountGuard {
    pub path: PathBuf,
    pub daemon_pid: Option<u32>,
}

impl MountGuard {
    pub fn new(path: &Path) -> Self {
        MountGuard { path: path.to_path_buf(), daemon_pid: None }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        while is_mounted(&self.path) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                let _ = Command::new("fusermount3").arg("-uz").arg(&self.path).stderr(Stdio::null()).status();
                break;
            }
        }
        if let Some(pid) = self.daemon_pid {
            if !wait_until(EXIT_TIMEOUT, || !process_alive(pid)) {
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(true)
        }
        Err(_) => false,
    }
}
