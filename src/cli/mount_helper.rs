//! kmsfs as a mount(8) helper, so that `mount -t fuse.kmsfs CIPHERDIR MOUNTPOINT -o ...` and
//! /etc/fstab lines mount volumes (see docs/BOOT.md).
//!
//! Two ways in, one code path:
//! - As `/sbin/mount.fuse.kmsfs` (a symlink to the kmsfs binary), which mount(8) runs for type
//!   `fuse.kmsfs`: `mount.fuse.kmsfs CIPHERDIR MOUNTPOINT [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`.
//!   mount(8) has already dropped `auto`, `noauto`, `comment=` and `x-*`, and passes the rest.
//! - Without that symlink, mount(8) runs fuse3's generic `mount.fuse3 ... -t fuse.kmsfs`. That
//!   drops its own options (`setuid=`, `drop_privileges`, `user`, `users`, `nouser`, `auto`,
//!   `noauto`, `nofail`, `_netdev`), adds `dev,suid` unless `nodev`/`nosuid` were given, and runs
//!   `kmsfs CIPHERDIR MOUNTPOINT -o OPTS` through /bin/sh, with `kmsfs` found on mount's PATH.
//!
//! Options: `keystore=PATH` and `passphrase_file=PATH` are kmsfs's own and go no further (they
//! never reach fusermount or the kernel, so /proc/mounts does not show them); options that
//! fstab and mount(8) add but FUSE does not take are ignored; everything else goes through the
//! `-o` parsing of `kmsfs mount`, which refuses what it does not know. The mount goes to the
//! background and the helper returns once it is ready, as `kmsfs mount` does.
//!
//! A helper answers in mount(8)'s exit codes: 1 for a bad invocation or option, 32 for a
//! mount that failed (wrong passphrase, missing keystore, ...), with the reason on stderr.

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::passphrase::{self, Passphrase};
use crate::error::{Error, Result};
use crate::keystore;
use crate::mount::{self, MountRequest};

/// The name mount(8) looks for: `mount.` + the fstab type `fuse.kmsfs`.
pub const HELPER_NAME: &str = "mount.fuse.kmsfs";

/// mount(8)'s exit code for a bad invocation.
const EX_USAGE: i32 = 1;
/// mount(8)'s exit code for a failed mount.
const EX_FAIL: i32 = 32;

const USAGE: &str = "\
usage: mount.fuse.kmsfs CIPHERDIR MOUNTPOINT [-sfnv] [-o OPT[,OPT...]]
       kmsfs CIPHERDIR MOUNTPOINT -o OPT[,OPT...]      (as run by mount.fuse3)

kmsfs options:   keystore=PATH, passphrase_file=PATH (a root-owned file, mode 0600)
mount options:   allow_other, allow_root, ro, rw, nosuid, suid, nodev, dev, noexec, exec,
                 noatime, atime, sync, async, writeback_cache
ignored:         defaults, auto, noauto, nofail, _netdev, user, users, nouser, user=NAME,
                 owner, group, comment=..., x-*, X-*

fstab:  /srv/data.enc  /srv/data  fuse.kmsfs  keystore=/var/lib/kmsfs/keystore.db,passphrase_file=/etc/kmsfs/passphrase,allow_other  0  0";

/// Runs kmsfs as a mount helper if that is how it was invoked (by its name, or with the
/// `kmsfs CIPHERDIR MOUNTPOINT ...` shape that mount.fuse3 uses); returns the exit code then.
pub fn main_if_invoked() -> Option<i32> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if !is_helper_invocation(&args) {
        return None;
    }
    Some(run(&args[1..]))
}

/// `mount.fuse.kmsfs ...`, or `kmsfs SOURCE MOUNTPOINT ...` where SOURCE is not a subcommand
/// and looks like a path (contains a '/' or is a directory).
fn is_helper_invocation(args: &[OsString]) -> bool {
    let Some(argv0) = args.first() else { return false };
    if Path::new(argv0).file_name() == Some(OsStr::new(HELPER_NAME)) {
        return true;
    }
    args.len() >= 3 && looks_like_source(&args[1])
}

fn looks_like_source(arg: &OsStr) -> bool {
    let bytes = arg.as_encoded_bytes();
    if bytes.is_empty() || bytes[0] == b'-' || arg.to_str().is_some_and(is_subcommand) {
        return false;
    }
    bytes.contains(&b'/') || Path::new(arg).is_dir()
}

