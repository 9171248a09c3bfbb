"""How `kmsfs serve` runs: TLS with --tls-cert/--tls-key, a non-loopback address refused
without TLS, a wrong passphrase refused, port 0, the Unix socket (mode, peer uid), header
timeout, request size limit, SIGTERM under load. No traffic leaves loopback."""

import datetime
import http.client
import ipaddress
import socket
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kmsapi import PASSPHRASE, Keystore, Server, kmsfs_bin, post


@pytest.fixture
def keystore(request):
    ks = Keystore()
    request.addfinalizer(ks.cleanup)
    return ks


def self_signed(dir):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir / "cert.pem", dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_listener(keystore, request):
    cert, key = self_signed(keystore.dir)
    server = Server(keystore, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)])
    request.addfinalizer(server.stop)
    assert server.endpoint.startswith("https://127.0.0.1:"), server.ready
    creds = keystore.access_key("alice")
    from kmsapi import make_client

    client = make_client(server.endpoint, creds, verify=str(cert))
    key_id = client.create_key()["KeyMetadata"]["KeyId"]
    blob = client.encrypt(KeyId=key_id, Plaintext=b"over tls")["CiphertextBlob"]
    assert client.decrypt(CiphertextBlob=blob)["Plaintext"] == b"over tls"
    # Plain HTTP to the TLS port gets no KMS answer.
    status = None
    try:
        status, _, _ = post(server.endpoint.replace("https://", "http://"), creds, "ListKeys", {})
    except (OSError, http.client.HTTPException):
        pass
    assert status != 200, "the TLS port answered a plain-HTTP request"


def run_serve(keystore, args, env=None):
    return subprocess.run([kmsfs_bin(), "serve", *args], env=env or keystore.env(), capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=20)


def test_non_loopback_without_tls_refused(keystore):
    out = run_serve(keystore, ["--listen", "0.0.0.0:0"])
    assert out.returncode != 0
    assert b"tls" in out.stderr.lower(), out.stderr


def test_wrong_passphrase_refused(keystore):
    env = dict(keystore.env(), KMSFS_PASSPHRASE=PASSPHRASE + " wrong")
    out = run_serve(keystore, ["--listen", "127.0.0.1:0", "--no-socket"], env=env)
    assert out.returncode != 0 and out.stderr.strip(), out


def test_port_zero_reports_the_bound_port(keystore, request):
    """--listen 127.0.0.1:0 picks a free port and says which in its readiness line."""
    import json
    import signal
    import time

    proc = subprocess.Popen([kmsfs_bin(), "serve", "--listen", "127.0.0.1:0", "--no-socket"], env=keystore.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def stop():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)

    request.addfinalizer(stop)
    line = json.loads(proc.stdout.readline())
    assert line["Listen"].startswith("127.0.0.1:") and not line["Listen"].endswith(":0")
    assert line["Socket"] is None and line["Pid"] == proc.pid
    from kmsapi import make_client

    client = make_client(line["Url"], keystore.access_key("alice"))
    assert client.list_keys()["Keys"] == []


