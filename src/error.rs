//! The error type shared by the keystore, the KMS, the volume layers and the command line.
//!
//! The errors callers branch on carry structured fields (which key, its state, which
//! operation, what was missing), so each front end words them itself: the command line adds
//! its hints (`cli::errors`), the mount answers with [`Error::errno`], and an API server maps
//! [`Error::kind`] to the AWS error name. `Display` gives the plain fact, with no advice.
//! Each kind maps to a documented exit code (README "Exit codes").

use std::fmt;
use std::path::PathBuf;

use crate::keystore::records::KeyState;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wrong passphrase for keystore {0}")]
    WrongPassphrase(PathBuf),

    #[error("no keystore at {0}")]
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

    /// A key, alias, grant or path that does not exist.
    #[error("{0}")]
    NotFound(NotFound),

    /// A name that is taken (an alias, a file kmsfs will not overwrite).
    #[error("{0}")]
    AlreadyExists(AlreadyExists),

    /// A request that is not well formed (a bad name, option or size).
    #[error("{0}")]
    InvalidArgument(String),

    /// A key policy document that does not parse or validate.
    #[error("{0}")]
    MalformedPolicy(String),

    /// A request over a fixed limit (plaintext size, policy size).
    #[error("{0}")]
    LimitExceeded(String),

    /// The key exists but its state forbids the operation.
    #[error("{0}")]
    KeyState(KeyStateError),

    /// A key policy or grant refuses the caller, or the object may not be changed by users.
    #[error("{0}")]
    AccessDenied(AccessDenied),

    /// Ciphertext that does not authenticate: tampered, truncated, or used with the wrong
    /// encryption context or key.
    #[error("{0}")]
    InvalidCiphertext(String),

    /// A ciphertext that is under another key than the one the caller said it is under
    /// (`decrypt --key`).
    #[error("the ciphertext was encrypted under key {actual}, not {expected} ({expected_key_id})")]
    IncorrectKey { actual: String, expected: String, expected_key_id: String },

    #[error("{0}")]
    Io(String),

    /// A remote key service (AWS KMS, a central `kmsfs serve`) that did not answer in time
    /// or answered nothing usable: nothing is known about the key, so nothing may be
    /// concluded about the data under it (fsck must not call it damaged).
    #[error("{0}")]
    KeyServiceUnavailable(String),

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

/// What was not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFound {
    /// A key named by the caller (a key id or an alias-like name) that is not in the keystore.
    KeyRef(String),
    /// A key id that data or a request refers to, not in this keystore.
    Key {
        key_id: String,
    },
    /// The key a ciphertext names, not in this keystore.
    CiphertextKey {
        key_id: String,
    },
    Alias {
        alias: String,
    },
    /// An alias whose target key does not exist.
    AliasTarget {
        alias: String,
        key_id: String,
    },
    /// A grant, by id or token (`key_id`: of the key it was looked for under).
    Grant {
        key_id: Option<String>,
        grant: Option<String>,
    },
    /// A cipher directory without a volume config.
    Volume {
        dir: PathBuf,
    },
    /// Anything else (a path): the sentence says what.
    Other(String),
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotFound::KeyRef(r) => write!(f, "unknown key '{r}'"),
            NotFound::Key { key_id } => write!(f, "key {key_id} is not in this keystore"),
            NotFound::CiphertextKey { key_id } => {
                write!(f, "the ciphertext was encrypted under key {key_id}, which is not in this keystore")
            }
            NotFound::Alias { alias } => write!(f, "unknown alias '{alias}'"),
            NotFound::AliasTarget { alias, key_id } => {
                write!(f, "alias '{alias}' points to key {key_id} which does not exist")
            }
            NotFound::Grant { key_id: Some(k), grant: Some(g) } => write!(f, "key {k} has no grant {g}"),
            NotFound::Grant { .. } => write!(f, "no grant with that id or token"),
            NotFound::Volume { dir } => {
                write!(f, "{} is not a kmsfs volume (no {})", dir.display(), crate::volume::CONFIG_NAME)
            }
            NotFound::Other(what) => f.write_str(what),
        }
    }
}

/// What is in the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlreadyExists {
    Alias {
        alias: String,
        target_key_id: String,
    },
    /// A file kmsfs will not overwrite, and why it would have written it.
    Path {
        path: PathBuf,
        refusing: String,
    },
    /// A multi-Region key that has a replica (or a key of that id) in the region already.
    Replica {
        key_id: String,
        region: String,
    },
}

impl fmt::Display for AlreadyExists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlreadyExists::Alias { alias, target_key_id } => {
                write!(f, "alias '{alias}' already exists (it points to key {target_key_id})")
            }
            AlreadyExists::Path { path, refusing } => {
                write!(f, "{} already exists; {refusing}", path.display())
            }
            AlreadyExists::Replica { key_id, region } => {
                write!(f, "key {key_id} already exists in region {region}")
            }
        }
    }
}

