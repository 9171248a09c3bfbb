"""SigV4 authentication and the wire protocol: bad signatures, unknown or disabled access
keys, stale requests, session tokens, unknown operations, oversized and slow requests,
keep-alive, content types, epoch timestamps."""

import datetime
import http.client
import json
import socket
import time

import pytest

from kmsapi import REGION, error_type, make_client, post, raises_code, signed_request


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def test_good_request_shape(api):
    status, headers, doc = post(api.endpoint, api.creds["alice"], "CreateKey", {"Description": "raw"})
    assert status == 200, doc
    assert headers.get("Content-Type", headers.get("content-type")) == "application/x-amz-json-1.1"
    created = doc["KeyMetadata"]["CreationDate"]
    assert isinstance(created, (int, float)), f"timestamps are epoch seconds, got {created!r}"
    assert abs(created - time.time()) < 60


def test_error_shape(api):
    status, headers, doc = post(api.endpoint, api.creds["alice"], "DescribeKey", {"KeyId": "alias/none"})
    assert status == 400
    assert error_type(doc) == "NotFoundException"
    assert isinstance(doc.get("message", doc.get("Message")), str) and doc.get("message", doc.get("Message"))
    assert headers.get("Content-Type", headers.get("content-type")) == "application/x-amz-json-1.1"


def test_wrong_secret_is_invalid_signature(api):
    creds = dict(api.creds["alice"], SecretAccessKey="A" * 40)
    with raises_code("InvalidSignatureException"):
        make_client(api.endpoint, creds).list_keys()


