"""CreateGrant (Name idempotency, constraints, RetiringPrincipal, grant tokens usable at
once), ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant; grants enforced."""

import pytest

from kmsapi import key_arn, raises_code, user_arn

ALICE, BOB, CAROL = user_arn("alice"), user_arn("bob"), user_arn("carol")


def grant(api, key, ops, grantee=BOB, **kw):
    resp = api.alice.create_grant(KeyId=key, GranteePrincipal=grantee, Operations=ops, **kw)
    assert resp["GrantId"] and resp["GrantToken"]
    return resp


def test_grant_allows_listed_operations_only(api, key):
    g = grant(api, key, ["Encrypt", "Decrypt"])
    # The token makes the grant usable at once (AWS: eventual consistency otherwise).
    blob = api.bob.encrypt(KeyId=key, Plaintext=b"granted", GrantTokens=[g["GrantToken"]])["CiphertextBlob"]
    assert api.bob.decrypt(CiphertextBlob=blob, GrantTokens=[g["GrantToken"]])["Plaintext"] == b"granted"
    # Without the token too (one machine, one keystore: nothing to wait for).
    api.bob.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("AccessDeniedException"):
        api.bob.generate_data_key(KeyId=key, KeySpec="AES_256")
    with raises_code("AccessDeniedException"):
        api.carol.encrypt(KeyId=key, Plaintext=b"x", GrantTokens=[g["GrantToken"]])


def test_grant_by_key_arn(api, key):
    grant(api, key_arn(key), ["GenerateDataKey"])
    api.bob.generate_data_key(KeyId=key, KeySpec="AES_128")


def test_list_grants(api, key):
    g = grant(api, key, ["Decrypt"], RetiringPrincipal=CAROL, Name="listed")
    grants = api.alice.list_grants(KeyId=key)["Grants"]
    entry = next(x for x in grants if x["GrantId"] == g["GrantId"])
    assert entry["KeyId"] == key_arn(key)
    assert entry["GranteePrincipal"] == BOB
    assert entry["RetiringPrincipal"] == CAROL
    assert entry["Operations"] == ["Decrypt"]
    assert entry["Name"] == "listed"
    assert entry["IssuingAccount"].endswith("111122223333:root") or entry["IssuingAccount"].startswith("arn:aws:iam::111122223333")
    assert "CreationDate" in entry
    only = api.alice.list_grants(KeyId=key, GrantId=g["GrantId"])["Grants"]
    assert [x["GrantId"] for x in only] == [g["GrantId"]]
    assert [x["GrantId"] for x in api.alice.list_grants(KeyId=key, GranteePrincipal=CAROL)["Grants"]] == []


def test_list_grants_paging(api, key):
    ids = {grant(api, key, ["Decrypt"])["GrantId"] for _ in range(3)}
    first = api.alice.list_grants(KeyId=key, Limit=2)
    assert first["Truncated"] is True and len(first["Grants"]) == 2
    rest = api.alice.list_grants(KeyId=key, Limit=2, Marker=first["NextMarker"])
    assert rest["Truncated"] is False
    assert {g["GrantId"] for g in first["Grants"] + rest["Grants"]} == ids


def test_name_idempotency(api, key):
    one = grant(api, key, ["Decrypt"], Name="same-name")
    two = grant(api, key, ["Decrypt"], Name="same-name")
    assert one["GrantId"] == two["GrantId"]
    assert len([g for g in api.alice.list_grants(KeyId=key)["Grants"] if g.get("Name") == "same-name"]) == 1
    # A different grant under the same name is a new grant (AWS: same name, other
    # parameters -> a new grant id).
    three = grant(api, key, ["Encrypt"], Name="same-name")
    assert three["GrantId"] != one["GrantId"]


def test_constraint_encryption_context_equals(api, key):
    g = grant(api, key, ["Encrypt", "Decrypt"], Constraints={"EncryptionContextEquals": {"app": "web"}})
    tok = [g["GrantToken"]]
    blob = api.bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"app": "web"}, GrantTokens=tok)["CiphertextBlob"]
    api.bob.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "web"}, GrantTokens=tok)
    for ctx in [{}, {"app": "db"}, {"app": "web", "more": "1"}]:
        with raises_code("AccessDeniedException"):
            api.bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=ctx, GrantTokens=tok)


