//! The volume's key table `kmsfs.keys` (and its copy `kmsfs.keys.bak`): the intermediate
//! keys under remote master keys (`kms::remote`), as the key service encrypted them.
//! Losing the table loses every file under a remote key, so it is written atomically, twice,
//! and read from the copy when the primary does not parse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{write_atomically, VolumeConfig};
use crate::error::{Error, Result};
use crate::kms::keyring::KeyRing;
use crate::kms::remote::{IntermediateRecord, RemoteKeys, RemoteSettings};

pub const TABLE_NAME: &str = "kmsfs.keys";
pub const TABLE_BACKUP: &str = "kmsfs.keys.bak";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Table {
    format: String,
    version: u32,
    keys: Vec<IntermediateRecord>,
}

/// The table's records; none when the volume has no remote key.
pub fn load(cipher_dir: &Path) -> Result<Vec<IntermediateRecord>> {
    let mut first_error = None;
    for name in [TABLE_NAME, TABLE_BACKUP] {
        let path = cipher_dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                first_error.get_or_insert(Error::io(format!("cannot read {}", path.display()), e));
                continue;
            }
        };
        match serde_json::from_str::<Table>(&text) {
            Ok(t) if t.format == "kmsfs-keys" && t.version == 1 => return Ok(t.keys),
            Ok(_) => {
                first_error.get_or_insert(Error::InvalidArgument(format!(
                    "{} is not a kmsfs key table this version reads",
                    path.display()
                )));
            }
            Err(e) => {
                first_error
                    .get_or_insert(Error::InvalidArgument(format!("{} is damaged: {e}", path.display())));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(Vec::new()),
    }
}

fn save(cipher_dir: &Path, keys: &[IntermediateRecord]) -> Result<()> {
    let table = Table { format: "kmsfs-keys".into(), version: 1, keys: keys.to_vec() };
    let text = serde_json::to_string_pretty(&table).expect("key table serializes");
    // Primary first: a reader falls back to the copy only when the primary is damaged, and
    // a crash between the two leaves the copy one entry behind, never ahead of the primary.
    write_atomically(&cipher_dir.join(TABLE_NAME), text.as_bytes(), 0o644)?;
    write_atomically(&cipher_dir.join(TABLE_BACKUP), text.as_bytes(), 0o644)
}

/// The pairs of every intermediate key's encryption context: which volume it serves.
pub fn volume_context(config: &VolumeConfig) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kmsfs:volume".to_string(), config.volume_id.clone()),
        ("kmsfs:volume-name".to_string(), config.name.clone()),
    ])
}

/// The remote keys of the volume in `cipher_dir`, saving their table there.
pub fn open(cipher_dir: &Path, config: &VolumeConfig, settings: RemoteSettings) -> Result<RemoteKeys> {
    let records = load(cipher_dir)?;
    let dir: PathBuf = cipher_dir.to_path_buf();
    Ok(RemoteKeys::new(records, volume_context(config), settings, Box::new(move |keys| save(&dir, keys))))
}

/// Puts the volume's remote keys behind `ring` (also for a volume with none yet, so that a
/// directory can be given a remote key).
pub fn attach(
    ring: &KeyRing,
    cipher_dir: &Path,
    config: &VolumeConfig,
    settings: RemoteSettings,
) -> Result<()> {
    ring.attach_remote(open(cipher_dir, config, settings)?);
    Ok(())
}
