"""`kmsfs audit --format cloudtrail` against the shape of a CloudTrail KMS event published in
AWS's documentation, `--format cloudtrail-records`, `--follow`, the jq one-liner of
docs/SERVER.md, and `audit verify` covering every exported event."""

import base64
import json
import re
import select
import shutil
import subprocess
import time

import pytest

from kmsapi import ACCOUNT, REGION, kmsfs_bin, kmsfs_test_clock_bin, raises_code, user_arn

# The reference: the CloudTrail log entry of a Decrypt with a symmetric key, from AWS KMS's
# developer guide, "Decrypt" under "Examples of AWS KMS log entries"
# (https://docs.aws.amazon.com/kms/latest/developerguide/ct-decrypt.html, eventVersion 1.11).
AWS_DECRYPT_EVENT = json.loads("""
{
  "eventVersion": "1.11",
  "userIdentity": {
    "type": "IAMUser",
    "principalId": "EX_PRINCIPAL_ID",
    "arn": "arn:aws:iam::111122223333:user/Alice",
    "accountId": "111122223333",
    "accessKeyId": "EXAMPLE_KEY_ID",
    "userName": "Alice"
  },
  "eventTime": "2025-05-20T20:45:00Z",
  "eventSource": "kms.amazonaws.com",
  "eventName": "Decrypt",
  "awsRegion": "us-west-2",
  "sourceIPAddress": "192.0.2.0",
  "userAgent": "AWS Internal",
  "requestParameters": {
    "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
    "keyId": "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "encryptionContext": {"Department": "Engineering", "Project": "Alpha"}
  },
  "responseElements": null,
  "additionalEventData": {
    "keyMaterialId": "123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0"
  },
  "requestID": "12345126-30d5-4b28-98b9-9153da559963",
  "eventID": "abcde202-ba1a-467c-b4ba-f729d45ae521",
  "readOnly": true,
  "resources": [
    {
      "accountId": "111122223333",
      "type": "AWS::KMS::Key",
      "ARN": "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    }
  ],
  "eventType": "AwsApiCall",
  "managementEvent": true,
  "recipientAccountId": "111122223333",
  "eventCategory": "Management",
  "tlsDetails": {
    "tlsVersion": "TLSv1.2",
    "cipherSuite": "ECDHE-RSA-AES256-GCM-SHA384",
    "clientProvidedHostHeader": "kms.us-west-2.amazonaws.com"
  }
}
""")

# Fields of the reference kmsfs cannot have: the TLS details of a loopback call, and the id
# of AWS's key material (kmsfs numbers versions instead).
NOT_APPLICABLE = {"tlsDetails", "additionalEventData.keyMaterialId"}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def same_shape(reference, ours, where=""):
    """Every field of `reference` is in `ours` with the same JSON type (recursively)."""
    if where in NOT_APPLICABLE:
        return
    if isinstance(reference, dict):
        assert isinstance(ours, dict), f"{where}: {ours!r} is not an object"
        for name, value in reference.items():
            path = f"{where}.{name}" if where else name
            if path in NOT_APPLICABLE:
                continue
            assert name in ours, f"{path} is missing from {json.dumps(ours)[:400]}"
            same_shape(value, ours[name], path)
    elif isinstance(reference, list):
        assert isinstance(ours, list) and ours, f"{where}: {ours!r} is not a non-empty list"
        for item in ours:
            same_shape(reference[0], item, where + "[]")
    elif reference is None:
        assert ours is None, f"{where}: {ours!r} is not null"
    else:
        assert type(ours) is type(reference), f"{where}: {ours!r} is not a {type(reference).__name__}"


