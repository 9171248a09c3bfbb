//! The calls a mount makes to a service speaking the AWS KMS API (AWS JSON 1.1, SigV4):
//! GenerateDataKey, Decrypt, DescribeKey, ReEncrypt. Each is retried with backoff when the
//! service cannot be reached or answers that it is busy; refusals are final.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as SigningCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::credentials::{self, Credentials};
use super::http::{self, Endpoint};
use crate::crypto::SecretKey;
use crate::error::{AccessDenied, Denial, Error, KeyStateError, NotFound, StateProblem};
use crate::keystore::records::KeyState;
use crate::kms::EncryptionContext;

/// How a call failed: the service said no (final), or it could not be asked (retried, and
/// for keys already unwrapped, covered by the grace period).
#[derive(Debug)]
pub enum CallError {
    Refused(Error),
    Unavailable(String),
}

impl CallError {
    /// As a crate error: an unreachable service is EIO for the caller.
    pub fn into_error(self, endpoint: &str, key: &str) -> Error {
        match self {
            CallError::Refused(e) => e,
            CallError::Unavailable(why) => Error::KeyServiceUnavailable(format!(
                "key service {endpoint} unreachable for key {key}: {why}"
            )),
        }
    }
}

pub type CallResult<T> = std::result::Result<T, CallError>;

/// Timeouts and retries of every call.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// The whole exchange of one attempt (connect, TLS, request, answer).
    pub attempt_timeout: Duration,
    pub attempts: u32,
    /// Before the second attempt; each later wait is four times the one before.
    pub first_backoff: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            attempt_timeout: Duration::from_secs(4),
            attempts: 3,
            first_backoff: Duration::from_millis(200),
        }
    }
}

/// The region of a key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`).
pub fn arn_region(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("kms"), Some(region)) if !region.is_empty() => Some(region),
        _ => None,
    }
}

