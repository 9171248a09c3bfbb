//! `kmsfs status`: the keystore, its keys, what is about to happen to them (deletions,
//! expiring grants) and the volumes mounted now, on one screen or in one JSON object.

use std::path::PathBuf;

use serde::Serialize;

use super::output::{self, or_dash, Table};
use super::Session;
use crate::error::Result;
use crate::keystore::records::KeyState;
use crate::kms::lifecycle::DAY_SECS;
use crate::kms::remote::KeyReport;
use crate::kms::status::{Status, EXPIRING_SOON_SECS};
use crate::volume::VolumeConfig;

pub const AFTER_HELP: &str = "\
Examples:
  kmsfs status
  kmsfs status --json | jq .PendingDeletions

Shows the keystore (path, id, number of keys); every key with its state, aliases and
rotation; keys pending deletion with the time left; grants that end within 7 days; and
the kmsfs volumes mounted now, each with its name, its default key and whether that key
is usable (Enabled, in this keystore).";

/// `kmsfs status --json`: the keystore part from the KMS, plus the mounts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct StatusJson<'a> {
    #[serde(flatten)]
    status: &'a Status,
    mounts: &'a [MountStatus],
    /// The API server running on this keystore (`kmsfs serve`), if any.
    server: Option<serde_json::Value>,
}

/// One mounted volume.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct MountStatus {
    mount_point: PathBuf,
    cipher_dir: PathBuf,
    volume_name: Option<String>,
    volume_id: Option<String>,
    default_key_id: Option<String>,
    key_aliases: Vec<String>,
    key_state: Option<KeyState>,
    key_usable: bool,
    /// Why the key is not usable, or why the volume could not be read.
    problem: Option<String>,
    /// The volume's keys in remote key services (AWS KMS, a central `kmsfs serve`), as the
    /// mount sees them now.
    remote_keys: Vec<KeyReport>,
}

pub fn run(s: &mut Session) -> Result<()> {
    let me = s.me.clone();
    let status = s.kms.status(&me, EXPIRING_SOON_SECS)?;
    let mounts = mounts(&status);
    let server = crate::server::running(s.kms.keystore().path());
    if s.json {
        output::json(&StatusJson { status: &status, mounts: &mounts, server });
    } else {
        print!("{}", render(&status, &mounts));
        match server {
            Some(v) => println!(
                "\nAPI server\n  URL:    {}\n  Socket: {}\n  Pid:    {}",
                v["Url"].as_str().unwrap_or("-"),
                v["Socket"].as_str().unwrap_or("-"),
                v["Pid"]
            ),
            None => println!("\nAPI server: not running"),
        }
    }
    Ok(())
}

fn mounts(status: &Status) -> Vec<MountStatus> {
    crate::mount::kmsfs_mounts()
        .into_iter()
        .map(|m| match VolumeConfig::load(&m.cipher_dir) {
            Ok(config) => {
                let remote_keys = crate::mount::control::remote_keys(&m.mount_point).unwrap_or_default();
                let mut status =
                    match remote_keys.iter().find(|r| r.intermediate_key == config.default_key_id) {
                        // A remote default key: its state is the service's, as the mount saw it.
                        Some(r) => MountStatus {
                            mount_point: m.mount_point,
                            cipher_dir: m.cipher_dir,
                            volume_name: None,
                            volume_id: None,
                            default_key_id: Some(r.key_arn.clone()),
                            key_aliases: Vec::new(),
                            key_state: Some(r.key_state),
                            key_usable: r.usable,
                            problem: r.problem.clone(),
                            remote_keys: Vec::new(),
                        },
                        None => {
                            let key = status.volume_key(&config.keystore_id, &config.default_key_id);
                            MountStatus {
                                mount_point: m.mount_point,
                                cipher_dir: m.cipher_dir,
                                volume_name: None,
                                volume_id: None,
                                default_key_id: Some(config.default_key_id),
                                key_aliases: key.aliases,
                                key_state: key.key_state,
                                key_usable: key.usable,
                                problem: key.problem,
                                remote_keys: Vec::new(),
                            }
                        }
                    };
                status.volume_name = Some(config.name);
                status.volume_id = Some(config.volume_id);
                status.remote_keys = remote_keys;
                status
            }
            Err(e) => MountStatus {
                mount_point: m.mount_point,
                cipher_dir: m.cipher_dir,
                volume_name: None,
                volume_id: None,
                default_key_id: None,
                key_aliases: Vec::new(),
                key_state: None,
                key_usable: false,
                problem: Some(super::errors::describe(&e)),
                remote_keys: Vec::new(),
            },
        })
        .collect()
}

