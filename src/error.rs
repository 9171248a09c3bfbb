//! The error type shared by the keystore, the KMS and the command line.
//!
//! Every variant's message is written for the person at the terminal: it names the thing
//! that is wrong and, where there is one, what to do next. Each kind maps to a documented
//! exit code (see README "Exit codes") and, inside the mount, to an errno.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wrong passphrase for keystore {0}")]
    WrongPassphrase(PathBuf),

    #[error("no keystore at {0}: create one with `kmsfs keystore init` or point --keystore / KMSFS_KEYSTORE at it")]
    KeystoreMissing(PathBuf),

    #[error("{path} is not a kmsfs keystore: {reason}")]
    NotAKeystore { path: PathBuf, reason: String },

    /// The keystore, its side files or a directory it is reached through can be read,
    /// written or replaced by someone other than the caller and root (like ssh with a private
    /// key, kmsfs refuses to use it; `keystore::placement`).
    #[error("keystore {path}: {problem}; refusing to use it: {fix}")]
    InsecureKeystore { path: PathBuf, problem: String, fix: String },

    #[error("keystore {path} is corrupt: {reason}")]
    CorruptKeystore { path: PathBuf, reason: String },

    /// Stored key material that fails its integrity check.
    #[error("the keystore is corrupt: {0}")]
    CorruptMaterial(String),

    #[error("{0}")]
    NotFound(String),

    #[error("{0}")]
    AlreadyExists(String),

    #[error("{0}")]
    InvalidArgument(String),

    /// The key exists but its state forbids the operation (Disabled, PendingDeletion,
    /// Destroyed), or it is a managed key that users may not change.
    #[error("{0}")]
    KeyState(String),

    /// A key policy or grant refuses the caller.
    #[error("{0}")]
    AccessDenied(String),

    /// Ciphertext that does not authenticate: tampered, truncated, or used with the wrong
    /// encryption context or key.
    #[error("{0}")]
    InvalidCiphertext(String),

    #[error("{0}")]
    Io(String),

    /// The file system is out of space or quota (the errno, ENOSPC or EDQUOT, is kept so the
    /// mount answers with it rather than with EIO).
    #[error("{0}")]
    NoSpace(String, i32),

    /// A check (`kmsfs fsck`) found problems that remain.
    #[error("{0}")]
    ProblemsRemain(String),

    #[error("keystore database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl Error {
    /// The process exit code for this error (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::WrongPassphrase(_) => 3,
            Error::KeyState(_) => 4,
            Error::NotFound(_) | Error::KeystoreMissing(_) => 5,
            Error::AccessDenied(_) => 6,
            Error::InvalidCiphertext(_) => 7,
            Error::ProblemsRemain(_) => 8,
            _ => 1,
        }
    }

    /// The errno a filesystem request answers with when this error stops it.
    pub fn errno(&self) -> i32 {
        match self {
            Error::KeyState(_) => libc::ENOKEY,
            Error::AccessDenied(_) => libc::EACCES,
            Error::NotFound(_) => libc::ENOENT,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::NoSpace(_, errno) => *errno,
            _ => libc::EIO,
        }
    }

    pub fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(errno @ (libc::ENOSPC | libc::EDQUOT)) => Error::NoSpace(format!("{context}: {err}"), errno),
            _ => Error::Io(format!("{context}: {err}")),
        }
    }
}
