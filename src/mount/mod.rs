//! `kmsfs mount` and `kmsfs umount`: checks everything that can fail in the foreground (so
//! the user sees the error), then serves the volume, in the background by default, and
//! returns once the mount is ready, as gocryptfs does.

pub mod control;
mod daemon;
mod readahead;
mod syslog;

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{MountOption, SessionACL};
use zeroize::Zeroizing;

use crate::content::volume_cipher::VolumeCipher;
use crate::crypto::SecretKey;
use crate::error::{Error, Result};
use crate::fs::{FsOptions, KmsFs};
use crate::keystore::Keystore;
use crate::kms::keyring::Access;
use crate::kms::remote::RemoteSettings;
use crate::kms::{Clock, Kms, Principal, SystemClock};
pub use crate::mounts::{
    is_mount_point, is_mounted_at, is_on_kmsfs, kmsfs_mounts, mount_table, mounted_at, KmsfsMount, MountEntry,
};
use crate::volume::lock::VolumeLock;
use crate::volume::VolumeConfig;

/// One thread reads and answers FUSE requests, polling for the next one after each reply
/// (`fs::linger`: a second reader would be woken for every request); large READs and
/// fsyncs go to worker threads.
const FUSE_THREADS: usize = 1;
/// Read-ahead of the mount: four READs of the largest size (`fs/filesystem.rs` MAX_IO, 1 MiB), so
/// that a sequential reader keeps both worker threads decrypting while the disk reads the
/// next (1 GiB cold `dd`: 1.6-1.8 s with 1 MiB, 1.06-1.28 s with 4 MiB, 1.24-1.46 s with 8).
const READ_AHEAD_KIB: u32 = 4096;

/// Everything `kmsfs mount` was asked for.
pub struct MountRequest {
    pub cipher_dir: PathBuf,
    pub mountpoint: PathBuf,
    pub keystore: PathBuf,
    pub foreground: bool,
    /// `-o` options, comma-separated lists already split.
    pub options: Vec<String>,
    /// How the caller words an error: a background daemon that fails before its mount is up
    /// reports it as text to the process that started it.
    pub word_error: fn(&Error) -> String,
}

/// A checked request: paths absolute, keystore unlocked, options parsed.
struct Prepared {
    cipher_dir: PathBuf,
    mountpoint: PathBuf,
    keystore: PathBuf,
    config: VolumeConfig,
    root: SecretKey,
    mount_options: Vec<MountOption>,
    acl: SessionACL,
    fs_options: FsOptions,
    remote: RemoteSettings,
    word_error: fn(&Error) -> String,
    /// Held while the volume is served: a second mount of it is refused.
    lock: Option<VolumeLock>,
}

/// Mounts a volume. In the background (default) this returns when the mount is ready;
/// with `foreground` it returns when the volume is unmounted. The passphrase is taken by
/// value and zeroized once the keystore is unlocked: the daemon forked below never returns
/// to the caller's frame, so a borrowed copy would live on in its memory.
pub fn mount(request: MountRequest, passphrase: Zeroizing<Vec<u8>>) -> Result<()> {
    let prepared = prepare(&request, &passphrase)?;
    drop(passphrase);
    if request.foreground {
        serve(prepared, |ready| {
            if ready.is_ok() {
                eprintln!(
                    "kmsfs: mounted {} at {} (Ctrl-C or `kmsfs umount` to unmount)",
                    request.cipher_dir.display(),
                    request.mountpoint.display()
                );
            }
        })
    } else {
        daemon::run_in_background(prepared)
    }
}

/// Checks a request as `mount` would (paths, keystore, passphrase, options) without
/// mounting: what `mount -f` (fake) asks of a mount helper.
pub fn check(request: &MountRequest, passphrase: &[u8]) -> Result<()> {
    prepare(request, passphrase).map(drop)
}

/// Checks `-o` options without mounting, so that a bad option is reported before the
/// passphrase is asked for or derived.
pub fn check_options(options: &[String]) -> Result<()> {
    let (rest, _) = remote_options(options)?;
    parse_options(&rest, Path::new("/")).map(drop)
}

/// Takes the remote-key options out of `-o` (`kms_check_secs=N`: how often each remote
/// key in use is re-checked at its service, default 60; `kms_grace_secs=N`: how long keys
/// already unwrapped keep serving while the service cannot be reached, default 300).
fn remote_options(options: &[String]) -> Result<(Vec<String>, RemoteSettings)> {
    let mut settings = RemoteSettings::default();
    let mut rest = Vec::new();
    for opt in options {
        let (slot, value) = match opt.trim().split_once('=') {
            Some(("kms_check_secs", v)) => (&mut settings.check_interval, v),
            Some(("kms_grace_secs", v)) => (&mut settings.grace, v),
            _ => {
                rest.push(opt.clone());
                continue;
            }
        };
        let secs: u64 = value.parse().ok().filter(|s| (1..=86_400).contains(s)).ok_or_else(|| {
            Error::InvalidArgument(format!("mount option '{opt}': give whole seconds, 1..86400"))
        })?;
        *slot = std::time::Duration::from_secs(secs);
    }
    Ok((rest, settings))
}

