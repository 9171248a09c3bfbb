//! SQLite persistence: the keystore file, its schema and migrations, and the root key.
//!
//! Key hierarchy (see docs/ARCHITECTURE.md):
//! passphrase --argon2id--> passphrase key --wraps--> root key --wraps--> every master-key
//! version. The random root key is what protects the keys; the passphrase only unlocks it,
//! so changing the passphrase rewrites one row and the audit chain (keyed from the root key)
//! stays verifiable across passphrase changes.

pub mod placement;
pub mod records;
pub mod schema;

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

use crate::crypto::{self, KdfParams, SecretKey};
use crate::encoding::hex;
use crate::error::{Error, Result};

/// How long a command waits for another process (a mount, another command) holding the
/// write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the log truncation that erases destroyed material waits for readers on older
/// snapshots before it is left to the next keystore open.
const ERASE_WAIT: Duration = Duration::from_secs(2);

/// Meta row naming how the keys below the root key are derived (`kms::root_keys`); absent in
/// keystores made before per-purpose keys.
pub const KEY_DERIVATION: &str = "key_derivation";
pub const KEY_DERIVATION_HKDF: &str = "hkdf-sha256-1";

/// Meta row present while destroyed material may have old page images in the log.
const ERASE_PENDING: &str = "erase_pending";

/// An open keystore file. Holds no key material itself: [`Keystore::unlock`] returns the
/// root key to the caller.
pub struct Keystore {
    conn: Connection,
    path: PathBuf,
}

/// What `kmsfs keystore info` shows; nothing secret.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeystoreInfo {
    pub path: PathBuf,
    pub keystore_id: String,
    pub schema_version: i64,
    pub created: i64,
    pub kdf: KdfParams,
    pub key_count: i64,
    pub alias_count: i64,
    pub audit_events: i64,
}

/// Where the keystore lives when neither `--keystore` nor `KMSFS_KEYSTORE` says:
/// `$XDG_DATA_HOME/kmsfs/keystore.db`, else `~/.local/share/kmsfs/keystore.db`.
pub fn default_path() -> PathBuf {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data_home.join("kmsfs").join("keystore.db")
}

