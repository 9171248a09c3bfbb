//! Asymmetric and HMAC keys through the library: a key created by one connection is used by
//! a key ring opened before it, and the deletion window destroys a private key and an HMAC
//! key like any key's material (gone from the file, refused by the ring).

use std::sync::Arc;

use kmsfs::crypto::KdfParams;
use kmsfs::keystore::Keystore;
use kmsfs::kms::asymmetric::{KeySpec, KeyUsage};
use kmsfs::kms::audit_writer::AuditWriter;
use kmsfs::kms::keyring::KeyRing;
use kmsfs::kms::lifecycle::CreateKeyOptions;
use kmsfs::kms::{Kms, ManualClock, Principal};
use kmsfs::Error;

const FAST_KDF: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

fn create(kms: &mut Kms, me: &Principal, spec: &str, usage: KeyUsage) -> String {
    let opts =
        CreateKeyOptions { key_spec: KeySpec::parse(spec).unwrap(), key_usage: usage, ..Default::default() };
    kms.create_key(me, &opts).unwrap()
}

#[test]
fn asymmetric_and_hmac_keys_are_shredded_by_the_deletion_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ks.db");
    let (ks, root) = Keystore::create(&path, b"pw", FAST_KDF).unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let me = Principal::current_process();
    let mut kms = Kms::new(ks, root.clone(), clock.clone(), &me).unwrap();
    let writer_kms = Kms::new(Keystore::open(&path).unwrap(), root.clone(), clock.clone(), &me).unwrap();
    let (sink, _writer) = AuditWriter::spawn(writer_kms, me.clone()).unwrap();
    let ring = KeyRing::open(&path, root, clock.clone(), sink).unwrap();

    // Created after the ring opened: the ring picks them up at its next look.
    let signer = create(&mut kms, &me, "ECC_NIST_P256", KeyUsage::SignVerify);
    let mac_key = create(&mut kms, &me, "HMAC_256", KeyUsage::GenerateVerifyMac);
    let (_, sig) = ring.sign(&me, &signer, "ECDSA_SHA_256", b"m", false).unwrap();
    ring.verify(&me, &signer, "ECDSA_SHA_256", b"m", false, &sig).unwrap();
    let (_, mac) = ring.generate_mac(&me, &mac_key, "HMAC_SHA_256", b"m").unwrap();
    let public = kms.get_public_key(&me, &signer).unwrap().public_key;
    assert_eq!(ring.get_public_key(&me, &signer).unwrap().public_key, public);
    assert_eq!(kms.describe_key(&me, &signer).unwrap().key_spec, "ECC_NIST_P256");
    assert_eq!(kms.describe_key(&me, &mac_key).unwrap().key_usage, "GENERATE_VERIFY_MAC");

    // Symmetric operations refuse them through the CLI's path too.
    let err = kms.encrypt(&me, &signer, b"x", &Default::default()).err().unwrap();
    assert_eq!(kmsfs::kms::aws_errors::error_name(&err), "InvalidKeyUsageException", "{err}");
    let err = kms.rotate_key(&me, &mac_key).err().unwrap();
    assert_eq!(kmsfs::kms::aws_errors::error_name(&err), "UnsupportedOperationException", "{err}");

    for key in [&signer, &mac_key] {
        kms.schedule_key_deletion(&me, key, 7).unwrap();
    }
    assert!(matches!(ring.sign(&me, &signer, "ECDSA_SHA_256", b"m", false), Err(Error::KeyState(_))));
    clock.advance_days(7);
    let mut kms =
        Kms::new(Keystore::open(&path).unwrap(), kms.root_key().clone(), clock.clone(), &me).unwrap();
    assert_eq!(kms.housekeeping().destroyed.len(), 2);

    let conn = rusqlite::Connection::open(&path).unwrap();
    for key in [&signer, &mac_key] {
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM key_versions WHERE key_id = ?1 AND material IS NOT NULL",
                [key],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "the material of {key} survived its deletion window");
    }
    assert!(ring.sign(&me, &signer, "ECDSA_SHA_256", b"m", false).is_err());
    assert!(ring.verify_mac(&me, &mac_key, "HMAC_SHA_256", b"m", &mac).is_err());
    assert!(ring.get_public_key(&me, &signer).is_err());
    assert!(kms.get_public_key(&me, &signer).is_err());
}
