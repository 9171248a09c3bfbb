//! The keystore's SQL schema, as an ordered list of migrations.
//!
//! `PRAGMA user_version` holds the number of migrations applied. A keystore is migrated
//! forward inside one transaction when it is opened; a keystore newer than this binary is
//! refused rather than guessed at.

/// `PRAGMA application_id` of every kmsfs keystore ("KMSF"), so a stray SQLite file is
/// recognised as "not a kmsfs keystore" instead of half-used.
pub const APPLICATION_ID: i32 = 0x4B4D_5346;

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: keys, their versions, aliases, the audit trail, and keystore-wide settings.
    r#"
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE keys (
        key_id               TEXT PRIMARY KEY,
        created              INTEGER NOT NULL,          -- unix seconds
        description          TEXT NOT NULL DEFAULT '',
        key_manager          TEXT NOT NULL CHECK (key_manager IN ('CUSTOMER', 'MANAGED')),
        origin               TEXT NOT NULL,
        state                TEXT NOT NULL CHECK (state IN
                                 ('Enabled', 'Disabled', 'PendingDeletion', 'Destroyed')),
        deletion_date        INTEGER,                   -- set while PendingDeletion / once Destroyed
        pending_window_days  INTEGER,
        rotation_enabled     INTEGER NOT NULL DEFAULT 0,
        rotation_period_days INTEGER,
        next_rotation        INTEGER,
        current_version      INTEGER NOT NULL
    );
    CREATE TABLE key_versions (
        key_id        TEXT NOT NULL REFERENCES keys(key_id),
        version       INTEGER NOT NULL,
        created       INTEGER NOT NULL,
        rotation_type TEXT NOT NULL,                    -- INITIAL, AUTOMATIC, ON_DEMAND
        material      BLOB,                             -- sealed by the root key; NULL once destroyed
        PRIMARY KEY (key_id, version)
    );
    CREATE TABLE aliases (
        alias_name TEXT PRIMARY KEY,
        key_id     TEXT NOT NULL REFERENCES keys(key_id),
        created    INTEGER NOT NULL,
        updated    INTEGER NOT NULL
    );
    CREATE INDEX aliases_by_key ON aliases(key_id);
    CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY,                  -- 1, 2, 3, ... without gaps
        time_ms   INTEGER NOT NULL,
        uid       INTEGER NOT NULL,
        user      TEXT NOT NULL,
        pid       INTEGER,
        operation TEXT NOT NULL,
        key_id    TEXT,
        outcome   TEXT NOT NULL,
        reason    TEXT NOT NULL DEFAULT '',
        context   TEXT NOT NULL DEFAULT '',
        path      TEXT,
        mac       BLOB NOT NULL                         -- HMAC chain, see kms::audit
    );
    CREATE INDEX audit_by_key ON audit(key_id, seq);
    "#,
    // 2: key policies and grants.
    r#"
    ALTER TABLE keys ADD COLUMN policy TEXT;           -- JSON; NULL: the keystore owner's default
    CREATE TABLE grants (
        grant_id    TEXT PRIMARY KEY,
        key_id      TEXT NOT NULL REFERENCES keys(key_id),
        name        TEXT NOT NULL DEFAULT '',
        grantee     TEXT NOT NULL,                     -- user:NAME, group:NAME or uid:N
        operations  TEXT NOT NULL,                     -- comma-separated: Decrypt,GenerateDataKey
        constraints TEXT NOT NULL DEFAULT '{}',        -- JSON object: context key -> glob
        created     INTEGER NOT NULL,
        expires     INTEGER,                           -- unix seconds; NULL: never
        token       TEXT NOT NULL
    );
    CREATE INDEX grants_by_key ON grants(key_id);
    "#,
    // 3: the API server: access keys, who called from where in the audit trail, tags, and
    // the AWS parts of grants. The account id and region are set by `Keystore::migrate`.
    r#"
    CREATE TABLE access_keys (
        access_key_id  TEXT PRIMARY KEY,
        user_name      TEXT NOT NULL,
        uid            INTEGER,                        -- the Unix uid it also acts as; NULL: none
        secret_wrapped BLOB NOT NULL,                  -- sealed by the root key
        status         TEXT NOT NULL CHECK (status IN ('Active', 'Inactive')),
        created        INTEGER NOT NULL
    );
    ALTER TABLE audit ADD COLUMN principal_arn TEXT;
    ALTER TABLE audit ADD COLUMN access_key_id TEXT;
    ALTER TABLE audit ADD COLUMN source TEXT;
    ALTER TABLE audit ADD COLUMN error_code TEXT;
    CREATE TABLE tags (
        key_id    TEXT NOT NULL REFERENCES keys(key_id),
        tag_key   TEXT NOT NULL,
        tag_value TEXT NOT NULL,
        PRIMARY KEY (key_id, tag_key)
    );
    ALTER TABLE grants ADD COLUMN retiring_principal TEXT;  -- an IAM ARN that may retire it
    ALTER TABLE grants ADD COLUMN context_equals INTEGER NOT NULL DEFAULT 0;  -- constraints: exact context
    "#,
    // 4: asymmetric and HMAC keys. A key without a row is SYMMETRIC_DEFAULT / ENCRYPT_DECRYPT.
    r#"
    CREATE TABLE key_specs (
        key_id    TEXT PRIMARY KEY REFERENCES keys(key_id),
        key_spec  TEXT NOT NULL,                       -- AWS KeySpec: RSA_2048, ECC_NIST_P256, HMAC_256, ...
        key_usage TEXT NOT NULL                        -- AWS KeyUsage: SIGN_VERIFY, ENCRYPT_DECRYPT, ...
    );
    "#,
    // 5: imported key material (Origin EXTERNAL). The keys table is rebuilt because its
    // state CHECK is part of the table: it now admits every AWS KeyState (PendingImport, and
    // the multi-Region ones) besides kmsfs's Destroyed. Run with foreign keys off
    // (`Keystore::migrate`), as SQLite's table-rebuild procedure requires.
    r#"
    CREATE TABLE keys_rebuilt (
        key_id               TEXT PRIMARY KEY,
        created              INTEGER NOT NULL,
        description          TEXT NOT NULL DEFAULT '',
        key_manager          TEXT NOT NULL CHECK (key_manager IN ('CUSTOMER', 'MANAGED')),
        origin               TEXT NOT NULL,
        state                TEXT NOT NULL CHECK (state IN
                                 ('Creating', 'Enabled', 'Disabled', 'PendingDeletion', 'PendingImport',
                                  'PendingReplicaDeletion', 'Unavailable', 'Updating', 'Destroyed')),
        deletion_date        INTEGER,
        pending_window_days  INTEGER,
        rotation_enabled     INTEGER NOT NULL DEFAULT 0,
        rotation_period_days INTEGER,
        next_rotation        INTEGER,
        current_version      INTEGER NOT NULL,
        policy               TEXT
    );
    INSERT INTO keys_rebuilt (key_id, created, description, key_manager, origin, state, deletion_date,
                              pending_window_days, rotation_enabled, rotation_period_days, next_rotation,
                              current_version, policy)
        SELECT key_id, created, description, key_manager, origin, state, deletion_date,
               pending_window_days, rotation_enabled, rotation_period_days, next_rotation,
               current_version, policy FROM keys;
    DROP TABLE keys;
    ALTER TABLE keys_rebuilt RENAME TO keys;
    -- One row per imported version of a key (its key_versions row holds the sealed material,
    -- NULL while deleted or expired; this row stays so the same material can come back).
    CREATE TABLE imported_material (
        key_id           TEXT NOT NULL REFERENCES keys(key_id),
        version          INTEGER NOT NULL,
        material_id      TEXT NOT NULL,                -- AWS KeyMaterialId: 64 hex digits
        expiration_model TEXT NOT NULL CHECK (expiration_model IN
                             ('KEY_MATERIAL_EXPIRES', 'KEY_MATERIAL_DOES_NOT_EXPIRE')),
        valid_to         INTEGER,                      -- unix seconds; NULL: does not expire
        description      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (key_id, version),
        UNIQUE (key_id, material_id)
    );
    CREATE INDEX imported_material_by_expiry ON imported_material(valid_to) WHERE valid_to IS NOT NULL;
    -- The RSA wrapping keys GetParametersForImport hands out, until their token expires.
    CREATE TABLE import_wrapping_keys (
        token_id       TEXT PRIMARY KEY,               -- 32 hex digits, inside the sealed token
        key_id         TEXT NOT NULL REFERENCES keys(key_id),
        algorithm      TEXT NOT NULL,                  -- AWS WrappingAlgorithm
        wrapping_spec  TEXT NOT NULL,                  -- AWS WrappingKeySpec
        created        INTEGER NOT NULL,
        expires        INTEGER NOT NULL,
        private_sealed BLOB NOT NULL                   -- PKCS#8, sealed by the import key
    );
    "#,
    // Multi-Region keys (docs/MULTI_REGION.md): every keystore holding a primary or replica
    // keeps the whole configuration; a single-Region key has no row.
    r#"
    CREATE TABLE multi_region (
        key_id         TEXT PRIMARY KEY REFERENCES keys(key_id),
        primary_region TEXT NOT NULL,
        regions        TEXT NOT NULL,                  -- JSON list of every region, the primary's included
        epoch          INTEGER NOT NULL                -- raised by each change of the regions; sync keeps the higher
    );
    "#,
];

/// The schema version this binary writes.
pub fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}
