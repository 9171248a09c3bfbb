"""Encrypt, Decrypt, ReEncrypt, GenerateDataKey(+WithoutPlaintext), GenerateRandom, and the
errors a caller meets on purpose: wrong context, tampered blob, wrong KeyId, 4097 bytes."""

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kmsapi import alias_arn, assert_enums, key_arn, raises_code


@pytest.fixture(scope="module")
def keys(api):
    """Two keys with aliases: {"a": id, "b": id}."""
    a, b = api.new_key("crypto a"), api.new_key("crypto b")
    api.alice.create_alias(AliasName="alias/crypto-a", TargetKeyId=a)
    api.alice.create_alias(AliasName="alias/crypto-b", TargetKeyId=b)
    return {"a": a, "b": b}


def refs(key_id, alias):
    return [key_id, key_arn(key_id), alias, alias_arn(alias)]


@pytest.mark.parametrize("form", range(4), ids=["id", "arn", "alias", "alias_arn"])
def test_encrypt_decrypt_every_key_id_form(api, keys, form, kms_model):
    ref = refs(keys["a"], "alias/crypto-a")[form]
    resp = api.alice.encrypt(KeyId=ref, Plaintext=b"s3cret")
    assert_enums(kms_model, "Encrypt", resp)
    assert resp["KeyId"] == key_arn(keys["a"])
    assert resp["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert b"s3cret" not in resp["CiphertextBlob"]
    out = api.alice.decrypt(CiphertextBlob=resp["CiphertextBlob"], KeyId=ref)
    assert out["Plaintext"] == b"s3cret"
    assert out["KeyId"] == key_arn(keys["a"])
    assert out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"


def test_decrypt_without_key_id(api, keys):
    blob = api.alice.encrypt(KeyId=keys["b"], Plaintext=b"which key?")["CiphertextBlob"]
    out = api.alice.decrypt(CiphertextBlob=blob)
    assert out["Plaintext"] == b"which key?" and out["KeyId"] == key_arn(keys["b"])


def test_decrypt_naming_another_key_is_incorrect_key(api, keys):
    blob = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"x")["CiphertextBlob"]
    for ref in refs(keys["b"], "alias/crypto-b"):
        with raises_code("IncorrectKeyException"):
            api.alice.decrypt(CiphertextBlob=blob, KeyId=ref)


def test_two_encryptions_differ(api, keys):
    one = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"same")["CiphertextBlob"]
    two = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"same")["CiphertextBlob"]
    assert one != two


def test_encryption_context_must_match(api, keys):
    ctx = {"app": "web", "tenant": "42"}
    blob = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"ctx", EncryptionContext=ctx)["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=blob, EncryptionContext=dict(reversed(ctx.items())))["Plaintext"] == b"ctx"
    for wrong in [{}, {"app": "web"}, {"app": "web", "tenant": "43"}, {**ctx, "extra": "1"}]:
        with raises_code("InvalidCiphertextException"):
            api.alice.decrypt(CiphertextBlob=blob, EncryptionContext=wrong)


@pytest.mark.parametrize(
    "enc,dec",
    [
        ({"a": "b=c"}, {"a=b": "c"}),
        ({"ab": "c"}, {"a": "bc"}),
        ({"a": "b", "c": "d"}, {"a": "b,c=d"}),
        ({"k": "v\u0000x"}, {"k": "v", "x": ""}),
    ],
)
def test_encryption_context_is_unambiguous(api, keys, enc, dec):
    blob = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"aad", EncryptionContext=enc)["CiphertextBlob"]
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(CiphertextBlob=blob, EncryptionContext=dec)


def test_tampered_blob(api, keys):
    blob = bytearray(api.alice.encrypt(KeyId=keys["a"], Plaintext=b"integrity" * 10)["CiphertextBlob"])
    for pos in [len(blob) // 2, len(blob) - 1]:
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with raises_code("InvalidCiphertextException"):
            api.alice.decrypt(CiphertextBlob=bytes(bad))
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(CiphertextBlob=bytes(blob[:-5]))
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(CiphertextBlob=os.urandom(80))


def test_plaintext_limits(api, keys):
    blob = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"\xff" * 4096)["CiphertextBlob"]
    assert api.alice.decrypt(CiphertextBlob=blob)["Plaintext"] == b"\xff" * 4096
    with raises_code("ValidationException") as e:
        api.alice.encrypt(KeyId=keys["a"], Plaintext=b"\xff" * 4097)
    assert "1 validation error detected" in e.message and "plaintext" in e.message, e.message
    assert "length less than or equal to 4096" in e.message, e.message
    with raises_code("ValidationException"):
        api.alice_raw.encrypt(KeyId=keys["a"], Plaintext=b"")


def test_missing_required_member_is_validation(api):
    with raises_code("ValidationException") as e:
        api.alice_raw.encrypt(Plaintext=b"x")
    assert "keyId" in e.message, e.message
    with raises_code("ValidationException"):
        api.alice_raw.decrypt()


