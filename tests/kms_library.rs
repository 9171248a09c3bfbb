//! The KMS through its library API, against a real SQLite keystore, with a manual clock so
//! deletion windows and rotation periods pass without waiting.

use std::sync::Arc;

use kmsfs::crypto::KdfParams;
use kmsfs::keystore::Keystore;
use kmsfs::kms::lifecycle::CreateKeyOptions;
use kmsfs::kms::{AuditFilter, EncryptionContext, Kms, ManualClock, Outcome, Principal};
use kmsfs::Error;

const FAST_KDF: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };
const START: i64 = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: Arc<ManualClock>,
    me: Principal,
    kms: Kms,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks.db");
    let (ks, root) = Keystore::create(&path, b"pw", FAST_KDF).unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let me = Principal::current_process();
    let kms = Kms::new(ks, root, clock.clone(), &me).unwrap();
    Fixture { _dir: dir, path, clock, me, kms }
}

impl Fixture {
    /// Closes and reopens the keystore, as the next command would (running housekeeping).
    fn reopen(&mut self) {
        let ks = Keystore::open(&self.path).unwrap();
        let root = ks.unlock(b"pw").unwrap();
        self.kms = Kms::new(ks, root, self.clock.clone(), &self.me).unwrap();
    }

    fn key(&mut self, alias: Option<&str>) -> String {
        let opts = CreateKeyOptions { alias: alias.map(str::to_string), ..Default::default() };
        self.kms.create_key(&self.me, &opts).unwrap()
    }
}

fn ctx(pairs: &[&str]) -> EncryptionContext {
    EncryptionContext::from_pairs(pairs).unwrap()
}

#[test]
fn data_keys_round_trip_and_bind_their_context() {
    let mut f = fixture();
    let id = f.key(Some("alias/app"));
    let me = f.me.clone();
    let c = ctx(&["volume=v1", "file=42"]);
    let dk = f.kms.generate_data_key(&me, "alias/app", &c).unwrap();
    assert_eq!(dk.key_id, id);
    let back = f.kms.decrypt(&me, &dk.ciphertext_blob, &c, None).unwrap();
    assert_eq!(&back.plaintext[..], dk.plaintext.as_bytes());

    // Wrong context, tampered blob: refused, not wrong bytes.
    let err = f.kms.decrypt(&me, &dk.ciphertext_blob, &ctx(&["volume=v1", "file=43"]), None).err().unwrap();
    assert!(matches!(err, Error::InvalidCiphertext(_)), "{err}");
    let mut tampered = dk.ciphertext_blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    assert!(matches!(f.kms.decrypt(&me, &tampered, &c, None), Err(Error::InvalidCiphertext(_))));

    // Without plaintext: the blob decrypts to a 32-byte key.
    let (_, _, blob) = f.kms.generate_data_key_without_plaintext(&me, &id, &c).unwrap();
    assert_eq!(f.kms.decrypt(&me, &blob, &c, None).unwrap().plaintext.len(), 32);
}

#[test]
fn decrypt_with_expected_key_refuses_other_keys() {
    let mut f = fixture();
    let a = f.key(Some("alias/a"));
    f.key(Some("alias/b"));
    let me = f.me.clone();
    let blob = f.kms.encrypt(&me, &a, b"x", &EncryptionContext::new()).unwrap();
    assert!(f.kms.decrypt(&me, &blob, &EncryptionContext::new(), Some("alias/a")).is_ok());
    let err = f.kms.decrypt(&me, &blob, &EncryptionContext::new(), Some("alias/b")).err().unwrap();
    assert!(err.to_string().contains("not alias/b"), "{err}");
}