def test_socket_mode_configurable(keystore, request):
    import os
    import stat

    path = keystore.dir / "api.sock"
    server = Server(keystore, extra_args=["--socket", str(path), "--socket-mode", "660"])
    request.addfinalizer(server.stop)
    assert server.socket_path == str(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


def test_header_timeout_drops_half_open_client(keystore, request):
    import socket
    import time

    server = Server(keystore, extra_args=["--header-timeout", "1", "--no-socket"])
    request.addfinalizer(server.stop)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start = time.monotonic()
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        waited = time.monotonic() - start
    finally:
        s.close()
    assert waited < 5, f"a half-open request held its connection for {waited:.1f} s"
    assert not data or data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.1 400"), data[:100]


def test_max_request_bytes(keystore, request):
    server = Server(keystore, extra_args=["--max-request-bytes", "2048", "--no-socket"])
    request.addfinalizer(server.stop)
    creds = keystore.access_key("alice")
    status, _, doc = post(server.endpoint, creds, "GenerateRandom", {"NumberOfBytes": 8, "CustomKeyStoreId": "x" * 4000})
    assert status == 413, (status, doc)
    status, _, _ = post(server.endpoint, creds, "GenerateRandom", {"NumberOfBytes": 8})
    assert status == 200


def test_sigterm_under_load_loses_no_answered_call(keystore, request):
    """Clients keep calling while SIGTERM arrives: every call answered 200 is in the audit
    trail afterwards, no call gets a 5xx, the chain verifies, the exit status is 0."""
    import threading
    import time

    server = Server(keystore, extra_args=["--no-socket"])
    request.addfinalizer(server.stop)
    creds = keystore.access_key("alice")
    ok, bad, stop = [0], [], threading.Event()

    def caller():
        while not stop.is_set():
            try:
                status, _, doc = post(server.endpoint, creds, "GenerateRandom", {"NumberOfBytes": 8})
            except (OSError, http.client.HTTPException):
                return  # the server is gone: connection refused or closed
            if status == 200:
                ok[0] += 1
            else:
                bad.append((status, doc))

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    code = server.terminate()
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert code == 0
    assert not [b for b in bad if b[0] >= 500], bad[:3]
    assert ok[0] > 0
    keystore.run(["audit", "verify"])
    events = keystore.audit("--operation", "GenerateRandom")
    assert len(events) >= ok[0], f"{ok[0]} calls answered, {len(events)} in the trail"


def unix_call(path, op, body, uid=None):
    """One unsigned call over the Unix socket, from a forked child running as `uid` (the
    interpreter itself may live where another uid cannot read it, so no exec)."""
    import json
    import os

    def call():
        conn = http.client.HTTPConnection("localhost")
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(10)
        conn.sock.connect(path)
        conn.request("POST", "/", body=json.dumps(body), headers={
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService." + op})
        resp = conn.getresponse()
        return {"status": resp.status, "body": json.loads(resp.read() or b"null")}

    if uid is None:
        return call()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, call, report, exit without cleanup handlers
        code = 0
        try:
            os.close(r)
            os.setgid(uid)
            os.setuid(uid)
            os.write(w, json.dumps(call()).encode())
        except BaseException as e:
            os.write(w, json.dumps({"error": repr(e)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    assert "error" not in out, out
    return out


def test_socket_caller_is_its_peer_uid(keystore, request):
    """Over the socket the caller is the peer's uid (SO_PEERCRED), whatever it claims: a key
    root created there refuses uid 65534 until a Unix policy statement names that uid."""
    import json
    import os

    path = keystore.dir / "api.sock"
    server = Server(keystore, extra_args=["--socket", str(path), "--socket-mode", "666"])
    request.addfinalizer(server.stop)
    os.chmod(keystore.dir, 0o755)  # let uid 65534 reach the socket
    made = unix_call(str(path), "CreateKey", {"Description": "root's"})
    assert made["status"] == 200, made
    key = made["body"]["KeyMetadata"]["KeyId"]
    denied = unix_call(str(path), "Encrypt", {"KeyId": key, "Plaintext": "eA=="}, uid=65534)
    assert denied["status"] == 400 and denied["body"]["__type"].endswith("AccessDeniedException"), denied
    doc = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Uid": [0]}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"Uid": [65534]}, "Action": "kms:Encrypt", "Resource": "*"}]}
    put = unix_call(str(path), "PutKeyPolicy", {"KeyId": key, "PolicyName": "default", "Policy": json.dumps(doc)})
    assert put["status"] == 200, put
    ok = unix_call(str(path), "Encrypt", {"KeyId": key, "Plaintext": "eA=="}, uid=65534)
    assert ok["status"] == 200, ok
    events = keystore.audit("--source", "unix", "--operation", "Encrypt")
    assert sorted(e["Uid"] for e in events) == [65534, 65534], events


def test_rate_limit_answers_throttling_per_principal(keystore, request):
    """--rate-limit N: each principal gets N requests a second (bursts of N); beyond that
    ThrottlingException (HTTP 400), which botocore classifies as throttling and retries;
    other principals are not slowed; every refusal is audited."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
    from botocore.retries.standard import RetryContext, ThrottledRetryableChecker

    from kmsapi import REGION

    server = Server(keystore, extra_args=["--rate-limit", "5", "--no-socket"])
    request.addfinalizer(server.stop)
    alice_creds, bob_creds = keystore.access_key("alice"), keystore.access_key("bob")
    alice = server.client(alice_creds)  # retries off: every refusal surfaces
    answers = []
    for _ in range(12):
        try:
            alice.list_keys()
            answers.append("ok")
        except ClientError as e:
            answers.append(e)
    refused = [a for a in answers if a != "ok"]
    assert 4 <= answers.count("ok") <= 7, answers  # the burst of 5 (plus what refilled meanwhile)
    assert refused, "12 calls at once exceed 5 a second"
    e = refused[0]
    assert e.response["Error"]["Code"] == "ThrottlingException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert ThrottledRetryableChecker().is_retryable(RetryContext(attempt_number=1, parsed_response=e.response))
    # Another principal has a bucket of its own.
    server.client(bob_creds).list_keys()
    # An SDK with its standard retries (backoff) gets through once the bucket refills.
    patient = boto3.client("kms", endpoint_url=server.endpoint, region_name=REGION,
                           aws_access_key_id=alice_creds["AccessKeyId"],
                           aws_secret_access_key=alice_creds["SecretAccessKey"],
                           config=Config(retries={"total_max_attempts": 10, "mode": "standard"}))
    for _ in range(8):
        patient.list_keys()
    server.stop()
    throttled = keystore.audit("--error-code", "ThrottlingException")
    assert len(throttled) >= len(refused), throttled
    keystore.run(["audit", "verify"])