/// Whether `name` is one of kmsfs's subcommands (asked of clap, so new ones count too).
fn is_subcommand(name: &str) -> bool {
    name == "help"
        || super::Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == name || c.get_all_aliases().any(|a| a == name))
}

/// A helper command line, parsed.
#[derive(Debug, Default, PartialEq)]
struct HelperArgs {
    cipher_dir: PathBuf,
    mountpoint: PathBuf,
    /// Every `-o` list, split at commas.
    options: Vec<String>,
    /// `-s`: ignore options kmsfs does not know instead of failing.
    sloppy: bool,
    /// `-f`: check everything, mount nothing.
    fake: bool,
    /// `-v`: say what is ignored.
    verbose: bool,
    help: bool,
}

fn parse_args(args: &[OsString]) -> std::result::Result<HelperArgs, String> {
    let mut out = HelperArgs::default();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let text = arg.to_str();
        match text {
            Some("-h" | "--help") => out.help = true,
            Some("-o") => {
                let value = it.next().ok_or("option -o needs a value")?;
                out.options.extend(split_options(value)?);
            }
            Some("-t") => {
                let value = it.next().ok_or("option -t needs a value")?;
                check_type(value)?;
            }
            Some(t) if t.starts_with("-N") || t.starts_with("--namespace") => {
                return Err("-N (mount in another mount namespace) is not supported by kmsfs".into())
            }
            Some(t) if t.starts_with("-o") => out.options.extend(split_options(OsStr::new(&t[2..]))?),
            Some(t) if t.starts_with('-') && t.len() > 1 => {
                for flag in t[1..].chars() {
                    match flag {
                        's' => out.sloppy = true,
                        'f' => out.fake = true,
                        'v' => out.verbose = true,
                        'n' => {} // kmsfs writes no /etc/mtab
                        other => return Err(format!("unknown flag -{other}")),
                    }
                }
            }
            _ if arg.as_encoded_bytes().starts_with(b"-") && arg.len() > 1 => {
                return Err(format!("unknown flag {}", arg.to_string_lossy()))
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    if out.help {
        return Ok(out);
    }
    let [cipher_dir, mountpoint]: [PathBuf; 2] = positional
        .try_into()
        .map_err(|p: Vec<PathBuf>| format!("expected CIPHERDIR and MOUNTPOINT, got {} paths", p.len()))?;
    if mountpoint.starts_with("/dev/fd") {
        return Err(
            "drop_privileges is not supported: kmsfs mounts the volume itself (remove the option)".into()
        );
    }
    out.cipher_dir = cipher_dir;
    out.mountpoint = mountpoint;
    Ok(out)
}

fn split_options(value: &OsStr) -> std::result::Result<Vec<String>, String> {
    let text = value.to_str().ok_or("mount options must be UTF-8")?;
    Ok(text.split(',').map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect())
}

/// mount(8) passes `-t fuse.kmsfs` to a generic helper; accept it, refuse other types.
fn check_type(value: &OsStr) -> std::result::Result<(), String> {
    match value.to_str() {
        Some("fuse.kmsfs" | "kmsfs") => Ok(()),
        _ => Err(format!("this helper mounts type fuse.kmsfs, not {}", value.to_string_lossy())),
    }
}

/// The `-o` options sorted by who takes them.
#[derive(Debug, Default, PartialEq)]
struct Options {
    keystore: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    /// For the FUSE mount (`kmsfs mount -o`).
    mount: Vec<String>,
    /// fstab's and mount(8)'s options that mean nothing to a FUSE mount.
    ignored: Vec<String>,
}

fn classify(options: &[String]) -> std::result::Result<Options, String> {
    let mut out = Options::default();
    for opt in options {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt.as_str(), None),
        };
        match (name, value) {
            ("keystore" | "passphrase_file", None | Some("")) => {
                return Err(format!("option {name} needs a value: {name}=PATH"))
            }
            ("keystore", Some(path)) => out.keystore = Some(PathBuf::from(path)),
            ("passphrase_file", Some(path)) => out.passphrase_file = Some(PathBuf::from(path)),
            ("setuid", _) | ("drop_privileges", None) => {
                return Err(format!(
                    "option '{opt}' is not supported by kmsfs: the daemon runs as the user who mounts"
                ))
            }
            _ if is_ignored(name, value) => out.ignored.push(opt.clone()),
            _ => out.mount.push(opt.clone()),
        }
    }
    Ok(out)
}

