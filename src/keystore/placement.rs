//! Where a keystore may live: checks made before SQLite touches the file, in the spirit of
//! OpenSSH's StrictModes.
//!
//! The passphrase is all that protects the file, so whoever can read it can guess offline,
//! and whoever can write it (or its write-ahead log) can re-enable keys or rewrite policies.
//! Refused, with the fix named:
//! - the file, `-wal` or `-shm` owned by someone other than the caller or root, or open to
//!   its group or others;
//! - its directory owned by someone else, or writable by group or others, sticky bit or not:
//!   SQLite opens `-wal` and `-shm` without `O_EXCL`, so anyone who may create files there
//!   (as in /tmp) can plant them, owned by themselves, before the next command;
//! - a directory above it owned by someone else, or writable by group or others without the
//!   sticky bit: they could rename the keystore's directory away and put their own in its
//!   place. A sticky directory (/tmp) does not let them rename what they do not own.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The SQLite side files of the keystore at `path`.
pub fn side_files(path: &Path) -> [PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Checks the keystore file at `path` (which exists), its side files and the directories
/// it is reached through.
pub fn check_existing(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    check_private_file(path, path, meta)?;
    for side in side_files(path) {
        match std::fs::symlink_metadata(&side) {
            Ok(m) if !m.is_file() => {
                return Err(insecure(
                    path,
                    format!("{} is not a regular file", side.display()),
                    remove(&side),
                ))
            }
            Ok(m) => check_private_file(path, &side, &m)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot check {}", side.display()), e)),
        }
    }
    check_directories(path)
}

/// Checks the directories a keystore about to be created at `path` is reached through.
pub fn check_directories(path: &Path) -> Result<()> {
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("."),
    };
    let dir = dir.canonicalize().map_err(|e| Error::io(format!("cannot check {}", dir.display()), e))?;
    let me = euid();
    let mut current = Some(dir.as_path());
    let mut own_directory = true;
    while let Some(d) = current {
        let m = std::fs::metadata(d).map_err(|e| Error::io(format!("cannot check {}", d.display()), e))?;
        let mode = m.mode() & 0o7777;
        let whose = if own_directory { "its directory".to_string() } else { "the directory".to_string() };
        let where_ = if own_directory { String::new() } else { " above it".to_string() };
        if m.uid() != me && m.uid() != 0 {
            return Err(insecure(
                path,
                format!(
                    "{whose} {}{where_} is owned by uid {}, not by you (uid {me}) or root",
                    d.display(),
                    m.uid()
                ),
                format!("keep the keystore in a directory of your own, or `chown {me} {}`", d.display()),
            ));
        }
        let writable_by_others = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if writable_by_others && (own_directory || !sticky) {
            let why = if own_directory {
                "others could replace the keystore or plant its -wal/-shm files"
            } else {
                "others could rename the keystore's directory and put their own in its place"
            };
            return Err(insecure(
                path,
                format!(
                    "{whose} {}{where_} is writable by group or others (mode {mode:04o}): {why}",
                    d.display()
                ),
                format!(
                    "run `chmod go-w {}`, or keep the keystore in a directory only you can write",
                    d.display()
                ),
            ));
        }
        own_directory = false;
        current = d.parent();
    }
    Ok(())
}

/// `file` (the keystore or a side file of it) must be the caller's or root's, mode 0600 or
/// stricter.
fn check_private_file(keystore: &Path, file: &Path, m: &std::fs::Metadata) -> Result<()> {
    let me = euid();
    if m.uid() != me && m.uid() != 0 {
        return Err(insecure(
            keystore,
            format!("{} is owned by uid {}, not by you (uid {me}) or root", file.display(), m.uid()),
            format!("run kmsfs as its owner, or `chown {me} {}`", file.display()),
        ));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(insecure(
            keystore,
            format!("{} is accessible by group or others (mode {mode:04o})", file.display()),
            format!("run `chmod 600 {}`", file.display()),
        ));
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn remove(side: &Path) -> String {
    format!("remove {} while no kmsfs command or mount uses the keystore", side.display())
}

fn insecure(keystore: &Path, problem: String, fix: String) -> Error {
    Error::InsecureKeystore { path: keystore.to_path_buf(), problem, fix }
}