def cloudtrail(api, *args):
    out = api.keystore.run(["audit", "--format", "cloudtrail", *args]).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def test_a_decrypt_has_the_shape_of_aws_example(api):
    key = api.new_key("cloudtrail")
    ctx = {"Department": "Engineering", "Project": "Alpha"}
    secret = b"the plaintext never reaches the trail"
    blob = api.alice.encrypt(KeyId=key, Plaintext=secret, EncryptionContext=ctx)["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == secret
    records = cloudtrail(api, "--key", key)
    decrypt = [r for r in records if r["eventName"] == "Decrypt"][-1]
    same_shape(AWS_DECRYPT_EVENT, decrypt)
    alice = api.creds["alice"]
    assert decrypt["userIdentity"]["arn"] == user_arn("alice")
    assert decrypt["userIdentity"]["accessKeyId"] == alice["AccessKeyId"]
    assert decrypt["userIdentity"]["accountId"] == ACCOUNT and decrypt["userIdentity"]["userName"] == "alice"
    assert decrypt["eventSource"] == "kms.amazonaws.com" and decrypt["awsRegion"] == REGION
    assert decrypt["sourceIPAddress"] == "127.0.0.1"
    assert decrypt["requestParameters"]["encryptionContext"] == ctx
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key}"
    assert decrypt["requestParameters"]["keyId"] == arn
    assert decrypt["resources"] == [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": arn}]
    assert decrypt["readOnly"] is True and decrypt["eventType"] == "AwsApiCall"
    assert decrypt["eventCategory"] == "Management" and decrypt["managementEvent"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", decrypt["eventTime"])
    assert UUID.match(decrypt["eventID"]) and UUID.match(decrypt["requestID"])
    assert "errorCode" not in decrypt
    everything = json.dumps(records)
    assert "Plaintext" not in everything
    assert base64.b64encode(secret).decode() not in everything and secret.decode() not in everything


def test_a_refusal_carries_error_code_and_message(api):
    key = api.new_key("refused")
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    r = [r for r in cloudtrail(api, "--key", key) if r["eventName"] == "Encrypt"][-1]
    assert r["errorCode"] == "AccessDeniedException" and isinstance(r["errorMessage"], str) and r["errorMessage"]
    assert r["userIdentity"]["arn"] == user_arn("bob")


def test_a_local_user_is_named_by_uid(api):
    api.keystore.run(["key", "create", "--alias", "alias/local-ct"])
    r = [r for r in cloudtrail(api) if r["eventName"] == "CreateKey"][-1]
    assert r["userIdentity"]["type"] == "UnixUser" and r["userIdentity"]["principalId"] == "0"
    assert r["userIdentity"]["userName"] == "root" and r["userIdentity"]["arn"] == f"arn:kmsfs:unix::{ACCOUNT}:uid/0"
    assert r["readOnly"] is False and r["sourceIPAddress"] == "localhost"


def test_ids_are_stable_and_records_layout_matches_and_verify_covers_all(api):
    api.new_key("count")
    first = cloudtrail(api)
    again = cloudtrail(api)
    assert [r["eventID"] for r in first] == [r["eventID"] for r in again[: len(first)]]
    assert len({r["eventID"] for r in again}) == len(again), "eventIDs are unique"
    doc = json.loads(api.keystore.run(["audit", "--format", "cloudtrail-records"]).stdout)
    assert list(doc) == ["Records"] and [r["eventID"] for r in doc["Records"]][: len(again)] == [r["eventID"] for r in again]
    report = api.keystore.json(["audit", "verify"])
    exported = doc["Records"]
    seqs = [r["additionalEventData"]["kmsfsSequence"] for r in exported]
    assert report["Intact"] is True
    # Every event the chain verified is exported, once, in order (nothing written since).
    assert seqs == list(range(1, report["Events"] + 1)), (len(seqs), report["Events"])


def test_follow_streams_new_events(api):
    proc = subprocess.Popen(
        [kmsfs_bin(), "audit", "--format", "cloudtrail", "--follow", "--limit", "1"],
        env=api.keystore.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        def next_record(timeout=10):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 0.2)
                if ready:
                    line = proc.stdout.readline()
                    assert line, f"--follow exited: {proc.stderr.read().decode()}"
                    return json.loads(line)
            raise AssertionError("no record within the timeout")

        next_record()  # the newest existing one (--limit 1)
        key = api.new_key("followed")
        r = next_record()
        assert r["eventName"] == "CreateKey" and r["requestParameters"]["keyId"].endswith(key)
        api.alice.disable_key(KeyId=key)
        assert next_record()["eventName"] == "DisableKey"
        assert proc.poll() is None, "--follow keeps running"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is installed by scripts/install-deps.sh")
def test_the_documented_jq_one_liner(api):
    """docs/SERVER.md: who decrypted files under alias/finance yesterday."""
    text = (__import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "SERVER.md").read_text()
    match = re.search(r"<!-- jq-who-decrypted -->\n```sh\n(.*?)\n```", text, re.S)
    assert match, "docs/SERVER.md has no jq one-liner block"
    command = match.group(1)
    ks = api.keystore
    ks.run(["key", "create", "--alias", "alias/finance"])
    finance = ks.json(["key", "describe", "alias/finance"])["KeyId"]
    other = api.new_key("not finance")
    blob = api.alice.encrypt(KeyId=other, Plaintext=b"x")["CiphertextBlob"]
    api.alice.decrypt(CiphertextBlob=blob)
    # Yesterday, as the KMS clock sees it: the calls are made with the clock a day back.
    env = dict(ks.env(), KMSFS_CLOCK_OFFSET_SECS=str(-86400))
    blob = subprocess.run([kmsfs_test_clock_bin(), "encrypt", "--key", "alias/finance"], input=b"q3", env=env,
                          capture_output=True, check=True).stdout
    subprocess.run([kmsfs_test_clock_bin(), "decrypt"], input=blob, env=env, capture_output=True, check=True)
    # Today's decrypt of the same key is not yesterday's.
    subprocess.run([kmsfs_bin(), "decrypt"], input=blob, env=ks.env(), capture_output=True, check=True)
    path_env = dict(ks.env(), PATH=f"{__import__('os').path.dirname(kmsfs_bin())}:{ks.env()['PATH']}")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=path_env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["root -"], (finance, result.stdout)
