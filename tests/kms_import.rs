//! Imported key material through the command line and under a live mount: `key create
//! --origin EXTERNAL`, `key import` (the whole dance), the manual flow with the openssl CLI
//! (`get-parameters-for-import`, `openssl pkeyutl`, `import-material`), deletion and
//! re-import, ValidTo passing while a volume is mounted (ENOKEY at the next open, no remount),
//! the test clock for token expiry and `kmsfs status`'s 30-day warning, and refusals that
//! change nothing.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::{errno, Mounted};
use common::{assert_failure, assert_success, TestEnv};

const ENOKEY: i32 = 126;

fn open_errno(path: &Path) -> i32 {
    match File::open(path) {
        Ok(_) => 0,
        Err(e) => errno(&e),
    }
}

fn write_material(env: &TestEnv, name: &str) -> std::path::PathBuf {
    let path = env.path(name);
    fs::write(&path, kmsfs::crypto::random_bytes::<32>()).unwrap();
    path
}

fn state(env: &TestEnv, key: &str) -> String {
    env.json(&["key", "describe", key])["KeyState"].as_str().unwrap().to_string()
}

/// An EXTERNAL key `alias/byok` and a directory `byok` of the mount under it.
fn byok_dir(m: &Mounted) {
    m.ok(&["key", "create", "--origin", "EXTERNAL", "--alias", "alias/byok"]);
    fs::create_dir(m.path("byok")).unwrap();
}

#[test]
fn an_external_key_takes_material_from_key_import_and_refuses_other_material() {
    let env = TestEnv::new();
    let id = env.ok(&["key", "create", "--origin", "EXTERNAL", "--alias", "alias/byok"]).trim().to_string();
    let meta = env.json(&["key", "describe", "alias/byok"]);
    assert_eq!(
        (meta["KeyState"].as_str(), meta["Origin"].as_str()),
        (Some("PendingImport"), Some("EXTERNAL"))
    );
    let refused =
        assert_failure(&env.run_with_stdin(&["encrypt", "--key", "alias/byok"], b"x"), &["encrypt"], 4);
    assert!(refused.contains("pending import"), "{refused}");

    let material = write_material(&env, "key.bin");
    let out =
        env.ok(&["key", "import", "alias/byok", "--material", material.to_str().unwrap(), "--no-expiry"]);
    assert!(out.contains("Enabled"), "{out}");
    let blob = env.run_with_stdin(&["encrypt", "--key", "alias/byok"], b"own key");
    assert_success(&blob, &["encrypt"]);

    let other = write_material(&env, "other.bin");
    let wrong =
        env.fails(&["key", "import", "alias/byok", "--material", other.to_str().unwrap(), "--no-expiry"], 1);
    assert!(wrong.contains("not the key material previously imported"), "{wrong}");
    let short = env.path("short.bin");
    fs::write(&short, [1u8; 16]).unwrap();
    let wrong =
        env.fails(&["key", "import", "alias/byok", "--material", short.to_str().unwrap(), "--no-expiry"], 1);
    assert!(wrong.contains("32 bytes"), "{wrong}");
    // Expiry must be said, and be within AWS's limits.
    let m = material.to_str().unwrap();
    env.fails(&["key", "import", "alias/byok", "--material", m], 2);
    let far = env.fails(&["key", "import", "alias/byok", "--material", m, "--valid-to", "400days"], 1);
    assert!(far.contains("365 days"), "{far}");
    assert_eq!(state(&env, &id), "Enabled");
    let decrypted = env.run_with_stdin(&["decrypt"], &blob.stdout);
    assert_success(&decrypted, &["decrypt"]);
    assert_eq!(decrypted.stdout, b"own key");

    // Imported keys do not rotate by themselves.
    let auto = env.fails(&["key", "rotation", "enable", "alias/byok"], 1);
    assert!(auto.contains("never rotates automatically"), "{auto}");
    // Nor is the material ever printed.
    let trail = env.ok(&["--json", "audit"]);
    let hex_material: String = fs::read(&material).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!trail.contains(&hex_material));
}

