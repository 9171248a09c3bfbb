//! Volumes whose master keys live in a key service speaking the AWS KMS API: here moto's
//! KMS (`moto_server` on a loopback port, started and stopped by PID), driven by boto3 for
//! the administrator's side (create, disable, enable keys).

mod common;

use std::fs::File;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::Mounted;
use common::TestEnv;

/// A moto server on a free loopback port; dropped: continued if stopped, then killed.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    fn start(dir: &Path) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join("moto.log");
        let out = File::create(&log).unwrap();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("moto_server (scripts/install-deps.sh installs it)");
        let moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs boto3 KMS code (`kms` is the client) and returns what it prints.
    fn kms(&self, code: &str) -> String {
        let script = format!(
            "import boto3\nkms = boto3.client('kms', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}\n",
            self.url()
        );
        let out = Command::new("python3").arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn create_key(&self) -> String {
        self.kms("print(kms.create_key()['KeyMetadata']['Arn'])")
    }

    fn set_enabled(&self, arn: &str, enabled: bool) {
        let op = if enabled { "enable_key" } else { "disable_key" };
        // moto's enable and disable take the key id, not the ARN.
        let id = arn.rsplit('/').next().unwrap();
        self.kms(&format!("kms.{op}(KeyId='{id}')"));
    }

    /// KMS requests moto has answered so far (its access log has one line per request).
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap().lines().filter(|l| l.contains("\"POST / HTTP")).count()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aws_env(env: &mut TestEnv) {
    env.vars = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_PROFILE", "none-such"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
}

fn remote_volume(moto: &Moto, arn: &str) -> (TestEnv, PathBuf) {
    let mut env = TestEnv::new();
    aws_env(&mut env);
    let cipher = env.path("cipher");
    let url = moto.url();
    let out = env.ok(&["volume", "init", cipher.to_str().unwrap(), "--key", arn, "--kms-endpoint", &url]);
    assert!(out.contains(arn), "init names the remote key: {out}");
    (env, cipher)
}

fn open_errno(path: &Path) -> Option<i32> {
    File::open(path).err().map(|e| e.raw_os_error().unwrap_or(0))
}

/// Waits up to `limit` for `cond`; returns how long it took.
fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_volume_under_a_moto_key_serves_files_follows_the_key_state_and_rides_out_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let arn = moto.create_key();
    let second = moto.create_key();
    let (env, cipher) = remote_volume(&moto, &arn);
    assert!(cipher.join("kmsfs.keys").exists() && cipher.join("kmsfs.keys.bak").exists());

    let opts = ["kms_check_secs=1", "kms_grace_secs=4"];
    let mut m = Mounted::of_volume(env, &cipher, arn.clone(), &opts, "info");
    let before = moto.requests();
    for d in 0..20 {
        std::fs::create_dir(m.path(&format!("d{d}"))).unwrap();
        for f in 0..100 {
            std::fs::write(m.path(&format!("d{d}/f{f}")), format!("file {d}/{f}")).unwrap();
        }
    }
    for d in 0..20 {
        for f in 0..100 {
            assert_eq!(
                std::fs::read_to_string(m.path(&format!("d{d}/f{f}"))).unwrap(),
                format!("file {d}/{f}")
            );
        }
    }
    let info = m.ok(&["file", "info", m.path("d3/f7").to_str().unwrap()]);
    assert!(info.contains(&arn), "file info names the remote key: {info}");

    m.remount();
    assert_eq!(std::fs::read_to_string(m.path("d19/f99")).unwrap(), "file 19/99");

    // A directory under a second remote key.
    std::fs::create_dir(m.path("finance")).unwrap();
    m.ok(&["dir", "set-key", m.path("finance").to_str().unwrap(), &second]);
    std::fs::write(m.path("finance/q3"), "numbers").unwrap();
    let info = m.ok(&["file", "info", m.path("finance/q3").to_str().unwrap()]);
    assert!(info.contains(&second), "{info}");
    let dir = m.ok(&["dir", "get-key", m.path("finance").to_str().unwrap()]);
    assert!(dir.contains(&second), "{dir}");

    // Disabled centrally: new opens refused within the interval, open files keep working.
    let mut open = File::open(m.path("d1/f1")).unwrap();
    moto.set_enabled(&arn, false);
    let took = within(Duration::from_secs(5), || open_errno(&m.path("d2/f2")) == Some(libc::ENOKEY));
    assert!(took.is_some(), "a disabled remote key refuses new opens (ENOKEY)");
    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "file 1/1", "an open file keeps working");
    assert_eq!(std::fs::read_to_string(m.path("finance/q3")).unwrap(), "numbers", "the other key serves");
    moto.set_enabled(&arn, true);
    assert!(
        within(Duration::from_secs(5), || open_errno(&m.path("d2/f2")).is_none()).is_some(),
        "re-enabled"
    );

    // The service stops answering: keys already unwrapped serve through the grace period,
    // then new opens fail with EIO; an open file keeps working throughout.
    let mut open = File::open(m.path("d4/f4")).unwrap();
    moto.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(std::fs::read_to_string(m.path("d5/f5")).unwrap(), "file 5/5", "within the grace period");
    let failed = within(Duration::from_secs(30), || open_errno(&m.path("d6/f6")) == Some(libc::EIO));
    assert!(failed.is_some(), "after the grace period new opens fail with EIO");
    // The grace (4 s) runs from the first check that failed, at most one interval (1 s)
    // after the last good one, which came at most one interval before the stop.
    assert!(stopped.elapsed() >= Duration::from_secs(3), "not before the grace period ended");
    let mut text = String::new();
    open.read_to_string(&mut text).unwrap();
    assert_eq!(text, "file 4/4");
    let said = within(Duration::from_secs(30), || m.log_text().contains("grace period over"));
    assert!(said.is_some(), "the mount says why: {}", m.log_text());
    moto.signal(libc::SIGCONT);
    assert!(
        within(Duration::from_secs(30), || open_errno(&m.path("d6/f6")).is_none()).is_some(),
        "the service back: opens work again"
    );
    let calls = moto.requests() - before;
    assert!(calls < 200, "remote calls stay per key and interval, not per file: {calls}");
    drop(m);
}