impl Keystore {
    /// Creates a new keystore file (mode 0600) protected by `passphrase`; refuses to touch an
    /// existing file. Returns the keystore and its freshly generated root key.
    pub fn create(path: &Path, passphrase: &[u8], kdf: KdfParams) -> Result<(Keystore, SecretKey)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        placement::check_directories(path)?;
        // Create the file ourselves so it is 0600 from its first byte; SQLite gives its
        // -wal and -shm files the same mode.
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
            if e.kind() == ErrorKind::AlreadyExists {
                already_exists(path)
            } else {
                Error::io(format!("cannot create {}", path.display()), e)
            }
        })?;
        let result = Self::initialize(path, passphrase, kdf);
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    fn initialize(path: &Path, passphrase: &[u8], kdf: KdfParams) -> Result<(Keystore, SecretKey)> {
        let mut ks = Self::connect(path)?;
        ks.migrate()?;
        let root = SecretKey::random();
        let keystore_id = hex(&crypto::random_bytes::<16>());
        let tx = ks.write_tx()?;
        tx.pragma_update(None, "application_id", schema::APPLICATION_ID)?;
        set_meta(&tx, "keystore_id", keystore_id.as_bytes())?;
        set_meta(&tx, "created", now_secs().to_string().as_bytes())?;
        store_wrapped_root(&tx, &keystore_id, &root, passphrase, kdf)?;
        set_meta(&tx, KEY_DERIVATION, KEY_DERIVATION_HKDF.as_bytes())?;
        tx.commit()?;
        Ok((ks, root))
    }

    /// Opens an existing keystore, checks that it is one, and migrates its schema forward.
    pub fn open(path: &Path) -> Result<Keystore> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::KeystoreMissing(path.to_path_buf()))
            }
            Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
            Ok(m) if !m.is_file() => {
                return Err(Error::NotAKeystore {
                    path: path.to_path_buf(),
                    reason: "it is not a regular file".into(),
                })
            }
            Ok(m) => placement::check_existing(path, &m)?,
        }
        let mut ks = Self::connect(path)?;
        let not_a_keystore = |reason: String| Error::NotAKeystore { path: path.to_path_buf(), reason };
        let app_id: i32 = ks
            .conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| not_a_keystore(format!("SQLite cannot read it ({e})")))?;
        if app_id != schema::APPLICATION_ID {
            return Err(not_a_keystore("it is an SQLite database of another application".into()));
        }
        // SQLite writes whole pages; reads past the end of a cut file come back as zeros.
        let page_size: u32 = ks.conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let page_size = u64::from(page_size);
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?
            .len();
        if page_size > 0 && len % page_size != 0 {
            return Err(ks.corrupt(format!(
                "its length ({len} bytes) is not a whole number of {page_size}-byte pages: it was cut short"
            )));
        }
        let version = ks.schema_version()?;
        if version < 0 {
            return Err(ks.corrupt(format!("its schema version {version} is not a valid version")));
        }
        if version > schema::current_version() {
            return Err(Error::CorruptKeystore {
                path: path.to_path_buf(),
                reason: format!(
                    "its schema version {version} is newer than this kmsfs supports ({}); upgrade kmsfs",
                    schema::current_version()
                ),
            });
        }
        ks.migrate()?;
        // A keystore without its root key or id cannot be used; say so now, not mid-command.
        for required in ["keystore_id", "kdf_salt", "root_key_wrapped"] {
            if ks.meta(required)?.is_none() {
                return Err(ks.corrupt(format!("its '{required}' setting is missing")));
            }
        }
        Ok(ks)
    }

    /// Opens the SQLite connection with the settings every kmsfs connection uses.
    fn connect(path: &Path) -> Result<Keystore> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let ks = Keystore { conn, path: path.to_path_buf() };
        let setup = |c: &Connection| -> rusqlite::Result<()> {
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.pragma_update(None, "foreign_keys", true)?;
            // Destroyed key material must not linger in free pages of the file.
            c.pragma_update(None, "secure_delete", true)?;
            Ok(())
        };
        setup(&ks.conn).map_err(|e| Error::NotAKeystore {
            path: path.to_path_buf(),
            reason: format!("SQLite cannot use it ({e})"),
        })?;
        Ok(ks)
    }

    fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Applies every migration this keystore has not seen, in one transaction.
    fn migrate(&mut self) -> Result<()> {
        let from = self.schema_version()?;
        if from >= schema::current_version() {
            return Ok(());
        }
        let tx = self.write_tx()?;
        for sql in &schema::MIGRATIONS[from as usize..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", schema::current_version())?;
        tx.commit()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the passphrase and returns the root key. A wrong passphrase writes nothing.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<SecretKey> {
        let keystore_id = self.keystore_id()?;
        let salt = self.required_meta("kdf_salt")?;
        let kdf = self.kdf_params()?;
        let wrapped = self.required_meta("root_key_wrapped")?;
        let passphrase_key = crypto::derive_key(passphrase, &salt, kdf).map_err(|e| self.corrupt(e))?;
        let root = crypto::open(&passphrase_key, &root_aad(&keystore_id), &wrapped)
            .map_err(|_| Error::WrongPassphrase(self.path.clone()))?;
        SecretKey::from_slice(&root).ok_or_else(|| self.corrupt("the root key has the wrong length".into()))
    }

    pub fn keystore_id(&self) -> Result<String> {
        let bytes = self.required_meta("keystore_id")?;
        String::from_utf8(bytes).map_err(|_| self.corrupt("its keystore id is not text".into()))
    }

    pub fn kdf_params(&self) -> Result<KdfParams> {
        let number = |name: &str| -> Result<u32> {
            let raw = self.required_meta(name)?;
            std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.corrupt(format!("its '{name}' setting is not a number")))
        };
        Ok(KdfParams {
            memory_kib: number("kdf_memory_kib")?,
            iterations: number("kdf_iterations")?,
            parallelism: number("kdf_parallelism")?,
        })
    }

    pub fn info(&self) -> Result<KeystoreInfo> {
        let count = |sql: &str| -> Result<i64> { Ok(self.conn.query_row(sql, [], |r| r.get(0))?) };
        let created = self
            .meta("created")?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(KeystoreInfo {
            path: self.path.clone(),
            keystore_id: self.keystore_id()?,
            schema_version: self.schema_version()?,
            created,
            kdf: self.kdf_params()?,
            key_count: count("SELECT count(*) FROM keys")?,
            alias_count: count("SELECT count(*) FROM aliases")?,
            audit_events: count("SELECT count(*) FROM audit")?,
        })
    }

    /// Begins a write transaction, taking the write lock at once (BEGIN IMMEDIATE) so two
    /// writers queue on the busy timeout instead of failing when one upgrades its lock.
    pub fn write_tx(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Read access for queries that need no transaction of their own.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        get_meta(&self.conn, name)
    }

    fn required_meta(&self, name: &str) -> Result<Vec<u8>> {
        self.meta(name)?.ok_or_else(|| self.corrupt(format!("its '{name}' setting is missing")))
    }

    pub fn corrupt(&self, reason: String) -> Error {
        Error::CorruptKeystore { path: self.path.clone(), reason }
    }

    /// Copies every page of the write-ahead log into the file and truncates the log to zero
    /// bytes, so that old page images (destroyed key material) survive in neither. Returns
    /// whether it completed: a reader still on an older snapshot (a mount's query, another
    /// command) stops it, and after [`ERASE_WAIT`] it gives up rather than hold the command.
    pub fn truncate_wal(&self) -> Result<bool> {
        self.conn.busy_timeout(ERASE_WAIT)?;
        let result = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(result? == 0)
    }

    /// Whether destroyed material may still have old page images in the log (a truncation
    /// after a destruction did not complete; see [`Keystore::set_erase_pending`]).
    pub fn erase_pending(&self) -> Result<bool> {
        Ok(self.meta(ERASE_PENDING)?.is_some())
    }

    /// Records (or clears) that a truncation of the log is owed, so every later open retries.
    pub fn set_erase_pending(&mut self, pending: bool) -> Result<()> {
        let tx = self.write_tx()?;
        if pending {
            set_meta(&tx, ERASE_PENDING, b"1")?;
        } else {
            tx.execute("DELETE FROM meta WHERE name = ?1", [ERASE_PENDING])?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The refusal to create a keystore over an existing file.
pub fn already_exists(path: &Path) -> Error {
    Error::AlreadyExists(crate::error::AlreadyExists::Path {
        path: path.to_path_buf(),
        refusing: "refusing to overwrite a keystore".into(),
    })
}

fn root_aad(keystore_id: &str) -> Vec<u8> {
    [b"kmsfs-root-key\0".as_slice(), keystore_id.as_bytes()].concat()
}

/// Protects the root key with `passphrase` (fresh salt, given argon2 costs). Changing the
/// passphrase is this one write: key versions stay wrapped by the same root key.
pub fn store_wrapped_root(
    tx: &Transaction<'_>,
    keystore_id: &str,
    root: &SecretKey,
    passphrase: &[u8],
    kdf: KdfParams,
) -> Result<()> {
    if passphrase.is_empty() {
        return Err(Error::InvalidArgument("the passphrase must not be empty".into()));
    }
    kdf.validate().map_err(Error::InvalidArgument)?;
    let salt = crypto::random_bytes::<16>();
    let passphrase_key = crypto::derive_key(passphrase, &salt, kdf).map_err(Error::InvalidArgument)?;
    let wrapped = crypto::seal(&passphrase_key, &root_aad(keystore_id), root.as_bytes());
    set_meta(tx, "kdf_salt", &salt)?;
    set_meta(tx, "kdf_memory_kib", kdf.memory_kib.to_string().as_bytes())?;
    set_meta(tx, "kdf_iterations", kdf.iterations.to_string().as_bytes())?;
    set_meta(tx, "kdf_parallelism", kdf.parallelism.to_string().as_bytes())?;
    set_meta(tx, "root_key_wrapped", &wrapped)?;
    Ok(())
}

pub fn get_meta(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>> {
    Ok(conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0)).optional()?)
}

pub fn set_meta(conn: &Connection, name: &str, value: &[u8]) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        rusqlite::params![name, value],
    )?;
    Ok(())
}

/// Wall-clock unix seconds, for facts about the keystore itself (not KMS time, which comes
/// from the injectable [`crate::kms::Clock`]).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
