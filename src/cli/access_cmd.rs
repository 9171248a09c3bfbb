//! `kmsfs policy get|put` and `kmsfs grant create|list|retire|revoke`.

use std::path::PathBuf;

use clap::Subcommand;

use super::output::{self, or_dash, Table};
use super::Session;
use crate::error::{Error, Result};
use crate::kms::access::GrantOptions;
use crate::kms::clock::{format_date, parse_time};
use crate::kms::EncryptionContext;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Print a key's policy (JSON)
    #[command(after_help = "Example:\n  kmsfs policy get alias/finance > policy.json")]
    Get { key: String },
    /// Replace a key's policy with the JSON document in FILE (max 32 KiB)
    #[command(after_help = "Example policy (alice may read and write files, bob may not):
{
  \"Version\": \"2012-10-17\",
  \"Statement\": [
    {\"Sid\": \"admin\", \"Effect\": \"Allow\", \"Principal\": {\"Uid\": [0]}, \"Action\": \"kms:*\"},
    {\"Sid\": \"alice\", \"Effect\": \"Allow\", \"Principal\": {\"User\": [\"alice\"]},
     \"Action\": [\"kms:Decrypt\", \"kms:GenerateDataKey*\"],
     \"Condition\": {\"StringLike\": {\"kmsfs:Path\": \"/finance/*\"}}},
    {\"Sid\": \"no-bob\", \"Effect\": \"Deny\", \"Principal\": {\"User\": [\"bob\"]}, \"Action\": \"kms:*\"}
  ]
}")]
    Put { key: String, file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    /// Allow a user or group to use a key, optionally for a limited time
    #[command(
        after_help = "Examples:\n  kmsfs grant create --key alias/finance --grantee user:bob --operations Decrypt --expires 2h\n  kmsfs grant create --key alias/finance --grantee group:audit --operations Decrypt --constraint 'kmsfs:Path=/finance/reports/*'"
    )]
    Create {
        #[arg(long)]
        key: String,
        /// user:NAME, group:NAME or uid:N
        #[arg(long)]
        grantee: String,
        /// Comma-separated: Decrypt, Encrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext,
        /// ReEncryptFrom, ReEncryptTo, DescribeKey
        #[arg(long, value_delimiter = ',', required = true)]
        operations: Vec<String>,
        /// Only for requests whose encryption context (or kmsfs:Path) matches KEY=GLOB
        #[arg(long = "constraint", value_name = "KEY=GLOB")]
        constraints: Vec<String>,
        /// When the grant ends: a duration (2h, 7days) or a date
        #[arg(long)]
        expires: Option<String>,
        /// A name to recognise the grant by
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List a key's grants
    #[command(after_help = "Example:\n  kmsfs grant list alias/finance --json")]
    List { key: String },
    /// Give up a grant you hold (by grant id or token)
    #[command(after_help = "Example:\n  kmsfs grant retire GRANT_ID")]
    Retire { grant: String },
    /// Remove a grant (administrators)
    #[command(after_help = "Example:\n  kmsfs grant revoke alias/finance GRANT_ID")]
    Revoke { key: String, grant_id: String },
}

pub fn run_policy(s: &mut Session, cmd: PolicyCmd) -> Result<()> {
    let me = s.me.clone();
    match cmd {
        PolicyCmd::Get { key } => {
            let policy = s.kms.get_key_policy(&me, &key)?;
            println!("{}", policy.trim_end());
        }
        PolicyCmd::Put { key, file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?;
            s.kms.put_key_policy(&me, &key, &text)?;
            if !s.json {
                println!("policy of {key} replaced; a running mount applies it at the next open");
            }
        }
    }
    Ok(())
}

pub fn run_grant(s: &mut Session, cmd: GrantCmd) -> Result<()> {
    let me = s.me.clone();
    match cmd {
        GrantCmd::Create { key, grantee, operations, constraints, expires, name } => {
            let expires = expires
                .map(|t| parse_time(&t, s.kms.now_secs(), false).map_err(Error::InvalidArgument))
                .transpose()?;
            let constraints = EncryptionContext::from_pairs(&constraints)?.0;
            let opts = GrantOptions { grantee, operations, constraints, expires, name, ..Default::default() };
            let (grant_id, token) = s.kms.create_grant(&me, &key, &opts)?;
            if s.json {
                output::json(&serde_json::json!({ "GrantId": grant_id, "GrantToken": token,
                    "Expires": expires.map(format_date) }));
            } else {
                output::fields(&[
                    ("GrantId", grant_id),
                    ("GrantToken", token),
                    ("Expires", or_dash(expires.map(format_date))),
                ]);
            }
        }
        GrantCmd::List { key } => {
            let grants = s.kms.list_grants(&me, &key)?;
            let now = s.kms.now_secs();
            if s.json {
                output::json(&grants);
            } else {
                let mut t =
                    Table::new(&["GRANT ID", "GRANTEE", "OPERATIONS", "CONSTRAINTS", "EXPIRES", "NAME"]);
                for g in grants {
                    let expires = match g.expires {
                        Some(e) if e <= now => format!("expired {}", format_date(e)),
                        Some(e) => format_date(e),
                        None => "never".into(),
                    };
                    let constraints =
                        g.constraints.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                    t.row(vec![
                        g.grant_id,
                        g.grantee,
                        g.operations.join(","),
                        or_dash((!constraints.is_empty()).then_some(constraints)),
                        expires,
                        g.name,
                    ]);
                }
                t.print();
            }
        }
        GrantCmd::Retire { grant } => {
            s.kms.retire_grant(&me, &grant)?;
            if !s.json {
                println!("grant retired");
            }
        }
        GrantCmd::Revoke { key, grant_id } => {
            s.kms.revoke_grant(&me, &key, &grant_id)?;
            if !s.json {
                println!("grant {grant_id} revoked; a running mount refuses it at the next open");
            }
        }
    }
    Ok(())
}
