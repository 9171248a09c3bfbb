"""Key lifecycle over the API: CreateKey, DescribeKey, ListKeys paging, Enable/DisableKey,
Schedule/CancelKeyDeletion, rotation, UpdateKeyDescription, GetKeyLastUsage."""

import datetime
import re
import time

import pytest

from kmsapi import ACCOUNT, REGION, alias_arn, assert_enums, key_arn, raises_code

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def test_create_key_metadata(api, kms_model):
    resp = api.alice.create_key(Description="payments", Tags=[{"TagKey": "team", "TagValue": "pay"}])
    meta = resp["KeyMetadata"]
    assert UUID.match(meta["KeyId"]), meta["KeyId"]
    assert meta["Arn"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{meta['KeyId']}"
    assert meta["AWSAccountId"] == ACCOUNT
    assert meta["Description"] == "payments"
    assert meta["Enabled"] is True and meta["KeyState"] == "Enabled"
    assert meta["KeyManager"] == "CUSTOMER"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT" and meta["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert abs((now() - meta["CreationDate"]).total_seconds()) < 60
    assert_enums(kms_model, "CreateKey", resp)
    tags = api.alice.list_resource_tags(KeyId=meta["KeyId"])["Tags"]
    assert tags == [{"TagKey": "team", "TagValue": "pay"}]


@pytest.mark.parametrize("spec", ["RSA_2048", "ECC_NIST_P256", "HMAC_256"])
def test_create_key_other_specs_refused_cleanly(api, spec):
    before = {k["KeyId"] for k in api.alice.list_keys()["Keys"]}
    usage = "GENERATE_VERIFY_MAC" if spec.startswith("HMAC") else "SIGN_VERIFY"
    with raises_code("UnsupportedOperationException", "ValidationException"):
        api.alice.create_key(KeySpec=spec, KeyUsage=usage)
    after = {k["KeyId"] for k in api.alice.list_keys()["Keys"]}
    assert after == before, "a refused CreateKey left a key behind"


def test_create_key_bad_enum_is_validation(api):
    with raises_code("ValidationException") as e:
        api.alice_raw.create_key(KeySpec="NOT_A_SPEC")
    assert "1 validation error detected" in e.message and "keySpec" in e.message, e.message


def test_create_key_description_too_long(api):
    with raises_code("ValidationException") as e:
        api.alice_raw.create_key(Description="x" * 8193)
    assert "length less than or equal to 8192" in e.message, e.message


@pytest.mark.parametrize("form", ["id", "arn", "alias", "alias_arn"])
def test_describe_key_by_every_key_id_form(api, form, kms_model):
    key_id = api.new_key()
    alias = f"alias/describe-{form}-{key_id[:8]}"
    api.alice.create_alias(AliasName=alias, TargetKeyId=key_id)
    ref = {"id": key_id, "arn": key_arn(key_id), "alias": alias, "alias_arn": alias_arn(alias)}[form]
    resp = api.alice.describe_key(KeyId=ref)
    assert resp["KeyMetadata"]["KeyId"] == key_id
    assert resp["KeyMetadata"]["Arn"] == key_arn(key_id)
    assert_enums(kms_model, "DescribeKey", resp)


@pytest.mark.parametrize(
    "ref",
    [
        "00000000-0000-0000-0000-000000000000",
        key_arn("00000000-0000-0000-0000-000000000000"),
        "alias/does-not-exist",
        alias_arn("alias/does-not-exist"),
    ],
)
def test_unknown_key_not_found(api, ref):
    with raises_code("NotFoundException"):
        api.alice.describe_key(KeyId=ref)
    with raises_code("NotFoundException"):
        api.alice.encrypt(KeyId=ref, Plaintext=b"x")


def test_list_keys_paging(api):
    created = {api.new_key(description=f"page {i}") for i in range(5)}
    seen, marker, pages = [], None, 0
    while True:
        kw = {"Limit": 2}
        if marker:
            kw["Marker"] = marker
        resp = api.alice.list_keys(**kw)
        pages += 1
        assert len(resp["Keys"]) <= 2
        for k in resp["Keys"]:
            assert k["KeyArn"] == key_arn(k["KeyId"])
        seen += [k["KeyId"] for k in resp["Keys"]]
        if not resp["Truncated"]:
            assert "NextMarker" not in resp
            break
        assert resp["NextMarker"]
        marker = resp["NextMarker"]
        assert pages < 100, "paging does not end"
    assert len(seen) == len(set(seen)), "a key appeared on two pages"
    assert created <= set(seen)
    assert pages >= 3
    # One unbounded call lists the same keys.
    assert set(seen) == {k["KeyId"] for k in api.alice.list_keys()["Keys"]}


def test_list_keys_bad_marker_and_limit(api):
    with raises_code("InvalidMarkerException"):
        api.alice.list_keys(Marker="not-a-marker-this-server-gave")
    with raises_code("ValidationException"):
        api.alice_raw.list_keys(Limit=0)
    with raises_code("ValidationException"):
        api.alice_raw.list_keys(Limit=1001)


def test_disable_enable(api, key):
    api.alice.disable_key(KeyId=key)
    meta = api.alice.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["Enabled"] is False and meta["KeyState"] == "Disabled"
    with raises_code("DisabledException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("DisabledException"):
        api.alice.generate_data_key(KeyId=key, KeySpec="AES_256")
    api.alice.enable_key(KeyId=key)
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    api.alice.encrypt(KeyId=key, Plaintext=b"x")


def test_disabled_key_refuses_decrypt_of_earlier_blob(api, key):
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"before")["CiphertextBlob"]
    api.alice.disable_key(KeyId=key)
    with raises_code("DisabledException"):
        api.alice.decrypt(CiphertextBlob=blob)
    api.alice.enable_key(KeyId=key)
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"


def test_management_ops_by_key_arn(api, key):
    arn = key_arn(key)
    api.alice.disable_key(KeyId=arn)
    api.alice.enable_key(KeyId=arn)
    api.alice.update_key_description(KeyId=arn, Description="by arn")
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "by arn"


def test_schedule_and_cancel_deletion(api, key):
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"doomed")["CiphertextBlob"]
    resp = api.alice.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert resp["KeyId"] == key_arn(key)
    assert resp["KeyState"] == "PendingDeletion"
    assert resp["PendingWindowInDays"] == 7
    expected = now() + datetime.timedelta(days=7)
    assert abs((resp["DeletionDate"] - expected).total_seconds()) < 3600
    meta = api.alice.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["Enabled"] is False
    assert "DeletionDate" in meta
    with raises_code("KMSInvalidStateException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("KMSInvalidStateException"):
        api.alice.decrypt(CiphertextBlob=blob)
    with raises_code("KMSInvalidStateException"):
        api.alice.enable_key(KeyId=key)
    assert api.alice.cancel_key_deletion(KeyId=key)["KeyId"] == key_arn(key)
    meta = api.alice.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "Disabled", "AWS leaves a cancelled key Disabled"
    assert "DeletionDate" not in meta
    api.alice.enable_key(KeyId=key)
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"doomed"


def test_deletion_default_window_is_30_days(api, key):
    resp = api.alice.schedule_key_deletion(KeyId=key)
    assert resp["PendingWindowInDays"] == 30
    api.alice.cancel_key_deletion(KeyId=key)


@pytest.mark.parametrize("days", [6, 31])
def test_deletion_window_out_of_range(api, key, days):
    with raises_code("ValidationException") as e:
        api.alice.schedule_key_deletion(KeyId=key, PendingWindowInDays=days)
    assert "pendingWindowInDays" in e.message, e.message
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_cancel_deletion_of_enabled_key_is_invalid_state(api, key):
    with raises_code("KMSInvalidStateException"):
        api.alice.cancel_key_deletion(KeyId=key)


def test_rotation_enable_status_disable(api, key, kms_model):
    status = api.alice.get_key_rotation_status(KeyId=key)
    assert status["KeyRotationEnabled"] is False
    api.alice.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    status = api.alice.get_key_rotation_status(KeyId=key)
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 90
    expected = now() + datetime.timedelta(days=90)
    assert abs((status["NextRotationDate"] - expected).total_seconds()) < 2 * 86400
    assert status["KeyId"] in (key, key_arn(key))
    assert_enums(kms_model, "GetKeyRotationStatus", status)
    api.alice.disable_key_rotation(KeyId=key)
    assert api.alice.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False


def test_rotation_default_period_is_365(api, key):
    api.alice.enable_key_rotation(KeyId=key)
    assert api.alice.get_key_rotation_status(KeyId=key)["RotationPeriodInDays"] == 365


@pytest.mark.parametrize("days", [89, 2561])
def test_rotation_period_out_of_range(api, key, days):
    with raises_code("ValidationException") as e:
        api.alice_raw.enable_key_rotation(KeyId=key, RotationPeriodInDays=days)
    assert "rotationPeriodInDays" in e.message, e.message


def test_rotate_on_demand_keeps_old_blobs_decrypting(api, key, kms_model):
    old = api.alice.encrypt(KeyId=key, Plaintext=b"v1 data")["CiphertextBlob"]
    assert api.alice.list_key_rotations(KeyId=key)["Rotations"] == []
    # AWS's examples show the key id here and in the rotation entries, the ARN elsewhere.
    assert api.alice.rotate_key_on_demand(KeyId=key)["KeyId"] in (key, key_arn(key))
    rotations = api.alice.list_key_rotations(KeyId=key)
    assert_enums(kms_model, "ListKeyRotations", rotations)
    assert len(rotations["Rotations"]) == 1
    entry = rotations["Rotations"][0]
    assert entry["KeyId"] in (key, key_arn(key))
    assert entry["RotationType"] == "ON_DEMAND"
    assert abs((now() - entry["RotationDate"]).total_seconds()) < 60
    new = api.alice.encrypt(KeyId=key, Plaintext=b"v2 data")["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=old)["Plaintext"] == b"v1 data"
    assert api.alice.decrypt(CiphertextBlob=new)["Plaintext"] == b"v2 data"
    assert rotations.get("Truncated") is False


def test_list_key_rotations_paging(api, key):
    for _ in range(3):
        api.alice.rotate_key_on_demand(KeyId=key)
    first = api.alice.list_key_rotations(KeyId=key, Limit=2)
    assert len(first["Rotations"]) == 2 and first["Truncated"] is True
    rest = api.alice.list_key_rotations(KeyId=key, Limit=2, Marker=first["NextMarker"])
    assert len(rest["Rotations"]) == 1 and rest["Truncated"] is False
    dates = [r["RotationDate"] for r in first["Rotations"] + rest["Rotations"]]
    assert len(dates) == 3


def test_rotation_of_disabled_key_refused(api, key):
    api.alice.disable_key(KeyId=key)
    # AWS lists DisabledException for both; its key-state table says KMSInvalidStateException.
    with raises_code("DisabledException", "KMSInvalidStateException"):
        api.alice.rotate_key_on_demand(KeyId=key)
    with raises_code("DisabledException", "KMSInvalidStateException"):
        api.alice.enable_key_rotation(KeyId=key)
    api.alice.enable_key(KeyId=key)


def test_update_key_description(api, key):
    api.alice.update_key_description(KeyId=key, Description="new words")
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "new words"
    with raises_code("NotFoundException"):
        api.alice.update_key_description(KeyId="alias/nope", Description="x")


def test_get_key_last_usage(api, key, kms_model):
    fresh = api.alice.get_key_last_usage(KeyId=key)
    assert_enums(kms_model, "GetKeyLastUsage", fresh)
    assert not fresh.get("KeyLastUsage"), f"an unused key has a last usage: {fresh}"
    assert "TrackingStartDate" in fresh and "KeyCreationDate" in fresh
    assert fresh["KeyCreationDate"] >= fresh["TrackingStartDate"] - datetime.timedelta(seconds=1)

    blob = api.alice.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    usage = api.alice.get_key_last_usage(KeyId=key)["KeyLastUsage"]
    assert usage["Operation"] == "Encrypt"
    assert abs((now() - usage["Timestamp"]).total_seconds()) < 60

    time.sleep(0.01)
    api.alice.decrypt(CiphertextBlob=blob)
    usage2 = api.alice.get_key_last_usage(KeyId=key)["KeyLastUsage"]
    assert usage2["Operation"] == "Decrypt"
    assert usage2["Timestamp"] >= usage["Timestamp"]

    # Only successful cryptographic operations count: a refused one, and a DescribeKey,
    # leave the Decrypt as the last use.
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    api.alice.describe_key(KeyId=key)
    assert api.alice.get_key_last_usage(KeyId=key)["KeyLastUsage"]["Operation"] == "Decrypt"
    with raises_code("NotFoundException"):
        api.alice.get_key_last_usage(KeyId="alias/nope")