#[test]
fn the_key_service_unreachable_at_mount_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let arn = moto.create_key();
    let (env, cipher) = remote_volume(&moto, &arn);
    let url = moto.url();
    drop(moto);
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let err = env.fails(&["mount", cipher.to_str().unwrap(), mnt.to_str().unwrap()], 1);
    assert!(err.contains(&url) && err.contains(&arn), "names endpoint and key: {err}");
    assert!(err.contains("unreachable"), "{err}");
}

#[test]
fn remote_calls_during_a_ten_thousand_file_untar_and_cat_are_a_handful() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let arn = moto.create_key();
    // The tarball: 10,000 small files in 100 directories.
    let src = tmp.path().join("src");
    for d in 0..100 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..100 {
            std::fs::write(src.join(format!("d{d}/f{f}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let tar = tmp.path().join("t.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let (env, cipher) = remote_volume(&moto, &arn);
    let before = moto.requests();
    let m = Mounted::of_volume(env, &cipher, arn, &[], "info");
    let untar = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(m.mnt()).status().unwrap();
    assert!(untar.success());
    let cat = Command::new("sh")
        .arg("-c")
        .arg(format!("cat {}/d*/f* | wc -l", m.mnt().display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout).trim(), "10000");
    let calls = moto.requests() - before;
    eprintln!("remote calls during a 10,000-file untar and cat: {calls}");
    assert!(calls <= 4, "a handful of calls, not one per file: {calls}");
}

/// The migration path: a volume under a local key moved to a remote key (`rewrap --to-key
/// ARN`, unmounted) and read with the local key disabled; then a rotation of the remote key
/// catches up by re-wrapping the intermediate keys only, never the files.
#[test]
fn a_local_volume_moves_to_a_remote_key_and_rewrap_rewraps_intermediate_keys_only() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let arn = moto.create_key();
    let mut env = TestEnv::new();
    aws_env(&mut env);
    env.vars.push(("AWS_ENDPOINT_URL_KMS".into(), moto.url()));
    let cipher = env.path("cipher");
    let local = env.init_volume(&cipher);
    let mut m = Mounted::of_volume(env, &cipher, local.clone(), &[], "info");
    std::fs::create_dir(m.path("docs")).unwrap();
    for i in 0..50 {
        std::fs::write(m.path(&format!("docs/{i}")), format!("doc {i}")).unwrap();
    }
    m.unmount();
    let c = cipher.to_str().unwrap();
    m.ok(&["rewrap", c, "--to-key", &arn]);
    m.ok(&["key", "disable", "alias/vol"]);
    m.start();
    assert_eq!(std::fs::read_to_string(m.path("docs/7")).unwrap(), "doc 7", "served by the remote key alone");
    let info = m.ok(&["file", "info", m.path("docs/7").to_str().unwrap()]);
    assert!(info.contains(&arn), "{info}");
    m.unmount();

    let files: Vec<_> = walk(&cipher)
        .into_iter()
        .filter(|p| !p.ends_with("kmsfs.keys") && !p.ends_with("kmsfs.keys.bak"))
        .collect();
    let before: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let table = std::fs::read_to_string(cipher.join("kmsfs.keys")).unwrap();
    let out = m.ok(&["rewrap", c]);
    assert!(out.contains("1 intermediate key(s) re-wrapped"), "{out}");
    assert_ne!(std::fs::read_to_string(cipher.join("kmsfs.keys")).unwrap(), table, "the table is re-wrapped");
    let after: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(before == after, "no file, header or metadata is rewritten");
    m.ok(&["fsck", c]);
    m.start();
    assert_eq!(std::fs::read_to_string(m.path("docs/49")).unwrap(), "doc 49");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Another keystore using `env`'s: a second view of one host (its own mount point and log).
fn same_host(env: &TestEnv) -> TestEnv {
    TestEnv { dir: tempfile::tempdir().unwrap(), keystore: env.keystore.clone(), vars: env.vars.clone() }
}

fn key_table(cipher: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(cipher.join("kmsfs.keys")).unwrap()).unwrap()
}

/// `volume copy` is the migration path both ways: a volume under local keys copied to a
/// remote key for another host's keystore (readable there with no local key at all), copied
/// again keeping its remote key (a new intermediate key naming the new volume), and copied
/// back to a local key (readable with the key service gone).
#[test]
fn volume_copy_moves_a_volume_to_a_remote_key_keeps_it_and_moves_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let arn = moto.create_key();
    let mut env = TestEnv::new();
    aws_env(&mut env);
    let cipher = env.path("cipher");
    let local = env.init_volume(&cipher);
    let mut m = Mounted::of_volume(env, &cipher, local, &[], "info");
    std::fs::create_dir(m.path("docs")).unwrap();
    for i in 0..20 {
        std::fs::write(m.path(&format!("docs/{i}")), format!("doc {i}")).unwrap();
    }
    std::fs::write(m.path("top"), "top file").unwrap();
    m.unmount();

    // To a remote key, for another host (its own keystore, no local key in it).
    let mut host = TestEnv::new();
    aws_env(&mut host);
    let remote = host.path("remote.enc");
    m.env.vars.push(("KMSFS_TO_PASSPHRASE".into(), common::PASSPHRASE.into()));
    let (src, url) = (cipher.to_str().unwrap(), moto.url());
    let r = remote.to_str().unwrap();
    let args = ["volume", "copy", src, r, "--to-keystore", host.keystore.to_str().unwrap()];
    let out = m.env.ok(&[&args[..], &["--to-key", &arn, "--kms-endpoint", &url]].concat());
    assert!(out.contains(&arn), "the copy names the remote key: {out}");
    let table = key_table(&remote);
    assert_eq!(table["Keys"].as_array().unwrap().len(), 1, "one intermediate key: {table}");
    assert_eq!(table["Keys"][0]["KeyArn"], arn.as_str());
    assert_eq!(table["Keys"][0]["Endpoint"], url.as_str());
    let copy_id = table["Keys"][0]["Id"].as_str().unwrap().to_string();
    let mut h = Mounted::of_volume(same_host(&host), &remote, arn.clone(), &[], "info");
    assert_eq!(std::fs::read_to_string(h.path("docs/7")).unwrap(), "doc 7");
    assert_eq!(std::fs::read_to_string(h.path("top")).unwrap(), "top file");
    let info = h.ok(&["file", "info", h.path("docs/7").to_str().unwrap()]);
    assert!(info.contains(&arn), "{info}");
    h.unmount();

    // Copied again without --to-key: it keeps the remote key, under an intermediate key of
    // its own (the context names the new volume).
    let kept = host.path("kept.enc");
    host.ok(&["volume", "copy", r, kept.to_str().unwrap()]);
    let table = key_table(&kept);
    let record = &table["Keys"][0];
    assert_eq!(record["KeyArn"], arn.as_str(), "{table}");
    assert_ne!(record["Id"].as_str().unwrap(), copy_id, "a new intermediate key");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kept.join("kmsfs.volume")).unwrap()).unwrap();
    assert_eq!(record["EncryptionContext"]["kmsfs:volume"], config["volume_id"], "{config}");
    let k = Mounted::of_volume(same_host(&host), &kept, arn.clone(), &[], "info");
    assert_eq!(std::fs::read_to_string(k.path("docs/19")).unwrap(), "doc 19");
    drop(k);

    // And back to a local key: the key service is not needed any more.
    host.create_key("alias/back");
    let back = host.path("back.enc");
    host.ok(&["volume", "copy", r, back.to_str().unwrap(), "--to-key", "alias/back"]);
    assert!(!back.join("kmsfs.keys").exists(), "no remote key left");
    drop(moto);
    let b = Mounted::of_volume(same_host(&host), &back, String::new(), &[], "info");
    assert_eq!(std::fs::read_to_string(b.path("docs/3")).unwrap(), "doc 3", "served without the service");
    let info = b.ok(&["file", "info", b.path("docs/3").to_str().unwrap()]);
    assert!(!info.contains("arn:aws:kms"), "{info}");
}

