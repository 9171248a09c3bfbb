//! The keystore and KMS commands through the real binary: every command, every refusal, and
//! the exit codes the README documents.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{file_bytes, TestEnv};

#[test]
fn keystore_init_info_and_refusals() {
    let env = TestEnv::new();
    let mode = std::fs::metadata(&env.keystore).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "keystore must be private");
    let info = env.json(&["keystore", "info"]);
    assert_eq!(info["SchemaVersion"], kmsfs::keystore::schema::current_version());
    let account = info["AccountId"].as_str().unwrap();
    assert!(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()), "{info}");
    assert_eq!(info["Region"], "us-east-1");
    assert_eq!(info["Kdf"]["memory_kib"], 256);

    let err = env.fails(&["keystore", "init"], 1);
    assert!(err.contains("already exists"), "{err}");

    let fresh = TestEnv::without_keystore();
    let err = fresh.fails(&["key", "list"], 5);
    assert!(err.contains("keystore init"), "{err}");
    let out = fresh.cmd(&["keystore", "init"]).env("KMSFS_PASSPHRASE", "").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!fresh.keystore.exists(), "a refused init leaves no file behind");
}

#[test]
fn wrong_passphrase_is_refused_and_writes_nothing() {
    let env = TestEnv::new();
    env.create_key("alias/a");
    let before = file_bytes(&env.keystore);
    let events_before = env.json(&["audit"]).as_array().unwrap().len();
    for args in [&["key", "list"][..], &["key", "create"], &["keystore", "passwd"]] {
        let out = env.cmd(args).env("KMSFS_PASSPHRASE", "wrong").output().unwrap();
        let err = common::assert_failure(&out, args, 3);
        assert!(err.contains("wrong passphrase"), "{err}");
    }
    assert_eq!(file_bytes(&env.keystore), before);
    // Reading the trail is not itself audited, and the refused commands added nothing.
    assert_eq!(env.json(&["audit"]).as_array().unwrap().len(), events_before);
}

