"""GetKeyPolicy, PutKeyPolicy, ListKeyPolicies; policies evaluated for IAM-style principals:
the default policy (creator only), a named user, "*", explicit deny, conditions."""

import json

import pytest

from kmsapi import ACCOUNT, raises_code, user_arn

ALICE, BOB, CAROL = user_arn("alice"), user_arn("bob"), user_arn("carol")


def policy(*statements):
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(principal, actions, **extra):
    return {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions, "Resource": "*", **extra}


def admin_alice():
    return allow(ALICE, "kms:*")


def test_default_policy_names_creator(api, key):
    assert api.alice.list_key_policies(KeyId=key)["PolicyNames"] == ["default"]
    doc = json.loads(api.alice.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    assert doc["Statement"], doc
    assert ALICE in json.dumps(doc), f"the creator is not in the default policy: {doc}"
    # GetKeyPolicy without PolicyName (optional in the current model) means "default".
    assert json.loads(api.alice.get_key_policy(KeyId=key)["Policy"]) == doc


def test_other_principals_denied_by_default(api, key):
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"alice's")["CiphertextBlob"]
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("AccessDeniedException"):
        api.bob.decrypt(CiphertextBlob=blob)
    with raises_code("AccessDeniedException"):
        api.bob.describe_key(KeyId=key)
    with raises_code("AccessDeniedException"):
        api.bob.disable_key(KeyId=key)
    with raises_code("AccessDeniedException"):
        api.bob.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(allow(BOB, "kms:*")))
    assert api.alice.describe_key(KeyId=key)["KeyMetadata"]["Enabled"] is True


def test_put_policy_grants_named_user_only_listed_actions(api, key):
    api.alice.put_key_policy(
        KeyId=key, PolicyName="default", Policy=policy(admin_alice(), allow(BOB, ["kms:Decrypt", "kms:DescribeKey"]))
    )
    stored = json.loads(api.alice.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    assert BOB in json.dumps(stored)
    blob = api.alice.encrypt(KeyId=key, Plaintext=b"for bob")["CiphertextBlob"]
    assert api.bob.decrypt(CiphertextBlob=blob)["Plaintext"] == b"for bob"
    api.bob.describe_key(KeyId=key)
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("AccessDeniedException"):
        api.carol.decrypt(CiphertextBlob=blob)


def test_principal_list_and_wildcard_action(api, key):
    api.alice.put_key_policy(
        KeyId=key, PolicyName="default", Policy=policy(admin_alice(), allow([BOB, CAROL], "kms:Generate*"))
    )
    api.bob.generate_data_key(KeyId=key, KeySpec="AES_256")
    api.carol.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=16)
    with raises_code("AccessDeniedException"):
        api.carol.encrypt(KeyId=key, Plaintext=b"x")


def test_star_principal(api, key):
    api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(admin_alice(), allow("*", "kms:Encrypt")))
    api.bob.encrypt(KeyId=key, Plaintext=b"x")
    api.carol.encrypt(KeyId=key, Plaintext=b"x")


def test_explicit_deny_wins(api, key):
    deny = {"Effect": "Deny", "Principal": {"AWS": ALICE}, "Action": "kms:Encrypt", "Resource": "*"}
    api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(admin_alice(), deny))
    with raises_code("AccessDeniedException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"x")
    api.alice.generate_data_key(KeyId=key, KeySpec="AES_256")


def test_other_account_principal_not_matched(api, key):
    api.alice.put_key_policy(
        KeyId=key, PolicyName="default", Policy=policy(admin_alice(), allow("arn:aws:iam::999999999999:user/bob", "kms:*"))
    )
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x")


@pytest.mark.parametrize(
    "cidr,allowed", [("127.0.0.0/8", True), ("127.0.0.1/32", True), ("10.0.0.0/8", False)]
)
def test_source_ip_condition(api, key, cidr, allowed):
    cond = {"IpAddress": {"aws:SourceIp": cidr}}
    api.alice.put_key_policy(
        KeyId=key, PolicyName="default", Policy=policy(admin_alice(), allow(BOB, "kms:Encrypt", Condition=cond))
    )
    if allowed:
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    else:
        with raises_code("AccessDeniedException"):
            api.bob.encrypt(KeyId=key, Plaintext=b"x")


@pytest.mark.parametrize("account,allowed", [(ACCOUNT, True), ("444455556666", False)])
def test_caller_account_condition(api, key, account, allowed):
    cond = {"StringEquals": {"kms:CallerAccount": account}}
    api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(admin_alice(), allow("*", "kms:Encrypt", Condition=cond)))
    if allowed:
        api.bob.encrypt(KeyId=key, Plaintext=b"x")
    else:
        with raises_code("AccessDeniedException"):
            api.bob.encrypt(KeyId=key, Plaintext=b"x")


