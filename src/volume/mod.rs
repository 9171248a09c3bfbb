//! A cipher directory: its configuration file and the encryption contexts it binds keys to.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

pub mod copy;
pub mod copy_as_is;
pub mod dirmeta;
pub mod file_keys;
pub mod fsck;
pub mod link_targets;
pub mod lock;
pub mod remote_keys;
pub mod rewrap;
pub mod xattr_store;

use crate::crypto;
use crate::crypto::SecretKey;
use crate::encoding::hex;
use crate::error::{Error, Result};
use crate::kms::blob::BlobHeader;
use crate::kms::keyring::{Access, KeyRing};
use crate::kms::EncryptionContext;

/// The configuration file at the top of every cipher directory.
pub const CONFIG_NAME: &str = "kmsfs.volume";
pub const VOLUME_FORMAT_VERSION: u32 = 1;

/// Contents of `kmsfs.volume` (JSON). Nothing in it is secret: the names key is wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    /// Always "kmsfs-volume", so a stray JSON file is not mistaken for a volume.
    pub format: String,
    pub version: u32,
    pub volume_id: String,
    pub name: String,
    /// Key id of the master key new files are created under.
    pub default_key_id: String,
    pub block_size: u32,
    /// The keystore this volume's keys live in.
    pub keystore_id: String,
    pub created: String,
    /// Key for names and symlink targets, wrapped by the default key (base64 KMS blob).
    pub names_key: String,
}

impl VolumeConfig {
    pub fn path(cipher_dir: &Path) -> PathBuf {
        cipher_dir.join(CONFIG_NAME)
    }

    /// Reads and checks a cipher directory's configuration.
    pub fn load(cipher_dir: &Path) -> Result<VolumeConfig> {
        let path = Self::path(cipher_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(crate::error::NotFound::Volume { dir: cipher_dir.to_path_buf() }))
            }
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        Self::parse(&text, &path)
    }

    /// Parses and checks the text of a `kmsfs.volume` file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<VolumeConfig> {
        let bad = |why: String| Error::InvalidArgument(format!("{} is damaged: {why}", path.display()));
        let config: VolumeConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if config.format != "kmsfs-volume" {
            return Err(bad(format!("format is '{}', not 'kmsfs-volume'", config.format)));
        }
        if config.version != VOLUME_FORMAT_VERSION {
            return Err(bad(format!(
                "volume format version {} is not supported by this kmsfs (it reads {VOLUME_FORMAT_VERSION})",
                config.version
            )));
        }
        if config.block_size as u64 != crate::content::BLOCK_SIZE {
            return Err(bad(format!("block size {} is not supported", config.block_size)));
        }
        Ok(config)
    }

    /// Writes the configuration atomically (temp file, fsync, rename, fsync of the dir).
    pub fn save(&self, cipher_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("config serializes");
        write_atomically(&Self::path(cipher_dir), text.as_bytes(), 0o644)
    }

    /// Refuses a keystore other than the one this volume's keys live in (`keystore_id` is
    /// that of the keystore at `keystore`).
    pub fn require_keystore(&self, cipher_dir: &Path, keystore: &Path, keystore_id: &str) -> Result<()> {
        if keystore_id == self.keystore_id {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "volume {} belongs to keystore {}, but {} is keystore {keystore_id}; pass the right --keystore",
            cipher_dir.display(),
            self.keystore_id,
            keystore.display()
        )))
    }

    /// The encryption context a file's data key is bound to: this volume and this file.
    pub fn file_context(&self, file_id: &[u8]) -> EncryptionContext {
        EncryptionContext::new().with("kmsfs:volume", &self.volume_id).with("kmsfs:file", &hex(file_id))
    }

    /// The encryption context of the volume's names key.
    pub fn names_context(&self) -> EncryptionContext {
        EncryptionContext::new().with("kmsfs:volume", &self.volume_id).with("kmsfs:purpose", "names")
    }

    /// The wrapped names key (a KMS blob), decoded from the config's base64.
    pub fn names_key_blob(&self) -> Result<Vec<u8>> {
        B64.decode(&self.names_key)
            .map_err(|_| Error::InvalidCiphertext("the volume names key is malformed".into()))
    }

    pub fn set_names_key_blob(&mut self, blob: &[u8]) {
        self.names_key = B64.encode(blob);
    }

    /// The volume's names key (symlink targets, xattrs), unwrapped through the key ring like
    /// every other key: an audited Decrypt that the key's state and policy may refuse.
    /// Returns which master key and version wrap it too.
    pub fn unwrap_names_key(&self, ring: &KeyRing, access: Access<'_>) -> Result<(SecretKey, BlobHeader)> {
        ring.decrypt_data_key(access, &self.names_key_blob()?, &self.names_context())
    }
}

