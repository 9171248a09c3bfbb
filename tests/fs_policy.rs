//! Key policies and grants, enforced per caller in a real mount (`-o allow_other`), with
//! processes running as other uids: the dual permission model.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use common::mount::{wait_until, Mounted};

const ALICE: u32 = 1001;
const BOB: u32 = 1002;
const CAROL: u32 = 1003;
const FINANCE_GID: u32 = 2000;

/// Runs a command as `uid` with primary group `gid`.
fn run_as(uid: u32, gid: u32, args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).uid(uid).gid(gid).output().expect("run as user")
}

fn cat_as(uid: u32, gid: u32, path: &std::path::Path) -> Result<Vec<u8>, String> {
    let out = run_as(uid, gid, &["cat", path.to_str().unwrap()]);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A mount where other users can reach everything the Unix permissions allow, with a file
/// `finance/report.txt` (mode 0644) written by root before any policy restricts the key.
fn shared_mount() -> Mounted {
    let m = Mounted::with_options(&["allow_other"]);
    fs::set_permissions(m.env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.path("finance")).unwrap();
    fs::set_permissions(m.path("finance"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(m.path("finance/report.txt"), b"q3 numbers").unwrap();
    fs::set_permissions(m.path("finance/report.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    m
}

fn put_policy(m: &Mounted, json: &str) {
    let file = m.env.path("policy.json");
    fs::write(&file, json).unwrap();
    m.ok(&["policy", "put", "alias/vol", file.to_str().unwrap()]);
}

/// Listing and reading need kms:Decrypt; creating needs kms:GenerateDataKey.
const ALICE_ONLY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "alice", "Effect": "Allow", "Principal": {"Uid": [1001]},
     "Action": ["kms:Decrypt", "kms:GenerateDataKey*"]}
  ]
}"#;

#[test]
fn policy_admits_alice_refuses_bob_and_root_and_grants_come_and_go() {
    let m = shared_mount();
    let report = m.path("finance/report.txt");
    put_policy(&m, ALICE_ONLY);

    assert_eq!(cat_as(ALICE, ALICE, &report).unwrap(), b"q3 numbers");
    let err = cat_as(BOB, BOB, &report).unwrap_err();
    assert!(err.contains("Permission denied"), "bob: {err}");
    // Root is refused too: mode bits do not open a key. (Recovery: below.)
    let err = fs::read(&report).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "root: {err}");

    // A grant lets bob read; revoking it stops him at the next open, no remount.
    let grant = m.json(&[
        "grant",
        "create",
        "--key",
        "alias/vol",
        "--grantee",
        "uid:1002",
        "--operations",
        "Decrypt",
    ]);
    let grant_id = grant["GrantId"].as_str().unwrap().to_string();
    assert_eq!(cat_as(BOB, BOB, &report).unwrap(), b"q3 numbers");
    let listed = m.json(&["grant", "list", "alias/vol"]);
    assert_eq!(listed[0]["GrantId"], grant_id.as_str());
    assert_eq!(listed[0]["Grantee"], "uid:1002");
    m.ok(&["grant", "revoke", "alias/vol", &grant_id]);
    assert!(cat_as(BOB, BOB, &report).is_err(), "a revoked grant stops bob");

    // An expired grant stops him too.
    m.ok(&[
        "grant",
        "create",
        "--key",
        "alias/vol",
        "--grantee",
        "uid:1002",
        "--operations",
        "Decrypt",
        "--expires",
        "2s",
    ]);
    assert_eq!(cat_as(BOB, BOB, &report).unwrap(), b"q3 numbers");
    assert!(
        wait_until(Duration::from_secs(6), || cat_as(BOB, BOB, &report).is_err()),
        "the grant never expired"
    );

    // The admin (passphrase holder) recovers root's access by changing the policy.
    put_policy(
        &m,
        r#"{"Statement": [
            {"Sid": "admin", "Effect": "Allow", "Principal": {"Uid": [0]}, "Action": "kms:*"},
            {"Sid": "alice", "Effect": "Allow", "Principal": {"Uid": [1001]}, "Action": "kms:Decrypt"}]}"#,
    );
    assert_eq!(fs::read(&report).unwrap(), b"q3 numbers");

    // Every decision is in the audit trail, with uid, path and operation.
    let denied = m.json(&["audit", "--denied"]);
    let bob_denied = denied.as_array().unwrap().iter().any(|e| {
        e["Uid"] == BOB
            && e["Operation"] == "Decrypt"
            && e["Path"] == "/finance/report.txt"
            && e["Outcome"] == "Denied"
    });
    assert!(bob_denied, "no denial of bob in the audit trail: {denied:#}");
    let all = m.json(&["audit"]);
    let alice_allowed = all.as_array().unwrap().iter().any(|e| {
        e["Uid"] == ALICE
            && e["Outcome"] == "Success"
            && e["Path"] == "/finance/report.txt"
            && e["Reason"].as_str().unwrap_or("").contains("alice")
    });
    assert!(alice_allowed, "no allow for alice naming her statement");
    assert!(m.ok(&["audit", "verify"]).contains("intact"));
}

