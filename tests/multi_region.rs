//! Multi-Region keys through the command line: two keystores as two regions of one account,
//! `key replicate`, ciphertexts and a volume crossing between them, rotation reaching the
//! replica at `key sync`, the primary switched, the deletion states, and every refusal
//! leaving both keystores as they were.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::mount::{walk, MountGuard};
use common::{TestEnv, PASSPHRASE};

const ACCOUNT: &str = "111122223333";
const DAY: i64 = 86_400;

/// A keystore answering as `region` of ACCOUNT, with a passphrase file beside it.
fn region(name: &str) -> TestEnv {
    let env = TestEnv::new();
    env.ok(&["keystore", "set-identity", "--account-id", ACCOUNT, "--region", name]);
    fs::write(env.path("pass"), PASSPHRASE).unwrap();
    env
}

/// `--replica-keystore PATH --replica-passphrase-file FILE` naming `other`.
fn replica_args(other: &TestEnv) -> [String; 4] {
    [
        "--replica-keystore".into(),
        other.keystore.display().to_string(),
        "--replica-passphrase-file".into(),
        other.path("pass").display().to_string(),
    ]
}

fn with<'a>(args: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    args.iter().copied().chain(extra.iter().map(String::as_str)).collect()
}

fn mrk(env: &TestEnv, alias: &str) -> String {
    let id = env.ok(&["key", "create", "--multi-region", "--alias", alias]).trim().to_string();
    assert!(id.starts_with("mrk-") && id.len() == 36, "{id}");
    id
}

fn replicate(from: &TestEnv, key: &str, to: &TestEnv) {
    let extra = replica_args(to);
    from.ok(&with(&["key", "replicate", key], &extra));
}

fn sync(from: &TestEnv, to: &TestEnv) -> serde_json::Value {
    let extra = replica_args(to);
    from.json(&with(&["key", "sync"], &extra))
}

fn describe(env: &TestEnv, key: &str) -> serde_json::Value {
    env.json(&["key", "describe", key])
}

