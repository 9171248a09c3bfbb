//! Hostile input without cargo-fuzz: every file of the committed fuzz corpus
//! (`fuzz/corpus/<target>/`), and every truncation and single-bit flip of it, goes through
//! the same parser harness the fuzz targets use (`fuzz/src/lib.rs`). And malformed keystores
//! (truncated, wrong schema version or application id, edited rows, empty, not SQLite):
//! `kmsfs key list` and `kmsfs mount` against each one fail with a clear message, a non-zero
//! exit and no panic, within 10 s.
//!
//! `cargo test --test hostile_input -- --ignored write_seed_corpus` rewrites the seeds.

mod common;
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{is_mounted, MountGuard};
use common::TestEnv;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|e| {
            let path = e.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Runs the harness, naming the input if it panics.
fn check(target: &str, what: &str, data: &[u8]) {
    if std::panic::catch_unwind(|| harness::run(target, data)).is_err() {
        panic!("{target}: {what} made the parser panic (see above); input: {data:?}");
    }
}

#[test]
fn every_committed_corpus_file_goes_through_its_parser() {
    for target in harness::TARGETS {
        let files = corpus(target);
        assert!(files.len() >= 3, "fuzz/corpus/{target} has {} files", files.len());
        for (name, data) in &files {
            check(target, name, data);
        }
    }
}

#[test]
fn truncated_and_bit_flipped_corpus_files_too() {
    let mut inputs = 0;
    for target in harness::TARGETS {
        for (name, data) in corpus(target) {
            for len in 0..data.len() {
                check(target, &format!("{name} cut to {len} bytes"), &data[..len]);
            }
            for i in 0..data.len().min(2048) {
                let mut flipped = data.clone();
                flipped[i] ^= 1 << (i % 8);
                check(target, &format!("{name} with bit {} of byte {i} flipped", i % 8), &flipped);
            }
            inputs += data.len() + data.len().min(2048);
        }
    }
    eprintln!("{inputs} inputs");
}

/// Rewrites the seed corpus. Not a test: run it by hand when a format changes.
#[test]
#[ignore]
fn write_seed_corpus() {
    use base64::Engine;
    use kmsfs::content::FileHeader;
    use kmsfs::kms::blob::{self, BlobHeader};
    use kmsfs::kms::policy::Policy;
    use kmsfs::volume::dirmeta::DirMeta;
    use kmsfs::volume::VolumeConfig;

    let key_id = "11111111-2222-4333-8444-555555555555".to_string();
    let cipher = harness::fixed_key().cipher();
    let context = harness::fixed_context().encode();
    let blob_of = |version: u32, plain: &[u8]| {
        blob::seal(&cipher, &BlobHeader { key_id: key_id.clone(), key_version: version }, &context, plain)
    };
    let data_key = blob_of(1, &[9; 32]);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        fs::create_dir_all(corpus_dir(target)).unwrap();
        fs::write(corpus_dir(target).join(name), bytes).unwrap();
    };

    let mut header = FileHeader::new([5; 16], data_key.clone());
    let mut file = header.encode().to_vec();
    file.extend_from_slice(&[0xAB; 28]);
    write("file_header", "one_slot_and_empty_block", &file);
    header.rewrap(0, blob_of(2, &[9; 32]));
    write("file_header", "two_slots", &header.encode());
    header.clear_slot(0);
    write("file_header", "slot_b_only", &header.encode());
    let mut torn = header.encode();
    torn[FileHeader::slot_offset(1) + 8..][..2].copy_from_slice(&500u16.to_be_bytes());
    write("file_header", "torn_slot", &torn);
    let mut other = header.encode();
    other[6..8].copy_from_slice(&2u16.to_be_bytes());
    write("file_header", "format_version_2", &other);
    write("file_header", "size_i64_max", &i64::MAX.to_be_bytes());

    write("kms_blob", "data_key", &data_key);
    write("kms_blob", "secret_v7", &blob_of(7, b"a small secret, as kmsfs encrypt makes"));
    write("kms_blob", "empty_plaintext", &blob_of(1, b""));
    let mut bad = data_key.clone();
    bad[1] = 9;
    write("kms_blob", "blob_version_9", &bad);

    let blob64 = base64::engine::general_purpose::STANDARD.encode(&data_key);
    let config = VolumeConfig {
        format: "kmsfs-volume".into(),
        version: 1,
        volume_id: "0123456789abcdef0123456789abcdef".into(),
        name: "finance".into(),
        default_key_id: key_id.clone(),
        block_size: 4096,
        keystore_id: "fedcba9876543210fedcba9876543210".into(),
        created: "2026-11-23T16:00:00Z".into(),
        names_key: blob64.clone(),
    };
    write("volume_config", "valid", serde_json::to_string_pretty(&config).unwrap().as_bytes());
    let json = serde_json::to_string(&config).unwrap();
    write("volume_config", "version_2", json.replace("\"version\":1", "\"version\":2").as_bytes());
    write("volume_config", "block_size_512", json.replace("4096", "512").as_bytes());
    write("volume_config", "missing_field", json.replace("\"name\":\"finance\",", "").as_bytes());

    write("key_policy", "owner_default", Policy::default_for_owner(0).as_bytes());
    write("key_policy", "managed_default", Policy::managed_default().as_bytes());
    let conditions = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "admin", "Effect": "Allow", "Principal": {"Uid": [0]}, "Action": "kms:*"},
    {"Sid": "finance", "Effect": "Allow", "Principal": {"Group": ["27"], "User": ["u1000"]},
     "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
     "Condition": {"StringLike": {"kmsfs:Path": "/finance/*"},
                   "StringEquals": {"kms:EncryptionContext:dept": "finance"}}},
    {"Sid": "not-bob", "Effect": "Deny", "Principal": {"User": ["bob"]}, "Action": "kms:*",
     "Condition": {"StringNotLike": {"kmsfs:Path": "/public/*"}}}
  ]
}"#;
    write("key_policy", "conditions", conditions.as_bytes());
    write("key_policy", "single_statement_and_glob", b"{\"Statement\": {\"Effect\": \"Deny\", \"Principal\": \"*\", \"Action\": \"kms:ReEncrypt*\"}}\0*fin?nce*\0/finance/q1");
    write("key_policy", "grantee", b"user:carol");

    let meta = DirMeta::new(&key_id, true, &[7; 16], &data_key);
    write("dir_meta", "valid", serde_json::to_string_pretty(&meta).unwrap().as_bytes());
    let json = serde_json::to_string(&meta).unwrap();
    write("dir_meta", "iv_odd_length", json.replace("\"iv\":\"07", "\"iv\":\"7").as_bytes());
    write("dir_meta", "names_key_not_base64", json.replace(&blob64[..8], "!!!!!!!!").as_bytes());
    write(
        "dir_meta",
        "inherited",
        serde_json::to_string(&DirMeta::new(&key_id, false, &[0xfe; 16], &data_key)).unwrap().as_bytes(),
    );
}

