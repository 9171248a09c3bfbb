//! `kmsfs serve` over raw HTTP: SigV4 acceptance and every rejection, the Unix socket's
//! peer identity, request size limits, header and idle timeouts, TLS, loopback-only
//! without TLS, and a graceful SIGTERM that leaves the audit trail complete.
//! (The full API, driven by boto3 and the aws CLI, is tests/api.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use common::TestEnv;
use serde_json::{json, Value};

/// A running `kmsfs serve`, stopped (SIGTERM, by pid) on drop.
struct Server {
    child: Child,
    ready: Value,
}

impl Server {
    fn start(env: &TestEnv, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child =
            env.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("readiness line");
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            let mut err = String::new();
            child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            panic!("no readiness line ({e}): {line:?} {err}")
        });
        Server { child, ready }
    }

    fn addr(&self) -> String {
        self.ready["Listen"].as_str().expect("Listen").to_string()
    }

    fn socket(&self) -> String {
        self.ready["Socket"].as_str().expect("Socket").to_string()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "kmsfs serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Key {
    id: String,
    secret: String,
}

fn access_key(env: &TestEnv, user: &str) -> Key {
    let v = env.json(&["access-key", "create", "--user", user]);
    Key {
        id: v["AccessKey"]["AccessKeyId"].as_str().unwrap().into(),
        secret: v["AccessKey"]["SecretAccessKey"].as_str().unwrap().into(),
    }
}

