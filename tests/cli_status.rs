//! `kmsfs completions`, `kmsfs man` and `kmsfs status` through the real binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::mount::Mounted;
use common::TestEnv;
use serde_json::Value;

const DAY: i64 = 86_400;
/// The clock shift for "later" runs: 1 day, 30 minutes and 30 seconds. Countdowns then land
/// mid-unit, so the seconds a test takes cannot move them across a boundary.
const LATER: i64 = DAY + 1_830;
/// Slack for the time between creating something and asking for the status.
const SLACK: i64 = 120;

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    // No keystore needed, and none is created.
    let env = TestEnv::without_keystore();
    for (shell, marker) in
        [("bash", "complete -F _kmsfs"), ("zsh", "#compdef kmsfs"), ("fish", "complete -c kmsfs")]
    {
        let script = env.ok(&["completions", shell]);
        assert!(script.len() > 1000, "{shell}: a {}-byte script", script.len());
        assert!(script.contains(marker), "{shell} script lacks '{marker}'");
        for word in ["rewrap", "grant", "schedule-deletion", "pending-window-days", "status", "completions"] {
            assert!(script.contains(word), "{shell} script does not mention '{word}'");
        }
    }
    assert!(!env.keystore.exists(), "completions must not create a keystore");

    // bash accepts its script.
    let script = env.path("kmsfs.bash");
    std::fs::write(&script, env.ok(&["completions", "bash"])).unwrap();
    let out = Command::new("bash").arg("-n").arg(&script).output().expect("run bash");
    assert!(out.status.success(), "bash -n: {}", String::from_utf8_lossy(&out.stderr));

    let err = env.fails(&["completions", "tcsh"], 2);
    assert!(err.contains("bash") && err.contains("fish"), "{err}");
}

#[test]
fn man_prints_a_page_and_writes_one_per_command() {
    let env = TestEnv::without_keystore();
    let page = env.ok(&["man"]);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "not roff: {}", &page[..80.min(page.len())]);
    assert!(page.contains("\n.TH kmsfs 1 "), "no title line for kmsfs(1)");
    // Subcommands are listed with their pages (roff writes '-' as '\-').
    for sub in ["kmsfs\\-key(1)", "kmsfs\\-grant(1)", "kmsfs\\-status(1)", "kmsfs\\-man(1)"] {
        assert!(page.contains(sub), "kmsfs.1 does not list {sub}");
    }

    let dir = env.path("man1");
    let out = env.ok(&["man", "--dir", dir.to_str().unwrap()]);
    let mut pages: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    for wanted in [
        "kmsfs.1",
        "kmsfs-key.1",
        "kmsfs-key-create.1",
        "kmsfs-key-rotation-enable.1",
        "kmsfs-grant-create.1",
        "kmsfs-status.1",
        "kmsfs-completions.1",
    ] {
        assert!(pages.iter().any(|p| p == wanted), "{wanted} missing from {pages:?}");
    }
    // No page for the help subcommand, and no page lists one.
    assert!(!pages.iter().any(|p| p.contains("help")), "{pages:?}");
    for p in &pages {
        let text = std::fs::read_to_string(dir.join(p)).unwrap();
        assert!(!text.contains("help(1)"), "{p} lists a help page that does not exist");
    }
    assert!(pages.len() >= 40, "only {} pages", pages.len());
    assert!(out.contains(&format!("wrote {} manual pages", pages.len())), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("kmsfs.1")).unwrap(), page, "--dir writes the same kmsfs.1");

    let create = std::fs::read_to_string(dir.join("kmsfs-key-create.1")).unwrap();
    assert!(create.starts_with(".ie") || create.starts_with(".TH"), "kmsfs-key-create.1 is not roff");
    assert!(create.contains("\n.TH kmsfs-key-create 1 "), "{create}");
    assert!(create.contains("\\-\\-alias") && create.contains("alias/finance"), "{create}");
    assert!(create.contains("KMSFS_KEYSTORE"), "the environment variable is documented: {create}");

    // Where groff is installed, the pages must format without a warning.
    for name in ["kmsfs.1", "kmsfs-key-create.1", "kmsfs-status.1"] {
        let Ok(out) =
            Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(dir.join(name)).output()
        else {
            break;
        };
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What the status tests set up.
struct Setup {
    rotated: String,
    doomed: String,
    granted: String,
    /// `grant create --json` of the grant ending in 2 days, and of the one in 30 days.
    soon: Value,
    late: Value,
}

/// Three keys: one rotated once with automatic rotation every 90 days, one scheduled for
/// deletion in 7 days, and one with grants ending in 2 days, in 30 days, and never.
fn setup(env: &TestEnv) -> Setup {
    let rotated = env.create_key("alias/rot");
    env.ok(&["key", "rotate", "alias/rot"]);
    env.ok(&["key", "rotation", "enable", "alias/rot", "--period-days", "90"]);
    let doomed = env.create_key("alias/doomed");
    env.ok(&["key", "schedule-deletion", "alias/doomed", "--pending-window-days", "7"]);
    let granted = env.create_key("alias/granted");
    let grant = |grantee: &str, expires: Option<&str>| {
        let mut args = vec!["grant", "create", "--key", "alias/granted", "--grantee", grantee];
        args.extend(["--operations", "Decrypt"]);
        if let Some(e) = expires {
            args.extend(["--expires", e]);
        }
        env.json(&args)
    };
    let soon = grant("user:nobody", Some("2days"));
    let late = grant("user:root", Some("30days"));
    grant("uid:4242", None);
    Setup { rotated, doomed, granted, soon, late }
}

/// `kmsfs [--json] status` with the clock shifted by `offset` seconds.
fn status_at(env: &TestEnv, offset: i64, json: bool) -> String {
    let args: &[&str] = if json { &["--json", "status"] } else { &["status"] };
    let out = env.cmd_at(offset, args).output().unwrap();
    common::assert_success(&out, args);
    String::from_utf8(out.stdout).unwrap()
}

fn find<'a>(list: &'a Value, field: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|v| v[field] == value)
        .unwrap_or_else(|| panic!("no entry with {field} = {value} in {list}"))
}