/// Runs `cat PATH` as `uid` with primary group `gid` and supplementary groups `groups`.
fn cat_with_groups(uid: u32, gid: u32, groups: &[u32], path: &std::path::Path) -> Output {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let mut cmd = Command::new("cat");
    cmd.arg(path);
    // SAFETY: setgroups, setgid and setuid are async-signal-safe and change only the
    // child's credentials; groups first, while the child is still root.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run cat")
}

#[test]
fn the_first_open_after_a_policy_that_names_groups_sees_supplementary_groups() {
    let m = shared_mount();
    let report = m.path("finance/report.txt");
    // Warm the mount under the default policy, so its key ring has decided groups are not
    // needed before the new policy arrives.
    fs::read(&report).unwrap();
    put_policy(
        &m,
        r#"{"Statement": [{"Sid": "finance-group", "Effect": "Allow", "Principal": {"Group": ["2000"]},
            "Action": "kms:Decrypt"}]}"#,
    );
    let out = cat_with_groups(CAROL, CAROL, &[FINANCE_GID], &report);
    assert!(
        out.status.success(),
        "carol is in group 2000 by a supplementary group: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"q3 numbers");
}

#[test]
fn explicit_deny_for_alice_beats_the_allow_for_her_group() {
    let m = shared_mount();
    let report = m.path("finance/report.txt");
    put_policy(
        &m,
        r#"{"Statement": [
            {"Sid": "finance-group", "Effect": "Allow", "Principal": {"Group": ["2000"]}, "Action": "kms:Decrypt"},
            {"Sid": "not-alice", "Effect": "Deny", "Principal": {"Uid": [1001]}, "Action": "kms:*"}]}"#,
    );
    assert_eq!(cat_as(CAROL, FINANCE_GID, &report).unwrap(), b"q3 numbers", "carol is in the group");
    let err = cat_as(ALICE, FINANCE_GID, &report).unwrap_err();
    assert!(err.contains("Permission denied"), "{err}");
    assert!(cat_as(BOB, BOB, &report).is_err(), "bob is not in the group");
    // The mount writes its audit events in batches, a few milliseconds later.
    let audited = wait_until(Duration::from_secs(5), || {
        let denied = m.json(&["audit", "--denied"]);
        denied
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Uid"] == ALICE && e["Reason"].as_str().unwrap_or("").contains("explicit Deny"))
    });
    assert!(audited, "alice's refusal is in the audit trail");
}

#[test]
fn creating_needs_generate_data_key_and_path_conditions_apply() {
    let m = shared_mount();
    fs::create_dir(m.path("hr")).unwrap();
    fs::set_permissions(m.path("hr"), fs::Permissions::from_mode(0o777)).unwrap();
    put_policy(
        &m,
        r#"{"Statement": [
            {"Sid": "list", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt"},
            {"Sid": "alice-writes-finance", "Effect": "Allow", "Principal": {"Uid": [1001]},
             "Action": "kms:GenerateDataKey", "Condition": {"StringLike": {"kmsfs:Path": "/finance/*"}}}]}"#,
    );
    let touch =
        |uid: u32, rel: &str| run_as(uid, uid, &["touch", m.path(rel).to_str().unwrap()]).status.success();
    assert!(touch(ALICE, "finance/new.txt"), "alice may create under /finance");
    assert!(!touch(ALICE, "hr/new.txt"), "but not under /hr");
    assert!(!touch(BOB, "finance/bob.txt"), "bob may not create at all");
    assert!(m.path("finance/new.txt").exists());
    assert!(!m.path("hr/new.txt").exists() && !m.path("finance/bob.txt").exists());
}

