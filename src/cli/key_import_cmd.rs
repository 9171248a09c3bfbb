//! `kmsfs key import`, `get-parameters-for-import`, `import-material`,
//! `delete-imported-material`: key material brought by the operator (Origin EXTERNAL keys).

use std::path::{Path, PathBuf};

use clap::Args;
use zeroize::Zeroizing;

use super::output;
use super::Session;
use crate::error::{Error, Result};
use crate::kms::clock::{format_date, parse_time};
use crate::kms::import::{ImportRequest, ImportType, DOES_NOT_EXPIRE, EXPIRES};
use crate::kms::import_wrap::{self, WrappingAlgorithm};

/// When the imported material expires (one of the two is required, as AWS requires it).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Expiry {
    /// The material is deleted at this time (2027-06-30, 2027-06-30T12:00:00Z, or 90days);
    /// at most 365 days ahead
    #[arg(long)]
    valid_to: Option<String>,
    /// The material never expires
    #[arg(long)]
    no_expiry: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The key (Origin EXTERNAL)
    key: String,
    /// The raw key material: 32 bytes for a symmetric key, the key bytes for HMAC, a PKCS#8
    /// DER private key for RSA and ECC keys
    #[arg(long)]
    material: PathBuf,
    #[command(flatten)]
    expiry: Expiry,
    /// New material for an on-demand rotation (`kmsfs key rotate` makes it current), instead
    /// of the material the key had
    #[arg(long)]
    new_material: bool,
    /// How the material travels to the keystore
    #[arg(long, default_value = "RSA_AES_KEY_WRAP_SHA_256")]
    wrapping_algorithm: String,
    /// RSA_2048, RSA_3072 or RSA_4096
    #[arg(long, default_value = "RSA_3072")]
    wrapping_key_spec: String,
    /// A description of this material (ListKeyRotations shows it)
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetParametersArgs {
    key: String,
    /// RSAES_OAEP_SHA_256, RSAES_OAEP_SHA_1, RSA_AES_KEY_WRAP_SHA_256, RSA_AES_KEY_WRAP_SHA_1
    #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
    wrapping_algorithm: String,
    /// RSA_2048, RSA_3072 or RSA_4096
    #[arg(long, default_value = "RSA_3072")]
    wrapping_key_spec: String,
    /// Where the wrapping key goes (DER SubjectPublicKeyInfo, for `openssl pkeyutl -keyform DER`)
    #[arg(long)]
    public_key_out: PathBuf,
    /// Where the import token goes
    #[arg(long)]
    token_out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportMaterialArgs {
    key: String,
    /// The material wrapped with the public key of `get-parameters-for-import`
    #[arg(long)]
    encrypted_material: PathBuf,
    /// The import token of the same `get-parameters-for-import`
    #[arg(long)]
    import_token: PathBuf,
    #[command(flatten)]
    expiry: Expiry,
    /// New material for an on-demand rotation, instead of the material the key had
    #[arg(long)]
    new_material: bool,
    /// The KeyMaterialId the material must have (a re-import)
    #[arg(long)]
    key_material_id: Option<String>,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    key: String,
    /// The material to delete (`kmsfs key rotations KEY --json`); default: the current
    #[arg(long)]
    key_material_id: Option<String>,
}

fn read(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| Error::io(format!("cannot read the {what} {}", path.display()), e))
}

fn write(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| Error::io(format!("cannot write the {what} {}", path.display()), e))
}

/// ExpirationModel and ValidTo of the options, at the KMS clock's `now`.
fn expiration(expiry: &Expiry, now: i64) -> Result<(&'static str, Option<i64>)> {
    match &expiry.valid_to {
        Some(text) => Ok((EXPIRES, Some(parse_time(text, now, false).map_err(Error::InvalidArgument)?))),
        None => Ok((DOES_NOT_EXPIRE, None)),
    }
}

