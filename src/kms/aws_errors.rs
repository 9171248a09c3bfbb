//! The AWS KMS error name of every kmsfs error: what the API server answers in `__type` and
//! what the audit trail records as an event's error code. The one place this mapping lives.

use crate::error::Error;

/// The AWS exception name `err` stands for.
pub fn error_name(err: &Error) -> &'static str {
    match err {
        Error::NotFound(_) | Error::KeystoreMissing(_) => "NotFoundException",
        Error::AlreadyExists(_) => "AlreadyExistsException",
        Error::InvalidArgument(msg) if is_policy_error(msg) => "MalformedPolicyDocumentException",
        Error::InvalidArgument(msg) if msg.starts_with(TAG_ERROR) => "TagException",
        Error::InvalidArgument(msg) if msg.starts_with(GRANT_TOKEN_ERROR) => "InvalidGrantTokenException",
        Error::InvalidArgument(msg) if msg.starts_with(MARKER_ERROR) => "InvalidMarkerException",
        Error::InvalidArgument(msg) if msg.starts_with(UNSUPPORTED) => "UnsupportedOperationException",
        Error::InvalidArgument(msg) if msg.starts_with(LIMIT_ERROR) => "LimitExceededException",
        Error::InvalidArgument(msg) if msg.starts_with(INVALID_KEY_USAGE) => "InvalidKeyUsageException",
        Error::InvalidArgument(msg) if msg.starts_with(INVALID_SIGNATURE) => "KMSInvalidSignatureException",
        Error::InvalidArgument(msg) if msg.starts_with(INVALID_MAC) => "KMSInvalidMacException",
        Error::InvalidArgument(msg) if msg.starts_with(DRY_RUN) => "DryRunOperationException",
        Error::InvalidArgument(_) => "ValidationException",
        Error::KeyState(msg) if msg.contains(" is disabled") => "DisabledException",
        Error::KeyState(_) => "KMSInvalidStateException",
        Error::AccessDenied(_) => "AccessDeniedException",
        Error::InvalidCiphertext(msg) if msg.starts_with(INCORRECT_KEY) => "IncorrectKeyException",
        Error::InvalidCiphertext(_) => "InvalidCiphertextException",
        Error::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            "DependencyTimeoutException"
        }
        _ => "KMSInternalException",
    }
}

/// Whether the caller's input is at fault (HTTP 400) rather than the service (HTTP 5xx).
pub fn is_client_error(err: &Error) -> bool {
    !matches!(error_name(err), "KMSInternalException" | "DependencyTimeoutException")
}

/// Message prefixes that pick a more specific AWS name for an `InvalidArgument` or
/// `InvalidCiphertext`; the KMS builds those messages with them.
pub const TAG_ERROR: &str = "tag ";
pub const GRANT_TOKEN_ERROR: &str = "grant token ";
pub const MARKER_ERROR: &str = "marker ";
pub const UNSUPPORTED: &str = "unsupported: ";
pub const LIMIT_ERROR: &str = "limit exceeded: ";
pub const INVALID_KEY_USAGE: &str = "wrong key usage: ";
pub const INVALID_SIGNATURE: &str = "invalid signature: ";
pub const INVALID_MAC: &str = "invalid MAC: ";
pub const DRY_RUN: &str = "dry run: ";
pub const INCORRECT_KEY: &str = "the ciphertext was encrypted under key ";

/// Policy documents that do not parse (`Policy::parse`'s messages).
fn is_policy_error(msg: &str) -> bool {
    msg.starts_with("policy field ") || msg.starts_with("the policy ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kind_and_message() {
        let name = |e: Error| error_name(&e);
        assert_eq!(name(Error::KeyState("key k is disabled; enable it".into())), "DisabledException");
        assert_eq!(name(Error::KeyState("key k is pending deletion".into())), "KMSInvalidStateException");
        assert_eq!(
            name(Error::InvalidArgument("policy field Statement: x".into())),
            "MalformedPolicyDocumentException"
        );
        assert_eq!(name(Error::InvalidArgument("the window is 6 days".into())), "ValidationException");
        assert_eq!(
            name(Error::InvalidCiphertext(format!("{INCORRECT_KEY}a, not b (b)"))),
            "IncorrectKeyException"
        );
        assert_eq!(
            name(Error::InvalidCiphertext("does not authenticate".into())),
            "InvalidCiphertextException"
        );
        assert_eq!(name(Error::Io("disk".into())), "KMSInternalException");
    }
}
