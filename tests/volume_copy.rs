//! `kmsfs volume copy`: the snapshot copy to another key or keystore. Ciphertext blocks are
//! copied as they are, every wrapped key is re-made for the destination, the source stays
//! untouched, and the copy mounts with the destination keystore only.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::mount::{walk, MountGuard, Mounted};
use common::{TestEnv, PASSPHRASE};

/// Every backing file's bytes, by path relative to the cipher dir.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    walk(dir, &mut |p, m| {
        if m.is_file() {
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), fs::read(p).unwrap());
        }
    });
    out
}

/// Every plaintext item of a mounted tree: files by content, symlinks by target, dirs.
fn plain_tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(root, &mut |p, m| {
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let what = if m.file_type().is_symlink() {
            format!("-> {}", fs::read_link(p).unwrap().display())
        } else if m.is_file() {
            format!("{:x?} mode {:o}", sha(&fs::read(p).unwrap()), m.mode() & 0o7777)
        } else {
            format!("dir mode {:o}", m.mode() & 0o7777)
        };
        out.insert(rel, what);
    });
    out
}

fn sha(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn populate(m: &Mounted) {
    fs::create_dir_all(m.path("finance/2026")).unwrap();
    m.ok(&["key", "create", "--alias", "alias/finance"]);
    m.ok(&["dir", "set-key", m.path("finance").to_str().unwrap(), "alias/finance"]);
    fs::write(m.path("finance/2026/q1.csv"), common::mount::pattern(3, 50_000)).unwrap();
    fs::write(m.path(&"long".repeat(60)), b"long name").unwrap();
    fs::write(m.path("notes.txt"), b"notes").unwrap();
    fs::hard_link(m.path("notes.txt"), m.path("notes-link.txt")).unwrap();
    std::os::unix::fs::symlink("finance/2026/q1.csv", m.path("latest")).unwrap();
    // PATH_MAX - 1 bytes: stored beside the symlink, since its encrypted form is longer.
    let long_target = format!("{}finance/2026/q1.csv", "./".repeat((4095 - 19) / 2));
    std::os::unix::fs::symlink(&long_target, m.path("latest-long")).unwrap();
    let f = fs::File::create(m.path("sparse.img")).unwrap();
    f.set_len(64 << 20).unwrap();
    fs::set_permissions(m.path("notes.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let status = std::process::Command::new("setfattr")
        .args(["-n", "user.color", "-v", "blue", m.path("notes.txt").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn getfattr(path: &Path, name: &str) -> String {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mounts `cipher` at `mnt` with `env`'s keystore, in the background.
fn mount_with(env: &TestEnv, cipher: &Path, mnt: &Path) -> MountGuard {
    fs::create_dir_all(mnt).unwrap();
    let guard = MountGuard::new(&fs::canonicalize(mnt).unwrap());
    env.ok(&["mount", cipher.to_str().unwrap(), mnt.to_str().unwrap()]);
    guard
}

#[test]
fn a_copy_to_another_keystore_mounts_there_only_and_the_source_is_untouched() {
    let mut m = Mounted::new();
    populate(&m);
    let expected = plain_tree(m.mnt());
    m.unmount();
    let source_before = snapshot(m.cipher());
    let offsite = TestEnv::new();
    let offsite_key = offsite.create_key("alias/offsite");
    let pass_file = offsite.path("pass");
    fs::write(&pass_file, PASSPHRASE).unwrap();
    let dst = offsite.path("copy.enc");
    let report = m.json(&[
        "volume",
        "copy",
        m.cipher().to_str().unwrap(),
        dst.to_str().unwrap(),
        "--to-keystore",
        offsite.keystore.to_str().unwrap(),
        "--to-key",
        "alias/offsite",
        "--to-passphrase-file",
        pass_file.to_str().unwrap(),
    ]);
    assert_eq!(report["Files"], 4, "{report}");
    assert_eq!(report["Symlinks"], 2);
    assert_eq!(report["DefaultKeyId"], offsite_key.as_str());
    assert_eq!(snapshot(m.cipher()), source_before, "the source is only read");

    // Blocks are the source's own bytes; only headers differ.
    let copy = snapshot(&dst);
    let q1 = source_before.iter().find(|(_, b)| b.len() > 50_000).unwrap();
    let copied = copy.get(q1.0).expect("same backing names");
    assert_eq!(copied[288..], q1.1[288..], "ciphertext blocks copied as they are");
    assert_ne!(copied[..288], q1.1[..288], "the header is wrapped for the destination");
    let sparse = walk_find(&dst, |m| m.len() > 60 << 20);
    assert!(fs::metadata(&sparse).unwrap().blocks() * 512 < 1 << 20, "holes stay holes");

    // It mounts with the destination keystore and reads the same tree...
    let mnt = offsite.path("mnt");
    let _guard = mount_with(&offsite, &dst, &mnt);
    assert_eq!(plain_tree(&mnt), expected);
    assert_eq!(getfattr(&mnt.join("notes.txt"), "user.color"), "blue");
    assert_eq!(
        fs::metadata(mnt.join("notes.txt")).unwrap().ino(),
        fs::metadata(mnt.join("notes-link.txt")).unwrap().ino()
    );
    let info = offsite.json(&["file", "info", mnt.join("finance/2026/q1.csv").to_str().unwrap()]);
    assert_eq!(info["KeyId"], offsite_key.as_str(), "every file is under the destination key");
    // ...and not with the original one.
    offsite.ok(&["umount", mnt.to_str().unwrap()]);
    let out = m.kmsfs(&["mount", dst.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to keystore"), "{out:?}");
    assert!(!common::mount::is_mounted(&fs::canonicalize(&mnt).unwrap()));
}

fn walk_find(dir: &Path, want: impl Fn(&fs::Metadata) -> bool) -> PathBuf {
    let mut found = None;
    walk(dir, &mut |p, m| {
        if m.is_file() && want(m) {
            found = Some(p.to_path_buf());
        }
    });
    found.expect("a matching backing file")
}

#[test]
fn a_copy_under_another_key_does_not_depend_on_the_source_keys() {
    let mut m = Mounted::new();
    populate(&m);
    let expected = plain_tree(m.mnt());
    m.unmount();
    let backup = m.ok(&["key", "create", "--alias", "alias/backup"]).trim().to_string();
    let dst = m.env.path("backup.enc");
    m.ok(&[
        "volume",
        "copy",
        m.cipher().to_str().unwrap(),
        dst.to_str().unwrap(),
        "--to-key",
        "alias/backup",
    ]);
    m.ok(&["key", "disable", "alias/vol"]);
    m.ok(&["key", "disable", "alias/finance"]);
    let mnt = m.env.path("backup-mnt");
    let _guard = mount_with(&m.env, &dst, &mnt);
    assert_eq!(plain_tree(&mnt), expected, "readable with the source's keys disabled");
    let info = m.json(&["file", "info", mnt.join("finance/2026/q1.csv").to_str().unwrap()]);
    assert_eq!(info["KeyId"], backup.as_str());
    let dir = m.json(&["dir", "get-key", mnt.join("finance").to_str().unwrap()]);
    assert_eq!(dir["KeyId"], backup.as_str());
}

#[test]
fn refusals_are_clear_and_change_nothing() {
    let m = Mounted::new();
    fs::write(m.path("a"), b"a").unwrap();
    let src = m.cipher().to_str().unwrap().to_string();
    let dst = m.env.path("dst");
    let out = m.kmsfs(&["volume", "copy", &src, dst.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is mounted"), "{out:?}");
    let mut m = m;
    m.unmount();
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("x"), b"x").unwrap();
    let out = m.kmsfs(&["volume", "copy", &src, dst.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"), "{out:?}");
    let inside = m.cipher().join("sub");
    let out = m.kmsfs(&["volume", "copy", &src, inside.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlap"), "{out:?}");
    assert!(!inside.exists());
    let other = TestEnv::new();
    let fresh = m.env.path("fresh");
    let out = m.kmsfs(&[
        "volume",
        "copy",
        &src,
        fresh.to_str().unwrap(),
        "--to-keystore",
        other.keystore.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to-key is required"), "{out:?}");
    let out = m.kmsfs(&["volume", "copy", &src, fresh.to_str().unwrap(), "--to-key", "alias/nope"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(!fresh.join("kmsfs.volume").exists());
}

/// Without `--to-key` a copy keeps the source's keys; the volume names key goes under the key
/// that really wraps it, not the `default_key_id` of `kmsfs.volume`, which nothing
/// authenticates: an edit there must not choose the copy's key.
#[test]
fn a_copy_without_to_key_ignores_an_edited_default_key_id() {
    let mut m = Mounted::new();
    populate(&m);
    m.unmount();
    let theirs = m.env.create_key("alias/theirs");
    let config_path = m.cipher().join("kmsfs.volume");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    config["default_key_id"] = serde_json::Value::String(theirs.clone());
    fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let dst = m.env.path("copy.enc");
    let report = m.json(&["volume", "copy", m.cipher().to_str().unwrap(), dst.to_str().unwrap()]);
    assert_eq!(report["DefaultKeyId"], m.key_id.as_str(), "{report}");
    let copied: serde_json::Value =
        serde_json::from_slice(&fs::read(dst.join("kmsfs.volume")).unwrap()).unwrap();
    assert_eq!(copied["default_key_id"], m.key_id.as_str());
    // The copy's names key opens under the source's real key, and not under the edited one.
    m.ok(&["key", "disable", "alias/theirs"]);
    let mnt = m.env.path("copy-mnt");
    let _guard = mount_with(&m.env, &dst, &mnt);
    assert!(mnt.join("notes.txt").exists());
}
