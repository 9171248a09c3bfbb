//! `kmsfs key ...`: master-key lifecycle.

use clap::Subcommand;

use super::output::{self, or_dash, Table};
use super::Session;
use crate::error::{Error, Result};
use crate::kms::asymmetric::{KeySpec, KeyUsage};
use crate::kms::clock::format_date;
use crate::kms::lifecycle::{CreateKeyOptions, DEFAULT_PENDING_WINDOW_DAYS, DEFAULT_ROTATION_PERIOD_DAYS};
use crate::kms::KeyMetadata;

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a customer-managed key and print its id
    #[command(
        after_help = "Example:\n  kmsfs key create --alias alias/finance --description 'finance team'"
    )]
    Create {
        /// Give the key this alias (alias/NAME)
        #[arg(long)]
        alias: Option<String>,
        /// Free text shown by `key describe`
        #[arg(long, default_value = "")]
        description: String,
        /// AWS KeySpec: SYMMETRIC_DEFAULT, RSA_2048/3072/4096, ECC_NIST_P256/P384/P521,
        /// ECC_SECG_P256K1, ECC_NIST_EDWARDS25519, HMAC_224/256/384/512
        #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
        key_spec: String,
        /// AWS KeyUsage: ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC, KEY_AGREEMENT
        #[arg(long, default_value = "ENCRYPT_DECRYPT")]
        key_usage: String,
        /// AWS_KMS (kmsfs makes the material) or EXTERNAL (you import it: `kmsfs key import`)
        #[arg(long, default_value = "AWS_KMS")]
        origin: String,
        /// A multi-Region primary key (id mrk-...), which `key replicate` copies to other keystores
        #[arg(long)]
        multi_region: bool,
    },
    /// Import key material into a key of Origin EXTERNAL (wraps it here and imports it)
    #[command(after_help = "Examples:
  kmsfs key import alias/byok --material key.bin --valid-to 2027-06-30
  kmsfs key import alias/byok --material key.bin --no-expiry          # re-import after a deletion
  kmsfs key import alias/byok --material new.bin --no-expiry --new-material && kmsfs key rotate alias/byok")]
    Import(super::key_import_cmd::ImportArgs),
    /// Write a fresh wrapping key and import token for a manual import (valid 24 hours)
    #[command(after_help = "Example:
  kmsfs key get-parameters-for-import alias/byok --public-key-out wrapping.der --token-out token.bin
  openssl pkeyutl -encrypt -pubin -inkey wrapping.der -keyform DER -pkeyopt rsa_padding_mode:oaep \\
      -pkeyopt rsa_oaep_md:sha256 -in key.bin -out key.wrapped")]
    GetParametersForImport(super::key_import_cmd::GetParametersArgs),
    /// Import key material wrapped elsewhere with the parameters of get-parameters-for-import
    #[command(after_help = "Example:
  kmsfs key import-material alias/byok --encrypted-material key.wrapped --import-token token.bin --no-expiry")]
    ImportMaterial(super::key_import_cmd::ImportMaterialArgs),
    /// Delete imported key material at once: the key is PendingImport until it is imported again
    #[command(after_help = "Example:\n  kmsfs key delete-imported-material alias/byok")]
    DeleteImportedMaterial(super::key_import_cmd::DeleteArgs),
    /// Write the public key of an RSA or ECC key (PEM, or DER with --der)
    #[command(after_help = "Example:
  kmsfs key public-key alias/signer --out signer.pem")]
    PublicKey {
        key: String,
        /// Write here instead of standard output
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// DER SubjectPublicKeyInfo instead of PEM
        #[arg(long)]
        der: bool,
    },
    /// List every key with its state
    #[command(
        after_help = "Example:\n  kmsfs key list --json | jq -r '.[] | select(.KeyState == \"Enabled\") | .KeyId'"
    )]
    List,
    /// Show a key's metadata
    #[command(after_help = "Example:\n  kmsfs key describe alias/finance --json")]
    Describe { key: String },
    /// Allow cryptographic use of a disabled key again
    #[command(after_help = "Example:\n  kmsfs key enable alias/finance")]
    Enable { key: String },
    /// Refuse every cryptographic use of a key (reversible)
    #[command(
        after_help = "Example:\n  kmsfs key disable alias/finance     # open files fail with ENOKEY from the next open"
    )]
    Disable { key: String },
    /// Rotate now: a new version becomes current, older versions keep decrypting
    #[command(after_help = "Example:\n  kmsfs key rotate alias/finance && kmsfs rewrap ~/vault")]
    Rotate { key: String },
    /// Automatic rotation settings
    #[command(subcommand)]
    Rotation(RotationCmd),
    /// List a key's versions
    #[command(after_help = "Example:\n  kmsfs key rotations alias/finance")]
    Rotations { key: String },
    /// Schedule a key for destruction after a waiting period of 7 to 30 days
    #[command(after_help = "Example:\n  kmsfs key schedule-deletion alias/old --pending-window-days 7")]
    ScheduleDeletion {
        key: String,
        /// Days before the key material is destroyed (7 to 30)
        #[arg(long, default_value_t = DEFAULT_PENDING_WINDOW_DAYS, allow_negative_numbers = true)]
        pending_window_days: i64,
    },
    /// Keep a key that is pending deletion; it returns Disabled
    #[command(after_help = "Example:\n  kmsfs key cancel-deletion alias/old && kmsfs key enable alias/old")]
    CancelDeletion { key: String },
    /// Destroy now every key whose deletion date has passed (also done on every keystore open)
    #[command(after_help = "Example:\n  kmsfs key purge-expired")]
    PurgeExpired,
    /// Replicate a multi-Region primary key into another region's keystore
    Replicate(super::region_cmd::ReplicateArgs),
    /// Bring multi-Region keys shared with another region's keystore in sync
    Sync(super::region_cmd::SyncArgs),
    /// Make the replica in another region's keystore the primary of a multi-Region key
    UpdatePrimaryRegion(super::region_cmd::UpdatePrimaryArgs),
}