#[test]
fn passphrase_file_and_passwd() {
    let env = TestEnv::new();
    let id = env.create_key("alias/a");
    let blob = env.run_with_stdin(&["encrypt", "--key", &id], b"kept");
    let new_pass = env.path("new-pass");
    std::fs::write(&new_pass, "second passphrase\n").unwrap();
    env.ok(&["keystore", "passwd", "--new-passphrase-file", new_pass.to_str().unwrap()]);
    env.fails(&["key", "list"], 3);
    let mut cmd = env.cmd(&["decrypt", "--passphrase-file", new_pass.to_str().unwrap()]);
    cmd.env_remove("KMSFS_PASSPHRASE");
    let out = common::run_with_stdin(cmd, &blob.stdout);
    common::assert_success(&out, &["decrypt"]);
    assert_eq!(out.stdout, b"kept");
    let out = env.cmd(&["key", "list"]).env("KMSFS_PASSPHRASE", "second passphrase").output().unwrap();
    assert!(out.status.success());
    // No terminal and no passphrase source: a clear error, not a hang.
    let out = env.cmd(&["key", "list"]).env_remove("KMSFS_PASSPHRASE").output().unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn corrupt_or_foreign_keystores_get_clear_errors() {
    let env = TestEnv::without_keystore();
    // Private files (mode 0600), else the refusal of an exposed keystore comes first.
    let private = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    std::fs::write(&env.keystore, vec![0x5au8; 8192]).unwrap();
    private(&env.keystore);
    let err = env.fails(&["key", "list"], 1);
    assert!(err.contains("not a kmsfs keystore"), "{err}");

    let other = rusqlite::Connection::open(env.path("other.db")).unwrap();
    other.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    drop(other);
    private(&env.path("other.db"));
    let err = env.fails(&["--keystore", env.path("other.db").to_str().unwrap(), "key", "list"], 1);
    assert!(err.contains("another application"), "{err}");

    let real = TestEnv::new();
    let conn = rusqlite::Connection::open(&real.keystore).unwrap();
    conn.execute("DELETE FROM meta WHERE name = 'root_key_wrapped'", []).unwrap();
    drop(conn);
    let err = real.fails(&["key", "list"], 1);
    assert!(err.contains("corrupt") && err.contains("root_key_wrapped"), "{err}");

    let newer = TestEnv::new();
    let conn = rusqlite::Connection::open(&newer.keystore).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = newer.fails(&["key", "list"], 1);
    assert!(err.contains("newer"), "{err}");
}

#[test]
fn key_create_list_describe_json_fields() {
    let env = TestEnv::new();
    let id =
        env.ok(&["key", "create", "--alias", "alias/fin", "--description", "finance"]).trim().to_string();
    let meta = env.json(&["key", "describe", "alias/fin"]);
    for field in [
        "KeyId",
        "CreationDate",
        "Enabled",
        "KeyState",
        "KeyManager",
        "Origin",
        "Description",
        "DeletionDate",
        "PendingDeletionWindowInDays",
        "KeyRotationEnabled",
        "RotationPeriodInDays",
        "NextRotationDate",
        "CurrentKeyVersion",
    ] {
        assert!(meta.get(field).is_some(), "KeyMetadata lacks {field}: {meta}");
    }
    assert_eq!(meta["KeyId"], id.as_str());
    assert_eq!(meta["KeyState"], "Enabled");
    assert_eq!(meta["KeyManager"], "CUSTOMER");
    assert_eq!(meta["Description"], "finance");
    assert_eq!(meta["CurrentKeyVersion"], 1);
    let list = env.json(&["key", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let table = env.ok(&["key", "list"]);
    assert!(table.contains(&id) && table.contains("alias/fin") && table.contains("Enabled"), "{table}");
    let human = env.ok(&["key", "describe", &id]);
    assert!(human.contains("KeyState:") && human.contains("alias/fin"), "{human}");

    let err = env.fails(&["key", "describe", "alias/nope"], 5);
    assert!(err.contains("unknown alias 'alias/nope'"), "{err}");
    let err = env.fails(&["key", "describe", "1234abcd-12ab-34cd-56ef-1234567890ab"], 5);
    assert!(err.contains("unknown key"), "{err}");
    env.fails(&["key", "frobnicate"], 2);
}

#[test]
fn enable_disable_and_crypto_refusals() {
    let env = TestEnv::new();
    let id = env.create_key("alias/k");
    let blob = env.run_with_stdin(&["encrypt", "--key", "alias/k"], b"data").stdout;
    env.ok(&["key", "disable", "alias/k"]);
    assert_eq!(env.json(&["key", "describe", &id])["KeyState"], "Disabled");
    let out = env.run_with_stdin(&["decrypt"], &blob);
    let err = common::assert_failure(&out, &["decrypt"], 4);
    assert!(err.contains(&id) && err.contains("disabled"), "{err}");
    let out = env.run_with_stdin(&["encrypt", "--key", &id], b"x");
    common::assert_failure(&out, &["encrypt"], 4);
    env.ok(&["key", "enable", &id]);
    assert_eq!(env.run_with_stdin(&["decrypt"], &blob).stdout, b"data");
}

#[test]
fn encrypt_decrypt_files_base64_context_and_limits() {
    let env = TestEnv::new();
    env.create_key("alias/app");
    let secret = env.path("secret.txt");
    std::fs::write(&secret, b"api-token-123").unwrap();
    let blob = env.path("secret.b64");
    let (s, b) = (secret.to_str().unwrap(), blob.to_str().unwrap());
    env.ok(&["encrypt", "--key", "alias/app", "--in", s, "--out", b, "--base64", "--context", "app=web"]);
    let text = std::fs::read_to_string(&blob).unwrap();
    assert!(!text.contains("api-token"), "ciphertext must not contain the plaintext");
    let out = env.ok(&["decrypt", "--in", b, "--base64", "--context", "app=web"]);
    assert_eq!(out, "api-token-123");

    // Wrong or missing context, tampered ciphertext: exit 7, no plaintext.
    for ctx in [&["--context", "app=db"][..], &[]] {
        let mut args = vec!["decrypt", "--in", b, "--base64"];
        args.extend_from_slice(ctx);
        let out = env.run(&args);
        let err = common::assert_failure(&out, &args, 7);
        assert!(err.contains("does not authenticate"), "{err}");
        assert!(out.stdout.is_empty());
    }
    let raw = env.run_with_stdin(&["encrypt", "--key", "alias/app"], b"abc").stdout;
    let mut tampered = raw.clone();
    tampered[30] ^= 1;
    let out = env.run_with_stdin(&["decrypt"], &tampered);
    common::assert_failure(&out, &["decrypt"], 7);
    let out = env.run_with_stdin(&["decrypt"], b"not a blob at all, clearly not one");
    let err = common::assert_failure(&out, &["decrypt"], 7);
    assert!(err.contains("not a kmsfs ciphertext"), "{err}");

    let out = env.run_with_stdin(&["encrypt", "--key", "alias/app"], &[b'x'; 4096]);
    common::assert_success(&out, &["encrypt 4096"]);
    let out = env.run_with_stdin(&["encrypt", "--key", "alias/app"], &[b'x'; 4097]);
    let err = common::assert_failure(&out, &["encrypt 4097"], 1);
    assert!(err.contains("4097") && err.contains("generate-data-key"), "{err}");
    let err = env.fails(&["encrypt", "--key", "alias/app", "--context", "novalue"], 1);
    assert!(err.contains("key=value"), "{err}");
}

#[test]
fn generate_data_key_and_re_encrypt() {
    let env = TestEnv::new();
    let a = env.create_key("alias/a");
    let b = env.create_key("alias/b");
    let pt = env.path("dk.key");
    let blob = env.path("dk.blob");
    let json = env.json(&[
        "generate-data-key",
        "--key",
        "alias/a",
        "--plaintext-out",
        pt.to_str().unwrap(),
        "--out",
        blob.to_str().unwrap(),
        "--context",
        "vol=1",
    ]);
    assert_eq!(json["KeyId"], a.as_str());
    assert!(json.get("Plaintext").is_none(), "the plaintext key is never printed");
    let key = file_bytes(&pt);
    assert_eq!(key.len(), 32);
    assert_eq!(std::fs::metadata(&pt).unwrap().permissions().mode() & 0o777, 0o600);
    let out = env.ok_bytes(&["decrypt", "--in", blob.to_str().unwrap(), "--context", "vol=1"]);
    assert_eq!(out, key);
    let err = env.fails(&["generate-data-key", "--key", "alias/a"], 2);
    assert!(err.contains("--plaintext-out"), "{err}");
    let err =
        env.fails(&["generate-data-key", "--key", "alias/a", "--plaintext-out", pt.to_str().unwrap()], 1);
    assert!(err.contains("already exists"), "{err}");
    let only = env.json(&["generate-data-key", "--key", "alias/a", "--without-plaintext"]);
    assert!(only["CiphertextBlob"].as_str().unwrap().len() > 40);

    let moved = env.path("moved.blob");
    env.ok(&[
        "re-encrypt",
        "--in",
        blob.to_str().unwrap(),
        "--out",
        moved.to_str().unwrap(),
        "--source-context",
        "vol=1",
        "--destination-key",
        "alias/b",
    ]);
    let out = env.ok_bytes(&["decrypt", "--in", moved.to_str().unwrap(), "--context", "vol=1", "--key", &b]);
    assert_eq!(out, key);
    let err = env.fails(&["decrypt", "--in", moved.to_str().unwrap(), "--context", "vol=1", "--key", &a], 7);
    assert!(err.contains("not"), "{err}");
}

#[test]
fn rotation_commands() {
    let env = TestEnv::new();
    let id = env.create_key("alias/r");
    let old = env.run_with_stdin(&["encrypt", "--key", &id], b"v1 data").stdout;
    env.ok(&["key", "rotate", "alias/r"]);
    assert_eq!(env.json(&["key", "describe", &id])["CurrentKeyVersion"], 2);
    let versions = env.json(&["key", "rotations", &id]);
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(env.run_with_stdin(&["decrypt"], &old).stdout, b"v1 data");

    assert_eq!(env.ok(&["key", "rotation", "status", &id]).trim(), "disabled");
    let err = env.fails(&["key", "rotation", "enable", &id, "--period-days", "89"], 1);
    assert!(err.contains("90") && err.contains("2560"), "{err}");
    env.fails(&["key", "rotation", "enable", &id, "--period-days", "2561"], 1);
    env.ok(&["key", "rotation", "enable", &id, "--period-days", "90"]);
    let status = env.json(&["key", "rotation", "status", &id]);
    assert_eq!(status["KeyRotationEnabled"], true);
    assert_eq!(status["RotationPeriodInDays"], 90);

    // 91 days later, opening the keystore rotates it automatically.
    let out = env.cmd_at(7_862_400, &["--json", "key", "describe", &id]).output().unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["CurrentKeyVersion"], 3);
    env.ok(&["key", "rotation", "disable", &id]);
    assert_eq!(env.ok(&["key", "rotation", "status", &id]).trim(), "disabled");
}

#[test]
fn the_kmsfs_binary_ignores_a_clock_offset_in_its_environment() {
    let env = TestEnv::new();
    let id = env.create_key("alias/kept");
    env.ok(&["key", "schedule-deletion", &id, "--pending-window-days", "7"]);
    // A stray offset of 8 days (say, left in a unit file) must not crypto-shred the key.
    let out = env.cmd(&["key", "purge-expired"]).env("KMSFS_CLOCK_OFFSET_SECS", "691200").output().unwrap();
    common::assert_success(&out, &["purge-expired"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("KMSFS_CLOCK_OFFSET_SECS is ignored"));
    assert_eq!(env.json(&["key", "describe", &id])["KeyState"], "PendingDeletion");
    // The test suite's binary honours it: the same offset would have destroyed the key.
    common::assert_success(&env.cmd_at(691_200, &["key", "purge-expired"]).output().unwrap(), &["purge"]);
    assert_eq!(env.json(&["key", "describe", &id])["KeyState"], "Destroyed");
}

#[test]
fn scheduled_deletion_window_cancel_and_expiry() {
    let env = TestEnv::new();
    let id = env.create_key("alias/d");
    let blob = env.run_with_stdin(&["encrypt", "--key", &id], b"doomed").stdout;
    for bad in ["6", "31", "-1"] {
        let err = env.fails(&["key", "schedule-deletion", &id, "--pending-window-days", bad], 1);
        assert!(err.contains("between 7 and 30"), "{bad}: {err}");
    }
    assert_eq!(env.json(&["key", "describe", &id])["KeyState"], "Enabled");

    let meta = env.json(&["key", "schedule-deletion", &id]);
    assert_eq!(meta["KeyState"], "PendingDeletion");
    assert_eq!(meta["PendingDeletionWindowInDays"], 30);
    let out = env.run_with_stdin(&["decrypt"], &blob);
    let err = common::assert_failure(&out, &["decrypt"], 4);
    assert!(err.contains("pending deletion"), "{err}");
    env.ok(&["key", "cancel-deletion", &id]);
    assert_eq!(env.json(&["key", "describe", &id])["KeyState"], "Disabled");
    env.fails(&["key", "cancel-deletion", &id], 4);

    env.ok(&["key", "enable", &id]);
    env.ok(&["key", "schedule-deletion", &id, "--pending-window-days", "7"]);
    // 8 days later the material is gone for good.
    let later = |args: &[&str]| env.cmd_at(691_200, args).output().unwrap();
    let out = later(&["key", "purge-expired"]);
    common::assert_success(&out, &["purge-expired"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = common::run_with_stdin(env.cmd(&["decrypt"]), &blob);
    let err = common::assert_failure(&out, &["decrypt"], 4);
    assert!(err.contains("destroyed") && err.contains("unrecoverable"), "{err}");
    assert_eq!(env.json(&["key", "describe", &id])["KeyState"], "Destroyed");
    env.fails(&["key", "describe", "alias/d"], 5);
}

#[test]
fn alias_commands() {
    let env = TestEnv::new();
    let a = env.create_key("alias/first");
    let b = env.ok(&["key", "create"]).trim().to_string();
    let err = env.fails(&["alias", "create", "alias/first", &b], 1);
    assert!(err.contains("already exists"), "{err}");
    env.fails(&["key", "create", "--alias", "alias/first"], 1);
    assert_eq!(env.json(&["key", "list"]).as_array().unwrap().len(), 2, "a refused create adds no key");
    env.ok(&["alias", "create", "alias/second", &a]);
    env.ok(&["alias", "update", "alias/second", &b]);
    let list = env.json(&["alias", "list"]);
    let names: Vec<_> = list.as_array().unwrap().iter().map(|a| a["AliasName"].as_str().unwrap()).collect();
    assert_eq!(names, ["alias/first", "alias/second"]);
    assert_eq!(env.json(&["alias", "list", "--key", &b])[0]["TargetKeyId"], b.as_str());
    env.ok(&["alias", "delete", "alias/second"]);
    env.fails(&["alias", "delete", "alias/second"], 5);
    let err = env.fails(&["alias", "create", "alias/kmsfs/mine", &a], 6);
    assert!(err.contains("reserved"), "{err}");
    let err = env.fails(&["alias", "create", "finance", &a], 1);
    assert!(err.contains("must start with 'alias/'"), "{err}");
    env.fails(&["alias", "create", "alias/x", "alias/missing"], 5);
}

#[test]
fn audit_listing_filters_and_verify_catches_an_edited_row() {
    let env = TestEnv::new();
    let id = env.create_key("alias/aud");
    env.ok(&["key", "disable", &id]);
    env.run_with_stdin(&["encrypt", "--key", &id, "--context", "who=test"], b"x");
    let all = env.json(&["audit", "--key", "alias/aud"]);
    let ops: Vec<_> = all.as_array().unwrap().iter().map(|e| e["Operation"].as_str().unwrap()).collect();
    assert_eq!(ops, ["CreateKey", "DisableKey", "Encrypt"]);
    let denied = env.json(&["audit", "--denied"]);
    assert_eq!(denied.as_array().unwrap().len(), 1);
    let ev = &denied[0];
    assert_eq!(ev["Operation"], "Encrypt");
    assert_eq!(ev["Outcome"], "Denied");
    assert_eq!(ev["Uid"], unsafe { libc::getuid() });
    assert!(ev["Context"].as_str().unwrap().contains("who"));
    assert_eq!(env.json(&["audit", "--operation", "disablekey"]).as_array().unwrap().len(), 1);
    assert!(env.json(&["audit", "--since", "1h"]).as_array().unwrap().len() >= 3);
    assert!(env.json(&["audit", "--since", "2099-01-01"]).as_array().unwrap().is_empty());
    env.fails(&["audit", "--since", "someday"], 1);
    let table = env.ok(&["audit", "--limit", "2"]);
    assert_eq!(table.lines().count(), 3, "{table}");

    assert!(env.ok(&["audit", "verify"]).contains("intact"));
    let conn = rusqlite::Connection::open(&env.keystore).unwrap();
    conn.execute("UPDATE audit SET outcome = 'Success' WHERE outcome = 'Denied'", []).unwrap();
    drop(conn);
    let out = env.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TAMPERED"));
}

trait OkBytes {
    fn ok_bytes(&self, args: &[&str]) -> Vec<u8>;
}

impl OkBytes for TestEnv {
    fn ok_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        common::assert_success(&out, args);
        out.stdout
    }
}

#[test]
fn keystore_account_and_region_set_at_init_changed_later_and_defaulted_by_migration() {
    let env = TestEnv::without_keystore();
    env.ok(&[
        "keystore",
        "init",
        "--argon2-memory-kib",
        "256",
        "--argon2-iterations",
        "1",
        "--account-id",
        "111122223333",
        "--region",
        "eu-west-1",
    ]);
    let info = env.json(&["keystore", "info"]);
    assert_eq!(
        (info["AccountId"].as_str(), info["Region"].as_str()),
        (Some("111122223333"), Some("eu-west-1"))
    );
    assert!(env.ok(&["keystore", "info"]).contains("111122223333"));
    env.ok(&["keystore", "set-identity", "--region", "ap-south-2"]);
    assert_eq!(env.json(&["keystore", "info"])["Region"], "ap-south-2");
    let err = env.fails(&["keystore", "set-identity", "--account-id", "12345"], 1);
    assert!(err.contains("12 digits"), "{err}");
    let bad = TestEnv::without_keystore();
    let err = bad.fails(&["keystore", "init", "--region", "Not A Region"], 1);
    assert!(err.contains("region"), "{err}");
    assert!(!bad.keystore.exists(), "a refused init left a keystore");

    // A keystore from before the API server (schema 2, no account or region) is migrated
    // with defaults when next opened.
    let old = TestEnv::new();
    let id = old.json(&["keystore", "info"])["KeystoreId"].as_str().unwrap().to_string();
    let conn = rusqlite::Connection::open(&old.keystore).unwrap();
    conn.execute_batch(
        "DROP TABLE multi_region; DROP TABLE imported_material; DROP TABLE import_wrapping_keys;
         DROP TABLE key_specs; DROP TABLE access_keys; DROP TABLE tags;
         ALTER TABLE audit DROP COLUMN principal_arn; ALTER TABLE audit DROP COLUMN access_key_id;
         ALTER TABLE audit DROP COLUMN source; ALTER TABLE audit DROP COLUMN error_code;
         ALTER TABLE grants DROP COLUMN retiring_principal; ALTER TABLE grants DROP COLUMN context_equals;
         DELETE FROM meta WHERE name IN ('account_id', 'region');
         PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);
    let info = old.json(&["keystore", "info"]);
    assert_eq!(info["SchemaVersion"], kmsfs::keystore::schema::current_version());
    assert_eq!(info["KeystoreId"], id.as_str());
    let account = info["AccountId"].as_str().unwrap();
    assert!(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()), "{info}");
    assert_eq!(info["Region"], "us-east-1");
    // The same keystore always derives the same account.
    assert_eq!(old.json(&["keystore", "info"])["AccountId"], account);
    old.json(&["access-key", "create", "--user", "after-migration"]);
    old.ok(&["audit", "verify"]);
}

#[test]
fn a_mount_refused_by_its_key_state_says_how_to_fix_it_also_from_the_daemon() {
    let env = TestEnv::new();
    let cipher = env.path("cipher");
    env.init_volume(&cipher);
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = common::mount::MountGuard::new(&mnt);
    env.ok(&["key", "disable", "alias/vol"]);
    let (cipher, mnt) = (cipher.to_str().unwrap(), mnt.to_str().unwrap());
    // In the foreground the error reaches the command line as itself (exit 4); from a
    // background daemon it arrives as the text the command line worded (exit 1).
    for (args, code) in [(vec!["mount", "-f", cipher, mnt], 4), (vec!["mount", cipher, mnt], 1)] {
        let err = env.fails(&args, code);
        assert!(err.contains("is disabled; enable it with `kmsfs key enable "), "{args:?}: {err}");
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let env = TestEnv::new();
    env.create_key("alias/a");
    for args in [&["audit", "--json"][..], &["key", "list", "--json"]] {
        // `kmsfs audit --json | head` where head has gone: the pipe's only reader is closed
        // before the command writes, so its write meets EPIPE.
        let mut child = env
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(err.is_empty(), "{args:?}: a broken pipe is not an error: {err}");
        assert!(status.success() || status.signal() == Some(libc::SIGPIPE), "{args:?}: {status:?}");
    }
}
