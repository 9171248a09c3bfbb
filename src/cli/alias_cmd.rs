//! `kmsfs alias ...`.

use clap::Subcommand;

use super::output::{self, Table};
use super::Session;
use crate::error::Result;
use crate::kms::clock::format_date;

#[derive(Debug, Subcommand)]
pub enum AliasCmd {
    /// Give a key a friendly name
    #[command(
        after_help = "Example:\n  kmsfs alias create alias/finance 1234abcd-12ab-34cd-56ef-1234567890ab"
    )]
    Create { alias: String, key: String },
    /// Point an existing alias at another key
    #[command(
        after_help = "Example:\n  kmsfs alias update alias/finance 1234abcd-...   # key id or another alias"
    )]
    Update { alias: String, key: String },
    /// Remove an alias (the key stays)
    #[command(after_help = "Example:\n  kmsfs alias delete alias/finance")]
    Delete { alias: String },
    /// List aliases
    #[command(after_help = "Example:\n  kmsfs alias list --key alias/finance")]
    List {
        /// Only the aliases of this key
        #[arg(long)]
        key: Option<String>,
    },
}

pub fn run(s: &mut Session, cmd: AliasCmd) -> Result<()> {
    let me = s.me.clone();
    let message = match cmd {
        AliasCmd::Create { alias, key } => {
            s.kms.create_alias(&me, &alias, &key)?;
            let target = s.kms.resolve_key_id(&alias)?;
            (serde_json::json!({ "AliasName": alias, "TargetKeyId": target }), format!("{alias} -> {target}"))
        }
        AliasCmd::Update { alias, key } => {
            s.kms.update_alias(&me, &alias, &key)?;
            let target = s.kms.resolve_key_id(&alias)?;
            (serde_json::json!({ "AliasName": alias, "TargetKeyId": target }), format!("{alias} -> {target}"))
        }
        AliasCmd::Delete { alias } => {
            s.kms.delete_alias(&me, &alias)?;
            (serde_json::json!({ "AliasName": alias, "Deleted": true }), format!("alias {alias} deleted"))
        }
        AliasCmd::List { key } => {
            let aliases = s.kms.list_aliases(&me, key.as_deref())?;
            if s.json {
                output::json(&aliases);
            } else {
                let mut t = Table::new(&["ALIAS", "KEY ID", "UPDATED"]);
                for a in aliases {
                    t.row(vec![a.alias_name, a.target_key_id, format_date(a.last_updated_date)]);
                }
                t.print();
            }
            return Ok(());
        }
    };
    let (json, text) = message;
    if s.json {
        output::json(&json);
    } else {
        println!("{text}");
    }
    Ok(())
}