#[derive(Debug, Subcommand)]
pub enum RotationCmd {
    /// Rotate the key automatically every PERIOD days (90 to 2560)
    #[command(after_help = "Example:\n  kmsfs key rotation enable alias/finance --period-days 180")]
    Enable {
        key: String,
        #[arg(long, default_value_t = DEFAULT_ROTATION_PERIOD_DAYS, allow_negative_numbers = true)]
        period_days: i64,
    },
    /// Stop automatic rotation
    #[command(after_help = "Example:\n  kmsfs key rotation disable alias/finance")]
    Disable { key: String },
    /// Show whether and when the key rotates
    #[command(after_help = "Example:\n  kmsfs key rotation status alias/finance")]
    Status { key: String },
}

pub fn run(s: &mut Session, cmd: KeyCmd) -> Result<()> {
    let me = s.me.clone();
    match cmd {
        KeyCmd::Replicate(args) => return super::region_cmd::replicate(s, args),
        KeyCmd::Sync(args) => return super::region_cmd::sync(s, args),
        KeyCmd::UpdatePrimaryRegion(args) => return super::region_cmd::update_primary_region(s, args),
        KeyCmd::Import(args) => super::key_import_cmd::import(s, args)?,
        KeyCmd::GetParametersForImport(args) => super::key_import_cmd::get_parameters(s, args)?,
        KeyCmd::ImportMaterial(args) => super::key_import_cmd::import_material(s, args)?,
        KeyCmd::DeleteImportedMaterial(args) => super::key_import_cmd::delete(s, args)?,
        KeyCmd::Create { alias, description, key_spec, key_usage, origin, multi_region } => {
            let origin_external = match origin.as_str() {
                "AWS_KMS" => false,
                "EXTERNAL" => true,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown origin {other}: give AWS_KMS or EXTERNAL"
                    )))
                }
            };
            let key_spec = KeySpec::parse_supported(&key_spec)?;
            let key_usage = KeyUsage::parse(&key_usage).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown key usage {key_usage}: give ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC or KEY_AGREEMENT"
                ))
            })?;
            let opts = CreateKeyOptions {
                alias,
                description,
                key_spec,
                key_usage,
                origin_external,
                multi_region,
                ..Default::default()
            };
            let key_id = s.kms.create_key(&me, &opts)?;
            if s.json {
                output::json(&s.kms.describe_key(&me, &key_id)?);
            } else {
                println!("{key_id}");
            }
        }
        KeyCmd::PublicKey { key, out, der } => {
            let info = s.kms.get_public_key(&me, &key)?;
            let bytes = if der { info.public_key } else { spki_pem(&info.public_key).into_bytes() };
            match out {
                Some(path) => std::fs::write(&path, &bytes)
                    .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?,
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(|e| Error::io("cannot write the public key", e))?;
                }
            }
        }
        KeyCmd::List => {
            let keys = s.kms.list_keys(&me)?;
            if s.json {
                output::json(&keys);
            } else {
                print_key_table(&keys);
            }
        }
        KeyCmd::Describe { key } => {
            let meta = s.kms.describe_key(&me, &key)?;
            if s.json {
                output::json(&meta);
            } else {
                print_key_fields(&meta);
            }
        }
        KeyCmd::Enable { key } => {
            s.kms.enable_key(&me, &key)?;
            say(s, &me, &key, &format!("key {key} is enabled"))?;
        }
        KeyCmd::Disable { key } => {
            s.kms.disable_key(&me, &key)?;
            say(s, &me, &key, &format!("key {key} is disabled"))?;
        }
        KeyCmd::Rotate { key } => {
            let version = s.kms.rotate_key(&me, &key)?;
            if s.json {
                output::json(&serde_json::json!({ "KeyId": key, "CurrentKeyVersion": version }));
            } else {
                println!("key {key} rotated: version {version} is current, older versions still decrypt");
            }
        }
        KeyCmd::Rotation(RotationCmd::Enable { key, period_days }) => {
            let next = s.kms.enable_key_rotation(&me, &key, period_days)?;
            say(
                s,
                &me,
                &key,
                &format!("key {key} rotates every {period_days} days; next on {}", format_date(next)),
            )?;
        }
        KeyCmd::Rotation(RotationCmd::Disable { key }) => {
            s.kms.disable_key_rotation(&me, &key)?;
            say(s, &me, &key, &format!("automatic rotation of key {key} is off"))?;
        }
        KeyCmd::Rotation(RotationCmd::Status { key }) => {
            let meta = s.kms.describe_key(&me, &key)?;
            if s.json {
                output::json(&serde_json::json!({
                    "KeyId": meta.key_id,
                    "KeyRotationEnabled": meta.key_rotation_enabled,
                    "RotationPeriodInDays": meta.rotation_period_in_days,
                    "NextRotationDate": meta.next_rotation_date,
                }));
            } else if meta.key_rotation_enabled {
                println!(
                    "enabled: every {} days, next on {}",
                    or_dash(meta.rotation_period_in_days.map(|d| d.to_string())),
                    or_dash(meta.next_rotation_date)
                );
            } else {
                println!("disabled");
            }
        }
        KeyCmd::Rotations { key } => {
            let versions = s.kms.list_key_versions(&me, &key)?;
            let key_id = s.kms.resolve_key_id(&key)?;
            let external = s.kms.metadata_after(&key_id)?.origin == crate::kms::import::ORIGIN_EXTERNAL;
            if s.json {
                output::json(&versions);
            } else {
                let mut t = Table::new(&["VERSION", "CREATED", "TYPE", "MATERIAL"]);
                for v in versions {
                    t.row(vec![
                        v.version.to_string(),
                        format_date(v.created),
                        v.rotation_type,
                        match (v.material_present, external) {
                            (true, _) => "present",
                            (false, true) => "pending import",
                            (false, false) => "destroyed",
                        }
                        .into(),
                    ]);
                }
                t.print();
            }
        }
        KeyCmd::ScheduleDeletion { key, pending_window_days } => {
            let date = s.kms.schedule_key_deletion(&me, &key, pending_window_days)?;
            let state = s.kms.metadata_after(&s.kms.resolve_key_id(&key)?)?.key_state;
            if s.json {
                output::json(&s.kms.describe_key(&me, &key)?);
            } else if state == crate::keystore::records::KeyState::PendingReplicaDeletion {
                println!(
                    "key {key} is pending deletion once its multi-Region replicas are deleted; its \
                     {pending_window_days}-day window starts then (cancel with `kmsfs key cancel-deletion {key}`)"
                );
            } else {
                println!(
                    "key {key} is pending deletion: its material will be destroyed on {} \
                     (cancel with `kmsfs key cancel-deletion {key}`)",
                    format_date(date)
                );
            }
        }
        KeyCmd::CancelDeletion { key } => {
            s.kms.cancel_key_deletion(&me, &key)?;
            say(s, &me, &key, &format!("deletion of key {key} cancelled; the key is Disabled (`kmsfs key enable {key}` to use it)"))?;
        }
        KeyCmd::PurgeExpired => {
            // Opening the keystore already destroyed what was due; report that too.
            let mut destroyed = s.kms.housekeeping().destroyed.clone();
            destroyed.extend(s.kms.purge_expired(&me)?);
            if s.json {
                output::json(&destroyed);
            } else if destroyed.is_empty() {
                println!("no key is past its deletion date");
            } else {
                for id in destroyed {
                    println!("destroyed key {id}");
                }
            }
        }
    }
    Ok(())
}