/// A key whose state forbids what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStateError {
    /// The key id (or, when only the mount's ENOKEY is known, the key as the caller named it).
    pub key_id: String,
    /// The key's state; `None` when only an errno from the mount said it is unusable.
    pub state: Option<KeyState>,
    /// When a key pending deletion is (or a destroyed key was) destroyed, unix seconds.
    pub deletion_date: Option<i64>,
    pub problem: StateProblem,
}

/// Why the state is in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateProblem {
    /// A cryptographic operation needs an Enabled key.
    NotEnabled,
    /// The version a ciphertext names is destroyed.
    VersionDestroyed { version: u32 },
    /// The version is not among those the mount holds (destroyed or missing).
    VersionUnavailable { version: u32 },
    /// An alias cannot point to a key pending deletion or destroyed.
    AliasTarget,
    /// ScheduleKeyDeletion of a key already pending deletion.
    AlreadyPendingDeletion,
    /// CancelKeyDeletion of a key that is not pending deletion.
    NotPendingDeletion,
    /// A key a mounted volume needed is not usable (known only from the mount's ENOKEY).
    UnusableOnMount,
    /// NEW_KEY_MATERIAL while other new material waits for RotateKeyOnDemand.
    MaterialPendingRotation,
}

impl KeyStateError {
    pub fn new(key: &crate::keystore::records::KeyRecord, problem: StateProblem) -> Self {
        KeyStateError {
            key_id: key.key_id.clone(),
            state: Some(key.state),
            deletion_date: key.deletion_date,
            problem,
        }
    }
}

impl fmt::Display for KeyStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.key_id;
        let date = self.deletion_date.map(crate::kms::clock::format_date).unwrap_or_default();
        let state = self.state.map_or("not usable", KeyState::as_str);
        match (self.problem, self.state) {
            (StateProblem::NotEnabled, Some(KeyState::PendingDeletion)) => {
                write!(f, "key {id} is pending deletion (to be destroyed {date})")
            }
            (StateProblem::NotEnabled, Some(KeyState::PendingReplicaDeletion)) => write!(
                f,
                "key {id} is pending deletion, waiting for its multi-Region replicas to be deleted first"
            ),
            (StateProblem::NotEnabled, Some(KeyState::Destroyed)) => {
                write!(f, "key {id} was destroyed {date}; data encrypted under it is unrecoverable")
            }
            (StateProblem::NotEnabled, Some(KeyState::PendingImport)) => write!(
                f,
                "key {id} is pending import: its key material was never imported, was deleted or expired"
            ),
            (StateProblem::NotEnabled, _) => write!(f, "key {id} is disabled"),
            (StateProblem::VersionDestroyed { version }, _) => {
                write!(f, "version {version} of key {id} was destroyed; data encrypted under it is unrecoverable")
            }
            (StateProblem::VersionUnavailable { version }, _) => {
                write!(f, "version {version} of key {id} is not available (destroyed or missing)")
            }
            (StateProblem::AliasTarget, _) => write!(f, "key {id} is {state}; an alias cannot point to it"),
            (StateProblem::AlreadyPendingDeletion, _) => {
                write!(f, "key {id} is already pending deletion (on {date})")
            }
            (StateProblem::NotPendingDeletion, _) => {
                write!(f, "key {id} is {state}, not pending deletion; there is nothing to cancel")
            }
            (StateProblem::MaterialPendingRotation, _) => write!(
                f,
                "key {id} already has new key material pending rotation: rotate to it with RotateKeyOnDemand \
                 or delete it with DeleteImportedKeyMaterial first"
            ),
            (StateProblem::UnusableOnMount, _) => write!(
                f,
                "a key involved is not usable (disabled or pending deletion): the directory's current key, or {id}"
            ),
        }
    }
}

/// A refusal by policy, grant or ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDenied {
    /// The key refused, when the refusal is about one.
    pub key_id: Option<String>,
    pub reason: Denial,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The key's policy and grants do not allow `action` (`kms:Decrypt`, ...) for the caller;
    /// `why` names the statement that denied or says nothing allowed.
    Policy { action: String, why: String },
    /// A key kmsfs manages may not be changed by users; `change` says how ("disabled").
    ManagedKey { change: String },
    /// Alias names under a reserved prefix belong to kmsfs.
    ReservedAlias { alias: String },
    /// Only the grantee retires a grant.
    NotGrantee { grant_id: String, grantee: String },
    /// Only the owner of a file or directory (or root) chooses which key protects it.
    NotOwner { owner_uid: u32, path: String },
}

impl fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.key_id.as_deref().unwrap_or("?");
        match &self.reason {
            Denial::Policy { why, .. } => write!(f, "key {key}: {why}"),
            Denial::ManagedKey { change } => {
                write!(f, "key {key} is managed by kmsfs and cannot be {change}")
            }
            Denial::ReservedAlias { alias } => write!(
                f,
                "alias '{alias}' is reserved: names under {} belong to keys kmsfs manages",
                crate::kms::MANAGED_ALIAS_PREFIX
            ),
            Denial::NotGrantee { grant_id, grantee } => {
                write!(f, "only the grantee ({grantee}) retires grant {grant_id}")
            }
            Denial::NotOwner { owner_uid, path } => {
                write!(f, "only its owner (uid {owner_uid}) or root may change which key protects {path}")
            }
        }
    }
}