#[test]
fn bad_policies_are_refused_and_the_old_one_stays() {
    let m = shared_mount();
    put_policy(&m, ALICE_ONLY);
    let before = m.ok(&["policy", "get", "alias/vol"]);
    let cases = [
        ("{ not json", "line 1"),
        (
            r#"{"Statement": [{"Effect": "Permit", "Principal": "*", "Action": "kms:Decrypt"}]}"#,
            "Statement[0].Effect",
        ),
        (r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Explode"}]}"#, "kms:Explode"),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": {"Martian": ["x"]}, "Action": "kms:*"}]}"#,
            "Martian",
        ),
        (
            r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {"NumericLessThan": {"kmsfs:Path": "1"}}}]}"#,
            "NumericLessThan",
        ),
    ];
    let file = m.env.path("bad.json");
    for (text, named) in cases {
        fs::write(&file, text).unwrap();
        let out = m.kmsfs(&["policy", "put", "alias/vol", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "error for {text} should name {named}: {err}");
    }
    fs::write(&file, format!(r#"{{"Id": "{}"}}"#, "x".repeat(33 * 1024))).unwrap();
    let out = m.kmsfs(&["policy", "put", "alias/vol", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("32768"));
    assert_eq!(m.ok(&["policy", "get", "alias/vol"]), before, "the old policy stays");
    // And it still works as before.
    assert_eq!(cat_as(ALICE, ALICE, &m.path("finance/report.txt")).unwrap(), b"q3 numbers");
    let refused = m.json(&["audit", "--operation", "PutKeyPolicy"]);
    assert!(refused.as_array().unwrap().iter().filter(|e| e["Outcome"] == "Error").count() >= 6);
}

#[test]
fn grant_commands_validate_and_retire_is_for_the_grantee() {
    let m = Mounted::new();
    let bad = |args: &[&str], needle: &str| {
        let out = m.kmsfs(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    bad(
        &["grant", "create", "--key", "alias/vol", "--grantee", "bob", "--operations", "Decrypt"],
        "user:NAME",
    );
    bad(
        &["grant", "create", "--key", "alias/vol", "--grantee", "uid:7", "--operations", "Destroy"],
        "Destroy",
    );
    bad(
        &[
            "grant",
            "create",
            "--key",
            "alias/vol",
            "--grantee",
            "uid:7",
            "--operations",
            "Decrypt",
            "--expires",
            "soon",
        ],
        "soon",
    );
    bad(
        &["grant", "create", "--key", "alias/nope", "--grantee", "uid:7", "--operations", "Decrypt"],
        "unknown alias",
    );
    let grant = m.json(&[
        "grant",
        "create",
        "--key",
        "alias/vol",
        "--grantee",
        "uid:7",
        "--operations",
        "Decrypt,GenerateDataKey",
        "--name",
        "spare key",
    ]);
    let token = grant["GrantToken"].as_str().unwrap();
    // Root is not uid 7: only the grantee retires (an admin revokes instead).
    bad(&["grant", "retire", token], "only the grantee");
    let id = grant["GrantId"].as_str().unwrap();
    m.ok(&["grant", "revoke", "alias/vol", id]);
    assert!(m.json(&["grant", "list", "alias/vol"]).as_array().unwrap().is_empty());
    bad(&["grant", "revoke", "alias/vol", id], "no grant");
    // Root retires a grant made out to root.
    let mine =
        m.json(&["grant", "create", "--key", "alias/vol", "--grantee", "uid:0", "--operations", "Decrypt"]);
    m.ok(&["grant", "retire", mine["GrantToken"].as_str().unwrap()]);
    assert!(m.json(&["grant", "list", "alias/vol"]).as_array().unwrap().is_empty());
}

#[test]
fn policies_apply_to_the_crypto_commands_too() {
    let m = Mounted::new();
    let out = common::run_with_stdin(m.env.cmd(&["encrypt", "--key", "alias/vol"]), b"secret");
    assert!(out.status.success());
    let blob = out.stdout;
    put_policy(
        &m,
        r#"{"Statement": [{"Effect": "Allow", "Principal": {"Uid": [1001]}, "Action": "kms:*"}]}"#,
    );
    let out = common::run_with_stdin(m.env.cmd(&["decrypt"]), &blob);
    assert_eq!(out.status.code(), Some(6), "access denied exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy statement or grant allows kms:Decrypt"));
    // Managed keys cannot be re-policied.
    let managed = m.env.path("managed-vol");
    m.ok(&["volume", "init", managed.to_str().unwrap()]);
    let file = m.env.path("p.json");
    fs::write(&file, r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}]}"#).unwrap();
    let out = m.kmsfs(&["policy", "put", "alias/kmsfs/managed-vol", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6));
}

/// With FUSE_HANDLE_KILLPRIV_V2 the daemon, not the kernel, clears set-ID bits: a write or
/// truncate by an unprivileged user clears set-user-ID (and set-group-ID on a
/// group-executable file), as on any Linux file system; root's writes keep them.
#[test]
fn an_unprivileged_write_or_truncate_clears_set_id_bits() {
    use std::os::unix::fs::MetadataExt;
    let m = shared_mount();
    put_policy(
        &m,
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "root-and-alice", "Effect": "Allow",
            "Principal": {"Uid": [0, 1001]}, "Action": ["kms:Decrypt", "kms:GenerateDataKey*"]}]}"#,
    );
    let mode = |name: &str| fs::metadata(m.path(name)).unwrap().mode() & 0o7777;
    let prepare = |name: &str, bits: u32| {
        fs::write(m.path(name), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(m.path(name), Some(ALICE), Some(ALICE)).unwrap();
        fs::set_permissions(m.path(name), fs::Permissions::from_mode(bits)).unwrap();
        assert_eq!(mode(name), bits);
    };
    prepare("finance/tool", 0o6755);
    let append = format!("echo more >> {}", m.path("finance/tool").display());
    assert!(run_as(ALICE, ALICE, &["sh", "-c", &append]).status.success());
    assert_eq!(mode("finance/tool"), 0o0755, "alice's write cleared set-user-ID and set-group-ID");
    assert_eq!(fs::read(m.path("finance/tool")).unwrap(), b"#!/bin/sh\nmore\n");

    prepare("finance/cut", 0o4750);
    let cut = run_as(ALICE, ALICE, &["truncate", "-s", "3", m.path("finance/cut").to_str().unwrap()]);
    assert!(cut.status.success(), "{}", String::from_utf8_lossy(&cut.stderr));
    assert_eq!(mode("finance/cut"), 0o0750, "alice's truncate cleared set-user-ID");

    // Set-group-ID without group execute is mandatory locking's mark, not a privilege: kept.
    prepare("finance/lock", 0o2644);
    let append = format!("echo more >> {}", m.path("finance/lock").display());
    assert!(run_as(ALICE, ALICE, &["sh", "-c", &append]).status.success());
    assert_eq!(mode("finance/lock"), 0o2644);

    // Root (CAP_FSETID) writes without clearing them.
    prepare("finance/root", 0o4755);
    let mut f = fs::OpenOptions::new().append(true).open(m.path("finance/root")).unwrap();
    std::io::Write::write_all(&mut f, b"root\n").unwrap();
    drop(f);
    assert_eq!(mode("finance/root"), 0o4755);
}