/// The human report: one section per part, an empty part in one line.
fn render(status: &Status, mounts: &[MountStatus]) -> String {
    let mut out = String::new();
    let ks = &status.keystore;
    let states = [
        KeyState::Enabled,
        KeyState::Disabled,
        KeyState::PendingImport,
        KeyState::PendingDeletion,
        KeyState::PendingReplicaDeletion,
        KeyState::Destroyed,
    ]
    .into_iter()
    .filter_map(|state| {
        let n = status.keys.iter().filter(|k| k.key_state == state).count();
        (n > 0).then(|| format!("{n} {}", state.as_str()))
    })
    .collect::<Vec<_>>()
    .join(", ");
    out.push_str("Keystore\n");
    out.push_str(&format!("  Path:       {}\n", ks.path.display()));
    out.push_str(&format!("  KeystoreId: {}\n", ks.keystore_id));
    let keys = if states.is_empty() { "0".to_string() } else { format!("{} ({states})", ks.key_count) };
    out.push_str(&format!("  Keys:       {keys}\n"));
    out.push_str(&format!("  Time:       {}\n", status.time));

    out.push('\n');
    if status.keys.is_empty() {
        out.push_str("Keys: none (create one with `kmsfs key create`)\n");
    } else {
        out.push_str("Keys\n");
        let mut t = Table::new(&["KEY ID", "ALIASES", "STATE", "MANAGER", "VERSION", "ROTATION"]);
        for k in &status.keys {
            let rotation = match (k.key_rotation_enabled, &k.next_rotation_date) {
                (true, Some(next)) => format!(
                    "every {} days, next {}",
                    or_dash(k.rotation_period_in_days.map(|d| d.to_string())),
                    &next[..10]
                ),
                _ => "off".into(),
            };
            t.row(vec![
                k.key_id.clone(),
                aliases(&k.aliases),
                k.key_state.as_str().into(),
                k.key_manager.as_str().into(),
                k.current_key_version.to_string(),
                rotation,
            ]);
        }
        out.push_str(&t.render());
    }

    out.push('\n');
    if status.pending_deletions.is_empty() {
        out.push_str("Pending deletions: none\n");
    } else {
        out.push_str("Pending deletions (`kmsfs key cancel-deletion KEY` keeps a key)\n");
        let mut t = Table::new(&["KEY ID", "ALIASES", "DELETION"]);
        for p in &status.pending_deletions {
            t.row(vec![
                p.key_id.clone(),
                aliases(&p.aliases),
                format!("deletes in {} ({})", countdown(p.seconds_remaining), p.deletion_date),
            ]);
        }
        out.push_str(&t.render());
    }

    out.push('\n');
    let horizon = EXPIRING_SOON_SECS / DAY_SECS;
    if status.expiring_grants.is_empty() {
        out.push_str(&format!("Grants expiring within {horizon} days: none\n"));
    } else {
        out.push_str(&format!("Grants expiring within {horizon} days\n"));
        let mut t = Table::new(&["GRANT ID", "GRANTEE", "KEY", "OPERATIONS", "EXPIRES"]);
        for g in &status.expiring_grants {
            t.row(vec![
                g.grant_id.clone(),
                g.grantee.clone(),
                g.key_aliases.first().cloned().unwrap_or_else(|| g.key_id.clone()),
                g.operations.join(","),
                format!("in {} ({})", countdown(g.seconds_remaining), g.expires),
            ]);
        }
        out.push_str(&t.render());
    }

    if !status.expiring_key_material.is_empty() {
        out.push('\n');
        out.push_str(
            "Warning: imported key material expires within 30 days (the key is then PendingImport and \
             unusable; re-import the material with a later --valid-to or --no-expiry)\n",
        );
        let mut t = Table::new(&["KEY ID", "ALIASES", "KEY MATERIAL ID", "EXPIRES"]);
        for m in &status.expiring_key_material {
            let key_aliases = status.keys.iter().find(|k| k.key_id == m.key_id).map(|k| aliases(&k.aliases));
            t.row(vec![
                m.key_id.clone(),
                key_aliases.unwrap_or_else(|| "-".into()),
                m.key_material_id[..16].to_string(),
                format!("in {} ({})", countdown(m.seconds_remaining), m.valid_to),
            ]);
        }
        out.push_str(&t.render());
    }

    out.push('\n');
    if mounts.is_empty() {
        out.push_str("Mounted volumes: none\n");
    } else {
        out.push_str("Mounted volumes\n");
        let mut t = Table::new(&["MOUNT POINT", "CIPHER DIR", "VOLUME", "DEFAULT KEY", "KEY USABLE"]);
        for m in mounts {
            let key = match (&m.default_key_id, m.key_aliases.first()) {
                (Some(id), Some(alias)) => format!("{alias} ({id})"),
                (Some(id), None) => id.clone(),
                (None, _) => "-".into(),
            };
            let usable = match (&m.problem, m.key_usable) {
                (_, true) => "yes".to_string(),
                (Some(why), false) => format!("no: {why}"),
                (None, false) => "no".into(),
            };
            t.row(vec![
                m.mount_point.display().to_string(),
                m.cipher_dir.display().to_string(),
                or_dash(m.volume_name.clone()),
                key,
                usable,
            ]);
        }
        out.push_str(&t.render());
        let remote: Vec<_> = mounts.iter().flat_map(|m| m.remote_keys.iter().map(move |r| (m, r))).collect();
        if !remote.is_empty() {
            out.push_str("\nRemote keys of mounted volumes (as each mount saw them at its last check)\n");
            let mut t = Table::new(&["MOUNT POINT", "KEY", "ENDPOINT", "STATE", "USABLE"]);
            for (m, r) in remote {
                let usable = match (&r.problem, r.usable, r.in_use) {
                    (_, true, _) => "yes".to_string(),
                    (Some(why), false, _) => format!("no: {why}"),
                    (None, false, false) => "not used yet".into(),
                    (None, false, true) => "no".into(),
                };
                t.row(vec![
                    m.mount_point.display().to_string(),
                    r.key_arn.clone(),
                    r.endpoint.clone(),
                    r.key_state.as_str().into(),
                    usable,
                ]);
            }
            out.push_str(&t.render());
        }
    }
    out
}

