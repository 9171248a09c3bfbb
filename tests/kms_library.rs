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

#[test]
fn a_mounts_key_ring_sees_each_commit_of_another_connection_at_its_next_check() {
    // The ring skips `PRAGMA data_version` while the keystore's WAL-index header is as it
    // was at the last look; every disable and enable committed elsewhere must still be seen
    // by the very next check.
    use kmsfs::kms::audit_writer::AuditWriter;
    use kmsfs::kms::keyring::{Access, KeyRing};
    let mut f = fixture();
    let id = f.key(Some("alias/ring"));
    let ks = Keystore::open(&f.path).unwrap();
    let root = ks.unlock(b"pw").unwrap();
    let audit_kms = Kms::new(ks, root.clone(), f.clock.clone(), &f.me).unwrap();
    let (sink, _writer) = AuditWriter::spawn(audit_kms, f.me.clone()).unwrap();
    let ring = KeyRing::open(&f.path, root, f.clock.clone(), sink).unwrap();
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