#[test]
fn the_manual_flow_with_openssl_pkeyutl_imports() {
    let env = TestEnv::new();
    env.ok(&["key", "create", "--origin", "EXTERNAL", "--alias", "alias/byok"]);
    let (der, token, wrapped) = (env.path("wrapping.der"), env.path("token.bin"), env.path("key.wrapped"));
    env.ok(&[
        "key",
        "get-parameters-for-import",
        "alias/byok",
        "--wrapping-algorithm",
        "RSAES_OAEP_SHA_256",
        "--wrapping-key-spec",
        "RSA_2048",
        "--public-key-out",
        der.to_str().unwrap(),
        "--token-out",
        token.to_str().unwrap(),
    ]);
    let material = write_material(&env, "key.bin");
    let out = Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
        .arg(&der)
        .args([
            "-keyform",
            "DER",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-in",
        ])
        .arg(&material)
        .arg("-out")
        .arg(&wrapped)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let import = |token: &Path| {
        env.run(&[
            "key",
            "import-material",
            "alias/byok",
            "--encrypted-material",
            wrapped.to_str().unwrap(),
            "--import-token",
            token.to_str().unwrap(),
            "--no-expiry",
        ])
    };
    // An edited token is refused, and changes nothing.
    let mut edited = fs::read(&token).unwrap();
    edited[20] ^= 1;
    let bad = env.path("edited.bin");
    fs::write(&bad, &edited).unwrap();
    let refused = assert_failure(&import(&bad), &["import-material"], 1);
    assert!(refused.contains("invalid import token"), "{refused}");
    assert_eq!(state(&env, "alias/byok"), "PendingImport");
    // A day later the token has expired (the test clock).
    let late = env
        .cmd_at(
            86_400 + 60,
            &[
                "key",
                "import-material",
                "alias/byok",
                "--encrypted-material",
                wrapped.to_str().unwrap(),
                "--import-token",
                token.to_str().unwrap(),
                "--no-expiry",
            ],
        )
        .output()
        .unwrap();
    let late = assert_failure(&late, &["import-material (a day later)"], 1);
    assert!(late.contains("expired"), "{late}");
    assert_success(&import(&token), &["import-material"]);
    assert_eq!(state(&env, "alias/byok"), "Enabled");
}

#[test]
fn expiry_and_deletion_under_a_live_mount_refuse_the_next_open_without_remount() {
    let m = Mounted::new();
    byok_dir(&m);
    let material = write_material(&m.env, "key.bin");
    let mat = material.to_str().unwrap();
    m.ok(&["key", "import", "alias/byok", "--material", mat, "--valid-to", "6s"]);
    let valid_until = Instant::now() + Duration::from_secs(6);
    m.ok(&["dir", "set-key", m.path("byok").to_str().unwrap(), "alias/byok"]);
    fs::write(m.path("byok/secret.txt"), b"imported").unwrap();
    fs::write(m.path("plain.txt"), b"other key").unwrap();
    assert_eq!(fs::read(m.path("byok/secret.txt")).unwrap(), b"imported");
    let held = File::open(m.path("byok/secret.txt")).unwrap();

    // Nothing is committed when ValidTo passes: the mount's key ring goes by its clock.
    std::thread::sleep(valid_until.saturating_duration_since(Instant::now()) + Duration::from_millis(1500));
    assert_eq!(open_errno(&m.path("byok/secret.txt")), ENOKEY, "open after expiry");
    assert!(File::create(m.path("byok/new.txt")).is_err(), "create after expiry");
    assert_eq!(fs::read(m.path("plain.txt")).unwrap(), b"other key", "other keys are untouched");
    // The next command deletes the material for good and says so.
    assert_eq!(state(&m.env, "alias/byok"), "PendingImport");
    let rotations = m.json(&["key", "rotations", "alias/byok"]);
    assert_eq!(rotations[0]["MaterialPresent"], false);

    m.ok(&["key", "import", "alias/byok", "--material", mat, "--no-expiry"]);
    assert_eq!(fs::read(m.path("byok/secret.txt")).unwrap(), b"imported", "back without a remount");

    m.ok(&["key", "delete-imported-material", "alias/byok"]);
    assert_eq!(open_errno(&m.path("byok/secret.txt")), ENOKEY, "open after deletion");
    m.ok(&["key", "import", "alias/byok", "--material", mat, "--no-expiry"]);
    assert_eq!(fs::read(m.path("byok/secret.txt")).unwrap(), b"imported");
    drop(held);
}

