"""How `kmsfs serve` starts: TLS with --tls-cert/--tls-key, a non-loopback address refused
without TLS, a wrong passphrase refused. No traffic leaves loopback."""

import datetime
import http.client
import ipaddress
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