def test_constraint_encryption_context_subset(api, key):
    g = grant(api, key, ["Encrypt"], Constraints={"EncryptionContextSubset": {"app": "web"}})
    tok = [g["GrantToken"]]
    api.bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"app": "web"}, GrantTokens=tok)
    api.bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"app": "web", "more": "1"}, GrantTokens=tok)
    for ctx in [{}, {"app": "db"}, {"more": "1"}]:
        with raises_code("AccessDeniedException"):
            api.bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=ctx, GrantTokens=tok)
    listed = api.alice.list_grants(KeyId=key, GrantId=g["GrantId"])["Grants"][0]
    assert listed["Constraints"] == {"EncryptionContextSubset": {"app": "web"}}


def test_revoked_grant_refused(api, key):
    g = grant(api, key, ["Encrypt"])
    api.bob.encrypt(KeyId=key, Plaintext=b"x", GrantTokens=[g["GrantToken"]])
    api.alice.revoke_grant(KeyId=key, GrantId=g["GrantId"])
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    assert g["GrantId"] not in [x["GrantId"] for x in api.alice.list_grants(KeyId=key)["Grants"]]
    with raises_code("NotFoundException", "InvalidGrantIdException"):
        api.alice.revoke_grant(KeyId=key, GrantId=g["GrantId"])


def test_grantee_cannot_revoke(api, key):
    g = grant(api, key, ["Encrypt"])
    with raises_code("AccessDeniedException"):
        api.bob.revoke_grant(KeyId=key, GrantId=g["GrantId"])


def test_retiring_principal_retires_with_token(api, key):
    g = grant(api, key, ["Decrypt"], RetiringPrincipal=CAROL)
    retirable = api.carol.list_retirable_grants(RetiringPrincipal=CAROL)["Grants"]
    entry = next(x for x in retirable if x["GrantId"] == g["GrantId"])
    assert entry["KeyId"] == key_arn(key) and entry["GranteePrincipal"] == BOB
    assert g["GrantId"] not in [x["GrantId"] for x in api.carol.list_retirable_grants(RetiringPrincipal=BOB)["Grants"]]
    # Bob is the grantee, but this grant does not give him RetireGrant.
    with raises_code("AccessDeniedException"):
        api.bob.retire_grant(GrantToken=g["GrantToken"])
    api.carol.retire_grant(GrantToken=g["GrantToken"])
    assert g["GrantId"] not in [x["GrantId"] for x in api.alice.list_grants(KeyId=key)["Grants"]]
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    with raises_code("AccessDeniedException"):
        api.bob.decrypt(CiphertextBlob=blob)


def test_retire_by_key_and_grant_id(api, key):
    g = grant(api, key, ["Decrypt"], RetiringPrincipal=CAROL)
    api.carol.retire_grant(KeyId=key_arn(key), GrantId=g["GrantId"])
    assert g["GrantId"] not in [x["GrantId"] for x in api.alice.list_grants(KeyId=key)["Grants"]]


def test_grantee_retires_own_grant(api, key):
    """AWS: the grantee principal may retire a grant that permits RetireGrant; a principal
    that is neither retiring nor grantee may not."""
    g = grant(api, key, ["Decrypt", "RetireGrant"])
    with raises_code("AccessDeniedException"):
        api.carol.retire_grant(KeyId=key_arn(key), GrantId=g["GrantId"])
    api.bob.retire_grant(KeyId=key_arn(key), GrantId=g["GrantId"])


def test_invalid_grant_token(api, key):
    with raises_code("InvalidGrantTokenException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x", GrantTokens=["not-a-token-this-server-issued"])
    with raises_code("InvalidGrantTokenException"):
        api.carol.retire_grant(GrantToken="not-a-token-this-server-issued")


def test_bad_grant_requests(api, key):
    with raises_code("ValidationException"):
        api.alice_raw.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Frobnicate"])
    with raises_code("ValidationException"):
        api.alice_raw.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=[])
    with raises_code("NotFoundException"):
        api.alice.create_grant(KeyId="alias/nope", GranteePrincipal=BOB, Operations=["Decrypt"])
    with raises_code("NotFoundException", "InvalidGrantIdException"):
        api.alice.revoke_grant(KeyId=key, GrantId="0" * 64)


def test_non_grantee_cannot_create_grant(api, key):
    with raises_code("AccessDeniedException"):
        api.bob.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"])
