//! SQLite persistence: the keystore file, its schema and migrations, and the root key.
//!
//! Key hierarchy (see docs/architecture/keys.md):
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
    pub account_id: String,
    pub region: String,
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
        set_meta(&tx, ACCOUNT_META, default_account_id(keystore_id.as_bytes()).as_bytes())?;
        set_meta(&tx, REGION_META, DEFAULT_REGION.as_bytes())?;
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
        // A migration may rebuild a table others reference (SQLite cannot alter a CHECK): with
        // foreign keys enforced, dropping the old table would fail. They are off while the
        // migrations run (the pragma is a no-op inside a transaction, so it is set before) and
        // every reference is checked before the commit.
        self.conn.pragma_update(None, "foreign_keys", false)?;
        let migrated = self.run_migrations(from);
        self.conn.pragma_update(None, "foreign_keys", true)?;
        migrated
    }

    fn run_migrations(&mut self, from: i64) -> Result<()> {
        let path = self.path.clone();
        let tx = self.write_tx()?;
        for sql in &schema::MIGRATIONS[from as usize..] {
            tx.execute_batch(sql)?;
        }
        let dangling: i64 =
            tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
        if dangling > 0 {
            return Err(Error::CorruptKeystore {
                path,
                reason: format!("{dangling} rows reference keys that do not exist; nothing was migrated"),
            });
        }
        // A keystore from before the API server gets an account id and region (changed later
        // with `kmsfs keystore set-identity`); a new one gets them at `keystore init`.
        if let Some(id) = get_meta(&tx, "keystore_id")? {
            if get_meta(&tx, ACCOUNT_META)?.is_none() {
                set_meta(&tx, ACCOUNT_META, default_account_id(&id).as_bytes())?;
            }
            if get_meta(&tx, REGION_META)?.is_none() {
                set_meta(&tx, REGION_META, DEFAULT_REGION.as_bytes())?;
            }
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

    /// The AWS account id this keystore answers as (12 digits).
    pub fn account_id(&self) -> Result<String> {
        let raw = self.required_meta(ACCOUNT_META)?;
        String::from_utf8(raw).map_err(|_| self.corrupt("its account id is not text".into()))
    }

    /// The AWS region this keystore answers as.
    pub fn region(&self) -> Result<String> {
        let raw = self.required_meta(REGION_META)?;
        String::from_utf8(raw).map_err(|_| self.corrupt("its region is not text".into()))
    }

    /// Sets the account id and region (`keystore init`, `keystore set-identity`).
    pub fn set_identity(&mut self, account_id: Option<&str>, region: Option<&str>) -> Result<()> {
        if let Some(a) = account_id {
            validate_account_id(a)?;
        }
        if let Some(r) = region {
            validate_region(r)?;
        }
        let tx = self.write_tx()?;
        if let Some(a) = account_id {
            set_meta(&tx, ACCOUNT_META, a.as_bytes())?;
        }
        if let Some(r) = region {
            set_meta(&tx, REGION_META, r.as_bytes())?;
        }
        tx.commit()?;
        Ok(())
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
            account_id: self.account_id()?,
            region: self.region()?,
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

    /// Commits on this connection wait for the write-ahead log's write, not its fsync
    /// (`synchronous = NORMAL`): a commit survives the process, and is lost only with the
    /// machine before the next checkpoint. For the API server's audit writer, whose callers
    /// each wait for their event's commit.
    /// It also leaves checkpoints (which fsync) to `checkpoint_passive` on another
    /// connection, so no commit waits behind one.
    pub fn commit_without_fsync(&self) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies what the write-ahead log holds into the database without waiting for (or
    /// blocking) writers.
    pub fn checkpoint_passive(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
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

const ACCOUNT_META: &str = "account_id";
const REGION_META: &str = "region";
/// The region a keystore answers as unless told otherwise: the one SDKs default to.
pub const DEFAULT_REGION: &str = "us-east-1";

/// An account id of 12 digits derived from the keystore id, so two keystores differ
/// without anyone choosing (and an ARN names one keystore).
fn default_account_id(keystore_id: &[u8]) -> String {
    let digest = crypto::sha256(&[b"kmsfs-account-id\0", keystore_id]);
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 1_000_000_000_000;
    format!("{n:012}")
}

pub fn validate_account_id(id: &str) -> Result<()> {
    if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("account id '{id}' must be 12 digits, as in AWS")))
    }
}

pub fn validate_region(region: &str) -> Result<()> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "region '{region}' must be lower-case letters, digits and '-', such as us-east-1"
        )))
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

const GENERATION_META: &str = "generation";

/// Marks a change of keys, versions, aliases, policies, grants or access keys (every KMS
/// operation that writes one), so key rings reload on it and not on audit appends alone.
pub fn bump_generation(tx: &Transaction<'_>) -> Result<()> {
    let next = generation(tx)? + 1;
    set_meta(tx, GENERATION_META, next.to_string().as_bytes())
}

/// The counter `bump_generation` advances (0 before the first change).
pub fn generation(conn: &Connection) -> Result<u64> {
    Ok(get_meta(conn, GENERATION_META)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
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