fn put_policy_on(m: &Mounted, key: &str, json: &str) {
    let file = m.env.path("policy-other.json");
    fs::write(&file, json).unwrap();
    m.ok(&["policy", "put", key, file.to_str().unwrap()]);
}

fn setfattr_as(uid: u32, name: &str, value: &str, path: &std::path::Path) -> Output {
    run_as(uid, uid, &["setfattr", "-n", name, "-v", value, path.to_str().unwrap()])
}

fn key_of(m: &Mounted, path: &std::path::Path) -> String {
    m.json(&["dir", "get-key", path.to_str().unwrap()])["KeyId"].as_str().unwrap().to_string()
}

/// Who may choose a directory's key: its owner or root, and only with kms:ReEncryptFrom on
/// the old key and kms:ReEncryptTo plus kms:GenerateDataKey on the new one. Unix write
/// permission on a shared directory is not enough.
#[test]
fn only_the_owner_with_re_encrypt_rights_may_change_a_directorys_key() {
    let m = shared_mount();
    let other = m.env.create_key("alias/other");
    let everything = r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}]}"#;
    put_policy(&m, everything);
    put_policy_on(&m, "alias/other", everything);
    let finance = m.path("finance"); // root's, mode 0777: alice may write it
    let denied = |out: &Output, what: &str| {
        assert!(!out.status.success(), "{what} was allowed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{what}: EACCES: {err}");
    };
    denied(&setfattr_as(ALICE, "user.kmsfs.key", "alias/other", &finance), "set-key by a non-owner");
    denied(
        &setfattr_as(ALICE, "user.kmsfs.rewrap", "alias/other", &finance),
        "rewrap --to-key by a non-owner",
    );
    denied(
        &setfattr_as(ALICE, "user.kmsfs.rewrap", "alias/other", &m.path("finance/report.txt")),
        "a file moved to another key by a non-owner",
    );
    assert_eq!(key_of(&m, &finance), m.key_id, "the directory keeps its key");
    let audited = wait_until(Duration::from_secs(5), || {
        m.json(&["audit", "--denied"]).as_array().unwrap().iter().any(|e| {
            e["Uid"] == ALICE && e["Reason"].as_str().unwrap_or("").contains("only its owner (uid 0) or root")
        })
    });
    assert!(audited, "the refusal is audited");

    // Alice's own directory: hers to move, if the policies allow the re-wrap on both keys.
    let mine = m.path("finance/alice");
    assert!(run_as(ALICE, ALICE, &["mkdir", mine.to_str().unwrap()]).status.success());
    let without = |action: &str| {
        format!(
            r#"{{"Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "kms:*"}},
                {{"Effect": "Deny", "Principal": {{"Uid": [{ALICE}]}}, "Action": "{action}"}}]}}"#
        )
    };
    put_policy(&m, &without("kms:ReEncryptFrom"));
    denied(
        &setfattr_as(ALICE, "user.kmsfs.key", "alias/other", &mine),
        "set-key without ReEncryptFrom on the old key",
    );
    put_policy(&m, everything);
    for action in ["kms:ReEncryptTo", "kms:GenerateDataKey"] {
        put_policy_on(&m, "alias/other", &without(action));
        denied(
            &setfattr_as(ALICE, "user.kmsfs.key", "alias/other", &mine),
            &format!("set-key without {action}"),
        );
    }
    assert_eq!(key_of(&m, &mine), m.key_id);
    put_policy_on(&m, "alias/other", everything);
    let out = setfattr_as(ALICE, "user.kmsfs.key", "alias/other", &mine);
    assert!(
        out.status.success(),
        "the owner, allowed on both keys: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(key_of(&m, &mine), other);
    // Root may move anyone's directory.
    m.ok(&["dir", "set-key", finance.to_str().unwrap(), "alias/other"]);
    assert_eq!(key_of(&m, &finance), other);
}