/// The headers of a request signed as botocore signs it.
fn signed_headers(
    host: &str,
    op: &str,
    body: &[u8],
    key: &Key,
    region: &str,
    at: SystemTime,
) -> Vec<(String, String)> {
    let date = {
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        kmsfs::server::sigv4::format_amz_date(secs)
    };
    let mut headers = vec![
        ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
        ("host".to_string(), host.to_string()),
        ("x-amz-date".to_string(), date),
        ("x-amz-target".to_string(), format!("TrentService.{op}")),
    ];
    let identity: Identity = Credentials::new(&key.id, &key.secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kms")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let req = SignableRequest::new(
        "POST",
        "/",
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    for (name, value) in instructions.headers() {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        headers.push((name.to_string(), value.to_string()));
    }
    headers
}

/// One HTTP/1.1 exchange on `stream`; returns (status, JSON body).
fn exchange(stream: &mut (impl Read + Write), headers: &[(String, String)], body: &[u8]) -> (u16, Value) {
    let mut req = String::from("POST / HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_response(stream)
}

fn read_response(stream: &mut impl Read) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "connection closed mid-response: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn call(server: &Server, op: &str, input: &Value, key: &Key) -> (u16, Value) {
    let body = serde_json::to_vec(input).unwrap();
    let headers = signed_headers(&server.addr(), op, &body, key, "us-east-1", SystemTime::now());
    exchange(&mut TcpStream::connect(server.addr()).unwrap(), &headers, &body)
}

fn error_code(answer: &(u16, Value)) -> &str {
    answer.1["__type"].as_str().unwrap_or("")
}

#[test]
fn sigv4_is_checked_and_every_refusal_is_named_and_audited() {
    let env = TestEnv::new();
    let alice = access_key(&env, "alice");
    let server = Server::start(&env, &["--no-socket"]);
    let host = server.addr();
    let body = b"{}".to_vec();

    let ok = call(&server, "ListKeys", &json!({}), &alice);
    assert_eq!(ok.0, 200, "{ok:?}");
    assert_eq!(ok.1["Keys"], json!([]));

    let send = |headers: &[(String, String)], body: &[u8]| {
        exchange(&mut TcpStream::connect(&host).unwrap(), headers, body)
    };
    // The body changed after signing.
    let headers = signed_headers(&host, "ListKeys", &body, &alice, "us-east-1", SystemTime::now());
    let r = send(&headers, b"{\"Limit\":1}");
    assert_eq!((r.0, error_code(&r)), (400, "InvalidSignatureException"), "{r:?}");
    // A header that was signed, changed.
    let mut changed = headers.clone();
    changed
        .iter_mut()
        .filter(|(k, _)| k == "x-amz-target")
        .for_each(|(_, v)| *v = "TrentService.CreateKey".into());
    assert_eq!(error_code(&send(&changed, &body)), "InvalidSignatureException");
    // The wrong secret.
    let wrong = Key { id: alice.id.clone(), secret: "A".repeat(40) };
    let headers = signed_headers(&host, "ListKeys", &body, &wrong, "us-east-1", SystemTime::now());
    assert_eq!(error_code(&send(&headers, &body)), "InvalidSignatureException");
    // An access key this keystore never issued.
    let stranger = Key { id: "AKIAAAAAAAAAAAAAAAAA".into(), secret: alice.secret.clone() };
    let headers = signed_headers(&host, "ListKeys", &body, &stranger, "us-east-1", SystemTime::now());
    assert_eq!(error_code(&send(&headers, &body)), "UnrecognizedClientException");
    // Ten minutes old, and ten minutes ahead.
    for skew in [-600i64, 600] {
        let at = if skew < 0 {
            SystemTime::now() - Duration::from_secs(600)
        } else {
            SystemTime::now() + Duration::from_secs(600)
        };
        let headers = signed_headers(&host, "ListKeys", &body, &alice, "us-east-1", at);
        let r = send(&headers, &body);
        assert_eq!(error_code(&r), "InvalidSignatureException", "{r:?}");
        assert!(r.1["message"].as_str().unwrap().starts_with("Signature "), "{r:?}");
    }
    // Scoped to another region.
    let headers = signed_headers(&host, "ListKeys", &body, &alice, "eu-west-3", SystemTime::now());
    let r = send(&headers, &body);
    assert!(r.1["message"].as_str().unwrap().contains("region"), "{r:?}");
    // A session token: none is ever issued.
    let mut with_token = signed_headers(&host, "ListKeys", &body, &alice, "us-east-1", SystemTime::now());
    with_token.push(("x-amz-security-token".into(), "FwoGZXIvYXdzE".into()));
    assert_eq!(error_code(&send(&with_token, &body)), "UnrecognizedClientException");
    // No signature at all.
    let bare = vec![
        ("host".to_string(), host.clone()),
        ("x-amz-target".to_string(), "TrentService.ListKeys".to_string()),
    ];
    assert_eq!(error_code(&send(&bare, &body)), "MissingAuthenticationTokenException");

    // A key disabled at the command line is refused at once; enabled again, accepted.
    env.ok(&["access-key", "disable", &alice.id]);
    assert_eq!(error_code(&call(&server, "ListKeys", &json!({}), &alice)), "UnrecognizedClientException");
    env.ok(&["access-key", "enable", &alice.id]);
    assert_eq!(call(&server, "ListKeys", &json!({}), &alice).0, 200);

    // Unknown operations as AWS answers them.
    assert_eq!(error_code(&call(&server, "Frobnicate", &json!({}), &alice)), "UnknownOperationException");

    // Every call above is one audit event, refusals with their AWS error code.
    let events = env.json(&["audit", "--access-key-id", &alice.id]);
    let codes: Vec<&str> =
        events.as_array().unwrap().iter().filter_map(|e| e["ErrorCode"].as_str()).collect();
    assert_eq!(codes.iter().filter(|c| **c == "InvalidSignatureException").count(), 6, "{codes:?}");
    assert!(codes.contains(&"UnrecognizedClientException") && codes.contains(&"UnknownOperationException"));
    let stranger_events = env.json(&["audit", "--access-key-id", "AKIAAAAAAAAAAAAAAAAA"]);
    assert_eq!(stranger_events.as_array().unwrap().len(), 1);
    assert_eq!(stranger_events[0]["ErrorCode"], "UnrecognizedClientException");
    assert!(stranger_events[0]["Source"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn unix_socket_callers_are_their_uid_without_a_signature() {
    let env = TestEnv::new();
    let server = Server::start(&env, &[]);
    let path = server.socket();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let mut s = UnixStream::connect(&path).unwrap();
    let headers = vec![
        ("host".to_string(), "localhost".to_string()),
        ("x-amz-target".to_string(), "TrentService.CreateKey".to_string()),
        ("content-type".to_string(), "application/x-amz-json-1.1".to_string()),
    ];
    let (status, created) = exchange(&mut s, &headers, b"{\"Description\":\"via socket\"}");
    assert_eq!(status, 200, "{created}");
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    // Same connection (keep-alive): Encrypt and Decrypt as this uid.
    let mut h = headers.clone();
    h[1].1 = "TrentService.Encrypt".into();
    let (status, enc) =
        exchange(&mut s, &h, json!({"KeyId": key_id, "Plaintext": "aGVsbG8="}).to_string().as_bytes());
    assert_eq!(status, 200, "{enc}");
    h[1].1 = "TrentService.Decrypt".into();
    let (_, dec) =
        exchange(&mut s, &h, json!({"CiphertextBlob": enc["CiphertextBlob"]}).to_string().as_bytes());
    assert_eq!(dec["Plaintext"], "aGVsbG8=");
    let uid = unsafe { libc::getuid() };
    let events = env.json(&["audit", "--source", "unix"]);
    let ops: Vec<&str> =
        events.as_array().unwrap().iter().map(|e| e["Operation"].as_str().unwrap()).collect();
    assert_eq!(ops, ["CreateKey", "Encrypt", "Decrypt"]);
    assert!(events.as_array().unwrap().iter().all(|e| e["Uid"] == uid));
}

#[test]
fn size_limits_and_timeouts_protect_the_workers() {
    let env = TestEnv::new();
    let alice = access_key(&env, "alice");
    let server = Server::start(
        &env,
        &["--no-socket", "--max-request-bytes", "4096", "--header-timeout", "1", "--idle-timeout", "2"],
    );
    // Too large: 413 with an AWS error, and the server goes on.
    let big = json!({"KeyId": "alias/x", "Plaintext": "A".repeat(8192)});
    let r = call(&server, "Encrypt", &big, &alice);
    assert_eq!((r.0, error_code(&r)), (413, "ValidationException"), "{r:?}");
    // Half-open clients: a connection that never sends, and one stuck in its headers.
    let mut silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(server.addr()).unwrap()).collect();
    let mut partial = TcpStream::connect(server.addr()).unwrap();
    partial.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
    // Real callers are served meanwhile.
    assert_eq!(call(&server, "ListKeys", &json!({}), &alice).0, 200);
    // The header timeout closes the stuck one, the idle timeout the silent ones.
    let closed_within = |s: &mut TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => continue, // a 408 answer before the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(start.elapsed()),
                Err(_) => return None,
            }
        }
    };
    assert!(
        closed_within(&mut partial, Duration::from_secs(5)).is_some(),
        "stuck headers were not timed out"
    );
    for s in silent.iter_mut().take(3) {
        assert!(closed_within(s, Duration::from_secs(6)).is_some(), "an idle connection was kept open");
    }
    // Keep-alive itself is not cut short: a second request on a connection that is used.
    let mut conn = TcpStream::connect(server.addr()).unwrap();
    for _ in 0..3 {
        let headers =
            signed_headers(&server.addr(), "ListKeys", b"{}", &alice, "us-east-1", SystemTime::now());
        assert_eq!(exchange(&mut conn, &headers, b"{}").0, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn other_addresses_need_tls_and_tls_serves() {
    let env = TestEnv::new();
    let out = env.run(&["serve", "--listen", "0.0.0.0:0", "--no-socket"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"), "{out:?}");

    let (cert, key) = (env.path("cert.pem"), env.path("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let server = Server::start(
        &env,
        &["--no-socket", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let url = server.ready["Url"].as_str().unwrap().to_string();
    assert!(url.starts_with("https://"), "{url}");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            "X-Amz-Target: TrentService.ListKeys",
            "-d",
            "{}",
            &url,
        ])
        .output()
        .expect("curl");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(answer["__type"], "MissingAuthenticationTokenException", "{out:?}");
    // Plain HTTP to the TLS port gets nowhere.
    let mut plain = TcpStream::connect(server.addr()).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\n{}").unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(!buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[test]
fn sigterm_finishes_and_the_audit_is_complete() {
    let env = TestEnv::new();
    let alice = access_key(&env, "alice");
    let mut server = Server::start(&env, &[]);
    let state = format!("{}.serve.json", env.keystore.display());
    assert!(std::path::Path::new(&state).exists());
    let status_text = env.ok(&["status"]);
    assert!(status_text.contains(&server.addr()), "{status_text}");
    let created = call(&server, "CreateKey", &json!({}), &alice);
    let key_id = created.1["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, key) = (server.addr(), Key { id: alice.id.clone(), secret: alice.secret.clone() });
            let key_id = key_id.clone();
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(&addr).unwrap();
                for _ in 0..50 {
                    let body = json!({"KeyId": key_id, "Plaintext": "eA=="}).to_string();
                    let h = signed_headers(
                        &addr,
                        "Encrypt",
                        body.as_bytes(),
                        &key,
                        "us-east-1",
                        SystemTime::now(),
                    );
                    assert_eq!(exchange(&mut conn, &h, body.as_bytes()).0, 200);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert!(server.stop().success());
    assert!(!std::path::Path::new(&state).exists(), "the state file outlived the server");
    assert!(!std::path::Path::new(&server.socket()).exists(), "the socket outlived the server");
    let account = env.json(&["keystore", "info"])["AccountId"].as_str().unwrap().to_string();
    let arn = format!("arn:aws:iam::{account}:user/alice");
    let by_arn = env.json(&["audit", "--operation", "Encrypt", "--principal", &arn]);
    assert_eq!(by_arn.as_array().unwrap().len(), 200);
    let encrypts = env.json(&["audit", "--operation", "Encrypt", "--access-key-id", &alice.id]);
    assert_eq!(encrypts.as_array().unwrap().len(), 200);
    env.ok(&["audit", "verify"]);
}

/// The kB after `field` in /proc/PID/status (VmHWM: peak resident set, VmRSS: now).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn the_passphrase_kdf_does_not_stay_in_the_servers_memory() {
    // A keystore with the default Argon2id cost (64 MiB): the server derives the key in a
    // short-lived child, so its own peak resident set stays far below that cost.
    let env = TestEnv::without_keystore();
    env.ok(&["keystore", "init", "--argon2-memory-kib", "65536", "--argon2-iterations", "1"]);
    let key = access_key(&env, "alice");
    let mut server = Server::start(&env, &["--no-socket"]);
    let created = call(&server, "CreateKey", &json!({}), &key);
    assert_eq!(created.0, 200, "the server unlocked with the right key: {created:?}");
    let peak_kb = proc_status_kb(server.child.id(), "VmHWM");
    assert!(peak_kb < 40 * 1024, "kmsfs serve peaked at {peak_kb} kB: the KDF's 64 MiB counted");
    assert!(server.stop().success());
    // A wrong passphrase is still refused, with the usual message, and the server exits.
    let out = env
        .cmd(&["serve", "--listen", "127.0.0.1:0", "--no-socket"])
        .env("KMSFS_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
}
