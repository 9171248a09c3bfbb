//! The AWS KMS error name of every kmsfs error: what the API server answers in `__type` and
//! what the audit trail records as an event's error code. The one place this mapping lives:
//! the error's kind (`Error::kind`) names it, and a few refusals the kinds do not tell
//! apart carry a message prefix set where they are made.

use crate::error::{Error, ErrorKind};

/// The AWS exception name `err` stands for.
pub fn error_name(err: &Error) -> &'static str {
    match err {
        Error::InvalidArgument(msg) if msg.starts_with(TAG_ERROR) => "TagException",
        Error::InvalidArgument(msg) if msg.starts_with(GRANT_TOKEN_ERROR) => "InvalidGrantTokenException",
        Error::InvalidArgument(msg) if msg.starts_with(MARKER_ERROR) => "InvalidMarkerException",
        Error::InvalidArgument(msg) if msg.starts_with(UNSUPPORTED) => "UnsupportedOperationException",
        Error::InvalidArgument(msg) if msg.starts_with(INVALID_KEY_USAGE) => "InvalidKeyUsageException",
        Error::InvalidArgument(msg) if msg.starts_with(INVALID_SIGNATURE) => "KMSInvalidSignatureException",
        Error::InvalidArgument(msg) if msg.starts_with(INVALID_MAC) => "KMSInvalidMacException",
        Error::InvalidArgument(msg) if msg.starts_with(DRY_RUN) => "DryRunOperationException",
        Error::InvalidArgument(msg) if msg.starts_with(INCORRECT_KEY_MATERIAL) => {
            "IncorrectKeyMaterialException"
        }
        Error::InvalidArgument(msg) if msg.starts_with(INVALID_IMPORT_TOKEN) => "InvalidImportTokenException",
        Error::InvalidArgument(msg) if msg.starts_with(EXPIRED_IMPORT_TOKEN) => "ExpiredImportTokenException",
        Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            "DependencyTimeoutException"
        }
        _ => match err.kind() {
            ErrorKind::NotFound => "NotFoundException",
            ErrorKind::Disabled => "DisabledException",
            ErrorKind::InvalidState => "KMSInvalidStateException",
            ErrorKind::InvalidCiphertext => "InvalidCiphertextException",
            ErrorKind::IncorrectKey => "IncorrectKeyException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::AlreadyExists => "AlreadyExistsException",
            ErrorKind::Validation => "ValidationException",
            ErrorKind::MalformedPolicy => "MalformedPolicyDocumentException",
            ErrorKind::LimitExceeded => "LimitExceededException",
            ErrorKind::Internal => "KMSInternalException",
        },
    }
}

/// Whether the caller's input is at fault (HTTP 400) rather than the service (HTTP 5xx).
pub fn is_client_error(err: &Error) -> bool {
    !matches!(error_name(err), "KMSInternalException" | "DependencyTimeoutException")
}

/// Message prefixes that pick a more specific AWS name for an `InvalidArgument`; the KMS
/// builds those messages with them.
pub const TAG_ERROR: &str = "tag ";
pub const GRANT_TOKEN_ERROR: &str = "grant token ";
pub const MARKER_ERROR: &str = "marker ";
pub const UNSUPPORTED: &str = "unsupported: ";
pub const INVALID_KEY_USAGE: &str = "wrong key usage: ";
pub const INVALID_SIGNATURE: &str = "invalid signature: ";
pub const INVALID_MAC: &str = "invalid MAC: ";
pub const DRY_RUN: &str = "dry run: ";
pub const INCORRECT_KEY_MATERIAL: &str = "incorrect key material: ";
pub const INVALID_IMPORT_TOKEN: &str = "invalid import token: ";
pub const EXPIRED_IMPORT_TOKEN: &str = "expired import token: ";