/// Options mount(8) and fstab use for themselves: when to mount, who may, boot ordering.
fn is_ignored(name: &str, value: Option<&str>) -> bool {
    if name.starts_with("x-") || name.starts_with("X-") {
        return true;
    }
    match value {
        None => matches!(
            name,
            "defaults"
                | "auto"
                | "noauto"
                | "nofail"
                | "_netdev"
                | "user"
                | "users"
                | "nouser"
                | "owner"
                | "noowner"
                | "group"
                | "nogroup"
        ),
        Some(_) => matches!(name, "user" | "comment"),
    }
}

/// What went wrong, and which exit code says so.
enum Failure {
    Usage(String),
    Mount(Error),
}

fn run(args: &[OsString]) -> i32 {
    let parsed = match parse_args(args) {
        Ok(a) if a.help => {
            println!("{USAGE}");
            return 0;
        }
        Ok(a) => a,
        Err(e) => {
            eprintln!("kmsfs: error: {e}\n{USAGE}");
            return EX_USAGE;
        }
    };
    match mount_as_helper(&parsed) {
        Ok(()) => 0,
        Err(Failure::Usage(e)) => {
            eprintln!("kmsfs: error: {e}");
            EX_USAGE
        }
        Err(Failure::Mount(e)) => {
            let reason = match e {
                Error::KeystoreMissing(path) => {
                    format!("no keystore at {}: check keystore=PATH in the mount options", path.display())
                }
                other => super::errors::describe(&other),
            };
            eprintln!(
                "kmsfs: error: cannot mount {} at {}: {reason}",
                parsed.cipher_dir.display(),
                parsed.mountpoint.display()
            );
            EX_FAIL
        }
    }
}