def test_reencrypt(api, keys, kms_model):
    blob = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"move me", EncryptionContext={"s": "1"})["CiphertextBlob"]
    resp = api.alice.re_encrypt(
        CiphertextBlob=blob,
        SourceEncryptionContext={"s": "1"},
        DestinationKeyId="alias/crypto-b",
        DestinationEncryptionContext={"d": "2"},
    )
    assert_enums(kms_model, "ReEncrypt", resp)
    assert resp["SourceKeyId"] == key_arn(keys["a"])
    assert resp["KeyId"] == key_arn(keys["b"])
    new = resp["CiphertextBlob"]
    out = api.alice.decrypt(CiphertextBlob=new, EncryptionContext={"d": "2"})
    assert out["Plaintext"] == b"move me" and out["KeyId"] == key_arn(keys["b"])
    with raises_code("InvalidCiphertextException"):
        api.alice.decrypt(CiphertextBlob=new, EncryptionContext={"s": "1"})


def test_reencrypt_errors(api, keys):
    blob = api.alice.encrypt(KeyId=keys["a"], Plaintext=b"x", EncryptionContext={"s": "1"})["CiphertextBlob"]
    with raises_code("InvalidCiphertextException"):
        api.alice.re_encrypt(CiphertextBlob=blob, DestinationKeyId=keys["b"])
    with raises_code("IncorrectKeyException"):
        api.alice.re_encrypt(
            CiphertextBlob=blob, SourceKeyId=keys["b"], SourceEncryptionContext={"s": "1"}, DestinationKeyId=keys["b"]
        )
    with raises_code("NotFoundException"):
        api.alice.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"s": "1"}, DestinationKeyId="alias/nope")


@pytest.mark.parametrize("kw,length", [({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16), ({"NumberOfBytes": 64}, 64), ({"NumberOfBytes": 1}, 1)])
def test_generate_data_key(api, keys, kw, length, kms_model):
    resp = api.alice.generate_data_key(KeyId="alias/crypto-a", EncryptionContext={"f": "1"}, **kw)
    assert_enums(kms_model, "GenerateDataKey", resp)
    assert len(resp["Plaintext"]) == length
    assert resp["KeyId"] == key_arn(keys["a"])
    out = api.alice.decrypt(CiphertextBlob=resp["CiphertextBlob"], EncryptionContext={"f": "1"})
    assert out["Plaintext"] == resp["Plaintext"]


def test_data_key_envelope_with_aes_gcm(api, keys):
    """The SDK pattern: a data key encrypts locally, only its wrapped copy is kept."""
    dk = api.alice.generate_data_key(KeyId=keys["a"], KeySpec="AES_256")
    nonce = os.urandom(12)
    sealed = AESGCM(dk["Plaintext"]).encrypt(nonce, b"a large document", None)
    unwrapped = api.alice.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"]
    assert AESGCM(unwrapped).decrypt(nonce, sealed, None) == b"a large document"


def test_generate_data_key_distinct(api, keys):
    one = api.alice.generate_data_key(KeyId=keys["a"], KeySpec="AES_256")["Plaintext"]
    two = api.alice.generate_data_key(KeyId=keys["a"], KeySpec="AES_256")["Plaintext"]
    assert one != two


@pytest.mark.parametrize(
    "kw", [{}, {"KeySpec": "AES_256", "NumberOfBytes": 32}, {"NumberOfBytes": 1025}, {"NumberOfBytes": 0}, {"KeySpec": "AES_512"}]
)
def test_generate_data_key_bad_sizes(api, keys, kw):
    with raises_code("ValidationException"):
        api.alice_raw.generate_data_key(KeyId=keys["a"], **kw)


def test_generate_data_key_without_plaintext(api, keys, kms_model):
    resp = api.alice.generate_data_key_without_plaintext(KeyId=keys["b"], KeySpec="AES_128", EncryptionContext={"w": "p"})
    assert_enums(kms_model, "GenerateDataKeyWithoutPlaintext", resp)
    assert "Plaintext" not in resp
    assert resp["KeyId"] == key_arn(keys["b"])
    out = api.alice.decrypt(CiphertextBlob=resp["CiphertextBlob"], EncryptionContext={"w": "p"})
    assert len(out["Plaintext"]) == 16
    resp = api.alice.generate_data_key_without_plaintext(KeyId=keys["b"], NumberOfBytes=48)
    assert len(api.alice.decrypt(CiphertextBlob=resp["CiphertextBlob"])["Plaintext"]) == 48


def test_generate_random(api):
    one = api.alice.generate_random(NumberOfBytes=32)["Plaintext"]
    two = api.alice.generate_random(NumberOfBytes=32)["Plaintext"]
    assert len(one) == 32 and one != two
    assert len(api.alice.generate_random(NumberOfBytes=1024)["Plaintext"]) == 1024


@pytest.mark.parametrize("n", [0, 1025])
def test_generate_random_bounds(api, n):
    with raises_code("ValidationException") as e:
        api.alice_raw.generate_random(NumberOfBytes=n)
    assert "numberOfBytes" in e.message, e.message


def test_encrypt_with_unsupported_algorithm(api, keys):
    with raises_code("ValidationException", "InvalidKeyUsageException"):
        api.alice_raw.encrypt(KeyId=keys["a"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