fn aliases(list: &[String]) -> String {
    or_dash((!list.is_empty()).then(|| list.join(",")))
}

/// Time left for people: "6 days 23 hours", "5 hours 12 minutes", "40 minutes". Rounded
/// down, so it never promises more time than there is.
fn countdown(secs: i64) -> String {
    fn unit(n: i64, name: &str) -> String {
        format!("{n} {name}{}", if n == 1 { "" } else { "s" })
    }
    let (days, hours, minutes) = (secs / DAY_SECS, secs % DAY_SECS / 3600, secs % 3600 / 60);
    match (days, hours, minutes) {
        _ if secs < 60 => "less than a minute".into(),
        (0, 0, m) => unit(m, "minute"),
        (0, h, 0) => unit(h, "hour"),
        (0, h, m) => format!("{} {}", unit(h, "hour"), unit(m, "minute")),
        (d, 0, _) => unit(d, "day"),
        (d, h, _) => format!("{} {}", unit(d, "day"), unit(h, "hour")),
    }
}

#[cfg(test)]
mod tests {
    use super::countdown;

    #[test]
    fn countdowns_round_down() {
        assert_eq!(countdown(7 * 86_400 - 1), "6 days 23 hours");
        assert_eq!(countdown(7 * 86_400), "7 days");
        assert_eq!(countdown(86_400 + 3_600), "1 day 1 hour");
        assert_eq!(countdown(2 * 3_600 + 59), "2 hours");
        assert_eq!(countdown(3_600 + 120), "1 hour 2 minutes");
        assert_eq!(countdown(61), "1 minute");
        assert_eq!(countdown(59), "less than a minute");
        assert_eq!(countdown(0), "less than a minute");
    }
}
