"""The real aws CLI (`aws kms ... --endpoint-url`) against the server, credentials from the
environment only."""

import base64
import json

import pytest


def test_cli_key_lifecycle_and_crypto(api, tmp_path):
    meta = json.loads(api.aws("kms", "create-key", "--description", "from the cli").stdout)["KeyMetadata"]
    key = meta["KeyId"]
    assert meta["Arn"].startswith("arn:aws:kms:eu-west-1:111122223333:key/")
    api.aws("kms", "create-alias", "--alias-name", "alias/cli", "--target-key-id", key)
    described = json.loads(api.aws("kms", "describe-key", "--key-id", "alias/cli").stdout)
    assert described["KeyMetadata"]["KeyId"] == key

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"db password \x00\xff")
    out = api.aws("kms", "encrypt", "--key-id", "alias/cli", "--plaintext", f"fileb://{secret}",
                  "--encryption-context", "app=cli", "--query", "CiphertextBlob", "--output", "text")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(base64.b64decode(out.stdout.strip()))
    out = api.aws("kms", "decrypt", "--ciphertext-blob", f"fileb://{blob}", "--encryption-context", "app=cli",
                  "--query", "Plaintext", "--output", "text")
    assert base64.b64decode(out.stdout.strip()) == b"db password \x00\xff"

    keys = json.loads(api.aws("kms", "list-keys").stdout)["Keys"]
    assert key in [k["KeyId"] for k in keys]
    aliases = json.loads(api.aws("kms", "list-aliases", "--key-id", key).stdout)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/cli"]

    dk = json.loads(api.aws("kms", "generate-data-key", "--key-id", key, "--key-spec", "AES_256").stdout)
    assert len(base64.b64decode(dk["Plaintext"])) == 32
    rnd = json.loads(api.aws("kms", "generate-random", "--number-of-bytes", "16").stdout)
    assert len(base64.b64decode(rnd["Plaintext"])) == 16

    api.aws("kms", "disable-key", "--key-id", key)
    err = api.aws("kms", "encrypt", "--key-id", key, "--plaintext", f"fileb://{secret}", check=False)
    assert err.returncode != 0 and "(DisabledException)" in err.stderr, err.stderr
    api.aws("kms", "enable-key", "--key-id", key)
    api.aws("kms", "enable-key-rotation", "--key-id", key, "--rotation-period-in-days", "180")
    status = json.loads(api.aws("kms", "get-key-rotation-status", "--key-id", key).stdout)
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 180


@pytest.mark.parametrize(
    "args,code",
    [
        (["describe-key", "--key-id", "alias/none"], "NotFoundException"),
        (["generate-random", "--number-of-bytes", "2000"], "ValidationException"),
    ],
)
def test_cli_errors(api, args, code):
    out = api.aws("kms", *args, check=False)
    assert out.returncode in (254, 255), (out.returncode, out.stderr)
    assert f"An error occurred ({code})" in out.stderr, out.stderr


def test_cli_six_day_window(api):
    key = api.new_key()
    out = api.aws("kms", "schedule-key-deletion", "--key-id", key, "--pending-window-in-days", "6", check=False)
    assert out.returncode != 0 and "(ValidationException)" in out.stderr, out.stderr
    out = api.aws("kms", "schedule-key-deletion", "--key-id", key, "--pending-window-in-days", "7")
    assert json.loads(out.stdout)["KeyState"] == "PendingDeletion"


def test_cli_wrong_secret(api):
    creds = dict(api.creds["alice"], SecretAccessKey="B" * 40)
    out = api.aws("kms", "list-keys", creds=creds, check=False)
    assert out.returncode != 0 and "(InvalidSignatureException)" in out.stderr, out.stderr


def test_cli_denied_principal(api):
    key = api.new_key()
    out = api.aws("kms", "describe-key", "--key-id", key, user="bob", check=False)
    assert out.returncode != 0 and "(AccessDeniedException)" in out.stderr, out.stderr


def test_cli_policy_roundtrip(api, tmp_path):
    key = api.new_key()
    doc = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/alice"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:user/bob"}, "Action": "kms:DescribeKey", "Resource": "*"},
    ]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    api.aws("kms", "put-key-policy", "--key-id", key, "--policy-name", "default", "--policy", f"file://{path}")
    got = json.loads(json.loads(api.aws("kms", "get-key-policy", "--key-id", key, "--policy-name", "default").stdout)["Policy"])
    assert "arn:aws:iam::111122223333:user/bob" in json.dumps(got)
    api.aws("kms", "describe-key", "--key-id", key, user="bob")
    path.write_text("{broken")
    out = api.aws("kms", "put-key-policy", "--key-id", key, "--policy-name", "default", "--policy", f"file://{path}", check=False)
    assert "(MalformedPolicyDocumentException)" in out.stderr, out.stderr