def test_unknown_access_key_is_unrecognized_client(api):
    creds = {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    with raises_code("UnrecognizedClientException"):
        make_client(api.endpoint, creds).list_keys()


def test_body_changed_after_signing(api):
    url, headers, _ = signed_request(api.endpoint, api.creds["alice"], "GenerateRandom", {"NumberOfBytes": 8})
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    body = json.dumps({"NumberOfBytes": 9}).encode()
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    conn.request("POST", "/", body=body, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 400
    assert error_type(json.loads(resp.read())) == "InvalidSignatureException"


def test_request_ten_minutes_old(api):
    when = utcnow() - datetime.timedelta(minutes=10)
    status, _, doc = post(api.endpoint, api.creds["alice"], "ListKeys", {}, when=when)
    assert status == 400
    # AWS answers a stale signature with InvalidSignatureException "Signature expired: ..."
    assert error_type(doc) == "InvalidSignatureException", doc
    assert "expired" in json.dumps(doc).lower(), doc


def test_request_ten_minutes_ahead(api):
    when = utcnow() + datetime.timedelta(minutes=10)
    status, _, doc = post(api.endpoint, api.creds["alice"], "ListKeys", {}, when=when)
    assert status == 400 and error_type(doc) == "InvalidSignatureException", doc


def test_request_within_skew_accepted(api):
    when = utcnow() - datetime.timedelta(minutes=3)
    status, _, doc = post(api.endpoint, api.creds["alice"], "ListKeys", {}, when=when)
    assert status == 200, doc


def test_stale_request_through_boto3(api, monkeypatch):
    import botocore.auth

    past = utcnow() - datetime.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: past)
    with raises_code("InvalidSignatureException"):
        api.server.client(api.creds["alice"]).list_keys()


@pytest.mark.parametrize("region,service", [("us-east-1", "kms"), (REGION, "s3")])
def test_wrong_credential_scope(api, region, service):
    status, _, doc = post(api.endpoint, api.creds["alice"], "ListKeys", {}, region=region, service=service)
    assert status == 400 and error_type(doc) == "InvalidSignatureException", doc


def test_security_token_refused(api):
    with raises_code("UnrecognizedClientException", "InvalidSignatureException", "AccessDeniedException"):
        make_client(api.endpoint, api.creds["alice"], session_token="FwoGZXIvYXdzEXAMPLETOKEN").list_keys()


def test_unsigned_request(api):
    status, _, doc = post(api.endpoint, api.creds["alice"], "ListKeys", {}, sign=False)
    assert status == 400
    assert error_type(doc) == "MissingAuthenticationTokenException", doc


def test_unknown_operation(api):
    status, _, doc = post(api.endpoint, api.creds["alice"], "FrobnicateKey", {})
    assert status == 400 and error_type(doc) == "UnknownOperationException", doc


def test_malformed_json_body(api):
    status, _, doc = post(api.endpoint, api.creds["alice"], "ListKeys", b"{not json")
    assert status == 400
    assert error_type(doc) in ("SerializationException", "ValidationException"), doc


def test_wrong_type_is_validation_or_serialization(api):
    status, _, doc = post(api.endpoint, api.creds["alice"], "GenerateRandom", {"NumberOfBytes": "many"})
    assert status == 400
    assert error_type(doc) in ("SerializationException", "ValidationException"), doc


def read_status(sock, timeout=5.0):
    """The status code of the HTTP response on `sock`, or None if it closed without one."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    if not data.startswith(b"HTTP/1."):
        return None
    return int(data.split(b" ", 2)[1])


def test_oversized_request_refused_server_survives(api):
    """A 2 MiB body (beyond any KMS request) is refused with a 4xx answer, before or after
    the body is sent; a server may stop reading, so the send may break off."""
    _, headers, body = signed_request(
        api.endpoint, api.creds["alice"], "Encrypt", {"KeyId": "alias/x", "Plaintext": "A" * (2 * 1024 * 1024)}
    )
    head = "POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % api.server.port
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "host")
    if "content-length" not in {k.lower() for k in headers}:
        head += f"Content-Length: {len(body)}\r\n"
    sock = socket.create_connection(("127.0.0.1", api.server.port), timeout=10)
    try:
        sock.sendall(head.encode() + b"\r\n")
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = read_status(sock)
    finally:
        sock.close()
    assert status in (400, 413), f"an oversized request got {status}"
    status, _, doc = post(api.endpoint, api.creds["alice"], "ListKeys", {})
    assert status == 200


def test_keep_alive_many_requests_one_connection(api):
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    conn.connect()
    sock = conn.sock
    for i in range(20):
        _, headers, body = signed_request(api.endpoint, api.creds["alice"], "GenerateRandom", {"NumberOfBytes": 4})
        conn.request("POST", "/", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert conn.sock is sock, f"the server closed the connection after request {i}"
    conn.close()


def test_slow_clients_do_not_pin_workers(api):
    """Half-open and slow connections must not keep real callers waiting."""
    idle = []
    try:
        for i in range(48):
            s = socket.create_connection(("127.0.0.1", api.server.port), timeout=5)
            if i % 2:
                s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n")
            idle.append(s)
        start = time.monotonic()
        api.alice.list_keys(Limit=1)
        assert time.monotonic() - start < 3.0
    finally:
        for s in idle:
            s.close()


def test_disabled_and_deleted_access_key(fresh_api):
    api = fresh_api
    ak = api.keystore.access_key("dave")
    client = api.server.client(ak)
    client.list_keys()
    api.keystore.run(["access-key", "disable", ak["AccessKeyId"]])
    with raises_code("UnrecognizedClientException", "AccessDeniedException"):
        client.list_keys()
    api.keystore.run(["access-key", "enable", ak["AccessKeyId"]])
    client.list_keys()
    api.keystore.run(["access-key", "delete", ak["AccessKeyId"]])
    with raises_code("UnrecognizedClientException"):
        client.list_keys()


def test_access_key_list_never_shows_secret(api):
    out = api.keystore.run(["access-key", "list", "--json"]).stdout.decode()
    doc = json.loads(out)
    ids = {m["AccessKeyId"] for m in doc["AccessKeyMetadata"]}
    assert api.creds["bob"]["AccessKeyId"] in ids
    for creds in api.creds.values():
        assert creds["SecretAccessKey"] not in out


def test_graceful_sigterm_flushes_audit(fresh_api):
    """SIGTERM: the server exits 0 and every answered call is in the audit trail at once
    (no waiting for a batch), with the chain intact."""
    api = fresh_api
    for _ in range(20):
        api.alice.generate_random(NumberOfBytes=8)
    assert api.server.terminate() == 0
    api.keystore.run(["audit", "verify"])
    events = api.keystore.audit("--operation", "GenerateRandom")
    assert len(events) == 20
    assert not (api.keystore.dir / "keystore.db.serve.json").exists(), "the server's state file outlived it"


def test_status_shows_running_server(api):
    out = api.keystore.run(["status"]).stdout.decode()
    assert f"127.0.0.1:{api.server.port}" in out, out


def test_unix_socket_caller_is_peer_uid(api):
    path = api.server.socket_path
    assert path, f"no socket in the readiness line: {api.server.ready}"
    import os
    import stat

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(path)

    def call(op, body):
        conn = UnixConnection("localhost")
        conn.request("POST", "/", body=json.dumps(body), headers={
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{op}"})
        resp = conn.getresponse()
        doc = json.loads(resp.read() or b"null")
        conn.close()
        return resp.status, doc

    status, doc = call("CreateKey", {"Description": "over the socket"})
    assert status == 200, doc
    key = doc["KeyMetadata"]["KeyId"]
    status, doc = call("Encrypt", {"KeyId": key, "Plaintext": "aGVsbG8="})
    assert status == 200, doc
    status, doc = call("Decrypt", {"CiphertextBlob": doc["CiphertextBlob"]})
    assert status == 200 and doc["Plaintext"] == "aGVsbG8=", doc
    # The key's default policy names uid 0 (the socket caller), not alice.
    with raises_code("AccessDeniedException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"x")