// ---------------------------------------------------------------------------------------
// Malformed keystores.

/// Runs `cmd` for at most 10 s; returns (exit code, stderr). A command still running then
/// is killed (our own child, by pid) and the test fails: a hang is a bug too.
fn run_bounded(mut cmd: Command, what: &str) -> (Option<i32>, String) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A damaged copy of a good keystore, made by `damage` on the file (no WAL beside it).
type Damage = Box<dyn Fn(&Path)>;

fn sql(statements: &'static str) -> Damage {
    Box::new(move |path: &Path| {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(statements).unwrap_or_else(|e| panic!("{statements}: {e}"));
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    })
}

/// Flips the first byte of a BLOB column in the rows matching `filter`.
fn flip_blob(table: &'static str, column: &'static str, filter: &'static str) -> Damage {
    Box::new(move |path: &Path| {
        let conn = rusqlite::Connection::open(path).unwrap();
        let select = format!("SELECT rowid, {column} FROM {table} WHERE {filter}");
        let rows: Vec<(i64, Vec<u8>)> = conn
            .prepare(&select)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!rows.is_empty(), "{select}: no rows");
        for (rowid, mut blob) in rows {
            blob[0] ^= 0x01;
            let update = format!("UPDATE {table} SET {column} = ?1 WHERE rowid = ?2");
            conn.execute(&update, rusqlite::params![blob, rowid]).unwrap();
        }
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    })
}

fn cut_to(len: u64) -> Damage {
    Box::new(move |path: &Path| {
        let f = fs::OpenOptions::new().write(true).open(path).unwrap();
        let full = f.metadata().unwrap().len();
        f.set_len(len.min(full - 1)).unwrap();
    })
}