#[test]
fn rotation_keeps_old_versions_decrypting_and_reencrypt_catches_up() {
    let mut f = fixture();
    let id = f.key(None);
    let me = f.me.clone();
    let none = EncryptionContext::new();
    let v1 = f.kms.encrypt(&me, &id, b"one", &none).unwrap();
    assert_eq!(f.kms.rotate_key(&me, &id).unwrap(), 2);
    let v2 = f.kms.encrypt(&me, &id, b"two", &none).unwrap();
    assert_eq!(&f.kms.decrypt(&me, &v1, &none, None).unwrap().plaintext[..], b"one");
    let d2 = f.kms.decrypt(&me, &v2, &none, None).unwrap();
    assert_eq!((d2.key_version, &d2.plaintext[..]), (2, &b"two"[..]));

    let caught_up = f.kms.re_encrypt(&me, &v1, &none, None, &none).unwrap();
    let d = f.kms.decrypt(&me, &caught_up, &none, None).unwrap();
    assert_eq!((d.key_version, &d.plaintext[..]), (2, &b"one"[..]));

    let other = f.key(None);
    let moved = f.kms.re_encrypt(&me, &v1, &none, Some(&other), &ctx(&["k=v"])).unwrap();
    let d = f.kms.decrypt(&me, &moved, &ctx(&["k=v"]), None).unwrap();
    assert_eq!((d.key_id, &d.plaintext[..]), (other, &b"one"[..]));
    let versions = f.kms.list_key_versions(&me, &id).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.rotation_type.as_str()).collect::<Vec<_>>(),
        ["INITIAL", "ON_DEMAND"]
    );
}

#[test]
fn automatic_rotation_happens_when_due_on_open() {
    let mut f = fixture();
    let id = f.key(None);
    let me = f.me.clone();
    assert!(f.kms.enable_key_rotation(&me, &id, 89).is_err());
    assert!(f.kms.enable_key_rotation(&me, &id, 2561).is_err());
    f.kms.enable_key_rotation(&me, &id, 90).unwrap();
    f.clock.advance_days(89);
    f.reopen();
    assert_eq!(f.kms.describe_key(&me, &id).unwrap().current_key_version, 1);
    f.clock.advance_days(1);
    f.reopen();
    let meta = f.kms.describe_key(&me, &id).unwrap();
    assert_eq!(meta.current_key_version, 2);
    assert!(meta
        .next_rotation_date
        .unwrap()
        .starts_with(&kmsfs::kms::clock::format_date(START + 180 * 86_400)[..10]));
    let versions = f.kms.list_key_versions(&me, &id).unwrap();
    assert_eq!(versions[1].rotation_type, "AUTOMATIC");

    // A disabled key does not rotate; once enabled again it catches up at the next open.
    f.kms.disable_key(&me, &id).unwrap();
    f.clock.advance_days(100);
    f.reopen();
    assert_eq!(f.kms.describe_key(&me, &id).unwrap().current_key_version, 2);
    f.kms.enable_key(&me, &id).unwrap();
    f.reopen();
    assert_eq!(f.kms.describe_key(&me, &id).unwrap().current_key_version, 3);
}

#[test]
fn deletion_window_cancel_and_crypto_shredding() {
    let mut f = fixture();
    let id = f.key(Some("alias/doomed"));
    let me = f.me.clone();
    let none = EncryptionContext::new();
    let blob = f.kms.encrypt(&me, &id, b"payload", &none).unwrap();

    for bad in [6, 31, 0, -1] {
        let err = f.kms.schedule_key_deletion(&me, &id, bad).err().unwrap();
        assert!(err.to_string().contains("between 7 and 30"), "{err}");
    }
    assert!(f.kms.describe_key(&me, &id).unwrap().enabled, "a refused window changes nothing");

    // Pending: unusable; cancel returns it Disabled, as AWS does.
    f.kms.schedule_key_deletion(&me, &id, 7).unwrap();
    let err = f.kms.decrypt(&me, &blob, &none, None).err().unwrap();
    assert!(matches!(err, Error::KeyState(_)) && err.to_string().contains("pending deletion"), "{err}");
    f.kms.cancel_key_deletion(&me, &id).unwrap();
    let meta = f.kms.describe_key(&me, &id).unwrap();
    assert_eq!(format!("{:?}", meta.key_state), "Disabled");
    assert!(meta.deletion_date.is_none());
    assert!(f.kms.cancel_key_deletion(&me, &id).is_err(), "nothing to cancel");

    // Default window is 30 days; a day before it ends, nothing happens.
    f.kms.schedule_key_deletion(&me, &id, 30).unwrap();
    f.clock.advance_days(29);
    f.reopen();
    assert_eq!(format!("{:?}", f.kms.describe_key(&me, &id).unwrap().key_state), "PendingDeletion");
    f.clock.advance_days(1);
    f.reopen();
    let meta = f.kms.describe_key(&me, &id).unwrap();
    assert_eq!(format!("{:?}", meta.key_state), "Destroyed");
    assert!(meta.aliases.is_empty(), "aliases of a destroyed key are removed");
    let err = f.kms.decrypt(&me, &blob, &none, None).err().unwrap();
    assert!(err.to_string().contains("unrecoverable"), "{err}");
    assert!(f.kms.list_key_versions(&me, &id).unwrap().iter().all(|v| !v.material_present));
    assert!(f.kms.cancel_key_deletion(&me, &id).is_err());
    assert!(f.kms.enable_key(&me, &id).is_err());

    // The material is gone from the file itself, not only marked.
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM key_versions WHERE key_id = ?1 AND material IS NOT NULL",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}

/// Every 8-byte window of `secret` that occurs in the keystore, its -wal or its -shm.
fn traces_on_disk(keystore: &std::path::Path, secret: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", keystore.display()));
        let Ok(bytes) = std::fs::read(&file) else { continue };
        for window in secret.windows(8) {
            if bytes.windows(8).any(|w| w == window) {
                found.push(format!("{} holds bytes of the material", file.display()));
                break;
            }
        }
    }
    found
}