def test_encryption_context_condition(api, key):
    cond = {"StringEquals": {"kms:EncryptionContext:app": "web"}}
    api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(admin_alice(), allow(BOB, "kms:Encrypt", Condition=cond)))
    api.bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"app": "web"})
    with raises_code("AccessDeniedException"):
        api.bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"app": "db"})


@pytest.mark.parametrize(
    "doc",
    [
        "{not json",
        json.dumps({"Version": "2012-10-17"}),
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Principal": {"AWS": ALICE}, "Action": "kms:*", "Resource": "*"}]}),
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": ALICE}, "Resource": "*"}]}),
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "not-an-arn"}, "Action": "kms:*", "Resource": "*"}]}),
        json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": ALICE}, "Action": "kms:*", "Resource": "*", "Condition": {"NoSuchOperator": {"aws:SourceIp": "1.2.3.4"}}}]}),
    ],
    ids=["not-json", "no-statement", "bad-effect", "no-action", "bad-principal", "bad-condition"],
)
def test_malformed_policy_refused_and_old_one_kept(api, key, doc):
    before = api.alice.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    with raises_code("MalformedPolicyDocumentException"):
        api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=doc)
    assert api.alice.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == before
    api.alice.encrypt(KeyId=key, Plaintext=b"still mine")


def test_lockout_safety_check(api, key):
    """AWS refuses a policy that would stop the caller from changing it again, unless
    BypassPolicyLockoutSafetyCheck is set."""
    with raises_code("MalformedPolicyDocumentException"):
        api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(allow(BOB, "kms:Decrypt")))
    api.alice.encrypt(KeyId=key, Plaintext=b"x")


def test_create_key_with_policy(api):
    doc = policy(admin_alice(), allow(BOB, "kms:Encrypt"))
    key = api.new_key(Policy=doc)
    api.bob.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("MalformedPolicyDocumentException"):
        api.alice.create_key(Policy="{broken")


def test_get_unknown_policy_name(api, key):
    with raises_code("NotFoundException", "ValidationException"):
        api.alice.get_key_policy(KeyId=key, PolicyName="other")


def test_key_belongs_to_its_creator(api):
    """A key bob creates gets a default policy naming bob: alice, who made the others, is
    refused on it."""
    key = api.new_key("bob's", client=api.bob)
    doc = api.bob.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    assert BOB in doc and ALICE not in doc
    api.bob.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("AccessDeniedException"):
        api.alice.encrypt(KeyId=key, Plaintext=b"x")


def test_access_key_with_uid_matches_unix_statements(api, key):
    """`access-key create --uid N`: Unix policy statements for uid N apply to that key."""
    dave = api.keystore.access_key("dave", uid=4321)
    client = api.server.client(dave)
    with raises_code("AccessDeniedException"):
        client.encrypt(KeyId=key, Plaintext=b"x")
    unix = {"Effect": "Allow", "Principal": {"Uid": [4321]}, "Action": "kms:Encrypt", "Resource": "*"}
    api.alice.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(admin_alice(), unix))
    client.encrypt(KeyId=key, Plaintext=b"x")
    with raises_code("AccessDeniedException"):
        client.decrypt(CiphertextBlob=api.alice.encrypt(KeyId=key, Plaintext=b"y")["CiphertextBlob"])
