//! The JSON of key import: GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial, and what imported keys add to DescribeKey and
//! ListKeyRotations (KeyMaterialId, ImportState, ExpirationModel, ValidTo).

use serde_json::{json, Value};

use super::api::{b64, required, required_blob, str_of};
use super::errors::ApiError;
use super::Service;
use crate::keystore::records::VersionRecord;
use crate::kms::import::{self, ImportRequest, ImportType, MaterialRecord};
use crate::kms::{KeyMetadata, Kms, Principal};

type Answer = Result<Value, ApiError>;

/// A DateType member (the SDKs send epoch seconds, possibly with a fraction).
fn date(input: &Value, name: &str) -> Option<i64> {
    input.get(name).and_then(Value::as_f64).map(|t| t.floor() as i64)
}

/// The import operations, or `None` for any other.
pub fn control(svc: &Service, kms: &mut Kms, caller: &Principal, op: &str, input: &Value) -> Option<Answer> {
    let run = || -> Answer {
        let key = svc.key_ref(required(input, "KeyId")?)?;
        match op {
            "GetParametersForImport" => {
                let p = kms.get_parameters_for_import(
                    caller,
                    &key,
                    required(input, "WrappingAlgorithm")?,
                    required(input, "WrappingKeySpec")?,
                )?;
                Ok(json!({
                    "KeyId": svc.key_arn(&p.key_id),
                    "ImportToken": b64(&p.import_token),
                    "PublicKey": b64(&p.public_key),
                    "ParametersValidTo": p.parameters_valid_to,
                }))
            }
            "ImportKeyMaterial" => {
                let encrypted = required_blob(input, "EncryptedKeyMaterial")?;
                let token = required_blob(input, "ImportToken")?;
                let req = ImportRequest {
                    encrypted_material: &encrypted,
                    import_token: &token,
                    expiration_model: str_of(input, "ExpirationModel"),
                    valid_to: date(input, "ValidTo"),
                    import_type: str_of(input, "ImportType").map(ImportType::parse).transpose()?,
                    key_material_id: str_of(input, "KeyMaterialId"),
                    description: str_of(input, "KeyMaterialDescription"),
                };
                let (key_id, material_id) = kms.import_key_material(caller, &key, &req)?;
                Ok(json!({"KeyId": svc.key_arn(&key_id), "KeyMaterialId": material_id}))
            }
            "DeleteImportedKeyMaterial" => {
                let (key_id, material_id) =
                    kms.delete_imported_key_material(caller, &key, str_of(input, "KeyMaterialId"))?;
                Ok(json!({"KeyId": svc.key_arn(&key_id), "KeyMaterialId": material_id}))
            }
            _ => unreachable!("only the import operations come here"),
        }
    };
    matches!(op, "GetParametersForImport" | "ImportKeyMaterial" | "DeleteImportedKeyMaterial").then(run)
}

/// DescribeKey's members for a key with imported material.
pub fn add_metadata(v: &mut Value, m: &KeyMetadata) {
    if let Some(model) = &m.expiration_model {
        v["ExpirationModel"] = json!(model);
    }
    if let Some(t) = m.valid_to_secs {
        v["ValidTo"] = json!(t);
    }
    if let Some(id) = &m.current_key_material_id {
        v["CurrentKeyMaterialId"] = json!(id);
    }
}

/// ListKeyRotations' entries. ROTATIONS_ONLY (the default) lists the versions rotations
/// made; ALL_KEY_MATERIAL adds the first and, for imported keys, material pending rotation.
/// Imported keys' entries carry their material's id, import state and expiration.
pub fn rotation_entries(
    kms: &Kms,
    key_arn: &str,
    key_id: &str,
    versions: Vec<VersionRecord>,
    input: &Value,
) -> Result<Vec<Value>, ApiError> {
    let all = str_of(input, "IncludeKeyMaterial") == Some("ALL_KEY_MATERIAL");
    let key = kms.metadata_after(key_id)?;
    let materials: Vec<MaterialRecord> =
        if key.origin == import::ORIGIN_EXTERNAL { kms.imported_materials(key_id)? } else { Vec::new() };
    let current = key.current_key_version;
    Ok(versions
        .into_iter()
        .filter(|v| all || (v.rotation_type != "INITIAL" && v.version <= current))
        .map(|v| {
            let mut e = json!({"KeyId": key_arn});
            if v.version <= current && v.rotation_type != "INITIAL" {
                e["RotationDate"] = json!(v.created);
                e["RotationType"] = json!(v.rotation_type);
            }
            if let Some(m) = materials.iter().find(|m| m.version == v.version) {
                let state = match v.version.cmp(&current) {
                    std::cmp::Ordering::Less => "NON_CURRENT",
                    std::cmp::Ordering::Equal => "CURRENT",
                    std::cmp::Ordering::Greater => "PENDING_ROTATION",
                };
                e["KeyMaterialId"] = json!(m.key_material_id);
                e["KeyMaterialState"] = json!(state);
                e["ImportState"] = json!(if m.imported { "IMPORTED" } else { "PENDING_IMPORT" });
                e["ExpirationModel"] = json!(m.expiration_model);
                if let Some(t) = m.valid_to {
                    e["ValidTo"] = json!(t);
                }
                if !m.description.is_empty() {
                    e["KeyMaterialDescription"] = json!(m.description);
                }
            }
            e
        })
        .collect())
}