/// Unmounts a kmsfs mount point.
pub fn umount(mountpoint: &Path) -> Result<()> {
    let status = std::process::Command::new("fusermount3").arg("-u").arg(mountpoint).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err(Error::Io(format!(
            "cannot unmount {} (busy? close the files open there, or see `fusermount3 -u` above)",
            mountpoint.display()
        ))),
        Err(_) => {
            let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
                .map_err(|_| Error::InvalidArgument("mount point contains a NUL byte".into()))?;
            // SAFETY: plain syscall on a NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                Ok(())
            } else {
                Err(Error::io(
                    format!(
                        "cannot unmount {} (fusermount3 missing: apt install fuse3)",
                        mountpoint.display()
                    ),
                    std::io::Error::last_os_error(),
                ))
            }
        }
    }
}

fn prepare(request: &MountRequest, passphrase: &[u8]) -> Result<Prepared> {
    let cipher_dir = std::fs::canonicalize(&request.cipher_dir)
        .map_err(|e| Error::io(format!("cipher directory {}", request.cipher_dir.display()), e))?;
    let config = VolumeConfig::load(&cipher_dir)?;
    let mountpoint = std::fs::canonicalize(&request.mountpoint).map_err(|e| {
        Error::io(format!("mount point {} (create it with mkdir)", request.mountpoint.display()), e)
    })?;
    if !mountpoint.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        )));
    }
    if is_mount_point(&mountpoint) {
        return Err(Error::InvalidArgument(format!(
            "{} is already a mount point (busy); unmount it first",
            mountpoint.display()
        )));
    }
    if mountpoint.starts_with(&cipher_dir) {
        return Err(Error::InvalidArgument(
            "the mount point must not lie inside the cipher directory".into(),
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Io(
            "FUSE is not available: /dev/fuse is missing (load the module with `modprobe fuse`)".into(),
        ));
    }
    if unsafe { libc::geteuid() } != 0 && which("fusermount3").is_none() {
        return Err(Error::Io("fusermount3 is missing: install the fuse3 package".into()));
    }
    // Before the passphrase is derived: a volume mounted elsewhere is refused at once.
    let lock = VolumeLock::acquire(&cipher_dir)?;
    let keystore = std::fs::canonicalize(&request.keystore).unwrap_or_else(|_| request.keystore.clone());
    let ks = Keystore::open(&keystore)?;
    let root = ks.unlock(passphrase)?;
    config.require_keystore(&cipher_dir, &keystore, &ks.keystore_id()?)?;
    let (options, remote) = remote_options(&request.options)?;
    let (mount_options, acl, fs_options) = parse_options(&options, &cipher_dir)?;
    let word_error = request.word_error;
    Ok(Prepared {
        cipher_dir,
        mountpoint,
        keystore,
        config,
        root,
        mount_options,
        acl,
        fs_options,
        remote,
        word_error,
        lock,
    })
}

/// Turns `-o` options into FUSE mount options. kmsfs always mounts with
/// default_permissions (the kernel checks Unix permissions) and, where fusermount allows
/// it, auto_unmount (a killed daemon leaves no dead mount point behind); and noatime unless
/// told `atime`, which says what kmsfs does: it reads its backing files with O_NOATIME and
/// keeps no access times.
fn parse_options(options: &[String], cipher_dir: &Path) -> Result<(Vec<MountOption>, SessionACL, FsOptions)> {
    let mut out = vec![
        MountOption::FSName(format!("kmsfs:{}", cipher_dir.display())),
        MountOption::Subtype("kmsfs".into()),
        MountOption::DefaultPermissions,
    ];
    let mut acl = SessionACL::Owner;
    let mut read_only = false;
    let mut atime = false;
    let mut writeback_cache = false;
    for opt in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        out.push(match opt {
            "allow_other" => {
                acl = SessionACL::All;
                continue;
            }
            "allow_root" => {
                acl = SessionACL::RootAndOwner;
                continue;
            }
            "default_permissions" | "rw" => continue,
            "writeback_cache" => {
                writeback_cache = true;
                continue;
            }
            "ro" => {
                read_only = true;
                MountOption::RO
            }
            "nosuid" => MountOption::NoSuid,
            "suid" => MountOption::Suid,
            "nodev" => MountOption::NoDev,
            "dev" => MountOption::Dev,
            "noexec" => MountOption::NoExec,
            "exec" => MountOption::Exec,
            "noatime" => continue,
            "atime" => {
                atime = true;
                MountOption::Atime
            }
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown mount option '{other}' (kmsfs takes allow_other, allow_root, ro, rw, \
                     nosuid, suid, nodev, dev, noexec, exec, noatime, atime, sync, async, \
                     writeback_cache)"
                )))
            }
        });
    }
    if !atime {
        out.push(MountOption::NoAtime);
    }
    if auto_unmount_possible() {
        if acl == SessionACL::Owner {
            acl = SessionACL::RootAndOwner; // fusermount needs it for auto_unmount
        }
        out.push(MountOption::AutoUnmount);
    }
    Ok((out, acl, FsOptions { read_only, writeback_cache }))
}

