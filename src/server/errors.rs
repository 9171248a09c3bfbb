//! Errors as the API answers them: HTTP status, AWS exception name (`__type`), message.

use crate::error::Error;
use crate::kms::aws_errors;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Whether the KMS already recorded this failure in the audit trail (errors of KMS
    /// operations are; the server records the rest itself).
    pub audited: bool,
}

impl ApiError {
    /// A refusal of the caller's request (HTTP 400), named as AWS names it.
    pub fn client(code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: 400, code, message: message.into(), audited: false }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::client("ValidationException", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { status: 500, code: "KMSInternalException", message: message.into(), audited: false }
    }

    /// The JSON body of the error response.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "__type": self.code, "message": self.message }))
            .expect("JSON of strings")
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let code = aws_errors::error_name(&err);
        if aws_errors::is_client_error(&err) {
            // AWS answers a successful dry run with 412.
            let status = if code == "DryRunOperationException" { 412 } else { 400 };
            ApiError { status, audited: true, ..ApiError::client(code, err.to_string()) }
        } else {
            // The details of an internal fault are for the server's log, not the caller.
            log::error!("internal error: {err}");
            let status = if code == "DependencyTimeoutException" { 503 } else { 500 };
            ApiError {
                status,
                code,
                message: "the key service had an internal error; see its log".into(),
                audited: true,
            }
        }
    }
}

impl ApiError {
    /// A KMS error the server found itself (before any KMS operation ran), so not audited yet.
    pub fn unaudited(err: Error) -> Self {
        ApiError { audited: false, ..ApiError::from(err) }
    }
}