#[test]
fn destroyed_material_leaves_no_byte_in_the_keystore_its_wal_or_shm() {
    let mut f = fixture();
    let me = f.me.clone();
    // A connection that stays open, as a mount's do: the log is not removed by a last close.
    let long_lived = rusqlite::Connection::open(&f.path).unwrap();
    let doomed = f.key(Some("alias/doomed"));
    f.kms.rotate_key(&me, &doomed).unwrap();
    let kept = f.key(Some("alias/kept"));
    let sealed: Vec<Vec<u8>> = {
        let mut stmt = long_lived.prepare("SELECT material FROM key_versions WHERE key_id = ?1").unwrap();
        stmt.query_map([&doomed], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(sealed.len(), 2);
    f.kms.schedule_key_deletion(&me, &doomed, 7).unwrap();
    f.clock.advance_days(8);

    // A reader on an older snapshot while the key is destroyed: the log cannot be truncated.
    let snapshot = long_lived.unchecked_transaction().unwrap();
    let _: i64 = snapshot.query_row("SELECT count(*) FROM key_versions", [], |r| r.get(0)).unwrap();
    f.reopen();
    assert_eq!(format!("{:?}", f.kms.describe_key(&me, &doomed).unwrap().key_state), "Destroyed");
    assert!(f.kms.keystore().erase_pending().unwrap(), "the erasure is owed");
    drop(snapshot);

    // The next command erases what the log still held.
    f.reopen();
    assert!(!f.kms.keystore().erase_pending().unwrap());
    for s in &sealed {
        let traces = traces_on_disk(&f.path, s);
        assert!(traces.is_empty(), "{traces:?}");
    }
    // The other key is intact, and a destruction without readers erases at once.
    let blob = f.kms.encrypt(&me, &kept, b"still here", &EncryptionContext::new()).unwrap();
    let sealed_kept: Vec<u8> = long_lived
        .query_row("SELECT material FROM key_versions WHERE key_id = ?1", [&kept], |r| r.get(0))
        .unwrap();
    assert!(f.kms.decrypt(&me, &blob, &EncryptionContext::new(), None).is_ok());
    f.kms.schedule_key_deletion(&me, &kept, 7).unwrap();
    f.clock.advance_days(8);
    f.reopen();
    assert!(traces_on_disk(&f.path, &sealed_kept).is_empty());
}

#[test]
fn disabled_key_refuses_every_crypto_operation() {
    let mut f = fixture();
    let id = f.key(None);
    let me = f.me.clone();
    let none = EncryptionContext::new();
    let blob = f.kms.encrypt(&me, &id, b"x", &none).unwrap();
    f.kms.disable_key(&me, &id).unwrap();
    let errs = [
        f.kms.encrypt(&me, &id, b"x", &none).err(),
        f.kms.decrypt(&me, &blob, &none, None).err(),
        f.kms.generate_data_key(&me, &id, &none).err(),
        f.kms.re_encrypt(&me, &blob, &none, None, &none).err(),
        f.kms.rotate_key(&me, &id).err(),
    ];
    for err in errs {
        let err = err.expect("refused");
        assert!(matches!(err, Error::KeyState(_)) && err.to_string().contains(&id), "{err}");
    }
    f.kms.enable_key(&me, &id).unwrap();
    assert!(f.kms.decrypt(&me, &blob, &none, None).is_ok());
}

#[test]
fn managed_keys_cannot_be_changed_by_users() {
    let mut f = fixture();
    let me = f.me.clone();
    let id = f.kms.create_managed_key(&me, "vol1", "volume vol1").unwrap();
    let meta = f.kms.describe_key(&me, "alias/kmsfs/vol1").unwrap();
    assert_eq!(meta.key_id, id);
    assert!(meta.key_rotation_enabled);
    assert_eq!(meta.rotation_period_in_days, Some(365));
    let refusals = [
        f.kms.disable_key(&me, &id).err(),
        f.kms.schedule_key_deletion(&me, &id, 30).err(),
        f.kms.disable_key_rotation(&me, &id).err(),
        f.kms.rotate_key(&me, &id).err(),
        f.kms.create_alias(&me, "alias/mine", &id).err(),
        f.kms.delete_alias(&me, "alias/kmsfs/vol1").err(),
        f.kms.create_alias(&me, "alias/kmsfs/other", &id).err(),
    ];
    for err in refusals {
        let err = err.expect("refused");
        assert!(matches!(err, Error::AccessDenied(_)), "{err}");
    }
    // It rotates by itself yearly.
    f.clock.advance_days(365);
    f.reopen();
    assert_eq!(f.kms.describe_key(&me, &id).unwrap().current_key_version, 2);
}

#[test]
fn aliases_create_update_delete_and_refuse_duplicates() {
    let mut f = fixture();
    let a = f.key(None);
    let b = f.key(None);
    let me = f.me.clone();
    f.kms.create_alias(&me, "alias/x", &a).unwrap();
    let dup = f.kms.create_alias(&me, "alias/x", &b).err().unwrap();
    assert!(matches!(dup, Error::AlreadyExists(_)), "{dup}");
    f.kms.update_alias(&me, "alias/x", &b).unwrap();
    assert_eq!(f.kms.resolve_key_id("alias/x").unwrap(), b);
    assert_eq!(f.kms.list_aliases(&me, Some(&b)).unwrap().len(), 1);
    f.kms.delete_alias(&me, "alias/x").unwrap();
    assert!(matches!(f.kms.resolve_key_id("alias/x"), Err(Error::NotFound(_))));
    assert!(matches!(f.kms.delete_alias(&me, "alias/x"), Err(Error::NotFound(_))));
    assert!(matches!(f.kms.update_alias(&me, "alias/nope", &a), Err(Error::NotFound(_))));
    assert!(matches!(f.kms.describe_key(&me, "no-such-key"), Err(Error::NotFound(_))));
    assert!(matches!(f.kms.create_alias(&me, "noprefix", &a), Err(Error::InvalidArgument(_))));
}

#[test]
fn every_operation_is_audited_with_outcome_and_the_chain_verifies() {
    let mut f = fixture();
    let id = f.key(None);
    let me = f.me.clone();
    f.kms.disable_key(&me, &id).unwrap();
    let _ = f.kms.encrypt(&me, &id, b"x", &ctx(&["purpose=test"]));
    let _ = f.kms.describe_key(&me, "alias/missing");
    let all = f.kms.audit_events(&AuditFilter::default()).unwrap();
    let ops: Vec<_> = all.iter().map(|r| (r.event.operation.as_str(), r.event.outcome)).collect();
    assert_eq!(
        ops,
        [
            ("CreateKey", Outcome::Success),
            ("DisableKey", Outcome::Success),
            ("Encrypt", Outcome::Denied),
            ("DescribeKey", Outcome::Error)
        ]
    );
    let denied = &all[2].event;
    assert_eq!(denied.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(denied.uid, me.uid);
    assert_eq!(denied.context, r#"{"purpose":"test"}"#);
    assert!(denied.reason.contains("disabled"));
    let only_denied =
        f.kms.audit_events(&AuditFilter { outcome: Some(Outcome::Denied), ..Default::default() }).unwrap();
    assert_eq!(only_denied.len(), 1);
    assert!(f.kms.verify_audit().unwrap().intact);
}

#[test]
fn audit_verify_detects_edits_deletions_and_truncation() {
    let mut f = fixture();
    for _ in 0..5 {
        f.key(None);
    }
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    assert!(f.kms.verify_audit().unwrap().intact);

    conn.execute("UPDATE audit SET uid = uid + 1 WHERE seq = 2", []).unwrap();
    let report = f.kms.verify_audit().unwrap();
    assert!(!report.intact);
    assert!(report.problems.iter().any(|p| p.contains("event 2")), "{:?}", report.problems);
    conn.execute("UPDATE audit SET uid = uid - 1 WHERE seq = 2", []).unwrap();
    assert!(f.kms.verify_audit().unwrap().intact, "restoring the row restores the chain");

    conn.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
    let report = f.kms.verify_audit().unwrap();
    assert!(report.problems.iter().any(|p| p.contains("missing")), "{:?}", report.problems);

    let f2 = &mut fixture();
    for _ in 0..3 {
        f2.key(None);
    }
    let conn2 = rusqlite::Connection::open(&f2.path).unwrap();
    conn2.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
    let report = f2.kms.verify_audit().unwrap();
    assert!(report.problems.iter().any(|p| p.contains("removed from the end")), "{:?}", report.problems);
}

#[test]
fn audit_verify_reports_an_edit_of_any_field() {
    let mut f = fixture();
    let me = f.me.clone();
    let id = f.key(Some("alias/audited"));
    f.kms.encrypt(&me, &id, b"x", &ctx(&["app=web"])).unwrap();
    assert!(f.kms.describe_key(&me, "alias/none").is_err(), "an Error event");
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    let seq_of = |outcome: &str| -> i64 {
        conn.query_row("SELECT max(seq) FROM audit WHERE outcome = ?1", [outcome], |r| r.get(0)).unwrap()
    };
    let (ok_seq, err_seq) = (seq_of("Success"), seq_of("Error"));
    assert!(f.kms.verify_audit().unwrap().intact);
    // Each edit, on a Success row and on an Error row (an unknown outcome word used to be
    // read as Error, so an Error row could be edited to anything unnoticed).
    let edits = [
        "time_ms = time_ms + 1",
        "uid = uid + 1",
        "user = user || 'x'",
        "pid = 4242",
        "pid = NULL",
        "operation = 'Decrypt'",
        "key_id = 'other'",
        "key_id = NULL",
        "outcome = 'Denied'",
        "outcome = 'Bogus'",
        "outcome = 'error'",
        "reason = reason || '.'",
        "context = '{}'",
        "path = '/etc/shadow'",
        "mac = zeroblob(32)",
    ];
    for seq in [ok_seq, err_seq] {
        for edit in edits {
            let saved: Vec<rusqlite::types::Value> = conn
                .query_row("SELECT * FROM audit WHERE seq = ?1", [seq], |r| {
                    (0..r.as_ref().column_count()).map(|i| r.get(i)).collect::<rusqlite::Result<Vec<_>>>()
                })
                .unwrap();
            let changed = conn.execute(&format!("UPDATE audit SET {edit} WHERE seq = ?1"), [seq]).unwrap();
            assert_eq!(changed, 1);
            let report = f.kms.verify_audit().unwrap();
            assert!(
                !report.intact && report.problems.iter().any(|p| p.contains(&format!("event {seq} "))),
                "edit `{edit}` of event {seq} went unreported: {:?}",
                report.problems
            );
            conn.execute("DELETE FROM audit WHERE seq = ?1", [seq]).unwrap();
            let placeholders: Vec<String> = (1..=saved.len()).map(|i| format!("?{i}")).collect();
            conn.execute(
                &format!("INSERT INTO audit VALUES ({})", placeholders.join(", ")),
                rusqlite::params_from_iter(saved),
            )
            .unwrap();
            assert!(f.kms.verify_audit().unwrap().intact, "restored after `{edit}`");
        }
    }
}

#[test]
fn passphrase_change_keeps_keys_and_audit_chain() {
    let mut f = fixture();
    let id = f.key(None);
    let me = f.me.clone();
    let blob = f.kms.encrypt(&me, &id, b"kept", &EncryptionContext::new()).unwrap();
    f.kms.change_passphrase(&me, b"new-pw", FAST_KDF).unwrap();
    let ks = Keystore::open(&f.path).unwrap();
    assert!(matches!(ks.unlock(b"pw"), Err(Error::WrongPassphrase(_))));
    let root = ks.unlock(b"new-pw").unwrap();
    let mut kms = Kms::new(ks, root, f.clock.clone(), &me).unwrap();
    assert_eq!(&kms.decrypt(&me, &blob, &EncryptionContext::new(), None).unwrap().plaintext[..], b"kept");
    assert!(kms.verify_audit().unwrap().intact);
    assert!(kms.change_passphrase(&me, b"", FAST_KDF).is_err());
}

#[test]
fn large_plaintext_is_refused_with_a_pointer_to_data_keys() {
    let mut f = fixture();
    let id = f.key(None);
    let me = f.me.clone();
    assert!(f.kms.encrypt(&me, &id, &[1u8; 4096], &EncryptionContext::new()).is_ok());
    let err = f.kms.encrypt(&me, &id, &[1u8; 4097], &EncryptionContext::new()).err().unwrap();
    assert!(err.to_string().contains("generate-data-key"), "{err}");
}

/// A key ring over the fixture's keystore as a mount opens one: its own connection, its own
/// audit writer (kept alive by the caller).
fn mount_ring(f: &Fixture) -> (kmsfs::kms::keyring::KeyRing, kmsfs::kms::audit_writer::AuditWriter) {
    let ks = Keystore::open(&f.path).unwrap();
    let root = ks.unlock(b"pw").unwrap();
    let audit_kms = Kms::new(ks, root.clone(), f.clock.clone(), &f.me).unwrap();
    let (sink, writer) = kmsfs::kms::audit_writer::AuditWriter::spawn(audit_kms, f.me.clone()).unwrap();
    (kmsfs::kms::keyring::KeyRing::open(&f.path, root, f.clock.clone(), sink).unwrap(), writer)
}

#[test]
fn a_mounts_key_ring_sees_each_commit_of_another_connection_at_its_next_check() {
    // The ring skips `PRAGMA data_version` while the keystore's WAL-index header is as it
    // was at the last look; every disable and enable committed elsewhere must still be seen
    // by the very next check.
    use kmsfs::kms::keyring::Access;
    let mut f = fixture();
    let id = f.key(Some("alias/ring"));
    let (ring, _writer) = mount_ring(&f);
    let me = f.me.clone();
    let access = Access { caller: &me, path: "/a/file" };
    for round in 0..5 {
        ring.check_key(access, &id, "Decrypt").unwrap();
        ring.check_key(access, &id, "Decrypt").unwrap(); // nothing committed in between
        f.kms.disable_key(&me, &id).unwrap();
        let refused = ring.check_key(access, &id, "Decrypt");
        assert!(
            matches!(refused, Err(Error::KeyState(_))),
            "round {round}: the disable was not seen: {refused:?}"
        );
        f.kms.enable_key(&me, &id).unwrap();
    }
}

#[test]
fn a_policy_naming_groups_is_seen_by_the_very_next_groups_question() {
    // The mount asks whether callers' groups are needed before it checks a key; that answer
    // must already reflect a policy committed by another connection just before.
    use kmsfs::kms::keyring::Access;
    let mut f = fixture();
    let id = f.key(Some("alias/groups"));
    let (ring, _writer) = mount_ring(&f);
    let me = f.me.clone();
    ring.check_key(Access { caller: &me, path: "/x" }, &id, "Decrypt").unwrap();
    assert!(!ring.uses_groups(), "no policy names a group yet");
    let policy = format!(
        r#"{{"Statement": [{{"Effect": "Allow", "Principal": {{"Uid": [{}]}}, "Action": "kms:*"}},
            {{"Effect": "Allow", "Principal": {{"Group": ["2000"]}}, "Action": "kms:Decrypt"}}]}}"#,
        me.uid
    );
    f.kms.put_key_policy(&me, &id, &policy).unwrap();
    assert!(ring.uses_groups(), "the policy just committed names a group");
}

/// A keystore made by kmsfs before per-purpose keys (tests/data/legacy-keystore.db: key
/// alias/legacy with two versions, a blob sealed under each, six audit events). Opening it
/// upgrades it: its blobs still decrypt, its audit chain still verifies (old events under the
/// old audit key, new ones under the derived one), and no version stays sealed by the root key.
#[test]
fn a_keystore_from_before_per_purpose_keys_opens_upgrades_and_still_verifies() {
    use kmsfs::kms::root_keys;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.db");
    std::fs::copy("tests/data/legacy-keystore.db", &path).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let me = Principal::current_process();
    let ks = Keystore::open(&path).unwrap();
    let root = ks.unlock(b"legacy passphrase").unwrap();
    assert!(!root_keys::is_derived(ks.conn()).unwrap());
    let mut kms = Kms::new(ks, root.clone(), clock.clone(), &me).unwrap();
    assert!(root_keys::is_derived(kms.keystore().conn()).unwrap());

    let context = ctx(&["app=legacy"]);
    for (file, text) in [("v1", "sealed under version 1"), ("v2", "sealed under version 2")] {
        let blob = std::fs::read(format!("tests/data/legacy-{file}.bin")).unwrap();
        let out = kms.decrypt(&me, &blob, &context, Some("alias/legacy")).unwrap();
        assert_eq!(&out.plaintext[..], text.as_bytes());
    }
    let report = kms.verify_audit().unwrap();
    assert!(report.intact, "{:?}", report.problems);
    let upgrade = kms.audit_events(&AuditFilter::default()).unwrap();
    assert_eq!(upgrade[6].event.operation, "UpgradeKeyDerivation", "after the six old events");
    assert!(upgrade[6].event.reason.contains("3 key versions re-sealed"), "{}", upgrade[6].event.reason);

    // New work, another open (no second upgrade), and the chain still holds.
    let id = kms.resolve_key_id("alias/legacy").unwrap();
    kms.rotate_key(&me, &id).unwrap();
    let blob = kms.encrypt(&me, &id, b"after", &context).unwrap();
    // Every version (the re-sealed ones and a new one) is now sealed by the derived key, none by the root key itself.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions_key = kmsfs::crypto::hkdf_subkey(&root, root_keys::VERSIONS_LABEL);
    let mut stmt = conn.prepare("SELECT key_id, version, material FROM key_versions").unwrap();
    let rows: Vec<(String, u32, Vec<u8>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    for (key_id, version, sealed) in &rows {
        let aad = [b"kmsfs-key-version\0".as_slice(), key_id.as_bytes(), &version.to_be_bytes()].concat();
        assert!(
            kmsfs::crypto::open(&root, &aad, sealed).is_err(),
            "{key_id} v{version} sealed by the root key"
        );
        assert!(kmsfs::crypto::open(&versions_key, &aad, sealed).is_ok());
    }

    drop(kms);
    let ks = Keystore::open(&path).unwrap();
    let mut kms = Kms::new(ks, ks_root(&path), clock, &me).unwrap();
    assert_eq!(&kms.decrypt(&me, &blob, &context, None).unwrap().plaintext[..], b"after");
    let events = kms.audit_events(&AuditFilter::default()).unwrap();
    assert_eq!(events.iter().filter(|e| e.event.operation == "UpgradeKeyDerivation").count(), 1);
    assert!(kms.verify_audit().unwrap().intact);

    // The point where the chain changes keys is covered: moving it is reported.
    conn.execute("UPDATE meta SET value = CAST('5' AS BLOB) WHERE name = 'audit_legacy_until'", []).unwrap();
    assert!(!kms.verify_audit().unwrap().intact, "an edited switch-over point is reported");
}

fn ks_root(path: &std::path::Path) -> kmsfs::crypto::SecretKey {
    Keystore::open(path).unwrap().unlock(b"legacy passphrase").unwrap()
}

#[test]
fn a_new_keystore_uses_per_purpose_keys_from_the_start() {
    let mut f = fixture();
    assert!(kmsfs::kms::root_keys::is_derived(f.kms.keystore().conn()).unwrap());
    f.key(None);
    let events = f.kms.audit_events(&AuditFilter::default()).unwrap();
    assert!(events.iter().all(|e| e.event.operation != "UpgradeKeyDerivation"));
    assert!(f.kms.verify_audit().unwrap().intact);
}

#[test]
fn managed_keys_let_everyone_use_but_only_their_creator_re_wrap_even_in_old_keystores() {
    let mut f = fixture();
    let me = f.me.clone();
    let id = f.kms.create_managed_key(&me, "vol", "a volume's key").unwrap();
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    let policy_of = |conn: &rusqlite::Connection| -> String {
        conn.query_row("SELECT policy FROM keys WHERE key_id = ?1", [&id], |r| r.get(0)).unwrap()
    };
    let check = |text: &str| {
        let policy = kmsfs::kms::policy::Policy::parse(text).unwrap();
        let alice = Principal::from_ids(1001, 1001, vec![], None);
        let allowed = |who: &Principal, action: &str| {
            let none = EncryptionContext::new();
            let req = kmsfs::kms::policy::Request { caller: who, action, context: &none, path: None, now: 0 };
            matches!(policy.decide(&[], &req), kmsfs::kms::policy::Decision::Allow(_))
        };
        assert!(allowed(&alice, "kms:Decrypt") && allowed(&alice, "kms:GenerateDataKey"));
        assert!(!allowed(&alice, "kms:ReEncryptFrom") && !allowed(&alice, "kms:ReEncryptTo"));
        assert!(allowed(&me, "kms:ReEncryptFrom") && allowed(&me, "kms:ReEncryptTo"));
    };
    check(&policy_of(&conn));
    // A keystore from before stored the old default, which let everyone re-wrap.
    conn.execute(
        "UPDATE keys SET policy = ?1 WHERE key_id = ?2",
        [kmsfs::kms::policy::Policy::legacy_managed_default(), id.clone()],
    )
    .unwrap();
    f.reopen();
    check(&policy_of(&conn));
}

/// An API caller whose only leave is a grant: what the console would offer it
/// (`Kms::permits`) is exactly what the API then lets it do, action by action, because both
/// ask the same authorization function.
#[test]
fn the_console_offers_a_grant_only_caller_exactly_what_the_api_lets_it_do() {
    use kmsfs::kms::access::GrantOptions;
    use kmsfs::kms::principal::{Remote, NO_UID};

    let mut f = fixture();
    let id = f.key(Some("alias/shared"));
    let me = f.me.clone();
    let account = f.kms.keystore().account_id().unwrap();
    let arn = format!("arn:aws:iam::{account}:user/bob");
    let bob = Principal {
        uid: NO_UID,
        gid: NO_UID,
        groups: Vec::new(),
        user: "iam:bob".into(),
        pid: None,
        remote: Some(Arc::new(Remote {
            arn: Some(arn.clone()),
            account,
            access_key_id: Some("AKIATESTBOB".into()),
            source: "127.0.0.1:1".into(),
            unix: false,
        })),
    };
    let grant = GrantOptions {
        grantee: arn,
        operations: vec!["DescribeKey".into(), "CreateGrant".into()],
        ..Default::default()
    };
    let (grant_id, _) = f.kms.create_grant(&me, &id, &grant).unwrap();

    let actions = ["DescribeKey", "CreateGrant", "DisableKey", "ScheduleKeyDeletion", "RevokeGrant"];
    let offered: Vec<&str> =
        actions.iter().copied().filter(|a| f.kms.permits(&bob, &id, &format!("kms:{a}")).unwrap()).collect();
    assert_eq!(offered, ["DescribeKey", "CreateGrant"], "the grant's operations, nothing of the policy's");

    // A grantee passes on at most its own grant's operations.
    let other = GrantOptions {
        grantee: "user:nobody".into(),
        operations: vec!["DescribeKey".into()],
        ..Default::default()
    };
    for action in actions {
        let result = match action {
            "DescribeKey" => f.kms.describe_key(&bob, &id).map(drop),
            "CreateGrant" => f.kms.create_grant(&bob, &id, &other).map(drop),
            "DisableKey" => f.kms.disable_key(&bob, &id),
            "ScheduleKeyDeletion" => f.kms.schedule_key_deletion(&bob, &id, 7).map(drop),
            "RevokeGrant" => f.kms.revoke_grant(&bob, &id, &grant_id),
            _ => unreachable!(),
        };
        let allowed = !matches!(result, Err(Error::AccessDenied(_)));
        assert_eq!(allowed, offered.contains(&action), "{action}: the API said {result:?}");
        if allowed {
            result.unwrap_or_else(|e| panic!("{action}: {e}"));
        }
    }
}