/// fusermount3 handles auto_unmount only together with allow_other/allow_root, which a
/// non-root user may use only if /etc/fuse.conf says user_allow_other.
fn auto_unmount_possible() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    root || std::fs::read_to_string("/etc/fuse.conf")
        .map(|c| c.lines().any(|l| l.trim() == "user_allow_other"))
        .unwrap_or(false)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.exists())
}

/// Builds the filesystem and serves it until unmounted. `ready` hears once whether the
/// mount came up.
fn serve(p: Prepared, ready: impl FnOnce(std::result::Result<(), String>)) -> Result<()> {
    let mut ready = Some(ready);
    let mut report = |r: std::result::Result<(), String>| {
        if let Some(f) = ready.take() {
            f(r)
        }
    };
    let word_error = p.word_error;
    let result = serve_inner(p, &mut report);
    if let Err(e) = &result {
        report(Err(word_error(e)));
    }
    result
}

fn serve_inner(mut p: Prepared, report: &mut dyn FnMut(std::result::Result<(), String>)) -> Result<()> {
    if let Some(lock) = &mut p.lock {
        lock.record_owner(); // the daemon's pid, after the fork
    }
    // Released when this function returns: after the session has ended and the filesystem
    // (its trash, its pending metadata fsyncs) is gone.
    let _lock = p.lock.take();
    // Before the master keys are unwrapped; the root key already in memory is covered too.
    // Memory locks are not inherited across fork, so this runs in the serving process.
    match crate::harden::lock_memory() {
        Ok(()) => log::info!("memory locked (mlockall): key material stays out of swap"),
        Err(why) => log::warn!("{why}"),
    }
    limit_malloc_arenas();
    let signals = daemon::block_termination_signals();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::from_env().map_err(Error::InvalidArgument)?);
    let me = Principal::current_process();
    // The daemon opens the keystore once (a connection made before the fork must not be
    // used after it); the key ring reads it through a connection of its own.
    let kms = Kms::new(Keystore::open(&p.keystore)?, p.root.clone(), clock, &me)?;
    let (keyring, writer) = kms.into_key_ring(me.clone())?;
    crate::volume::remote_keys::attach(&keyring, &p.cipher_dir, &p.config, p.remote.clone())?;
    let keyring = Arc::new(keyring);
    let (names_key, _) = p.config.unwrap_names_key(&keyring, Access { caller: &me, path: "/" })?;
    let keyring_for_stats = Arc::clone(&keyring);
    let mut fs =
        KmsFs::new(p.cipher_dir.clone(), p.config, keyring, VolumeCipher::new(&names_key), p.fs_options)
            .map_err(|e| Error::io(format!("cannot read {}", p.cipher_dir.display()), e))?;
    let mountpoint = p.mountpoint.clone();
    fs.set_read_only_probe(move || {
        mount_table()
            .into_iter()
            .find(|m| m.mount_point == mountpoint && m.fstype == "fuse.kmsfs")
            .map(|m| m.read_only)
    });
    drop(names_key);

    let mut config = fuser::Config::default();
    config.mount_options = p.mount_options;
    config.acl = p.acl;
    config.n_threads = Some(FUSE_THREADS);
    let linger = fs.linger();
    let session = fuser::Session::new(fs, &p.mountpoint, &config)
        .map_err(|e| Error::io(format!("cannot mount at {}", p.mountpoint.display()), e))?;
    linger.attach(session.as_fd().as_raw_fd());
    log::info!("mounted {} at {}", p.cipher_dir.display(), p.mountpoint.display());
    readahead::raise(&p.mountpoint, READ_AHEAD_KIB);
    report(Ok(()));
    daemon::unmount_on_signal(signals, p.mountpoint.clone());
    let remote_calls = keyring_for_stats;
    let run = session.run();
    if let Some(r) = remote_calls.remote().filter(|r| !r.records().is_empty()) {
        log::info!("{} calls to key services during the mount", r.calls());
    }
    // The ring holds an audit sink: it must go before the writer can finish.
    drop(remote_calls);
    // The session has dropped the filesystem and with it every audit sink: drain them.
    writer.finish();
    log::info!("unmounted {}", p.mountpoint.display());
    match run {
        // After a (lazy) unmount the kernel may end the connection with ECONNABORTED
        // instead of ENODEV: either way the session is over as asked.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        other => other.map_err(|e| Error::io("the FUSE session failed", e)),
    }
}

/// Two malloc arenas for the whole daemon instead of glibc's default of up to eight per
/// core: each FUSE thread's short-lived request buffers (up to 1 MiB) would otherwise be
/// spread over arenas of their own, and the peak RSS grows with them (the budget for the
/// daemon's peak RSS is 64 MiB, docs/PERFORMANCE.md). Must run before the threads start.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
