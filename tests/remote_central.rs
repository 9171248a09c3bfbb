//! Two hosts (two keystores, two mounts) whose volumes live under one key of a central
//! `kmsfs serve`, each signing with its own access key: the central key's state reaches both
//! mounts within the check interval, and the central audit names each host's unwraps.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::mount::Mounted;
use common::TestEnv;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host(central_url: &str, arn: &str, key: &serde_json::Value) -> Mounted {
    let mut env = TestEnv::new();
    env.vars = vec![
        ("AWS_ACCESS_KEY_ID".into(), key["AccessKeyId"].as_str().unwrap().into()),
        ("AWS_SECRET_ACCESS_KEY".into(), key["SecretAccessKey"].as_str().unwrap().into()),
        ("AWS_PROFILE".into(), "none-such".into()),
    ];
    let cipher = env.path("cipher");
    env.ok(&["volume", "init", cipher.to_str().unwrap(), "--key", arn, "--kms-endpoint", central_url]);
    Mounted::of_volume(env, &cipher, arn.to_string(), &["kms_check_secs=1"], "info")
}

fn refused(path: &Path) -> bool {
    std::fs::File::open(path).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOKEY)
}

fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn two_hosts_share_a_central_key_its_state_reaches_both_and_the_central_audit_names_them() {
    let central = TestEnv::new();
    let key_id = central.create_key("alias/shared");
    let info = central.json(&["keystore", "info"]);
    let arn = format!(
        "arn:aws:kms:{}:{}:key/{key_id}",
        info["Region"].as_str().unwrap(),
        info["AccountId"].as_str().unwrap()
    );
    // Both act as uid 0, the key's creator, whom its default policy allows.
    let a = central.json(&["access-key", "create", "--user", "host-a", "--uid", "0"]);
    let b = central.json(&["access-key", "create", "--user", "host-b", "--uid", "0"]);
    let mut child = central
        .cmd(&["serve", "--listen", "127.0.0.1:0", "--no-socket"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    let ready: serde_json::Value = serde_json::from_str(&line).expect("readiness line");
    let url = ready["Url"].as_str().unwrap().to_string();

    let ha = host(&url, &arn, &a["AccessKey"]);
    let hb = host(&url, &arn, &b["AccessKey"]);
    for (m, text) in [(&ha, "from a"), (&hb, "from b")] {
        std::fs::write(m.path("f"), text).unwrap();
        std::fs::write(m.path("g"), text).unwrap();
        assert_eq!(std::fs::read_to_string(m.path("f")).unwrap(), text);
    }

    central.ok(&["key", "disable", "alias/shared"]);
    assert!(
        within(Duration::from_secs(5), || refused(&ha.path("g"))),
        "host a refuses new opens:\n{}",
        ha.log_text()
    );
    assert!(within(Duration::from_secs(5), || refused(&hb.path("g"))), "host b refuses new opens");
    central.ok(&["key", "enable", "alias/shared"]);
    assert!(within(Duration::from_secs(5), || std::fs::read(ha.path("g")).is_ok()), "host a again");
    assert!(within(Duration::from_secs(5), || std::fs::read(hb.path("g")).is_ok()), "host b again");

    let account = info["AccountId"].as_str().unwrap();
    for user in ["host-a", "host-b"] {
        let principal = format!("arn:aws:iam::{account}:user/{user}");
        let trail = central.ok(&["audit", "--principal", &principal, "--operation", "Decrypt"]);
        assert!(trail.contains("Decrypt"), "the central audit shows {user}'s unwraps:\n{trail}");
        let made = central.ok(&["audit", "--principal", &principal, "--operation", "GenerateDataKey"]);
        assert!(made.contains("GenerateDataKey"), "and the intermediate key {user} made:\n{made}");
    }
    drop((ha, hb));
    drop(server);
}

/// A central `kmsfs serve` over TLS with a private CA: a host that trusts it through
/// AWS_CA_BUNDLE mounts and uses a volume under its key; a host that does not is refused at
/// `volume init`, with nothing of the volume left behind.
#[test]
fn a_central_service_over_tls_is_used_with_its_ca_bundle_and_refused_without() {
    let central = TestEnv::new();
    let key_id = central.create_key("alias/shared");
    let info = central.json(&["keystore", "info"]);
    let arn = format!(
        "arn:aws:kms:{}:{}:key/{key_id}",
        info["Region"].as_str().unwrap(),
        info["AccountId"].as_str().unwrap()
    );
    let access = central.json(&["access-key", "create", "--user", "tls-host", "--uid", "0"]);
    // A private CA and a server certificate it signs (webpki takes no CA as an end entity).
    let (ca, cert, key) = (central.path("ca.pem"), central.path("cert.pem"), central.path("key.pem"));
    let d = central.path("");
    let script = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
           -subj /CN=kmsfs-test-ca -keyout ca-key.pem -out ca.pem 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
           -keyout key.pem -out req.pem 2>/dev/null; \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext; \
         openssl x509 -req -in req.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 \
           -extfile ext -out cert.pem 2>/dev/null",
        d = d.display()
    );
    let made = std::process::Command::new("sh").arg("-c").arg(&script).output().expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut child = central
        .cmd(&["serve", "--listen", "127.0.0.1:0", "--no-socket", "--tls-cert", c, "--tls-key", k])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    let ready: serde_json::Value = serde_json::from_str(&line).expect("readiness line");
    let url = ready["Url"].as_str().unwrap().to_string();
    assert!(url.starts_with("https://"), "{url}");

    let key = &access["AccessKey"];
    let creds = |env: &mut TestEnv| {
        env.vars = vec![
            ("AWS_ACCESS_KEY_ID".into(), key["AccessKeyId"].as_str().unwrap().into()),
            ("AWS_SECRET_ACCESS_KEY".into(), key["SecretAccessKey"].as_str().unwrap().into()),
            ("AWS_PROFILE".into(), "none-such".into()),
        ];
    };
    let mut untrusting = TestEnv::new();
    creds(&mut untrusting);
    let refused = untrusting.path("cipher");
    let out =
        untrusting.run(&["volume", "init", refused.to_str().unwrap(), "--key", &arn, "--kms-endpoint", &url]);
    assert!(!out.status.success(), "an untrusted certificate is refused: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&url), "the error names the endpoint: {err}");
    assert!(!refused.join("kmsfs.volume").exists() && !refused.join("kmsfs.keys").exists());

    let mut host = TestEnv::new();
    creds(&mut host);
    host.vars.push(("AWS_CA_BUNDLE".into(), ca.to_str().unwrap().to_string()));
    let cipher = host.path("cipher");
    host.ok(&["volume", "init", cipher.to_str().unwrap(), "--key", &arn, "--kms-endpoint", &url]);
    let mut m = Mounted::of_volume(host, &cipher, arn.clone(), &[], "info");
    std::fs::write(m.path("over-tls"), "sealed").unwrap();
    m.remount();
    assert_eq!(std::fs::read_to_string(m.path("over-tls")).unwrap(), "sealed");
    drop(m);
    drop(server);
}

/// A host whose credentials are in a shared credentials file: the access key is rotated
/// centrally (a new one written to the file, the old one deleted) while the volume is
/// mounted, and the mount's next checks sign with the new one, so new opens keep working.
#[test]
fn credentials_rotated_in_the_credentials_file_reach_a_running_mount() {
    let central = TestEnv::new();
    let key_id = central.create_key("alias/shared");
    let info = central.json(&["keystore", "info"]);
    let arn = format!(
        "arn:aws:kms:{}:{}:key/{key_id}",
        info["Region"].as_str().unwrap(),
        info["AccountId"].as_str().unwrap()
    );
    let old = central.json(&["access-key", "create", "--user", "rotating", "--uid", "0"]);
    let mut child = central
        .cmd(&["serve", "--listen", "127.0.0.1:0", "--no-socket"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    let ready: serde_json::Value = serde_json::from_str(&line).expect("readiness line");
    let url = ready["Url"].as_str().unwrap().to_string();

    let mut env = TestEnv::new();
    let file = env.path("aws-credentials");
    let write_creds = |k: &serde_json::Value| {
        let text = format!(
            "[host]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            k["AccessKey"]["AccessKeyId"].as_str().unwrap(),
            k["AccessKey"]["SecretAccessKey"].as_str().unwrap()
        );
        // Replaced whole, as tools that rotate it do.
        let tmp = file.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write_creds(&old);
    env.vars = vec![
        ("AWS_SHARED_CREDENTIALS_FILE".into(), file.to_str().unwrap().into()),
        ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
        ("AWS_PROFILE".into(), "host".into()),
    ];
    let cipher = env.path("cipher");
    env.ok(&["volume", "init", cipher.to_str().unwrap(), "--key", &arn, "--kms-endpoint", &url]);
    let m = Mounted::of_volume(env, &cipher, arn.clone(), &["kms_check_secs=1"], "info");
    std::fs::write(m.path("f"), "before the rotation").unwrap();

    let new = central.json(&["access-key", "create", "--user", "rotating", "--uid", "0"]);
    write_creds(&new);
    central.ok(&["access-key", "delete", old["AccessKey"]["AccessKeyId"].as_str().unwrap()]);
    // Several checks later: each signed with the key the file names now.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        std::fs::read_to_string(m.path("f")).unwrap(),
        "before the rotation",
        "new opens still work:\n{}",
        m.log_text()
    );
    assert!(!m.log_text().contains("refused"), "no check was refused:\n{}", m.log_text());
    drop(m);
    drop(server);
}
