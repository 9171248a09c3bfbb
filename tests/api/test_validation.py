"""Inputs checked against the service model (botocore's service-2.json): lengths, ranges,
patterns, enums, list sizes, required members — each answers ValidationException in AWS's
wording, with the member named as AWS names it (lowerCamelCase)."""

import pytest

from kmsapi import raises_code, user_arn


@pytest.fixture(scope="module")
def key_id(api):
    return api.new_key("validation")


CASES = [
    # (operation, params(key), member named in the message, constraint wording)
    ("encrypt", lambda k: {"KeyId": "k" * 2049, "Plaintext": b"x"}, "keyId", "length less than or equal to 2048"),
    ("encrypt", lambda k: {"KeyId": k, "Plaintext": b"x", "GrantTokens": ["t"] * 11}, "grantTokens", "length less than or equal to 10"),
    ("encrypt", lambda k: {"KeyId": k, "Plaintext": b"x", "EncryptionAlgorithm": "ROT13"}, "encryptionAlgorithm", "enum value set"),
    ("decrypt", lambda k: {"CiphertextBlob": b"x" * 6145}, "ciphertextBlob", "length less than or equal to 6144"),
    ("list_aliases", lambda k: {"Limit": 0}, "limit", "greater than or equal to 1"),
    ("list_grants", lambda k: {"KeyId": k, "Limit": 1001}, "limit", "less than or equal to 1000"),
    ("create_grant", lambda k: {"KeyId": k, "GranteePrincipal": "has space", "Operations": ["Decrypt"]}, "granteePrincipal", "pattern"),
    ("tag_resource", lambda k: {"KeyId": k, "Tags": [{"TagKey": "a", "TagValue": "v" * 257}]}, "tagValue", "length less than or equal to 256"),
    ("create_key", lambda k: {"KeyUsage": "SHRED"}, "keyUsage", "enum value set"),
    ("generate_data_key", lambda k: {"KeyId": k, "KeySpec": "AES_64"}, "keySpec", "enum value set"),
    ("enable_key", lambda k: {}, "keyId", "must not be null"),
]


@pytest.mark.parametrize("op,params,member,wording", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_model_constraints(api, key_id, op, params, member, wording):
    with raises_code("ValidationException") as e:
        getattr(api.alice_raw, op)(**params(key_id))
    msg = e.message
    assert "validation error" in msg and "detected" in msg, msg
    assert member in msg, f"{member} not named: {msg}"
    assert wording in msg, f"{wording!r} not in {msg!r}"


def test_several_errors_counted(api):
    """AWS counts them: '2 validation errors detected: ...; ...'."""
    with raises_code("ValidationException") as e:
        api.alice_raw.generate_random(NumberOfBytes=0, CustomKeyStoreId="")
    assert e.message.startswith("2 validation errors detected"), e.message


def test_grant_to_unknown_style_principal_refused(api, key_id):
    with raises_code("ValidationException"):
        api.alice_raw.create_grant(KeyId=key_id, GranteePrincipal="", Operations=["Decrypt"])
    ok = api.alice.create_grant(KeyId=key_id, GranteePrincipal=user_arn("bob"), Operations=["Decrypt"])
    assert ok["GrantId"]