/// The kinds of error a KMS API maps to its error names, one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// NotFoundException
    NotFound,
    /// DisabledException: the key is Disabled.
    Disabled,
    /// KMSInvalidStateException: any other state in the way.
    InvalidState,
    /// InvalidCiphertextException
    InvalidCiphertext,
    /// IncorrectKeyException
    IncorrectKey,
    /// AccessDeniedException
    AccessDenied,
    /// AlreadyExistsException
    AlreadyExists,
    /// ValidationException
    Validation,
    /// MalformedPolicyDocumentException
    MalformedPolicy,
    /// LimitExceededException
    LimitExceeded,
    /// KMSInternalException: the keystore, the disk, or anything the caller cannot fix.
    Internal,
}

impl Error {
    /// What kind of refusal or failure this is, for a front end that names kinds.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) | Error::KeystoreMissing(_) => ErrorKind::NotFound,
            Error::KeyState(KeyStateError {
                state: Some(KeyState::Disabled),
                problem: StateProblem::NotEnabled,
                ..
            }) => ErrorKind::Disabled,
            Error::KeyState(_) => ErrorKind::InvalidState,
            Error::InvalidCiphertext(_) => ErrorKind::InvalidCiphertext,
            Error::IncorrectKey { .. } => ErrorKind::IncorrectKey,
            Error::AccessDenied(_) | Error::WrongPassphrase(_) => ErrorKind::AccessDenied,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidArgument(_) => ErrorKind::Validation,
            Error::MalformedPolicy(_) => ErrorKind::MalformedPolicy,
            Error::LimitExceeded(_) => ErrorKind::LimitExceeded,
            _ => ErrorKind::Internal,
        }
    }

    /// The process exit code for this error (documented in the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::WrongPassphrase(_) => 3,
            Error::KeyState(_) => 4,
            Error::NotFound(_) | Error::KeystoreMissing(_) => 5,
            Error::AccessDenied(_) => 6,
            Error::InvalidCiphertext(_) | Error::IncorrectKey { .. } => 7,
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
            Error::InvalidArgument(_) | Error::MalformedPolicy(_) | Error::LimitExceeded(_) => libc::EINVAL,
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

    /// `NotFound` with a sentence of its own.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(NotFound::Other(what.into()))
    }

    /// Refused: `key` is managed by kmsfs and cannot be changed as `change` says.
    pub fn managed_key(key_id: &str, change: &str) -> Self {
        Error::AccessDenied(AccessDenied {
            key_id: Some(key_id.to_string()),
            reason: Denial::ManagedKey { change: change.to_string() },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_error(state: KeyState, problem: StateProblem) -> Error {
        Error::KeyState(KeyStateError {
            key_id: "k".into(),
            state: Some(state),
            deletion_date: None,
            problem,
        })
    }

    #[test]
    fn each_kind_is_one_aws_error_and_keeps_its_exit_code_and_errno() {
        let disabled = state_error(KeyState::Disabled, StateProblem::NotEnabled);
        assert_eq!(
            (disabled.kind(), disabled.exit_code(), disabled.errno()),
            (ErrorKind::Disabled, 4, libc::ENOKEY)
        );
        let pending = state_error(KeyState::PendingDeletion, StateProblem::NotEnabled);
        assert_eq!((pending.kind(), pending.exit_code()), (ErrorKind::InvalidState, 4));
        let cancel = state_error(KeyState::Disabled, StateProblem::NotPendingDeletion);
        assert_eq!(cancel.kind(), ErrorKind::InvalidState, "a Disabled key in the way of a cancel");
        let missing = Error::NotFound(NotFound::KeyRef("alias/x".into()));
        assert_eq!(
            (missing.kind(), missing.exit_code(), missing.errno()),
            (ErrorKind::NotFound, 5, libc::ENOENT)
        );
        let denied = Error::managed_key("k", "disabled");
        assert_eq!(
            (denied.kind(), denied.exit_code(), denied.errno()),
            (ErrorKind::AccessDenied, 6, libc::EACCES)
        );
        assert_eq!(denied.to_string(), "key k is managed by kmsfs and cannot be disabled");
        let wrong = Error::IncorrectKey {
            actual: "a".into(),
            expected: "alias/b".into(),
            expected_key_id: "b".into(),
        };
        assert_eq!((wrong.kind(), wrong.exit_code()), (ErrorKind::IncorrectKey, 7));
        let policy = Error::MalformedPolicy("policy field Statement: missing".into());
        assert_eq!(
            (policy.kind(), policy.exit_code(), policy.errno()),
            (ErrorKind::MalformedPolicy, 1, libc::EINVAL)
        );
        let big = Error::LimitExceeded("too big".into());
        assert_eq!((big.kind(), big.exit_code()), (ErrorKind::LimitExceeded, 1));
        assert_eq!(Error::InvalidArgument("x".into()).kind(), ErrorKind::Validation);
        assert_eq!(Error::Io("x".into()).kind(), ErrorKind::Internal);
    }
}
