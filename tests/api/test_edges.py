"""Edges AWS defines and SDK users meet: authorization before key state, ReEncrypt's two
permissions, DryRun, ARNs of another region or account, state rules for aliases and
deletion, paginators, header tampering."""

import http.client
import json

import pytest

from kmsapi import ACCOUNT, REGION, alias_arn, key_arn, raises_code, signed_request, user_arn, error_type

BOB = user_arn("bob")


def test_unauthorized_caller_learns_nothing_about_state(api, key):
    """A disabled or pending key answers AccessDenied, not its state, to a caller the policy
    does not allow (AWS authorizes before it looks at the key state)."""
    api.alice.disable_key(KeyId=key)
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    api.alice.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("AccessDeniedException"):
        api.bob.cancel_key_deletion(KeyId=key)
    api.alice.cancel_key_deletion(KeyId=key)


def test_reencrypt_needs_from_and_to(api):
    src, dst = api.new_key("re src"), api.new_key("re dst")
    blob = api.alice.encrypt(KeyId=src, Plaintext=b"moving")["CiphertextBlob"]
    api.alice.create_grant(KeyId=src, GranteePrincipal=BOB, Operations=["Decrypt"])
    with raises_code("AccessDeniedException"):
        api.bob.re_encrypt(CiphertextBlob=blob, DestinationKeyId=dst)
    api.alice.create_grant(KeyId=src, GranteePrincipal=BOB, Operations=["ReEncryptFrom"])
    with raises_code("AccessDeniedException"):
        api.bob.re_encrypt(CiphertextBlob=blob, DestinationKeyId=dst)
    api.alice.create_grant(KeyId=dst, GranteePrincipal=BOB, Operations=["ReEncryptTo"])
    new = api.bob.re_encrypt(CiphertextBlob=blob, DestinationKeyId=dst)["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=new)["Plaintext"] == b"moving"


def test_reencrypt_to_disabled_key(api):
    src, dst = api.new_key(), api.new_key()
    blob = api.alice.encrypt(KeyId=src, Plaintext=b"x")["CiphertextBlob"]
    api.alice.disable_key(KeyId=dst)
    with raises_code("DisabledException"):
        api.alice.re_encrypt(CiphertextBlob=blob, DestinationKeyId=dst)
    api.alice.enable_key(KeyId=dst)


def test_dry_run(api, key):
    """DryRun checks permission and answers DryRunOperationException instead of doing it."""
    with raises_code("DryRunOperationException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"x", DryRun=True)
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x", DryRun=True)
    before = api.alice.list_grants(KeyId=key)["Grants"]
    with raises_code("DryRunOperationException"):
        api.alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"], DryRun=True)
    assert api.alice.list_grants(KeyId=key)["Grants"] == before


@pytest.mark.parametrize(
    "make",
    [
        lambda k: f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{k}",
        lambda k: f"arn:aws:kms:{REGION}:444455556666:key/{k}",
    ],
    ids=["other-region", "other-account"],
)
def test_arn_of_elsewhere_is_not_this_key(api, key, make):
    with raises_code("NotFoundException", "AccessDeniedException"):
        api.alice.encrypt(KeyId=make(key), Plaintext=b"x")


def test_alias_arn_of_other_account(api, key):
    api.alice.create_alias(AliasName="alias/edge-acct", TargetKeyId=key)
    with raises_code("NotFoundException", "AccessDeniedException"):
        api.alice.encrypt(KeyId=f"arn:aws:kms:{REGION}:444455556666:alias/edge-acct", Plaintext=b"x")


@pytest.mark.parametrize("ref", ["key/abc", "arn:aws:kms:nonsense", "not-a-uuid", "alias"])
def test_malformed_key_ids(api, ref):
    with raises_code("NotFoundException", "ValidationException", "InvalidArnException"):
        api.alice.describe_key(KeyId=ref)


def test_deletion_state_rules(api, key):
    api.alice.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    with raises_code("KMSInvalidStateException"):
        api.alice.schedule_key_deletion(KeyId=key, PendingWindowInDays=8)
    with raises_code("KMSInvalidStateException"):
        api.alice.create_alias(AliasName="alias/to-pending", TargetKeyId=key)
    # A key pending deletion is still listed (AWS lists keys in every state).
    assert key in [k["KeyId"] for k in api.alice.list_keys(Limit=1000)["Keys"]]
    api.alice.cancel_key_deletion(KeyId=key)
    api.alice.enable_key(KeyId=key)


def test_enable_disable_idempotent(api, key):
    api.alice.enable_key(KeyId=key)
    api.alice.disable_key(KeyId=key)
    api.alice.disable_key(KeyId=key)
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    api.alice.enable_key(KeyId=key)


def test_create_key_with_reserved_tag_leaves_no_key(api):
    before = {k["KeyId"] for k in api.alice.list_keys(Limit=1000)["Keys"]}
    with raises_code("TagException"):
        api.alice.create_key(Tags=[{"TagKey": "aws:nope", "TagValue": "x"}])
    assert {k["KeyId"] for k in api.alice.list_keys(Limit=1000)["Keys"]} == before


def test_context_keys_are_case_sensitive(api, key):
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"App": "x"})["CiphertextBlob"]
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "x"})