/// fsck with the key service unreachable: what is under the remote key is "not checked",
/// never "damaged", and `--repair --force` removes none of it.
#[test]
fn fsck_with_the_key_service_unreachable_reports_and_removes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let arn = moto.create_key();
    let mut env = TestEnv::new();
    aws_env(&mut env);
    env.vars.push(("AWS_ENDPOINT_URL_KMS".into(), moto.url()));
    let cipher = env.path("cipher");
    let local = env.init_volume(&cipher);
    let mut m = Mounted::of_volume(env, &cipher, local, &[], "info");
    std::fs::create_dir(m.path("mixed")).unwrap();
    std::fs::write(m.path("mixed/local"), "local").unwrap();
    std::fs::write(m.path("mixed/remote"), "remote").unwrap();
    // One file moved to the remote key in a directory that stays local.
    m.ok(&["rewrap", m.mnt().to_str().unwrap(), "--path", "mixed/remote", "--to-key", &arn]);
    let info = m.ok(&["file", "info", m.path("mixed/remote").to_str().unwrap()]);
    assert!(info.contains(&arn), "{info}");
    m.unmount();
    let c = cipher.to_str().unwrap();
    m.ok(&["fsck", c]);

    let files_before = walk(&cipher).len();
    drop(moto);
    let out = m.kmsfs(&["--json", "fsck", c, "--repair", "--force"]);
    assert_eq!(out.status.code(), Some(8), "problems remain: {out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = |p: &str| report["Items"].as_array().unwrap().iter().find(|i| i["Path"] == p).cloned();
    let remote = item("/mixed/remote").expect("the remote file is listed");
    assert_eq!(remote["Status"], "key-unreachable", "{remote}");
    assert!(remote.get("Action").is_none(), "nothing done to it: {remote}");
    assert_eq!(item("/mixed/local").unwrap()["Status"], "ok");
    assert_eq!(walk(&cipher).len(), files_before, "no file removed");
}