/// A one-line confirmation for people; with `--json`, the key's metadata as it now is.
fn say(s: &mut Session, me: &crate::kms::Principal, key: &str, message: &str) -> Result<()> {
    if s.json {
        output::json(&s.kms.describe_key(me, key)?);
    } else {
        println!("{message}");
    }
    Ok(())
}

fn print_key_table(keys: &[KeyMetadata]) {
    let mut t = Table::new(&["KEY ID", "STATE", "MANAGER", "VERSION", "ROTATION", "ALIASES", "DESCRIPTION"]);
    for k in keys {
        let rotation = match (k.key_rotation_enabled, &k.next_rotation_date) {
            (true, Some(next)) => format!("next {}", &next[..10]),
            _ => "off".into(),
        };
        let state = match &k.deletion_date {
            Some(d) => format!("{} ({})", k.key_state.as_str(), &d[..10]),
            None => k.key_state.as_str().to_string(),
        };
        t.row(vec![
            k.key_id.clone(),
            state,
            k.key_manager.as_str().to_string(),
            k.current_key_version.to_string(),
            rotation,
            or_dash((!k.aliases.is_empty()).then(|| k.aliases.join(","))),
            k.description.clone(),
        ]);
    }
    t.print();
}

fn print_key_fields(k: &KeyMetadata) {
    output::fields(&[
        ("KeyId", k.key_id.clone()),
        ("Aliases", or_dash((!k.aliases.is_empty()).then(|| k.aliases.join(", ")))),
        ("KeyState", k.key_state.as_str().to_string()),
        ("KeyManager", k.key_manager.as_str().to_string()),
        ("KeySpec", k.key_spec.to_string()),
        ("KeyUsage", k.key_usage.to_string()),
        ("Description", k.description.clone()),
        ("CreationDate", k.creation_date.clone()),
        ("CurrentKeyVersion", k.current_key_version.to_string()),
        ("KeyRotationEnabled", k.key_rotation_enabled.to_string()),
        ("RotationPeriodInDays", or_dash(k.rotation_period_in_days.map(|d| d.to_string()))),
        ("NextRotationDate", or_dash(k.next_rotation_date.clone())),
        ("DeletionDate", or_dash(k.deletion_date.clone())),
        ("PendingDeletionWindowInDays", or_dash(k.pending_deletion_window_in_days.map(|d| d.to_string()))),
        ("Origin", k.origin.clone()),
        ("ExpirationModel", or_dash(k.expiration_model.clone())),
        ("ValidTo", or_dash(k.valid_to.clone())),
        ("CurrentKeyMaterialId", or_dash(k.current_key_material_id.clone())),
        ("MultiRegion", k.multi_region.is_some().to_string()),
    ]);
    if let Some(cfg) = &k.multi_region {
        let replicas: Vec<&str> = cfg.replica_regions().collect();
        output::fields(&[
            ("PrimaryRegion", cfg.primary_region.clone()),
            ("ReplicaRegions", or_dash((!replicas.is_empty()).then(|| replicas.join(", ")))),
        ]);
    }
}

/// PEM ("PUBLIC KEY") of a DER SubjectPublicKeyInfo, as `openssl pkey -pubin` reads it.
fn spki_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}
