//! The JSON of the operations of asymmetric and HMAC keys (Sign, Verify, GetPublicKey,
//! RSA Encrypt/Decrypt, GenerateMac, VerifyMac, DeriveSharedSecret, GenerateDataKeyPair*)
//! and of the key specs in CreateKey and DescribeKey. The work is the key ring's.

use serde_json::{json, Value};

use super::api::{b64, blob, context, required, required_blob, str_of};
use super::errors::ApiError;
use super::Service;
use crate::kms::asymmetric::spec::oaep_digest;
use crate::kms::asymmetric::{KeySpec, KeyUsage};
use crate::kms::Principal;

type Answer = Result<Value, ApiError>;

const OPERATIONS: &[&str] = &[
    "Sign",
    "Verify",
    "GetPublicKey",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
];

pub fn is_asymmetric_op(op: &str) -> bool {
    OPERATIONS.contains(&op)
}

/// KeySpec (or the older CustomerMasterKeySpec) and KeyUsage of a CreateKey request.
pub fn create_key_spec(input: &Value) -> Result<(KeySpec, KeyUsage), ApiError> {
    let spec = match (str_of(input, "KeySpec"), str_of(input, "CustomerMasterKeySpec")) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::validation("give KeySpec or CustomerMasterKeySpec, not both"))
        }
        (Some(s), _) | (None, Some(s)) => KeySpec::parse_supported(s).map_err(ApiError::unaudited)?,
        (None, None) => KeySpec::Symmetric,
    };
    // The model's enum check has run: an unknown usage cannot reach here.
    let usage = str_of(input, "KeyUsage").and_then(KeyUsage::parse).unwrap_or_default();
    Ok((spec, usage))
}

/// Adds the algorithm list DescribeKey shows for a key of `spec` and `usage`.
pub fn add_algorithms(metadata: &mut Value, spec: &str, usage: &str) {
    let spec = KeySpec::parse(spec).unwrap_or_default();
    let usage = KeyUsage::parse(usage).unwrap_or_default();
    let (member, algorithms) = spec.algorithms(usage);
    metadata[member] = json!(algorithms);
    drop_legacy_spec(metadata, spec);
}

/// The deprecated CustomerMasterKeySpec has no value for specs newer than it.
fn drop_legacy_spec(v: &mut Value, spec: KeySpec) {
    if spec == KeySpec::Ecc(crate::kms::asymmetric::spec::Curve::Ed25519) {
        if let Some(m) = v.as_object_mut() {
            m.remove("CustomerMasterKeySpec");
        }
    }
}

fn message_is_digest(input: &Value) -> Result<bool, ApiError> {
    match str_of(input, "MessageType") {
        None | Some("RAW") => Ok(false),
        Some("DIGEST") => Ok(true),
        Some(other) => Err(ApiError::client(
            "InvalidKeyUsageException",
            format!("MessageType {other} is not supported by kmsfs"),
        )),
    }
}

/// The operations of this module, and Encrypt/Decrypt with an RSA algorithm; `None` for
/// every other call.
pub fn data_plane(svc: &Service, caller: &Principal, op: &str, input: &Value) -> Option<Answer> {
    let rsa = |name| str_of(input, name).and_then(oaep_digest).is_some();
    match op {
        "Encrypt" if rsa("EncryptionAlgorithm") => Some(rsa_encrypt(svc, caller, input)),
        "Decrypt" if rsa("EncryptionAlgorithm") => Some(rsa_decrypt(svc, caller, input)),
        _ if is_asymmetric_op(op) => Some(run(svc, caller, op, input)),
        _ => None,
    }
}

fn rsa_encrypt(svc: &Service, caller: &Principal, input: &Value) -> Answer {
    let key = svc.key_ref(required(input, "KeyId")?)?;
    let algorithm = required(input, "EncryptionAlgorithm")?;
    let plaintext = zeroize::Zeroizing::new(blob(input, "Plaintext")?.unwrap_or_default());
    let (key_id, ciphertext) = svc.ring.rsa_encrypt(caller, &key, algorithm, &plaintext)?;
    Ok(
        json!({"CiphertextBlob": b64(&ciphertext), "KeyId": svc.key_arn(&key_id), "EncryptionAlgorithm": algorithm}),
    )
}

fn rsa_decrypt(svc: &Service, caller: &Principal, input: &Value) -> Answer {
    let algorithm = required(input, "EncryptionAlgorithm")?;
    // An RSA ciphertext does not name its key, so the caller must (as in AWS).
    let key = svc
        .key_ref(str_of(input, "KeyId").ok_or_else(|| {
            ApiError::validation("KeyId is required to decrypt with an asymmetric KMS key")
        })?)?;
    let ciphertext = required_blob(input, "CiphertextBlob")?;
    let (key_id, plaintext) = svc.ring.rsa_decrypt(caller, &key, algorithm, &ciphertext)?;
    Ok(json!({"KeyId": svc.key_arn(&key_id), "Plaintext": b64(&plaintext), "EncryptionAlgorithm": algorithm}))
}