fn mount_as_helper(args: &HelperArgs) -> std::result::Result<(), Failure> {
    let mut opts = classify(&args.options).map_err(Failure::Usage)?;
    if args.verbose && !opts.ignored.is_empty() {
        eprintln!("kmsfs: ignoring {}", opts.ignored.join(","));
    }
    if args.sloppy {
        opts.mount.retain(|o| {
            let known = mount::check_options(std::slice::from_ref(o)).is_ok();
            if !known {
                eprintln!("kmsfs: ignoring unknown mount option '{o}' (-s)");
            }
            known
        });
    }
    mount::check_options(&opts.mount).map_err(|e| {
        Failure::Usage(format!("{e}; as a mount helper also keystore=PATH and passphrase_file=PATH"))
    })?;

    // `mount -a` runs again for a line whose volume is already mounted: nothing to do.
    if let (Ok(cipher), Ok(mnt)) =
        (std::fs::canonicalize(&args.cipher_dir), std::fs::canonicalize(&args.mountpoint))
    {
        if mount::is_mounted_at(&cipher, &mnt) {
            eprintln!("kmsfs: {} is already mounted at {}", cipher.display(), mnt.display());
            return Ok(());
        }
    }

    let keystore = opts
        .keystore
        .or_else(|| std::env::var_os("KMSFS_KEYSTORE").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(keystore::default_path);
    let pass = obtain_passphrase(opts.passphrase_file.as_deref(), &keystore).map_err(Failure::Mount)?;
    let request = MountRequest {
        cipher_dir: args.cipher_dir.clone(),
        mountpoint: args.mountpoint.clone(),
        keystore,
        foreground: false,
        options: opts.mount,
        word_error: super::errors::describe,
    };
    if args.fake {
        mount::check(&request, &pass).map_err(Failure::Mount)
    } else {
        mount::mount(request, pass).map_err(Failure::Mount)
    }
}

/// From `passphrase_file=`, KMSFS_PASSPHRASE_FILE, KMSFS_PASSPHRASE, or the terminal if there
/// is one (an interactive `mount`); at boot there is none, so the file is needed.
fn obtain_passphrase(file: Option<&Path>, keystore: &Path) -> Result<Passphrase> {
    let env_file = std::env::var_os("KMSFS_PASSPHRASE_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
        warn_if_exposed(&path);
        return passphrase::from_file(&path);
    }
    if !passphrase::in_environment("KMSFS_PASSPHRASE") && !std::io::stdin().is_terminal() {
        return Err(Error::InvalidArgument(
            "no passphrase: add passphrase_file=PATH to the mount options (a root-owned file, mode 0600)"
                .into(),
        ));
    }
    let prompt = format!("Passphrase for {}: ", keystore.display());
    passphrase::obtain(None, "KMSFS_PASSPHRASE", &prompt, false)
}

/// A passphrase file others can read gives the keystore away.
fn warn_if_exposed(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            eprintln!(
                "kmsfs: warning: passphrase file {} is accessible to group or others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn strings(opts: &[&str]) -> Vec<String> {
        opts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn invoked_by_name_or_by_mount_fuse3_shape() {
        assert!(is_helper_invocation(&os(&["/sbin/mount.fuse.kmsfs", "/a", "/b"])));
        assert!(is_helper_invocation(&os(&["mount.fuse.kmsfs"])), "by name even without arguments");
        assert!(is_helper_invocation(&os(&["kmsfs", "/srv/data.enc", "/srv/data", "-o", "ro"])));
        assert!(is_helper_invocation(&os(&["kmsfs", "./data.enc", "data"])));
        assert!(!is_helper_invocation(&os(&["kmsfs", "mount", "/a", "/b"])), "a subcommand");
        assert!(!is_helper_invocation(&os(&["kmsfs", "volume", "init", "/a"])));
        assert!(!is_helper_invocation(&os(&["kmsfs", "help", "mount"])));
        assert!(!is_helper_invocation(&os(&["kmsfs", "--keystore", "/k", "key", "list"])));
        assert!(!is_helper_invocation(&os(&["kmsfs", "/a"])), "one path is not a mount");
        assert!(!is_helper_invocation(&os(&["kmsfs", "no-such-thing", "x"])), "a typo stays clap's");
    }

    #[test]
    fn mount_8_helper_arguments_parse() {
        let a = parse_args(&os(&[
            "/c",
            "/m",
            "-s",
            "-nv",
            "-o",
            "ro,keystore=/k",
            "-o",
            "allow_other",
            "-t",
            "fuse.kmsfs",
        ]))
        .unwrap();
        assert_eq!((a.cipher_dir.as_path(), a.mountpoint.as_path()), (Path::new("/c"), Path::new("/m")));
        assert_eq!(a.options, strings(&["ro", "keystore=/k", "allow_other"]));
        assert!(a.sloppy && a.verbose && !a.fake);
        assert!(parse_args(&os(&["/c", "/m", "-f"])).unwrap().fake);
        assert_eq!(parse_args(&os(&["/c", "/m", "-oro,,dev"])).unwrap().options, strings(&["ro", "dev"]));
    }

    #[test]
    fn bad_helper_arguments_are_refused() {
        for (args, needle) in [
            (&["/c"][..], "expected CIPHERDIR and MOUNTPOINT"),
            (&["/c", "/m", "/x"], "got 3 paths"),
            (&["/c", "/m", "-o"], "-o needs a value"),
            (&["/c", "/m", "-t", "fuse.sshfs"], "not fuse.sshfs"),
            (&["/c", "/m", "-N", "1"], "-N"),
            (&["/c", "/m", "-x"], "unknown flag -x"),
            (&["/c", "/m", "--bogus"], "unknown flag"),
            (&["/c", "/dev/fd/3"], "drop_privileges"),
        ] {
            let err = parse_args(&os(args)).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn options_are_sorted_by_who_takes_them() {
        let o = classify(&strings(&[
            "rw",
            "keystore=/var/lib/kmsfs/ks.db",
            "passphrase_file=/etc/kmsfs/pass",
            "allow_other",
            "defaults",
            "nofail",
            "_netdev",
            "x-systemd.requires=foo.service",
            "X-mount.mkdir",
            "comment=boot",
            "user=alice",
            "users",
            "noatime",
            "dev",
            "suid",
        ]))
        .unwrap();
        assert_eq!(o.keystore.as_deref(), Some(Path::new("/var/lib/kmsfs/ks.db")));
        assert_eq!(o.passphrase_file.as_deref(), Some(Path::new("/etc/kmsfs/pass")));
        assert_eq!(o.mount, strings(&["rw", "allow_other", "noatime", "dev", "suid"]));
        assert_eq!(o.ignored.len(), 8);
        mount::check_options(&o.mount).unwrap();
        assert!(mount::check_options(&strings(&["bogus"])).is_err());
    }

    #[test]
    fn helper_option_mistakes_are_refused() {
        for (opt, needle) in [
            ("keystore", "keystore=PATH"),
            ("passphrase_file=", "passphrase_file=PATH"),
            ("setuid=alice", "not supported"),
            ("drop_privileges", "not supported"),
        ] {
            let err = classify(&strings(&[opt])).unwrap_err();
            assert!(err.contains(needle), "{opt}: {err}");
        }
    }
}