/// On a mounted volume: `kmsfs status` shows the remote default key with the state the mount
/// last saw at the service, and `kmsfs rewrap MOUNTPOINT` re-wraps the intermediate key at
/// the service through the mount without rewriting any file.
#[test]
fn status_and_live_rewrap_of_a_mounted_volume_under_a_remote_key() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start(tmp.path());
    let arn = moto.create_key();
    let (env, cipher) = remote_volume(&moto, &arn);
    let mut m = Mounted::of_volume(env, &cipher, arn.clone(), &["kms_check_secs=1"], "info");
    for i in 0..30 {
        std::fs::write(m.path(&format!("f{i}")), format!("file {i}")).unwrap();
    }
    let mount_of = |status: &serde_json::Value| {
        status["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["MountPoint"] == m.mnt().to_str().unwrap())
            .cloned()
    };
    let status = m.env.json(&["status"]);
    let mine = mount_of(&status).expect("the mount is listed");
    assert_eq!(mine["DefaultKeyId"], arn.as_str(), "{mine}");
    assert_eq!(mine["KeyUsable"], true, "{mine}");
    assert_eq!(mine["RemoteKeys"][0]["KeyArn"], arn.as_str(), "{mine}");
    assert_eq!(mine["RemoteKeys"][0]["Endpoint"], moto.url().as_str(), "{mine}");
    let text = m.ok(&["status"]);
    assert!(text.contains(&arn) && text.contains("Remote keys of mounted volumes"), "{text}");

    moto.set_enabled(&arn, false);
    let seen = within(Duration::from_secs(5), || {
        let mine = mount_of(&m.env.json(&["status"])).unwrap();
        mine["KeyUsable"] == false && mine["KeyState"] == "Disabled"
    });
    assert!(seen.is_some(), "status shows the key disabled at the service");
    moto.set_enabled(&arn, true);
    assert!(within(Duration::from_secs(5), || open_errno(&m.path("f1")).is_none()).is_some());

    m.unmount();
    // All but the key table and the mount's lock file (it names the daemon).
    let files: Vec<_> = walk(&cipher)
        .into_iter()
        .filter(|p| !["kmsfs.keys", "kmsfs.keys.bak", "kmsfs.lock"].iter().any(|n| p.ends_with(n)))
        .collect();
    let before: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let table = std::fs::read_to_string(cipher.join("kmsfs.keys")).unwrap();
    m.start();
    let out = m.ok(&["rewrap", m.mnt().to_str().unwrap()]);
    assert!(out.contains("through the mount"), "{out}");
    assert!(out.contains("1 intermediate key(s) re-wrapped"), "{out}");
    assert_eq!(std::fs::read_to_string(m.path("f29")).unwrap(), "file 29", "the mount keeps serving");
    m.unmount();
    assert_ne!(std::fs::read_to_string(cipher.join("kmsfs.keys")).unwrap(), table, "the table is re-wrapped");
    let after: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let changed: Vec<_> = files.iter().zip(before.iter().zip(&after)).filter(|(_, (b, a))| b != a).collect();
    assert!(
        changed.is_empty(),
        "no file, header or metadata is rewritten: {:?}",
        changed.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    m.start();
    assert_eq!(std::fs::read_to_string(m.path("f0")).unwrap(), "file 0", "the new wrap unwraps");
}