fn run(svc: &Service, caller: &Principal, op: &str, input: &Value) -> Answer {
    let ring = &svc.ring;
    let key = svc.key_ref(required(input, "KeyId")?)?;
    match op {
        "Sign" => {
            let algorithm = required(input, "SigningAlgorithm")?;
            let message = zeroize::Zeroizing::new(required_blob(input, "Message")?);
            let (key_id, signature) =
                ring.sign(caller, &key, algorithm, &message, message_is_digest(input)?)?;
            Ok(
                json!({"KeyId": svc.key_arn(&key_id), "Signature": b64(&signature), "SigningAlgorithm": algorithm}),
            )
        }
        "Verify" => {
            let algorithm = required(input, "SigningAlgorithm")?;
            let message = zeroize::Zeroizing::new(required_blob(input, "Message")?);
            let signature = required_blob(input, "Signature")?;
            let key_id =
                ring.verify(caller, &key, algorithm, &message, message_is_digest(input)?, &signature)?;
            Ok(json!({"KeyId": svc.key_arn(&key_id), "SignatureValid": true, "SigningAlgorithm": algorithm}))
        }
        "GetPublicKey" => {
            let info = ring.get_public_key(caller, &key)?;
            let mut out = json!({
                "KeyId": svc.key_arn(&info.key_id),
                "PublicKey": b64(&info.public_key),
                "CustomerMasterKeySpec": info.key_spec.as_str(),
                "KeySpec": info.key_spec.as_str(),
                "KeyUsage": info.key_usage.as_str(),
            });
            let (member, algorithms) = info.key_spec.algorithms(info.key_usage);
            out[member] = json!(algorithms);
            drop_legacy_spec(&mut out, info.key_spec);
            Ok(out)
        }
        "GenerateMac" => {
            let algorithm = required(input, "MacAlgorithm")?;
            let message = zeroize::Zeroizing::new(required_blob(input, "Message")?);
            let (key_id, mac) = ring.generate_mac(caller, &key, algorithm, &message)?;
            Ok(json!({"Mac": b64(&mac), "MacAlgorithm": algorithm, "KeyId": svc.key_arn(&key_id)}))
        }
        "VerifyMac" => {
            let algorithm = required(input, "MacAlgorithm")?;
            let message = zeroize::Zeroizing::new(required_blob(input, "Message")?);
            let mac = required_blob(input, "Mac")?;
            let key_id = ring.verify_mac(caller, &key, algorithm, &message, &mac)?;
            Ok(json!({"KeyId": svc.key_arn(&key_id), "MacValid": true, "MacAlgorithm": algorithm}))
        }
        "DeriveSharedSecret" => {
            let algorithm = required(input, "KeyAgreementAlgorithm")?;
            let peer = required_blob(input, "PublicKey")?;
            if input.get("Recipient").is_some() {
                return Err(ApiError::client(
                    "UnsupportedOperationException",
                    "a Nitro Enclaves Recipient is not supported by kmsfs",
                ));
            }
            let (key_id, secret) = ring.derive_shared_secret(caller, &key, algorithm, &peer)?;
            Ok(json!({
                "KeyId": svc.key_arn(&key_id),
                "SharedSecret": b64(&secret),
                "KeyAgreementAlgorithm": algorithm,
                "KeyOrigin": "AWS_KMS",
            }))
        }
        "GenerateDataKeyPair" | "GenerateDataKeyPairWithoutPlaintext" => {
            if input.get("Recipient").is_some() {
                return Err(ApiError::client(
                    "UnsupportedOperationException",
                    "a Nitro Enclaves Recipient is not supported by kmsfs",
                ));
            }
            let name = required(input, "KeyPairSpec")?;
            let spec =
                KeySpec::parse_supported(name).ok().filter(|s| s.is_asymmetric()).ok_or_else(|| {
                    ApiError::client(
                        "UnsupportedOperationException",
                        format!("KeyPairSpec {name} is not supported by kmsfs"),
                    )
                })?;
            let with_plaintext = op == "GenerateDataKeyPair";
            let ctx = context(input, "EncryptionContext")?;
            let pair = ring.generate_data_key_pair(caller, &key, spec, &ctx, with_plaintext)?;
            let mut out = json!({
                "PrivateKeyCiphertextBlob": b64(&pair.private_blob),
                "PublicKey": b64(&pair.public_key),
                "KeyId": svc.key_arn(&pair.key_id),
                "KeyPairSpec": name,
            });
            if let Some(private) = &pair.private_plaintext {
                out["PrivateKeyPlaintext"] = json!(b64(private));
            }
            Ok(out)
        }
        _ => Err(ApiError::client("UnknownOperationException", "")),
    }
}