/// The endpoint the AWS SDKs take from the environment (`AWS_ENDPOINT_URL_KMS`, then
/// `AWS_ENDPOINT_URL`), if set.
pub fn endpoint_from_environment() -> Option<String> {
    ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// Whether a key reference names a key of a remote service (an ARN), not of the keystore.
pub fn is_remote_key(key_ref: &str) -> bool {
    arn_region(key_ref).is_some()
}

pub struct KmsClient {
    endpoint: Endpoint,
    region: String,
    /// Read again from the chain before every request (below), so that credentials rotated
    /// in `~/.aws/credentials` reach a mount that runs for months; the last good ones stay
    /// when the chain cannot be read at that moment.
    credentials: std::sync::Mutex<Credentials>,
    tls: Option<Arc<rustls::ClientConfig>>,
    policy: CallPolicy,
    calls: std::sync::atomic::AtomicU64,
}

impl KmsClient {
    /// A client for the service at `endpoint` (default: AWS KMS in the key's region) that
    /// holds `key_arn`, with credentials from the AWS chain.
    pub fn new(endpoint: Option<&str>, key_arn: &str, policy: CallPolicy) -> crate::error::Result<KmsClient> {
        let config = credentials::load()?;
        let region = arn_region(key_arn)
            .map(str::to_string)
            .or(config.region.clone())
            .ok_or_else(|| Error::InvalidArgument(format!("no region for key {key_arn}: give a key ARN")))?;
        let url =
            endpoint.map(str::to_string).unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
        let endpoint = Endpoint::parse(&url)?;
        let tls = if endpoint.tls { Some(http::tls_config(config.ca_bundle.as_deref())?) } else { None };
        Ok(KmsClient {
            endpoint,
            region,
            credentials: std::sync::Mutex::new(config.credentials),
            tls,
            policy,
            calls: 0.into(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint.url
    }

    /// How many requests this client has sent (attempts included).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// GenerateDataKey of a 256-bit key: the plaintext and the service's ciphertext blob.
    pub fn generate_data_key(
        &self,
        key: &str,
        ctx: &EncryptionContext,
    ) -> CallResult<(SecretKey, Vec<u8>, String)> {
        let answer = self.call(
            "GenerateDataKey",
            key,
            &json!({"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": ctx_json(ctx)}),
        )?;
        let plain = secret_field(&answer, "Plaintext")?;
        Ok((plain, bytes_field(&answer, "CiphertextBlob")?, string_field(&answer, "KeyId")?))
    }

    /// Decrypt of a blob the service made for `key` (named, so a blob cannot be sent to
    /// another key than the one the volume says).
    pub fn decrypt(&self, key: &str, blob: &[u8], ctx: &EncryptionContext) -> CallResult<SecretKey> {
        let answer = self.call(
            "Decrypt",
            key,
            &json!({"KeyId": key, "CiphertextBlob": B64.encode(blob), "EncryptionContext": ctx_json(ctx)}),
        )?;
        secret_field(&answer, "Plaintext")
    }

    /// DescribeKey: the key's ARN and state.
    pub fn describe_key(&self, key: &str) -> CallResult<(String, KeyState)> {
        let answer = self.call("DescribeKey", key, &json!({"KeyId": key}))?;
        let meta = &answer["KeyMetadata"];
        let state = match meta["KeyState"].as_str() {
            Some("Enabled") => KeyState::Enabled,
            Some("Disabled") => KeyState::Disabled,
            Some("PendingDeletion") => KeyState::PendingDeletion,
            // PendingImport, Unavailable, Creating...: not usable for data keys.
            _ => KeyState::Disabled,
        };
        let arn = meta["Arn"].as_str().unwrap_or(key).to_string();
        Ok((arn, state))
    }

    /// ReEncrypt of a blob under the current material of `to_key` (rotation catch-up or a
    /// move to another key of the same service); the plaintext never leaves the service.
    pub fn re_encrypt(
        &self,
        from_key: &str,
        blob: &[u8],
        ctx: &EncryptionContext,
        to_key: &str,
    ) -> CallResult<Vec<u8>> {
        let answer = self.call(
            "ReEncrypt",
            to_key,
            &json!({"CiphertextBlob": B64.encode(blob), "SourceKeyId": from_key,
                    "SourceEncryptionContext": ctx_json(ctx), "DestinationKeyId": to_key,
                    "DestinationEncryptionContext": ctx_json(ctx)}),
        )?;
        bytes_field(&answer, "CiphertextBlob")
    }

    fn call(&self, operation: &str, key: &str, body: &Value) -> CallResult<Value> {
        let body = serde_json::to_vec(body).expect("request serializes");
        let mut backoff = self.policy.first_backoff;
        let mut last = String::new();
        for attempt in 0..self.policy.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(backoff);
                backoff *= 4;
            }
            self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let headers = self.signed_headers(operation, &body).map_err(CallError::Refused)?;
            match http::post(&self.endpoint, self.tls.as_ref(), &headers, &body, self.policy.attempt_timeout)
            {
                Err(http::Unreachable(why)) => last = why,
                Ok(resp) if resp.status == 200 => {
                    return serde_json::from_slice(&resp.body).map_err(|e| {
                        CallError::Unavailable(format!("{operation}: the answer is not JSON: {e}"))
                    })
                }
                Ok(resp) => match refusal(operation, key, resp.status, &resp.body) {
                    Some(refused) => return Err(CallError::Refused(refused)),
                    None => last = format!("{operation}: HTTP {} {}", resp.status, error_name(&resp.body).0),
                },
            }
        }
        Err(CallError::Unavailable(last))
    }

    fn signed_headers(&self, operation: &str, body: &[u8]) -> crate::error::Result<Vec<(String, String)>> {
        let mut headers = vec![
            ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
            ("x-amz-target".to_string(), format!("TrentService.{operation}")),
        ];
        let host = {
            let e = &self.endpoint;
            match (e.tls, e.port) {
                (true, 443) | (false, 80) => e.host.clone(),
                _ => format!("{}:{}", e.host, e.port),
            }
        };
        let mut credentials = self.credentials.lock().expect("remote credentials lock");
        if let Ok(fresh) = credentials::load() {
            *credentials = fresh.credentials;
        }
        let identity: Identity = SigningCredentials::new(
            &credentials.access_key_id,
            credentials.secret_access_key.as_str(),
            credentials.session_token.as_ref().map(|t| t.to_string()),
            None,
            "kmsfs",
        )
        .into();
        drop(credentials);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kms")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Error::Io(format!("signing parameters: {e}")))?
            .into();
        let to_sign = [
            ("host", host.as_str()),
            ("content-type", headers[0].1.as_str()),
            ("x-amz-target", headers[1].1.as_str()),
        ];
        let request = SignableRequest::new("POST", "/", to_sign.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| Error::Io(format!("the request cannot be signed: {e}")))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| Error::Io(format!("the request cannot be signed: {e}")))?
            .into_parts();
        headers.extend(instructions.headers().map(|(k, v)| (k.to_string(), v.to_string())));
        Ok(headers)
    }
}

fn ctx_json(ctx: &EncryptionContext) -> Value {
    Value::Object(ctx.0.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

fn string_field(answer: &Value, name: &str) -> CallResult<String> {
    answer[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| CallError::Unavailable(format!("the answer has no {name}")))
}

fn bytes_field(answer: &Value, name: &str) -> CallResult<Vec<u8>> {
    B64.decode(string_field(answer, name)?)
        .map_err(|_| CallError::Unavailable(format!("the answer's {name} is not base64")))
}

fn secret_field(answer: &Value, name: &str) -> CallResult<SecretKey> {
    let bytes = Zeroizing::new(bytes_field(answer, name)?);
    SecretKey::from_slice(&bytes)
        .ok_or_else(|| CallError::Unavailable(format!("the answer's {name} is not a 256-bit key")))
}

/// The AWS error name (without its namespace) and message of an error answer.
fn error_name(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let name = v["__type"].as_str().unwrap_or("").rsplit('#').next().unwrap_or("").to_string();
    let message = v["message"].as_str().or(v["Message"].as_str()).unwrap_or("").to_string();
    (name, message)
}

/// A final refusal, or `None` for answers worth another attempt (throttling, 5xx).
fn refusal(operation: &str, key: &str, status: u16, body: &[u8]) -> Option<Error> {
    let (name, message) = error_name(body);
    let said = if message.is_empty() { name.clone() } else { format!("{name}: {message}") };
    let state = |state: Option<KeyState>| {
        Error::KeyState(KeyStateError {
            key_id: key.to_string(),
            state,
            deletion_date: None,
            problem: StateProblem::NotEnabled,
        })
    };
    Some(match name.as_str() {
        "ThrottlingException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException" => return None,
        _ if status >= 500 || status == 429 => return None,
        "DisabledException" => state(Some(KeyState::Disabled)),
        "KMSInvalidStateException" => state(
            message
                .contains("pending deletion")
                .then_some(KeyState::PendingDeletion)
                .or(Some(KeyState::Disabled)),
        ),
        "NotFoundException" => {
            Error::NotFound(NotFound::Other(format!("key {key}: the key service: {said}")))
        }
        "InvalidCiphertextException" | "IncorrectKeyException" => {
            Error::InvalidCiphertext(format!("key {key}: the key service: {said}"))
        }
        "ValidationException" | "SerializationException" => {
            Error::InvalidArgument(format!("the key service refused {operation}: {said}"))
        }
        _ => Error::AccessDenied(AccessDenied {
            key_id: Some(key.to_string()),
            reason: Denial::Policy {
                action: format!("kms:{operation}"),
                why: format!("the key service refused {operation}: {said}"),
            },
        }),
    })
}
