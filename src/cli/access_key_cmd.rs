//! `kmsfs access-key create|list|disable|enable|delete`: the credentials API callers sign
//! with (see docs/SERVER.md).

use clap::Subcommand;

use super::output::{self, Table};
use super::Session;
use crate::error::Result;
use crate::kms::clock::format_date;

#[derive(Debug, Subcommand)]
pub enum AccessKeyCmd {
    /// Create an access key for an API user; the secret is printed once
    #[command(after_help = "Example:\n  kmsfs access-key create --user alice --uid 1001 --json")]
    Create {
        /// IAM-style user name: the caller is arn:aws:iam::ACCOUNT:user/NAME
        #[arg(long, value_name = "NAME")]
        user: String,
        /// Unix uid the key also acts as (Unix principals in policies and grants apply)
        #[arg(long, value_name = "N")]
        uid: Option<u32>,
    },
    /// List access keys (never their secrets)
    #[command(after_help = "Example:\n  kmsfs access-key list --json")]
    List,
    /// Make an access key unusable (a running server refuses it at once)
    #[command(after_help = "Example:\n  kmsfs access-key disable AKIAEXAMPLE234567ABC")]
    Disable { access_key_id: String },
    /// Make a disabled access key usable again
    #[command(after_help = "Example:\n  kmsfs access-key enable AKIAEXAMPLE234567ABC")]
    Enable { access_key_id: String },
    /// Delete an access key for good
    #[command(after_help = "Example:\n  kmsfs access-key delete AKIAEXAMPLE234567ABC")]
    Delete { access_key_id: String },
}

pub fn run(s: &mut Session, cmd: AccessKeyCmd) -> Result<()> {
    let me = s.me.clone();
    match cmd {
        AccessKeyCmd::Create { user, uid } => {
            let key = s.kms.create_access_key(&me, &user, uid)?;
            if s.json {
                // IAM CreateAccessKey's response shape.
                output::json(&serde_json::json!({ "AccessKey": {
                    "UserName": key.info.user_name,
                    "AccessKeyId": key.info.access_key_id,
                    "SecretAccessKey": key.secret.as_str(),
                    "Status": key.info.status,
                    "CreateDate": format_date(key.info.create_date),
                }}));
            } else {
                let arn =
                    format!("arn:aws:iam::{}:user/{}", s.kms.keystore().account_id()?, key.info.user_name);
                output::fields(&[
                    ("UserName", key.info.user_name.clone()),
                    ("Principal", arn),
                    ("AccessKeyId", key.info.access_key_id.clone()),
                    ("SecretAccessKey", key.secret.to_string()),
                ]);
                eprintln!("kmsfs: the secret is shown only now; store it (e.g. in ~/.aws/credentials)");
            }
        }
        AccessKeyCmd::List => {
            let keys = s.kms.list_access_keys(&me)?;
            if s.json {
                output::json(&serde_json::json!({ "AccessKeyMetadata": keys }));
            } else {
                let mut t = Table::new(&["ACCESS KEY ID", "USER", "UID", "STATUS", "CREATED"]);
                for k in keys {
                    t.row(vec![
                        k.access_key_id,
                        k.user_name,
                        k.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
                        k.status,
                        format_date(k.create_date),
                    ]);
                }
                t.print();
            }
        }
        AccessKeyCmd::Disable { access_key_id } => {
            s.kms.set_access_key_active(&me, &access_key_id, false)?;
            if !s.json {
                println!("access key {access_key_id} disabled");
            }
        }
        AccessKeyCmd::Enable { access_key_id } => {
            s.kms.set_access_key_active(&me, &access_key_id, true)?;
            if !s.json {
                println!("access key {access_key_id} enabled");
            }
        }
        AccessKeyCmd::Delete { access_key_id } => {
            s.kms.delete_access_key(&me, &access_key_id)?;
            if !s.json {
                println!("access key {access_key_id} deleted");
            }
        }
    }
    Ok(())
}