fn secs(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn status_json_reports_keys_countdowns_and_expiring_grants() {
    let env = TestEnv::new();
    let s = setup(&env);
    let rotated = env.json(&["key", "describe", &s.rotated]);
    let doomed = env.json(&["key", "describe", &s.doomed]);
    let keystore_id = env.json(&["keystore", "info"])["KeystoreId"].clone();

    let now: Value = serde_json::from_str(&status_at(&env, 0, true)).unwrap();
    for field in ["Time", "Keystore", "Keys", "PendingDeletions", "ExpiringGrants", "Mounts"] {
        assert!(now.get(field).is_some(), "status lacks {field}: {now}");
    }
    assert_eq!(now["Keystore"]["Path"], env.keystore.to_str().unwrap());
    assert_eq!(now["Keystore"]["KeystoreId"], keystore_id);
    assert_eq!(now["Keystore"]["KeyCount"], 3);
    assert_eq!(now["Keys"].as_array().unwrap().len(), 3);

    let rot = find(&now["Keys"], "KeyId", &s.rotated);
    assert_eq!(rot["Aliases"], serde_json::json!(["alias/rot"]));
    assert_eq!(rot["KeyState"], "Enabled");
    assert_eq!(rot["CurrentKeyVersion"], 2);
    assert_eq!(rot["KeyRotationEnabled"], true);
    assert_eq!(rot["RotationPeriodInDays"], 90);
    assert_eq!(rot["NextRotationDate"], rotated["NextRotationDate"]);
    assert!(rot["NextRotationDate"].is_string());
    assert_eq!(find(&now["Keys"], "KeyId", &s.doomed)["KeyState"], "PendingDeletion");
    assert_eq!(find(&now["Keys"], "KeyId", &s.granted)["KeyRotationEnabled"], false);

    let pending = now["PendingDeletions"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let p = &pending[0];
    assert_eq!(p["KeyId"], s.doomed.as_str());
    assert_eq!(p["Aliases"], serde_json::json!(["alias/doomed"]));
    assert_eq!(p["DeletionDate"], doomed["DeletionDate"]);
    assert_eq!(p["PendingDeletionWindowInDays"], 7);
    let left = secs(&p["SecondsRemaining"]);
    assert!((7 * DAY - SLACK..=7 * DAY).contains(&left), "{left} s left of a 7-day window");
    assert_eq!(secs(&p["DaysRemaining"]), left / DAY);

    let grants = now["ExpiringGrants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "only the grant ending in 2 days expires within 7: {grants:?}");
    let g = &grants[0];
    assert_eq!(g["GrantId"], s.soon["GrantId"]);
    assert_eq!(g["Grantee"], "user:nobody");
    assert_eq!(g["KeyId"], s.granted.as_str());
    assert_eq!(g["KeyAliases"], serde_json::json!(["alias/granted"]));
    assert_eq!(g["Operations"], serde_json::json!(["Decrypt"]));
    assert_eq!(g["Expires"], s.soon["Expires"]);
    let left = secs(&g["SecondsRemaining"]);
    assert!((2 * DAY - SLACK..=2 * DAY).contains(&left), "{left} s left of a 2-day grant");
    assert!(g.get("GrantToken").is_none(), "grant tokens are bearer secrets: {g}");

    // None of the mounts (other tests may have some) is ours.
    let dir = env.dir.path().to_str().unwrap();
    assert!(!now["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["CipherDir"].as_str().unwrap().starts_with(dir)));

    // A day and a half-hour later, everything has counted down by as much.
    let later: Value = serde_json::from_str(&status_at(&env, LATER, true)).unwrap();
    let p = &later["PendingDeletions"][0];
    assert_eq!(p["KeyId"], s.doomed.as_str());
    let left = secs(&p["SecondsRemaining"]);
    assert!((7 * DAY - LATER - SLACK..=7 * DAY - LATER).contains(&left), "{left}");
    assert_eq!(p["DaysRemaining"], 5);
    let left = secs(&later["ExpiringGrants"][0]["SecondsRemaining"]);
    assert!((2 * DAY - LATER - SLACK..=2 * DAY - LATER).contains(&left), "{left}");

    // 23 days later: the 2-day grant has expired, the 30-day one ends within 7 days, and the
    // key past its deletion date was destroyed by opening the keystore.
    let much_later: Value = serde_json::from_str(&status_at(&env, 23 * DAY + 3_600, true)).unwrap();
    let grants = much_later["ExpiringGrants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["GrantId"], s.late["GrantId"]);
    assert_eq!(grants[0]["Grantee"], "user:root");
    assert!(much_later["PendingDeletions"].as_array().unwrap().is_empty());
    assert_eq!(find(&much_later["Keys"], "KeyId", &s.doomed)["KeyState"], "Destroyed");
    assert_eq!(much_later["Keystore"]["KeyCount"], 3, "a destroyed key stays as a tombstone");
}

#[test]
fn status_human_output() {
    let env = TestEnv::new();
    let empty = env.ok(&["status"]);
    for line in [
        "Keystore",
        &format!("  Path:       {}", env.keystore.display()),
        "  Keys:       0",
        "Keys: none (create one with `kmsfs key create`)",
        "Pending deletions: none",
        "Grants expiring within 7 days: none",
    ] {
        assert!(empty.lines().any(|l| l == line), "no line '{line}' in:\n{empty}");
    }

    let s = setup(&env);
    let rotated = env.json(&["key", "describe", &s.rotated]);
    let doomed = env.json(&["key", "describe", &s.doomed]);
    let out = status_at(&env, LATER, false);
    let line_with = |needle: &str| -> &str {
        out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle} in:\n{out}"))
    };
    assert_eq!(line_with("  Keys:"), "  Keys:       3 (2 Enabled, 1 PendingDeletion)");
    let id = env.json(&["keystore", "info"])["KeystoreId"].as_str().unwrap().to_string();
    assert_eq!(line_with("  KeystoreId:"), format!("  KeystoreId: {id}"));

    let next = &rotated["NextRotationDate"].as_str().unwrap()[..10];
    let rot = line_with(&s.rotated);
    let cells: Vec<&str> = rot.split_whitespace().collect();
    assert_eq!(cells[..5], [s.rotated.as_str(), "alias/rot", "Enabled", "CUSTOMER", "2"], "{rot}");
    assert!(rot.ends_with(&format!("every 90 days, next {next}")), "{rot}");
    let granted = line_with(&s.granted);
    assert!(granted.ends_with(" off"), "{granted}");

    assert_eq!(line_with(&s.doomed).split_whitespace().nth(2), Some("PendingDeletion"));
    let deletion = line_with("deletes in");
    assert!(deletion.starts_with(&s.doomed), "{deletion}");
    let date = doomed["DeletionDate"].as_str().unwrap();
    assert!(deletion.ends_with(&format!("deletes in 5 days 23 hours ({date})")), "{deletion}");
    assert!(deletion.contains("alias/doomed"), "{deletion}");

    let soon = line_with(s.soon["GrantId"].as_str().unwrap());
    let expires = s.soon["Expires"].as_str().unwrap();
    let cells: Vec<&str> = soon.split_whitespace().collect();
    assert_eq!(cells[1..4], ["user:nobody", "alias/granted", "Decrypt"], "{soon}");
    assert!(soon.ends_with(&format!("in 23 hours 29 minutes ({expires})")), "{soon}");
    assert!(
        !out.contains(s.late["GrantId"].as_str().unwrap()),
        "the 30-day grant is not expiring soon:\n{out}"
    );
    assert!(out.lines().any(|l| l == "Grants expiring within 7 days"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Mounted volumes")), "{out}");
}

/// The status entry of the mount at `mnt`, if listed.
fn mount_entry(status: &Value, mnt: &Path) -> Option<Value> {
    status["Mounts"].as_array().unwrap().iter().find(|m| m["MountPoint"] == mnt.to_str().unwrap()).cloned()
}

#[test]
fn status_lists_mounted_volumes_and_whether_their_key_is_usable() {
    let mut m = Mounted::new();
    let (mnt, cipher) = (m.mnt().to_path_buf(), m.cipher().to_path_buf());
    let entry = mount_entry(&m.json(&["status"]), &mnt).expect("the mount is listed");
    assert_eq!(entry["CipherDir"], cipher.to_str().unwrap());
    assert_eq!(entry["VolumeName"], "cipher");
    assert_eq!(entry["DefaultKeyId"], m.key_id.as_str());
    assert_eq!(entry["KeyAliases"], serde_json::json!(["alias/vol"]));
    assert_eq!(entry["KeyState"], "Enabled");
    assert_eq!(entry["KeyUsable"], true);
    assert_eq!(entry["Problem"], Value::Null);

    let human = m.ok(&["status"]);
    assert!(human.lines().any(|l| l == "Mounted volumes"), "{human}");
    let line = human.lines().find(|l| l.starts_with(mnt.to_str().unwrap())).expect("a line for the mount");
    let cells: Vec<&str> = line.split_whitespace().collect();
    let key_cell = format!("({})", m.key_id);
    assert_eq!(cells[1..], [cipher.to_str().unwrap(), "cipher", "alias/vol", &key_cell, "yes"], "{line}");

    m.ok(&["key", "disable", "alias/vol"]);
    let entry = mount_entry(&m.json(&["status"]), &mnt).unwrap();
    assert_eq!(entry["KeyState"], "Disabled");
    assert_eq!(entry["KeyUsable"], false);
    assert_eq!(entry["Problem"], "key is Disabled");
    let human = m.ok(&["status"]);
    let line = human.lines().find(|l| l.starts_with(mnt.to_str().unwrap())).unwrap();
    assert!(line.ends_with("no: key is Disabled"), "{line}");
    m.ok(&["key", "enable", "alias/vol"]);

    // Another keystore sees the mount but not the volume's key.
    let other = TestEnv::new();
    let entry = mount_entry(&other.json(&["status"]), &mnt).expect("listed for another keystore too");
    assert_eq!(entry["DefaultKeyId"], m.key_id.as_str());
    assert_eq!(entry["KeyUsable"], false);
    assert_eq!(entry["KeyState"], Value::Null);
    let ours = m.json(&["keystore", "info"])["KeystoreId"].as_str().unwrap().to_string();
    assert!(entry["Problem"].as_str().unwrap().contains(&ours), "{entry}");

    let exit = m.unmount();
    assert!(exit.success(), "{}", m.log_text());
    assert!(mount_entry(&m.json(&["status"]), &mnt).is_none(), "an unmounted volume is not listed");
}