def test_boto3_paginators(api):
    made = {api.new_key(f"paginated {i}") for i in range(3)}
    seen = []
    for page in api.alice.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 2}):
        seen += [k["KeyId"] for k in page["Keys"]]
    assert made <= set(seen) and len(seen) == len(set(seen))


def test_cli_auto_pagination(api):
    made = {api.new_key(f"cli page {i}") for i in range(3)}
    out = json.loads(api.aws("kms", "list-keys", "--page-size", "1").stdout)
    ids = [k["KeyId"] for k in out["Keys"]]
    assert made <= set(ids) and len(ids) == len(set(ids))


def test_target_header_changed_after_signing(api, key):
    _, headers, body = signed_request(api.endpoint, api.creds["alice"], "DescribeKey", {"KeyId": key})
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    headers["X-Amz-Target"] = "TrentService.DisableKey"
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    conn.request("POST", "/", body=body, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 400 and error_type(json.loads(resp.read())) == "InvalidSignatureException"
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["Enabled"] is True


def test_validation_failures_are_audited(fresh_api):
    import time

    api = fresh_api
    with raises_code("ValidationException"):
        api.alice_raw.generate_random(NumberOfBytes=5000)
    deadline = time.monotonic() + 5
    while True:
        evs = api.keystore.audit("--error-code", "ValidationException")
        if evs or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e["Operation"] for e in evs] == ["GenerateRandom"], evs
    assert evs[0]["PrincipalArn"] == user_arn("alice")


@pytest.mark.parametrize(
    "extra",
    [
        {"Content-Length": None},
        {"X-Amz-Content-Sha256": None},
        {"User-Agent-Like": "x"},
    ],
    ids=["content-length-signed", "content-sha256-signed", "extra-signed-header"],
)
def test_other_sdks_signed_header_sets(api, extra):
    """SDKs differ in which headers they sign (Go and Java sign Content-Length, some send
    X-Amz-Content-Sha256): any header set AWS accepts must verify."""
    import hashlib

    body = json.dumps({"NumberOfBytes": 8}).encode()
    headers = {}
    for k, v in extra.items():
        if k == "Content-Length":
            headers[k] = str(len(body))
        elif k == "X-Amz-Content-Sha256":
            headers[k] = hashlib.sha256(body).hexdigest()
        else:
            headers[k] = v
    _, signed_headers, data = signed_request(api.endpoint, api.creds["alice"], "GenerateRandom", body, headers=headers)
    assert any(k.lower() in signed_headers["Authorization"].lower() for k in headers), signed_headers["Authorization"]
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    conn.request("POST", "/", body=data, headers=signed_headers)
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    assert resp.status == 200, doc


def test_connection_survives_error_answers(api):
    """Keep-alive after a 400: the next request on the same connection is served."""
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=10)
    bad = dict(api.creds["alice"], SecretAccessKey="D" * 40)
    for creds, expect in [(bad, 400), (api.creds["alice"], 200), (api.creds["alice"], 400), (api.creds["alice"], 200)]:
        target, body = ("DescribeKey", {"KeyId": "alias/none"}) if expect == 400 and creds is not bad else ("GenerateRandom", {"NumberOfBytes": 4})
        _, headers, data = signed_request(api.endpoint, creds, target, body)
        conn.request("POST", "/", body=data, headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == expect


def test_unicode_context_and_every_byte(api, key):
    ctx = {"ключ": "значение 🎉", "日本": "語", "e\u0301": "\u00e9"}
    data = bytes(range(256)) * 4
    blob = api.alice.encrypt(KeyId=key, Plaintext=data, EncryptionContext=ctx)["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == data
    # Unicode is compared as sent: NFD "é" and NFC "é" are different context values.
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(CiphertextBlob=blob, EncryptionContext={**ctx, "e\u0301": "e\u0301"})