#[test]
fn malformed_keystores_are_refused_clearly_without_panic_or_hang() {
    // A good keystore with a key and a volume under it, checkpointed into one file.
    let env = TestEnv::new();
    let cipher = env.path("cipher");
    env.init_volume(&cipher);
    {
        let conn = rusqlite::Connection::open(&env.keystore).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    assert!(!env.keystore.with_extension("db-wal").exists());
    let good = fs::read(&env.keystore).unwrap();
    let len = good.len() as u64;
    assert!(len >= 8192, "keystore of {len} bytes");

    // (what, damage, whether `key list` may still succeed: it reads only the keys table, so
    // damage to key material is for the commands that use it, such as mount, to find).
    let mut cases: Vec<(String, Damage, bool)> = vec![
        ("empty file".into(), Box::new(|p: &Path| fs::write(p, b"").unwrap()), false),
        (
            "not SQLite".into(),
            Box::new(|p: &Path| fs::write(p, b"not a database\n".repeat(500)).unwrap()),
            false,
        ),
        (
            "SQLite header, garbage pages".into(),
            Box::new(|p: &Path| {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all_at(&[0x5a; 4096], 4096).unwrap();
                f.write_all_at(&[0x5a; 4096], 2 * 4096).unwrap();
            }),
            false,
        ),
        ("schema version 99 (newer)".into(), sql("PRAGMA user_version = 99;"), false),
        ("schema version 0".into(), sql("PRAGMA user_version = 0;"), false),
        ("schema version 1".into(), sql("PRAGMA user_version = 1;"), false),
        ("schema version -1".into(), sql("PRAGMA user_version = -1;"), false),
        ("another application id".into(), sql("PRAGMA application_id = 1234;"), false),
        ("key material flipped".into(), flip_blob("key_versions", "material", "1"), true),
        ("key material of the wrong type".into(), sql("UPDATE key_versions SET material = 'text';"), true),
        (
            "key state garbage".into(),
            sql("PRAGMA ignore_check_constraints = ON; UPDATE keys SET state = 'Garbage';"),
            false,
        ),
        ("key version row deleted".into(), sql("DELETE FROM key_versions;"), true),
        ("root key wrap flipped".into(), flip_blob("meta", "value", "name = 'root_key_wrapped'"), false),
        ("salt deleted".into(), sql("DELETE FROM meta WHERE name = 'kdf_salt';"), false),
        (
            "kdf cost not a number".into(),
            sql("UPDATE meta SET value = X'6C6F7473' WHERE name = 'kdf_memory_kib';"),
            false,
        ),
        (
            // 4,000,000 argon2 passes would take days: refused, not waited for.
            "kdf iterations absurdly high".into(),
            sql("UPDATE meta SET value = X'34303030303030' WHERE name = 'kdf_iterations';"),
            false,
        ),
        (
            "kdf cost of the wrong type".into(),
            sql("UPDATE meta SET value = 'lots' WHERE name = 'kdf_memory_kib';"),
            false,
        ),
        (
            "keystore id not text".into(),
            sql("UPDATE meta SET value = X'FFFE' WHERE name = 'keystore_id';"),
            false,
        ),
        ("audit table dropped".into(), sql("DROP TABLE audit;"), false),
        ("keys table dropped".into(), sql("PRAGMA foreign_keys = OFF; DROP TABLE keys;"), false),
    ];
    for cut in [1, 100, 1024, 4096, len / 2, len - 4096, len - 1] {
        cases.push((format!("cut to {cut} of {len} bytes"), cut_to(cut), false));
    }

    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let _guard = MountGuard::new(&mnt);
    let (cipher, mnt_s) = (cipher.to_str().unwrap(), mnt.to_str().unwrap());
    let mut lines = Vec::new();
    for (name, damage, list_may_succeed) in &cases {
        let bad = env.path(&format!("bad-{}.db", lines.len()));
        fs::write(&bad, &good).unwrap();
        damage(&bad);
        let bad_s = bad.to_str().unwrap();
        for args in
            [vec!["--keystore", bad_s, "key", "list"], vec!["--keystore", bad_s, "mount", cipher, mnt_s]]
        {
            let what = format!("{name}: kmsfs {}", args[2..].join(" "));
            let (code, stderr) = run_bounded(env.cmd(&args), &what);
            let mounted = is_mounted(&mnt);
            if mounted {
                let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
            }
            assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
            assert!(!mounted, "{what} mounted");
            if code == Some(0) && *list_may_succeed && args[2] == "key" {
                lines.push(format!("{what}: exit 0 (it reads no key material)"));
                continue;
            }
            assert!(code.is_some_and(|c| c != 0), "{what}: exit {code:?}, stderr {stderr:?}");
            let message = stderr.trim();
            assert!(
                message.starts_with("kmsfs: error:") && message.len() > 25,
                "{what}: unclear: {message:?}"
            );
            lines.push(format!("{what}: exit {}: {message}", code.unwrap()));
        }
    }
    eprintln!("{}", lines.join("\n"));
}