#[test]
fn status_warns_of_material_expiring_within_30_days() {
    let env = TestEnv::new();
    env.ok(&["key", "create", "--origin", "EXTERNAL", "--alias", "alias/soon"]);
    env.ok(&["key", "create", "--origin", "EXTERNAL", "--alias", "alias/later"]);
    let material = write_material(&env, "a.bin");
    env.ok(&[
        "key",
        "import",
        "alias/soon",
        "--material",
        material.to_str().unwrap(),
        "--valid-to",
        "20days",
    ]);
    let material = write_material(&env, "b.bin");
    env.ok(&[
        "key",
        "import",
        "alias/later",
        "--material",
        material.to_str().unwrap(),
        "--valid-to",
        "45days",
    ]);
    let status = env.ok(&["status"]);
    assert!(status.contains("imported key material expires within 30 days"), "{status}");
    assert!(status.contains("alias/soon") && status.contains("in 19 days"), "{status}");
    let json = env.json(&["status"]);
    let expiring = json["ExpiringKeyMaterial"].as_array().unwrap();
    assert_eq!(expiring.len(), 1, "{json}");
    // Twenty days later the first has expired and the second is within 30 days.
    let later = env.cmd_at(20 * 86_400 + 60, &["--json", "status"]).output().unwrap();
    assert_success(&later, &["status (20 days later)"]);
    let later: serde_json::Value = serde_json::from_slice(&later.stdout).unwrap();
    let expiring = later["ExpiringKeyMaterial"].as_array().unwrap();
    assert_eq!(expiring.len(), 1, "{later}");
    let soon_id = env.json(&["key", "describe", "alias/soon"])["KeyId"].clone();
    assert_ne!(expiring[0]["KeyId"], soon_id);
    assert_eq!(state(&env, "alias/soon"), "PendingImport");
    assert_eq!(state(&env, "alias/later"), "Enabled");
}

#[test]
fn aes_key_wrap_with_padding_agrees_with_openssl_enc_both_ways() {
    use kmsfs::kms::import_wrap::aes_kwp;
    let dir = tempfile::tempdir().unwrap();
    let key = kmsfs::crypto::random_bytes::<32>();
    let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    for len in [1usize, 7, 8, 32, 121, 1217] {
        let material: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let (plain, wrapped) = (dir.path().join("plain"), dir.path().join("wrapped"));
        // Ours, unwrapped by openssl.
        fs::write(&wrapped, aes_kwp(&key, &material, true).unwrap()).unwrap();
        let out = Command::new("openssl")
            .args(["enc", "-d", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K", &key_hex, "-in"])
            .arg(&wrapped)
            .arg("-out")
            .arg(&plain)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(fs::read(&plain).unwrap(), material, "{len} bytes");
        // Openssl's, unwrapped by ours.
        fs::write(&plain, &material).unwrap();
        let out = Command::new("openssl")
            .args(["enc", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K", &key_hex, "-in"])
            .arg(&plain)
            .arg("-out")
            .arg(&wrapped)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            aes_kwp(&key, &fs::read(&wrapped).unwrap(), false).unwrap().as_slice(),
            material.as_slice()
        );
    }
}
