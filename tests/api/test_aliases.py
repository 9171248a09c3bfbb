"""CreateAlias, UpdateAlias, DeleteAlias, ListAliases; aliases as KeyId."""

import pytest

from kmsapi import alias_arn, key_arn, raises_code


def aliases_of(api, key_id):
    return {a["AliasName"] for a in api.alice.list_aliases(KeyId=key_id)["Aliases"]}


def test_alias_lifecycle(api):
    a, b = api.new_key(), api.new_key()
    api.alice.create_alias(AliasName="alias/app", TargetKeyId=a)
    entry = next(x for x in api.alice.list_aliases()["Aliases"] if x["AliasName"] == "alias/app")
    assert entry["AliasArn"] == alias_arn("alias/app")
    assert entry["TargetKeyId"] == a
    assert aliases_of(api, a) == {"alias/app"}
    assert api.alice.encrypt(KeyId="alias/app", Plaintext=b"x")["KeyId"] == key_arn(a)

    api.alice.update_alias(AliasName="alias/app", TargetKeyId=b)
    assert aliases_of(api, a) == set() and aliases_of(api, b) == {"alias/app"}
    assert api.alice.encrypt(KeyId="alias/app", Plaintext=b"x")["KeyId"] == key_arn(b)
    assert api.alice.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == b

    api.alice.delete_alias(AliasName="alias/app")
    assert aliases_of(api, b) == set()
    with raises_code("NotFoundException"):
        api.alice.describe_key(KeyId="alias/app")
    with raises_code("NotFoundException"):
        api.alice.delete_alias(AliasName="alias/app")


def test_create_alias_by_key_arn(api, key):
    api.alice.create_alias(AliasName="alias/by-arn", TargetKeyId=key_arn(key))
    assert aliases_of(api, key) == {"alias/by-arn"}


def test_duplicate_alias_already_exists(api, key):
    api.alice.create_alias(AliasName="alias/dup", TargetKeyId=key)
    with raises_code("AlreadyExistsException"):
        api.alice.create_alias(AliasName="alias/dup", TargetKeyId=api.new_key())
    assert aliases_of(api, key) == {"alias/dup"}


@pytest.mark.parametrize("name", ["no-prefix", "alias/", "alias/has space", "alias/" + "x" * 251])
def test_bad_alias_names_are_validation(api, key, name):
    with raises_code("ValidationException"):
        api.alice_raw.create_alias(AliasName=name, TargetKeyId=key)


def test_alias_to_unknown_key(api):
    with raises_code("NotFoundException"):
        api.alice.create_alias(AliasName="alias/orphan", TargetKeyId="00000000-0000-0000-0000-000000000000")


def test_list_aliases_paging(api):
    key = api.new_key()
    names = {f"alias/page-{i}" for i in range(5)}
    for n in names:
        api.alice.create_alias(AliasName=n, TargetKeyId=key)
    seen, marker = [], None
    for _ in range(20):
        kw = {"Limit": 2, "KeyId": key}
        if marker:
            kw["Marker"] = marker
        resp = api.alice.list_aliases(**kw)
        assert len(resp["Aliases"]) <= 2
        seen += [a["AliasName"] for a in resp["Aliases"]]
        if not resp["Truncated"]:
            break
        marker = resp["NextMarker"]
    assert sorted(seen) == sorted(names)


def test_list_aliases_unknown_key(api):
    with raises_code("NotFoundException"):
        api.alice.list_aliases(KeyId="00000000-0000-0000-0000-000000000000")


def test_alias_arn_as_key_id_for_crypto(api, key):
    api.alice.create_alias(AliasName="alias/arn-form", TargetKeyId=key)
    blob = api.alice.encrypt(KeyId=alias_arn("alias/arn-form"), Plaintext=b"via alias arn")["CiphertextBlob"]
    out = api.alice.decrypt(CiphertextBlob=blob, KeyId=alias_arn("alias/arn-form"))
    assert out["Plaintext"] == b"via alias arn" and out["KeyId"] == key_arn(key)