fn regions_of(meta: &serde_json::Value) -> (String, Vec<String>) {
    let cfg = &meta["MultiRegion"];
    let regions =
        cfg["Regions"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    (cfg["PrimaryRegion"].as_str().unwrap().to_string(), regions)
}

fn encrypt(env: &TestEnv, key: &str, secret: &[u8]) -> Vec<u8> {
    let out = env.run_with_stdin(&["encrypt", "--key", key], secret);
    common::assert_success(&out, &["encrypt"]);
    out.stdout
}

fn decrypt(env: &TestEnv, blob: &[u8]) -> std::process::Output {
    env.run_with_stdin(&["decrypt"], blob)
}

/// The sealed material of every version of `key_id`, as stored.
fn sealed_versions(env: &TestEnv, key_id: &str) -> Vec<(u32, Vec<u8>)> {
    let conn = rusqlite::Connection::open(&env.keystore).unwrap();
    let mut stmt = conn
        .prepare("SELECT version, material FROM key_versions WHERE key_id = ?1 ORDER BY version")
        .unwrap();
    let rows = stmt.query_map([key_id], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

fn key_ids(env: &TestEnv) -> Vec<String> {
    env.json(&["key", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_replica_has_the_same_id_and_material_and_ciphertexts_cross_both_ways() {
    let (east, west) = (region("eu-west-1"), region("us-west-2"));
    let id = mrk(&east, "alias/orders");
    let extra = replica_args(&west);
    let out = east.json(&with(
        &["key", "replicate", "alias/orders", "--description", "orders, west", "--tag", "team=ops"],
        &extra,
    ));
    assert_eq!(out["KeyId"], id.as_str());
    assert_eq!(out["Description"], "orders, west");

    let (primary, regions) = regions_of(&describe(&west, &id));
    assert_eq!(primary, "eu-west-1");
    assert_eq!(regions, ["eu-west-1", "us-west-2"]);
    assert_eq!(regions_of(&describe(&east, &id)).1, ["eu-west-1", "us-west-2"]);
    // Aliases are each member's own.
    assert!(describe(&west, &id)["Aliases"].as_array().unwrap().is_empty());
    west.fails(&["key", "describe", "alias/orders"], 5);

    // The material is the same (the ciphertexts open), re-sealed for the other keystore.
    let east_sealed = sealed_versions(&east, &id);
    let west_sealed = sealed_versions(&west, &id);
    assert_eq!(east_sealed.len(), 1);
    assert_eq!(west_sealed.len(), 1);
    assert_ne!(east_sealed[0].1, west_sealed[0].1, "sealed under each keystore's own root key");
    let from_east = encrypt(&east, &id, b"made in the east");
    let out = decrypt(&west, &from_east);
    common::assert_success(&out, &["decrypt"]);
    assert_eq!(out.stdout, b"made in the east");
    let from_west = encrypt(&west, &id, b"made in the west");
    assert_eq!(decrypt(&east, &from_west).stdout, b"made in the west");

    // Each member's state is its own: disabling the replica leaves the primary working.
    west.ok(&["key", "disable", &id]);
    assert_eq!(decrypt(&west, &from_east).status.code(), Some(4));
    assert_eq!(decrypt(&east, &from_west).stdout, b"made in the west");
}

#[test]
fn single_region_keys_stay_in_their_keystore() {
    let (east, west) = (region("eu-west-1"), region("us-west-2"));
    let single = east.create_key("alias/local");
    let blob = encrypt(&east, &single, b"regional");
    assert_eq!(decrypt(&west, &blob).status.code(), Some(5), "unknown key in the other region");
    west.fails(&["key", "describe", &single], 5);
    let extra = replica_args(&west);
    let err = east.fails(&with(&["key", "replicate", &single], &extra), 1);
    assert!(err.contains("single-Region"), "{err}");
    assert!(key_ids(&west).is_empty(), "nothing was written in the other keystore");
}

#[test]
fn replicate_refuses_bad_input_and_leaves_nothing_half_written() {
    let (east, west) = (region("eu-west-1"), region("us-west-2"));
    let id = mrk(&east, "alias/m");
    let extra = replica_args(&west);
    let east_config = || regions_of(&describe(&east, &id)).1;

    // A replica that fails midway (its 51st tag is over AWS's limit, after its key row and
    // versions were written) leaves no half key.
    let mut args: Vec<String> = vec!["key".into(), "replicate".into(), id.clone()];
    for i in 0..51 {
        args.extend(["--tag".into(), format!("t{i}=v")]);
    }
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = east.fails(&args, 1);
    assert!(err.contains("limit is 50"), "{err}");
    assert!(key_ids(&west).is_empty(), "no half-written replica");
    assert!(sealed_versions(&west, &id).is_empty(), "no stray version rows either");
    assert_eq!(east_config(), ["eu-west-1"], "the primary does not list a replica that is not there");

    // A malformed policy, a wrong passphrase, another account, the same region: refused
    // before anything is written.
    fs::write(east.path("bad-policy.json"), "{\"Statement\": 3}").unwrap();
    let policy = east.path("bad-policy.json").display().to_string();
    east.fails(&with(&["key", "replicate", &id, "--policy-file", &policy], &extra), 1);
    let wrong = east.path("wrong-pass");
    fs::write(&wrong, "not it").unwrap();
    let wrong_extra = [extra[0].clone(), extra[1].clone(), extra[2].clone(), wrong.display().to_string()];
    east.fails(&with(&["key", "replicate", &id], &wrong_extra), 3);
    let other_account = region("us-east-2");
    other_account.ok(&["keystore", "set-identity", "--account-id", "444455556666"]);
    let err = east.fails(&with(&["key", "replicate", &id], &replica_args(&other_account)), 1);
    assert!(err.contains("one account"), "{err}");
    let same_region = region("eu-west-1");
    let err = east.fails(&with(&["key", "replicate", &id], &replica_args(&same_region)), 1);
    assert!(err.contains("region eu-west-1 too"), "{err}");
    let own = [extra[0].clone(), east.keystore.display().to_string(), extra[2].clone(), extra[3].clone()];
    east.fails(&with(&["key", "replicate", &id], &own), 1);
    east.fails(&with(&["key", "replicate", "alias/nope"], &extra), 5);
    for env in [&west, &other_account, &same_region] {
        assert!(key_ids(env).is_empty(), "nothing written in {}", env.keystore.display());
    }
    assert_eq!(east_config(), ["eu-west-1"]);

    // Then it works; a second time the replica exists already.
    replicate(&east, &id, &west);
    // A crash between the replica's commit and the primary's leaves a replica its primary does
    // not list (the primary's row as it was before): the next sync repairs the list.
    let conn = rusqlite::Connection::open(&east.keystore).unwrap();
    conn.execute(
        "UPDATE multi_region SET regions = '[\"eu-west-1\"]', epoch = epoch - 1 WHERE key_id = ?1",
        [&id],
    )
    .unwrap();
    drop(conn);
    assert_eq!(east_config(), ["eu-west-1"]);
    sync(&east, &west);
    assert_eq!(east_config(), ["eu-west-1", "us-west-2"], "the replica's newer configuration wins");
    let err = east.fails(&with(&["key", "replicate", &id], &extra), 1);
    assert!(err.contains("already exists in region us-west-2"), "{err}");
    // Only a primary replicates: the replica cannot (to a third region).
    let third = region("ap-south-1");
    let err = west.fails(&with(&["key", "replicate", &id], &replica_args(&third)), 1);
    assert!(err.contains("replica"), "{err}");
    assert!(key_ids(&third).is_empty());
    // The refusals are audited in the keystore that refused.
    let events = east.json(&["audit", "--operation", "ReplicateKey"]);
    let refused = events.as_array().unwrap().iter().filter(|e| e["Outcome"] != "Success").count();
    assert!(refused >= 6, "{events}");
}

#[test]
fn rotation_reaches_the_replica_at_sync_and_only_the_primary_rotates() {
    let (east, west) = (region("eu-west-1"), region("us-west-2"));
    let id = mrk(&east, "alias/r");
    replicate(&east, &id, &west);
    east.ok(&["key", "rotate", &id]);
    let after_rotation = encrypt(&east, &id, b"version two");
    assert_eq!(decrypt(&west, &after_rotation).status.code(), Some(7), "the replica lacks version 2");

    let report = sync(&west, &east);
    assert_eq!(report["VersionsCopied"], 1, "{report}");
    assert_eq!(decrypt(&west, &after_rotation).stdout, b"version two");
    assert_eq!(describe(&west, &id)["CurrentKeyVersion"], 2);
    let events = |env: &TestEnv| env.json(&["audit"]).as_array().unwrap().len();
    let (east_events, west_events) = (events(&east), events(&west));
    assert_eq!(sync(&east, &west)["VersionsCopied"], 0, "a second sync has nothing to do");
    assert_eq!((events(&east), events(&west)), (east_events, west_events), "and writes nothing");

    // A keystore holding members cannot move to another region under them.
    let err = west.fails(&["keystore", "set-identity", "--region", "eu-north-1"], 1);
    assert!(err.contains("multi-Region"), "{err}");

    // Rotation settings are shared: set on the primary, shown on the replica.
    east.ok(&["key", "rotation", "enable", &id, "--period-days", "90"]);
    sync(&east, &west);
    let meta = describe(&west, &id);
    assert_eq!(meta["KeyRotationEnabled"], true);
    assert_eq!(meta["RotationPeriodInDays"], 90);
    let err = west.fails(&["key", "rotate", &id], 1);
    assert!(err.contains("replica"), "{err}");
    west.fails(&["key", "rotation", "disable", &id], 1);
    // When the rotation date passes, the replica does not rotate by itself.
    let later = 91 * DAY;
    let out = west.cmd_at(later, &["--json", "key", "describe", &id]).output().unwrap();
    common::assert_success(&out, &["key", "describe"]);
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["CurrentKeyVersion"], 2, "the replica waits for its primary's version");
}

#[test]
fn update_primary_region_switches_both_sides() {
    let (east, west) = (region("eu-west-1"), region("us-west-2"));
    let id = mrk(&east, "alias/p");
    let extra = replica_args(&west);
    let third = region("ap-south-1");
    let err = east.fails(&with(&["key", "update-primary-region", &id], &replica_args(&third)), 5);
    assert!(err.contains("no replica in region ap-south-1"), "{err}");
    replicate(&east, &id, &west);
    east.ok(&with(&["key", "update-primary-region", &id], &extra));
    assert_eq!(regions_of(&describe(&east, &id)).0, "us-west-2");
    assert_eq!(regions_of(&describe(&west, &id)).0, "us-west-2");

    // The new primary rotates; the old one is a replica now and takes the version at sync.
    west.ok(&["key", "rotate", &id]);
    east.fails(&["key", "rotate", &id], 1);
    let err = east.fails(&with(&["key", "update-primary-region", &id], &extra), 1);
    assert!(err.contains("replica"), "{err}");
    let blob = encrypt(&west, &id, b"from the new primary");
    sync(&east, &west);
    assert_eq!(decrypt(&east, &blob).stdout, b"from the new primary");
    // ...and the new primary can replicate it further.
    replicate(&west, &id, &third);
    sync(&east, &west);
    assert_eq!(regions_of(&describe(&east, &id)).1, ["ap-south-1", "eu-west-1", "us-west-2"]);
}

#[test]
fn deleting_a_primary_waits_until_its_replicas_are_deleted() {
    let (east, west) = (region("eu-west-1"), region("us-west-2"));
    let id = mrk(&east, "alias/d");
    replicate(&east, &id, &west);
    let out = east.ok(&["key", "schedule-deletion", &id, "--pending-window-days", "7"]);
    assert!(out.contains("once its multi-Region replicas are deleted"), "{out}");
    let meta = describe(&east, &id);
    assert_eq!(meta["KeyState"], "PendingReplicaDeletion");
    assert_eq!(meta["DeletionDate"], serde_json::Value::Null);
    assert_eq!(meta["PendingDeletionWindowInDays"], 7);
    assert_eq!(east.run_with_stdin(&["encrypt", "--key", &id], b"x").status.code(), Some(4));
    // Cancelling works as for any key; then schedule again.
    east.ok(&["key", "cancel-deletion", &id]);
    assert_eq!(describe(&east, &id)["KeyState"], "Disabled");
    east.ok(&["key", "schedule-deletion", &id, "--pending-window-days", "7"]);
    // Long after the window, the primary is still there: it waits for its replica.
    let out = east.cmd_at(30 * DAY, &["--json", "key", "describe", &id]).output().unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["KeyState"], "PendingReplicaDeletion", "{meta}");

    // The replica is scheduled normally and destroyed when its window ends.
    west.ok(&["key", "schedule-deletion", &id, "--pending-window-days", "7"]);
    let meta = describe(&west, &id);
    assert_eq!(meta["KeyState"], "PendingDeletion");
    assert!(meta["DeletionDate"].is_string());
    assert_eq!(sync(&east, &west)["DeletionsStarted"].as_array().unwrap().len(), 0);
    let out = west.cmd_at(8 * DAY, &["key", "purge-expired"]).output().unwrap();
    common::assert_success(&out, &["key", "purge-expired"]);
    assert_eq!(describe(&west, &id)["KeyState"], "Destroyed");

    // At the next sync the primary learns it, and its own window begins.
    let report = sync(&east, &west);
    assert_eq!(report["ReplicasRemoved"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["DeletionsStarted"][0], id.as_str(), "{report}");
    let meta = describe(&east, &id);
    assert_eq!(meta["KeyState"], "PendingDeletion");
    assert_eq!(regions_of(&meta).1, ["eu-west-1"]);
    let out = east.cmd_at(8 * DAY, &["key", "purge-expired"]).output().unwrap();
    common::assert_success(&out, &["key", "purge-expired"]);
    assert_eq!(describe(&east, &id)["KeyState"], "Destroyed");
}

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

fn mount(env: &TestEnv, cipher: &Path, mnt: &Path) -> MountGuard {
    fs::create_dir_all(mnt).unwrap();
    let guard = MountGuard::new(&fs::canonicalize(mnt).unwrap());
    env.ok(&["mount", cipher.to_str().unwrap(), mnt.to_str().unwrap()]);
    guard
}

/// `kmsfs umount`, retried while the kernel still finishes releasing files just closed.
fn umount(env: &TestEnv, mnt: &Path) {
    for _ in 0..50 {
        if env.run(&["umount", mnt.to_str().unwrap()]).status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    env.ok(&["umount", mnt.to_str().unwrap()]);
}

fn copy_to(from: &TestEnv, cipher: &Path, dst: &Path, to: &TestEnv) -> std::process::Output {
    from.cmd(&[
        "--json",
        "volume",
        "copy",
        cipher.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--to-keystore",
        to.keystore.to_str().unwrap(),
        "--to-passphrase-file",
        to.path("pass").to_str().unwrap(),
    ])
    .output()
    .unwrap()
}

#[test]
fn a_volume_under_multi_region_keys_is_copied_as_it_is_and_mounts_in_the_other_region() {
    let (east, west) = (region("eu-west-1"), region("us-west-2"));
    let vol_key = mrk(&east, "alias/vol");
    let dir_key = mrk(&east, "alias/finance");
    let cipher = east.path("cipher");
    east.ok(&["volume", "init", cipher.to_str().unwrap(), "--key", "alias/vol"]);
    let mnt = east.path("mnt");
    {
        let _m = mount(&east, &cipher, &mnt);
        fs::create_dir(mnt.join("finance")).unwrap();
        east.ok(&["dir", "set-key", mnt.join("finance").to_str().unwrap(), "alias/finance"]);
        fs::write(mnt.join("finance/q1.csv"), common::mount::pattern(7, 300_000)).unwrap();
        fs::write(mnt.join("notes.txt"), b"notes").unwrap();
        fs::write(mnt.join("x".repeat(200)), b"a long name").unwrap();
        std::os::unix::fs::symlink("finance/q1.csv", mnt.join("latest")).unwrap();
        umount(&east, &mnt);
    }
    let before = snapshot(&cipher);

    // Not yet replicated: refused, nothing copied.
    let dst = west.path("copy");
    let out = copy_to(&east, &cipher, &dst, &west);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no replica"), "{out:?}");
    assert!(!dst.join("kmsfs.volume").exists());

    replicate(&east, &vol_key, &west);
    replicate(&east, &dir_key, &west);
    let decrypts_before = west.json(&["audit", "--operation", "Decrypt"]).as_array().unwrap().len();
    let _ = fs::remove_dir_all(&dst);
    let out = copy_to(&east, &cipher, &dst, &west);
    common::assert_success(&out, &["volume", "copy"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["HeadersRewrapped"], 0, "{report}");
    let decrypts =
        west.json(&["audit", "--operation", "Decrypt"]).as_array().unwrap().len() - decrypts_before;
    assert_eq!(decrypts, 1, "O(1) key work: one unwrap in the destination, whatever the number of files");

    // Byte for byte, but the config, which names the destination keystore.
    let mut after = snapshot(&dst);
    let mut before_files = before.clone();
    let (old_cfg, new_cfg) = (
        before_files.remove(Path::new("kmsfs.volume")).unwrap(),
        after.remove(Path::new("kmsfs.volume")).unwrap(),
    );
    before_files.remove(Path::new("kmsfs.lock"));
    assert_eq!(after, before_files, "no header re-wrapped, no block touched");
    let (old_cfg, new_cfg): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&old_cfg).unwrap(), serde_json::from_slice(&new_cfg).unwrap());
    assert_eq!(
        old_cfg["volume_id"], new_cfg["volume_id"],
        "the volume id the wrapped keys are bound to is kept"
    );
    assert_eq!(new_cfg["keystore_id"], west.json(&["keystore", "info"])["KeystoreId"]);
    assert_eq!(snapshot(&cipher), before, "the source is only read");

    let west_mnt = west.path("mnt");
    {
        let _m = mount(&west, &dst, &west_mnt);
        assert_eq!(fs::read(west_mnt.join("finance/q1.csv")).unwrap(), common::mount::pattern(7, 300_000));
        assert_eq!(fs::read(west_mnt.join("notes.txt")).unwrap(), b"notes");
        assert_eq!(fs::read(west_mnt.join("x".repeat(200))).unwrap(), b"a long name");
        assert_eq!(fs::read_link(west_mnt.join("latest")).unwrap(), Path::new("finance/q1.csv"));
        fs::write(west_mnt.join("written-in-the-west"), b"west").unwrap();
        umount(&west, &west_mnt);
    }

    // A file under a version the replica lacks: refused until a sync.
    east.ok(&["key", "rotate", &vol_key]);
    {
        let _m = mount(&east, &cipher, &mnt);
        fs::write(mnt.join("after-rotation"), b"v2").unwrap();
        umount(&east, &mnt);
    }
    let dst2 = west.path("copy2");
    let out = copy_to(&east, &cipher, &dst2, &west);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("kmsfs key sync"), "{out:?}");
    sync(&east, &west);
    let out = copy_to(&east, &cipher, &dst2, &west);
    common::assert_success(&out, &["volume", "copy"]);
    let _m = mount(&west, &dst2, &west_mnt);
    assert_eq!(fs::read(west_mnt.join("after-rotation")).unwrap(), b"v2");
}