/// A fresh random volume id (hex).
pub fn new_volume_id() -> String {
    hex(&crypto::random_bytes::<16>())
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new contents, never a
/// mix: write a temporary file, fsync it, rename it over, fsync the directory.
///
/// The temporary name is unique per call and unpredictable (process id, a counter and random
/// bytes), and the temporary file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`: a file or
/// symlink someone planted under that name makes the write fail and is left alone, instead of
/// being truncated or followed (a root daemon would otherwise write through it).
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    // Unique per call: threads of one mount may write the same file at once.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let random = hex(&crypto::random_bytes::<6>());
    let tmp = dir.join(format!(".{name}.tmp-{}-{unique}-{random}", std::process::id()));
    write_via_temp(path, &tmp, bytes, mode)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// [`write_atomically`] through the temporary file `tmp`, which must not exist yet. Removes
/// `tmp` on failure only if this call created it.
fn write_via_temp(path: &Path, tmp: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = crate::sys::create_exclusive(tmp, mode)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all()).and_then(|()| std::fs::rename(tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// A managed-key alias name derived from a directory name: alias characters only.
pub fn alias_safe_name(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "volume".into()
    } else {
        trimmed.chars().take(64).collect()
    }
}

/// Creates a volume in `cipher_dir` (created if missing, else it must be empty). Files are
/// encrypted under `key_ref`, or under a new managed key `alias/kmsfs/<name>`. A remote
/// key (an ARN) is reached at `endpoint` (default: AWS KMS in the ARN's region) and gets
/// the volume's first intermediate key (`kms::remote`).
pub fn init_volume(
    kms: &mut crate::kms::Kms,
    caller: &crate::kms::Principal,
    cipher_dir: &Path,
    key_ref: Option<&str>,
    name: Option<&str>,
    endpoint: Option<&str>,
) -> Result<VolumeConfig> {
    let remote = key_ref.is_some_and(crate::kms::remote::is_remote_key);
    if endpoint.is_some() && !remote {
        return Err(Error::InvalidArgument(
            "--kms-endpoint needs --key naming a remote key (an ARN such as arn:aws:kms:REGION:ACCOUNT:key/ID)"
                .into(),
        ));
    }
    if let Some(url) = endpoint {
        crate::kms::remote::http::Endpoint::parse(url)?;
    }
    match std::fs::read_dir(cipher_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::InvalidArgument(format!(
                    "{} is not empty; a volume starts in an empty directory",
                    cipher_dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(cipher_dir)
            .map_err(|e| Error::io(format!("cannot create {}", cipher_dir.display()), e))?,
        Err(e) => return Err(Error::io(format!("cannot read {}", cipher_dir.display()), e)),
    }
    let cipher_dir = std::fs::canonicalize(cipher_dir)
        .map_err(|e| Error::io(format!("cannot resolve {}", cipher_dir.display()), e))?;
    let name = alias_safe_name(
        name.unwrap_or_else(|| cipher_dir.file_name().and_then(|n| n.to_str()).unwrap_or("volume")),
    );
    let mut config = VolumeConfig {
        format: "kmsfs-volume".into(),
        version: VOLUME_FORMAT_VERSION,
        volume_id: new_volume_id(),
        name,
        default_key_id: String::new(),
        block_size: crate::content::BLOCK_SIZE as u32,
        keystore_id: kms.keystore().keystore_id()?,
        created: crate::kms::clock::format_date(kms.now_secs()),
        names_key: String::new(),
    };
    let iv = crate::crypto::random_bytes::<{ crate::content::names::IV_LEN }>();
    let root_ctx = dirmeta::DirMeta::context(&config.volume_id, &hex(&iv));
    let (names_blob, root_names) = if remote {
        let key_ref = key_ref.expect("remote implies a key");
        let keys = remote_keys::open(&cipher_dir, &config, Default::default())?;
        let made = keys.create(key_ref, endpoint, &config.created);
        let id = made.inspect_err(|_| {
            // Nothing of the volume is kept when the service refuses or cannot be reached.
            let _ = std::fs::remove_file(cipher_dir.join(remote_keys::TABLE_NAME));
            let _ = std::fs::remove_file(cipher_dir.join(remote_keys::TABLE_BACKUP));
        })?;
        let cipher = keys.cipher(&id)?;
        let header = BlobHeader { key_id: id.clone(), key_version: 1 };
        let seal_new = |ctx: &EncryptionContext| {
            crate::kms::blob::seal(&cipher, &header, &ctx.encode(), SecretKey::random().as_bytes())
        };
        config.default_key_id = id;
        (seal_new(&config.names_context()), seal_new(&root_ctx))
    } else {
        config.default_key_id = match key_ref {
            Some(k) => kms.describe_key(caller, k)?.key_id,
            None => kms.create_managed_key(
                caller,
                &config.name,
                &format!("kmsfs volume {}", cipher_dir.display()),
            )?,
        };
        let key = config.default_key_id.clone();
        let (_, _, names) = kms.generate_data_key_without_plaintext(caller, &key, &config.names_context())?;
        let (_, _, root) = kms.generate_data_key_without_plaintext(caller, &key, &root_ctx)?;
        (names, root)
    };
    config.set_names_key_blob(&names_blob);
    // The root directory's own metadata: its names key, under the default key.
    dirmeta::DirMeta::new(&config.default_key_id, true, &iv, &root_names).save(&cipher_dir)?;
    config.save(&cipher_dir)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_neither_followed_nor_removed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"not yours").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let target = dir.path().join("kmsfs.dir");
        std::fs::write(&target, b"old").unwrap();
        for (tmp_name, points_to) in
            [(".kmsfs.dir.tmp-planted", victim.clone()), (".kmsfs.dir.tmp-dangling", dir.path().join("new"))]
        {
            let tmp = dir.path().join(tmp_name);
            std::os::unix::fs::symlink(&points_to, &tmp).unwrap();
            let err = write_via_temp(&target, &tmp, b"written through", 0o644).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{tmp_name}: {err}");
            assert_eq!(std::fs::read_link(&tmp).unwrap(), points_to, "the planted link is left alone");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"not yours", "the link's target is not written");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("new").exists(), "nothing is created through a dangling link");
        assert_eq!(std::fs::read(&target).unwrap(), b"old", "the file to replace is unchanged");

        // A plain file planted there is not truncated either.
        let tmp = dir.path().join(".kmsfs.dir.tmp-file");
        std::fs::write(&tmp, b"planted").unwrap();
        assert!(write_via_temp(&target, &tmp, b"x", 0o644).is_err());
        assert_eq!(std::fs::read(&tmp).unwrap(), b"planted");
    }

    #[test]
    fn write_atomically_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("kmsfs.volume");
        write_atomically(&target, b"one", 0o644).unwrap();
        write_atomically(&target, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kmsfs.volume")]);
    }
}