fn import_type(new_material: bool) -> Option<ImportType> {
    new_material.then_some(ImportType::NewKeyMaterial)
}

fn report(s: &mut Session, key: &str, key_id: &str, material_id: &str) -> Result<()> {
    let me = s.me.clone();
    if s.json {
        output::json(&serde_json::json!({ "KeyId": key_id, "KeyMaterialId": material_id }));
        return Ok(());
    }
    let meta = s.kms.describe_key(&me, key_id)?;
    let until = meta.valid_to.map_or("does not expire".to_string(), |t| format!("valid to {t}"));
    println!(
        "key material {} imported into key {key}: the key is {}, {until}",
        &material_id[..16],
        meta.key_state.as_str()
    );
    Ok(())
}

/// The whole import on this machine: parameters, wrapping, import.
pub fn import(s: &mut Session, args: ImportArgs) -> Result<()> {
    let me = s.me.clone();
    let material = read(&args.material, "key material")?;
    let alg = WrappingAlgorithm::parse(&args.wrapping_algorithm)?;
    let (model, valid_to) = expiration(&args.expiry, s.kms.now_secs())?;
    let params = s.kms.get_parameters_for_import(&me, &args.key, alg.as_str(), &args.wrapping_key_spec)?;
    let wrapped = import_wrap::wrap(alg, &params.public_key, &material)?;
    let req = ImportRequest {
        encrypted_material: &wrapped,
        import_token: &params.import_token,
        expiration_model: Some(model),
        valid_to,
        import_type: import_type(args.new_material),
        key_material_id: None,
        description: args.description.as_deref(),
    };
    let (key_id, material_id) = s.kms.import_key_material(&me, &args.key, &req)?;
    report(s, &args.key, &key_id, &material_id)
}

pub fn get_parameters(s: &mut Session, args: GetParametersArgs) -> Result<()> {
    let me = s.me.clone();
    let params =
        s.kms.get_parameters_for_import(&me, &args.key, &args.wrapping_algorithm, &args.wrapping_key_spec)?;
    write(&args.public_key_out, &params.public_key, "wrapping key")?;
    write(&args.token_out, &params.import_token, "import token")?;
    if s.json {
        output::json(&serde_json::json!({
            "KeyId": params.key_id,
            "ParametersValidTo": format_date(params.parameters_valid_to),
        }));
    } else {
        println!(
            "wrapping key in {}, import token in {}; both valid until {}",
            args.public_key_out.display(),
            args.token_out.display(),
            format_date(params.parameters_valid_to)
        );
    }
    Ok(())
}

pub fn import_material(s: &mut Session, args: ImportMaterialArgs) -> Result<()> {
    let me = s.me.clone();
    let wrapped = read(&args.encrypted_material, "encrypted key material")?;
    let token = read(&args.import_token, "import token")?;
    let (model, valid_to) = expiration(&args.expiry, s.kms.now_secs())?;
    let req = ImportRequest {
        encrypted_material: &wrapped,
        import_token: &token,
        expiration_model: Some(model),
        valid_to,
        import_type: import_type(args.new_material),
        key_material_id: args.key_material_id.as_deref(),
        description: args.description.as_deref(),
    };
    let (key_id, material_id) = s.kms.import_key_material(&me, &args.key, &req)?;
    report(s, &args.key, &key_id, &material_id)
}

pub fn delete(s: &mut Session, args: DeleteArgs) -> Result<()> {
    let me = s.me.clone();
    let (key_id, material_id) =
        s.kms.delete_imported_key_material(&me, &args.key, args.key_material_id.as_deref())?;
    if s.json {
        output::json(&serde_json::json!({ "KeyId": key_id, "KeyMaterialId": material_id }));
    } else {
        let state = s.kms.describe_key(&me, &key_id)?.key_state;
        println!(
            "key material {} of key {} deleted: the key is {} until the same material is imported again",
            &material_id[..16],
            args.key,
            state.as_str()
        );
    }
    Ok(())
}