/// An open handle keeps a file's data key in the mount; after a live re-wrap to another key,
/// a new open must still be a use of the key that wraps the file now, not the one it had.
#[test]
fn after_a_live_rewrap_each_open_is_checked_against_the_new_key() {
    let m = shared_mount();
    let report = m.path("finance/report.txt");
    m.env.create_key("alias/other");
    let alice_reads = format!(
        r#"{{"Statement": [{{"Effect": "Allow", "Principal": {{"Uid": [0]}}, "Action": "kms:*"}},
            {{"Effect": "Allow", "Principal": {{"Uid": [{ALICE}]}}, "Action": "kms:Decrypt"}}]}}"#
    );
    put_policy(&m, &alice_reads); // the old key: alice may read
    let held = fs::File::open(&report).unwrap(); // keeps the file open in the mount
    assert_eq!(cat_as(ALICE, ALICE, &report).unwrap(), b"q3 numbers");
    let out = Command::new("setfattr")
        .args(["-n", "user.kmsfs.rewrap", "-v", "alias/other"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // alias/other's default policy admits only root.
    let err = cat_as(ALICE, ALICE, &report).unwrap_err();
    assert!(err.contains("Permission denied"), "alice has no rights on the new key: {err}");
    let other = m.json(&["key", "describe", "alias/other"])["KeyId"].as_str().unwrap().to_string();
    let audited = wait_until(Duration::from_secs(5), || {
        m.json(&["audit", "--denied"])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["Uid"] == ALICE && e["KeyId"] == other.as_str())
    });
    assert!(audited, "the refusal names the new key");
    drop(held);
}
